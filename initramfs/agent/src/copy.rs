//! `enlist copy` on the node: fetch the file of a signed copy command, check it against the
//! command's size and SHA-256 (so only the admin's bytes are written), write it beside its
//! path with its mode, sync, and rename it over the path; report how it went as an exec
//! result (exit 0, or 1 with why).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use enlist_api::{paths, CopyFetch, CopySpec, ExecResult};
use sha2::{Digest, Sha256};

use crate::client::Client;
use crate::say;

/// Copy command `id` in its own thread (a slow fetch holds no other command up).
pub fn spawn(client: Arc<Client>, id: u64, spec: CopySpec) {
    std::thread::spawn(move || {
        let outcome = fetch(&client, id, &spec).and_then(|bytes| put(&spec, &bytes));
        let (exit, output) = match outcome {
            Ok(()) => (0, String::new()),
            Err(why) => {
                say(&format!("copy #{id} to {}: {why}", spec.path));
                (1, format!("copy to {}: {why}\n", spec.path))
            }
        };
        let result = ExecResult {
            id,
            exit: Some(exit),
            signal: None,
            timed_out: false,
            output,
            cut_bytes: 0,
            done: true,
        };
        if let Err(f) = client.post::<_, serde_json::Value>(paths::EXEC_RESULT, &result) {
            say(&format!("copy #{id}: could not report to the head: {f}"));
        }
    });
}

/// The file's bytes from the head, as the signed command says they are.
fn fetch(client: &Client, id: u64, spec: &CopySpec) -> Result<Vec<u8>, String> {
    let bytes = client
        .post_for_bytes(paths::COPY_FILE, &CopyFetch { id }, spec.size as usize)
        .map_err(|f| format!("fetching it: {f}"))?;
    check(spec, &bytes)?;
    Ok(bytes)
}

/// Whether `bytes` are the file the command names.
fn check(spec: &CopySpec, bytes: &[u8]) -> Result<(), String> {
    if bytes.len() as u64 != spec.size {
        return Err(format!(
            "{} bytes came, the command says {}",
            bytes.len(),
            spec.size
        ));
    }
    if hex::encode(Sha256::digest(bytes)) != spec.sha256 {
        return Err("its SHA-256 is not the command's: not written".into());
    }
    Ok(())
}

/// Written beside the path, synced, then renamed over it: a reader sees the old file or the
/// new one, never a part.
fn put(spec: &CopySpec, bytes: &[u8]) -> Result<(), String> {
    let path = Path::new(&spec.path);
    let tmp = format!("{}.enlist-copy", spec.path);
    let write = || -> std::io::Result<()> {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(spec.mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        // The mode as asked, whatever the umask took away.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(spec.mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("writing it: {e}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &str, bytes: &[u8]) -> CopySpec {
        CopySpec {
            path: path.into(),
            mode: 0o600,
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }

    #[test]
    fn only_the_signed_bytes_are_written_with_their_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("enlist-copy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f").display().to_string();
        let s = spec(&path, b"hello\n");
        assert!(check(&s, b"hellO\n").is_err(), "other bytes");
        assert!(check(&s, b"hello").is_err(), "fewer bytes");
        check(&s, b"hello\n").unwrap();
        std::fs::write(&path, "old").unwrap();
        put(&s, b"hello\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert!(!Path::new(&format!("{path}.enlist-copy")).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
