//! The poll loop's busy-poll window, as pure logic with time passed in.
//!
//! After packets moved (or a flow task wrote upstream) the loop keeps
//! polling instead of sleeping for a short window: the next packet of a
//! request/response exchange usually comes within it, and catching it
//! awake saves a process wake-up each way. Each spin calls `sched_yield`
//! so the program or the proxy can use the core meanwhile.
//!
//! A spin only pays while the core is otherwise idle. When a yield hands
//! the core to another task for longer than [`CONTENDED`], the machine is
//! busy: spinning on would take CPU from the tasks that produce the next
//! packet, and a task that yields loses the wake-up preemption a sleeping
//! one gets when its data arrives. So the window closes until packets
//! move again (see docs/performance.md).
//!
//! Nor does a spin pay during a bulk download: with a send buffer's worth
//! of bytes in flight to the program the next packet comes whether the
//! loop sleeps or not, and a wake-up's latency is hidden behind the
//! buffer. A turn after which at least [`BULK_BYTES`] had been relayed to
//! the program (the caller counts; an upload's bytes are not counted, as
//! there the daemon is the slow part and spinning keeps it reading) keeps
//! the window shut for [`BULK_HOLD`]. Spinning through a download cost a
//! fifth of the daemon's CPU per GB with no gain in throughput
//! (docs/performance.md).

use std::time::{Duration, Instant};

/// The default busy-poll window after packets moved (docs/performance.md).
pub const SPIN_US: u64 = 300;

/// A `sched_yield` that took longer than this gave the core to someone.
pub const CONTENDED: Duration = Duration::from_micros(20);

/// Bytes relayed to the program in one turn of the loop that make it a
/// bulk download's turn.
pub const BULK_BYTES: u64 = 32 << 10;

/// How long after a bulk turn the window stays shut.
pub const BULK_HOLD: Duration = Duration::from_millis(1);

#[derive(Debug)]
pub struct SpinWindow {
    window: Duration,
    until: Instant,
    bulk_hold: Duration,
    bulk_until: Instant,
}

impl SpinWindow {
    pub fn new(window: Duration, bulk_hold: Duration, now: Instant) -> SpinWindow {
        SpinWindow { window, until: now, bulk_hold, bulk_until: now }
    }

    /// Packets moved or bytes were forwarded at `now`, `bytes` relayed to
    /// the program since the last such turn: (re)open the window, unless
    /// that was a bulk download's turn.
    pub fn activity(&mut self, now: Instant, bytes: u64) {
        self.until = now + self.window;
        if bytes >= BULK_BYTES {
            self.bulk_until = now + self.bulk_hold;
        }
    }

    /// Whether the loop should poll again without sleeping.
    pub fn spinning(&self, now: Instant) -> bool {
        now < self.until && now >= self.bulk_until
    }

    /// A yield ran from `start` to `end`; if another task held the core
    /// meanwhile, close the window so the loop sleeps on its next turn.
    pub fn yielded(&mut self, start: Instant, end: Instant) {
        if end.saturating_duration_since(start) > CONTENDED {
            self.until = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_micros(300);

    #[test]
    fn closed_until_activity_then_open_for_the_window() {
        let t0 = Instant::now();
        let mut s = SpinWindow::new(W, BULK_HOLD, t0);
        assert!(!s.spinning(t0), "a fresh loop must not spin");
        s.activity(t0, 0);
        assert!(s.spinning(t0 + Duration::from_micros(299)));
        assert!(!s.spinning(t0 + W));
    }

    #[test]
    fn new_activity_extends_the_window() {
        let t0 = Instant::now();
        let mut s = SpinWindow::new(W, BULK_HOLD, t0);
        s.activity(t0, 0);
        s.activity(t0 + Duration::from_micros(200), 0);
        assert!(s.spinning(t0 + Duration::from_micros(450)));
        assert!(!s.spinning(t0 + Duration::from_micros(500)));
    }

    #[test]
    fn a_quick_yield_keeps_spinning() {
        let t0 = Instant::now();
        let mut s = SpinWindow::new(W, BULK_HOLD, t0);
        s.activity(t0, 0);
        s.yielded(t0, t0 + Duration::from_micros(2));
        assert!(s.spinning(t0 + Duration::from_micros(3)));
    }

    #[test]
    fn a_yield_that_gave_the_core_away_closes_the_window() {
        let t0 = Instant::now();
        let mut s = SpinWindow::new(W, BULK_HOLD, t0);
        s.activity(t0, 0);
        let end = t0 + Duration::from_micros(10) + CONTENDED + Duration::from_micros(1);
        s.yielded(t0 + Duration::from_micros(10), end);
        assert!(!s.spinning(end), "a contended core must end the spin");
        // ... until packets move again.
        s.activity(end, 0);
        assert!(s.spinning(end + Duration::from_micros(1)));
    }

    #[test]
    fn a_bulk_turn_shuts_the_window_for_the_hold_then_small_turns_reopen_it() {
        let t0 = Instant::now();
        let mut s = SpinWindow::new(W, BULK_HOLD, t0);
        s.activity(t0, 100);
        assert!(s.spinning(t0 + Duration::from_micros(1)));
        s.activity(t0 + Duration::from_micros(10), BULK_BYTES - 1);
        assert!(s.spinning(t0 + Duration::from_micros(11)), "just under a bulk turn still spins");
        let t1 = t0 + Duration::from_micros(20);
        s.activity(t1, BULK_BYTES);
        assert!(!s.spinning(t1), "a bulk turn must not spin");
        // Acknowledgements alone during the hold do not reopen it...
        s.activity(t1 + Duration::from_micros(100), 0);
        assert!(!s.spinning(t1 + Duration::from_micros(101)));
        // ... and once the transfer has been quiet for the hold, a small
        // exchange spins again.
        let t2 = t1 + BULK_HOLD;
        s.activity(t2, 80);
        assert!(s.spinning(t2 + Duration::from_micros(1)));
    }

    #[test]
    fn a_zero_bulk_hold_spins_through_bulk_transfers() {
        let t0 = Instant::now();
        let mut s = SpinWindow::new(W, Duration::ZERO, t0);
        s.activity(t0, 1 << 20);
        assert!(s.spinning(t0 + Duration::from_micros(1)));
    }

    #[test]
    fn a_zero_window_never_spins() {
        let t0 = Instant::now();
        let mut s = SpinWindow::new(Duration::ZERO, BULK_HOLD, t0);
        s.activity(t0, 0);
        assert!(!s.spinning(t0));
    }
}
