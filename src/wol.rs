//! Wake-on-LAN: the magic packet (6 bytes of 0xff, then the MAC 16 times) that a powered-off
//! PC's network card listens for, sent as a UDP broadcast to port 9 on each interface the head
//! serves, and to the directed broadcast address of a relayed subnet the PC was last seen on
//! (its router must forward directed broadcasts). The packet is pure and tested; sending is
//! the edge.

use std::net::{Ipv4Addr, SocketAddrV4};

use enlist_api::Mac;

use crate::config::Config;

/// The port Wake-on-LAN packets go to by convention ("discard").
pub const PORT: u16 = 9;

/// A room's PCs are woken this far apart, so they do not power on in one surge.
pub const PACE: std::time::Duration = std::time::Duration::from_millis(200);

/// The magic packet for `mac`.
pub fn magic_packet(mac: Mac) -> [u8; 102] {
    let mut p = [0xffu8; 102];
    for chunk in p[6..].chunks_exact_mut(6) {
        chunk.copy_from_slice(&mac.0);
    }
    p
}

/// Where a PC last seen at `ip` is woken: every served interface's broadcast, and the directed
/// broadcast of the relayed subnet holding `ip`.
pub fn targets(cfg: &Config, ip: Option<Ipv4Addr>) -> (Vec<String>, Vec<Ipv4Addr>) {
    let ifaces = cfg.dhcp.interfaces.iter().map(|i| i.name.clone()).collect();
    let directed = cfg
        .dhcp
        .subnets
        .iter()
        .filter(|s| !s.relays.is_empty() && ip.is_some_and(|ip| s.subnet.contains(&ip)))
        .map(|s| s.subnet.broadcast())
        .collect();
    (ifaces, directed)
}

/// Send the magic packet for `mac`; where it went (`br0`, `10.78.0.255`), or the first error
/// if it went nowhere.
pub fn wake(cfg: &Config, mac: Mac, ip: Option<Ipv4Addr>) -> Result<Vec<String>, std::io::Error> {
    let packet = magic_packet(mac);
    let (ifaces, directed) = targets(cfg, ip);
    let mut sent = vec![];
    let mut first_error = None;
    let broadcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, PORT);
    for iface in ifaces {
        match send(Some(&iface), broadcast, &packet) {
            Ok(()) => sent.push(iface),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    for addr in directed {
        match send(None, SocketAddrV4::new(addr, PORT), &packet) {
            Ok(()) => sent.push(addr.to_string()),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match (sent.is_empty(), first_error) {
        (true, Some(e)) => Err(e),
        _ => Ok(sent),
    }
}

/// How long a PC is given to answer ARP before it counts as off.
const IN_USE_WAIT: std::time::Duration = std::time::Duration::from_millis(1500);

/// Whether the PC last seen at `ip` is up already (on its own OS: something answers ARP
/// there), said as why it is not woken. None when nothing answers, or when the head cannot
/// ask (a relayed subnet: ARP does not cross a router). Blocking (up to 1.5 s).
pub fn in_use(cfg: &Config, ip: Ipv4Addr) -> Option<String> {
    for i in &cfg.dhcp.interfaces {
        let Ok(nif) = crate::netif::lookup(&i.name) else {
            continue;
        };
        if !nif.net.trunc().contains(&ip) {
            continue;
        }
        return match crate::netif::answers_arp(&i.name, ip, IN_USE_WAIT) {
            Ok(Some(mac)) => Some(format!(
                "in use: {ip} answers ARP on {} (as {mac}): another OS is up",
                i.name
            )),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(%ip, iface = %i.name, "cannot ask ARP whether the PC is up: {e}");
                None
            }
        };
    }
    None
}

fn send(iface: Option<&str>, to: SocketAddrV4, packet: &[u8]) -> std::io::Result<()> {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    s.set_broadcast(true)?;
    if let Some(iface) = iface {
        s.bind_device(Some(iface.as_bytes()))?;
    }
    s.send_to(packet, &to.into())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_magic_packet_is_six_ff_then_the_mac_sixteen_times() {
        let mac = Mac([0x52, 0x54, 0x00, 0x77, 0x01, 0x0a]);
        let p = magic_packet(mac);
        assert_eq!(&p[..6], &[0xff; 6]);
        for i in 0..16 {
            assert_eq!(&p[6 + 6 * i..12 + 6 * i], &mac.0, "copy {i}");
        }
    }

    #[test]
    fn an_arp_answer_is_a_complete_entry_on_that_interface() {
        let table =
            "IP address       HW type     Flags       HW address            Mask     Device\n\
            10.77.0.101      0x1         0x2         52:54:00:77:01:01     *        br0\n\
            10.77.0.102      0x1         0x0         00:00:00:00:00:00     *        br0\n\
            10.78.0.101      0x1         0x2         52:54:00:77:01:03     *        eth1\n";
        let ip = |d| Ipv4Addr::new(10, 77, 0, d);
        assert_eq!(
            crate::netif::arp_answer(table, "br0", ip(101)),
            Mac::parse("52:54:00:77:01:01")
        );
        assert_eq!(
            crate::netif::arp_answer(table, "br0", ip(102)),
            None,
            "asked, no answer"
        );
        assert_eq!(
            crate::netif::arp_answer(table, "eth1", ip(101)),
            None,
            "other interface"
        );
        assert_eq!(crate::netif::arp_answer("", "br0", ip(101)), None);
    }

    #[test]
    fn a_relayed_pc_is_also_woken_by_its_subnets_directed_broadcast() {
        let text = "http: { listen: 127.0.0.1:0, public_url: http://10.77.0.1:8080 }\n\
            dhcp:\n  interfaces: [{ name: br0, mode: dhcp }]\n  subnets:\n\
            \x20   - { subnet: 10.77.0.0/24, pool: [10.77.0.100, 10.77.0.199] }\n\
            \x20   - { subnet: 10.78.0.0/24, pool: [10.78.0.100, 10.78.0.150], relays: [10.78.0.1] }\n\
            images: { dir: /nonexistent, bios: i586 }\n";
        let cfg = Config::parse(text, std::path::Path::new("t.yaml")).expect("config");
        let (ifaces, directed) = targets(&cfg, Some(Ipv4Addr::new(10, 78, 0, 120)));
        assert_eq!(ifaces, ["br0"]);
        assert_eq!(directed, [Ipv4Addr::new(10, 78, 0, 255)]);
        assert!(targets(&cfg, Some(Ipv4Addr::new(10, 77, 0, 120)))
            .1
            .is_empty());
        assert!(targets(&cfg, None).1.is_empty());
    }
}
