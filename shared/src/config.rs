//! Configuration plumbing every binary shares: NATS connection flags, log
//! flags, duration parsing, and the "report every problem, then exit 64" rule.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

/// How to reach NATS. Flattened into every binary's flags.
#[derive(clap::Args, Debug, Clone)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long = "nats-url", env = ENV_NATS_URL, default_value = DEFAULT_NATS_URL)]
    pub url: String,
    /// NATS credentials file (JWT + nkey seed), as issued by `nsc`.
    #[arg(long = "nats-creds", env = "NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// File holding an nkey seed (`SU...`) for nkey authentication.
    #[arg(long = "nats-nkey-file", env = "NATS_NKEY_FILE")]
    pub nkey_file: Option<PathBuf>,
    /// User name for user/password authentication.
    #[arg(long = "nats-user", env = "NATS_USER")]
    pub user: Option<String>,
    /// Password for user/password authentication (prefer the env var or --nats-password-file).
    #[arg(long = "nats-password", env = "NATS_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// File holding the password for user/password authentication.
    #[arg(long = "nats-password-file", env = "NATS_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify the server's TLS certificate.
    #[arg(long = "nats-tls-ca", env = "NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long = "nats-tls-cert", env = "NATS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long = "nats-tls-key", env = "NATS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require TLS even if the server does not demand it.
    #[arg(long = "nats-tls-required", env = "NATS_TLS_REQUIRED")]
    pub tls_required: bool,
    /// Give up connecting at startup after this long.
    #[arg(long = "nats-connect-timeout", env = "NATS_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
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
    }

    /// Connects with the given client name and our standard options (bounded
    /// subscriptions, slow-consumer accounting, logged connection events).
    ///
    /// # Errors
    /// Unreadable credential files or a failed connection.
    pub async fn connect(
        &self,
        name: &str,
    ) -> Result<(async_nats::Client, Arc<NatsHealth>), ConnectError> {
        self.connect_with(name, DEFAULT_SUBSCRIPTION_CAPACITY).await
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
            .event_callback(move |event| {
                let h = h.clone();
                let client_name = client_name.clone();
                async move { h.record(&client_name, event) }
            });
        let urls = self
            .url
            .split(',')
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(",");
        let client = opts
            .connect(urls.as_str())
            .await
            .map_err(|source| ConnectError::Connect {
                url: redact_url(&urls),
                source,
            })?;
        Ok((client, health))
    }
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
                let n = self.slow_consumer_events.fetch_add(1, Ordering::Relaxed) + 1;
                // Every drop loses a message: always say so, but rate-limit the noise.
                if n.is_power_of_two() {
                    tracing::warn!(
                        client = name,
                        sid,
                        total = n,
                        "slow consumer: NATS messages dropped"
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
    match T::try_parse() {
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
    fn conflicting_auth_is_reported() {
        let mut a = NatsArgs::plain("nats://x");
        a.user = Some("u".into());
        a.creds = Some("/nonexistent".into());
        let mut p = Problems::default();
        a.check(&mut p);
        assert!(p.list().len() >= 3, "{:?}", p.list());
    }
}
