//! Shared helpers for the benchmarks: realistic device payloads, fresh
//! PostgreSQL databases, a bench-owned Mosquitto.

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

/// A Mosquitto of the bench's own on a free port, with the documented
/// settings (QoS 1 never dropped: `max_queued_messages 0`, `max_queued_bytes
/// 0`) and `max_inflight_messages` as given. Killed when dropped.
pub struct BenchMosquitto {
    child: std::process::Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl BenchMosquitto {
    /// Starts it; None when `mosquitto` is not installed or does not listen within 10 s.
    pub fn start(max_inflight: usize) -> Option<BenchMosquitto> {
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().ok()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n\
                 max_queued_bytes 0\nmax_inflight_messages {max_inflight}\npersistence false\n"
            ),
        )
        .ok()?;
        let mut child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(BenchMosquitto {
            child,
            port,
            _dir: dir,
        })
    }
}

impl Drop for BenchMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
