//! Configuration plumbing every binary shares: NATS connection flags, log
//! flags, duration parsing, and the "report every problem, then exit 64" rule.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::{ConnectOptions, Event};

/// Exit code for bad configuration (BSD `EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;
/// Exit code when a required service (NATS) is unreachable (BSD `EX_UNAVAILABLE`).
pub const EXIT_UNAVAILABLE: i32 = 69;

/// Environment variable for the NATS URL.
pub const ENV_NATS_URL: &str = "NATS_URL";
/// Default NATS URL: a local server, as `nats-server` starts with no flags.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// Messages buffered per subscription before async-nats drops them (and we log a
/// slow-consumer event). Large enough for bursts of small work requests, small
/// enough that a stuck consumer cannot eat the heap.
pub const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 8 * 1024;
/// Environment variable for the per-subscription capacity.
pub const ENV_NATS_SUBSCRIPTION_CAPACITY: &str = "NATS_SUBSCRIPTION_CAPACITY";
/// Least time between two slow-consumer warnings of one process: every drop
/// is counted, but a flood of drops must not become a flood of log lines.
pub const SLOW_CONSUMER_WARN_EVERY: Duration = Duration::from_secs(10);
/// Environment variable for the inbox prefix.
pub const ENV_NATS_INBOX_PREFIX: &str = "NATS_INBOX_PREFIX";
/// Default inbox prefix: what every NATS client library uses, so an
/// unauthenticated development server needs no permissions set up.
pub const DEFAULT_NATS_INBOX_PREFIX: &str = "_INBOX";

/// How to reach NATS. Flattened into every binary's flags.
///
/// `Debug` is written by hand so the password never reaches a log line.
#[derive(clap::Args, Clone)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(global = true, long = "nats-url", env = ENV_NATS_URL, default_value = DEFAULT_NATS_URL)]
    pub url: String,
    /// NATS credentials file (JWT + nkey seed), as issued by `nsc`.
    #[arg(global = true, long = "nats-creds", env = "NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// File holding an nkey seed (`SU...`) for nkey authentication.
    #[arg(global = true, long = "nats-nkey-file", env = "NATS_NKEY_FILE")]
    pub nkey_file: Option<PathBuf>,
    /// User name for user/password authentication.
    #[arg(global = true, long = "nats-user", env = "NATS_USER")]
    pub user: Option<String>,
    /// Password for user/password authentication (prefer the env var or --nats-password-file).
    #[arg(
        global = true,
        long = "nats-password",
        env = "NATS_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// File holding the password for user/password authentication.
    #[arg(global = true, long = "nats-password-file", env = "NATS_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify the server's TLS certificate.
    #[arg(global = true, long = "nats-tls-ca", env = "NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(
        global = true,
        long = "nats-tls-cert",
        env = "NATS_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(
        global = true,
        long = "nats-tls-key",
        env = "NATS_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Require TLS even if the server does not demand it.
    #[arg(global = true, long = "nats-tls-required", env = "NATS_TLS_REQUIRED")]
    pub tls_required: bool,
    /// Give up connecting at startup after this long.
    #[arg(global = true, long = "nats-connect-timeout", env = "NATS_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Prefix of this connection's reply inboxes. With subject permissions,
    /// give each identity its own (e.g. `_INBOX_coordinator`) so no other
    /// identity may subscribe to its replies (see `deploy/nats/`).
    #[arg(global = true, long = "nats-inbox-prefix", env = ENV_NATS_INBOX_PREFIX, default_value = DEFAULT_NATS_INBOX_PREFIX)]
    pub inbox_prefix: String,
    /// Messages buffered per subscription; beyond it async-nats drops them
    /// (each drop is logged as a slow consumer and counted in stats).
    #[arg(global = true, long = "nats-subscription-capacity", env = ENV_NATS_SUBSCRIPTION_CAPACITY, default_value_t = DEFAULT_SUBSCRIPTION_CAPACITY)]
    pub subscription_capacity: usize,
}

impl std::fmt::Debug for NatsArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsArgs")
            .field("url", &redact_url(&self.url))
            .field("creds", &self.creds)
            .field("nkey_file", &self.nkey_file)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tls_required", &self.tls_required)
            .field("connect_timeout", &self.connect_timeout)
            .field("inbox_prefix", &self.inbox_prefix)
            .field("subscription_capacity", &self.subscription_capacity)
            .finish()
    }
}

impl NatsArgs {
    /// Arguments for a plain, unauthenticated connection to `url` (tests, tools).
    pub fn plain(url: impl Into<String>) -> NatsArgs {
        NatsArgs {
            url: url.into(),
            creds: None,
            nkey_file: None,
            user: None,
            password: None,
            password_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_required: false,
            connect_timeout: Duration::from_secs(5),
            inbox_prefix: DEFAULT_NATS_INBOX_PREFIX.to_string(),
            subscription_capacity: DEFAULT_SUBSCRIPTION_CAPACITY,
        }
    }

    /// Checks the combination of flags, adding every problem to `problems`.
    pub fn check(&self, problems: &mut Problems) {
        let auth_kinds = [
            self.creds.is_some(),
            self.nkey_file.is_some(),
            self.user.is_some(),
        ]
        .into_iter()
        .filter(|b| *b)
        .count();
        if auth_kinds > 1 {
            problems.push("use only one of --nats-creds, --nats-nkey-file, --nats-user");
        }
        if self.user.is_some() && self.password.is_none() && self.password_file.is_none() {
            problems.push("--nats-user needs NATS_PASSWORD or --nats-password-file");
        }
        if self.password.is_some() && self.password_file.is_some() {
            problems.push("use only one of NATS_PASSWORD and --nats-password-file");
        }
        for (flag, path) in [
            ("--nats-creds", &self.creds),
            ("--nats-nkey-file", &self.nkey_file),
            ("--nats-password-file", &self.password_file),
            ("--nats-tls-ca", &self.tls_ca),
            ("--nats-tls-cert", &self.tls_cert),
            ("--nats-tls-key", &self.tls_key),
        ] {
            if let Some(p) = path
                && !p.is_file()
            {
                problems.push(format!("{flag}: {} is not a readable file", p.display()));
            }
        }
        if self.url.trim().is_empty() {
            problems.push("--nats-url is empty");
        }
        if !(1..=1 << 24).contains(&self.subscription_capacity) {
            problems.push(format!(
                "--nats-subscription-capacity must be 1..=16777216, got {}",
                self.subscription_capacity
            ));
        }
        if !valid_inbox_prefix(&self.inbox_prefix) {
            problems.push(format!(
                "--nats-inbox-prefix `{}` must be a subject token or tokens without wildcards or spaces, e.g. _INBOX_coordinator",
                self.inbox_prefix
            ));
        }
    }

    /// Connects with the given client name and our standard options (bounded
    /// subscriptions of `--nats-subscription-capacity`, slow-consumer
    /// accounting, logged connection events).
    ///
    /// # Errors
    /// Unreadable credential files or a failed connection.
    pub async fn connect(
        &self,
        name: &str,
    ) -> Result<(async_nats::Client, Arc<NatsHealth>), ConnectError> {
        self.connect_with(name, self.subscription_capacity.max(1))
            .await
    }

    /// Like [`NatsArgs::connect`] with an explicit per-subscription capacity.
    ///
    /// # Errors
    /// Unreadable credential files or a failed connection.
    pub async fn connect_with(
        &self,
        name: &str,
        subscription_capacity: usize,
    ) -> Result<(async_nats::Client, Arc<NatsHealth>), ConnectError> {
        let health = Arc::new(NatsHealth::default());
        let mut opts = match &self.creds {
            Some(path) => ConnectOptions::with_credentials_file(path.clone())
                .await
                .map_err(|e| ConnectError::file("credentials", path, e))?,
            None => ConnectOptions::new(),
        };
        if let Some(path) = &self.nkey_file {
            let seed = std::fs::read_to_string(path)
                .map_err(|e| ConnectError::file("nkey seed", path, e))?;
            opts = opts.nkey(seed.trim().to_string());
        }
        if let Some(user) = &self.user {
            let password = match (&self.password, &self.password_file) {
                (Some(p), _) => p.clone(),
                (None, Some(path)) => std::fs::read_to_string(path)
                    .map_err(|e| ConnectError::file("password", path, e))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
                (None, None) => String::new(),
            };
            opts = opts.user_and_password(user.clone(), password);
        }
        if let Some(ca) = &self.tls_ca {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        if self.tls_required {
            opts = opts.require_tls(true);
        }
        let h = health.clone();
        let client_name = name.to_string();
        opts = opts
            .name(name)
            .subscription_capacity(subscription_capacity)
            .connection_timeout(self.connect_timeout)
            .reconnect_delay_callback(reconnect_delay)
            .custom_inbox_prefix(&self.inbox_prefix)
            .event_callback(move |event| {
                let h = h.clone();
                let client_name = client_name.clone();
                async move { h.record(&client_name, event) }
            });
        // async-nats parses a string as one URL: a cluster's list goes in as a list.
        let urls: Vec<&str> = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let client =
            opts.connect(urls.as_slice())
                .await
                .map_err(|source| ConnectError::Connect {
                    url: redact_url(&urls.join(",")),
                    source,
                })?;
        Ok((client, health))
    }
}

/// The longest pause between two reconnect attempts, before jitter.
pub const RECONNECT_MAX: Duration = Duration::from_millis(250);

/// The pause before reconnect attempt `attempts` (1 = the first): none, then
/// 25 ms doubling up to [`RECONNECT_MAX`], plus up to a quarter of it at
/// random so a fleet does not reconnect in lockstep. async-nats' default grows
/// to 4 s, so after an outage of a few seconds a process came back up to 4 s
/// after its server; with this it comes back within about 0.3 s, at the cost of
/// about four connection attempts a second per process while the server is down.
pub fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let shift = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(16);
    let base = (Duration::from_millis(25) * (1u32 << shift)).min(RECONNECT_MAX);
    let jitter_ms = rand::random_range(0..=base.as_millis() as u64 / 4);
    base + Duration::from_millis(jitter_ms)
}

/// Why connecting to NATS failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A credential or TLS file could not be read.
    #[error("reading NATS {what} {}: {source}", path.display())]
    File {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The server could not be reached or refused us.
    #[error("connecting to NATS at {url}: {source}")]
    Connect {
        /// The URL(s), with credentials redacted.
        url: String,
        /// The client's error.
        source: async_nats::ConnectError,
    },
}

impl ConnectError {
    fn file(what: &'static str, path: &std::path::Path, source: std::io::Error) -> ConnectError {
        ConnectError::File {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Whether `p` can prefix inbox subjects: dot-separated non-empty tokens,
/// no wildcards, no whitespace.
fn valid_inbox_prefix(p: &str) -> bool {
    !p.is_empty()
        && p.split('.')
            .all(|t| !t.is_empty() && !t.chars().any(|c| c.is_whitespace() || c == '*' || c == '>'))
}

/// Strips `user:password@` from URLs before they are logged.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}://***@{}", &u[..s], &u[at + 1..]),
            _ => u.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Slow-consumer events of every connection of this process.
static SLOW_CONSUMER_EVENTS: AtomicU64 = AtomicU64::new(0);
/// When the last slow-consumer warning was logged, and the total then.
static SLOW_CONSUMER_WARNED: Mutex<Option<(Instant, u64)>> = Mutex::new(None);

/// Slow-consumer events (messages async-nats dropped because a subscription's
/// buffer was full) of every connection this process made through
/// [`NatsArgs::connect`], since it started. Coordinators report it in
/// `orch.v1.stats`, workers in their `$SRV.STATS` data.
pub fn slow_consumer_events() -> u64 {
    SLOW_CONSUMER_EVENTS.load(Ordering::Relaxed)
}

/// Counts one slow-consumer event process-wide; returns the drops since the
/// last warning when a warning is due (the first drop, then at most once per
/// [`SLOW_CONSUMER_WARN_EVERY`]).
fn count_slow_consumer() -> (u64, Option<u64>) {
    let total = SLOW_CONSUMER_EVENTS.fetch_add(1, Ordering::Relaxed) + 1;
    let Ok(mut last) = SLOW_CONSUMER_WARNED.lock() else {
        return (total, None);
    };
    let now = Instant::now();
    let due = warning_due(*last, now, total);
    if due.is_some() {
        *last = Some((now, total));
    }
    (total, due)
}

/// Whether to warn at `now` with `total` events, given the last warning
/// (`(when, total then)`): the events since then, or `None` to stay quiet.
fn warning_due(last: Option<(Instant, u64)>, now: Instant, total: u64) -> Option<u64> {
    match last {
        Some((at, _)) if now.duration_since(at) < SLOW_CONSUMER_WARN_EVERY => None,
        Some((_, then)) => Some(total.saturating_sub(then)),
        None => Some(total),
    }
}

/// `filter` (a `RUST_LOG` / `--log-level` directive list) with async-nats'
/// own `info` lines held back: it logs every connection event at `info`,
/// once per dropped message on a slow consumer ("event: slow consumers for
/// subscription 12"), while [`NatsHealth`] logs the same events with a rate
/// limit. A filter that names `async_nats`, or asks for `debug`/`trace`, is
/// left as it is.
pub fn quiet_nats_events(filter: &str) -> String {
    let f = filter.trim();
    if f.contains("async_nats") || f.contains("debug") || f.contains("trace") {
        f.to_string()
    } else if f.is_empty() {
        "info,async_nats=warn".to_string()
    } else {
        format!("{f},async_nats=warn")
    }
}

/// Connection health counters fed by async-nats' event callback.
#[derive(Debug, Default)]
pub struct NatsHealth {
    /// Messages dropped because a subscription's buffer was full.
    pub slow_consumer_events: AtomicU64,
    /// Times the connection was lost.
    pub disconnects: AtomicU64,
    /// Errors reported by the server (permissions violations among them).
    pub server_errors: AtomicU64,
}

impl NatsHealth {
    fn record(&self, name: &str, event: Event) {
        match event {
            Event::SlowConsumer(sid) => {
                self.slow_consumer_events.fetch_add(1, Ordering::Relaxed);
                // Every drop loses a message: always say so, but rate-limit the noise.
                let (total, due) = count_slow_consumer();
                if let Some(since_last_warning) = due {
                    tracing::warn!(
                        client = name,
                        sid,
                        total,
                        since_last_warning,
                        "slow consumer: NATS messages dropped (a subscription's buffer was full; see --nats-subscription-capacity)"
                    );
                }
            }
            Event::Disconnected => {
                self.disconnects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(client = name, "disconnected from NATS; reconnecting");
            }
            Event::Connected => tracing::info!(client = name, "connected to NATS"),
            Event::ServerError(e) => {
                self.server_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(client = name, error = %e, "NATS server error");
            }
            Event::ClientError(e) => {
                tracing::error!(client = name, error = %e, "NATS client error")
            }
            Event::LameDuckMode => {
                tracing::warn!(client = name, "NATS server entering lame duck mode")
            }
            Event::Draining => tracing::info!(client = name, "draining NATS connection"),
            Event::Closed => tracing::info!(client = name, "NATS connection closed"),
        }
    }

    /// Slow-consumer drops so far.
    pub fn slow_consumers(&self) -> u64 {
        self.slow_consumer_events.load(Ordering::Relaxed)
    }
}

/// Collects configuration problems so all of them are reported at once.
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    /// Records a problem.
    pub fn push(&mut self, p: impl Into<String>) {
        self.0.push(p.into());
    }

    /// Records `msg` unless `ok`.
    pub fn require(&mut self, ok: bool, msg: impl Into<String>) {
        if !ok {
            self.push(msg);
        }
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems recorded.
    pub fn list(&self) -> &[String] {
        &self.0
    }

    /// `Ok` when empty, else every problem.
    ///
    /// # Errors
    /// [`ConfigError`] listing every problem.
    pub fn finish(self) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(self.0))
        }
    }
}

/// One or more configuration problems.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

/// Prints a configuration error and exits with [`EXIT_CONFIG`].
pub fn exit_config(program: &str, err: &ConfigError) -> ! {
    eprintln!("{program}: {err}");
    std::process::exit(EXIT_CONFIG)
}

/// Parses clap arguments; usage errors exit 64 (help and version still exit 0).
pub fn parse_args<T: clap::Parser>() -> T {
    exit_on_parse_error(T::try_parse())
}

/// Like [`parse_args`], for a command line built at run time (one parser
/// shared by binaries that differ only in name and description).
pub fn parse_command<T: clap::FromArgMatches>(cmd: clap::Command) -> T {
    exit_on_parse_error(cmd.try_get_matches().and_then(|m| T::from_arg_matches(&m)))
}

fn exit_on_parse_error<T>(parsed: Result<T, clap::Error>) -> T {
    match parsed {
        Ok(t) => t,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => EXIT_CONFIG,
                _ => EXIT_CONFIG,
            };
            let _ = e.print();
            std::process::exit(code)
        }
    }
}

/// Parses `250ms`, `5s`, `2m`, `1h` or a bare number of milliseconds.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "ms"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration `{s}` (use e.g. 250ms, 5s, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration unit in `{s}` (use ms, s, m or h)"
            ));
        }
    };
    if !secs.is_finite() || !(0.0..=7.0 * 24.0 * 3600.0).contains(&secs) {
        return Err(format!("duration `{s}` out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_pauses_grow_to_a_quarter_second_with_jitter() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        let second = reconnect_delay(2);
        assert!((25..=31).contains(&second.as_millis()), "{second:?}");
        for attempts in [10, 100, usize::MAX] {
            let d = reconnect_delay(attempts);
            assert!(
                d >= RECONNECT_MAX && d <= RECONNECT_MAX + RECONNECT_MAX / 4,
                "{attempts}: {d:?}"
            );
        }
        // Jitter: a hundred pauses at the cap are not all the same.
        let pauses: std::collections::BTreeSet<_> = (0..100).map(|_| reconnect_delay(50)).collect();
        assert!(pauses.len() > 1, "{pauses:?}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1500").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0.5s").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn problems_are_all_reported() {
        let mut p = Problems::default();
        p.push("a");
        p.require(false, "b");
        p.require(true, "c");
        let e = p.finish().unwrap_err();
        assert_eq!(e.0, vec!["a", "b"]);
        assert!(e.to_string().contains("- a\n  - b"));
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("nats://u:p@host:4222"), "nats://***@host:4222");
        assert_eq!(redact_url("nats://host:4222"), "nats://host:4222");
    }

    #[test]
    fn slow_consumers_are_counted_and_warned_about_at_most_every_ten_seconds() {
        let health = NatsHealth::default();
        let before = slow_consumer_events();
        for _ in 0..3 {
            health.record("test", Event::SlowConsumer(7));
        }
        assert_eq!(health.slow_consumers(), 3);
        assert!(slow_consumer_events() >= before + 3);

        let t0 = Instant::now();
        assert_eq!(warning_due(None, t0, 1), Some(1));
        let last = Some((t0, 1));
        assert_eq!(warning_due(last, t0 + Duration::from_secs(1), 500), None);
        assert_eq!(
            warning_due(last, t0 + SLOW_CONSUMER_WARN_EVERY, 500),
            Some(499)
        );
    }

    #[test]
    fn async_nats_event_lines_are_held_back_unless_asked_for() {
        assert_eq!(quiet_nats_events("info"), "info,async_nats=warn");
        assert_eq!(quiet_nats_events(""), "info,async_nats=warn");
        assert_eq!(
            quiet_nats_events("warn,orch_coordinator=info"),
            "warn,orch_coordinator=info,async_nats=warn"
        );
        for kept in ["trace", "info,orch_worker=debug", "info,async_nats=info"] {
            assert_eq!(quiet_nats_events(kept), kept);
        }
    }

    #[test]
    fn subscription_capacity_is_checked() {
        for (capacity, ok) in [(0, false), (1, true), (8192, true), (1 << 25, false)] {
            let mut a = NatsArgs::plain("nats://x");
            a.subscription_capacity = capacity;
            let mut p = Problems::default();
            a.check(&mut p);
            assert_eq!(p.is_empty(), ok, "{capacity}: {:?}", p.list());
        }
    }

    #[test]
    fn debug_output_hides_the_password() {
        let mut a = NatsArgs::plain("nats://u:url-secret@host:4222");
        a.user = Some("coordinator".into());
        a.password = Some("hunter2-secret".into());
        let shown = format!("{a:?}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(!shown.contains("url-secret"), "{shown}");
        assert!(
            shown.contains("coordinator") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn inbox_prefixes_are_checked() {
        for (prefix, ok) in [
            ("_INBOX", true),
            ("_INBOX_coordinator", true),
            ("_I.vision", true),
            ("", false),
            ("_INBOX.>", false),
            ("a..b", false),
            ("has space", false),
            ("_INBOX.", false),
        ] {
            let mut a = NatsArgs::plain("nats://x");
            a.inbox_prefix = prefix.into();
            let mut p = Problems::default();
            a.check(&mut p);
            assert_eq!(p.is_empty(), ok, "{prefix:?}: {:?}", p.list());
        }
    }

    #[test]
    fn conflicting_auth_is_reported() {
        let mut a = NatsArgs::plain("nats://x");
        a.user = Some("u".into());
        a.creds = Some("/nonexistent".into());
        let mut p = Problems::default();
        a.check(&mut p);
        assert!(p.list().len() >= 3, "{:?}", p.list());
    }
}
