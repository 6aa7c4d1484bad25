//! The walking skeleton end to end: device points over MQTT (the embedded
//! broker, and Mosquitto on 127.0.0.1:1883) reach the store and a WebSocket
//! client; malformed payloads are dead-lettered without stopping the rest.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{
    TOKEN, config, get, publish_positions, publisher, wait_for_dead_letters, wait_for_positions,
};
use futures_util::{SinkExt, StreamExt};
use movewatch::{Engine, random_token};
use rumqttc::QoS;
use tokio_tungstenite::tungstenite::Message;

/// Publishes 100 points from each of 100 vehicles, `per_message` points to a
/// message, and checks the store and a live WebSocket client.
async fn ten_thousand_points(external_mqtt: Option<&str>, per_message: usize) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(dir.path(), external_mqtt))
        .await
        .unwrap();
    let run = random_token(4).to_uppercase();

    // A WebSocket client subscribed before the points flow.
    let url = format!("ws://{}/ws?token={TOKEN}", engine.http_addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(Message::text(r#"{"type":"subscribe","channel":"fleet"}"#))
        .await
        .unwrap();
    let first: serde_json::Value = match ws.next().await.unwrap().unwrap() {
        Message::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("expected a snapshot, got {other:?}"),
    };
    assert_eq!(first["type"], "snapshot");

    let client = publisher(&engine, None).await;
    let mut expected_last: HashMap<String, (f64, f64)> = HashMap::new();
    let start = chrono::Utc::now() - chrono::Duration::minutes(30);
    for first_step in (0..100i64).step_by(per_message) {
        for v in 0..100 {
            let vehicle = format!("T{run}{v:02}");
            let points: Vec<serde_json::Value> = (first_step..first_step + per_message as i64)
                .map(|step| {
                    let (lat, lon) = (52.0 + v as f64 * 0.01 + step as f64 * 0.0005, -1.5 + step as f64 * 0.0005);
                    expected_last.insert(vehicle.clone(), (lat, lon));
                    serde_json::json!({
                        "tracking_id": format!("{run}-{v}-{step}"),
                        "tracking_timestamp": (start + chrono::Duration::seconds(step * 10)).to_rfc3339(),
                        "vehicle_registration": vehicle,
                        "latitude": lat, "longitude": lon, "speed": 50.0,
                    })
                })
                .collect();
            let payload = if per_message == 1 {
                serde_json::to_vec(&points[0])
            } else {
                serde_json::to_vec(&points)
            }
            .unwrap();
            publish_positions(&client, &vehicle, payload).await;
        }
    }

    let stored = wait_for_positions(&engine, 10_000).await;
    assert_eq!(stored, 10_000, "the store holds every point");

    let mut seen: HashMap<String, (f64, f64)> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen
        .iter()
        .filter(|(v, p)| expected_last.get(*v) == Some(p))
        .count()
        < expected_last.len()
    {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("WebSocket frames stopped before every last position arrived")
            .unwrap()
            .unwrap();
        let Message::Text(text) = frame else { continue };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut record = |p: &serde_json::Value| {
            seen.insert(
                p["vehicle"].as_str().unwrap().to_owned(),
                (p["lat"].as_f64().unwrap(), p["lon"].as_f64().unwrap()),
            );
        };
        match v["type"].as_str() {
            Some("position") => record(&v),
            Some("snapshot") => v["vehicles"]
                .as_array()
                .unwrap()
                .iter()
                .for_each(&mut record),
            other => panic!("unexpected frame {other:?}"),
        }
    }
    for (vehicle, last) in &expected_last {
        assert_eq!(
            seen.get(vehicle),
            Some(last),
            "{vehicle}'s live position is its last point"
        );
    }
    // The WebSocket sends were measured: broker receipt to WebSocket send.
    let metrics = get(engine.http_addr, "/metrics").await;
    let sent: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("movewatch_pipeline_latency_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(
        sent > 0.0,
        "pipeline latency recorded at the WebSocket send"
    );
    assert_eq!(engine.tracker.len(), 100);
    engine.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_points_through_the_embedded_broker() {
    // One point per message: the embedded broker's in-flight window is sized for the engine.
    ten_thousand_points(None, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_points_through_mosquitto() {
    // The machine's Mosquitto runs its stock config: 20 messages in flight and
    // 1000 queued per subscriber, past which it silently drops QoS 1 messages
    // (docs/PROTOCOL.md gives the production settings). The same 10,000 points
    // are sent as 10-point store-and-forward arrays, which that window holds.
    ten_thousand_points(Some("mqtt://127.0.0.1:1883"), 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_are_counted_and_do_not_stop_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(dir.path(), None)).await.unwrap();
    let client = publisher(&engine, None).await;
    let now = chrono::Utc::now().to_rfc3339();
    let good = |id: &str| {
        serde_json::json!({"tracking_id": id, "tracking_timestamp": now, "vehicle_registration": "AB12CDE", "latitude": 53.8, "longitude": -1.55}).to_string()
    };
    let missing_latitude = serde_json::json!({"tracking_id": "m", "tracking_timestamp": now, "vehicle_registration": "AB12CDE", "longitude": -1.55}).to_string();
    let latitude_123 = serde_json::json!({"tracking_id": "r", "tracking_timestamp": now, "vehicle_registration": "AB12CDE", "latitude": 123, "longitude": -1.55}).to_string();
    let topic = "movewatch/v1/geoamey/AB12CDE/positions";
    for payload in [
        good("g1"),
        "this is not json".to_owned(),
        missing_latitude,
        latitude_123,
        good("g2"),
    ] {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    assert_eq!(
        wait_for_positions(&engine, 2).await,
        2,
        "the good points before and after are kept"
    );
    let letters = wait_for_dead_letters(&engine, 3).await;
    use model::Reason::*;
    assert_eq!(
        letters,
        vec![(MalformedJson, 1), (MissingField, 1), (OutOfRange, 1)]
    );

    let metrics = get(engine.http_addr, "/metrics").await;
    for reason in ["malformed_json", "missing_field", "out_of_range"] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "movewatch_ingest_rejected_total{{reason=\"{reason}\"}}"
                ))
            })
            .unwrap_or_else(|| panic!("no {reason} counter in\n{metrics}"));
        let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n >= 1.0, "{line}");
    }
    engine.stop();
}
