//! The agent side of the registry: nonces, registration, request authentication, heartbeats,
//! commands and leaving. No HTTP here; `http::agent` maps these to routes and status codes.
//!
//! Order matters: a request is authenticated (signature over a nonce or session, sequence
//! number) before its body is read, and nothing is written before both are good.

use std::sync::Arc;
use std::time::Instant;

use enlist_api::{
    paths, Command, CommandResult, Heartbeat, HeartbeatResponse, Mac, NodeInfo, NodeKey,
    RegisterRequest, RegisterResponse, RequestAuth,
};
use tokio::sync::Notify;

use crate::bootpath::Proto;
use crate::lifecycle::Event;
use crate::store::{now, StoreError};

use super::keys::token;
use super::Registry;

/// Registration nonces live this long.
const NONCE_TTL_SECS: i64 = 60;
/// At most this many outstanding nonces (a flood evicts the oldest, not memory).
const MAX_NONCES: usize = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("request body larger than {} bytes", enlist_api::MAX_BODY)]
    TooLarge,
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
            AgentError::TooLarge => "body-too-large",
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

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, AgentError> {
    serde_json::from_slice(bytes).map_err(|e| AgentError::BadRequest(format!("body: {e}")))
}

impl Registry {
    fn refuse(&self, e: AgentError) -> AgentError {
        self.metrics
            .refused(&self.metrics.agent_refused, e.reason());
        e
    }

    pub fn nonce(&self) -> String {
        let n = token();
        let ts = now();
        let mut inner = self.inner();
        if inner.nonces.len() >= MAX_NONCES {
            inner.nonces.retain(|_, exp| *exp > ts);
        }
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

    /// The key replies to this node are signed with: its current one.
    pub fn reply_key(&self, mac: Mac) -> NodeKey {
        let epoch = self.inner().live.get(&mac).map_or(0, |l| l.epoch);
        self.keys.node_key(mac, epoch)
    }

    /// Register an agent. The request is signed with the node key over a fresh nonce (sent as
    /// the session header, sequence 0). Only a node the head knows (it got its key from a boot
    /// script's initrd, or from an admin) can register; its body is read once the signature
    /// is good. Blocking (database).
    pub fn register(&self, req: &Signed) -> Result<(Mac, RegisterResponse), AgentError> {
        self.register_inner(req).map_err(|e| self.refuse(e))
    }

    fn register_inner(&self, req: &Signed) -> Result<(Mac, RegisterResponse), AgentError> {
        let mac = Mac::parse(req.node).ok_or(AgentError::Unauthorized("bad-node"))?;
        let fresh = {
            let mut inner = self.inner();
            matches!(inner.nonces.remove(req.session), Some(exp) if exp > now())
        };
        if !fresh {
            return Err(AgentError::Unauthorized("unknown-nonce"));
        }
        let mut row = self
            .store
            .node(mac)?
            .ok_or(AgentError::Unauthorized("unknown-node"))?;
        let key = self.keys.node_key(mac, row.key_epoch);
        let mac_text = mac.to_string();
        let auth = RequestAuth {
            method: "POST",
            path: paths::REGISTER,
            node: &mac_text,
            session: req.session,
            seq: 0,
        };
        if req.method != "POST"
            || req.path != paths::REGISTER
            || !auth.verify(&key, req.body, req.signature)
        {
            return Err(AgentError::Unauthorized("bad-signature"));
        }
        if !row.approved || row.released {
            return Err(AgentError::Forbidden("not-enlisted"));
        }
        let info: NodeInfo = body::<RegisterRequest>(req.body)?.info;
        info.check().map_err(AgentError::BadRequest)?;
        let session = token();
        self.inner()
            .open_session(mac, session.clone(), info.clone());
        if let Ok(ip) = info.ip.parse() {
            row.ip = Some(ip);
        }
        let was_64bit = row.cpu_64bit();
        row.info = serde_json::to_string(&info).ok();
        row.last_seen = Some(now());
        let image_note = (!was_64bit && row.cpu_64bit())
            .then(|| self.next_image_note(mac))
            .flatten();
        self.inner().trace(
            mac,
            "registered",
            Proto::Agent,
            format!("agent from {}", info.ip),
        );
        self.apply(
            &mut row,
            Event::Registered,
            &format!("agent registered from {}", info.ip),
        )?;
        if let Some(note) = image_note {
            tracing::info!(%mac, node = %row.name, "{note}");
            self.save(&row, Some(("image", &note)))?;
        }
        let (_, peers) = self.peers();
        Ok((
            mac,
            RegisterResponse {
                session,
                name: row.name,
                heartbeat_secs: self.cfg.nodes.heartbeat.as_secs().clamp(1, 300) as u32,
                peers,
            },
        ))
    }

    /// A PC first found to have a 64-bit CPU while it runs another image than the one it
    /// will boot by BIOS from now on: what changes, for its history.
    fn next_image_note(&self, mac: Mac) -> Option<String> {
        let booted = self.inner().live.get(&mac)?.image.clone()?;
        let next = self.cfg.bios_image(mac, true);
        (next.as_str() != booted).then(|| {
            format!("64-bit CPU: its next BIOS network boot is of image {next} (images.bios_x64), not {booted}")
        })
    }

    /// Check a signed request; returns the node's MAC. Memory and CPU only (the key epoch of
    /// every node is cached), so it runs on the async threads.
    pub fn authenticate(&self, req: &Signed) -> Result<Mac, AgentError> {
        self.authenticate_inner(req).map_err(|e| self.refuse(e))
    }

    fn authenticate_inner(&self, req: &Signed) -> Result<Mac, AgentError> {
        let mac = Mac::parse(req.node).ok_or(AgentError::Unauthorized("bad-node"))?;
        let mut inner = self.inner();
        match inner.sessions.get(req.session) {
            None => return Err(AgentError::Unauthorized("unknown-session")),
            Some(owner) if *owner != mac => return Err(AgentError::Forbidden("other-node")),
            Some(_) => {}
        }
        let live = inner
            .live
            .get_mut(&mac)
            .ok_or(AgentError::Unauthorized("unknown-node"))?;
        let key = self.keys.node_key(mac, live.epoch);
        let mac_text = mac.to_string();
        let auth = RequestAuth {
            method: req.method,
            path: req.path,
            node: &mac_text,
            session: req.session,
            seq: req.seq,
        };
        if !auth.verify(&key, req.body, req.signature) {
            return Err(AgentError::Unauthorized("bad-signature"));
        }
        if !accept_seq(&mut live.seq, &mut live.seq_window, req.seq) {
            return Err(AgentError::Unauthorized("replayed"));
        }
        live.last_seen = Some(Instant::now());
        Ok(mac)
    }

    /// Record a heartbeat in memory. `Ok(Some)`: that is all it takes (the common case: a
    /// healthy node and no dashboard watching). `Ok(None)`: [`Registry::heartbeat`] has more
    /// to do.
    pub fn heartbeat_in_memory(
        &self,
        mac: Mac,
        hb: &Heartbeat,
    ) -> Result<Option<HeartbeatResponse>, AgentError> {
        hb.check()
            .map_err(|e| self.refuse(AgentError::BadRequest(e)))?;
        let mut inner = self.inner();
        let version = inner.peers_version;
        let live = inner.live.entry(mac).or_default();
        live.heartbeat = Some(hb.clone());
        let steady = live.state == Some(crate::lifecycle::NodeState::Healthy);
        Ok(
            (steady && self.updates.receiver_count() == 0).then_some(HeartbeatResponse {
                peers_version: version,
            }),
        )
    }

    /// The rest of a heartbeat: a state change (registered or lost → healthy), or a live
    /// update for dashboards. Blocking (database).
    pub fn heartbeat(&self, mac: Mac, hb: &Heartbeat) -> Result<HeartbeatResponse, AgentError> {
        if let Some(mut row) = self.store.node(mac)? {
            let before = row.state;
            row.heartbeat = serde_json::to_string(hb).ok();
            row.last_seen = Some(now());
            self.apply(&mut row, Event::Heartbeat, "heartbeats arriving")?;
            if row.state == before {
                // Steady heartbeats are only published live, not written.
                self.publish(&row);
            }
        }
        Ok(HeartbeatResponse {
            peers_version: self.inner().peers_version,
        })
    }

    /// Commands waiting for this node, signed for its current session and key, and the
    /// notifier to wait on when there are none. Memory only.
    pub fn take_commands(&self, mac: Mac) -> (Vec<Command>, Arc<Notify>) {
        let mut inner = self.inner();
        let live = inner.live.entry(mac).or_default();
        let key = self.keys.node_key(mac, live.epoch);
        let session = live.session.clone().unwrap_or_default();
        let cmds = live
            .commands
            .drain(..)
            .map(|(id, kind, exec)| Command {
                id,
                kind,
                signature: enlist_api::sign_command(&key, &session, id, kind, exec.as_ref()),
                exec,
            })
            .collect();
        (cmds, live.notify.clone())
    }

    pub fn command_result(&self, mac: Mac, r: &CommandResult) -> Result<(), AgentError> {
        if let Some(row) = self.store.node(mac)? {
            let detail = format!(
                "#{} {}: {}",
                r.id,
                if r.ok { "done" } else { "failed" },
                r.bounded_message()
            );
            self.save(&row, Some(("command", &detail)))?;
        }
        Ok(())
    }

    pub fn leaving(&self, mac: Mac, reason: &str) -> Result<(), AgentError> {
        if let Some(mut row) = self.store.node(mac)? {
            let reason: String = reason
                .chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect();
            self.apply(&mut row, Event::Leaving, &reason)?;
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
