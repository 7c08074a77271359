//! Admin authentication: a password (argon2 hash in the database) gives a browser session
//! cookie (HttpOnly, SameSite=Strict) plus a CSRF token that every state-changing request must
//! echo in `x-csrf-token`; the CLI uses a bearer token kept in a root-only file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;

use crate::metrics::labels;
use crate::registry::keys_token;
use crate::store::{Store, StoreError};

use super::{error, Shared};

pub const COOKIE: &str = "enlist_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
const PASSWORD_META_KEY: &str = "admin_password_argon2";
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The CLI's credential, beside the database.
pub const TOKEN_FILE: &str = "admin.token";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

struct Session {
    csrf: String,
    expires: Instant,
}

pub struct Auth {
    store: Store,
    api_token: String,
    public_read: bool,
    sessions: Mutex<HashMap<String, Session>>,
}

pub fn set_password(store: &Store, password: &str) -> Result<(), AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| AuthError::Hash(e.to_string()))?
        .to_string();
    store.set_meta(PASSWORD_META_KEY, &hash)?;
    Ok(())
}

pub fn has_password(store: &Store) -> Result<bool, StoreError> {
    Ok(store.meta(PASSWORD_META_KEY)?.is_some())
}

/// Read the CLI token, creating it (mode 0600) if missing.
pub fn load_or_create_token(state_dir: &Path) -> Result<String, AuthError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = state_dir.join(TOKEN_FILE);
    let err = |source| AuthError::TokenFile {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().len() >= 32 => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let token = keys_token() + &keys_token();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(err)?;
    f.write_all(format!("{token}\n").as_bytes()).map_err(err)?;
    Ok(token)
}

impl Auth {
    pub fn new(store: Store, api_token: String, public_read: bool) -> Auth {
        Auth {
            store,
            api_token,
            public_read,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    pub fn public_read(&self) -> bool {
        self.public_read
    }

    /// Check the password; on success returns (session token, csrf token).
    pub fn login(&self, password: &str) -> Result<Option<(String, String)>, StoreError> {
        let Some(hash) = self.store.meta(PASSWORD_META_KEY)? else {
            return Ok(None);
        };
        let Ok(parsed) = PasswordHash::new(&hash) else {
            tracing::error!("stored admin password hash is unreadable; set it again with `enlist admin set-password`");
            return Ok(None);
        };
        if Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_err()
        {
            return Ok(None);
        }
        let (token, csrf) = (keys_token() + &keys_token(), keys_token());
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        sessions.insert(
            token.clone(),
            Session {
                csrf: csrf.clone(),
                expires: now + SESSION_TTL,
            },
        );
        Ok(Some((token, csrf)))
    }

    pub fn logout(&self, token: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }

    /// The CSRF token of a live session.
    pub fn session_csrf(&self, token: &str) -> Option<String> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions
            .get(token)
            .filter(|s| s.expires > Instant::now())
            .map(|s| s.csrf.clone())
    }

    fn bearer_ok(&self, value: &str) -> bool {
        use subtle_eq::eq;
        value
            .strip_prefix("Bearer ")
            .map(|t| eq(t.trim().as_bytes(), self.api_token.as_bytes()))
            .unwrap_or(false)
    }
}

/// Constant-time comparison, so a token cannot be guessed byte by byte from response times.
mod subtle_eq {
    pub fn eq(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

fn deny(s: &Shared, status: StatusCode, reason: &str, parts: &Parts) -> Response {
    tracing::debug!(path = %parts.uri.path(), "admin api: refused ({reason})");
    s.metrics
        .http_refused
        .get_or_create(&labels(&[("reason", reason)]))
        .inc();
    error(status, reason)
}

/// Extractor: an admin (bearer token, or session cookie + CSRF token on state changes).
pub struct Admin;

impl FromRequestParts<Shared> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &Shared) -> Result<Self, Self::Rejection> {
        if let Some(v) = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        {
            return if s.auth.bearer_ok(v) {
                Ok(Admin)
            } else {
                Err(deny(s, StatusCode::UNAUTHORIZED, "bad-token", parts))
            };
        }
        let Some(token) = session_cookie(&parts.headers) else {
            return Err(deny(s, StatusCode::UNAUTHORIZED, "login-required", parts));
        };
        let Some(csrf) = s.auth.session_csrf(&token) else {
            return Err(deny(s, StatusCode::UNAUTHORIZED, "session-expired", parts));
        };
        let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe {
            let sent = parts
                .headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !subtle_eq::eq(sent.as_bytes(), csrf.as_bytes()) {
                return Err(deny(s, StatusCode::FORBIDDEN, "csrf-token-mismatch", parts));
            }
        }
        Ok(Admin)
    }
}

/// Extractor: may read the registry (anyone if `admin.public_read`, else an admin).
pub struct Viewer;

impl FromRequestParts<Shared> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &Shared) -> Result<Self, Self::Rejection> {
        if s.auth.public_read() {
            return Ok(Viewer);
        }
        Admin::from_request_parts(parts, s).await.map(|_| Viewer)
    }
}
