//! The delivery task: due outbox rows → HTTP POST → the outcome back in the store.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use model::config::{WebhookConfig, WebhookDeliveryConfig};
use rand::Rng;
use store::{OutboxRow, Store};
use tokio::task::{JoinHandle, JoinSet};

use crate::{AttemptError, NotifyError, SIGNATURE_HEADER, signature};

/// How delivery runs.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// The webhooks (their urls name their rows; their secrets sign).
    pub hooks: Vec<WebhookConfig>,
    /// A request with no answer after this long failed.
    pub timeout: Duration,
    /// The wait before the first retry; doubled each time.
    pub first_retry: Duration,
    /// The longest wait between retries.
    pub max_retry: Duration,
    /// A row still undelivered this long after it was queued is given up
    /// (kept as failed, logged) at its next failure.
    pub give_up_after: Duration,
    /// Requests in flight at once, over all webhooks and moves.
    pub concurrency: usize,
    /// How often the store is read when nothing pokes the task.
    pub poll: Duration,
    /// How long delivered rows are kept (so a notification derived again
    /// from redelivered data is recognised and not sent twice).
    pub keep_delivered: Duration,
}

impl DeliveryConfig {
    /// From the config's `[[webhooks]]` and `[webhook_delivery]`.
    pub fn new(hooks: &[WebhookConfig], d: &WebhookDeliveryConfig) -> DeliveryConfig {
        DeliveryConfig {
            hooks: hooks.to_vec(),
            timeout: Duration::from_secs(d.timeout_secs),
            first_retry: Duration::from_millis(d.first_retry_ms),
            max_retry: Duration::from_secs(d.max_retry_secs),
            give_up_after: Duration::from_secs(d.give_up_hours.saturating_mul(3600)),
            concurrency: d.concurrency.max(1),
            poll: Duration::from_secs(1),
            keep_delivered: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The wait before the next attempt after `attempts` failed ones: `first`
/// doubled per failure up to `max`, then a random part of it taken off
/// (full jitter over the upper half), so receivers coming back are not hit
/// by every sender at once.
pub fn backoff(attempts: u32, first: Duration, max: Duration) -> Duration {
    let doubled = first.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    let base = doubled.min(max);
    let half = base / 2;
    half + base
        .saturating_sub(half)
        .mul_f64(rand::rng().random_range(0.0..=1.0))
}

/// Starts the delivery task; it runs until aborted. Undelivered rows stay in
/// the store, so an abort (or a crash) loses nothing: the next start goes on
/// from what is stored.
pub fn spawn_dispatcher(
    store: Store,
    config: DeliveryConfig,
) -> Result<JoinHandle<()>, NotifyError> {
    let client = reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("movewatch/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let dispatcher = Dispatcher {
        store,
        client,
        secrets: Arc::new(
            config
                .hooks
                .iter()
                .map(|h| (h.url.clone(), h.secret.clone()))
                .collect(),
        ),
        config: Arc::new(config),
    };
    Ok(tokio::spawn(dispatcher.run()))
}

struct Dispatcher {
    store: Store,
    client: reqwest::Client,
    /// Each configured webhook's url and secret.
    secrets: Arc<HashMap<String, Option<String>>>,
    config: Arc<DeliveryConfig>,
}

/// Rows of an unknown webhook (a url no longer configured) are looked at again after this.
const UNKNOWN_HOOK_RECHECK: chrono::Duration = chrono::Duration::hours(1);

impl Dispatcher {
    async fn run(self) {
        let signal = self.store.outbox_signal();
        let concurrency = self.config.concurrency;
        // (seq, (hook, order key)) of each request in flight.
        let mut in_flight: JoinSet<(i64, (String, String))> = JoinSet::new();
        let mut busy: HashSet<(String, String)> = HashSet::new();
        let mut busy_rows: HashSet<i64> = HashSet::new();
        let mut counted_at: Option<tokio::time::Instant> = None;
        let mut pruned_at: Option<tokio::time::Instant> = None;
        tracing::info!(
            webhooks = self.secrets.len(),
            concurrency,
            "webhook delivery started"
        );
        loop {
            let now = tokio::time::Instant::now();
            if counted_at.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
                counted_at = Some(now);
                match self.store.outbox_counts().await {
                    Ok(c) => metrics::gauge!("movewatch_webhook_pending")
                        .set((c.waiting + c.failed) as f64),
                    Err(e) => tracing::warn!(error = %e, "cannot count the webhook outbox"),
                }
            }
            if pruned_at.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(3600)) {
                pruned_at = Some(now);
                let before = Utc::now()
                    - chrono::Duration::from_std(self.config.keep_delivered)
                        .unwrap_or(chrono::Duration::days(7));
                match self.store.outbox_prune(before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(rows = n, "old delivered webhook rows pruned"),
                    Err(e) => tracing::warn!(error = %e, "cannot prune the webhook outbox"),
                }
            }
            if in_flight.len() < concurrency {
                // Enough to fill every free slot even past rows already in flight.
                let limit = (concurrency + in_flight.len()) as i64 * 2;
                match self.store.outbox_due(Utc::now(), limit).await {
                    Ok(rows) => {
                        for row in rows {
                            if in_flight.len() >= concurrency {
                                break;
                            }
                            let key = (row.hook.clone(), row.order_key.clone());
                            if busy_rows.contains(&row.seq) || busy.contains(&key) {
                                continue;
                            }
                            let Some(secret) = self.secrets.get(&row.hook).cloned() else {
                                self.park_unknown(&row).await;
                                continue;
                            };
                            busy.insert(key.clone());
                            busy_rows.insert(row.seq);
                            let (store, client, config) =
                                (self.store.clone(), self.client.clone(), self.config.clone());
                            in_flight.spawn(async move {
                                let seq = row.seq;
                                attempt(&store, &client, &config, row, secret.as_deref()).await;
                                (seq, key)
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read the webhook outbox"),
                }
            }
            tokio::select! {
                _ = signal.notified() => {}
                _ = tokio::time::sleep(self.config.poll) => {}
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    match done {
                        Ok((seq, key)) => {
                            busy_rows.remove(&seq);
                            busy.remove(&key);
                        }
                        // A panicked attempt: its row is still undelivered in
                        // the store; start over from the store's state.
                        Err(e) => {
                            tracing::error!(error = %e, "a webhook delivery task failed");
                            if in_flight.is_empty() {
                                busy.clear();
                                busy_rows.clear();
                            }
                        }
                    }
                }
            }
        }
    }

    /// A row for a webhook that is no longer configured: left in the store
    /// (nothing is dropped), looked at again later.
    async fn park_unknown(&self, row: &OutboxRow) {
        tracing::warn!(webhook = %row.hook, event = %row.event_id, "outbox row for a webhook that is not configured; kept");
        if let Err(e) = self
            .store
            .outbox_retry(
                row.seq,
                row.attempts,
                Utc::now() + UNKNOWN_HOOK_RECHECK,
                "webhook not configured",
            )
            .await
        {
            tracing::warn!(error = %e, "cannot update the webhook outbox");
        }
    }
}

/// One POST of one row, and its outcome written back.
async fn attempt(
    store: &Store,
    client: &reqwest::Client,
    config: &DeliveryConfig,
    row: OutboxRow,
    secret: Option<&str>,
) {
    let attempts = row.attempts.saturating_add(1);
    let outcome = post(client, &row, secret).await;
    let now = Utc::now();
    let written = match &outcome {
        Ok(()) => {
            tracing::debug!(webhook = %row.hook, event = %row.event_id, attempts, "webhook delivered");
            store.outbox_delivered(row.seq, now, attempts).await
        }
        Err(e) => {
            metrics::counter!("movewatch_webhook_failures_total").increment(1);
            let age = (now - row.created_at).to_std().unwrap_or_default();
            if age >= config.give_up_after {
                tracing::error!(webhook = %row.hook, event = %row.event_id, attempts, error = %e, "webhook delivery given up after the retry window; the row is kept as failed");
                store
                    .outbox_failed(row.seq, now, attempts, &e.to_string())
                    .await
            } else {
                let wait = backoff(attempts, config.first_retry, config.max_retry);
                tracing::warn!(webhook = %row.hook, event = %row.event_id, attempts, error = %e, retry_in_ms = wait.as_millis() as u64, "webhook delivery failed; will retry");
                let next = now + chrono::Duration::from_std(wait).unwrap_or_default();
                store
                    .outbox_retry(row.seq, attempts, next, &e.to_string())
                    .await
            }
        }
    };
    if let Err(e) = written {
        // Delivered but not recorded: sent again later (at least once).
        tracing::warn!(error = %e, event = %row.event_id, "cannot record a webhook attempt");
    }
}

async fn post(
    client: &reqwest::Client,
    row: &OutboxRow,
    secret: Option<&str>,
) -> Result<(), AttemptError> {
    let mut request = client
        .post(&row.hook)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(row.body.clone());
    if let Some(secret) = secret {
        request = request.header(SIGNATURE_HEADER, signature(secret, row.body.as_bytes()));
    }
    let response = request.send().await.map_err(|e| AttemptError::of(&e))?;
    let status = response.status();
    // Read (and drop) what the receiver sent, so the connection can be reused;
    // the request timeout covers this too.
    let _ = response.bytes().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(AttemptError::Status(status.as_u16()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let (first, max) = (Duration::from_secs(1), Duration::from_secs(600));
        for _ in 0..100 {
            let w = backoff(1, first, max);
            assert!(w >= Duration::from_millis(500) && w <= first, "{w:?}");
            let w = backoff(4, first, max);
            assert!(
                w >= Duration::from_secs(4) && w <= Duration::from_secs(8),
                "{w:?}"
            );
            let w = backoff(40, first, max);
            assert!(w >= Duration::from_secs(300) && w <= max, "{w:?}");
        }
        // 24 hours of retries at the cap is about 150-290 attempts: never an overflow.
        assert!(backoff(u32::MAX, first, max) <= max);
    }
}
