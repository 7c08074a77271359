//! The registry follows boots by watching DHCP and boot file fetches.

use std::net::{IpAddr, Ipv4Addr};

use crate::bootfiles::{FetchObserver, Kind};
use crate::dhcp::client::ClientInfo;
use crate::dhcp::handler::BootObserver;
use crate::store::now;

use super::{state, Registry};

impl Registry {
    fn on_dhcp(
        &self,
        client: &ClientInfo,
        ip: Option<Ipv4Addr>,
    ) -> Result<(), crate::store::StoreError> {
        if let Some(ip) = ip {
            self.inner().ip_to_mac.insert(ip, client.mac.clone());
        }
        // Only network-boot clients become nodes; an ordinary DHCP client (or the node OS's own
        // udhcpc) costs no database write here.
        if !client.is_pxe() || !self.enrollable(&client.mac) {
            return Ok(());
        }
        let mut row = self.node_or_new(&client.mac)?;
        let ts = now();
        row.last_seen = Some(ts);
        if let Some(ip) = ip {
            row.ip = Some(ip.to_string());
        }
        // A network-boot client's DHCP starts a new boot, unless one is under way (iPXE's DHCP
        // after the ROM's). The node OS's own udhcpc is no PXE client and never gets here.
        let new_boot = !matches!(row.state.as_str(), state::SEEN | state::BOOTING) && !row.released;
        if new_boot || row.first_dhcp.is_none() {
            row.first_dhcp = Some(ts);
            row.boot_seconds = None;
        }
        let what = if client.ipxe { "iPXE" } else { "PXE ROM" };
        if new_boot {
            self.inner()
                .live
                .entry(client.mac.clone())
                .or_default()
                .session = None;
            self.set_state(&mut row, state::SEEN, &format!("DHCP from {what}"))
        } else {
            self.save(&row, None)
        }
    }

    fn on_fetch(
        &self,
        mac: Option<&str>,
        ip: IpAddr,
        kind: Kind,
        path: &str,
    ) -> Result<(), crate::store::StoreError> {
        let mac = match mac {
            Some(m) => m.to_string(),
            None => {
                let IpAddr::V4(v4) = ip else { return Ok(()) };
                match self.inner().ip_to_mac.get(&v4) {
                    Some(m) => m.clone(),
                    None => return Ok(()),
                }
            }
        };
        let Some(mut row) = self.store.node(&mac)? else {
            return Ok(());
        };
        row.last_seen = Some(now());
        self.touch(&mac);
        let detail = format!("fetched {} ({path})", kind.as_str());
        if row.state == state::SEEN {
            self.set_state(&mut row, state::BOOTING, &detail)
        } else {
            self.save(&row, Some(("boot", &detail)))
        }
    }
}

impl BootObserver for Registry {
    fn dhcp_seen(&self, client: &ClientInfo, ip: Option<Ipv4Addr>) {
        if let Err(e) = self.on_dhcp(client, ip) {
            tracing::error!(mac = %client.mac, "registry: cannot record DHCP: {e}");
        }
    }
}

impl FetchObserver for Registry {
    fn fetched(&self, mac: Option<&str>, ip: IpAddr, kind: Kind, path: &str) {
        if let Err(e) = self.on_fetch(mac, ip, kind, path) {
            tracing::error!(%ip, "registry: cannot record fetch of {path}: {e}");
        }
    }
}

impl Registry {
    /// A boot file was fetched over HTTP (same bookkeeping as TFTP).
    pub fn fetched_http(&self, mac: Option<&str>, ip: IpAddr, kind: Kind, path: &str) {
        FetchObserver::fetched(self, mac, ip, kind, path);
    }
}
