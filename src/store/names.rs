//! Names the admin gave PCs by MAC (`enlist node import`): what a PC is called, and its
//! group, when it first boots. A name belongs to one MAC: giving it to another moves it.

use enlist_api::admin::NamedPc;
use rusqlite::params;

use super::{mac_sql, Store, StoreError, Text};

impl Store {
    /// Every imported name.
    pub fn names(&self) -> Result<Vec<NamedPc>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare("SELECT mac, name, grp FROM names ORDER BY name")?;
            let rows = st.query_map([], |r| {
                Ok(NamedPc {
                    mac: r.get::<_, Text<enlist_api::Mac>>(0)?.0,
                    name: r.get(1)?,
                    group: r.get(2)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Record `pcs` in one transaction: each MAC's entry replaced, and a name another MAC
    /// had taken from it.
    pub fn put_names(&self, pcs: &[NamedPc]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            for p in pcs {
                tx.execute(
                    "DELETE FROM names WHERE name = ?1 AND mac != ?2",
                    params![p.name, mac_sql(&p.mac)],
                )?;
                tx.execute(
                    "INSERT INTO names(mac, name, grp) VALUES (?1, ?2, ?3)
                     ON CONFLICT(mac) DO UPDATE SET name = excluded.name, grp = excluded.grp",
                    params![mac_sql(&p.mac), p.name, p.group],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pc(mac: &str, name: &str, group: Option<&str>) -> NamedPc {
        NamedPc {
            mac: mac.parse().unwrap(),
            name: name.into(),
            group: group.map(Into::into),
        }
    }

    #[test]
    fn names_are_kept_by_mac_and_a_name_given_again_moves() {
        let s = Store::memory().unwrap();
        let a = pc("52:54:00:00:00:01", "lab101-01", Some("lab101"));
        let b = pc("52:54:00:00:00:02", "lab101-02", None);
        s.put_names(&[a.clone(), b]).unwrap();
        assert_eq!(s.names().unwrap().len(), 2);
        // The second PC takes the first's name; the first gets another.
        let b2 = pc("52:54:00:00:00:02", "lab101-01", Some("lab101"));
        s.put_names(std::slice::from_ref(&b2)).unwrap();
        assert_eq!(
            s.names().unwrap(),
            std::slice::from_ref(&b2),
            "a's entry lost its name to b"
        );
        let a2 = pc("52:54:00:00:00:01", "lab101-09", None);
        s.put_names(std::slice::from_ref(&a2)).unwrap();
        assert_eq!(s.names().unwrap(), [b2, a2]);
    }
}
