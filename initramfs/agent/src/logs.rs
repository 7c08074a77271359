//! The node's logs, sent to the head: the kernel's (`/dev/kmsg`, from the boot's first line),
//! the agent's own lines, and the files the jobs' daemons write. Node RAM is lost at reboot;
//! the head keeps them per node. Batches are signed like every request; while the head is
//! away they wait in a capped buffer (the oldest dropped first, and counted).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use enlist_api::{paths, LogLine, NodeLogs, MAX_LOG_LINE, MAX_LOG_LINES};

use crate::client::{Client, Failure};

/// Bytes of lines waiting for the head at most (a 32 MB PC has little to spare).
const BUFFER: usize = 256 * 1024;
/// A batch's text at most: well inside the API's body limit once JSON-escaped.
const BATCH_BYTES: usize = 24 * 1024;
/// How often lines are gathered and sent.
const EVERY: Duration = Duration::from_secs(3);

/// Lines the agent itself said, and files to follow, from anywhere in the agent.
static SAID: Mutex<Vec<String>> = Mutex::new(Vec::new());
static FOLLOW: Mutex<Vec<(&'static str, PathBuf)>> = Mutex::new(Vec::new());

/// Keep a line the agent said (its console line) for the head.
pub fn said(line: &str) {
    if let Ok(mut s) = SAID.lock() {
        if s.len() < 1000 {
            s.push(line.to_string());
        }
    }
}

/// Send the lines appended to `path` (a daemon's log) as `source`, from its start.
pub fn follow(source: &'static str, path: PathBuf) {
    if let Ok(mut f) = FOLLOW.lock() {
        if !f.iter().any(|(_, p)| *p == path) {
            f.push((source, path));
        }
    }
}

/// Gather and send until the agent stops; `session_ok` says when sending is worth trying.
pub fn ship(client: Arc<Client>, session_ok: Arc<AtomicBool>) {
    let mut s = Shipper::new();
    while !crate::STOP.load(Ordering::SeqCst) {
        s.gather();
        if session_ok.load(Ordering::SeqCst) {
            s.send(&client);
        }
        crate::sleep_unless_stopped(EVERY);
    }
}

/// A file followed: where the next read starts.
struct Tail {
    source: &'static str,
    path: PathBuf,
    at: u64,
    /// A line begun and not yet ended.
    partial: String,
}

struct Shipper {
    kmsg: Option<File>,
    tails: Vec<Tail>,
    pending: VecDeque<LogLine>,
    bytes: usize,
    dropped: u64,
    /// Whether the first batch (the boot's) has reached the head.
    booted: bool,
}

impl Shipper {
    fn new() -> Shipper {
        let kmsg = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .ok();
        Shipper {
            kmsg,
            tails: vec![],
            pending: VecDeque::new(),
            bytes: 0,
            dropped: 0,
            booted: false,
        }
    }

    fn push(&mut self, source: &str, text: &str) {
        let text = enlist_api::cut_at_char(text.trim_end(), MAX_LOG_LINE).to_string();
        self.bytes += text.len();
        self.pending.push_back(LogLine {
            source: source.to_string(),
            text,
        });
        while self.bytes > BUFFER {
            match self.pending.pop_front() {
                Some(l) => {
                    self.bytes -= l.text.len();
                    self.dropped += 1;
                }
                None => break,
            }
        }
    }

    fn gather(&mut self) {
        self.read_kmsg();
        let said = SAID
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        for line in said {
            self.push("agent", &line);
        }
        if let Ok(f) = FOLLOW.lock() {
            for (source, path) in f.iter() {
                if !self.tails.iter().any(|t| t.path == *path) {
                    self.tails.push(Tail {
                        source,
                        path: path.clone(),
                        at: 0,
                        partial: String::new(),
                    });
                }
            }
        }
        let mut lines = vec![];
        for t in &mut self.tails {
            lines.extend(t.read().into_iter().map(|l| (t.source, l)));
        }
        for (source, l) in lines {
            self.push(source, &l);
        }
    }

    /// Every kernel record not read yet (`/dev/kmsg` gives one per read, from the oldest
    /// still in the ring: the boot's first line at the agent's start).
    fn read_kmsg(&mut self) {
        let Some(k) = self.kmsg.as_mut() else { return };
        let mut buf = [0u8; 2048];
        let mut records = vec![];
        loop {
            match k.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => records.push(kmsg_line(&String::from_utf8_lossy(&buf[..n]))),
                // Overwritten before we read it: the next read goes on after the gap.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
        for r in records.into_iter().flatten() {
            self.push("kernel", &r);
        }
    }

    /// Send what waits, in batches; stop at the first failure (kept for the next time).
    fn send(&mut self, client: &Client) {
        while !self.pending.is_empty() || !self.booted {
            let (mut n, mut size) = (0, 0);
            for l in &self.pending {
                // As sent: JSON-escaped (a control character takes six bytes).
                let len = serde_json::to_string(&l.text).map_or(l.text.len(), |j| j.len());
                if n > 0 && (n == MAX_LOG_LINES || size + len > BATCH_BYTES) {
                    break;
                }
                n += 1;
                size += len + l.source.len() + 24;
            }
            let batch = NodeLogs {
                boot: !self.booted,
                dropped: self.dropped,
                lines: self.pending.iter().take(n).cloned().collect(),
            };
            match client.post::<_, serde_json::Value>(paths::LOGS, &batch) {
                Ok(_) => self.dropped = 0,
                // Refused as it is (never as it would be later): dropped, and counted.
                Err(Failure::Refused(400 | 413, _)) => self.dropped += n as u64,
                Err(_) => return,
            }
            self.booted = true;
            for l in self.pending.drain(..n) {
                self.bytes -= l.text.len();
            }
        }
    }
}

impl Tail {
    /// New complete lines; from the start again if the file was replaced or cut.
    fn read(&mut self) -> Vec<String> {
        let Ok(mut f) = File::open(&self.path) else {
            return vec![];
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.at {
            self.at = 0;
            self.partial.clear();
        }
        if f.seek(SeekFrom::Start(self.at)).is_err() {
            return vec![];
        }
        let mut chunk = vec![];
        let read = f.take(64 * 1024).read_to_end(&mut chunk).unwrap_or(0);
        self.at += read as u64;
        self.partial.push_str(&String::from_utf8_lossy(&chunk));
        let mut lines: Vec<String> = self.partial.split('\n').map(str::to_string).collect();
        self.partial = lines.pop().unwrap_or_default();
        if self.partial.len() > MAX_LOG_LINE {
            lines.push(std::mem::take(&mut self.partial));
        }
        lines
    }
}

/// A `/dev/kmsg` record (`6,339,5140900,-;text`, maybe with continuation lines) as dmesg
/// shows it: `[    5.140900] text`.
fn kmsg_line(record: &str) -> Option<String> {
    let (head, text) = record.split_once(';')?;
    let micros: u64 = head.split(',').nth(2)?.parse().ok()?;
    let text = text.lines().next().unwrap_or("");
    Some(format!(
        "[{:>5}.{:06}] {text}",
        micros / 1_000_000,
        micros % 1_000_000
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_record_reads_as_dmesg_shows_it() {
        assert_eq!(
            kmsg_line("6,339,5140900,-;e1000: eth0 NIC Link is Up\n SUBSYSTEM=net\n").as_deref(),
            Some("[    5.140900] e1000: eth0 NIC Link is Up")
        );
        assert_eq!(kmsg_line("garbage"), None);
    }

    #[test]
    fn the_buffer_drops_the_oldest_lines_and_counts_them() {
        let mut s = Shipper {
            kmsg: None,
            tails: vec![],
            pending: VecDeque::new(),
            bytes: 0,
            dropped: 0,
            booted: false,
        };
        let line = "x".repeat(MAX_LOG_LINE);
        for _ in 0..(BUFFER / MAX_LOG_LINE + 10) {
            s.push("agent", &line);
        }
        assert!(s.bytes <= BUFFER);
        assert!(s.dropped >= 10, "{}", s.dropped);
        assert_eq!(
            enlist_api::cut_at_char("aé", 2),
            "a",
            "not inside a character"
        );
    }

    #[test]
    fn a_followed_file_gives_complete_lines_and_starts_again_when_cut() {
        let dir = std::env::temp_dir().join(format!("agent-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("slurmd.log");
        std::fs::write(&path, "one\ntw").unwrap();
        let mut t = Tail {
            source: "slurmd",
            path: path.clone(),
            at: 0,
            partial: String::new(),
        };
        assert_eq!(t.read(), ["one"]);
        std::fs::write(&path, "one\ntwo\nthree\n").unwrap();
        assert_eq!(t.read(), ["two", "three"]);
        std::fs::write(&path, "new\n").unwrap();
        assert_eq!(t.read(), ["new"], "a new file is read from its start");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
