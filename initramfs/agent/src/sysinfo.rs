//! What the agent reports about its PC, read from /proc and /sys.

use enlist_api::{Heartbeat, Nic, NodeInfo, Peer};

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
}

fn kb(text: &str, key: &str) -> u64 {
    field(text, key)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn cmdline_value(key: &str) -> Option<String> {
    read("/proc/cmdline").split_whitespace().find_map(|w| {
        w.strip_prefix(key)
            .and_then(|v| v.strip_prefix('='))
            .map(str::to_string)
    })
}

pub fn node_info(mac: &str) -> NodeInfo {
    let cpu = read("/proc/cpuinfo");
    let mem = read("/proc/meminfo");
    let mut nics = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name == "lo" {
                continue;
            }
            let base = format!("/sys/class/net/{name}");
            let driver = std::fs::read_link(format!("{base}/device/driver"))
                .ok()
                .and_then(|p| p.file_name().map(|f| f.to_string_lossy().to_string()))
                .unwrap_or_default();
            nics.push(Nic {
                name,
                mac: read(&format!("{base}/address")).trim().to_string(),
                driver,
            });
        }
    }
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    let ip = read("/run/enlist/ip").trim().to_string();
    NodeInfo {
        cpu_model: field(&cpu, "model name").unwrap_or("unknown").to_string(),
        cpu_mhz: field(&cpu, "cpu MHz")
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v.round() as u32)
            .unwrap_or(0),
        cpu_flags: field(&cpu, "flags")
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        cores: cpu
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count()
            .max(1) as u32,
        mem_total_kb: kb(&mem, "MemTotal"),
        nics,
        ip,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        boot_method: cmdline_value("enlist.boot").unwrap_or_else(|| {
            if mac.is_empty() || cmdline_value("BOOTIF").is_none() {
                "direct".into()
            } else {
                "pxe".into()
            }
        }),
    }
}

pub fn heartbeat() -> Heartbeat {
    let load = read("/proc/loadavg");
    let l: Vec<f32> = load
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect();
    let mem = read("/proc/meminfo");
    let uptime = read("/proc/uptime")
        .split('.')
        .next()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Heartbeat {
        load1: l.first().copied().unwrap_or(0.0),
        load5: l.get(1).copied().unwrap_or(0.0),
        load15: l.get(2).copied().unwrap_or(0.0),
        mem_free_kb: kb(&mem, "MemAvailable").max(kb(&mem, "MemFree")),
        uptime_secs: uptime,
    }
}

/// /etc/hosts with every enlisted node, so any member reaches any other by name.
pub fn write_hosts(me: &str, peers: &[Peer]) {
    let mut text = format!("127.0.0.1\tlocalhost\n127.0.1.1\t{me}\n");
    for p in peers {
        if p.name != me
            && p.ip.parse::<std::net::Ipv4Addr>().is_ok()
            && p.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            text.push_str(&format!("{}\t{}\n", p.ip, p.name));
        }
    }
    let tmp = "/etc/hosts.enlist-new";
    if std::fs::write(tmp, text).is_ok() {
        let _ = std::fs::rename(tmp, "/etc/hosts");
    }
}
