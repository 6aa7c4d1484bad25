//! The batching write loop between the tracker and the database.
//!
//! Back-pressure: the loop reads its bounded input channel only while it has
//! room for another commit, so a slow database fills the channel, which
//! stalls the tracker, which stalls intake, which withholds MQTT acks; the
//! broker's in-flight window then stops delivery. Nothing is dropped on the way.
//!
//! On PostgreSQL two commits may be in flight, so one group is copied while
//! the previous one waits for its fsync (the second core does the work).
//! Each group's batches complete their commit tokens after their own commit,
//! whatever the order; intake acknowledges in arrival order regardless. A
//! point in both groups is kept once: the later transaction waits on the
//! earlier one's key and, if that commits, finds it a duplicate. SQLite has
//! one writer at a time, so it keeps one commit in flight.

use std::time::{Duration, Instant};

use model::IngestBatch;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use chrono::Utc;

use crate::{Store, backoff};

/// When the writer commits.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Commit once this many points (plus events and dead letters) are pending.
    pub max_rows: usize,
    /// How long to wait for more batches before committing. Zero (the
    /// default) commits what is already queued at once: the devices are
    /// waiting on these acks (the broker's window is closed until they
    /// come), so waiting for more would only slow everyone; under load the
    /// queue fills while the previous commit runs, so groups grow by themselves.
    pub max_delay: Duration,
    /// Commits in flight at once; `None`: 2 on PostgreSQL, 1 on SQLite.
    pub max_in_flight: Option<usize>,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_rows: 5_000,
            max_delay: Duration::ZERO,
            max_in_flight: None,
        }
    }
}

fn rows(batch: &IngestBatch) -> usize {
    batch.positions.len() + batch.events.len() + batch.dead_letters.len() + batch.transitions.len()
}

/// Runs the write loop until `input` closes and everything pending is
/// committed. `healthy` is set false while writes fail (for `/readyz`).
pub fn spawn_writer(
    store: Store,
    mut input: mpsc::Receiver<IngestBatch>,
    config: WriterConfig,
    healthy: watch::Sender<bool>,
) -> JoinHandle<()> {
    let max_in_flight = config
        .max_in_flight
        .unwrap_or(match store.kind() {
            crate::BackendKind::Sqlite => 1,
            crate::BackendKind::Postgres(_) => 2,
        })
        .max(1);
    let healthy = std::sync::Arc::new(healthy);
    tokio::spawn(async move {
        let mut in_flight = tokio::task::JoinSet::new();
        loop {
            // Room for another commit before reading more input.
            while in_flight.len() >= max_in_flight {
                in_flight.join_next().await;
            }
            let Some(first) = input.recv().await else {
                break;
            };
            let mut pending: Vec<IngestBatch> = Vec::new();
            let deadline = Instant::now() + config.max_delay;
            let mut pending_rows = rows(&first);
            pending.push(first);
            while pending_rows < config.max_rows {
                let next = if config.max_delay.is_zero() {
                    input.try_recv().ok()
                } else {
                    tokio::time::timeout_at(deadline.into(), input.recv())
                        .await
                        .ok()
                        .flatten()
                };
                let Some(batch) = next else { break };
                pending_rows += rows(&batch);
                pending.push(batch);
            }
            let (store, healthy) = (store.clone(), healthy.clone());
            in_flight.spawn(async move { commit_with_retry(&store, &mut pending, &healthy).await });
        }
        while in_flight.join_next().await.is_some() {}
        tracing::info!("store writer: input closed, all batches committed");
    })
}

async fn commit_with_retry(
    store: &Store,
    pending: &mut Vec<IngestBatch>,
    healthy: &watch::Sender<bool>,
) {
    let mut attempt = 0u32;
    loop {
        let started = Instant::now();
        match store.write(pending).await {
            Ok(outcomes) => {
                metrics::histogram!("movewatch_store_write_seconds")
                    .record(started.elapsed().as_secs_f64());
                healthy.send_if_modified(|h| !std::mem::replace(h, true));
                let mut stored = 0;
                for (batch, outcome) in pending.drain(..).zip(outcomes) {
                    stored += batch
                        .positions
                        .len()
                        .saturating_sub(outcome.duplicates.len());
                    if !outcome.duplicates.is_empty() {
                        metrics::counter!("movewatch_ingest_rejected_total", "reason" => "duplicate").increment(outcome.duplicates.len() as u64);
                    }
                    batch.commit.complete(outcome);
                }
                metrics::counter!("movewatch_store_points_total").increment(stored as u64);
                return;
            }
            Err(e) => {
                healthy.send_if_modified(|h| std::mem::replace(h, false));
                let wait = backoff(attempt);
                tracing::warn!(error = %e, attempt, retry_in_ms = wait.as_millis() as u64, batches = pending.len(), "store write failed; acks withheld, retrying");
                attempt += 1;
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// What the maintenance task does, and how often.
#[derive(Debug, Clone, Copy)]
pub struct MaintenanceConfig {
    /// Time between passes (the first runs at once).
    pub interval: Duration,
    /// `[store] retention_days`: positions older than this many days are
    /// removed; `None` keeps everything.
    pub retention_days: Option<u32>,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            interval: Duration::from_secs(3600),
            retention_days: None,
        }
    }
}

/// Runs [`Store::maintain`] (day partitions ahead of time) and
/// [`Store::apply_retention`] now and then every `config.interval`, until
/// the task is aborted. Failures are logged and retried at the next pass;
/// they never touch the write path.
pub fn spawn_maintenance(store: Store, config: MaintenanceConfig) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let now = Utc::now();
            if let Err(e) = store.maintain(now).await {
                tracing::warn!(error = %e, "store maintenance failed; retrying next pass");
            }
            if let Err(e) = store.apply_retention(now, config.retention_days).await {
                tracing::warn!(error = %e, "store retention failed; retrying next pass");
            }
        }
    })
}
