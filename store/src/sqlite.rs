//! The embedded SQLite backend: WAL, synchronous=FULL (an acknowledged point
//! survives power loss, not only a crash), multi-row inserts in one transaction.

use std::borrow::Cow;
use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use model::config::WebhookConfig;
use model::{CommitOutcome, IngestBatch, JourneyId};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use crate::sql::{Dialect, SqlStore};
use crate::{RetentionReport, StoreError, from_micros, to_micros};

/// Rows per INSERT statement: 16 columns × 500 stays under SQLite's 32766 bound variables.
const ROWS_PER_STATEMENT: usize = 500;

impl Dialect for Sqlite {
    type Time = i64;
    type Flags = i64;
    const ROWS_PER_STATEMENT: usize = ROWS_PER_STATEMENT;
    const JSON_CAST: &'static str = "";
    const LATEST_POSITIONS: &'static str = "SELECT p.supplier, p.tracking_id, p.vehicle, p.ts, p.lat, p.lon, p.journey_id, p.speed, p.bearing, p.altitude, p.hdop, p.vdop, p.vin, p.flags
         FROM positions p
         JOIN (SELECT vehicle, MAX(ts) AS ts FROM positions WHERE flags = 0 GROUP BY vehicle) l
           ON p.vehicle = l.vehicle AND p.ts = l.ts
         WHERE p.flags = 0";

    fn time(ts: &DateTime<Utc>) -> i64 {
        to_micros(ts)
    }

    fn from_time(us: i64) -> Result<DateTime<Utc>, StoreError> {
        from_micros(us)
    }

    fn text(s: &str) -> Cow<'_, str> {
        Cow::Borrowed(s)
    }

    fn rows_affected(r: &SqliteQueryResult) -> u64 {
        r.rows_affected()
    }
}

/// Rows per retention DELETE.
const RETENTION_BATCH: i64 = 10_000;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

#[derive(Clone, Debug)]
pub(crate) struct SqliteStore {
    /// The shared SQL over this pool.
    pub(crate) sql: SqlStore<Sqlite>,
}

impl SqliteStore {
    pub(crate) async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let file = options.get_filename();
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStore {
            sql: SqlStore { pool },
        })
    }

    pub(crate) async fn write(
        &self,
        batches: &[IngestBatch],
        hooks: &[WebhookConfig],
        origin: Option<&[Vec<usize>]>,
    ) -> Result<Vec<CommitOutcome>, StoreError> {
        let (mut outcomes, first) = crate::first_occurrences(batches);
        let mut tx = self.sql.pool.begin().await?;

        for chunk in first.chunks(ROWS_PER_STATEMENT) {
            // Optimistic: re-sends are rare, so insert the chunk plainly. On a
            // key conflict SQLite undoes that one statement (the transaction
            // goes on) and the chunk is inserted again, skipping and reporting
            // the repeats. Asking for the inserted keys back on every chunk
            // cost about a quarter of the write.
            match insert_positions(&mut tx, batches, chunk, false).await {
                Ok(_) => continue,
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {}
                Err(e) => return Err(e.into()),
            }
            let inserted: HashSet<(String, String)> =
                insert_positions(&mut tx, batches, chunk, true)
                    .await?
                    .into_iter()
                    .collect();
            for (b, i, p) in chunk {
                if !inserted.contains(&(p.supplier.as_str().to_owned(), p.tracking_id.clone())) {
                    outcomes[*b].duplicates.push(*i);
                }
            }
        }

        SqlStore::<Sqlite>::write_rest(&mut tx, batches, &mut outcomes, hooks, origin).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    /// Deletes positions older than `cutoff` in batches, so that no single
    /// statement holds the write lock for long.
    pub(crate) async fn apply_retention(
        &self,
        cutoff: DateTime<Utc>,
        _days: u32,
    ) -> Result<RetentionReport, StoreError> {
        let mut report = RetentionReport::default();
        loop {
            let deleted = sqlx::query(
                "DELETE FROM positions WHERE id IN (SELECT id FROM positions WHERE ts < ? LIMIT ?)",
            )
            .bind(to_micros(&cutoff))
            .bind(RETENTION_BATCH)
            .execute(&self.sql.pool)
            .await?
            .rows_affected();
            report.rows_deleted += deleted;
            if deleted < RETENTION_BATCH as u64 {
                return Ok(report);
            }
        }
    }
}

/// Inserts one chunk of positions. Plain (`skip_repeats` false), a stored
/// key fails the statement; otherwise repeats are skipped and the keys
/// actually inserted are returned.
async fn insert_positions(
    tx: &mut SqliteConnection,
    batches: &[IngestBatch],
    chunk: &[crate::Candidate<'_>],
    skip_repeats: bool,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
        "INSERT INTO positions (supplier, tracking_id, vehicle, ts, lat, lon, journey_id, speed, bearing, altitude, hdop, vdop, vin, flags, received_at) ",
    );
    q.push_values(chunk, |mut row, (b, _, p)| {
        row.push_bind(p.supplier.as_str())
            .push_bind(p.tracking_id.as_str())
            .push_bind(p.vehicle.as_str())
            .push_bind(to_micros(&p.ts))
            .push_bind(p.lat)
            .push_bind(p.lon)
            .push_bind(p.journey_id.as_ref().map(JourneyId::as_str))
            .push_bind(p.speed_kmh)
            .push_bind(p.bearing)
            .push_bind(p.altitude)
            .push_bind(p.hdop)
            .push_bind(p.vdop)
            .push_bind(p.vin.as_deref())
            .push_bind(p.flags.bits())
            .push_bind(to_micros(&batches[*b].received_at));
    });
    if !skip_repeats {
        q.build().persistent(false).execute(&mut *tx).await?;
        return Ok(Vec::new());
    }
    q.push(" ON CONFLICT (supplier, tracking_id) DO NOTHING RETURNING supplier, tracking_id");
    q.build()
        .persistent(false)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}
