//! Raw DHCP for the tests that need more than a real client gives: chosen MACs, chosen
//! messages, every reply seen.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use enlist_lab::host::Host;

pub fn discover(mac: [u8; 6]) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_xid(u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]))
        .set_flags(Flags::default().set_broadcast())
        .set_chaddr(&mac);
    m.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    m
}

pub fn encode(m: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    m.encode(&mut Encoder::new(&mut out)).expect("encode");
    out
}

/// Send raw DHCP packets from `h` (no address yet: bound to its interface, port 68) and
/// collect whatever replies arrive within `wait`.
pub fn exchange(h: &Host, packets: Vec<Vec<u8>>, wait: Duration) -> Vec<Message> {
    let iface = h.iface.clone();
    h.within(move || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
            .expect("socket");
        s.set_reuse_address(true).expect("reuse");
        s.set_broadcast(true).expect("broadcast");
        s.bind_device(Some(iface.as_bytes())).expect("bind device");
        s.bind(&SocketAddr::from(([0, 0, 0, 0], 68)).into())
            .expect("bind 68");
        let sock: UdpSocket = s.into();
        for p in &packets {
            sock.send_to(p, "255.255.255.255:67").expect("send");
        }
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let start = Instant::now();
        let mut got = vec![];
        let mut buf = [0u8; 1500];
        while start.elapsed() < wait {
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                if let Ok(m) = Message::decode(&mut Decoder::new(&buf[..n])) {
                    if m.opcode() == Opcode::BootReply {
                        got.push(m);
                    }
                }
            }
        }
        got
    })
}

/// A REQUEST (SELECTING) for the address `server` offered to `mac`.
pub fn request(mac: [u8; 6], ip: Ipv4Addr, server: Ipv4Addr) -> Message {
    let mut m = discover(mac);
    m.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Request));
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
    m
}

/// The reply's message type.
pub fn kind(m: &Message) -> Option<MessageType> {
    match m.opts().get(dhcproto::v4::OptionCode::MessageType) {
        Some(DhcpOption::MessageType(t)) => Some(*t),
        _ => None,
    }
}
