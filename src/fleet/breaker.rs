//! The circuit breaker in front of the proxy service: after `failures`
//! consecutive failed calls it opens and refuses calls for `cooldown`; then
//! one probe call is let through (half-open): success closes it, failure
//! opens it again. Pure: time is passed in (seconds, any monotonic origin).

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    enabled: bool,
    failures: u32,
    cooldown_ms: u64,
    consecutive: u32,
    open_until_ms: Option<u64>,
    probing: bool,
}

/// What `allow` decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Allow {
    Yes,
    /// A half-open probe.
    Probe,
    /// Open: no call until this time.
    No {
        until_ms: u64,
    },
}

impl Breaker {
    pub fn new(enabled: bool, failures: u32, cooldown_ms: u64) -> Breaker {
        Breaker { enabled, failures: failures.max(1), cooldown_ms, consecutive: 0, open_until_ms: None, probing: false }
    }

    pub fn state(&self, now_ms: u64) -> State {
        match self.open_until_ms {
            None => State::Closed,
            Some(u) if now_ms < u && !self.probing => State::Open,
            Some(_) => State::HalfOpen,
        }
    }

    /// Whether a call may go out now.
    pub fn allow(&mut self, now_ms: u64) -> Allow {
        match self.open_until_ms {
            None => Allow::Yes,
            Some(u) if now_ms < u => Allow::No { until_ms: u },
            Some(u) if self.probing => Allow::No { until_ms: u.max(now_ms) + self.cooldown_ms },
            Some(_) => {
                self.probing = true;
                Allow::Probe
            }
        }
    }

    pub fn success(&mut self) {
        self.consecutive = 0;
        self.open_until_ms = None;
        self.probing = false;
    }

    /// Records a failure; returns true when the breaker is (re)opened.
    pub fn failure(&mut self, now_ms: u64) -> bool {
        self.consecutive = self.consecutive.saturating_add(1);
        if !self.enabled {
            return false;
        }
        if self.probing || self.consecutive >= self.failures {
            self.open_until_ms = Some(now_ms + self.cooldown_ms);
            self.probing = false;
            return true;
        }
        false
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_probes_after_the_cooldown() {
        let mut b = Breaker::new(true, 3, 30_000);
        assert_eq!(b.allow(0), Allow::Yes);
        assert!(!b.failure(0));
        assert!(!b.failure(1));
        assert_eq!(b.state(1), State::Closed);
        assert!(b.failure(2), "third failure opens");
        assert_eq!(b.state(3), State::Open);
        assert_eq!(b.allow(10_000), Allow::No { until_ms: 30_002 });
        assert_eq!(b.allow(30_002), Allow::Probe, "half-open after the cooldown");
        assert_eq!(b.state(30_002), State::HalfOpen);
        assert!(matches!(b.allow(30_003), Allow::No { .. }), "one probe at a time");
        assert!(b.failure(30_500), "a failed probe opens it again");
        assert_eq!(b.allow(31_000), Allow::No { until_ms: 60_500 });
        assert_eq!(b.allow(60_500), Allow::Probe);
        b.success();
        assert_eq!(b.state(60_501), State::Closed);
        assert_eq!(b.allow(60_501), Allow::Yes);
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[test]
    fn disabled_never_opens() {
        let mut b = Breaker::new(false, 1, 1000);
        for t in 0..10 {
            assert!(!b.failure(t));
            assert_eq!(b.allow(t), Allow::Yes);
        }
        assert_eq!(b.consecutive_failures(), 10);
    }
}
