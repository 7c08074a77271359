//! Facts about local network interfaces: IPv4 address and MTU.

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
