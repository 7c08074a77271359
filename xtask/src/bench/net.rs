//! Two namespaces joined by a veth pair: `<name>-srv` (10.79.0.1) and `<name>-cli` (10.79.0.2).

use std::process::Command;

use anyhow::anyhow;
use enlist_lab::{run, Lab};

pub struct Pair {
    pub srv: String,
    pub cli: String,
}

pub const SRV_IP: &str = "10.79.0.1";

/// How a benchmark starts the head, beyond its config.
#[derive(Default)]
pub struct HeadEnv {
    /// The fsync shim (`slow_fsync.c`, built) and the microseconds each flush waits.
    pub slow_fsync: Option<(std::path::PathBuf, u64)>,
    /// Started without CAP_NET_ADMIN (so `net.core.rmem_max` caps its socket buffers).
    pub without_net_admin: bool,
}

/// Build the fsync shim into `dir`: a disk whose every flush takes a while.
pub fn build_slow_fsync(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let src = crate::root().join("xtask/src/bench/slow_fsync.c");
    let out = dir.join("slow_fsync.so");
    run(Command::new("gcc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .arg("-ldl"))
    .map_err(|e| anyhow!(e))?;
    Ok(out)
}

impl Pair {
    pub fn new(name: &str) -> anyhow::Result<Pair> {
        let (srv, cli) = (format!("{name}-srv"), format!("{name}-cli"));
        Lab::cleanup(&srv);
        Lab::cleanup(&cli);
        let ip = |args: &[&str]| run(Command::new("ip").args(args)).map_err(|e| anyhow!(e));
        ip(&["netns", "add", &srv])?;
        ip(&["netns", "add", &cli])?;
        ip(&[
            "-n", &srv, "link", "add", "vsrv", "type", "veth", "peer", "name", "vcli", "netns",
            &cli,
        ])?;
        ip(&["-n", &srv, "addr", "add", "10.79.0.1/16", "dev", "vsrv"])?;
        ip(&["-n", &cli, "addr", "add", "10.79.0.2/16", "dev", "vcli"])?;
        for (ns, dev) in [(&srv, "vsrv"), (&cli, "vcli")] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(Pair { srv, cli })
    }

    pub fn exec(&self, ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }

    /// Write `yaml` to `config` and start the enlist head in the server namespace, quietly.
    pub fn spawn_enlist(
        &self,
        config: &std::path::Path,
        yaml: &str,
    ) -> anyhow::Result<std::process::Child> {
        self.spawn_enlist_as(config, yaml, &HeadEnv::default())
    }

    /// The same, started as `env` says (a slow disk, fewer capabilities).
    pub fn spawn_enlist_as(
        &self,
        config: &std::path::Path,
        yaml: &str,
        env: &HeadEnv,
    ) -> anyhow::Result<std::process::Child> {
        std::fs::write(config, yaml)?;
        let enlist = crate::enlist_bin().display().to_string();
        let mut cmd = if env.without_net_admin {
            let mut c = self.exec(&self.srv, "setpriv");
            c.args([
                "--bounding-set",
                "-net_admin",
                "--inh-caps",
                "-net_admin",
                &enlist,
            ]);
            c
        } else {
            self.exec(&self.srv, &enlist)
        };
        cmd.args(["serve", "--config"])
            .arg(config)
            .env("ENLIST_LOG", "warn")
            .stderr(std::process::Stdio::null());
        if let Some((shim, us)) = &env.slow_fsync {
            cmd.env("LD_PRELOAD", shim)
                .env("SLOW_FSYNC_US", us.to_string());
        }
        Ok(cmd.spawn()?)
    }

    /// Shape the server's side of the link to `mbit` Mbit/s (`tc tbf`, a 256 KB burst, 20 ms of
    /// queue), as one switch port to the head would be.
    pub fn shape(&self, mbit: u32) -> anyhow::Result<()> {
        let rate = format!("{mbit}mbit");
        run(self.exec(&self.srv, "tc").args([
            "qdisc", "add", "dev", "vsrv", "root", "tbf", "rate", &rate, "burst", "256kb",
            "latency", "20ms",
        ]))
        .map_err(|e| anyhow!(e))?;
        Ok(())
    }

    /// Kill everything running in the server namespace (between servers).
    pub fn stop_servers(&self) {
        if let Ok(pids) = run(Command::new("ip").args(["netns", "pids", &self.srv])) {
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        Lab::cleanup(&self.srv);
        Lab::cleanup(&self.cli);
    }
}

/// Run `f` on a thread that has entered namespace `ns` (its sockets live there).
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let path = format!("/var/run/netns/{ns}");
    let file = std::fs::File::open(&path).map_err(|e| anyhow!("{path}: {e}"))?;
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map(|_| f())
    })
    .join()
    .map_err(|_| anyhow!("benchmark thread panicked"))?
    .map_err(|e| anyhow!("setns: {e}"))
}
