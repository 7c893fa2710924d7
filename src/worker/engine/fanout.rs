//! A big room's fan-out, spread over threads.
//!
//! In a room of hundreds one speaker's packet becomes hundreds of copies, and each copy costs
//! its listener's connection `rtc`'s write pipeline (interceptors, SRTP) and its share of the
//! `sendmmsg` (docs/BENCHMARKS.md, "where a forwarded copy's CPU goes"). Done one after the
//! other on the engine's thread, the last of 245 copies left ~3.7 ms after the first, and the
//! packets of speakers who talk at once queued behind each other: p99 ≤ 10 ms inside the SFU
//! at half a core. Here one packet's copies are grouped by listener connection into pieces of
//! [`PIECE`] connections; the engine's thread and the pool's threads take pieces in turn until
//! none is left, each writing its pieces' copies and sending them (its own `sendmmsg` on the
//! shared socket), and the pass ends when every thread has: fork and join per packet. Taking
//! pieces in turn, rather than a fixed share each, means a pool thread the scheduler holds back
//! (the machine is busy) costs the pass at most the piece it is on: the others take the rest.
//!
//! Why fork-join, and not connections owned by threads of their own: everything else a connection
//! does (its datagrams, timers, offers, the room's routing) stays on the engine's one thread
//! in the order it came, with no lock and no channel hop; only the part whose cost grows with
//! the room runs in parallel, and only when a packet has enough copies to pay for waking the
//! threads ([`PARALLEL_MIN`]). The threads are made at the first such packet, so the worker of
//! a room of 10 never has them. `RTC_FANOUT_THREADS` says how many threads, the engine's
//! included (1: no pool).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use super::connection::write_copy;
use super::port::{SendCounts, send_all};
use super::{Engine, Peer, PeerKey, Transmit, Transport};
use crate::media::room::Forward;
use crate::wire::stats::DropStats;

/// A packet with fewer copies is sent on the engine's thread alone: below this, waking a
/// thread (tens of microseconds when it sleeps) costs about what it saves.
pub(super) const PARALLEL_MIN: usize = 48;

/// Listener connections per piece of work the threads take in turn: small enough that a
/// thread held back by the scheduler in the middle of one delays the pass by little (8
/// copies, ~0.1 ms), large enough that taking one costs nothing beside it.
const PIECE: usize = 8;

/// The pool's threads, made when first needed, and the buffer one packet's copies are sorted in.
pub(super) struct Fanout {
    threads: usize,
    pool: Option<rayon::ThreadPool>,
    copies: Vec<(PeerKey, Forward)>,
}

/// One listener's connection and its copies of the current packet.
struct Job<'a> {
    key: PeerKey,
    peer: &'a mut Peer,
    copies: &'a mut [(PeerKey, Forward)],
}

/// What one thread did, merged into the engine's counters after the join.
#[derive(Default)]
struct ThreadOutcome {
    drops: DropStats,
    copies_sent: u64,
    sends: SendCounts,
    /// Connections whose write panicked, and what the panic said.
    panicked: Vec<(PeerKey, String)>,
    /// Copies for listeners on ICE-TCP: the engine's thread sends those.
    tcp: Vec<Transmit>,
}

impl Fanout {
    /// `threads` (the engine's included) of 0 means one per core the process may use, at
    /// most 4.
    pub(super) fn new(threads: u32) -> Fanout {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
            n => n as usize,
        };
        Fanout {
            threads,
            pool: None,
            copies: Vec::new(),
        }
    }

    /// Whether a packet with this many copies goes out in parallel.
    pub(super) fn wants(&self, copies: usize) -> bool {
        self.threads > 1 && copies >= PARALLEL_MIN
    }

    /// Whether the threads have been made (a packet went out in parallel).
    #[cfg(test)]
    pub(super) fn has_threads(&self) -> bool {
        self.pool.is_some()
    }

    /// Makes the pool of `threads - 1` threads (the engine's thread is the last) if it
    /// is not there yet; `false` if the system would not give us threads, and then the copies
    /// go out one by one.
    fn ensure_pool(&mut self) -> bool {
        if self.pool.is_none() && self.threads > 1 {
            let built = rayon::ThreadPoolBuilder::new()
                .num_threads(self.threads - 1)
                .thread_name(|i| format!("fanout-{i}"))
                .build();
            match built {
                Ok(pool) => self.pool = Some(pool),
                Err(e) => {
                    tracing::warn!("no fan-out threads ({e}); copies go out one by one");
                    self.threads = 1;
                }
            }
        }
        self.pool.is_some()
    }
}

impl Engine {
    /// [`Engine::send_forwards`] for a packet with many copies: the copies are sorted by
    /// listener connection, grouped into pieces of whole connections, and the threads take
    /// pieces until none is left. Returns `false` (nothing done) when there are no threads.
    pub(super) fn send_forwards_parallel(&mut self, now: Instant) -> bool {
        let Some(fd) = self.port.as_ref().map(|p| p.raw_fd()) else {
            return false;
        };
        if !self.fanout.ensure_pool() {
            return false;
        }
        let Engine {
            fanout:
                Fanout {
                    threads,
                    pool: Some(pool),
                    copies,
                },
            forwards,
            sessions,
            peers,
            ..
        } = self
        else {
            return false;
        };
        copies.extend(
            forwards
                .drain(..)
                .filter_map(|f| sessions.get(&f.listener).map(|&key| (key, f))),
        );
        // Stable: a listener's copies keep the room's order.
        copies.sort_by_key(|(key, _)| *key);
        let mut conns: Vec<(PeerKey, &mut Peer)> = peers
            .iter_mut()
            .filter(|(key, peer)| {
                !peer.broken && copies.binary_search_by_key(*key, |(k, _)| *k).is_ok()
            })
            .map(|(key, peer)| (*key, peer))
            .collect();
        conns.sort_by_key(|(key, _)| *key);
        // Both in key order: each listener's run of copies meets its connection.
        let mut jobs: Vec<Job<'_>> = Vec::with_capacity(conns.len());
        let mut conns = conns.into_iter().peekable();
        for run in copies.chunk_by_mut(|a, b| a.0 == b.0) {
            let key = run[0].0;
            while conns.next_if(|(k, _)| *k < key).is_some() {}
            if let Some((_, peer)) = conns.next_if(|(k, _)| *k == key) {
                jobs.push(Job {
                    key,
                    peer,
                    copies: run,
                });
            }
        }
        // The threads take pieces in turn until none is left: one the scheduler holds back
        // (the machine is busy) delays the pass by the piece it is on, never by pieces it has
        // not started, which the others take.
        let pieces: Vec<Mutex<&mut [Job<'_>]>> = jobs.chunks_mut(PIECE).map(Mutex::new).collect();
        let next = AtomicUsize::new(0);
        let mut outcomes: Vec<ThreadOutcome> = Vec::new();
        outcomes.resize_with((*threads).min(pieces.len()), ThreadOutcome::default);
        pool.in_place_scope(|scope| {
            let Some((own, helpers)) = outcomes.split_first_mut() else {
                return;
            };
            for outcome in helpers {
                let (pieces, next) = (&pieces, &next);
                scope.spawn(move |_| take_pieces(pieces, next, fd, now, outcome));
            }
            take_pieces(&pieces, &next, fd, now, own);
        });
        drop(pieces);
        drop(jobs);
        self.fanout.copies.clear();
        for outcome in outcomes {
            self.drops.add(&outcome.drops);
            self.copies_pending += outcome.copies_sent;
            if let Some(port) = self.port.as_mut() {
                port.count(outcome.sends);
            }
            self.outbox.extend(outcome.tcp);
            for (key, why) in outcome.panicked {
                self.poison(key, why);
            }
        }
        true
    }
}

/// One thread's part of the pass: pieces taken until none is left, their connections'
/// copies written, and what they queued sent in batches.
fn take_pieces(
    pieces: &[Mutex<&mut [Job<'_>]>],
    next: &AtomicUsize,
    fd: RawFd,
    now: Instant,
    outcome: &mut ThreadOutcome,
) {
    let mut outbox: Vec<Transmit> = Vec::new();
    while let Some(piece) = pieces.get(next.fetch_add(1, Ordering::Relaxed)) {
        // Each piece is taken by one thread: the lock is never contended. A panic cannot
        // happen while it is held (each write is caught), but if one did, the piece is ours.
        let mut jobs = piece.lock().unwrap_or_else(PoisonError::into_inner);
        for job in jobs.iter_mut() {
            for (_, copy) in job.copies.iter_mut() {
                if job.peer.broken {
                    break;
                }
                let packet = std::mem::take(&mut copy.packet);
                match write_copy(job.peer, packet, now, &mut outbox, &mut outcome.drops) {
                    Ok(true) => outcome.copies_sent += 1,
                    Ok(false) => {}
                    Err(why) => {
                        job.peer.broken = true;
                        outcome.panicked.push((job.key, why));
                    }
                }
            }
        }
    }
    outcome
        .tcp
        .extend(outbox.extract_if(.., |t| t.transport == Transport::Tcp));
    outcome.sends = send_all(fd, &mut outbox, &mut outcome.drops);
}
