//! Signal names and numbers as `kill` takes them (`KILL`, `SIGKILL`, `9`, `RTMIN+2`).

use std::fmt;

/// A signal that was not understood.
#[derive(Debug, thiserror::Error)]
#[error("unknown signal {0:?}: use a name such as TERM, SIGKILL or HUP, or a number from 1 to 64")]
pub struct SignalError(String);

/// A signal number from 1 to 64, checked on parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal(i32);

const NAMES: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("IOT", libc::SIGIOT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("POLL", libc::SIGPOLL),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

impl Signal {
    /// SIGKILL.
    pub const KILL: Signal = Signal(libc::SIGKILL);
    /// SIGTERM.
    pub const TERM: Signal = Signal(libc::SIGTERM);

    /// The raw number.
    pub fn number(self) -> i32 {
        self.0
    }

    /// Whether process `pid` has a handler for this signal now (`SigCgt` in its
    /// status). A PID namespace's init only receives the signals it handles, so a
    /// signal sent before its program installed the handler was dropped.
    pub fn caught_by(self, pid: i32) -> bool {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            return false;
        };
        let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:")).and_then(|m| u64::from_str_radix(m.trim(), 16).ok());
        mask.is_some_and(|m| m & (1u64 << (self.0 - 1)) != 0)
    }

    /// Wraps a raw number, checking the range.
    pub fn from_number(n: i32) -> Result<Self, SignalError> {
        if (1..=64).contains(&n) {
            Ok(Self(n))
        } else {
            Err(SignalError(n.to_string()))
        }
    }
}

impl std::str::FromStr for Signal {
    type Err = SignalError;
    fn from_str(s: &str) -> Result<Self, SignalError> {
        let bad = || SignalError(s.to_string());
        if let Ok(n) = s.parse::<i32>() {
            return Self::from_number(n).map_err(|_| bad());
        }
        let upper = s.to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        if let Some(&(_, n)) = NAMES.iter().find(|(known, _)| *known == name) {
            return Ok(Self(n));
        }
        let rt = |rest: &str, base: i32, sign: i32| -> Result<Signal, SignalError> {
            let off = if rest.is_empty() {
                0
            } else {
                rest.strip_prefix(if sign > 0 { "+" } else { "-" }).and_then(|n| n.parse::<i32>().ok()).ok_or_else(bad)?
            };
            Self::from_number(base + sign * off).map_err(|_| bad())
        };
        if let Some(rest) = name.strip_prefix("RTMIN") {
            return rt(rest, libc::SIGRTMIN(), 1);
        }
        if let Some(rest) = name.strip_prefix("RTMAX") {
            return rt(rest, libc::SIGRTMAX(), -1);
        }
        Err(bad())
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match NAMES.iter().find(|(_, n)| *n == self.0) {
            Some((name, _)) => write!(f, "SIG{name}"),
            None => write!(f, "signal {}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_and_without_prefix_and_numbers() {
        assert_eq!("KILL".parse::<Signal>().unwrap().number(), 9);
        assert_eq!("sigterm".parse::<Signal>().unwrap().number(), 15);
        assert_eq!("SIGUSR1".parse::<Signal>().unwrap().number(), libc::SIGUSR1);
        assert_eq!("9".parse::<Signal>().unwrap().number(), 9);
        assert_eq!("RTMIN+2".parse::<Signal>().unwrap().number(), libc::SIGRTMIN() + 2);
    }

    #[test]
    fn rejects_unknown_names_and_out_of_range_numbers() {
        for s in ["FOO", "0", "65", "-1", "SIG", "RTMIN+x"] {
            assert!(s.parse::<Signal>().is_err(), "{s}");
        }
    }
}
