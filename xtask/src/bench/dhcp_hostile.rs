//! `bench dhcp --hostile`: an emulated Pentium II boots by PXE while another host on its
//! network floods the head, and is compared with a quiet run: does it still boot, how long
//! does it take, and what are its DHCP round trips (DISCOVER -> OFFER, REQUEST -> ACK, timed
//! by tcpdump at the head's interface)? Floods: 10,000 DISCOVERs/s from random MACs (a starvation
//! attempt), and 10,000 malformed packets/s.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use enlist_lab::host::Host;
use enlist_lab::{Lab, Profile};

use crate::{enlist_bin, root};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Flood {
    Quiet,
    Discovers,
    Malformed,
    /// The control: broadcast UDP the head ignores (port 9), as many frames on the PC's cable
    /// as the DISCOVER flood's own, without the head's answers.
    Noise,
}

impl Flood {
    fn name(self) -> &'static str {
        match self {
            Flood::Quiet => "quiet",
            Flood::Discovers => "DISCOVERs from random MACs",
            Flood::Malformed => "malformed packets",
            Flood::Noise => "broadcast noise (control)",
        }
    }
}

/// The MAC of the lab's first PC (on tap1).
const PC_MAC: &str = "52:54:00:77:01:01";

/// One run's outcome.
struct Outcome {
    up_secs: Option<f64>,
    offer_ms: Vec<f64>,
    ack_ms: Vec<f64>,
    flood_sent: u64,
    /// DHCP packets the head received in the run (replied to or dropped): the flood reached it.
    head_counted: f64,
}

/// A tiny deterministic generator (xorshift): random MACs and bytes without a crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A DISCOVER as a spoofer sends it (no broadcast flag: replies go by unicast to made-up MACs,
/// which the bridge floods to every port, the PC's too).
fn discover_template() -> Vec<u8> {
    use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
    use dhcproto::{Encodable, Encoder};
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_chaddr(&[2, 0, 0, 0, 0, 1]);
    m.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    let mut out = Vec::new();
    let _ = m.encode(&mut Encoder::new(&mut out));
    out
}

/// Send `per_sec` packets a second from `host` until `stop`; count them in `sent`.
fn flood(
    host: &Host,
    kind: Flood,
    per_sec: u64,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    let (ns, iface) = (host.ns.clone(), host.iface.clone());
    std::thread::spawn(move || {
        enlist_lab::host::in_netns(&ns, move || {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
                .expect("socket");
            let _ = s.set_reuse_address(true);
            let _ = s.set_broadcast(true);
            let _ = s.bind_device(Some(iface.as_bytes()));
            let _ = s.bind(&SocketAddr::from(([0, 0, 0, 0], 68)).into());
            let sock: UdpSocket = s.into();
            let template = discover_template();
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            let batch = per_sec / 100;
            let start = Instant::now();
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..batch {
                    let r = rng.next().to_le_bytes();
                    let pkt = match kind {
                        Flood::Discovers => {
                            let mut p = template.clone();
                            p[4..8].copy_from_slice(&r[..4]); // xid
                            p[28] = 0x02; // a locally administered MAC
                            p[29..34].copy_from_slice(&r[3..8]);
                            p
                        }
                        _ => {
                            // Garbage of every length, truncated DISCOVERs, impossible hlen.
                            let mut p = template.clone();
                            match r[0] % 4 {
                                0 => p.truncate(usize::from(r[1]) % p.len()),
                                1 => p[2] = 17 + r[1] % 200,
                                2 => p
                                    .iter_mut()
                                    .skip(236)
                                    .zip(r.iter().cycle())
                                    .for_each(|(b, x)| *b ^= x),
                                _ => p = (0..(usize::from(r[1]) * 2)).map(|i| r[i % 8]).collect(),
                            }
                            p
                        }
                    };
                    let to = if kind == Flood::Noise {
                        "255.255.255.255:9"
                    } else {
                        "255.255.255.255:67"
                    };
                    let _ = sock.send_to(&pkt, to);
                    n += 1;
                }
                sent.store(n, Ordering::Relaxed);
                let due = start + Duration::from_micros(n * 1_000_000 / per_sec.max(1));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        })
    })
}

/// DHCP packets of `mac` in a `tcpdump -tt -v` capture: (time, xid, message type).
fn dhcp_packets(text: &str, mac: &str) -> Vec<(f64, String, String)> {
    let mut out = vec![];
    let mut block: Vec<&str> = vec![];
    let mut flush = |block: &mut Vec<&str>| {
        let head = block.first().copied().unwrap_or("");
        let ts = head
            .split_whitespace()
            .next()
            .and_then(|t| t.parse::<f64>().ok());
        let xid = block
            .iter()
            .find_map(|l| l.split("xid ").nth(1))
            .and_then(|r| r.split([',', ' ']).next())
            .map(str::to_string);
        // tcpdump says Client-Ethernet-Address (older ones: Client-Ethernet-ID).
        let is_ours = block.iter().any(|l| {
            l.contains(&format!("Client-Ethernet-Address {mac}"))
                || l.contains(&format!("Client-Ethernet-ID {mac}"))
        });
        let mtype = block
            .iter()
            .find_map(|l| l.split("DHCP-Message (53), length 1: ").nth(1))
            .map(|t| t.trim().to_string());
        if let (Some(ts), Some(xid), Some(mtype), true) = (ts, xid, mtype, is_ours) {
            out.push((ts, xid, mtype));
        }
        block.clear();
    };
    for line in text.lines() {
        if line.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            flush(&mut block);
        }
        block.push(line);
    }
    flush(&mut block);
    out
}

/// Milliseconds from each `ask` to the first `answer` with the same xid.
fn round_trips(pkts: &[(f64, String, String)], ask: &str, answer: &str) -> Vec<f64> {
    pkts.iter()
        .filter(|(_, _, t)| t == ask)
        .filter_map(|(t0, xid, _)| {
            pkts.iter()
                .find(|(t1, x, t)| x == xid && t == answer && t1 >= t0)
                .map(|(t1, _, _)| (t1 - t0) * 1000.0)
        })
        .collect()
}

/// What a hostile run boots, and how hard it floods.
#[derive(Clone, Copy)]
pub struct Setup {
    pub profile: Profile,
    pub per_sec: u64,
    pub limit: Duration,
    /// Isolated switch ports for the PC and the flooder.
    pub isolate: bool,
}

fn one_run(kind: Flood, setup: Setup) -> anyhow::Result<Outcome> {
    let ns = "bench-hostile";
    let dir = root().join("lab").join(ns);
    let _ = std::fs::remove_dir_all(&dir);
    let mut lab = Lab::new(ns, &dir).map_err(|e| anyhow!(e))?;
    lab.isolate_pcs = setup.isolate;
    let cfg = lab
        .write_config("dhcp", &root().join("images/out"), "")
        .map_err(|e| anyhow!(e))?;
    lab.start_head(&enlist_bin(), &cfg)
        .map_err(|e| anyhow!(e))?;
    let attacker = Host::new(&lab, "x", "02:00:00:00:99:01").map_err(|e| anyhow!(e))?;
    if setup.isolate {
        lab.isolate_port(&attacker.bridge_port())
            .map_err(|e| anyhow!(e))?;
    }
    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let flooder = (kind != Flood::Quiet)
        .then(|| flood(&attacker, kind, setup.per_sec, stop.clone(), sent.clone()));
    std::thread::sleep(Duration::from_secs(2));
    // The PC's DHCP with the head, timed where the head's own stack meets the bridge (br0):
    // its requests as they reach the head, the head's answers as they leave.
    let capture = dir.join("pc-dhcp.txt");
    let mut tcpdump = lab
        .exec("tcpdump")
        .args(["-i", "br0", "-n", "-tt", "-v", "-l", "-U"])
        .arg(format!(
            "ether host {PC_MAC} and udp and (port 67 or port 68)"
        ))
        .stdout(std::fs::File::create(&capture)?)
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("tcpdump")?;
    let pc = lab.boot(setup.profile, None).map_err(|e| anyhow!(e))?;
    let mac = lab.pcs[pc].mac.clone();
    let started = Instant::now();
    let up = lab.wait_state(&mac, "healthy", setup.limit).is_ok();
    let up_secs = up.then(|| started.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    if let Some(f) = flooder {
        let _ = f.join();
    }
    let head_counted = lab.metric_sum("enlist_dhcp_packets_total");
    let _ = tcpdump.kill();
    let _ = tcpdump.wait();
    let text = std::fs::read_to_string(&capture).unwrap_or_default();
    let pkts = dhcp_packets(&text, &mac);
    if !up {
        eprintln!(
            "xtask: the PC did not come up ({}); head log in {}",
            kind.name(),
            dir.display()
        );
    }
    Ok(Outcome {
        up_secs,
        offer_ms: round_trips(&pkts, "Discover", "Offer"),
        ack_ms: round_trips(&pkts, "Request", "ACK"),
        flood_sent: sent.load(Ordering::Relaxed),
        head_counted,
    })
}

fn summary(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let max = v.iter().cloned().fold(0.0, f64::max);
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    format!("{mean:.1} (max {max:.1}, n={})", v.len())
}

impl Flood {
    pub fn parse(s: &str) -> Option<Flood> {
        Some(match s {
            "quiet" => Flood::Quiet,
            "discovers" => Flood::Discovers,
            "malformed" => Flood::Malformed,
            "noise" => Flood::Noise,
            _ => return None,
        })
    }
}

pub fn run(floods: &[String], setup: Setup) -> anyhow::Result<()> {
    let kinds = floods
        .iter()
        .map(|f| {
            Flood::parse(f)
                .ok_or_else(|| anyhow!("unknown flood {f:?}: quiet, discovers, malformed, noise"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut rows = vec![];
    for kind in kinds {
        eprintln!("xtask: hostile DHCP run: {}", kind.name());
        let o = one_run(kind, setup)?;
        rows.push((kind, o));
    }
    println!();
    println!(
        "A {} PC boots by PXE while another host floods the head with {} packets/s{}; its DHCP round trips timed at the head's interface",
        setup.profile.name(),
        setup.per_sec,
        if setup.isolate {
            " (isolated switch ports: the flood reaches the head, not the PC)"
        } else {
            ""
        }
    );
    println!(
        "| run | PC healthy after | DISCOVER->OFFER ms | REQUEST->ACK ms | flood packets sent | DHCP packets the head received |"
    );
    println!("|---|---|---|---|---|---|");
    for (kind, o) in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            kind.name(),
            o.up_secs
                .map_or(format!("never ({} s)", setup.limit.as_secs()), |s| format!(
                    "{s:.1} s"
                )),
            summary(&o.offer_ms),
            summary(&o.ack_ms),
            o.flood_sent,
            o.head_counted
        );
    }
    if rows.iter().any(|(_, o)| o.up_secs.is_none()) {
        anyhow::bail!("a PC did not boot under a flood");
    }
    Ok(())
}
