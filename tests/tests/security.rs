//! NATS security, proven against a real nats-server that runs the permissions
//! of `deploy/nats/` verbatim (`permissions.conf` and `accounts.conf`; only
//! the passwords and the TLS files are test values):
//!
//! - a fleet where every process has its own restricted identity completes
//!   tasks: request/reply, durable submit, a large screenshot through the
//!   object store, heartbeats, events, stored results, dead letters; and the
//!   same with pull (least-loaded) dispatch of every role through `ORCH_WORK`;
//! - a worker identity cannot submit tasks or spoof results; a client identity
//!   cannot take work or pose as a worker;
//! - connections without (valid) credentials are refused;
//! - TLS needs the CA, mutual TLS a client certificate from that CA;
//! - passwords appear in no output of the binaries, at any log level.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::service::ServiceExt as _;
use async_nats::{ConnectErrorKind, ConnectOptions, Event};
use bytes::Bytes;
use futures::StreamExt as _;
use nix::sys::signal::Signal;
use orch_client::{ClientError, EventKind, Orchestrator, ReplayFrom, SubmitRequest, TaskId};
use orch_shared::config::NatsArgs;
use orch_shared::{Role, subjects};
use orch_tests::fake::openai::{FakeOpenAi, Reply};
use orch_tests::fleet::{FLEET, wait_for_queue_consumer, wait_for_services};
use orch_tests::nats::{NatsServer, ServerOptions};
use orch_tests::pki::Pki;
use orch_tests::process::{Proc, describe_all, run_to_end};
use orch_tests::wait::{eventually, within};
use tempfile::TempDir;

const T: Duration = Duration::from_secs(60);
/// A model API key (test value) that must never be printed.
const API_KEY: &str = "sk-test-orch-key-7f3a9c2e5b1d";

// ---------------------------------------------------------------------------
// Identities

/// One user of `deploy/nats/accounts.conf`, with a test password.
#[derive(Debug, Clone, Copy)]
struct Identity {
    user: &'static str,
    password: &'static str,
    /// bcrypt hash of `password` (cost 10, made with Python's `bcrypt`).
    hash: &'static str,
    /// The variable `accounts.conf` reads the hash from (`passwords.conf` in production).
    password_var: &'static str,
    /// The inbox prefix its permissions allow.
    inbox: &'static str,
}

const COORDINATOR: Identity = Identity {
    user: "coordinator",
    password: "test-coordinator-pw-80ae2ba58d2d",
    hash: "$2b$10$wQBJj2R4OSgVBQRNtOZR8OugF.8J1I2gelo/uWdvanzjcbvzsoxXa",
    password_var: "ORCH_COORDINATOR_PASSWORD",
    inbox: "_INBOX_coordinator",
};
const VISION: Identity = Identity {
    user: "vision",
    password: "test-vision-pw-5cfb06032f73",
    hash: "$2b$10$cRF87.jW4QWjV78PoWmSOu7gLAqGM5u/gUNNejS24.brx6meZ5x2y",
    password_var: "ORCH_VISION_PASSWORD",
    inbox: "_INBOX_vision",
};
const WEB: Identity = Identity {
    user: "web",
    password: "test-web-pw-00e182af727b",
    hash: "$2b$10$XqEkSYucRHx.HR02n.8pNu52AeRyrC/m0whibEraIb4oaprDakYFG",
    password_var: "ORCH_WEB_PASSWORD",
    inbox: "_INBOX_web",
};
const REASONER: Identity = Identity {
    user: "reasoner",
    password: "test-reasoner-pw-3b7f94870ead",
    hash: "$2b$10$H3kTPBgCk2laMEmjCYVzX.5ycDBKXGl3vwdwH3eF32uId/tPhJmgC",
    password_var: "ORCH_REASONER_PASSWORD",
    inbox: "_INBOX_reasoner",
};
const VERIFIER: Identity = Identity {
    user: "verifier",
    password: "test-verifier-pw-59a5a063d97a",
    hash: "$2b$10$pAQJDgaCPRBK0PmIvsIr4.wr0WlTPdjF6dii5.sr.BLUw.3UEIIAO",
    password_var: "ORCH_VERIFIER_PASSWORD",
    inbox: "_INBOX_verifier",
};
const CLIENT: Identity = Identity {
    user: "client",
    password: "test-client-pw-fa3c33e28c23",
    hash: "$2b$10$YEm6KEbDzGhav8n8CrZNFufEoLP5/CwMWPvhxD0NClQ3/F9DHMwMq",
    password_var: "ORCH_CLIENT_PASSWORD",
    inbox: "_INBOX",
};
const ADMIN: Identity = Identity {
    user: "admin",
    password: "test-admin-pw-0d8e8a83f68b",
    hash: "$2b$10$vg2uLAZsolrFlQDsH95s4.1HVHpsEYRfkUneAkuDa4ayRJvXYNfke",
    password_var: "ORCH_ADMIN_PASSWORD",
    inbox: "_INBOX_admin",
};
const SYS: Identity = Identity {
    user: "sys",
    password: "test-sys-pw-14bbe88eaeea",
    hash: "$2b$10$h/uSEHUGVDlFLQb1qKc34ui9wL9iQ0dcDBagz.gBkMk.VmqS3HGFe",
    password_var: "ORCH_SYS_PASSWORD",
    inbox: "_INBOX_sys",
};
const IDENTITIES: [Identity; 8] = [
    COORDINATOR,
    VISION,
    WEB,
    REASONER,
    VERIFIER,
    CLIENT,
    ADMIN,
    SYS,
];

// ---------------------------------------------------------------------------
// Server configuration

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats")
}

fn deploy_file(name: &str) -> String {
    let path = deploy_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `accounts.conf` with its includes inlined: test password hashes in place of
/// `passwords.conf`, then `permissions.conf`, then the accounts themselves.
/// (nats-server resolves includes relative to the config file, which the
/// harness writes to a temp dir, so the text is inlined instead.)
fn auth_config() -> String {
    let mut c = String::from("# test passwords (production: passwords.conf)\n");
    for id in IDENTITIES {
        c.push_str(&format!("{}: \"{}\"\n", id.password_var, id.hash));
    }
    c.push_str(&deploy_file("permissions.conf"));
    let accounts = deploy_file("accounts.conf");
    for include in ["include \"permissions.conf\"", "include \"passwords.conf\""] {
        assert!(
            accounts.contains(include),
            "accounts.conf should `{include}`"
        );
    }
    for line in accounts.lines() {
        if !line.trim_start().starts_with("include ") {
            c.push_str(line);
            c.push('\n');
        }
    }
    c
}

/// The NATS server's `tls` block; `verify` demands client certificates (mTLS).
fn server_block(pki: &Pki, verify: bool) -> String {
    format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: {verify}\n  timeout: 2\n}}\n",
        pki.path("server-cert.pem").display(),
        pki.path("server-key.pem").display(),
        pki.path("ca.pem").display(),
    )
}

/// How the test server does TLS.
#[derive(Clone, Copy)]
enum Tls<'a> {
    Off,
    /// Server certificate only.
    On(&'a Pki),
    /// Clients must present a certificate from the CA too.
    Mutual(&'a Pki),
}

impl<'a> Tls<'a> {
    fn pki(self) -> Option<&'a Pki> {
        match self {
            Tls::Off => None,
            Tls::On(p) | Tls::Mutual(p) => Some(p),
        }
    }
}

/// A server with JetStream, the deployed accounts and permissions, and `tls`.
fn secured_server(tls: Tls<'_>) -> NatsServer {
    let mut extra_config = auth_config();
    match tls {
        Tls::Off => {}
        Tls::On(p) => extra_config.push_str(&server_block(p, false)),
        Tls::Mutual(p) => extra_config.push_str(&server_block(p, true)),
    }
    NatsServer::start_with(ServerOptions {
        extra_config,
        ..ServerOptions::default()
    })
}

/// Every permissions violation the server logged.
fn violations(nats: &NatsServer) -> Vec<String> {
    nats.logs()
        .lines()
        .filter(|l| l.contains("Violation"))
        .map(str::to_string)
        .collect()
}

/// Fails with `why`, the violations and every process's output if the server
/// logged any permissions violation.
fn assert_no_violations(nats: &NatsServer, procs: &[Proc], why: &str) {
    let v = violations(nats);
    assert!(
        v.is_empty(),
        "{why}; violations:\n{}\n{}",
        v.join("\n"),
        describe_all(procs)
    );
}

// ---------------------------------------------------------------------------
// In-test connections

/// A connection that records the errors the server sends it.
struct Conn {
    client: async_nats::Client,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Conn {
    /// Waits until the server reported an error containing `needle`.
    async fn violation(&self, needle: &str) -> String {
        let errors = self.errors.clone();
        eventually(T, &format!("server error containing {needle}"), || {
            let found = errors
                .lock()
                .ok()
                .and_then(|e| e.iter().find(|e| e.contains(needle)).cloned());
            async move { found }
        })
        .await
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

/// Connects as `id` (with its own inbox prefix), over TLS when the server does it.
async fn connect_as(url: &str, id: Identity, tls: Tls<'_>) -> Conn {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    let mut opts = ConnectOptions::with_user_and_password(id.user.into(), id.password.into())
        .custom_inbox_prefix(id.inbox)
        .name(format!("security-test-{}", id.user))
        .event_callback(move |event| {
            let sink = sink.clone();
            async move {
                if let Event::ServerError(e) = event
                    && let Ok(mut v) = sink.lock()
                {
                    v.push(e.to_string());
                }
            }
        });
    if let Some(pki) = tls.pki() {
        opts = opts
            .add_root_certificates(pki.path("ca.pem"))
            .require_tls(true);
    }
    if let Tls::Mutual(pki) = tls {
        opts = opts.add_client_certificate(pki.path("client-cert.pem"), pki.path("client-key.pem"));
    }
    let client = within(T, "connecting", opts.connect(url))
        .await
        .unwrap_or_else(|e| panic!("connecting as {} to {url}: {e}", id.user));
    Conn { client, errors }
}

/// The binaries' own connection flags for `id`, as a test would set them up.
fn nats_args(url: &str, id: Identity, tls: Tls<'_>, client_cert: Option<&str>) -> NatsArgs {
    let mut a = NatsArgs::plain(url);
    a.user = Some(id.user.into());
    a.password = Some(id.password.into());
    a.inbox_prefix = id.inbox.into();
    if let Some(pki) = tls.pki() {
        a.tls_ca = Some(pki.path("ca.pem"));
        a.tls_required = true;
    }
    if let (Some(pki), Some(cert)) = (tls.pki(), client_cert) {
        a.tls_cert = Some(pki.path(&format!("{cert}-cert.pem")));
        a.tls_key = Some(pki.path(&format!("{cert}-key.pem")));
    }
    a
}

/// An SDK handle as `client`, through the shared connection code.
async fn orchestrator(url: &str, tls: Tls<'_>) -> Orchestrator {
    let cert = matches!(tls, Tls::Mutual(_)).then_some("client");
    let (client, _) = within(
        T,
        "client connects",
        nats_args(url, CLIENT, tls, cert).connect("security-test-client"),
    )
    .await
    .unwrap_or_else(|e| panic!("client connect: {e}"));
    Orchestrator::from_client(client)
}

// ---------------------------------------------------------------------------
// Fleet processes

/// How a process gets its password.
#[derive(Clone, Copy)]
enum Secret {
    /// `NATS_PASSWORD` in its environment.
    Env,
    /// `--nats-password-file`.
    File,
}

/// Files holding passwords for `--nats-password-file`.
struct Secrets {
    dir: TempDir,
}

impl Secrets {
    fn new() -> Secrets {
        let dir = tempfile::Builder::new()
            .prefix("orch-secrets-")
            .tempdir()
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        Secrets { dir }
    }

    fn file(&self, id: Identity, password: &str) -> String {
        let path = self.dir.path().join(format!("{}.password", id.user));
        // A trailing newline, as `echo pw > file` writes it: it must not become part of the password.
        std::fs::write(&path, format!("{password}\n"))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path.display().to_string()
    }
}

/// Starts `bin` as `id`: its flags, connection flags and environment.
#[allow(clippy::too_many_arguments)]
fn start_as(
    bin: &str,
    id: Identity,
    password: &str,
    secret: Secret,
    secrets: &Secrets,
    url: &str,
    tls: Tls<'_>,
    extra: &[&str],
    log: &str,
    extra_env: &[(&str, &str)],
) -> Proc {
    let mut args: Vec<String> = vec![
        "--nats-url".into(),
        url.into(),
        "--nats-user".into(),
        id.user.into(),
        "--nats-inbox-prefix".into(),
        id.inbox.into(),
    ];
    let mut env: Vec<(&str, String)> = vec![("RUST_LOG", log.into())];
    match secret {
        Secret::Env => env.push(("NATS_PASSWORD", password.into())),
        Secret::File => {
            args.push("--nats-password-file".into());
            args.push(secrets.file(id, password));
        }
    }
    if let Some(pki) = tls.pki() {
        args.extend(["--nats-tls-ca".into(), pki.arg("ca.pem")]);
        args.push("--nats-tls-required".into());
    }
    if let Tls::Mutual(pki) = tls {
        args.extend([
            "--nats-tls-cert".into(),
            pki.arg("client-cert.pem"),
            "--nats-tls-key".into(),
            pki.arg("client-key.pem"),
        ]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend_from_slice(extra_env);
    Proc::start(bin, &args, &env)
}

/// Coordinator (password from the environment, `coordinator_extra` flags)
/// and the four workers (passwords from files), each with its own identity,
/// simulated providers.
fn start_fleet(
    url: &str,
    tls: Tls<'_>,
    secrets: &Secrets,
    log: &str,
    coordinator_extra: &[&str],
) -> Vec<Proc> {
    let sim = ["--provider", "sim", "--drain-timeout", "20s"];
    let worker = |bin: &str, id: Identity, extra: &[&str]| {
        let mut args = sim.to_vec();
        args.extend_from_slice(extra);
        start_as(
            bin,
            id,
            id.password,
            Secret::File,
            secrets,
            url,
            tls,
            &args,
            log,
            &[],
        )
    };
    let mut coordinator = vec!["--verify", "--cache-ttl", "60s"];
    coordinator.extend_from_slice(coordinator_extra);
    vec![
        start_as(
            "orch-coordinator",
            COORDINATOR,
            COORDINATOR.password,
            Secret::Env,
            secrets,
            url,
            tls,
            &coordinator,
            log,
            &[],
        ),
        worker("orch-vision", VISION, &[]),
        worker("orch-web", WEB, &[]),
        // Long enough for several heartbeats per job: replies beyond the first
        // must pass the worker's allow_responses.
        worker(
            "orch-reasoner",
            REASONER,
            &[
                "--slot",
                "local",
                "--sim-latency",
                "1800ms",
                "--heartbeat-interval",
                "300ms",
            ],
        ),
        worker("orch-verifier", VERIFIER, &["--slot", "local"]),
    ]
}

fn big_png(len: usize) -> Vec<u8> {
    let mut png = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    png.resize(len, 7);
    png
}

fn four_roles(task: &str, id: &str, screenshot: Vec<u8>) -> SubmitRequest {
    SubmitRequest {
        task_id: Some(id.into()),
        screenshot: Some(screenshot.into()),
        available_tools: vec!["playwright_click".into()],
        ..SubmitRequest::new(task)
    }
}

// ---------------------------------------------------------------------------
// Tests

/// The shipped config (with passwords.conf from the example and test TLS
/// files at its paths) passes `nats-server -t`.
#[test]
fn the_production_config_is_valid() {
    let pki = Pki::generate();
    let dir = tempfile::Builder::new()
        .prefix("orch-deploy-nats-")
        .tempdir()
        .unwrap_or_else(|e| panic!("tempdir: {e}"));
    let tls_dir = dir.path().join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
    for (from, to) in [
        ("ca.pem", "ca.pem"),
        ("server-cert.pem", "server-cert.pem"),
        ("server-key.pem", "server-key.pem"),
    ] {
        std::fs::copy(pki.path(from), tls_dir.join(to)).unwrap_or_else(|e| panic!("copy: {e}"));
    }
    let server = deploy_file("nats-server.conf")
        .replace("/etc/nats/tls/", &format!("{}/", tls_dir.display()))
        .replace(
            "/var/lib/nats/jetstream",
            &dir.path().join("jetstream").display().to_string(),
        );
    assert!(
        server.contains(&tls_dir.display().to_string()),
        "nats-server.conf keeps its TLS files under /etc/nats/tls/"
    );
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("write: {e}"))
    };
    write("nats-server.conf", &server);
    write("accounts.conf", &deploy_file("accounts.conf"));
    write("permissions.conf", &deploy_file("permissions.conf"));
    write("passwords.conf", &deploy_file("passwords.conf.example"));
    let out = std::process::Command::new(
        std::env::var_os("NATS_SERVER_BIN").unwrap_or_else(|| "nats-server".into()),
    )
    .arg("-t")
    .arg("-c")
    .arg(dir.path().join("nats-server.conf"))
    .output()
    .unwrap_or_else(|e| panic!("running nats-server -t: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "nats-server -t failed:\n{text}");
    assert!(text.contains("is valid"), "{text}");
    // Every identity of the fleet is bound to its own permissions.
    let accounts = deploy_file("accounts.conf");
    for (user, perms) in [
        ("coordinator", "$ORCH_COORDINATOR"),
        ("vision", "$ORCH_WORKER_VISION"),
        ("web", "$ORCH_WORKER_WEB"),
        ("reasoner", "$ORCH_WORKER_REASONER"),
        ("verifier", "$ORCH_WORKER_VERIFIER"),
        ("client", "$ORCH_CLIENT"),
        ("admin", "$ORCH_ADMIN"),
    ] {
        let line = accounts
            .lines()
            .find(|l| l.contains(&format!("user: {user},")))
            .unwrap_or_else(|| panic!("no user {user} in accounts.conf"));
        assert!(
            line.contains(&format!("permissions: {perms} "))
                || line.ends_with(&format!("{perms} }}")),
            "{line}"
        );
    }
}

/// (a) Every identity restricted, TLS with client certificates: the fleet
/// answers a four-role task request/reply and durably, with a 5 MB screenshot
/// through the object store, and nothing hits a permissions violation.
#[tokio::test]
async fn a_fleet_with_one_restricted_identity_per_role_completes_tasks() {
    orch_tests::init_logs();
    let pki = Pki::generate();
    let tls = Tls::Mutual(&pki);
    let nats = secured_server(tls);
    let url = nats.url();
    let secrets = Secrets::new();
    let procs = start_fleet(&url, tls, &secrets, "info", &[]);
    let orch = orchestrator(&url, tls).await;
    wait_for_services(&orch, &FLEET, T, &procs).await;

    // Request/reply; the SDK uploads the 5 MB screenshot to the object store first.
    let png = big_png(5 * 1024 * 1024);
    let req = four_roles("Analyze current page state", "sec-rr-1", png.clone());
    let r = within(T, "request/reply task", orch.execute(&req))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{:?}", describe_all(&procs), violations(&nats)));
    assert_eq!(r.model_results.len(), 4, "{r:?}");
    assert!(
        r.model_results.values().all(|m| m.success),
        "{r:?}\n{}",
        describe_all(&procs)
    );
    let vision = &r.model_results[&Role::Vision];
    assert!(
        vision.content["description"]
            .as_str()
            .is_some_and(|d| d.contains("5242880-byte")),
        "the vision worker read the screenshot from the object store: {vision:?}"
    );

    // Durable submit (JetStream publish), MessagePack, same screenshot.
    let durable = orch.clone().with_msgpack();
    let mut req = four_roles("Analyze it again, durably", "sec-durable-1", png);
    req.verify = Some(true);
    let id = within(T, "durable submit", durable.submit_durable(&req))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", describe_all(&procs)));
    let r = within(T, "durable result", durable.wait_result(&id, T))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", describe_all(&procs)));
    assert!(r.succeeded(), "{r:?}");
    assert!(r.model_results[&Role::Vision].success, "{r:?}");

    // Stored results, stats, event replay: all allowed to a client.
    let stored = within(T, "stored result", orch.result(&id)).await.unwrap();
    assert_eq!(stored.task_id, "sec-durable-1");
    let stats = within(T, "stats", orch.stats()).await.unwrap();
    assert!(stats.total_executions >= 2, "{stats:?}");
    let task: TaskId = "sec-rr-1".parse().unwrap();
    let mut replay = orch
        .replay_events(Some(&task), None, ReplayFrom::Start)
        .await
        .unwrap_or_else(|e| panic!("replay: {e}\n{:?}", violations(&nats)));
    within(T, "replayed final event", async {
        while let Some(e) = replay.next().await {
            let (_, e) = e.unwrap();
            if e.kind == EventKind::ActionComplete {
                return;
            }
        }
        panic!("replay ended");
    })
    .await;

    // A malformed durable task is dead-lettered (the coordinator may publish
    // to ORCH_DEAD and remove the task); operators read the dead letters.
    let js = orch.jetstream();
    js.publish("orch.v1.tasks.sec-bad", Bytes::from_static(b"{nope"))
        .await
        .unwrap()
        .await
        .unwrap_or_else(|e| panic!("durable publish: {e}"));
    let admin = connect_as(&url, ADMIN, tls).await;
    let ajs = async_nats::jetstream::new(admin.client.clone());
    let dead = ajs.get_stream(subjects::STREAM_DEAD).await.unwrap();
    eventually(T, "dead letter stored", || {
        let dead = dead.clone();
        async move {
            dead.get_last_raw_message_by_subject(&subjects::dead("sec-bad"))
                .await
                .ok()
        }
    })
    .await;

    // The cache (orch_cache KV) answers an identical request.
    let small = SubmitRequest {
        tools: Some(vec!["reasoner".into()]),
        ..SubmitRequest::new("cache me")
    };
    let first = within(T, "first", orch.execute(&small)).await.unwrap();
    let second = within(T, "second", orch.execute(&small)).await.unwrap();
    assert!(!first.cached && second.cached, "{first:?}\n{second:?}");

    assert_no_violations(&nats, &procs, "the deployed permissions must be sufficient");
}

/// (a2) Pull (least-loaded) dispatch of every role under the same
/// restricted identities: each worker creates its slot's consumer on
/// `ORCH_WORK`, pulls when free, acknowledges, and answers and heartbeats on
/// the coordinator's inbox; tasks complete and nothing is refused.
#[tokio::test]
async fn a_restricted_fleet_completes_tasks_with_pull_dispatch() {
    orch_tests::init_logs();
    let nats = secured_server(Tls::Off);
    let url = nats.url();
    let secrets = Secrets::new();
    let procs = start_fleet(
        &url,
        Tls::Off,
        &secrets,
        "info",
        &[
            "--pull-dispatch",
            "vision,web,reasoner,verifier",
            // The slots the fleet's workers serve, so every attempt is queued.
            "--reasoner-chain",
            "local",
            "--verifier-chain",
            "local",
        ],
    );
    let orch = orchestrator(&url, Tls::Off).await;
    wait_for_services(&orch, &FLEET, T, &procs).await;
    // The coordinator queues work for a slot only once its consumer exists
    // (the workers create it as soon as the coordinator created the stream).
    let admin = connect_as(&url, ADMIN, Tls::Off).await;
    let ajs = async_nats::jetstream::new(admin.client.clone());
    let slots = [
        (Role::Vision, "default"),
        (Role::Web, "default"),
        (Role::Reasoner, "local"),
        (Role::Verifier, "local"),
    ];
    let names: Vec<String> = slots
        .iter()
        .map(|(role, slot)| subjects::queue_consumer(*role, &slot.parse().unwrap()))
        .collect();
    for name in &names {
        wait_for_queue_consumer(&ajs, name, T).await;
    }

    // Several four-role tasks at once (the reasoner heartbeats while it
    // works), then one durable task.
    let tasks = 4;
    let mut running = Vec::new();
    for i in 0..tasks {
        let orch = orch.clone();
        let req = four_roles(
            &format!("pull it all, part {i}"),
            &format!("sec-pull-{i}"),
            big_png(4096),
        );
        running.push(tokio::spawn(async move { orch.execute(&req).await }));
    }
    for task in running {
        let r = within(T, "pulled task", task)
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}\n{}\n{:?}", describe_all(&procs), violations(&nats)));
        assert!(
            r.model_results.len() == 4 && r.model_results.values().all(|m| m.success),
            "{r:?}\n{}",
            describe_all(&procs)
        );
        assert!(r.fallback_chain.is_empty(), "{r:?}");
    }
    let req = four_roles("pull it durably", "sec-pull-durable", big_png(4096));
    let id = within(T, "durable submit", orch.submit_durable(&req))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", describe_all(&procs)));
    let r = within(T, "durable result", orch.wait_result(&id, T))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", describe_all(&procs)));
    assert!(r.model_results.values().all(|m| m.success), "{r:?}");

    // Every attempt went through the work queue: each slot's consumer
    // delivered one job per task and has nothing left pending.
    let stream = ajs.get_stream(subjects::STREAM_WORK).await.unwrap();
    for name in &names {
        let mut consumer = stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(name)
            .await
            .unwrap();
        let info = consumer.info().await.unwrap().clone();
        assert_eq!(
            info.delivered.consumer_sequence,
            tasks + 1,
            "{name}: {info:?}"
        );
        assert_eq!(info.num_ack_pending, 0, "{name}: {info:?}");
        assert_eq!(info.num_pending, 0, "{name}: {info:?}");
    }
    for p in &procs {
        assert!(
            !p.stderr().contains("pull dispatch disabled"),
            "{}",
            p.describe()
        );
    }
    assert_no_violations(
        &nats,
        &procs,
        "pull dispatch must need nothing beyond the deployed permissions",
    );
}

/// (b) A worker identity cannot submit tasks (request/reply or durably), nor
/// announce results, nor read another role's work or the coordinator's inbox.
#[tokio::test]
async fn a_worker_identity_cannot_submit_tasks() {
    orch_tests::init_logs();
    let nats = secured_server(Tls::Off);
    let url = nats.url();
    let secrets = Secrets::new();
    let procs = [start_as(
        "orch-coordinator",
        COORDINATOR,
        COORDINATOR.password,
        Secret::Env,
        &secrets,
        &url,
        Tls::Off,
        &[],
        "info",
        &[],
    )];
    let orch = orchestrator(&url, Tls::Off).await;
    wait_for_services(&orch, &[("orch-coordinator", 1)], T, &procs).await;

    let worker = connect_as(&url, REASONER, Tls::Off).await;
    let body = serde_json::to_vec(&SubmitRequest::new("let me in")).unwrap();
    // Request/reply submit: the publish is refused, so nobody answers.
    let err = worker
        .client
        .send_request(
            subjects::SUBMIT,
            async_nats::Request::new()
                .payload(body.clone().into())
                .timeout(Some(Duration::from_secs(2))),
        )
        .await
        .expect_err("a worker's submit must not be answered");
    assert!(
        matches!(err.kind(), async_nats::RequestErrorKind::TimedOut),
        "{err}"
    );
    worker
        .violation("Permissions Violation for Publish to \"orch.v1.submit\"")
        .await;

    // Durable submit: refused before it reaches the stream.
    let js = async_nats::jetstream::new(worker.client.clone());
    let ack = async {
        js.publish("orch.v1.tasks.from-worker", body.into())
            .await
            .ok()?
            .await
            .ok()
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(10), ack)
            .await
            .ok()
            .flatten()
            .is_none(),
        "JetStream must not acknowledge a worker's task"
    );
    worker
        .violation("Permissions Violation for Publish to \"orch.v1.tasks.from-worker\"")
        .await;

    // Spoofing a result announcement or an event, reading other work, snooping
    // on the coordinator's replies: all refused.
    let listener = connect_as(&url, CLIENT, Tls::Off).await;
    let mut announced = listener
        .client
        .subscribe(subjects::result(&"victim".parse().unwrap()))
        .await
        .unwrap();
    listener.client.flush().await.unwrap();
    worker
        .client
        .publish("orch.v1.results.victim", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    worker
        .client
        .publish(
            "orch.v1.events.victim.action_complete",
            Bytes::from_static(b"{}"),
        )
        .await
        .unwrap();
    let _w = worker
        .client
        .subscribe("orch.v1.work.vision.default")
        .await
        .unwrap();
    let _i = worker
        .client
        .subscribe("_INBOX_coordinator.>")
        .await
        .unwrap();
    let _q = worker
        .client
        .queue_subscribe("orch.v1.submit", "orch-coordinator".into())
        .await
        .unwrap();
    worker.client.flush().await.unwrap();
    for needle in [
        "Publish to \"orch.v1.results.victim\"",
        "Publish to \"orch.v1.events.victim.action_complete\"",
        "Subscription to \"orch.v1.work.vision.default\"",
        "Subscription to \"_INBOX_coordinator.>\"",
        "Subscription to \"orch.v1.submit\"",
    ] {
        worker.violation(needle).await;
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), announced.next())
            .await
            .is_err(),
        "a spoofed result announcement must not be delivered"
    );

    // Nothing reached the coordinator or the intake stream.
    let stats = within(T, "stats", orch.stats()).await.unwrap();
    assert_eq!(stats.total_executions, 0, "{stats:?}");
    let admin = connect_as(&url, ADMIN, Tls::Off).await;
    let ajs = async_nats::jetstream::new(admin.client.clone());
    let mut tasks = ajs.get_stream(subjects::STREAM_TASKS).await.unwrap();
    assert_eq!(tasks.info().await.unwrap().state.messages, 0);
    assert!(
        listener.errors().is_empty(),
        "the client was not refused anything: {:?}",
        listener.errors()
    );
}

/// (c) A client identity cannot take work (plain or queue subscription),
/// cannot register as a worker in discovery, cannot send work or cancels
/// directly, and cannot spoof results or events; the real worker still gets
/// the task.
#[tokio::test]
async fn a_client_identity_cannot_take_work_or_pose_as_a_worker() {
    orch_tests::init_logs();
    let nats = secured_server(Tls::Off);
    let url = nats.url();
    let secrets = Secrets::new();
    let procs = [
        start_as(
            "orch-coordinator",
            COORDINATOR,
            COORDINATOR.password,
            Secret::Env,
            &secrets,
            &url,
            Tls::Off,
            &[],
            "info",
            &[],
        ),
        start_as(
            "orch-reasoner",
            REASONER,
            REASONER.password,
            Secret::File,
            &secrets,
            &url,
            Tls::Off,
            &["--provider", "sim", "--slot", "kimi_k2"],
            "info",
            &[],
        ),
    ];
    let orch = orchestrator(&url, Tls::Off).await;
    wait_for_services(
        &orch,
        &[("orch-coordinator", 1), ("orch-reasoner", 1)],
        T,
        &procs,
    )
    .await;

    let thief = connect_as(&url, CLIENT, Tls::Off).await;
    let mut all_work = thief.client.subscribe("orch.v1.work.>").await.unwrap();
    let mut slot_work = thief
        .client
        .queue_subscribe(
            "orch.v1.work.reasoner.kimi_k2",
            "orch-reasoner-kimi_k2".into(),
        )
        .await
        .unwrap();
    let mut cancels = thief.client.subscribe("orch.v1.cancel.>").await.unwrap();
    // A fake `orch-reasoner` micro service on the same slot.
    let fake = thief
        .client
        .service_builder()
        .queue_group("orch-reasoner-kimi_k2")
        .start("orch-reasoner", "0.0.1")
        .await
        .unwrap();
    let mut fake_endpoint = fake
        .endpoint_builder()
        .name("work")
        .add("orch.v1.work.reasoner.kimi_k2")
        .await
        .unwrap();
    thief.client.flush().await.unwrap();
    for needle in [
        "Subscription to \"orch.v1.work.>\"",
        "Subscription to \"orch.v1.work.reasoner.kimi_k2\" using queue \"orch-reasoner-kimi_k2\"",
        "Subscription to \"orch.v1.cancel.>\"",
        "Subscription to \"$SRV.PING.orch-reasoner\"",
    ] {
        thief.violation(needle).await;
    }

    // Tasks still go to the real worker only, several times over (a queue
    // group member that got in would take some of them).
    for i in 0..5 {
        let req = SubmitRequest {
            tools: Some(vec!["kimi_k2".into()]),
            task_id: Some(format!("sec-c-{i}")),
            ..SubmitRequest::new("plan something")
        };
        let r = within(T, "task", orch.execute(&req))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", describe_all(&procs)));
        let m = &r.model_results[&Role::Reasoner];
        assert!(m.success && m.slot.as_str() == "kimi_k2", "{r:?}");
        assert!(r.fallback_chain.is_empty(), "{r:?}");
    }
    let quiet = Duration::from_millis(300);
    assert!(tokio::time::timeout(quiet, all_work.next()).await.is_err());
    assert!(tokio::time::timeout(quiet, slot_work.next()).await.is_err());
    assert!(tokio::time::timeout(quiet, cancels.next()).await.is_err());
    assert!(
        tokio::time::timeout(quiet, fake_endpoint.next())
            .await
            .is_err()
    );
    // Discovery shows the one real reasoner.
    let found = orch.workers(Duration::from_millis(300)).await.unwrap();
    let reasoners: Vec<_> = found.iter().filter(|s| s.name == "orch-reasoner").collect();
    assert_eq!(reasoners.len(), 1, "{found:?}");
    assert_eq!(reasoners[0].meta("provider"), "sim");

    // Sending work or cancels directly, or spoofing results and events: refused.
    for subject in [
        "orch.v1.work.reasoner.kimi_k2",
        "orch.v1.cancel.reasoner.kimi_k2",
        "orch.v1.results.sec-c-0",
        "orch.v1.events.sec-c-0.action_complete",
        "orch.v1.dead.sec-c-0",
    ] {
        thief
            .client
            .publish(subject, Bytes::from_static(b"{}"))
            .await
            .unwrap();
        thief.violation(&format!("Publish to \"{subject}\"")).await;
    }
    // Other clients' result queries and the coordinator's inbox are not readable.
    let _q = thief.client.subscribe("orch.v1.results.get").await.unwrap();
    let _i = thief
        .client
        .subscribe("_INBOX_coordinator.>")
        .await
        .unwrap();
    thief
        .violation("Subscription to \"orch.v1.results.get\"")
        .await;
    thief
        .violation("Subscription to \"_INBOX_coordinator.>\"")
        .await;
    // JetStream resources cannot be changed or deleted by a client.
    let js = async_nats::jetstream::new(thief.client.clone());
    let deleted = tokio::time::timeout(
        Duration::from_secs(10),
        js.delete_stream(subjects::STREAM_TASKS),
    )
    .await;
    assert!(!matches!(deleted, Ok(Ok(_))), "a client deleted ORCH_TASKS");
    thief
        .violation("Publish to \"$JS.API.STREAM.DELETE.ORCH_TASKS\"")
        .await;
    let _ = fake.stop().await;
}

/// (d) No credentials, a wrong password, or an unknown user: refused, by the
/// SDK and by the binaries (exit 69, nothing secret in the message).
#[tokio::test]
async fn unauthenticated_connections_are_refused() {
    orch_tests::init_logs();
    let nats = secured_server(Tls::Off);
    let url = nats.url();

    let err = async_nats::connect(&url)
        .await
        .expect_err("anonymous connection must be refused");
    assert_eq!(
        err.kind(),
        ConnectErrorKind::AuthorizationViolation,
        "{err}"
    );
    let err = Orchestrator::connect(&url)
        .await
        .err()
        .expect("anonymous SDK connection must be refused");
    assert!(matches!(err, ClientError::Connect(_)), "{err}");

    for (user, password) in [
        ("client", "not-the-password-9c1f"),
        ("nobody", CLIENT.password),
    ] {
        let err = ConnectOptions::with_user_and_password(user.into(), password.into())
            .connect(&url)
            .await
            .expect_err("wrong credentials must be refused");
        assert_eq!(
            err.kind(),
            ConnectErrorKind::AuthorizationViolation,
            "{user}: {err}"
        );
    }

    // The binaries exit 69 (unavailable) with a clear, secret-free message.
    let (status, _, stderr) = run_to_end(
        "orch-coordinator",
        &["--nats-url", &url, "--nats-connect-timeout", "3s"],
        &[],
    );
    assert_eq!(status.code(), Some(69), "{stderr}");
    assert!(
        stderr.to_lowercase().contains("authorization violation"),
        "{stderr}"
    );
    let wrong = "wrong-password-c0ffee-41";
    let (status, stdout, stderr) = run_to_end(
        "orch-reasoner",
        &[
            "--nats-url",
            &url,
            "--nats-user",
            "reasoner",
            "--provider",
            "sim",
            "--nats-connect-timeout",
            "3s",
        ],
        &[("NATS_PASSWORD", wrong), ("RUST_LOG", "trace")],
    );
    assert_eq!(status.code(), Some(69), "{stderr}");
    assert!(
        stderr.to_lowercase().contains("authorization violation"),
        "{stderr}"
    );
    assert!(
        !stdout.contains(wrong) && !stderr.contains(wrong),
        "the rejected password was printed:\n{stdout}\n{stderr}"
    );
    // The server logs the refusal without the password either.
    let logs = nats.logs();
    assert!(
        logs.contains("Authorization Violation") || logs.contains("authentication error"),
        "{logs}"
    );
    assert!(!logs.contains(wrong), "{logs}");
}

/// (e) TLS: without the CA a client cannot connect; with it, it can. With
/// `verify` (mTLS) it also needs a client certificate from that CA.
#[tokio::test]
async fn tls_needs_the_ca_and_mutual_tls_a_client_certificate() {
    orch_tests::init_logs();
    let pki = Pki::generate();

    // Server certificate only.
    let nats = secured_server(Tls::On(&pki));
    let url = nats.url();
    // No CA: the server's certificate is not trusted (system roots only).
    let mut no_ca = nats_args(&url, CLIENT, Tls::Off, None);
    no_ca.tls_required = true;
    let err = no_ca
        .connect("no-ca")
        .await
        .map(|_| ())
        .expect_err("a client without the CA must not connect");
    assert!(
        matches!(&err, orch_shared::config::ConnectError::Connect { .. }),
        "{err}"
    );
    // Not asking for TLS does not help: the server demands it.
    let plain = nats_args(&url, CLIENT, Tls::Off, None);
    assert!(plain.connect("plain").await.is_err());
    // The rogue CA does not vouch for this server either.
    let mut rogue = nats_args(&url, CLIENT, Tls::On(&pki), None);
    rogue.tls_ca = Some(pki.path("rogue-ca.pem"));
    assert!(rogue.connect("rogue-ca").await.is_err());
    // With the CA: connected, and the identity's permissions apply.
    let (client, _) = nats_args(&url, CLIENT, Tls::On(&pki), None)
        .connect("with-ca")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", nats.logs()));
    assert!(client.server_info().tls_required);
    client.flush().await.unwrap();
    drop(client);
    drop(nats);

    // Mutual TLS.
    let nats = secured_server(Tls::Mutual(&pki));
    let url = nats.url();
    let without_cert = nats_args(&url, CLIENT, Tls::On(&pki), None);
    assert!(
        without_cert.connect("no-client-cert").await.is_err(),
        "mTLS: a client without a certificate must not connect"
    );
    let rogue_cert = nats_args(&url, CLIENT, Tls::Mutual(&pki), Some("rogue-client"));
    assert!(
        rogue_cert.connect("rogue-client-cert").await.is_err(),
        "mTLS: a certificate from another CA must not be accepted"
    );
    let (client, _) = nats_args(&url, CLIENT, Tls::Mutual(&pki), Some("client"))
        .connect("client-cert")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", nats.logs()));
    client.flush().await.unwrap();
    // A valid certificate is not a password: without one, still refused.
    let mut no_password = nats_args(&url, CLIENT, Tls::Mutual(&pki), Some("client"));
    no_password.user = None;
    no_password.password = None;
    let err = no_password
        .connect("cert-only")
        .await
        .map(|_| ())
        .expect_err("a certificate alone must not authenticate");
    assert!(
        err.to_string().to_lowercase().contains("authorization"),
        "{err}"
    );
    // And a binary connects with --nats-tls-* flags (covered end to end in
    // the fleet test); a binary without the client certificate exits 69.
    let (status, _, stderr) = run_to_end(
        "orch-coordinator",
        &[
            "--nats-url",
            &url,
            "--nats-user",
            "coordinator",
            "--nats-inbox-prefix",
            "_INBOX_coordinator",
            "--nats-tls-ca",
            &pki.arg("ca.pem"),
            "--nats-connect-timeout",
            "3s",
        ],
        &[("NATS_PASSWORD", COORDINATOR.password)],
    );
    assert_eq!(status.code(), Some(69), "{stderr}");
}

/// (f) Secrets are never written by the binaries: NATS passwords and a model
/// API key, not at trace level while serving, not when a task runs (nor when
/// the model API refuses the key and echoes it back), not in `--help`, not in
/// configuration errors.
#[tokio::test]
async fn passwords_and_api_keys_never_appear_in_the_binaries_output() {
    orch_tests::init_logs();
    let nats = secured_server(Tls::Off);
    let url = nats.url();
    let secrets = Secrets::new();
    // Everything at trace level, async-nats included: the most there is to log.
    let mut procs = start_fleet(&url, Tls::Off, &secrets, "trace", &[]);
    // Plus a reasoner on an OpenAI-compatible API with its key in the environment.
    let model_api = FakeOpenAi::start().await;
    model_api.require_key(API_KEY);
    model_api.set_default(Reply::json(&serde_json::json!({
        "steps": [{"tool": "playwright_click", "args": [], "why": "press it"}],
        "answer": "click the button",
        "confidence": 0.9
    })));
    let base_url = model_api.base_url();
    procs.push(start_as(
        "orch-reasoner",
        REASONER,
        REASONER.password,
        Secret::File,
        &secrets,
        &url,
        Tls::Off,
        &[
            "--slot",
            "kimi_k2",
            "--provider",
            "openai",
            "--base-url",
            &base_url,
            "--max-retries",
            "0",
        ],
        "trace",
        &[("OPENAI_API_KEY", API_KEY)],
    ));
    let orch = orchestrator(&url, Tls::Off).await;
    wait_for_services(&orch, &FLEET, T, &procs).await;
    eventually(T, "two reasoners", || async {
        let found = orch.workers(Duration::from_millis(300)).await.ok()?;
        (found.iter().filter(|s| s.name == "orch-reasoner").count() == 2).then_some(())
    })
    .await;
    let req = four_roles("log everything", "sec-logs-1", big_png(600 * 1024));
    let r = within(T, "task", orch.execute(&req))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", describe_all(&procs)));
    assert!(r.succeeded(), "{r:?}");
    let reasoner = &r.model_results[&Role::Reasoner];
    assert_eq!(reasoner.provider, "openai", "{r:?}");
    assert!(
        model_api
            .requests()
            .iter()
            .all(|q| q.header("authorization") == Some(format!("Bearer {API_KEY}").as_str())),
        "the key was sent"
    );
    // The API now refuses the key and, as OpenAI does, quotes it back: the
    // task falls back to the next slot, and the key is in no error.
    model_api.require_key("sk-some-other-key-0000");
    let req = SubmitRequest {
        tools: Some(vec!["reasoner".into()]),
        task_id: Some("sec-logs-2".into()),
        ..SubmitRequest::new("refuse my key")
    };
    let r = within(T, "task with a refused key", orch.execute(&req))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", describe_all(&procs)));
    assert!(
        r.fallback_chain
            .iter()
            .any(|f| f.starts_with("reasoner/kimi_k2: unauthorized")),
        "{r:?}"
    );
    let shown = serde_json::to_string(&r).unwrap();
    assert!(
        !shown.contains(API_KEY),
        "the key reached the result: {shown}"
    );
    for p in &procs {
        p.signal(Signal::SIGTERM);
    }
    for p in &mut procs {
        let status = p.exited(T).await;
        assert!(status.is_some_and(|s| s.success()), "{}", p.describe());
    }
    let mut logged = 0;
    for p in &procs {
        let (out, err) = (p.stdout(), p.stderr());
        logged += out.len() + err.len();
        for id in IDENTITIES {
            assert!(
                !out.contains(id.password) && !err.contains(id.password),
                "{}'s password appears in the output of:\n{}",
                id.user,
                p.describe()
            );
        }
        assert!(
            !out.contains(API_KEY) && !err.contains(API_KEY),
            "the API key appears in the output of:\n{}",
            p.describe()
        );
        assert!(
            err.contains("DEBUG") || err.contains("TRACE"),
            "ran at debug/trace level: {}",
            p.describe()
        );
    }
    assert!(logged > 10_000, "the binaries logged {logged} bytes");
    assert!(!nats.logs().contains(COORDINATOR.password));

    // --help with the secrets in the environment shows no value.
    for (bin, _) in FLEET {
        let (status, stdout, stderr) = run_to_end(
            bin,
            &["--help"],
            &[
                ("NATS_PASSWORD", COORDINATOR.password),
                ("OPENAI_API_KEY", API_KEY),
            ],
        );
        assert!(status.success(), "{bin}: {stderr}");
        assert!(stdout.contains("--nats-password"), "{bin}: {stdout}");
        for secret in [COORDINATOR.password, API_KEY] {
            assert!(
                !stdout.contains(secret) && !stderr.contains(secret),
                "{bin} --help shows a secret:\n{stdout}"
            );
        }
    }
    // Configuration errors name the problem, not the secret.
    let (status, stdout, stderr) = run_to_end(
        "orch-coordinator",
        &[
            "--nats-url",
            &url,
            "--nats-user",
            "coordinator",
            "--nats-password-file",
            &secrets.file(COORDINATOR, COORDINATOR.password),
            "--nats-inbox-prefix",
            "bad.>",
        ],
        &[("NATS_PASSWORD", COORDINATOR.password)],
    );
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("use only one of NATS_PASSWORD and --nats-password-file"),
        "{stderr}"
    );
    assert!(stderr.contains("--nats-inbox-prefix"), "{stderr}");
    assert!(
        !stdout.contains(COORDINATOR.password) && !stderr.contains(COORDINATOR.password),
        "{stderr}"
    );
}
