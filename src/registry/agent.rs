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
use crate::store::{now, NodeRow, StoreError};

use super::keys::token;
use super::Registry;

/// Registration nonces live this long.
pub(super) const NONCE_TTL_SECS: i64 = 60;
/// At most this many outstanding nonces (a flood evicts the oldest, not memory).
pub(super) const MAX_NONCES: usize = 20_000;

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
    /// The address it came from (seen, not said); unspecified when the request came
    /// without one (in-process tests), and then no address is recorded.
    pub from: std::net::IpAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub node: &'a str,
    pub session: &'a str,
    pub seq: u64,
    pub signature: &'a str,
    pub body: &'a [u8],
}

/// A registration accepted: who, the reply, and the agent's challenge to sign it over.
pub struct Registered {
    pub mac: Mac,
    pub challenge: String,
    pub response: RegisterResponse,
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

    /// A registration nonce for anyone who asks (its own lock and O(1) work: a flood of
    /// these neither scans a table nor holds the registry up).
    pub fn nonce(&self) -> String {
        let n = token();
        self.nonces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .issue(n.clone(), now());
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
    /// is good. Returns the agent's challenge, which the reply is signed over. Blocking
    /// (database).
    pub fn register(&self, req: &Signed) -> Result<Registered, AgentError> {
        self.register_inner(req).map_err(|e| self.refuse(e))
    }

    fn register_inner(&self, req: &Signed) -> Result<Registered, AgentError> {
        let (mac, mut row) = self.registration_signer(req)?;
        // Checked as it is read (a challenge of 32 hex digits, the inventory's bounds).
        let request: RegisterRequest = body(req.body)?;
        let info: NodeInfo = request.info;
        // The same MAC on other hardware: held back for an admin, no session, no secrets.
        if let Some(change) = super::quarantine::registration_change(&row, &info) {
            self.quarantine(
                &mut row,
                &format!("registered with another inventory: {change}"),
            )?;
            return Err(AgentError::Forbidden("quarantined"));
        }
        let session = token();
        self.inner()
            .open_session(mac, session.clone(), info.clone());
        self.record_registration(&mut row, &info, req.from)?;
        let (_, peers) = self.peers();
        Ok(Registered {
            mac,
            challenge: request.challenge,
            response: RegisterResponse {
                session,
                name: row.name,
                heartbeat_secs: self.config().nodes.heartbeat.as_secs().clamp(1, 300) as u32,
                peers,
                now_unix: now(),
            },
        })
    }

    /// Who signs this registration: a node the head knows and has let in, over a fresh nonce
    /// with its current key; its row. Nothing is read from the body before this holds.
    fn registration_signer(&self, req: &Signed) -> Result<(Mac, NodeRow), AgentError> {
        let mac = Mac::parse(req.node).ok_or(AgentError::Unauthorized("bad-node"))?;
        let fresh = self
            .nonces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(req.session, now());
        if !fresh {
            return Err(AgentError::Unauthorized("unknown-nonce"));
        }
        let row = self
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
        Ok((mac, row))
    }

    /// A registration into the node's row: the address it came from, what it reports, the
    /// state change, and the image its CPU boots from now on.
    fn record_registration(
        &self,
        row: &mut NodeRow,
        info: &NodeInfo,
        from: std::net::IpAddr,
    ) -> Result<(), AgentError> {
        let mac = row.mac;
        // The address it came from, not the one it names: the head's checks (which address
        // may ask for this node's boot, which one the cluster's services let in) go by it.
        if let std::net::IpAddr::V4(seen) = from.to_canonical() {
            if info.ip != seen.to_string() {
                tracing::debug!(%mac, said = %info.ip, %seen, "agent named another address than the one it came from");
            }
            if !seen.is_unspecified() {
                row.ip = Some(seen);
            }
        }
        let was_64bit = row.cpu_64bit();
        let info_json = serde_json::to_string(info).ok();
        if row.info != info_json {
            // Kept even when the state does not change (an agent registering again): the
            // inventory a later registration is compared with.
            row.info = info_json;
            self.save(row, None)?;
        }
        row.last_seen = Some(now());
        let woke = self.inner().waking.remove(&mac);
        if let Some(sent) = woke {
            row.wakes_woke += 1;
            let said = format!(
                "woke: registered {}s after its magic packet ({} of {} woke)",
                sent.elapsed().as_secs(),
                row.wakes_woke,
                row.wakes_tried
            );
            self.save(row, Some(("wake", &said)))?;
            self.count_wake(&row.group, "woke");
        }
        let image_note = (!was_64bit && row.cpu_64bit())
            .then(|| self.next_image_note(mac))
            .flatten();
        self.inner().trace(
            mac,
            "registered",
            Proto::Agent,
            format!("agent from {from}"),
        );
        self.apply(
            row,
            Event::Registered,
            &format!("agent registered from {from}"),
        )?;
        if let Some(note) = image_note {
            tracing::info!(%mac, node = %row.name, "{note}");
            self.save(row, Some(("image", &note)))?;
        }
        Ok(())
    }

    /// A PC first found to have a 64-bit CPU while it runs another image than the one it
    /// will boot by BIOS from now on: what changes, for its history.
    fn next_image_note(&self, mac: Mac) -> Option<String> {
        let booted = self.inner().live.get(&mac)?.image.clone()?;
        let cfg = self.config();
        let next = cfg.bios_image(mac, true);
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
        let steady =
            live.state == Some(crate::lifecycle::NodeState::Healthy) && live.conflict.is_none();
        Ok(
            (steady && self.updates.receiver_count() == 0).then_some(HeartbeatResponse {
                peers_version: version,
                accounts_version: 0,
            }),
        )
    }

    /// The rest of a heartbeat: a state change (registered or lost → healthy), or a live
    /// update for dashboards. Blocking (database).
    pub fn heartbeat(&self, mac: Mac, hb: &Heartbeat) -> Result<HeartbeatResponse, AgentError> {
        self.clone_check(mac, Instant::now())?;
        if !self.inner().online(mac) {
            // Held back just now (another PC has its MAC): this session is over.
            return Err(self.refuse(AgentError::Unauthorized("quarantined")));
        }
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
            accounts_version: 0,
        })
    }

    /// Commands waiting for this node, signed for its current session and key, and the
    /// notifier to wait on when there are none. Memory only.
    pub fn take_commands(&self, mac: Mac) -> (Vec<Command>, Arc<Notify>) {
        let mut inner = self.inner();
        let live = inner.live.entry(mac).or_default();
        let key = self.keys.node_key(mac, live.epoch);
        let session = live.session.clone().unwrap_or_default();
        let expires_unix = now() + enlist_api::COMMAND_TTL_SECS;
        let cmds: Vec<Command> = live
            .commands
            .drain(..)
            .map(|(id, order)| {
                let terms = enlist_api::CommandTerms {
                    id,
                    order: &order,
                    expires_unix,
                };
                Command {
                    id,
                    signature: enlist_api::sign_command(&key, &session, terms),
                    order,
                    expires_unix,
                }
            })
            .collect();
        for c in cmds
            .iter()
            .filter(|c| !matches!(c.order, enlist_api::Order::Exec(_)))
        {
            if live.awaiting.len() >= super::live::AWAITED {
                live.awaiting.pop_front();
            }
            live.awaiting.push_back(c.id);
        }
        (cmds, live.notify.clone())
    }

    /// The result of a command the node was sent (once per command: a result for an id it
    /// was not sent, or sent twice, is refused and writes nothing).
    pub fn command_result(&self, mac: Mac, r: &CommandResult) -> Result<(), AgentError> {
        let awaited = {
            let mut inner = self.inner();
            let live = inner.live.entry(mac).or_default();
            let at = live.awaiting.iter().position(|id| *id == r.id);
            at.and_then(|i| live.awaiting.remove(i)).is_some()
        };
        if !awaited {
            tracing::debug!(%mac, id = r.id, "command result refused: no such command awaits one");
            return Err(self.refuse(AgentError::Forbidden("unawaited-result")));
        }
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

    /// Whether `mac`'s agent may write one more history row now (see
    /// [`super::live::Live::may_write_history`]); a refusal is counted.
    pub(super) fn agent_may_write(&self, mac: Mac) -> bool {
        let ok = self
            .inner()
            .live
            .entry(mac)
            .or_default()
            .may_write_history(Instant::now());
        if !ok {
            tracing::debug!(%mac, "agent history row dropped: over its budget");
            self.metrics
                .refused(&self.metrics.agent_refused, "history-rate");
        }
        ok
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
