//! The SQL both backends share, written once and generic over the database.
//!
//! SQLite and PostgreSQL take the same statements here: `$N` placeholders
//! (SQLite reads `$N` as parameter N), `ON CONFLICT … DO UPDATE SET x =
//! excluded.x` upserts and `ON CONFLICT DO NOTHING`. What differs is small
//! and lives in [`Dialect`]: how a time column is stored (integer
//! microseconds on SQLite, `timestamptz` on PostgreSQL), the width of the
//! `flags` column, text PostgreSQL cannot hold (NUL), the JSON cast of event
//! details, the statement size limit, and the query for each vehicle's latest
//! point (PostgreSQL walks the index instead of grouping the whole table).
//!
//! What really differs stays in the backends: opening, writing positions
//! (multi-row INSERT on SQLite, binary COPY on PostgreSQL), day partitions and
//! retention.

use std::borrow::Cow;
use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use model::config::WebhookConfig;
use model::{
    CommitOutcome, DeadLetter, IngestBatch, JourneyId, MoveId, PointFlags, Position, Reason,
    SiteId, SupplierId, VehicleId,
};
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, QueryBuilder, Row, Type,
};

use crate::records::{
    self, AlertRecord, Arrival, Derived, FenceTransition, JourneyRecord, MoveRecord,
    SiteFenceRecord, VehicleRecord,
};
use crate::{Counts, PositionCursor, StoreError};

/// What one backend spells differently in the shared SQL.
pub(crate) trait Dialect: Database {
    /// A stored time: `i64` microseconds on SQLite, `timestamptz` on PostgreSQL.
    type Time: for<'e> Encode<'e, Self> + for<'r> Decode<'r, Self> + Type<Self> + Send;
    /// The `positions.flags` column (`INTEGER` on SQLite, `smallint` on PostgreSQL).
    type Flags: for<'r> Decode<'r, Self> + Type<Self> + Into<i64>;
    /// Rows per multi-row INSERT, within the backend's bound-parameter limit.
    const ROWS_PER_STATEMENT: usize;
    /// Appended after the event details' parameter (PostgreSQL's column is `json`).
    const JSON_CAST: &'static str;
    /// The newest usable point of every vehicle, selected as [`POSITION_COLUMNS`].
    const LATEST_POSITIONS: &'static str;

    fn time(ts: &DateTime<Utc>) -> Self::Time;
    fn from_time(t: Self::Time) -> Result<DateTime<Utc>, StoreError>;
    /// Text as the backend can store it.
    fn text(s: &str) -> Cow<'_, str>;
    fn rows_affected(r: &Self::QueryResult) -> u64;
}

/// The columns a [`Position`] is read from, in [`SqlStore::position`]'s order.
pub(crate) const POSITION_COLUMNS: &str = "supplier, tracking_id, vehicle, ts, lat, lon, journey_id, speed, bearing, altitude, hdop, vdop, vin, flags";

/// The shared store over one backend's pool.
#[derive(Debug)]
pub(crate) struct SqlStore<DB: Database> {
    pub(crate) pool: Pool<DB>,
}

impl<DB: Database> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        SqlStore {
            pool: self.pool.clone(),
        }
    }
}

impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    usize: ColumnIndex<DB::Row>,
    for<'e> Option<&'e str>: Encode<'e, DB>,
    for<'e> Option<String>: Encode<'e, DB>,
    for<'e> Option<i64>: Encode<'e, DB>,
    for<'e> &'e str: Encode<'e, DB> + Decode<'e, DB> + Type<DB>,
    for<'e> String: Encode<'e, DB> + Decode<'e, DB> + Type<DB>,
    for<'e> i64: Encode<'e, DB> + Decode<'e, DB> + Type<DB>,
    for<'e> i32: Encode<'e, DB> + Type<DB>,
    for<'e> f64: Encode<'e, DB> + Decode<'e, DB> + Type<DB>,
    for<'e> NaiveDate: Encode<'e, DB> + Decode<'e, DB> + Type<DB>,
{
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query::<DB>("SELECT 1").execute(&mut *conn).await?;
        Ok(())
    }

    /// Everything of a transaction but its positions (which each backend
    /// writes its own way, first): dead letters (the batches' own and one
    /// per duplicate), events, fence crossings, derived records and the
    /// webhooks' outbox rows.
    pub(crate) async fn write_rest(
        conn: &mut DB::Connection,
        batches: &[IngestBatch],
        outcomes: &mut [CommitOutcome],
        hooks: &[WebhookConfig],
        origin: Option<&[Vec<usize>]>,
    ) -> Result<(), StoreError> {
        let letters = crate::dead_letters_of(batches, outcomes, origin);
        for chunk in letters.chunks(DB::ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<DB>::new(
                "INSERT INTO dead_letters (reason, detail, supplier, topic, received_at, item_index, raw) ",
            );
            q.push_values(chunk, |mut row, d| {
                row.push_bind(d.reason.as_str())
                    .push_bind(DB::text(&d.detail).into_owned())
                    .push_bind(d.supplier.as_deref().map(|s| DB::text(s).into_owned()))
                    .push_bind(d.topic.as_deref().map(|s| DB::text(s).into_owned()))
                    .push_bind(DB::time(&d.received_at))
                    .push_bind(d.index.map(|i| i as i64))
                    .push_bind(DB::text(&d.raw).into_owned());
            });
            q.build().execute(&mut *conn).await?;
        }

        let events: Vec<(&IngestBatch, &model::Event)> = batches
            .iter()
            .flat_map(|b| b.events.iter().map(move |e| (b, e)))
            .collect();
        for chunk in events.chunks(DB::ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<DB>::new(
                "INSERT INTO events (supplier, vehicle, event_type, occurred_at, move_id, journey_id, details, received_at) ",
            );
            q.push_values(chunk, |mut row, (b, e)| {
                row.push_bind(e.supplier.as_str())
                    .push_bind(e.vehicle.as_str())
                    .push_bind(DB::text(e.kind.as_str()).into_owned())
                    .push_bind(DB::time(&e.occurred_at))
                    .push_bind(e.move_id.as_ref().map(MoveId::as_str))
                    .push_bind(e.journey_id.as_ref().map(JourneyId::as_str))
                    .push_bind(e.details.to_string())
                    .push_unseparated(DB::JSON_CAST)
                    .push_bind(DB::time(&b.received_at));
            });
            q.build().execute(&mut *conn).await?;
        }

        let transitions: Vec<&FenceTransition> =
            batches.iter().flat_map(|b| b.transitions.iter()).collect();
        Self::insert_transitions_in(conn, &transitions).await?;
        Self::write_derived_in(conn, batches.iter().map(|b| &b.derived)).await?;
        crate::outbox::queue_notifications!(conn, hooks, batches.iter().map(|b| &b.derived));
        Ok(())
    }

    async fn insert_transitions_in(
        conn: &mut DB::Connection,
        transitions: &[&FenceTransition],
    ) -> Result<(), StoreError> {
        for chunk in transitions.chunks(DB::ROWS_PER_STATEMENT) {
            let mut q =
                QueryBuilder::<DB>::new("INSERT INTO fence_transitions (vehicle, site, kind, ts) ");
            q.push_values(chunk, |mut row, t| {
                row.push_bind(t.vehicle.as_str())
                    .push_bind(t.site.as_str())
                    .push_bind(t.kind.as_str())
                    .push_bind(DB::time(&t.ts));
            });
            q.build().execute(&mut *conn).await?;
        }
        Ok(())
    }

    pub(crate) async fn counts(&self) -> Result<Counts, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let row = sqlx::query::<DB>(
            "SELECT (SELECT COUNT(*) FROM positions), (SELECT COUNT(*) FROM events), (SELECT COUNT(*) FROM dead_letters)",
        )
        .fetch_one(&mut *conn)
        .await?;
        Ok(Counts {
            positions: row.try_get(0)?,
            events: row.try_get(1)?,
            dead_letters: row.try_get(2)?,
        })
    }

    pub(crate) async fn dead_letter_counts(&self) -> Result<Vec<(Reason, i64)>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let rows = sqlx::query::<DB>(
            "SELECT reason, COUNT(*) FROM dead_letters GROUP BY reason ORDER BY reason",
        )
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| Ok((crate::parse_reason(r.try_get(0)?)?, r.try_get(1)?)))
            .collect()
    }

    pub(crate) async fn recent_dead_letters(
        &self,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let rows = sqlx::query::<DB>(
            "SELECT reason, detail, supplier, topic, received_at, item_index, raw FROM dead_letters ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeadLetter {
                    reason: crate::parse_reason(r.try_get(0)?)?,
                    detail: r.try_get(1)?,
                    supplier: r.try_get(2)?,
                    topic: r.try_get(3)?,
                    received_at: DB::from_time(r.try_get(4)?)?,
                    index: r.try_get::<Option<i64>, _>(5)?.map(|i| i as usize),
                    raw: r.try_get(6)?,
                })
            })
            .collect()
    }

    pub(crate) async fn latest_positions(&self) -> Result<Vec<Position>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let rows = sqlx::query::<DB>(DB::LATEST_POSITIONS)
            .fetch_all(&mut *conn)
            .await?;
        let mut latest: HashMap<VehicleId, Position> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let p = Self::position(row)?;
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
        let mut conn = self.pool.acquire().await?;
        let sql = format!(
            "SELECT {POSITION_COLUMNS} FROM positions
             WHERE vehicle = $1 AND ts >= $2 AND ts <= $3 ORDER BY ts LIMIT $4"
        );
        let rows = sqlx::query::<DB>(sqlx::AssertSqlSafe(sql))
            .bind(vehicle.as_str())
            .bind(DB::time(&from))
            .bind(DB::time(&to))
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?;
        rows.iter().map(Self::position).collect()
    }

    pub(crate) async fn positions_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<&PositionCursor>,
        limit: i64,
    ) -> Result<Vec<Position>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let rows = match after {
            None => {
                let sql = format!(
                    "SELECT {POSITION_COLUMNS} FROM positions WHERE ts >= $1 AND ts <= $2
                     ORDER BY ts, supplier, tracking_id LIMIT $3"
                );
                sqlx::query::<DB>(sqlx::AssertSqlSafe(sql))
                    .bind(DB::time(&from))
                    .bind(DB::time(&to))
                    .bind(limit)
                    .fetch_all(&mut *conn)
                    .await?
            }
            Some(c) => {
                // `ts >= $3` on its own lets PostgreSQL prune partitions.
                let sql = format!(
                    "SELECT {POSITION_COLUMNS} FROM positions WHERE ts >= $1 AND ts <= $2 AND ts >= $3
                       AND (ts, supplier, tracking_id) > ($3, $4, $5)
                     ORDER BY ts, supplier, tracking_id LIMIT $6"
                );
                sqlx::query::<DB>(sqlx::AssertSqlSafe(sql))
                    .bind(DB::time(&from))
                    .bind(DB::time(&to))
                    .bind(DB::time(&c.ts))
                    .bind(c.supplier.as_str())
                    .bind(DB::text(&c.tracking_id).into_owned())
                    .bind(limit)
                    .fetch_all(&mut *conn)
                    .await?
            }
        };
        rows.iter().map(Self::position).collect()
    }

    pub(crate) async fn upsert_move(&self, m: &MoveRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        Self::upsert_move_in(&mut tx, m).await?;
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
        Self::write_derived_in(&mut tx, std::iter::once(d)).await?;
        crate::outbox::queue_notifications!(tx, hooks, std::iter::once(d));
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn alerts_since(
        &self,
        since: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<AlertRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let rows = sqlx::query::<DB>(
            "SELECT kind, vehicle, move_id, ts, detail FROM alerts WHERE ts >= $1
             ORDER BY ts, id LIMIT $2",
        )
        .bind(DB::time(&since))
        .bind(limit)
        .fetch_all(&mut *conn)
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
                    ts: DB::from_time(r.try_get(3)?)?,
                    detail: r.try_get(4)?,
                })
            })
            .collect()
    }

    pub(crate) async fn get_move(&self, id: &MoveId) -> Result<Option<MoveRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let Some(row) = sqlx::query::<DB>(
            "SELECT id, reference, from_location, to_location, move_date, status FROM moves WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await?
        else {
            return Ok(None);
        };
        let mut m = Self::move_record(&row)?;
        m.journeys = Self::journeys_of(&mut conn, &m.id).await?;
        Ok(Some(m))
    }

    async fn journeys_of(
        conn: &mut DB::Connection,
        id: &MoveId,
    ) -> Result<Vec<JourneyRecord>, StoreError> {
        let rows = sqlx::query::<DB>(
            "SELECT id, from_location, to_location, vehicle FROM journeys WHERE move_id = $1 ORDER BY seq",
        )
        .bind(id.as_str())
        .fetch_all(&mut *conn)
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
        let mut conn = self.pool.acquire().await?;
        let done = sqlx::query::<DB>("UPDATE moves SET status = $1, updated_at = $2 WHERE id = $3")
            .bind(DB::text(status).into_owned())
            .bind(DB::time(&Utc::now()))
            .bind(id.as_str())
            .execute(&mut *conn)
            .await?;
        Ok(DB::rows_affected(&done) > 0)
    }

    pub(crate) async fn moves_on(&self, date: NaiveDate) -> Result<Vec<MoveRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let rows = sqlx::query::<DB>(
            "SELECT id, reference, from_location, to_location, move_date, status FROM moves WHERE move_date = $1 ORDER BY id",
        )
        .bind(date)
        .fetch_all(&mut *conn)
        .await?;
        Self::moves_with_journeys(&mut conn, &rows).await
    }

    pub(crate) async fn open_moves(&self) -> Result<Vec<MoveRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let rows = sqlx::query::<DB>(
            "SELECT id, reference, from_location, to_location, move_date, status FROM moves
             WHERE status IN ('booked', 'in_transit', 'arrived') ORDER BY id",
        )
        .fetch_all(&mut *conn)
        .await?;
        Self::moves_with_journeys(&mut conn, &rows).await
    }

    async fn moves_with_journeys(
        conn: &mut DB::Connection,
        rows: &[DB::Row],
    ) -> Result<Vec<MoveRecord>, StoreError> {
        let mut moves = Vec::with_capacity(rows.len());
        for row in rows {
            let mut m = Self::move_record(row)?;
            m.journeys = Self::journeys_of(conn, &m.id).await?;
            moves.push(m);
        }
        Ok(moves)
    }

    pub(crate) async fn recent_arrivals(&self, limit: i64) -> Result<Vec<Arrival>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let rows = sqlx::query::<DB>(
            "SELECT move_id, vehicle, site, from_location, departed_at, arrived_at, distance_m FROM arrivals
             ORDER BY arrived_at DESC, id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(Self::arrival).collect()
    }

    pub(crate) async fn insert_fence_transitions(
        &self,
        transitions: &[FenceTransition],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let transitions: Vec<&FenceTransition> = transitions.iter().collect();
        Self::insert_transitions_in(&mut tx, &transitions).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn fence_transitions(
        &self,
        vehicle: &VehicleId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<FenceTransition>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let rows = sqlx::query::<DB>(
            "SELECT vehicle, site, kind, ts FROM fence_transitions
             WHERE vehicle = $1 AND ts >= $2 AND ts <= $3 ORDER BY ts, id",
        )
        .bind(vehicle.as_str())
        .bind(DB::time(&from))
        .bind(DB::time(&to))
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(Self::transition).collect()
    }

    pub(crate) async fn latest_fence_transitions(
        &self,
    ) -> Result<Vec<FenceTransition>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let rows = sqlx::query::<DB>(
            "SELECT vehicle, site, kind, ts FROM (
                 SELECT vehicle, site, kind, ts, ROW_NUMBER() OVER (
                     PARTITION BY vehicle, site ORDER BY ts DESC, id DESC) AS n
                 FROM fence_transitions) AS latest
             WHERE n = 1 ORDER BY vehicle, site",
        )
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(Self::transition).collect()
    }

    pub(crate) async fn put_site_fence(&self, f: &SiteFenceRecord) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query::<DB>(
            "INSERT INTO site_fences (site, fence, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (site) DO UPDATE SET fence = excluded.fence, updated_at = excluded.updated_at",
        )
        .bind(f.site.as_str())
        .bind(f.fence.as_str())
        .bind(DB::time(&f.updated_at))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    pub(crate) async fn site_fences(&self) -> Result<Vec<SiteFenceRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let rows =
            sqlx::query::<DB>("SELECT site, fence, updated_at FROM site_fences ORDER BY site")
                .fetch_all(&mut *conn)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(SiteFenceRecord {
                    site: records::id(SiteId::parse, r.try_get(0)?)?,
                    fence: r.try_get(1)?,
                    updated_at: DB::from_time(r.try_get(2)?)?,
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
        let mut conn = self.pool.acquire().await?;
        let done = sqlx::query::<DB>(sql)
            .bind(v.vehicle.as_str())
            .bind(v.supplier.as_str())
            .bind(v.source.as_str())
            .bind(DB::time(&v.updated_at))
            .execute(&mut *conn)
            .await?;
        Ok(DB::rows_affected(&done) > 0)
    }

    pub(crate) async fn vehicle_register(
        &self,
        only: Option<&VehicleId>,
    ) -> Result<Vec<VehicleRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let rows = match only {
            Some(v) => {
                sqlx::query::<DB>(
                    "SELECT vehicle, supplier, source, updated_at FROM vehicle_register WHERE vehicle = $1",
                )
                .bind(v.as_str())
                .fetch_all(&mut *conn)
                .await?
            }
            None => {
                sqlx::query::<DB>(
                    "SELECT vehicle, supplier, source, updated_at FROM vehicle_register ORDER BY vehicle",
                )
                .fetch_all(&mut *conn)
                .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok(VehicleRecord {
                    vehicle: records::id(VehicleId::parse, r.try_get(0)?)?,
                    supplier: records::id(SupplierId::parse, r.try_get(1)?)?,
                    source: r.try_get(2)?,
                    updated_at: DB::from_time(r.try_get(3)?)?,
                })
            })
            .collect()
    }

    pub(crate) async fn insert_arrival(&self, a: &Arrival) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        Self::insert_arrival_in(&mut conn, a).await
    }

    pub(crate) async fn arrivals(
        &self,
        from_location: &SiteId,
        site: &SiteId,
        limit: i64,
    ) -> Result<Vec<Arrival>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let rows = sqlx::query::<DB>(
            "SELECT move_id, vehicle, site, from_location, departed_at, arrived_at, distance_m FROM arrivals
             WHERE from_location = $1 AND site = $2 ORDER BY arrived_at DESC, id DESC LIMIT $3",
        )
        .bind(from_location.as_str())
        .bind(site.as_str())
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(Self::arrival).collect()
    }

    /// Upserts a move and replaces its journeys, inside `conn`'s transaction.
    async fn upsert_move_in(conn: &mut DB::Connection, m: &MoveRecord) -> Result<(), StoreError> {
        sqlx::query::<DB>(
            "INSERT INTO moves (id, reference, from_location, to_location, move_date, status, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (id) DO UPDATE SET reference = excluded.reference,
               from_location = excluded.from_location, to_location = excluded.to_location,
               move_date = excluded.move_date, status = excluded.status, updated_at = excluded.updated_at",
        )
        .bind(m.id.as_str())
        .bind(DB::text(&m.reference).into_owned())
        .bind(m.from_location.as_str())
        .bind(m.to_location.as_str())
        .bind(m.date)
        .bind(DB::text(&m.status).into_owned())
        .bind(DB::time(&Utc::now()))
        .execute(&mut *conn)
        .await?;
        sqlx::query::<DB>("DELETE FROM journeys WHERE move_id = $1")
            .bind(m.id.as_str())
            .execute(&mut *conn)
            .await?;
        for (seq, j) in m.journeys.iter().enumerate() {
            sqlx::query::<DB>(
                "INSERT INTO journeys (id, move_id, seq, from_location, to_location, vehicle)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET move_id = excluded.move_id, seq = excluded.seq,
                   from_location = excluded.from_location, to_location = excluded.to_location,
                   vehicle = excluded.vehicle",
            )
            .bind(j.id.as_str())
            .bind(m.id.as_str())
            // PostgreSQL's column is `integer`.
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
    async fn insert_arrival_in(conn: &mut DB::Connection, a: &Arrival) -> Result<(), StoreError> {
        sqlx::query::<DB>(
            "INSERT INTO arrivals (move_id, vehicle, site, from_location, departed_at, arrived_at, distance_m)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(a.move_id.as_str())
        .bind(a.vehicle.as_str())
        .bind(a.site.as_str())
        .bind(a.from_location.as_str())
        .bind(DB::time(&a.departed_at))
        .bind(DB::time(&a.arrived_at))
        .bind(a.distance_m)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Writes what the pipeline derived (moves, arrivals, alerts) inside
    /// `conn`'s transaction; a repeated arrival or alert is ignored.
    async fn write_derived_in<'a>(
        conn: &mut DB::Connection,
        derived: impl Iterator<Item = &'a Derived>,
    ) -> Result<(), StoreError> {
        for d in derived {
            for m in &d.moves {
                Self::upsert_move_in(conn, m).await?;
            }
            for a in &d.arrivals {
                Self::insert_arrival_in(conn, a).await?;
            }
            for a in &d.alerts {
                sqlx::query::<DB>(
                    "INSERT INTO alerts (kind, vehicle, move_id, ts, detail) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT DO NOTHING",
                )
                .bind(DB::text(&a.kind).into_owned())
                .bind(a.vehicle.as_str())
                .bind(a.move_id.as_ref().map_or("", MoveId::as_str))
                .bind(DB::time(&a.ts))
                .bind(DB::text(&a.detail).into_owned())
                .execute(&mut *conn)
                .await?;
            }
        }
        Ok(())
    }

    /// An `arrivals` row selected as `move_id, vehicle, site, from_location,
    /// departed_at, arrived_at, distance_m`.
    fn arrival(r: &DB::Row) -> Result<Arrival, StoreError> {
        Ok(Arrival {
            move_id: records::id(MoveId::parse, r.try_get(0)?)?,
            vehicle: records::id(VehicleId::parse, r.try_get(1)?)?,
            site: records::id(SiteId::parse, r.try_get(2)?)?,
            from_location: records::id(SiteId::parse, r.try_get(3)?)?,
            departed_at: DB::from_time(r.try_get(4)?)?,
            arrived_at: DB::from_time(r.try_get(5)?)?,
            distance_m: r.try_get(6)?,
        })
    }

    /// A `fence_transitions` row selected as `vehicle, site, kind, ts`.
    fn transition(r: &DB::Row) -> Result<FenceTransition, StoreError> {
        Ok(FenceTransition {
            vehicle: records::id(VehicleId::parse, r.try_get(0)?)?,
            site: records::id(SiteId::parse, r.try_get(1)?)?,
            kind: records::kind(r.try_get(2)?)?,
            ts: DB::from_time(r.try_get(3)?)?,
        })
    }

    fn move_record(row: &DB::Row) -> Result<MoveRecord, StoreError> {
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

    /// A point selected as [`POSITION_COLUMNS`].
    fn position(row: &DB::Row) -> Result<Position, StoreError> {
        let corrupt = |e: model::IdError| StoreError::Corrupt(e.to_string());
        Ok(Position {
            supplier: SupplierId::parse(row.try_get(0)?).map_err(corrupt)?,
            tracking_id: row.try_get(1)?,
            vehicle: VehicleId::parse(row.try_get(2)?).map_err(corrupt)?,
            ts: DB::from_time(row.try_get(3)?)?,
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
            flags: PointFlags::from_bits(row.try_get::<DB::Flags, _>(13)?.into()),
        })
    }
}
