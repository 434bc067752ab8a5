//! Human durations in config files and on the command line ("200ms", "30s", "10m").

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// The longest duration any config file, plan or flag may hold: 30 days.
///
/// Every wait in Handover is a deadline `now + duration`; bounding the value where
/// it is read keeps that sum far from overflow (`500000000000y` once panicked the
/// coordinator, and every `resume` after it), and no sensible wait is longer.
pub const MAX: Duration = Duration::from_secs(30 * 24 * 3600);

/// Parses "30s", "2m", "1h 30m", "250ms" into a [`Duration`] of at most [`MAX`].
pub fn parse(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        format!("invalid duration {text:?}: {e} (write it like \"500ms\", \"30s\" or \"10m\")")
    })?;
    if d > MAX {
        return Err(format!(
            "duration {text:?} is longer than {}: give at most \"30days\"",
            format(MAX)
        ));
    }
    Ok(d)
}

/// Like [`parse`], refusing anything shorter than `min` (a zero interval is a busy
/// loop, a zero timeout can never be met).
pub fn parse_at_least(text: &str, min: Duration) -> Result<Duration, String> {
    let d = parse(text)?;
    if d < min {
        return Err(format!(
            "duration {text:?} is too short: give at least \"{}\"",
            format(min)
        ));
    }
    Ok(d)
}

/// Formats a duration the way [`parse`] reads it, to the millisecond: people and
/// JSON readers get "6s 265ms", not "6s 265ms 899us 757ns" (issue 18).
pub fn format(d: Duration) -> String {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

/// A deadline `now + wait` past the clock's range: what `checked_add` on an
/// `Instant` or a `SystemTime` turns into, instead of a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what}: a wait of {} is beyond this clock's range: give a shorter one (at most \"30days\")",
    format(*wait)
)]
pub struct BeyondClock {
    /// What the deadline was for ("health check", "attach").
    pub what: &'static str,
    /// The wait that did not fit.
    pub wait: Duration,
}

impl BeyondClock {
    /// For `now.checked_add(wait).ok_or_else(|| BeyondClock::new(what, wait))`.
    pub fn new(what: &'static str, wait: Duration) -> Self {
        BeyondClock { what, wait }
    }
}

/// `#[serde(with = "handover_common::duration::serde_human")]` for config fields.
pub mod serde_human {
    use super::*;

    /// Serializes as a human string.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    /// Deserializes from a human string such as "30s".
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Like [`serde_human`], refusing zero: for timeouts and periods, where `0s`
/// would never be met or would spin.
pub mod serde_human_positive {
    use super::*;

    /// Serializes as a human string.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    /// Deserializes from a human string such as "30s", at least 1ms.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse_at_least(&text, Duration::from_millis(1)).map_err(serde::de::Error::custom)
    }
}

/// Like [`serde_human`], for `Option<Duration>` fields.
pub mod serde_human_opt {
    use super::*;

    /// Serializes as a human string, or nothing.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&format(*d)),
            None => s.serialize_none(),
        }
    }

    /// Deserializes from an optional human string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| parse(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 18: durations reached JSON and progress lines to the nanosecond.
    #[test]
    fn formats_to_the_millisecond_and_parses_back() {
        let d = Duration::new(6, 265_899_757);
        assert_eq!(format(d), "6s 265ms");
        assert_eq!(parse(&format(d)), Ok(Duration::from_millis(6265)));
        assert_eq!(format(Duration::from_micros(400)), "0s");
    }

    #[test]
    fn parses_the_forms_operators_write() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse(" 10m "), Ok(Duration::from_secs(600)));
        assert!(parse("ten minutes").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn refuses_durations_no_clock_can_add() {
        let err = parse("500000000000y").expect_err("beyond the clock");
        assert!(err.contains("30days"), "{err}");
        assert_eq!(parse("30days"), Ok(MAX));
        assert!(parse("31days").is_err());
    }

    #[test]
    fn positive_durations_refuse_zero() {
        let err = parse_at_least("0s", Duration::from_millis(1)).expect_err("zero");
        assert!(err.contains("at least \"1ms\""), "{err}");
        assert!(parse_at_least("5ms", Duration::from_millis(1)).is_ok());
    }

    #[test]
    fn a_deadline_past_the_clock_names_what_it_was_for() {
        let err = BeyondClock::new("health check", Duration::MAX).to_string();
        assert!(err.starts_with("health check: a wait of"), "{err}");
    }
}
