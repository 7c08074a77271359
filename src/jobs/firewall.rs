//! The cluster's services on the head (slurmctld, the shared home's NFS server, srun's
//! ports) for enlisted nodes only: an nftables table of the head's own (`inet enlist`) lets
//! TCP to those ports in from loopback, the head's own addresses and the nodes that are up
//! (registered, healthy or draining), and drops it from everyone else. It follows the nodes as
//! they join and leave: the whole table is replaced in one `nft -f` transaction (atomic).
//!
//! A node on a link the head serves is let in by its address *and* its MAC (the one it booted
//! and registered with): a stranger who takes a node's address with its own card is still
//! dropped. A node behind a relay reaches the head through a router, whose MAC is all the
//! head sees, so there the address alone counts.
//!
//! The ruleset is pure (`ruleset`, tested here); `Firewall::apply` runs nft.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use enlist_api::Mac;
use ipnet::Ipv4Net;

use super::JobsError;

/// The table's name (family inet: IPv6 to the guarded ports is dropped too).
pub const TABLE: &str = "enlist";

/// A node let in: its address, and its MAC when it is on a link the head serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    pub ip: Ipv4Addr,
    pub mac: Option<Mac>,
}

/// Who of `nodes` (MAC, address) is let in how: by address and MAC on the head's own links
/// (`links`), by address alone behind a router.
pub fn members(nodes: &[(Mac, Ipv4Addr)], links: &[Ipv4Net]) -> Vec<Member> {
    let mut m: Vec<Member> = nodes
        .iter()
        .map(|(mac, ip)| Member {
            ip: *ip,
            mac: links.iter().any(|l| l.contains(ip)).then_some(*mac),
        })
        .collect();
    m.sort();
    m.dedup();
    m
}

/// The nft script that replaces the table: `ports` (single ports or ranges) guarded, `members`
/// let in.
pub fn ruleset(ports: &[(u16, u16)], members: &[Member]) -> String {
    let ports: Vec<String> = ports
        .iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    let l2: Vec<String> = members
        .iter()
        .filter_map(|m| m.mac.map(|mac| format!("{} . {mac}", m.ip)))
        .collect();
    let routed: Vec<String> = members
        .iter()
        .filter(|m| m.mac.is_none())
        .map(|m| m.ip.to_string())
        .collect();
    let elements = |e: &[String]| {
        if e.is_empty() {
            String::new()
        } else {
            format!("\t\telements = {{ {} }}\n", e.join(", "))
        }
    };
    let mut s = String::new();
    // Made if missing, then deleted and written anew: one transaction, so never half there.
    let _ = writeln!(s, "table inet {TABLE}\ndelete table inet {TABLE}");
    let _ = write!(
        s,
        "table inet {TABLE} {{\n\
         \tcounter refused {{\n\t}}\n\
         \tset nodes_l2 {{\n\t\ttype ipv4_addr . ether_addr\n{l2}\t}}\n\
         \tset nodes_routed {{\n\t\ttype ipv4_addr\n{routed}\t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter - 10; policy accept;\n\
         \t\ttcp dport {{ {ports} }} jump guarded\n\
         \t}}\n\
         \tchain guarded {{\n\
         \t\tiifname \"lo\" accept\n\
         \t\tip saddr . ether saddr @nodes_l2 accept\n\
         \t\tip saddr @nodes_routed accept\n\
         \t\tfib saddr type local accept\n\
         \t\tcounter name \"refused\" drop\n\
         \t}}\n\
         }}\n",
        l2 = elements(&l2),
        routed = elements(&routed),
        ports = ports.join(", "),
    );
    s
}

/// The head's nftables table for the cluster's ports.
#[derive(Debug, Clone)]
pub struct Firewall {
    nft: PathBuf,
    /// Guarded TCP ports (ranges as first, last).
    ports: Vec<(u16, u16)>,
    /// The subnets of the links the head serves (where a node's MAC is seen).
    links: Vec<Ipv4Net>,
}

impl Firewall {
    pub fn new(nft: PathBuf, ports: Vec<(u16, u16)>, links: Vec<Ipv4Net>) -> Firewall {
        Firewall { nft, ports, links }
    }

    /// Let exactly `nodes` (MAC, address) in. Blocking (runs nft).
    pub fn apply(&self, nodes: &[(Mac, Ipv4Addr)]) -> Result<(), JobsError> {
        let script = ruleset(&self.ports, &members(nodes, &self.links));
        let out = self.nft(&["-f", "-"], Some(&script))?;
        if !out.status.success() {
            return Err(JobsError::Firewall(format!(
                "nft -f: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Packets the table has dropped (its `refused` counter), if nft can say.
    pub fn refused(&self) -> Option<u64> {
        let out = self
            .nft(&["list", "counter", "inet", TABLE, "refused"], None)
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)?
            .parse()
            .ok()
    }

    fn nft(&self, args: &[&str], stdin: Option<&str>) -> Result<std::process::Output, JobsError> {
        let err = |e: std::io::Error| JobsError::Firewall(format!("{}: {e}", self.nft.display()));
        let mut child = Command::new(&self.nft)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(err)?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).map_err(err)?;
        }
        child.wait_with_output().map_err(err)
    }
}

/// Remove the table (a head whose jobs are off now). Quiet when nft or the table is missing.
pub fn remove(nft: &std::path::Path) {
    let _ = Command::new(nft)
        .args(["delete", "table", "inet", TABLE])
        .stderr(Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, n])
    }

    #[test]
    fn nodes_on_the_heads_links_are_let_in_by_address_and_mac() {
        let links: Vec<Ipv4Net> = vec!["10.77.0.0/24".parse().unwrap()];
        let m = members(
            &[
                (mac(2), Ipv4Addr::new(10, 78, 0, 5)),
                (mac(1), Ipv4Addr::new(10, 77, 0, 101)),
            ],
            &links,
        );
        assert_eq!(
            m,
            [
                Member {
                    ip: Ipv4Addr::new(10, 77, 0, 101),
                    mac: Some(mac(1))
                },
                Member {
                    ip: Ipv4Addr::new(10, 78, 0, 5),
                    mac: None
                }
            ],
            "behind a router, the address alone"
        );
        let r = ruleset(&[(6817, 6817), (2049, 2049), (60001, 63000)], &m);
        assert!(
            r.starts_with("table inet enlist\ndelete table inet enlist\n"),
            "{r}"
        );
        assert!(
            r.contains("tcp dport { 6817, 2049, 60001-63000 } jump guarded"),
            "{r}"
        );
        assert!(
            r.contains("elements = { 10.77.0.101 . 52:54:00:00:00:01 }"),
            "{r}"
        );
        assert!(r.contains("elements = { 10.78.0.5 }"), "{r}");
        // Everyone else: dropped, and counted.
        assert!(r.contains("counter name \"refused\" drop"));
    }

    #[test]
    fn with_no_node_up_only_the_head_itself_gets_in() {
        let r = ruleset(&[(6817, 6817)], &[]);
        assert!(
            !r.contains("elements"),
            "an empty set has no elements line: {r}"
        );
        assert!(r.contains("iifname \"lo\" accept") && r.contains("fib saddr type local accept"));
    }
}
