//! DHCP exchange rate with Kea's perfdhcp (as a relay, full DORA, many simulated clients):
//! enlist (leases fsynced to SQLite before each reply) vs dnsmasq.

use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use super::net::{Pair, SRV_IP};

struct Result {
    rate: f64,
    sent: u64,
    received: u64,
    avg_ms: f64,
}

fn start(pair: &Pair, which: &str, dir: &std::path::Path) -> anyhow::Result<Child> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let child = match which {
        "enlist" => pair.spawn_enlist(
            &dir.join("enlist.yaml"),
            &format!(
                "state_dir: {st}\nhttp: {{ listen: 127.0.0.1:18082, public_url: http://{SRV_IP}:18082 }}\n\
                 tftp: {{ enabled: false }}\n\
                 dhcp:\n  interfaces: [{{ name: vsrv, mode: dhcp }}]\n  subnets:\n\
                 \x20   - {{ subnet: 10.79.0.0/16, pool: [10.79.1.0, 10.79.255.254], lease_time: 1h }}\n\
                 images: {{ dir: {st}/images, default: i586 }}\n",
                st = dir.display()
            ),
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
        other => bail!("unknown server {other}"),
    };
    std::thread::sleep(Duration::from_millis(800));
    Ok(child)
}

fn field(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn perfdhcp(pair: &Pair, clients: u32, rate: u32) -> anyhow::Result<Result> {
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

pub fn run(client_counts: &[u32], rate: u32) -> anyhow::Result<()> {
    let pair = Pair::new("bench-dhcp")?;
    let base = crate::root().join("lab/bench-dhcp");
    let mut lines = Vec::new();
    for &n in client_counts {
        let mut res = Vec::new();
        for srv in ["enlist", "dnsmasq"] {
            let mut child = start(&pair, srv, &base.join(srv))?;
            let r = perfdhcp(&pair, n, rate);
            let _ = child.kill();
            let _ = child.wait();
            pair.stop_servers();
            res.push(r.with_context(|| format!("{srv} with {n} clients"))?);
        }
        let ratio = if res[1].rate > 0.0 {
            res[0].rate / res[1].rate
        } else {
            f64::NAN
        };
        let line = format!(
            "| {n:>6} | {:>8.0} | {:>6.2}% | {:>7.2} | {:>8.0} | {:>6.2}% | {:>7.2} | {ratio:>5.2} |",
            res[0].rate,
            drop_pct(&res[0]),
            res[0].avg_ms,
            res[1].rate,
            drop_pct(&res[1]),
            res[1].avg_ms
        );
        println!("{line}");
        lines.push(line);
    }
    println!();
    println!("DHCP 4-way exchanges/s (perfdhcp offering {rate} exchanges/s for 10 s, as a relay); drops of REQUEST-ACK; ratio = enlist / dnsmasq");
    println!("| clients | enlist ex/s | drops | avg ms | dnsmasq ex/s | drops | avg ms | ratio |");
    println!("|---|---|---|---|---|---|---|---|");
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
