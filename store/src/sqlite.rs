//! The embedded SQLite backend: WAL, synchronous=FULL (an acknowledged point
//! survives power loss, not only a crash), multi-row inserts in one transaction.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use model::{
    CommitOutcome, DeadLetter, IngestBatch, JourneyId, PointFlags, Position, Reason, SupplierId,
    VehicleId,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};

use crate::{Counts, StoreError, from_micros, to_micros};

/// Rows per INSERT statement: 16 columns × 500 stays under SQLite's 32766 bound variables.
const ROWS_PER_STATEMENT: usize = 500;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

#[derive(Clone, Debug)]
pub(crate) struct SqliteStore {
    pool: SqlitePool,
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
    ) -> Result<Vec<CommitOutcome>, StoreError> {
        let mut outcomes = vec![CommitOutcome::default(); batches.len()];
        let mut tx = self.pool.begin().await?;

        // First occurrences in this transaction go to INSERT; repeats within it are duplicates outright.
        let mut first: Vec<(usize, usize, &Position)> = Vec::new();
        let mut seen: HashSet<(SupplierId, &str)> = HashSet::new();
        for (b, batch) in batches.iter().enumerate() {
            for (i, p) in batch.positions.iter().enumerate() {
                if seen.insert((p.supplier, p.tracking_id.as_str())) {
                    first.push((b, i, p));
                } else {
                    outcomes[b].duplicates.push(i);
                }
            }
        }

        let mut inserted: HashSet<(String, String)> = HashSet::with_capacity(first.len());
        for chunk in first.chunks(ROWS_PER_STATEMENT) {
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
            q.push(
                " ON CONFLICT (supplier, tracking_id) DO NOTHING RETURNING supplier, tracking_id",
            );
            for row in q.build().fetch_all(&mut *tx).await? {
                inserted.insert((row.try_get(0)?, row.try_get(1)?));
            }
        }
        for (b, i, p) in &first {
            if !inserted.contains(&(p.supplier.as_str().to_owned(), p.tracking_id.clone())) {
                outcomes[*b].duplicates.push(*i);
            }
        }

        let mut letters: Vec<DeadLetter> = Vec::new();
        for (batch, outcome) in batches.iter().zip(&mut outcomes) {
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
                    index: Some(i),
                    raw: serde_json::to_string(&p.to_wire()).unwrap_or_default(),
                });
            }
        }
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
                let reason: String = r.try_get(0)?;
                let reason = Reason::parse(&reason)
                    .ok_or_else(|| StoreError::Corrupt(format!("reason {reason}")))?;
                Ok((reason, r.try_get(1)?))
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
                let reason: String = r.try_get(0)?;
                Ok(DeadLetter {
                    reason: Reason::parse(&reason)
                        .ok_or_else(|| StoreError::Corrupt(format!("reason {reason}")))?,
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
