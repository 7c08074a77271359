//! TFTP boot burst: a room of N EtherExpress-style PCs (lockstep TFTP, blksize 1432, as iPXE
//! asks when `images.tftp_nics` sends a card to TFTP) fetch the i586 kernel and initrd at the
//! same moment through a veth shaped to a given rate (`tc tbf` on the server's side); enlist and
//! dnsmasq in the same run. The link's floor is N x (kernel + initrd) / rate: a server that
//! keeps the link busy finishes near it.

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use anyhow::{anyhow, bail, Context};

use super::net::{in_netns, Pair, SRV_IP};
use super::proc_stat;
use super::tftp::{fetch, start_server};

/// The block size iPXE asks for on Ethernet (1500 - IP, UDP and TFTP headers, rounded).
const BLKSIZE: u16 = 1432;

struct Round {
    wall: f64,
    slowest: f64,
    failed: usize,
    cpu_pct: f64,
}

/// Every client fetches `files` in turn, all starting together; each must get every byte.
fn round(pair: &Pair, nodes: usize, files: &[(String, usize)], pid: u32) -> anyhow::Result<Round> {
    let server: SocketAddr = format!("{SRV_IP}:69").parse()?;
    let barrier = Arc::new(Barrier::new(nodes + 1));
    let files = files.to_vec();
    let (results, cpu0, start) = in_netns(&pair.cli, move || {
        let threads: Vec<_> = (0..nodes)
            .map(|_| {
                let (barrier, files) = (barrier.clone(), files.clone());
                std::thread::spawn(move || -> anyhow::Result<f64> {
                    barrier.wait();
                    let t = Instant::now();
                    for (name, size) in &files {
                        let got = fetch(server, name, BLKSIZE, 1)?;
                        if got != *size {
                            bail!("{name}: {got} of {size} bytes");
                        }
                    }
                    Ok(t.elapsed().as_secs_f64())
                })
            })
            .collect();
        barrier.wait();
        let (cpu0, _) = proc_stat(pid);
        let start = Instant::now();
        let results: Vec<anyhow::Result<f64>> = threads
            .into_iter()
            .map(|t| {
                t.join()
                    .map_err(|_| anyhow!("client panicked"))
                    .and_then(|r| r)
            })
            .collect();
        (results, cpu0, start)
    })?;
    let wall = start.elapsed().as_secs_f64();
    let (cpu1, _) = proc_stat(pid);
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        eprintln!("xtask bench: first failure: {e:#}");
    }
    Ok(Round {
        wall,
        slowest: results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .fold(0.0, |a: f64, b| a.max(*b)),
        failed: results.iter().filter(|r| r.is_err()).count(),
        cpu_pct: 100.0 * (cpu1 - cpu0) / wall,
    })
}

/// The i586 image's kernel and initrd, copied into `dir` (both servers serve the same files).
fn boot_files(dir: &std::path::Path) -> anyhow::Result<Vec<(String, usize)>> {
    let images = crate::root().join("images/out");
    let store = enlist::image::store::ImageStore::new(&images);
    let version = store
        .current("i586")
        .context("no i586 image: run `cargo xtask node images` first")?;
    let mut files = Vec::new();
    for name in ["vmlinuz", "initrd"] {
        let from = images.join(format!("i586/{version}/{name}"));
        let size =
            std::fs::copy(&from, dir.join(name)).with_context(|| from.display().to_string())?;
        files.push((name.to_string(), size as usize));
    }
    Ok(files)
}

pub fn run(nodes: usize, link_mbit: u32) -> anyhow::Result<()> {
    let dir = crate::root().join("lab/bench-tftp-burst");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let files = boot_files(&dir)?;
    let per_node: usize = files.iter().map(|f| f.1).sum();
    let floor = (nodes * per_node) as f64 * 8.0 / (f64::from(link_mbit) * 1e6);
    let pair = Pair::new("bench-tftpb")?;
    pair.shape(link_mbit)?;
    println!();
    println!(
        "TFTP boot burst: {nodes} lockstep clients (blksize {BLKSIZE}) fetch kernel + initrd ({:.2} MB) at once over a {link_mbit} Mbit/s link; floor {floor:.1} s",
        per_node as f64 / 1e6
    );
    println!("| server | all done s | of floor | slowest client s | server CPU (% of one core) | failed |");
    println!("|---|---|---|---|---|---|");
    // Many clients share the bench's one client address; a real room has one each.
    let enlist_tftp = format!(", max_transfers_per_client: {}", nodes.max(8));
    for srv in ["enlist", "dnsmasq"] {
        let mut child = start_server(&pair, srv, &dir, &enlist_tftp)
            .with_context(|| format!("starting {srv}"))?;
        let r = round(&pair, nodes, &files, child.id());
        let _ = child.kill();
        let _ = child.wait();
        pair.stop_servers();
        let r = r?;
        println!(
            "| {srv} | {:.1} | {:.2}x | {:.1} | {:.0} | {} |",
            r.wall,
            r.wall / floor,
            r.slowest,
            r.cpu_pct,
            r.failed
        );
    }
    Ok(())
}
