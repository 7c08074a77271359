//! The DHCP path: decode, classify, and the handler against an in-memory lease store, in both
//! modes, one packet and a burst. A panic inside the handler is caught there (one packet
//! dropped as "panic"); here that counts as a crash, so the fuzzer finds it.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use enlist::config::{Config, Current, DhcpMode};
use enlist::dhcp::handler::{Arrival, Handler, NoObserver, Outcome};
use enlist::store::Store;
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = "
http: { listen: 127.0.0.1:0, public_url: http://10.77.0.1:8080 }
dhcp:
  interfaces: [{ name: br0, mode: dhcp }]
  subnets:
    - subnet: 10.77.0.0/24
      pool: [10.77.0.100, 10.77.0.110]
      relays: [10.77.0.2]
      reservations: [{ mac: \"52:54:00:77:00:10\", ip: 10.77.0.10, name: pc-10 }]
images: { dir: /nonexistent, bios: i586 }
";

fn handler() -> &'static Handler {
    static H: OnceLock<Handler> = OnceLock::new();
    H.get_or_init(|| {
        let cfg = Arc::new(Config::parse(CONFIG, Path::new("fuzz.yaml")).expect("config"));
        Handler::new(
            Arc::new(Current::new(cfg)),
            Store::memory().expect("db"),
            Arc::new(NoObserver),
        )
    })
}

fn arrival(mode: DhcpMode, port: u16) -> Arrival {
    Arrival {
        iface: "br0".into(),
        iface_addr: Ipv4Addr::new(10, 77, 0, 1),
        mode,
        port,
        src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
    }
}

fuzz_target!(|data: &[u8]| {
    // As the server does: its own decode step (hlen past 16 and decoder panics are drops).
    let Ok(msg) = enlist::dhcp::server::decode_packet(data) else {
        return;
    };
    let _ = enlist::dhcp::client::classify(&msg);
    let batch: Vec<(Arrival, dhcproto::v4::Message)> = [
        arrival(DhcpMode::Dhcp, 67),
        arrival(DhcpMode::Proxy, 67),
        arrival(DhcpMode::Proxy, 4011),
    ]
    .into_iter()
    .map(|a| (a, msg.clone()))
    .collect();
    for outcome in handler().handle_batch(&batch, 1_000_000) {
        if let Ok(Outcome::Drop(reason)) = outcome {
            assert_ne!(reason, "panic", "the handler panicked on this packet");
        }
    }
});
