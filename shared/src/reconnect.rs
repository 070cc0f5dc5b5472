//! Following a JetStream stream across a reconnect. An ordered consumer lives
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
    let mut delay = RETRY_FIRST;
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(e) => tracing::warn!(error = %e, retry_in = ?delay, "{what}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_MAX);
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
}
