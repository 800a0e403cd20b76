//! Keeps repeated warnings (a refused flow per SYN under a flood, a bot
//! retrying against a dead proxy) from flooding the log: at most one line
//! per reason per interval, each saying how many were suppressed before it.
//! Pure: time is passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

const MAX_REASONS: usize = 1024;

#[derive(Debug)]
pub struct RateLog {
    every: Duration,
    /// Per reason: when a line was last logged, and how many since then
    /// were suppressed. Bounded: cleared when it grows past `MAX_REASONS`.
    last: HashMap<String, (Instant, u64)>,
}

impl RateLog {
    pub fn new(every: Duration) -> RateLog {
        RateLog { every, last: HashMap::new() }
    }

    /// `Some(suppressed)` when a line for `reason` may be logged now, with
    /// the number of lines suppressed since the previous one; else `None`
    /// (and the line is counted as suppressed).
    pub fn allow(&mut self, reason: &str, now: Instant) -> Option<u64> {
        match self.last.get_mut(reason) {
            Some((at, suppressed)) if now.duration_since(*at) < self.every => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let n = *suppressed;
                *at = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                if self.last.len() >= MAX_REASONS {
                    self.last.clear();
                }
                self.last.insert(reason.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_suppressed_count() {
        let mut r = RateLog::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(r.allow("limit", t0), Some(0));
        for i in 1..=5 {
            assert_eq!(r.allow("limit", t0 + Duration::from_millis(i * 100)), None);
        }
        assert_eq!(r.allow("proxy", t0 + Duration::from_millis(600)), Some(0), "reasons are separate");
        assert_eq!(r.allow("limit", t0 + Duration::from_millis(1000)), Some(5));
        assert_eq!(r.allow("limit", t0 + Duration::from_millis(1100)), None);
    }
}
