//! The head's HTTP API in-process: every state-changing endpoint of the OpenAPI document refuses
//! unauthenticated and cross-node requests; an agent registers, heartbeats and gets commands.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use enlist::bootfiles::BootFiles;
use enlist::config::Config;
use enlist::http::{auth, router, AppState};
use enlist::image::store::ImageStore;
use enlist::metrics::Metrics;
use enlist::registry::Registry;
use enlist::store::Store;
use enlist_api::{headers, paths, NodeKey, RegisterRequest, RequestAuth};
use http_body_util::BodyExt;
use tower::ServiceExt;

const CONFIG: &str = "
state_dir: /nonexistent
http: { listen: 127.0.0.1:0, public_url: http://10.77.0.1:8080 }
dhcp:
  interfaces: [{ name: lo, mode: dhcp }]
  subnets: [{ subnet: 10.77.0.0/24, pool: [10.77.0.100, 10.77.0.199] }]
images: { dir: /nonexistent, default: i586 }
";

struct Head {
    app: axum::Router,
    registry: Arc<Registry>,
}

fn head() -> Head {
    head_with("")
}

/// A head whose config is CONFIG plus `extra` (more top-level sections).
fn head_with(extra: &str) -> Head {
    let text = format!("{CONFIG}{extra}");
    let cfg = Arc::new(Config::parse(&text, Path::new("test.yaml")).expect("config"));
    let store = Store::memory().expect("db");
    let metrics = Arc::new(Metrics::new());
    let registry = Registry::new(cfg.clone(), store.clone(), metrics.clone()).expect("registry");
    auth::set_password(&store, "correct horse").expect("password");
    let files = Arc::new(BootFiles::new(
        "/nonexistent".into(),
        ImageStore::new("/nonexistent"),
        registry.clone(),
    ));
    let state = Arc::new(AppState {
        registry: registry.clone(),
        files,
        metrics,
        auth: auth::Auth::new(store, "t".repeat(64), false),
    });
    let app = router(state).layer(MockConnectInfo(SocketAddr::from(([10, 77, 0, 100], 40000))));
    Head { app, registry }
}

async fn send(app: &axum::Router, req: Request<Body>) -> (StatusCode, String) {
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&body).to_string())
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
    h.registry
        .boot_decision("52:54:00:00:00:01", None)
        .expect("node");
    let ops = openapi_operations();
    assert!(ops.len() > 15, "the OpenAPI document lists the API");
    let mut checked = 0;
    for (method, path, secured) in ops {
        if !secured {
            continue;
        }
        let path = path.replace("{node}", "52:54:00:00:00:01");
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

#[tokio::test]
async fn cookie_session_needs_csrf_token_for_actions() {
    let h = head();
    h.registry
        .boot_decision("52:54:00:00:00:01", None)
        .expect("node");
    let login = |pw: &str| {
        Request::post("/api/v1/login")
            .header("content-type", "application/json")
            .body(Body::from(format!("{{\"password\":\"{pw}\"}}")))
            .expect("req")
    };
    assert_eq!(
        send(&h.app, login("wrong")).await.0,
        StatusCode::UNAUTHORIZED
    );
    let resp = h
        .app
        .clone()
        .oneshot(login("correct horse"))
        .await
        .expect("resp");
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().expect("kv").to_string();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let csrf = serde_json::from_slice::<serde_json::Value>(&body).expect("json")["csrf"]
        .as_str()
        .expect("csrf")
        .to_string();

    let action = |token: Option<&str>| {
        let mut r =
            Request::post("/api/v1/nodes/52:54:00:00:00:01/reboot").header("cookie", &session);
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
    assert_eq!(
        send(
            &h.app,
            Request::get("/api/v1/nodes")
                .body(Body::empty())
                .expect("req")
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
}

fn signed(
    path: &str,
    mac: &str,
    session: &str,
    seq: u64,
    key: &NodeKey,
    body: &str,
) -> Request<Body> {
    let sig = RequestAuth {
        method: "POST",
        path,
        node: mac,
        session,
        seq,
    }
    .sign(key, body.as_bytes());
    Request::post(path)
        .header(headers::NODE, mac)
        .header(headers::SESSION, session)
        .header(headers::SEQ, seq.to_string())
        .header(headers::SIGNATURE, sig)
        .body(Body::from(body.to_string()))
        .expect("req")
}

#[tokio::test]
async fn agents_authenticate_and_cannot_speak_for_other_nodes() {
    let h = head();
    let (a, b) = ("52:54:00:00:00:0a", "52:54:00:00:00:0b");
    let key_a = h.registry.keys().node_key(a, 0);
    let key_b = h.registry.keys().node_key(b, 0);
    h.registry.boot_decision(b, None).expect("node b");

    let nonce = |app: axum::Router| async move {
        let (_, body) = send(
            &app,
            Request::get(paths::NONCE).body(Body::empty()).expect("req"),
        )
        .await;
        serde_json::from_str::<serde_json::Value>(&body).expect("json")["nonce"]
            .as_str()
            .expect("nonce")
            .to_string()
    };
    let reg_body = serde_json::to_string(&RegisterRequest {
        info: Default::default(),
    })
    .expect("json");

    // Wrong key (b's key for a's MAC): refused.
    let n = nonce(h.app.clone()).await;
    assert_eq!(
        send(&h.app, signed(paths::REGISTER, a, &n, 0, &key_b, &reg_body))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    // Right key: registered. The nonce cannot be used twice.
    let n = nonce(h.app.clone()).await;
    let (status, body) = send(&h.app, signed(paths::REGISTER, a, &n, 0, &key_a, &reg_body)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
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
    assert_eq!(h.registry.find(a).expect("a").state, "healthy");

    // A queued command arrives at once, signed for this session.
    h.registry
        .command(a, enlist_api::CommandKind::Reboot)
        .expect("command");
    let (status, body) = send(
        &h.app,
        signed(paths::COMMANDS, a, &session, 4, &key_a, "{}"),
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

async fn register(h: &Head, mac: &str) -> (StatusCode, String) {
    register_from(h, mac, "").await
}

async fn register_from(h: &Head, mac: &str, ip: &str) -> (StatusCode, String) {
    let (_, body) = send(
        &h.app,
        Request::get(paths::NONCE).body(Body::empty()).expect("req"),
    )
    .await;
    let nonce = serde_json::from_str::<serde_json::Value>(&body).expect("json")["nonce"]
        .as_str()
        .expect("nonce")
        .to_string();
    let key = h.registry.keys().node_key(mac, 0);
    let body = serde_json::to_string(&RegisterRequest {
        info: enlist_api::NodeInfo {
            ip: ip.into(),
            ..Default::default()
        },
    })
    .expect("json");
    send(&h.app, signed(paths::REGISTER, mac, &nonce, 0, &key, &body)).await
}

#[tokio::test]
async fn peers_follow_registrations_renames_and_leaving_and_survive_a_restart() {
    let h = head();
    let (a, b) = ("52:54:00:00:00:1a", "52:54:00:00:00:1b");
    assert_eq!(register_from(&h, a, "10.77.0.101").await.0, StatusCode::OK);
    let (status, body) = register_from(&h, b, "10.77.0.102").await;
    assert_eq!(status, StatusCode::OK);
    let resp: enlist_api::RegisterResponse = serde_json::from_str(&body).expect("json");
    let ips: Vec<&str> = resp.peers.iter().map(|p| p.ip.as_str()).collect();
    assert_eq!(
        ips,
        ["10.77.0.101", "10.77.0.102"],
        "registration returns the peers"
    );

    let (v1, _) = h.registry.peers();
    h.registry.rename(b, "render1").expect("rename");
    let (v2, peers) = h.registry.peers();
    assert!(v2 > v1, "a rename changes the peers version");
    assert!(peers.iter().any(|p| p.name == "render1"));
    h.registry.leaving(a, "reboot").expect("leaving");
    let (v3, peers) = h.registry.peers();
    assert!(v3 > v2, "a node leaving changes the peers version");
    assert_eq!(peers.len(), 1, "{peers:?}");

    // A new head on the same database knows the same peers and node counts.
    let text = CONFIG.to_string();
    let cfg = Arc::new(Config::parse(&text, Path::new("test.yaml")).expect("config"));
    let metrics = Arc::new(Metrics::new());
    let again = Registry::new(cfg, h.registry.store().clone(), metrics.clone()).expect("registry");
    assert_eq!(again.peers().1, peers);
    let text = metrics.render_prometheus();
    assert!(
        text.contains("enlist_nodes{state=\"registered\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn approve_policy_keeps_new_nodes_pending_until_an_admin_approves() {
    let h = head_with("nodes: { enrollment: approve }\n");
    let mac = "52:54:00:00:00:0c";
    let (status, body) = register(&h, mac).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(h.registry.find(mac).expect("node").state, "pending");
    let req = Request::post(format!("/api/v1/nodes/{mac}/approve"))
        .header("authorization", format!("Bearer {}", "t".repeat(64)))
        .body(Body::empty())
        .expect("req");
    let (status, body) = send(&h.app, req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(h.registry.find(mac).expect("node").state, "registered");
}

#[tokio::test]
async fn known_macs_policy_refuses_strangers() {
    let h = head_with("nodes: { enrollment: known-macs }\n");
    let (status, _) = register(&h, "52:54:00:00:00:0d").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = send(
        &h.app,
        Request::get("/boot/52-54-00-00-00-0d.ipxe")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("not enlisted"), "{body}");
}

#[tokio::test]
async fn released_node_gets_a_local_disk_script() {
    let h = head();
    let mac = "52:54:00:00:00:0e";
    h.registry.boot_decision(mac, None).expect("node");
    h.registry.release(mac).expect("release");
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
    assert_eq!(h.registry.find(mac).expect("node").state, "gone");
}
