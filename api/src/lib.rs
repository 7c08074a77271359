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
//! * Freshness runs both ways: the agent sends a challenge of its own with its registration
//!   ([`RegisterRequest::challenge`]) and believes only a reply signed over it, so a recorded
//!   reply played back by someone answering in the head's place is refused.
//! * Commands sent by the head to a node carry a signature with the same key, bound to the
//!   session and to an expiry ([`Command::expires_unix`], on the head's clock, which the agent
//!   learns at registration), so the agent only obeys its own head, once, and not late; every
//!   reply of the head is signed too ([`ReplyAuth`]), and the agent checks what a reply says
//!   ([`RegisterResponse::check`]) before it uses it.
//! * Both sides check every body against the limits here before using it: a value that cannot
//!   be right (a load of 1e39, a name with a newline) is refused, not shown or written.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod admin;
mod mac;
#[cfg(feature = "schema")]
pub mod openapi;
pub mod seal;

use hmac::{Hmac, Mac as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use mac::{BadMac, Mac};

/// Serde for a wire type whose values are checked as they are read: its derived
/// (`#[serde(remote = "Self")]`) impls, with its `check()` after deserializing, so no caller can
/// forget it.
macro_rules! checked_on_parse {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                <$t>::serialize(self, s)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = <$t>::deserialize(d)?;
                v.check().map_err(serde::de::Error::custom)?;
                Ok(v)
            }
        }
    };
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary (what a
/// bounded text keeps: command results, exec output, log lines).
pub fn cut_at_char(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Longest text field in an agent body (CPU model, kernel, NIC names).
pub const MAX_TEXT: usize = 256;
/// Longest command result message the head keeps; longer ones are cut.
pub const MAX_RESULT_MESSAGE: usize = 4096;
/// Largest agent request or reply body.
pub const MAX_BODY: usize = 64 * 1024;

/// HTTP paths of the agent API, relative to the head's base URL.
pub mod paths {
    pub const NONCE: &str = "/api/v1/agent/nonce";
    pub const REGISTER: &str = "/api/v1/agent/register";
    pub const HEARTBEAT: &str = "/api/v1/agent/heartbeat";
    pub const COMMANDS: &str = "/api/v1/agent/commands";
    pub const RESULT: &str = "/api/v1/agent/result";
    pub const LEAVING: &str = "/api/v1/agent/leaving";
    pub const PEERS: &str = "/api/v1/agent/peers";
    pub const JOBS: &str = "/api/v1/agent/jobs";
    pub const STATUS: &str = "/api/v1/agent/status";
    pub const EXEC_RESULT: &str = "/api/v1/agent/exec-result";
    pub const LOGS: &str = "/api/v1/agent/logs";
    /// The file of a copy command ([`super::CopyFetch`]; the reply is the file's bytes).
    pub const COPY_FILE: &str = "/api/v1/agent/copy-file";
}

/// Request headers that carry the signature.
pub mod headers {
    pub const NODE: &str = "x-enlist-node";
    pub const SESSION: &str = "x-enlist-session";
    pub const SEQ: &str = "x-enlist-seq";
    pub const SIGNATURE: &str = "x-enlist-signature";
    /// The head's signature on its reply (see [`crate::ReplyAuth`]).
    pub const REPLY_SIGNATURE: &str = "x-enlist-reply-signature";
}

/// A host name label (RFC 1123): 1-63 letters, digits and `-`, not starting or ending with `-`.
/// Node names go into every node's /etc/hosts and into Slurm, so nothing else is allowed.
pub fn valid_host_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn short_text(what: &str, s: &str) -> Result<(), String> {
    if s.len() > MAX_TEXT || s.chars().any(char::is_control) {
        return Err(format!(
            "{what}: longer than {MAX_TEXT} bytes or with control characters"
        ));
    }
    Ok(())
}

fn ipv4_or_empty(what: &str, s: &str) -> Result<(), String> {
    if !s.is_empty() && s.parse::<std::net::Ipv4Addr>().is_err() {
        return Err(format!("{what}: {s:?} is not an IPv4 address"));
    }
    Ok(())
}

/// What the agent reports about its PC when it registers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(remote = "Self")]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Nic {
    pub name: String,
    pub mac: String,
    pub driver: String,
}

checked_on_parse!(NodeInfo);

impl NodeInfo {
    /// Whether every field is within what a real PC reports.
    pub fn check(&self) -> Result<(), String> {
        for (what, v) in [
            ("cpu_model", &self.cpu_model),
            ("kernel", &self.kernel),
            ("boot_method", &self.boot_method),
        ] {
            short_text(what, v)?;
        }
        ipv4_or_empty("ip", &self.ip)?;
        if self.cpu_flags.len() > 512 {
            return Err("cpu_flags: more than 512".into());
        }
        for f in &self.cpu_flags {
            short_text("cpu_flags", f)?;
        }
        if self.nics.len() > 32 {
            return Err("nics: more than 32".into());
        }
        for n in &self.nics {
            short_text("nics.name", &n.name)?;
            short_text("nics.mac", &n.mac)?;
            short_text("nics.driver", &n.driver)?;
        }
        if self.cores > 65_536 || self.cpu_mhz > 1_000_000 || self.mem_total_kb > 1 << 40 {
            return Err("cores, cpu_mhz or mem_total_kb out of range".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NonceResponse {
    pub nonce: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(remote = "Self")]
pub struct RegisterRequest {
    pub info: NodeInfo,
    /// Chosen by the agent for this registration (32 hex digits, from its random source): the
    /// head signs its reply over it ([`ReplyAuth::session`]), so only a reply made for this
    /// very request is believed.
    pub challenge: String,
}

checked_on_parse!(RegisterRequest);

impl RegisterRequest {
    /// A challenge is 32 hex digits.
    pub fn check(&self) -> Result<(), String> {
        if !is_hex_id(&self.challenge) {
            return Err("challenge is not 32 hex digits (an agent older than its head? rebuild the node images)".into());
        }
        self.info.check()
    }
}

/// 32 hex digits: a session id or a challenge.
fn is_hex_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|c| c.is_ascii_hexdigit())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct RegisterResponse {
    pub session: String,
    pub name: String,
    pub heartbeat_secs: u32,
    pub peers: Vec<Peer>,
    /// The head's clock (unix seconds): the agent keeps its offset to judge command expiries
    /// on the head's time, whatever the PC's clock says.
    pub now_unix: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(remote = "Self")]
pub struct Heartbeat {
    pub load1: f32,
    pub load5: f32,
    pub load15: f32,
    pub mem_free_kb: u64,
    pub uptime_secs: u64,
}

/// Largest load average believed (a PC with thousands of runnable tasks is still below it).
pub const MAX_LOAD: f32 = 1.0e6;

checked_on_parse!(Heartbeat);

impl Heartbeat {
    /// Whether the values are ones a real PC reports: finite, non-negative load averages.
    pub fn check(&self) -> Result<(), String> {
        for (what, v) in [
            ("load1", self.load1),
            ("load5", self.load5),
            ("load15", self.load15),
        ] {
            if !v.is_finite() || !(0.0..=MAX_LOAD).contains(&v) {
                return Err(format!("{what}: {v} is not a load average"));
            }
        }
        if self.mem_free_kb > 1 << 40 {
            return Err("mem_free_kb out of range".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// Changes whenever the set of enlisted nodes changes; the agent refetches peers on change.
    pub peers_version: u64,
    /// Changes whenever the accounts jobs run as change (a user added on the head): the agent
    /// fetches its jobs descriptor again and rewrites /etc/passwd and /etc/group.
    #[serde(default)]
    pub accounts_version: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(remote = "Self")]
pub struct Peer {
    pub name: String,
    pub ip: String,
}

checked_on_parse!(Peer);

impl Peer {
    pub fn check(&self) -> Result<(), String> {
        if !valid_host_label(&self.name) {
            return Err(format!("peer name {:?} is not a host name", self.name));
        }
        if self.ip.parse::<std::net::Ipv4Addr>().is_err() {
            return Err(format!(
                "peer {}: {:?} is not an IPv4 address",
                self.name, self.ip
            ));
        }
        Ok(())
    }
}

/// Most peers a node lists (a reply with more is refused).
pub const MAX_PEERS: usize = 100_000;

fn check_peers(peers: &[Peer]) -> Result<(), String> {
    if peers.len() > MAX_PEERS {
        return Err(format!("more than {MAX_PEERS} peers"));
    }
    peers.iter().try_for_each(Peer::check)
}

checked_on_parse!(RegisterResponse);

impl RegisterResponse {
    /// What the agent checks before using a registration reply: a name it may put in
    /// /etc/hosts, a heartbeat period it can live with, well-formed peers.
    pub fn check(&self) -> Result<(), String> {
        if !valid_host_label(&self.name) {
            return Err(format!("node name {:?} is not a host name", self.name));
        }
        if !(1..=300).contains(&self.heartbeat_secs) {
            return Err(format!(
                "heartbeat of {} s is out of range",
                self.heartbeat_secs
            ));
        }
        if !is_hex_id(&self.session) {
            return Err("session is not a session id".into());
        }
        check_peers(&self.peers)
    }
}

checked_on_parse!(PeersResponse);

impl PeersResponse {
    pub fn check(&self) -> Result<(), String> {
        check_peers(&self.peers)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct PeersResponse {
    pub version: u64,
    pub peers: Vec<Peer>,
}

/// What a command tells a node's agent to do, with what it needs: a closed set (on the wire,
/// `"kind": "reboot"`, or `"kind": "exec", "exec": {...}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", content = "exec", rename_all = "kebab-case")]
pub enum Order {
    Reboot,
    PowerOff,
    /// Reboot so that the PC goes back to its own disk (the head answers its next PXE request
    /// with "boot locally").
    Release,
    RefreshPeers,
    /// Run a shell command (`enlist exec`) and post an [`ExecResult`].
    Exec(ExecSpec),
    /// Write a file (`enlist copy`): fetch it, check it against the signed size and hash,
    /// put it in place, and post an [`ExecResult`] (exit 0, or 1 with why).
    Copy(CopySpec),
    /// The cluster's munge key was replaced (`enlist jobs rotate-key`): fetch the jobs
    /// descriptor again, put its key in place and restart munged.
    Rekey,
}

impl Order {
    /// Its name on the wire and in a node's history.
    pub fn kind(&self) -> &'static str {
        match self {
            Order::Reboot => "reboot",
            Order::PowerOff => "power-off",
            Order::Release => "release",
            Order::RefreshPeers => "refresh-peers",
            Order::Exec(_) => "exec",
            Order::Copy(_) => "copy",
            Order::Rekey => "rekey",
        }
    }
}

/// A command for one node, signed by the head with that node's key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Command {
    pub id: u64,
    /// What to do (covered by the signature, an exec's shell command and timeout too).
    #[serde(flatten)]
    pub order: Order,
    /// After this instant (unix seconds, the head's clock) the agent refuses it: a command
    /// held back and delivered late, or played back, does not run (covered by the signature).
    pub expires_unix: i64,
    pub signature: String,
}

/// How long a command the head signs stays good: it is signed as the agent's long poll takes
/// it, so it arrives within a round trip.
pub const COMMAND_TTL_SECS: i64 = 60;

/// Longest shell command `enlist exec` sends, bytes.
pub const MAX_EXEC_COMMAND: usize = 4096;
/// Output a node sends back per command at most, bytes; the rest is counted, not sent (the
/// agent's request body stays far below [`MAX_BODY`] even with every byte JSON-escaped).
pub const MAX_EXEC_OUTPUT: usize = 8 * 1024;
/// Longest time a command may run, seconds.
pub const MAX_EXEC_TIMEOUT: u32 = 24 * 3600;

/// A shell command for a node: run as root by `/bin/sh -c`, stdout and stderr together, killed
/// (with everything it started) after `timeout_secs`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct ExecSpec {
    pub command: String,
    pub timeout_secs: u32,
}

checked_on_parse!(ExecSpec);

impl ExecSpec {
    /// A checked spec.
    pub fn new(command: String, timeout_secs: u32) -> Result<ExecSpec, String> {
        let spec = ExecSpec {
            command,
            timeout_secs,
        };
        spec.check()?;
        Ok(spec)
    }

    pub fn check(&self) -> Result<(), String> {
        if self.command.trim().is_empty() {
            return Err("empty command".into());
        }
        if self.command.len() > MAX_EXEC_COMMAND {
            return Err(format!("command longer than {MAX_EXEC_COMMAND} bytes"));
        }
        if self.command.contains('\0') {
            return Err("command contains a NUL byte".into());
        }
        if self.timeout_secs == 0 || self.timeout_secs > MAX_EXEC_TIMEOUT {
            return Err(format!("timeout must be 1..={MAX_EXEC_TIMEOUT} s"));
        }
        Ok(())
    }

    /// The bytes the command signature covers.
    fn signed(&self) -> String {
        format!("{}\n{}", self.timeout_secs, self.command)
    }
}

/// Largest file `enlist copy` sends, bytes: the node holds it in RAM while it checks it (and
/// the admin API takes it base64 in JSON).
pub const MAX_COPY_BYTES: usize = 1024 * 1024;
/// Longest destination path of a copy, bytes.
pub const MAX_COPY_PATH: usize = 1024;

/// A file for a node (`enlist copy`): where it goes, its mode, and its size and SHA-256,
/// signed with the command, so the bytes the agent then fetches (`paths::COPY_FILE`) are the
/// admin's or are refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct CopySpec {
    /// An absolute path; the file is written beside it and renamed over it.
    pub path: String,
    /// Permission bits (0o644).
    pub mode: u32,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

checked_on_parse!(CopySpec);

impl CopySpec {
    pub fn check(&self) -> Result<(), String> {
        let p = &self.path;
        if !p.starts_with('/') || p.ends_with('/') {
            return Err(format!("path {p:?}: an absolute path of a file"));
        }
        if p.len() > MAX_COPY_PATH || p.contains('\0') || p.split('/').any(|c| c == "..") {
            return Err(format!(
                "path: at most {MAX_COPY_PATH} bytes, no NUL, no '..'"
            ));
        }
        if self.mode > 0o7777 {
            return Err(format!("mode {:o}: permission bits only", self.mode));
        }
        if self.size > MAX_COPY_BYTES as u64 {
            return Err(format!("file larger than {MAX_COPY_BYTES} bytes"));
        }
        if self.sha256.len() != 64
            || !self
                .sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err("sha256: 64 lowercase hex digits".into());
        }
        Ok(())
    }

    fn signed(&self) -> String {
        format!(
            "{}\n{:o}\n{}\n{}",
            self.path, self.mode, self.size, self.sha256
        )
    }
}

/// The agent asks for the file of its copy command `id` (the head answers its bytes, signed
/// as every reply; only to the node the command was for).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyFetch {
    pub id: u64,
}

/// How a command ran on a node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct ExecResult {
    /// The command's id ([`Command::id`]).
    pub id: u64,
    /// Exit code, when it exited.
    pub exit: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// Killed at its timeout.
    pub timed_out: bool,
    /// What it printed (stdout and stderr), at most [`MAX_EXEC_OUTPUT`] bytes.
    pub output: String,
    /// Bytes it printed beyond that, not sent.
    pub cut_bytes: u64,
    /// It has ended. False: still running, and `output` is what it printed so far (the agent
    /// sends this every second while there is new output, so a long command shows its lines
    /// as they come).
    #[serde(default = "ended")]
    pub done: bool,
}

fn ended() -> bool {
    true
}

checked_on_parse!(ExecResult);

impl ExecResult {
    pub fn check(&self) -> Result<(), String> {
        if self.output.len() > MAX_EXEC_OUTPUT {
            return Err(format!("output longer than {MAX_EXEC_OUTPUT} bytes"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandsResponse {
    pub commands: Vec<Command>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CommandResult {
    pub id: u64,
    pub ok: bool,
    pub message: String,
}

impl CommandResult {
    /// The result as the head keeps it: the message cut to [`MAX_RESULT_MESSAGE`] bytes, and
    /// control characters other than newline and tab replaced.
    pub fn bounded_message(&self) -> String {
        let kept = cut_at_char(&self.message, MAX_RESULT_MESSAGE);
        let mut m: String = kept
            .chars()
            .map(|c| {
                if c.is_control() && c != '\n' && c != '\t' {
                    '?'
                } else {
                    c
                }
            })
            .collect();
        if kept.len() < self.message.len() {
            m.push_str(&format!(" [cut: {} bytes in all]", self.message.len()));
        }
        m
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
        <HmacSha256 as hmac::Mac>::new_from_slice(&self.0).expect("HMAC takes any key length")
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

/// What a node asks to join the scheduler: its image (the runtime bundle is built beside it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct JobsRequest {
    pub image: String,
    pub version: String,
}

/// How a node joins the scheduler, from the head (signed; the munge key sealed for the node).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(remote = "Self")]
pub struct JobsDescriptor {
    pub enabled: bool,
    /// `host:port` of slurmctld (`slurmd --conf-server`).
    pub controller: String,
    /// The munge socket named in slurm.conf (the head's path): the node links it to its own.
    pub munge_socket: String,
    pub munge_key: Option<seal::Sealed>,
    /// The Slurm runtime (slurmd, slurmstepd, munged, their plugins and libraries).
    pub bundle: Option<BundleRef>,
    /// The shared home, mounted at the same path as on the head.
    pub home: Option<HomeMount>,
    /// The job environment for the node's arch (a Debian userland, read-only over NFS):
    /// munged, slurmd and every job step run chrooted in it. `None`: in the node OS, with
    /// the runtime bundle (busybox and the Slurm daemons only).
    #[serde(default)]
    pub env: Option<EnvMount>,
    /// Who jobs run as, besides root: every node knows them.
    pub users: Vec<UserEntry>,
    /// The groups those users are in (primary and supplementary), with their members.
    #[serde(default)]
    pub groups: Vec<GroupEntry>,
    /// The version of `users` and `groups` ([`HeartbeatResponse::accounts_version`]).
    #[serde(default)]
    pub accounts_version: u64,
    /// The Slurm feature every enlisted node has (its arch is added).
    pub feature: String,
    /// Memory the node keeps for itself, MB (the rest is offered to jobs).
    pub mem_reserve_mb: u64,
    /// The head's clock (munge refuses credentials from skewed clocks).
    pub now_unix: i64,
    /// slurmd's port (slurm.conf's SlurmdPort): the node lets only the enlisted nodes and
    /// [`JobsDescriptor::slurmd_allow`] reach it.
    pub slurmd_port: u16,
    /// Who may reach slurmd besides the enlisted nodes: the head, and a site's slurmctld.
    pub slurmd_allow: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BundleRef {
    pub url: String,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HomeMount {
    /// The NFSv4 server's address.
    pub server: String,
    /// The path, the same on the head and the nodes.
    pub path: String,
}

/// A job environment's version, exported read-only by the head's NFS server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnvMount {
    /// The NFSv4 server's address.
    pub server: String,
    /// The version's root folder on the server.
    pub path: String,
    /// Its version (shown, and a changed one makes the node rebuild its job root).
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    /// Its members among the job users.
    pub members: Vec<String>,
}

/// Most accounts a descriptor carries (users, groups, members of one group).
pub const MAX_ACCOUNTS: usize = 20_000;

/// A name /etc/passwd and /etc/group take: 1-32 of a-z, 0-9, `_`, `-`.
fn account_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && n.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// A clean absolute path: no `..`, no control characters, at most [`MAX_TEXT`] bytes.
fn clean_path(what: &str, p: &str) -> Result<(), String> {
    if !p.starts_with('/')
        || p.split('/').any(|c| c == "..")
        || p.chars().any(char::is_control)
        || p.len() > MAX_TEXT
    {
        return Err(format!("{what}: {p:?} is not a clean absolute path"));
    }
    Ok(())
}

checked_on_parse!(JobsDescriptor);

impl JobsDescriptor {
    /// What the agent checks before acting on it (it runs as root).
    pub fn check(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        let (host, port) = self
            .controller
            .rsplit_once(':')
            .ok_or_else(|| format!("controller {:?} is not host:port", self.controller))?;
        if host.is_empty()
            || port.parse::<u16>().is_err()
            || host.chars().any(|c| c.is_control() || c == ' ')
        {
            return Err(format!("controller {:?} is not host:port", self.controller));
        }
        clean_path("munge_socket", &self.munge_socket)?;
        if let Some(b) = &self.bundle {
            if !b.url.starts_with("http://") || b.url.chars().any(|c| c.is_control() || c == ' ') {
                return Err(format!("bundle url {:?}", b.url));
            }
            if b.sha256.len() != 64 || !b.sha256.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err("bundle sha256 is not 64 hex digits".into());
            }
        }
        if let Some(h) = &self.home {
            clean_path("home", &h.path)?;
            if h.server.parse::<std::net::Ipv4Addr>().is_err() {
                return Err(format!("home server {:?} is not an IPv4 address", h.server));
            }
        }
        if let Some(e) = &self.env {
            clean_path("env", &e.path)?;
            if e.server.parse::<std::net::Ipv4Addr>().is_err() {
                return Err(format!("env server {:?} is not an IPv4 address", e.server));
            }
            if e.version.is_empty()
                || e.version.len() > 64
                || !e
                    .version
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
            {
                return Err(format!("env version {:?}", e.version));
            }
        }
        if self.users.len() > MAX_ACCOUNTS || self.groups.len() > MAX_ACCOUNTS {
            return Err(format!("more than {MAX_ACCOUNTS} users or groups"));
        }
        for u in &self.users {
            if !account_name(&u.name) || u.uid == 0 {
                return Err(format!("user {:?}", u.name));
            }
        }
        for g in &self.groups {
            if !account_name(&g.name)
                || g.gid == 0
                || g.members.len() > MAX_ACCOUNTS
                || !g.members.iter().all(|m| account_name(m))
            {
                return Err(format!("group {:?}", g.name));
            }
        }
        if self.slurmd_port == 0 || self.slurmd_allow.len() > 16 {
            return Err("slurmd_port is 0, or more than 16 slurmd_allow addresses".into());
        }
        for a in &self.slurmd_allow {
            if a.parse::<std::net::Ipv4Addr>().is_err() {
                return Err(format!("slurmd_allow: {a:?} is not an IPv4 address"));
            }
        }
        if !self
            .feature
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
            || self.feature.is_empty()
        {
            return Err(format!("feature {:?}", self.feature));
        }
        Ok(())
    }
}

/// Lines one log batch holds at most.
pub const MAX_LOG_LINES: usize = 400;
/// Longest log line kept (bytes); the agent cuts longer ones.
pub const MAX_LOG_LINE: usize = 1000;

/// The node's log lines since the last batch (`POST /api/v1/agent/logs`): its kernel's, its
/// agent's, slurmd's and munged's. The head keeps them per node, across reboots.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(remote = "Self")]
pub struct NodeLogs {
    /// The first batch since the agent started: the PC booted (the head marks it).
    #[serde(default)]
    pub boot: bool,
    /// Lines dropped on the node (its buffer was full while the head was away).
    #[serde(default)]
    pub dropped: u64,
    pub lines: Vec<LogLine>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LogLine {
    /// `kernel`, `agent`, `slurmd`, `munged`: lowercase letters, at most 16.
    pub source: String,
    pub text: String,
}

impl NodeLogs {
    /// At most [`MAX_LOG_LINES`] lines of at most [`MAX_LOG_LINE`] bytes, from named sources.
    /// (Control characters are the head's to neutralise when it writes them.)
    pub fn check(&self) -> Result<(), String> {
        if self.lines.len() > MAX_LOG_LINES {
            return Err(format!("more than {MAX_LOG_LINES} log lines"));
        }
        for l in &self.lines {
            if l.source.is_empty()
                || l.source.len() > 16
                || !l.source.bytes().all(|b| b.is_ascii_lowercase())
            {
                return Err(format!("log source {:?}: 1-16 lowercase letters", l.source));
            }
            if l.text.len() > MAX_LOG_LINE {
                return Err(format!("a log line over {MAX_LOG_LINE} bytes"));
            }
        }
        Ok(())
    }
}

checked_on_parse!(NodeLogs);

/// What the agent says of its part in the jobs (shown on the node and in its events).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NodeStatus {
    /// `starting`, `ready`, `failed`, `off`.
    pub jobs: String,
    /// Why, when it failed (one line).
    #[serde(default)]
    pub detail: String,
}

/// The head's signature on a reply to an agent request: the request's path, session (the
/// nonce for a registration) and sequence number, and the reply body. An agent on a network
/// where anyone can answer in the head's place checks it before reading the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyAuth<'a> {
    pub path: &'a str,
    pub session: &'a str,
    pub seq: u64,
}

impl ReplyAuth<'_> {
    fn digest_parts(&self, body: &[u8]) -> [Vec<u8>; 5] {
        [
            b"enlist-reply-v1".to_vec(),
            self.path.as_bytes().to_vec(),
            self.session.as_bytes().to_vec(),
            self.seq.to_string().into_bytes(),
            hex::encode(Sha256::digest(body)).into_bytes(),
        ]
    }

    pub fn sign(&self, key: &NodeKey, body: &[u8]) -> String {
        let parts = self.digest_parts(body);
        let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        key.sign_parts(&refs)
    }

    pub fn verify(&self, key: &NodeKey, body: &[u8], signature: &str) -> bool {
        let parts = self.digest_parts(body);
        let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        key.verify_parts(&refs, signature)
    }
}

fn command_parts<'a>(
    session: &'a str,
    id: &'a str,
    kind: &'static str,
    exec: &'a str,
    expires: &'a str,
) -> [&'a [u8]; 6] {
    [
        b"enlist-cmd-v3",
        session.as_bytes(),
        id.as_bytes(),
        kind.as_bytes(),
        exec.as_bytes(),
        expires.as_bytes(),
    ]
}

/// What a command's signature covers besides the session and the key.
#[derive(Debug, Clone, Copy)]
pub struct CommandTerms<'a> {
    pub id: u64,
    pub order: &'a Order,
    pub expires_unix: i64,
}

/// The bytes an order's signature covers beyond its kind: an exec's timeout and command.
fn order_data(order: &Order) -> String {
    match order {
        Order::Exec(spec) => spec.signed(),
        Order::Copy(spec) => spec.signed(),
        _ => String::new(),
    }
}

/// Signature the head puts on a command for the node in `session`.
pub fn sign_command(key: &NodeKey, session: &str, terms: CommandTerms) -> String {
    let (id, exec, expires) = (
        terms.id.to_string(),
        order_data(terms.order),
        terms.expires_unix.to_string(),
    );
    key.sign_parts(&command_parts(
        session,
        &id,
        terms.order.kind(),
        &exec,
        &expires,
    ))
}

/// Whether a command really comes from the head that holds this node's key (its expiry is
/// the caller's to judge, on the head's clock).
pub fn verify_command(key: &NodeKey, session: &str, cmd: &Command) -> bool {
    let id = cmd.id.to_string();
    let exec = order_data(&cmd.order);
    let expires = cmd.expires_unix.to_string();
    key.verify_parts(
        &command_parts(session, &id, cmd.order.kind(), &exec, &expires),
        &cmd.signature,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_are_checked_as_they_are_read() {
        let hb = |load: &str| {
            format!(r#"{{"load1":{load},"load5":0,"load15":0,"mem_free_kb":1,"uptime_secs":1}}"#)
        };
        let good: Heartbeat = serde_json::from_str(&hb("0.5")).unwrap();
        assert_eq!(good.load1, 0.5);
        let err = serde_json::from_str::<Heartbeat>(&hb("1e39")).unwrap_err();
        assert!(err.to_string().contains("is not a load average"), "{err}");
        // Written as derived (no recursion), read back the same.
        let again: Heartbeat =
            serde_json::from_str(&serde_json::to_string(&good).unwrap()).unwrap();
        assert_eq!(again, good);
        let peers = r#"{"version":1,"peers":[{"name":"a\n1.2.3.4 head","ip":"10.0.0.1"}]}"#;
        assert!(
            serde_json::from_str::<PeersResponse>(peers).is_err(),
            "a name with a newline"
        );
        let long = format!(
            r#"{{"command":"{}","timeout_secs":5}}"#,
            "x".repeat(MAX_EXEC_COMMAND + 1)
        );
        assert!(serde_json::from_str::<ExecSpec>(&long).is_err());
    }

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

    fn terms(id: u64, order: &Order) -> CommandTerms<'_> {
        CommandTerms {
            id,
            order,
            expires_unix: 1000,
        }
    }

    #[test]
    fn command_signature_checks_kind_session_and_expiry() {
        let k = key(1);
        let sig = sign_command(&k, "sess", terms(3, &Order::Reboot));
        let cmd = Command {
            id: 3,
            order: Order::Reboot,
            expires_unix: 1000,
            signature: sig.clone(),
        };
        assert!(verify_command(&k, "sess", &cmd));
        assert!(!verify_command(&k, "other", &cmd));
        let later = Command {
            expires_unix: 2000,
            ..cmd.clone()
        };
        assert!(!verify_command(&k, "sess", &later), "expiry is signed");
        let forged = Command {
            order: Order::PowerOff,
            ..cmd
        };
        assert!(!verify_command(&k, "sess", &forged));
    }

    #[test]
    fn an_exec_signature_covers_the_command_and_its_timeout() {
        let k = key(2);
        let spec = ExecSpec {
            command: "uname -m".into(),
            timeout_secs: 10,
        };
        let cmd = Command {
            id: 4,
            signature: sign_command(&k, "s", terms(4, &Order::Exec(spec.clone()))),
            order: Order::Exec(spec.clone()),
            expires_unix: 1000,
        };
        assert!(verify_command(&k, "s", &cmd));
        let mut other = cmd.clone();
        other.order = Order::Exec(ExecSpec {
            command: "rm -rf /".into(),
            ..spec.clone()
        });
        assert!(!verify_command(&k, "s", &other), "another command");
        let mut longer = cmd.clone();
        longer.order = Order::Exec(ExecSpec {
            timeout_secs: 11,
            ..spec
        });
        assert!(!verify_command(&k, "s", &longer), "another timeout");
        // On the wire as before; an exec without its command does not even parse.
        let wire = serde_json::to_value(&cmd).unwrap();
        assert_eq!(wire["kind"], "exec");
        assert_eq!(wire["exec"]["command"], "uname -m");
        let back: Command = serde_json::from_value(wire.clone()).unwrap();
        assert!(verify_command(&k, "s", &back));
        let mut bare = wire;
        bare.as_object_mut().unwrap().remove("exec");
        assert!(
            serde_json::from_value::<Command>(bare).is_err(),
            "the spec dropped"
        );
        let reboot: Command =
            serde_json::from_str(r#"{"id":1,"kind":"reboot","expires_unix":5,"signature":"x"}"#)
                .unwrap();
        assert_eq!(reboot.order, Order::Reboot);
    }

    #[test]
    fn replies_are_bound_to_their_request() {
        let k = key(3);
        let r = ReplyAuth {
            path: paths::REGISTER,
            session: "nonce",
            seq: 0,
        };
        let sig = r.sign(&k, b"{}");
        assert!(r.verify(&k, b"{}", &sig));
        assert!(!r.verify(&k, b"{ }", &sig), "body is signed");
        let other = ReplyAuth {
            seq: 1,
            ..r.clone()
        };
        assert!(!other.verify(&k, b"{}", &sig), "seq is signed");
        let other = ReplyAuth {
            path: paths::PEERS,
            ..r
        };
        assert!(!other.verify(&k, b"{}", &sig), "path is signed");
    }

    #[test]
    fn hostile_bodies_are_refused() {
        let hb = Heartbeat {
            load1: 1e39_f64 as f32,
            ..Default::default()
        };
        assert!(hb.check().is_err(), "infinite load");
        let hb = Heartbeat {
            load5: f32::NAN,
            ..Default::default()
        };
        assert!(hb.check().is_err());
        assert!(Heartbeat::default().check().is_ok());
        let resp = RegisterResponse {
            session: "ab".repeat(16),
            name: "a\n1.2.3.4 head".into(),
            heartbeat_secs: 5,
            peers: vec![],
            now_unix: 0,
        };
        assert!(resp.check().is_err(), "newline in the name");
        let resp = RegisterResponse {
            name: "node-1".into(),
            heartbeat_secs: u32::MAX,
            ..resp
        };
        assert!(resp.check().is_err(), "heartbeat period");
        let resp = RegisterResponse {
            heartbeat_secs: 5,
            peers: vec![Peer {
                name: "x".into(),
                ip: "1.2.3.4\n5.6.7.8 head".into(),
            }],
            ..resp
        };
        assert!(resp.check().is_err(), "peer address");
        let info = NodeInfo {
            cpu_model: "x".repeat(MAX_TEXT + 1),
            ..Default::default()
        };
        assert!(info.check().is_err());
        let long = CommandResult {
            id: 1,
            ok: true,
            message: "é".repeat(MAX_RESULT_MESSAGE),
        };
        let m = long.bounded_message();
        assert!(
            m.len() < MAX_RESULT_MESSAGE + 64 && m.contains("[cut: "),
            "{}",
            m.len()
        );
    }

    #[test]
    fn key_hex_round_trip() {
        let k = key(0xab);
        assert_eq!(NodeKey::from_hex(&k.to_hex()), Ok(k));
        assert_eq!(NodeKey::from_hex("abcd"), Err(BadKey));
    }
}
