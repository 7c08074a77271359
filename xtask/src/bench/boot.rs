//! Boot storm: N emulated PCs of one PXE profile power on at once, first against enlist, then
//! against dnsmasq serving DHCP + TFTP (QEMU's iPXE ROM fetches a TFTP script, kernel and
//! initrd), with the same head for the agents to register with. p2-pxe (the default, a
//! Pentium II with an EtherExpress) boots the same i586 kernel and per-node initrd in both
//! runs, so the difference is the boot path (enlist: lockstep TFTP for that card). x64-pxe
//! (an x86_64 PC with an e1000) boots i586 by TFTP under dnsmasq, and under enlist, whose
//! script tests the CPU, the larger x86_64 image by HTTP.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use enlist_lab::{Lab, Profile};

use crate::{enlist_bin, root};

const LIMIT: Duration = Duration::from_secs(300);

struct NodeTimes {
    /// Its kernel printed its first line: firmware, DHCP and the downloads are behind it.
    kernel: Option<f64>,
    userland: Option<f64>,
    registered: Option<f64>,
}

fn mac_of(n: usize) -> String {
    format!("52:54:00:77:01:{n:02x}")
}

fn one_run(
    server: &str,
    profile: Profile,
    nodes: usize,
    run: usize,
    loss: u32,
    x64_image: &str,
) -> anyhow::Result<Vec<NodeTimes>> {
    let ns = format!("bench-boot-{server}");
    let dir = root().join("lab").join(&ns);
    let _ = std::fs::remove_dir_all(&dir);
    let mut lab = Lab::new(&ns, &dir).map_err(|e| anyhow!(e))?;
    lab.loss_percent = loss;
    let images = root().join("images/out");
    let config = head_config(&lab, &dir, &images, server, x64_image)?;
    lab.start_head(&enlist_bin(), &config)
        .map_err(|e| anyhow!(e))?;
    if server == "dnsmasq" {
        start_dnsmasq(&mut lab, &dir, &images, nodes)?;
    }
    let start = Instant::now();
    for _ in 0..nodes {
        lab.boot(profile, None).map_err(|e| anyhow!(e))?;
    }
    let mut times = wait_for_nodes(&lab, nodes, start);
    // A node that registered but whose agent or kernel then fails is a failed boot too.
    std::thread::sleep(Duration::from_secs(2));
    for (i, t) in times.iter_mut().enumerate() {
        let faults = lab.pcs[i].node_os_faults();
        if !faults.is_empty() {
            eprintln!("xtask bench: pc {}: node OS faults: {faults:?}", i + 1);
            t.registered = None;
        }
    }
    if times.iter().any(|t| t.registered.is_none()) {
        keep_failure(&lab, &times, &format!("{server}-run{run}"));
    }
    if loss > 0 {
        let (passed, dropped) = lab.cables.iter().fold((0, 0), |(p, d), c| {
            use std::sync::atomic::Ordering::Relaxed;
            (
                p + c.counts.passed.load(Relaxed),
                d + c.counts.dropped.load(Relaxed),
            )
        });
        println!("run {run} {server:<7} cables: {passed} frames passed, {dropped} dropped ({loss}% each way)");
    }
    Ok(times)
}

/// The head's config: serving DHCP and TFTP itself (64-bit PCs get `x64_image`), or only the
/// agents (dnsmasq serves the rest).
fn head_config(
    lab: &Lab,
    dir: &Path,
    images: &Path,
    server: &str,
    x64_image: &str,
) -> anyhow::Result<PathBuf> {
    Ok(if server == "enlist" {
        let cfg = lab
            .write_config("dhcp", images, "")
            .map_err(|e| anyhow!(e))?;
        let text = std::fs::read_to_string(&cfg)?.replace(
            "  efi_x64: x86_64\n",
            &format!("  efi_x64: {x64_image}\n  bios_x64: {x64_image}\n"),
        );
        std::fs::write(&cfg, text)?;
        cfg
    } else {
        // The head only answers agents here; dnsmasq does DHCP and TFTP on the bridge.
        let cfg = dir.join("config.yaml");
        std::fs::write(
                &cfg,
                format!(
                    "state_dir: {}\nhttp: {{ listen: 0.0.0.0:8080, public_url: http://10.77.0.1:8080 }}\n\
                     tftp: {{ enabled: false }}\ndhcp: {{ interfaces: [{{ name: lo, mode: proxy }}] }}\n\
                     images: {{ dir: {}, bios: i586 }}\nnodes: {{ heartbeat: 2s }}\n",
                    dir.join("state").display(),
                    images.display()
                ),
            )?;
        cfg
    })
}

/// dnsmasq doing DHCP and TFTP on the bridge, with the files an admin would give it: the
/// image's kernel, each PC's initrd with its key, and a boot script with the same options.
fn start_dnsmasq(lab: &mut Lab, dir: &Path, images: &Path, nodes: usize) -> anyhow::Result<()> {
    // The head's own view of the published image: version and kernel options.
    let store = enlist::image::store::ImageStore::new(images);
    let version = store.current("i586")?;
    let tftp = dir.join("tftp");
    std::fs::create_dir_all(&tftp)?;
    std::fs::copy(
        images.join(format!("i586/{version}/vmlinuz")),
        tftp.join("vmlinuz"),
    )?;
    // Each PC's initrd with its key, as an admin fetches it for a PC booted by hand.
    for n in 1..=nodes {
        let (_, initrd) = lab
            .direct_boot_files(images, "i586", &mac_of(n))
            .map_err(|e| anyhow!(e))?;
        let mac = mac_of(n).replace(':', "-");
        std::fs::copy(&initrd, tftp.join(format!("{mac}.initrd")))?;
    }
    // The same kernel options as enlist's script: the image's own, then the lab's.
    let image_cmdline = store.cmdline("i586", &version)?;
    std::fs::write(
        tftp.join("boot.ipxe"),
        format!(
            "#!ipxe\nkernel tftp://10.77.0.1/vmlinuz initrd=initrd enlist.boot=pxe BOOTIF=01-${{netX/mac:hexhyp}} {image_cmdline} console=ttyS0,115200\n\
             initrd --name initrd tftp://10.77.0.1/${{netX/mac:hexhyp}}.initrd\nboot\n"
        ),
    )?;
    let mut c = lab.exec("dnsmasq");
    c.args([
        "--keep-in-foreground",
        "--port=0",
        "--interface=br0",
        "--bind-interfaces",
        "--no-ping",
    ])
    .args([
        "--dhcp-range=10.77.0.100,10.77.0.199,255.255.255.0,10m",
        "--enable-tftp",
        "--dhcp-boot=boot.ipxe",
    ])
    .arg(format!("--tftp-root={}", tftp.display()))
    .arg(format!(
        "--dhcp-leasefile={}",
        dir.join("dnsmasq.leases").display()
    ))
    .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()));
    lab.spawn(c).map_err(|e| anyhow!(e))?;
    std::thread::sleep(Duration::from_secs(1));
    Ok(())
}

/// When each PC reached its userland and registered (as far as it did within [`LIMIT`]).
fn wait_for_nodes(lab: &Lab, nodes: usize, start: Instant) -> Vec<NodeTimes> {
    let mut times: Vec<NodeTimes> = (0..nodes)
        .map(|_| NodeTimes {
            kernel: None,
            userland: None,
            registered: None,
        })
        .collect();
    while start.elapsed() < LIMIT && times.iter().any(|t| t.registered.is_none()) {
        for (i, t) in times.iter_mut().enumerate() {
            let serial = lab.pcs[i].serial_log();
            if t.kernel.is_none() && serial.contains("] Linux version") {
                t.kernel = Some(start.elapsed().as_secs_f64());
            }
            if t.userland.is_none() && serial.contains(" is up: ") {
                t.userland = Some(start.elapsed().as_secs_f64());
            }
            if t.registered.is_none() {
                let st = lab.node_state(&mac_of(i + 1));
                if matches!(st.as_deref(), Some("registered") | Some("healthy")) {
                    t.registered = Some(start.elapsed().as_secs_f64());
                }
            }
        }
        // Fine enough for a boot of about 10 s (each time is late by up to this).
        std::thread::sleep(Duration::from_millis(100));
    }
    times
}

/// A failed boot is worth a look: keep the head log, the serial consoles and a screenshot of
/// each failed PC's screen (iPXE and the boot ROM print only there) under `lab/bench-boot-failures/`.
fn keep_failure(lab: &Lab, times: &[NodeTimes], label: &str) {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dest = root()
        .join("lab/bench-boot-failures")
        .join(format!("{label}-{stamp}"));
    if let Err(e) = std::fs::create_dir_all(&dest) {
        eprintln!("xtask bench: {}: {e}", dest.display());
        return;
    }
    for (i, t) in times.iter().enumerate() {
        if t.registered.is_none() {
            let shot = dest.join(format!("{}.ppm", lab.pcs[i].name));
            let _ = lab.monitor(i, &format!("screendump {}", shot.display()));
        }
    }
    if let Ok(entries) = std::fs::read_dir(&lab.dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(".log") {
                let _ = std::fs::copy(e.path(), dest.join(&name));
            }
        }
    }
    eprintln!("xtask bench: failed boot kept in {}", dest.display());
}

fn fmt(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.1}"))
        .unwrap_or_else(|| "FAIL".into())
}

pub fn run(
    profile: &str,
    nodes: usize,
    runs: usize,
    losses: &[u32],
    x64_image: &str,
) -> anyhow::Result<()> {
    let profile = match Profile::parse(profile) {
        Some(p @ (Profile::P2Pxe | Profile::X64Pxe)) => p,
        _ => anyhow::bail!("--pc {profile:?}: a PXE profile, p2-pxe or x64-pxe"),
    };
    for &loss in losses {
        run_at(profile, nodes, runs, loss, x64_image)?;
    }
    Ok(())
}

fn run_at(
    profile: Profile,
    nodes: usize,
    runs: usize,
    loss: u32,
    x64_image: &str,
) -> anyhow::Result<()> {
    let mut summary = Vec::new();
    let mut ratios = Vec::new();
    let mut failures = [0, 0];
    for run in 1..=runs {
        let mut all_up = Vec::new();
        for server in ["enlist", "dnsmasq"] {
            let times = one_run(server, profile, nodes, run, loss, x64_image)?;
            for (i, t) in times.iter().enumerate() {
                println!(
                    "run {run} {server:<7} pc {}: kernel {:>6} s, userland {:>6} s, registered {:>6} s",
                    i + 1,
                    fmt(t.kernel),
                    fmt(t.userland),
                    fmt(t.registered)
                );
            }
            let failed = times.iter().filter(|t| t.registered.is_none()).count();
            let up = times
                .iter()
                .filter_map(|t| t.registered)
                .fold(0.0, f64::max);
            let userland = times.iter().filter_map(|t| t.userland).fold(0.0, f64::max);
            all_up.push((server, up, failed, userland));
        }
        let ratio = if all_up[1].1 > 0.0 {
            all_up[0].1 / all_up[1].1
        } else {
            f64::NAN
        };
        ratios.push(ratio);
        failures[0] += all_up[0].2;
        failures[1] += all_up[1].2;
        let line = format!(
            "| {run} | {nodes} | {loss}% | {:.1} | {:.1} | {} | {:.1} | {:.1} | {} | {ratio:.2} |",
            all_up[0].3, all_up[0].1, all_up[0].2, all_up[1].3, all_up[1].1, all_up[1].2
        );
        println!("{line}");
        summary.push(line);
    }
    println!();
    println!("Boot storm, {} PCs powered on together (enlist's 64-bit image: {x64_image}), {loss}% of frames lost each way; OS up = last node OS up (kernel and initrd arrived, booted), all-up = last agent registered (s from power-on)", profile.name());
    println!("| run | PCs | loss | enlist OS up | enlist all-up | failed | dnsmasq OS up | dnsmasq all-up | failed | ratio |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for l in summary {
        println!("{l}");
    }
    if ratios.is_empty() {
        return Ok(());
    }
    let worst = ratios.iter().copied().fold(f64::NAN, f64::max);
    println!();
    println!(
        "median ratio {:.2} (worst {worst:.2}); failed boots in {runs} runs of {nodes}: enlist {}, dnsmasq {}",
        super::median(ratios),
        failures[0],
        failures[1]
    );
    Ok(())
}
