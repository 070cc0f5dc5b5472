//! `orch-web`: the web role. Searches the web through a configured backend
//! (SearxNG, Brave or Tavily), fetches the top result pages within the job's
//! deadline, extracts their readable text, and answers with
//! [`WebFindings`](orch_shared::wire::WebFindings).
//!
//! Where each rule lives:
//! - [`config`]: flags, defaults and their reasons, validation.
//! - [`search`]: the backends' protocols, typed errors, retries within the deadline.
//! - [`fetch`]: page fetching limits (time, size, content type, redirects).
//! - [`netguard`]: no private-network addresses for pages chosen by strangers.
//! - [`extract`]: readable text and title from HTML.
//! - [`browser`]: `--browser` rendering in headless Chromium.
//! - [`handler`]: the role itself: search, then read the top pages.
//! - API keys are `orch_shared::secret::ApiKey` (they cannot be printed).
#![forbid(unsafe_code)]

pub mod browser;
pub mod config;
pub mod extract;
pub mod fetch;
pub mod handler;
mod http;
pub mod netguard;
pub mod search;

#[cfg(test)]
mod fuzz;

use std::sync::Arc;

use orch_shared::Role;
use orch_worker::Handler;
use orch_worker::sim::SimHandler;

pub use config::{ProviderKind, WebArgs, WebConfig};
pub use handler::WebHandler;
pub use http::install_crypto_provider;

use browser::{BrowserError, BrowserPool};

/// Why the worker could not start (after its configuration was accepted).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The search client could not be built.
    #[error(transparent)]
    Search(#[from] search::BuildError),
    /// The page fetcher could not be built.
    #[error(transparent)]
    Fetch(#[from] fetch::BuildError),
    /// Chromium did not start (`--browser`).
    #[error(transparent)]
    Browser(#[from] BrowserError),
}

/// A built web worker: its handler, and the browser to shut down after serving.
pub struct WebWorker {
    handler: Arc<dyn Handler>,
    browser: Option<Arc<BrowserPool>>,
}

impl std::fmt::Debug for WebWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let info = self.handler.info();
        f.debug_struct("WebWorker")
            .field("provider", &info.provider)
            .field("browser", &self.browser)
            .finish()
    }
}

impl WebWorker {
    /// Builds the handler for `cfg`, starting Chromium for `--browser`.
    ///
    /// # Errors
    /// When a client cannot be built or Chromium does not start.
    pub async fn start(cfg: WebConfig) -> Result<WebWorker, StartError> {
        let real = match cfg {
            WebConfig::Sim(sim) => {
                return Ok(WebWorker {
                    handler: Arc::new(SimHandler::new(Role::Web, sim)),
                    browser: None,
                });
            }
            WebConfig::Real(real) => real,
        };
        let real = *real;
        let search = search::SearchClient::new(real.search)?;
        let fetcher = fetch::PageFetcher::new(real.fetch)?;
        let browser = match real.browser {
            Some(settings) => Some(Arc::new(BrowserPool::launch(settings).await?)),
            None => None,
        };
        let handler = WebHandler::new(search, fetcher, browser.clone(), real.pages);
        Ok(WebWorker {
            handler: Arc::new(handler),
            browser,
        })
    }

    /// The handler to serve.
    pub fn handler(&self) -> Arc<dyn Handler> {
        self.handler.clone()
    }

    /// The browser, in `--browser` mode.
    pub fn browser(&self) -> Option<&Arc<BrowserPool>> {
        self.browser.as_ref()
    }

    /// Releases what serving held: closes (or kills) the browser.
    pub async fn shutdown(&self) {
        if let Some(b) = &self.browser {
            b.shutdown().await;
        }
    }
}
