//! How positions are laid out on PostgreSQL, as pure functions of what the
//! server offers, so the choice and the SQL are unit-tested without a
//! TimescaleDB server.
//!
//! - [`Layout::Timescale`] when the `timescaledb` extension is available: a
//!   hypertable with 1-day chunks, a compression policy and (when retention is
//!   configured) a retention policy.
//! - [`Layout::Native`] otherwise: `PARTITION BY RANGE (ts)` with one
//!   partition per UTC day, named `positions_pYYYYMMDD`, created ahead of time
//!   by [`crate::Store::maintain`], plus a `DEFAULT` partition so that no
//!   insert ever fails; retention drops whole partitions.
//!
//! Either way: a BRIN index on `ts` and a B-tree on `(vehicle, ts DESC)`.

use chrono::{DateTime, Duration, NaiveDate, Utc};

/// How the positions table is organised on PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Declarative partitioning by day on the fix time.
    Native,
    /// A TimescaleDB hypertable.
    Timescale,
}

/// Day partitions kept before today by [`partitions_to_create`].
pub const PARTITIONS_BEHIND: i64 = 7;
/// Day partitions kept after today by [`partitions_to_create`].
pub const PARTITIONS_AHEAD: i64 = 3;

/// The columns of `positions`, in table order (also the staging table's,
/// after its leading `idx`).
pub(crate) const POSITION_COLUMNS: &str = "supplier, tracking_id, vehicle, ts, lat, lon, journey_id, speed, bearing, altitude, hdop, vdop, vin, flags, received_at";

const POSITION_COLUMN_DEFS: &str = "
    supplier     text             NOT NULL,
    tracking_id  text             NOT NULL,
    vehicle      text             NOT NULL,
    ts           timestamptz      NOT NULL,
    lat          double precision NOT NULL,
    lon          double precision NOT NULL,
    journey_id   text,
    speed        double precision,
    bearing      double precision,
    altitude     double precision,
    hdop         double precision,
    vdop         double precision,
    vin          text,
    flags        smallint         NOT NULL DEFAULT 0,
    received_at  timestamptz      NOT NULL";

/// Picks the layout: an existing `positions` table keeps its layout (a store
/// is never converted behind the operator's back); a new one is a hypertable
/// when `timescaledb` is among the server's available extensions.
pub fn choose_layout(existing: Option<Layout>, available_extensions: &[String]) -> Layout {
    match existing {
        Some(layout) => layout,
        None if available_extensions.iter().any(|e| e == "timescaledb") => Layout::Timescale,
        None => Layout::Native,
    }
}

/// The statements that create the natively partitioned positions table, its
/// default partition and its indexes (idempotent).
pub fn native_positions_ddl() -> Vec<String> {
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS positions ({POSITION_COLUMN_DEFS}\n) PARTITION BY RANGE (ts)"
        ),
        "CREATE TABLE IF NOT EXISTS positions_default PARTITION OF positions DEFAULT".into(),
        "CREATE INDEX IF NOT EXISTS positions_ts_brin ON positions USING brin (ts)".into(),
        "CREATE INDEX IF NOT EXISTS positions_vehicle_ts ON positions (vehicle, ts DESC)".into(),
    ]
}

/// The statements that create the positions hypertable with 1-day chunks,
/// compression after 2 days (segmented by vehicle) and, when
/// `retention_days` is set, a retention policy (idempotent).
pub fn timescale_positions_ddl(retention_days: Option<u32>) -> Vec<String> {
    let mut ddl = vec![
        "CREATE EXTENSION IF NOT EXISTS timescaledb".to_owned(),
        format!("CREATE TABLE IF NOT EXISTS positions ({POSITION_COLUMN_DEFS}\n)"),
        "SELECT create_hypertable('positions', by_range('ts', INTERVAL '1 day'), if_not_exists => TRUE)".into(),
        "CREATE INDEX IF NOT EXISTS positions_ts_brin ON positions USING brin (ts)".into(),
        "CREATE INDEX IF NOT EXISTS positions_vehicle_ts ON positions (vehicle, ts DESC)".into(),
        "ALTER TABLE positions SET (timescaledb.compress, timescaledb.compress_segmentby = 'vehicle', timescaledb.compress_orderby = 'ts DESC')".into(),
        "SELECT add_compression_policy('positions', compress_after => INTERVAL '2 days', if_not_exists => TRUE)".into(),
    ];
    if let Some(days) = retention_days {
        ddl.extend(timescale_retention_sql(days));
    }
    ddl
}

/// Replaces the hypertable's retention policy with one of `days` days.
pub(crate) fn timescale_retention_sql(days: u32) -> Vec<String> {
    vec![
        "SELECT remove_retention_policy('positions', if_exists => TRUE)".into(),
        format!(
            "SELECT add_retention_policy('positions', drop_after => INTERVAL '{days} days', if_not_exists => TRUE)"
        ),
    ]
}

/// The name of the partition holding fixes of `day` (UTC): `positions_pYYYYMMDD`.
pub fn partition_name(day: NaiveDate) -> String {
    format!("positions_p{}", day.format("%Y%m%d"))
}

/// The day of a partition named by [`partition_name`]; `None` for any other
/// table (e.g. `positions_default`).
pub fn partition_day(name: &str) -> Option<NaiveDate> {
    let digits = name.strip_prefix("positions_p")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    NaiveDate::parse_from_str(digits, "%Y%m%d").ok()
}

fn day_start(day: NaiveDate) -> String {
    format!("{} 00:00:00+00", day.format("%Y-%m-%d"))
}

/// The statements, run in one transaction, that add the partition of `day`:
/// create it detached, move that day's rows out of the default partition
/// (attaching would fail while the default holds them), then attach it.
pub fn native_partition_ddl(day: NaiveDate) -> Vec<String> {
    let name = partition_name(day);
    let from = day_start(day);
    let to = day_start(day + Duration::days(1));
    vec![
        format!("CREATE TABLE IF NOT EXISTS {name} (LIKE positions INCLUDING DEFAULTS)"),
        format!(
            "WITH moved AS (DELETE FROM positions_default WHERE ts >= '{from}' AND ts < '{to}' RETURNING *) \
             INSERT INTO {name} SELECT * FROM moved"
        ),
        format!(
            "ALTER TABLE positions ATTACH PARTITION {name} FOR VALUES FROM ('{from}') TO ('{to}')"
        ),
    ]
}

/// The days from `today - PARTITIONS_BEHIND` to `today + PARTITIONS_AHEAD`
/// that have no partition among `existing` (table names), oldest first.
pub fn partitions_to_create(today: NaiveDate, existing: &[String]) -> Vec<NaiveDate> {
    let have: Vec<NaiveDate> = existing.iter().filter_map(|n| partition_day(n)).collect();
    (-PARTITIONS_BEHIND..=PARTITIONS_AHEAD)
        .map(|d| today + Duration::days(d))
        .filter(|day| !have.contains(day))
        .collect()
}

/// The partitions among `existing` that hold only fixes older than `cutoff`
/// (their whole day ends at or before it), oldest first. The default
/// partition is never among them.
pub fn partitions_to_drop(existing: &[String], cutoff: DateTime<Utc>) -> Vec<String> {
    let mut old: Vec<(NaiveDate, &String)> = existing
        .iter()
        .filter_map(|n| partition_day(n).map(|d| (d, n)))
        .filter(|(d, _)| {
            (*d + Duration::days(1))
                .and_hms_opt(0, 0, 0)
                .is_some_and(|end| end.and_utc() <= cutoff)
        })
        .collect();
    old.sort();
    old.into_iter().map(|(_, n)| n.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn timescale_is_chosen_only_for_new_tables_when_available() {
        let with = vec!["plpgsql".to_owned(), "timescaledb".to_owned()];
        let without = vec!["plpgsql".to_owned(), "pg_trgm".to_owned()];
        assert_eq!(choose_layout(None, &with), Layout::Timescale);
        assert_eq!(choose_layout(None, &without), Layout::Native);
        assert_eq!(choose_layout(None, &[]), Layout::Native);
        assert_eq!(choose_layout(Some(Layout::Native), &with), Layout::Native);
        assert_eq!(
            choose_layout(Some(Layout::Timescale), &without),
            Layout::Timescale
        );
    }

    #[test]
    fn timescale_ddl_has_day_chunks_compression_retention_and_indexes() {
        let ddl = timescale_positions_ddl(Some(30)).join(";\n");
        assert!(ddl.contains("CREATE EXTENSION IF NOT EXISTS timescaledb"));
        assert!(ddl.contains("by_range('ts', INTERVAL '1 day')"));
        assert!(ddl.contains("timescaledb.compress_segmentby = 'vehicle'"));
        assert!(ddl.contains("add_compression_policy('positions'"));
        assert!(ddl.contains("add_retention_policy('positions', drop_after => INTERVAL '30 days'"));
        assert!(ddl.contains("USING brin (ts)"));
        assert!(ddl.contains("(vehicle, ts DESC)"));
        assert!(!ddl.contains("PARTITION BY"));
        let without = timescale_positions_ddl(None).join(";\n");
        assert!(!without.contains("add_retention_policy"));
    }

    #[test]
    fn native_ddl_partitions_by_time_with_a_default_partition() {
        let ddl = native_positions_ddl().join(";\n");
        assert!(ddl.contains("PARTITION BY RANGE (ts)"));
        assert!(ddl.contains("PARTITION OF positions DEFAULT"));
        assert!(ddl.contains("USING brin (ts)"));
        assert!(ddl.contains("(vehicle, ts DESC)"));
        assert!(!ddl.contains("timescaledb"));
    }

    #[test]
    fn partition_names_round_trip() {
        let d = day(2026, 11, 21);
        assert_eq!(partition_name(d), "positions_p20261121");
        assert_eq!(partition_day("positions_p20261121"), Some(d));
        assert_eq!(partition_day("positions_default"), None);
        assert_eq!(partition_day("positions_p2026112"), None);
        assert_eq!(partition_day("positions_p20261341"), None);
        assert_eq!(partition_day("other_p20261121"), None);
    }

    #[test]
    fn partition_ddl_moves_default_rows_then_attaches_one_utc_day() {
        let ddl = native_partition_ddl(day(2026, 12, 31));
        assert_eq!(ddl.len(), 3);
        assert!(
            ddl[0].starts_with("CREATE TABLE IF NOT EXISTS positions_p20261231 (LIKE positions")
        );
        assert!(ddl[1].contains("DELETE FROM positions_default WHERE ts >= '2026-12-31 00:00:00+00' AND ts < '2027-01-01 00:00:00+00'"));
        assert!(ddl[2].contains(
            "ATTACH PARTITION positions_p20261231 FOR VALUES FROM ('2026-12-31 00:00:00+00') TO ('2027-01-01 00:00:00+00')"
        ));
    }

    #[test]
    fn partitions_are_created_from_a_week_back_to_three_days_ahead() {
        let today = day(2026, 11, 21);
        let all = partitions_to_create(today, &[]);
        assert_eq!(all.len(), 11);
        assert_eq!(all[0], day(2026, 11, 14));
        assert_eq!(all[10], day(2026, 11, 24));
        let existing: Vec<String> = all.iter().map(|d| partition_name(*d)).collect();
        assert!(partitions_to_create(today, &existing).is_empty());
        let next_day = partitions_to_create(day(2026, 11, 22), &existing);
        assert_eq!(next_day, vec![day(2026, 11, 25)]);
    }

    #[test]
    fn only_partitions_wholly_before_the_cutoff_are_dropped() {
        let existing: Vec<String> = vec![
            "positions_default".into(),
            partition_name(day(2026, 11, 10)),
            partition_name(day(2026, 11, 8)),
            partition_name(day(2026, 11, 9)),
            partition_name(day(2026, 11, 11)),
        ];
        // Cutoff in the middle of the 10th: the 10th still holds kept rows.
        let cutoff = Utc.with_ymd_and_hms(2026, 11, 10, 12, 0, 0).unwrap();
        assert_eq!(
            partitions_to_drop(&existing, cutoff),
            vec!["positions_p20261108", "positions_p20261109"]
        );
        // Exactly at midnight: the 10th ended.
        let midnight = Utc.with_ymd_and_hms(2026, 11, 11, 0, 0, 0).unwrap();
        assert_eq!(partitions_to_drop(&existing, midnight).len(), 3);
    }
}
