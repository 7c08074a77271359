//! `enlist exec` on the node: run the head's signed shell command as root with `/bin/sh -c`,
//! stdout and stderr into one pipe, in its own process group so that a timeout kills
//! everything it started; keep the first [`MAX_EXEC_OUTPUT`] bytes of output and count the
//! rest (a command printing gigabytes costs the node no memory); report how it ended.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use enlist_api::{paths, ExecResult, ExecSpec, MAX_EXEC_OUTPUT};

use crate::client::Client;
use crate::say;

/// How often a running command's new output goes to the head.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Run `spec` as command `id` in its own thread; its output so far goes to the head every
/// second while there is new output, and its result when it ends.
pub fn spawn(client: Arc<Client>, id: u64, spec: ExecSpec) {
    std::thread::spawn(move || {
        let report = |r: &ExecResult| {
            if let Err(f) = client.post::<_, serde_json::Value>(paths::EXEC_RESULT, r) {
                say(&format!("exec #{id}: could not report to the head: {f}"));
            }
        };
        let result = run(id, &spec, &report);
        report(&result);
    });
}

/// The output read so far: the kept bytes and how many more there were.
type Output = (Vec<u8>, u64);

pub fn run(id: u64, spec: &ExecSpec, progress: &dyn Fn(&ExecResult)) -> ExecResult {
    let mut result = ExecResult {
        id,
        exit: None,
        signal: None,
        timed_out: false,
        output: String::new(),
        cut_bytes: 0,
        done: true,
    };
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return failed(result, &format!("pipe: {e}")),
    };
    let child = shell(spec, writer);
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return failed(result, &format!("/bin/sh: {e}")),
    };
    let (tx, rx) = mpsc::channel::<Output>();
    let so_far = Arc::new(Mutex::new(Output::default()));
    {
        let so_far = so_far.clone();
        std::thread::spawn(move || {
            let _ = tx.send(read_bounded(reader, &so_far));
        });
    }
    let deadline = Instant::now() + Duration::from_secs(spec.timeout_secs.into());
    let (mut next_report, mut reported) = (Instant::now() + PROGRESS_EVERY, 0);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() >= deadline => {
                result.timed_out = true;
                kill_group(child.id());
                break child.wait().ok();
            }
            Ok(None) => {
                if Instant::now() >= next_report {
                    next_report = Instant::now() + PROGRESS_EVERY;
                    let (kept, more) = so_far.lock().map(|o| o.clone()).unwrap_or_default();
                    if kept.len() as u64 + more > reported {
                        reported = kept.len() as u64 + more;
                        progress(&partial(id, &kept, more));
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(_) => break None,
        }
    };
    if let Some(st) = status {
        result.exit = st.code();
        result.signal = st.signal();
    }
    // Something it left running in the background may hold the pipe: take what came so far.
    let (bytes, more) = rx.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
    if result.timed_out || more > 0 {
        kill_group(child.id());
    }
    (result.output, result.cut_bytes) = bounded_text(&bytes, more);
    result
}

/// `/bin/sh -c` with the command, in its own process group, its stdout and stderr `writer`.
fn shell(spec: &ExecSpec, writer: std::io::PipeWriter) -> std::io::Result<std::process::Child> {
    let err = writer.try_clone()?;
    // An admin's command may be the OOM killer's choice, unlike the agent it comes from.
    std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "echo 0 2>/dev/null >/proc/self/oom_score_adj; {}",
            spec.command
        ))
        .stdin(std::process::Stdio::null())
        .stdout(writer)
        .stderr(err)
        .process_group(0)
        .spawn()
    // The Command and its copies of the pipe's write end are dropped here: the reader sees
    // the end of the output when the command's processes have all closed it.
}

/// Output bytes as text of at most [`MAX_EXEC_OUTPUT`] bytes, and what was cut.
fn bounded_text(bytes: &[u8], more: u64) -> (String, u64) {
    let text = String::from_utf8_lossy(bytes);
    let kept = enlist_api::cut_at_char(&text, MAX_EXEC_OUTPUT);
    (kept.to_string(), more + (text.len() - kept.len()) as u64)
}

/// A running command's output so far.
fn partial(id: u64, kept: &[u8], more: u64) -> ExecResult {
    let (output, cut_bytes) = bounded_text(kept, more);
    ExecResult {
        id,
        exit: None,
        signal: None,
        timed_out: false,
        output,
        cut_bytes,
        done: false,
    }
}

fn failed(mut r: ExecResult, why: &str) -> ExecResult {
    r.exit = Some(127);
    r.output = format!("enlist-agent: {why}\n");
    r
}

/// The first [`MAX_EXEC_OUTPUT`] bytes of `from`, and how many followed; `so_far` follows
/// along for the progress reports.
fn read_bounded(mut from: impl Read, so_far: &Mutex<Output>) -> Output {
    let mut kept = Vec::new();
    let mut more = 0u64;
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return (kept, more),
            Ok(n) => {
                let room = MAX_EXEC_OUTPUT.saturating_sub(kept.len()).min(n);
                kept.extend_from_slice(&buf[..room]);
                more += (n - room) as u64;
                if let Ok(mut s) = so_far.lock() {
                    s.0.extend_from_slice(&buf[..room]);
                    s.1 = more;
                }
            }
        }
    }
}

/// SIGKILL to the command's process group (it leads one: `process_group(0)`).
fn kill_group(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    // SAFETY: kill(2) takes plain integers; a stale group id at worst fails with ESRCH.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(command: &str, timeout_secs: u32) -> ExecSpec {
        ExecSpec {
            command: command.into(),
            timeout_secs,
        }
    }

    #[test]
    fn output_and_exit_code_come_back() {
        let r = run(1, &spec("echo out; echo err >&2; exit 3", 10), &|_| {});
        assert_eq!((r.exit, r.signal, r.timed_out), (Some(3), None, false));
        assert_eq!(r.output, "out\nerr\n");
    }

    #[test]
    fn a_timeout_kills_the_command_and_what_it_started() {
        let t0 = Instant::now();
        let r = run(2, &spec("sleep 100 & sleep 100", 1), &|_| {});
        assert!(r.timed_out, "{r:?}");
        assert_eq!(r.signal, Some(libc::SIGKILL));
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }

    #[test]
    fn a_flood_of_output_is_cut_and_counted() {
        let r = run(
            3,
            &spec("head -c 5000000 /dev/zero | tr '\\0' x", 30),
            &|_| {},
        );
        assert_eq!(r.exit, Some(0));
        assert_eq!(r.output.len(), MAX_EXEC_OUTPUT);
        assert_eq!(r.cut_bytes, 5_000_000 - MAX_EXEC_OUTPUT as u64);
    }

    #[test]
    fn a_long_command_reports_its_output_as_it_comes() {
        let seen = std::cell::RefCell::new(Vec::new());
        let r = run(4, &spec("echo first; sleep 2; echo second", 10), &|p| {
            seen.borrow_mut().push(p.output.clone());
        });
        assert_eq!(r.output, "first\nsecond\n");
        assert!(r.done);
        let seen = seen.into_inner();
        assert_eq!(
            seen.first().map(String::as_str),
            Some("first\n"),
            "{seen:?}"
        );
    }
}
