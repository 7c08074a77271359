//! Boot burst over HTTP: N simulated nodes ask for their boot script at the same moment, then
//! download the kernel and their own initrd, as iPXE does, through a veth link shaped to a
//! given rate (`tc tbf` on the head's side). The question is whether the link or the head is
//! the limit: aggregate goodput against the link rate, and the head's CPU while it serves.

use std::io::Read;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};

use super::net::{in_netns, Pair, SRV_IP};
use super::proc_stat;
use crate::root;

const PORT: u16 = 18091;

struct Fetch {
    bytes: u64,
    secs: f64,
}

/// The kernel and initrd URLs of the script's HTTP (`bios`) section.
fn boot_urls(script: &str) -> Option<(String, String)> {
    Some((
        enlist_lab::script_http_url(script, "kernel ")?,
        enlist_lab::script_http_url(script, "initrd --name initrd ")?,
    ))
}

fn boot_one(http: &ureq::Agent, mac: &str) -> anyhow::Result<u64> {
    let script = http
        .get(&format!("http://{SRV_IP}:{PORT}/boot/{mac}.ipxe"))
        .call()?
        .into_string()?;
    let (kernel, initrd) =
        boot_urls(&script).ok_or_else(|| anyhow!("no HTTP kernel/initrd in:\n{script}"))?;
    let mut total = 0;
    for url in [kernel, initrd] {
        let mut body = http.get(&url).call()?.into_reader();
        total += std::io::copy(&mut body.by_ref(), &mut std::io::sink())?;
    }
    Ok(total)
}

/// Each client's fetch, the head's CPU time at the start, and the start.
type Burst = (Vec<anyhow::Result<Fetch>>, f64, Instant);

/// `nodes` clients in the client namespace fetch their boot files at once.
fn burst(pair: &Pair, nodes: usize, pid: u32) -> anyhow::Result<Burst> {
    let barrier = Arc::new(Barrier::new(nodes + 1));
    in_netns(&pair.cli, move || {
        let threads: Vec<_> = (0..nodes)
            .map(|i| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let http = ureq::AgentBuilder::new()
                        .timeout(Duration::from_secs(300))
                        .build();
                    let mac = format!("52-54-00-78-{:02x}-{:02x}", i >> 8, i & 255);
                    barrier.wait();
                    let t = Instant::now();
                    boot_one(&http, &mac).map(|bytes| Fetch {
                        bytes,
                        secs: t.elapsed().as_secs_f64(),
                    })
                })
            })
            .collect();
        // Every client is connected to nothing yet and waits here: go.
        barrier.wait();
        let (cpu0, _) = proc_stat(pid);
        let start = Instant::now();
        let results = threads
            .into_iter()
            .map(|t| {
                t.join()
                    .map_err(|_| anyhow!("client thread panicked"))
                    .and_then(|r| r)
            })
            .collect::<Vec<_>>();
        (results, cpu0, start)
    })
}

pub fn run(nodes: usize, link_mbit: u32) -> anyhow::Result<()> {
    let images = root().join("images/out");
    if !images.join("i586/current").exists() {
        bail!("no i586 image in images/out: run `cargo xtask node images` first");
    }
    let pair = Pair::new("bench-http")?;
    pair.shape(link_mbit)?;
    let dir = root().join("lab/bench-http");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut head = pair.spawn_enlist(
        &dir.join("enlist.yaml"),
        &format!(
            "state_dir: {st}\nhttp: {{ listen: {SRV_IP}:{PORT}, public_url: http://{SRV_IP}:{PORT} }}\n\
             tftp: {{ enabled: false }}\ndhcp: {{ interfaces: [{{ name: lo, mode: proxy }}] }}\n\
             images: {{ dir: {img}, bios: i586 }}\n",
            st = dir.display(),
            img = images.display()
        ),
    )?;
    let pid = head.id();
    std::thread::sleep(Duration::from_secs(1));
    let (results, cpu0, start) = burst(&pair, nodes, pid)?;
    let wall = start.elapsed().as_secs_f64();
    let (cpu1, rss_kb) = proc_stat(pid);
    let _ = head.kill();
    let _ = head.wait();
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        eprintln!("first failure: {e:#}");
    }
    let ok: Vec<&Fetch> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let bytes: u64 = ok.iter().map(|f| f.bytes).sum();
    let mut secs: Vec<f64> = ok.iter().map(|f| f.secs).collect();
    secs.sort_by(|a, b| a.total_cmp(b));
    let goodput_mbit = bytes as f64 * 8.0 / wall / 1e6;
    println!();
    println!(
        "HTTP boot burst: {nodes} nodes fetch script + kernel + initrd at once over a {link_mbit} Mbit/s link"
    );
    println!("| nodes | link Mbit/s | MB served | all done s | slowest node s | fastest node s | goodput Mbit/s | of link | head CPU (% of one core) | head RSS MB | failed |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {nodes} | {link_mbit} | {:.0} | {wall:.1} | {:.1} | {:.1} | {goodput_mbit:.0} | {:.0}% | {:.1} | {:.1} | {failed} |",
        bytes as f64 / 1e6,
        secs.last().copied().unwrap_or(f64::NAN),
        secs.first().copied().unwrap_or(f64::NAN),
        100.0 * goodput_mbit / link_mbit as f64,
        100.0 * (cpu1 - cpu0) / wall,
        rss_kb as f64 / 1024.0,
    );
    if failed > 0 {
        bail!("{failed} of {nodes} nodes failed to fetch their boot files");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::boot_urls;

    #[test]
    fn finds_the_http_kernel_and_initrd_lines() {
        let script = "#!ipxe\n:bios_tftp\nkernel tftp://10.0.0.1/images/i586/v1/vmlinuz initrd=initrd\n\
                      :bios\nkernel --timeout 60000 http://h:1/images/i586/v1/vmlinuz initrd=initrd x=http://y || goto failed\n\
                      initrd --name initrd --timeout 60000 http://h:1/boot/m/i586/v1/initrd || goto failed\n";
        assert_eq!(
            boot_urls(script),
            Some((
                "http://h:1/images/i586/v1/vmlinuz".into(),
                "http://h:1/boot/m/i586/v1/initrd".into()
            ))
        );
    }
}
