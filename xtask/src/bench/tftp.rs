//! TFTP throughput: a 7 MB file to N concurrent clients, blksize 512/1468, windowsize 1/16/64.
//!
//! The client is written here (in Rust) because the usual clients cannot ask for a windowsize
//! (tftp-hpa and curl do lockstep only). It speaks RFC 1350/2347/2348/7440: it asks for the
//! options, uses what the OACK grants (lockstep without an OACK), and ACKs every window.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use super::net::{in_netns, Pair, SRV_IP};

const FILE_BYTES: usize = 7 * 1024 * 1024;

struct Outcome {
    bytes: usize,
    secs: f64,
}

fn rrq(file: &str, blksize: u16, windowsize: u16) -> Vec<u8> {
    let mut p = vec![0, 1];
    for s in [
        file,
        "octet",
        "blksize",
        &blksize.to_string(),
        "windowsize",
        &windowsize.to_string(),
        "tsize",
        "0",
    ] {
        p.extend_from_slice(s.as_bytes());
        p.push(0);
    }
    p
}

fn option(oack: &[u8], name: &str) -> Option<u16> {
    let parts: Vec<&[u8]> = oack.split(|b| *b == 0).collect();
    parts
        .windows(2)
        .find(|w| w[0].eq_ignore_ascii_case(name.as_bytes()))
        .and_then(|w| std::str::from_utf8(w[1]).ok()?.parse().ok())
}

/// Fetch `file` from `server`; returns the bytes received.
pub(super) fn fetch(
    server: SocketAddr,
    file: &str,
    blksize: u16,
    windowsize: u16,
) -> anyhow::Result<usize> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.send_to(&rrq(file, blksize, windowsize), server)?;
    let mut buf = vec![0u8; 70000];
    let (mut blk, mut win, mut peer) = (512usize, 1u16, None::<SocketAddr>);
    let (mut expect, mut total, mut since_ack, mut timeouts) = (1u16, 0usize, 0u16, 0);
    loop {
        let (n, from) = match s.recv_from(&mut buf) {
            Ok(x) => x,
            Err(_) => {
                timeouts += 1;
                if timeouts > 20 {
                    bail!("{file}: transfer timed out at {total} bytes");
                }
                // Re-ACK the last in-order block so the server resends the window.
                if let Some(p) = peer {
                    let last = expect.wrapping_sub(1);
                    s.send_to(&[0, 4, (last >> 8) as u8, last as u8], p)?;
                } else {
                    s.send_to(&rrq(file, blksize, windowsize), server)?;
                }
                since_ack = 0;
                continue;
            }
        };
        timeouts = 0;
        if n < 4 {
            continue;
        }
        peer.get_or_insert(from);
        match buf[1] {
            6 => {
                blk = option(&buf[2..n], "blksize").unwrap_or(512) as usize;
                win = option(&buf[2..n], "windowsize").unwrap_or(1);
                s.send_to(&[0, 4, 0, 0], from)?;
            }
            3 => {
                let b = u16::from_be_bytes([buf[2], buf[3]]);
                if b != expect {
                    // Out of order: ACK what we have, the server restarts the window from there.
                    let last = expect.wrapping_sub(1);
                    s.send_to(&[0, 4, (last >> 8) as u8, last as u8], from)?;
                    since_ack = 0;
                    continue;
                }
                total += n - 4;
                since_ack += 1;
                let last = n - 4 < blk;
                if since_ack >= win || last {
                    s.send_to(&[0, 4, buf[2], buf[3]], from)?;
                    since_ack = 0;
                }
                expect = expect.wrapping_add(1);
                if last {
                    return Ok(total);
                }
            }
            5 => bail!(
                "{file}: server error {}",
                String::from_utf8_lossy(&buf[4..n])
            ),
            _ => {}
        }
    }
}

fn round(cli_ns: &str, clients: usize, blksize: u16, windowsize: u16) -> anyhow::Result<Outcome> {
    let server: SocketAddr = format!("{SRV_IP}:69").parse()?;
    let start = Instant::now();
    let results = in_netns(cli_ns, move || {
        let handles: Vec<_> = (0..clients)
            .map(|_| std::thread::spawn(move || fetch(server, "big.bin", blksize, windowsize)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("client panicked"))?)
            .collect::<anyhow::Result<Vec<usize>>>()
    })??;
    let secs = start.elapsed().as_secs_f64();
    let bytes: usize = results.iter().sum();
    if results.iter().any(|b| *b != FILE_BYTES) {
        bail!("incomplete transfer: {results:?}");
    }
    Ok(Outcome { bytes, secs })
}

/// Start `which` (enlist, tftpd-hpa or dnsmasq) serving `root` by TFTP in the pair's server
/// namespace; `enlist_tftp` is more of enlist's `tftp:` options (", key: value, ...").
pub(super) fn start_server(
    pair: &Pair,
    which: &str,
    root: &Path,
    enlist_tftp: &str,
) -> anyhow::Result<Child> {
    let child = match which {
        "enlist" => pair.spawn_enlist(
            &root.join("bench-enlist.yaml"),
            &format!(
                "state_dir: {st}\nhttp: {{ listen: 127.0.0.1:18081, public_url: http://{SRV_IP}:18081 }}\n\
                 tftp: {{ listen: {SRV_IP}:69, ipxe_dir: {r}, max_blksize: 1468, max_windowsize: 64{enlist_tftp} }}\n\
                 dhcp: {{ interfaces: [{{ name: vsrv, mode: proxy }}] }}\n\
                 images: {{ dir: {r}/images, bios: i586 }}\n",
                st = root.join("state").display(),
                r = root.display()
            ),
        )?,
        "tftpd-hpa" => pair
            .exec(&pair.srv, "in.tftpd")
            .args([
                "--foreground",
                "--listen",
                "--address",
                &format!("{SRV_IP}:69"),
                "--secure",
            ])
            .arg(root)
            .spawn()?,
        "dnsmasq" => pair
            .exec(&pair.srv, "dnsmasq")
            .args([
                "--keep-in-foreground",
                "--port=0",
                "--enable-tftp",
                "--bind-interfaces",
                "--interface=vsrv",
            ])
            .arg(format!("--tftp-root={}", root.display()))
            .arg("--tftp-max=1000")
            .arg(format!("--pid-file={}", root.join("dnsmasq.pid").display()))
            .stderr(Stdio::null())
            .spawn()?,
        other => bail!("unknown server {other}"),
    };
    std::thread::sleep(Duration::from_millis(800));
    Ok(child)
}

pub fn run(client_counts: &[usize], runs: usize) -> anyhow::Result<()> {
    let root = crate::root().join("lab/bench-tftp");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let data: Vec<u8> = (0..FILE_BYTES).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(root.join("big.bin"), &data)?;
    let pair = Pair::new("bench-tftp")?;
    let servers = ["enlist", "tftpd-hpa", "dnsmasq"];
    let mut table = Vec::new();
    for (bs, ws) in [(512u16, 1u16), (1468, 1), (1468, 16), (1468, 64)] {
        for &n in client_counts {
            // Servers take turns within each run, so a noisy moment hits them alike; each
            // server's figure is its median over the runs.
            let mut samples = vec![Vec::new(); servers.len()];
            for _ in 0..runs.max(1) {
                for (i, srv) in servers.iter().enumerate() {
                    let mut child = start_server(&pair, srv, &root, "")
                        .with_context(|| format!("starting {srv}"))?;
                    let r = round(&pair.cli, n, bs, ws);
                    let _ = child.kill();
                    let _ = child.wait();
                    pair.stop_servers();
                    samples[i].push(match r {
                        Ok(o) => o.bytes as f64 / o.secs / 1e6,
                        Err(e) => {
                            eprintln!("xtask bench: {srv} blksize {bs} windowsize {ws} x{n}: {e}");
                            0.0
                        }
                    });
                }
            }
            let rates: Vec<f64> = samples.into_iter().map(super::median).collect();
            let best_ref = rates[1].max(rates[2]);
            let ratio = if best_ref > 0.0 {
                rates[0] / best_ref
            } else {
                f64::NAN
            };
            let line = format!(
                "| {bs:>5} | {ws:>3} | {n:>3} | {:>8.1} | {:>8.1} | {:>8.1} | {ratio:>5.2} |",
                rates[0], rates[1], rates[2]
            );
            println!("{line}");
            table.push(line);
        }
    }
    println!();
    println!("TFTP, 7 MB file, MB/s over a veth pair (all clients together, median of {runs} runs); ratio = enlist / best reference");
    println!("| blksize | window | clients | enlist | tftpd-hpa | dnsmasq | ratio |");
    println!("|---|---|---|---|---|---|---|");
    for l in table {
        println!("{l}");
    }
    Ok(())
}
