//! The cluster's munge key: whoever holds it can forge Slurm credentials for any user, root
//! included. Made once (1024 random bytes, 0400) in the state folder; replaced by
//! `enlist jobs rotate-key` and at each schedule window's start, so a key copied from a node
//! is worthless after the next rotation.
//!
//! A rotation hands the new key to the nodes first (each is told to fetch its jobs descriptor
//! again, which carries the key sealed for it, and restarts its munged), then restarts the
//! head's munged with it. In between, messages between head and nodes fail for a few seconds;
//! Slurm retries them, and running jobs go on (their credentials were checked at launch).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use enlist_api::{Mac, Order};

use crate::config::Controller;
use crate::registry::RegistryError;

use super::{io, Jobs, JobsError, MUNGE_KEY_BYTES};

/// How long a rotation waits for the nodes to say they have the new key.
const NODES_WAIT: Duration = Duration::from_secs(60);

pub use enlist_api::admin::Rotation;

/// The munge key: read, or made now (1024 random bytes, mode 0400) and kept.
pub fn load_or_make(path: &Path) -> Result<Vec<u8>, JobsError> {
    match std::fs::read(path) {
        Ok(k) if k.len() >= 32 => return Ok(k),
        Ok(_) => {
            return Err(JobsError::BadFile {
                path: path.to_path_buf(),
                message: "the munge key is shorter than 32 bytes; delete it to have a new one made"
                    .into(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(path)(e)),
    }
    let key = new_key();
    write_key(path, &key)?;
    tracing::info!(path = %path.display(), "jobs: made the munge key");
    Ok(key)
}

fn new_key() -> Vec<u8> {
    let mut key = vec![0u8; MUNGE_KEY_BYTES];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut key);
    key
}

/// Put `key` at `path` (0400), replacing what is there in one rename: never half written, and
/// never readable by others.
fn write_key(path: &Path, key: &[u8]) -> Result<(), JobsError> {
    let tmp = path.with_extension("key.new");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(key).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

impl Jobs {
    /// Replace the cluster's munge key: the nodes that are up take it first, then the head's
    /// munged. Only for the controller the head runs (a site's key is the site's).
    pub async fn rotate_key(self: &Arc<Self>) -> Result<Rotation, JobsError> {
        if let Controller::External { munge_key, .. } = &self.cfg.jobs.controller {
            return Err(JobsError::External(format!(
                "the munge key is the site's ({}): rotate it with the site's cluster",
                munge_key.display()
            )));
        }
        let key = new_key();
        if let Ok(mut k) = self.munge_key.lock() {
            *k = key.clone();
        }
        let reg = self.registry.clone();
        let told = tokio::task::spawn_blocking(move || tell_nodes(&reg))
            .await
            .map_err(|e| JobsError::Task(e.to_string()))??;
        let until = Instant::now() + NODES_WAIT;
        let mut silent = told.clone();
        while !silent.is_empty() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(250)).await;
            silent.retain(|(mac, id, _)| self.registry.command_pending(*mac, *id));
        }
        write_key(&self.munge_key_file, &key)?;
        if let Some((_, state)) = self.daemons.iter().find(|(d, _)| d.name == "munged") {
            state.restart.notify_one();
        }
        let names = |v: &[(Mac, u64, String)]| v.iter().map(|(_, _, n)| n.clone()).collect();
        let r = Rotation {
            told: names(&told),
            silent: names(&silent),
        };
        tracing::info!(
            told = r.told.len(),
            silent = r.silent.len(),
            "jobs: munge key replaced; the head's munged restarts with it"
        );
        Ok(r)
    }
}

/// Tell every node that is up to take the new key: (MAC, command id, name) of each told.
fn tell_nodes(reg: &crate::registry::Registry) -> Result<Vec<(Mac, u64, String)>, JobsError> {
    let (_, members) = reg.members();
    let mut told = vec![];
    for (mac, _) in members {
        let name = reg.node(mac)?.name;
        match reg.command(mac, Order::Rekey) {
            Ok(id) => told.push((mac, id, name)),
            // Up but between sessions: it fetches the new key when it registers again.
            Err(RegistryError::NotOnline(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(told)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_is_made_once_root_only_and_replaced_whole() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("munge.key");
        let first = load_or_make(&path).unwrap();
        assert_eq!(first.len(), MUNGE_KEY_BYTES);
        assert_eq!(load_or_make(&path).unwrap(), first, "kept");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        let next = new_key();
        write_key(&path, &next).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), next);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o400
        );
        assert!(!path.with_extension("key.new").exists());
    }
}
