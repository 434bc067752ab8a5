//! An estimate of when a draining host's last session ends, from how fast its
//! count fell recently. For display only: nothing decides on it.

use std::collections::VecDeque;
use std::time::Duration;

/// The ETA is estimated from the decay over this much recent history.
pub const ETA_WINDOW: Duration = Duration::from_secs(30);

/// The blocking-session counts of one host over the last [`ETA_WINDOW`].
#[derive(Debug, Clone, Default)]
pub struct Decay {
    samples: VecDeque<(Duration, u32)>,
}

impl Decay {
    /// Records the count at `elapsed` (a repeated instant is ignored).
    pub fn record(&mut self, elapsed: Duration, blocking: u32) {
        if self.samples.back().is_some_and(|(t, _)| *t == elapsed) {
            return;
        }
        self.samples.push_back((elapsed, blocking));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| elapsed.saturating_sub(*t) > ETA_WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// Time until zero at the rate the count fell over the window; `None` when
    /// it did not fall (or there are no sessions to wait for).
    pub fn eta(&self) -> Option<Duration> {
        let &(_, last) = self.samples.back()?;
        if last == 0 {
            return None;
        }
        eta_from_decay(self.samples.iter().copied())
    }
}

/// Time until zero at the rate the count fell over the samples, if it fell.
pub fn eta_from_decay(samples: impl Iterator<Item = (Duration, u32)>) -> Option<Duration> {
    let samples: Vec<(Duration, u32)> = samples.collect();
    let (t0, n0) = *samples.first()?;
    let (t1, n1) = *samples.last()?;
    if n1 == 0 {
        return Some(Duration::ZERO);
    }
    let span = t1.checked_sub(t0)?.as_secs_f64();
    if n1 >= n0 || span <= 0.0 {
        return None;
    }
    let rate = f64::from(n0 - n1) / span;
    Some(Duration::from_secs_f64(f64::from(n1) / rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn eta_follows_the_observed_decay() {
        // 10 → 6 sessions in 2 s: 2/s, so 3 s to go.
        let eta = eta_from_decay([(ms(0), 10), (ms(1000), 8), (ms(2000), 6)].into_iter());
        assert_eq!(eta, Some(Duration::from_secs(3)));
        assert_eq!(eta_from_decay([(ms(0), 3), (ms(900), 3)].into_iter()), None);
        assert_eq!(eta_from_decay([(ms(0), 3), (ms(900), 4)].into_iter()), None);
        assert_eq!(eta_from_decay(std::iter::empty()), None);
        assert_eq!(
            eta_from_decay([(ms(5), 0)].into_iter()),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn the_decay_forgets_what_is_older_than_its_window() {
        let mut d = Decay::default();
        d.record(ms(0), 100);
        d.record(ms(40_000), 10);
        d.record(ms(41_000), 8);
        // Only 10 → 8 in 1 s counts: 4 s to go, not the 100 → 8 of 41 s.
        assert_eq!(d.eta(), Some(Duration::from_secs(4)));
        d.record(ms(42_000), 0);
        assert_eq!(d.eta(), None, "nothing left to wait for");
    }
}
