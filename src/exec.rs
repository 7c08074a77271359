//! Commands run on many nodes at once (`enlist exec`, as clush and C3's cexec do it): the head
//! queues a command signed for each chosen node's agent, collects what each answers, and calls
//! a node unreachable when it is not up, goes down, or does not answer within the command's
//! timeout and a grace. Runs are kept in memory and bounded: the last [`MAX_RUNS`], at most
//! [`enlist_api::MAX_EXEC_OUTPUT`] bytes of output per node (the agent counts the rest).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::sync::Arc;

use crate::registry::{Registry, RegistryError};
use enlist_api::{CopySpec, ExecResult, ExecSpec, Mac, Order};

/// Runs kept for their results.
const MAX_RUNS: usize = 64;
/// Nodes one run may name.
pub const MAX_TARGETS: usize = 10_000;
/// How long after its timeout a node's answer may still come (the agent's long poll, its
/// report) before the node is unreachable.
const GRACE: Duration = Duration::from_secs(15);

#[derive(Default)]
pub struct Execs {
    runs: Mutex<Runs>,
}

#[derive(Default)]
struct Runs {
    next: u64,
    list: VecDeque<Run>,
}

struct Run {
    id: u64,
    work: Work,
    who: String,
    /// Nodes running the command at once at most.
    fanout: usize,
    timeout: Duration,
    targets: Vec<Target>,
}

struct Target {
    mac: Mac,
    name: String,
    /// The agent command carrying it (None: not sent yet, or never).
    command_id: Option<u64>,
    /// When it was sent.
    sent: Option<Instant>,
    /// What a running command printed so far (its agent's progress reports).
    so_far: Option<ExecResult>,
    outcome: Outcome,
}

enum Outcome {
    /// Waiting for a place in the fan-out.
    Queued,
    Running,
    Done(ExecResult),
    Unreachable(String),
}

pub use enlist_api::admin::{ExecStatus, NodeOutcome, RunView};

/// What a run sends each node: a shell command (`enlist exec`) or a file (`enlist copy`).
#[derive(Clone)]
pub enum Work {
    Exec(ExecSpec),
    /// The signed part, and the bytes the agents fetch (shared by the run's nodes).
    Copy(CopySpec, Arc<Vec<u8>>),
}

/// How long a node has to fetch and write a copy's file.
const COPY_TIMEOUT: Duration = Duration::from_secs(120);

impl Work {
    /// What the run shows (a node's history keeps its first 200 characters).
    fn shown(&self) -> String {
        match self {
            Work::Exec(spec) => spec.command.clone(),
            Work::Copy(spec, _) => format!(
                "copy to {} ({} bytes, mode {:o})",
                spec.path, spec.size, spec.mode
            ),
        }
    }

    fn timeout(&self) -> Duration {
        match self {
            Work::Exec(spec) => Duration::from_secs(spec.timeout_secs.into()),
            Work::Copy(..) => COPY_TIMEOUT,
        }
    }

    fn order(&self) -> Order {
        match self {
            Work::Exec(spec) => Order::Exec(spec.clone()),
            Work::Copy(spec, _) => Order::Copy(spec.clone()),
        }
    }
}

impl Execs {
    /// Send `work` to `macs`, `fanout` nodes at a time; the run's id. Nodes that are not up
    /// are unreachable at once.
    pub fn start(
        &self,
        registry: &Registry,
        macs: &[Mac],
        work: Work,
        fanout: usize,
        who: &str,
    ) -> Result<u64, RegistryError> {
        let mut targets = Vec::with_capacity(macs.len());
        for &mac in macs {
            let row = registry.node(mac)?;
            let outcome = if row.state.is_alive() {
                Outcome::Queued
            } else {
                Outcome::Unreachable(format!("node is {}", row.state))
            };
            targets.push(Target {
                mac,
                name: row.name,
                command_id: None,
                sent: None,
                so_far: None,
                outcome,
            });
        }
        // Kept before its first command goes out: a quick node's answer finds its run.
        let (id, notes) = {
            let mut runs = self.lock();
            runs.next += 1;
            let id = runs.next;
            if runs.list.len() >= MAX_RUNS {
                runs.list.pop_front();
            }
            runs.list.push_back(Run {
                id,
                timeout: work.timeout(),
                work,
                who: who.to_string(),
                fanout: fanout.max(1),
                targets,
            });
            let notes = match runs.list.back_mut() {
                Some(run) => run.send_more(registry, Instant::now())?,
                None => vec![],
            };
            (id, notes)
        };
        write_history(registry, notes)?;
        Ok(id)
    }

    /// A node's answer: its output so far (`done` false), or how it ended. One that matches no
    /// running command (late, or for a run no longer kept) is dropped: false. An ended one
    /// gives its place in the fan-out to the next node.
    pub fn answer(&self, registry: &Registry, mac: Mac, result: ExecResult) -> bool {
        let mut runs = self.lock();
        let Some(notes) = Self::take_answer(&mut runs, registry, mac, result) else {
            return false;
        };
        drop(runs);
        if let Err(e) = write_history(registry, notes) {
            tracing::warn!("exec: {e}");
        }
        true
    }

    /// [`Execs::answer`] under the runs' lock: the history lines to write once it is released
    /// (the database is never written while it is held), or None when the answer matches no
    /// running command.
    fn take_answer(
        runs: &mut Runs,
        registry: &Registry,
        mac: Mac,
        result: ExecResult,
    ) -> Option<Vec<Note>> {
        let found = runs.list.iter_mut().find_map(|r| {
            let i = r.targets.iter().position(|t| {
                t.mac == mac
                    && t.command_id == Some(result.id)
                    && matches!(t.outcome, Outcome::Running)
            })?;
            Some((r, i))
        });
        let (run, i) = found?;
        if !result.done {
            run.targets[i].so_far = Some(result);
            return Some(vec![]);
        }
        run.targets[i].outcome = Outcome::Done(result);
        Some(run.send_more(registry, Instant::now()).unwrap_or_else(|e| {
            tracing::warn!("exec #{}: {e}", run.id);
            vec![]
        }))
    }

    /// Run `id` as of `now`: nodes that went down, or are silent past the timeout and grace,
    /// become unreachable (and make room in the fan-out).
    pub fn view(&self, registry: &Registry, id: u64, now: Instant) -> Option<RunView> {
        let mut runs = self.lock();
        let (view, notes) = Self::view_locked(&mut runs, registry, id, now)?;
        drop(runs);
        if let Err(e) = write_history(registry, notes) {
            tracing::warn!("exec #{id}: {e}");
        }
        Some(view)
    }

    /// [`Execs::view`] under the runs' lock; the history lines to write once it is released.
    fn view_locked(
        runs: &mut Runs,
        registry: &Registry,
        id: u64,
        now: Instant,
    ) -> Option<(RunView, Vec<Note>)> {
        let run = runs.list.iter_mut().find(|r| r.id == id)?;
        let (timeout, mut freed) = (run.timeout, false);
        for t in run.targets.iter_mut() {
            if !matches!(t.outcome, Outcome::Running) {
                continue;
            }
            let state = registry.node(t.mac).map(|r| r.state);
            let overdue = t
                .sent
                .is_some_and(|s| now.saturating_duration_since(s) > timeout + GRACE);
            let dropped = t
                .command_id
                .is_some_and(|id| registry.command_dropped(t.mac, id));
            match state {
                _ if dropped => {
                    t.outcome = Outcome::Unreachable(
                        "its agent's session ended before it fetched the command: not run".into(),
                    )
                }
                Ok(s) if !s.is_alive() => t.outcome = Outcome::Unreachable(format!("node is {s}")),
                _ if overdue => {
                    t.outcome = Outcome::Unreachable(format!(
                        "no answer within {} s",
                        (timeout + GRACE).as_secs()
                    ))
                }
                _ => continue,
            }
            freed = true;
        }
        let mut notes = vec![];
        if freed {
            notes = run.send_more(registry, now).unwrap_or_else(|e| {
                tracing::warn!("exec #{id}: {e}");
                vec![]
            });
        }
        let view = RunView {
            id: run.id,
            command: run.work.shown(),
            timeout_secs: run.timeout.as_secs(),
            done: run
                .targets
                .iter()
                .all(|t| !matches!(t.outcome, Outcome::Running | Outcome::Queued)),
            results: run.targets.iter().map(Target::view).collect(),
        };
        Some((view, notes))
    }

    /// The file of copy command `command_id`, for the node it was sent to while it runs: no
    /// other node (and no later session) gets it.
    pub fn copy_file(&self, mac: Mac, command_id: u64) -> Option<Arc<Vec<u8>>> {
        let runs = self.lock();
        runs.list.iter().find_map(|r| {
            let Work::Copy(_, bytes) = &r.work else {
                return None;
            };
            r.targets
                .iter()
                .any(|t| {
                    t.mac == mac
                        && t.command_id == Some(command_id)
                        && matches!(t.outcome, Outcome::Running)
                })
                .then(|| bytes.clone())
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Runs> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Run {
    /// Send the command to queued nodes while fewer than `fanout` run it (queued in memory for
    /// their agents); the history lines to write for them. A node that went down meanwhile is
    /// unreachable instead.
    fn send_more(&mut self, registry: &Registry, now: Instant) -> Result<Vec<Note>, RegistryError> {
        let mut notes = vec![];
        let running = |ts: &[Target]| {
            ts.iter()
                .filter(|t| matches!(t.outcome, Outcome::Running))
                .count()
        };
        while running(&self.targets) < self.fanout {
            let Some(t) = self
                .targets
                .iter_mut()
                .find(|t| matches!(t.outcome, Outcome::Queued))
            else {
                return Ok(notes);
            };
            let state = registry.node(t.mac)?.state;
            if !state.is_alive() {
                t.outcome = Outcome::Unreachable(format!("node is {state}"));
                continue;
            }
            match registry.queue_work(t.mac, self.work.order()) {
                Some(id) => {
                    t.command_id = Some(id);
                    t.sent = Some(now);
                    t.outcome = Outcome::Running;
                    notes.push(Note {
                        mac: t.mac,
                        detail: format!(
                            "#{id} by {}: {}",
                            self.who,
                            self.work.shown().chars().take(200).collect::<String>()
                        ),
                    });
                }
                // Up as far as its state says, but its agent has no session (the head
                // restarted, or it is registering again): nothing is kept for later.
                None => t.outcome = Outcome::Unreachable("not online: not run".into()),
            }
        }
        Ok(notes)
    }
}

/// A node's history line for a command sent to it, written once the runs' lock is released.
struct Note {
    mac: Mac,
    detail: String,
}

fn write_history(registry: &Registry, notes: Vec<Note>) -> Result<(), RegistryError> {
    for n in notes {
        registry.note(n.mac, "exec", &n.detail)?;
    }
    Ok(())
}

impl Target {
    fn view(&self) -> NodeOutcome {
        let mut v = NodeOutcome {
            node: self.name.clone(),
            status: ExecStatus::Running,
            exit: None,
            signal: None,
            output: String::new(),
            cut_bytes: 0,
            reason: None,
        };
        match &self.outcome {
            Outcome::Running => {
                if let Some(p) = &self.so_far {
                    v.output = p.output.clone();
                    v.cut_bytes = p.cut_bytes;
                }
            }
            Outcome::Queued => v.status = ExecStatus::Queued,
            Outcome::Unreachable(why) => {
                v.status = ExecStatus::Unreachable;
                v.reason = Some(why.clone());
            }
            Outcome::Done(r) => {
                v.status = if r.timed_out {
                    ExecStatus::Timeout
                } else if r.signal.is_some() {
                    ExecStatus::Signal
                } else {
                    ExecStatus::Exited
                };
                v.exit = r.exit;
                v.signal = r.signal;
                v.output = r.output.clone();
                v.cut_bytes = r.cut_bytes;
            }
        }
        v
    }
}

/// What a node's answer says, for its history: `exit 0`, `signal 9`, `timeout`.
pub fn summary(r: &ExecResult) -> String {
    let ending = match (r.timed_out, r.signal, r.exit) {
        (true, _, _) => "timeout".to_string(),
        (_, Some(s), _) => format!("signal {s}"),
        (_, _, Some(c)) => format!("exit {c}"),
        _ => "ended".to_string(),
    };
    format!("#{} {ending}", r.id)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use enlist_api::{ExecResult, ExecSpec};

    use super::{ExecStatus, Execs, Work};
    use crate::registry::tests::{boot, ip, registry, session_of, A, B};

    /// How command `id` ended: exit 0, having printed `output`.
    fn exited(id: u64, output: &str) -> ExecResult {
        ExecResult {
            id,
            exit: Some(0),
            signal: None,
            timed_out: false,
            output: output.into(),
            cut_bytes: 0,
            done: true,
        }
    }

    /// A copy's file is handed to the node its command went to, for that command, while it
    /// runs: not to another node, not for another id, not after its answer.
    #[test]
    fn a_copys_file_goes_only_to_its_node_while_its_command_runs() {
        let r = registry();
        let key = boot(&r, A, ip(100));
        let session = session_of(&r, A);
        boot(&r, B, ip(101));
        let execs = Execs::default();
        let spec = enlist_api::CopySpec {
            path: "/etc/motd".into(),
            mode: 0o644,
            size: 5,
            sha256: "f".repeat(64),
        };
        let bytes = std::sync::Arc::new(b"hello".to_vec());
        let run = execs
            .start(&r, &[A], Work::Copy(spec.clone(), bytes), 64, "admin")
            .expect("start");
        let (cmds, _) = r.take_commands(A);
        assert_eq!(cmds[0].order, enlist_api::Order::Copy(spec));
        assert!(enlist_api::verify_command(&key, &session, &cmds[0]));
        let id = cmds[0].id;
        assert_eq!(execs.copy_file(A, id).as_deref(), Some(&b"hello".to_vec()));
        assert!(execs.copy_file(B, id).is_none(), "another node");
        assert!(execs.copy_file(A, id + 1).is_none(), "another command");
        assert!(execs.answer(&r, A, exited(id, "")));
        assert!(execs.copy_file(A, id).is_none(), "after its answer");
        let v = execs.view(&r, run, Instant::now()).expect("run");
        assert!(
            v.done && v.command.starts_with("copy to /etc/motd (5 bytes"),
            "{v:?}"
        );
    }

    #[test]
    fn exec_reaches_up_nodes_with_a_signed_command_and_calls_the_others_unreachable() {
        let r = registry();
        let key = boot(&r, A, ip(100));
        let session = session_of(&r, A);
        boot(&r, B, ip(101));
        r.release(B).expect("release");
        r.leaving(B, "release").expect("leaving");
        let execs = Execs::default();
        let spec = ExecSpec {
            command: "uname -m".into(),
            timeout_secs: 5,
        };
        let run = execs
            .start(
                &r,
                &[A, B],
                Work::Exec(spec.clone()),
                64,
                "admin from 10.0.0.1",
            )
            .expect("start");
        let now = Instant::now();
        let v = execs.view(&r, run, now).expect("run");
        assert!(!v.done);
        assert_eq!(v.results[0].status, ExecStatus::Running);
        assert_eq!(v.results[1].status, ExecStatus::Unreachable, "{v:?}");

        // A gets the command signed for it alone; B nothing.
        let (cmds, _) = r.take_commands(A);
        assert_eq!(cmds.len(), 1);
        assert_eq!(cmds[0].order, enlist_api::Order::Exec(spec.clone()));
        assert!(enlist_api::verify_command(&key, &session, &cmds[0]));
        assert!(r
            .take_commands(B)
            .0
            .iter()
            .all(|c| !matches!(c.order, enlist_api::Order::Exec(_))));

        let answer = |id| exited(id, "i686\n");
        let so_far = ExecResult {
            output: "i6".into(),
            done: false,
            ..answer(cmds[0].id)
        };
        assert!(execs.answer(&r, A, so_far), "progress");
        let v = execs.view(&r, run, now).expect("run");
        assert_eq!(
            (v.results[0].status, v.results[0].output.as_str()),
            (ExecStatus::Running, "i6")
        );
        assert!(
            !execs.answer(&r, A, answer(cmds[0].id + 1)),
            "another command's answer"
        );
        assert!(
            !execs.answer(&r, B, answer(cmds[0].id)),
            "another node's answer"
        );
        assert!(execs.answer(&r, A, answer(cmds[0].id)));
        assert!(!execs.answer(&r, A, answer(cmds[0].id)), "answered once");
        let v = execs.view(&r, run, now).expect("run");
        assert!(v.done);
        assert_eq!(
            (v.results[0].status, v.results[0].exit),
            (ExecStatus::Exited, Some(0))
        );
        assert_eq!(v.results[0].output, "i686\n");

        // Silent past the timeout and the grace: unreachable.
        let silent = execs
            .start(&r, &[A], Work::Exec(spec.clone()), 64, "admin")
            .expect("start");
        let later = Instant::now() + Duration::from_secs(5 + 16);
        let v = execs.view(&r, silent, later).expect("run");
        assert!(v.done);
        assert_eq!(v.results[0].status, ExecStatus::Unreachable);

        let history = r.store().events_of(A, 100).expect("events");
        assert!(history
            .iter()
            .any(|e| e.detail.contains("by admin from 10.0.0.1: uname -m")));
    }

    #[test]
    fn exec_with_a_fanout_of_one_sends_to_the_next_node_when_the_first_answers() {
        let r = registry();
        boot(&r, A, ip(100));
        boot(&r, B, ip(101));
        let execs = Execs::default();
        let spec = ExecSpec {
            command: "hostname".into(),
            timeout_secs: 5,
        };
        let run = execs
            .start(&r, &[A, B], Work::Exec(spec.clone()), 1, "admin")
            .expect("start");
        let statuses = || -> Vec<ExecStatus> {
            let v = execs.view(&r, run, Instant::now()).expect("run");
            v.results.iter().map(|n| n.status).collect()
        };
        assert_eq!(statuses(), [ExecStatus::Running, ExecStatus::Queued]);
        assert!(r.take_commands(B).0.is_empty(), "B waits for its turn");
        let (a_cmds, _) = r.take_commands(A);
        assert!(execs.answer(&r, A, exited(a_cmds[0].id, "")));
        assert_eq!(statuses(), [ExecStatus::Exited, ExecStatus::Running]);
        assert_eq!(r.take_commands(B).0.len(), 1, "B's turn");
    }
}
