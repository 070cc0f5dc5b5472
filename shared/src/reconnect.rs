//! Retrying, and following a JetStream stream across a reconnect. An ordered consumer lives
//! in the server's memory: after a server restart, or when the node a client
//! was connected to is lost, it is gone, and async-nats only finds out after
//! six `info` requests and 15 s of backoff. A follower that does not wait for
//! that watches its connection ([`ReconnectWatch`]) and creates its consumer
//! again from the last sequence it handled ([`retry`], while the stream has no
//! leader yet).

use std::fmt::Display;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;

/// How often a [`ReconnectWatch`] looks at its connection.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);

/// The first pause of [`retry`]; it doubles up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_millis(500);

/// The longest pause of [`retry`].
pub const RETRY_MAX: Duration = Duration::from_secs(4);

/// Notices that a NATS connection was established again, from its connect
/// count (async-nats' statistics), so even a short blip between two checks
/// is seen.
pub struct ReconnectWatch {
    connection: Arc<async_nats::Statistics>,
    seen: u64,
    check: tokio::time::Interval,
}

impl ReconnectWatch {
    /// Watches `client`'s connection from now on.
    pub fn new(client: &async_nats::Client) -> ReconnectWatch {
        let connection = client.statistics();
        let seen = connection.connects.load(Ordering::Relaxed);
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ReconnectWatch {
            connection,
            seen,
            check,
        }
    }

    /// Resolves once the connection has been established again since the
    /// watch was created or last [marked](ReconnectWatch::mark). Cancel-safe:
    /// meant for a `select!` beside the consumer's messages.
    pub async fn reconnected(&mut self) {
        loop {
            self.check.tick().await;
            if self.connection.connects.load(Ordering::Relaxed) != self.seen {
                return;
            }
        }
    }

    /// Takes the connection as it is now as seen. Call it before creating
    /// again what a reconnect lost: a reconnect while that runs is noticed.
    pub fn mark(&mut self) {
        self.seen = self.connection.connects.load(Ordering::Relaxed);
    }
}

/// The deliver policy of a consumer that resumes after stream sequence `seq`
/// (from the start when nothing was handled yet, `seq` 0).
pub fn resume_after(seq: u64) -> DeliverPolicy {
    match seq {
        0 => DeliverPolicy::All,
        seq => DeliverPolicy::ByStartSequence {
            start_sequence: seq + 1,
        },
    }
}

/// The pauses between attempts of something worth retrying: `first`, twice
/// as long after each, up to `max`; optionally only while the next attempt
/// would start within a time limit ([`Backoff::for_at_most`]).
#[derive(Debug)]
pub struct Backoff {
    give_up: Option<tokio::time::Instant>,
    delay: Duration,
    max: Duration,
    retries: u32,
}

impl Backoff {
    /// Pauses from `first` doubling up to `max`, without a time limit.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            give_up: None,
            delay: first,
            max,
            retries: 0,
        }
    }

    /// Retries only while the next attempt starts within `retry_for` from now.
    pub fn for_at_most(mut self, retry_for: Duration) -> Backoff {
        self.give_up = Some(tokio::time::Instant::now() + retry_for);
        self
    }

    /// Whether there is time for another attempt after the next pause.
    pub fn may_retry(&self) -> bool {
        self.give_up
            .is_none_or(|g| tokio::time::Instant::now() + self.delay < g)
    }

    /// Pauses so far: a caller warns on the first failure, not on every one.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// The next pause.
    pub fn next_pause(&self) -> Duration {
        self.delay
    }

    /// Sleeps the next pause.
    pub async fn pause(&mut self) {
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(self.max);
        self.retries += 1;
    }
}

/// Runs `attempt` until it succeeds, pausing [`RETRY_FIRST`] after the first
/// failure and twice as long after each next one, up to [`RETRY_MAX`]; each
/// failure is logged as a warning about `what`. Stops only on success: drop
/// the future (a `select!` on a stop signal) to give up.
pub async fn retry<T, E, F, Fut>(what: &str, mut attempt: F) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(e) => tracing::warn!(error = %e, retry_in = ?backoff.next_pause(), "{what}"),
        }
        backoff.pause().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[tokio::test(start_paused = true)]
    async fn retry_pauses_half_a_second_then_doubles_up_to_four() {
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let mut at = Vec::new();
        let v = retry("test", || {
            at.push(start.elapsed());
            let n = calls.fetch_add(1, Ordering::Relaxed);
            async move { if n < 5 { Err("not yet") } else { Ok(n) } }
        })
        .await;
        assert_eq!(v, 5);
        let secs: Vec<f64> = at.iter().map(Duration::as_secs_f64).collect();
        // Pauses 0.5, 1, 2, 4, 4.
        assert_eq!(secs, vec![0.0, 0.5, 1.5, 3.5, 7.5, 11.5]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_limited_backoff_stops_when_the_next_attempt_would_be_too_late() {
        let start = tokio::time::Instant::now();
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
            .for_at_most(Duration::from_secs(1));
        while b.may_retry() {
            b.pause().await;
        }
        // Pauses 0.1, 0.2, 0.4: the next (0.8 s) would start after 1 s.
        assert_eq!(b.retries(), 3);
        assert_eq!(start.elapsed(), Duration::from_millis(700));
        assert_eq!(b.next_pause(), Duration::from_millis(800));
    }

    #[test]
    fn resuming_starts_after_the_last_sequence_handled() {
        assert_eq!(resume_after(0), DeliverPolicy::All);
        assert_eq!(
            resume_after(41),
            DeliverPolicy::ByStartSequence { start_sequence: 42 }
        );
    }
}
