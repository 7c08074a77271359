//! Admin authentication: a password (argon2 hash in the database) gives a browser session
//! cookie (HttpOnly, SameSite=Strict, Secure on the TLS listener) plus a CSRF token that every
//! state-changing request must echo in `x-csrf-token`; the CLI uses a bearer token kept in a
//! root-only file. Changing the password ends every session.
//!
//! Logins are throttled: per source address (after a few failures it must wait, doubling up to a
//! minute) and for the head as a whole (one Argon2 hash at a time, a short queue, a rate), so a
//! flood of guesses costs bounded memory and CPU and never starves the DHCP service.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::Argon2;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;

use crate::metrics::labels;
use crate::registry::random_token as keys_token;
use crate::store::{Store, StoreError};

use super::{error, Shared};

pub const COOKIE: &str = "enlist_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
const PASSWORD_META_KEY: &str = "admin_password_argon2";
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// A bearer token for scripts that use the admin API over HTTP, beside the database.
pub const TOKEN_FILE: &str = "admin.token";
/// The admin socket the CLI talks to (root only), in the state folder.
pub const ADMIN_SOCKET: &str = "admin.sock";

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
    /// The password hash it was opened with: a new password ends it.
    hash: String,
}

/// Free failed logins per source before it has to wait.
const FREE_FAILURES: u32 = 3;
/// Longest wait imposed on a source.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Logins checked per second at most, for the whole head.
const LOGINS_PER_SEC: u32 = 10;
/// Logins waiting for the hasher at most; more are told to come back.
const LOGIN_QUEUE: usize = 8;
/// Sources whose failures are remembered at most.
const SOURCES: usize = 4096;
/// How long the password hash is cached between checks for a change.
const HASH_CACHE: Duration = Duration::from_secs(2);

/// What a login attempt came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Login {
    /// Session token and CSRF token.
    Ok(String, String),
    Wrong,
    /// Too many tries: come back after this long.
    Throttled(Duration),
}

#[derive(Default)]
struct Throttle {
    /// Source → failures in a row and when it may try again.
    sources: HashMap<IpAddr, (u32, Instant)>,
    /// This second's logins, for the head-wide rate.
    second: Option<(Instant, u32)>,
}

impl Throttle {
    /// May `ip` try now? `Err(wait)` if not.
    fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if let Some((_, until)) = self.sources.get(&ip) {
            if *until > now {
                return Err(*until - now);
            }
        }
        match &mut self.second {
            Some((start, n)) if now.duration_since(*start) < Duration::from_secs(1) => {
                if *n >= LOGINS_PER_SEC {
                    return Err(Duration::from_secs(1));
                }
                *n += 1;
            }
            _ => self.second = Some((now, 1)),
        }
        Ok(())
    }

    fn failed(&mut self, ip: IpAddr, now: Instant) {
        if !self.sources.contains_key(&ip) && self.sources.len() >= SOURCES {
            self.sources.retain(|_, (_, until)| *until > now);
            if self.sources.len() >= SOURCES {
                self.sources.clear();
            }
        }
        let e = self.sources.entry(ip).or_insert((0, now));
        e.0 += 1;
        if e.0 > FREE_FAILURES {
            let exp = (e.0 - FREE_FAILURES).min(6);
            e.1 = now + Duration::from_secs(1 << exp).min(MAX_WAIT);
        }
    }

    fn succeeded(&mut self, ip: IpAddr) {
        self.sources.remove(&ip);
    }
}

pub struct Auth {
    store: Store,
    api_token: String,
    public_read: bool,
    /// Cookies get `Secure` (the admin listener has TLS).
    secure: bool,
    sessions: Mutex<HashMap<String, Session>>,
    throttle: Mutex<Throttle>,
    /// One Argon2 hash at a time: each takes ~19 MiB and tens of ms.
    hasher: HashThread,
    /// Logins waiting for the hasher.
    waiting: std::sync::atomic::AtomicUsize,
    /// The stored hash, and when it was read.
    hash: Mutex<Option<(Instant, Option<String>)>>,
}

/// Counts a login waiting for the hasher while it lives (also when the request is dropped).
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
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
    pub fn new(store: Store, api_token: String, public_read: bool, secure: bool) -> Auth {
        Auth {
            store,
            api_token,
            public_read,
            secure,
            sessions: Mutex::new(HashMap::new()),
            throttle: Mutex::new(Throttle::default()),
            hasher: HashThread::start(),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            hash: Mutex::new(None),
        }
    }

    pub fn public_read(&self) -> bool {
        self.public_read
    }

    /// The attributes of the session cookie.
    pub fn cookie_attributes(&self) -> &'static str {
        if self.secure {
            "HttpOnly; Secure; SameSite=Strict; Path=/"
        } else {
            "HttpOnly; SameSite=Strict; Path=/"
        }
    }

    /// The stored password hash, re-read at most every [`HASH_CACHE`].
    fn current_hash(&self) -> Result<Option<String>, StoreError> {
        let mut cached = self.hash.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, h)) = cached.as_ref() {
            if at.elapsed() < HASH_CACHE {
                return Ok(h.clone());
            }
        }
        let h = self.store.meta(PASSWORD_META_KEY)?;
        *cached = Some((Instant::now(), h.clone()));
        Ok(h)
    }

    /// Check a password from `ip`, within the throttles. The hash runs on the blocking pool,
    /// one at a time.
    pub async fn login(&self, password: String, ip: IpAddr) -> Result<Login, AuthError> {
        let now = Instant::now();
        if let Err(wait) = self.throttle().admit(ip, now) {
            return Ok(Login::Throttled(wait));
        }
        let _queued = Waiting(&self.waiting);
        if self
            .waiting
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            >= LOGIN_QUEUE
        {
            return Ok(Login::Throttled(Duration::from_secs(1)));
        }
        let Some(hash) = self.current_hash()? else {
            return Ok(Login::Wrong);
        };
        let good = self.hasher.verify(password, hash.clone()).await?;
        if !good {
            self.throttle().failed(ip, Instant::now());
            return Ok(Login::Wrong);
        }
        self.throttle().succeeded(ip);
        let (token, csrf) = (keys_token() + &keys_token(), keys_token());
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        sessions.insert(
            token.clone(),
            Session {
                csrf: csrf.clone(),
                expires: now + SESSION_TTL,
                hash,
            },
        );
        Ok(Login::Ok(token, csrf))
    }

    fn throttle(&self) -> std::sync::MutexGuard<'_, Throttle> {
        self.throttle.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn logout(&self, token: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }

    /// The CSRF token of a live session: not expired, and opened with the current password.
    pub fn session_csrf(&self, token: &str) -> Option<String> {
        let current = self.current_hash().ok().flatten()?;
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions
            .get(token)
            .filter(|s| s.expires > Instant::now() && s.hash == current)
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

/// The thread that checks passwords, one at a time, in one working memory it keeps. Argon2's
/// own `verify_password` allocates its 19 MiB afresh for every hash, and glibc kept each copy
/// resident in the thread's arena: a login flood grew the head by about 19 MiB per wrong guess,
/// up to 200 MiB. With the blocks allocated once and reused, the head grows by one hash's
/// memory at its first login and no more.
struct HashThread {
    jobs: std::sync::mpsc::Sender<(String, String, tokio::sync::oneshot::Sender<bool>)>,
}

impl HashThread {
    fn start() -> HashThread {
        let (jobs, rx) =
            std::sync::mpsc::channel::<(String, String, tokio::sync::oneshot::Sender<bool>)>();
        let spawned = std::thread::Builder::new()
            .name("argon2".into())
            .spawn(move || {
                let mut memory = Vec::new();
                for (password, hash, reply) in rx {
                    let _ = reply.send(verify(&password, &hash, &mut memory));
                }
            });
        if let Err(e) = spawned {
            // Logins then fail with an error naming the cause (below); nothing else is affected.
            tracing::error!("cannot start the password-checking thread: {e}");
        }
        HashThread { jobs }
    }

    async fn verify(&self, password: String, hash: String) -> Result<bool, AuthError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let gone = || AuthError::Hash("the password-checking thread is not running".into());
        self.jobs.send((password, hash, tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}

/// The most working memory a stored hash may ask for (Argon2's default is 19 MiB): a hash
/// written by hand with a huge cost is refused rather than followed.
const MAX_HASH_MEMORY_KIB: u32 = 256 * 1024;

/// Whether `password` matches the PHC string `hash`, hashing in `memory` (grown when the
/// stored parameters need more, reused otherwise).
fn verify(password: &str, hash: &str, memory: &mut Vec<argon2::Block>) -> bool {
    match recompute(password, hash, memory) {
        Ok((computed, stored)) => subtle_eq::eq(&computed, &stored),
        Err(e) => {
            tracing::error!("stored admin password hash is unusable ({e}); set it again with `enlist admin set-password`");
            false
        }
    }
}

/// Argon2 of `password` with the stored hash's algorithm, version, parameters and salt, and the
/// stored output, to be compared.
fn recompute(
    password: &str,
    hash: &str,
    memory: &mut Vec<argon2::Block>,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    use argon2::{Algorithm, Params, Version};
    let parsed = PasswordHash::new(hash).map_err(|e| e.to_string())?;
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(|e| e.to_string())?;
    let version = match parsed.version {
        Some(v) => Version::try_from(v).map_err(|e| e.to_string())?,
        None => Version::default(),
    };
    let params = Params::try_from(&parsed).map_err(|e| e.to_string())?;
    if params.m_cost() > MAX_HASH_MEMORY_KIB {
        return Err(format!("it asks for {} KiB of memory", params.m_cost()));
    }
    let (Some(salt), Some(stored)) = (parsed.salt, parsed.hash) else {
        return Err("it has no salt or no output".into());
    };
    let mut salt_buf = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_buf).map_err(|e| e.to_string())?;
    if memory.len() < params.block_count() {
        memory.resize(params.block_count(), argon2::Block::default());
    }
    let mut computed = vec![0u8; stored.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut computed, &mut memory[..])
        .map_err(|e| e.to_string())?;
    Ok((computed, stored.as_bytes().to_vec()))
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
        if parts
            .extensions
            .get::<super::listener::LocalAdmin>()
            .is_some()
        {
            return Ok(Admin);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_of(password: &str) -> String {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .expect("hash")
            .to_string()
    }

    #[test]
    fn the_right_password_matches_and_others_do_not_in_one_reused_memory() {
        let hash = hash_of("correct horse");
        let mut memory = Vec::new();
        assert!(verify("correct horse", &hash, &mut memory));
        let blocks = memory.len();
        assert_eq!(blocks, argon2::Params::DEFAULT_M_COST as usize);
        let first = memory.as_ptr();
        assert!(!verify("correct horsE", &hash, &mut memory));
        assert!(!verify("", &hash, &mut memory));
        assert!(verify("correct horse", &hash, &mut memory));
        assert_eq!((memory.len(), memory.as_ptr()), (blocks, first));
    }

    #[test]
    fn a_stored_hash_that_is_damaged_or_asks_too_much_matches_nothing() {
        let hash = hash_of("pw");
        let mut memory = Vec::new();
        assert!(!verify("pw", "not a phc string", &mut memory));
        assert!(!verify(
            "pw",
            &hash.replace("m=19456", "m=4000000"),
            &mut memory
        ));
        assert!(memory.is_empty(), "no memory taken for a refused hash");
        let no_output = hash.rsplit_once('$').expect("phc").0;
        assert!(!verify("pw", no_output, &mut memory));
        assert!(!verify(
            "pw",
            &hash.replace("argon2id", "argon2x"),
            &mut memory
        ));
    }
}
