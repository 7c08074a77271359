//! The agent side of the registry: nonces, registration, request authentication, heartbeats,
//! commands and leaving. No HTTP here; `http::agent` maps these to routes and status codes.

use std::sync::Arc;
use std::time::Instant;

use enlist_api::{
    paths, Command, CommandResult, Heartbeat, HeartbeatResponse, NodeInfo, RegisterResponse,
    RequestAuth,
};
use tokio::sync::Notify;

use crate::metrics::labels;
use crate::store::{now, StoreError};

use super::keys::token;
use super::{state, Registry};

/// Registration nonces live this long.
const NONCE_TTL_SECS: i64 = 60;
/// At most this many outstanding nonces (a flood evicts the oldest, not memory).
const MAX_NONCES: usize = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Missing, unknown, forged or replayed credentials.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// Valid credentials that do not allow this (another node's identity, enrollment policy).
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AgentError {
    pub fn reason(&self) -> &'static str {
        match self {
            AgentError::BadRequest(_) => "bad-request",
            AgentError::Unauthorized(r) | AgentError::Forbidden(r) => r,
            AgentError::Store(_) => "database-error",
        }
    }
}

/// The signature headers and body of one agent request.
pub struct Signed<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub node: &'a str,
    pub session: &'a str,
    pub seq: u64,
    pub signature: &'a str,
    pub body: &'a [u8],
}

impl Registry {
    fn refuse(&self, e: AgentError) -> AgentError {
        self.metrics
            .agent_refused
            .get_or_create(&labels(&[("reason", e.reason())]))
            .inc();
        e
    }

    pub fn nonce(&self) -> String {
        let n = token();
        let ts = now();
        let mut inner = self.inner();
        inner.nonces.retain(|_, exp| *exp > ts);
        if inner.nonces.len() >= MAX_NONCES {
            if let Some(oldest) = inner
                .nonces
                .iter()
                .min_by_key(|(_, e)| **e)
                .map(|(k, _)| k.clone())
            {
                inner.nonces.remove(&oldest);
            }
        }
        inner.nonces.insert(n.clone(), ts + NONCE_TTL_SECS);
        n
    }

    /// Register an agent. The request is signed with the node key over a fresh nonce (sent as
    /// the session header, sequence 0).
    /// The body (a `RegisterRequest`) is only parsed once the signature is good.
    pub fn register(&self, req: &Signed) -> Result<RegisterResponse, AgentError> {
        self.register_inner(req).map_err(|e| self.refuse(e))
    }

    fn register_inner(&self, req: &Signed) -> Result<RegisterResponse, AgentError> {
        let mac =
            enlist_api::normalize_mac(req.node).ok_or(AgentError::Unauthorized("bad-node"))?;
        let fresh = {
            let mut inner = self.inner();
            matches!(inner.nonces.remove(req.session), Some(exp) if exp > now())
        };
        if !fresh {
            return Err(AgentError::Unauthorized("unknown-nonce"));
        }
        if !self.enrollable(&mac) {
            return Err(AgentError::Forbidden("not-enrollable"));
        }
        let mut row = self.node_or_new(&mac)?;
        let key = self.keys.node_key(&mac, row.key_epoch);
        let auth = RequestAuth {
            method: "POST",
            path: paths::REGISTER,
            node: &mac,
            session: req.session,
            seq: 0,
        };
        if req.method != "POST"
            || req.path != paths::REGISTER
            || !auth.verify(&key, req.body, req.signature)
        {
            return Err(AgentError::Unauthorized("bad-signature"));
        }
        let info: NodeInfo = serde_json::from_slice::<enlist_api::RegisterRequest>(req.body)
            .map_err(|e| AgentError::BadRequest(format!("body: {e}")))?
            .info;
        let session = token();
        {
            let mut inner = self.inner();
            let live = inner.live.entry(mac.clone()).or_default();
            let old = live.session.replace(session.clone());
            live.seq = 0;
            live.seq_window = 0;
            live.last_seen = Some(Instant::now());
            if let Some(old) = old {
                inner.sessions.remove(&old);
            }
            inner.sessions.insert(session.clone(), mac.clone());
        }
        let ts = now();
        if matches!(row.state.as_str(), state::SEEN | state::BOOTING) {
            if let Some(first) = row.first_dhcp {
                let secs = (ts - first).max(0) as f64;
                row.boot_seconds = Some(secs);
                self.metrics.boot_duration.observe(secs);
            }
        }
        if !info.ip.is_empty() {
            row.ip = Some(info.ip.clone());
        }
        row.info = serde_json::to_string(&info).ok();
        row.last_seen = Some(ts);
        let (new_state, detail) = if row.approved {
            (
                state::REGISTERED,
                format!("agent registered from {}", info.ip),
            )
        } else {
            (
                state::PENDING,
                "agent registered; waiting for approval".to_string(),
            )
        };
        self.set_state(&mut row, new_state, &detail)?;
        let (_, peers) = self.peers();
        Ok(RegisterResponse {
            session,
            name: row.name,
            heartbeat_secs: self.cfg.nodes.heartbeat.as_secs().max(1) as u32,
            peers,
        })
    }

    /// Check a signed request; returns the node's MAC. Memory and CPU only (the key epoch of
    /// every node is cached), so it runs on the async threads.
    pub fn authenticate(&self, req: &Signed) -> Result<String, AgentError> {
        self.authenticate_inner(req).map_err(|e| self.refuse(e))
    }

    fn authenticate_inner(&self, req: &Signed) -> Result<String, AgentError> {
        let mac =
            enlist_api::normalize_mac(req.node).ok_or(AgentError::Unauthorized("bad-node"))?;
        let owner = self.inner().sessions.get(req.session).cloned();
        match owner {
            None => return Err(AgentError::Unauthorized("unknown-session")),
            Some(owner) if owner != mac => return Err(AgentError::Forbidden("other-node")),
            Some(_) => {}
        }
        // A session exists only after a registration saved the node, which cached its epoch.
        let epoch = self
            .inner()
            .live
            .get(&mac)
            .and_then(|l| l.epoch)
            .ok_or(AgentError::Unauthorized("unknown-node"))?;
        let key = self.keys.node_key(&mac, epoch);
        let auth = RequestAuth {
            method: req.method,
            path: req.path,
            node: &mac,
            session: req.session,
            seq: req.seq,
        };
        if !auth.verify(&key, req.body, req.signature) {
            return Err(AgentError::Unauthorized("bad-signature"));
        }
        let mut inner = self.inner();
        let live = inner.live.entry(mac.clone()).or_default();
        if !accept_seq(&mut live.seq, &mut live.seq_window, req.seq) {
            return Err(AgentError::Unauthorized("replayed"));
        }
        live.last_seen = Some(Instant::now());
        Ok(mac)
    }

    /// Record a heartbeat in memory. `Some`: that is all it takes (the common case: a healthy
    /// node and no dashboard watching for new load figures). `None`: [`Registry::heartbeat`]
    /// has database work to do.
    pub fn heartbeat_in_memory(&self, mac: &str, hb: &Heartbeat) -> Option<HeartbeatResponse> {
        let mut inner = self.inner();
        let live = inner.live.entry(mac.to_string()).or_default();
        live.heartbeat = Some(hb.clone());
        let steady = live.steady;
        (steady && self.updates.receiver_count() == 0).then_some(HeartbeatResponse {
            peers_version: inner.peers_version,
        })
    }

    pub fn heartbeat(&self, mac: &str, hb: Heartbeat) -> Result<HeartbeatResponse, AgentError> {
        if let Some(done) = self.heartbeat_in_memory(mac, &hb) {
            return Ok(done);
        }
        if let Some(mut row) = self.store.node(mac)? {
            match row.state.as_str() {
                state::REGISTERED | state::LOST => {
                    row.heartbeat = serde_json::to_string(&hb).ok();
                    row.last_seen = Some(now());
                    self.set_state(&mut row, state::HEALTHY, "heartbeats arriving")?;
                }
                _ => {
                    // Heartbeats change often: publish them live, persist them only on state changes.
                    let _ = self
                        .updates
                        .send(super::Update::Node(Box::new(self.view(row))));
                }
            }
        }
        Ok(HeartbeatResponse {
            peers_version: self.inner().peers_version,
        })
    }

    /// Commands waiting for this node, signed for its current session, and the notifier to wait
    /// on when there are none.
    pub fn take_commands(&self, mac: &str) -> (Vec<Command>, Arc<Notify>) {
        let epoch = self
            .store
            .node(mac)
            .ok()
            .flatten()
            .map(|r| r.key_epoch)
            .unwrap_or(0);
        let key = self.keys.node_key(mac, epoch);
        let mut inner = self.inner();
        let live = inner.live.entry(mac.to_string()).or_default();
        let session = live.session.clone().unwrap_or_default();
        let cmds = live
            .commands
            .drain(..)
            .map(|(id, kind)| Command {
                id,
                kind,
                signature: enlist_api::sign_command(&key, &session, id, kind),
            })
            .collect();
        (cmds, live.notify.clone())
    }

    pub fn command_result(&self, mac: &str, r: &CommandResult) -> Result<(), AgentError> {
        if let Some(row) = self.store.node(mac)? {
            let detail = format!(
                "#{} {}: {}",
                r.id,
                if r.ok { "done" } else { "failed" },
                r.message
            );
            self.save(&row, Some(("command", &detail)))?;
        }
        Ok(())
    }

    pub fn leaving(&self, mac: &str, reason: &str) -> Result<(), AgentError> {
        if let Some(mut row) = self.store.node(mac)? {
            let reason: String = reason
                .chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect();
            self.set_state(&mut row, state::LEAVING, &reason)?;
        }
        Ok(())
    }
}

/// Anti-replay check: accept each sequence number once, newer than 64 behind the highest.
fn accept_seq(high: &mut u64, window: &mut u64, seq: u64) -> bool {
    if seq == 0 {
        return false;
    }
    if seq > *high {
        let shift = seq - *high;
        *window = if shift >= 64 { 0 } else { *window << shift };
        *window |= 1;
        *high = seq;
        return true;
    }
    let d = *high - seq;
    if d >= 64 || *window & (1 << d) != 0 {
        return false;
    }
    *window |= 1 << d;
    true
}

#[cfg(test)]
mod tests {
    use super::accept_seq;

    #[test]
    fn sequence_window_accepts_each_number_once() {
        let (mut h, mut w) = (0, 0);
        assert!(!accept_seq(&mut h, &mut w, 0));
        assert!(accept_seq(&mut h, &mut w, 1));
        assert!(accept_seq(&mut h, &mut w, 3));
        assert!(accept_seq(&mut h, &mut w, 2), "late but unseen");
        assert!(!accept_seq(&mut h, &mut w, 2), "replay");
        assert!(!accept_seq(&mut h, &mut w, 3), "replay");
        assert!(accept_seq(&mut h, &mut w, 100));
        assert!(!accept_seq(&mut h, &mut w, 30), "too old");
        assert!(accept_seq(&mut h, &mut w, 40));
    }
}
