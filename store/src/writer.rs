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
//!
//! Three outcomes ([`Commit`]) and who drops what:
//!
//! - `Durable`: the tokens complete; intake acknowledges.
//! - `Retry` (transient): retried with [`backoff`] for as long as it takes;
//!   the tokens wait, `healthy` is false meanwhile. The writer drops nothing;
//!   the broker keeps the unacknowledged messages.
//! - `Rejected` (the data): the group is bisected down to the batches that
//!   fail alone, and each of those down to its elements (points, events, dead
//!   letters, crossings, moves, arrivals, alerts, notifications). The good
//!   ones commit — in several transactions instead of one, the price of
//!   keeping them — and each refused element becomes a dead letter carrying
//!   the database's message, after which the batch's token completes: its
//!   data is acknowledged because it is kept, stored or dead-lettered. A
//!   poison batch therefore costs some extra transactions, never a stall.
//!   Only an element whose dead letter is refused too (even without its text)
//!   is dropped, logged and counted.
//!
//! Derived-only batches (no points: the alert ticker's alerts, bookings) take
//! the same path; with a detached token there is simply nobody to tell.

use std::time::{Duration, Instant};

use model::{CommitOutcome, CommitToken, DeadLetter, IngestBatch, Reason};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use chrono::Utc;

use crate::{Commit, Store, StoreError, backoff};

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
    let d = &batch.derived;
    batch.positions.len()
        + batch.events.len()
        + batch.dead_letters.len()
        + batch.transitions.len()
        + d.moves.len()
        + d.arrivals.len()
        + d.alerts.len()
        + d.notifications.len()
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
            in_flight.spawn(async move { commit_group(&store, pending, &healthy).await });
        }
        while in_flight.join_next().await.is_some() {}
        tracing::info!("store writer: input closed, all batches committed");
    })
}

/// Commits a group and completes its batches' tokens. The whole group is
/// tried first (the usual case: one transaction); when the database rejects
/// it, it is bisected until the batches that fail alone are found, and each
/// of those is split into its elements (see [`commit_elements`]). Transient
/// failures are retried at every step, so this returns only once every batch
/// is durable or dead-lettered.
async fn commit_group(store: &Store, pending: Vec<IngestBatch>, healthy: &watch::Sender<bool>) {
    let mut outcomes: Vec<Option<CommitOutcome>> = vec![None; pending.len()];
    // Ranges of `pending` still to commit, the next one last.
    let mut todo = vec![(0, pending.len())];
    let mut whole = true;
    let mut rejected_points = 0;
    while let Some((lo, hi)) = todo.pop() {
        let rejected = match settle(store, &pending[lo..hi], None, healthy).await {
            Ok(done) => {
                for (slot, outcome) in outcomes[lo..hi].iter_mut().zip(done) {
                    *slot = Some(outcome);
                }
                continue;
            }
            Err(rejected) => rejected,
        };
        if whole {
            tracing::warn!(error = %rejected, batches = pending.len(), "store rejected a group; splitting it to find the bad elements");
            whole = false;
        }
        if hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            todo.push((mid, hi));
            todo.push((lo, mid));
        } else {
            let (outcome, refused) = commit_elements(store, &pending[lo], healthy).await;
            rejected_points += refused;
            outcomes[lo] = Some(outcome);
        }
    }
    let mut stored = 0;
    for (batch, outcome) in pending.into_iter().zip(outcomes) {
        let outcome = outcome.unwrap_or_default();
        stored += batch
            .positions
            .len()
            .saturating_sub(outcome.duplicates.len());
        if !outcome.duplicates.is_empty() {
            metrics::counter!("movewatch_ingest_rejected_total", "reason" => "duplicate")
                .increment(outcome.duplicates.len() as u64);
        }
        batch.commit.complete(outcome);
    }
    metrics::counter!("movewatch_store_points_total")
        .increment(stored.saturating_sub(rejected_points) as u64);
}

/// Commits `batches` in one transaction, retrying transient failures with
/// back-off for as long as they last: the result is durable or rejected.
async fn settle(
    store: &Store,
    batches: &[IngestBatch],
    origin: Option<&[Vec<usize>]>,
    healthy: &watch::Sender<bool>,
) -> Result<Vec<CommitOutcome>, StoreError> {
    let mut attempt = 0u32;
    loop {
        let started = Instant::now();
        match store.try_commit_mapped(batches, origin).await {
            Commit::Durable(outcomes) => {
                metrics::histogram!("movewatch_store_write_seconds")
                    .record(started.elapsed().as_secs_f64());
                healthy.send_if_modified(|h| !std::mem::replace(h, true));
                return Ok(outcomes);
            }
            // The database answered: it is healthy, the data is not.
            Commit::Rejected(e) => {
                healthy.send_if_modified(|h| !std::mem::replace(h, true));
                return Err(e);
            }
            Commit::Retry(e) => {
                healthy.send_if_modified(|h| std::mem::replace(h, false));
                let wait = backoff(attempt);
                tracing::warn!(error = %e, attempt, retry_in_ms = wait.as_millis() as u64, batches = batches.len(), "store write failed; acks withheld, retrying");
                attempt += 1;
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// One element of a batch, by kind and index.
#[derive(Debug, Clone, Copy)]
enum Element {
    Position(usize),
    Event(usize),
    DeadLetter(usize),
    Transition(usize),
    Move(usize),
    Arrival(usize),
    Alert(usize),
    Notification(usize),
}

fn elements(b: &IngestBatch) -> Vec<Element> {
    let d = &b.derived;
    let mut all = Vec::with_capacity(rows(b));
    all.extend((0..b.positions.len()).map(Element::Position));
    all.extend((0..b.events.len()).map(Element::Event));
    all.extend((0..b.dead_letters.len()).map(Element::DeadLetter));
    all.extend((0..b.transitions.len()).map(Element::Transition));
    all.extend((0..d.moves.len()).map(Element::Move));
    all.extend((0..d.arrivals.len()).map(Element::Arrival));
    all.extend((0..d.alerts.len()).map(Element::Alert));
    all.extend((0..d.notifications.len()).map(Element::Notification));
    all
}

/// A batch of some of `b`'s elements (with no token: `b`'s own is completed
/// by [`commit_group`]), and the original index of each of its positions.
fn part_of(b: &IngestBatch, part: &[Element]) -> (IngestBatch, Vec<usize>) {
    let mut out = IngestBatch {
        source: b.source.clone(),
        received: b.received,
        received_at: b.received_at,
        positions: Vec::new(),
        events: Vec::new(),
        dead_letters: Vec::new(),
        transitions: Vec::new(),
        derived: Default::default(),
        commit: CommitToken::detached(),
    };
    let mut origin = Vec::new();
    let d = &b.derived;
    for e in part {
        match *e {
            Element::Position(i) => {
                out.positions.push(b.positions[i].clone());
                origin.push(i);
            }
            Element::Event(i) => out.events.push(b.events[i].clone()),
            Element::DeadLetter(i) => out.dead_letters.push(b.dead_letters[i].clone()),
            Element::Transition(i) => out.transitions.push(b.transitions[i].clone()),
            Element::Move(i) => out.derived.moves.push(d.moves[i].clone()),
            Element::Arrival(i) => out.derived.arrivals.push(d.arrivals[i].clone()),
            Element::Alert(i) => out.derived.alerts.push(d.alerts[i].clone()),
            Element::Notification(i) => {
                out.derived.notifications.push(d.notifications[i].clone());
            }
        }
    }
    (out, origin)
}

/// Commits a batch the database rejected, element by element: its elements
/// are bisected until each rejected one stands alone; everything else is
/// committed, each rejected element is dead-lettered with the database's
/// message. Returns the batch's outcome (duplicates by original index) and
/// how many of its points were refused.
async fn commit_elements(
    store: &Store,
    batch: &IngestBatch,
    healthy: &watch::Sender<bool>,
) -> (CommitOutcome, usize) {
    let all = elements(batch);
    let mut outcome = CommitOutcome::default();
    let mut refused = 0;
    // The whole batch was just refused: start with its halves.
    let mut todo = match all.len() {
        0 | 1 => vec![(0, all.len())],
        n => vec![(n / 2, n), (0, n / 2)],
    };
    while let Some((lo, hi)) = todo.pop() {
        let (part, origin) = part_of(batch, &all[lo..hi]);
        let origins = [origin];
        match settle(store, std::slice::from_ref(&part), Some(&origins), healthy).await {
            Ok(done) => {
                for o in done {
                    outcome
                        .duplicates
                        .extend(o.duplicates.iter().map(|&i| origins[0][i]));
                }
            }
            Err(_) if hi - lo > 1 => {
                let mid = lo + (hi - lo) / 2;
                todo.push((mid, hi));
                todo.push((lo, mid));
            }
            Err(rejected) => {
                refused += usize::from(matches!(all[lo], Element::Position(_)));
                dead_letter(store, batch, all[lo], &rejected, healthy).await;
            }
        }
    }
    outcome.duplicates.sort_unstable();
    (outcome, refused)
}

/// Keeps a rejected element as a dead letter: `invalid_value`, the detail
/// starting [`REJECTED_PREFIX`] with the database's message, the element as
/// its raw text.
async fn dead_letter(
    store: &Store,
    batch: &IngestBatch,
    element: Element,
    error: &StoreError,
    healthy: &watch::Sender<bool>,
) {
    let d = &batch.derived;
    let (what, index, supplier, raw) = match element {
        Element::Position(i) => {
            let p = &batch.positions[i];
            let raw = serde_json::to_string(&p.to_wire()).unwrap_or_default();
            ("point", Some(i), Some(p.supplier.to_string()), raw)
        }
        Element::Event(i) => {
            let e = &batch.events[i];
            (
                "event",
                Some(i),
                Some(e.supplier.to_string()),
                format!("{e:?}"),
            )
        }
        Element::DeadLetter(i) => {
            let l = &batch.dead_letters[i];
            ("dead letter", l.index, l.supplier.clone(), format!("{l:?}"))
        }
        Element::Transition(i) => (
            "fence transition",
            None,
            None,
            format!("{:?}", batch.transitions[i]),
        ),
        Element::Move(i) => ("move", None, None, format!("{:?}", d.moves[i])),
        Element::Arrival(i) => ("arrival", None, None, format!("{:?}", d.arrivals[i])),
        Element::Alert(i) => ("alert", None, None, format!("{:?}", d.alerts[i])),
        Element::Notification(i) => (
            "notification",
            None,
            None,
            format!("{:?}", d.notifications[i]),
        ),
    };
    tracing::error!(error = %error, element = what, ?index, "store rejected an element; dead-lettered");
    metrics::counter!("movewatch_store_rejected_total").increment(1);
    let letter = DeadLetter {
        reason: Reason::InvalidValue,
        detail: crate::outbox::error_text(&format!(
            "{REJECTED_PREFIX}the database refused this {what}: {}",
            refusal(error)
        )),
        supplier,
        topic: match &batch.source {
            model::Source::Mqtt { topic } => Some(topic.clone()),
            _ => None,
        },
        received_at: batch.received_at,
        index,
        raw: raw
            .chars()
            .take(MAX_RAW_CHARS)
            .map(|c| if c == '\0' { '\u{FFFD}' } else { c })
            .collect(),
    };
    let mut letters = IngestBatch {
        dead_letters: vec![letter],
        ..part_of(batch, &[]).0
    };
    if settle(store, std::slice::from_ref(&letters), None, healthy)
        .await
        .is_ok()
    {
        return;
    }
    // The letter itself was refused (its text): keep the fact without it.
    letters.dead_letters[0].raw.clear();
    letters.dead_letters[0].supplier = None;
    letters.dead_letters[0].topic = None;
    if let Err(e) = settle(store, std::slice::from_ref(&letters), None, healthy).await {
        // The only thing the writer ever drops; logged and counted.
        tracing::error!(error = %e, element = what, "store refused the dead letter of a rejected element; dropped");
        metrics::counter!("movewatch_store_dropped_total").increment(1);
    }
}

/// The database's own words: its message and error code.
fn refusal(error: &StoreError) -> String {
    match error {
        StoreError::Database(sqlx::Error::Database(e)) => match e.code() {
            Some(code) => format!("{} (code {code})", e.message()),
            None => e.message().to_owned(),
        },
        other => other.to_string(),
    }
}

/// How much of a rejected element's text its dead letter keeps.
const MAX_RAW_CHARS: usize = 4096;

/// How a dead letter's detail starts when the store, not intake, rejected the element.
pub const REJECTED_PREFIX: &str = "store_rejected: ";

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
