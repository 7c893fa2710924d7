//! What the room has for the outside: members' events to front (one `ToFront::Event` per
//! member told), finished bites to the publisher.

use super::Engine;
use crate::media::room::RoomEvent;
use crate::wire::ids::SessionId;
use crate::wire::ipc::ToFront;
use crate::wire::signal::Event;

impl Engine {
    /// Passes what the room has to tell members on to front.
    pub(super) fn drain_room_events(&mut self) {
        while let Some(ev) = self.room.poll_event() {
            match ev {
                RoomEvent::Slots { listener, slots } => {
                    let _ = self.to_front.send(ToFront::Event {
                        session: listener,
                        event: Event::Slots { slots },
                    });
                }
                RoomEvent::Bite { identity, bite, .. } => {
                    if let Some(sink) = &self.bites {
                        sink.send(&identity, &bite);
                    }
                }
                RoomEvent::Members { to, members } => {
                    self.tell(&to, Event::Members { members });
                }
                RoomEvent::Speakers { to, speakers } => {
                    self.tell(&to, Event::Speakers { speakers });
                }
            }
        }
    }

    /// `event` for each of `to`: front writes one `event::` frame per client. (The list is
    /// cloned per member; a members event is broadcast at most a few times a second.)
    fn tell(&self, to: &[SessionId], event: Event) {
        if let Some((last, rest)) = to.split_last() {
            for &session in rest {
                let _ = self.to_front.send(ToFront::Event {
                    session,
                    event: event.clone(),
                });
            }
            let _ = self.to_front.send(ToFront::Event {
                session: *last,
                event,
            });
        }
    }
}
