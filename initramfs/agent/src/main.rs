//! enlist-agent: the cluster agent of the node OS.
//!
//! Registers the PC with its head, sends heartbeats, keeps /etc/hosts listing every enlisted
//! node, obeys the head's signed commands, and says "leaving" on shutdown. It keeps running when
//! the head is away and registers again when it returns.
//!
//! Plain HTTP with a blocking client and std threads: small, and fine on a Pentium II without
//! SSE2 (no TLS: `ring` needs SSE2; requests are signed instead, see `enlist_api`).

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod client;
mod conf;
mod copy;
mod exec;
mod jobs;
mod logs;
mod sysinfo;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use enlist_api::{
    paths, CommandResult, CommandsResponse, HeartbeatResponse, Leaving, Order, PeersResponse,
};

use client::{Client, Failure};

pub(crate) static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub(crate) fn say(msg: &str) {
    // The console is the lab tech's only view: one plain line per event.
    eprintln!("enlist-agent: {msg}");
    logs::said(msg);
}

/// What the PC's screen shows as the node's state (`/sbin/enlist-console` reads it).
pub(crate) fn show_state(state: &str) {
    let _ = std::fs::create_dir_all("/run/enlist");
    let _ = std::fs::write("/run/enlist/status", format!("{state}\n"));
}

#[allow(unsafe_code)] // installing a signal handler
fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--version" || a == "-V") {
        println!("enlist-agent {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let conf_path = args
        .windows(2)
        .find(|w| w[0] == "--conf")
        .map(|w| w[1].clone())
        .unwrap_or_else(|| conf::DEFAULT_PATH.into());
    let conf = loop {
        match conf::load(&conf_path) {
            Ok(c) => break c,
            Err(e) => {
                say(&format!("{e}; retrying in 10 s"));
                std::thread::sleep(Duration::from_secs(10));
            }
        }
    };
    // SAFETY: installing a handler that only stores to an atomic is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_term as *const () as libc::sighandler_t);
    }
    exempt_from_the_oom_killer();
    let client = Arc::new(Client::new(conf));
    run(client);
}

/// The agent, and the daemons it starts (they inherit it), are never the OOM killer's choice:
/// on a node whose memory is all RAM and jobs, a job that fills it is what must go.
/// `enlist exec`'s commands and job tasks are set back to 0.
fn exempt_from_the_oom_killer() {
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        say(&format!("cannot exempt the agent from the OOM killer: {e}"));
    }
}

pub(crate) fn sleep_unless_stopped(d: Duration) {
    let step = Duration::from_millis(200);
    let mut left = d;
    while !STOP.load(Ordering::SeqCst) && !left.is_zero() {
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
}

fn run(client: Arc<Client>) {
    let mut backoff = 1u64;
    // The node's logs go to the head while a session is up (not joined, as the poll below).
    let registered = Arc::new(AtomicBool::new(false));
    {
        let (client, registered) = (client.clone(), registered.clone());
        std::thread::spawn(move || logs::ship(client, registered));
    }
    // Registration loop: runs again whenever the head forgets us (restart) or is unreachable.
    while !STOP.load(Ordering::SeqCst) {
        match client.register() {
            Ok(resp) => {
                backoff = 1;
                let hb_secs = resp.heartbeat_secs.max(1) as u64;
                say(&format!(
                    "registered with {} as {}",
                    client.head(),
                    resp.name
                ));
                show_state(&format!("registered as {}", resp.name));
                use_peers(&client, &resp.name, &resp.peers);
                jobs::start_once(&client);
                let session_ok = Arc::new(AtomicBool::new(true));
                {
                    let (client, ok) = (client.clone(), session_ok.clone());
                    // Not joined: it may sit in a 25 s long poll, and on shutdown init gives us
                    // about a second. It ends by itself once the session is over.
                    std::thread::spawn(move || poll_commands(&client, &ok));
                }
                registered.store(true, Ordering::SeqCst);
                heartbeat_loop(&client, hb_secs, &session_ok);
                registered.store(false, Ordering::SeqCst);
            }
            Err(f) => {
                say(&format!("{f}; retrying in {backoff} s"));
                sleep_unless_stopped(Duration::from_secs(backoff));
                backoff = (backoff * 2).min(30);
            }
        }
    }
    // A head command (release, reboot, power-off) told the head already, and a release
    // revoked this boot's key with it: only a shutdown from the PC itself is news.
    if std::path::Path::new("/run/enlist/leaving").exists() {
        return;
    }
    match client.post::<_, serde_json::Value>(
        paths::LEAVING,
        &Leaving {
            reason: "shutdown".into(),
        },
    ) {
        Ok(_) => say("told the head we are leaving"),
        Err(f) => say(&format!("could not tell the head we are leaving: {f}")),
    }
}

/// A checked peer list from the head: /etc/hosts, and slurmd's filter (which follows it).
fn use_peers(client: &Client, me: &str, peers: &[enlist_api::Peer]) {
    sysinfo::write_hosts(me, peers);
    client.set_peers(peers);
}

/// Heartbeats until the session is lost (head restarted) or we are told to stop.
fn heartbeat_loop(client: &Client, secs: u64, session_ok: &AtomicBool) {
    let mut peers_version = 0;
    let mut down_since: Option<std::time::Instant> = None;
    while !STOP.load(Ordering::SeqCst) && session_ok.load(Ordering::SeqCst) {
        match client.post::<_, HeartbeatResponse>(paths::HEARTBEAT, &sysinfo::heartbeat()) {
            Ok(r) => {
                if down_since.take().is_some() {
                    say("head reachable again");
                }
                jobs::accounts_seen(r.accounts_version);
                if r.peers_version != peers_version {
                    match client
                        .post::<_, PeersResponse>(paths::PEERS, &serde_json::json!({}))
                        .map(|p| (p.check(), p))
                    {
                        Ok((Ok(()), p)) => {
                            use_peers(client, &client.name(), &p.peers);
                            peers_version = r.peers_version;
                        }
                        Ok((Err(why), _)) => say(&format!("ignoring a peer list: {why}")),
                        Err(f) => say(&f.to_string()),
                    }
                }
            }
            Err(Failure::Unauthorized(m)) => {
                say(&format!(
                    "head does not know this session ({m}); registering again"
                ));
                session_ok.store(false, Ordering::SeqCst);
                return;
            }
            Err(f) => {
                if down_since.is_none() {
                    say(&format!("{f}; will keep trying"));
                    down_since = Some(std::time::Instant::now());
                }
                // After a long outage the head has surely forgotten us: register again.
                if down_since
                    .map(|t| t.elapsed() > Duration::from_secs(20))
                    .unwrap_or(false)
                {
                    session_ok.store(false, Ordering::SeqCst);
                    return;
                }
            }
        }
        sleep_unless_stopped(Duration::from_secs(secs));
    }
    session_ok.store(false, Ordering::SeqCst);
}

fn poll_commands(client: &Arc<Client>, session_ok: &AtomicBool) {
    while !STOP.load(Ordering::SeqCst) && session_ok.load(Ordering::SeqCst) {
        let resp = match client
            .post_long::<_, CommandsResponse>(paths::COMMANDS, &serde_json::json!({}))
        {
            Ok(r) => r,
            Err(Failure::Unauthorized(_)) => return,
            Err(_) => {
                sleep_unless_stopped(Duration::from_secs(2));
                continue;
            }
        };
        for cmd in resp.commands {
            if let Err(why) = client.accept_command(&cmd) {
                say(&format!("ignoring command #{}: {why}", cmd.id));
                continue;
            }
            match cmd.order {
                Order::Exec(spec) => match spec.check() {
                    Ok(()) => exec::spawn(client.clone(), cmd.id, spec),
                    Err(why) => say(&format!("ignoring command #{}: {why}", cmd.id)),
                },
                Order::Copy(spec) => copy::spawn(client.clone(), cmd.id, spec),
                order => execute(client, cmd.id, &order),
            }
        }
    }
}

fn execute(client: &Client, id: u64, order: &Order) {
    say(&format!("command #{id}: {}", order.kind()));
    let report = |ok: bool, message: &str| {
        let r = CommandResult {
            id,
            ok,
            message: message.into(),
        };
        if let Err(f) = client.post::<_, serde_json::Value>(paths::RESULT, &r) {
            say(&format!("could not report command #{id}: {f}"));
        }
    };
    let leave_and = |reason: &str, applet: &str| {
        report(true, &format!("{reason} now"));
        let _ = client.post::<_, serde_json::Value>(
            paths::LEAVING,
            &Leaving {
                reason: reason.into(),
            },
        );
        let _ = std::fs::create_dir_all("/run/enlist");
        let _ = std::fs::write("/run/enlist/leaving", reason);
        say(&format!("{reason}: handing over to init"));
        // busybox init runs its shutdown actions, then restarts or powers off the PC.
        if let Err(e) = std::process::Command::new("/bin/busybox")
            .arg(applet)
            .status()
        {
            say(&format!("{applet} failed: {e}"));
        }
    };
    match order {
        Order::Reboot => leave_and("reboot", "reboot"),
        Order::Release => leave_and("release", "reboot"),
        Order::PowerOff => leave_and("poweroff", "poweroff"),
        // Run by its own thread (see the command loop), never here.
        Order::Exec(_) | Order::Copy(_) => report(false, "not run here"),
        Order::Rekey => match jobs::rekey() {
            Ok(m) => report(true, &m),
            Err(e) => report(false, &e),
        },
        Order::RefreshPeers => {
            match client.post::<_, PeersResponse>(paths::PEERS, &serde_json::json!({})) {
                Ok(p) => match p.check() {
                    Ok(()) => {
                        use_peers(client, &client.name(), &p.peers);
                        report(true, &format!("{} peers", p.peers.len()));
                    }
                    Err(e) => report(false, &e),
                },
                Err(f) => report(false, &f.to_string()),
            }
        }
    }
}
