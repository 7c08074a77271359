//! Node rows and their bounded event history.

use std::net::Ipv4Addr;

use enlist_api::Mac;
use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use crate::lifecycle::NodeState;

use super::{mac_sql, Store, StoreError, Text};

/// Events kept per node; older ones are pruned as new ones arrive.
pub const EVENTS_PER_NODE: i64 = 200;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeRow {
    pub mac: Mac,
    pub name: String,
    pub group: String,
    pub state: NodeState,
    pub ip: Option<Ipv4Addr>,
    /// JSON of `enlist_api::NodeInfo`, once the agent registered.
    pub info: Option<String>,
    /// JSON of the last `enlist_api::Heartbeat`.
    pub heartbeat: Option<String>,
    pub last_seen: Option<i64>,
    /// When the current boot began (first DHCP packet), for the boot-duration histogram.
    pub first_dhcp: Option<i64>,
    pub boot_seconds: Option<f64>,
    /// Bumped to revoke the node's key (re-enlisting gets a fresh one).
    pub key_epoch: i64,
    pub released: bool,
    pub approved: bool,
    pub created: i64,
    /// Why it is held back (not approved) though it was a node: its inventory changed, or
    /// another PC booted with its MAC while it was up. Cleared by an admin's approval.
    pub quarantine: Option<String>,
    /// Magic packets sent to wake it, and how many of those it answered by registering.
    pub wakes_tried: u32,
    pub wakes_woke: u32,
    /// Seconds it was lent to the cluster (its node OS up: registered, healthy, draining),
    /// and of those, seconds it ran jobs. Added to by [`Store::add_lent`] only: saving a
    /// row never writes them (a row read before a flush would undo it).
    pub enlisted_secs: u64,
    pub job_secs: u64,
    /// Kernel options its boots get besides the image's and `images.cmdline` (a fix the head
    /// found for its hardware, see `registry::boot`); empty for most PCs.
    pub kernel_args: String,
}

/// A row of the events table is what the API shows of an event.
pub use enlist_api::admin::Event as EventRow;

impl NodeRow {
    /// Whether its node OS reported a CPU with long mode (the `lm` flag): such a PC can boot
    /// the 64-bit image, whose kernel has the drivers of the last 25 years' cards.
    pub fn cpu_64bit(&self) -> bool {
        #[derive(serde::Deserialize)]
        struct Flags {
            #[serde(default)]
            cpu_flags: Vec<String>,
        }
        self.info
            .as_deref()
            .and_then(|i| serde_json::from_str::<Flags>(i).ok())
            .is_some_and(|f| f.cpu_flags.iter().any(|f| f == "lm"))
    }

    /// Its memory (kB, as Linux counts it) and cores, from the inventory its agent reported.
    pub fn memory_and_cores(&self) -> Option<(u64, u32)> {
        #[derive(serde::Deserialize)]
        struct Inventory {
            mem_total_kb: u64,
            cores: u32,
        }
        let i: Inventory = serde_json::from_str(self.info.as_deref()?).ok()?;
        Some((i.mem_total_kb, i.cores))
    }
}

const NODE_COLS: &str = "mac, name, grp, state, ip, info, heartbeat, last_seen, first_dhcp, boot_seconds, key_epoch, released, approved, created, quarantine, wakes_tried, wakes_woke, enlisted_secs, job_secs, kernel_args";

fn node_from_row(r: &rusqlite::Row) -> rusqlite::Result<NodeRow> {
    Ok(NodeRow {
        mac: r.get::<_, Text<Mac>>(0)?.0,
        name: r.get(1)?,
        group: r.get(2)?,
        state: r.get::<_, Text<NodeState>>(3)?.0,
        ip: r.get::<_, Option<Text<Ipv4Addr>>>(4)?.map(|t| t.0),
        info: r.get(5)?,
        heartbeat: r.get(6)?,
        last_seen: r.get(7)?,
        first_dhcp: r.get(8)?,
        boot_seconds: r.get(9)?,
        key_epoch: r.get(10)?,
        released: r.get(11)?,
        approved: r.get(12)?,
        created: r.get(13)?,
        quarantine: r.get(14)?,
        wakes_tried: r.get(15)?,
        wakes_woke: r.get(16)?,
        enlisted_secs: r.get(17)?,
        job_secs: r.get(18)?,
        kernel_args: r.get(19)?,
    })
}

fn event_from_row(r: &rusqlite::Row) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        id: r.get(0)?,
        mac: r.get::<_, Text<Mac>>(1)?.0,
        ts: r.get(2)?,
        kind: r.get(3)?,
        detail: r.get(4)?,
    })
}

impl Store {
    pub fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!("SELECT {NODE_COLS} FROM nodes ORDER BY name"))?;
            let rows = st.query_map([], node_from_row)?;
            rows.collect()
        })
    }

    pub fn node(&self, mac: Mac) -> Result<Option<NodeRow>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {NODE_COLS} FROM nodes WHERE mac = ?1"),
                [mac_sql(&mac)],
                node_from_row,
            )
            .optional()
        })
    }

    /// Add time lent (seconds enlisted, seconds running jobs) to nodes' totals, in one
    /// transaction. A MAC with no row is skipped.
    pub fn add_lent(&self, lent: &[(Mac, u64, u64)]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            for (mac, enlisted, jobs) in lent {
                tx.execute(
                    "UPDATE nodes SET enlisted_secs = enlisted_secs + ?2, job_secs = job_secs + ?3 WHERE mac = ?1",
                    params![mac_sql(mac), enlisted, jobs],
                )?;
            }
            tx.commit()
        })
    }

    /// Write a node row and, in the same transaction, the event that explains the change.
    pub fn save_node(
        &self,
        n: &NodeRow,
        event: Option<(&str, &str)>,
        ts: i64,
    ) -> Result<Option<EventRow>, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                &format!(
                    "INSERT INTO nodes({NODE_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20)
                     ON CONFLICT(mac) DO UPDATE SET name=excluded.name, grp=excluded.grp, state=excluded.state,
                       ip=excluded.ip, info=excluded.info, heartbeat=excluded.heartbeat, last_seen=excluded.last_seen,
                       first_dhcp=excluded.first_dhcp, boot_seconds=excluded.boot_seconds, key_epoch=excluded.key_epoch,
                       released=excluded.released, approved=excluded.approved, quarantine=excluded.quarantine,
                       wakes_tried=excluded.wakes_tried, wakes_woke=excluded.wakes_woke,
                       kernel_args=excluded.kernel_args"
                ),
                params![
                    mac_sql(&n.mac), n.name, n.group, n.state.as_str(), n.ip.map(|i| i.to_string()),
                    n.info, n.heartbeat, n.last_seen, n.first_dhcp, n.boot_seconds, n.key_epoch,
                    n.released, n.approved, n.created, n.quarantine, n.wakes_tried, n.wakes_woke,
                    n.enlisted_secs, n.job_secs, n.kernel_args
                ],
            )?;
            let ev = match event {
                Some((kind, detail)) => {
                    tx.execute(
                        "INSERT INTO events(mac, ts, kind, detail) VALUES (?1, ?2, ?3, ?4)",
                        params![mac_sql(&n.mac), ts, kind, detail],
                    )?;
                    let id = tx.last_insert_rowid();
                    tx.execute(
                        "DELETE FROM events WHERE mac = ?1 AND id <= ?2 - ?3
                           AND id NOT IN (SELECT id FROM events WHERE mac = ?1 ORDER BY id DESC LIMIT ?3)",
                        params![mac_sql(&n.mac), id, EVENTS_PER_NODE],
                    )?;
                    Some(EventRow { id, mac: n.mac, ts, kind: kind.into(), detail: detail.into() })
                }
                None => None,
            };
            tx.commit()?;
            Ok(ev)
        })
    }

    /// Delete a node's row, writing `detail` as its `forgotten` event in the same
    /// transaction (its history stays: the events of a MAC outlive its node). Its lease is
    /// left to expire: the PC may be using the address under its own OS. The event, or None
    /// when there was no such node.
    pub fn delete_node(
        &self,
        mac: Mac,
        detail: &str,
        ts: i64,
    ) -> Result<Option<EventRow>, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            if tx.execute("DELETE FROM nodes WHERE mac = ?1", [mac_sql(&mac)])? == 0 {
                return Ok(None);
            }
            tx.execute(
                "INSERT INTO events(mac, ts, kind, detail) VALUES (?1, ?2, 'forgotten', ?3)",
                params![mac_sql(&mac), ts, detail],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(Some(EventRow {
                id,
                mac,
                ts,
                kind: "forgotten".into(),
                detail: detail.into(),
            }))
        })
    }

    /// Write many new node rows in one transaction (tools: a benchmark's simulated nodes, a
    /// restore). Rows that exist are left as they are.
    pub fn insert_nodes(&self, rows: &[NodeRow]) -> Result<usize, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let mut n = 0;
            {
                let mut st = tx.prepare(&format!(
                    "INSERT OR IGNORE INTO nodes({NODE_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20)"
                ))?;
                for r in rows {
                    n += st.execute(params![
                        mac_sql(&r.mac), r.name, r.group, r.state.as_str(), r.ip.map(|i| i.to_string()),
                        r.info, r.heartbeat, r.last_seen, r.first_dhcp, r.boot_seconds, r.key_epoch,
                        r.released, r.approved, r.created, r.quarantine, r.wakes_tried, r.wakes_woke,
                        r.enlisted_secs, r.job_secs, r.kernel_args
                    ])?;
                }
            }
            tx.commit()?;
            Ok(n)
        })
    }

    /// Whether another node already has `name`.
    pub fn name_taken(&self, name: &str, except_mac: Mac) -> Result<bool, StoreError> {
        self.with(|c| {
            let n: i64 = c.query_row(
                "SELECT COUNT(*) FROM nodes WHERE name = ?1 AND mac != ?2",
                params![name, mac_sql(&except_mac)],
                |r| r.get(0),
            )?;
            Ok(n > 0)
        })
    }

    pub fn events_of(&self, mac: Mac, limit: i64) -> Result<Vec<EventRow>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, mac, ts, kind, detail FROM events WHERE mac = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = st.query_map(params![mac_sql(&mac), limit], event_from_row)?;
            rows.collect()
        })
    }

    pub fn recent_events(&self, limit: i64) -> Result<Vec<EventRow>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, mac, ts, kind, detail FROM events ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = st.query_map([limit], event_from_row)?;
            rows.collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> Mac {
        Mac([2, 0, 0, 0, 0, n])
    }

    fn node(n: u8) -> NodeRow {
        NodeRow {
            mac: mac(n),
            name: format!("n-{n}"),
            group: "g".into(),
            state: NodeState::Seen,
            ip: None,
            info: None,
            heartbeat: None,
            last_seen: None,
            first_dhcp: None,
            boot_seconds: None,
            key_epoch: 0,
            released: false,
            approved: false,
            created: 1,
            quarantine: None,
            wakes_tried: 0,
            wakes_woke: 0,
            enlisted_secs: 0,
            job_secs: 0,
            kernel_args: String::new(),
        }
    }

    #[test]
    fn time_lent_adds_up_and_saving_a_row_read_earlier_does_not_undo_it() {
        let s = Store::memory().unwrap();
        let earlier = node(1);
        s.save_node(&earlier, None, 0).unwrap();
        s.add_lent(&[(mac(1), 60, 20), (mac(9), 5, 5)]).unwrap();
        s.add_lent(&[(mac(1), 30, 0)]).unwrap();
        // A row read before the flush, saved after it (a state change racing the sweep).
        let mut stale = earlier.clone();
        stale.state = NodeState::Healthy;
        s.save_node(&stale, None, 1).unwrap();
        let row = s.node(mac(1)).unwrap().unwrap();
        assert_eq!((row.enlisted_secs, row.job_secs), (90, 20));
        assert_eq!(row.state, NodeState::Healthy);
        assert!(
            s.node(mac(9)).unwrap().is_none(),
            "no row made for an unknown node"
        );
    }

    #[test]
    fn event_history_is_bounded_per_node() {
        let s = Store::memory().unwrap();
        let n = node(1);
        for i in 0..(EVENTS_PER_NODE + 50) {
            s.save_node(&n, Some(("tick", &i.to_string())), i).unwrap();
        }
        s.save_node(&node(2), Some(("other", "")), 0).unwrap();
        let evs = s.events_of(mac(1), 1000).unwrap();
        assert_eq!(evs.len() as i64, EVENTS_PER_NODE);
        assert_eq!(
            evs[0].detail,
            (EVENTS_PER_NODE + 49).to_string(),
            "newest first"
        );
        assert_eq!(s.events_of(mac(2), 1000).unwrap().len(), 1);
    }

    #[test]
    fn node_round_trip() {
        let s = Store::memory().unwrap();
        let mut n = node(1);
        n.ip = Some(Ipv4Addr::new(10, 0, 0, 1));
        n.released = true;
        n.state = NodeState::Healthy;
        s.save_node(&n, None, 0).unwrap();
        assert_eq!(s.node(mac(1)).unwrap(), Some(n));
        assert!(s.name_taken("n-1", mac(2)).unwrap());
        assert!(!s.name_taken("n-1", mac(1)).unwrap());
    }

    #[test]
    fn an_unreadable_stored_state_is_an_error_naming_it() {
        let s = Store::memory().unwrap();
        s.save_node(&node(1), None, 0).unwrap();
        s.with(|c| c.execute("UPDATE nodes SET state = 'bogus'", []))
            .unwrap();
        let err = s.node(mac(1)).unwrap_err().to_string();
        assert!(err.contains("\"bogus\""), "{err}");
    }
}
