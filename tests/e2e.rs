//! End-to-end tests: emulated PCs boot against the real head in a private network namespace.
//!
//! They need root, QEMU and the built node images, so they are `#[ignore]`d for a plain
//! `cargo test`; `cargo xtask test` (the README's test command) builds everything and runs them.
//! Each test has its own namespace, a wall-clock limit, and prints the head log and every serial
//! console when it fails; the lab is torn down in `Drop` either way.

#![allow(clippy::unwrap_used)] // tests unwrap what they set up

use std::path::PathBuf;
use std::time::Duration;

use enlist_lab::{Lab, Profile};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn enlist() -> PathBuf {
    root().join("target/release/enlist")
}

/// A lab for one test, named after it so parallel tests never collide.
fn lab(test: &str, mode: &str) -> Lab {
    let mut lab = empty_lab(test);
    if mode == "proxy" {
        let c = lab.campus_dhcp();
        lab.spawn(c).unwrap_or_else(|e| panic!("{e}"));
    }
    let cfg = lab
        .write_config(mode, &root().join("images/out"), "")
        .unwrap_or_else(|e| panic!("{e}"));
    lab.start_head(&enlist(), &cfg)
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.head_log()));
    lab
}

/// A lab for one test with nothing started in it yet (no head, no PC).
fn empty_lab(test: &str) -> Lab {
    let ns = format!("e2e-{test}-{}", std::process::id() % 10000);
    let dir = root().join("lab").join(&ns);
    let _ = std::fs::remove_dir_all(&dir);
    Lab::new(&ns, &dir).unwrap_or_else(|e| panic!("lab: {e}"))
}

/// Run `f`; on failure panic with the lab's logs.
fn check(lab: &Lab, r: Result<(), String>) {
    if let Err(e) = r {
        panic!("{e}\n{}", lab.report());
    }
}

const BOOT_LIMIT: Duration = Duration::from_secs(300);

fn boots_healthy(test: &str, profile: Profile) -> Lab {
    let mut lab = lab(test, "dhcp");
    let floppy = root().join("images/out/enlist-floppy.img");
    let i = lab
        .boot(profile, Some(&floppy))
        .unwrap_or_else(|e| panic!("{e}"));
    let mac = lab.pcs[i].mac.clone();
    check(&lab, lab.wait_state(&mac, "healthy", BOOT_LIMIT));
    // Healthy after one heartbeat; a fault in the agent's loop shows a moment later.
    std::thread::sleep(Duration::from_secs(3));
    let faults = lab.pcs[i].node_os_faults();
    check(
        &lab,
        if faults.is_empty() {
            Ok(())
        } else {
            Err(format!("node OS faults on the console: {faults:?}"))
        },
    );
    lab
}

#[test]
#[ignore = "needs root, QEMU and built images: run `cargo xtask test`"]
fn p2_pxe_boots_registers_is_released_and_rejoins() {
    let mut lab = boots_healthy("p2pxe", Profile::P2Pxe);
    let mac = lab.pcs[0].mac.clone();
    let node = lab
        .curl(&format!("/api/v1/nodes/{mac}"))
        .unwrap_or_default();
    assert_eq!(
        node["node"]["info"]["cpu_model"]
            .as_str()
            .map(|s| s.contains("Pentium II")),
        Some(true),
        "{node}"
    );
    assert_eq!(node["node"]["info"]["boot_method"], "pxe", "{node}");

    // Release: the agent reboots the PC; its PXE boot is answered with "local disk".
    check(
        &lab,
        lab.curl_method("POST", &format!("/api/v1/nodes/{mac}/release"))
            .map(|_| ()),
    );
    check(
        &lab,
        lab.wait_state(&mac, "leaving", Duration::from_secs(30)),
    );
    // The PC reboots; its next network boot is answered with "boot from your own disk".
    let r = lab.wait_for(BOOT_LIMIT, "local disk boot answer", || {
        count_events(&lab, &mac, "answered with local disk boot") >= 1
    });
    check(&lab, r);
    assert_eq!(lab.node_state(&mac).as_deref(), Some("gone"));

    // Enlisted again, the same PC joins again at its next boot.
    check(
        &lab,
        lab.curl_method("POST", &format!("/api/v1/nodes/{mac}/enlist"))
            .map(|_| ()),
    );
    let r = lab.pcs[0].power_cycle();
    check(&lab, r);
    check(&lab, lab.wait_state(&mac, "healthy", BOOT_LIMIT));
}

#[test]
#[ignore = "needs root, QEMU and built images: run `cargo xtask test`"]
/// 64-bit BIOS PCs with a current Intel desktop card (82574L, e1000e), an office PC's AMD
/// PCnet and a virtual machine's virtio card: each one's iPXE finds the CPU's long mode
/// (`cpuid --ext 29` in the script), so its first boot is already of the 64-bit image
/// (`images.bios_x64`, unset here: `efi_x64`'s), whose kernel (ours, every driver built in)
/// drives its card. (A PC whose iPXE lacks `cpuid` boots the default image once, registers
/// its CPU flags, and boots the 64-bit image next: registry tests.)
fn x64_pxe_pcs_boot_the_64_bit_image_at_their_first_boot_whatever_their_card() {
    let mut lab = lab("x64pxe", "dhcp");
    let cards = [
        (Profile::X64PxeE1000e, "e1000e"),
        (Profile::X64PxePcnet, "pcnet32"),
        (Profile::X64PxeVirtio, "virtio_net"),
    ];
    let mut pcs = vec![];
    for (profile, _) in cards {
        let i = lab.boot(profile, None).unwrap_or_else(|e| panic!("{e}"));
        pcs.push(i);
    }
    for &i in &pcs {
        check(&lab, lab.wait_state(&lab.pcs[i].mac, "healthy", BOOT_LIMIT));
    }
    // Healthy after one heartbeat; a fault in the agent's loop shows a moment later.
    std::thread::sleep(Duration::from_secs(3));
    for ((_, driver), i) in cards.iter().zip(pcs) {
        let mac = lab.pcs[i].mac.clone();
        let node = lab
            .curl(&format!("/api/v1/nodes/{mac}"))
            .unwrap_or_default();
        let info = &node["node"]["info"];
        assert!(
            info["mem_total_kb"].as_u64().unwrap_or(0) > 400_000,
            "{info}"
        );
        assert!(
            info["kernel"].as_str().unwrap_or("").ends_with("-enlist"),
            "our kernel: {info}"
        );
        assert_eq!(info["nics"][0]["driver"], *driver, "{info}");
        assert_eq!(
            count_events(&lab, &mac, "64-bit CPU: its next BIOS network boot"),
            0,
            "first boot on the x86_64 image, nothing to move it to"
        );
        let faults = lab.pcs[i].node_os_faults();
        assert!(
            faults.is_empty(),
            "node OS faults on the console: {faults:?}"
        );
    }
}

#[test]
#[ignore = "needs root, QEMU and built images: run `cargo xtask test`"]
fn p2_floppy_boots_and_registers() {
    // The disk itself: exactly 1,474,560 bytes, a FAT12 file system mtools can read.
    let img = root().join("images/out/enlist-floppy.img");
    assert_eq!(
        std::fs::metadata(&img).map(|m| m.len()).unwrap_or(0),
        1_474_560
    );
    let dir = std::process::Command::new("mdir")
        .arg("-i")
        .arg(&img)
        .output()
        .expect("mdir (mtools)");
    let listing = String::from_utf8_lossy(&dir.stdout).to_lowercase();
    assert!(
        dir.status.success() && listing.contains("ipxe") && listing.contains("syslinux"),
        "{listing}"
    );

    let lab = boots_healthy("p2floppy", Profile::P2Floppy);
    let mac = lab.pcs[0].mac.clone();
    let node = lab
        .curl(&format!("/api/v1/nodes/{mac}"))
        .unwrap_or_default();
    assert_eq!(node["node"]["info"]["boot_method"], "floppy", "{node}");
}

#[test]
#[ignore = "needs root, QEMU and built images: run `cargo xtask test`"]
fn head_killed_while_pc_boots_and_pc_still_joins() {
    let mut lab = lab("headkill", "dhcp");
    let i = lab
        .boot(Profile::P2Pxe, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let mac = lab.pcs[i].mac.clone();
    check(&lab, lab.wait_state(&mac, "booting", BOOT_LIMIT));
    let before = lab
        .curl(&format!("/api/v1/nodes/{mac}"))
        .unwrap_or_default();
    lab.kill_head();
    std::thread::sleep(Duration::from_secs(3));
    let cfg = lab.dir.join("config.yaml");
    let r = lab.start_head(&enlist(), &cfg);
    check(&lab, r);
    // Registry and history survived kill -9: every event from before is still there.
    let after = lab
        .curl(&format!("/api/v1/nodes/{mac}"))
        .unwrap_or_default();
    let ids = |v: &serde_json::Value| -> Vec<i64> {
        v["events"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["id"].as_i64()).collect())
            .unwrap_or_default()
    };
    assert!(!ids(&before).is_empty(), "{before}");
    for id in ids(&before) {
        assert!(
            ids(&after).contains(&id),
            "event {id} lost in the crash\nbefore {before}\nafter {after}"
        );
    }
    assert_eq!(after["node"]["name"], before["node"]["name"]);
    check(&lab, lab.wait_state(&mac, "healthy", BOOT_LIMIT));
}

/// A room behind a router, beside the campus DHCP server: the router relays its PCs' DHCP to
/// the campus server (addresses) and to the head (PXE, answered through the relay); a PC of
/// the room boots the node OS across the router and joins in the room's group.
#[test]
#[ignore = "needs root, QEMU and built images: run `cargo xtask test`"]
fn a_relayed_room_boots_beside_the_campus_server() {
    let mut lab = empty_lab("relay");
    let (c, _) = lab.campus_pxe(&[]).unwrap_or_else(|e| panic!("{e}"));
    lab.spawn(c).unwrap_or_else(|e| panic!("{e}"));
    let (relay, relay_log) = lab
        .relayed_room(&["10.77.0.2", "10.77.0.1"])
        .unwrap_or_else(|e| panic!("{e}"));
    lab.spawn(relay).unwrap_or_else(|e| panic!("{e}"));
    let cfg = lab
        .write_config("proxy", &root().join("images/out"), "  enrollment: open\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "      mode: proxy\n",
        "      mode: proxy\n  subnets:\n    - { subnet: 10.78.0.0/24, relays: [10.78.0.1], group: room2 }\n",
    );
    std::fs::write(&cfg, text).unwrap();
    lab.start_head(&enlist(), &cfg)
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.head_log()));
    // New PCs are answered in proxy mode only in an enrollment window.
    lab.enroll(&enlist(), "15m")
        .unwrap_or_else(|e| panic!("{e}"));
    let i = lab
        .boot(Profile::P2Pxe, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let mac = lab.pcs[i].mac.clone();
    if let Err(e) = lab.wait_state(&mac, "healthy", BOOT_LIMIT) {
        let relayed = std::fs::read_to_string(&relay_log).unwrap_or_default();
        panic!("{e}\nrelay:\n{relayed}\n{}", lab.report());
    }
    let node = lab
        .curl(&format!("/api/v1/nodes/{mac}"))
        .unwrap_or_default();
    let ip = node["node"]["ip"].as_str().unwrap_or_default();
    assert!(
        ip.starts_with("10.78.0."),
        "the campus' address in the room: {node}"
    );
    assert_eq!(node["node"]["group"], "room2", "the room's group: {node}");
}

/// Beside a campus DHCP server with a PXE service of its own (dnsmasq on another host of the
/// segment): the campus' PC boots the campus' file, never enlist's, though enrollment is open
/// and a window opens later; a PC enlist does not know gets no answer from the head until a
/// window is open, then joins with the campus' address.
#[test]
#[ignore = "needs root, QEMU and built images: run `cargo xtask test`"]
fn proxy_mode_beside_dnsmasq() {
    let mut lab = empty_lab("proxy");
    // The lab's first PC is the campus': its MAC is the first tap's.
    let campus_pc = "52:54:00:77:01:01";
    let (c, campus_log) = lab
        .campus_pxe(&[campus_pc])
        .unwrap_or_else(|e| panic!("{e}"));
    lab.spawn(c).unwrap_or_else(|e| panic!("{e}"));
    let cfg = lab
        .write_config("proxy", &root().join("images/out"), "  enrollment: open\n")
        .unwrap_or_else(|e| panic!("{e}"));
    lab.start_head(&enlist(), &cfg)
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.head_log()));
    let campus = lab
        .boot(Profile::P2Pxe, None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(lab.pcs[campus].mac, campus_pc);
    let booted_campus = lab.wait_for(
        Duration::from_secs(90),
        "the campus' boot file sent",
        || std::fs::read_to_string(&campus_log).is_ok_and(|l| l.contains("campus.0 to 10.77.0.")),
    );
    check(&lab, booted_campus);
    assert!(
        lab.metric("enlist_dhcp_dropped_total{reason=\"proxy-not-ours\"}") >= 1.0,
        "the head heard the campus PC and left it alone\n{}",
        lab.report()
    );
    lab.pcs[campus].kill();

    // A PC neither knows: no answer from the head (its PXE gets the campus' address and
    // nothing to boot), though enrollment is open.
    let i = lab
        .boot(Profile::P2Pxe, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let mac = lab.pcs[i].mac.clone();
    let r = lab.wait_for(
        Duration::from_secs(60),
        "the unknown PC's PXE refused",
        || lab.metric("enlist_dhcp_dropped_total{reason=\"proxy-not-ours\"}") >= 2.0,
    );
    check(&lab, r);
    std::thread::sleep(Duration::from_secs(10));
    for m in [campus_pc, mac.as_str()] {
        assert!(
            lab.node_state(m).is_none(),
            "the head took over a PC it does not know ({m})\n{}",
            lab.report()
        );
    }
    // In an enrollment window it is answered, boots the node OS and joins.
    let said = lab
        .enroll(&enlist(), "15m")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(said.contains("window open"), "{said}");
    lab.pcs[i].power_cycle().unwrap_or_else(|e| panic!("{e}"));
    check(&lab, lab.wait_state(&mac, "healthy", BOOT_LIMIT));
    let node = lab
        .curl(&format!("/api/v1/nodes/{mac}"))
        .unwrap_or_default();
    let ip = node["node"]["ip"].as_str().unwrap_or_default().to_string();
    let last: u8 = ip
        .rsplit('.')
        .next()
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    assert!(
        ip.starts_with("10.77.0.") && (50..=90).contains(&last),
        "address {ip:?} should come from dnsmasq's range\n{}",
        lab.report()
    );
    // The campus' file went to its PC alone, once (it halts there).
    let sent = std::fs::read_to_string(&campus_log).unwrap_or_default();
    assert_eq!(
        sent.lines().filter(|l| l.contains("/campus.0 to ")).count(),
        1,
        "{sent}"
    );
}

#[test]
#[ignore = "needs root, QEMU, chromium and built images: run `cargo xtask test`"]
fn dashboard_in_a_browser_shows_a_pc_join_live_and_leave() {
    let mut lab = lab("browser", "dhcp");
    let password = admin_password(&lab);
    // The browser (Debian's chromium, driven by playwright-core) runs inside the lab namespace.
    let mut browser = lab
        .exec("node")
        .arg(root().join("tests/browser/dashboard.mjs"))
        .args(["http://10.77.0.1:8080/", &password, "52:54:00:77:01:01"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node");
    std::thread::sleep(Duration::from_secs(5));
    lab.boot(Profile::P2Pxe, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let start = std::time::Instant::now();
    loop {
        if let Ok(Some(_)) = browser.try_wait() {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            let _ = browser.kill();
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let out = browser.wait_with_output().expect("browser output");
    let text = browser_passed(&lab, &out);
    assert!(text.contains("boot steps:"), "the boot drawn: {text}");
    assert!(text.contains("gone; events"), "{text}");
    eprintln!("{text}");
}

/// The browser script's output; the test fails with it (and the lab's logs) unless it passed.
fn browser_passed(lab: &Lab, out: &std::process::Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "browser test failed:\n{text}\n{}",
        lab.report()
    );
    text
}

/// A new random admin password for the lab's head.
fn admin_password(lab: &Lab) -> String {
    lab.admin_password(&enlist())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The published kernel of `image`, and the per-node initrd exactly as the head serves it
/// (image initrd + this node's settings), for a `-kernel`/`-initrd` boot.
fn direct_boot_files(lab: &Lab, image: &str, mac: &str) -> (PathBuf, PathBuf) {
    lab.direct_boot_files(&root().join("images/out"), image, mac)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The head's view of the lab's first PC (`GET /api/v1/nodes/<mac>`).
fn first_pc_node(lab: &Lab) -> serde_json::Value {
    let mac = &lab.pcs[0].mac;
    lab.curl(&format!("/api/v1/nodes/{mac}"))
        .unwrap_or_default()
}

fn count_events(lab: &Lab, mac: &str, needle: &str) -> usize {
    lab.curl(&format!("/api/v1/nodes/{mac}"))
        .map(|v| {
            v["events"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|e| e["detail"].as_str().unwrap_or("").contains(needle))
                        .count()
                })
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

#[test]
#[ignore = "needs root, QEMU and built images: run `cargo xtask test`"]
fn pentium2_64mb_direct_boot_survives_head_outage_and_says_leaving() {
    let mut lab = lab("direct", "dhcp");
    let mac = "52:54:00:77:01:01";
    let (kernel, initrd) = direct_boot_files(&lab, "i586", mac);
    let i = lab
        .boot_direct("qemu-system-i386", 64, &kernel, &initrd)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(lab.pcs[i].mac, mac);
    check(&lab, lab.wait_state(mac, "healthy", BOOT_LIMIT));
    let node = lab
        .curl(&format!("/api/v1/nodes/{mac}"))
        .unwrap_or_default();
    assert_eq!(node["node"]["info"]["boot_method"], "direct", "{node}");
    let free_kb = node["node"]["heartbeat"]["mem_free_kb"]
        .as_u64()
        .unwrap_or(0);
    eprintln!("Pentium II, -m 64: {} kB free after boot", free_kb);
    assert!(
        free_kb > 16 * 1024,
        "a 64 MB node keeps RAM for jobs: {node}"
    );

    // Head down for 30 s: the node keeps running and registers again by itself.
    lab.kill_head();
    std::thread::sleep(Duration::from_secs(30));
    let cfg = lab.dir.join("config.yaml");
    let r = lab.start_head(&enlist(), &cfg);
    check(&lab, r);
    check(
        &lab,
        lab.wait_for(Duration::from_secs(120), "re-registration", || {
            count_events(&lab, mac, "agent registered") >= 2
        }),
    );
    check(
        &lab,
        lab.wait_state(mac, "healthy", Duration::from_secs(60)),
    );

    // Reboot inside the node (Ctrl-Alt-Del: busybox init shuts down, SIGTERM to the agent):
    // the head hears "leaving" before the node goes.
    check(&lab, lab.monitor(i, "sendkey ctrl-alt-delete"));
    check(
        &lab,
        lab.wait_for(Duration::from_secs(60), "leaving", || {
            count_events(&lab, mac, "→ leaving") >= 1
        }),
    );
}

#[test]
#[ignore = "needs root, QEMU, OVMF and built images: run `cargo xtask test`"]
fn x64_uefi_boots_and_registers() {
    let lab = boots_healthy("x64uefi", Profile::X64Uefi);
    let mac = lab.pcs[0].mac.clone();
    let node = lab
        .curl(&format!("/api/v1/nodes/{mac}"))
        .unwrap_or_default();
    assert!(
        node["node"]["info"]["kernel"]
            .as_str()
            .unwrap_or("")
            .ends_with("-enlist"),
        "UEFI boots the x86_64 image, on our kernel (EFI stub): {node}"
    );
}

#[test]
#[ignore = "needs root, QEMU and built images: run `cargo xtask test`"]
fn p2_floppy_with_rtl8139_boots_and_registers() {
    let lab = boots_healthy("p2rtl", Profile::P2FloppyRtl8139);
    let node = first_pc_node(&lab);
    // QEMU emulates an RTL8139C+, which Linux drives with 8139cp (older chips: 8139too).
    let driver = node["node"]["info"]["nics"][0]["driver"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(driver == "8139cp" || driver == "8139too", "{node}");
}

/// The commonest PCI card of its day: a DEC 21143 (Tulip), driven by iPXE from the floppy and
/// by the i586 kernel's tulip driver once the node OS runs.
#[test]
#[ignore = "needs root, QEMU and built images: run `cargo xtask test`"]
fn p2_floppy_with_a_tulip_card_boots_and_registers() {
    let lab = boots_healthy("p2tulip", Profile::P2FloppyTulip);
    let node = first_pc_node(&lab);
    assert_eq!(node["node"]["info"]["nics"][0]["driver"], "tulip", "{node}");
}

/// An ISA NE2000 clone at 0x300, IRQ 9 (no PCI card at all): the floppy's iPXE drives it,
/// but the node OS's kernel cannot find its IRQ (ACPI holds it). The node OS says so and
/// restarts; the head, seeing that this ISA card's PC fetched the node OS and never
/// registered, boots it with acpi=off: it registers at its second boot, no config changed.
#[test]
#[ignore = "needs root, QEMU and built images: run `cargo xtask test`"]
fn p2_floppy_with_an_isa_ne2000_at_irq_9_registers_at_its_second_boot() {
    let lab = boots_healthy("p2isa", Profile::P2FloppyNe2kIsa);
    let node = first_pc_node(&lab);
    assert_eq!(node["node"]["info"]["nics"][0]["driver"], "ne", "{node}");
    assert_eq!(node["node"]["kernel_args"], "acpi=off", "{node}");
    let history = node["events"].to_string();
    assert!(
        history.contains("boots with acpi=off from now on"),
        "{history}"
    );
    let serial = lab.pcs[0].serial_log();
    assert!(
        serial.contains("an ISA network card was found but not its IRQ")
            && serial.contains("restarting for the ISA card's IRQ"),
        "{serial}"
    );
    assert_eq!(
        serial.matches("Linux version").count(),
        2,
        "registered at its second boot"
    );
}

#[test]
#[ignore = "needs root, QEMU and built images: run `cargo xtask test`"]
fn p2_usb_iso_boots_and_registers() {
    let mut lab = lab("p2usb", "dhcp");
    let iso = root().join("images/out/enlist-usb.iso");
    let i = lab
        .boot(Profile::P2Usb, Some(&iso))
        .unwrap_or_else(|e| panic!("{e}"));
    let mac = lab.pcs[i].mac.clone();
    check(&lab, lab.wait_state(&mac, "healthy", BOOT_LIMIT));
}

/// A 64-bit PC with no network card, only a USB Ethernet adapter (QEMU's usb-net on xHCI),
/// booted straight into the 64-bit image (Debian's iPXE, on the boot floppy and ISO, has no
/// driver for it): its kernel drives the USB controller and the adapter (built in), and the
/// node OS registers through the adapter.
#[test]
#[ignore = "needs root, QEMU and built images: run `cargo xtask test`"]
fn x64_pc_with_only_a_usb_ethernet_adapter_registers() {
    let mut lab = lab("x64usbnet", "dhcp");
    let mac = "52:54:00:77:01:01";
    let (kernel, initrd) = direct_boot_files(&lab, "x86_64", mac);
    lab.boot_direct_with(
        "qemu-system-x86_64",
        256,
        &kernel,
        &initrd,
        enlist_lab::DirectCard::UsbNet,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    check(&lab, lab.wait_state(mac, "healthy", BOOT_LIMIT));
    let node = lab
        .curl(&format!("/api/v1/nodes/{mac}"))
        .unwrap_or_default();
    let drivers: Vec<&str> = node["node"]["info"]["nics"]
        .as_array()
        .map(|n| n.iter().filter_map(|c| c["driver"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        drivers
            .iter()
            .any(|d| ["rndis_host", "cdc_ether"].contains(d)),
        "registered through the USB adapter: {node}"
    );
}

#[test]
#[ignore = "needs root, QEMU and built images: run `cargo xtask test`"]
fn floppy_pc_waits_for_a_head_that_is_down_and_joins_when_it_comes_up() {
    // Addresses come from dnsmasq (proxy mode), so the floppy gets an address while the head
    // is down, fails to reach it, says so and retries.
    let mut lab = lab("floppywait", "proxy");
    lab.kill_head();
    let floppy = root().join("images/out/enlist-floppy.img");
    let i = lab
        .boot(Profile::P2Floppy, Some(&floppy))
        .unwrap_or_else(|e| panic!("{e}"));
    let mac = lab.pcs[i].mac.clone();
    std::thread::sleep(Duration::from_secs(45));
    let cfg = lab.dir.join("config.yaml");
    let r = lab.start_head(&enlist(), &cfg);
    check(&lab, r);
    check(&lab, lab.wait_state(&mac, "healthy", BOOT_LIMIT));
}

/// A PC whose card the image it will boot cannot drive: the head says so when iPXE's DHCP
/// names the card, before the node OS could fail to find it, and once it has fetched the node
/// OS and not registered within `nodes.stuck_after` it is shown as stuck, with why, in
/// `enlist nodes` and the dashboard. A Pentium II with a vmxnet3 card: the i586 kernel's
/// drivers are built in, so the table the head checks is `modules.alias-<release>` from
/// beside the kernel. (The x86_64 image has every Ethernet driver of Debian's kernel.)
#[test]
#[ignore = "needs root, QEMU, chromium and built images: run `cargo xtask test`"]
fn a_card_the_image_has_no_driver_for_is_named_at_boot_and_the_pc_shown_stuck() {
    let ns = format!("e2e-nic-{}", std::process::id() % 10000);
    let dir = root().join("lab").join(&ns);
    let _ = std::fs::remove_dir_all(&dir);
    let mut lab = Lab::new(&ns, &dir).unwrap_or_else(|e| panic!("lab: {e}"));
    let cfg = lab
        .write_config("dhcp", &root().join("images/out"), "  stuck_after: 30s\n")
        .unwrap_or_else(|e| panic!("{e}"));
    lab.start_head(&enlist(), &cfg)
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.head_log()));
    let password = admin_password(&lab);
    let vmxnet = lab
        .boot(Profile::P2PxeVmxnet3, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let vmxnet = lab.pcs[vmxnet].mac.clone();
    let r = lab.wait_for(Duration::from_secs(180), "the missing driver named", || {
        count_events(
            &lab,
            &vmxnet,
            "PCI 15ad:07b0: no driver for it in image i586",
        ) >= 1
    });
    check(&lab, r);
    check(
        &lab,
        lab.wait_state(&vmxnet, "stuck", Duration::from_secs(240)),
    );
    assert!(
        count_events(&lab, &vmxnet, "; last seen: initrd by ") >= 1,
        "its history says what was last seen"
    );

    // The admin's view: `enlist nodes` lists it, and why, under the table.
    let out = lab
        .exec(&enlist().display().to_string())
        .args(["nodes", "--config"])
        .arg(&cfg)
        .output()
        .expect("enlist nodes");
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    let name = lab.node_name(&vmxnet);
    let line = listing
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{name}: ")))
        .unwrap_or_default();
    assert!(
        listing.contains(" stuck ")
            && line.contains("network card PCI 15ad:07b0: no driver for it in image i586")
            && line.contains("never registered; last seen: initrd by "),
        "enlist nodes:\n{listing}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{listing}");

    // And the dashboard's.
    let out = lab
        .browser(
            &root().join("tests/browser/stuck.mjs"),
            &["http://10.77.0.1:8080/", &password, &vmxnet, "15ad:07b0"],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{out}");
}

/// nginx as the room's HTTP cache (`images.mirrors`), in the head's namespace on port 8081:
/// access lines with the cache's verdict.
fn start_mirror(lab: &mut Lab) -> PathBuf {
    let d = lab.dir.join("mirror");
    std::fs::create_dir_all(d.join("tmp")).unwrap();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  log_format verdict '$request_uri $upstream_cache_status $body_bytes_sent $status $request_time $remote_addr $time_iso8601';\n\
         \x20 access_log {d}/access.log verdict;\n\
         \x20 client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy;\n\
         \x20 fastcgi_temp_path {d}/tmp/fcgi; uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;\n\
         \x20 proxy_cache_path {d}/cache keys_zone=images:1m max_size=256m;\n\
         \x20 server {{\n    listen 10.77.0.1:8081;\n\
         \x20   location /images/ {{ proxy_pass http://10.77.0.1:8080; proxy_cache images; proxy_cache_lock on; }}\n  }}\n}}\n",
        d = d.display()
    );
    std::fs::write(d.join("nginx.conf"), conf).unwrap();
    let mut c = lab.exec("nginx");
    c.arg("-c").arg(d.join("nginx.conf")).arg("-p").arg(&d);
    lab.spawn(c).unwrap_or_else(|e| panic!("{e}"));
    lab.report_also(d.join("access.log"));
    lab.report_also(d.join("error.log"));
    d.join("access.log")
}

#[test]
#[ignore = "needs root, QEMU, nginx and built images: run `cargo xtask test`"]
fn a_rooms_mirror_serves_the_second_pcs_image_from_its_cache() {
    let mut lab = empty_lab("mirror");
    lab.capture().unwrap_or_else(|e| panic!("{e}"));
    let access = start_mirror(&mut lab);
    let cfg = lab
        .write_config("dhcp", &root().join("images/out"), "")
        .unwrap_or_else(|e| panic!("{e}"));
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "  cmdline: \"console=ttyS0,115200\"\n",
        "  cmdline: \"console=ttyS0,115200\"\n  mirrors: [{ group: default, url: http://10.77.0.1:8081 }]\n",
    );
    std::fs::write(&cfg, text).unwrap();
    lab.start_head(&enlist(), &cfg)
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.head_log()));
    let floppy = root().join("images/out/enlist-floppy.img");
    for _ in 0..2 {
        let i = lab
            .boot(Profile::P2Floppy, Some(&floppy))
            .unwrap_or_else(|e| panic!("{e}"));
        let mac = lab.pcs[i].mac.clone();
        check(&lab, lab.wait_state(&mac, "healthy", BOOT_LIMIT));
    }
    // The cache fetched the kernel and the image's initrd from the head once; the second PC
    // had them from the cache. Each PC had only its own part of the initrd from the head.
    let log = std::fs::read_to_string(&access).unwrap_or_default();
    let verdicts = |file: &str| -> Vec<String> {
        log.lines()
            .filter(|l| {
                l.contains("/i586/") && l.split(' ').next().is_some_and(|u| u.ends_with(file))
            })
            .map(|l| l.split(' ').nth(1).unwrap_or("").to_string())
            .collect()
    };
    for file in ["/vmlinuz", "/initrd"] {
        assert_eq!(verdicts(file), ["MISS", "HIT"], "{file}: {log}");
    }
    assert_eq!(
        lab.metric("enlist_http_transfers_total{kind=\"kernel\"}"),
        1.0,
        "the head sent the kernel once, to the cache"
    );
    for pc in &lab.pcs {
        let node = lab
            .curl(&format!("/api/v1/nodes/{}", pc.mac))
            .unwrap_or_default();
        assert!(
            node.to_string().contains("/overlay"),
            "its own part from the head: {node}"
        );
    }
    // A mirror that stops sending mid-file (its first 64 KiB pass, then nothing): the third
    // PC gives up on it after the script's progress timeout and boots from the head.
    stall_after(&lab, 8081, 64);
    let i = lab
        .boot(Profile::P2Floppy, Some(&floppy))
        .unwrap_or_else(|e| panic!("{e}"));
    let mac = lab.pcs[i].mac.clone();
    check(&lab, lab.wait_state(&mac, "healthy", BOOT_LIMIT));
    assert_eq!(
        lab.metric("enlist_http_transfers_total{kind=\"kernel\"}"),
        2.0,
        "the head sent the kernel again, to the PC whose mirror stalled"
    );
}

/// Drop what the head's namespace sends from TCP `port` after its first `kib` KiB: a server
/// that stalls mid-transfer, its connections open.
fn stall_after(lab: &Lab, port: u16, kib: u32) {
    let rules = format!(
        "table inet lab_stall {{ chain out {{ type filter hook output priority 0; \
         tcp sport {port} quota over {kib} kbytes drop; }}; }}"
    );
    lab.nft(&rules).unwrap_or_else(|e| panic!("{e}"));
}
