//! Signed requests to the head, and signed replies from it.
//!
//! The network between node and head is plain HTTP that anyone on it may answer, so a reply is
//! used only when it carries the head's signature for this very request (its path, session and
//! sequence number), and only after what it says has been checked (a name fit for /etc/hosts,
//! a heartbeat period within reason, well-formed peers).

use std::io::Read;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use enlist_api::{
    headers, paths, Command, NonceResponse, Peer, RegisterRequest, RegisterResponse, ReplyAuth,
    RequestAuth,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::conf::Conf;
use crate::sysinfo;

#[derive(Debug)]
pub enum Failure {
    /// The head answered 401: our session is unknown (head restarted) or the key is wrong.
    Unauthorized(String),
    /// The head answered with another error.
    Refused(u16, String),
    /// An answer without the head's signature, or one that says something impossible.
    Forged(String),
    /// No answer at all.
    Unreachable(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unauthorized(m) => write!(f, "head refused our credentials: {m}"),
            Failure::Refused(c, m) => write!(f, "head answered HTTP {c}: {m}"),
            Failure::Forged(m) => write!(f, "ignored a reply the head did not sign: {m}"),
            Failure::Unreachable(m) => write!(f, "head not reachable: {m}"),
        }
    }
}

pub struct Client {
    conf: Conf,
    name: Mutex<String>,
    session: Mutex<String>,
    seq: AtomicU64,
    /// The highest command id run in this session (ids grow; a repeated one is a replay).
    last_command: AtomicU64,
    /// The head's clock minus ours, seconds, as its signed registration reply said: command
    /// expiries are judged on the head's time (a PC's clock may be anything).
    head_offset: AtomicI64,
    /// The enlisted nodes as the head last listed them, and a generation that changes with
    /// them (slurmd's filter follows it).
    peers: Mutex<(u64, Vec<Peer>)>,
    http: ureq::Agent,
    long_http: ureq::Agent,
}

fn agent(read: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout_read(read)
        .timeout_write(Duration::from_secs(10))
        .build()
}

impl Client {
    pub fn new(conf: Conf) -> Client {
        let name = conf.name.clone();
        Client {
            conf,
            name: Mutex::new(name),
            session: Mutex::new(String::new()),
            seq: AtomicU64::new(0),
            last_command: AtomicU64::new(0),
            head_offset: AtomicI64::new(0),
            peers: Mutex::new((0, vec![])),
            http: agent(Duration::from_secs(15)),
            long_http: agent(Duration::from_secs(40)),
        }
    }

    pub fn head(&self) -> &str {
        &self.conf.head
    }

    /// The image and version this PC booted, from its settings.
    pub fn image(&self) -> Option<(String, String)> {
        self.conf.image.clone()
    }

    /// A secret the head sealed for this node alone (with its key), for `context`.
    pub fn open_sealed(
        &self,
        sealed: Option<&enlist_api::seal::Sealed>,
        context: &str,
    ) -> Result<Vec<u8>, String> {
        let s = sealed.ok_or_else(|| format!("the head sent no {context}"))?;
        enlist_api::seal::open(&self.conf.key, context, s).map_err(|e| {
            format!(
                "the {context} the head sent does not open with our key: {}",
                e.0
            )
        })
    }

    /// A plain GET (a file whose hash the head signed elsewhere), as a reader.
    pub fn get(&self, url: &str) -> Result<impl Read + Send, Failure> {
        match self.long_http.get(url).call() {
            Ok(r) => Ok(r.into_reader()),
            Err(ureq::Error::Status(code, r)) => Err(Failure::Refused(
                code,
                short(r.into_string().unwrap_or_default()),
            )),
            Err(e) => Err(Failure::Unreachable(format!("{url}: {e}"))),
        }
    }

    /// Keep the peer list the head sent (checked by the caller).
    pub fn set_peers(&self, peers: &[Peer]) {
        if let Ok(mut p) = self.peers.lock() {
            p.0 += 1;
            p.1 = peers.to_vec();
        }
    }

    /// The peer list's generation and the list.
    pub fn peers(&self) -> (u64, Vec<Peer>) {
        self.peers.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// The node's name as the head last told it (an admin may rename it).
    pub fn name(&self) -> String {
        self.name
            .lock()
            .map(|n| n.clone())
            .unwrap_or_else(|_| self.conf.name.clone())
    }

    fn session(&self) -> String {
        self.session.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Send a signed request; the reply body (at most `max` bytes) once its signature is
    /// good: made for this request's path and sequence number, and for `reply_to` (the
    /// session; for a registration, our challenge).
    fn send(
        &self,
        agent: &ureq::Agent,
        path: &str,
        (session, reply_to): (&str, &str),
        seq: u64,
        body: &[u8],
        max: usize,
    ) -> Result<Vec<u8>, Failure> {
        let node = self.conf.mac.to_string();
        let auth = RequestAuth {
            method: "POST",
            path,
            node: &node,
            session,
            seq,
        };
        let sig = auth.sign(&self.conf.key, body);
        let url = format!("{}{path}", self.conf.head);
        let resp = match agent
            .post(&url)
            .set("content-type", "application/json")
            .set(headers::NODE, &node)
            .set(headers::SESSION, session)
            .set(headers::SEQ, &seq.to_string())
            .set(headers::SIGNATURE, &sig)
            .send_bytes(body)
        {
            Ok(r) => r,
            Err(ureq::Error::Status(401, r)) => {
                return Err(Failure::Unauthorized(short(
                    r.into_string().unwrap_or_default(),
                )))
            }
            Err(ureq::Error::Status(code, r)) => {
                return Err(Failure::Refused(
                    code,
                    short(r.into_string().unwrap_or_default()),
                ))
            }
            Err(e) => return Err(Failure::Unreachable(format!("{}: {e}", self.conf.head))),
        };
        let signature = resp
            .header(headers::REPLY_SIGNATURE)
            .unwrap_or("")
            .to_string();
        let mut bytes = Vec::new();
        resp.into_reader()
            .take(max as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Failure::Unreachable(format!("{}: {e}", self.conf.head)))?;
        if bytes.len() > max {
            return Err(Failure::Forged(format!(
                "{path}: reply larger than {max} bytes"
            )));
        }
        let reply = ReplyAuth {
            path,
            session: reply_to,
            seq,
        };
        if !reply.verify(&self.conf.key, &bytes, &signature) {
            return Err(Failure::Forged(format!("{path}: bad or missing signature")));
        }
        Ok(bytes)
    }

    fn json<R: DeserializeOwned>(bytes: &[u8]) -> Result<R, Failure> {
        serde_json::from_slice(bytes).map_err(|e| Failure::Forged(format!("bad JSON: {e}")))
    }

    pub fn register(&self) -> Result<RegisterResponse, Failure> {
        let url = format!("{}{}", self.conf.head, paths::NONCE);
        let nonce: NonceResponse = match self.http.get(&url).call() {
            Ok(r) => r
                .into_json()
                .map_err(|e| Failure::Refused(200, e.to_string()))?,
            Err(ureq::Error::Status(code, r)) => {
                return Err(Failure::Refused(
                    code,
                    short(r.into_string().unwrap_or_default()),
                ))
            }
            Err(e) => return Err(Failure::Unreachable(format!("{}: {e}", self.conf.head))),
        };
        let challenge = challenge().map_err(|e| Failure::Refused(0, e))?;
        let body = serde_json::to_vec(&RegisterRequest {
            info: sysinfo::node_info(&self.conf.mac.to_string()),
            challenge: challenge.clone(),
        })
        .map_err(|e| Failure::Refused(0, e.to_string()))?;
        let sent = self.send(
            &self.http,
            paths::REGISTER,
            (&nonce.nonce, &challenge),
            0,
            &body,
            enlist_api::MAX_BODY,
        )?;
        let resp: RegisterResponse = Self::json(&sent)?;
        resp.check().map_err(Failure::Forged)?;
        self.head_offset
            .store(resp.now_unix - unix_now(), Ordering::SeqCst);
        if let Ok(mut s) = self.session.lock() {
            *s = resp.session.clone();
        }
        if let Ok(mut n) = self.name.lock() {
            *n = resp.name.clone();
        }
        self.seq.store(0, Ordering::SeqCst);
        self.last_command.store(0, Ordering::SeqCst);
        Ok(resp)
    }

    pub fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, Failure> {
        self.post_with(&self.http, path, body)
    }

    /// A signed request whose reply is bytes (a copy's file), at most `max` of them.
    pub fn post_for_bytes<B: Serialize>(
        &self,
        path: &str,
        body: &B,
        max: usize,
    ) -> Result<Vec<u8>, Failure> {
        self.post_raw(&self.http, path, body, max)
    }

    /// A request the head may hold open (command long poll).
    pub fn post_long<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, Failure> {
        self.post_with(&self.long_http, path, body)
    }

    fn post_with<B: Serialize, R: DeserializeOwned>(
        &self,
        agent: &ureq::Agent,
        path: &str,
        body: &B,
    ) -> Result<R, Failure> {
        Self::json(&self.post_raw(agent, path, body, enlist_api::MAX_BODY)?)
    }

    /// `body` as JSON, signed in this session with the next sequence number; the reply's
    /// bytes, at most `max`.
    fn post_raw<B: Serialize>(
        &self,
        agent: &ureq::Agent,
        path: &str,
        body: &B,
        max: usize,
    ) -> Result<Vec<u8>, Failure> {
        let body = serde_json::to_vec(body).map_err(|e| Failure::Refused(0, e.to_string()))?;
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let session = self.session();
        self.send(agent, path, (&session, &session), seq, &body, max)
    }

    /// Whether to run `cmd`: signed by the head for this session, not expired (on the head's
    /// clock), and not run before (ids grow within a session, so an old one sent again is a
    /// replay).
    pub fn accept_command(&self, cmd: &Command) -> Result<(), &'static str> {
        if !enlist_api::verify_command(&self.conf.key, &self.session(), cmd) {
            return Err("bad signature");
        }
        if unix_now() + self.head_offset.load(Ordering::SeqCst) > cmd.expires_unix {
            return Err("expired");
        }
        let last = self.last_command.fetch_max(cmd.id, Ordering::SeqCst);
        if cmd.id <= last {
            return Err("already run (replayed)");
        }
        Ok(())
    }
}

/// Seconds since the Unix epoch on this PC's clock.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A registration challenge: 16 bytes of the kernel's random source, as hex.
///
/// Taken without waiting for the kernel's random source to be seeded (`GRND_INSECURE`): just
/// after boot it is not yet, and reading /dev/urandom then makes Linux 6.1 gather jitter
/// entropy first, a second of every boot. The challenge needs only never to repeat under one
/// node key: the head gives the node a new key at every boot, and the generator's output does
/// not repeat within a boot. Nothing secret is made from it.
fn challenge() -> Result<String, String> {
    let mut b = [0u8; 16];
    if !fill_without_waiting(&mut b) {
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .map_err(|e| format!("/dev/urandom: {e}"))?;
    }
    Ok(hex::encode(b))
}

/// `getrandom(GRND_INSECURE)` into `buf`; false where the kernel has no such flag (before 5.6).
#[allow(unsafe_code)] // getrandom(2): no safe wrapper for GRND_INSECURE in std
fn fill_without_waiting(buf: &mut [u8]) -> bool {
    // SAFETY: the kernel writes at most buf.len() bytes into buf, which we own mutably.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), libc::GRND_INSECURE) };
    usize::try_from(n).is_ok_and(|n| n == buf.len())
}

/// An error body as one short line for the console.
fn short(s: String) -> String {
    let line: String = s.chars().filter(|c| !c.is_control()).take(200).collect();
    line
}

#[cfg(test)]
mod tests {
    #[test]
    fn challenges_are_32_hex_digits_and_differ() {
        let a = super::challenge().unwrap_or_default();
        let b = super::challenge().unwrap_or_default();
        assert_eq!(a.len(), 32, "{a}");
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
    }
}
