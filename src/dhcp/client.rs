//! What a DHCP client says about itself: pure parsing of the fields that steer boot selection.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};

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
    /// Lowercase colon form.
    pub mac: String,
    pub msg_type: MessageType,
    pub firmware: Firmware,
    /// The client already runs iPXE (user class `iPXE` or option 175 present).
    pub ipxe: bool,
    /// SMBIOS UUID from option 97, as text.
    pub uuid: Option<String>,
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

/// Read what matters about the client from a request.
pub fn classify(msg: &Message) -> Result<ClientInfo, ClientError> {
    let chaddr = msg.chaddr();
    if chaddr.len() < 6 || msg.hlen() != 6 {
        return Err(ClientError::NotEthernet);
    }
    let mac = chaddr[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
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
    let ipxe = user_class_ipxe || opts.get(OptionCode::Unknown(IPXE_ENCAP_OPTION)).is_some();
    let uuid = match opts.get(OptionCode::ClientMachineIdentifier) {
        // Type 0 followed by a 16-byte UUID (RFC 4578).
        Some(DhcpOption::ClientMachineIdentifier(v)) if v.len() == 17 && v[0] == 0 => {
            Some(format_uuid(&v[1..]))
        }
        _ => None,
    };
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
        uuid,
        hostname,
        requested_ip,
        server_id,
        vendor_class,
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn format_uuid(b: &[u8]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
