//! Alert acknowledgement (control room only).
//!
//! - `POST /api/alerts/ack` with `{"kind", "vehicle", "move_id"?, "ts",
//!   "by"}`: the alert is named by the key it is stored once by (kind,
//!   vehicle, move, time); `by` is the operator's name. Stored first, then
//!   sent as an `alert_ack` frame on `fleet`, so every control-room screen
//!   shows who acknowledged it and when. The first acknowledgement stands:
//!   a second one is answered with the first, and sends nothing.
//! - `GET /api/alerts`: the recent alerts (as in the fleet snapshot), each
//!   with its acknowledgement, and every acknowledgement of the last day:
//!   what a screen opened later reads to show what was acknowledged before.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use model::wire::{AlertAckView, Frame};
use model::{MoveId, VehicleId, format_ts};
use serde::Deserialize;
use serde_json::json;
use store::{AlertAck, AlertKey};

use crate::{Access, Gateway, error};

/// The longest operator name kept (characters).
const MAX_BY: usize = 80;
/// The longest alert kind accepted (characters).
const MAX_KIND: usize = 64;
/// How far back `GET /api/alerts` lists acknowledgements.
const ACKS_WINDOW_HOURS: i64 = 24;
/// At most this many acknowledgements in `GET /api/alerts`.
const ACKS_LIMIT: i64 = 2000;

pub(crate) fn routes() -> Router<Gateway> {
    Router::new()
        .route("/api/alerts", get(list))
        .route("/api/alerts/ack", post(acknowledge))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    kind: String,
    vehicle: String,
    #[serde(default)]
    move_id: Option<String>,
    ts: String,
    by: String,
}

fn bad_request(message: impl std::fmt::Display) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", &message.to_string())
}

fn forbidden() -> Response {
    error(
        StatusCode::FORBIDDEN,
        "forbidden",
        "alerts are for the control room",
    )
}

fn store_unavailable(e: &store::StoreError) -> Response {
    tracing::error!(error = %e, "alert acknowledgements: store failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the store did not answer; retry",
    )
}

/// The alert named by a request's body, and the operator's name (trimmed).
fn parse_body(body: &[u8]) -> Result<(AlertKey, String), String> {
    let b: AckBody = serde_json::from_slice(body).map_err(|e| format!("bad JSON body: {e}"))?;
    let kind = b.kind.trim();
    if kind.is_empty()
        || kind.chars().count() > MAX_KIND
        || !kind
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err("kind: expected an alert kind such as device_silent".into());
    }
    let vehicle = VehicleId::parse(&b.vehicle).map_err(|e| format!("vehicle: {e}"))?;
    let move_id = match b.move_id.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(m) => Some(MoveId::parse(m).map_err(|e| format!("move_id: {e}"))?),
    };
    let ts = DateTime::parse_from_rfc3339(b.ts.trim())
        .map_err(|e| format!("ts: expected the alert's RFC 3339 time: {e}"))?
        .with_timezone(&Utc);
    let by = b.by.trim();
    if by.is_empty() {
        return Err("by: the operator's name is required".into());
    }
    if by.chars().count() > MAX_BY {
        return Err(format!("by: at most {MAX_BY} characters"));
    }
    if by.chars().any(char::is_control) {
        return Err("by: no control characters".into());
    }
    Ok((
        AlertKey {
            kind: kind.to_owned(),
            vehicle,
            move_id,
            ts,
        },
        by.to_owned(),
    ))
}

fn view(a: &AlertAck) -> AlertAckView {
    AlertAckView {
        kind: a.alert.kind.clone(),
        vehicle: a.alert.vehicle,
        move_id: a.alert.move_id.clone(),
        ts: format_ts(&a.alert.ts),
        by: a.by.clone(),
        at: format_ts(&a.at),
    }
}

async fn acknowledge(
    State(g): State<Gateway>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    // 401 before 403 before 400: nothing of the body is looked at without
    // a control-room token.
    match g.auth.from_request(&headers, query.as_deref()) {
        Err(reply) => return reply,
        Ok(Access::ControlRoom) => {}
        Ok(_) => return forbidden(),
    }
    let (key, by) = match parse_body(&body) {
        Ok(parsed) => parsed,
        Err(message) => return bad_request(message),
    };
    // Only an alert the engine raised can be acknowledged: the recent ones
    // in memory, else the stored ones.
    let recent = g.view.recent_alerts(None).iter().any(|a| {
        a.kind == key.kind
            && a.vehicle == key.vehicle
            && a.move_id == key.move_id
            && DateTime::parse_from_rfc3339(&a.ts)
                .is_ok_and(|t| t.timestamp_micros() == key.ts.timestamp_micros())
    });
    if !recent {
        match g.store.alerts_since(key.ts, 1000).await {
            Ok(stored) if stored.iter().any(|a| key.names(a)) => {}
            Ok(_) => {
                return error(
                    StatusCode::NOT_FOUND,
                    "unknown_alert",
                    "no such alert (kind, vehicle, move_id and ts name one)",
                );
            }
            Err(e) => return store_unavailable(&e),
        }
    }
    let before = match g.store.alert_acks_since(key.ts, ACKS_LIMIT).await {
        Ok(acks) => acks.into_iter().any(|a| a.alert == key),
        Err(e) => return store_unavailable(&e),
    };
    // Durable first: the acknowledgement is stored before anyone is told.
    let ack = match g.store.acknowledge_alert(&key, &by, Utc::now()).await {
        Ok(ack) => ack,
        Err(e) => return store_unavailable(&e),
    };
    let v = view(&ack);
    if !before {
        // On `fleet` only (no vehicle, no site): the control room's channel.
        g.hub
            .send(&Frame::AlertAck(v.clone()), None, None, Vec::new());
    }
    (StatusCode::OK, axum::Json(v)).into_response()
}

async fn list(State(g): State<Gateway>, access: Access) -> Response {
    if access != Access::ControlRoom {
        return forbidden();
    }
    let since = Utc::now() - chrono::Duration::hours(ACKS_WINDOW_HOURS);
    let acks = match g.store.alert_acks_since(since, ACKS_LIMIT).await {
        Ok(acks) => acks,
        Err(e) => return store_unavailable(&e),
    };
    let alerts: Vec<serde_json::Value> = g
        .view
        .recent_alerts(None)
        .into_iter()
        .map(|a| {
            let ack = acks.iter().find(|k| {
                k.alert.kind == a.kind
                    && k.alert.vehicle == a.vehicle
                    && k.alert.move_id == a.move_id
                    && DateTime::parse_from_rfc3339(&a.ts)
                        .is_ok_and(|t| t.timestamp_micros() == k.alert.ts.timestamp_micros())
            });
            let mut v = serde_json::to_value(&a).unwrap_or_default();
            if let Some(obj) = v.as_object_mut() {
                obj.insert(
                    "ack".into(),
                    ack.map_or(
                        serde_json::Value::Null,
                        |k| json!({"by": k.by, "at": format_ts(&k.at)}),
                    ),
                );
            }
            v
        })
        .collect();
    let acks: Vec<AlertAckView> = acks.iter().map(view).collect();
    axum::Json(json!({"alerts": alerts, "acks": acks})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        let ok = br#"{"kind":"device_silent","vehicle":"ab12 cde","ts":"2026-11-21T09:14:03Z","by":"  Sam Jones  "}"#;
        let (key, by) = parse_body(ok).unwrap();
        assert_eq!(by, "Sam Jones");
        assert_eq!(key.vehicle.as_str(), "AB12CDE");
        assert_eq!(key.move_id, None);
        for bad in [
            &br#"{"kind":"device_silent","vehicle":"AB12CDE","ts":"2026-11-21T09:14:03Z","by":"   "}"#[..],
            br#"{"kind":"device_silent","vehicle":"AB12CDE","ts":"2026-11-21T09:14:03Z"}"#,
            br#"{"kind":"device silent!","vehicle":"AB12CDE","ts":"2026-11-21T09:14:03Z","by":"x"}"#,
            br#"{"kind":"device_silent","vehicle":"AB12CDE","ts":"yesterday","by":"x"}"#,
            br#"{"kind":"device_silent","vehicle":"A","ts":"2026-11-21T09:14:03Z","by":"x"}"#,
            br#"not json"#,
        ] {
            assert!(parse_body(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let long = format!(
            r#"{{"kind":"stopped","vehicle":"AB12CDE","ts":"2026-11-21T09:14:03Z","by":"{}"}}"#,
            "x".repeat(MAX_BY + 1)
        );
        assert!(parse_body(long.as_bytes()).is_err());
    }
}
