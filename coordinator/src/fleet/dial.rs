//! How the coordinator dials many agents at once without hurting itself (issue 14:
//! `status` to 300 agents at concurrency 300 reported 93–141 healthy agents
//! "unreachable": the burst of handshakes overflowed the coordinator's own UDP
//! receive buffer). Three pure decisions live here, tested without a network:
//! * [`Pacer`]: handshakes start at a bounded rate, never as one burst;
//! * [`retry_after`]: a handshake lost to load is tried again, shortly, a couple of
//!   times, before the host is called unreachable;
//! * [`attempt_limit`]: how the host's deadline is shared between those attempts.

use std::time::{Duration, Instant};

/// Handshakes in progress at once, whatever the call concurrency: each one brings
/// back a flight of ~4–5 KB (certificate chain), so 128 fit in 1 MB of buffer.
pub const MAX_HANDSHAKES: usize = 128;

/// The spacing between two handshake starts: 2,000 a second, about twice what
/// one coordinator core can complete (~1 ms of CPU each), so pacing never is
/// the bottleneck yet a thousand agents are never dialled in the same millisecond.
pub const HANDSHAKE_SPACING: Duration = Duration::from_micros(500);

/// Handshakes tried again after the first failed, before "unreachable".
pub const RETRIES: u32 = 2;

/// The pause before the first retry; it doubles for the next.
const BACKOFF: Duration = Duration::from_millis(100);

/// The shortest attempt worth making: QUIC resends a lost first packet after
/// about 1 s (three times its initial RTT estimate of 333 ms).
const MIN_ATTEMPT: Duration = Duration::from_millis(1500);

/// Hands out handshake start times at most one per `spacing`.
#[derive(Debug)]
pub struct Pacer {
    spacing: Duration,
    next: Option<Instant>,
}

impl Pacer {
    /// A pacer that lets one handshake start per `spacing`.
    pub fn new(spacing: Duration) -> Self {
        Pacer {
            spacing,
            next: None,
        }
    }

    /// When a handshake asked for at `now` may start (`now` itself when the pace
    /// allows it), reserving that slot.
    pub fn slot(&mut self, now: Instant) -> Instant {
        let at = match self.next {
            Some(next) if next > now => next,
            _ => now,
        };
        self.next = Some(at + self.spacing);
        at
    }
}

/// How a handshake attempt failed, as far as trying again is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialFailure {
    /// No answer within the attempt's time: packets lost (on a loaded network or
    /// in an overflowing buffer) or a host that is down.
    TimedOut,
    /// The agent refused for lack of room (too many handshakes pending there).
    Busy,
    /// Anything else (a certificate refused, an address that cannot be dialled):
    /// trying again would fail the same way.
    Final,
}

/// The pause before trying again after `failed` attempts (1 after the first),
/// the last of which failed as `failure`; `None` when the host's answer is final.
pub fn retry_after(failed: u32, failure: DialFailure) -> Option<Duration> {
    if failure == DialFailure::Final || failed == 0 || failed > RETRIES {
        return None;
    }
    Some(BACKOFF * 2u32.saturating_pow(failed - 1))
}

/// The time one attempt may take when `remaining` is left of the host's
/// deadline and `attempt` (0 for the first) is about to start: an equal share of
/// what is left for this and the attempts after it, but never less than one
/// QUIC resend (unless less than that is left).
pub fn attempt_limit(remaining: Duration, attempt: u32) -> Duration {
    let attempts_left = (RETRIES + 1).saturating_sub(attempt).max(1);
    (remaining / attempts_left).max(MIN_ATTEMPT).min(remaining)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_asked_at_once_start_one_spacing_apart() {
        let mut pacer = Pacer::new(Duration::from_millis(1));
        let now = Instant::now();
        let slots: Vec<_> = (0..3).map(|_| pacer.slot(now)).collect();
        assert_eq!(
            slots,
            [
                now,
                now + Duration::from_millis(1),
                now + Duration::from_millis(2)
            ]
        );
    }

    #[test]
    fn a_handshake_after_a_pause_starts_at_once() {
        let mut pacer = Pacer::new(Duration::from_millis(1));
        let now = Instant::now();
        pacer.slot(now);
        let later = now + Duration::from_secs(1);
        assert_eq!(pacer.slot(later), later);
        assert_eq!(pacer.slot(later), later + Duration::from_millis(1));
    }

    #[test]
    fn a_lost_or_refused_handshake_is_tried_twice_more_with_a_growing_pause() {
        for failure in [DialFailure::TimedOut, DialFailure::Busy] {
            assert_eq!(retry_after(1, failure), Some(Duration::from_millis(100)));
            assert_eq!(retry_after(2, failure), Some(Duration::from_millis(200)));
            assert_eq!(retry_after(3, failure), None, "{failure:?}");
        }
    }

    #[test]
    fn a_refused_certificate_is_never_tried_again() {
        assert_eq!(retry_after(1, DialFailure::Final), None);
    }

    #[test]
    fn the_deadline_is_shared_between_the_attempts_left() {
        let five = Duration::from_secs(5);
        // Three attempts in 5 s: the first may take a third.
        assert_eq!(attempt_limit(five, 0), five / 3);
        // The last attempt takes whatever is left.
        assert_eq!(
            attempt_limit(Duration::from_secs(2), 2),
            Duration::from_secs(2)
        );
        // A short deadline still lets one QUIC resend happen...
        assert_eq!(attempt_limit(Duration::from_secs(2), 0), MIN_ATTEMPT);
        // ...but never more than what is left.
        let little = Duration::from_millis(300);
        assert_eq!(attempt_limit(little, 0), little);
        assert_eq!(attempt_limit(little, 7), little);
    }
}
