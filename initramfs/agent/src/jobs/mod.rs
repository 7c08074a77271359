//! The node's part in the jobs: ask the head how to join the scheduler, then prepare the node
//! (clock, munge key, the Slurm runtime, the job users, the shared home) and run munged and
//! slurmd, restarting them when they die, and say how it goes (`/api/v1/agent/status`).
//!
//! | module    | what                                                                 |
//! |-----------|----------------------------------------------------------------------|
//! | `root`    | where the daemons run: the node OS, or a job root from the job env   |
//! | `runtime` | download, check and mount the runtime bundle; link it into `/`       |
//! | `system`  | clock, kernel modules, accounts, munge key, the shared home          |
//! | `daemons` | munged and slurmd: their arguments, start and supervision            |
//! | `firewall`| slurmd's port for the head and the enlisted nodes only               |
//!
//! Everything here is redone safely when init restarts the agent: a mounted bundle or home is
//! kept, daemons a previous agent started are stopped and started again.

mod daemons;
mod firewall;
mod root;
mod runtime;
mod system;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use enlist_api::{paths, JobsDescriptor, JobsRequest, NodeStatus};

use crate::client::Client;
use crate::{say, sleep_unless_stopped, STOP};

static STARTED: AtomicBool = AtomicBool::new(false);

/// How a munge key refresh asked for by the head went (a message for its command result).
type RekeyAnswer = mpsc::Sender<Result<String, String>>;

/// The version of the accounts this node wrote, and the one the head last said it has: the
/// jobs thread fetches them again when the two differ (a user added on the head).
static ACCOUNTS: AtomicU64 = AtomicU64::new(0);
static ACCOUNTS_WANTED: AtomicU64 = AtomicU64::new(0);

/// The head's accounts version, from a heartbeat.
pub fn accounts_seen(version: u64) {
    ACCOUNTS_WANTED.store(version, Ordering::SeqCst);
}

/// The head has other accounts than those written: fetch them and write them.
fn refresh_accounts(
    client: &Client,
    request: &JobsRequest,
    root: &root::JobRoot,
) -> Result<(), String> {
    let wanted = ACCOUNTS_WANTED.load(Ordering::SeqCst);
    if wanted == 0 || wanted == ACCOUNTS.load(Ordering::SeqCst) {
        return Ok(());
    }
    let d = client
        .post::<_, JobsDescriptor>(paths::JOBS, request)
        .map_err(|f| f.to_string())?;
    d.check()?;
    system::write_accounts(root, &d.users, &d.groups, home_base(&d))?;
    ACCOUNTS.store(d.accounts_version, Ordering::SeqCst);
    say(&format!(
        "jobs: accounts updated ({} users, {} groups)",
        d.users.len(),
        d.groups.len()
    ));
    Ok(())
}

/// Where the jobs thread takes munge key refreshes while its daemons run.
static REKEY: Mutex<Option<mpsc::Sender<RekeyAnswer>>> = Mutex::new(None);

/// The head replaced the cluster's munge key: have the jobs thread fetch the new one and
/// restart munged; how it went, within a minute.
pub fn rekey() -> Result<String, String> {
    let asked = REKEY
        .lock()
        .map_err(|_| "the jobs thread is gone".to_string())?
        .clone()
        .ok_or("jobs are not running on this node")?;
    let (tx, rx) = mpsc::channel();
    asked
        .send(tx)
        .map_err(|_| "the jobs thread is gone".to_string())?;
    rx.recv_timeout(Duration::from_secs(60))
        .map_err(|_| "no answer from the jobs thread within a minute".to_string())?
}

/// Start the jobs thread, once per agent (on the first registration).
pub fn start_once(client: &Arc<Client>) {
    if STARTED.swap(true, Ordering::SeqCst) {
        return;
    }
    let client = client.clone();
    std::thread::spawn(move || run(&client));
}

/// Tell the head how the jobs go on this node (shown with the node; failures in its events).
fn report(client: &Client, jobs: &str, detail: &str) {
    crate::show_state(&format!("{} (jobs: {jobs})", client.name()));
    let st = NodeStatus {
        jobs: jobs.into(),
        detail: detail
            .chars()
            .filter(|c| !c.is_control())
            .take(300)
            .collect(),
    };
    if let Err(f) = client.post::<_, serde_json::Value>(paths::STATUS, &st) {
        say(&format!("jobs: could not report {jobs:?} to the head: {f}"));
    }
}

fn run(client: &Client) {
    let Some((image, version)) = client.image() else {
        say("jobs: this node's settings name no image (a head without jobs booted it)");
        return;
    };
    let request = JobsRequest { image, version };
    let mut backoff = 5;
    while !STOP.load(Ordering::SeqCst) {
        match client.post::<_, JobsDescriptor>(paths::JOBS, &request) {
            Ok(d) if !d.enabled => {
                report(client, "off", "");
                return;
            }
            Ok(d) => match d.check().and_then(|()| join(client, &d)) {
                Ok(mut running) => {
                    let (tx, rx) = mpsc::channel();
                    if let Ok(mut r) = REKEY.lock() {
                        *r = Some(tx);
                    }
                    running.supervise(client, &rx, &request);
                    return;
                }
                Err(why) => {
                    say(&format!("jobs: {why}; trying again in {backoff} s"));
                    report(client, "failed", &why);
                }
            },
            Err(f) => say(&format!("jobs: cannot get the head's jobs settings: {f}")),
        }
        sleep_unless_stopped(Duration::from_secs(backoff));
        backoff = (backoff * 2).min(300);
    }
}

/// Prepare the node and start the daemons.
fn join(client: &Client, d: &JobsDescriptor) -> Result<daemons::Running, String> {
    report(client, "starting", "");
    system::set_clock(d.now_unix)?;
    system::load_modules(&["loop", "squashfs", "nfsv4"]);
    let root = match &d.env {
        Some(env) => root::prepare(env)?,
        None => {
            let bundle = d.bundle.as_ref().ok_or(
                "the head has no Slurm runtime for this image (rebuild the image with a jobs: section)",
            )?;
            runtime::install(client, bundle)?;
            root::JobRoot::node_os()
        }
    };
    let key = client.open_sealed(d.munge_key.as_ref(), "munge-key")?;
    system::write_munge_key(&root, &key)?;
    // No slurmd before its port is closed to strangers (iptables comes with the runtime).
    let mut filter = firewall::Filter::new(d, root.clone());
    filter.follow(client)?;
    system::write_accounts(&root, &d.users, &d.groups, home_base(d))?;
    ACCOUNTS.store(d.accounts_version, Ordering::SeqCst);
    if let Some(home) = &d.home {
        root::mount_home(&root, home)?;
    }
    daemons::start(d, &client.name(), filter, root)
}

/// Where the users' homes are (`<home>/<name>`).
fn home_base(d: &JobsDescriptor) -> &str {
    d.home.as_ref().map_or("/home", |h| h.path.as_str())
}

/// The munge key of a fresh jobs descriptor, in place (munged is restarted by the caller).
fn fetch_new_key(
    client: &Client,
    request: &JobsRequest,
    root: &root::JobRoot,
) -> Result<(), String> {
    let d = client
        .post::<_, JobsDescriptor>(paths::JOBS, request)
        .map_err(|f| f.to_string())?;
    d.check()?;
    let key = client.open_sealed(d.munge_key.as_ref(), "munge-key")?;
    system::write_munge_key(root, &key)
}
