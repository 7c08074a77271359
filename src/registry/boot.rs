//! The boot side of the registry: what a PC's boot script says, the per-node part of its initrd
//! (which carries the node key), and following a boot through DHCP and file fetches.
//!
//! All of it answers requests nobody signed, so: an alive node is never changed here (the
//! state machine ignores such events for it), no node is created beyond the admission limits,
//! and the node key goes only to the address that fetched the script, with its token.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use enlist_api::Mac;

use crate::bootfiles::FetchObserver;
use crate::bootpath::{Kind, Proto};
use crate::config::{DhcpMode, Enrollment, ImageName};
use crate::dhcp::client::{ClientInfo, Firmware};
use crate::dhcp::handler::BootObserver;
use crate::image::cpio::Archive;
use crate::lifecycle::{Event, NodeState};
use crate::store::{now, NodeRow, StoreError};

use super::live::LOCAL_DISK_EVENT_EVERY;
use super::tokens::TokenRefused;
use super::{random_token, Registry, RegistryError};

/// The kernel option that lets the node OS find an ISA card's IRQ where the ACPI SCI holds
/// it (the kernel's ne driver autoprobes the IRQ; with ACPI off the line is free).
pub const ISA_IRQ_FIX: &str = "acpi=off";

/// Where the node OS finds its settings (read by `init` and the agent).
pub const NODE_CONF: &str = "etc/enlist/node.conf";

/// What a node's boot script does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootDecision {
    /// Boot the node OS; the initrd link carries `token`.
    Boot {
        name: String,
        /// The BIOS image (for a CPU the head knows to be 64-bit, `images.bios_x64`).
        image: ImageName,
        /// The BIOS image if iPXE finds a 64-bit CPU (`cpuid --ext 29`): `images.bios_x64`,
        /// unless a reservation names the PC's image.
        image64: ImageName,
        token: String,
    },
    /// Released: boot the PC's own disk.
    LocalDisk,
    /// The enrollment policy does not enlist this PC.
    NotEnlisted,
    /// Enrollment `approve`: shown as pending until an admin approves it; the PC retries.
    AwaitingApproval { name: String },
    /// Not now (shown on the PC's screen); the PC retries.
    Retry(String),
    /// A request this head will not answer with a boot (the metrics label says why).
    Refused(&'static str),
}

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("{0}")]
    Token(#[from] TokenRefused),
    #[error("no node {0}")]
    UnknownNode(Mac),
    #[error("node settings: {0}")]
    Build(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl OverlayError {
    pub fn reason(&self) -> &'static str {
        match self {
            OverlayError::Token(t) => t.reason(),
            OverlayError::UnknownNode(_) => "unknown-node",
            OverlayError::Build(_) => "overlay-error",
            OverlayError::Store(_) => "database-error",
        }
    }
}

impl Registry {
    /// Decide what the boot script of `mac`, asked for from `from`, does. Blocking (database).
    pub fn boot_decision(
        &self,
        mac: Mac,
        from: IpAddr,
        via: Proto,
    ) -> Result<BootDecision, RegistryError> {
        let known = self.store.node(mac)?;
        let reserved = self.vouched(mac);
        if known.is_none() && !reserved && !self.enrolls_new() {
            match self.config().nodes.enrollment {
                Enrollment::KnownMacs => return Ok(BootDecision::NotEnlisted),
                Enrollment::Approve => return self.await_approval(mac, from),
                Enrollment::Open => {}
            }
        }
        let mut row = match known {
            Some(r) => r,
            None => match self.node_or_new(mac, from) {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(BootDecision::NotEnlisted),
                Err(RegistryError::Refused(e)) => return Ok(BootDecision::Retry(e.to_string())),
                Err(e) => return Err(e),
            },
        };
        if !row.approved {
            return Ok(BootDecision::AwaitingApproval { name: row.name });
        }
        if row.released || self.inner().released_groups.contains(&row.group) {
            self.touch(mac);
            self.local_disk_answered(&mut row, from, via)?;
            return Ok(BootDecision::LocalDisk);
        }
        if let Some(reason) = self.foreign_address(&row, from)? {
            tracing::debug!(%mac, %from, "boot script refused: {reason}");
            self.metrics.refused(&self.metrics.registry_refused, reason);
            if row.state.is_alive() {
                self.boot_while_up(mac, from);
            }
            return Ok(BootDecision::Refused(reason));
        }
        // Its node is up: this PC is either that one, rebooted without a word (it waits until
        // its node is lost), or a second PC with its MAC (the node's next heartbeat shows it).
        // Either way no key: a new one would lock the node's agent out.
        if row.state.is_alive() {
            tracing::debug!(%mac, %from, "boot script refused: its node is up");
            self.metrics
                .refused(&self.metrics.registry_refused, "node-up");
            self.boot_while_up(mac, from);
            return Ok(BootDecision::Retry(format!(
                "{} is up as a node; this boot waits until it is gone",
                row.name
            )));
        }
        let token = random_token();
        {
            let mut inner = self.inner();
            inner.tokens.issue(mac, from, token.clone(), Instant::now());
            inner.remember_boot_ip(from, mac, Instant::now());
            inner.trace(mac, "script", via, format!("from {from}"));
            inner.touch(mac, Instant::now());
        }
        if let (IpAddr::V4(v4), false) = (from, row.state.is_alive()) {
            if row.ip != Some(v4) {
                row.ip = Some(v4);
                self.save(&row, None)?;
            }
        }
        self.apply(&mut row, Event::Fetched, "fetched its boot script")?;
        let image = self.config().bios_image(mac, row.cpu_64bit()).clone();
        let image64 = self.config().bios_image(mac, true).clone();
        Ok(BootDecision::Boot {
            name: row.name,
            image,
            image64,
            token,
        })
    }

    /// iPXE told the card's PCI id (option 175): if the image this PC will boot has no driver
    /// for it, say so in its boot trace, and in its history at most every
    /// [`LOCAL_DISK_EVENT_EVERY`] (the DHCP is unauthenticated: it must not write on each).
    fn note_missing_driver(&self, client: &ClientInfo, row: &NodeRow) -> Result<(), RegistryError> {
        let Some(why) = self.missing_driver(client, row) else {
            return Ok(());
        };
        let due = {
            let mut inner = self.inner();
            inner.trace(row.mac, "nic", Proto::Dhcp, why.clone());
            let live = inner.live.entry(row.mac).or_default();
            let due = live
                .nic_noted
                .is_none_or(|t| t.elapsed() >= LOCAL_DISK_EVENT_EVERY);
            if due {
                live.nic_noted = Some(Instant::now());
            }
            due
        };
        if due {
            tracing::warn!(mac = %row.mac, node = %row.name, "{why}");
            self.save(row, Some(("nic", &why)))?;
        }
        Ok(())
    }

    /// A PC whose last boot fetched the node OS through an ISA card (iPXE's bus type) and
    /// never registered: its kernel did not find the card's IRQ ("failed to detect IRQ
    /// line": on many boards the ACPI SCI holds IRQ 9, a common jumper setting). The PC
    /// cannot say so (it has no network); the head can. From this boot on it boots with
    /// [`ISA_IRQ_FIX`] (kept in its row), said in its history.
    fn isa_irq_fix(&self, client: &ClientInfo, row: &mut NodeRow) -> Result<(), RegistryError> {
        if !client.isa_card || row.kernel_args.split_whitespace().any(|a| a == ISA_IRQ_FIX) {
            return Ok(());
        }
        if row.state.is_alive() || !self.inner().fetched_and_never_registered(row.mac) {
            return Ok(());
        }
        row.kernel_args = [row.kernel_args.as_str(), ISA_IRQ_FIX]
            .join(" ")
            .trim()
            .to_string();
        let why = format!(
            "its last boot fetched the node OS through an ISA network card and never registered (the node OS did not find the card's IRQ): it boots with {ISA_IRQ_FIX} from now on"
        );
        tracing::warn!(mac = %row.mac, node = %row.name, "{why}");
        self.save(row, Some(("kernel-args", &why)))?;
        Ok(())
    }

    /// Why the image `client` will boot cannot drive its card, if it cannot.
    fn missing_driver(&self, client: &ClientInfo, row: &NodeRow) -> Option<String> {
        let id = client.busid?;
        let cfg = self.config();
        let image = match client.firmware {
            Firmware::EfiX64 | Firmware::EfiHttp => &cfg.images.efi_x64,
            _ => cfg.bios_image(client.mac, row.cpu_64bit()),
        };
        let store = crate::image::store::ImageStore::new(&cfg.images.dir);
        let version = store.current(image.as_str()).ok()?;
        let drivers = self.driver_table(&store, image.as_str(), &version)?;
        if drivers.is_empty() || drivers.iter().any(|d| id.driven_by(&d.pattern)) {
            return None;
        }
        Some(format!(
            "network card PCI {id}: no driver for it in image {image} ({version}); the node OS will not find it"
        ))
    }

    /// The driver table of one image version, read from its manifest once.
    fn driver_table(
        &self,
        store: &crate::image::store::ImageStore,
        image: &str,
        version: &str,
    ) -> Option<super::DriverTable> {
        let key = (image.to_string(), version.to_string());
        let mut tables = self.driver_tables.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = tables.get(&key) {
            return Some(t.clone());
        }
        let table = std::sync::Arc::new(store.drivers(image, version).ok()?);
        tables.insert(key, table.clone());
        Some(table)
    }

    /// Enrollment `approve`: remember the PC (in memory only) until an admin approves it.
    /// A released PC asked what to boot and was sent to its own disk: it becomes `gone`, and
    /// its history says so (again at most every [`LOCAL_DISK_EVENT_EVERY`]: each morning's
    /// boot shows, a flood of forged requests does not write the database).
    fn local_disk_answered(
        &self,
        row: &mut NodeRow,
        from: IpAddr,
        via: Proto,
    ) -> Result<(), RegistryError> {
        const WHY: &str = "answered with local disk boot";
        let mac = row.mac;
        let noted = {
            let mut inner = self.inner();
            inner.trace(mac, "script", via, format!("local disk, from {from}"));
            let live = inner.live.entry(mac).or_default();
            let due = live
                .local_disk_noted
                .is_none_or(|t| t.elapsed() >= LOCAL_DISK_EVENT_EVERY);
            if due {
                live.local_disk_noted = Some(Instant::now());
            }
            !due
        };
        if row.state != NodeState::Gone {
            self.apply(row, Event::LocalDiskAnswered, WHY)?;
        } else if !noted {
            self.save(row, Some(("boot", WHY)))?;
        }
        Ok(())
    }

    fn await_approval(&self, mac: Mac, from: IpAddr) -> Result<BootDecision, RegistryError> {
        let mut row = self.new_row(mac, false, Some(from))?;
        row.state = crate::lifecycle::first_state(true);
        row.ip = match from {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        };
        let name = row.name.clone();
        self.inner().add_candidate(row, Instant::now());
        Ok(BootDecision::AwaitingApproval { name })
    }

    /// Why `from` may not boot node `row`, if it may not: in a subnet this head leases, the
    /// address must be the one leased to the node's MAC; and a node whose agent is up answers
    /// only from its own address (anyone else asking is not that PC).
    fn foreign_address(
        &self,
        row: &NodeRow,
        from: IpAddr,
    ) -> Result<Option<&'static str>, StoreError> {
        let leases_here = self
            .config()
            .dhcp
            .interfaces
            .iter()
            .any(|i| i.mode == DhcpMode::Dhcp);
        if leases_here && self.config().leased_subnet(from).is_some() {
            let lease = self.store.lease_of(row.mac, now())?;
            if lease.map(|l| IpAddr::V4(l.ip)) != Some(from) {
                return Ok(Some("not-the-leased-address"));
            }
        }
        if row.state.is_alive() && row.ip.map(IpAddr::V4) != Some(from) {
            return Ok(Some("node-up-elsewhere"));
        }
        Ok(None)
    }

    /// The per-node part of the initrd for the holder of a boot token: `node.conf` with the
    /// node's key. The first download of a token gives the node a new key (its epoch goes up,
    /// so a key from an earlier boot is worthless); later downloads with the same token (a
    /// retry) get the same bytes.
    pub fn overlay(
        &self,
        mac: Mac,
        token: &str,
        from: IpAddr,
        image: (&str, &str),
    ) -> Result<Vec<u8>, OverlayError> {
        let _one_at_a_time = self.overlay_lock.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = self
            .inner()
            .tokens
            .check(mac, token, from, Instant::now())?
            .epoch;
        let mut row = self
            .store
            .node(mac)?
            .ok_or(OverlayError::UnknownNode(mac))?;
        self.inner().live.entry(mac).or_default().image = Some(image.0.to_string());
        let epoch = match epoch {
            Some(e) => e,
            None => {
                row.key_epoch += 1;
                self.save(
                    &row,
                    Some((
                        "key",
                        &format!("new node key for this boot, sent to {from}"),
                    )),
                )?;
                let mut inner = self.inner();
                if let Ok(t) = inner.tokens.check(mac, token, from, Instant::now()) {
                    t.epoch = Some(row.key_epoch);
                }
                row.key_epoch
            }
        };
        self.node_overlay(&row, epoch, image)
            .map_err(OverlayError::Build)
    }

    /// The overlay for an admin who boots a PC by hand (`-kernel`/`-initrd`, a USB stick): a
    /// new key, and a node created if needed. Only for an authenticated admin.
    pub fn direct_overlay(&self, mac: Mac, image: (&str, &str)) -> Result<Vec<u8>, RegistryError> {
        let _one_at_a_time = self.overlay_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut row = match self.store.node(mac)? {
            Some(r) => r,
            None => self.new_row(mac, true, None)?,
        };
        row.key_epoch += 1;
        row.approved = true;
        self.inner().live.entry(mac).or_default().image = Some(image.0.to_string());
        self.save(
            &row,
            Some(("key", "new node key issued to an admin for a direct boot")),
        )?;
        self.node_overlay(&row, row.key_epoch, image)
            .map_err(|e| RegistryError::Store(StoreError::Join(e.to_string())))
    }

    /// `node.conf` in a cpio: the head, the node's name, MAC and key, and the image it boots
    /// (whose runtime bundle it fetches when it joins the jobs).
    fn node_overlay(
        &self,
        row: &NodeRow,
        epoch: i64,
        (image, version): (&str, &str),
    ) -> std::io::Result<Vec<u8>> {
        let key = self.keys.node_key(row.mac, epoch);
        let mut conf = format!(
            "head={}\nname={}\nmac={}\nkey={}\nimage={image}\nversion={version}\n",
            self.config().http.public_url.base(),
            row.name,
            row.mac,
            key.to_hex()
        );
        if self.config().nodes.console_shell {
            // The lab's own bench: a root shell on the PC's screen (see the rootfs'
            // enlist-console).
            conf.push_str("console_shell=1\n");
        }
        // mtime 0: the same token gives the same bytes, so a ranged retry fits together.
        let mut a = Archive::new(0);
        a.file(NODE_CONF, 0o600, conf.as_bytes())?;
        a.finish()
    }

    fn on_dhcp(
        &self,
        client: &ClientInfo,
        ip: Option<Ipv4Addr>,
        via: Ipv4Addr,
    ) -> Result<(), RegistryError> {
        // Only network-boot clients become nodes; an ordinary DHCP client (or the node OS's own
        // udhcpc) costs nothing here, but for a PC whose own OS is up.
        if !client.is_pxe() {
            self.inner()
                .note_own_os(client.mac, ip.or(client.requested_ip));
            return Ok(());
        }
        let mac = client.mac;
        let known = self.store.node(mac)?;
        let reserved = self.vouched(mac);
        if known.is_none() && !reserved && !self.enrolls_new() {
            return Ok(());
        }
        let mut row = match known {
            Some(r) => r,
            None => match self.node_or_new(mac, IpAddr::V4(via)) {
                Ok(Some(r)) => r,
                Ok(None) | Err(RegistryError::Refused(_)) => return Ok(()),
                Err(e) => return Err(e),
            },
        };
        self.isa_irq_fix(client, &mut row)?;
        let what = if client.ipxe { "iPXE" } else { "PXE ROM" };
        {
            let mut inner = self.inner();
            if !client.ipxe {
                // A ROM's DHCP starts a boot; the trace is memory only, so an alive node's may
                // be restarted even though its state is not.
                inner.new_boot(mac);
            }
            if let Some(ip) = ip {
                inner.remember_boot_ip(IpAddr::V4(ip), mac, Instant::now());
            }
            let detail = ip
                .map(|i| format!("{what}, {i}"))
                .unwrap_or_else(|| what.to_string());
            inner.trace(mac, "dhcp", Proto::Dhcp, detail);
            inner.touch(mac, Instant::now());
        }
        self.note_missing_driver(client, &row)?;
        if !row.state.is_alive() && !row.released && ip.is_some() && row.ip != ip {
            row.ip = ip;
            self.save(&row, None)?;
        }
        self.apply(&mut row, Event::PxeDhcp, &format!("DHCP from {what}"))?;
        Ok(())
    }

    fn on_fetch(
        &self,
        mac: Option<Mac>,
        ip: IpAddr,
        kind: Kind,
        path: &str,
        via: Proto,
    ) -> Result<(), StoreError> {
        let Some(mac) = mac.or_else(|| self.inner().mac_at(ip)) else {
            return Ok(());
        };
        let Some(mut row) = self.store.node(mac)? else {
            return Ok(());
        };
        {
            let mut inner = self.inner();
            inner.trace(
                mac,
                kind.as_str(),
                via,
                crate::bootpath::without_token(path),
            );
            inner.touch(mac, Instant::now());
        }
        self.apply(
            &mut row,
            Event::Fetched,
            &format!("fetched {}", kind.as_str()),
        )
    }
}

impl BootObserver for Registry {
    fn dhcp_seen(&self, client: &ClientInfo, ip: Option<Ipv4Addr>, via: Ipv4Addr) {
        if let Err(e) = self.on_dhcp(client, ip, via) {
            tracing::error!(mac = %client.mac, "registry: cannot record DHCP: {e}");
        }
    }

    /// proxyDHCP answers the PCs enlist should boot: reserved or named, known (a node, or waiting for
    /// approval), or any while an enrollment window is open; never an unknown PC of another
    /// PXE service, whatever `nodes.enrollment` says. Memory only: it runs inside the DHCP
    /// batch's lease transaction.
    fn proxy_may_answer(&self, mac: Mac) -> bool {
        if self.vouched(mac) {
            return true;
        }
        let inner = self.inner();
        inner.live.contains_key(&mac)
            || inner.candidates.contains_key(&mac)
            || inner.enrollment.left(Instant::now()).is_some()
    }
}

impl FetchObserver for Registry {
    fn fetched(&self, mac: Option<Mac>, ip: IpAddr, kind: Kind, path: &str, via: Proto) {
        if let Err(e) = self.on_fetch(mac, ip, kind, path, via) {
            tracing::error!(%ip, "registry: cannot record fetch of {path}: {e}");
        }
    }
}
