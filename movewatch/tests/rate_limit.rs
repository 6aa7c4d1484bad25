//! `POST /tracks` is rate-limited per supplier (issue #9): past its bucket a
//! supplier gets 429 with `Retry-After`, another supplier is unaffected, and
//! the first recovers once its bucket refills.

mod common;

use std::time::Duration;

use common::*;
use movewatch::Engine;

async fn post(engine: &Engine, key: &str, id: &str) -> Reply {
    // Each supplier its own van: a vehicle belongs to one supplier.
    let vehicle = if key == "key-serco" {
        "RL22BBB"
    } else {
        "RL11AAA"
    };
    let body = serde_json::json!([point(id, vehicle, 30, 51.5, -0.1)]).to_string();
    http(
        "POST",
        engine.http_addr,
        "/tracks",
        &[("Content-Type", "application/json"), ("X-API-Key", key)],
        body.as_bytes(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplier_past_its_rate_gets_429_with_retry_after_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), None);
    with_supplier(&mut c, "geoamey");
    with_supplier(&mut c, "serco");
    // One request a second, three at once.
    c.ingest.tracks_per_minute = 60;
    c.ingest.tracks_burst = 3;
    let engine = Engine::start(c).await.unwrap();

    for i in 0..3 {
        let r = post(&engine, "key-geoamey", &format!("rl-{i}")).await;
        assert_eq!(r.status, 202, "within the burst: {}", r.body);
    }
    let limited = post(&engine, "key-geoamey", "rl-3").await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert_eq!(limited.json()["error"], "rate_limited");
    let retry: u64 = limited
        .header("retry-after")
        .expect("a 429 carries Retry-After")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");

    // Another supplier has its own bucket.
    let serco = post(&engine, "key-serco", "rl-serco").await;
    assert_eq!(serco.status, 202, "{}", serco.body);

    // Refilled after Retry-After.
    tokio::time::sleep(Duration::from_secs(retry) + Duration::from_millis(100)).await;
    let again = post(&engine, "key-geoamey", "rl-3").await;
    assert_eq!(again.status, 202, "{}", again.body);

    // The limited request was not taken: exactly the accepted points are stored.
    assert_eq!(engine.store.counts().await.unwrap().positions, 5);
    engine.stop();
}
