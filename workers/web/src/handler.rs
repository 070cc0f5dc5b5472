//! The web role: search, then fetch and read the top pages, all within the
//! job's deadline.
//!
//! A search failure fails the job (the coordinator falls back or reports
//! it). A page failure only costs that page: pages that fail, or are not
//! done when the fetch budget ends, are skipped and logged. The fetch budget
//! ends a little before the job's deadline so the reply still makes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt as _;
use orch_shared::Role;
use orch_shared::wire::{PageText, SearchHit, WebFindings, WorkRequest};
use orch_worker::{Handler, JobContext, Output, ProviderInfo, WorkError};
use tokio::sync::Semaphore;

use crate::browser::BrowserPool;
use crate::extract::{self, Extracted};
use crate::fetch::{FetchedPage, PageFetcher, PageKind};
use crate::search::SearchClient;

/// Longest query accepted, in bytes (the coordinator's own limit for `web_search_query`).
pub const MAX_QUERY_BYTES: usize = 2048;
/// Most of the job's remaining time kept back from page fetching for
/// building and sending the reply.
const REPLY_RESERVE_MAX: Duration = Duration::from_millis(500);

/// What the handler does with the search results.
#[derive(Debug, Clone)]
pub struct PagePlan {
    /// How many of the top hits to fetch (0: none).
    pub top_k: usize,
    /// Pages fetched at once per job.
    pub concurrency: usize,
    /// Most bytes of text kept per page.
    pub max_text_bytes: usize,
}

/// The web worker's [`Handler`].
#[derive(Debug, Clone)]
pub struct WebHandler {
    search: SearchClient,
    fetcher: PageFetcher,
    browser: Option<Arc<BrowserPool>>,
    plan: PagePlan,
    /// Bounds CPU-heavy text extraction across all jobs to the number of cores.
    extract_permits: Arc<Semaphore>,
}

impl WebHandler {
    /// A handler over the given parts; `browser` switches on rendering.
    pub fn new(
        search: SearchClient,
        fetcher: PageFetcher,
        browser: Option<Arc<BrowserPool>>,
        plan: PagePlan,
    ) -> WebHandler {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        WebHandler {
            search,
            fetcher,
            browser,
            plan,
            extract_permits: Arc::new(Semaphore::new(cores)),
        }
    }

    /// Searches `query` and reads the top pages, stopping at `deadline`.
    ///
    /// # Errors
    /// An invalid query, or the search failing (page failures are skipped).
    pub async fn find(&self, query: &str, deadline: Instant) -> Result<WebFindings, WorkError> {
        let query = query.trim();
        if query.is_empty() {
            return Err(WorkError::invalid_input("the web query is empty"));
        }
        if query.len() > MAX_QUERY_BYTES {
            return Err(WorkError::invalid_input(format!(
                "the web query is {} bytes; the limit is {MAX_QUERY_BYTES}",
                query.len()
            )));
        }
        let results = self.search.search(query, deadline).await?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let reserve = (remaining / 10).min(REPLY_RESERVE_MAX);
        let fetch_deadline = deadline.checked_sub(reserve).unwrap_or(deadline);
        let pages = self.read_pages(&results, fetch_deadline).await;
        Ok(WebFindings {
            query: query.to_string(),
            results,
            pages,
        })
    }

    async fn read_pages(&self, hits: &[SearchHit], deadline: Instant) -> Vec<PageText> {
        let wanted: Vec<(usize, String)> = hits
            .iter()
            .take(self.plan.top_k)
            .map(|h| h.url.clone())
            .enumerate()
            .collect();
        if wanted.is_empty() {
            return Vec::new();
        }
        let total = wanted.len();
        let mut jobs = futures::stream::iter(wanted)
            .map(|(i, url)| async move {
                let page = self.read_page(&url, deadline).await;
                (i, url, page)
            })
            .buffer_unordered(self.plan.concurrency.max(1));
        let mut pages = Vec::with_capacity(total);
        loop {
            match tokio::time::timeout_at(deadline.into(), jobs.next()).await {
                Ok(Some((i, _, Ok(page)))) => pages.push((i, page)),
                Ok(Some((_, url, Err(reason)))) => {
                    tracing::info!(url = %url, reason = %reason, "page skipped");
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::info!(
                        fetched = pages.len(),
                        skipped = total - pages.len(),
                        "page budget used up; skipping pages still loading"
                    );
                    break;
                }
            }
        }
        pages.sort_by_key(|(i, _)| *i);
        pages.into_iter().map(|(_, p)| p).collect()
    }

    /// Fetches one page (rendering it when the browser is on) and extracts its text.
    async fn read_page(&self, url: &str, deadline: Instant) -> Result<PageText, String> {
        let fetched = self
            .fetcher
            .fetch(url, deadline)
            .await
            .map_err(|e| e.to_string())?;
        let FetchedPage {
            final_url,
            kind,
            body,
            ..
        } = fetched;
        let final_url = final_url.to_string();
        let body = match (&self.browser, kind) {
            (Some(browser), PageKind::Html) => {
                match browser.render(&final_url, deadline, false).await {
                    Ok(r) => r.html,
                    Err(e) => {
                        tracing::info!(url = %final_url, error = %e, "rendering failed; using the fetched HTML");
                        body
                    }
                }
            }
            _ => body,
        };
        let Extracted { title, text } = self.extract(kind, body, &final_url).await?;
        if text.is_empty() {
            return Err("no readable text".into());
        }
        Ok(PageText {
            url: final_url,
            title,
            text,
        })
    }

    async fn extract(&self, kind: PageKind, body: String, url: &str) -> Result<Extracted, String> {
        let permit = self
            .extract_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "extraction closed".to_string())?;
        let max = self.plan.max_text_bytes;
        let url = url.to_string();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            match kind {
                PageKind::Html => extract::html(&body, Some(&url), max),
                PageKind::Plain => extract::plain(&body, max),
            }
        })
        .await
        .map_err(|e| format!("text extraction failed: {e}"))
    }
}

#[async_trait]
impl Handler for WebHandler {
    fn role(&self) -> Role {
        Role::Web
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            provider: self.search.name().into(),
            model: self.search.name().into(),
        }
    }

    async fn handle(&self, request: WorkRequest, ctx: JobContext) -> Result<Output, WorkError> {
        let query = request
            .query
            .as_deref()
            .filter(|q| !q.trim().is_empty())
            .unwrap_or(&request.task);
        let findings = self.find(query, ctx.deadline).await.inspect_err(|e| {
            tracing::warn!(task_id = %request.task_id, backend = self.search.name(), error = %e, "web search failed");
        })?;
        tracing::info!(
            task_id = %request.task_id,
            backend = self.search.name(),
            results = findings.results.len(),
            pages = findings.pages.len(),
            "web findings ready"
        );
        let content = serde_json::to_value(&findings)
            .map_err(|e| WorkError::internal(format!("encoding web findings: {e}")))?;
        Ok(Output {
            provider: self.search.name().into(),
            model: self.search.name().into(),
            content,
            usage: None,
        })
    }
}
