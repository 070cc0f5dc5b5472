//! `--browser` mode: pages rendered by headless Chromium (Debian's
//! `chromium`), driven over the DevTools protocol with `chromiumoxide`, for
//! sites whose text only exists after JavaScript runs.
//!
//! One browser per worker process, with its own temporary profile directory;
//! a semaphore bounds the open tabs; every navigation runs under the page's
//! deadline; a tab is closed on every path (a guard closes it even when the
//! job's future is dropped by a timeout or a cancel); [`BrowserPool::shutdown`]
//! closes the browser and kills it if it does not exit.
//!
//! Only the first navigation is checked against the private-network guard
//! (the caller fetched the URL with the guarded HTTP client first); what the
//! page then loads is up to Chromium.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chromiumoxide::page::ScreenshotParams;
use chromiumoxide::{Browser, Page};
use futures::StreamExt as _;
use tokio::sync::{RwLock, Semaphore};
use tokio_util::task::TaskTracker;

use crate::http::error_chain;

/// The Chromium Debian installs (`apt-get install chromium`).
pub const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";
/// Flags every browser starts with: headless, no sandbox (containers rarely
/// allow one; we only render pages, never run a user profile), and nothing
/// running in the background that would phone home or update itself.
pub const CHROMIUM_FLAGS: [&str; 14] = [
    "disable-gpu",
    "disable-dev-shm-usage",
    "disable-background-networking",
    "disable-component-update",
    "disable-sync",
    "no-first-run",
    "disable-default-apps",
    "disable-breakpad",
    "disable-background-timer-throttling",
    "disable-renderer-backgrounding",
    "disable-backgrounding-occluded-windows",
    "metrics-recording-only",
    "password-store=basic",
    "use-mock-keychain",
];
/// Time allowed for closing a tab before it is abandoned (the browser's own
/// shutdown still reaps it).
const TAB_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed for a polite browser exit before it is killed.
const BROWSER_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Browser settings.
#[derive(Debug, Clone)]
pub struct BrowserSettings {
    /// The Chromium binary.
    pub executable: PathBuf,
    /// Tabs open at once (across all jobs).
    pub tabs: usize,
    /// Extra time after the load event for scripts that insert content late.
    pub settle: Duration,
    /// How long Chromium may take to start.
    pub launch_timeout: Duration,
    /// Most bytes of rendered HTML taken from a page.
    pub max_html_bytes: usize,
}

/// A rendered page.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The URL the tab ended on.
    pub url: String,
    /// `document.title`.
    pub title: String,
    /// `document.documentElement.outerHTML` (bounded).
    pub html: String,
    /// A PNG of the viewport, when asked for.
    pub screenshot: Option<Vec<u8>>,
}

/// Browser failures.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BrowserError {
    /// Chromium could not be started.
    #[error("cannot start Chromium at {path}: {detail}")]
    Launch {
        /// The binary.
        path: String,
        /// What went wrong (with Chromium's stderr when it said something).
        detail: String,
    },
    /// The browser was shut down.
    #[error("the browser is shut down")]
    Closed,
    /// The page did not finish in time.
    #[error("{url}: rendering timed out after {} ms", .after.as_millis())]
    TimedOut {
        /// The URL.
        url: String,
        /// The limit.
        after: Duration,
    },
    /// A DevTools command failed (navigation error, crashed tab, ...).
    #[error("{url}: {detail}")]
    Page {
        /// The URL.
        url: String,
        /// Details.
        detail: String,
    },
}

/// The worker's one browser.
pub struct BrowserPool {
    browser: RwLock<Option<Browser>>,
    tabs: Semaphore,
    /// The DevTools event loop and tab-closing tasks.
    tracker: TaskTracker,
    settings: BrowserSettings,
    pid: Option<u32>,
    /// The profile directory, removed when the pool is dropped.
    _profile: tempfile::TempDir,
}

impl std::fmt::Debug for BrowserPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserPool")
            .field("settings", &self.settings)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl BrowserPool {
    /// Starts Chromium with a fresh profile directory.
    ///
    /// # Errors
    /// [`BrowserError::Launch`] with Chromium's own complaint when it does not start.
    pub async fn launch(settings: BrowserSettings) -> Result<BrowserPool, BrowserError> {
        let path = settings.executable.display().to_string();
        let launch_err = |detail: String| BrowserError::Launch {
            path: path.clone(),
            detail,
        };
        let profile = tempfile::Builder::new()
            .prefix("orch-web-chromium-")
            .tempdir()
            .map_err(|e| launch_err(format!("creating a profile directory: {e}")))?;
        let config = chromiumoxide::BrowserConfig::builder()
            .chrome_executable(&settings.executable)
            .user_data_dir(profile.path())
            .new_headless_mode()
            .no_sandbox()
            .disable_default_args()
            .args(CHROMIUM_FLAGS)
            .launch_timeout(settings.launch_timeout)
            .build()
            .map_err(launch_err)?;
        let (mut browser, mut handler) = Browser::launch(config)
            .await
            .map_err(|e| launch_err(error_chain(&e)))?;
        let pid = browser.get_mut_child().and_then(|c| c.as_mut_inner().id());
        let tracker = TaskTracker::new();
        tracker.spawn(async move {
            // Drives the DevTools connection; ends when the browser goes away.
            while let Some(event) = handler.next().await {
                if let Err(e) = event {
                    tracing::debug!(error = %e, "chromium devtools event error");
                }
            }
        });
        tracing::info!(pid, executable = %settings.executable.display(), "chromium started");
        Ok(BrowserPool {
            browser: RwLock::new(Some(browser)),
            tabs: Semaphore::new(settings.tabs.max(1)),
            tracker,
            settings,
            pid,
            _profile: profile,
        })
    }

    /// The browser's process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The settings in use.
    pub fn settings(&self) -> &BrowserSettings {
        &self.settings
    }

    /// Loads `url` in a new tab and returns the rendered document (and a
    /// screenshot when asked), all before `deadline`.
    ///
    /// # Errors
    /// [`BrowserError::TimedOut`] at the deadline, [`BrowserError::Closed`]
    /// after shutdown, [`BrowserError::Page`] when the navigation fails.
    pub async fn render(
        &self,
        url: &str,
        deadline: Instant,
        screenshot: bool,
    ) -> Result<Rendered, BrowserError> {
        let limit = deadline.saturating_duration_since(Instant::now());
        let timed_out = || BrowserError::TimedOut {
            url: url.to_string(),
            after: limit,
        };
        let _permit = tokio::time::timeout_at(deadline.into(), self.tabs.acquire())
            .await
            .map_err(|_| timed_out())?
            .map_err(|_| BrowserError::Closed)?;
        let page = tokio::time::timeout_at(deadline.into(), self.open_tab())
            .await
            .map_err(|_| timed_out())??;
        let mut tab = Tab {
            page: Some(page),
            tracker: self.tracker.clone(),
        };
        let result =
            tokio::time::timeout_at(deadline.into(), self.load(tab.page(), url, screenshot))
                .await
                .map_err(|_| timed_out())
                .and_then(|r| r);
        tab.close().await;
        result
    }

    async fn open_tab(&self) -> Result<Page, BrowserError> {
        let guard = self.browser.read().await;
        let browser = guard.as_ref().ok_or(BrowserError::Closed)?;
        browser
            .new_page("about:blank")
            .await
            .map_err(|e| BrowserError::Page {
                url: "about:blank".into(),
                detail: format!("opening a tab: {}", error_chain(&e)),
            })
    }

    async fn load(
        &self,
        page: Option<&Page>,
        url: &str,
        screenshot: bool,
    ) -> Result<Rendered, BrowserError> {
        let page_err = |what: &str, e: chromiumoxide::error::CdpError| BrowserError::Page {
            url: url.to_string(),
            detail: format!("{what}: {}", error_chain(&e)),
        };
        let page = page.ok_or(BrowserError::Closed)?;
        page.goto(url)
            .await
            .map_err(|e| page_err("navigating", e))?;
        if !self.settings.settle.is_zero() {
            tokio::time::sleep(self.settings.settle).await;
        }
        // Sliced in the page so a huge DOM never crosses the DevTools socket whole.
        let max = self.settings.max_html_bytes;
        let mut html: String = page
            .evaluate(format!(
                "document.documentElement.outerHTML.slice(0, {max})"
            ))
            .await
            .map_err(|e| page_err("reading the DOM", e))?
            .into_value()
            .map_err(|e| BrowserError::Page {
                url: url.to_string(),
                detail: format!("reading the DOM: {e}"),
            })?;
        crate::http::truncate_utf8(&mut html, max);
        let title = page.get_title().await.ok().flatten().unwrap_or_default();
        let final_url = page
            .url()
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| url.to_string());
        let screenshot = if screenshot {
            let png = page
                .screenshot(ScreenshotParams::builder().build())
                .await
                .map_err(|e| page_err("taking a screenshot", e))?;
            Some(png)
        } else {
            None
        };
        Ok(Rendered {
            url: final_url,
            title,
            html,
            screenshot,
        })
    }

    /// Stops taking work, closes the browser (killing it if it lingers) and
    /// waits for the DevTools loop to end. Idempotent.
    pub async fn shutdown(&self) {
        self.tabs.close();
        let Some(mut browser) = self.browser.write().await.take() else {
            return;
        };
        let closed = tokio::time::timeout(BROWSER_CLOSE_TIMEOUT, async {
            let _ = browser.close().await;
            browser.wait().await
        })
        .await;
        if !matches!(closed, Ok(Ok(_))) {
            tracing::warn!(pid = self.pid, "chromium did not exit in time; killing it");
            let _ = browser.kill().await;
        }
        drop(browser);
        self.tracker.close();
        if tokio::time::timeout(BROWSER_CLOSE_TIMEOUT, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("chromium devtools tasks still running after shutdown");
        }
        tracing::info!(pid = self.pid, "chromium stopped");
    }
}

/// An open tab; closed by [`Tab::close`], or in the background when dropped
/// unclosed (the job's future was dropped mid-render).
struct Tab {
    page: Option<Page>,
    tracker: TaskTracker,
}

impl Tab {
    fn page(&self) -> Option<&Page> {
        self.page.as_ref()
    }

    async fn close(&mut self) {
        if let Some(page) = self.page.take() {
            close_page(page).await;
        }
    }
}

impl Drop for Tab {
    fn drop(&mut self) {
        if let Some(page) = self.page.take() {
            // Tracked: shutdown waits for it. Outside a runtime there is
            // nothing to run it on, and the browser's exit closes the tab.
            if tokio::runtime::Handle::try_current().is_ok() {
                self.tracker.spawn(close_page(page));
            }
        }
    }
}

async fn close_page(page: Page) {
    match tokio::time::timeout(TAB_CLOSE_TIMEOUT, page.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "closing a tab failed"),
        Err(_) => tracing::debug!("closing a tab timed out"),
    }
}

/// Shared handle type used by the worker.
pub type SharedBrowser = Arc<BrowserPool>;
