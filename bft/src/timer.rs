//! One countdown type for the replica's timers (the request timer of PBFT §4.4, the
//! view-change timer and VIEW-CHANGE resend of §4.5.2, the STATUS, state-fetch and batch-body
//! retries), so that arming, stopping and expiry are written once instead of as
//! hand-decremented counters (TigerBeetle keeps its timeouts the same way).

/// A countdown in ticks: stopped, or running with the ticks left until it fires.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Timer(Option<u32>);

impl Timer {
    /// A countdown already running, `ticks` from firing.
    pub fn started(ticks: u32) -> Self {
        Timer(Some(ticks))
    }

    /// Starts (or restarts) the countdown: it fires on the `ticks`-th [`Timer::tick`] from now
    /// (on the first if `ticks` is 0 or 1).
    pub fn start(&mut self, ticks: u32) {
        self.0 = Some(ticks);
    }

    /// Starts the countdown unless it is already running (a running one keeps its deadline).
    pub fn start_if_stopped(&mut self, ticks: u32) {
        if self.0.is_none() {
            self.0 = Some(ticks);
        }
    }

    pub fn stop(&mut self) {
        self.0 = None;
    }

    pub fn is_running(&self) -> bool {
        self.0.is_some()
    }

    /// Counts one tick down; true on the tick the countdown runs out, which also stops it.
    pub fn tick(&mut self) -> bool {
        match self.0 {
            Some(t) if t <= 1 => {
                self.0 = None;
                true
            }
            Some(t) => {
                self.0 = Some(t - 1);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Timer;

    #[test]
    fn fires_once_on_the_last_tick_and_restarts_only_when_asked() {
        let mut t = Timer::default();
        assert!(!t.tick());
        t.start(3);
        assert!(!t.tick());
        t.start_if_stopped(10); // running: keeps its deadline
        assert!(!t.tick());
        assert!(t.tick());
        assert!(!t.is_running());
        assert!(!t.tick());
        t.start(0);
        assert!(t.tick());
        t.start(5);
        t.stop();
        assert!(!t.tick());
    }
}
