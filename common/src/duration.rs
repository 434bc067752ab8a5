//! Human durations in config files and on the command line ("200ms", "30s", "10m").

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Parses "30s", "2m", "1h 30m", "250ms" into a [`Duration`].
pub fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("invalid duration {text:?}: {e} (write it like \"500ms\", \"30s\" or \"10m\")")
    })
}

/// Formats a duration the way [`parse`] reads it.
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
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

    #[test]
    fn parses_the_forms_operators_write() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse(" 10m "), Ok(Duration::from_secs(600)));
        assert!(parse("ten minutes").is_err());
        assert!(parse("").is_err());
    }
}
