//! Who is held back from the cluster: a node whose PC registers with another inventory than
//! the one it joined with, or whose MAC boots again on another PC while its node is up. Such a
//! node is `pending` with why (its history, the dashboard, `enlist nodes`), gets no boot, no
//! key and no munge key, until an admin approves it again.
//!
//! A MAC is all a PC shows the network before its node OS runs, and anyone can take one; the
//! inventory (CPU, memory tier, the boot card's driver) is what the node OS reports, signed
//! with the node key. A stranger who boots as a known MAC on other hardware is caught by the
//! first; one who boots it while the real PC is up, by the second. (Who copies the inventory
//! too and strikes while the PC is off is not: SECURITY.md says what remains.)

use std::net::IpAddr;
use std::time::{Duration, Instant};

use enlist_api::{Mac, NodeInfo};

use crate::lifecycle::Event;
use crate::store::{NodeRow, StoreError};

use super::Registry;

/// What identifies a PC's hardware, as its node OS reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    pub cpu_model: String,
    pub cores: u32,
    /// Memory rounded up to its tier: kernels of different images keep different amounts
    /// for themselves, so MemTotal itself differs between a PC's i586 and x86_64 boots.
    pub mem_tier_mb: u64,
    /// The driver of the card it booted through (the one with its MAC), if it names one.
    pub boot_driver: Option<String>,
}

/// Memory tier: MemTotal rounded up to a multiple of 32 MiB below 1 GiB, of 512 MiB above.
pub fn mem_tier_mb(mem_total_kb: u64) -> u64 {
    let mb = mem_total_kb.div_ceil(1024);
    let step = if mb < 1024 { 32 } else { 512 };
    mb.div_ceil(step) * step
}

impl Inventory {
    pub fn of(info: &NodeInfo, mac: Mac) -> Inventory {
        let boot_driver = info
            .nics
            .iter()
            .find(|n| Mac::parse(&n.mac) == Some(mac))
            .map(|n| n.driver.clone())
            .filter(|d| !d.is_empty());
        Inventory {
            cpu_model: info.cpu_model.trim().to_string(),
            cores: info.cores,
            mem_tier_mb: mem_tier_mb(info.mem_total_kb),
            boot_driver,
        }
    }

    /// What differs from `before`, said for the admin; None when nothing does. A driver
    /// counts only when both name one (a card without a driver in one image is no change).
    pub fn change_from(&self, before: &Inventory) -> Option<String> {
        let mut diffs = vec![];
        if self.cpu_model != before.cpu_model || self.cores != before.cores {
            diffs.push(format!(
                "CPU {:?} x{} -> {:?} x{}",
                before.cpu_model, before.cores, self.cpu_model, self.cores
            ));
        }
        if self.mem_tier_mb != before.mem_tier_mb {
            diffs.push(format!(
                "memory {} MB -> {} MB",
                before.mem_tier_mb, self.mem_tier_mb
            ));
        }
        if let (Some(a), Some(b)) = (&before.boot_driver, &self.boot_driver) {
            if a != b {
                diffs.push(format!("boot card's driver {a} -> {b}"));
            }
        }
        (!diffs.is_empty()).then(|| diffs.join("; "))
    }
}

/// Why a registration with `info` is held back, given the inventory the node last registered
/// with (its row's info), if it is.
pub fn registration_change(row: &NodeRow, info: &NodeInfo) -> Option<String> {
    let before: NodeInfo = serde_json::from_str(row.info.as_deref()?).ok()?;
    if before.cpu_model.is_empty() && before.mem_total_kb == 0 {
        return None;
    }
    Inventory::of(info, row.mac).change_from(&Inventory::of(&before, row.mac))
}

/// How long after another PC's boot of its MAC a node's heartbeat proves two PCs share it (the
/// one that booted cannot be the one beating: its node OS is not up yet).
pub const CLONE_MARGIN: Duration = Duration::from_secs(2);

impl Registry {
    /// Hold `row` back until an admin approves it: pending, its session ended and key
    /// revoked, with `why` in its history.
    pub(super) fn quarantine(&self, row: &mut NodeRow, why: &str) -> Result<(), StoreError> {
        tracing::warn!(mac = %row.mac, node = %row.name, "quarantined: {why}");
        row.approved = false;
        row.quarantine = Some(why.to_string());
        self.save(row, Some(("quarantine", why)))?;
        self.apply(
            row,
            Event::Quarantined,
            "held back until an admin approves it",
        )
    }

    /// A boot of `mac` was refused because its node is up: remember when and from where (a
    /// heartbeat after this shows two PCs with one MAC).
    pub(super) fn boot_while_up(&self, mac: Mac, from: IpAddr) {
        let mut inner = self.inner();
        let live = inner.live.entry(mac).or_default();
        live.conflict.get_or_insert((Instant::now(), from));
    }

    /// A signed heartbeat of `mac` came at `now`: if another PC booted its MAC well before, both
    /// are up, and the node is held back. Blocking (database) only then.
    pub(crate) fn clone_check(&self, mac: Mac, now: Instant) -> Result<(), StoreError> {
        let conflict = {
            let mut inner = self.inner();
            let live = inner.live.entry(mac).or_default();
            match live.conflict {
                Some((at, from)) if now.saturating_duration_since(at) >= CLONE_MARGIN => {
                    live.conflict = None;
                    Some(from)
                }
                _ => None,
            }
        };
        let Some(from) = conflict else { return Ok(()) };
        let Some(mut row) = self.store.node(mac)? else {
            return Ok(());
        };
        self.quarantine(
            &mut row,
            &format!("another PC booted with its MAC (from {from}) while its node was up"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use enlist_api::Nic;

    fn info(model: &str, cores: u32, mem_kb: u64, driver: &str) -> NodeInfo {
        NodeInfo {
            cpu_model: model.into(),
            cores,
            mem_total_kb: mem_kb,
            nics: vec![Nic {
                name: "eth0".into(),
                mac: "52:54:00:00:00:01".into(),
                driver: driver.into(),
            }],
            ..Default::default()
        }
    }

    const MAC: Mac = Mac([0x52, 0x54, 0, 0, 0, 1]);

    #[test]
    fn the_same_pc_on_another_image_is_the_same_inventory() {
        // A 128 MB Pentium II: the i586 kernel leaves 121 MB, a bigger kernel 110 MB.
        let i586 = Inventory::of(&info("Pentium II (Deschutes)", 1, 124_000, "e100"), MAC);
        let other = Inventory::of(&info("Pentium II (Deschutes)", 1, 112_640, "e100"), MAC);
        assert_eq!(other.change_from(&i586), None);
        assert_eq!(i586.mem_tier_mb, 128);
        // A card the other image has no driver for is no change either.
        let none = Inventory::of(&info("Pentium II (Deschutes)", 1, 124_000, ""), MAC);
        assert_eq!(none.change_from(&i586), None);
    }

    #[test]
    fn another_cpu_memory_or_card_is_named() {
        let before = Inventory::of(&info("Pentium II (Deschutes)", 1, 124_000, "e100"), MAC);
        let laptop = Inventory::of(&info("Intel Core i7", 8, 16_000_000, "e1000e"), MAC);
        let why = laptop.change_from(&before).expect("a change");
        assert!(
            why.contains("CPU") && why.contains("memory 128 MB -> 15872 MB"),
            "{why}"
        );
        assert!(why.contains("e100 -> e1000e"), "{why}");
        assert_eq!(mem_tier_mb(8 * 1024 * 1024), 8192);
        assert_eq!(mem_tier_mb(60 * 1024), 64);
    }
}
