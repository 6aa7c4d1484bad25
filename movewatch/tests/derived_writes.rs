//! What the engine derives without new points (the ticker's alerts) goes
//! through the same store writer as the points, and is retried until it is
//! stored, never given up: an alert raised while the store is down is
//! stored, once, after it is back.

mod common;

use std::str::FromStr;
use std::time::Duration;

use chrono::Utc;
use common::*;
use movewatch::Engine;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_raised_while_the_store_is_down_is_stored_once_it_is_back() {
    tokio::time::timeout(Duration::from_secs(150), async {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::start(config(dir.path(), None)).await.unwrap();
        let van = "D0WN1VAN";
        let body = serde_json::json!({
            "reference": "DW1", "from_location": "HLI", "to_location": "LEI",
            "date": Utc::now().date_naive().to_string(),
            "journeys": [{"id": "j-dw", "from_location": "HLI", "to_location": "LEI", "vehicle_registration": van}]
        });
        assert_eq!(put_move(&engine, "m-dw", TOKEN, body).await.status, 200);
        let mut fleet = subscribe(&engine, TOKEN, "fleet").await;
        let client = publisher(&engine, None).await;
        publish(&client, van, "events", &serde_json::json!({
            "event_type": "MoveStart", "occurred_at": base(8).to_rfc3339(), "move_id": "m-dw"
        }))
        .await;
        // Stored while the store is up; its silence began seven minutes ago.
        publish(&client, van, "positions", &fix("dw-1", van, base(7), (53.75, -0.5), 50.0)).await;
        wait_for_positions(&engine, 1).await;

        // The store goes down: another connection holds SQLite's write lock.
        let db = dir.path().join("test.db");
        let options =
            sqlx::sqlite::SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display()))
                .unwrap();
        let mut locker = sqlx::ConnectOptions::connect(&options).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE").execute(&mut locker).await.unwrap();

        // The ticker raises both alerts; the control room hears of them at once.
        let seen = frames_until(&mut fleet, 30, |f| {
            f["type"] == "alert" && f["kind"] == "device_silent"
        })
        .await;
        let raised: Vec<&str> = of_type(&seen, "alert")
            .iter()
            .filter_map(|a| a["kind"].as_str())
            .collect();
        assert_eq!(raised, ["gps_gap", "device_silent"]);
        // Down for a while longer: the writer keeps them and keeps trying.
        tokio::time::sleep(Duration::from_secs(20)).await;
        let stored_while_down = engine.store.alerts_since(base(60), 100).await.unwrap();
        assert!(stored_while_down.is_empty(), "{stored_while_down:?}");

        // The store is back: both are stored, once each.
        sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
        drop(locker);
        let stored = wait_for(30, "both alerts to be stored", || async {
            let alerts = engine.store.alerts_since(base(60), 100).await.ok()?;
            (alerts.len() >= 2).then_some(alerts)
        })
        .await;
        // Nothing more comes of the retries.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut kinds: Vec<String> = engine
            .store
            .alerts_since(base(60), 100)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.kind)
            .collect();
        kinds.sort();
        assert_eq!(kinds, ["device_silent", "gps_gap"], "{stored:?}");
        engine.stop();
    })
    .await
    .expect("test timed out");
}
