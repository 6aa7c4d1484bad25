//! Time-series persistence for movewatch: the system of record.
//!
//! [`Store`] opens a backend by URL — `sqlite://path` (the embedded default)
//! or `postgres://user@host/db` (production) — migrates it, and writes
//! [`IngestBatch`]es in transactions (points, events, dead letters and the
//! fence crossings the pipeline derived from the points, together). Both
//! backends keep the same behaviour, checked by one conformance suite
//! (`tests/conformance.rs`): de-duplication by `(supplier, tracking_id)`
//! across restarts, duplicates dead-lettered in the same transaction, the
//! same queries. The SQL they share is written once (`sql.rs`, generic over a
//! small dialect); each backend keeps only what really differs: how it opens,
//! how it writes positions (SQLite multi-row INSERT, PostgreSQL binary COPY),
//! day partitions and retention.
//!
//! [`spawn_writer`] runs the batching write loop: it groups batches by size or
//! age and commits each group in one transaction. Every attempt ends in one of
//! three states ([`Commit`]):
//!
//! - **Durable**: committed; each batch's commit token is completed, which is
//!   what lets intake acknowledge the MQTT message.
//! - **Retry**: the database could not be reached or gave up for its own
//!   reasons (connection lost, down, timeout, lock conflict): the same group
//!   is retried with back-off, for ever, while the tokens wait, so the broker
//!   keeps the unacknowledged messages. Nothing is dropped.
//! - **Rejected**: the database refused the data ([`StoreError::is_rejection`]).
//!   The writer bisects the group, then the elements of a batch that fails on
//!   its own, commits every good element and keeps each refused one as a dead
//!   letter (`invalid_value`, its detail starting [`REJECTED_PREFIX`] and
//!   giving the database's message); the batch's token is then completed: its
//!   data is kept or dead-lettered, not lost, and later batches never wait on
//!   it. The only thing ever dropped is a refused element whose dead letter the
//!   database refuses too, even stripped of its text (logged, and counted in
//!   `movewatch_store_dropped_total`).
//!
//! [`spawn_maintenance`] keeps PostgreSQL's day partitions ahead of time and
//! applies retention.

mod alert_acks;
mod outbox;
mod pg_layout;
mod postgres;
mod records;
mod sql;
mod sqlite;
mod writer;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use model::{
    CommitOutcome, DeadLetter, IngestBatch, MoveId, Position, Reason, SiteId, SupplierId, VehicleId,
};

pub use alert_acks::{AlertAck, AlertKey};
pub use outbox::{OutboxCounts, OutboxRow};
pub use pg_layout::{
    Layout, PARTITIONS_AHEAD, PARTITIONS_BEHIND, choose_layout, native_partition_ddl,
    native_positions_ddl, partition_day, partition_name, partitions_to_create, partitions_to_drop,
    timescale_positions_ddl,
};
pub use records::{
    AlertRecord, Arrival, Derived, FenceTransition, JourneyRecord, MoveRecord, SiteFenceRecord,
    TransitionKind, VehicleRecord,
};
pub use writer::{
    MaintenanceConfig, REJECTED_PREFIX, WriterConfig, spawn_maintenance, spawn_writer,
};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is not one the store understands.
    #[error("unsupported store url {0:?}: use sqlite://path or postgres://user@host/db")]
    UnsupportedUrl(String),
    /// The database said no or went away.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The store directory could not be made.
    #[error("store directory {path}: {source}")]
    Io {
        /// The directory.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A stored row could not be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether the database refused the data itself, so the same write would
    /// fail again however often it is retried: a value it cannot hold (NaN in
    /// a `NOT NULL` column, a time out of range, an index row too large), a
    /// constraint, an encoding error. Everything else — the connection or the
    /// pool, a timeout, the server shutting down, a lock or serialization
    /// conflict, a missing table or privilege (42xxx: the schema or the grants
    /// are wrong, not the row) — is transient: retrying is right, and
    /// dead-lettering would throw good data away.
    pub fn is_rejection(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Encode(_)) => true,
            StoreError::Database(sqlx::Error::Database(e)) => {
                if let Some(pg) = e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                    // 22 data exception, 23 integrity constraint, 54 program
                    // limit (e.g. an index row over the B-tree maximum).
                    matches!(pg.code().get(..2), Some("22" | "23" | "54"))
                } else if e.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                    // Primary result codes (the low byte of the extended one):
                    // 18 TOOBIG, 19 CONSTRAINT, 20 MISMATCH.
                    let code = e.code().and_then(|c| c.parse::<i32>().ok());
                    matches!(code.map(|c| c & 0xff), Some(18..=20))
                } else {
                    false
                }
            }
            _ => false,
        }
    }
}

/// What became of one attempt to commit a group of batches in one transaction.
#[derive(Debug)]
pub enum Commit {
    /// Committed: one outcome per batch, in order; their tokens may complete.
    Durable(Vec<CommitOutcome>),
    /// Not committed, and never will be as it is: the database refused
    /// something in it for its data ([`StoreError::is_rejection`]). The
    /// writer splits the group to find the bad elements, commits the rest and
    /// dead-letters those.
    Rejected(StoreError),
    /// Not committed because of the database's state (connection lost, down,
    /// timeout): the same group is retried with back-off, never given up.
    Retry(StoreError),
}

impl Commit {
    fn of(result: Result<Vec<CommitOutcome>, StoreError>) -> Commit {
        match result {
            Ok(outcomes) => Commit::Durable(outcomes),
            Err(e) if e.is_rejection() => Commit::Rejected(e),
            Err(e) => Commit::Retry(e),
        }
    }
}

/// The store, over one of its backends.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    /// The webhooks' filters and the signal poked when rows are queued.
    outbox: Arc<outbox::Outbox>,
}

#[derive(Clone, Debug)]
enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// Where a page of [`Store::positions_between`] ended: the sort key of its
/// last point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionCursor {
    /// The fix time of the last point.
    pub ts: DateTime<Utc>,
    /// Its supplier.
    pub supplier: SupplierId,
    /// Its tracking id.
    pub tracking_id: String,
}

impl PositionCursor {
    /// The cursor just after `p`.
    pub fn after(p: &Position) -> PositionCursor {
        PositionCursor {
            ts: p.ts,
            supplier: p.supplier,
            tracking_id: p.tracking_id.clone(),
        }
    }
}

/// Counts of what the store holds, for tests, the simulator's loss check and `/readyz`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Stored position points.
    pub positions: i64,
    /// Stored events.
    pub events: i64,
    /// Dead letters.
    pub dead_letters: i64,
}

/// What one retention pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Day partitions (or TimescaleDB chunks) dropped whole.
    pub partitions_dropped: Vec<String>,
    /// Rows deleted one by one (SQLite positions; on PostgreSQL the default
    /// partition's stragglers and the de-duplication keys).
    pub rows_deleted: u64,
}

/// Which backend and, on PostgreSQL, which positions layout a store uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// The embedded SQLite file.
    Sqlite,
    /// PostgreSQL with the given positions layout.
    Postgres(Layout),
}

/// Runs `$body` with `$pool` bound to whichever backend's pool the store has
/// (SQL that is the same on both backends, written once).
macro_rules! with_pool {
    ($self:ident, $pool:ident => $body:expr) => {
        match &$self.backend {
            Backend::Sqlite(s) => {
                let $pool = &s.sql.pool;
                $body
            }
            Backend::Postgres(s) => {
                let $pool = &s.sql.pool;
                $body
            }
        }
    };
}

/// Reads an [`OutboxRow`] selected as `seq, hook, event_id, order_key,
/// occurred_at, body, created_at, attempts, last_error[, delivered_at, failed_at]`.
macro_rules! outbox_row {
    ($r:expr, $full:expr) => {{
        let r = $r;
        let opt_time = |i: usize| -> Result<Option<DateTime<Utc>>, StoreError> {
            if !$full {
                return Ok(None);
            }
            r.try_get::<Option<i64>, _>(i)?.map(from_micros).transpose()
        };
        Ok::<_, StoreError>(OutboxRow {
            seq: r.try_get(0)?,
            hook: r.try_get(1)?,
            event_id: r.try_get(2)?,
            order_key: r.try_get(3)?,
            occurred_at: from_micros(r.try_get(4)?)?,
            body: r.try_get(5)?,
            created_at: from_micros(r.try_get(6)?)?,
            attempts: u32::try_from(r.try_get::<i64, _>(7)?).unwrap_or(u32::MAX),
            last_error: r.try_get(8)?,
            delivered_at: opt_time(9)?,
            failed_at: opt_time(10)?,
        })
    }};
}

/// Runs `$call` on whichever backend the store has.
macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match &$self.backend {
            Backend::Sqlite($s) => $call,
            Backend::Postgres($s) => $call,
        }
    };
}

impl Store {
    /// Opens (creating if needed) and migrates the store at `url`
    /// (`sqlite://path` or `postgres://…` / `postgresql://…`). On PostgreSQL
    /// it also makes sure the day partitions around today exist.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            return Ok(Store {
                backend: Backend::Sqlite(sqlite::SqliteStore::open(url).await?),
                outbox: Arc::default(),
            });
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pg = postgres::PgStore::open(url).await?;
            pg.maintain(Utc::now()).await?;
            return Ok(Store {
                backend: Backend::Postgres(pg),
                outbox: Arc::default(),
            });
        }
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }

    /// Which backend (and positions layout) this store uses.
    pub fn kind(&self) -> BackendKind {
        match &self.backend {
            Backend::Sqlite(_) => BackendKind::Sqlite,
            Backend::Postgres(p) => BackendKind::Postgres(p.layout()),
        }
    }

    /// Writes batches in one transaction. Returns, per batch, which of its
    /// positions were duplicates (and were dead-lettered as such).
    pub async fn write(&self, batches: &[IngestBatch]) -> Result<Vec<CommitOutcome>, StoreError> {
        self.write_mapped(batches, None).await
    }

    /// One attempt to commit `batches` in one transaction, with its outcome
    /// classified: [`Commit::Durable`], [`Commit::Rejected`] (the data) or
    /// [`Commit::Retry`] (the database's state). [`spawn_writer`] acts on it.
    pub async fn try_commit(&self, batches: &[IngestBatch]) -> Commit {
        Commit::of(self.write(batches).await)
    }

    /// [`Store::try_commit`] of batches cut out of others: `origin[b][i]` is
    /// the index in its original batch of position `i` of `batches[b]`, which
    /// the duplicates' dead letters name.
    pub(crate) async fn try_commit_mapped(
        &self,
        batches: &[IngestBatch],
        origin: Option<&[Vec<usize>]>,
    ) -> Commit {
        Commit::of(self.write_mapped(batches, origin).await)
    }

    async fn write_mapped(
        &self,
        batches: &[IngestBatch],
        origin: Option<&[Vec<usize>]>,
    ) -> Result<Vec<CommitOutcome>, StoreError> {
        let hooks = &self.outbox.hooks;
        let outcomes = dispatch!(self, s => s.write(batches, hooks, origin).await)?;
        if self
            .outbox
            .queues_any(batches.iter().flat_map(|b| b.derived.notifications.iter()))
        {
            self.outbox.signal.notify_one();
        }
        Ok(outcomes)
    }

    /// This store, queueing each committed notification for every webhook of
    /// `hooks` whose `events` and `sites` filters take it (in the same
    /// transaction). With none, notifications are not queued.
    pub fn with_webhooks(self, hooks: &[model::config::WebhookConfig]) -> Store {
        Store {
            backend: self.backend,
            outbox: Arc::new(outbox::Outbox {
                hooks: hooks.to_vec(),
                signal: self.outbox.signal.clone(),
            }),
        }
    }

    /// Poked after every commit that queued webhook rows (delivery waits on it).
    pub fn outbox_signal(&self) -> Arc<tokio::sync::Notify> {
        self.outbox.signal.clone()
    }

    /// The outbox rows to send now (at most `limit`, longest due first): each
    /// is the oldest undelivered, not given up row of its (webhook, order key)
    /// and due by `now`. A row behind an undelivered one of its move is not
    /// listed until that one is delivered (or given up).
    pub async fn outbox_due(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        use sqlx::Row;
        with_pool!(self, pool => {
            let rows = sqlx::query(outbox::DUE)
                .bind(to_micros(&now))
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows.iter().map(|r| outbox_row!(r, false)).collect()
        })
    }

    /// Every outbox row of the webhook `hook` (its url), delivered or not, by
    /// order key then queue order.
    pub async fn outbox_rows(&self, hook: &str) -> Result<Vec<OutboxRow>, StoreError> {
        use sqlx::Row;
        with_pool!(self, pool => {
            let rows = sqlx::query(outbox::ROWS_OF)
                .bind(hook)
                .fetch_all(pool)
                .await?;
            rows.iter().map(|r| outbox_row!(r, true)).collect()
        })
    }

    /// Marks a row delivered (a 2xx came) after `attempts` attempts.
    pub async fn outbox_delivered(
        &self,
        seq: i64,
        at: DateTime<Utc>,
        attempts: u32,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(outbox::DELIVERED)
                .bind(seq)
                .bind(to_micros(&at))
                .bind(i64::from(attempts))
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Records a failed attempt: `attempts` so far, the next one not before `next_at`.
    pub async fn outbox_retry(
        &self,
        seq: i64,
        attempts: u32,
        next_at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(outbox::RETRY)
                .bind(seq)
                .bind(i64::from(attempts))
                .bind(to_micros(&next_at))
                .bind(outbox::error_text(error))
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Gives a row up (its retry window is over): it is kept, with its last
    /// error, and no longer holds back the rows behind it.
    pub async fn outbox_failed(
        &self,
        seq: i64,
        at: DateTime<Utc>,
        attempts: u32,
        error: &str,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(outbox::FAILED)
                .bind(seq)
                .bind(to_micros(&at))
                .bind(i64::from(attempts))
                .bind(outbox::error_text(error))
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Removes rows delivered before `before`; returns how many.
    pub async fn outbox_prune(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query(outbox::PRUNE)
                .bind(to_micros(&before))
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }

    /// How many outbox rows wait, failed, and were delivered.
    pub async fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        use sqlx::Row;
        with_pool!(self, pool => {
            let r = sqlx::query(outbox::COUNTS).fetch_one(pool).await?;
            Ok(OutboxCounts {
                waiting: r.try_get(0)?,
                failed: r.try_get(1)?,
                delivered: r.try_get(2)?,
            })
        })
    }

    /// Keeps `by`'s acknowledgement of the alert `key` at `at`, unless the
    /// alert has one already; returns the acknowledgement that stands (the
    /// first one).
    pub async fn acknowledge_alert(
        &self,
        key: &AlertKey,
        by: &str,
        at: DateTime<Utc>,
    ) -> Result<AlertAck, StoreError> {
        let move_id = key.move_id.as_ref().map(|m| m.as_str()).unwrap_or("");
        with_pool!(self, pool => {
            sqlx::query(alert_acks::INSERT)
                .bind(key.kind.as_str())
                .bind(key.vehicle.as_str())
                .bind(move_id)
                .bind(to_micros(&key.ts))
                .bind(by)
                .bind(to_micros(&at))
                .execute(pool)
                .await?;
            let row = sqlx::query(alert_acks::ONE)
                .bind(key.kind.as_str())
                .bind(key.vehicle.as_str())
                .bind(move_id)
                .bind(to_micros(&key.ts))
                .fetch_one(pool)
                .await?;
            alert_acks::ack_of(&row)
        })
    }

    /// Acknowledgements of alerts raised at or after `since`, oldest alert
    /// first, at most `limit`.
    pub async fn alert_acks_since(
        &self,
        since: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<AlertAck>, StoreError> {
        with_pool!(self, pool => {
            let rows = sqlx::query(alert_acks::SINCE)
                .bind(to_micros(&since))
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows.iter().map(alert_acks::ack_of).collect()
        })
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.sql.ping().await)
    }

    /// How many rows of each kind are stored.
    pub async fn counts(&self) -> Result<Counts, StoreError> {
        dispatch!(self, s => s.sql.counts().await)
    }

    /// Dead letters grouped by reason.
    pub async fn dead_letter_counts(&self) -> Result<Vec<(Reason, i64)>, StoreError> {
        dispatch!(self, s => s.sql.dead_letter_counts().await)
    }

    /// The most recent dead letters, newest first.
    pub async fn recent_dead_letters(&self, limit: i64) -> Result<Vec<DeadLetter>, StoreError> {
        dispatch!(self, s => s.sql.recent_dead_letters(limit).await)
    }

    /// The newest usable (not late, not bad) fix of every vehicle, to rebuild live state on start.
    pub async fn latest_positions(&self) -> Result<Vec<Position>, StoreError> {
        dispatch!(self, s => s.sql.latest_positions().await)
    }

    /// A vehicle's stored points between two times (both inclusive), oldest
    /// first, at most `limit`. Served by the `(vehicle, ts)` index (and, on
    /// PostgreSQL, partition pruning on `ts`).
    pub async fn track(
        &self,
        vehicle: &VehicleId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Position>, StoreError> {
        dispatch!(self, s => s.sql.track(vehicle, from, to, limit).await)
    }

    /// Every stored point (all vehicles) with a fix time between `from` and
    /// `to` (both inclusive), in `(ts, supplier, tracking_id)` order, at most
    /// `limit`, starting after `after` (the [`PositionCursor`] of the last
    /// point of the previous page; `None` for the first page). The order is
    /// total and the same on both backends: `(supplier, tracking_id)` is the
    /// point's identity, so it breaks ties between equal times (PostgreSQL's
    /// `positions` has no row id). For replay and exports; a page costs a
    /// scan of `[max(from, after.ts), to]` on the `ts` index (BRIN on
    /// PostgreSQL), so callers walking a long span should walk it in windows.
    pub async fn positions_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<&PositionCursor>,
        limit: i64,
    ) -> Result<Vec<Position>, StoreError> {
        dispatch!(self, s => s.sql.positions_between(from, to, after, limit).await)
    }

    /// Housekeeping that keeps writes cheap: on PostgreSQL with native
    /// partitioning, makes sure the day partitions from
    /// [`PARTITIONS_BEHIND`] days before `now` to [`PARTITIONS_AHEAD`] days
    /// after exist (moving any rows of those days out of the default
    /// partition). Nothing to do on SQLite or TimescaleDB.
    pub async fn maintain(&self, now: DateTime<Utc>) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(p) => p.maintain(now).await,
        }
    }

    /// Removes positions whose fix time is more than `retention_days` before
    /// `now` (`None` keeps everything). PostgreSQL drops whole day partitions
    /// (TimescaleDB: chunks); SQLite deletes by time in batches.
    pub async fn apply_retention(
        &self,
        now: DateTime<Utc>,
        retention_days: Option<u32>,
    ) -> Result<RetentionReport, StoreError> {
        let Some(days) = retention_days else {
            return Ok(RetentionReport::default());
        };
        let cutoff = now - chrono::Duration::days(i64::from(days));
        dispatch!(self, s => s.apply_retention(cutoff, days).await)
    }

    /// Stores a move and replaces its journeys.
    pub async fn upsert_move(&self, m: &MoveRecord) -> Result<(), StoreError> {
        dispatch!(self, s => s.sql.upsert_move(m).await)
    }

    /// A stored move with its journeys.
    pub async fn get_move(&self, id: &MoveId) -> Result<Option<MoveRecord>, StoreError> {
        dispatch!(self, s => s.sql.get_move(id).await)
    }

    /// Sets a move's status; false if there is no such move.
    pub async fn set_move_status(&self, id: &MoveId, status: &str) -> Result<bool, StoreError> {
        dispatch!(self, s => s.sql.set_move_status(id, status).await)
    }

    /// The moves booked for a day, by id.
    pub async fn moves_on(&self, date: NaiveDate) -> Result<Vec<MoveRecord>, StoreError> {
        dispatch!(self, s => s.sql.moves_on(date).await)
    }

    /// Every move that is not finished (`booked`, `in_transit`, `arrived`),
    /// by id, with its journeys: the live registry is rebuilt from these on start.
    pub async fn open_moves(&self) -> Result<Vec<MoveRecord>, StoreError> {
        dispatch!(self, s => s.sql.open_moves().await)
    }

    /// Records fence crossings, in one transaction.
    pub async fn insert_fence_transitions(
        &self,
        transitions: &[FenceTransition],
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.sql.insert_fence_transitions(transitions).await)
    }

    /// A vehicle's fence crossings between two times (inclusive), oldest first.
    pub async fn fence_transitions(
        &self,
        vehicle: &VehicleId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<FenceTransition>, StoreError> {
        dispatch!(self, s => s.sql.fence_transitions(vehicle, from, to).await)
    }

    /// The latest fence crossing of every (vehicle, site) pair, by vehicle
    /// then site: a vehicle whose latest crossing at a site is an `Enter` is
    /// inside it (used to restore the geofence state on start).
    pub async fn latest_fence_transitions(&self) -> Result<Vec<FenceTransition>, StoreError> {
        dispatch!(self, s => s.sql.latest_fence_transitions().await)
    }

    /// Writes move changes, completed legs and alerts that did not come with
    /// a points' batch (the alert ticker, `PUT /api/moves`) in one
    /// transaction. A repeated arrival or alert is ignored; a batch's own
    /// [`IngestBatch::derived`] is written by [`Store::write`] with its points.
    pub async fn write_derived(&self, derived: &Derived) -> Result<(), StoreError> {
        let hooks = &self.outbox.hooks;
        dispatch!(self, s => s.sql.write_derived(derived, hooks).await)?;
        if self.outbox.queues_any(derived.notifications.iter()) {
            self.outbox.signal.notify_one();
        }
        Ok(())
    }

    /// Alerts raised at or after `since`, oldest first, at most `limit`.
    pub async fn alerts_since(
        &self,
        since: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<AlertRecord>, StoreError> {
        dispatch!(self, s => s.sql.alerts_since(since, limit).await)
    }

    /// Stores a site's replaced fence, over any stored before for that site
    /// (`PUT /api/sites/{id}/fence`).
    pub async fn put_site_fence(&self, fence: &SiteFenceRecord) -> Result<(), StoreError> {
        dispatch!(self, s => s.sql.put_site_fence(fence).await)
    }

    /// Every stored replaced fence, by site: applied over the sites files' fences on start.
    pub async fn site_fences(&self) -> Result<Vec<SiteFenceRecord>, StoreError> {
        dispatch!(self, s => s.sql.site_fences().await)
    }

    /// Sets a vehicle register entry, replacing any earlier one (config,
    /// fleet files, `PUT /api/vehicles/{vehicle}`).
    pub async fn put_vehicle(&self, v: &VehicleRecord) -> Result<(), StoreError> {
        dispatch!(self, s => s.sql.put_vehicle(v, true).await).map(drop)
    }

    /// Stores a first-report claim unless the vehicle already has an entry;
    /// true if it was stored.
    pub async fn claim_vehicle(&self, v: &VehicleRecord) -> Result<bool, StoreError> {
        dispatch!(self, s => s.sql.put_vehicle(v, false).await)
    }

    /// The whole vehicle register, by vehicle.
    pub async fn vehicle_register(&self) -> Result<Vec<VehicleRecord>, StoreError> {
        dispatch!(self, s => s.sql.vehicle_register(None).await)
    }

    /// One vehicle's register entry.
    pub async fn vehicle(&self, vehicle: &VehicleId) -> Result<Option<VehicleRecord>, StoreError> {
        Ok(dispatch!(self, s => s.sql.vehicle_register(Some(vehicle)).await)?.pop())
    }

    /// Records a completed leg for ETA learning (a repeat is ignored).
    pub async fn insert_arrival(&self, arrival: &Arrival) -> Result<(), StoreError> {
        dispatch!(self, s => s.sql.insert_arrival(arrival).await)
    }

    /// The most recent arrivals on every route, newest first (ETA learning on start).
    pub async fn recent_arrivals(&self, limit: i64) -> Result<Vec<Arrival>, StoreError> {
        dispatch!(self, s => s.sql.recent_arrivals(limit).await)
    }

    /// The most recent arrivals at `site` from `from_location`, newest first.
    pub async fn arrivals(
        &self,
        from_location: &SiteId,
        site: &SiteId,
        limit: i64,
    ) -> Result<Vec<Arrival>, StoreError> {
        dispatch!(self, s => s.sql.arrivals(from_location, site, limit).await)
    }
}

/// Microseconds since the epoch, the stored time unit.
pub(crate) fn to_micros(ts: &DateTime<Utc>) -> i64 {
    ts.timestamp_micros()
}

pub(crate) fn from_micros(us: i64) -> Result<DateTime<Utc>, StoreError> {
    Utc.timestamp_micros(us)
        .single()
        .ok_or_else(|| StoreError::Corrupt(format!("time {us}")))
}

/// The wait between retries of a failed write: doubles up to 5 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(6)).min(5_000))
}

/// A position to insert: (batch index, index in the batch, the point).
pub(crate) type Candidate<'a> = (usize, usize, &'a Position);

/// Splits the points of a transaction into first occurrences of their
/// `(supplier, tracking_id)` (to insert) and repeats within the transaction
/// (duplicates outright, recorded in the returned outcomes).
pub(crate) fn first_occurrences(
    batches: &[IngestBatch],
) -> (Vec<CommitOutcome>, Vec<Candidate<'_>>) {
    let mut outcomes = vec![CommitOutcome::default(); batches.len()];
    let mut first = Vec::with_capacity(batches.iter().map(|b| b.positions.len()).sum());
    let mut seen: HashSet<(SupplierId, &str)> = HashSet::with_capacity(first.capacity());
    for (b, batch) in batches.iter().enumerate() {
        for (i, p) in batch.positions.iter().enumerate() {
            if seen.insert((p.supplier, p.tracking_id.as_str())) {
                first.push((b, i, p));
            } else {
                outcomes[b].duplicates.push(i);
            }
        }
    }
    (outcomes, first)
}

/// Sorts each outcome's duplicates and returns every dead letter the
/// transaction writes: the batches' own, then one `duplicate` per repeat.
pub(crate) fn dead_letters_of(
    batches: &[IngestBatch],
    outcomes: &mut [CommitOutcome],
    origin: Option<&[Vec<usize>]>,
) -> Vec<DeadLetter> {
    let mut letters: Vec<DeadLetter> = Vec::new();
    for (b, (batch, outcome)) in batches.iter().zip(outcomes.iter_mut()).enumerate() {
        outcome.duplicates.sort_unstable();
        letters.extend(batch.dead_letters.iter().cloned());
        for &i in &outcome.duplicates {
            let p = &batch.positions[i];
            letters.push(DeadLetter {
                reason: Reason::Duplicate,
                detail: format!(
                    "tracking_id {:?} of supplier {} is already stored",
                    p.tracking_id, p.supplier
                ),
                supplier: Some(p.supplier.to_string()),
                topic: match &batch.source {
                    model::Source::Mqtt { topic } => Some(topic.clone()),
                    _ => None,
                },
                received_at: batch.received_at,
                index: Some(origin.and_then(|o| o.get(b)?.get(i).copied()).unwrap_or(i)),
                raw: serde_json::to_string(&p.to_wire()).unwrap_or_default(),
            });
        }
    }
    letters
}

pub(crate) fn parse_reason(reason: &str) -> Result<Reason, StoreError> {
    Reason::parse(reason).ok_or_else(|| StoreError::Corrupt(format!("reason {reason}")))
}
