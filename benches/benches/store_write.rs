//! Store write throughput (issue #4): 1,000,000 BaSM points through the real
//! `Store::write` path in batches of 5000 into a fresh PostgreSQL database,
//! against `psql \copy` of the same rows into the same schema (a second fresh
//! database), and the same points into a fresh SQLite file.
//!
//! Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust) and `psql`.
//!
//! ```text
//! cargo bench -p movewatch-benches --bench store_write
//! MOVEWATCH_BENCH_ROWS=200000 cargo bench -p movewatch-benches --bench store_write
//! ```

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use model::{
    CommitToken, IngestBatch, JourneyId, PointFlags, Position, Source, SupplierId, VehicleId,
};
use movewatch_benches::{fresh_pg_database, pg_admin};
use store::Store;
const BATCH: usize = 5_000;
const VEHICLES: usize = 200;

fn rows() -> usize {
    std::env::var("MOVEWATCH_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// Point `i`: 200 vans, one fix every 2 s each, over the last few hours.
fn position(i: usize, base: DateTime<Utc>) -> Position {
    let vehicle = i % VEHICLES;
    let step = i / VEHICLES;
    Position {
        supplier: SupplierId::parse("geoamey").expect("supplier"),
        vehicle: VehicleId::parse(&format!("AB{vehicle:03}CD")).expect("vehicle"),
        tracking_id: format!("5d1f0c3e-7b4a-4c1e-9f2a-{i:012}"),
        ts: base + chrono::Duration::milliseconds(step as i64 * 2000),
        lat: 53.0 + (i % 1000) as f64 * 0.000_731,
        lon: -1.5 + (i % 997) as f64 * 0.000_517,
        journey_id: Some(
            JourneyId::parse(&format!("9a2b7c1d-0000-4000-8000-{vehicle:012}")).expect("journey"),
        ),
        speed_kmh: Some(40.0 + (i % 60) as f64),
        bearing: Some((i * 7 % 360) as f64),
        altitude: Some(61.5),
        hdop: Some(1.2),
        vdop: Some(1.8),
        vin: Some("WF0XXXTTGXJA12345".into()),
        flags: PointFlags::default(),
    }
}

fn batches(n: usize, base: DateTime<Utc>, received_at: DateTime<Utc>) -> Vec<IngestBatch> {
    (0..n)
        .step_by(BATCH)
        .map(|start| IngestBatch {
            source: Source::Mqtt {
                topic: "movewatch/v1/geoamey/AB000CD/positions".into(),
            },
            received: Instant::now(),
            received_at,
            positions: (start..(start + BATCH).min(n))
                .map(|i| position(i, base))
                .collect(),
            events: vec![],
            dead_letters: vec![],
            transitions: vec![],
            derived: Default::default(),
            commit: CommitToken::detached(),
        })
        .collect()
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "\\N".into(), |v| v.to_string())
}

/// The same rows as COPY text, in the positions table's column order.
fn copy_file(batches: &[IngestBatch], path: &std::path::Path) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("copy file"));
    let fmt = "%Y-%m-%d %H:%M:%S%.6f+00";
    for b in batches {
        for p in &b.positions {
            writeln!(
                out,
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                p.supplier,
                p.tracking_id,
                p.vehicle,
                p.ts.format(fmt),
                p.lat,
                p.lon,
                p.journey_id.as_ref().map_or("\\N", JourneyId::as_str),
                opt(p.speed_kmh),
                opt(p.bearing),
                opt(p.altitude),
                opt(p.hdop),
                opt(p.vdop),
                p.vin.as_deref().unwrap_or("\\N"),
                p.flags.bits(),
                b.received_at.format(fmt),
            )
            .expect("write copy file");
        }
    }
    out.flush().expect("flush copy file");
}

/// The rows' de-duplication keys as COPY text (`position_keys`).
fn keys_file(batches: &[IngestBatch], path: &std::path::Path) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("keys file"));
    for b in batches {
        for p in &b.positions {
            writeln!(
                out,
                "{}\t{}\t{}",
                p.supplier,
                p.tracking_id,
                p.ts.format("%Y-%m-%d %H:%M:%S%.6f+00")
            )
            .expect("write keys file");
        }
    }
    out.flush().expect("flush keys file");
}

/// Times `psql -c "\copy TABLE (COLUMNS) FROM 'file'"`, psql's start included.
fn psql_copy(db: &str, table_and_columns: &str, file: &std::path::Path) -> Duration {
    let started = Instant::now();
    let status = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            db,
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
        ])
        .arg(format!(
            "\\copy {table_and_columns} FROM '{}'",
            file.display()
        ))
        .status()
        .expect("run psql");
    assert!(status.success(), "psql \\copy failed");
    started.elapsed()
}

async fn write_all(store: &Store, batches: &[IngestBatch]) -> Duration {
    let started = Instant::now();
    for b in batches {
        let out = store.write(std::slice::from_ref(b)).await.expect("write");
        assert!(out[0].duplicates.is_empty());
    }
    started.elapsed()
}

/// The engine's path: the batches through the store writer (`spawn_writer`,
/// its default of two commits in flight on PostgreSQL), until every commit
/// token has completed.
async fn write_through_writer(store: &Store, batches: Vec<IngestBatch>) -> Duration {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let (health, _) = tokio::sync::watch::channel(true);
    let writer = store::spawn_writer(store.clone(), rx, store::WriterConfig::default(), health);
    let started = Instant::now();
    let mut done = Vec::with_capacity(batches.len());
    for mut b in batches {
        let (token, committed) = model::CommitToken::new();
        b.commit = token;
        done.push(committed);
        tx.send(b).await.expect("writer running");
    }
    drop(tx);
    for committed in done {
        let outcome = committed.await.expect("committed");
        assert!(outcome.duplicates.is_empty());
    }
    let elapsed = started.elapsed();
    writer.await.expect("writer ends");
    elapsed
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not run this.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = rows();
    let base = Utc::now() - chrono::Duration::hours(6);
    let received_at = Utc::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    println!("store_write: {n} points, batches of {BATCH}, {VEHICLES} vehicles");

    // Store::write into PostgreSQL.
    let store_db = format!("movewatch_bench_store_{}", std::process::id());
    let store = Store::open(&fresh_pg_database(&store_db).await)
        .await
        .expect("open pg");
    let data = batches(n, base, received_at);
    let store_time = write_all(&store, &data).await;
    assert_eq!(store.counts().await.expect("counts").positions, n as i64);
    drop(store);

    // The same through the engine's writer (two commits in flight).
    let writer_db = format!("movewatch_bench_writer_{}", std::process::id());
    let writer_store = Store::open(&fresh_pg_database(&writer_db).await)
        .await
        .expect("open pg");
    let writer_time = write_through_writer(&writer_store, batches(n, base, received_at)).await;
    assert_eq!(
        writer_store.counts().await.expect("counts").positions,
        n as i64
    );
    drop(writer_store);

    // psql \copy of the same rows into the same schema.
    let copy_db = format!("movewatch_bench_copy_{}", std::process::id());
    let copy_url = fresh_pg_database(&copy_db).await;
    let schema = Store::open(&copy_url).await.expect("open pg for copy");
    let file = tmp.path().join("positions.tsv");
    copy_file(&data, &file);
    let copy_time = psql_copy(
        &copy_db,
        "positions (supplier, tracking_id, vehicle, ts, lat, lon, journey_id, speed, bearing, altitude, hdop, vdop, vin, flags, received_at)",
        &file,
    );
    // The floor of any design with a separate key table: the keys copied too.
    let keys = tmp.path().join("keys.tsv");
    keys_file(&data, &keys);
    let keys_time = psql_copy(&copy_db, "position_keys (supplier, tracking_id, ts)", &keys);
    assert_eq!(schema.counts().await.expect("counts").positions, n as i64);
    drop(schema);

    // Store::write into SQLite.
    let sqlite = Store::open(&format!("sqlite://{}/bench.db", tmp.path().display()))
        .await
        .expect("open sqlite");
    let sqlite_time = write_all(&sqlite, &data).await;
    assert_eq!(sqlite.counts().await.expect("counts").positions, n as i64);
    drop(sqlite);

    pg_admin(format!("DROP DATABASE IF EXISTS {store_db} WITH (FORCE)")).await;
    pg_admin(format!("DROP DATABASE IF EXISTS {copy_db} WITH (FORCE)")).await;
    pg_admin(format!("DROP DATABASE IF EXISTS {writer_db} WITH (FORCE)")).await;

    let store_rate = rate(n, store_time);
    let copy_rate = rate(n, copy_time);
    println!();
    println!("| path                                   | rows      | seconds | rows/s  |");
    println!("|----------------------------------------|-----------|---------|---------|");
    for (name, d) in [
        ("Store::write → PostgreSQL (COPY+dedup)", store_time),
        ("store writer → PostgreSQL (2 in flight)", writer_time),
        ("psql \\copy → PostgreSQL positions", copy_time),
        ("  … plus psql \\copy of the keys", copy_time + keys_time),
        ("Store::write → SQLite", sqlite_time),
    ] {
        println!(
            "| {name:<38} | {n:>9} | {:>7.2} | {:>7.0} |",
            d.as_secs_f64(),
            rate(n, d)
        );
    }
    println!();
    println!(
        "store / psql \\copy = {:.1} % (target ≥ 80 %)",
        100.0 * store_rate / copy_rate
    );
    println!(
        "store writer (2 commits in flight) / psql \\copy = {:.1} % (target ≥ 80 %)",
        100.0 * rate(n, writer_time) / copy_rate
    );
    println!(
        "store / (psql \\copy of positions + keys) = {:.1} %",
        100.0 * store_rate / rate(n, copy_time + keys_time)
    );
}
