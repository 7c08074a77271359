//! The wire format between the enlist head and the node agent, and the way both sides sign it.
//!
//! The agent talks plain HTTP (TLS is out of reach on a Pentium II: `ring` needs SSE2), so every
//! request is authenticated at the application layer:
//!
//! * Each node has a 32-byte key. The head derives it from its own secret and the node's MAC and
//!   hands it over inside the per-node part of the initrd; it never crosses the network again.
//! * Registration is signed over a one-time nonce fetched from the head (`GET` [`paths::NONCE`]);
//!   the head answers with a session id. Every later request is signed over that session and a
//!   sequence number that must grow, so a captured request cannot be replayed and one node's key
//!   cannot speak for another MAC.
//! * Commands sent by the head to a node carry a signature with the same key, so the agent only
//!   obeys its own head.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// HTTP paths of the agent API, relative to the head's base URL.
pub mod paths {
    pub const NONCE: &str = "/api/v1/agent/nonce";
    pub const REGISTER: &str = "/api/v1/agent/register";
    pub const HEARTBEAT: &str = "/api/v1/agent/heartbeat";
    pub const COMMANDS: &str = "/api/v1/agent/commands";
    pub const RESULT: &str = "/api/v1/agent/result";
    pub const LEAVING: &str = "/api/v1/agent/leaving";
    pub const PEERS: &str = "/api/v1/agent/peers";
}

/// Request headers that carry the signature.
pub mod headers {
    pub const NODE: &str = "x-enlist-node";
    pub const SESSION: &str = "x-enlist-session";
    pub const SEQ: &str = "x-enlist-seq";
    pub const SIGNATURE: &str = "x-enlist-signature";
}

/// What the agent reports about its PC when it registers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    pub cpu_model: String,
    pub cpu_mhz: u32,
    pub cpu_flags: Vec<String>,
    pub cores: u32,
    pub mem_total_kb: u64,
    pub nics: Vec<Nic>,
    pub ip: String,
    pub kernel: String,
    /// How the PC came to boot: `pxe`, `floppy`, `usb`, `direct` (kernel given by hand).
    pub boot_method: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Nic {
    pub name: String,
    pub mac: String,
    pub driver: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NonceResponse {
    pub nonce: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub info: NodeInfo,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub session: String,
    pub name: String,
    pub heartbeat_secs: u32,
    pub peers: Vec<Peer>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Heartbeat {
    pub load1: f32,
    pub load5: f32,
    pub load15: f32,
    pub mem_free_kb: u64,
    pub uptime_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// Changes whenever the set of enlisted nodes changes; the agent refetches peers on change.
    pub peers_version: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub ip: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeersResponse {
    pub version: u64,
    pub peers: Vec<Peer>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CommandKind {
    Reboot,
    PowerOff,
    /// Reboot so that the PC goes back to its own disk (the head answers its next PXE request
    /// with "boot locally").
    Release,
    RefreshPeers,
}

impl CommandKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Reboot => "reboot",
            CommandKind::PowerOff => "power-off",
            CommandKind::Release => "release",
            CommandKind::RefreshPeers => "refresh-peers",
        }
    }
}

/// A command for one node, signed by the head with that node's key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Command {
    pub id: u64,
    pub kind: CommandKind,
    pub signature: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandsResponse {
    pub commands: Vec<Command>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandResult {
    pub id: u64,
    pub ok: bool,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Leaving {
    /// `reboot`, `poweroff`, `release`, `shutdown`.
    pub reason: String,
}

type HmacSha256 = Hmac<Sha256>;

/// A node's secret key (32 bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct NodeKey(pub [u8; 32]);

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeKey(..)")
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct BadKey;

impl std::fmt::Display for BadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("node key must be 64 hex digits")
    }
}

impl std::error::Error for BadKey {}

impl NodeKey {
    pub fn from_hex(s: &str) -> Result<Self, BadKey> {
        let bytes = hex::decode(s.trim()).map_err(|_| BadKey)?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| BadKey)?;
        Ok(NodeKey(arr))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        <HmacSha256 as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length")
    }

    fn sign_parts(&self, parts: &[&[u8]]) -> String {
        let mut m = self.mac();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                m.update(b"\n");
            }
            m.update(p);
        }
        hex::encode(m.finalize().into_bytes())
    }

    fn verify_parts(&self, parts: &[&[u8]], signature: &str) -> bool {
        let Ok(sig) = hex::decode(signature) else {
            return false;
        };
        let mut m = self.mac();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                m.update(b"\n");
            }
            m.update(p);
        }
        // Constant-time comparison.
        m.verify_slice(&sig).is_ok()
    }
}

/// The signed fields of one agent request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAuth<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub node: &'a str,
    pub session: &'a str,
    pub seq: u64,
}

impl RequestAuth<'_> {
    fn parts(&self, body_hash: &str, seq: &str) -> [Vec<u8>; 7] {
        [
            b"enlist-req-v1".to_vec(),
            self.method.as_bytes().to_vec(),
            self.path.as_bytes().to_vec(),
            self.node.as_bytes().to_vec(),
            self.session.as_bytes().to_vec(),
            seq.as_bytes().to_vec(),
            body_hash.as_bytes().to_vec(),
        ]
    }

    pub fn sign(&self, key: &NodeKey, body: &[u8]) -> String {
        let hash = hex::encode(Sha256::digest(body));
        let seq = self.seq.to_string();
        let parts = self.parts(&hash, &seq);
        let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        key.sign_parts(&refs)
    }

    pub fn verify(&self, key: &NodeKey, body: &[u8], signature: &str) -> bool {
        let hash = hex::encode(Sha256::digest(body));
        let seq = self.seq.to_string();
        let parts = self.parts(&hash, &seq);
        let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        key.verify_parts(&refs, signature)
    }
}

fn command_parts<'a>(session: &'a str, id: &'a str, kind: CommandKind) -> [&'a [u8]; 4] {
    [
        b"enlist-cmd-v1",
        session.as_bytes(),
        id.as_bytes(),
        kind.as_str().as_bytes(),
    ]
}

/// Signature the head puts on a command for the node in `session`.
pub fn sign_command(key: &NodeKey, session: &str, id: u64, kind: CommandKind) -> String {
    let id = id.to_string();
    key.sign_parts(&command_parts(session, &id, kind))
}

/// Whether a command really comes from the head that holds this node's key.
pub fn verify_command(key: &NodeKey, session: &str, cmd: &Command) -> bool {
    let id = cmd.id.to_string();
    key.verify_parts(&command_parts(session, &id, cmd.kind), &cmd.signature)
}

/// Normalise a MAC address to lowercase colon form (`52:54:00:12:34:56`); accepts `-` or `:`
/// separators or none. Returns `None` for anything that is not 6 bytes of hex.
pub fn normalize_mac(s: &str) -> Option<String> {
    let hexdigits: String = s
        .chars()
        .filter(|c| *c != ':' && *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    if hexdigits.len() != 12 || !hexdigits.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let pairs: Vec<&str> = (0..6).map(|i| &hexdigits[i * 2..i * 2 + 2]).collect();
    Some(pairs.join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> NodeKey {
        NodeKey([b; 32])
    }

    fn auth(seq: u64) -> RequestAuth<'static> {
        RequestAuth {
            method: "POST",
            path: paths::HEARTBEAT,
            node: "52:54:00:00:00:01",
            session: "s1",
            seq,
        }
    }

    #[test]
    fn signature_round_trips_and_binds_every_field() {
        let k = key(7);
        let sig = auth(5).sign(&k, b"{}");
        assert!(auth(5).verify(&k, b"{}", &sig));
        assert!(!auth(6).verify(&k, b"{}", &sig), "seq is signed");
        assert!(!auth(5).verify(&k, b"{ }", &sig), "body is signed");
        assert!(!auth(5).verify(&key(8), b"{}", &sig), "key matters");
        let mut other = auth(5);
        other.node = "52:54:00:00:00:02";
        assert!(!other.verify(&k, b"{}", &sig), "node is signed");
        assert!(!auth(5).verify(&k, b"{}", "zz"), "garbage signature");
    }

    #[test]
    fn command_signature_checks_kind_and_session() {
        let k = key(1);
        let sig = sign_command(&k, "sess", 3, CommandKind::Reboot);
        let cmd = Command {
            id: 3,
            kind: CommandKind::Reboot,
            signature: sig.clone(),
        };
        assert!(verify_command(&k, "sess", &cmd));
        assert!(!verify_command(&k, "other", &cmd));
        let forged = Command {
            kind: CommandKind::PowerOff,
            ..cmd
        };
        assert!(!verify_command(&k, "sess", &forged));
    }

    #[test]
    fn mac_normalisation() {
        assert_eq!(
            normalize_mac("52-54-00-AB-cd-01").as_deref(),
            Some("52:54:00:ab:cd:01")
        );
        assert_eq!(
            normalize_mac("525400abcd01").as_deref(),
            Some("52:54:00:ab:cd:01")
        );
        assert_eq!(normalize_mac("52:54:00:ab:cd"), None);
        assert_eq!(normalize_mac("zz:54:00:ab:cd:01"), None);
    }

    #[test]
    fn key_hex_round_trip() {
        let k = key(0xab);
        assert_eq!(NodeKey::from_hex(&k.to_hex()), Ok(k));
        assert_eq!(NodeKey::from_hex("abcd"), Err(BadKey));
    }
}
