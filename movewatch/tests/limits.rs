//! Oversized input at every edge (issue #9): a WebSocket message over the
//! limit closes that client only; an HTTP body over the limit is refused
//! unread; an MQTT message over the broker's limit disconnects its sender and
//! nothing else. (`POST /tracks` over 256 KiB or 1000 points, and a device
//! payload between 256 KiB and the broker's limit, are in `intake.rs`.)

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use movewatch::Engine;
use rumqttc::QoS;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_message_over_16_kib_closes_that_client_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(dir.path(), None)).await.unwrap();
    let mut good = subscribe(&engine, TOKEN, "fleet").await;
    let mut bad = subscribe(&engine, TOKEN, "fleet").await;
    frames_until(&mut good, 5, |f| f["type"] == "snapshot").await;
    frames_until(&mut bad, 5, |f| f["type"] == "snapshot").await;

    let huge = serde_json::json!({"type": "subscribe", "channel": "x".repeat(20 * 1024)});
    // The server may close before the whole message is written.
    let _ = bad.send(Message::text(huge.to_string())).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match bad.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                // A reset after the close is as good as the close.
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the oversized client is disconnected");
    if let Some(code) = closed {
        assert_eq!(code, 1009, "closed as too big");
    }

    // The other client still gets live positions.
    let client = publisher(&engine, None).await;
    client
        .publish(
            "movewatch/v1/geoamey/LM11ITS/positions",
            QoS::AtLeastOnce,
            false,
            point("limit-1", "LM11ITS", 5, 52.0, -1.0).to_string(),
        )
        .await
        .unwrap();
    let seen = frames_until(&mut good, 10, |f| f["type"] == "position").await;
    assert_eq!(
        seen.last().map(|f| f["vehicle"].clone()),
        Some("LM11ITS".into()),
        "{seen:?}"
    );
    engine.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bodies_over_the_limit_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(dir.path(), None)).await.unwrap();
    let auth = format!("Bearer {TOKEN}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    // 3 MiB of valid-looking JSON: over the 2 MiB body limit.
    let big = format!(
        r#"{{"reference":"{}","from_location":"HLI","to_location":"LEI","date":"2026-11-21"}}"#,
        "r".repeat(3 * 1024 * 1024)
    );
    let reply = http(
        "PUT",
        engine.http_addr,
        "/api/moves/m-big",
        &headers,
        big.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    let reply = http("GET", engine.http_addr, "/api/moves/m-big", &headers, b"").await;
    assert_eq!(reply.status, 404, "nothing was booked: {}", reply.body);

    let fence = format!(
        r#"{{"type":"Feature","properties":{{"id":"HLI","pad":"{}"}},"geometry":{{"type":"Point","coordinates":[0,0]}}}}"#,
        "p".repeat(3 * 1024 * 1024)
    );
    let reply = http(
        "PUT",
        engine.http_addr,
        "/api/sites/HLI/fence",
        &headers,
        fence.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    let ready = http("GET", engine.http_addr, "/readyz", &[], b"").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    engine.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_message_over_the_brokers_limit_disconnects_its_sender_only() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(dir.path(), None)).await.unwrap();
    let _ = publisher(&engine, None).await; // waits until the engine is subscribed
    let (big_sender, state) = publisher_at(&engine.mqtt_addr.0, engine.mqtt_addr.1, None).await;
    let (other, _) = publisher_at(&engine.mqtt_addr.0, engine.mqtt_addr.1, None).await;
    wait_for(10, "the sender to connect", || {
        let connected = state.borrow().connected;
        async move { connected.then_some(()) }
    })
    .await;

    // 600 KiB: over the embedded broker's 512 KiB packet limit.
    let huge = vec![b' '; 600 * 1024];
    big_sender
        .publish(
            "movewatch/v1/geoamey/BG11BIG/positions",
            QoS::AtLeastOnce,
            false,
            huge,
        )
        .await
        .unwrap();
    wait_for(10, "the broker to disconnect the sender", || {
        let s = state.borrow().clone();
        async move { (!s.connected && s.error.is_some()).then_some(()) }
    })
    .await;
    assert_eq!(
        state.borrow().acked,
        0,
        "the oversized message is not acknowledged"
    );

    // Everyone else goes on.
    other
        .publish(
            "movewatch/v1/geoamey/OK11FNE/positions",
            QoS::AtLeastOnce,
            false,
            point("limit-ok", "OK11FNE", 5, 52.0, -1.0).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(wait_for_positions(&engine, 1).await, 1);
    assert!(engine.tracker.get(&"BG11BIG".parse().unwrap()).is_none());
    let ready = http("GET", engine.http_addr, "/readyz", &[], b"").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    engine.stop();
}
