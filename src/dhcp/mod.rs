//! DHCP: a full server (mode `dhcp`) and proxyDHCP (mode `proxy`), both leading PXE clients
//! into the iPXE chain. `client` reads requests, `boot` picks boot files, `handler` applies
//! RFC 2131, `server` owns the sockets.

pub mod boot;
pub mod client;
pub mod handler;
pub mod holds;
pub mod server;

use ipnet::Ipv4Net;

use crate::config::SubnetConfig;

/// The subnets (by index) no request can be served from: no address of the head's DHCP
/// interfaces (`iface_nets`) is in them, and they list no relay. A relayed room whose relay
/// is not listed is one: its PCs get no answer (the one place this is decided, for
/// `check-config` and the head's start).
pub fn unreachable_subnets(subnets: &[SubnetConfig], iface_nets: &[Ipv4Net]) -> Vec<usize> {
    subnets
        .iter()
        .enumerate()
        .filter(|(_, s)| s.relays.is_empty())
        .filter(|(_, s)| !iface_nets.iter().any(|n| s.subnet.contains(&n.addr())))
        .map(|(i, _)| i)
        .collect()
}

/// [`unreachable_subnets`] on this machine: the addresses of the `dhcp`-mode interfaces as
/// they are now (a proxy-only head serves no subnet). Index and what to say of each.
pub fn unreachable_here(cfg: &crate::config::Config) -> Vec<(usize, String)> {
    let served: Vec<&str> = cfg
        .dhcp
        .interfaces
        .iter()
        .filter(|i| i.mode == crate::config::DhcpMode::Dhcp)
        .map(|i| i.name.as_str())
        .collect();
    if served.is_empty() {
        return vec![];
    }
    let nets: Vec<Ipv4Net> = served
        .iter()
        .filter_map(|n| crate::netif::lookup(n).ok())
        .map(|i| i.net)
        .collect();
    unreachable_subnets(&cfg.dhcp.subnets, &nets)
        .into_iter()
        .map(|i| (i, unreachable_why(&cfg.dhcp.subnets[i])))
        .collect()
}

/// What to say of an unreachable subnet.
pub fn unreachable_why(s: &SubnetConfig) -> String {
    format!(
        "subnet {} is on none of dhcp.interfaces and lists no relays: its PCs get no answer \
         (a room behind a router: list its relay's address in `relays`)",
        s.subnet
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subnet_is_reached_through_an_interface_in_it_or_a_listed_relay() {
        let cfg = crate::config::Config::parse(
            "state_dir: /tmp/x\n\
             http: { listen: 0.0.0.0:8080, public_url: http://10.77.0.1:8080 }\n\
             dhcp:\n  interfaces: [{ name: br0, mode: dhcp }]\n  subnets: [\n\
             { subnet: 10.77.0.0/24, pool: [10.77.0.100, 10.77.0.199] },\n\
             { subnet: 10.78.0.0/24, pool: [10.78.0.100, 10.78.0.199], relays: [10.78.0.1] },\n\
             { subnet: 10.79.0.0/24, pool: [10.79.0.100, 10.79.0.199] } ]\n\
             images: { dir: /tmp/x, bios: i586, efi_x64: x86_64 }\n",
            std::path::Path::new("test.yaml"),
        )
        .expect("config");
        let on_br0: Ipv4Net = "10.77.0.1/24".parse().expect("net");
        assert_eq!(unreachable_subnets(&cfg.dhcp.subnets, &[on_br0]), [2]);
        assert_eq!(unreachable_subnets(&cfg.dhcp.subnets, &[]), [0, 2]);
        assert!(unreachable_why(&cfg.dhcp.subnets[2]).contains("10.79.0.0/24"));
    }
}
