//! `SIGHUP` (`systemctl reload enlist`): what a running head takes from its config file again
//! without dropping a lease or a node, and what waits for a restart.
//!
//! Reloaded: the reservations (`dhcp.subnets[].reservations`: addresses, names, groups,
//! images), `nodes.enrollment` and `nodes.name_pattern`. Everything else is read once at
//! start (sockets, pools, the jobs' daemons, schedules): a reload that changes it says which
//! sections wait for a restart and keeps them as they were.

use std::sync::{Arc, RwLock};

use super::Config;

/// The config the registry and the DHCP server read, swapped whole on reload: each request
/// sees one config from start to end.
#[derive(Debug)]
pub struct Current(RwLock<Arc<Config>>);

impl Current {
    pub fn new(cfg: Arc<Config>) -> Current {
        Current(RwLock::new(cfg))
    }

    /// The config now.
    pub fn get(&self) -> Arc<Config> {
        match self.0.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, cfg: Arc<Config>) {
        match self.0.write() {
            Ok(mut c) => *c = cfg,
            Err(poisoned) => *poisoned.into_inner() = cfg,
        }
    }

    /// Take what can change from `new` (see the module doc); returns what changed, and the
    /// config before, to act on the difference (nodes renamed by a new reservation).
    pub fn reload(&self, new: &Config) -> (Reload, Arc<Config>) {
        let old = self.get();
        let (merged, reload) = old.reloaded(new);
        self.set(Arc::new(merged));
        (reload, old)
    }
}

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reload {
    /// Keys taken from the file (changed ones only).
    pub applied: Vec<&'static str>,
    /// Sections that changed in the file and keep their old values until a restart.
    pub restart: Vec<&'static str>,
}

impl Config {
    /// `self` with the reloadable keys taken from `new`, and what changed.
    pub fn reloaded(&self, new: &Config) -> (Config, Reload) {
        let mut merged = self.clone();
        let mut reload = Reload::default();
        let same_subnets = self.dhcp.subnets.len() == new.dhcp.subnets.len()
            && self
                .dhcp
                .subnets
                .iter()
                .zip(&new.dhcp.subnets)
                .all(|(a, b)| a.subnet == b.subnet);
        if same_subnets {
            for (m, n) in merged.dhcp.subnets.iter_mut().zip(&new.dhcp.subnets) {
                m.reservations.clone_from(&n.reservations);
            }
            merged.index_reservations();
        }
        if merged.reservations != self.reservations {
            reload.applied.push("dhcp.subnets[].reservations");
        }
        if new.nodes.enrollment != self.nodes.enrollment {
            merged.nodes.enrollment = new.nodes.enrollment;
            reload.applied.push("nodes.enrollment");
        }
        if new.nodes.name_pattern != self.nodes.name_pattern {
            merged
                .nodes
                .name_pattern
                .clone_from(&new.nodes.name_pattern);
            reload.applied.push("nodes.name_pattern");
        }
        merged.source = new.source.clone();
        reload.restart = merged.differences(new);
        (merged, reload)
    }

    /// The sections where `other` differs from `self`. Compared by their `Debug` text: every
    /// section is plain data (no map whose order varies), and a new key cannot be forgotten
    /// here as it could in a field-by-field comparison.
    fn differences(&self, other: &Config) -> Vec<&'static str> {
        let differs =
            |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
        [
            ("state_dir", differs(&self.state_dir, &other.state_dir)),
            ("http", differs(&self.http, &other.http)),
            ("tftp", differs(&self.tftp, &other.tftp)),
            ("dhcp", differs(&self.dhcp, &other.dhcp)),
            ("images", differs(&self.images, &other.images)),
            ("nodes", differs(&self.nodes, &other.nodes)),
            ("admin", differs(&self.admin, &other.admin)),
            ("jobs", differs(&self.jobs, &other.jobs)),
            ("schedules", differs(&self.schedules, &other.schedules)),
        ]
        .into_iter()
        .filter_map(|(name, d)| d.then_some(name))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(extra_reservation: &str, nodes: &str, lease: &str) -> Config {
        let text = format!(
            "http: {{ listen: 127.0.0.1:0, public_url: http://10.9.0.1:8080 }}\n\
             images: {{ dir: /nonexistent, bios: i586 }}\n\
             dhcp:\n  interfaces: [{{ name: lab0, mode: dhcp }}]\n  subnets:\n\
             \x20   - subnet: 10.9.0.0/24\n      pool: [10.9.0.100, 10.9.0.200]\n      lease_time: {lease}\n\
             \x20     reservations:\n        - {{ mac: \"52:54:00:00:00:01\", ip: 10.9.0.10, name: pc-1 }}\n{extra_reservation}\
             nodes: {{ {nodes} }}\n"
        );
        Config::parse(&text, Path::new("enlist.yaml")).unwrap()
    }

    #[test]
    fn a_reload_takes_reservations_enrollment_and_the_name_pattern_and_names_what_waits() {
        let old = config("", "enrollment: approve", "1h");
        let cur = Current::new(Arc::new(old));
        let new = config(
            "        - { mac: \"52:54:00:00:00:02\", ip: 10.9.0.11, name: pc-2, group: r2 }\n",
            "enrollment: known-macs, name_pattern: \"pc-{index:02}\"",
            "2h",
        );
        let mac2 = "52:54:00:00:00:02".parse().unwrap();
        let (reload, before) = cur.reload(&new);
        assert_eq!(
            reload.applied,
            [
                "dhcp.subnets[].reservations",
                "nodes.enrollment",
                "nodes.name_pattern"
            ]
        );
        assert_eq!(
            reload.restart,
            ["dhcp"],
            "the lease time waits for a restart"
        );
        assert!(before.reservation_for(mac2).is_none());
        let now = cur.get();
        assert_eq!(
            now.reservation_for(mac2).and_then(|r| r.name.as_deref()),
            Some("pc-2")
        );
        assert!(now.reserved_ip("10.9.0.11".parse().unwrap()));
        assert_eq!(now.dhcp.subnets[0].lease_time.as_secs(), 3600, "kept");
        assert_eq!(now.nodes.enrollment, super::super::Enrollment::KnownMacs);

        let (again, _) = cur.reload(&new);
        assert!(again.applied.is_empty(), "nothing new: {again:?}");
        assert_eq!(again.restart, ["dhcp"], "still waiting");
    }
}
