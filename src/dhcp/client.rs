//! What a DHCP client says about itself: pure parsing of the fields that steer boot selection.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, HType, Message, MessageType, OptionCode};
use enlist_api::Mac;

use crate::config::PciId;

/// Firmware/boot-loader kinds we tell apart (RFC 4578 option 93, option 60, option 77/175).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// BIOS PXE ROM (option 93 = 0).
    Bios,
    /// UEFI x86_64 PXE (option 93 = 7 or 9).
    EfiX64,
    /// UEFI HTTP boot (option 60 `HTTPClient`, option 93 = 16).
    EfiHttp,
    /// Some other architecture we have no boot file for.
    Other(u16),
    /// Not a network-boot client (no `PXEClient`/`HTTPClient` class).
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub mac: Mac,
    pub msg_type: MessageType,
    pub firmware: Firmware,
    /// The client already runs iPXE (user class `iPXE` or option 175 present).
    pub ipxe: bool,
    /// iPXE's network card (option 175.177, PCI cards only).
    pub busid: Option<PciId>,
    /// iPXE drives an ISA card (option 175.177's bus type): one whose IRQ the node OS's
    /// kernel may not find (see `registry::boot`).
    pub isa_card: bool,
    pub hostname: Option<String>,
    pub requested_ip: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    pub vendor_class: Option<String>,
}

impl ClientInfo {
    pub fn is_pxe(&self) -> bool {
        !matches!(self.firmware, Firmware::None)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("not an Ethernet client (htype/hlen)")]
    NotEthernet,
    #[error("no DHCP message type (BOOTP is not served)")]
    NoMessageType,
}

const IPXE_ENCAP_OPTION: u8 = 175;

/// The client's hardware address, if it is an Ethernet one. Safe on any packet: `hlen` is
/// checked before `chaddr` is touched (dhcproto slices `chaddr` by `hlen`, which panics past 16).
pub fn ethernet_mac(msg: &Message) -> Option<Mac> {
    if msg.htype() != HType::Eth || msg.hlen() != 6 {
        return None;
    }
    let bytes: [u8; 6] = msg.chaddr().get(..6)?.try_into().ok()?;
    Some(Mac(bytes))
}

/// Read what matters about the client from a request.
pub fn classify(msg: &Message) -> Result<ClientInfo, ClientError> {
    let mac = ethernet_mac(msg).ok_or(ClientError::NotEthernet)?;
    let opts = msg.opts();
    let msg_type = opts.msg_type().ok_or(ClientError::NoMessageType)?;
    let vendor_class = match opts.get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(v)) => Some(String::from_utf8_lossy(v).into_owned()),
        _ => None,
    };
    let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(a.0),
        _ => None,
    };
    let class = vendor_class.as_deref().unwrap_or("");
    let firmware = if class.starts_with("HTTPClient") {
        Firmware::EfiHttp
    } else if class.starts_with("PXEClient") {
        match arch.unwrap_or(0) {
            0 => Firmware::Bios,
            7 | 9 => Firmware::EfiX64,
            16 => Firmware::EfiHttp,
            n => Firmware::Other(n),
        }
    } else {
        Firmware::None
    };
    let user_class_ipxe = match opts.get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(v)) => contains(v, b"iPXE"),
        _ => false,
    };
    let ipxe_encap = match opts.get(OptionCode::Unknown(IPXE_ENCAP_OPTION)) {
        Some(DhcpOption::Unknown(o)) => Some(o.data()),
        _ => None,
    };
    let ipxe = user_class_ipxe || ipxe_encap.is_some();
    let busid = ipxe_encap.and_then(pci_busid);
    let isa_card = ipxe_encap
        .and_then(ipxe_busid)
        .is_some_and(|(bus, _)| bus == BUS_TYPE_ISA);
    let hostname = match opts.get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h)) => Some(h.clone()),
        _ => None,
    };
    let requested_ip = match opts.get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let server_id = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    Ok(ClientInfo {
        mac,
        msg_type,
        firmware,
        ipxe,
        busid,
        isa_card,
        hostname,
        requested_ip,
        server_id,
        vendor_class,
    })
}

/// iPXE's bus types (include/ipxe/device.h) this head tells apart.
const BUS_TYPE_PCI: u8 = 1;
const BUS_TYPE_ISA: u8 = 5;

/// iPXE's BUSID (sub-option 177 of option 175): the bus type and the card's 4 id bytes
/// (vendor, device). Sub-options are code, length, value; a malformed list yields `None`.
fn ipxe_busid(encap: &[u8]) -> Option<(u8, [u8; 4])> {
    const BUSID: u8 = 177;
    let mut rest = encap;
    while let [code, len, tail @ ..] = rest {
        let value = tail.get(..usize::from(*len))?;
        if *code == BUSID {
            return match value {
                [bus, a, b, c, d] => Some((*bus, [*a, *b, *c, *d])),
                _ => None,
            };
        }
        rest = &tail[usize::from(*len)..];
    }
    None
}

/// The PCI id of iPXE's card, if it is a PCI card.
fn pci_busid(encap: &[u8]) -> Option<PciId> {
    match ipxe_busid(encap)? {
        (BUS_TYPE_PCI, [v0, v1, d0, d1]) => Some(PciId {
            vendor: u16::from_be_bytes([v0, v1]),
            device: u16::from_be_bytes([d0, d1]),
        }),
        _ => None,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::{ipxe_busid, pci_busid, BUS_TYPE_ISA};

    #[test]
    fn reads_the_pci_busid_from_ipxe_options() {
        // 175: [priority 1 byte] [busid 1 8086 1229] [bios drive].
        let encap = [1, 1, 0, 177, 5, 1, 0x80, 0x86, 0x12, 0x29, 189, 1, 0x80];
        assert_eq!(
            pci_busid(&encap).map(|p| p.to_string()).as_deref(),
            Some("8086:1229")
        );
        assert_eq!(pci_busid(&[177, 5, 2, 0, 0, 0, 0]), None, "not a PCI bus");
        assert_eq!(pci_busid(&[177, 9, 1]), None, "truncated");
        assert_eq!(pci_busid(&[1, 1, 0]), None, "no busid");
        // An ISA NE2000 as the floppy's iPXE names it: bus type 5, no PCI id.
        let isa = [177, 5, 5, 0x0a, 0x0b, 0x00, 0x01];
        assert_eq!(ipxe_busid(&isa).map(|(bus, _)| bus), Some(BUS_TYPE_ISA));
        assert_eq!(pci_busid(&isa), None);
    }
}
