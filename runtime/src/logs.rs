//! Container logs in the CRI format the kubelet and `crictl logs` read:
//! `<RFC 3339 nano time> <stdout|stderr> <F|P> <text>` per line, where `P` marks a
//! piece of a line too long for one record and `F` its last piece.
//!
//! The monitor writes them ([`LogWriter`], fed by [`LineSplitter`]); the library and
//! the CLI read them back ([`read`]).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Longest line piece written as one record; longer lines are split into `P` records
/// (the kubelet's own limit is 16 KiB).
pub const MAX_RECORD: usize = 16 * 1024;

/// Which output a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One whole line read back from a log (partial records joined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Time of the line's first record, as written.
    pub time: String,
    pub stream: Stream,
    pub text: String,
}

/// Appends records to a log file; the file can be reopened after rotation.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    file: File,
}

impl LogWriter {
    /// Opens (creating, mode 0640) `path` for appending.
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self { path: path.to_path_buf(), file: open_append(path)? })
    }

    /// Starts a new file at the same path (after a log rotator moved the old one).
    pub fn reopen(&mut self) -> io::Result<()> {
        self.file = open_append(&self.path)?;
        Ok(())
    }

    /// Writes one record. A write error is returned, but the record is lost either
    /// way: a full disk must not block the workload behind its pipe.
    pub fn record(&mut self, stream: Stream, text: &[u8], partial: bool) -> io::Result<()> {
        let time = humantime::format_rfc3339_nanos(std::time::SystemTime::now());
        let mut out = Vec::with_capacity(text.len() + 48);
        // Infallible: writing into a Vec.
        let _ = write!(out, "{time} {} {} ", stream.as_str(), if partial { "P" } else { "F" });
        out.extend_from_slice(text);
        out.push(b'\n');
        self.file.write_all(&out)
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o640).custom_flags(libc::O_CLOEXEC).open(path)
}

/// Cuts one stream's bytes into records: whole lines, pieces of over-long lines, and
/// whatever is left when the stream ends.
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    pending: Vec<u8>,
}

impl LineSplitter {
    pub fn new(stream: Stream) -> Self {
        Self { stream, pending: Vec::new() }
    }

    /// The stream it splits.
    pub fn stream(&self) -> Stream {
        self.stream
    }

    /// Adds bytes read from the stream, writing every record they complete.
    pub fn feed(&mut self, mut data: &[u8], out: &mut LogWriter) -> io::Result<()> {
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&data[..nl]);
            data = &data[nl + 1..];
            self.flush_pieces(out)?;
            let line = std::mem::take(&mut self.pending);
            out.record(self.stream, &line, false)?;
        }
        self.pending.extend_from_slice(data);
        self.flush_pieces(out)
    }

    /// The stream ended: a last line without a newline is still a whole line.
    pub fn finish(&mut self, out: &mut LogWriter) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let line = std::mem::take(&mut self.pending);
        out.record(self.stream, &line, false)
    }

    fn flush_pieces(&mut self, out: &mut LogWriter) -> io::Result<()> {
        while self.pending.len() > MAX_RECORD {
            let rest = self.pending.split_off(MAX_RECORD);
            let piece = std::mem::replace(&mut self.pending, rest);
            out.record(self.stream, &piece, true)?;
        }
        Ok(())
    }
}

/// Parses one record: (time, stream, partial, text).
fn parse_record(line: &str) -> Option<(&str, Stream, bool, &str)> {
    let (time, rest) = line.split_once(' ')?;
    let (stream, rest) = rest.split_once(' ')?;
    let stream = match stream {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        _ => return None,
    };
    let (tag, text) = match rest.split_once(' ') {
        Some((tag, text)) => (tag, text),
        None => (rest, ""),
    };
    let partial = match tag {
        "P" => true,
        "F" => false,
        _ => return None,
    };
    Some((time, stream, partial, text))
}

/// Splits a record into its ASCII head (time, stream, tag) and its raw text.
fn split_head(record: &[u8]) -> Option<(&str, &[u8])> {
    let mut spaces = record.iter().enumerate().filter(|(_, b)| **b == b' ').map(|(i, _)| i);
    let (_, _) = (spaces.next()?, spaces.next()?);
    let (head, text) = match spaces.next() {
        Some(i) => (&record[..i], &record[i + 1..]),
        None => (record, &record[record.len()..]),
    };
    Some((std::str::from_utf8(head).ok()?, text))
}

/// Every line of the log at `path`, partial records joined per stream. A missing
/// file is an empty log (nothing written yet); malformed records are skipped.
pub fn read(path: &Path) -> io::Result<Vec<LogLine>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    // Bytes, not text: a workload may print anything, and a long line's pieces may
    // split a character. Lines are decoded once whole.
    let mut out = Vec::new();
    let mut open: [Option<(String, Vec<u8>)>; 2] = [None, None];
    let finish =
        |stream: Stream, (time, bytes): (String, Vec<u8>)| LogLine { time, stream, text: String::from_utf8_lossy(&bytes).into_owned() };
    for record in io::BufReader::new(file).split(b'\n') {
        let record = record?;
        let Some((head, text)) = split_head(&record) else { continue };
        let Some((time, stream, partial, _)) = parse_record(head) else { continue };
        let slot = &mut open[stream as usize];
        slot.get_or_insert_with(|| (time.to_string(), Vec::new())).1.extend_from_slice(text);
        if !partial {
            if let Some(done) = slot.take() {
                out.push(finish(stream, done));
            }
        }
    }
    for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
        if let Some(left) = open[i].take() {
            out.push(finish(stream, left));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("minipod-logs-{name}-{}", std::process::id()))
    }

    #[test]
    fn lines_long_lines_and_a_trailing_piece_round_trip() {
        let path = tmp("roundtrip");
        let _ = std::fs::remove_file(&path);
        let mut w = LogWriter::open(&path).unwrap();
        let mut out = LineSplitter::new(Stream::Stdout);
        let mut err = LineSplitter::new(Stream::Stderr);
        out.feed(b"hello\nwor", &mut w).unwrap();
        err.feed(b"oops\n", &mut w).unwrap();
        out.feed(b"ld\n", &mut w).unwrap();
        let long = "x".repeat(MAX_RECORD * 2 + 10);
        out.feed(long.as_bytes(), &mut w).unwrap();
        out.feed(b"\nlast", &mut w).unwrap();
        out.finish(&mut w).unwrap();
        let raw = std::fs::read_to_string(&path).unwrap();
        assert!(raw.lines().all(|l| parse_record(l).is_some()), "{raw}");
        assert_eq!(raw.lines().filter(|l| l.contains(" P ")).count(), 2);
        let lines: Vec<(Stream, String)> = read(&path).unwrap().into_iter().map(|l| (l.stream, l.text)).collect();
        assert_eq!(
            lines,
            vec![
                (Stream::Stdout, "hello".into()),
                (Stream::Stderr, "oops".into()),
                (Stream::Stdout, "world".into()),
                (Stream::Stdout, long),
                (Stream::Stdout, "last".into()),
            ]
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn bytes_that_are_not_utf8_do_not_break_reading() {
        let path = tmp("binary");
        let _ = std::fs::remove_file(&path);
        let mut w = LogWriter::open(&path).unwrap();
        let mut out = LineSplitter::new(Stream::Stdout);
        out.feed(b"\xff\xfe bad\n", &mut w).unwrap();
        // A 3-byte character cut by the record limit is whole again when read.
        let mut long = vec![b'a'; MAX_RECORD - 1];
        long.extend_from_slice("\u{20ac}\n".as_bytes());
        out.feed(&long, &mut w).unwrap();
        let lines = read(&path).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].text, "\u{fffd}\u{fffd} bad");
        assert!(lines[1].text.ends_with('\u{20ac}') && lines[1].text.len() == MAX_RECORD + 2);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn records_parse_like_the_kubelet_writes_them() {
        let r = parse_record("2016-10-06T00:17:09.669794202Z stdout F The content of the log entry 1");
        assert_eq!(r, Some(("2016-10-06T00:17:09.669794202Z", Stream::Stdout, false, "The content of the log entry 1")));
        assert_eq!(
            parse_record("2016-10-06T00:17:10.113242941Z stderr P"),
            Some(("2016-10-06T00:17:10.113242941Z", Stream::Stderr, true, ""))
        );
        assert_eq!(parse_record("garbage"), None);
        assert_eq!(parse_record("t stdin F x"), None);
    }
}
