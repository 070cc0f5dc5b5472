//! Retries that respect the job's deadline.
//!
//! 429s, 5xx and connection failures are retried with exponential backoff, or
//! after exactly the wait the server asks for (`retry-after-ms`, then
//! `Retry-After` in seconds or as an HTTP date). A retry whose wait would not
//! leave time for another attempt before the deadline is not made: the call
//! fails at once, so the coordinator can fall back to the next slot while
//! there is still budget for it.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use rand::Rng as _;
use reqwest::header::HeaderMap;

use crate::http::Failure;

/// Retries after the first attempt. The OpenAI SDKs retry twice by default;
/// more rarely helps and costs the fallback chain its budget.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// First backoff step; doubled per retry.
pub const DEFAULT_BASE_BACKOFF: Duration = Duration::from_millis(500);
/// Longest backoff step we choose ourselves (a server's `Retry-After` may be longer).
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Time an attempt needs at the very least to be worth making after a wait.
pub const MIN_ATTEMPT_TIME: Duration = Duration::from_millis(50);
/// Longest server-requested wait we read; anything longer is "longer than any deadline".
const MAX_SERVER_WAIT: Duration = Duration::from_secs(24 * 3600);

/// How often and how long to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff step.
    pub base: Duration,
    /// Cap on a backoff step.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: DEFAULT_MAX_RETRIES,
            base: DEFAULT_BASE_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
        }
    }
}

impl RetryPolicy {
    /// The backoff before retry number `retry` (0-based): `base * 2^retry`,
    /// capped, with "equal jitter" (half fixed, half random) so a fleet of
    /// workers hit by the same 503 does not retry in lockstep.
    pub fn backoff(&self, retry: u32) -> Duration {
        let step = self
            .base
            .saturating_mul(1u32.checked_shl(retry.min(16)).unwrap_or(u32::MAX))
            .min(self.max_backoff);
        let half = step / 2;
        let jitter_ms = half.as_millis() as u64;
        let extra = if jitter_ms > 0 {
            rand::rng().random_range(0..=jitter_ms)
        } else {
            0
        };
        half + Duration::from_millis(extra)
    }

    /// The wait before the next attempt, or `None` to give up now: when
    /// retries are used up, or when waiting would leave less than
    /// [`MIN_ATTEMPT_TIME`] before `deadline`.
    pub fn next_wait(
        &self,
        retries_done: u32,
        server_wait: Option<Duration>,
        now: Instant,
        deadline: Instant,
    ) -> Option<Duration> {
        if retries_done >= self.max_retries {
            return None;
        }
        let wait = server_wait.unwrap_or_else(|| self.backoff(retries_done));
        let ready = now.checked_add(wait)?.checked_add(MIN_ATTEMPT_TIME)?;
        (ready < deadline).then_some(wait)
    }
}

/// The wait a server asks for: `retry-after-ms` (OpenAI, milliseconds, may be
/// fractional), else `Retry-After` as seconds or an HTTP date (relative to `now`).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(
            (ms / 1000.0).min(MAX_SERVER_WAIT.as_secs_f64()),
        ));
    }
    let v = get("retry-after")?;
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(MAX_SERVER_WAIT.as_secs_f64())));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_SERVER_WAIT),
    )
}

/// Runs `attempt` until it succeeds, fails for good, or no retry fits before
/// `deadline`. `attempt` receives the 0-based attempt number.
///
/// # Errors
/// The last failure. A rate-limit error keeps the server's requested wait.
pub async fn run<T, F, Fut>(
    policy: &RetryPolicy,
    deadline: Instant,
    what: &str,
    mut attempt: F,
) -> Result<T, Failure>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut n = 0;
    loop {
        let failure = match attempt(n).await {
            Ok(v) => return Ok(v),
            Err(f) => f,
        };
        if !failure.retryable {
            return Err(failure);
        }
        // tokio's clock (the same as std's unless a test paused it).
        let now = tokio::time::Instant::now().into_std();
        let Some(wait) = policy.next_wait(n, failure.retry_after, now, deadline) else {
            if n < policy.max_retries {
                tracing::info!(
                    what,
                    error = %failure.error,
                    "not retrying: the wait would overrun the job's deadline"
                );
            }
            return Err(failure);
        };
        tracing::info!(
            what,
            retry = n + 1,
            wait_ms = wait.as_millis() as u64,
            error = %failure.error,
            "retrying"
        );
        tokio::time::sleep(wait).await;
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::ProviderError;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::now();
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "250")]), now),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "12.5")]), now),
            Some(Duration::from_micros(12_500))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "3")]), now),
            Some(Duration::from_secs(3))
        );
        // retry-after-ms wins over Retry-After.
        assert_eq!(
            retry_after(
                &headers(&[("retry-after-ms", "10"), ("retry-after", "30")]),
                now
            ),
            Some(Duration::from_millis(10))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(120));
        let d = retry_after(&headers(&[("retry-after", &later)]), now).unwrap();
        assert!(
            d > Duration::from_secs(118) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(120));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &past)]), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "-5")]), now),
            None
        );
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        for retry in 0..40 {
            let d = p.backoff(retry);
            let step = (p.base * 2u32.pow(retry.min(10))).min(p.max_backoff);
            assert!(
                d >= step / 2 && d <= step,
                "retry {retry}: {d:?} vs step {step:?}"
            );
        }
    }

    #[test]
    fn waits_never_overrun_the_deadline() {
        let p = RetryPolicy::default();
        let now = Instant::now();
        let deadline = now + Duration::from_secs(2);
        assert_eq!(
            p.next_wait(0, Some(Duration::from_millis(100)), now, deadline),
            Some(Duration::from_millis(100))
        );
        // The server wants 30 s, the job has 2 s: give up now.
        assert_eq!(
            p.next_wait(0, Some(Duration::from_secs(30)), now, deadline),
            None
        );
        // A wait that ends right at the deadline leaves no time for the attempt.
        assert_eq!(
            p.next_wait(0, Some(Duration::from_millis(1990)), now, deadline),
            None
        );
        // Retries used up.
        assert_eq!(p.next_wait(2, Some(Duration::ZERO), now, deadline), None);
        // Backoff chosen by us also respects the deadline.
        assert_eq!(
            p.next_wait(0, None, now, now + Duration::from_millis(60)),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn run_retries_then_gives_up_within_the_deadline() {
        let p = RetryPolicy {
            max_retries: 5,
            ..RetryPolicy::default()
        };
        let start = tokio::time::Instant::now().into_std();
        let deadline = start + Duration::from_secs(10);
        let mut calls = Vec::new();
        let r: Result<(), Failure> = run(&p, deadline, "test", |n| {
            calls.push((n, tokio::time::Instant::now()));
            async move {
                Err(Failure::retry(
                    ProviderError::RateLimited {
                        message: "slow down".into(),
                        retry_after: Some(Duration::from_secs(4)),
                    },
                    Some(Duration::from_secs(4)),
                ))
            }
        })
        .await;
        // Attempts at 0 s, 4 s, 8 s; a third wait would end at 12 s > 10 s.
        assert_eq!(calls.len(), 3);
        let f = r.unwrap_err();
        assert_eq!(f.error.code(), orch_shared::ErrorCode::RateLimited);
        assert!(calls[1].1 - calls[0].1 >= Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn run_stops_at_a_fatal_failure() {
        let p = RetryPolicy::default();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut n_calls = 0;
        let r: Result<(), Failure> = run(&p, deadline, "test", |_| {
            n_calls += 1;
            async {
                Err(Failure::fatal(ProviderError::Unauthorized(
                    "bad key".into(),
                )))
            }
        })
        .await;
        assert_eq!(n_calls, 1);
        assert_eq!(
            r.unwrap_err().error,
            ProviderError::Unauthorized("bad key".into())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn run_succeeds_after_a_transient_failure() {
        let p = RetryPolicy::default();
        let deadline = Instant::now() + Duration::from_secs(60);
        let r = run(&p, deadline, "test", |n| async move {
            if n == 0 {
                Err(Failure::retry(
                    ProviderError::Upstream {
                        status: Some(502),
                        message: "bad gateway".into(),
                    },
                    None,
                ))
            } else {
                Ok(n)
            }
        })
        .await;
        assert_eq!(r.unwrap(), 1);
    }
}
