//! Durable state: DHCP leases, nodes and their event history, in one SQLite database.
//!
//! The database runs in WAL mode with `synchronous=FULL`: a lease is on disk before the ACK
//! that announces it leaves the head, so after `kill -9` (or power loss) no address is ever
//! promised to two clients. All access goes through one connection behind a mutex; callers on
//! the async runtime use [`Store::run`], which moves the work to the blocking pool.

mod leases;
mod nodes;

use std::path::Path;
use std::sync::{Arc, Mutex};

use std::net::Ipv4Addr;

use enlist_api::Mac;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::Connection;

use crate::lifecycle::NodeState;

pub use leases::{Lease, LeaseBatch, LeaseState, OfferRequest, PoolRange};
pub use nodes::{EventRow, NodeRow};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database commit failed, nothing of the batch was saved: {0}")]
    Commit(String),
    #[error("database task failed: {0}")]
    Join(String),
}

#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    ip       INTEGER PRIMARY KEY,
    mac      TEXT NOT NULL,
    state    TEXT NOT NULL,
    expires  INTEGER NOT NULL,
    hostname TEXT
);
CREATE INDEX IF NOT EXISTS leases_mac ON leases(mac);
CREATE TABLE IF NOT EXISTS nodes (
    mac          TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    grp          TEXT NOT NULL,
    state        TEXT NOT NULL,
    ip           TEXT,
    info         TEXT,
    heartbeat    TEXT,
    last_seen    INTEGER,
    first_dhcp   INTEGER,
    boot_seconds REAL,
    key_epoch    INTEGER NOT NULL DEFAULT 0,
    released     INTEGER NOT NULL DEFAULT 0,
    approved     INTEGER NOT NULL DEFAULT 0,
    created      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    mac    TEXT NOT NULL,
    ts     INTEGER NOT NULL,
    kind   TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_mac ON events(mac, id);
"#;

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        Store::init(conn).map_err(open_err)
    }

    /// An in-memory database, for tests.
    pub fn memory() -> Result<Store, StoreError> {
        Ok(Store::init(Connection::open_in_memory()?)?)
    }

    fn init(conn: Connection) -> Result<Store, rusqlite::Error> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Run `f` with the connection, on the calling thread.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, rusqlite::Error>,
    ) -> Result<T, StoreError> {
        // A poisoned lock means a panic while holding it; SQLite rolled back any open
        // transaction, so the connection itself is still sound.
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f(&mut conn)?)
    }

    /// Run `f` with the connection on tokio's blocking pool.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.with(f))
            .await
            .map_err(|e| StoreError::Join(e.to_string()))?
    }

    /// A value from the meta table, created by `init` on first use (e.g. the head's secret).
    pub fn meta_or_insert(
        &self,
        key: &str,
        init: impl FnOnce() -> String,
    ) -> Result<String, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let existing: Option<String> = tx
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .ok();
            let value = match existing {
                Some(v) => v,
                None => {
                    let v = init();
                    tx.execute("INSERT INTO meta(key, value) VALUES (?1, ?2)", (key, &v))?;
                    v
                }
            };
            tx.commit()?;
            Ok(value)
        })
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )?;
            Ok(())
        })
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            use rusqlite::OptionalExtension;
            c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
        })
    }
}

/// Values stored as text: MACs in colon form, states by name, addresses dotted. A value that
/// does not parse is reported as a conversion error naming it, never guessed.
pub(super) struct Text<T>(pub T);

fn from_text<T>(v: ValueRef<'_>, parse: impl FnOnce(&str) -> Option<T>) -> FromSqlResult<T> {
    let s = v.as_str()?;
    parse(s).ok_or_else(|| FromSqlError::Other(format!("unreadable value {s:?}").into()))
}

impl FromSql for Text<Mac> {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        from_text(v, Mac::parse).map(Text)
    }
}

impl FromSql for Text<NodeState> {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        from_text(v, NodeState::parse).map(Text)
    }
}

impl FromSql for Text<Ipv4Addr> {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        from_text(v, |s| s.parse().ok()).map(Text)
    }
}

impl ToSql for Text<&Mac> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0.to_string()))
    }
}

pub(super) fn mac_sql(m: &Mac) -> Text<&Mac> {
    Text(m)
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
