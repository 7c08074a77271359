//! Each node's logs at the head (`<state_dir>/logs/<MAC>.log`): what its agent sends (kernel,
//! agent, slurmd, munged), one line each with the head's time and the source, a line marking
//! each boot. Capped per node: past [`CAP`] bytes the file becomes `.log.1` (the one before is
//! dropped), so a node takes at most twice that. Lines come from the network: control
//! characters are written escaped, never raw (a terminal printing them must not obey them).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use enlist_api::{LogLine, Mac};

/// Bytes of one node's current log file before it is rotated.
pub const CAP: u64 = 512 * 1024;
/// Bytes one read returns at most.
pub const MAX_READ: u64 = 256 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("node log {path}: {source}")]
pub struct LogError {
    path: String,
    source: std::io::Error,
}

/// A piece of a node's log: the text from `from` to `end` of file `file` (its inode: another
/// number means the log was rotated since).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Piece {
    pub file: u64,
    pub end: u64,
    pub text: String,
}

pub struct NodeLogs {
    dir: PathBuf,
    /// One writer at a time (appends and rotations of any node).
    write: Mutex<()>,
}

impl NodeLogs {
    pub fn new(state_dir: &Path) -> NodeLogs {
        NodeLogs {
            dir: state_dir.join("logs"),
            write: Mutex::new(()),
        }
    }

    fn path(&self, mac: Mac) -> PathBuf {
        self.dir.join(format!("{}.log", mac.hyphenated()))
    }

    /// Append a batch: a boot mark first if `boot`, a note of lines dropped on the node, then
    /// the lines. `now` is the head's time as the line prefix shows it.
    pub fn append(
        &self,
        mac: Mac,
        boot: bool,
        dropped: u64,
        lines: &[LogLine],
        now: &str,
    ) -> Result<(), LogError> {
        let mut text = String::new();
        if boot {
            text += &format!("{now} ---- boot ----\n");
        }
        if dropped > 0 {
            text +=
                &format!("{now} head: {dropped} line(s) lost on the node (its buffer was full)\n");
        }
        for l in lines {
            text += &format!("{now} {}: {}\n", l.source, escape(&l.text));
        }
        let path = self.path(mac);
        let err = || io_error(&path);
        let _one = self.write.lock().unwrap_or_else(|p| p.into_inner());
        crate::store::private_dir(&self.dir).map_err(err())?;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if size + text.len() as u64 > CAP && size > 0 {
            std::fs::rename(&path, path.with_extension("log.1")).map_err(err())?;
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(err())?;
        f.write_all(text.as_bytes()).map_err(err())
    }

    /// The log from `from` of file `file` (as a previous [`Piece`] ended), or, with no
    /// `from`, its last `tail` bytes from a line's start (the rotated file's end too, when the
    /// current one is shorter). At most [`MAX_READ`] bytes; `end` says where to go on.
    pub fn read(&self, mac: Mac, from: Option<(u64, u64)>, tail: u64) -> Result<Piece, LogError> {
        let path = self.path(mac);
        let old = path.with_extension("log.1");
        let Some((id, len)) = stat(&path)? else {
            return Ok(Piece::default());
        };
        let mut text = String::new();
        let end = match from {
            Some((file, at)) if file == id => {
                at.min(len) + read_into(&path, at.min(len), MAX_READ, &mut text)?
            }
            Some((file, at)) => {
                // Rotated since: the rest of the old file (if it is that one), then the new.
                if stat(&old)?.is_some_and(|(o, _)| o == file) {
                    read_into(&old, at, MAX_READ, &mut text)?;
                }
                read_into(&path, 0, MAX_READ, &mut text)?
            }
            None => {
                read_tail(&path, &old, len, tail.min(MAX_READ), &mut text)?;
                len
            }
        };
        Ok(Piece {
            file: id,
            end,
            text,
        })
    }
}

/// The last `tail` bytes of the log (`len` bytes in `path`, more in `old`), from a line's
/// start.
fn read_tail(
    path: &Path,
    old: &Path,
    len: u64,
    tail: u64,
    text: &mut String,
) -> Result<(), LogError> {
    let mut from_start = len <= tail;
    if len < tail {
        if let Some((_, olen)) = stat(old)? {
            let want = tail - len;
            from_start = olen <= want;
            read_into(old, olen.saturating_sub(want), want, text)?;
        }
    }
    read_into(path, len.saturating_sub(tail), tail, text)?;
    if !from_start {
        if let Some(i) = text.find('\n') {
            text.drain(..=i);
        }
    }
    Ok(())
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LogError {
    let path = path.display().to_string();
    move |source| LogError { path, source }
}

/// A file's inode and length; None if it does not exist.
fn stat(path: &Path) -> Result<Option<(u64, u64)>, LogError> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some((m.ino(), m.len()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path)(e)),
    }
}

/// Read up to `max` bytes of `path` from `at` onto `text`; how many were read (none if the
/// file is gone).
fn read_into(path: &Path, at: u64, max: u64, text: &mut String) -> Result<u64, LogError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_error(path)(e)),
    };
    let mut buf = vec![];
    let n = f
        .seek(SeekFrom::Start(at))
        .and_then(|_| f.take(max).read_to_end(&mut buf))
        .map_err(io_error(path))?;
    text.push_str(&String::from_utf8_lossy(&buf));
    Ok(n as u64)
}

/// A line from a node as it is written: control characters (ESC, CR, ...) as `\xNN`.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() && c != '\t' {
            out += &format!("\\x{:02x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> LogLine {
        LogLine {
            source: "kernel".into(),
            text: text.into(),
        }
    }

    #[test]
    fn a_log_is_kept_across_boots_escaped_read_on_and_rotated_at_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let logs = NodeLogs::new(dir.path());
        let mac: Mac = "52:54:00:00:00:01".parse().unwrap();
        assert_eq!(logs.read(mac, None, 1000).unwrap().text, "", "none yet");
        logs.append(
            mac,
            true,
            0,
            &[line("Linux version 6.1"), line("\x1b[2Jgone")],
            "T1",
        )
        .unwrap();
        logs.append(mac, true, 3, &[line("Linux version 6.1")], "T2")
            .unwrap();
        let all = logs.read(mac, None, 10_000).unwrap();
        assert_eq!(
            all.text,
            "T1 ---- boot ----\nT1 kernel: Linux version 6.1\nT1 kernel: \\x1b[2Jgone\n\
             T2 ---- boot ----\nT2 head: 3 line(s) lost on the node (its buffer was full)\n\
             T2 kernel: Linux version 6.1\n"
        );
        // Following: nothing new, then the next line only.
        let next = logs.read(mac, Some((all.file, all.end)), 0).unwrap();
        assert_eq!((next.text.as_str(), next.end), ("", all.end));
        logs.append(mac, false, 0, &[line("later")], "T3").unwrap();
        let next = logs.read(mac, Some((all.file, all.end)), 0).unwrap();
        assert_eq!(next.text, "T3 kernel: later\n");
        // A tail starts at a line.
        let tail = logs.read(mac, None, 20).unwrap();
        assert_eq!(tail.text, "T3 kernel: later\n");
        // Past the cap the file rotates; a reader following gets the old file's rest first.
        let big = "x".repeat(900);
        let before = logs.read(mac, None, 0).unwrap();
        while logs.read(mac, None, 0).unwrap().file == before.file {
            logs.append(mac, false, 0, &[line(&big)], "T4").unwrap();
        }
        logs.append(mac, false, 0, &[line("after")], "T5").unwrap();
        let on = logs.read(mac, Some((before.file, before.end)), 0).unwrap();
        assert!(on.text.starts_with("T4 kernel: xxx"), "{}", &on.text[..40]);
        assert!(on.text.ends_with("T5 kernel: after\n"));
        let size = |p: &str| {
            std::fs::metadata(dir.path().join("logs").join(p))
                .unwrap()
                .len()
        };
        assert!(size("52-54-00-00-00-01.log.1") <= CAP, "capped");
    }
}
