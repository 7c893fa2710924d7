//! The worker's own link in each connection's interceptor chain (`rtc` 0.21's `Registry`),
//! for the RTCP the SFU itself acts on (issue 19).
//!
//! - **Inbound**: marks receiver reports, sender reports with report blocks and NACKs
//!   `DeliverToApplication`. rtc's chain ends every inbound RTCP packet at its terminus unless
//!   an interceptor marks it; without this the engine never saw what a listener reports of
//!   its slot streams (the quality event's downstream half, the floor below).
//! - **Outbound**: raises the fraction lost of every report block the connection sends (rtc's
//!   receiver-report generator writes them for a speaker's stream) to the connection's
//!   [`LossFloor`]: the worst fraction lost its listeners report of its audio, as mediasoup
//!   does. A speaker's Opus encoder sizes its in-band FEC by the loss it is told of; told
//!   only of its uplink, it would add none for a listener on a lossy downlink.
//!
//! The cumulative counts and jitter stay the SFU's own: only the fraction, which encoders
//! adapt to, reflects the whole path.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, Slot, StreamInfo, TaggedPacket};
use rtc::rtcp;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

/// Where the link sits: wire-ward of rtc's report generators (10 000 and 11 000), so what
/// they write passes it on the way out and what arrives passes it before them.
pub const FEEDBACK_SLOT: Slot = Slot::Custom(9_500);

/// The fraction lost (in 1/256, as RTCP carries it) a connection's outgoing reports claim at
/// least. Shared between the engine, which sets it from the listeners' reports, and the
/// connection's chain, which applies it.
#[derive(Clone, Debug, Default)]
pub struct LossFloor(Arc<AtomicU8>);

impl LossFloor {
    pub fn set(&self, fraction: u8) {
        self.0.store(fraction, Ordering::Relaxed);
    }

    pub fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The interceptor: see the module docs.
pub struct Feedback {
    floor: LossFloor,
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl Feedback {
    pub fn new(floor: LossFloor) -> Feedback {
        Feedback {
            floor,
            read_queue: VecDeque::new(),
            write_queue: VecDeque::new(),
        }
    }
}

/// Every report block of a compound packet: those of its receiver reports and of its sender
/// reports.
pub fn report_blocks(
    packets: &[Box<dyn rtcp::Packet>],
) -> impl Iterator<Item = &rtcp::reception_report::ReceptionReport> {
    packets.iter().flat_map(|p| {
        let any = p.as_any();
        let rr = any.downcast_ref::<ReceiverReport>().map(|r| &r.reports);
        let sr = any.downcast_ref::<SenderReport>().map(|s| &s.reports);
        rr.or(sr).into_iter().flatten()
    })
}

/// Whether the engine wants this compound packet: it carries report blocks or a NACK.
pub fn wanted(packets: &[Box<dyn rtcp::Packet>]) -> bool {
    packets.iter().any(|p| {
        let any = p.as_any();
        any.is::<ReceiverReport>()
            || any
                .downcast_ref::<SenderReport>()
                .is_some_and(|sr| !sr.reports.is_empty())
            || any.is::<TransportLayerNack>()
    })
}

/// `packets` with every report block's fraction lost at least `floor`; `None` if nothing
/// needed raising (the common case: the packet goes on untouched).
pub fn raise_fraction_lost(
    packets: &[Box<dyn rtcp::Packet>],
    floor: u8,
) -> Option<Vec<Box<dyn rtcp::Packet>>> {
    if !report_blocks(packets).any(|b| b.fraction_lost < floor) {
        return None;
    }
    let raise = |reports: &mut Vec<rtcp::reception_report::ReceptionReport>| {
        for b in reports {
            b.fraction_lost = b.fraction_lost.max(floor);
        }
    };
    Some(
        packets
            .iter()
            .map(|p| {
                let any = p.as_any();
                if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                    let mut rr = rr.clone();
                    raise(&mut rr.reports);
                    Box::new(rr) as Box<dyn rtcp::Packet>
                } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
                    let mut sr = sr.clone();
                    raise(&mut sr.reports);
                    Box::new(sr)
                } else {
                    p.cloned()
                }
            })
            .collect(),
    )
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for Feedback {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet
            && wanted(packets)
        {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        let floor = self.floor.get();
        if floor > 0
            && let Packet::Rtcp(packets) = &msg.message.packet
            && let Some(raised) = raise_fraction_lost(packets, floor)
        {
            msg.message.packet = Packet::Rtcp(raised);
        }
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for Feedback {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::interceptor::AttributedPacket;
    use rtc::rtcp::reception_report::ReceptionReport;
    use rtc::shared::TransportContext;

    fn rr(fractions: &[u8]) -> Box<dyn rtcp::Packet> {
        Box::new(ReceiverReport {
            ssrc: 1,
            reports: fractions
                .iter()
                .enumerate()
                .map(|(i, &f)| ReceptionReport {
                    ssrc: 100 + i as u32,
                    fraction_lost: f,
                    total_lost: 7,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn tagged(packets: Vec<Box<dyn rtcp::Packet>>) -> TaggedPacket {
        TaggedPacket {
            now: Instant::now(),
            transport: TransportContext::default(),
            message: AttributedPacket::new(Packet::Rtcp(packets)),
        }
    }

    fn fractions(msg: &TaggedPacket) -> Vec<u8> {
        let Packet::Rtcp(packets) = &msg.message.packet else {
            return vec![];
        };
        packets
            .iter()
            .filter_map(|p| p.as_any().downcast_ref::<ReceiverReport>())
            .flat_map(|rr| rr.reports.iter().map(|b| b.fraction_lost))
            .collect()
    }

    #[test]
    fn reports_and_nacks_reach_the_application_and_nothing_else_is_marked() {
        let mut f = Feedback::new(LossFloor::default());
        f.handle_read(tagged(vec![rr(&[3])])).expect("read");
        let sdes: Box<dyn rtcp::Packet> =
            Box::new(rtcp::source_description::SourceDescription::default());
        f.handle_read(tagged(vec![sdes])).expect("read");
        let nack: Box<dyn rtcp::Packet> = Box::new(TransportLayerNack::default());
        f.handle_read(tagged(vec![nack])).expect("read");
        let marked: Vec<bool> = std::iter::from_fn(|| f.poll_read())
            .map(|m| m.message.has(&Attribute::DeliverToApplication))
            .collect();
        assert_eq!(marked, [true, false, true]);
    }

    #[test]
    fn outgoing_report_blocks_claim_at_least_the_floor() {
        let floor = LossFloor::default();
        let mut f = Feedback::new(floor.clone());
        f.handle_write(tagged(vec![rr(&[10, 40])])).expect("write");
        assert_eq!(
            fractions(&f.poll_write().expect("out")),
            [10, 40],
            "no floor"
        );
        floor.set(25);
        f.handle_write(tagged(vec![rr(&[10, 40])])).expect("write");
        let out = f.poll_write().expect("out");
        assert_eq!(
            fractions(&out),
            [25, 40],
            "raised to the floor, never lowered"
        );
        let Packet::Rtcp(packets) = &out.message.packet else {
            panic!("not RTCP");
        };
        let rr = packets[0]
            .as_any()
            .downcast_ref::<ReceiverReport>()
            .expect("a receiver report");
        assert!(
            rr.reports.iter().all(|b| b.total_lost == 7),
            "cumulative counts stay ours"
        );
    }
}
