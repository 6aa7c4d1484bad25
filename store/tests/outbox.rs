//! The webhooks' outbox, on both backends (a fresh SQLite file and a fresh
//! PostgreSQL database on 127.0.0.1:5432): rows are queued in the batch's
//! transaction, once per (webhook, notification), by the webhooks' filters,
//! handed out in order per move, and kept until delivered (or given up).

#[macro_use]
mod common;

use chrono::{DateTime, Duration, Utc};
use common::{TestDb, batch, fixed, point};
use model::config::{Config, WebhookConfig};
use model::{Derived, MoveId, Notification, NotificationKind, SiteId, VehicleId};
use movewatch_store::{OutboxCounts, Store};

conformance!(
    a_notification_is_queued_with_its_batch_once_per_webhook,
    webhook_filters_choose_the_rows,
    rows_are_handed_out_in_order_per_move,
    a_delivered_row_leaves_the_queue_and_is_not_queued_again,
    attempts_survive_a_reopen,
);

const ALL: &str = "http://127.0.0.1:9/all";
const LEI_ARRIVALS: &str = "http://127.0.0.1:9/lei-arrivals";
const ELSEWHERE: &str = "http://127.0.0.1:9/elsewhere";

fn hooks() -> Vec<WebhookConfig> {
    let text = format!(
        "[[webhooks]]\nurl = {ALL:?}\nsecret = \"s\"\n\
         [[webhooks]]\nurl = {LEI_ARRIVALS:?}\nevents = [\"arrival\"]\nsites = [\"LEI\"]\n\
         [[webhooks]]\nurl = {ELSEWHERE:?}\nsites = [\"XYZ\"]\n"
    );
    Config::from_toml(&text, "test").unwrap().webhooks
}

async fn open(db: &TestDb) -> Store {
    db.open().await.with_webhooks(&hooks())
}

fn n(kind: NotificationKind, move_id: Option<&str>, minute: i64) -> Notification {
    let has_move = move_id.is_some();
    Notification {
        kind,
        occurred_at: fixed(minute),
        move_id: move_id.map(|m| MoveId::parse(m).unwrap()),
        vehicle: Some(VehicleId::parse("AB12CDE").unwrap()),
        site: has_move.then(|| SiteId::parse("LEI").unwrap()),
        sites: if has_move {
            vec![
                SiteId::parse("CRT-LEEDS").unwrap(),
                SiteId::parse("LEI").unwrap(),
            ]
        } else {
            vec![]
        },
        alert_kind: (kind == NotificationKind::Alert).then(|| "gps_gap".to_owned()),
        detail: None,
        expected_at: (kind == NotificationKind::Arriving30).then(|| fixed(minute + 30)),
    }
}

fn derived(ns: Vec<Notification>) -> Derived {
    Derived {
        notifications: ns,
        ..Default::default()
    }
}

fn far_future() -> DateTime<Utc> {
    Utc::now() + Duration::days(1)
}

async fn a_notification_is_queued_with_its_batch_once_per_webhook(db: &TestDb) {
    let store = open(db).await;
    let arrival = n(NotificationKind::Arrival, Some("m1"), 10);
    let mut b = batch(vec![point("AB12CDE", "p1", 0)], vec![]);
    b.derived = derived(vec![arrival.clone()]);
    store.write(&[b]).await.unwrap();
    // Derived again: by a redelivered batch, and by a tick.
    let mut again = batch(vec![point("AB12CDE", "p1", 0)], vec![]);
    again.derived = derived(vec![arrival.clone()]);
    store.write(&[again]).await.unwrap();
    store
        .write_derived(&derived(vec![arrival.clone()]))
        .await
        .unwrap();

    let rows = store.outbox_rows(ALL).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].event_id, arrival.id());
    assert_eq!(rows[0].order_key, "move:m1");
    assert_eq!(rows[0].body, arrival.body());
    assert_eq!(rows[0].occurred_at, fixed(10));
    assert_eq!(rows[0].attempts, 0);
    assert_eq!(store.outbox_rows(LEI_ARRIVALS).await.unwrap().len(), 1);
    assert_eq!(
        store.outbox_counts().await.unwrap(),
        OutboxCounts {
            waiting: 2,
            failed: 0,
            delivered: 0
        }
    );
    // A store without webhooks queues nothing.
    let plain = db.open().await;
    plain
        .write_derived(&derived(vec![n(NotificationKind::Arrival, Some("m2"), 11)]))
        .await
        .unwrap();
    assert_eq!(plain.outbox_counts().await.unwrap().waiting, 2);
}

async fn webhook_filters_choose_the_rows(db: &TestDb) {
    let store = open(db).await;
    store
        .write_derived(&derived(vec![
            n(NotificationKind::Departure, Some("m1"), 0),
            n(NotificationKind::Arriving30, Some("m1"), 5),
            n(NotificationKind::Arrival, Some("m1"), 20),
            // An alert of no move: only webhooks without a sites filter.
            n(NotificationKind::Alert, None, 21),
        ]))
        .await
        .unwrap();
    let all = store.outbox_rows(ALL).await.unwrap();
    assert_eq!(all.len(), 4);
    let lei = store.outbox_rows(LEI_ARRIVALS).await.unwrap();
    assert_eq!(lei.len(), 1);
    assert!(lei[0].event_id.starts_with("arrival:m1:"), "{lei:?}");
    assert!(store.outbox_rows(ELSEWHERE).await.unwrap().is_empty());
    let alert = all.iter().find(|r| r.order_key == "vehicle:AB12CDE");
    assert!(alert.is_some(), "{all:?}");
}

async fn rows_are_handed_out_in_order_per_move(db: &TestDb) {
    let store = open(db).await;
    // Queued out of time order across two writes: the queue is by time.
    store
        .write_derived(&derived(vec![
            n(NotificationKind::Arrival, Some("m1"), 20),
            n(NotificationKind::Departure, Some("m2"), 1),
        ]))
        .await
        .unwrap();
    store
        .write_derived(&derived(vec![
            n(NotificationKind::Departure, Some("m1"), 0),
            n(NotificationKind::Arriving30, Some("m1"), 5),
        ]))
        .await
        .unwrap();
    let due = |store: &Store| {
        let store = store.clone();
        async move {
            let mut ids: Vec<String> = store
                .outbox_due(Utc::now(), 100)
                .await
                .unwrap()
                .into_iter()
                .filter(|r| r.hook == ALL)
                .map(|r| r.event_id)
                .collect();
            ids.sort();
            ids
        }
    };
    let first = due(&store).await;
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(first[0].starts_with("departure:m1:"), "{first:?}");
    assert!(first[1].starts_with("departure:m2:"), "{first:?}");

    let rows = store.outbox_rows(ALL).await.unwrap();
    let seq_of = |prefix: &str| {
        rows.iter()
            .find(|r| r.event_id.starts_with(prefix))
            .unwrap()
            .seq
    };
    // m1's departure failed and waits: nothing of m1 behind it goes.
    store
        .outbox_retry(seq_of("departure:m1:"), 1, far_future(), "HTTP 500")
        .await
        .unwrap();
    let second = due(&store).await;
    assert_eq!(second.len(), 1, "{second:?}");
    assert!(second[0].starts_with("departure:m2:"));
    // Delivered: the next of m1 is due, and only that one.
    store
        .outbox_delivered(seq_of("departure:m1:"), Utc::now(), 2)
        .await
        .unwrap();
    let third = due(&store).await;
    assert!(
        third.iter().any(|id| id.starts_with("arriving_30:m1:")),
        "{third:?}"
    );
    assert!(
        !third.iter().any(|id| id.starts_with("arrival:m1:")),
        "{third:?}"
    );
    // Given up (after the retry window): kept as failed, and no longer holds the move back.
    store
        .outbox_failed(seq_of("arriving_30:m1:"), Utc::now(), 30, "timed out")
        .await
        .unwrap();
    let fourth = due(&store).await;
    assert!(
        fourth.iter().any(|id| id.starts_with("arrival:m1:")),
        "{fourth:?}"
    );
    let failed: Vec<_> = store
        .outbox_rows(ALL)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.failed_at.is_some())
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].last_error.as_deref(), Some("timed out"));
    assert_eq!(failed[0].attempts, 30);
}

async fn a_delivered_row_leaves_the_queue_and_is_not_queued_again(db: &TestDb) {
    let store = open(db).await;
    let departure = n(NotificationKind::Departure, Some("m1"), 0);
    store
        .write_derived(&derived(vec![departure.clone()]))
        .await
        .unwrap();
    let due = store.outbox_due(Utc::now(), 10).await.unwrap();
    let row = due.iter().find(|r| r.hook == ALL).unwrap();
    store
        .outbox_delivered(row.seq, Utc::now(), 1)
        .await
        .unwrap();
    assert!(
        !store
            .outbox_due(Utc::now(), 10)
            .await
            .unwrap()
            .iter()
            .any(|r| r.hook == ALL)
    );
    assert_eq!(
        store.outbox_counts().await.unwrap(),
        OutboxCounts {
            waiting: 0,
            failed: 0,
            delivered: 1
        }
    );
    // Derived again later (a redelivered batch): not sent again.
    store
        .write_derived(&derived(vec![departure.clone()]))
        .await
        .unwrap();
    assert_eq!(store.outbox_counts().await.unwrap().waiting, 0);
    // Pruned after the keeping time: the row is deleted.
    assert_eq!(
        store
            .outbox_prune(Utc::now() + Duration::seconds(1))
            .await
            .unwrap(),
        1
    );
    assert!(store.outbox_rows(ALL).await.unwrap().is_empty());
}

async fn attempts_survive_a_reopen(db: &TestDb) {
    let store = open(db).await;
    store
        .write_derived(&derived(vec![n(NotificationKind::Arrival, Some("m1"), 3)]))
        .await
        .unwrap();
    let row = store.outbox_rows(ALL).await.unwrap().remove(0);
    let next = Utc::now() + Duration::seconds(30);
    store
        .outbox_retry(row.seq, 3, next, "connection refused")
        .await
        .unwrap();
    drop(store);
    let store = open(db).await;
    let again = store.outbox_rows(ALL).await.unwrap().remove(0);
    assert_eq!(again.attempts, 3);
    assert_eq!(again.last_error.as_deref(), Some("connection refused"));
    assert_eq!(again.body, row.body);
    assert_eq!(again.created_at, row.created_at);
    // Not due before its time, due after.
    assert!(
        !store
            .outbox_due(Utc::now(), 10)
            .await
            .unwrap()
            .iter()
            .any(|r| r.hook == ALL)
    );
    assert!(
        store
            .outbox_due(next + Duration::seconds(1), 10)
            .await
            .unwrap()
            .iter()
            .any(|r| r.seq == row.seq)
    );
}
