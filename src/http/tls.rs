//! TLS for the admin listener: the configured certificate, or a self-signed one made on first
//! start and kept in the state folder (the key readable by root only). The admin password and
//! session cookie then never cross the network in clear.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(String),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Names the generated certificate is made for: localhost, the listen address, the host name.
fn names(listen: IpAddr) -> Vec<String> {
    let mut v = vec!["localhost".to_string()];
    if !listen.is_unspecified() {
        v.push(listen.to_string());
    }
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            v.push(h.to_string());
        }
    }
    v
}

/// The certificate and key files to use: the configured pair, else the generated one in
/// `state_dir` (made now if missing).
pub fn cert_files(
    configured: Option<&(PathBuf, PathBuf)>,
    state_dir: &Path,
    listen: IpAddr,
) -> Result<(PathBuf, PathBuf), TlsError> {
    if let Some((c, k)) = configured {
        return Ok((c.clone(), k.clone()));
    }
    let cert = state_dir.join("admin-tls.crt");
    let key = state_dir.join("admin-tls.key");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let made = rcgen::generate_simple_self_signed(names(listen))
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key)
        .map_err(|e| file_err(&key, e))?;
    f.write_all(made.key_pair.serialize_pem().as_bytes())
        .map_err(|e| file_err(&key, e))?;
    std::fs::write(&cert, made.cert.pem()).map_err(|e| file_err(&cert, e))?;
    tracing::info!(cert = %cert.display(), "admin listener: made a self-signed TLS certificate");
    Ok((cert, key))
}

/// A TLS acceptor for the admin listener.
pub fn acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, e))?;
    if chain.is_empty() {
        return Err(file_err(cert, "no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_generated_certificate_is_kept_and_loads() {
        let d = tempfile::tempdir().unwrap();
        let (c, k) = super::cert_files(None, d.path(), "127.0.0.1".parse().unwrap()).unwrap();
        let first = std::fs::read(&c).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(super::acceptor(&c, &k).is_ok());
        let (c2, _) = super::cert_files(None, d.path(), "127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(std::fs::read(c2).unwrap(), first, "made once, then kept");
    }
}
