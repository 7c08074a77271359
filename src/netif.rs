//! Facts about local network interfaces (IPv4 address, MTU), ARP entries for DHCP replies, and
//! the receive buffers of the sockets that serve them.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

#[derive(Debug, thiserror::Error)]
pub enum NetifError {
    #[error("interface {0:?} does not exist")]
    Missing(String),
    #[error("interface {0:?} has no IPv4 address")]
    NoAddress(String),
    #[error("listing interfaces: {0}")]
    List(#[from] nix::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub addr: Ipv4Addr,
    pub net: Ipv4Net,
    pub mtu: u32,
}

pub fn lookup(name: &str) -> Result<Interface, NetifError> {
    let mut exists = false;
    for ifa in nix::ifaddrs::getifaddrs()? {
        if ifa.interface_name != name {
            continue;
        }
        exists = true;
        let Some(addr) = ifa
            .address
            .as_ref()
            .and_then(|a| a.as_sockaddr_in())
            .map(|a| a.ip())
        else {
            continue;
        };
        let prefix = ifa
            .netmask
            .as_ref()
            .and_then(|m| m.as_sockaddr_in())
            .map(|m| u32::from(m.ip()).count_ones() as u8)
            .unwrap_or(32);
        let net = Ipv4Net::new(addr, prefix).unwrap_or_else(|_| Ipv4Net::from(addr));
        return Ok(Interface {
            name: name.to_string(),
            addr,
            net,
            mtu: mtu(name).unwrap_or(1500),
        });
    }
    Err(if exists {
        NetifError::NoAddress(name.into())
    } else {
        NetifError::Missing(name.into())
    })
}

fn mtu(name: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The MTU of the interface that holds `addr`, if any.
pub fn mtu_for_addr(addr: Ipv4Addr) -> Option<u32> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for ifa in addrs {
        let a = ifa
            .address
            .as_ref()
            .and_then(|a| a.as_sockaddr_in())
            .map(|a| a.ip());
        if a == Some(addr) {
            return mtu(&ifa.interface_name);
        }
    }
    None
}

/// Put `ip` at `mac` into `iface`'s ARP table (as a complete, not permanent, entry: it ages out
/// like any other), so a DHCP reply can go by unicast to a client that has no address yet and
/// so cannot answer ARP (RFC 2131 4.1). `sock` is any IPv4 socket. Needs CAP_NET_ADMIN.
///
/// By hand: the SIOCSARP ioctl (what dnsmasq uses) is a dozen lines; no maintained crate wraps
/// it, and a netlink crate would be a large dependency for one neighbour entry.
#[allow(unsafe_code)] // the SIOCSARP ioctl
pub fn set_arp_entry(
    sock: &impl std::os::fd::AsRawFd,
    iface: &str,
    ip: Ipv4Addr,
    mac: enlist_api::Mac,
) -> std::io::Result<()> {
    let mut req = arp_request(iface, ip)?;
    req.arp_ha.sa_family = libc::ARPHRD_ETHER;
    for (d, s) in req.arp_ha.sa_data.iter_mut().zip(mac.0) {
        *d = s as libc::c_char;
    }
    req.arp_flags = libc::ATF_COM;
    // SAFETY: SIOCSARP reads one arpreq, which lives across the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSARP, &req) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Forget what `iface`'s ARP table says of `ip` (none there is fine).
#[allow(unsafe_code)] // the SIOCDARP ioctl
fn drop_arp_entry(
    sock: &impl std::os::fd::AsRawFd,
    iface: &str,
    ip: Ipv4Addr,
) -> std::io::Result<()> {
    let req = arp_request(iface, ip)?;
    // SAFETY: SIOCDARP reads one arpreq, which lives across the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCDARP, &req) };
    let e = std::io::Error::last_os_error();
    match rc {
        0 => Ok(()),
        _ if e.raw_os_error() == Some(libc::ENXIO) => Ok(()),
        _ => Err(e),
    }
}

/// An `arpreq` for `ip` on `iface`, hardware address empty.
#[allow(unsafe_code)] // the C struct
fn arp_request(iface: &str, ip: Ipv4Addr) -> std::io::Result<libc::arpreq> {
    // SAFETY: arpreq is plain old data; all-zero is a valid value.
    let mut req: libc::arpreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.len() >= req.arp_dev.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("interface name {iface:?} too long"),
        ));
    }
    for (d, s) in req.arp_dev.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    let pa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; arp_pa is an IPv4 sockaddr here.
    unsafe {
        std::ptr::write_unaligned(
            (&mut req.arp_pa as *mut libc::sockaddr).cast::<libc::sockaddr_in>(),
            pa,
        );
    }
    Ok(req)
}

/// Whether something answers ARP for `ip` on `iface` within `wait`, and with which MAC: the
/// table's entry is dropped, one datagram to the discard port makes the kernel ask afresh,
/// and `/proc/net/arp` says whether an answer came. Blocking. Needs CAP_NET_ADMIN.
pub fn answers_arp(
    iface: &str,
    ip: Ipv4Addr,
    wait: std::time::Duration,
) -> std::io::Result<Option<enlist_api::Mac>> {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    drop_arp_entry(&s, iface, ip)?;
    s.bind_device(Some(iface.as_bytes()))?;
    s.send_to(&[0u8], &std::net::SocketAddrV4::new(ip, 9).into())?;
    let until = std::time::Instant::now() + wait;
    loop {
        let table = std::fs::read_to_string("/proc/net/arp")?;
        if let Some(mac) = arp_answer(&table, iface, ip) {
            return Ok(Some(mac));
        }
        if std::time::Instant::now() >= until {
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The MAC `/proc/net/arp` has for `ip` on `iface`, if complete (flag 0x2: an answer came).
pub fn arp_answer(table: &str, iface: &str, ip: Ipv4Addr) -> Option<enlist_api::Mac> {
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let [addr, _, flags, hw, _, dev] = f.as_slice() else {
            return None;
        };
        let complete =
            u32::from_str_radix(flags.trim_start_matches("0x"), 16).is_ok_and(|v| v & 2 != 0);
        (*addr == ip.to_string() && *dev == iface && complete)
            .then(|| enlist_api::Mac::parse(hw))
            .flatten()
    })
}

/// Give `socket` (`what`, for the log) a receive buffer of `wanted` bytes, past
/// `net.core.rmem_max` when the head has CAP_NET_ADMIN (`SO_RCVBUFFORCE`), else as much as that
/// limit allows, and warn when it got less. Returns what the kernel granted (it reports twice
/// the bytes asked, for its bookkeeping; halved here). A stock Debian's limit is 208 KiB: a DHCP
/// socket that small overflows while a slow disk flushes one lease batch.
pub fn grow_receive_buffer(socket: &socket2::Socket, wanted: usize, what: &str) -> usize {
    use nix::sys::socket::{setsockopt, sockopt::RcvBufForce};
    if setsockopt(socket, RcvBufForce, &wanted).is_err() {
        let _ = socket.set_recv_buffer_size(wanted);
    }
    let granted = socket.recv_buffer_size().map(|b| b / 2).unwrap_or(0);
    if let Some(w) = small_buffer_warning(what, granted, wanted) {
        tracing::warn!("{w}");
    }
    granted
}

/// The warning for a receive buffer smaller than asked, or `None` when it got what it asked.
pub fn small_buffer_warning(what: &str, granted: usize, wanted: usize) -> Option<String> {
    (granted < wanted).then(|| {
        format!(
            "{what}: receive buffer {} KiB, not the {} KiB asked (net.core.rmem_max, and no CAP_NET_ADMIN to pass it): a burst that arrives while a slow disk flushes may be dropped; raise net.core.rmem_max to {wanted} or give the head CAP_NET_ADMIN",
            granted / 1024,
            wanted / 1024
        )
    })
}

#[cfg(test)]
mod receive_buffer_tests {
    use super::*;

    #[test]
    fn a_root_test_gets_the_whole_buffer_and_a_small_one_is_named() {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
            .expect("socket");
        let granted = grow_receive_buffer(&s, 1 << 20, "a test socket");
        assert!(granted > 0);
        if nix::unistd::geteuid().is_root() {
            assert_eq!(granted, 1 << 20, "SO_RCVBUFFORCE passes rmem_max for root");
        }
        assert_eq!(small_buffer_warning("dhcp on br0", 1 << 20, 1 << 20), None);
        let w = small_buffer_warning("dhcp on br0", 212_992, 4 << 20).expect("a warning");
        assert!(
            w.starts_with("dhcp on br0: receive buffer 208 KiB, not the 4096 KiB"),
            "{w}"
        );
        assert!(w.contains("net.core.rmem_max"), "{w}");
    }
}
