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

use std::time::{Duration, Instant};

/// The default busy-poll window after packets moved (docs/performance.md).
pub const SPIN_US: u64 = 300;

/// A `sched_yield` that took longer than this gave the core to someone.
pub const CONTENDED: Duration = Duration::from_micros(20);

#[derive(Debug)]
pub struct SpinWindow {
    window: Duration,
    until: Instant,
}

impl SpinWindow {
    pub fn new(window: Duration, now: Instant) -> SpinWindow {
        SpinWindow { window, until: now }
    }

    /// Packets moved or bytes were forwarded at `now`: (re)open the window.
    pub fn activity(&mut self, now: Instant) {
        self.until = now + self.window;
    }

    /// Whether the loop should poll again without sleeping.
    pub fn spinning(&self, now: Instant) -> bool {
        now < self.until
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
        let mut s = SpinWindow::new(W, t0);
        assert!(!s.spinning(t0), "a fresh loop must not spin");
        s.activity(t0);
        assert!(s.spinning(t0 + Duration::from_micros(299)));
        assert!(!s.spinning(t0 + W));
    }

    #[test]
    fn new_activity_extends_the_window() {
        let t0 = Instant::now();
        let mut s = SpinWindow::new(W, t0);
        s.activity(t0);
        s.activity(t0 + Duration::from_micros(200));
        assert!(s.spinning(t0 + Duration::from_micros(450)));
        assert!(!s.spinning(t0 + Duration::from_micros(500)));
    }

    #[test]
    fn a_quick_yield_keeps_spinning() {
        let t0 = Instant::now();
        let mut s = SpinWindow::new(W, t0);
        s.activity(t0);
        s.yielded(t0, t0 + Duration::from_micros(2));
        assert!(s.spinning(t0 + Duration::from_micros(3)));
    }

    #[test]
    fn a_yield_that_gave_the_core_away_closes_the_window() {
        let t0 = Instant::now();
        let mut s = SpinWindow::new(W, t0);
        s.activity(t0);
        let end = t0 + Duration::from_micros(10) + CONTENDED + Duration::from_micros(1);
        s.yielded(t0 + Duration::from_micros(10), end);
        assert!(!s.spinning(end), "a contended core must end the spin");
        // ... until packets move again.
        s.activity(end);
        assert!(s.spinning(end + Duration::from_micros(1)));
    }

    #[test]
    fn a_zero_window_never_spins() {
        let t0 = Instant::now();
        let mut s = SpinWindow::new(Duration::ZERO, t0);
        s.activity(t0);
        assert!(!s.spinning(t0));
    }
}
