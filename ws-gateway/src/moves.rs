//! The moves registry at the edge (issue #6): `PUT /api/moves/{id}` (a
//! booking command to the engine, which stores it and applies it in every
//! partition) and `GET /api/moves/{id}` (from the engine's read view).

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{NaiveDate, Utc};
use model::format_ts;
use model::{JourneyId, MoveId, SiteId, VehicleId};
use serde::Deserialize;
use serde_json::json;
use tracker::moves::{JourneySpec, MoveSpec, MoveStatus};

use crate::{Access, Gateway, error};

pub use engine::{record_of, spec_of};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JourneyBody {
    id: String,
    from_location: String,
    to_location: String,
    #[serde(default)]
    vehicle_registration: Option<String>,
}

#[derive(Debug, Deserialize)]
struct MoveBody {
    #[serde(default)]
    reference: String,
    from_location: String,
    to_location: String,
    date: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    journeys: Vec<JourneyBody>,
}

fn bad_request(message: String) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", &message)
}

fn forbidden(message: &str) -> Response {
    error(StatusCode::FORBIDDEN, "forbidden", message)
}

/// Parses and checks a `PUT` body into a move.
fn parse_body(g: &Gateway, id: MoveId, raw: &[u8]) -> Result<MoveSpec, String> {
    let body: MoveBody = serde_json::from_slice(raw).map_err(|e| {
        format!(
            "expected {{\"reference\", \"from_location\", \"to_location\", \"date\", \"status\", \"journeys\"}}: {e}"
        )
    })?;
    let site = |field: &str, raw: &str| -> Result<SiteId, String> {
        let s = SiteId::parse(raw).map_err(|e| format!("{field}: {e}"))?;
        if !g.sites.iter().any(|k| k.id == s) {
            return Err(format!("{field}: no site {s}"));
        }
        Ok(s)
    };
    if body.reference.len() > 128 {
        return Err("reference: at most 128 characters".into());
    }
    let date = NaiveDate::parse_from_str(&body.date, "%Y-%m-%d")
        .map_err(|e| format!("date: expected YYYY-MM-DD: {e}"))?;
    let status = match body.status.as_deref() {
        None => MoveStatus::Booked,
        Some(s) => MoveStatus::parse(s).ok_or_else(|| {
            format!("status: {s:?} is not booked, in_transit, arrived, completed or cancelled")
        })?,
    };
    if body.journeys.len() > 32 {
        return Err("journeys: at most 32".into());
    }
    let mut journeys = Vec::with_capacity(body.journeys.len());
    for (i, j) in body.journeys.iter().enumerate() {
        let id = JourneyId::parse(&j.id).map_err(|e| format!("journeys[{i}].id: {e}"))?;
        if journeys.iter().any(|k: &JourneySpec| k.id == id) {
            return Err(format!("journeys[{i}].id: {id} is repeated"));
        }
        journeys.push(JourneySpec {
            id,
            from_location: site(&format!("journeys[{i}].from_location"), &j.from_location)?,
            to_location: site(&format!("journeys[{i}].to_location"), &j.to_location)?,
            vehicle: j
                .vehicle_registration
                .as_deref()
                .map(VehicleId::parse)
                .transpose()
                .map_err(|e| format!("journeys[{i}].vehicle_registration: {e}"))?,
        });
    }
    Ok(MoveSpec {
        id,
        reference: body.reference,
        from_location: site("from_location", &body.from_location)?,
        to_location: site("to_location", &body.to_location)?,
        date,
        status,
        journeys,
    })
}

/// `PUT /api/moves/{id}` (control room): books or re-books a move.
pub(crate) async fn put_move(
    State(g): State<Gateway>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    match g.auth.from_request(&headers, query.as_deref()) {
        Err(reply) => return reply,
        Ok(Access::ControlRoom) => {}
        Ok(_) => return forbidden("booking moves is for the control room"),
    }
    let id = match MoveId::parse(&raw_id) {
        Ok(id) => id,
        Err(e) => return bad_request(e.to_string()),
    };
    let spec = match parse_body(&g, id.clone(), &body) {
        Ok(s) => s,
        Err(message) => return bad_request(message),
    };
    // The engine stores the booking before anyone is told of it, then
    // applies it; the reply is the move as it then stands.
    match g.commands.book(spec).await {
        Ok(Some(d)) => axum::Json(details_json(&d.spec, Some(&d), true)).into_response(),
        Ok(None) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "move vanished",
        ),
        Err(e) => {
            tracing::error!(error = %e, "a booking was not carried out");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                &format!("{e}; retry (a booking is idempotent)"),
            )
        }
    }
}

/// `GET /api/moves/{id}`: the move with its live status, `eta` and `vehicle`.
pub(crate) async fn get_move(
    State(g): State<Gateway>,
    Path(raw_id): Path<String>,
    access: Access,
) -> Response {
    let id = match MoveId::parse(&raw_id) {
        Ok(id) => id,
        Err(e) => return bad_request(e.to_string()),
    };
    let now = Utc::now();
    let live = g.view.details(&id);
    let vehicle_visible_to = live
        .as_ref()
        .and_then(|d| d.view.vehicle)
        .map(|v| g.view.sites_seeing(&v, now))
        .unwrap_or_default();
    let spec = match &live {
        Some(d) => d.spec.clone(),
        None => match g.store.get_move(&id).await {
            Ok(Some(r)) => match spec_of(&r) {
                Some(s) => s,
                None => {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "bad stored status",
                    );
                }
            },
            Ok(None) if access == Access::ControlRoom => {
                return error(StatusCode::NOT_FOUND, "not_found", &format!("no move {id}"));
            }
            // Only the control room learns whether a move exists.
            Ok(None) => return forbidden("this token may not see this move"),
            Err(e) => {
                tracing::error!(error = %e, "cannot read a move");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "retry",
                );
            }
        },
    };
    let vehicle = live
        .as_ref()
        .and_then(|d| d.view.vehicle)
        .or_else(|| spec.journeys.iter().rev().find_map(|j| j.vehicle));
    let show_vehicle = match &access {
        Access::ControlRoom => true,
        Access::Site(sites) => {
            if !sites.contains(&spec.from_location) && !sites.contains(&spec.to_location) {
                return forbidden("this token may see only moves to or from its sites");
            }
            // The site's day shows a booked move's planned vehicle; a guess
            // (a probable match) only the control room sees; after the
            // grace past arrival the vehicle is no longer the site's.
            let probable = live.as_ref().and_then(|d| d.view.vehicle_match) == Some("probable");
            vehicle_visible_to.iter().any(|s| sites.contains(s))
                || (spec.status == MoveStatus::Booked && !probable)
        }
        Access::Supplier(_) => {
            if vehicle.is_none_or(|v| !g.can_see(&access, &v, now)) {
                return forbidden("this move is not carried by this supplier's vehicles");
            }
            true
        }
    };
    axum::Json(details_json(&spec, live.as_ref(), show_vehicle)).into_response()
}

fn details_json(
    spec: &MoveSpec,
    live: Option<&tracker::moves::MoveDetails>,
    show_vehicle: bool,
) -> serde_json::Value {
    let view = live.map(|d| &d.view);
    let vehicle = if show_vehicle {
        view.and_then(|v| v.vehicle)
            .or_else(|| spec.journeys.iter().rev().find_map(|j| j.vehicle))
    } else {
        None
    };
    json!({
        "id": spec.id,
        "reference": spec.reference,
        "from_location": spec.from_location,
        "to_location": spec.to_location,
        "date": spec.date.to_string(),
        "status": spec.status.as_str(),
        "journeys": spec.journeys.iter().map(|j| json!({
            "id": j.id,
            "from_location": j.from_location,
            "to_location": j.to_location,
            "vehicle_registration": if show_vehicle { j.vehicle } else { None },
        })).collect::<Vec<_>>(),
        "vehicle": vehicle,
        "vehicle_match": if show_vehicle { view.and_then(|v| v.vehicle_match) } else { None },
        "eta": view.and_then(|v| v.eta.clone()),
        "eta_low": view.and_then(|v| v.eta_low.clone()),
        "eta_high": view.and_then(|v| v.eta_high.clone()),
        "distance_remaining_m": view.and_then(|v| v.distance_remaining_m),
        "departed_at": live.and_then(|d| d.departed_at).map(|t| format_ts(&t)),
        "arrived_at": live.and_then(|d| d.arrived_at).map(|t| format_ts(&t)),
        "lodging": live.and_then(|d| d.lodging.clone()),
    })
}
