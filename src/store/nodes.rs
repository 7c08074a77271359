//! Node rows and their bounded event history.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{Store, StoreError};

/// Events kept per node; older ones are pruned as new ones arrive.
pub const EVENTS_PER_NODE: i64 = 200;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeRow {
    pub mac: String,
    pub name: String,
    pub group: String,
    pub state: String,
    pub ip: Option<String>,
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
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventRow {
    pub id: i64,
    pub mac: String,
    pub ts: i64,
    pub kind: String,
    pub detail: String,
}

const NODE_COLS: &str = "mac, name, grp, state, ip, info, heartbeat, last_seen, first_dhcp, boot_seconds, key_epoch, released, approved, created";

fn node_from_row(r: &rusqlite::Row) -> rusqlite::Result<NodeRow> {
    Ok(NodeRow {
        mac: r.get(0)?,
        name: r.get(1)?,
        group: r.get(2)?,
        state: r.get(3)?,
        ip: r.get(4)?,
        info: r.get(5)?,
        heartbeat: r.get(6)?,
        last_seen: r.get(7)?,
        first_dhcp: r.get(8)?,
        boot_seconds: r.get(9)?,
        key_epoch: r.get(10)?,
        released: r.get(11)?,
        approved: r.get(12)?,
        created: r.get(13)?,
    })
}

fn event_from_row(r: &rusqlite::Row) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        id: r.get(0)?,
        mac: r.get(1)?,
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

    pub fn node(&self, mac: &str) -> Result<Option<NodeRow>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {NODE_COLS} FROM nodes WHERE mac = ?1"),
                [mac],
                node_from_row,
            )
            .optional()
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
                    "INSERT INTO nodes({NODE_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14)
                     ON CONFLICT(mac) DO UPDATE SET name=excluded.name, grp=excluded.grp, state=excluded.state,
                       ip=excluded.ip, info=excluded.info, heartbeat=excluded.heartbeat, last_seen=excluded.last_seen,
                       first_dhcp=excluded.first_dhcp, boot_seconds=excluded.boot_seconds, key_epoch=excluded.key_epoch,
                       released=excluded.released, approved=excluded.approved"
                ),
                params![
                    n.mac, n.name, n.group, n.state, n.ip, n.info, n.heartbeat, n.last_seen,
                    n.first_dhcp, n.boot_seconds, n.key_epoch, n.released, n.approved, n.created
                ],
            )?;
            let ev = match event {
                Some((kind, detail)) => {
                    tx.execute(
                        "INSERT INTO events(mac, ts, kind, detail) VALUES (?1, ?2, ?3, ?4)",
                        params![n.mac, ts, kind, detail],
                    )?;
                    let id = tx.last_insert_rowid();
                    tx.execute(
                        "DELETE FROM events WHERE mac = ?1 AND id <= ?2 - ?3
                           AND id NOT IN (SELECT id FROM events WHERE mac = ?1 ORDER BY id DESC LIMIT ?3)",
                        params![n.mac, id, EVENTS_PER_NODE],
                    )?;
                    Some(EventRow { id, mac: n.mac.clone(), ts, kind: kind.into(), detail: detail.into() })
                }
                None => None,
            };
            tx.commit()?;
            Ok(ev)
        })
    }

    /// Whether another node already has `name`.
    pub fn name_taken(&self, name: &str, except_mac: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            let n: i64 = c.query_row(
                "SELECT COUNT(*) FROM nodes WHERE name = ?1 AND mac != ?2",
                params![name, except_mac],
                |r| r.get(0),
            )?;
            Ok(n > 0)
        })
    }

    pub fn events_of(&self, mac: &str, limit: i64) -> Result<Vec<EventRow>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, mac, ts, kind, detail FROM events WHERE mac = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = st.query_map(params![mac, limit], event_from_row)?;
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

    fn node(mac: &str) -> NodeRow {
        NodeRow {
            mac: mac.into(),
            name: format!("n-{mac}"),
            group: "g".into(),
            state: "seen".into(),
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
        }
    }

    #[test]
    fn event_history_is_bounded_per_node() {
        let s = Store::memory().unwrap();
        let n = node("a");
        for i in 0..(EVENTS_PER_NODE + 50) {
            s.save_node(&n, Some(("tick", &i.to_string())), i).unwrap();
        }
        s.save_node(&node("b"), Some(("other", "")), 0).unwrap();
        let evs = s.events_of("a", 1000).unwrap();
        assert_eq!(evs.len() as i64, EVENTS_PER_NODE);
        assert_eq!(
            evs[0].detail,
            (EVENTS_PER_NODE + 49).to_string(),
            "newest first"
        );
        assert_eq!(s.events_of("b", 1000).unwrap().len(), 1);
    }

    #[test]
    fn node_round_trip() {
        let s = Store::memory().unwrap();
        let mut n = node("a");
        n.ip = Some("10.0.0.1".into());
        n.released = true;
        s.save_node(&n, None, 0).unwrap();
        assert_eq!(s.node("a").unwrap(), Some(n));
        assert!(s.name_taken("n-a", "b").unwrap());
        assert!(!s.name_taken("n-a", "a").unwrap());
    }
}
