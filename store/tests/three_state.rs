//! The writer's three-state commit on real databases: a batch the database
//! refuses for its data is split, its good elements committed, its bad ones
//! dead-lettered and its token completed, and it never stalls the batches
//! after it; a transient failure is retried, never dead-lettered.
//!
//! The poison values bypass intake's validation (which would refuse them
//! first): what each database itself refuses. SQLite stores a NaN as NULL,
//! so a NaN in a `NOT NULL` REAL column breaks the constraint (SQLITE_CONSTRAINT);
//! PostgreSQL's `timestamptz` ends at 4713 BC, so an earlier time (chrono
//! goes back to 262 143 BC) is "timestamp out of range" (SQLSTATE 22008).

#[macro_use]
mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{TestDb, at, batch, point};
use model::{CommitOutcome, CommitToken, IngestBatch, MoveId, Position, Reason, SiteId, VehicleId};
use movewatch_store::{
    AlertRecord, Arrival, Derived, REJECTED_PREFIX, Store, StoreError, WriterConfig, spawn_writer,
};
use sqlx::Connection;
use tokio::sync::{mpsc, oneshot, watch};

conformance!(
    a_poison_point_is_dead_lettered_and_does_not_stall_later_batches,
    a_derived_only_batch_without_a_token_is_committed_and_its_bad_record_dead_lettered,
);

/// A point this backend refuses (see the module docs).
fn poison_point(db: &TestDb, tracking_id: &str) -> Position {
    let mut p = point("AB12CDE", tracking_id, 5);
    if db.is_postgres() {
        p.ts = DateTime::<Utc>::MIN_UTC;
    } else {
        p.lat = f64::NAN;
    }
    p
}

fn start_writer(
    store: &Store,
) -> (
    mpsc::Sender<IngestBatch>,
    watch::Receiver<bool>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(16);
    let (health_tx, health) = watch::channel(true);
    let writer = spawn_writer(
        store.clone(),
        rx,
        WriterConfig {
            max_rows: 1_000,
            // Long enough that the first batches share one commit.
            max_delay: Duration::from_millis(50),
            max_in_flight: None,
        },
        health_tx,
    );
    (tx, health, writer)
}

async fn send(
    tx: &mpsc::Sender<IngestBatch>,
    mut b: IngestBatch,
) -> oneshot::Receiver<CommitOutcome> {
    let (token, done) = CommitToken::new();
    b.commit = token;
    tx.send(b).await.unwrap();
    done
}

async fn acknowledged(done: oneshot::Receiver<CommitOutcome>) -> CommitOutcome {
    tokio::time::timeout(Duration::from_secs(30), done)
        .await
        .expect("acknowledged in time, not stalled")
        .expect("token completed, not dropped")
}

async fn a_poison_point_is_dead_lettered_and_does_not_stall_later_batches(db: &TestDb) {
    let store = db.open().await;
    let (tx, health, writer) = start_writer(&store);

    let before = send(
        &tx,
        batch(
            vec![point("AB12CDE", "g1", 1), point("AB12CDE", "g2", 2)],
            vec![],
        ),
    )
    .await;
    let poisoned = send(
        &tx,
        batch(
            vec![
                point("AB12CDE", "g3", 3),
                poison_point(db, "poison"),
                point("AB12CDE", "g4", 4),
            ],
            vec![],
        ),
    )
    .await;
    // A repeat of g1 in the batch after: still found a duplicate.
    let after = send(
        &tx,
        batch(
            vec![point("AB12CDE", "g5", 6), point("AB12CDE", "g1", 1)],
            vec![],
        ),
    )
    .await;

    assert!(acknowledged(before).await.duplicates.is_empty());
    assert!(acknowledged(poisoned).await.duplicates.is_empty());
    assert_eq!(acknowledged(after).await.duplicates, vec![1]);

    // A batch sent after the poison one was dealt with goes through as usual.
    let later = send(&tx, batch(vec![point("AB12CDE", "g6", 7)], vec![])).await;
    assert!(acknowledged(later).await.duplicates.is_empty());
    drop(tx);
    writer.await.unwrap();
    assert!(*health.borrow(), "a rejection is not an outage");

    let vehicle = VehicleId::parse("AB12CDE").unwrap();
    let stored = store.track(&vehicle, at(-60), at(60), 100).await.unwrap();
    let mut ids: Vec<&str> = stored.iter().map(|p| p.tracking_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        ["g1", "g2", "g3", "g4", "g5", "g6"],
        "every good point kept once"
    );

    let letters = store.recent_dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    let rejected: Vec<_> = letters
        .iter()
        .filter(|l| l.detail.starts_with(REJECTED_PREFIX))
        .collect();
    assert_eq!(rejected.len(), 1, "{letters:?}");
    let letter = rejected[0];
    assert_eq!(letter.reason, Reason::InvalidValue);
    assert_eq!(
        letter.index,
        Some(1),
        "the poison point's index in its batch"
    );
    assert!(letter.raw.contains("\"poison\""), "{}", letter.raw);
    let why = if db.is_postgres() {
        "out of range"
    } else {
        "NOT NULL"
    };
    assert!(
        letter.detail.contains(why),
        "the database's message: {}",
        letter.detail
    );
    assert!(
        letters
            .iter()
            .any(|l| l.reason == Reason::Duplicate && l.index == Some(1)),
        "{letters:?}"
    );
}

async fn a_derived_only_batch_without_a_token_is_committed_and_its_bad_record_dead_lettered(
    db: &TestDb,
) {
    let store = db.open().await;
    let (tx, health, writer) = start_writer(&store);
    let alert = AlertRecord {
        kind: "breakdown".into(),
        vehicle: VehicleId::parse("AB12CDE").unwrap(),
        move_id: Some(MoveId::parse("m-1").unwrap()),
        ts: at(10),
        detail: "stopped on the hard shoulder".into(),
    };
    let mut bad = Arrival {
        move_id: MoveId::parse("m-1").unwrap(),
        vehicle: VehicleId::parse("AB12CDE").unwrap(),
        site: SiteId::parse("LEI").unwrap(),
        from_location: SiteId::parse("WYI").unwrap(),
        departed_at: at(0),
        arrived_at: at(20),
        distance_m: 12_000.0,
    };
    if db.is_postgres() {
        bad.departed_at = DateTime::<Utc>::MIN_UTC;
    } else {
        bad.distance_m = f64::NAN;
    }
    // As the alert ticker sends them: no points, a detached token.
    let mut derived_only = batch(vec![], vec![]);
    derived_only.derived = Derived {
        alerts: vec![alert.clone()],
        arrivals: vec![bad],
        ..Derived::default()
    };
    tx.send(derived_only).await.unwrap();
    let after = send(&tx, batch(vec![point("AB12CDE", "p1", 1)], vec![])).await;
    assert!(acknowledged(after).await.duplicates.is_empty());
    drop(tx);
    tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("the writer finishes: nothing stalls")
        .unwrap();
    assert!(*health.borrow());

    assert_eq!(store.alerts_since(at(-60), 10).await.unwrap(), vec![alert]);
    assert!(store.recent_arrivals(10).await.unwrap().is_empty());
    let letters = store.recent_dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0].detail.starts_with(REJECTED_PREFIX),
        "{letters:?}"
    );
    assert!(letters[0].detail.contains("arrival"), "{letters:?}");
    assert!(letters[0].raw.contains("WYI"), "{letters:?}");
    assert_eq!(store.counts().await.unwrap().positions, 1);
}

/// A connection the server terminated is a transient failure, not the data's fault.
#[tokio::test]
async fn a_terminated_connection_is_transient() {
    let db = TestDb::postgres().await;
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let mut admin = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(killed);
    let err = sqlx::query("SELECT 1")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(!StoreError::from(err).is_rejection());
}

/// The database's connections are killed again and again while the writer
/// commits: every batch is retried until durable, nothing is dead-lettered as
/// rejected, every point is stored once.
#[tokio::test]
async fn killed_connections_are_retried_not_dead_lettered() {
    tokio::time::timeout(Duration::from_secs(120), killed_connections())
        .await
        .expect("test timed out");
}

async fn killed_connections() {
    let db = TestDb::postgres().await;
    let store = db.open().await;
    let TestDb::Postgres { name, .. } = &db else {
        unreachable!()
    };
    let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", common::pg_server()))
        .await
        .unwrap();
    let name = name.clone();
    // Kills for about three seconds, then lets the writer catch up.
    let killer = tokio::spawn(async move {
        let mut killed = 0u64;
        for _ in 0..100 {
            let n: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
            )
            .bind(&name)
            .fetch_all(&mut admin)
            .await
            .unwrap();
            killed += n.len() as u64;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        killed
    });

    let (tx, _health, writer) = start_writer(&store);
    let mut waits = Vec::new();
    for n in 0..40 {
        let b = batch(
            (0..25)
                .map(|i| point("AB12CDE", &format!("k{n}-{i}"), (n * 25 + i) % 1400))
                .collect(),
            vec![],
        );
        waits.push(send(&tx, b).await);
    }
    for done in waits {
        tokio::time::timeout(Duration::from_secs(90), done)
            .await
            .expect("acknowledged once the kills stop at the latest")
            .expect("token completed");
    }
    let killed = killer.await.unwrap();
    drop(tx);
    writer.await.unwrap();
    assert!(killed > 0, "the test must have killed connections");

    let vehicle = VehicleId::parse("AB12CDE").unwrap();
    let stored = store
        .track(&vehicle, at(-60), at(2000), 10_000)
        .await
        .unwrap();
    assert_eq!(stored.len(), 40 * 25, "every point stored once");
    let letters = store.recent_dead_letters(10_000).await.unwrap();
    assert!(
        letters.iter().all(|l| l.reason == Reason::Duplicate),
        "a transient failure is never dead-lettered as rejected: {letters:?}"
    );
}
