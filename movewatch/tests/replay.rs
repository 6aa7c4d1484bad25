//! `movewatch replay`: stored points reach a WebSocket client on `fleet`,
//! in time order, and nothing outside the span.

mod common;

use std::time::Duration;

use chrono::{TimeZone, Utc};
use common::config;
use futures_util::{SinkExt, StreamExt};
use model::{CommitToken, IngestBatch, Position, Source, SupplierId, VehicleId};
use movewatch::replay::{Replay, ReplayConfig};
use tokio_tungstenite::tungstenite::Message;

fn position(vehicle: &str, i: i64, ts: chrono::DateTime<Utc>) -> Position {
    Position {
        speed_kmh: Some(40.0),
        hdop: Some(1.0),
        ..Position::fix(
            SupplierId::parse("geoamey").unwrap(),
            VehicleId::parse(vehicle).unwrap(),
            format!("{vehicle}-{i}"),
            ts,
            52.0 + i as f64 * 0.0005,
            -1.5,
        )
    }
}

#[tokio::test]
async fn replay_streams_stored_points_in_time_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), None);
    let t0 = Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, 0).unwrap();
    // Two vans, a fix every 10 s for 5 minutes, written out of order and in
    // several transactions; plus fixes before and after the span.
    {
        let store = store::Store::open(&config.store.url).await.unwrap();
        let mut positions = Vec::new();
        for i in (-3..33).rev() {
            let ts = t0 + chrono::Duration::seconds(i * 10);
            positions.push(position("AB12CDE", i, ts));
            positions.push(position("CD34EFG", i, ts + chrono::Duration::seconds(3)));
        }
        for chunk in positions.chunks(17) {
            let batch = IngestBatch {
                source: Source::Http,
                received: std::time::Instant::now(),
                received_at: Utc::now(),
                positions: chunk.to_vec(),
                events: vec![],
                dead_letters: vec![],
                transitions: vec![],
                derived: Default::default(),
                commit: CommitToken::detached(),
            };
            store.write(&[batch]).await.unwrap();
        }
    }
    let from = t0;
    let to = t0 + chrono::Duration::seconds(290);
    // AB12CDE: 0 s ..= 290 s, 30 fixes; CD34EFG: 3 s ..= 283 s, 29 (its 293 s is outside).
    let expected = 30 + 29;

    let replay = Replay::start(
        &config,
        ReplayConfig {
            from,
            to,
            speed: 300.0, // 290 s of history in about a second
            progress_every: Duration::from_millis(200),
        },
    )
    .await
    .unwrap();
    let url = format!("ws://{}/ws?token={}", replay.http_addr, replay.token);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(Message::text(r#"{"type":"subscribe","channel":"fleet"}"#))
        .await
        .unwrap();
    let snapshot: serde_json::Value = match ws.next().await.unwrap().unwrap() {
        Message::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("expected a snapshot, got {other:?}"),
    };
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["vehicles"].as_array().unwrap().len(), 0);
    assert_eq!(replay.clients(), 1);

    let mut reports = Vec::new();
    let run = tokio::spawn(async move {
        let done = replay.run(|p| reports.push(p)).await.unwrap();
        (done, reports)
    });

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < expected {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("timed out waiting for replayed positions")
            .expect("the socket closed early")
            .unwrap();
        let Message::Text(text) = message else {
            continue;
        };
        let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(frame["type"], "position", "{frame}");
        let ts = chrono::DateTime::parse_from_rfc3339(frame["ts"].as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc);
        seen.push((ts, frame["vehicle"].as_str().unwrap().to_owned()));
    }
    let (done, reports) = run.await.unwrap();
    assert_eq!(done.points, expected as u64);
    assert_eq!(done.simulated, t0 + chrono::Duration::seconds(290));
    assert!(!reports.is_empty());
    assert!(
        done.elapsed >= Duration::from_millis(900),
        "the original timing is kept, sped up: {:?}",
        done.elapsed
    );

    assert_eq!(seen.len(), expected);
    assert!(
        seen.windows(2).all(|w| w[0].0 <= w[1].0),
        "positions arrive in time order"
    );
    assert!(seen.iter().all(|(ts, _)| *ts >= from && *ts <= to));
    assert_eq!(seen.first().unwrap(), &(t0, "AB12CDE".to_owned()));
    assert_eq!(seen.iter().filter(|(_, v)| v == "CD34EFG").count(), 29);
}
