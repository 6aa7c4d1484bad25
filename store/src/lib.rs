//! Time-series persistence for movewatch: the system of record.
//!
//! [`Store`] opens a backend by URL (`sqlite://path`, the embedded default),
//! migrates it, and writes [`IngestBatch`]es in transactions. [`spawn_writer`]
//! runs the batching write loop: it groups batches by size or age, commits
//! them, and only then completes each batch's commit token, which is what
//! lets intake acknowledge the MQTT message. A failed write is retried with
//! backoff while the tokens wait, so the broker keeps unacknowledged messages.

mod sqlite;
mod writer;

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use model::{CommitOutcome, DeadLetter, IngestBatch, Position, Reason};

pub use writer::{WriterConfig, spawn_writer};

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

/// The store, over one of its backends.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone, Debug)]
enum Backend {
    Sqlite(sqlite::SqliteStore),
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

impl Store {
    /// Opens (creating if needed) and migrates the store at `url`.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            return Ok(Store {
                backend: Backend::Sqlite(sqlite::SqliteStore::open(url).await?),
            });
        }
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }

    /// Writes batches in one transaction. Returns, per batch, which of its
    /// positions were duplicates (and were dead-lettered as such).
    pub async fn write(&self, batches: &[IngestBatch]) -> Result<Vec<CommitOutcome>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.write(batches).await,
        }
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.ping().await,
        }
    }

    /// How many rows of each kind are stored.
    pub async fn counts(&self) -> Result<Counts, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.counts().await,
        }
    }

    /// Dead letters grouped by reason.
    pub async fn dead_letter_counts(&self) -> Result<Vec<(Reason, i64)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.dead_letter_counts().await,
        }
    }

    /// The most recent dead letters, newest first.
    pub async fn recent_dead_letters(&self, limit: i64) -> Result<Vec<DeadLetter>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.recent_dead_letters(limit).await,
        }
    }

    /// The newest usable (not late, not bad) fix of every vehicle, to rebuild live state on start.
    pub async fn latest_positions(&self) -> Result<Vec<Position>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.latest_positions().await,
        }
    }

    /// A vehicle's stored points between two times, oldest first.
    pub async fn track(
        &self,
        vehicle: &model::VehicleId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Position>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.track(vehicle, from, to, limit).await,
        }
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
