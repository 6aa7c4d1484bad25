//! The delivery task against a real store (a SQLite file) and a real local
//! HTTP receiver: a move whose first notification keeps failing holds back
//! its own later ones until it is given up (then kept as failed), while
//! another move is delivered meanwhile; signatures and bodies as stored.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{TimeZone, Utc};
use model::config::Config;
use model::{Derived, MoveId, Notification, NotificationKind, SiteId, VehicleId};
use movewatch_notify::{DeliveryConfig, signature, spawn_dispatcher};

type Log = Arc<Mutex<Vec<(String, u16, Option<String>, Bytes)>>>;

async fn receive(State(log): State<Log>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let id = v["id"].as_str().unwrap().to_owned();
    // m-1's departure is refused, always.
    let status = if id.starts_with("departure:m-1:") {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    let sig = headers
        .get("x-movewatch-signature")
        .map(|h| h.to_str().unwrap().to_owned());
    log.lock().unwrap().push((id, status.as_u16(), sig, body));
    status
}

fn n(kind: NotificationKind, m: &str, minute: u32) -> Notification {
    Notification {
        kind,
        occurred_at: Utc.with_ymd_and_hms(2026, 11, 21, 9, minute, 0).unwrap(),
        move_id: Some(MoveId::parse(m).unwrap()),
        vehicle: Some(VehicleId::parse("AB12CDE").unwrap()),
        site: Some(SiteId::parse("LEI").unwrap()),
        sites: vec![SiteId::parse("LEI").unwrap()],
        alert_kind: None,
        detail: None,
        expected_at: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_head_holds_its_move_back_until_given_up_and_other_moves_go_on() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Log = Arc::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(log.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{addr}/hook");
    let text = format!("[[webhooks]]\nurl = \"{url}\"\nsecret = \"k\"\n");
    let config = Config::from_toml(&text, "test").unwrap();
    let store = store::Store::open(&format!("sqlite://{}/s.db", dir.path().display()))
        .await
        .unwrap()
        .with_webhooks(&config.webhooks);
    store
        .write_derived(&Derived {
            notifications: vec![
                n(NotificationKind::Departure, "m-1", 0),
                n(NotificationKind::Arrival, "m-1", 20),
                n(NotificationKind::Departure, "m-2", 1),
                n(NotificationKind::Arrival, "m-2", 21),
            ],
            ..Default::default()
        })
        .await
        .unwrap();

    let mut delivery = DeliveryConfig::new(&config.webhooks, &config.webhook_delivery);
    delivery.first_retry = Duration::from_millis(50);
    delivery.max_retry = Duration::from_millis(200);
    delivery.give_up_after = Duration::from_millis(1500);
    delivery.poll = Duration::from_millis(100);
    let task = spawn_dispatcher(store.clone(), delivery).unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let c = store.outbox_counts().await.unwrap();
        if c.waiting == 0 {
            assert_eq!((c.failed, c.delivered), (1, 3), "{c:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not done: {c:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
    server.abort();

    let log = log.lock().unwrap().clone();
    let pos = |prefix: &str, status: u16| {
        log.iter()
            .position(|(id, s, _, _)| id.starts_with(prefix) && *s == status)
            .unwrap()
    };
    // m-2 went out while m-1's departure was failing.
    assert!(pos("arrival:m-2:", 200) < log.len() - 1);
    let m1_failures = log
        .iter()
        .filter(|(id, _, _, _)| id.starts_with("departure:m-1:"))
        .count();
    assert!(m1_failures >= 3, "retried: {m1_failures}");
    // m-1's arrival only after its departure was given up.
    let last_departure_try = log
        .iter()
        .rposition(|(id, _, _, _)| id.starts_with("departure:m-1:"))
        .unwrap();
    assert!(pos("arrival:m-1:", 200) > last_departure_try);
    assert!(pos("departure:m-2:", 200) < pos("arrival:m-2:", 200));
    // Signed bodies, identical on every attempt.
    for (_, _, sig, body) in &log {
        assert_eq!(sig.as_deref(), Some(signature("k", body).as_str()));
    }
    let rows = store.outbox_rows(&url).await.unwrap();
    let failed = rows.iter().find(|r| r.failed_at.is_some()).unwrap();
    assert!(failed.event_id.starts_with("departure:m-1:"));
    assert_eq!(failed.last_error.as_deref(), Some("HTTP 500"));
    assert_eq!(failed.attempts as usize, m1_failures);
    for (id, _, _, body) in &log {
        let row = rows.iter().find(|r| &r.event_id == id).unwrap();
        assert_eq!(row.body.as_bytes(), body.as_ref());
    }
    println!(
        "{} requests: {} to the failing head before it was given up",
        log.len(),
        m1_failures
    );
}
