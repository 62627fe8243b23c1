//! Points in time as minipod records them: UTC with nanoseconds, written as RFC 3339
//! text in state files and records (so that older records read back), compared and
//! converted as times, not strings.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A recorded point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Timestamp(SystemTime);

/// Text that is not an RFC 3339 time.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an RFC 3339 time (like 2026-12-03T14:55:21.000000001Z)")]
pub struct TimestampError(String);

impl Timestamp {
    /// Now.
    pub fn now() -> Self {
        Self(SystemTime::now())
    }

    /// Nanoseconds since the Unix epoch, as the CRI gives times (0 before it).
    pub fn unix_nanos(&self) -> i64 {
        self.0.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
    }

    /// Time since then (zero for a time in the future).
    pub fn elapsed(&self) -> Duration {
        self.0.elapsed().unwrap_or_default()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_nanos(self.0))
    }
}

impl std::str::FromStr for Timestamp {
    type Err = TimestampError;
    fn from_str(s: &str) -> Result<Self, TimestampError> {
        humantime::parse_rfc3339_weak(s).map(Self).map_err(|_| TimestampError(s.to_string()))
    }
}

impl TryFrom<String> for Timestamp {
    type Error = TimestampError;
    fn try_from(s: String) -> Result<Self, TimestampError> {
        s.parse()
    }
}

impl From<Timestamp> for String {
    fn from(t: Timestamp) -> String {
        t.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_as_rfc_3339_with_nanoseconds() {
        let t: Timestamp = "2026-11-26T17:00:00.000000001Z".parse().unwrap();
        assert_eq!(t.unix_nanos() % 1_000_000_000, 1);
        assert_eq!(t.to_string(), "2026-11-26T17:00:00.000000001Z");
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        assert!("yesterday".parse::<Timestamp>().is_err());
        let now = Timestamp::now();
        assert!(t < now && now.unix_nanos() > t.unix_nanos());
    }
}
