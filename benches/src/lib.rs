//! Shared helpers for the benchmarks: realistic device payloads, fresh
//! PostgreSQL databases.

use chrono::{Duration, Utc};

/// One contract point as a device sends it, numbered `i`.
pub fn point_json(vehicle: &str, i: usize) -> String {
    let ts = Utc::now() - Duration::seconds(3600 - (i % 3600) as i64);
    format!(
        r#"{{"tracking_id":"{vehicle}-{i}","tracking_timestamp":"{}","vehicle_registration":"{vehicle}","latitude":{},"longitude":{},"journey_id":"5d1f0c3e-7b4a-4c1e-9f2a-{i:012}","speed":{},"bearing":{},"altitude":61.5,"precision_hdop":1.2,"precision_vdop":1.8,"vehicle_vin":"WF0XXXTTGXJA12345"}}"#,
        ts.to_rfc3339(),
        53.0 + (i % 1000) as f64 * 0.000_731,
        -1.5 + (i % 997) as f64 * 0.000_517,
        40.0 + (i % 60) as f64,
        (i * 7 % 360) as f64,
    )
}

/// A store-and-forward point: the required fields with speed, bearing and
/// hdop, as units send after a gap (a 1000-point array of full points would
/// exceed the contract's 256 KiB).
pub fn compact_point_json(vehicle: &str, i: usize) -> String {
    let ts = Utc::now() - Duration::seconds(3600 - (i % 3600) as i64);
    format!(
        r#"{{"tracking_id":"{vehicle}-{i}","tracking_timestamp":"{}","vehicle_registration":"{vehicle}","latitude":{},"longitude":{},"speed":{},"bearing":{},"precision_hdop":1.2}}"#,
        ts.format("%Y-%m-%dT%H:%M:%SZ"),
        53.0 + (i % 1000) as f64 * 0.000_731,
        -1.5 + (i % 997) as f64 * 0.000_517,
        40.0 + (i % 60) as f64,
        (i * 7 % 360) as f64,
    )
}

/// An array payload of `n` compact points (under 256 KiB for n = 1000).
pub fn array_json(vehicle: &str, n: usize) -> String {
    let points: Vec<String> = (0..n).map(|i| compact_point_json(vehicle, i)).collect();
    format!("[{}]", points.join(","))
}

/// The PostgreSQL server the benchmarks use (user postgres, trust auth).
pub const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// Runs one statement on the server's `postgres` database.
pub async fn pg_admin(sql: String) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&format!("{PG_SERVER}/postgres"))
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .expect("admin statement");
    conn.close().await.expect("close");
}

/// An empty database `name` (dropped first if it exists); returns its URL.
pub async fn fresh_pg_database(name: &str) -> String {
    pg_admin(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
    pg_admin(format!("CREATE DATABASE {name}")).await;
    format!("{PG_SERVER}/{name}")
}
