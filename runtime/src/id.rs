//! Validated container ids: the only strings that become paths under the state dir.

use std::fmt;

/// Why a string is not a usable container id.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    #[error("container id is empty: give a name such as `web-1`")]
    Empty,
    #[error("container id {0:?} is {1} bytes long: use at most 128")]
    TooLong(String, usize),
    #[error("container id {0:?} has the character {1:?}: use only letters, digits, `_`, `-`, `.` and `+`, not starting with `.` or `-`")]
    BadChar(String, char),
}

/// A container id that is safe to use as one path component and as a cgroup name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContainerId(String);

impl ContainerId {
    /// Checks `id` (the same character set runc accepts, minus a leading dot or dash).
    pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(IdError::Empty);
        }
        if id.len() > 128 {
            let len = id.len();
            return Err(IdError::TooLong(id, len));
        }
        for (i, c) in id.chars().enumerate() {
            let ok = c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.');
            if !ok || (i == 0 && matches!(c, '.' | '-')) {
                return Err(IdError::BadChar(id, c));
            }
        }
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ContainerId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl From<ContainerId> for String {
    fn from(id: ContainerId) -> String {
        id.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ContainerId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_runc_style_ids() {
        for id in ["a", "web-1", "x.y_z+1", "0abc"] {
            assert!(ContainerId::new(id).is_ok(), "{id}");
        }
    }

    #[test]
    fn rejects_anything_that_could_escape_a_directory() {
        for id in ["", ".", "..", "a/b", "../x", "a\0b", "-x", ".hidden", "a b"] {
            assert!(ContainerId::new(id).is_err(), "{id:?}");
        }
        assert!(ContainerId::new("x".repeat(129)).is_err());
    }
}
