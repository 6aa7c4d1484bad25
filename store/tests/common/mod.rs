//! Test fixtures shared by the store's integration tests: fresh databases
//! (a temporary SQLite file, or a uniquely named PostgreSQL database on the
//! real server at 127.0.0.1:5432 that is dropped afterwards) and test data.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use chrono::{DateTime, Duration, TimeZone, Utc};
use model::{CommitToken, DeadLetter, IngestBatch, Position, Source, SupplierId, VehicleId};
use movewatch_store::Store;
use sqlx::{Connection, PgConnection};

/// The PostgreSQL server the tests use (override with `MOVEWATCH_TEST_PG`).
pub fn pg_server() -> String {
    std::env::var("MOVEWATCH_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A fresh, empty database that is removed when dropped.
pub enum TestDb {
    /// A file in a temporary directory.
    Sqlite { dir: tempfile::TempDir, url: String },
    /// A database created for this test on the real server.
    Postgres { name: String, url: String },
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/nested/store.db", dir.path().display());
        TestDb::Sqlite { dir, url }
    }

    pub async fn postgres() -> TestDb {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "movewatch_test_{}_{}_{}",
            std::process::id(),
            nanos,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = PgConnection::connect(&format!("{}/postgres", pg_server()))
            .await
            .expect("PostgreSQL at 127.0.0.1:5432 (user postgres, trust) must be running");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        let url = format!("{}/{name}", pg_server());
        TestDb::Postgres { name, url }
    }

    pub fn url(&self) -> &str {
        match self {
            TestDb::Sqlite { url, .. } | TestDb::Postgres { url, .. } => url,
        }
    }

    pub async fn open(&self) -> Store {
        Store::open(self.url()).await.unwrap()
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, TestDb::Postgres { .. })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let TestDb::Postgres { name, .. } = self else {
            return;
        };
        let name = name.clone();
        // Drop runs inside the test's runtime: use a thread with its own.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut admin = PgConnection::connect(&format!("{}/postgres", pg_server())).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await?;
                admin.close().await
            })
        })
        .join();
        if !matches!(done, Ok(Ok(()))) {
            eprintln!("could not drop the test database: {done:?}");
        }
    }
}

/// A fix time: `minute` minutes after 09:00 UTC today.
pub fn at(minute: i64) -> DateTime<Utc> {
    let today = Utc::now()
        .date_naive()
        .and_hms_opt(9, 0, 0)
        .unwrap()
        .and_utc();
    today + Duration::minutes(minute)
}

/// A fixed point in time far from today (for tests that do not care).
pub fn fixed(minute: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 21, 9, 0, 0).unwrap() + Duration::minutes(minute)
}

pub fn point(vehicle: &str, tracking_id: &str, minute: i64) -> Position {
    Position {
        speed_kmh: Some(50.0),
        hdop: Some(1.0),
        ..Position::fix(
            SupplierId::parse("geoamey").unwrap(),
            VehicleId::parse(vehicle).unwrap(),
            tracking_id,
            at(minute),
            53.0 + minute as f64 / 100.0,
            -1.5,
        )
    }
}

pub fn batch(positions: Vec<Position>, dead_letters: Vec<DeadLetter>) -> IngestBatch {
    IngestBatch {
        source: Source::Mqtt {
            topic: "movewatch/v1/geoamey/AB12CDE/positions".into(),
        },
        received: Instant::now(),
        received_at: Utc::now(),
        positions,
        events: vec![],
        dead_letters,
        transitions: vec![],
        derived: Default::default(),
        commit: CommitToken::detached(),
    }
}

/// Runs each named `async fn(&TestDb)` once on a fresh SQLite file and once
/// on a fresh PostgreSQL database, each within 60 s.
#[allow(unused_macros)] // not every test file runs on both backends
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = super::TestDb::sqlite();
                    tokio::time::timeout(std::time::Duration::from_secs(60), super::$name(&db))
                        .await
                        .expect("test timed out");
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = super::TestDb::postgres().await;
                    tokio::time::timeout(std::time::Duration::from_secs(60), super::$name(&db))
                        .await
                        .expect("test timed out");
                }
            )*
        }
    };
}
