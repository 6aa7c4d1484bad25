//! Graceful shutdown (issue #9): SIGTERM in the middle of a QoS 1 stream
//! makes `movewatch serve` stop intake, drain the pipeline, commit and
//! acknowledge what it took, close WebSockets with 1001 and a reason, and
//! exit 0 within its bound; after a restart every point is stored exactly
//! once and nothing committed was redelivered (no duplicates).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use rumqttc::QoS;
use tokio_tungstenite::tungstenite::Message;

const VANS: usize = 20;
const MESSAGES_PER_VAN: usize = 100;
const POINTS_PER_MESSAGE: usize = 10;
const TOTAL: usize = VANS * MESSAGES_PER_VAN * POINTS_PER_MESSAGE;
/// `[ingest] shutdown_timeout_secs` in the test's config.
const BOUND: Duration = Duration::from_secs(10);

/// Waits (off the runtime's threads) for the child to exit.
async fn exit_within(
    mut engine: EngineProcess,
    within: Duration,
) -> (Option<std::process::ExitStatus>, Duration) {
    let started = Instant::now();
    tokio::task::spawn_blocking(move || {
        let status = engine.wait_exit(within);
        (status, started.elapsed())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_drains_acks_closes_websockets_and_exits_0_within_the_bound() {
    let broker = Mosquitto::start(&[("geoamey", "pw-geoamey")]);
    let ChildFiles {
        dir: _dir,
        db,
        http_addr,
        config_file,
    } = child_files(
        &broker,
        "term",
        &format!("[ingest]\nshutdown_timeout_secs = {}\n", BOUND.as_secs()),
    );
    let engine = EngineProcess::spawn(&config_file);
    wait_ready(http_addr).await;

    // A control-room client on the fleet channel, read until it is closed.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{http_addr}/ws?token={TOKEN}"))
            .await
            .unwrap();
    ws.send(Message::text(
        serde_json::json!({"type": "subscribe", "channel": "fleet"}).to_string(),
    ))
    .await
    .unwrap();
    let watcher = tokio::spawn(async move {
        let mut frames = 0usize;
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
            match m {
                Message::Close(frame) => {
                    return (
                        frames,
                        frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                    );
                }
                Message::Text(_) => frames += 1,
                _ => {}
            }
        }
        (frames, None)
    });

    let (client, acks) =
        publisher_at("127.0.0.1", broker.port, Some(("geoamey", "pw-geoamey"))).await;
    let start = chrono::Utc::now() - chrono::Duration::hours(2);
    let messages = stream("TM", VANS, MESSAGES_PER_VAN, POINTS_PER_MESSAGE, start);
    let publishing = tokio::spawn(async move {
        for (i, (topic, payload, _)) in messages.into_iter().enumerate() {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
            // A stream, not one burst: SIGTERM lands while messages arrive.
            if i % (10 * VANS) == 10 * VANS - 1 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        client
    });

    let db_path = db.clone();
    wait_for(60, "the engine to commit part of the stream", || {
        let db = db_path.clone();
        async move { (stored(&db).await >= 2_000).then_some(()) }
    })
    .await;
    engine.terminate();
    let (status, took) = exit_within(engine, BOUND + Duration::from_secs(5)).await;
    let status = status.expect("the engine must exit after SIGTERM");
    assert!(status.success(), "a graceful shutdown exits 0: {status:?}");
    assert!(
        took <= BOUND + Duration::from_secs(1),
        "exited in {took:?}, bound {BOUND:?}"
    );
    let at_exit = stored(&db).await;
    assert!(
        at_exit < TOTAL as i64,
        "SIGTERM must land mid-stream (stored {at_exit} of {TOTAL})"
    );

    let (frames, close) = watcher.await.unwrap();
    assert_eq!(
        close,
        Some((1001, "server shutting down".to_owned())),
        "the WebSocket client gets a close frame with a reason (after {frames} frames)"
    );

    // The devices go on publishing; the broker keeps the engine's session queue.
    let client = publishing.await.unwrap();
    wait_for(120, "the broker to acknowledge every message", || {
        let acked = acks.borrow().acked;
        async move { (acked == (VANS * MESSAGES_PER_VAN) as u64).then_some(()) }
    })
    .await;

    let engine = EngineProcess::spawn(&config_file);
    wait_ready(http_addr).await;
    let db_path = db.clone();
    wait_for(120, "every point in the store", || {
        let db = db_path.clone();
        async move { (stored(&db).await >= TOTAL as i64).then_some(()) }
    })
    .await;
    // Let any redelivered duplicates land, then stop gracefully again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    engine.terminate();
    let (status, _) = exit_within(engine, BOUND + Duration::from_secs(5)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    drop(client);

    let store = store::Store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    assert_eq!(
        store.counts().await.unwrap().positions,
        TOTAL as i64,
        "every point exactly once"
    );
    let ids: HashSet<String> = stored_ids(
        &store,
        (0..VANS).map(|v| format!("TM{v:02}ABC")),
        start - chrono::Duration::hours(1),
    )
    .await
    .into_iter()
    .collect();
    assert_eq!(ids.len(), TOTAL, "no point is missing or repeated");
    // Every committed message was acknowledged before the engine left, so
    // the broker redelivered none of them: no duplicate was dead-lettered.
    let letters = store.dead_letter_counts().await.unwrap();
    assert!(
        letters.is_empty(),
        "nothing committed was redelivered after a graceful stop: {letters:?}"
    );
}
