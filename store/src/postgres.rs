//! The PostgreSQL backend.
//!
//! Positions are written in one transaction per commit: binary `COPY` writes
//! the `(supplier, tracking_id)` keys to `position_keys` (the non-partitioned
//! de-duplication table, whose primary key makes a point unique) and the
//! points to the (day-partitioned) `positions`. When a key is already stored
//! the key COPY fails, and the transaction is redone after one query that
//! finds the stored keys, so only fresh points are copied; the repeats are
//! dead-lettered as `duplicate` in the same transaction — the same outcome as
//! SQLite's. See [`write_positions`].

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use model::config::WebhookConfig;
use model::{CommitOutcome, IngestBatch, JourneyId};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgQueryResult};
use sqlx::{AssertSqlSafe, Postgres};

use crate::pg_layout::{self, Layout, POSITION_COLUMNS};
use crate::sql::{Dialect, SqlStore};
use crate::{Candidate, RetentionReport, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

impl Dialect for Postgres {
    type Time = DateTime<Utc>;
    type Flags = i16;
    /// Rows per multi-row INSERT (events, dead letters, fence transitions):
    /// 8 columns × 1000 stays well under PostgreSQL's 65535 parameters.
    const ROWS_PER_STATEMENT: usize = 1_000;
    const JSON_CAST: &'static str = "::json";
    /// One index probe per vehicle (a loose index scan over `(vehicle, ts)`),
    /// not a scan of the whole history.
    const LATEST_POSITIONS: &'static str = "WITH RECURSIVE v AS (
            (SELECT vehicle FROM positions ORDER BY vehicle LIMIT 1)
            UNION ALL
            SELECT (SELECT p.vehicle FROM positions p WHERE p.vehicle > v.vehicle ORDER BY p.vehicle LIMIT 1)
            FROM v WHERE v.vehicle IS NOT NULL
         )
         SELECT l.* FROM v CROSS JOIN LATERAL (
            SELECT supplier, tracking_id, vehicle, ts, lat, lon, journey_id, speed, bearing, altitude, hdop, vdop, vin, flags
            FROM positions p WHERE p.vehicle = v.vehicle AND p.flags = 0
            ORDER BY p.ts DESC LIMIT 1
         ) l
         WHERE v.vehicle IS NOT NULL";

    fn time(ts: &DateTime<Utc>) -> DateTime<Utc> {
        *ts
    }

    fn from_time(ts: DateTime<Utc>) -> Result<DateTime<Utc>, StoreError> {
        Ok(ts)
    }

    fn text(s: &str) -> Cow<'_, str> {
        text(s)
    }

    fn rows_affected(r: &PgQueryResult) -> u64 {
        r.rows_affected()
    }
}

/// Rows per retention DELETE (default partition stragglers, keys).
const RETENTION_BATCH: i64 = 10_000;

/// Serialises schema changes between engines sharing a database.
const DDL_LOCK: i64 = 0x6d6f_7665_7761_7463; // "movewatc"

/// Which of the transaction's keys are already stored: one index probe each.
/// Returns 1-based positions in the arrays.
const STORED_KEYS: &str = "SELECT t.i FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(supplier, tracking_id, i)
WHERE EXISTS (SELECT 1 FROM position_keys k WHERE k.supplier = t.supplier AND k.tracking_id = t.tracking_id)";

const COPY_KEYS: &str = "COPY position_keys (supplier, tracking_id, ts) FROM STDIN (FORMAT binary)";

const COPY_POSITIONS: &str = "COPY positions (supplier, tracking_id, vehicle, ts, lat, lon, journey_id, speed, bearing, altitude, hdop, vdop, vin, flags, received_at) FROM STDIN (FORMAT binary)";

#[derive(Clone, Debug)]
pub(crate) struct PgStore {
    /// The shared SQL over this pool.
    pub(crate) sql: SqlStore<Postgres>,
    layout: Layout,
    /// Whether the next write probes for stored keys before copying.
    probe_next: Arc<AtomicBool>,
}

impl PgStore {
    pub(crate) async fn open(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .min_connections(0)
            // A write during an outage fails fast and is retried by the writer.
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        let layout = Self::ensure_positions(&pool).await?;
        Ok(PgStore {
            sql: SqlStore { pool },
            layout,
            probe_next: Arc::default(),
        })
    }

    pub(crate) fn layout(&self) -> Layout {
        self.layout
    }

    /// Creates `positions` in the layout the server allows, unless it exists.
    async fn ensure_positions(pool: &PgPool) -> Result<Layout, StoreError> {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(DDL_LOCK)
            .execute(&mut *tx)
            .await?;
        let relkind: Option<String> = sqlx::query_scalar(
            "SELECT c.relkind::text FROM pg_class c WHERE c.oid = to_regclass('positions')",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let existing = match relkind.as_deref() {
            None => None,
            Some("p") => Some(Layout::Native),
            // Only a hypertable is created as a plain table here.
            Some(_) => Some(Layout::Timescale),
        };
        let available: Vec<String> =
            sqlx::query_scalar("SELECT name::text FROM pg_available_extensions")
                .fetch_all(&mut *tx)
                .await?;
        let layout = pg_layout::choose_layout(existing, &available);
        if existing.is_none() {
            let ddl = match layout {
                Layout::Native => pg_layout::native_positions_ddl(),
                Layout::Timescale => pg_layout::timescale_positions_ddl(None),
            };
            for statement in ddl {
                sqlx::raw_sql(AssertSqlSafe(statement))
                    .execute(&mut *tx)
                    .await?;
            }
            tracing::info!(?layout, "created the positions table");
        }
        tx.commit().await?;
        Ok(layout)
    }

    async fn partitions(conn: &mut PgConnection) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'positions'::regclass",
        )
        .fetch_all(conn)
        .await?)
    }

    pub(crate) async fn maintain(&self, now: DateTime<Utc>) -> Result<(), StoreError> {
        if self.layout != Layout::Native {
            return Ok(());
        }
        let mut tx = self.sql.pool.begin().await?;
        // Never stall the writer for long behind a partition change.
        sqlx::query("SET LOCAL lock_timeout = '5s'")
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(DDL_LOCK)
            .execute(&mut *tx)
            .await?;
        let existing = Self::partitions(&mut tx).await?;
        let missing = pg_layout::partitions_to_create(now.date_naive(), &existing);
        for day in &missing {
            for statement in pg_layout::native_partition_ddl(*day) {
                sqlx::raw_sql(AssertSqlSafe(statement))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        if !missing.is_empty() {
            tracing::info!(created = missing.len(), "created positions day partitions");
        }
        Ok(())
    }

    pub(crate) async fn apply_retention(
        &self,
        cutoff: DateTime<Utc>,
        days: u32,
    ) -> Result<RetentionReport, StoreError> {
        let mut report = RetentionReport::default();
        match self.layout {
            Layout::Native => {
                let mut tx = self.sql.pool.begin().await?;
                sqlx::query("SET LOCAL lock_timeout = '5s'")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(DDL_LOCK)
                    .execute(&mut *tx)
                    .await?;
                let existing = Self::partitions(&mut tx).await?;
                for name in pg_layout::partitions_to_drop(&existing, cutoff) {
                    // `name` is one of ours: positions_pYYYYMMDD.
                    sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE {name}")))
                        .execute(&mut *tx)
                        .await?;
                    report.partitions_dropped.push(name);
                }
                tx.commit().await?;
                report.rows_deleted += self.delete_in_batches("positions_default", cutoff).await?;
            }
            Layout::Timescale => {
                for statement in pg_layout::timescale_retention_sql(days) {
                    sqlx::raw_sql(AssertSqlSafe(statement))
                        .execute(&self.sql.pool)
                        .await?;
                }
                report.partitions_dropped = sqlx::query_scalar(
                    "SELECT c::text FROM drop_chunks('positions', older_than => $1) c",
                )
                .bind(cutoff)
                .fetch_all(&self.sql.pool)
                .await?;
            }
        }
        report.rows_deleted += self.delete_in_batches("position_keys", cutoff).await?;
        if !report.partitions_dropped.is_empty() || report.rows_deleted > 0 {
            tracing::info!(dropped = ?report.partitions_dropped, rows = report.rows_deleted, %cutoff, "retention applied");
        }
        Ok(report)
    }

    /// Deletes rows with `ts < cutoff` from one of our own tables, a batch per
    /// statement, so no single statement runs long.
    async fn delete_in_batches(
        &self,
        table: &'static str,
        cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let sql = format!(
            "DELETE FROM {table} WHERE ctid = ANY (ARRAY(SELECT ctid FROM {table} WHERE ts < $1 LIMIT $2))"
        );
        let mut total = 0;
        loop {
            let deleted = sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(cutoff)
                .bind(RETENTION_BATCH)
                .execute(&self.sql.pool)
                .await?
                .rows_affected();
            total += deleted;
            if deleted < RETENTION_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    pub(crate) async fn write(
        &self,
        batches: &[IngestBatch],
        hooks: &[WebhookConfig],
        origin: Option<&[Vec<usize>]>,
    ) -> Result<Vec<CommitOutcome>, StoreError> {
        let (mut outcomes, first) = crate::first_occurrences(batches);
        let mut probe = self.probe_next.load(Ordering::Relaxed);
        let mut tx = loop {
            let mut tx = self.sql.pool.begin().await?;
            match write_positions(&mut tx, &first, batches, probe).await {
                Ok(repeats) => {
                    for k in repeats {
                        let (b, i, _) = first[k];
                        outcomes[b].duplicates.push(i);
                    }
                    break tx;
                }
                // Optimistic COPY met a stored key: redo with the probe.
                Err(sqlx::Error::Database(e)) if !probe && e.is_unique_violation() => {
                    tx.rollback().await?;
                    probe = true;
                }
                Err(e) => return Err(e.into()),
            }
        };
        // Repeats come in bursts (a redelivered session): keep probing until a
        // probed write finds none.
        let found = outcomes.iter().any(|o| !o.duplicates.is_empty());
        self.probe_next.store(probe && found, Ordering::Relaxed);

        SqlStore::<Postgres>::write_rest(&mut tx, batches, &mut outcomes, hooks, origin).await?;
        tx.commit().await?;
        Ok(outcomes)
    }
}

/// Writes the transaction's first-occurrence points and returns the indices
/// (into `first`) of those whose key was already stored.
///
/// Without `probe`, the keys are copied straight into `position_keys`: when
/// none is stored yet (the usual case) that is all, and a stored one fails
/// the COPY with a unique violation, which the caller answers by redoing the
/// transaction with `probe`. With `probe`, one query first finds the stored
/// keys, and only the fresh ones are copied. Either way the primary key of
/// `position_keys` is what guarantees a point is stored once, also against
/// another engine writing at the same time (its key makes this COPY fail,
/// the transaction rolls back and the writer's retry sees a duplicate).
async fn write_positions(
    conn: &mut PgConnection,
    first: &[Candidate<'_>],
    batches: &[IngestBatch],
    probe: bool,
) -> Result<Vec<usize>, sqlx::Error> {
    if first.is_empty() {
        return Ok(Vec::new());
    }
    let mut repeats = Vec::new();
    if probe {
        let suppliers: Vec<&str> = first.iter().map(|(_, _, p)| p.supplier.as_str()).collect();
        let ids: Vec<String> = first
            .iter()
            .map(|(_, _, p)| text(&p.tracking_id).into_owned())
            .collect();
        let stored: Vec<i64> = sqlx::query_scalar(STORED_KEYS)
            .bind(&suppliers)
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?;
        for i in stored {
            let k = usize::try_from(i - 1)
                .ok()
                .filter(|k| *k < first.len())
                .ok_or_else(|| sqlx::Error::Protocol(format!("key index {i} out of range")))?;
            repeats.push(k);
        }
    }
    let fresh: Vec<Candidate<'_>> = if repeats.is_empty() {
        first.to_vec()
    } else {
        let mut is_fresh = vec![true; first.len()];
        for &k in &repeats {
            is_fresh[k] = false;
        }
        first
            .iter()
            .zip(is_fresh)
            .filter_map(|(c, f)| f.then_some(*c))
            .collect()
    };
    if !fresh.is_empty() {
        let mut copy = conn.copy_in_raw(COPY_KEYS).await?;
        copy.send(encode_keys(&fresh)).await?;
        copy.finish().await?;
        let mut copy = conn.copy_in_raw(COPY_POSITIONS).await?;
        copy.send(encode_positions(&fresh, batches)).await?;
        copy.finish().await?;
    }
    Ok(repeats)
}

/// PostgreSQL text cannot hold NUL: each one becomes U+FFFD. Everything else
/// is kept as it is.
pub(crate) fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// A `COPY … (FORMAT binary)` stream being built.
pub(crate) struct BinaryCopy {
    buf: Vec<u8>,
}

impl BinaryCopy {
    /// The header; `rows_hint` sizes the buffer.
    pub(crate) fn new(rows_hint: usize) -> Self {
        let mut buf = Vec::with_capacity(19 + rows_hint * 200);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags
        buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
        BinaryCopy { buf }
    }

    pub(crate) fn row(&mut self, columns: i16) {
        self.buf.extend_from_slice(&columns.to_be_bytes());
    }

    fn field(&mut self, bytes: &[u8]) {
        // Every field here is far below 2 GiB (payloads are at most 256 KiB).
        self.buf
            .extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        self.buf.extend_from_slice(bytes);
    }

    pub(crate) fn null(&mut self) {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
    }

    pub(crate) fn text(&mut self, s: &str) {
        let s = text(s);
        self.field(s.as_bytes());
    }

    pub(crate) fn opt_text(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.text(s),
            None => self.null(),
        }
    }

    pub(crate) fn f64(&mut self, v: f64) {
        self.field(&v.to_be_bytes());
    }

    pub(crate) fn opt_f64(&mut self, v: Option<f64>) {
        match v {
            Some(v) => self.f64(v),
            None => self.null(),
        }
    }

    pub(crate) fn i16(&mut self, v: i16) {
        self.field(&v.to_be_bytes());
    }

    pub(crate) fn timestamptz(&mut self, ts: &DateTime<Utc>) {
        self.field(&(ts.timestamp_micros() - PG_EPOCH_OFFSET_MICROS).to_be_bytes());
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

/// `position_keys` rows.
fn encode_keys(fresh: &[Candidate<'_>]) -> Vec<u8> {
    let mut out = BinaryCopy::new(fresh.len() / 3);
    for (_, _, p) in fresh {
        out.row(3);
        out.text(p.supplier.as_str());
        out.text(&p.tracking_id);
        out.timestamptz(&p.ts);
    }
    out.finish()
}

/// `positions` rows, in [`POSITION_COLUMNS`] order.
fn encode_positions(fresh: &[Candidate<'_>], batches: &[IngestBatch]) -> Vec<u8> {
    const COLUMNS: i16 = 15;
    debug_assert_eq!(POSITION_COLUMNS.split(',').count(), COLUMNS as usize);
    let mut out = BinaryCopy::new(fresh.len());
    for (b, _, p) in fresh {
        out.row(COLUMNS);
        out.text(p.supplier.as_str());
        out.text(&p.tracking_id);
        out.text(p.vehicle.as_str());
        out.timestamptz(&p.ts);
        out.f64(p.lat);
        out.f64(p.lon);
        out.opt_text(p.journey_id.as_ref().map(JourneyId::as_str));
        out.opt_f64(p.speed_kmh);
        out.opt_f64(p.bearing);
        out.opt_f64(p.altitude);
        out.opt_f64(p.hdop);
        out.opt_f64(p.vdop);
        out.opt_text(p.vin.as_deref());
        out.i16(p.flags.bits() as i16);
        out.timestamptz(&batches[*b].received_at);
    }
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn nul_becomes_replacement_character() {
        assert_eq!(text("abc"), Cow::Borrowed("abc"));
        assert_eq!(text("a\0b"), "a\u{FFFD}b");
    }

    #[test]
    fn binary_copy_layout() {
        let mut c = BinaryCopy::new(1);
        c.row(3);
        c.text("ab");
        c.null();
        c.timestamptz(&Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 1).unwrap());
        let bytes = c.finish();
        assert_eq!(&bytes[..11], b"PGCOPY\n\xff\r\n\0");
        let body = &bytes[19..];
        assert_eq!(&body[..2], &3i16.to_be_bytes());
        assert_eq!(&body[2..8], &[0, 0, 0, 2, b'a', b'b']);
        assert_eq!(&body[8..12], &(-1i32).to_be_bytes());
        assert_eq!(&body[12..16], &8i32.to_be_bytes());
        assert_eq!(&body[16..24], &1_000_000i64.to_be_bytes());
        assert_eq!(&body[24..], &(-1i16).to_be_bytes());
    }
}
