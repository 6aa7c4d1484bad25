//! Notifications out: delivers the webhooks' outbox (`movewatch-store`'s
//! `webhook_outbox`) to the configured `[[webhooks]]`.
//!
//! The store queues a row per (webhook, notification) in the transaction that
//! keeps what caused it; [`spawn_dispatcher`] runs the task that reads the
//! due rows, POSTs each row's stored JSON body (signed with
//! [`signature`] when the webhook has a secret), and records the outcome in
//! the store: delivered on a 2xx, else retried with exponential back-off
//! and jitter until the retry window (24 hours by default) is over, then kept
//! as failed and logged. A move's rows go out one at a time, in order. The
//! task only reads the store: intake never waits on it, whatever the
//! receivers do.

#![deny(missing_docs)]

mod dispatcher;
mod sign;

pub use dispatcher::{DeliveryConfig, backoff, spawn_dispatcher};
pub use sign::{SIGNATURE_HEADER, signature};

/// Why the dispatcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The HTTP client could not be built (TLS set-up).
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Why one delivery attempt failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// The receiver answered, but not with a 2xx.
    #[error("HTTP {0}")]
    Status(u16),
    /// No answer within the request timeout.
    #[error("timed out")]
    Timeout,
    /// No connection (refused, unreachable, TLS).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// Anything else on the way.
    #[error("request failed: {0}")]
    Request(String),
}

impl AttemptError {
    fn of(e: &reqwest::Error) -> AttemptError {
        let text = error_chain(e);
        if e.is_timeout() {
            AttemptError::Timeout
        } else if e.is_connect() {
            AttemptError::Connect(text)
        } else {
            AttemptError::Request(text)
        }
    }
}

/// An error and its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod body_tests {
    //! The body the receivers get (rendered by `model::Notification::body`
    //! when the row is queued, sent as stored).
    use chrono::{TimeZone, Utc};
    use model::{MoveId, Notification, NotificationKind, SiteId, VehicleId};
    use serde_json::{Value, json};

    fn n(kind: NotificationKind) -> Notification {
        Notification {
            kind,
            occurred_at: Utc.with_ymd_and_hms(2026, 11, 21, 9, 14, 3).unwrap(),
            move_id: Some(MoveId::parse("5d1f-move").unwrap()),
            vehicle: Some(VehicleId::parse("AB12CDE").unwrap()),
            site: Some(SiteId::parse("LEI").unwrap()),
            sites: vec![SiteId::parse("LEI").unwrap()],
            alert_kind: None,
            detail: None,
            expected_at: None,
        }
    }

    fn parse(n: &Notification) -> Value {
        serde_json::from_str(&n.body()).unwrap()
    }

    #[test]
    fn arrival_carries_its_basm_event() {
        let a = n(NotificationKind::Arrival);
        assert_eq!(
            parse(&a),
            json!({
                "id": a.id(),
                "type": "arrival",
                "occurred_at": "2026-11-21T09:14:03Z",
                "move_id": "5d1f-move",
                "vehicle": "AB12CDE",
                "site": "LEI",
                "basm_event": {
                    "event_type": "JourneyArriveAtOuterGate",
                    "occurred_at": "2026-11-21T09:14:03Z",
                    "move_id": "5d1f-move",
                    "details": {"location": "LEI"}
                }
            })
        );
        // The same notification renders the same bytes, whatever the run.
        assert_eq!(a.body(), a.clone().body());
    }

    #[test]
    fn arriving_30_carries_the_expected_time() {
        let mut e = n(NotificationKind::Arriving30);
        e.expected_at = Some(Utc.with_ymd_and_hms(2026, 11, 21, 9, 44, 0).unwrap());
        e.alert_kind = Some("arriving_30".into());
        let body = parse(&e);
        assert_eq!(body["type"], "arriving_30");
        assert_eq!(body["expected_at"], "2026-11-21T09:44:00Z");
        assert_eq!(
            body["basm_event"],
            json!({
                "event_type": "MoveNotifyPremisesOfDropOffEta",
                "occurred_at": "2026-11-21T09:14:03Z",
                "move_id": "5d1f-move",
                "details": {"expected_at": "2026-11-21T09:44:00Z"}
            })
        );
    }

    #[test]
    fn departures_and_alerts_have_no_basm_event() {
        let d = parse(&n(NotificationKind::Departure));
        assert_eq!(d["type"], "departure");
        assert!(d.get("basm_event").is_none());
        let mut a = n(NotificationKind::Alert);
        a.move_id = None;
        a.site = None;
        a.alert_kind = Some("device_silent".into());
        a.detail = Some("no fix for 5 minutes".into());
        let body = parse(&a);
        assert_eq!(body["type"], "alert");
        assert_eq!(body["kind"], "device_silent");
        assert_eq!(body["detail"], "no fix for 5 minutes");
        assert_eq!(body["vehicle"], "AB12CDE");
        assert!(body.get("move_id").is_none() && body.get("site").is_none());
        assert!(body.get("basm_event").is_none());
        assert_eq!(body["id"], a.id());
    }
}
