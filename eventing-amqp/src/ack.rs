//! Which acknowledgements one consumer channel owes the broker, and when to send them.
//!
//! The runtime settles deliveries out of order, up to `concurrency` at a time. Sending
//! one `basic.ack` frame per delivery costs the broker as much as the delivery
//! itself, so the window collects acks and sends `basic.ack(multiple = true)` for
//! the highest acked tag below the oldest delivery still being handled. It flushes
//! when a batch is full (a quarter of the prefetch count, at most 64), when the
//! consumer has nothing else to do (the stream is idle) and a sixteenth of the
//! prefetch count waits, or at the latest [`MAX_ACK_DELAY`] after the first ack
//! waited. Acks above a
//! delivery that stays unsettled for [`STALL`] (a listener retrying with backoff)
//! are sent one by one, so a slow message never holds the prefetch window hostage.
//!
//! Requeues are sent individually and always before an ack that covers them, since
//! an `ack(multiple)` takes every outstanding tag up to its own. The tag of a
//! multiple ack is always one the broker still holds: AMQP brokers reject an ack
//! for an unknown tag by closing the channel.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The longest an ack waits before it is sent.
pub(crate) const MAX_ACK_DELAY: Duration = Duration::from_millis(5);
/// How long an unsettled delivery may hold back the acks above it.
pub(crate) const STALL: Duration = Duration::from_millis(50);
/// The largest batch of acks sent as one frame.
const MAX_BATCH: usize = 64;

/// Frames to send, in this order.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Flush {
    /// `basic.nack(tag, requeue = true)` each.
    pub(crate) requeue: Vec<u64>,
    /// One `basic.ack(tag, multiple = true)`.
    pub(crate) ack_up_to: Option<u64>,
    /// `basic.ack(tag, multiple = false)` each.
    pub(crate) ack_each: Vec<u64>,
}

/// What the flusher task does next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Send these frames; with `close`, then close the channel and stop.
    Send { flush: Flush, close: bool },
    /// Nothing due: sleep until notified or until the deadline.
    Wait(Option<Instant>),
    /// Closed already.
    Stop,
}

/// What the caller of [`AckWindow::ack`] or [`AckWindow::requeue`] does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Then {
    /// Nothing: a later flush takes care of it.
    Nothing,
    /// Send what is due now ([`AckWindow::take_due`]).
    Flush,
    /// Wake the flusher task: it must sleep less long.
    WakeTimer,
}

/// The settlement state of one channel's deliveries.
#[derive(Debug)]
pub(crate) struct AckWindow {
    /// Delivered and not settled by the runtime yet (at most the prefetch count).
    open: BTreeSet<u64>,
    /// Acked by the runtime, not sent yet (the broker still counts them unacked).
    acked: BTreeSet<u64>,
    /// Requeued by the runtime, not sent yet.
    requeues: Vec<u64>,
    batch: usize,
    /// The fewest acks an idle consumer sends on its own.
    idle_batch: usize,
    flush_requested: bool,
    /// When the oldest ack that can go out as part of a multiple ack arrived.
    first_pending_at: Option<Instant>,
    /// The oldest open delivery while acks above it wait, and since when.
    hole: Option<(u64, Instant)>,
    /// Until when the flusher task sleeps (`None`: until notified).
    armed: Option<Instant>,
    closing: bool,
    closed: bool,
}

impl AckWindow {
    /// A window for a consumer with this prefetch count.
    pub(crate) fn new(prefetch: u16) -> Self {
        Self {
            open: BTreeSet::new(),
            acked: BTreeSet::new(),
            requeues: Vec::new(),
            batch: (usize::from(prefetch) / 4).clamp(1, MAX_BATCH),
            idle_batch: (usize::from(prefetch) / 16).clamp(1, MAX_BATCH / 4),
            flush_requested: false,
            first_pending_at: None,
            hole: None,
            armed: None,
            closing: false,
            closed: false,
        }
    }

    /// The broker handed over `tag`.
    pub(crate) fn delivered(&mut self, tag: u64) {
        if !self.closing {
            self.open.insert(tag);
        }
    }

    /// The runtime acked `tag`.
    pub(crate) fn ack(&mut self, tag: u64, now: Instant) -> Result<Then, Unknown> {
        if self.closed || !self.open.remove(&tag) {
            return Err(Unknown);
        }
        self.acked.insert(tag);
        let mut deadline = None;
        if self.has_prefix() {
            if self.acked.len() >= self.batch {
                self.flush_requested = true;
                return Ok(Then::Flush);
            }
            if self.first_pending_at.is_none() {
                self.first_pending_at = Some(now);
                deadline = Some(now + MAX_ACK_DELAY);
            }
        }
        if self.track_hole(now) {
            let stall = now + STALL;
            deadline = Some(deadline.map_or(stall, |d: Instant| d.min(stall)));
        }
        match deadline {
            Some(deadline) if self.armed.is_none_or(|armed| armed > deadline) => {
                self.armed = Some(deadline);
                Ok(Then::WakeTimer)
            }
            _ => Ok(Then::Nothing),
        }
    }

    /// The runtime gave `tag` back.
    pub(crate) fn requeue(&mut self, tag: u64) -> Result<Then, Unknown> {
        if self.closed || !self.open.remove(&tag) {
            return Err(Unknown);
        }
        self.requeues.push(tag);
        self.flush_requested = true;
        Ok(Then::Flush)
    }

    /// The consumer has no delivery waiting: a good moment to send what is due.
    /// Returns true if something is.
    pub(crate) fn idle(&mut self) -> bool {
        if self.closing || (self.requeues.is_empty() && !self.has_prefix()) {
            return false;
        }
        if self.requeues.is_empty() && self.acked.len() < self.idle_batch {
            // Too few to be worth a frame of their own yet; the timer bounds the wait.
            return false;
        }
        self.flush_requested = true;
        true
    }

    /// What is due now, for sending from the consumer's own task; nothing once
    /// closing (the flusher task sends the rest).
    pub(crate) fn take_due(&mut self, now: Instant) -> Option<Flush> {
        if self.closing {
            return None;
        }
        match self.next_step(now) {
            Step::Send { flush, .. } => Some(flush),
            Step::Wait(_) | Step::Stop => None,
        }
    }

    /// Everything settled so far, at once (acks above an open delivery one by one),
    /// for a consumer being cancelled: its acks reach the broker before the cancel.
    /// Nothing once closing (the flusher task sends the rest).
    pub(crate) fn take_settled(&mut self) -> Option<Flush> {
        if self.closing || (self.requeues.is_empty() && self.acked.is_empty()) {
            return None;
        }
        let (mut flush, stragglers) = self.drain();
        flush.ack_each = stragglers.into_iter().collect();
        self.hole = None;
        Some(flush)
    }

    /// Takes the requeues and the acks a multiple ack can cover (those below every
    /// open delivery) into a flush; returns it with the acks above an open delivery
    /// (the stragglers), which the caller sends one by one or keeps.
    fn drain(&mut self) -> (Flush, BTreeSet<u64>) {
        let mut flush = Flush {
            requeue: std::mem::take(&mut self.requeues),
            ..Flush::default()
        };
        let stragglers = match self.open.first() {
            Some(&oldest) => self.acked.split_off(&oldest),
            None => BTreeSet::new(),
        };
        flush.ack_up_to = self.acked.last().copied();
        self.acked.clear();
        self.first_pending_at = None;
        self.flush_requested = false;
        (flush, stragglers)
    }

    /// True once closing was asked for: only the flusher task sends from then on.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing
    }

    /// Send everything settled, then close. Returns true if this is new.
    pub(crate) fn close(&mut self) -> bool {
        !std::mem::replace(&mut self.closing, true)
    }

    /// Forgets everything: the channel is gone, and the broker redelivers whatever
    /// was not acknowledged.
    pub(crate) fn abandon(&mut self) {
        self.closing = true;
        self.closed = true;
        self.open.clear();
        self.acked.clear();
        self.requeues.clear();
    }

    /// Decides what the flusher task does at `now`.
    pub(crate) fn next_step(&mut self, now: Instant) -> Step {
        if self.closed {
            return Step::Stop;
        }
        self.track_hole(now);
        let prefix_due = self.closing
            || self.flush_requested
            || self
                .first_pending_at
                .is_some_and(|since| now >= since + MAX_ACK_DELAY);
        let stall_due = self.closing
            || self
                .hole
                .is_some_and(|(_, since)| now >= since + STALL && self.has_stragglers());
        if !prefix_due && !stall_due {
            let prefix_deadline = self.first_pending_at.map(|since| since + MAX_ACK_DELAY);
            let stall_deadline = self.hole.map(|(_, since)| since + STALL);
            let deadline = match (prefix_deadline, stall_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            return Step::Wait(deadline);
        }
        let (mut flush, stragglers) = self.drain();
        self.acked = stragglers;
        if stall_due {
            flush.ack_each = std::mem::take(&mut self.acked).into_iter().collect();
            self.hole = None;
        }
        if self.closing {
            self.closed = true;
            self.open.clear();
        }
        Step::Send {
            flush,
            close: self.closing,
        }
    }

    /// The flusher task sleeps until `deadline` (or until notified).
    pub(crate) fn armed(&mut self, deadline: Option<Instant>) {
        self.armed = deadline;
    }

    /// Some acked tag is below every open one (a multiple ack can cover it).
    fn has_prefix(&self) -> bool {
        match (self.acked.first(), self.open.first()) {
            (Some(acked), Some(open)) => acked < open,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// Some acked tag waits above an open one.
    fn has_stragglers(&self) -> bool {
        match (self.acked.last(), self.open.first()) {
            (Some(acked), Some(open)) => acked > open,
            _ => false,
        }
    }

    /// Keeps `hole` on the oldest open tag while stragglers wait above it.
    /// Returns true if a new hole started (its timer must be armed).
    fn track_hole(&mut self, now: Instant) -> bool {
        if !self.has_stragglers() {
            self.hole = None;
            return false;
        }
        let oldest = self.open.first().copied();
        match self.hole {
            Some((tag, _)) if Some(tag) == oldest => false,
            _ => {
                self.hole = oldest.map(|tag| (tag, now));
                true
            }
        }
    }
}

/// A tag the window does not hold: never delivered, already settled, or the
/// channel is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unknown;

#[cfg(test)]
mod tests {
    use super::*;

    fn window(prefetch: u16, delivered: std::ops::RangeInclusive<u64>) -> AckWindow {
        let mut window = AckWindow::new(prefetch);
        for tag in delivered {
            window.delivered(tag);
        }
        window
    }

    fn send(step: Step) -> Flush {
        match step {
            Step::Send { flush, .. } => flush,
            other => panic!("expected a flush, got {other:?}"),
        }
    }

    #[test]
    fn in_order_acks_become_one_multiple_ack_per_batch() {
        let now = Instant::now();
        let mut w = window(16, 1..=10);
        assert_eq!(
            w.ack(1, now),
            Ok(Then::WakeTimer),
            "the first ack arms the timer"
        );
        assert_eq!(w.next_step(now), Step::Wait(Some(now + MAX_ACK_DELAY)));
        assert_eq!(w.ack(2, now), Ok(Then::Nothing));
        assert_eq!(w.ack(3, now), Ok(Then::Nothing));
        assert_eq!(w.ack(4, now), Ok(Then::Flush), "a batch of 16 / 4 is due");
        let flush = w.take_due(now).expect("due");
        assert_eq!(flush.ack_up_to, Some(4));
        assert!(flush.requeue.is_empty() && flush.ack_each.is_empty());
        assert_eq!(w.take_due(now), None);
        assert_eq!(w.next_step(now), Step::Wait(None));
    }

    #[test]
    fn out_of_order_acks_wait_for_the_hole_below_them() {
        let now = Instant::now();
        let mut w = window(32, 1..=5);
        assert_eq!(
            w.ack(2, now),
            Ok(Then::WakeTimer),
            "a hole: arm the stall timer"
        );
        assert_eq!(w.ack(3, now), Ok(Then::Nothing));
        assert!(!w.idle(), "nothing can be acked as a prefix yet");
        assert_eq!(
            w.ack(1, now),
            Ok(Then::WakeTimer),
            "a prefix: the flusher must wake sooner than the stall timer"
        );
        assert_eq!(w.ack(5, now), Ok(Then::Nothing));
        assert!(w.idle());
        let flush = w.take_due(now).expect("due");
        assert_eq!(
            flush.ack_up_to,
            Some(3),
            "1..=3, not 5: 4 is still being handled"
        );
        assert!(flush.ack_each.is_empty());
        w.ack(4, now).unwrap();
        assert_eq!(send(w.next_step(now + MAX_ACK_DELAY)).ack_up_to, Some(5));
    }

    #[test]
    fn an_idle_consumer_sends_a_few_acks_but_not_a_single_one() {
        let now = Instant::now();
        let mut w = window(256, 1..=20);
        w.ack(1, now).unwrap();
        assert!(!w.idle(), "one ack waits for more, or for the timer");
        for tag in 2..=16 {
            w.ack(tag, now).unwrap();
        }
        assert!(w.idle(), "256 / 16 acks are worth a frame");
        assert_eq!(w.take_due(now).expect("due").ack_up_to, Some(16));
        w.requeue(17).unwrap();
        assert!(w.idle(), "requeues go at once");
    }

    #[test]
    fn a_stalled_delivery_does_not_hold_the_acks_above_it() {
        let start = Instant::now();
        let mut w = window(256, 1..=4);
        assert_eq!(
            w.ack(2, start),
            Ok(Then::WakeTimer),
            "a hole appears: arm its timer"
        );
        w.ack(3, start).unwrap();
        assert_eq!(w.next_step(start), Step::Wait(Some(start + STALL)));
        let flush = send(w.next_step(start + STALL));
        assert_eq!(flush.ack_up_to, None);
        assert_eq!(flush.ack_each, vec![2, 3]);
        // Later the hole fills: the multiple ack's tag is 1, which the broker holds.
        w.ack(1, start + STALL).unwrap();
        assert_eq!(send(w.next_step(start + STALL * 2)).ack_up_to, Some(1));
    }

    #[test]
    fn requeues_go_first_and_are_never_covered_by_a_multiple_ack() {
        let now = Instant::now();
        let mut w = window(256, 1..=3);
        w.ack(1, now).unwrap();
        assert_eq!(w.requeue(2), Ok(Then::Flush));
        w.ack(3, now).unwrap();
        let flush = send(w.next_step(now));
        assert_eq!(flush.requeue, vec![2]);
        assert_eq!(flush.ack_up_to, Some(3));
    }

    #[test]
    fn settling_now_sends_every_ack_and_requeue_without_closing() {
        let now = Instant::now();
        let mut w = window(256, 1..=6);
        assert_eq!(w.take_settled(), None, "nothing settled yet");
        w.ack(1, now).unwrap();
        w.ack(2, now).unwrap();
        w.ack(4, now).unwrap();
        w.requeue(5).unwrap();
        let flush = w.take_settled().expect("settled");
        assert_eq!(flush.requeue, vec![5]);
        assert_eq!(flush.ack_up_to, Some(2), "below the open 3");
        assert_eq!(flush.ack_each, vec![4], "above it, one by one");
        assert_eq!(w.take_settled(), None);
        w.ack(3, now).unwrap();
        assert_eq!(
            w.take_settled().expect("still open").ack_up_to,
            Some(3),
            "later acks still go"
        );
    }

    #[test]
    fn closing_sends_everything_settled_then_stops() {
        let now = Instant::now();
        let mut w = window(256, 1..=6);
        w.ack(1, now).unwrap();
        w.ack(3, now).unwrap();
        w.requeue(4).unwrap();
        assert!(w.close());
        assert!(!w.close());
        assert_eq!(
            w.take_due(now),
            None,
            "only the flusher task sends once closing"
        );
        match w.next_step(now) {
            Step::Send { flush, close } => {
                assert!(close);
                assert_eq!(
                    flush,
                    Flush {
                        requeue: vec![4],
                        ack_up_to: Some(1),
                        ack_each: vec![3]
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(w.next_step(now), Step::Stop);
        assert_eq!(
            w.ack(2, now),
            Err(Unknown),
            "2 goes back when the channel closes"
        );
    }

    #[test]
    fn unknown_and_repeated_tags_are_refused() {
        let now = Instant::now();
        let mut w = window(8, 1..=2);
        assert_eq!(w.ack(9, now), Err(Unknown));
        w.ack(1, now).unwrap();
        assert_eq!(w.ack(1, now), Err(Unknown));
        assert_eq!(w.requeue(1), Err(Unknown));
    }

    #[test]
    fn the_timer_bounds_the_delay_without_idle_or_batch() {
        let now = Instant::now();
        let mut w = window(256, 1..=3);
        w.ack(1, now).unwrap();
        assert!(matches!(w.next_step(now), Step::Wait(Some(_))));
        assert_eq!(send(w.next_step(now + MAX_ACK_DELAY)).ack_up_to, Some(1));
    }

    #[test]
    fn a_multiple_ack_tag_is_always_outstanding() {
        // Random settle orders: every multiple-ack tag must be one the broker still
        // holds (acked by the runtime, never sent alone, never requeued).
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let start = Instant::now();
            let mut w = window(32, 1..=40);
            let mut pending: Vec<u64> = (1..=40).collect();
            let mut outstanding: BTreeSet<u64> = (1..=40).collect();
            let mut acked_by_runtime = BTreeSet::new();
            let mut t = start;
            while !pending.is_empty() {
                let i = (next() % pending.len() as u64) as usize;
                let tag = pending.swap_remove(i);
                if next() % 7 == 0 {
                    w.requeue(tag).unwrap();
                } else {
                    w.ack(tag, t).unwrap();
                    acked_by_runtime.insert(tag);
                }
                t += Duration::from_millis(next() % 20);
                if let Step::Send { flush, .. } = w.next_step(t) {
                    for tag in &flush.requeue {
                        assert!(outstanding.remove(tag));
                    }
                    if let Some(up_to) = flush.ack_up_to {
                        assert!(outstanding.contains(&up_to), "tag {up_to} is outstanding");
                        let covered: Vec<u64> = outstanding.range(..=up_to).copied().collect();
                        for tag in covered {
                            assert!(acked_by_runtime.contains(&tag), "{tag} was acked");
                            outstanding.remove(&tag);
                        }
                    }
                    for tag in &flush.ack_each {
                        assert!(acked_by_runtime.contains(tag));
                        assert!(outstanding.remove(tag));
                    }
                }
            }
            w.close();
            if let Step::Send { flush, .. } = w.next_step(t) {
                for tag in &flush.requeue {
                    assert!(outstanding.remove(tag));
                }
                if let Some(up_to) = flush.ack_up_to {
                    assert!(outstanding.contains(&up_to));
                    outstanding.retain(|&tag| tag > up_to);
                }
                for tag in &flush.ack_each {
                    assert!(outstanding.remove(tag));
                }
            }
            assert!(
                outstanding.is_empty(),
                "everything settled: {outstanding:?}"
            );
        }
    }
}
