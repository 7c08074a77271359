//! `cargo xtask bench ...`: enlist against reference servers measured in the same run on the
//! same machine, reported as ratios (absolute times on shared machines mean little).

mod boot;
mod dhcp;
mod net;
mod scale;
mod tftp;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchTask {
    /// Boot storm: N p2-pxe PCs against enlist and against dnsmasq (DHCP + TFTP).
    Boot {
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        #[arg(long, default_value_t = 1)]
        runs: usize,
    },
    /// Scale: simulated agents registering, then heartbeating, against one head.
    Scale {
        #[arg(long, default_value_t = 10000)]
        agents: usize,
        /// Heartbeat interval, seconds.
        #[arg(long, default_value_t = 10)]
        interval: u64,
        /// Length of the heartbeat phase, seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// TFTP: a 7 MB file to 1, 8 and 32 clients; enlist vs tftpd-hpa vs dnsmasq.
    Tftp {
        /// Client counts.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
        clients: Vec<usize>,
    },
    /// DHCP: Kea's perfdhcp, full DORA with durable leases; enlist vs dnsmasq.
    Dhcp {
        /// Simulated clients per run.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        clients: Vec<u32>,
        /// Exchanges per second perfdhcp offers (above the 5,000/s goal, so the goal can show).
        #[arg(long, default_value_t = 8000)]
        rate: u32,
    },
}

pub fn run(t: BenchTask) -> anyhow::Result<()> {
    crate::build_head()?;
    match t {
        BenchTask::Boot { nodes, runs } => boot::run(nodes, runs),
        BenchTask::Tftp { clients } => tftp::run(&clients),
        BenchTask::Scale {
            agents,
            interval,
            seconds,
        } => scale::run(agents, interval, seconds),
        BenchTask::Dhcp { clients, rate } => dhcp::run(&clients, rate),
    }
}
