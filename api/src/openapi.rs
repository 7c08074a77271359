//! The head's OpenAPI document, made from the API types ([`crate::admin`], the agent's bodies)
//! and the table of operations below. The head serves it at `/api/v1/openapi.json`; the copy
//! checked in beside the head's HTTP code is compared with [`document`] by a test, so it
//! cannot drift from the types.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::admin::{self, NodeAction, ScheduleAction};

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (the boot path, the login, the counters).
    Public,
    /// An admin: the CLI's bearer token, or a browser session (with its CSRF token on POST).
    /// The node views are also readable without one when `admin.public_read` is on.
    Admin,
    /// A node's agent, its request signed with its key.
    Agent,
}

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// One operation of the API.
pub struct Operation {
    pub method: &'static str,
    pub path: String,
    pub tag: &'static str,
    pub summary: String,
    pub access: Access,
    /// Path and query parameters: name, `path` or `query`, what it is.
    pub params: Vec<(&'static str, &'static str, &'static str)>,
    pub request: Option<SchemaFn>,
    /// The success status, what it is, and its body's schema.
    pub ok: (u16, &'static str, Option<SchemaFn>),
    /// Other answers than the success and the access errors.
    pub errors: Vec<(u16, &'static str)>,
}

const NODE: (&str, &str, &str) = ("node", "path", "node name or MAC");
const GROUP: (&str, &str, &str) = ("group", "path", "a scheduled group");

fn op(
    method: &'static str,
    path: &str,
    tag: &'static str,
    access: Access,
    summary: &str,
) -> Operation {
    Operation {
        method,
        path: path.to_string(),
        tag,
        summary: summary.to_string(),
        access,
        params: vec![],
        request: None,
        ok: (200, "OK", None),
        errors: vec![],
    }
}

impl Operation {
    fn params(mut self, p: &[(&'static str, &'static str, &'static str)]) -> Self {
        self.params = p.to_vec();
        self
    }

    fn takes(mut self, f: SchemaFn) -> Self {
        self.request = Some(f);
        self
    }

    fn answers(mut self, status: u16, what: &'static str, f: Option<SchemaFn>) -> Self {
        self.ok = (status, what, f);
        self
    }

    fn or(mut self, status: u16, what: &'static str) -> Self {
        self.errors.push((status, what));
        self
    }
}

/// What a node action does, for its summary.
fn action_summary(name: &str) -> &'static str {
    match name {
        "approve" => "Let a pending node join",
        "release" => "Hand the PC back to its own disk (with jobs on, drained first; its agent reboots it; PXE answers local boot)",
        "enlist" => "Enlist a released node again",
        "reboot" => "Reboot the node into the node OS",
        "power-off" => "Power the PC off",
        "refresh-peers" => "Make the node rewrite /etc/hosts",
        "wake" => "Wake the PC by Wake-on-LAN (magic packet on every served interface, and to the directed broadcast of its relayed subnet); recorded in its history",
        "rename" => "Rename the node (body: name)",
        "group" => "Put the node in a group (body: group, a host label), recorded in its history",
        _ => "",
    }
}

fn schedule_summary(a: ScheduleAction) -> &'static str {
    match a {
        ScheduleAction::Skip => "The group's next scheduled change does not happen",
        ScheduleAction::Unskip => "Undo a skip: the next change happens as scheduled",
        ScheduleAction::RunNow => "Make the group's next change now (enlist: wake the room and boot it; release: drain and hand it back); it holds until the scheduled change after it",
    }
}

/// The admin operations on the session and on nodes.
fn node_admin_operations() -> Vec<Operation> {
    use Access::{Admin, Public};
    let mut ops = vec![
        op("post", "/api/v1/login", "admin", Public, "Log in with the admin password; sets an HttpOnly SameSite=Strict session cookie and returns the CSRF token")
            .takes(schema::<admin::LoginRequest>)
            .answers(200, "logged in", Some(schema::<admin::LoginAnswer>))
            .or(401, "wrong password")
            .or(429, "too many login attempts from this address, or the head is busy checking others; see Retry-After"),
        op("post", "/api/v1/logout", "admin", Admin, "End the session").answers(204, "logged out", None),
        op("get", "/api/v1/session", "admin", Public, "Whether this browser is logged in, and its CSRF token")
            .answers(200, "OK", Some(schema::<admin::SessionView>)),
        op("get", "/api/v1/nodes", "admin", Admin, "All nodes")
            .answers(200, "OK", Some(schema::<admin::NodeList>)),
        op("get", "/api/v1/nodes/{node}", "admin", Admin, "One node and its event history (the latest 200, newest first)")
            .params(&[NODE])
            .answers(200, "OK", Some(schema::<admin::NodeDetail>))
            .or(404, "no such node"),
        op("delete", "/api/v1/nodes/{node}", "admin", Admin, "Forget a node that is not up, for a PC gone for good: the workload manager forgets it (Slurm keeps one that joined once, asleep, to wake it for work), then the registry deletes its row (its history stays under its MAC; its next boot is a new PC's)")
            .params(&[NODE])
            .answers(200, "forgotten", Some(schema::<admin::Forgotten>))
            .or(404, "no such node")
            .or(409, "the node is up: release it first"),
        op("post", "/api/v1/nodes/{node}/initrd", "admin", Admin, "The initrd a node boots with (image initrd + its settings with a new node key), for booting a PC by hand (-kernel/-initrd, a USB stick); creates the node if needed. POST: it changes the node (a new key), so a browser session must send its CSRF token")
            .params(&[("node", "path", "node MAC"), ("image", "query", "image name (default: the node's)")])
            .answers(200, "the initrd (application/octet-stream)", None)
            .or(400, "not a MAC")
            .or(404, "no such image"),
    ];
    for name in NodeAction::NAMES {
        let mut o = op(
            "post",
            &format!("/api/v1/nodes/{{node}}/{name}"),
            "admin",
            Admin,
            action_summary(name),
        )
        .params(&[NODE])
        .answers(
            200,
            "the node as it is now",
            Some(schema::<admin::NodeView>),
        )
        .or(404, "no such node");
        if matches!(name, "rename" | "group") {
            o = o
                .takes(schema::<admin::ActionBody>)
                .or(400, "not a host label, or the body lacks it");
        }
        ops.push(o);
    }
    ops
}

/// Runs on many nodes: exec and copy, and their answers.
fn run_operations() -> Vec<Operation> {
    use Access::Admin;
    vec![
        op("post", "/api/v1/exec", "admin", Admin, "Run a shell command (as root, /bin/sh -c) on nodes: exactly one of nodes (a host list, node-[01-03]), group, all (every node that is up). Recorded in each node's history")
            .takes(schema::<admin::ExecRequest>)
            .answers(202, "started", Some(schema::<admin::ExecStarted>))
            .or(400, "no such node, no node chosen, or a bad command"),
        op("post", "/api/v1/copy", "admin", Admin, "Copy a file (base64, at most 1 MiB) to nodes, chosen as exec chooses them: each node's agent gets a command signed for it with the file's path, mode, size and SHA-256, fetches the file and writes it beside the path, then renames it over it. Read the run as an exec run's. The file crosses the boot network in clear, as exec's commands do")
            .takes(schema::<admin::CopyRequest>)
            .answers(202, "started", Some(schema::<admin::ExecStarted>))
            .or(400, "no such node, no node chosen, a relative path, a bad mode, or a file over 1 MiB"),
        op("get", "/api/v1/exec/{id}", "admin", Admin, "A run's answers so far; done when every node has answered or is unreachable")
            .params(&[("id", "path", "the run's id")])
            .answers(200, "the run", Some(schema::<admin::RunView>))
            .or(404, "no such run (the last 64 are kept)"),
    ]
}

/// The other admin operations: events, the counters, enrollment, exec, schedules, jobs.
fn admin_operations() -> Vec<Operation> {
    use Access::{Admin, Public};
    let mut ops = node_admin_operations();
    ops.extend(run_operations());
    ops.extend([
        op("get", "/api/v1/events", "admin", Admin, "Recent events of all nodes, newest first")
            .params(&[("limit", "query", "how many (1-1000, default 100)")])
            .answers(200, "OK", Some(schema::<admin::EventList>)),
        op("get", "/api/v1/stream", "admin", Admin, "Server-sent events: `node` (a NodeView), `event` (an Event), `resync` (reload: events were missed)")
            .answers(200, "text/event-stream", None)
            .or(503, "too many dashboards streaming (http.max_streams)"),
        op("get", "/api/v1/summary", "admin", Public, "Nodes per state and per header counter, and the cluster's totals with jobs on (the dashboard header; not secret)")
            .answers(200, "OK", Some(schema::<admin::Summary>)),
        op("get", "/api/v1/enrollment", "admin", Admin, "The enrollment policy and the enrollment window")
            .answers(200, "OK", Some(schema::<admin::Enrollment>)),
        op("post", "/api/v1/enrollment", "admin", Admin, "Open the enrollment window for for_secs seconds (at most a day; 0 closes it): new PCs that boot meanwhile become nodes with no approval, whatever the policy (enlist enroll --for 15m)")
            .takes(schema::<admin::EnrollmentRequest>)
            .answers(200, "policy and window, as GET", Some(schema::<admin::Enrollment>))
            .or(400, "longer than a day"),
        op("get", "/api/v1/nodes/{node}/logs", "admin", Admin, "The node's log as its agent sent it (kernel, agent, slurmd, munged; a line per boot), kept across its reboots: the last `tail` bytes, or what follows `from` in file `file` (as a previous answer ended: enlist node logs -f)")
            .params(&[NODE, ("tail", "query", "bytes from the end (default 64 KiB, at most 256 KiB)"), ("file", "query", "the file of a previous answer"), ("from", "query", "where the previous answer ended")])
            .answers(200, "OK", Some(schema::<admin::NodeLogText>))
            .or(404, "no such node"),
        op("get", "/api/v1/names", "admin", Admin, "The names (and groups) the admin gave PCs by MAC (enlist node import)")
            .answers(200, "OK", Some(schema::<admin::NameList>)),
        op("post", "/api/v1/names", "admin", Admin, "Name PCs by MAC, with a group if given (enlist node import names.csv): nodes are renamed now, PCs not seen yet get the name when they first boot and count as known (like a reservation). All or nothing")
            .takes(schema::<admin::NameList>)
            .answers(200, "what changed", Some(schema::<admin::ImportAnswer>))
            .or(400, "a bad name or group, a MAC or name listed twice, more than 500 PCs, or a name another node has"),
        op("get", "/api/v1/schedules", "admin", Admin, "Each scheduled group (schedules: in the config): enlisted or released, since when, and its next change of phase")
            .answers(200, "OK", Some(schema::<admin::ScheduleList>)),
    ]);
    for a in ScheduleAction::ALL {
        ops.push(
            op(
                "post",
                &format!("/api/v1/schedules/{{group}}/{}", a.name()),
                "admin",
                Admin,
                schedule_summary(a),
            )
            .params(&[GROUP])
            .answers(
                200,
                "the group's schedule now",
                Some(schema::<admin::GroupSchedule>),
            )
            .or(404, "no such scheduled group, or no change ahead"),
        );
    }
    ops.push(
        op("post", "/api/v1/jobs/rotate-key", "admin", Admin, "Replace the cluster's munge key (managed controller only): every node that is up fetches the new key and restarts its munged, then the head's munged restarts with it. Answers when done (the nodes have a minute)")
            .answers(200, "who was told, who did not confirm", Some(schema::<admin::Rotation>))
            .or(409, "jobs off, or the site's own controller (jobs.external)"),
    );
    ops.extend([
        op("post", "/api/v1/jobs/resume", "admin", Admin, "Slurm's ResumeProgram (enlist jobs resume): wake the nodes of a host list. A node outside its group's window, or whose PC is up on its own OS (it answers ARP), is held out of Slurm's service with why; the others are sent their magic packet, paced, and watched: one not registered within jobs.wake_timeout did not wake")
            .takes(schema::<admin::PowerRequest>)
            .answers(200, "woken, and left alone with why", Some(schema::<admin::PowerAnswer>))
            .or(400, "not a host list")
            .or(409, "no group is woken on demand"),
        op("post", "/api/v1/jobs/suspend", "admin", Admin, "Slurm's SuspendProgram (enlist jobs suspend): release the nodes of a host list (rebooted to their own disk); Slurm keeps them, asleep (idle~)")
            .takes(schema::<admin::PowerRequest>)
            .answers(200, "released, and left alone with why", Some(schema::<admin::PowerAnswer>))
            .or(400, "not a host list")
            .or(409, "no group is woken on demand"),
    ]);
    ops
}

/// The agent's operations.
fn agent_operations() -> Vec<Operation> {
    use crate::paths;
    use Access::{Agent, Public};
    vec![
        op(
            "get",
            paths::NONCE,
            "agent",
            Public,
            "A one-time nonce to sign a registration with",
        )
        .answers(200, "OK", Some(schema::<crate::NonceResponse>)),
        op(
            "post",
            paths::REGISTER,
            "agent",
            Agent,
            "Register an agent (signed with the node key over a nonce)",
        )
        .takes(schema::<crate::RegisterRequest>),
        op("post", paths::HEARTBEAT, "agent", Agent, "Heartbeat").takes(schema::<crate::Heartbeat>),
        op(
            "post",
            paths::COMMANDS,
            "agent",
            Agent,
            "Long poll for commands (answers within 25 s)",
        ),
        op("post", paths::RESULT, "agent", Agent, "Result of a command")
            .takes(schema::<crate::CommandResult>),
        op(
            "post",
            paths::EXEC_RESULT,
            "agent",
            Agent,
            "How an exec command ended on the node, or its output so far",
        )
        .takes(schema::<crate::ExecResult>),
        op(
            "post",
            paths::LEAVING,
            "agent",
            Agent,
            "The node is shutting down",
        )
        .takes(schema::<crate::Leaving>),
        op(
            "post",
            paths::PEERS,
            "agent",
            Agent,
            "Enlisted nodes, for /etc/hosts",
        ),
        op(
            "post",
            paths::JOBS,
            "agent",
            Agent,
            "How the node joins the scheduler (approved nodes only; the munge key sealed for it)",
        )
        .takes(schema::<crate::JobsRequest>),
        op(
            "post",
            paths::STATUS,
            "agent",
            Agent,
            "The node's part in the jobs (starting, ready, failed)",
        )
        .takes(schema::<crate::NodeStatus>),
        op(
            "post",
            paths::LOGS,
            "agent",
            Agent,
            "The node's log lines since its last batch (kernel, agent, slurmd, munged): kept at the head per node, across reboots",
        )
        .takes(schema::<crate::NodeLogs>),
    ]
}

/// The boot path and the metrics.
fn node_operations() -> Vec<Operation> {
    use Access::Public;
    let mut ops = agent_operations();
    ops.extend([
        op(
            "get",
            "/boot/{mac}.ipxe",
            "boot",
            Public,
            "iPXE boot script of a node",
        )
        .params(&[("mac", "path", "the node's MAC, hyphenated")]),
        op("get", "/metrics", "metrics", Public, "Prometheus metrics"),
    ]);
    ops
}

/// Every operation the document lists.
pub fn operations() -> Vec<Operation> {
    let mut ops = admin_operations();
    ops.extend(node_operations());
    ops
}

fn security(access: Access) -> Value {
    match access {
        Access::Public => json!([]),
        Access::Admin => json!([{ "cookieAuth": [], "csrfToken": [] }, { "bearerAuth": [] }]),
        Access::Agent => json!([{ "agentSignature": [] }]),
    }
}

fn operation(o: &Operation, g: &mut SchemaGenerator) -> Value {
    let mut responses = Map::new();
    let (status, what, body) = o.ok;
    let mut ok = json!({ "description": what });
    if let Some(f) = body {
        ok["content"] = json!({ "application/json": { "schema": f(g) } });
    }
    responses.insert(status.to_string(), ok);
    let error = json!({ "application/json": { "schema": schema::<admin::ErrorBody>(g) } });
    let mut errors = o.errors.clone();
    match o.access {
        Access::Public => {}
        Access::Admin | Access::Agent => {
            errors.extend([(401, "not authenticated"), (403, "forbidden")]);
        }
    }
    for (status, what) in errors {
        responses
            .entry(status.to_string())
            .or_insert_with(|| json!({ "description": what, "content": error.clone() }));
    }
    let mut v = json!({
        "summary": o.summary,
        "tags": [o.tag],
        "security": security(o.access),
        "responses": responses,
    });
    if let Some(f) = o.request {
        v["requestBody"] = json!({
            "required": true,
            "content": { "application/json": { "schema": f(g) } },
        });
    }
    if !o.params.is_empty() {
        let params: Vec<Value> = o
            .params
            .iter()
            .map(|(name, place, what)| {
                json!({
                    "name": name, "in": place, "required": *place == "path",
                    "description": what, "schema": { "type": "string" },
                })
            })
            .collect();
        v["parameters"] = Value::Array(params);
    }
    v
}

/// The OpenAPI 3.0 document of the head's API.
pub fn document() -> Value {
    let mut g = SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    for o in operations() {
        let item = paths.entry(o.path.clone()).or_insert_with(|| json!({}));
        item[o.method] = operation(&o, &mut g);
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "enlist head API",
            "version": "1",
            "description": "Admin API (used by the dashboard and `enlist nodes`), agent API (requests signed per enlist_api) and boot endpoints. Generated from the types in enlist_api::admin and the table in enlist_api::openapi.",
        },
        "paths": paths,
        "components": {
            "schemas": g.take_definitions(true),
            "securitySchemes": {
                "cookieAuth": { "type": "apiKey", "in": "cookie", "name": "enlist_session" },
                "csrfToken": { "type": "apiKey", "in": "header", "name": "x-csrf-token", "description": "required with the cookie on POST" },
                "bearerAuth": { "type": "http", "scheme": "bearer", "description": "token in <state_dir>/admin.token (root only), for the CLI" },
                "agentSignature": { "type": "apiKey", "in": "header", "name": "x-enlist-signature", "description": "HMAC-SHA256 with the node key over method, path, node, session, sequence and body hash; plus x-enlist-node, x-enlist-session, x-enlist-seq" },
            },
        },
    })
}

/// The document as the checked-in file holds it: pretty JSON and a final newline.
pub fn document_text() -> String {
    let mut s = serde_json::to_string_pretty(&document()).unwrap_or_default();
    s.push('\n');
    s
}
