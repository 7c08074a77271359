//! Agent API bodies, both ways: what the head reads from agents and what the agent reads from
//! the head, through serde and the checks. No panic; a body that passes its check is sane.
#![no_main]

use enlist_api::{
    CommandResult, CommandsResponse, CopyFetch, CopySpec, Heartbeat, JobsDescriptor, Leaving, NodeLogs, PeersResponse,
    RegisterRequest, RegisterResponse, MAX_LOG_LINE, MAX_LOG_LINES, MAX_RESULT_MESSAGE,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<RegisterRequest>(data) {
        if r.check().is_ok() {
            assert!(r.challenge.len() == 32 && r.challenge.bytes().all(|c| c.is_ascii_hexdigit()));
        }
    }
    if let Ok(d) = serde_json::from_slice::<JobsDescriptor>(data) {
        if d.check().is_ok() && d.enabled {
            assert!(d.slurmd_port != 0);
            assert!(d
                .slurmd_allow
                .iter()
                .all(|a| a.parse::<std::net::Ipv4Addr>().is_ok()));
        }
    }
    if let Ok(h) = serde_json::from_slice::<Heartbeat>(data) {
        if h.check().is_ok() {
            assert!(h.load1.is_finite() && h.load5.is_finite() && h.load15.is_finite());
        }
    }
    if let Ok(r) = serde_json::from_slice::<CommandResult>(data) {
        assert!(r.bounded_message().len() <= MAX_RESULT_MESSAGE + 64);
    }
    let _ = serde_json::from_slice::<Leaving>(data);
    let _ = serde_json::from_slice::<CopyFetch>(data);
    // A copy's spec parsed is one the agent may act on: an absolute path with no '..', a
    // mode, a size within the cap.
    if let Ok(c) = serde_json::from_slice::<CopySpec>(data) {
        assert!(c.path.starts_with('/') && !c.path.split('/').any(|p| p == ".."));
        assert!(c.mode <= 0o7777 && c.size <= enlist_api::MAX_COPY_BYTES as u64);
    }
    let _ = serde_json::from_slice::<CommandsResponse>(data);
    if let Ok(r) = serde_json::from_slice::<RegisterResponse>(data) {
        if r.check().is_ok() {
            assert!(!r.name.contains(['\n', '\r', ' ', '\t']));
        }
    }
    if let Ok(p) = serde_json::from_slice::<PeersResponse>(data) {
        let _ = p.check();
    }
    if let Ok(l) = serde_json::from_slice::<NodeLogs>(data) {
        assert!(l.lines.len() <= MAX_LOG_LINES);
        assert!(l
            .lines
            .iter()
            .all(|x| x.text.len() <= MAX_LOG_LINE && x.source.len() <= 16));
    }
});
