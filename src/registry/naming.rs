//! What PCs are called: a name the admin gave (a reservation, an imported list), else the
//! next of `nodes.name_pattern` in join order, else prefix + MAC bytes; imports
//! (`enlist node import`), and a config reload's new reservations applied to the nodes they
//! name.

use std::net::IpAddr;

use enlist_api::admin::{ImportAnswer, NamedPc, MAX_IMPORT};
use enlist_api::Mac;

use crate::config::{valid_host_label, Config, Reload};
use crate::store::StoreError;

use super::{Registry, RegistryError};

impl Registry {
    /// Whether the admin named this PC (a reservation or an import): a known PC, which may
    /// join whatever the enrollment policy, as a reservation always could.
    pub(super) fn vouched(&self, mac: Mac) -> bool {
        self.config().reservation_for(mac).is_some() || self.inner().names.contains_key(&mac)
    }

    /// A name for a new node: its reserved name, else its imported one, else the next of
    /// the name pattern, else prefix + the last three MAC bytes; made unique.
    pub(super) fn new_name(&self, mac: Mac) -> Result<String, StoreError> {
        let cfg = self.config();
        let given = cfg
            .reservation_for(mac)
            .and_then(|r| r.name.clone())
            .into_iter()
            .chain(self.inner().names.get(&mac).map(|n| n.name.clone()));
        for name in given {
            if self.name_free(&name, mac)? {
                return Ok(name);
            }
        }
        if let Some(pattern) = &cfg.nodes.name_pattern {
            // Below this many tries a free index exists: every name taken is a node's, a
            // reservation's or an import's.
            let tries = {
                let inner = self.inner();
                inner.live.len() + inner.names.len() + cfg.reservation_count() + 2
            };
            for index in 1..=tries {
                let name = pattern.name(u32::try_from(index).unwrap_or(u32::MAX));
                if self.name_free(&name, mac)? {
                    return Ok(name);
                }
            }
        }
        let tail: String = mac.0[3..].iter().map(|b| format!("{b:02x}")).collect();
        let base = format!("{}{}", cfg.nodes.name_prefix, tail);
        let mut name = base.clone();
        let mut i = 2;
        while !self.name_free(&name, mac)? {
            name = format!("{base}-{i}");
            i += 1;
        }
        Ok(name)
    }

    /// The group a new node joins: its reservation's, its import's, its subnet's, the default.
    pub(super) fn new_group(&self, mac: Mac, from: Option<IpAddr>) -> String {
        let cfg = self.config();
        let imported = || self.inner().names.get(&mac).and_then(|n| n.group.clone());
        cfg.reservation_for(mac)
            .and_then(|r| r.group.clone())
            .or_else(imported)
            .unwrap_or_else(|| cfg.group_for(mac, from))
    }

    /// Whether `name` is free for `mac`: no other node has it, nor is it another PC's by a
    /// reservation or an import.
    pub(super) fn name_free(&self, name: &str, mac: Mac) -> Result<bool, StoreError> {
        let cfg = self.config();
        let reserved_for_other = cfg.reservation_named(name).is_some_and(|m| m != mac);
        let imported_for_other = self
            .inner()
            .names
            .values()
            .any(|n| n.name == name && n.mac != mac);
        Ok(!reserved_for_other && !imported_for_other && !self.store.name_taken(name, mac)?)
    }

    /// The names the admin imported, by name.
    pub fn names(&self) -> Vec<NamedPc> {
        let mut v: Vec<NamedPc> = self.inner().names.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Name (and group) PCs by MAC: nodes now, PCs not seen yet when they first boot. All or
    /// nothing: a bad entry, a name twice, or a name another node has refuses the whole list
    /// (names do not change hands within one import: rename the other node first).
    pub fn import(&self, pcs: &[NamedPc]) -> Result<ImportAnswer, RegistryError> {
        check_import(pcs).map_err(RegistryError::BadImport)?;
        for p in pcs {
            if self.store.name_taken(&p.name, p.mac)? {
                return Err(RegistryError::BadImport(format!(
                    "{}: {} is another node's name (rename that node first)",
                    p.mac, p.name
                )));
            }
        }
        self.store.put_names(pcs)?;
        {
            let mut inner = self.inner();
            inner
                .names
                .retain(|_, n| pcs.iter().all(|p| p.name != n.name));
            inner.names.extend(pcs.iter().map(|p| (p.mac, p.clone())));
        }
        let mut answer = ImportAnswer::default();
        for p in pcs {
            let Some(row) = self.store.node(p.mac)? else {
                answer.waiting.push(p.name.clone());
                continue;
            };
            let moved = p.group.as_ref().filter(|g| **g != row.group);
            if row.name == p.name && moved.is_none() {
                answer.unchanged += 1;
                continue;
            }
            if row.name != p.name {
                self.rename(p.mac, &p.name)?;
            }
            if let Some(g) = moved {
                self.set_group(p.mac, g)?;
            }
            answer.changed.push(match moved {
                Some(g) => format!("{} → {} (group {g})", row.name, p.name),
                None => format!("{} → {}", row.name, p.name),
            });
        }
        Ok(answer)
    }

    /// Take a reloaded config (see [`crate::config::Current::reload`]); a node whose
    /// reservation is new or changed gets the name and group it names now.
    pub fn reload(&self, new: &Config) -> Reload {
        let (reload, before) = self.cfg.reload(new);
        let now = self.config();
        for r in now.reservations_changed_since(&before) {
            let Ok(Some(row)) = self.store.node(r.mac) else {
                continue;
            };
            if let Some(name) = r.name.as_deref().filter(|n| *n != row.name) {
                if let Err(e) = self.rename(r.mac, name) {
                    tracing::warn!(node = %row.name, "config reload: its reservation names it {name}: {e}");
                }
            }
            if let Some(group) = r.group.as_deref().filter(|g| *g != row.group) {
                if let Err(e) = self.set_group(r.mac, group) {
                    tracing::warn!(node = %row.name, "config reload: its reservation puts it in {group}: {e}");
                }
            }
        }
        reload
    }
}

/// An import's entries on their own: at most [`MAX_IMPORT`], host-label names and groups, no
/// MAC or name twice.
fn check_import(pcs: &[NamedPc]) -> Result<(), String> {
    if pcs.len() > MAX_IMPORT {
        return Err(format!("more than {MAX_IMPORT} PCs in one request"));
    }
    let mut macs = std::collections::HashSet::new();
    let mut names = std::collections::HashSet::new();
    for p in pcs {
        if !valid_host_label(&p.name) {
            return Err(format!(
                "{}: {:?} is not a host name (1-63 letters, digits and '-')",
                p.mac, p.name
            ));
        }
        if let Some(g) = p.group.as_deref().filter(|g| !valid_host_label(g)) {
            return Err(format!("{}: {g:?} is not a group name", p.mac));
        }
        if !macs.insert(p.mac) {
            return Err(format!("{} is listed twice", p.mac));
        }
        if !names.insert(p.name.as_str()) {
            return Err(format!("the name {} is listed twice", p.name));
        }
    }
    Ok(())
}
