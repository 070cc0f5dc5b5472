//! The web worker's flags (each also an environment variable), their
//! defaults and reasons, and validation that reports every problem at once.
//!
//! [`WebArgs::config`] turns flags into a checked [`WebConfig`]; API keys are
//! read there, through an environment lookup the caller passes in (tests
//! inject one instead of mutating the process environment).

use std::path::PathBuf;
use std::time::Duration;

use orch_shared::config::{Problems, parse_duration};
use orch_worker::sim::SimArgs;
use reqwest::Url;

use crate::browser::{BrowserSettings, DEFAULT_CHROMIUM};
use crate::fetch::FetchConfig;
use crate::handler::PagePlan;
use crate::search::{Backend, SearchConfig};
use orch_shared::secret::ApiKey;

/// Default `--max-results`: a first page of results, as every engine returns.
pub const DEFAULT_MAX_RESULTS: usize = 10;
/// Default `--fetch-pages`: the top three pages carry most of the answer and
/// fit a 30 s phase budget even when one of them is slow.
pub const DEFAULT_FETCH_PAGES: usize = 3;
/// Default `--fetch-concurrency`: all default pages at once, one more for a larger k.
pub const DEFAULT_FETCH_CONCURRENCY: usize = 4;
/// Default `--page-timeout`: a page slower than this is rarely worth the wait.
pub const DEFAULT_PAGE_TIMEOUT: &str = "10s";
/// Default `--search-timeout`: search APIs answer in about a second; 10 s is a sick one.
pub const DEFAULT_SEARCH_TIMEOUT: &str = "10s";
/// Default `--search-retries`: two retries cover a blip without eating the phase budget.
pub const DEFAULT_SEARCH_RETRIES: u32 = 2;
/// Default `--max-page-bytes`: 2 MiB holds the HTML of nearly every article page.
pub const DEFAULT_MAX_PAGE_BYTES: usize = 2 * 1024 * 1024;
/// Default `--max-page-text`: ~16 KiB of text per page is a long article; the
/// findings travel in NATS messages (1 MiB) and into model prompts.
pub const DEFAULT_MAX_PAGE_TEXT: usize = 16 * 1024;
/// Default `--max-redirects`: what browsers tolerate for sane sites, far below loops.
pub const DEFAULT_MAX_REDIRECTS: usize = 5;
/// Default `--browser-tabs`: a tab costs ~100 MB and a core while loading.
pub const DEFAULT_BROWSER_TABS: usize = 2;
/// Default `--browser-settle`: time for scripts that fill the page just after load.
pub const DEFAULT_BROWSER_SETTLE: &str = "250ms";
/// Default `--browser-launch-timeout`: Chromium starts in about a second; 20 s on a loaded box.
pub const DEFAULT_BROWSER_LAUNCH_TIMEOUT: &str = "20s";
/// Total page text a reply may carry (`--fetch-pages` × `--max-page-text`),
/// keeping the reply well inside NATS' default 1 MiB payload.
pub const MAX_TOTAL_PAGE_TEXT: usize = 640 * 1024;
/// Environment variable read for the Brave key unless `--api-key-env` names another.
pub const DEFAULT_BRAVE_KEY_ENV: &str = "BRAVE_API_KEY";
/// Environment variable read for the Tavily key unless `--api-key-env` names another.
pub const DEFAULT_TAVILY_KEY_ENV: &str = "TAVILY_API_KEY";

/// Search backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProviderKind {
    /// A SearxNG instance's JSON API (default: a local one).
    Searxng,
    /// The Brave Search API (needs a key).
    Brave,
    /// Tavily (needs a key).
    Tavily,
    /// The documented simulator (tests, benchmarks); never for real use.
    Sim,
}

/// Web worker flags.
#[derive(clap::Args, Debug, Clone)]
pub struct WebArgs {
    /// Search backend.
    #[arg(long, env = "ORCH_PROVIDER", value_enum, default_value_t = ProviderKind::Searxng)]
    pub provider: ProviderKind,
    /// Base URL of the search API. Defaults: searxng `http://127.0.0.1:8888`,
    /// brave `https://api.search.brave.com/res/v1`, tavily `https://api.tavily.com`.
    #[arg(long = "search-url", env = "ORCH_SEARCH_URL")]
    pub search_url: Option<String>,
    /// Environment variable holding the API key (brave: `BRAVE_API_KEY`, tavily: `TAVILY_API_KEY`).
    #[arg(long = "api-key-env", env = "ORCH_SEARCH_API_KEY_ENV")]
    pub api_key_env: Option<String>,
    /// File holding the API key (instead of an environment variable).
    #[arg(long = "api-key-file", env = "ORCH_SEARCH_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Search hits returned per query.
    #[arg(long = "max-results", env = "ORCH_WEB_MAX_RESULTS", default_value_t = DEFAULT_MAX_RESULTS)]
    pub max_results: usize,
    /// Limit of one search request (the job's deadline may cut it shorter).
    #[arg(long = "search-timeout", env = "ORCH_WEB_SEARCH_TIMEOUT", default_value = DEFAULT_SEARCH_TIMEOUT, value_parser = parse_duration)]
    pub search_timeout: Duration,
    /// Retries after 429, 5xx or connect errors (never past the job's deadline).
    #[arg(long = "search-retries", env = "ORCH_WEB_SEARCH_RETRIES", default_value_t = DEFAULT_SEARCH_RETRIES)]
    pub search_retries: u32,
    /// How many of the top hits to fetch and read (0: search only).
    #[arg(long = "fetch-pages", env = "ORCH_WEB_FETCH_PAGES", default_value_t = DEFAULT_FETCH_PAGES)]
    pub fetch_pages: usize,
    /// Pages fetched at once per job.
    #[arg(long = "fetch-concurrency", env = "ORCH_WEB_FETCH_CONCURRENCY", default_value_t = DEFAULT_FETCH_CONCURRENCY)]
    pub fetch_concurrency: usize,
    /// Limit per page (connect, headers, body), cut shorter by the job's deadline.
    #[arg(long = "page-timeout", env = "ORCH_WEB_PAGE_TIMEOUT", default_value = DEFAULT_PAGE_TIMEOUT, value_parser = parse_duration)]
    pub page_timeout: Duration,
    /// Bytes of each page's body read; the rest is not downloaded.
    #[arg(long = "max-page-bytes", env = "ORCH_WEB_MAX_PAGE_BYTES", default_value_t = DEFAULT_MAX_PAGE_BYTES)]
    pub max_page_bytes: usize,
    /// Bytes of readable text kept per page.
    #[arg(long = "max-page-text", env = "ORCH_WEB_MAX_PAGE_TEXT", default_value_t = DEFAULT_MAX_PAGE_TEXT)]
    pub max_page_text: usize,
    /// Redirects followed per page.
    #[arg(long = "max-redirects", env = "ORCH_WEB_MAX_REDIRECTS", default_value_t = DEFAULT_MAX_REDIRECTS)]
    pub max_redirects: usize,
    /// `User-Agent` sent to search APIs and pages.
    #[arg(long = "user-agent", env = "ORCH_WEB_USER_AGENT", default_value = concat!("orch-web/", env!("CARGO_PKG_VERSION")))]
    pub user_agent: String,
    /// Let page fetches reach loopback, private and link-local addresses
    /// (off by default: search results must not reach internal services).
    #[arg(
        long = "allow-private-addresses",
        env = "ORCH_WEB_ALLOW_PRIVATE_ADDRESSES"
    )]
    pub allow_private_addresses: bool,
    /// Render HTML pages in headless Chromium before extracting text (JS-heavy sites).
    #[arg(long, env = "ORCH_WEB_BROWSER")]
    pub browser: bool,
    /// The Chromium binary for `--browser`.
    #[arg(long = "chromium-path", env = "ORCH_WEB_CHROMIUM_PATH", default_value = DEFAULT_CHROMIUM)]
    pub chromium: PathBuf,
    /// Browser tabs open at once (across all jobs).
    #[arg(long = "browser-tabs", env = "ORCH_WEB_BROWSER_TABS", default_value_t = DEFAULT_BROWSER_TABS)]
    pub browser_tabs: usize,
    /// Extra wait after a page's load event, for scripts that fill it late.
    #[arg(long = "browser-settle", env = "ORCH_WEB_BROWSER_SETTLE", default_value = DEFAULT_BROWSER_SETTLE, value_parser = parse_duration)]
    pub browser_settle: Duration,
    /// How long Chromium may take to start.
    #[arg(long = "browser-launch-timeout", env = "ORCH_WEB_BROWSER_LAUNCH_TIMEOUT", default_value = DEFAULT_BROWSER_LAUNCH_TIMEOUT, value_parser = parse_duration)]
    pub browser_launch_timeout: Duration,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub sim: SimArgs,
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub enum WebConfig {
    /// `--provider sim`.
    Sim(SimArgs),
    /// A real backend (boxed: it is much larger than the simulator's flags).
    Real(Box<RealConfig>),
}

/// Everything a real web worker needs.
#[derive(Debug, Clone)]
pub struct RealConfig {
    /// The search API.
    pub search: SearchConfig,
    /// Page fetching limits.
    pub fetch: FetchConfig,
    /// What to do with the hits.
    pub pages: PagePlan,
    /// `--browser` settings.
    pub browser: Option<BrowserSettings>,
}

#[derive(clap::Parser, Debug)]
#[command(no_binary_name = true)]
struct FlagsOnly {
    #[command(flatten)]
    web: WebArgs,
}

impl WebArgs {
    /// Parses web flags alone (defaults for everything not given), e.g. for
    /// tests: `WebArgs::from_flags(["--provider", "brave"])`. Like every clap
    /// parse it also reads the flags' environment variables.
    ///
    /// # Errors
    /// clap's error for an unknown flag or a bad value.
    pub fn from_flags<I, S>(flags: I) -> Result<WebArgs, clap::Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        <FlagsOnly as clap::Parser>::try_parse_from(flags).map(|f| f.web)
    }

    /// Checks every flag and reads the API key. Every problem goes to
    /// `problems`; the result is `Some` exactly when none was found here.
    pub fn config(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        problems: &mut Problems,
    ) -> Option<WebConfig> {
        let before = problems.list().len();
        if self.provider == ProviderKind::Sim {
            self.sim.check(problems);
            return (problems.list().len() == before).then(|| WebConfig::Sim(self.sim.clone()));
        }
        let backend = self.backend(env, problems);
        let base_url = self.base_url(backend.as_ref(), problems);
        self.check_limits(backend.as_ref(), problems);
        let browser = self.browser_settings(problems);
        let (Some(backend), Some(base_url), true) =
            (backend, base_url, problems.list().len() == before)
        else {
            return None;
        };
        Some(WebConfig::Real(Box::new(RealConfig {
            search: SearchConfig {
                backend,
                base_url,
                max_results: self.max_results,
                timeout: self.search_timeout,
                retries: self.search_retries,
                user_agent: self.user_agent.clone(),
            },
            fetch: FetchConfig {
                page_timeout: self.page_timeout,
                max_bytes: self.max_page_bytes,
                max_redirects: self.max_redirects,
                user_agent: self.user_agent.clone(),
                allow_private_addresses: self.allow_private_addresses,
            },
            pages: PagePlan {
                top_k: self.fetch_pages,
                concurrency: self.fetch_concurrency,
                max_text_bytes: self.max_page_text,
            },
            browser,
        })))
    }

    fn backend(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        problems: &mut Problems,
    ) -> Option<Backend> {
        let default_env = match self.provider {
            ProviderKind::Searxng | ProviderKind::Sim => {
                if self.api_key_env.is_some() || self.api_key_file.is_some() {
                    problems.push("--api-key-env/--api-key-file: searxng takes no API key");
                    return None;
                }
                return Some(Backend::Searxng);
            }
            ProviderKind::Brave => DEFAULT_BRAVE_KEY_ENV,
            ProviderKind::Tavily => DEFAULT_TAVILY_KEY_ENV,
        };
        let key = match (&self.api_key_file, &self.api_key_env) {
            (Some(_), Some(_)) => {
                problems.push("use only one of --api-key-env and --api-key-file");
                return None;
            }
            (Some(path), None) => match ApiKey::from_file(path) {
                Ok(k) => k,
                Err(e) => {
                    problems.push(format!("--api-key-file: {e}"));
                    return None;
                }
            },
            (None, var) => {
                let var = var.as_deref().unwrap_or(default_env);
                match env(var).map(ApiKey::new) {
                    Some(Ok(k)) => k,
                    Some(Err(e)) => {
                        problems.push(format!("${var}: {e}"));
                        return None;
                    }
                    None => {
                        problems.push(format!(
                            "--provider {}: no API key: set ${var} (or name another variable with --api-key-env, or use --api-key-file)",
                            self.provider_name()
                        ));
                        return None;
                    }
                }
            }
        };
        Some(match self.provider {
            ProviderKind::Brave => Backend::Brave(key),
            _ => Backend::Tavily(key),
        })
    }

    fn provider_name(&self) -> &'static str {
        match self.provider {
            ProviderKind::Searxng => "searxng",
            ProviderKind::Brave => "brave",
            ProviderKind::Tavily => "tavily",
            ProviderKind::Sim => "sim",
        }
    }

    fn base_url(&self, backend: Option<&Backend>, problems: &mut Problems) -> Option<Url> {
        let text = match (&self.search_url, backend) {
            (Some(u), _) => u.as_str(),
            (None, Some(b)) => b.default_base_url(),
            (None, None) => return None,
        };
        match Url::parse(text.trim()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                if u.query().is_some() || u.fragment().is_some() {
                    problems.push("--search-url: a base URL takes no query or fragment");
                    return None;
                }
                Some(u)
            }
            _ => {
                // The URL may hold credentials: do not echo it.
                problems.push("--search-url must be an absolute http(s) URL");
                None
            }
        }
    }

    fn check_limits(&self, backend: Option<&Backend>, problems: &mut Problems) {
        let max_results = match (backend, self.provider) {
            (Some(b), _) => b.max_results_limit(),
            (None, ProviderKind::Brave) => crate::search::BRAVE_MAX_COUNT,
            (None, ProviderKind::Tavily) => crate::search::TAVILY_MAX_RESULTS,
            (None, _) => Backend::Searxng.max_results_limit(),
        };
        problems.require(
            (1..=max_results).contains(&self.max_results),
            format!(
                "--max-results must be 1..={max_results} for {}, got {}",
                self.provider_name(),
                self.max_results
            ),
        );
        problems.require(
            (1..=32).contains(&self.fetch_concurrency),
            format!(
                "--fetch-concurrency must be 1..=32, got {}",
                self.fetch_concurrency
            ),
        );
        problems.require(
            !self.search_timeout.is_zero(),
            "--search-timeout must be positive",
        );
        problems.require(
            self.search_retries <= 10,
            format!(
                "--search-retries must be at most 10, got {}",
                self.search_retries
            ),
        );
        problems.require(
            !self.page_timeout.is_zero(),
            "--page-timeout must be positive",
        );
        problems.require(
            (1024..=64 * 1024 * 1024).contains(&self.max_page_bytes),
            format!(
                "--max-page-bytes must be 1024..=67108864, got {}",
                self.max_page_bytes
            ),
        );
        problems.require(
            (64..=MAX_TOTAL_PAGE_TEXT).contains(&self.max_page_text),
            format!(
                "--max-page-text must be 64..={MAX_TOTAL_PAGE_TEXT}, got {}",
                self.max_page_text
            ),
        );
        problems.require(
            self.fetch_pages.saturating_mul(self.max_page_text) <= MAX_TOTAL_PAGE_TEXT,
            format!(
                "--fetch-pages × --max-page-text is {} bytes; replies must stay under {MAX_TOTAL_PAGE_TEXT}",
                self.fetch_pages.saturating_mul(self.max_page_text)
            ),
        );
        problems.require(
            self.max_redirects <= 20,
            format!(
                "--max-redirects must be at most 20, got {}",
                self.max_redirects
            ),
        );
        problems.require(
            !self.user_agent.trim().is_empty()
                && reqwest::header::HeaderValue::from_str(&self.user_agent).is_ok(),
            "--user-agent must be a non-empty header value",
        );
    }

    fn browser_settings(&self, problems: &mut Problems) -> Option<BrowserSettings> {
        if !self.browser {
            return None;
        }
        problems.require(
            self.chromium.is_file(),
            format!(
                "--chromium-path: {} not found (Debian: apt-get install -y chromium)",
                self.chromium.display()
            ),
        );
        problems.require(
            (1..=16).contains(&self.browser_tabs),
            format!("--browser-tabs must be 1..=16, got {}", self.browser_tabs),
        );
        problems.require(
            !self.browser_launch_timeout.is_zero(),
            "--browser-launch-timeout must be positive",
        );
        Some(BrowserSettings {
            executable: self.chromium.clone(),
            tabs: self.browser_tabs,
            settle: self.browser_settle,
            launch_timeout: self.browser_launch_timeout,
            max_html_bytes: self.max_page_bytes,
        })
    }
}
