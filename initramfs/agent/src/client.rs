//! Signed requests to the head.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use enlist_api::{
    headers, paths, Command, NonceResponse, RegisterRequest, RegisterResponse, RequestAuth,
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
    /// No answer at all.
    Unreachable(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unauthorized(m) => write!(f, "head refused our credentials: {m}"),
            Failure::Refused(c, m) => write!(f, "head answered HTTP {c}: {m}"),
            Failure::Unreachable(m) => write!(f, "head not reachable: {m}"),
        }
    }
}

pub struct Client {
    conf: Conf,
    name: Mutex<String>,
    session: Mutex<String>,
    seq: AtomicU64,
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
            http: agent(Duration::from_secs(15)),
            long_http: agent(Duration::from_secs(40)),
        }
    }

    pub fn head(&self) -> &str {
        &self.conf.head
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

    fn send(
        &self,
        agent: &ureq::Agent,
        path: &str,
        session: &str,
        seq: u64,
        body: &[u8],
    ) -> Result<ureq::Response, Failure> {
        let auth = RequestAuth {
            method: "POST",
            path,
            node: &self.conf.mac,
            session,
            seq,
        };
        let sig = auth.sign(&self.conf.key, body);
        let url = format!("{}{path}", self.conf.head);
        match agent
            .post(&url)
            .set("content-type", "application/json")
            .set(headers::NODE, &self.conf.mac)
            .set(headers::SESSION, session)
            .set(headers::SEQ, &seq.to_string())
            .set(headers::SIGNATURE, &sig)
            .send_bytes(body)
        {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(401, r)) => {
                Err(Failure::Unauthorized(r.into_string().unwrap_or_default()))
            }
            Err(ureq::Error::Status(code, r)) => {
                Err(Failure::Refused(code, r.into_string().unwrap_or_default()))
            }
            Err(e) => Err(Failure::Unreachable(format!("{}: {e}", self.conf.head))),
        }
    }

    fn json<R: DeserializeOwned>(r: ureq::Response) -> Result<R, Failure> {
        if r.status() == 204 {
            return serde_json::from_str("null").map_err(|e| Failure::Refused(204, e.to_string()));
        }
        r.into_json()
            .map_err(|e| Failure::Refused(200, format!("bad JSON: {e}")))
    }

    pub fn register(&self) -> Result<RegisterResponse, Failure> {
        let url = format!("{}{}", self.conf.head, paths::NONCE);
        let nonce: NonceResponse = match self.http.get(&url).call() {
            Ok(r) => r
                .into_json()
                .map_err(|e| Failure::Refused(200, e.to_string()))?,
            Err(ureq::Error::Status(code, r)) => {
                return Err(Failure::Refused(code, r.into_string().unwrap_or_default()))
            }
            Err(e) => return Err(Failure::Unreachable(format!("{}: {e}", self.conf.head))),
        };
        let body = serde_json::to_vec(&RegisterRequest {
            info: sysinfo::node_info(&self.conf.mac),
        })
        .map_err(|e| Failure::Refused(0, e.to_string()))?;
        let resp: RegisterResponse =
            Self::json(self.send(&self.http, paths::REGISTER, &nonce.nonce, 0, &body)?)?;
        if let Ok(mut s) = self.session.lock() {
            *s = resp.session.clone();
        }
        if let Ok(mut n) = self.name.lock() {
            *n = resp.name.clone();
        }
        self.seq.store(0, Ordering::SeqCst);
        Ok(resp)
    }

    pub fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, Failure> {
        self.post_with(&self.http, path, body)
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
        let body = serde_json::to_vec(body).map_err(|e| Failure::Refused(0, e.to_string()))?;
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        Self::json(self.send(agent, path, &self.session(), seq, &body)?)
    }

    pub fn verify_command(&self, cmd: &Command) -> bool {
        enlist_api::verify_command(&self.conf.key, &self.session(), cmd)
    }
}
