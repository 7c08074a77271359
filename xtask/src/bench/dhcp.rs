//! DHCP exchange rate with Kea's perfdhcp (as a relay, full DORA, many simulated clients):
//! enlist (leases fsynced to SQLite before each ACK) vs dnsmasq and Kea (memfile leases, its
//! default durability). `--hostile` is the other half: a Pentium II booting by PXE while the
//! head is flooded (see `hostile`).

use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use super::net::{HeadEnv, Pair, SRV_IP};

struct Result {
    rate: f64,
    sent: u64,
    received: u64,
    avg_ms: f64,
}

fn start(pair: &Pair, which: &str, dir: &std::path::Path, env: &HeadEnv) -> anyhow::Result<Child> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let child = match which {
        "enlist" => pair.spawn_enlist_as(
            &dir.join("enlist.yaml"),
            &format!(
                "state_dir: {st}\nhttp: {{ listen: 127.0.0.1:18082, public_url: http://{SRV_IP}:18082 }}\n\
                 tftp: {{ enabled: false }}\n\
                 dhcp:\n  interfaces: [{{ name: vsrv, mode: dhcp }}]\n  subnets:\n\
                 \x20   - {{ subnet: 10.79.0.0/16, pool: [10.79.1.0, 10.79.255.254], lease_time: 1h, relays: [10.79.0.2] }}\n\
                 images: {{ dir: {st}/images, bios: i586 }}\n",
                st = dir.display()
            ),
            env,
        )?,
        "dnsmasq" => pair
            .exec(&pair.srv, "dnsmasq")
            .args([
                "--keep-in-foreground",
                "--port=0",
                "--bind-interfaces",
                "--interface=vsrv",
            ])
            .args([
                "--dhcp-range=10.79.1.0,10.79.255.254,255.255.0.0,1h",
                "--dhcp-lease-max=200000",
                "--dhcp-authoritative",
                "--no-ping",
            ])
            .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .stderr(Stdio::null())
            .spawn()?,
        "kea" => {
            let config = dir.join("kea-dhcp4.json");
            std::fs::write(&config, kea_config(dir))?;
            pair.exec(&pair.srv, "kea-dhcp4")
                .arg("-c")
                .arg(&config)
                .env("KEA_PIDFILE_DIR", dir)
                .env("KEA_LOCKFILE_DIR", dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("kea-dhcp4 (Debian package kea-dhcp4-server)")?
        }
        other => bail!("unknown server {other}"),
    };
    std::thread::sleep(Duration::from_millis(800));
    Ok(child)
}

/// Kea with its defaults where it has them: memfile leases persisted to a CSV file.
fn kea_config(dir: &std::path::Path) -> String {
    format!(
        r#"{{ "Dhcp4": {{
  "interfaces-config": {{ "interfaces": ["vsrv"], "dhcp-socket-type": "udp" }},
  "lease-database": {{ "type": "memfile", "persist": true, "name": "{d}/kea-leases4.csv" }},
  "valid-lifetime": 3600,
  "subnet4": [ {{ "id": 1, "subnet": "10.79.0.0/16", "pools": [ {{ "pool": "10.79.1.0 - 10.79.255.254" }} ] }} ],
  "loggers": [ {{ "name": "kea-dhcp4", "output_options": [ {{ "output": "{d}/kea.log" }} ], "severity": "WARN" }} ]
}} }}"#,
        d = dir.display()
    )
}

fn field(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// UDP datagrams a namespace's sockets dropped for want of receive buffer (`RcvbufErrors`).
fn udp_rcvbuf_errors(pair: &Pair, ns: &str) -> u64 {
    let text = pair
        .exec(ns, "cat")
        .arg("/proc/net/snmp")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let mut udp = text.lines().filter(|l| l.starts_with("Udp: "));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn perfdhcp(pair: &Pair, clients: u32, rate: u32) -> anyhow::Result<Result> {
    let overflowed = |ns: &str| udp_rcvbuf_errors(pair, ns);
    let before = (overflowed(&pair.srv), overflowed(&pair.cli));
    let out = pair
        .exec(&pair.cli, "perfdhcp")
        .args([
            "-4",
            "-l",
            "vcli",
            "-r",
            &rate.to_string(),
            "-R",
            &clients.to_string(),
            "-p",
            "10",
            SRV_IP,
        ])
        .output()
        .context("perfdhcp (Debian package kea-admin)")?;
    let after = (overflowed(&pair.srv), overflowed(&pair.cli));
    // A drop perfdhcp counts may be its own: a burst of replies overflowing its socket.
    println!(
        "receive buffers overflowed: server {} datagrams, perfdhcp {}",
        after.0 - before.0,
        after.1 - before.1
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // perfdhcp prints per-exchange blocks; the DISCOVER-OFFER block comes first, REQUEST-ACK second.
    let rate = field(&text, "Rate:").unwrap_or(0.0);
    let sent: Vec<u64> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("sent packets:"))
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let recv: Vec<u64> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("received packets:"))
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let avg: Vec<f64> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("avg delay:"))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .collect();
    if sent.is_empty() {
        bail!(
            "perfdhcp output not understood:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(Result {
        rate,
        sent: *sent.last().unwrap_or(&0),
        received: *recv.last().unwrap_or(&0),
        avg_ms: avg.last().copied().unwrap_or(0.0),
    })
}

/// The reference servers, measured in this order after enlist.
const SERVERS: [&str; 3] = ["enlist", "dnsmasq", "kea"];

/// A slower machine for the run: a disk whose flushes take a while, a stock
/// `net.core.rmem_max`, a head without CAP_NET_ADMIN.
#[derive(Default)]
pub struct Machine {
    pub fsync_delay_us: u64,
    pub rmem_max: Option<u64>,
    pub without_net_admin: bool,
}

/// `net.core.rmem_max` set for the run, put back when dropped.
struct RmemMax(Option<String>);

impl RmemMax {
    fn set(to: Option<u64>) -> anyhow::Result<RmemMax> {
        let path = "/proc/sys/net/core/rmem_max";
        let Some(to) = to else {
            return Ok(RmemMax(None));
        };
        let was = std::fs::read_to_string(path)?;
        std::fs::write(path, to.to_string()).with_context(|| format!("{path} = {to}"))?;
        Ok(RmemMax(Some(was)))
    }
}

impl Drop for RmemMax {
    fn drop(&mut self) {
        if let Some(was) = &self.0 {
            let _ = std::fs::write("/proc/sys/net/core/rmem_max", was.trim());
        }
    }
}

pub fn run(client_counts: &[u32], rate: u32, machine: &Machine) -> anyhow::Result<()> {
    let pair = Pair::new("bench-dhcp")?;
    let base = crate::root().join("lab/bench-dhcp");
    std::fs::create_dir_all(&base)?;
    let env = HeadEnv {
        slow_fsync: match machine.fsync_delay_us {
            0 => None,
            us => Some((super::net::build_slow_fsync(&base)?, us)),
        },
        without_net_admin: machine.without_net_admin,
    };
    let _rmem = RmemMax::set(machine.rmem_max)?;
    let mut lines = Vec::new();
    for &n in client_counts {
        let mut res = Vec::new();
        for srv in SERVERS {
            let mut child = start(&pair, srv, &base.join(srv), &env)?;
            let r = perfdhcp(&pair, n, rate);
            if srv == "enlist" {
                print_batches(&pair, n);
            }
            let _ = child.kill();
            let _ = child.wait();
            pair.stop_servers();
            res.push(r.with_context(|| format!("{srv} with {n} clients"))?);
        }
        let ratio = |i: usize| {
            if res[i].rate > 0.0 {
                res[0].rate / res[i].rate
            } else {
                f64::NAN
            }
        };
        let cells: Vec<String> = res
            .iter()
            .map(|r| {
                format!(
                    "{:>8.0} | {:>6.2}% | {:>7.2}",
                    r.rate,
                    drop_pct(r),
                    r.avg_ms
                )
            })
            .collect();
        let line = format!(
            "| {n:>6} | {} | {:>5.2} | {:>5.2} |",
            cells.join(" | "),
            ratio(1),
            ratio(2)
        );
        println!("{line}");
        lines.push(line);
    }
    println!();
    println!("DHCP 4-way exchanges/s (perfdhcp offering {rate} exchanges/s for 10 s, as a relay); drops of REQUEST-ACK; ratios = enlist / reference");
    if machine.fsync_delay_us > 0 || machine.rmem_max.is_some() || machine.without_net_admin {
        println!(
            "enlist's machine: each fsync takes {} us more; net.core.rmem_max {}; CAP_NET_ADMIN {}",
            machine.fsync_delay_us,
            machine.rmem_max.map_or("as is".into(), |v| v.to_string()),
            if machine.without_net_admin {
                "dropped"
            } else {
                "kept"
            }
        );
    }
    println!("| clients | enlist ex/s | drops | avg ms | dnsmasq ex/s | drops | avg ms | kea ex/s | drops | avg ms | vs dnsmasq | vs kea |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

fn drop_pct(r: &Result) -> f64 {
    if r.sent == 0 {
        return 0.0;
    }
    100.0 * (r.sent.saturating_sub(r.received)) as f64 / r.sent as f64
}

/// Where enlist's time went: its lease batches (group commits), from its /metrics.
fn print_batches(pair: &Pair, clients: u32) {
    let out = pair
        .exec(&pair.srv, "curl")
        .args(["-s", "http://127.0.0.1:18082/metrics"])
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let value = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0)
    };
    let batches = value("enlist_dhcp_batch_packets_count");
    if batches > 0.0 {
        println!(
            "enlist, {clients} clients: {batches:.0} lease batches, {:.1} packets and {:.1} ms each on average",
            value("enlist_dhcp_batch_packets_sum") / batches,
            1000.0 * value("enlist_dhcp_batch_seconds_sum") / batches
        );
    }
    // What the head did not answer, and why (its own count; perfdhcp's drops include these).
    let dropped: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("enlist_dhcp_dropped_total{reason=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    if !dropped.is_empty() {
        println!(
            "enlist, {clients} clients: not answered: {}",
            dropped.join(", ")
        );
    }
}
