//! Intake through the whole engine (issue #3): replays are stored once, a bad
//! point is rejected alone, every rejection reason reaches the dead letters
//! and the metrics, `POST /tracks` answers each status of the contract, and
//! the embedded broker keeps each supplier under its own topic prefix.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use model::Reason;
use movewatch::Engine;
use rumqttc::QoS;

/// An engine with two suppliers, `geoamey` and `serco`, on the embedded broker.
async fn engine(dir: &tempfile::TempDir) -> Engine {
    let mut c = config(dir.path(), None);
    with_supplier(&mut c, "geoamey");
    with_supplier(&mut c, "serco");
    Engine::start(c).await.unwrap()
}

fn topic(supplier: &str, vehicle: &str) -> String {
    format!("movewatch/v1/{supplier}/{vehicle}/positions")
}

fn letters(counts: Vec<(Reason, i64)>) -> BTreeMap<&'static str, i64> {
    counts.into_iter().map(|(r, n)| (r.as_str(), n)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_points_sent_twice_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let client = publisher(&engine, Some(("geoamey", "pw-geoamey"))).await;
    // 100 vans × 100 points, as 100-point store-and-forward arrays, sent twice
    // (a device resending everything after a reconnect).
    let messages: Vec<(String, Vec<u8>)> = (0..100)
        .map(|v| {
            let vehicle = format!("RP{v:03}X");
            let points: Vec<_> = (0..100)
                .map(|i| {
                    point(
                        &format!("replay-{v}-{i}"),
                        &vehicle,
                        3_000 - i * 10,
                        52.0 + v as f64 * 0.01,
                        -1.5 + i as f64 * 0.001,
                    )
                })
                .collect();
            (
                topic("geoamey", &vehicle),
                serde_json::to_vec(&points).unwrap(),
            )
        })
        .collect();
    for _round in 0..2 {
        for (t, payload) in &messages {
            client
                .publish(t, QoS::AtLeastOnce, false, payload.clone())
                .await
                .unwrap();
        }
    }
    let dead = letters(wait_for_dead_letters(&engine, 10_000).await);
    assert_eq!(dead, BTreeMap::from([("duplicate", 10_000)]));
    let counts = engine.store.counts().await.unwrap();
    assert_eq!(counts.positions, 10_000, "each point is stored once");
    assert_eq!(engine.tracker.len(), 100);
    engine.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_point_batch_with_ten_bad_keeps_the_990_good() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let client = publisher(&engine, Some(("geoamey", "pw-geoamey"))).await;
    let vehicle = "BT12BAD";
    let mut points: Vec<serde_json::Value> = (0..1000)
        .map(|i| {
            point(
                &format!("batch-{i}"),
                vehicle,
                2_000 - i,
                53.0,
                -1.0 + i as f64 * 1e-4,
            )
        })
        .collect();
    let future = (chrono::Utc::now() + chrono::Duration::minutes(10)).to_rfc3339();
    let mut spoil = |i: usize, f: &dyn Fn(&mut serde_json::Value)| f(&mut points[i]);
    spoil(7, &|p| p["latitude"] = 95.0.into());
    spoil(99, &|p| {
        p.as_object_mut().unwrap().remove("latitude");
    });
    spoil(150, &|p| {
        p["latitude"] = 0.into();
        p["longitude"] = 0.into();
    });
    spoil(301, &|p| p["tracking_timestamp"] = future.clone().into());
    spoil(420, &|p| p["vehicle_registration"] = "ZZ99ZZZ".into());
    spoil(555, &|p| p["tracking_timestamp"] = "last tuesday".into());
    spoil(600, &|p| *p = 42.into());
    spoil(777, &|p| {
        p.as_object_mut().unwrap().remove("tracking_id");
    });
    spoil(888, &|p| p["speed"] = 400.into());
    spoil(999, &|p| p["precision_hdop"] = (-1).into());
    client
        .publish(
            topic("geoamey", vehicle),
            QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&points).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(wait_for_positions(&engine, 990).await, 990);
    let dead = letters(wait_for_dead_letters(&engine, 10).await);
    assert_eq!(
        dead,
        BTreeMap::from([
            ("future_timestamp", 1),
            ("invalid_value", 1),
            ("malformed_json", 1),
            ("missing_field", 2),
            ("out_of_range", 4),
            ("vehicle_mismatch", 1),
        ])
    );
    // Each dead letter keeps its index, topic, supplier and raw text.
    let recent = engine.store.recent_dead_letters(20).await.unwrap();
    let mut indices: Vec<usize> = recent.iter().filter_map(|d| d.index).collect();
    indices.sort();
    assert_eq!(indices, [7, 99, 150, 301, 420, 555, 600, 777, 888, 999]);
    for d in &recent {
        assert_eq!(d.supplier.as_deref(), Some("geoamey"));
        assert_eq!(d.topic.as_deref(), Some(topic("geoamey", vehicle).as_str()));
        assert!(!d.raw.is_empty() && d.raw.len() <= 4096, "raw kept: {d:?}");
    }
    engine.stop();
}

fn counter(metrics: &str, reason: &str) -> f64 {
    let prefix = format!("movewatch_ingest_rejected_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no counter for {reason}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_reason_is_dead_lettered_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let geoamey = publisher(&engine, Some(("geoamey", "pw-geoamey"))).await;
    let serco = publisher(&engine, Some(("serco", "pw-serco"))).await;
    let before = get(engine.http_addr, "/metrics").await;
    let good = |id: &str, v: &str| point(id, v, 60, 53.8, -1.5);
    let with = |field: &str, value: serde_json::Value| {
        let mut p = good("w", "GA11AAA");
        p[field] = value;
        p.to_string()
    };
    let mut missing = good("m", "GA11AAA");
    missing.as_object_mut().unwrap().remove("longitude");
    let huge = serde_json::to_vec(
        &(0..2000)
            .map(|i| good(&format!("huge-{i}"), "GA11AAA"))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(huge.len() > 256 * 1024);
    let too_many = serde_json::to_vec(
        &(0..1001)
            .map(|i| serde_json::json!({"tracking_id": i}))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(too_many.len() < 256 * 1024);
    let future = (chrono::Utc::now() + chrono::Duration::minutes(6)).to_rfc3339();
    let sends: Vec<(&str, String, Vec<u8>)> = vec![
        (
            "malformed_json",
            topic("geoamey", "GA11AAA"),
            b"{not json".to_vec(),
        ),
        (
            "missing_field",
            topic("geoamey", "GA11AAA"),
            missing.to_string().into(),
        ),
        (
            "invalid_value",
            topic("geoamey", "GA11AAA"),
            with("latitude", "53.8".into()).into(),
        ),
        (
            "out_of_range",
            topic("geoamey", "GA11AAA"),
            with("longitude", (-200).into()).into(),
        ),
        (
            "future_timestamp",
            topic("geoamey", "GA11AAA"),
            with("tracking_timestamp", future.into()).into(),
        ),
        (
            "vehicle_mismatch",
            topic("geoamey", "GA11AAA"),
            good("vm", "OTHER1").to_string().into(),
        ),
        ("too_large", topic("geoamey", "GA11AAA"), huge),
        ("too_large", topic("geoamey", "GA11AAA"), too_many),
        (
            "bad_topic",
            "movewatch/v1/geoamey/not a reg!/positions".into(),
            good("bt", "GA11AAA").to_string().into(),
        ),
        (
            "ok",
            topic("geoamey", "GA11AAA"),
            good("first", "GA11AAA").to_string().into(),
        ),
        (
            "duplicate",
            topic("geoamey", "GA11AAA"),
            good("first", "GA11AAA").to_string().into(),
        ),
    ];
    for (_, t, payload) in &sends {
        geoamey
            .publish(t, QoS::AtLeastOnce, false, payload.clone())
            .await
            .unwrap();
    }
    // geoamey reported GA11AAA first; serco cannot report it.
    wait_for_positions(&engine, 1).await;
    serco
        .publish(
            topic("serco", "GA11AAA"),
            QoS::AtLeastOnce,
            false,
            good("serco-1", "GA11AAA").to_string(),
        )
        .await
        .unwrap();
    let dead = letters(wait_for_dead_letters(&engine, 11).await);
    let mut expected: BTreeMap<&str, i64> = BTreeMap::new();
    for (reason, _, _) in sends.iter().filter(|(r, _, _)| *r != "ok") {
        *expected.entry(reason).or_default() += 1;
    }
    expected.insert("vehicle_owned_by_other_supplier", 1);
    assert_eq!(dead, expected);
    assert_eq!(engine.store.counts().await.unwrap().positions, 1);

    // The recorder is process-wide and other tests run alongside, so the
    // counters rose by at least this test's rejections.
    let after = get(engine.http_addr, "/metrics").await;
    for (reason, n) in &expected {
        assert!(
            counter(&after, reason) - counter(&before, reason) >= *n as f64,
            "movewatch_ingest_rejected_total{{reason=\"{reason}\"}}"
        );
    }
    engine.stop();
}

async fn post_tracks(engine: &Engine, key: Option<&str>, body: &[u8]) -> Reply {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(key) = key {
        headers.push(("X-API-Key", key));
    }
    http("POST", engine.http_addr, "/tracks", &headers, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_tracks_answers_each_status_of_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let batch = serde_json::json!([
        point("h-1", "HT11AAA", 30, 51.5, -0.1),
        point("h-2", "HT11AAA", 20, 51.5, -0.11),
        {"tracking_id": "h-3", "vehicle_registration": "HT11AAA"},
        point("h-4", "HT11AAA", 10, 91.0, -0.12),
    ])
    .to_string();

    // 202, with the bad points listed by index and the good ones committed before the reply.
    let reply = post_tracks(&engine, Some("key-geoamey"), batch.as_bytes()).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(
        reply.json(),
        serde_json::json!({"accepted": 2, "rejected": [
            {"index": 2, "reason": "missing_field"},
            {"index": 3, "reason": "out_of_range"},
        ]})
    );
    assert_eq!(engine.store.counts().await.unwrap().positions, 2);

    // The same body again: every good point is now a duplicate.
    let reply = post_tracks(&engine, Some("key-geoamey"), batch.as_bytes()).await;
    assert_eq!(reply.status, 202);
    assert_eq!(reply.json()["accepted"], 0);
    let reasons: Vec<_> = reply.json()["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            (0, "duplicate"),
            (1, "duplicate"),
            (2, "missing_field"),
            (3, "out_of_range")
        ]
        .map(|(i, r)| (i, r.to_owned()))
    );

    // Another supplier's key cannot post for geoamey's vehicle.
    let theirs = serde_json::json!([
        point("s-1", "HT11AAA", 5, 51.5, -0.1),
        point("s-2", "SC22BBB", 5, 51.4, -0.2)
    ]);
    let reply = post_tracks(&engine, Some("key-serco"), theirs.to_string().as_bytes()).await;
    assert_eq!(reply.status, 202);
    assert_eq!(
        reply.json(),
        serde_json::json!({"accepted": 1, "rejected": [{"index": 0, "reason": "vehicle_owned_by_other_supplier"}]})
    );
    assert_eq!(engine.store.counts().await.unwrap().positions, 3);

    // 401: no key, and a wrong key.
    let one = serde_json::json!([point("x", "HT11AAA", 1, 51.5, -0.1)]).to_string();
    assert_eq!(post_tracks(&engine, None, one.as_bytes()).await.status, 401);
    assert_eq!(
        post_tracks(&engine, Some("key-nobody"), one.as_bytes())
            .await
            .status,
        401
    );
    assert_eq!(
        post_tracks(&engine, Some(""), one.as_bytes()).await.status,
        401
    );

    // 413: over 256 KiB, and over 1000 points.
    let big: Vec<_> = (0..2000)
        .map(|i| point(&format!("big-{i}"), "HT11AAA", 1, 51.5, -0.1))
        .collect();
    let big = serde_json::to_vec(&big).unwrap();
    assert!(big.len() > 256 * 1024);
    assert_eq!(
        post_tracks(&engine, Some("key-geoamey"), &big).await.status,
        413
    );
    let many: Vec<_> = (0..1001)
        .map(|i| serde_json::json!({"tracking_id": i}))
        .collect();
    let reply = post_tracks(
        &engine,
        Some("key-geoamey"),
        serde_json::to_string(&many).unwrap().as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 413, "{}", reply.body);

    // 400: not a JSON array.
    for body in [&b"{\"tracking_id\": 1}"[..], b"not json", b"", b"[1, 2"] {
        let reply = post_tracks(&engine, Some("key-geoamey"), body).await;
        assert_eq!(
            reply.status,
            400,
            "{:?} gave {}",
            String::from_utf8_lossy(body),
            reply.body
        );
    }
    // None of the refused requests stored anything.
    assert_eq!(engine.store.counts().await.unwrap().positions, 3);
    engine.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_keeps_a_supplier_under_its_own_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    wait_subscribed(&engine).await;
    let (host, port) = (engine.mqtt_addr.0.clone(), engine.mqtt_addr.1);

    // geoamey publishing under serco's prefix is disconnected, and nothing is stored.
    let (spoofer, mut state) = publisher_at(&host, port, Some(("geoamey", "pw-geoamey"))).await;
    spoofer
        .publish(
            topic("serco", "SP00FED"),
            QoS::AtLeastOnce,
            false,
            point("spoof", "SP00FED", 5, 51.0, -1.0).to_string(),
        )
        .await
        .unwrap();
    let ended = tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| s.error.is_some()),
    )
    .await
    .expect("the spoofing connection is closed")
    .unwrap()
    .clone();
    assert_eq!(ended.acked, 0, "the spoofed message was never acknowledged");

    // A wrong password, and the engine's own username, are refused.
    for creds in [("geoamey", "wrong"), (ingest::broker::ENGINE_USER, "guess")] {
        let (_c, mut state) = publisher_at(&host, port, Some(creds)).await;
        let s = tokio::time::timeout(
            Duration::from_secs(10),
            state.wait_for(|s| s.error.is_some()),
        )
        .await
        .expect("refused")
        .unwrap()
        .clone();
        assert!(!s.connected, "{creds:?} must not connect");
    }

    // Under its own prefix geoamey is stored.
    let (honest, _) = publisher_at(&host, port, Some(("geoamey", "pw-geoamey"))).await;
    honest
        .publish(
            topic("geoamey", "H0NEST1"),
            QoS::AtLeastOnce,
            false,
            point("honest", "H0NEST1", 5, 51.0, -1.0).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(wait_for_positions(&engine, 1).await, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let latest = engine.store.latest_positions().await.unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].vehicle.as_str(), "H0NEST1");
    engine.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_listens_before_start_returns_and_a_taken_port_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    // Listening already: a device connects at once, without waiting for the engine.
    let addr = format!("{}:{}", engine.mqtt_addr.0, engine.mqtt_addr.1);
    tokio::net::TcpStream::connect(&addr).await.unwrap();
    // The same port again: refused with an error naming it, not a log line.
    let mut c = config(dir.path(), None);
    c.mqtt.listen = addr.parse().unwrap();
    c.store.url = format!("sqlite://{}/other.db", dir.path().display());
    let err = Engine::start(c)
        .await
        .err()
        .expect("a taken port is an error");
    assert!(err.to_string().contains(&addr), "{err}");
    engine.stop();
}
