//! The QEMU lab: a private network namespace with a bridge (10.77.0.1/24), the head serving on
//! it, and emulated PCs on tap devices, each with its serial console logged to a file.
//!
//! Everything is torn down in `Drop` (processes killed, namespace deleted), also when a test
//! fails; `Lab::cleanup(name)` removes the leftovers of a run that crashed. All traffic stays
//! inside the namespace.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod cable;
pub mod host;
pub mod wol;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const HEAD_IP: &str = "10.77.0.1";
pub const HEAD_URL: &str = "http://10.77.0.1:8080";

/// The largest TCP segment the head's namespace sends a PC in a lab with an NE2000: with
/// timestamps, 1200 - 12 bytes of data in a 1254-byte frame, 5 ring pages (see
/// [`Lab::spare_the_ne2000s_ring`]).
const NE2000_MSS: u32 = 1200;

/// The head config's jobs section in the lab (the demo, the jobs tests): the head runs munged,
/// slurmctld and NFS-Ganesha (the kernel's NFS server is the host's, outside the lab's
/// network namespace); short timeouts so a lost node is seen within the test. `{lab}` is the
/// lab's folder (each lab's slurm.conf and munge socket are its own).
pub const JOBS_CONFIG: &str = "jobs:\n  enabled: true\n  node_timeout: 30s\n  release_deadline: 60s\n  run_dir: {lab}/run\n  home:\n    server: ganesha\n    path: {lab}/home\n";

/// The user the lab's jobs run as, made on this machine if missing (the head reads its
/// accounts from the machine's; a job of root's cannot write in the shared home, whose NFS
/// server maps a node's root to nobody).
pub const JOB_USER: &str = "enlistlab";
pub const JOB_UID: u32 = 4242;

/// Make [`JOB_USER`] on this machine if it has none (before a head with jobs starts).
pub fn ensure_job_user() -> Result<(), String> {
    if run(Command::new("id").args(["-u", JOB_USER])).is_ok() {
        return Ok(());
    }
    run(Command::new("useradd").args([
        "--uid",
        &JOB_UID.to_string(),
        "--user-group",
        "--no-create-home",
        "--shell",
        "/bin/sh",
        JOB_USER,
    ]))
    .map(|_| ())
}

/// apt packages the lab, the image build and the tests need: the one list, used by
/// `cargo xtask setup` (and so by the README's commands).
pub const APT_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "ipxe-qemu",
    "ipxe",
    "ovmf",
    "syslinux",
    "syslinux-common",
    "isolinux",
    "mtools",
    "dosfstools",
    "xorriso",
    "gcc-multilib",
    // the node kernels' build (`cargo xtask node kernel`; libelf for the x86_64 one's objtool)
    "make",
    "flex",
    "bison",
    "bc",
    "libelf-dev",
    "xz-utils",
    "qemu-user",
    "iproute2",
    "curl",
    "dnsmasq-base",
    "udhcpc",
    "isc-dhcp-client",
    "tftp-hpa",
    "busybox-static",
    "binutils",
    "prometheus",
    "chromium",
    "tftpd-hpa",
    "kea-admin",
    // the second DHCP reference of `bench dhcp`, and packet timing in its hostile run
    "kea-dhcp4-server",
    "tcpdump",
    // the jobs: the head's Slurm controller and tools, munge, the runtime bundle's packer, the
    // shared home's file servers (the kernel's, and NFS-Ganesha where the kernel has none), the
    // head's firewall for the cluster's ports, and a stranger's NFSv4 client (hostile tests)
    "nftables",
    "libnfs-utils",
    "slurmctld",
    "slurm-client",
    "munge",
    "squashfs-tools",
    "nfs-kernel-server",
    "nfs-ganesha",
    "nfs-ganesha-vfs",
    // the job environments (`enlist env build`): a Debian root for each node arch (mmdebstrap
    // refuses a foreign arch, i386 on an amd64 head, without arch-test, which it only
    // recommends)
    "mmdebstrap",
    "arch-test",
    // the packages (`cargo xtask package`): a clean Debian 12 root to install them into, and a
    // check of their systemd unit
    "debootstrap",
    "systemd",
    // an HTTP cache near a room (the e2e test of images.mirrors)
    "nginx-light",
];

/// Installed only when the command is missing (a newer Node.js may come from elsewhere).
pub const APT_IF_MISSING: &[(&str, &str)] = &[("node", "nodejs"), ("npm", "npm")];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Pentium II, 128 MB, Intel EtherExpress Pro/100 with QEMU's PXE ROM.
    P2Pxe,
    /// Pentium II, 64 MB, NE2000 PCI without a ROM, booting the enlist floppy.
    P2Floppy,
    /// The same with a RealTek RTL8139 without a ROM.
    P2FloppyRtl8139,
    /// The same with a DEC 21143 (Tulip) without a ROM.
    P2FloppyTulip,
    /// The same with an ISA NE2000 clone at the usual port (0x300, IRQ 5), no PCI at all.
    P2FloppyNe2kIsa,
    /// Pentium II, 64 MB, NE2000 PCI without a ROM, booting the enlist ISO (CD / USB image).
    P2Usb,
    /// Pentium II, 64 MB, a VMware vmxnet3 card with QEMU's PXE ROM: the lab's stand-in for a
    /// card newer than the i586 image's drivers (iPXE drives it, the node OS cannot).
    P2PxeVmxnet3,
    /// x86_64, e1000, BIOS PXE.
    X64Pxe,
    /// x86_64, an Intel 82574L (e1000e, a current desktop card), BIOS PXE.
    X64PxeE1000e,
    /// x86_64, an AMD PCnet-PCI II (pcnet32, the office PC card of the late 1990s), BIOS PXE.
    X64PxePcnet,
    /// x86_64, a virtio network card (a virtual machine's), BIOS PXE.
    X64PxeVirtio,
    /// x86_64, e1000, OVMF UEFI network boot.
    X64Uefi,
}

impl Profile {
    pub fn parse(s: &str) -> Option<Profile> {
        Some(match s {
            "p2-pxe" => Profile::P2Pxe,
            "p2-floppy" => Profile::P2Floppy,
            "p2-floppy-rtl8139" => Profile::P2FloppyRtl8139,
            "p2-floppy-tulip" => Profile::P2FloppyTulip,
            "p2-floppy-ne2k-isa" => Profile::P2FloppyNe2kIsa,
            "p2-usb" => Profile::P2Usb,
            "p2-pxe-vmxnet3" => Profile::P2PxeVmxnet3,
            "x64-pxe" => Profile::X64Pxe,
            "x64-pxe-e1000e" => Profile::X64PxeE1000e,
            "x64-pxe-pcnet" => Profile::X64PxePcnet,
            "x64-pxe-virtio" => Profile::X64PxeVirtio,
            "x64-uefi" => Profile::X64Uefi,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Profile::P2Pxe => "p2-pxe",
            Profile::P2Floppy => "p2-floppy",
            Profile::P2FloppyRtl8139 => "p2-floppy-rtl8139",
            Profile::P2FloppyTulip => "p2-floppy-tulip",
            Profile::P2FloppyNe2kIsa => "p2-floppy-ne2k-isa",
            Profile::P2Usb => "p2-usb",
            Profile::P2PxeVmxnet3 => "p2-pxe-vmxnet3",
            Profile::X64Pxe => "x64-pxe",
            Profile::X64PxeE1000e => "x64-pxe-e1000e",
            Profile::X64PxePcnet => "x64-pxe-pcnet",
            Profile::X64PxeVirtio => "x64-pxe-virtio",
            Profile::X64Uefi => "x64-uefi",
        }
    }

    /// An NE2000 (PCI or ISA) that iPXE drives: see [`Lab::spare_the_ne2000s_ring`].
    pub fn is_ne2000(self) -> bool {
        matches!(
            self,
            Profile::P2Floppy | Profile::P2FloppyNe2kIsa | Profile::P2Usb
        )
    }

    /// A 64-bit PC (qemu-system-x86_64); the others are Pentium IIs (qemu-system-i386).
    pub fn is_x64(self) -> bool {
        matches!(
            self,
            Profile::X64Pxe
                | Profile::X64PxeE1000e
                | Profile::X64PxePcnet
                | Profile::X64PxeVirtio
                | Profile::X64Uefi
        )
    }
}

pub fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn ip(args: &[&str]) -> Result<String, String> {
    run(Command::new("ip").args(args))
}

/// The URL of the first line of an iPXE boot script that starts with `command` (`kernel `,
/// `initrd --name initrd `) and names an `http://` URL: the first such word (options such as
/// `--timeout N` come before it).
pub fn script_http_url(script: &str, command: &str) -> Option<String> {
    script
        .lines()
        .filter_map(|l| l.trim().strip_prefix(command))
        .find_map(|rest| rest.split_whitespace().find(|w| w.starts_with("http://")))
        .map(str::to_string)
}

/// The network hardware of a PC booted by [`Lab::boot_direct_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectCard {
    /// An Intel PRO/1000 PCI card.
    E1000,
    /// No network card: a USB Ethernet adapter (QEMU's usb-net: RNDIS and CDC Ethernet) on
    /// an xHCI controller. Debian's iPXE does not drive it, so such a PC is booted directly.
    UsbNet,
}

/// A PC in the lab.
pub struct Pc {
    pub name: String,
    pub mac: String,
    pub serial: PathBuf,
    child: Child,
    /// The QEMU command line, to power the PC on again.
    argv: Vec<String>,
    qlog: PathBuf,
    /// When it was last powered on (Unix milliseconds), to tell the head's answers to this
    /// boot from those to the boot before.
    pub powered_on_ms: i64,
}

/// A room's daily window for `schedules:` as (enlist, release) cron expressions, in this
/// machine's time zone: open now, closing at the first whole minute after `closes_in` from
/// now (cron has minutes), then closed for an hour.
pub fn daily_window(closes_in: Duration) -> (String, String) {
    let tz = jiff::tz::TimeZone::system();
    let ahead = jiff::SignedDuration::from_secs(closes_in.as_secs() as i64 + 60);
    let release = jiff::Timestamp::now()
        .checked_add(ahead)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_zoned_datetime(tz);
    let enlist = release
        .checked_sub(jiff::SignedDuration::from_hours(23))
        .unwrap_or_else(|_| release.clone());
    let cron = |z: &jiff::ZonedDateTime| format!("{} {} * * *", z.minute(), z.hour());
    (cron(&enlist), cron(&release))
}

/// Unix time in milliseconds (as the head's boot steps carry it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Pc {
    pub fn serial_log(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }
    /// Lines of the serial console that show the node OS failing even if the PC registered
    /// (a panicking agent is restarted by init and registers again).
    pub fn node_os_faults(&self) -> Vec<String> {
        const SIGNS: [&str; 4] = ["panicked at", "Kernel panic", "Oops:", "segfault at"];
        self.serial_log()
            .lines()
            .filter(|l| SIGNS.iter().any(|s| l.contains(s)))
            .map(str::to_string)
            .collect()
    }
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
    /// Power-cycle: kill QEMU and start the same PC again (same MAC, same disks).
    pub fn power_cycle(&mut self) -> Result<(), String> {
        self.kill();
        self.powered_on_ms = now_ms();
        self.child = spawn_logged(&self.argv, &self.qlog)?;
        Ok(())
    }
}

fn spawn_logged(argv: &[String], log: &Path) -> Result<Child, String> {
    let qlog = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| e.to_string())?;
    Command::new(&argv[0])
        .args(&argv[1..])
        .stdout(qlog.try_clone().map_err(|e| e.to_string())?)
        .stderr(qlog)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", argv.join(" ")))
}

pub struct Lab {
    pub ns: String,
    pub dir: PathBuf,
    head: Option<Child>,
    pub pcs: Vec<Pc>,
    taps: u32,
    extra: Vec<Child>,
    /// New PCs' bridge ports are isolated, as on a switch with port isolation (private
    /// VLAN): a PC talks to the head, never to another isolated port, and gets no unicast
    /// flooded to unknown MACs.
    pub isolate_pcs: bool,
    /// New PCs are cabled through a forwarder that drops this share of their frames each
    /// way (0: a plain tap). See [`cable`].
    pub loss_percent: u32,
    /// The lossy cables of the PCs that have one (they stop with the lab).
    pub cables: Vec<cable::LossyCable>,
    /// Other hosts on the bridges (the campus server, a room's router), gone with the lab.
    hosts: Vec<host::Host>,
    /// The bridge new PCs are cabled to: br0, the head's segment, or br1, a room behind a
    /// router ([`Lab::relayed_room`]).
    bridge: String,
    /// Helpers' logs a failing test prints ([`Lab::report_also`]).
    reported_logs: Vec<PathBuf>,
    /// The bridge's capture, if [`Lab::capture`] started one.
    pcap: Option<PathBuf>,
    /// Whether [`Lab::spare_the_ne2000s_ring`] has put its rule in.
    ne2000_mss_clamped: bool,
}

impl Lab {
    /// Remove what a crashed run left behind: processes in the namespace, and the namespace.
    pub fn cleanup(ns: &str) {
        if let Ok(pids) = run(Command::new("ip").args(["netns", "pids", ns])) {
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }

    /// A fresh namespace `ns` with bridge br0 at 10.77.0.1/24; logs and state go to `dir`.
    pub fn new(ns: &str, dir: &Path) -> Result<Lab, String> {
        Lab::cleanup(ns);
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        ip(&["netns", "add", ns])?;
        let lab = Lab {
            ns: ns.into(),
            dir: dir.into(),
            head: None,
            pcs: vec![],
            taps: 0,
            extra: vec![],
            isolate_pcs: false,
            loss_percent: 0,
            cables: vec![],
            hosts: vec![],
            bridge: "br0".into(),
            reported_logs: vec![],
            pcap: None,
            ne2000_mss_clamped: false,
        };
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", ns, "addr", "add", "10.77.0.1/24", "dev", "br0"])?;
        ip(&["-n", ns, "link", "set", "br0", "up"])?;
        Ok(lab)
    }

    /// A handle on a lab that is already running (started by `cargo xtask lab up`), to add PCs.
    /// Forget it (`std::mem::forget`) to leave the lab running when it goes out of scope.
    pub fn attach(ns: &str, dir: &Path) -> Result<Lab, String> {
        let links = ip(&["-n", ns, "-o", "link", "show"])?;
        let taps = links.lines().filter(|l| l.contains(": tap")).count() as u32;
        Ok(Lab {
            ns: ns.into(),
            dir: dir.into(),
            head: None,
            pcs: vec![],
            taps,
            extra: vec![],
            isolate_pcs: false,
            loss_percent: 0,
            cables: vec![],
            hosts: vec![],
            bridge: "br0".into(),
            reported_logs: vec![],
            pcap: None,
            ne2000_mss_clamped: false,
        })
    }

    /// `ip netns exec <ns> <program>`.
    pub fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        c
    }

    /// The slurm.conf of the head's Slurm (jobs on): what `SLURM_CONF` names for its tools.
    pub fn slurm_conf(&self) -> PathBuf {
        self.dir.join("run/slurm.conf")
    }

    /// The shared home's folder of [`JOB_USER`] on the head.
    pub fn user_home(&self) -> PathBuf {
        self.dir.join("home").join(JOB_USER)
    }

    /// A Slurm tool run on the head by [`JOB_USER`], as a user would (sbatch, srun).
    pub fn slurm_as_user(&self, program: &str) -> Command {
        let mut c = self.exec("runuser");
        c.args(["-u", JOB_USER, "--", program]);
        c.env("SLURM_CONF", self.slurm_conf());
        c
    }

    /// A Slurm tool (sinfo, srun, sbatch, ...) run on the head as its admin would.
    pub fn slurm(&self, program: &str) -> Command {
        let mut c = self.exec(program);
        c.env("SLURM_CONF", self.slurm_conf());
        c
    }

    /// A Slurm tool's output; its stderr as the error if it fails.
    pub fn slurm_out(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let out = self
            .slurm(program)
            .args(args)
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{program} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// A Slurm tool's output, run by [`JOB_USER`]; its stderr as the error if it fails.
    pub fn slurm_user_out(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let out = self
            .slurm_as_user(program)
            .args(args)
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{program} {} (as {JOB_USER}): {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// Nodes Slurm lists as idle (each once: a node is listed per partition it is in).
    pub fn slurm_idle(&self) -> usize {
        self.slurm_out("sinfo", &["-h", "-N", "-t", "idle", "-o", "%N"])
            .map(|o| o.lines().collect::<std::collections::HashSet<_>>().len())
            .unwrap_or(0)
    }

    /// Write a head config for this lab and return its path.
    pub fn write_config(
        &self,
        mode: &str,
        images_dir: &Path,
        extra: &str,
    ) -> Result<PathBuf, String> {
        let mut cfg = String::new();
        let subnets = if mode == "dhcp" {
            "  subnets:\n    - subnet: 10.77.0.0/24\n      pool: [10.77.0.100, 10.77.0.199]\n      routers: [10.77.0.1]\n      lease_time: 10m\n"
        } else {
            ""
        };
        let _ = write!(
            cfg,
            "state_dir: {state}\nhttp:\n  listen: 0.0.0.0:8080\n  public_url: {HEAD_URL}\n\
             tftp:\n  listen: 0.0.0.0:69\ndhcp:\n  interfaces:\n    - name: br0\n      mode: {mode}\n{subnets}\
             images:\n  dir: {images}\n  bios: i586\n  efi_x64: x86_64\n  cmdline: \"console=ttyS0,115200\"\n\
             nodes:\n  heartbeat: 2s\n  lost_after: 20s\n{extra}",
            state = self.dir.join("state").display(),
            images = images_dir.display(),
        );
        let cfg = cfg.replace("{lab}", &self.dir.display().to_string());
        let path = self.dir.join("config.yaml");
        std::fs::write(&path, cfg).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }

    pub fn start_head(&mut self, enlist: &Path, config: &Path) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("head.log"))
            .map_err(|e| e.to_string())?;
        let child = self
            .exec(&enlist.display().to_string())
            .args(["serve", "--config", &config.display().to_string()])
            .env("ENLIST_LOG", "info,enlist=debug")
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting the head: {e}"))?;
        self.head = Some(child);
        // /metrics: on http.listen whether or not the admin API is there too (admin.listen).
        self.wait_for(Duration::from_secs(20), "head HTTP", || {
            !self.metrics_text().is_empty()
        })
    }

    /// The name the head gave the node with this MAC, asked through the CLI (`enlist node
    /// show`: works with the admin API on its own listener too); "" when it has none.
    pub fn node_name_cli(&self, enlist: &Path, mac: &str) -> String {
        let out = self.enlist(enlist, &["node", "show", mac]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["node"]["name"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// `enlist <args>` against this lab's head, as its admin on the head runs it (the CLI
    /// reaches the head through its admin socket).
    pub fn enlist(&self, enlist: &Path, args: &[&str]) -> std::process::Output {
        Command::new(enlist)
            .arg("--config")
            .arg(self.dir.join("config.yaml"))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", enlist.display()))
    }

    /// Open the head's enrollment window for `length` (`15m`) as its admin would, with the
    /// CLI (`enlist enroll --for`): new PCs join with no approval meanwhile. A head with jobs
    /// on lets no new PC in otherwise (enrollment `approve`).
    pub fn enroll(&self, enlist: &Path, length: &str) -> Result<String, String> {
        run(Command::new(enlist)
            .args(["enroll", "--for", length, "--config"])
            .arg(self.dir.join("config.yaml")))
    }

    /// A new random admin password for the head (`enlist admin set-password --random`).
    pub fn admin_password(&self, enlist: &Path) -> Result<String, String> {
        let password = run(Command::new(enlist)
            .args(["admin", "set-password", "--random", "--config"])
            .arg(self.dir.join("config.yaml")))?
        .trim()
        .to_string();
        if password.len() < 8 {
            return Err(format!("set-password printed {password:?}"));
        }
        Ok(password)
    }

    /// Run a browser test script of `tests/browser` (Node and Debian's chromium) inside the
    /// lab's namespace; its output, or why it failed with the lab's report.
    pub fn browser(&self, script: &Path, args: &[&str]) -> Result<String, String> {
        let out = self
            .exec("node")
            .arg(script)
            .args(args)
            .output()
            .map_err(|e| format!("node: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            return Err(format!("browser test failed:\n{text}\n{}", self.report()));
        }
        Ok(text)
    }

    /// `kill -9` the head.
    pub fn kill_head(&mut self) {
        if let Some(mut h) = self.head.take() {
            let _ = h.kill();
            let _ = h.wait();
        }
    }

    /// The head's process id (`ip netns exec` execs it, so it is the child's).
    pub fn head_pid(&self) -> Option<u32> {
        self.head.as_ref().map(|h| h.id())
    }

    /// The name the head gave the node with this MAC ("" when it has none).
    pub fn node_name(&self, mac: &str) -> String {
        self.curl(&format!("/api/v1/nodes/{mac}"))
            .map(|v| v["node"]["name"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    }

    /// The head's resident memory in KiB (0 when it is not running).
    pub fn head_rss_kb(&self) -> u64 {
        let Some(pid) = self.head_pid() else { return 0 };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// One sample of the head's `/metrics` (0 when absent): `name{labels}` as printed.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics_text()
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// The head's Prometheus text (`/metrics`), empty if it does not answer.
    fn metrics_text(&self) -> String {
        run(self
            .exec("curl")
            .args(["-sS", "-m", "10", &format!("{HEAD_URL}/metrics")]))
        .unwrap_or_default()
    }

    /// The sum of every series of a metric family (`enlist_dhcp_dropped_total`).
    pub fn metric_sum(&self, family: &str) -> f64 {
        self.metrics_text()
            .lines()
            .filter(|l| {
                l.starts_with(&format!("{family}{{")) || l.starts_with(&format!("{family} "))
            })
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }

    pub fn head_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("head.log")).unwrap_or_default()
    }

    /// Start a helper process inside the namespace, killed with the lab.
    pub fn spawn(&mut self, mut cmd: Command) -> Result<(), String> {
        let c = cmd.spawn().map_err(|e| format!("{cmd:?}: {e}"))?;
        self.extra.push(c);
        Ok(())
    }

    /// A GET against the head's admin API.
    pub fn curl(&self, path: &str) -> Result<serde_json::Value, String> {
        self.curl_method("GET", path)
    }

    /// An admin API call through the head's admin socket (as its command line makes them:
    /// whatever http.listen and admin.listen serve).
    pub fn curl_method(&self, method: &str, path: &str) -> Result<serde_json::Value, String> {
        let socket = self.dir.join("state/admin.sock");
        let out = run(self
            .exec("curl")
            .args(["-sS", "--fail-with-body", "-m", "10", "-X", method])
            .arg("--unix-socket")
            .arg(&socket)
            .arg(format!("http://enlist{path}")))?;
        if out.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&out).map_err(|e| format!("{path}: {e}: {out}"))
    }

    /// Node state by MAC, from the head's API.
    pub fn node_state(&self, mac: &str) -> Option<String> {
        let v = self.curl(&format!("/api/v1/nodes/{mac}")).ok()?;
        v["node"]["state"].as_str().map(str::to_string)
    }

    /// Whether the head has sent PC `i` to its own disk since it was powered on: its boot
    /// script said "local disk" (a step of the boot the head traces; the node's history
    /// notes it once per 10 minutes only, so it cannot be counted there).
    pub fn sent_home(&self, i: usize) -> bool {
        let pc = &self.pcs[i];
        let Ok(v) = self.curl(&format!("/api/v1/nodes/{}", pc.mac)) else {
            return false;
        };
        let steps = v["node"]["boot"].as_array().cloned().unwrap_or_default();
        steps.iter().any(|s| {
            s["step"] == "script"
                && s["detail"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("local disk"))
                && s["at_ms"].as_i64().is_some_and(|t| t > pc.powered_on_ms)
        })
    }

    /// The names of the nodes Slurm has powered down (asleep: `idle~`, or `maint` in a
    /// closed time's reservation).
    pub fn slurm_asleep(&self) -> Vec<String> {
        self.slurm_out("scontrol", &["show", "node", "-o"])
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("POWERED_DOWN"))
            .filter_map(|l| l.strip_prefix("NodeName="))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect()
    }

    pub fn wait_for(
        &self,
        limit: Duration,
        what: &str,
        mut f: impl FnMut() -> bool,
    ) -> Result<(), String> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if f() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Err(format!(
            "timed out after {}s waiting for {what}",
            limit.as_secs()
        ))
    }

    /// Wait until the node with `mac` is in `state`.
    pub fn wait_state(&self, mac: &str, state: &str, limit: Duration) -> Result<(), String> {
        self.wait_for(limit, &format!("{mac} to be {state}"), || {
            self.node_state(mac).as_deref() == Some(state)
        })
    }

    /// Isolate a bridge port (`bridge link set dev PORT isolated on`): it reaches the head and
    /// non-isolated ports only.
    pub fn isolate_port(&self, port: &str) -> Result<(), String> {
        run(Command::new("bridge")
            .args(["-n", &self.ns, "link", "set", "dev", port, "isolated", "on"]))
        .map(|_| ())
    }

    /// A new tap on the bridge for the next PC: its number, tap name and MAC.
    fn new_tap(&mut self) -> Result<(u32, String, String), String> {
        self.taps += 1;
        let n = self.taps;
        let tap = format!("tap{n}");
        ip(&["-n", &self.ns, "tuntap", "add", "dev", &tap, "mode", "tap"])?;
        ip(&["-n", &self.ns, "link", "set", &tap, "master", &self.bridge])?;
        if self.isolate_pcs {
            self.isolate_port(&tap)?;
            run(Command::new("bridge")
                .args(["-n", &self.ns, "link", "set", "dev", &tap, "flood", "off"]))?;
        }
        ip(&["-n", &self.ns, "link", "set", &tap, "up"])?;
        Ok((n, tap, format!("52:54:00:77:01:{n:02x}")))
    }

    /// The QEMU command line every lab PC shares: CPU, headless, serial log, monitor socket,
    /// and its tap as `n0` (through a lossy cable when [`Lab::loss_percent`] is set).
    fn qemu(
        &mut self,
        qemu: &str,
        name: &str,
        serial: &Path,
        tap: &str,
    ) -> Result<Command, String> {
        let netdev = if self.loss_percent > 0 {
            let seed = 0x9e37_79b9_7f4a_7c15 ^ u64::from(self.taps);
            let c = cable::LossyCable::start(&self.ns, tap, self.loss_percent, seed)?;
            let netdev = cable::netdev(c.cable_port, c.pc_port);
            self.cables.push(c);
            netdev
        } else {
            format!("tap,id=n0,ifname={tap},script=no,downscript=no")
        };
        let mut cmd = self.exec(qemu);
        if qemu.ends_with("i386") {
            cmd.args(["-cpu", "pentium2"]);
        }
        cmd.args([
            "-display",
            "none",
            "-serial",
            &format!("file:{}", serial.display()),
        ])
        .args([
            "-monitor",
            &format!(
                "unix:{},server,nowait",
                self.dir.join(format!("{name}.monitor")).display()
            ),
        ])
        .args(["-netdev", &netdev]);
        Ok(cmd)
    }

    /// Start `cmd` as PC `name` (serial log `serial`) and keep it; returns its index.
    fn launch(
        &mut self,
        cmd: Command,
        name: String,
        mac: String,
        serial: PathBuf,
    ) -> Result<usize, String> {
        let qlog = self.dir.join(format!("{name}.qemu.log"));
        let _ = std::fs::remove_file(&qlog);
        let argv: Vec<String> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().to_string())
            .collect();
        let powered_on_ms = now_ms();
        let child = spawn_logged(&argv, &qlog)?;
        self.pcs.push(Pc {
            name,
            mac,
            serial,
            child,
            argv,
            qlog,
            powered_on_ms,
        });
        Ok(self.pcs.len() - 1)
    }

    fn serial_for(&self, name: &str) -> PathBuf {
        let serial = self.dir.join(format!("{name}.serial.log"));
        let _ = std::fs::remove_file(&serial);
        serial
    }

    /// Boot an emulated PC of `profile` on a new tap. `floppy` is the boot floppy for p2-floppy
    /// (the ISO for p2-usb).
    pub fn boot(&mut self, profile: Profile, floppy: Option<&Path>) -> Result<usize, String> {
        let (n, tap, mac) = self.new_tap()?;
        let name = format!("{}-{n}", profile.name());
        let serial = self.serial_for(&name);
        let qemu = if profile.is_x64() {
            "qemu-system-x86_64"
        } else {
            "qemu-system-i386"
        };
        if profile.is_ne2000() {
            self.spare_the_ne2000s_ring()?;
        }
        let mut cmd = self.qemu(qemu, &name, &serial, &tap)?;
        if profile.is_x64() {
            self.x64_machine(&mut cmd, profile, &name, &mac)?
        } else {
            p2_machine(&mut cmd, profile, &mac, floppy)?
        }
        self.launch(cmd, name, mac, serial)
    }

    /// Keep the TCP segments the head's namespace sends to PCs (the head's, a mirror's) within
    /// 5 of an NE2000's 256-byte ring pages, by lowering the MSS in the PCs' SYNs to
    /// [`NE2000_MSS`]. QEMU 7.2's NE2000 takes a frame only while 6 pages are free, so a
    /// 6-page frame (over 1272 bytes) can fill the ring to its last page, CURR reaching BNRY;
    /// it then takes the ring for empty and writes the next frames over those not yet read,
    /// where a real DP8390 stops and flags the overflow (which iPXE's driver handles).
    /// iPXE's driver then finds no valid frame header ("Bogus packet, ignoring" on the
    /// screen), never moves past it, and is not reset by `ifclose`/`ifopen` (a legacy
    /// driver): the PC receives nothing until it reboots. Behind nginx's unpaced bursts that
    /// was 2 boots in about 12 here, and CI failed on it twice. With 5-page frames a full
    /// ring only drops frames, which TCP sends again.
    fn spare_the_ne2000s_ring(&mut self) -> Result<(), String> {
        if self.ne2000_mss_clamped {
            return Ok(());
        }
        let rules = format!(
            "table inet lab_ne2000 {{ chain syn {{ type filter hook input priority 0; \
             tcp flags & syn == syn tcp option maxseg size > {NE2000_MSS} \
             tcp option maxseg size set {NE2000_MSS}; }}; }}"
        );
        self.nft(&rules)?;
        self.ne2000_mss_clamped = true;
        Ok(())
    }

    /// Load nftables `rules` (`nft -f` syntax) in the lab's namespace.
    pub fn nft(&self, rules: &str) -> Result<(), String> {
        let mut nft = self.exec("nft");
        nft.args(["-f", "-"]).stdin(Stdio::piped());
        let mut child = nft.spawn().map_err(|e| format!("nft: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin
                .write_all(rules.as_bytes())
                .map_err(|e| format!("nft: {e}"))?;
        }
        match child.wait() {
            Ok(s) if s.success() => Ok(()),
            other => Err(format!("nft {rules}: {other:?}")),
        }
    }

    /// A 64-bit PC's memory, card and firmware (OVMF with its own variables for UEFI).
    fn x64_machine(
        &self,
        cmd: &mut Command,
        profile: Profile,
        name: &str,
        mac: &str,
    ) -> Result<(), String> {
        match profile {
            Profile::X64Pxe
            | Profile::X64PxeE1000e
            | Profile::X64PxePcnet
            | Profile::X64PxeVirtio => {
                // Each with QEMU's iPXE ROM for it (pxe-<card>.rom).
                let card = match profile {
                    Profile::X64PxeE1000e => "e1000e",
                    Profile::X64PxePcnet => "pcnet",
                    Profile::X64PxeVirtio => "virtio-net-pci",
                    _ => "e1000",
                };
                cmd.args([
                    "-m",
                    "512",
                    "-device",
                    &format!("{card},netdev=n0,mac={mac}"),
                    "-boot",
                    "n",
                ]);
            }
            Profile::X64Uefi => {
                let vars = self.dir.join(format!("{name}.OVMF_VARS.fd"));
                std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
                    .map_err(|e| format!("OVMF vars: {e}"))?;
                cmd.args([
                    "-m",
                    "512",
                    "-device",
                    &format!("e1000,netdev=n0,mac={mac}"),
                    "-boot",
                    "n",
                ])
                .args([
                    "-drive",
                    "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
                ])
                .args([
                    "-drive",
                    &format!("if=pflash,format=raw,file={}", vars.display()),
                ]);
            }
            _ => return Err(format!("{} is not a 64-bit PC", profile.name())),
        }
        Ok(())
    }

    /// The kernel of `image` in `images_dir` and the initrd the running head gives node `mac`
    /// (image initrd + node overlay with a new key), from the admin API as an admin booting a
    /// PC by hand would get it, saved in the lab directory: what [`Lab::boot_direct`] needs to
    /// boot that node without firmware.
    pub fn direct_boot_files(
        &self,
        images_dir: &Path,
        image: &str,
        mac: &str,
    ) -> Result<(PathBuf, PathBuf), String> {
        let current = images_dir.join(image).join("current");
        let version = std::fs::read_to_string(&current)
            .map_err(|e| format!("{}: {e} (run `cargo xtask node images`)", current.display()))?;
        let kernel = images_dir.join(format!("{image}/{}/vmlinuz", version.trim()));
        let initrd = self
            .dir
            .join(format!("{image}-{}.initrd", mac.replace(':', "")));
        let url = format!("http://enlist/api/v1/nodes/{mac}/initrd?image={image}");
        let st = self
            .exec("curl")
            .args(["-sSf", "-X", "POST", "--unix-socket"])
            .arg(self.dir.join("state/admin.sock"))
            .arg("-o")
            .arg(&initrd)
            .arg(&url)
            .status()
            .map_err(|e| format!("curl: {e}"))?;
        if !st.success() {
            return Err(format!("fetching {url} failed"));
        }
        Ok((kernel, initrd))
    }

    /// Boot a PC straight into `image` of `images_dir` as its next PC (its initrd carries a key
    /// the head issues for the MAC it will have): `qemu-system-i386` is a Pentium II.
    pub fn boot_image_direct(
        &mut self,
        images_dir: &Path,
        image: &str,
        qemu: &str,
        mem_mb: u32,
    ) -> Result<usize, String> {
        let mac = format!("52:54:00:77:01:{:02x}", self.taps + 1);
        let (kernel, initrd) = self.direct_boot_files(images_dir, image, &mac)?;
        let i = self.boot_direct(qemu, mem_mb, &kernel, &initrd)?;
        if self.pcs[i].mac != mac {
            return Err(format!("PC {i} got MAC {}, not {mac}", self.pcs[i].mac));
        }
        Ok(i)
    }

    /// Boot a PC straight into a kernel and initrd (`-kernel`/`-initrd`, no firmware boot):
    /// `qemu` is `qemu-system-i386` (Pentium II) or `qemu-system-x86_64`. Its card is an e1000.
    pub fn boot_direct(
        &mut self,
        qemu: &str,
        mem_mb: u32,
        kernel: &Path,
        initrd: &Path,
    ) -> Result<usize, String> {
        self.boot_direct_with(qemu, mem_mb, kernel, initrd, DirectCard::E1000)
    }

    /// [`Lab::boot_direct`] with the PC's network hardware given.
    pub fn boot_direct_with(
        &mut self,
        qemu: &str,
        mem_mb: u32,
        kernel: &Path,
        initrd: &Path,
        card: DirectCard,
    ) -> Result<usize, String> {
        let (n, tap, mac) = self.new_tap()?;
        let name = format!("direct-{n}");
        let serial = self.serial_for(&name);
        let mut cmd = self.qemu(qemu, &name, &serial, &tap)?;
        cmd.args(["-m", &mem_mb.to_string()]);
        match card {
            DirectCard::E1000 => cmd.args(["-device", &format!("e1000,netdev=n0,mac={mac}")]),
            DirectCard::UsbNet => cmd.args(["-device", "qemu-xhci,id=xhci"]).args([
                "-device",
                &format!("usb-net,netdev=n0,mac={mac},bus=xhci.0"),
            ]),
        };
        cmd.arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", "console=ttyS0,115200"]);
        self.launch(cmd, name, mac, serial)
    }

    /// dnsmasq as a "campus" DHCP server on the bridge: addresses only (10.77.0.50-90), no DNS,
    /// no boot options. Start it with [`Lab::spawn`].
    pub fn campus_dhcp(&self) -> Command {
        let mut c = self.dnsmasq(self.exec("dnsmasq"), "dnsmasq");
        c.args([
            "--interface=br0",
            "--bind-interfaces",
            "--dhcp-range=10.77.0.50,10.77.0.90,255.255.255.0,10m",
            "--dhcp-authoritative",
        ])
        .arg(format!(
            "--dhcp-leasefile={}",
            self.dir.join("dnsmasq.leases").display()
        ));
        c
    }

    /// dnsmasq in the foreground as the lab runs it (no DNS, DHCP logged), with its pid file
    /// `<name>.pid` in the lab's folder.
    fn dnsmasq(&self, mut c: Command, name: &str) -> Command {
        c.args([
            "--keep-in-foreground",
            "--port=0",
            "--no-resolv",
            "--no-hosts",
            "--log-dhcp",
        ])
        .arg(format!(
            "--pid-file={}",
            self.dir.join(format!("{name}.pid")).display()
        ));
        c
    }

    /// The campus' own DHCP and PXE server on the bridge, as another host (its own namespace,
    /// 10.77.0.2): dnsmasq giving addresses (10.77.0.50-90) to every PC and a boot file of its
    /// own (`campus.0` by TFTP, a stand-in for WDS or FOG: it halts the PC) to the PCs `ours`
    /// lists. Its log (DHCP and TFTP) is the returned file. Start it with [`Lab::spawn`].
    pub fn campus_pxe(&mut self, ours: &[&str]) -> Result<(Command, PathBuf), String> {
        let campus = host::Host::new(self, "campus", "52:54:00:77:fe:02")?;
        campus.address("10.77.0.2/24")?;
        let root = self.dir.join("campus-tftp");
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        // cli; hlt: a boot program that stops the PC where the campus' OS would start.
        std::fs::write(root.join("campus.0"), [0xfa, 0xf4])
            .map_err(|e| format!("{}: {e}", root.display()))?;
        let log = self.dir.join("campus.log");
        let mut c = self.dnsmasq(campus.exec("dnsmasq"), "campus");
        c.args([
            &format!("--interface={}", campus.iface),
            "--bind-interfaces",
            "--dhcp-range=10.77.0.50,10.77.0.90,255.255.255.0,10m",
            // A relayed room's addresses, and its router (see relayed_room).
            "--dhcp-range=set:room,10.78.0.50,10.78.0.90,255.255.255.0,10m",
            "--dhcp-option=tag:room,3,10.78.0.1",
            "--dhcp-authoritative",
            "--enable-tftp",
            "--dhcp-boot=tag:campus,campus.0",
        ]);
        for mac in ours {
            c.arg(format!("--dhcp-host={mac},set:campus"));
        }
        c.arg(format!("--tftp-root={}", root.display()))
            .arg(format!("--log-facility={}", log.display()))
            .arg(format!(
                "--dhcp-leasefile={}",
                self.dir.join("campus.leases").display()
            ));
        self.hosts.push(campus);
        Ok((c, log))
    }

    /// A room behind a router, as on a campus: bridge br1 (10.78.0.0/24) for its PCs (the PCs
    /// booted after this are cabled to it), and a router host (10.77.0.254 on the head's
    /// segment, 10.78.0.1 on the room's) that forwards and relays DHCP to each of `servers`
    /// (dnsmasq as the router's helper address). The head's namespace, and the campus host if
    /// there is one, route the room through it. Start the relay with [`Lab::spawn`]; its log
    /// is the returned file.
    pub fn relayed_room(&mut self, servers: &[&str]) -> Result<(Command, PathBuf), String> {
        let ns = self.ns.clone();
        ip(&["-n", &ns, "link", "add", "br1", "type", "bridge"])?;
        ip(&["-n", &ns, "link", "set", "br1", "up"])?;
        // One leg on the head's segment (a lab host), one on the room's.
        let router = host::Host::new(self, "router", "52:54:00:77:fe:01")?;
        router.address("10.77.0.254/24")?;
        ip(&[
            "-n", &router.ns, "link", "add", "room", "type", "veth", "peer", "name", "roomp",
            "netns", &ns,
        ])?;
        ip(&["-n", &ns, "link", "set", "roomp", "master", "br1", "up"])?;
        ip(&[
            "-n",
            &router.ns,
            "addr",
            "add",
            "10.78.0.1/24",
            "dev",
            "room",
        ])?;
        ip(&["-n", &router.ns, "link", "set", "room", "up"])?;
        run(router.exec("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]))?;
        let campus = self.hosts.iter().map(|h| h.ns.as_str());
        for host in std::iter::once(ns.as_str()).chain(campus) {
            ip(&[
                "-n",
                host,
                "route",
                "add",
                "10.78.0.0/24",
                "via",
                "10.77.0.254",
            ])?;
        }
        self.bridge = "br1".into();
        let log = self.dir.join("relay.log");
        let mut c = self.dnsmasq(router.exec("dnsmasq"), "relay");
        for server in servers {
            c.arg(format!("--dhcp-relay=10.78.0.1,{server}"));
        }
        c.arg(format!("--log-facility={}", log.display()));
        self.hosts.push(router);
        Ok((c, log))
    }

    /// A connection to a PC's QEMU monitor.
    fn monitor_socket(&self, pc: usize) -> Result<std::os::unix::net::UnixStream, String> {
        let path = self.dir.join(format!("{}.monitor", self.pcs[pc].name));
        std::os::unix::net::UnixStream::connect(&path)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Send a QEMU monitor command (e.g. `sendkey ctrl-alt-delete`) to a PC.
    pub fn monitor(&self, pc: usize, command: &str) -> Result<(), String> {
        use std::io::Write;
        let mut s = self.monitor_socket(pc)?;
        s.write_all(format!("{command}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    }

    /// Send a QEMU monitor command to a PC and return what the monitor printed for it.
    pub fn monitor_query(&self, pc: usize, command: &str) -> Result<String, String> {
        use std::io::{Read, Write};
        let mut s = self.monitor_socket(pc)?;
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .map_err(|e| e.to_string())?;
        let drain = |s: &mut std::os::unix::net::UnixStream| {
            let (mut out, mut buf) = (Vec::new(), [0u8; 4096]);
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(_) => break, // quiet for 300 ms: the monitor has said it all
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        };
        drain(&mut s); // the banner and prompt
        s.write_all(format!("{command}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        Ok(drain(&mut s))
    }

    /// What a PC's screen shows when it is in VGA text mode (iPXE, SYSLINUX and the BIOS
    /// write there, not to the serial port): the boot floppy's messages.
    pub fn screen_text(&self, pc: usize) -> String {
        self.monitor_query(pc, "xp /2000hx 0xb8000")
            .map(|dump| vga_text(&dump))
            .unwrap_or_default()
    }

    /// Also print this log file's tail when a test fails (a helper server's log).
    pub fn report_also(&mut self, log: PathBuf) {
        self.reported_logs.push(log);
    }

    /// Capture the head's bridge (headers only) into `br0.pcap`; a failing test prints its
    /// last packets.
    pub fn capture(&mut self) -> Result<(), String> {
        let pcap = self.dir.join("br0.pcap");
        let mut c = self.exec("tcpdump");
        c.args(["-i", "br0", "-s", "96", "-U", "-w"])
            .arg(&pcap)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.spawn(c)?;
        self.pcap = Some(pcap);
        Ok(())
    }

    /// Everything a failing test should print: head log, every PC's serial console and
    /// screen, the helpers' logs and the last packets on the bridge.
    pub fn report(&self) -> String {
        let mut s = format!(
            "==== head log ({}) ====\n{}\n",
            self.ns,
            tail(&self.head_log(), 150)
        );
        for (i, pc) in self.pcs.iter().enumerate() {
            let _ = write!(
                s,
                "==== serial console of {} ({}) ====\n{}\n",
                pc.name,
                pc.mac,
                tail(&pc.serial_log(), 60)
            );
            let screen = self.screen_text(i);
            if !screen.is_empty() {
                let _ = write!(s, "==== screen of {} ====\n{screen}\n", pc.name);
            }
        }
        for log in &self.reported_logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let _ = write!(s, "==== {} ====\n{}\n", log.display(), tail(&text, 40));
        }
        if let Some(pcap) = &self.pcap {
            let packets = run(Command::new("tcpdump")
                .args(["-nn", "-tt", "-r"])
                .arg(pcap)
                .stderr(Stdio::null()))
            .unwrap_or_default();
            let _ = write!(s, "==== last packets on br0 ====\n{}\n", tail(&packets, 80));
        }
        s
    }
}

/// The text of a VGA text-mode screen from the monitor's `xp /2000hx 0xb8000` (each
/// 16-bit cell: attribute high, character low), 80 columns, trailing blanks trimmed.
pub fn vga_text(dump: &str) -> String {
    let cells: Vec<u8> = dump
        .lines()
        .filter(|l| l.contains(": 0x"))
        .filter_map(|l| l.split_once(": "))
        .flat_map(|(_, words)| words.split_whitespace())
        .filter_map(|w| u16::from_str_radix(w.trim_start_matches("0x"), 16).ok())
        .map(|w| (w & 0xff) as u8)
        .collect();
    let rows: Vec<String> = cells
        .chunks(80)
        .map(|row| {
            row.iter()
                .map(|&c| {
                    if (0x20..0x7f).contains(&c) {
                        c as char
                    } else {
                        ' '
                    }
                })
                .collect::<String>()
                .trim_end()
                .to_string()
        })
        .collect();
    rows.join("\n").trim_end().to_string()
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Lab {
    fn drop(&mut self) {
        for pc in &mut self.pcs {
            pc.kill();
        }
        for c in &mut self.extra {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.kill_head();
        self.cables.clear();
        self.hosts.clear();
        Lab::cleanup(&self.ns);
    }
}

/// A Pentium II's memory, card and boot device (its floppy or ISO where it boots from one).
fn p2_machine(
    cmd: &mut Command,
    profile: Profile,
    mac: &str,
    floppy: Option<&Path>,
) -> Result<(), String> {
    match profile {
        Profile::P2Pxe => {
            cmd.args([
                "-m",
                "128",
                "-device",
                &format!("i82557b,netdev=n0,mac={mac}"),
                "-boot",
                "n",
            ]);
        }
        Profile::P2Floppy
        | Profile::P2FloppyRtl8139
        | Profile::P2FloppyTulip
        | Profile::P2FloppyNe2kIsa => {
            let f = floppy.ok_or("p2-floppy needs a floppy image")?;
            let nic = match profile {
                Profile::P2FloppyRtl8139 => format!("rtl8139,netdev=n0,mac={mac},romfile="),
                Profile::P2FloppyTulip => format!("tulip,netdev=n0,mac={mac},romfile="),
                // An ISA card has no option ROM; its port and IRQ are set by jumpers: IRQ 9,
                // QEMU's default and a common jumper setting, is the ACPI SCI's on this
                // board (the node OS needs acpi=off to find it: the head learns that).
                Profile::P2FloppyNe2kIsa => {
                    format!("ne2k_isa,netdev=n0,mac={mac},iobase=0x300,irq=9")
                }
                _ => format!("ne2k_pci,netdev=n0,mac={mac},romfile="),
            };
            cmd.args(["-m", "64", "-device", &nic]).args([
                "-drive",
                &format!("file={},if=floppy,format=raw,readonly=on", f.display()),
                "-boot",
                "a",
            ]);
        }
        Profile::P2Usb => {
            let f = floppy.ok_or("p2-usb needs the ISO image")?;
            cmd.args([
                "-m",
                "64",
                "-device",
                &format!("ne2k_pci,netdev=n0,mac={mac},romfile="),
            ])
            .args([
                "-drive",
                &format!("file={},media=cdrom,format=raw,readonly=on", f.display()),
                "-boot",
                "d",
            ]);
        }
        Profile::P2PxeVmxnet3 => {
            cmd.args([
                "-m",
                "64",
                "-device",
                &format!("vmxnet3,netdev=n0,mac={mac}"),
                "-boot",
                "n",
            ]);
        }
        _ => return Err(format!("{} is not a Pentium II", profile.name())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_screen_is_read_from_the_monitors_dump() {
        // "iPXE" on row 0 (grey on black), "ok" at the start of row 1; the echo and
        // escapes the monitor prints around the dump are ignored.
        let mut words = vec!["0x0769", "0x0750", "0x0758", "0x0745"];
        words.extend(std::iter::repeat_n("0x0720", 76));
        words.extend(["0x076f", "0x076b"]);
        words.extend(std::iter::repeat_n("0x0000", 78));
        let dump: String = words
            .chunks(8)
            .enumerate()
            .map(|(i, w)| format!("{:016x}: {}\r\n", 0xb8000 + i * 16, w.join(" ")))
            .collect();
        let dump = format!("xp /160hx 0xb8000\r\n\x1b[K{dump}(qemu) ");
        assert_eq!(vga_text(&dump), "iPXE\nok");
    }
}
