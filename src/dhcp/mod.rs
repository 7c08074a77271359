//! DHCP: a full server (mode `dhcp`) and proxyDHCP (mode `proxy`), both leading PXE clients
//! into the iPXE chain. `client` reads requests, `boot` picks boot files, `handler` applies
//! RFC 2131, `server` owns the sockets.

pub mod boot;
pub mod client;
pub mod handler;
pub mod holds;
pub mod server;
