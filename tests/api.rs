//! The head's HTTP API in-process, built by the same constructor as `enlist serve`: every
//! secured endpoint of the OpenAPI document refuses unauthenticated requests; an agent gets its
//! key only through a boot (or an admin), registers, heartbeats and gets signed commands and
//! replies; policies hold.

#![allow(clippy::unwrap_used)] // tests unwrap what they set up

use std::net::SocketAddr;
use std::path::Path;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use enlist::config::Config;
use enlist::head::Head;
use enlist::image::store::ImageStore;
use enlist::lifecycle::NodeState;
use enlist::store::Store;
use enlist_api::{headers, paths, Mac, NodeKey, RegisterRequest, ReplyAuth, RequestAuth};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// Where the in-process requests come from.
const PEER: [u8; 4] = [10, 77, 0, 100];
const TOKEN: &str = "tttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttt";

struct TestHead {
    app: axum::Router,
    head: Head,
    _dir: tempfile::TempDir,
}

fn config(dir: &Path, extra: &str) -> Config {
    let text = format!(
        "state_dir: {d}\nhttp: {{ listen: 127.0.0.1:0, public_url: http://10.77.0.1:8080 }}\n\
         dhcp:\n  interfaces: [{{ name: lo, mode: proxy }}]\n\
         images: {{ dir: {d}/images, bios: i586 }}\n{extra}",
        d = dir.display()
    );
    Config::parse(&text, Path::new("test.yaml")).expect("config")
}

/// A head on an in-memory database with one published image, whose config is the base plus
/// `extra` (more top-level sections).
fn head_with(extra: &str) -> TestHead {
    let dir = tempfile::tempdir().expect("tempdir");
    ImageStore::new(dir.path().join("images"))
        .publish("i586", "v1", &[("initrd", b"INITRD"), ("vmlinuz", b"K")])
        .expect("publish");
    let store = Store::memory().expect("db");
    enlist::http::auth::set_password(&store, "correct horse").expect("password");
    let head = Head::new(config(dir.path(), extra), store, TOKEN.into()).expect("head");
    let app = head
        .router()
        .layer(MockConnectInfo(SocketAddr::from((PEER, 40000))));
    TestHead {
        app,
        head,
        _dir: dir,
    }
}

fn head() -> TestHead {
    head_with("")
}

async fn send(app: &axum::Router, req: Request<Body>) -> (StatusCode, String) {
    let (status, _, body) = send_full(app, req).await;
    (status, String::from_utf8_lossy(&body).to_string())
}

async fn send_full(
    app: &axum::Router,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    (status, headers, body)
}

fn admin(method: &str, path: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .expect("req")
}

fn mac(s: &str) -> Mac {
    Mac::parse(s).expect("mac")
}

/// The key in a node's initrd overlay (`key=` in node.conf).
fn key_in(initrd: &[u8]) -> NodeKey {
    let text = String::from_utf8_lossy(initrd);
    let hex = text
        .split("key=")
        .nth(1)
        .and_then(|t| t.get(..64))
        .expect("key line");
    NodeKey::from_hex(hex).expect("key")
}

/// Enlist `mac` as an admin booting it by hand would: its initrd from the admin API.
async fn enlisted(h: &TestHead, m: &str) -> NodeKey {
    let (status, _, body) =
        send_full(&h.app, admin("POST", &format!("/api/v1/nodes/{m}/initrd"))).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert!(body.starts_with(b"INITRD"), "image initrd first");
    key_in(&body)
}

fn openapi_operations() -> Vec<(String, String, bool)> {
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("../src/http/openapi.json")).expect("openapi");
    let mut ops = vec![];
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("ops") {
            let secured = op["security"]
                .as_array()
                .map(|a| !a.is_empty())
                .unwrap_or(false);
            ops.push((method.to_uppercase(), path.clone(), secured));
        }
    }
    ops
}

#[tokio::test]
async fn every_secured_endpoint_refuses_anonymous_requests() {
    let h = head();
    enlisted(&h, "52:54:00:00:00:01").await;
    let ops = openapi_operations();
    assert!(ops.len() > 15, "the OpenAPI document lists the API");
    let mut checked = 0;
    for (method, path, secured) in ops {
        if !secured {
            continue;
        }
        let path = path
            .replace("{node}", "52:54:00:00:00:01")
            .replace("{group}", "night");
        let req = Request::builder()
            .method(method.as_str())
            .uri(&path)
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .expect("req");
        let (status, body) = send(&h.app, req).await;
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
            "{method} {path} without credentials answered {status}: {body}"
        );
        checked += 1;
    }
    assert!(checked >= 15, "checked {checked} endpoints");
}

fn login(pw: &str) -> Request<Body> {
    Request::post("/api/v1/login")
        .header("content-type", "application/json")
        .body(Body::from(format!("{{\"password\":\"{pw}\"}}")))
        .expect("req")
}

#[tokio::test]
async fn cookie_session_needs_csrf_token_and_ends_with_a_new_password() {
    let h = head();
    enlisted(&h, "52:54:00:00:00:01").await;
    assert_eq!(
        send(&h.app, login("wrong")).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, hdrs, body) = send_full(&h.app, login("correct horse")).await;
    assert_eq!(status, StatusCode::OK);
    let cookie = hdrs["set-cookie"].to_str().expect("cookie").to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().expect("kv").to_string();
    let csrf = serde_json::from_slice::<serde_json::Value>(&body).expect("json")["csrf"]
        .as_str()
        .expect("csrf")
        .to_string();

    let action = |token: Option<&str>| {
        let mut r =
            Request::post("/api/v1/nodes/52:54:00:00:00:01/enlist").header("cookie", &session);
        if let Some(t) = token {
            r = r.header("x-csrf-token", t);
        }
        r.body(Body::empty()).expect("req")
    };
    assert_eq!(
        send(&h.app, action(None)).await.0,
        StatusCode::FORBIDDEN,
        "no CSRF token"
    );
    assert_eq!(
        send(&h.app, action(Some("forged"))).await.0,
        StatusCode::FORBIDDEN,
        "wrong CSRF token"
    );
    let (status, body) = send(&h.app, action(Some(&csrf))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Reading needs the cookie too (public_read is off).
    let anon = Request::get("/api/v1/nodes")
        .body(Body::empty())
        .expect("req");
    assert_eq!(send(&h.app, anon).await.0, StatusCode::UNAUTHORIZED);

    // A new password ends the session (within the head's 2 s cache of the hash).
    enlist::http::auth::set_password(&h.head.store, "battery staple").expect("password");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(
        send(&h.app, action(Some(&csrf))).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn logins_are_throttled_per_source() {
    let h = head();
    let mut codes = vec![];
    for _ in 0..6 {
        codes.push(send(&h.app, login("wrong")).await.0);
    }
    assert_eq!(
        &codes[..3],
        [StatusCode::UNAUTHORIZED; 3],
        "a few free tries"
    );
    assert!(
        codes[4..].contains(&StatusCode::TOO_MANY_REQUESTS),
        "{codes:?}"
    );
    assert_eq!(
        send(&h.app, login("correct horse")).await.0,
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password waits its turn"
    );
}

fn signed(path: &str, m: Mac, session: &str, seq: u64, key: &NodeKey, body: &str) -> Request<Body> {
    let node = m.to_string();
    let sig = RequestAuth {
        method: "POST",
        path,
        node: &node,
        session,
        seq,
    }
    .sign(key, body.as_bytes());
    Request::post(path)
        .header(headers::NODE, node)
        .header(headers::SESSION, session)
        .header(headers::SEQ, seq.to_string())
        .header(headers::SIGNATURE, sig)
        .body(Body::from(body.to_string()))
        .expect("req")
}

async fn nonce(app: &axum::Router) -> String {
    let (_, body) = send(
        app,
        Request::get(paths::NONCE).body(Body::empty()).expect("req"),
    )
    .await;
    serde_json::from_str::<serde_json::Value>(&body).expect("json")["nonce"]
        .as_str()
        .expect("nonce")
        .to_string()
}

/// Register `m` with `key`; the reply's status, signature header and body.
async fn register_with(
    h: &TestHead,
    m: Mac,
    key: &NodeKey,
    ip: &str,
) -> (StatusCode, Option<String>, String, String) {
    let n = nonce(&h.app).await;
    let body = serde_json::to_string(&RegisterRequest {
        info: enlist_api::NodeInfo {
            ip: ip.into(),
            ..Default::default()
        },
        challenge: CHALLENGE.into(),
    })
    .expect("json");
    let mut req = signed(paths::REGISTER, m, &n, 0, key, &body);
    // The address it comes from, as the listener says (the head goes by it, not by `ip`).
    if let Ok(ip) = ip.parse::<std::net::IpAddr>() {
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::new(
                ip, 40000,
            )));
    }
    let (status, hdrs, body) = send_full(&h.app, req).await;
    let sig = hdrs
        .get(headers::REPLY_SIGNATURE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, sig, String::from_utf8_lossy(&body).to_string(), n)
}

/// The agents' challenge in these tests (a real agent draws a new one for each registration).
const CHALLENGE: &str = "0123456789abcdef0123456789abcdef";

async fn register(h: &TestHead, m: Mac, key: &NodeKey, ip: &str) -> (StatusCode, String) {
    let (status, _, body, _) = register_with(h, m, key, ip).await;
    (status, body)
}

#[tokio::test]
async fn agents_authenticate_and_cannot_speak_for_other_nodes() {
    let h = head();
    let (a, b) = (mac("52:54:00:00:00:0a"), mac("52:54:00:00:00:0b"));
    let key_a = enlisted(&h, "52:54:00:00:00:0a").await;
    let key_b = enlisted(&h, "52:54:00:00:00:0b").await;

    // Wrong key (b's key for a's MAC): refused.
    assert_eq!(
        register(&h, a, &key_b, "").await.0,
        StatusCode::UNAUTHORIZED
    );
    // Right key: registered, and the reply is signed for this request: over the agent's
    // challenge, not the head's nonce (which anyone answering in the head's place controls).
    let (status, sig, body, n) = register_with(&h, a, &key_a, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let reply = ReplyAuth {
        path: paths::REGISTER,
        session: CHALLENGE,
        seq: 0,
    };
    let sig = sig.as_deref().unwrap_or("");
    assert!(reply.verify(&key_a, body.as_bytes(), sig), "signed reply");
    assert!(!reply.verify(&key_b, body.as_bytes(), sig));
    let over_nonce = ReplyAuth {
        session: &n,
        ..reply
    };
    assert!(!over_nonce.verify(&key_a, body.as_bytes(), sig));
    // The nonce cannot be used twice.
    let reg_body = serde_json::to_string(&RegisterRequest {
        info: Default::default(),
        challenge: CHALLENGE.into(),
    })
    .expect("json");
    assert_eq!(
        send(&h.app, signed(paths::REGISTER, a, &n, 0, &key_a, &reg_body))
            .await
            .0,
        StatusCode::UNAUTHORIZED,
        "nonce replay"
    );
    let session = serde_json::from_str::<serde_json::Value>(&body).expect("json")["session"]
        .as_str()
        .expect("session")
        .to_string();

    let hb = r#"{"load1":0.5,"load5":0,"load15":0,"mem_free_kb":1000,"uptime_secs":3}"#;
    assert_eq!(
        send(&h.app, signed(paths::HEARTBEAT, a, &session, 1, &key_a, hb))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        send(&h.app, signed(paths::HEARTBEAT, a, &session, 1, &key_a, hb))
            .await
            .0,
        StatusCode::UNAUTHORIZED,
        "replayed sequence"
    );
    // Node b's key with a's session: another node's identity.
    assert_eq!(
        send(&h.app, signed(paths::HEARTBEAT, b, &session, 2, &key_b, hb))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    // Tampered body.
    let mut forged = signed(paths::HEARTBEAT, a, &session, 3, &key_a, hb);
    *forged.body_mut() = Body::from(hb.replace("0.5", "9.5"));
    assert_eq!(send(&h.app, forged).await.0, StatusCode::UNAUTHORIZED);
    // A load no PC has: refused, and the node unchanged.
    let absurd = hb.replace("0.5", "1e39");
    assert_eq!(
        send(
            &h.app,
            signed(paths::HEARTBEAT, a, &session, 4, &key_a, &absurd)
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        h.head.registry.node(a).expect("a").state,
        NodeState::Healthy
    );

    // A queued command arrives at once, signed for this session.
    h.head
        .registry
        .command(a, enlist_api::Order::Reboot)
        .expect("command");
    let (status, body) = send(
        &h.app,
        signed(paths::COMMANDS, a, &session, 5, &key_a, "{}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let cmds: enlist_api::CommandsResponse = serde_json::from_str(&body).expect("json");
    assert_eq!(cmds.commands.len(), 1);
    assert!(enlist_api::verify_command(
        &key_a,
        &session,
        &cmds.commands[0]
    ));
    assert!(!enlist_api::verify_command(
        &key_b,
        &session,
        &cmds.commands[0]
    ));
}

#[tokio::test]
async fn registration_of_a_node_the_head_never_booted_is_refused_and_creates_nothing() {
    let h = head();
    let stranger = mac("52:54:00:00:00:0f");
    let key = h.head.registry.keys().node_key(stranger, 0);
    assert_eq!(
        register(&h, stranger, &key, "").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert!(h.head.store.node(stranger).expect("db").is_none());
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let h = head();
    let (status, body) = send(
        &h.app,
        Request::get("/metrics").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("enlist_nodes{state=\"healthy\"}"), "{body}");
    assert!(!body.contains("# EOF"), "classic text format by default");
    let om = Request::get("/metrics")
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .body(Body::empty())
        .expect("req");
    let (_, body) = send(&h.app, om).await;
    assert!(body.ends_with("# EOF\n"), "OpenMetrics when asked for");
}

#[tokio::test]
async fn peers_follow_registrations_renames_and_leaving_and_survive_a_restart() {
    let h = head();
    let (a, b) = (mac("52:54:00:00:00:1a"), mac("52:54:00:00:00:1b"));
    let (ka, kb) = (
        enlisted(&h, "52:54:00:00:00:1a").await,
        enlisted(&h, "52:54:00:00:00:1b").await,
    );
    assert_eq!(register(&h, a, &ka, "10.77.0.101").await.0, StatusCode::OK);
    let (status, body) = register(&h, b, &kb, "10.77.0.102").await;
    assert_eq!(status, StatusCode::OK);
    let resp: enlist_api::RegisterResponse = serde_json::from_str(&body).expect("json");
    let ips: Vec<&str> = resp.peers.iter().map(|p| p.ip.as_str()).collect();
    assert_eq!(
        ips,
        ["10.77.0.101", "10.77.0.102"],
        "registration returns the peers"
    );

    let reg = &h.head.registry;
    let (v1, _) = reg.peers();
    reg.rename(b, "render1").expect("rename");
    let (v2, peers) = reg.peers();
    assert!(v2 > v1, "a rename changes the peers version");
    assert!(peers.iter().any(|p| p.name == "render1"));
    reg.leaving(a, "reboot").expect("leaving");
    let (v3, peers) = reg.peers();
    assert!(v3 > v2, "a node leaving changes the peers version");
    assert_eq!(peers.len(), 1, "{peers:?}");

    // A new head on the same database knows the same peers and node counts.
    let again = Head::new(
        h.head.cfg.as_ref().clone(),
        h.head.store.clone(),
        TOKEN.into(),
    )
    .expect("head");
    assert_eq!(again.registry.peers().1, peers);
    let text = again.metrics.render_prometheus();
    assert!(
        text.contains("enlist_nodes{state=\"registered\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn approve_policy_keeps_new_pcs_pending_until_an_admin_approves() {
    let h = head_with("nodes: { enrollment: approve }\n");
    let (status, body) = send(
        &h.app,
        Request::get("/boot/52-54-00-00-00-0c.ipxe")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("waits for an admin to approve"), "{body}");
    assert!(
        !body.contains("initrd"),
        "no initrd (no key) before approval: {body}"
    );
    let (_, list) = send(&h.app, admin("GET", "/api/v1/nodes")).await;
    assert!(list.contains("\"pending\""), "{list}");
    let (status, body) = send(
        &h.app,
        admin("POST", "/api/v1/nodes/52:54:00:00:00:0c/approve"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = send(
        &h.app,
        Request::get("/boot/52-54-00-00-00-0c.ipxe")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert!(
        body.contains("initrd --name initrd"),
        "boots once approved: {body}"
    );
}

#[tokio::test]
async fn known_macs_policy_refuses_strangers() {
    let h = head_with("nodes: { enrollment: known-macs }\n");
    let (status, body) = send(
        &h.app,
        Request::get("/boot/52-54-00-00-00-0d.ipxe")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("not enlisted"), "{body}");
    assert!(h
        .head
        .store
        .node(mac("52:54:00:00:00:0d"))
        .expect("db")
        .is_none());
}

#[tokio::test]
async fn released_node_gets_a_local_disk_script() {
    let h = head();
    let m = mac("52:54:00:00:00:0e");
    enlisted(&h, "52:54:00:00:00:0e").await;
    h.head.registry.release(m).expect("release");
    let (status, body) = send(
        &h.app,
        Request::get("/boot/52-54-00-00-00-0e.ipxe")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("sanboot --no-describe --drive 0x80"),
        "{body}"
    );
    assert_eq!(
        h.head.registry.node(m).expect("node").state,
        NodeState::Gone
    );
}

#[tokio::test]
async fn the_dashboard_header_counts_are_public() {
    let h = head();
    enlisted(&h, "52:54:00:00:00:01").await;
    let (status, body) = send(
        &h.app,
        Request::get("/api/v1/summary")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["nodes"]["seen"], 1, "{body}");
}

/// The schedules API: where a group stands; skip, un-skip and run-now by an admin; unknown
/// groups and actions refused.
#[tokio::test]
async fn schedules_are_listed_skipped_and_run_now_by_an_admin() {
    // A window that never opens on its own (31 February): released, no change ahead.
    let h = head_with(
        "schedules:\n  - { group: lab, enlist: \"0 20 * * *\", release: \"0 7 * * *\" }\n  - { group: never, enlist: \"0 0 31 feb *\", release: \"0 0 30 feb *\" }\n",
    );
    let (status, body) = send(&h.app, admin("GET", "/api/v1/schedules")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["schedules"][0]["group"], "lab", "{v}");
    assert_eq!(v["schedules"][1]["phase"], "released", "{v}");
    assert!(v["schedules"][1]["next"].is_null(), "{v}");

    let (status, body) = send(&h.app, admin("POST", "/api/v1/schedules/lab/skip")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["next"]["skipped"], true, "{v}");
    let (_, body) = send(&h.app, admin("POST", "/api/v1/schedules/lab/unskip")).await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["next"]["skipped"], false, "{v}");

    let (status, body) = send(&h.app, admin("POST", "/api/v1/schedules/never/run-now")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        v["phase"], "enlisted",
        "run now enlists a released group: {v}"
    );

    for (path, code) in [
        ("/api/v1/schedules/never/skip", StatusCode::NOT_FOUND),
        ("/api/v1/schedules/nosuch/run-now", StatusCode::NOT_FOUND),
        ("/api/v1/schedules/lab/explode", StatusCode::NOT_FOUND),
    ] {
        let (status, body) = send(&h.app, admin("POST", path)).await;
        assert_eq!(status, code, "{path}: {body}");
    }
}
