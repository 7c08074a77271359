//! Image size and node RAM: the size of each built image next to the 8 MiB budget, and the
//! memory a Pentium II with 64 MB has left once the node OS is up (from its own heartbeat).

use std::time::Duration;

use anyhow::anyhow;
use enlist_lab::Lab;

use crate::{enlist_bin, root};

/// The node OS (kernel + initrd) must fit the 2004 cluster's budget.
const BUDGET_BYTES: u64 = 8 << 20;
const MIB: f64 = 1024.0 * 1024.0;

fn size(path: &std::path::Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(path)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?
        .len())
}

pub fn run() -> anyhow::Result<()> {
    let images = root().join("images/out");
    println!("| image | vmlinuz MiB | initrd MiB | total MiB | of the 8 MiB budget |");
    println!("|---|---|---|---|---|");
    for image in ["i586", "x86_64"] {
        let current = images.join(image).join("current");
        let Ok(version) = std::fs::read_to_string(&current) else {
            println!("| {image} | not built (`cargo xtask node images`) | | | |");
            continue;
        };
        let dir = images.join(image).join(version.trim());
        let (k, i) = (size(&dir.join("vmlinuz"))?, size(&dir.join("initrd"))?);
        // The 2004 cluster's node OS budget, for both: it is what a PC downloads at every boot.
        let budget = format!("{:.0}%", 100.0 * (k + i) as f64 / BUDGET_BYTES as f64);
        println!(
            "| {image} | {:.2} | {:.2} | {:.2} | {budget} |",
            k as f64 / MIB,
            i as f64 / MIB,
            (k + i) as f64 / MIB,
        );
    }

    let ns = "bench-image";
    let dir = root().join("lab").join(ns);
    let _ = std::fs::remove_dir_all(&dir);
    let mut lab = Lab::new(ns, &dir).map_err(|e| anyhow!(e))?;
    let config = lab
        .write_config("dhcp", &images, "")
        .map_err(|e| anyhow!(e))?;
    lab.start_head(&enlist_bin(), &config)
        .map_err(|e| anyhow!(e))?;
    let mac = "52:54:00:77:01:01";
    let (kernel, initrd) = lab
        .direct_boot_files(&images, "i586", mac)
        .map_err(|e| anyhow!(e))?;
    lab.boot_direct("qemu-system-i386", 64, &kernel, &initrd)
        .map_err(|e| anyhow!(e))?;
    lab.wait_state(mac, "healthy", Duration::from_secs(180))
        .map_err(|e| anyhow!("{e}\n{}", lab.pcs[0].serial_log()))?;
    // One more heartbeat after `healthy`, so the figure is from a settled system.
    std::thread::sleep(Duration::from_secs(5));
    let node = lab
        .curl(&format!("/api/v1/nodes/{mac}"))
        .map_err(|e| anyhow!(e))?;
    let total = node["node"]["info"]["mem_total_kb"].as_u64().unwrap_or(0);
    // The agent reports MemAvailable (or MemFree, if larger) as `mem_free_kb`.
    let free = node["node"]["heartbeat"]["mem_free_kb"]
        .as_u64()
        .unwrap_or(0);
    println!();
    println!("Pentium II (-cpu pentium2 -m 64), i586 image, after boot (the agent's heartbeat):");
    println!("| RAM MB | MemTotal MiB | available MiB | used by kernel + node OS (incl. the unpacked initrd) MiB |");
    println!("|---|---|---|---|");
    println!(
        "| 64 | {:.1} | {:.1} | {:.1} |",
        total as f64 / 1024.0,
        free as f64 / 1024.0,
        total.saturating_sub(free) as f64 / 1024.0
    );
    Ok(())
}
