//! The embedded SQLite backend: WAL, synchronous=FULL (an acknowledged point
//! survives power loss, not only a crash), multi-row inserts in one transaction.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use model::config::WebhookConfig;
use model::{
    CommitOutcome, DeadLetter, IngestBatch, JourneyId, MoveId, PointFlags, Position, Reason,
    SiteId, SupplierId, VehicleId,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use crate::records::{
    self, AlertRecord, Arrival, Derived, FenceTransition, JourneyRecord, MoveRecord,
    SiteFenceRecord, VehicleRecord,
};
use crate::{Counts, PositionCursor, RetentionReport, StoreError, from_micros, to_micros};

/// Rows per INSERT statement: 16 columns × 500 stays under SQLite's 32766 bound variables.
const ROWS_PER_STATEMENT: usize = 500;

/// Rows per retention DELETE.
const RETENTION_BATCH: i64 = 10_000;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

#[derive(Clone, Debug)]
pub(crate) struct SqliteStore {
    pub(crate) pool: SqlitePool,
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
        Ok(SqliteStore { pool })
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
        let mut tx = self.pool.begin().await?;

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

        let letters = crate::dead_letters_of(batches, &mut outcomes);
        for chunk in letters.chunks(ROWS_PER_STATEMENT) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO dead_letters (reason, detail, supplier, topic, received_at, item_index, raw) ",
            );
            q.push_values(chunk, |mut row, d| {
                row.push_bind(d.reason.as_str())
                    .push_bind(d.detail.as_str())
                    .push_bind(d.supplier.as_deref())
                    .push_bind(d.topic.as_deref())
                    .push_bind(to_micros(&d.received_at))
                    .push_bind(d.index.map(|i| i as i64))
                    .push_bind(d.raw.as_str());
            });
            q.build().execute(&mut *tx).await?;
        }

        let events: Vec<(&IngestBatch, &model::Event)> = batches
            .iter()
            .flat_map(|b| b.events.iter().map(move |e| (b, e)))
            .collect();
        for chunk in events.chunks(ROWS_PER_STATEMENT) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO events (supplier, vehicle, event_type, occurred_at, move_id, journey_id, details, received_at) ",
            );
            q.push_values(chunk, |mut row, (b, e)| {
                row.push_bind(e.supplier.as_str())
                    .push_bind(e.vehicle.as_str())
                    .push_bind(e.kind.as_str().to_owned())
                    .push_bind(to_micros(&e.occurred_at))
                    .push_bind(e.move_id.as_ref().map(|m| m.as_str().to_owned()))
                    .push_bind(e.journey_id.as_ref().map(|j| j.as_str().to_owned()))
                    .push_bind(e.details.to_string())
                    .push_bind(to_micros(&b.received_at));
            });
            q.build().execute(&mut *tx).await?;
        }

        let transitions: Vec<&FenceTransition> =
            batches.iter().flat_map(|b| b.transitions.iter()).collect();
        for chunk in transitions.chunks(ROWS_PER_STATEMENT) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO fence_transitions (vehicle, site, kind, ts) ");
            q.push_values(chunk, |mut row, t| {
                row.push_bind(t.vehicle.as_str())
                    .push_bind(t.site.as_str())
                    .push_bind(t.kind.as_str())
                    .push_bind(to_micros(&t.ts));
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
            .map(|r| {
                let reason: &str = r.try_get(0)?;
                Ok((crate::parse_reason(reason)?, r.try_get(1)?))
            })
            .collect()
    }

    pub(crate) async fn recent_dead_letters(
        &self,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = sqlx::query(
            "SELECT reason, detail, supplier, topic, received_at, item_index, raw FROM dead_letters ORDER BY id DESC LIMIT ?",
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
                    received_at: from_micros(r.try_get(4)?)?,
                    index: r.try_get::<Option<i64>, _>(5)?.map(|i| i as usize),
                    raw: r.try_get(6)?,
                })
            })
            .collect()
    }

    pub(crate) async fn latest_positions(&self) -> Result<Vec<Position>, StoreError> {
        let rows = sqlx::query(
            "SELECT p.supplier, p.tracking_id, p.vehicle, p.ts, p.lat, p.lon, p.journey_id, p.speed, p.bearing, p.altitude, p.hdop, p.vdop, p.vin, p.flags
             FROM positions p
             JOIN (SELECT vehicle, MAX(ts) AS ts FROM positions WHERE flags = 0 GROUP BY vehicle) l
               ON p.vehicle = l.vehicle AND p.ts = l.ts
             WHERE p.flags = 0",
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
             FROM positions WHERE vehicle = ? AND ts >= ? AND ts <= ? ORDER BY ts LIMIT ?",
        )
        .bind(vehicle.as_str())
        .bind(to_micros(&from))
        .bind(to_micros(&to))
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
                     FROM positions WHERE ts >= ? AND ts <= ?
                     ORDER BY ts, supplier, tracking_id LIMIT ?",
                )
                .bind(to_micros(&from))
                .bind(to_micros(&to))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            Some(c) => {
                sqlx::query(
                    "SELECT supplier, tracking_id, vehicle, ts, lat, lon, journey_id, speed, bearing, altitude, hdop, vdop, vin, flags
                     FROM positions WHERE ts >= ? AND ts <= ? AND (ts, supplier, tracking_id) > (?, ?, ?)
                     ORDER BY ts, supplier, tracking_id LIMIT ?",
                )
                .bind(to_micros(&from))
                .bind(to_micros(&to))
                .bind(to_micros(&c.ts))
                .bind(c.supplier.as_str())
                .bind(c.tracking_id.as_str())
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(position_from_row).collect()
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
            .execute(&self.pool)
            .await?
            .rows_affected();
            report.rows_deleted += deleted;
            if deleted < RETENTION_BATCH as u64 {
                return Ok(report);
            }
        }
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
            "SELECT kind, vehicle, move_id, ts, detail FROM alerts WHERE ts >= ?
             ORDER BY ts, id LIMIT ?",
        )
        .bind(to_micros(&since))
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
                    ts: from_micros(r.try_get(3)?)?,
                    detail: r.try_get(4)?,
                })
            })
            .collect()
    }

    pub(crate) async fn get_move(&self, id: &MoveId) -> Result<Option<MoveRecord>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT id, reference, from_location, to_location, move_date, status FROM moves WHERE id = ?",
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
            "SELECT id, from_location, to_location, vehicle FROM journeys WHERE move_id = ? ORDER BY seq",
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
        let done = sqlx::query("UPDATE moves SET status = ?, updated_at = ? WHERE id = ?")
            .bind(status)
            .bind(to_micros(&Utc::now()))
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub(crate) async fn moves_on(&self, date: NaiveDate) -> Result<Vec<MoveRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, reference, from_location, to_location, move_date, status FROM moves WHERE move_date = ? ORDER BY id",
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
             ORDER BY arrived_at DESC, id DESC LIMIT ?",
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
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO fence_transitions (vehicle, site, kind, ts) ");
            q.push_values(chunk, |mut row, t| {
                row.push_bind(t.vehicle.as_str())
                    .push_bind(t.site.as_str())
                    .push_bind(t.kind.as_str())
                    .push_bind(to_micros(&t.ts));
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
             WHERE vehicle = ? AND ts >= ? AND ts <= ? ORDER BY ts, id",
        )
        .bind(vehicle.as_str())
        .bind(to_micros(&from))
        .bind(to_micros(&to))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FenceTransition {
                    vehicle: records::id(VehicleId::parse, r.try_get(0)?)?,
                    site: records::id(SiteId::parse, r.try_get(1)?)?,
                    kind: records::kind(r.try_get(2)?)?,
                    ts: from_micros(r.try_get(3)?)?,
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
                    ts: from_micros(r.try_get(3)?)?,
                })
            })
            .collect()
    }

    pub(crate) async fn put_site_fence(&self, f: &SiteFenceRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO site_fences (site, fence, updated_at) VALUES (?, ?, ?)
             ON CONFLICT (site) DO UPDATE SET fence = excluded.fence, updated_at = excluded.updated_at",
        )
        .bind(f.site.as_str())
        .bind(f.fence.as_str())
        .bind(to_micros(&f.updated_at))
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
                    updated_at: from_micros(r.try_get(2)?)?,
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
            "INSERT INTO vehicle_register (vehicle, supplier, source, updated_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (vehicle) DO UPDATE SET supplier = excluded.supplier,
                 source = excluded.source, updated_at = excluded.updated_at"
        } else {
            "INSERT INTO vehicle_register (vehicle, supplier, source, updated_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (vehicle) DO NOTHING"
        };
        let done = sqlx::query(sql)
            .bind(v.vehicle.as_str())
            .bind(v.supplier.as_str())
            .bind(v.source.as_str())
            .bind(to_micros(&v.updated_at))
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
                    "SELECT vehicle, supplier, source, updated_at FROM vehicle_register WHERE vehicle = ?",
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
                    updated_at: from_micros(r.try_get(3)?)?,
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
             WHERE from_location = ? AND site = ? ORDER BY arrived_at DESC, id DESC LIMIT ?",
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
fn arrival_from_row(r: &SqliteRow) -> Result<Arrival, StoreError> {
    Ok(Arrival {
        move_id: records::id(MoveId::parse, r.try_get(0)?)?,
        vehicle: records::id(VehicleId::parse, r.try_get(1)?)?,
        site: records::id(SiteId::parse, r.try_get(2)?)?,
        from_location: records::id(SiteId::parse, r.try_get(3)?)?,
        departed_at: from_micros(r.try_get(4)?)?,
        arrived_at: from_micros(r.try_get(5)?)?,
        distance_m: r.try_get(6)?,
    })
}

/// Upserts a move and replaces its journeys, inside `conn`'s transaction.
async fn upsert_move_in(conn: &mut SqliteConnection, m: &MoveRecord) -> Result<(), StoreError> {
    sqlx::query(
            "INSERT INTO moves (id, reference, from_location, to_location, move_date, status, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET reference = excluded.reference,
               from_location = excluded.from_location, to_location = excluded.to_location,
               move_date = excluded.move_date, status = excluded.status, updated_at = excluded.updated_at",
        )
        .bind(m.id.as_str())
        .bind(m.reference.as_str())
        .bind(m.from_location.as_str())
        .bind(m.to_location.as_str())
        .bind(m.date)
        .bind(m.status.as_str())
        .bind(to_micros(&Utc::now()))
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM journeys WHERE move_id = ?")
        .bind(m.id.as_str())
        .execute(&mut *conn)
        .await?;
    for (seq, j) in m.journeys.iter().enumerate() {
        sqlx::query(
            "INSERT INTO journeys (id, move_id, seq, from_location, to_location, vehicle)
                 VALUES (?, ?, ?, ?, ?, ?)
                 ON CONFLICT (id) DO UPDATE SET move_id = excluded.move_id, seq = excluded.seq,
                   from_location = excluded.from_location, to_location = excluded.to_location,
                   vehicle = excluded.vehicle",
        )
        .bind(j.id.as_str())
        .bind(m.id.as_str())
        .bind(seq as i64)
        .bind(j.from_location.as_str())
        .bind(j.to_location.as_str())
        .bind(j.vehicle.as_ref().map(VehicleId::as_str))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Records a completed leg; a repeat is ignored.
async fn insert_arrival_in(conn: &mut SqliteConnection, a: &Arrival) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO arrivals (move_id, vehicle, site, from_location, departed_at, arrived_at, distance_m)
         VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
    )
    .bind(a.move_id.as_str())
    .bind(a.vehicle.as_str())
    .bind(a.site.as_str())
    .bind(a.from_location.as_str())
    .bind(to_micros(&a.departed_at))
    .bind(to_micros(&a.arrived_at))
    .bind(a.distance_m)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Writes what the pipeline derived (moves, arrivals, alerts) inside `conn`'s
/// transaction; a repeated arrival or alert is ignored.
async fn write_derived_in<'a>(
    conn: &mut SqliteConnection,
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
                "INSERT INTO alerts (kind, vehicle, move_id, ts, detail) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT DO NOTHING",
            )
            .bind(a.kind.as_str())
            .bind(a.vehicle.as_str())
            .bind(a.move_id.as_ref().map_or("", MoveId::as_str))
            .bind(to_micros(&a.ts))
            .bind(a.detail.as_str())
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

fn move_from_row(row: &SqliteRow) -> Result<MoveRecord, StoreError> {
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

fn position_from_row(row: &SqliteRow) -> Result<Position, StoreError> {
    let corrupt = |e: model::IdError| StoreError::Corrupt(e.to_string());
    Ok(Position {
        supplier: SupplierId::parse(row.try_get(0)?).map_err(corrupt)?,
        tracking_id: row.try_get(1)?,
        vehicle: VehicleId::parse(row.try_get(2)?).map_err(corrupt)?,
        ts: from_micros(row.try_get(3)?)?,
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
        flags: PointFlags::from_bits(row.try_get(13)?),
    })
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
        q.build().execute(&mut *tx).await?;
        return Ok(Vec::new());
    }
    q.push(" ON CONFLICT (supplier, tracking_id) DO NOTHING RETURNING supplier, tracking_id");
    q.build()
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}
