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
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use model::config::WebhookConfig;
use model::{
    CommitOutcome, DeadLetter, IngestBatch, JourneyId, MoveId, PointFlags, Position, Reason,
    SiteId, SupplierId, VehicleId,
};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Postgres, QueryBuilder, Row};

use crate::pg_layout::{self, Layout, POSITION_COLUMNS};
use crate::records::{
    self, AlertRecord, Arrival, Derived, FenceTransition, JourneyRecord, MoveRecord,
    SiteFenceRecord, VehicleRecord,
};
use crate::{Candidate, Counts, PositionCursor, RetentionReport, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Rows per multi-row INSERT (events, dead letters, fence transitions):
/// 8 columns × 1000 stays well under PostgreSQL's 65535 parameters.
const ROWS_PER_STATEMENT: usize = 1_000;

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
    pub(crate) pool: PgPool,
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
            pool,
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
        let mut tx = self.pool.begin().await?;
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
                let mut tx = self.pool.begin().await?;
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
                        .execute(&self.pool)
                        .await?;
                }
                report.partitions_dropped = sqlx::query_scalar(
                    "SELECT c::text FROM drop_chunks('positions', older_than => $1) c",
                )
                .bind(cutoff)
                .fetch_all(&self.pool)
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
                .execute(&self.pool)
                .await?
                .rows_affected();
            total += deleted;
            if deleted < RETENTION_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub(crate) async fn write(
        &self,
        batches: &[IngestBatch],
        hooks: &[WebhookConfig],
    ) -> Result<Vec<CommitOutcome>, StoreError> {
        let (mut outcomes, first) = crate::first_occurrences(batches);
        let mut probe = self.probe_next.load(Ordering::Relaxed);
        let mut tx = loop {
            let mut tx = self.pool.begin().await?;
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

        let letters = crate::dead_letters_of(batches, &mut outcomes);
        for chunk in letters.chunks(ROWS_PER_STATEMENT) {
            let mut q: QueryBuilder<Postgres> = QueryBuilder::new(
                "INSERT INTO dead_letters (reason, detail, supplier, topic, received_at, item_index, raw) ",
            );
            q.push_values(chunk, |mut row, d| {
                row.push_bind(d.reason.as_str())
                    .push_bind(text(&d.detail).into_owned())
                    .push_bind(d.supplier.as_deref().map(|s| text(s).into_owned()))
                    .push_bind(d.topic.as_deref().map(|s| text(s).into_owned()))
                    .push_bind(d.received_at)
                    .push_bind(d.index.map(|i| i as i64))
                    .push_bind(text(&d.raw).into_owned());
            });
            q.build().execute(&mut *tx).await?;
        }

        let events: Vec<(&IngestBatch, &model::Event)> = batches
            .iter()
            .flat_map(|b| b.events.iter().map(move |e| (b, e)))
            .collect();
        for chunk in events.chunks(ROWS_PER_STATEMENT) {
            let mut q: QueryBuilder<Postgres> = QueryBuilder::new(
                "INSERT INTO events (supplier, vehicle, event_type, occurred_at, move_id, journey_id, details, received_at) ",
            );
            q.push_values(chunk, |mut row, (b, e)| {
                row.push_bind(e.supplier.as_str())
                    .push_bind(e.vehicle.as_str())
                    .push_bind(text(e.kind.as_str()).into_owned())
                    .push_bind(e.occurred_at)
                    .push_bind(e.move_id.as_ref().map(|m| m.as_str().to_owned()))
                    .push_bind(e.journey_id.as_ref().map(|j| j.as_str().to_owned()))
                    .push_bind(e.details.to_string())
                    .push_unseparated("::json")
                    .push_bind(b.received_at);
            });
            q.build().execute(&mut *tx).await?;
        }

        let transitions: Vec<&FenceTransition> =
            batches.iter().flat_map(|b| b.transitions.iter()).collect();
        for chunk in transitions.chunks(ROWS_PER_STATEMENT) {
            let mut q: QueryBuilder<Postgres> =
                QueryBuilder::new("INSERT INTO fence_transitions (vehicle, site, kind, ts) ");
            q.push_values(chunk, |mut row, t| {
                row.push_bind(t.vehicle.as_str())
                    .push_bind(t.site.as_str().to_owned())
                    .push_bind(t.kind.as_str())
                    .push_bind(t.ts);
            });
            q.build().execute(&mut *tx).await?;
        }
        write_derived_in(&mut tx, batches.iter().map(|b| &b.derived)).await?;
        crate::outbox::queue_notifications!(tx, hooks, batches.iter().map(|b| &b.derived));

        tx.commit().await?;
        Ok(outcomes)
    }

    pub(crate) async fn counts(&self) -> Result<Counts, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM positions), (SELECT COUNT(*) FROM events), (SELECT COUNT(*) FROM dead_letters)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Counts {
            positions: row.try_get(0)?,
            events: row.try_get(1)?,
            dead_letters: row.try_get(2)?,
        })
    }

    pub(crate) async fn dead_letter_counts(&self) -> Result<Vec<(Reason, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT reason, COUNT(*) FROM dead_letters GROUP BY reason ORDER BY reason",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((crate::parse_reason(r.try_get(0)?)?, r.try_get(1)?)))
            .collect()
    }

    pub(crate) async fn recent_dead_letters(
        &self,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = sqlx::query(
            "SELECT reason, detail, supplier, topic, received_at, item_index, raw FROM dead_letters ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeadLetter {
                    reason: crate::parse_reason(r.try_get(0)?)?,
                    detail: r.try_get(1)?,
                    supplier: r.try_get(2)?,
                    topic: r.try_get(3)?,
                    received_at: r.try_get(4)?,
                    index: r.try_get::<Option<i64>, _>(5)?.map(|i| i as usize),
                    raw: r.try_get(6)?,
                })
            })
            .collect()
    }

    /// One index probe per vehicle (a loose index scan over `(vehicle, ts)`),
    /// not a scan of the whole history.
    pub(crate) async fn latest_positions(&self) -> Result<Vec<Position>, StoreError> {
        let rows = sqlx::query(
            "WITH RECURSIVE v AS (
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
             WHERE v.vehicle IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut latest: HashMap<VehicleId, Position> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let p = position_from_row(row)?;
            latest.insert(p.vehicle, p);
        }
        Ok(latest.into_values().collect())
    }

    pub(crate) async fn track(
        &self,
        vehicle: &VehicleId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Position>, StoreError> {
        let rows = sqlx::query(
            "SELECT supplier, tracking_id, vehicle, ts, lat, lon, journey_id, speed, bearing, altitude, hdop, vdop, vin, flags
             FROM positions WHERE vehicle = $1 AND ts >= $2 AND ts <= $3 ORDER BY ts LIMIT $4",
        )
        .bind(vehicle.as_str())
        .bind(from)
        .bind(to)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(position_from_row).collect()
    }

    pub(crate) async fn positions_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<&PositionCursor>,
        limit: i64,
    ) -> Result<Vec<Position>, StoreError> {
        let rows = match after {
            None => {
                sqlx::query(
                    "SELECT supplier, tracking_id, vehicle, ts, lat, lon, journey_id, speed, bearing, altitude, hdop, vdop, vin, flags
                     FROM positions WHERE ts >= $1 AND ts <= $2
                     ORDER BY ts, supplier, tracking_id LIMIT $3",
                )
                .bind(from)
                .bind(to)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            Some(c) => {
                sqlx::query(
                    "SELECT supplier, tracking_id, vehicle, ts, lat, lon, journey_id, speed, bearing, altitude, hdop, vdop, vin, flags
                     FROM positions WHERE ts >= $1 AND ts <= $2 AND ts >= $3
                       AND (ts, supplier, tracking_id) > ($3, $4, $5)
                     ORDER BY ts, supplier, tracking_id LIMIT $6",
                )
                .bind(from)
                .bind(to)
                .bind(c.ts)
                .bind(c.supplier.as_str())
                .bind(text(&c.tracking_id).into_owned())
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(position_from_row).collect()
    }

    pub(crate) async fn upsert_move(&self, m: &MoveRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        upsert_move_in(&mut tx, m).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Move changes, arrivals and alerts outside a points' batch (the alert
    /// ticker, `PUT /api/moves`), in one transaction.
    pub(crate) async fn write_derived(
        &self,
        d: &Derived,
        hooks: &[WebhookConfig],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        write_derived_in(&mut tx, std::iter::once(d)).await?;
        crate::outbox::queue_notifications!(tx, hooks, std::iter::once(d));
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn alerts_since(
        &self,
        since: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<AlertRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT kind, vehicle, move_id, ts, detail FROM alerts WHERE ts >= $1
             ORDER BY ts, id LIMIT $2",
        )
        .bind(since)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let move_id: &str = r.try_get(2)?;
                Ok(AlertRecord {
                    kind: r.try_get(0)?,
                    vehicle: records::id(VehicleId::parse, r.try_get(1)?)?,
                    move_id: (!move_id.is_empty())
                        .then(|| records::id(MoveId::parse, move_id))
                        .transpose()?,
                    ts: r.try_get(3)?,
                    detail: r.try_get(4)?,
                })
            })
            .collect()
    }

    pub(crate) async fn get_move(&self, id: &MoveId) -> Result<Option<MoveRecord>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT id, reference, from_location, to_location, move_date, status FROM moves WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let mut m = move_from_row(&row)?;
        m.journeys = self.journeys_of(&m.id).await?;
        Ok(Some(m))
    }

    async fn journeys_of(&self, id: &MoveId) -> Result<Vec<JourneyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, from_location, to_location, vehicle FROM journeys WHERE move_id = $1 ORDER BY seq",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(JourneyRecord {
                    id: records::id(JourneyId::parse, r.try_get(0)?)?,
                    from_location: records::id(SiteId::parse, r.try_get(1)?)?,
                    to_location: records::id(SiteId::parse, r.try_get(2)?)?,
                    vehicle: r
                        .try_get::<Option<&str>, _>(3)?
                        .map(|v| records::id(VehicleId::parse, v))
                        .transpose()?,
                })
            })
            .collect()
    }

    pub(crate) async fn set_move_status(
        &self,
        id: &MoveId,
        status: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE moves SET status = $1, updated_at = now() WHERE id = $2")
            .bind(text(status).into_owned())
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub(crate) async fn moves_on(&self, date: NaiveDate) -> Result<Vec<MoveRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, reference, from_location, to_location, move_date, status FROM moves WHERE move_date = $1 ORDER BY id",
        )
        .bind(date)
        .fetch_all(&self.pool)
        .await?;
        let mut moves = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut m = move_from_row(row)?;
            m.journeys = self.journeys_of(&m.id).await?;
            moves.push(m);
        }
        Ok(moves)
    }

    pub(crate) async fn open_moves(&self) -> Result<Vec<MoveRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, reference, from_location, to_location, move_date, status FROM moves
             WHERE status IN ('booked', 'in_transit', 'arrived') ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut moves = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut m = move_from_row(row)?;
            m.journeys = self.journeys_of(&m.id).await?;
            moves.push(m);
        }
        Ok(moves)
    }

    pub(crate) async fn recent_arrivals(&self, limit: i64) -> Result<Vec<Arrival>, StoreError> {
        let rows = sqlx::query(
            "SELECT move_id, vehicle, site, from_location, departed_at, arrived_at, distance_m FROM arrivals
             ORDER BY arrived_at DESC, id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(arrival_from_row).collect()
    }

    pub(crate) async fn insert_fence_transitions(
        &self,
        transitions: &[FenceTransition],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for chunk in transitions.chunks(ROWS_PER_STATEMENT) {
            let mut q: QueryBuilder<Postgres> =
                QueryBuilder::new("INSERT INTO fence_transitions (vehicle, site, kind, ts) ");
            q.push_values(chunk, |mut row, t| {
                row.push_bind(t.vehicle.as_str())
                    .push_bind(t.site.as_str().to_owned())
                    .push_bind(t.kind.as_str())
                    .push_bind(t.ts);
            });
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn fence_transitions(
        &self,
        vehicle: &VehicleId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<FenceTransition>, StoreError> {
        let rows = sqlx::query(
            "SELECT vehicle, site, kind, ts FROM fence_transitions
             WHERE vehicle = $1 AND ts >= $2 AND ts <= $3 ORDER BY ts, id",
        )
        .bind(vehicle.as_str())
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FenceTransition {
                    vehicle: records::id(VehicleId::parse, r.try_get(0)?)?,
                    site: records::id(SiteId::parse, r.try_get(1)?)?,
                    kind: records::kind(r.try_get(2)?)?,
                    ts: r.try_get(3)?,
                })
            })
            .collect()
    }

    pub(crate) async fn latest_fence_transitions(
        &self,
    ) -> Result<Vec<FenceTransition>, StoreError> {
        let rows = sqlx::query(
            "SELECT vehicle, site, kind, ts FROM (
                 SELECT vehicle, site, kind, ts, ROW_NUMBER() OVER (
                     PARTITION BY vehicle, site ORDER BY ts DESC, id DESC) AS n
                 FROM fence_transitions) AS latest
             WHERE n = 1 ORDER BY vehicle, site",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FenceTransition {
                    vehicle: records::id(VehicleId::parse, r.try_get(0)?)?,
                    site: records::id(SiteId::parse, r.try_get(1)?)?,
                    kind: records::kind(r.try_get(2)?)?,
                    ts: r.try_get(3)?,
                })
            })
            .collect()
    }

    pub(crate) async fn put_site_fence(&self, f: &SiteFenceRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO site_fences (site, fence, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (site) DO UPDATE SET fence = excluded.fence, updated_at = excluded.updated_at",
        )
        .bind(f.site.as_str())
        .bind(f.fence.as_str())
        .bind(f.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(crate) async fn site_fences(&self) -> Result<Vec<SiteFenceRecord>, StoreError> {
        let rows = sqlx::query("SELECT site, fence, updated_at FROM site_fences ORDER BY site")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(SiteFenceRecord {
                    site: records::id(SiteId::parse, r.try_get(0)?)?,
                    fence: r.try_get(1)?,
                    updated_at: r.try_get(2)?,
                })
            })
            .collect()
    }

    pub(crate) async fn put_vehicle(
        &self,
        v: &VehicleRecord,
        replace: bool,
    ) -> Result<bool, StoreError> {
        let sql = if replace {
            "INSERT INTO vehicle_register (vehicle, supplier, source, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (vehicle) DO UPDATE SET supplier = excluded.supplier,
                 source = excluded.source, updated_at = excluded.updated_at"
        } else {
            "INSERT INTO vehicle_register (vehicle, supplier, source, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (vehicle) DO NOTHING"
        };
        let done = sqlx::query(sql)
            .bind(v.vehicle.as_str())
            .bind(v.supplier.as_str())
            .bind(v.source.as_str())
            .bind(v.updated_at)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub(crate) async fn vehicle_register(
        &self,
        only: Option<&VehicleId>,
    ) -> Result<Vec<VehicleRecord>, StoreError> {
        let rows = match only {
            Some(v) => {
                sqlx::query(
                    "SELECT vehicle, supplier, source, updated_at FROM vehicle_register WHERE vehicle = $1",
                )
                .bind(v.as_str())
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT vehicle, supplier, source, updated_at FROM vehicle_register ORDER BY vehicle",
                )
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok(VehicleRecord {
                    vehicle: records::id(VehicleId::parse, r.try_get(0)?)?,
                    supplier: records::id(SupplierId::parse, r.try_get(1)?)?,
                    source: r.try_get(2)?,
                    updated_at: r.try_get(3)?,
                })
            })
            .collect()
    }

    pub(crate) async fn insert_arrival(&self, a: &Arrival) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        insert_arrival_in(&mut conn, a).await
    }

    pub(crate) async fn arrivals(
        &self,
        from_location: &SiteId,
        site: &SiteId,
        limit: i64,
    ) -> Result<Vec<Arrival>, StoreError> {
        let rows = sqlx::query(
            "SELECT move_id, vehicle, site, from_location, departed_at, arrived_at, distance_m FROM arrivals
             WHERE from_location = $1 AND site = $2 ORDER BY arrived_at DESC, id DESC LIMIT $3",
        )
        .bind(from_location.as_str())
        .bind(site.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(arrival_from_row).collect()
    }
}

/// An `arrivals` row selected as `move_id, vehicle, site, from_location, departed_at, arrived_at, distance_m`.
fn arrival_from_row(r: &PgRow) -> Result<Arrival, StoreError> {
    Ok(Arrival {
        move_id: records::id(MoveId::parse, r.try_get(0)?)?,
        vehicle: records::id(VehicleId::parse, r.try_get(1)?)?,
        site: records::id(SiteId::parse, r.try_get(2)?)?,
        from_location: records::id(SiteId::parse, r.try_get(3)?)?,
        departed_at: r.try_get(4)?,
        arrived_at: r.try_get(5)?,
        distance_m: r.try_get(6)?,
    })
}

/// Upserts a move and replaces its journeys, inside `conn`'s transaction.
async fn upsert_move_in(conn: &mut PgConnection, m: &MoveRecord) -> Result<(), StoreError> {
    sqlx::query(
            "INSERT INTO moves (id, reference, from_location, to_location, move_date, status, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, now())
             ON CONFLICT (id) DO UPDATE SET reference = excluded.reference,
               from_location = excluded.from_location, to_location = excluded.to_location,
               move_date = excluded.move_date, status = excluded.status, updated_at = excluded.updated_at",
        )
        .bind(m.id.as_str())
        .bind(text(&m.reference).into_owned())
        .bind(m.from_location.as_str())
        .bind(m.to_location.as_str())
        .bind(m.date)
        .bind(text(&m.status).into_owned())
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM journeys WHERE move_id = $1")
        .bind(m.id.as_str())
        .execute(&mut *conn)
        .await?;
    for (seq, j) in m.journeys.iter().enumerate() {
        sqlx::query(
            "INSERT INTO journeys (id, move_id, seq, from_location, to_location, vehicle)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET move_id = excluded.move_id, seq = excluded.seq,
                   from_location = excluded.from_location, to_location = excluded.to_location,
                   vehicle = excluded.vehicle",
        )
        .bind(j.id.as_str())
        .bind(m.id.as_str())
        .bind(seq as i32)
        .bind(j.from_location.as_str())
        .bind(j.to_location.as_str())
        .bind(j.vehicle.as_ref().map(VehicleId::as_str))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Records a completed leg; a repeat is ignored.
async fn insert_arrival_in(conn: &mut PgConnection, a: &Arrival) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO arrivals (move_id, vehicle, site, from_location, departed_at, arrived_at, distance_m)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(a.move_id.as_str())
    .bind(a.vehicle.as_str())
    .bind(a.site.as_str())
    .bind(a.from_location.as_str())
    .bind(a.departed_at)
    .bind(a.arrived_at)
    .bind(a.distance_m)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Writes what the pipeline derived (moves, arrivals, alerts) inside `conn`'s
/// transaction; a repeated arrival or alert is ignored.
async fn write_derived_in<'a>(
    conn: &mut PgConnection,
    derived: impl Iterator<Item = &'a Derived>,
) -> Result<(), StoreError> {
    for d in derived {
        for m in &d.moves {
            upsert_move_in(conn, m).await?;
        }
        for a in &d.arrivals {
            insert_arrival_in(conn, a).await?;
        }
        for a in &d.alerts {
            sqlx::query(
                "INSERT INTO alerts (kind, vehicle, move_id, ts, detail) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT DO NOTHING",
            )
            .bind(text(&a.kind).into_owned())
            .bind(a.vehicle.as_str())
            .bind(a.move_id.as_ref().map_or("", MoveId::as_str))
            .bind(a.ts)
            .bind(text(&a.detail).into_owned())
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
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

fn move_from_row(row: &PgRow) -> Result<MoveRecord, StoreError> {
    Ok(MoveRecord {
        id: records::id(MoveId::parse, row.try_get(0)?)?,
        reference: row.try_get(1)?,
        from_location: records::id(SiteId::parse, row.try_get(2)?)?,
        to_location: records::id(SiteId::parse, row.try_get(3)?)?,
        date: row.try_get(4)?,
        status: row.try_get(5)?,
        journeys: Vec::new(),
    })
}

fn position_from_row(row: &PgRow) -> Result<Position, StoreError> {
    let corrupt = |e: model::IdError| StoreError::Corrupt(e.to_string());
    Ok(Position {
        supplier: SupplierId::parse(row.try_get(0)?).map_err(corrupt)?,
        tracking_id: row.try_get(1)?,
        vehicle: VehicleId::parse(row.try_get(2)?).map_err(corrupt)?,
        ts: row.try_get(3)?,
        lat: row.try_get(4)?,
        lon: row.try_get(5)?,
        journey_id: row
            .try_get::<Option<&str>, _>(6)?
            .map(JourneyId::parse)
            .transpose()
            .map_err(corrupt)?,
        speed_kmh: row.try_get(7)?,
        bearing: row.try_get(8)?,
        altitude: row.try_get(9)?,
        hdop: row.try_get(10)?,
        vdop: row.try_get(11)?,
        vin: row.try_get(12)?,
        flags: PointFlags::from_bits(i64::from(row.try_get::<i16, _>(13)?)),
    })
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
