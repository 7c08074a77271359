//! `cargo xtask bench ...`: enlist against reference servers measured in the same run on the
//! same machine, reported as ratios (absolute times on shared machines mean little).

mod boot;
mod dhcp;
mod dhcp_hostile;
mod http_burst;
mod image;
mod jobs;
mod net;
mod scale;
mod tftp;
mod tftp_burst;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchTask {
    /// Boot storm: N p2-pxe PCs against enlist and against dnsmasq (DHCP + TFTP).
    Boot {
        /// The PCs: p2-pxe (Pentium II, EtherExpress: TFTP) or x64-pxe (x86_64, e1000: HTTP).
        #[arg(long, default_value = "p2-pxe")]
        pc: String,
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Frames lost each way on each PC's cable, percent (a list: one storm per value;
        /// e.g. `0,10` for a bad cable against a good one).
        #[arg(long, value_delimiter = ',', default_value = "0")]
        loss: Vec<u32>,
        /// The image enlist boots 64-bit PCs with (images.efi_x64 and bios_x64): x86_64 (our
        /// kernel), or x86_64-debian (Debian's; `enlist image build
        /// images/x86_64-debian.yaml` first).
        #[arg(long, default_value = "x86_64")]
        x64_image: String,
    },
    /// Scale: simulated agents registering, then heartbeating, against one head; then a burst
    /// of nodes fetching their boot files over HTTP through a shaped link; then a room of
    /// lockstep TFTP clients through a 100 Mbit/s link, against dnsmasq.
    Scale {
        #[arg(long, default_value_t = 10000)]
        agents: usize,
        /// Heartbeat interval, seconds.
        #[arg(long, default_value_t = 10)]
        interval: u64,
        /// Length of the heartbeat phase, seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Nodes booting over HTTP at once (0: skip).
        #[arg(long, default_value_t = 100)]
        boot_nodes: usize,
        /// Rate of the head's link for the boot burst, Mbit/s.
        #[arg(long, default_value_t = 1000)]
        link_mbit: u32,
        /// Lockstep TFTP clients (EtherExpress-style) fetching kernel + initrd at once,
        /// enlist against dnsmasq (0: skip).
        #[arg(long, default_value_t = 40)]
        tftp_nodes: usize,
        /// Rate of the link for the TFTP burst, Mbit/s.
        #[arg(long, default_value_t = 100)]
        tftp_link_mbit: u32,
    },
    /// TFTP: a 7 MB file to 1, 8 and 32 clients; enlist vs tftpd-hpa vs dnsmasq.
    Tftp {
        /// Client counts.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
        clients: Vec<usize>,
        /// Runs per configuration; each server's median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Image size against the 8 MiB budget, and a 64 MB Pentium II's free memory after boot.
    Image,
    /// Jobs: a 64 MB Pentium II's memory left for jobs under munged + slurmd, power-on to the
    /// first job step, and a calibration array on 1 node against 2 and 3.
    Jobs {
        /// Tasks in the array.
        #[arg(long, default_value_t = 12)]
        tasks: usize,
        /// awk loop iterations per task.
        #[arg(long, default_value_t = 1_000_000)]
        loops: u64,
        /// Run the jobs in the job environment of images/env.yaml (built once into
        /// images/out/envs), and render POV-Ray frames on the PCs against the head alone: the
        /// demo's small frames, and antialiased 640x480 ones (wall time and povray's trace time).
        #[arg(long)]
        env: bool,
    },
    /// DHCP: Kea's perfdhcp, full DORA with durable leases; enlist vs dnsmasq.
    Dhcp {
        /// Simulated clients per run.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        clients: Vec<u32>,
        /// Exchanges per second perfdhcp offers (above the 5,000/s goal, so the goal can show).
        #[arg(long, default_value_t = 8000)]
        rate: u32,
        /// A slow disk for enlist: each fsync/fdatasync waits this long first (an LD_PRELOAD
        /// shim; this machine has no dm-delay).
        #[arg(long, default_value_t = 0)]
        fsync_delay_us: u64,
        /// net.core.rmem_max for the run (stock Debian: 212992), put back after.
        #[arg(long)]
        rmem_max: Option<u64>,
        /// Start enlist without CAP_NET_ADMIN (so rmem_max caps its socket buffers).
        #[arg(long)]
        without_net_admin: bool,
        /// Instead: a Pentium II booting by PXE while the head is flooded (quiet, 10k spoofed
        /// DISCOVERs/s, 10k malformed packets/s).
        #[arg(long)]
        hostile: bool,
        /// The hostile runs to make.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "quiet,discovers,malformed,noise"
        )]
        floods: Vec<String>,
        /// Flood packets per second.
        #[arg(long, default_value_t = 10_000)]
        flood_rate: u64,
        /// The PC that boots: p2-pxe (Pentium II, EtherExpress) or x64-pxe (e1000).
        #[arg(long, default_value = "p2-pxe")]
        pc: String,
        /// How long the PC has to come up, seconds.
        #[arg(long, default_value_t = 300)]
        limit: u64,
        /// The PC's and the flooder's switch ports are isolated (a switch with port isolation,
        /// as a lab network should have): the flood reaches the head, not the PC's cable, so
        /// the run measures the head, not how an emulated PC copes with 10k frames/s.
        #[arg(long)]
        isolate: bool,
    },
}

pub fn run(t: BenchTask) -> anyhow::Result<()> {
    crate::build_head()?;
    match t {
        BenchTask::Boot {
            pc,
            nodes,
            runs,
            loss,
            x64_image,
        } => boot::run(&pc, nodes, runs, &loss, &x64_image),
        BenchTask::Tftp { clients, runs } => tftp::run(&clients, runs),
        BenchTask::Scale {
            agents,
            interval,
            seconds,
            boot_nodes,
            link_mbit,
            tftp_nodes,
            tftp_link_mbit,
        } => {
            if agents > 0 {
                scale::run(agents, interval, seconds)?;
            }
            if boot_nodes > 0 {
                http_burst::run(boot_nodes, link_mbit)?;
            }
            if tftp_nodes > 0 {
                tftp_burst::run(tftp_nodes, tftp_link_mbit)?;
            }
            Ok(())
        }
        BenchTask::Image => image::run(),
        BenchTask::Jobs { tasks, loops, env } => jobs::run(tasks, loops, env),
        BenchTask::Dhcp {
            hostile: true,
            floods,
            flood_rate,
            pc,
            limit,
            isolate,
            ..
        } => dhcp_hostile::run(
            &floods,
            dhcp_hostile::Setup {
                profile: enlist_lab::Profile::parse(&pc)
                    .ok_or_else(|| anyhow::anyhow!("unknown PC profile {pc:?}"))?,
                per_sec: flood_rate,
                limit: std::time::Duration::from_secs(limit),
                isolate,
            },
        ),
        BenchTask::Dhcp {
            clients,
            rate,
            fsync_delay_us,
            rmem_max,
            without_net_admin,
            ..
        } => dhcp::run(
            &clients,
            rate,
            &dhcp::Machine {
                fsync_delay_us,
                rmem_max,
                without_net_admin,
            },
        ),
    }
}

/// CPU seconds (user + system) and RSS in KiB of process `pid`.
pub(crate) fn proc_stat(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (ticks / 100.0, rss_kb)
}

/// The median of `v`: the middle value, or the mean of the two middle ones (NaN if empty).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(super::median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(super::median(vec![]).is_nan());
    }
}
