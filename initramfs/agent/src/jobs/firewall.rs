//! slurmd's port for the head and the enlisted nodes only. Whoever reaches slurmd can only
//! speak munge-signed Slurm to it, but a stranger on the lab's network should not even get an
//! answer: the node filters its port with the kernel's legacy iptables (no connection tracking,
//! a handful of rules), loaded atomically by `iptables-legacy-restore` from the Slurm runtime,
//! and again whenever the peer list changes.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::Stdio;

use super::root::JobRoot;

use enlist_api::JobsDescriptor;

use crate::client::Client;

/// The program that loads the rules (the runtime links it into /usr/sbin).
const RESTORE: &str = "/usr/sbin/iptables-legacy-restore";

/// The filter table: slurmd's `port` from `allowed` (and loopback) only; everything else as
/// the node had it (accepted: jobs' own ports, MPI between ranks).
pub fn rules(port: u16, allowed: &[Ipv4Addr]) -> String {
    let mut allowed = allowed.to_vec();
    allowed.sort();
    allowed.dedup();
    let mut r = String::from(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -i lo -j ACCEPT\n",
    );
    for a in allowed {
        r.push_str(&format!(
            "-A INPUT -s {a}/32 -p tcp -m tcp --dport {port} -j ACCEPT\n"
        ));
    }
    r.push_str(&format!(
        "-A INPUT -p tcp -m tcp --dport {port} -j DROP\nCOMMIT\n"
    ));
    r
}

/// The filter of this node's slurmd, following the peer list.
pub struct Filter {
    port: u16,
    /// Who may reach slurmd whatever the peers: the head (and a site's slurmctld).
    fixed: Vec<Ipv4Addr>,
    /// The peer list generation the loaded rules were made from.
    loaded: Option<u64>,
    /// Whose iptables loads them.
    root: JobRoot,
}

impl Filter {
    pub fn new(d: &JobsDescriptor, root: JobRoot) -> Filter {
        Filter {
            port: d.slurmd_port,
            fixed: d
                .slurmd_allow
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            loaded: None,
            root,
        }
    }

    /// Load the rules for the peers the head last listed, unless they are loaded already.
    pub fn follow(&mut self, client: &Client) -> Result<(), String> {
        let (generation, peers) = client.peers();
        if self.loaded == Some(generation) {
            return Ok(());
        }
        let mut allowed = self.fixed.clone();
        allowed.extend(peers.iter().filter_map(|p| p.ip.parse::<Ipv4Addr>().ok()));
        apply(&self.root, self.port, &allowed)?;
        self.loaded = Some(generation);
        Ok(())
    }
}

/// Load the rules (the whole filter table, in one step).
pub fn apply(root: &JobRoot, port: u16, allowed: &[Ipv4Addr]) -> Result<(), String> {
    super::system::load_modules(&["iptable_filter", "xt_tcpudp"]);
    let mut child = root
        .command(RESTORE)
        .arg("-w")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot filter slurmd's port ({RESTORE}: {e})"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules(port, allowed).as_bytes())
            .map_err(|e| format!("{RESTORE}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{RESTORE}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cannot filter slurmd's port ({RESTORE}: {}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurmds_port_is_open_to_the_allowed_only() {
        let r = rules(
            6818,
            &[
                Ipv4Addr::new(10, 77, 0, 101),
                Ipv4Addr::new(10, 77, 0, 1),
                Ipv4Addr::new(10, 77, 0, 101),
            ],
        );
        assert_eq!(
            r,
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             -A INPUT -i lo -j ACCEPT\n\
             -A INPUT -s 10.77.0.1/32 -p tcp -m tcp --dport 6818 -j ACCEPT\n\
             -A INPUT -s 10.77.0.101/32 -p tcp -m tcp --dport 6818 -j ACCEPT\n\
             -A INPUT -p tcp -m tcp --dport 6818 -j DROP\nCOMMIT\n"
        );
        assert!(
            rules(6818, &[]).contains("--dport 6818 -j DROP"),
            "nobody: closed"
        );
    }
}
