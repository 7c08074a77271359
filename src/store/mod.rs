//! Durable state: DHCP leases, nodes and their event history, in one SQLite database.
//!
//! The database runs in WAL mode with `synchronous=FULL`: a lease is on disk before the ACK
//! that announces it leaves the head, so after `kill -9` (or power loss) no address is ever
//! promised to two clients. All access goes through one connection behind a mutex; callers on
//! the async runtime use [`Store::run`], which moves the work to the blocking pool.

mod leases;
mod names;
mod nodes;

use std::os::unix::fs::OpenOptionsExt;
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
    #[error(
        "database {path} has schema version {found}, newer than this enlist's {known}: a newer \
         release wrote it; run that release, or restore a backup made by this one"
    )]
    Newer {
        path: String,
        found: i64,
        known: i64,
    },
}

#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

/// Schema version 1. Never edited: a change to the tables is a new entry in [`MIGRATIONS`].
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

/// Bring the database to the version of `migrations`, in one transaction: a new database gets
/// the first schema, then every migration; a database written before versions were recorded
/// (user_version 0, tables there) is version 1. One from a newer release is refused untouched.
fn migrate(conn: &mut Connection, migrations: &[&str], path: &str) -> Result<(), StoreError> {
    let known = 1 + migrations.len() as i64;
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > known {
        return Err(StoreError::Newer {
            path: path.to_string(),
            found,
            known,
        });
    }
    let tx = conn.transaction()?;
    // Version 1 is SCHEMA; it only creates what is missing.
    tx.execute_batch(SCHEMA)?;
    for (i, m) in migrations.iter().enumerate() {
        if found.max(1) <= i as i64 + 1 {
            tx.execute_batch(m)?;
        }
    }
    tx.pragma_update(None, "user_version", known)?;
    tx.commit()?;
    Ok(())
}

/// Changes to [`SCHEMA`] since version 1, in order: `MIGRATIONS[i]` takes a database from
/// version `i + 1` to `i + 2`. A release that changes the tables appends one here (and never
/// edits an earlier one); the database records its version (`PRAGMA user_version`).
const MIGRATIONS: &[&str] = &[
    // 2: why a node is held back from the cluster (its inventory changed, or another PC
    // booted with its MAC while it was up); NULL when it is not.
    "ALTER TABLE nodes ADD COLUMN quarantine TEXT",
    // 3: Wake-on-LAN packets sent to the PC (for Slurm or a schedule) and how many woke it.
    "ALTER TABLE nodes ADD COLUMN wakes_tried INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE nodes ADD COLUMN wakes_woke INTEGER NOT NULL DEFAULT 0",
    // 4: what the PC was lent: seconds enlisted, and of those seconds running jobs.
    "ALTER TABLE nodes ADD COLUMN enlisted_secs INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE nodes ADD COLUMN job_secs INTEGER NOT NULL DEFAULT 0",
    // 5: names (and groups) the admin gave PCs by MAC (`enlist node import`), kept for PCs
    // not seen yet; a name belongs to one MAC.
    "CREATE TABLE names (
         mac  TEXT PRIMARY KEY,
         name TEXT NOT NULL UNIQUE,
         grp  TEXT
     )",
    // 6: kernel options the head found this PC needs (acpi=off for an ISA card whose IRQ the
    // node OS could not find), added to its boots.
    "ALTER TABLE nodes ADD COLUMN kernel_args TEXT NOT NULL DEFAULT ''",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 1 + MIGRATIONS.len() as i64;

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, MIGRATIONS)
    }

    fn open_with(path: &Path, migrations: &[&str]) -> Result<Store, StoreError> {
        let shown = path.display().to_string();
        let open_err = |source| StoreError::Open {
            path: shown.clone(),
            source,
        };
        // Made root-only before SQLite opens it: it holds the head's secret and the password
        // hash (SQLite gives its -wal and -shm files the database's mode).
        private_file(path).map_err(|e| StoreError::Open {
            path: shown.clone(),
            source: rusqlite::Error::InvalidParameterName(e.to_string()),
        })?;
        let conn = Connection::open(path).map_err(open_err)?;
        Store::init(conn, migrations, &shown)
    }

    /// An in-memory database, for tests.
    pub fn memory() -> Result<Store, StoreError> {
        Store::init(Connection::open_in_memory()?, MIGRATIONS, ":memory:")
    }

    fn init(conn: Connection, migrations: &[&str], path: &str) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_string(),
            source,
        };
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        let mut conn = conn;
        migrate(&mut conn, migrations, path)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// A consistent copy of the database in the new file `to`, while the head goes on serving
    /// (`VACUUM INTO` reads one snapshot; with WAL, writers are not held up).
    pub fn backup(&self, to: &Path) -> Result<(), StoreError> {
        let to = to.to_str().ok_or_else(|| StoreError::Open {
            path: to.display().to_string(),
            source: rusqlite::Error::InvalidPath(to.to_path_buf()),
        })?;
        let path = Path::new(to);
        // The copy holds the head's secret: root-only from its first byte (VACUUM INTO writes
        // into an empty file it is given).
        let made = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        if let Err(e) = made {
            return Err(StoreError::Open {
                path: to.to_string(),
                source: rusqlite::Error::InvalidParameterName(e.to_string()),
            });
        }
        let r = self.with(|c| c.execute("VACUUM INTO ?1", [to]).map(|_| ()));
        if r.is_err() {
            let _ = std::fs::remove_file(path);
        }
        r
    }

    /// Check that `backup` is an enlist database this build can open (intact, not from a newer
    /// release) and put it in place of the database at `db`. The head must be stopped (the
    /// caller holds its lock): the old file's write-ahead log is removed, not replayed into
    /// the restored one.
    pub fn restore(backup: &Path, db: &Path) -> Result<(), StoreError> {
        let shown = backup.display().to_string();
        let bad = |why: String| StoreError::Open {
            path: shown.clone(),
            source: rusqlite::Error::InvalidParameterName(why),
        };
        {
            let c = Connection::open_with_flags(backup, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(|source| StoreError::Open {
                    path: shown.clone(),
                    source,
                })?;
            let named = |source| StoreError::Open {
                path: shown.clone(),
                source,
            };
            let check: String = c
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .map_err(named)?;
            if check != "ok" {
                return Err(bad(format!("not intact: {check}")));
            }
            let version: i64 = c
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .map_err(named)?;
            if version > SCHEMA_VERSION {
                return Err(StoreError::Newer {
                    path: shown.clone(),
                    found: version,
                    known: SCHEMA_VERSION,
                });
            }
            let tables: i64 = c.query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('leases', 'nodes', 'events', 'meta')",
                [],
                |r| r.get(0),
            ).map_err(named)?;
            if tables != 4 {
                return Err(bad(
                    "not an enlist database (no leases/nodes/events/meta)".into()
                ));
            }
        }
        let io = |e: std::io::Error| bad(e.to_string());
        let tmp = db.with_extension("db.restoring");
        // Root-only whatever the backup's own mode (std::fs::copy would keep it).
        let _ = std::fs::remove_file(&tmp);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        std::io::copy(&mut std::fs::File::open(backup).map_err(io)?, &mut out).map_err(io)?;
        out.sync_all().map_err(io)?;
        for stale in ["db-wal", "db-shm"] {
            match std::fs::remove_file(db.with_extension(stale)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
                _ => {}
            }
        }
        std::fs::rename(&tmp, db).map_err(io)?;
        Ok(())
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

/// Replace the file at `path` with `bytes` so that a reader, or a crash, sees the old file or
/// the new one, never a part: a hidden temporary file beside it, fsynced, then renamed over it.
pub fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("no file name"))?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The state folder, readable by root only (it holds every secret of the head): made 0700,
/// or tightened to 0700 (with a warning) when it exists with more.
pub fn private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !path.exists() {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::DirBuilder::new().mode(0o700).create(path)?;
    }
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            "{}: mode {mode:o} let others read the head's secrets; made it 0700",
            path.display()
        );
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// A file readable by root only: made empty with mode 0600 if missing, tightened if looser.
pub fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod schema_tests {
    use super::*;

    fn temp_db(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("enlist-schema-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir.join("enlist.db")
    }

    fn counts(s: &Store) -> (i64, i64, i64) {
        s.with(|c| {
            let n = |t: &str| c.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0));
            Ok((n("leases")?, n("nodes")?, n("events")?))
        })
        .expect("counts")
    }

    #[test]
    fn the_next_schema_upgrades_a_database_of_this_release_and_keeps_every_row() {
        let path = temp_db("upgrade");
        let s = Store::open(&path).expect("open");
        s.with(|c| {
            c.execute_batch(
                "INSERT INTO leases VALUES (167837796, '52:54:00:77:01:01', 'bound', 2000000000, 'pc1');
                 INSERT INTO nodes (mac, name, grp, state, created) VALUES ('52:54:00:77:01:01', 'node-770101', 'default', 'healthy', 1);
                 INSERT INTO events (mac, ts, kind, detail) VALUES ('52:54:00:77:01:01', 1, 'state', 'seen');",
            )
        })
        .expect("rows");
        drop(s);
        // The next release adds a column.
        let next: Vec<&str> = MIGRATIONS
            .iter()
            .copied()
            .chain(["ALTER TABLE nodes ADD COLUMN room TEXT"])
            .collect();
        let s = Store::open_with(&path, &next).expect("upgraded");
        assert_eq!(
            counts(&s),
            (1, 1, 1),
            "every lease, node and event is still there"
        );
        let (version, room): (i64, Option<String>) = s
            .with(|c| {
                let v = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
                let room = c.query_row("SELECT room FROM nodes", [], |r| r.get(0))?;
                Ok((v, room))
            })
            .expect("read");
        assert_eq!((version, room), (SCHEMA_VERSION + 1, None));
        drop(s);
        // Opened again by the next release: nothing to do, nothing lost.
        let s = Store::open_with(&path, &next).expect("again");
        assert_eq!(counts(&s), (1, 1, 1));
        drop(s);
        // And this release refuses the newer database, leaving it as it is.
        let e = Store::open(&path).err().expect("refused");
        assert!(
            e.to_string().contains(&format!(
                "schema version {}, newer than this enlist's {SCHEMA_VERSION}",
                SCHEMA_VERSION + 1
            )),
            "{e}"
        );
        let s = Store::open_with(&path, &next).expect("still there");
        assert_eq!(counts(&s), (1, 1, 1));
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn a_database_from_before_versions_is_version_one() {
        let path = temp_db("unversioned");
        let c = Connection::open(&path).expect("open");
        c.execute_batch(SCHEMA).expect("old schema");
        c.execute_batch("INSERT INTO meta VALUES ('head_secret', 'x')")
            .expect("row");
        drop(c);
        let s = Store::open(&path).expect("open");
        let (v, secret): (i64, String) = s
            .with(|c| {
                Ok((
                    c.pragma_query_value(None, "user_version", |r| r.get(0))?,
                    c.query_row("SELECT value FROM meta", [], |r| r.get(0))?,
                ))
            })
            .expect("read");
        assert_eq!((v, secret.as_str()), (SCHEMA_VERSION, "x"));
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn a_backup_taken_while_writing_restores_every_row_it_had() {
        let path = temp_db("backup");
        let s = Store::open(&path).expect("open");
        s.with(|c| {
            c.execute_batch(
                "INSERT INTO nodes (mac, name, grp, state, created) VALUES ('52:54:00:77:01:01', 'node-770101', 'default', 'healthy', 1)",
            )
        })
        .expect("row");
        // Writes go on while the backup is taken.
        let writer = {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    s.with(|c| {
                        c.execute(
                            "INSERT INTO leases VALUES (?1, '52:54:00:00:00:01', 'bound', 2000000000, NULL)",
                            [167837696 + i],
                        )
                    })
                    .expect("lease");
                }
            })
        };
        let copy = path.with_file_name("backup.db");
        s.backup(&copy).expect("backup");
        writer.join().expect("writer");
        let (_, nodes_then, _) = counts(&Store::open(&copy).expect("copy"));
        assert_eq!(nodes_then, 1);
        let leases_in_copy = counts(&Store::open(&copy).expect("copy")).0;
        drop(s);

        // Restored over the live database (its WAL dropped, not replayed into the copy).
        Store::restore(&copy, &path).expect("restore");
        let s = Store::open(&path).expect("restored");
        assert_eq!(counts(&s), (leases_in_copy, 1, 0));

        // Not a database, or a newer one: refused, nothing replaced.
        let junk = path.with_file_name("junk.db");
        std::fs::write(&junk, b"not sqlite at all").expect("junk");
        assert!(Store::restore(&junk, &path).is_err());
        assert_eq!(counts(&s).1, 1);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    /// `tests/fixtures/store/schema-v1.db`: a database of this release (schema 1, made by
    /// `enlist admin set-password`, then two leases, two nodes and three events). Every
    /// release must open it, upgrade it and keep every row.
    #[test]
    fn the_committed_schema_1_database_opens_and_upgrades_with_every_row() {
        let path = temp_db("fixture");
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/store/schema-v1.db"
        );
        std::fs::copy(fixture, &path).expect("copy");
        let s = Store::open(&path).expect("this release opens it");
        assert_eq!(counts(&s), (2, 2, 3));
        drop(s);
        let next: Vec<&str> = MIGRATIONS
            .iter()
            .copied()
            .chain(["ALTER TABLE events ADD COLUMN who TEXT"])
            .collect();
        let s = Store::open_with(&path, &next).expect("the next release upgrades it");
        assert_eq!(counts(&s), (2, 2, 3));
        let names: Vec<String> = s
            .with(|c| {
                let mut st = c.prepare("SELECT name FROM nodes ORDER BY name")?;
                let rows = st.query_map([], |r| r.get(0))?;
                rows.collect()
            })
            .expect("names");
        assert_eq!(names, ["node-770101", "node-770102"]);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }
}
