//! Scale: many simulated agents against one head. Each registers (nonce + signed request, as
//! the real agent does, with its key derived from the head's secret in the head's database),
//! then heartbeats every `interval` seconds. Reports registration time, the head's CPU and RSS
//! during the steady heartbeat phase, and heartbeat latency percentiles.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use enlist_api::{
    headers, paths, Heartbeat, NodeKey, NonceResponse, RegisterRequest, RegisterResponse,
    RequestAuth,
};

use super::net::in_netns;
use super::proc_stat;
use crate::{enlist_bin, root};

const URL: &str = "http://127.0.0.1:18090";

struct Agent {
    mac: String,
    key: NodeKey,
    session: String,
    seq: u64,
}

fn post(
    http: &ureq::Agent,
    a: &mut Agent,
    path: &str,
    body: &[u8],
    session: Option<&str>,
) -> anyhow::Result<ureq::Response> {
    let session = session
        .map(str::to_string)
        .unwrap_or_else(|| a.session.clone());
    let seq = if path == paths::REGISTER {
        0
    } else {
        a.seq += 1;
        a.seq
    };
    let sig = RequestAuth {
        method: "POST",
        path,
        node: &a.mac,
        session: &session,
        seq,
    }
    .sign(&a.key, body);
    http.post(&format!("{URL}{path}"))
        .set(headers::NODE, &a.mac)
        .set(headers::SESSION, &session)
        .set(headers::SEQ, &seq.to_string())
        .set(headers::SIGNATURE, &sig)
        .send_bytes(body)
        .map_err(|e| anyhow!("{path}: {e}"))
}

fn register(http: &ureq::Agent, a: &mut Agent) -> anyhow::Result<()> {
    let n: NonceResponse = http
        .get(&format!("{URL}{}", paths::NONCE))
        .call()?
        .into_json()?;
    let body = serde_json::to_vec(&RegisterRequest {
        info: Default::default(),
        challenge: "00".repeat(16),
    })?;
    let r: RegisterResponse = post(http, a, paths::REGISTER, &body, Some(&n.nonce))?.into_json()?;
    a.session = r.session;
    a.seq = 0;
    Ok(())
}

/// What the agents' threads count.
#[derive(Clone, Default)]
struct Counts {
    /// Heartbeat round trips in the steady phase, ms.
    latencies: Arc<Mutex<Vec<f64>>>,
    errors: Arc<AtomicUsize>,
    registered: Arc<AtomicUsize>,
}

/// The namespace with its loopback up, and the head's config in `dir`. The simulated PCs all
/// come from one address: its connection cap is raised above the 64 agent threads.
fn setup(ns: &str, dir: &Path, interval: u64) -> anyhow::Result<PathBuf> {
    enlist_lab::Lab::cleanup(ns);
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let ip = |args: &[&str]| {
        enlist_lab::run(std::process::Command::new("ip").args(args)).map_err(|e| anyhow!(e))
    };
    ip(&["netns", "add", ns])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    let cfg = dir.join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir: {st}\nhttp: {{ listen: 127.0.0.1:18090, public_url: {URL}, max_connections_per_client: 256 }}\ntftp: {{ enabled: false }}\n\
             dhcp: {{ interfaces: [{{ name: lo, mode: proxy }}] }}\nimages: {{ dir: {st}, bios: i586 }}\n\
             nodes: {{ heartbeat: {interval}s, lost_after: {lost}s }}\n",
            st = dir.display(),
            lost = interval * 4
        ),
    )?;
    Ok(cfg)
}

/// The simulated nodes, put in the head's database before it starts, as if each had booted
/// (a node is known from its boot before its agent may register), with key epoch 0; their
/// agents with their keys.
fn simulated_nodes(dir: &Path, agents: usize) -> anyhow::Result<Vec<Agent>> {
    let store = enlist::store::Store::open(&dir.join("enlist.db"))?;
    let keys = enlist::registry::Keys::load(&store)?;
    let macs: Vec<enlist_api::Mac> = (0..agents)
        .map(|i| {
            enlist_api::Mac([
                2,
                0,
                (i >> 24) as u8,
                (i >> 16) as u8,
                (i >> 8) as u8,
                i as u8,
            ])
        })
        .collect();
    let now = enlist::store::now();
    let rows: Vec<enlist::store::NodeRow> = macs
        .iter()
        .map(|m| enlist::store::NodeRow {
            mac: *m,
            name: format!("sim-{}", m.hyphenated()),
            group: "default".into(),
            state: enlist::lifecycle::NodeState::Booting,
            ip: None,
            info: None,
            heartbeat: None,
            last_seen: Some(now),
            first_dhcp: Some(now),
            boot_seconds: None,
            key_epoch: 0,
            released: false,
            approved: true,
            created: now,
            quarantine: None,
            wakes_tried: 0,
            wakes_woke: 0,
            enlisted_secs: 0,
            job_secs: 0,
            kernel_args: String::new(),
        })
        .collect();
    store.insert_nodes(&rows)?;
    Ok(macs
        .iter()
        .map(|m| Agent {
            mac: m.to_string(),
            key: keys.node_key(*m, 0),
            session: String::new(),
            seq: 0,
        })
        .collect())
}

/// One thread's agents: register each, then send heartbeats for `seconds`, each agent's
/// spread evenly over the interval; round trips after `measure_from` are counted.
fn drive(
    group: &mut [Agent],
    counts: &Counts,
    interval: u64,
    seconds: u64,
    measure_from: Duration,
) {
    let http = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    for a in group.iter_mut() {
        if let Err(e) = register(&http, a) {
            if counts.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                eprintln!("xtask bench: first error: registration: {e:#}");
            }
        }
        counts.registered.fetch_add(1, Ordering::Relaxed);
    }
    let hb = serde_json::to_vec(&Heartbeat::default()).unwrap_or_default();
    let phase_start = Instant::now();
    let n = group.len().max(1) as u32;
    let mut round = 0u32;
    while phase_start.elapsed() < Duration::from_secs(seconds) {
        for (i, a) in group.iter_mut().enumerate() {
            let due = Duration::from_secs(interval) * round
                + Duration::from_secs(interval) * i as u32 / n;
            if let Some(wait) = due.checked_sub(phase_start.elapsed()) {
                std::thread::sleep(wait);
            }
            let t = Instant::now();
            match post(&http, a, paths::HEARTBEAT, &hb, None) {
                Ok(_) if phase_start.elapsed() > measure_from => {
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    counts.latencies.lock().map(|mut l| l.push(ms)).ok();
                }
                Ok(_) => {}
                Err(e) => {
                    if counts.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("xtask bench: first error: heartbeat: {e:#}");
                    }
                }
            }
        }
        round += 1;
    }
}

/// The table row: heartbeats per second, the head's CPU and RSS, latencies, errors.
fn report(
    agents: usize,
    interval: u64,
    window: f64,
    cpu: f64,
    rss_kb: u64,
    counts: &Counts,
) -> anyhow::Result<()> {
    let mut l = counts
        .latencies
        .lock()
        .map_err(|_| anyhow!("lock"))?
        .clone();
    l.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!();
    println!("Scale: {agents} simulated agents, heartbeat every {interval} s, steady phase {window:.0} s");
    println!("| agents | heartbeats/s | head CPU (% of one core) | head RSS MB | p50 ms | p99 ms | errors |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {agents} | {:.0} | {:.1} | {:.1} | {:.2} | {:.2} | {} |",
        l.len() as f64 / window,
        100.0 * cpu / window,
        rss_kb as f64 / 1024.0,
        pct(0.5),
        pct(0.99),
        counts.errors.load(Ordering::Relaxed)
    );
    Ok(())
}

pub fn run(agents: usize, interval: u64, seconds: u64) -> anyhow::Result<()> {
    let ns = "bench-scale";
    let dir = root().join("lab").join(ns);
    let cfg = setup(ns, &dir, interval)?;
    let all = simulated_nodes(&dir, agents)?;
    let mut head = std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(enlist_bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("ENLIST_LOG", "warn")
        .spawn()
        .context("starting the head")?;
    let pid = head.id();
    std::thread::sleep(Duration::from_secs(1));
    let threads = 64.min(agents.max(1));
    let per = agents.div_ceil(threads);
    let groups: Vec<Vec<Agent>> = {
        let mut it = all.into_iter();
        (0..threads)
            .map(|_| it.by_ref().take(per).collect())
            .collect()
    };
    let counts = Counts::default();
    let start = Instant::now();
    let measure_from = Duration::from_secs(interval); // skip the first round (state changes)
    let c = counts.clone();
    let handle = std::thread::spawn(move || {
        in_netns(ns, move || {
            let hs: Vec<_> = groups
                .into_iter()
                .map(|mut group| {
                    let c = c.clone();
                    std::thread::spawn(move || {
                        drive(&mut group, &c, interval, seconds, measure_from)
                    })
                })
                .collect();
            for h in hs {
                let _ = h.join();
            }
        })
    });
    // Registration phase.
    while counts.registered.load(Ordering::Relaxed) < agents
        && start.elapsed() < Duration::from_secs(1800)
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let reg_secs = start.elapsed().as_secs_f64();
    println!(
        "{agents} agents registered in {reg_secs:.1} s ({:.0}/s)",
        agents as f64 / reg_secs
    );
    std::thread::sleep(measure_from);
    let ((cpu0, _), t0) = (proc_stat(pid), Instant::now());
    let _ = handle.join();
    let (cpu1, rss1) = proc_stat(pid);
    let window = t0.elapsed().as_secs_f64().max(0.001);
    let _ = head.kill();
    let _ = head.wait();
    enlist_lab::Lab::cleanup(ns);
    report(agents, interval, window, cpu1 - cpu0, rss1, &counts)
}
