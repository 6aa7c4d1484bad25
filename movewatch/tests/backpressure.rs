//! A stalled store holds back intake instead of growing memory (issue #3):
//! while the database is locked, the embedded broker acknowledges nothing
//! (a PUBACK waits for the commit), so the engine takes in no more than the
//! device's in-flight window and the device is held; every message arrives
//! once the store returns. Its own test binary, so the process-wide metrics count only this
//! test.

mod common;

use std::str::FromStr;
use std::time::Duration;

use common::*;
use movewatch::Engine;

/// The test device's in-flight window (`publisher_at`: rumqttc's `set_inflight(100)`).
const WINDOW: f64 = 100.0;
/// Ten windows, published while the store is stalled.
const MESSAGES: usize = 10_000;

/// A counter's value in the `/metrics` text (0 if absent).
fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn points_taken_in(metrics: &str) -> f64 {
    counter(metrics, "movewatch_ingest_points_total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_store_bounds_what_the_engine_takes_in() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(dir.path(), None)).await.unwrap();
    let client = publisher(&engine, None).await;

    // Stall the store: another connection holds SQLite's write lock.
    let db = dir.path().join("test.db");
    let options =
        sqlx::sqlite::SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display()))
            .unwrap();
    let mut locker = sqlx::ConnectOptions::connect(&options).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut locker)
        .await
        .unwrap();

    // The device is held once its window is unacknowledged: it publishes
    // on its own task.
    let publishing = tokio::spawn(async move {
        for i in 0..MESSAGES {
            let vehicle = format!("BP{:03}AA", i % 100);
            let payload = point(
                &format!("bp-{i}"),
                &vehicle,
                3_000 - (i / 100) as i64,
                52.5,
                -1.9,
            );
            publish_positions(&client, &vehicle, payload.to_string()).await;
        }
        client
    });

    // Let intake run as far as it can, then check it stopped at the window.
    let mut taken = 0.0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = points_taken_in(&get(engine.http_addr, "/metrics").await);
        if now == taken && now > 0.0 {
            break;
        }
        taken = now;
    }
    eprintln!("with the store stalled, intake took in {taken} of {MESSAGES} messages");
    assert!(taken > 0.0, "intake took nothing in");
    assert!(
        taken <= WINDOW,
        "with the store stalled the engine took in {taken} messages, more than the device's window of {WINDOW}"
    );
    assert!(
        !publishing.is_finished(),
        "the device is held, not acknowledged early"
    );
    assert_eq!(engine.store.counts().await.unwrap().positions, 0);
    let stored = |m: &str| counter(m, "movewatch_store_points_total");
    assert_eq!(stored(&get(engine.http_addr, "/metrics").await), 0.0);
    // A write fails once SQLite's busy timeout (10 s) runs out; from then on
    // the engine reports itself not ready.
    let addr = engine.http_addr;
    wait_for(30, "/readyz to report the stalled store", || async move {
        (http("GET", addr, "/readyz", &[], b"").await.status == 503).then_some(())
    })
    .await;

    // The store comes back: everything arrives, once.
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    drop(locker);
    let _client = tokio::time::timeout(Duration::from_secs(120), publishing)
        .await
        .expect("the device could send everything once the store was back")
        .unwrap();
    assert_eq!(
        wait_for_positions(&engine, MESSAGES as i64).await,
        MESSAGES as i64
    );
    assert_eq!(
        stored(&get(engine.http_addr, "/metrics").await),
        MESSAGES as f64,
        "movewatch_store_points_total counts each committed point once"
    );
    let letters = engine.store.dead_letter_counts().await.unwrap();
    assert!(
        letters.is_empty(),
        "no duplicates or rejections: {letters:?}"
    );
    engine.stop();
}
