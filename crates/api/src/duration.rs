//! Durations as Istio writes them: Go `time.ParseDuration` syntax, which is
//! also what protobuf JSON durations (`"1.5s"`) look like.
//!
//! A duration is a sequence of decimal numbers, each with an optional
//! fraction and a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`): `"1s"`,
//! `"0.5s"`, `"100ms"`, `"1h2m"`. `"0"` alone is zero. Negative durations
//! cannot be represented and are rejected.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("negative duration {0:?} is not allowed")]
    Negative(String),
    #[error(
        "invalid duration {0:?}: expected numbers with units ns, us, ms, s, m or h (e.g. \"1s\", \"0.5s\", \"1h2m\")"
    )]
    Syntax(String),
    #[error("duration {0:?} is missing a unit")]
    MissingUnit(String),
    #[error("duration {0:?} has unknown unit {1:?}")]
    UnknownUnit(String, String),
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parses an Istio duration string into a [`Duration`].
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let (neg, mut rest) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(DurationError::Syntax(text.to_string()));
    }
    let mut total: u128 = 0; // nanoseconds
    while !rest.is_empty() {
        // integer part
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after_int) = rest.split_at(int_len);
        let (frac_part, after_num) = if let Some(stripped) = after_int.strip_prefix('.') {
            let frac_len = stripped.bytes().take_while(u8::is_ascii_digit).count();
            stripped.split_at(frac_len)
        } else {
            ("", after_int)
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(DurationError::Syntax(text.to_string()));
        }
        let unit_len = after_num
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after_num.len(), |(i, _)| i);
        let (unit, next) = after_num.split_at(unit_len);
        if unit.is_empty() {
            return Err(DurationError::MissingUnit(text.to_string()));
        }
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            other => {
                return Err(DurationError::UnknownUnit(
                    text.to_string(),
                    other.to_string(),
                ));
            }
        };
        let overflow = || DurationError::Overflow(text.to_string());
        let int_value: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| overflow())?
        };
        let mut value = int_value.checked_mul(scale).ok_or_else(overflow)?;
        if !frac_part.is_empty() {
            // Only as many fraction digits as can matter at nanosecond scale.
            let digits: String = frac_part.chars().take(30).collect();
            let frac: u128 = digits.parse().map_err(|_| overflow())?;
            let denom = 10u128
                .checked_pow(digits.len() as u32)
                .ok_or_else(overflow)?;
            value = value
                .checked_add(frac.checked_mul(scale).ok_or_else(overflow)? / denom)
                .ok_or_else(overflow)?;
        }
        total = total.checked_add(value).ok_or_else(overflow)?;
        rest = next;
    }
    if neg && total != 0 {
        return Err(DurationError::Negative(text.to_string()));
    }
    let secs = u64::try_from(total / 1_000_000_000)
        .map_err(|_| DurationError::Overflow(text.to_string()))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Formats a duration the way Istio prints them (`"1.5s"`, `"100ms"`).
pub fn format(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) && d.as_secs() == 0 {
        format!("{}ms", d.subsec_millis())
    } else {
        let s = format!("{}.{:09}", d.as_secs(), d.subsec_nanos());
        format!("{}s", s.trim_end_matches('0'))
    }
}

/// A duration field of an Istio object (`timeout`, `perTryTimeout`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct IstioDuration(pub Duration);

impl IstioDuration {
    /// The duration as a [`std::time::Duration`].
    pub fn get(self) -> Duration {
        self.0
    }
}

impl From<Duration> for IstioDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl std::str::FromStr for IstioDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s).map(Self)
    }
}

impl fmt::Display for IstioDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format(self.0))
    }
}

impl Serialize for IstioDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(self.0))
    }
}

impl<'de> Deserialize<'de> for IstioDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        parse(&s).map(Self).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_forms() {
        let ms = Duration::from_millis;
        assert_eq!(parse("1s"), Ok(ms(1000)));
        assert_eq!(parse("0.5s"), Ok(ms(500)));
        assert_eq!(parse(".5s"), Ok(ms(500)));
        assert_eq!(parse("100ms"), Ok(ms(100)));
        assert_eq!(parse("1h2m"), Ok(ms(3_720_000)));
        assert_eq!(parse("1m30.5s"), Ok(ms(90_500)));
        assert_eq!(parse("10us"), Ok(Duration::from_micros(10)));
        assert_eq!(parse("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("1.000340012s"), Ok(Duration::new(1, 340_012)));
    }

    #[test]
    fn rejects_bad_forms() {
        for bad in [
            "",
            "s",
            "1",
            "1x",
            "-1s",
            "1.s.",
            "1..5s",
            "ms",
            "1s2",
            "99999999999999999999999h",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn formats_round_trip() {
        for s in ["1s", "100ms", "1.5s", "0s", "3600s"] {
            assert_eq!(format(parse(s).expect("valid")), s);
        }
    }
}
