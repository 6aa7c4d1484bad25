//! `GET /api/sites` (each site with its fence) and
//! `PUT /api/sites/{id}/fence` (replace a fence at run time, control room only).

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use engine::CommandError;
use geofence::{Fence, SiteFence};
use model::SiteId;
use serde_json::{Value, json};

use crate::{Access, Gateway, error};

/// A site as `GET /api/sites` shows it: its fields, and `fence` —
/// `{"type": "circle", "radius_m": r}` or `{"type": "polygon", "geometry": <GeoJSON MultiPolygon>}`.
fn site_json(s: &SiteFence) -> Value {
    let mut v = serde_json::to_value(&s.site).unwrap_or_else(|_| json!({}));
    if let Some(r) = s.fence.radius_m() {
        v["radius_m"] = json!(r);
    }
    v["fence"] = geofence::fence_to_json(&s.fence);
    v
}

pub(crate) async fn list(State(g): State<Gateway>, access: Access) -> Response {
    let fences = g.view.fences();
    let visible: Vec<Value> = fences
        .iter()
        .filter(|s| access.may_see_site(&s.site.id))
        .map(site_json)
        .collect();
    axum::Json(visible).into_response()
}

const BODY_SHAPES: &str = "expected a GeoJSON Polygon or MultiPolygon geometry, a GeoJSON Feature with one, or {\"radius_m\": n}";

/// The new fence described by a request body, or the reason it is refused.
fn fence_from_body(body: &[u8], site: &SiteFence) -> Result<Fence, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    if let Some(r) = value.get("radius_m") {
        let r = r
            .as_f64()
            .ok_or_else(|| "radius_m must be a number of metres".to_owned())?;
        return Fence::circle(site.site.lat, site.site.lon, r).map_err(|e| e.to_string());
    }
    let geometry = match value.get("type").and_then(Value::as_str) {
        Some("Feature") => value
            .get("geometry")
            .filter(|g| !g.is_null())
            .ok_or_else(|| "the Feature has no geometry".to_owned())?,
        Some("Polygon" | "MultiPolygon") => &value,
        Some(other) => {
            return Err(format!(
                "GeoJSON type {other} is not accepted: {BODY_SHAPES}"
            ));
        }
        None => return Err(BODY_SHAPES.to_owned()),
    };
    geofence::parse_fence_geometry(geometry).map_err(|e| format!("bad fence geometry: {e}"))
}

pub(crate) async fn put_fence(
    State(g): State<Gateway>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: RawQuery,
    body: Bytes,
) -> Response {
    match g.auth.from_request(&headers, query.0.as_deref()) {
        Err(r) => return r,
        Ok(Access::ControlRoom) => {}
        Ok(_) => {
            return error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "fences are changed by the control room",
            );
        }
    }
    let unknown = || error(StatusCode::NOT_FOUND, "not_found", &format!("no site {id}"));
    let Ok(site_id) = SiteId::parse(&id) else {
        return unknown();
    };
    let Some(current) = g.view.fence_of(&site_id) else {
        return unknown();
    };
    let fence = match fence_from_body(&body, &current) {
        Ok(f) => f,
        Err(message) => return error(StatusCode::BAD_REQUEST, "bad_request", &message),
    };
    // The engine stores the fence before it is live (a restart never goes
    // back to an older fence than the one a caller was told of), then
    // replaces it in every partition, one replacement at a time.
    match g.commands.replace_fence(site_id.clone(), fence).await {
        Ok(replaced) => {
            tracing::info!(site = %site_id, circle = replaced.fence.is_circle(), "site fence replaced");
            axum::Json(site_json(&replaced)).into_response()
        }
        Err(CommandError::UnknownSite(_)) => unknown(),
        Err(CommandError::Fence(message)) => {
            error(StatusCode::BAD_REQUEST, "bad_request", &message)
        }
        Err(e) => {
            tracing::error!(site = %site_id, error = %e, "a fence replacement was not carried out");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                &format!("{e}; retry"),
            )
        }
    }
}

/// `GET /api/sites/{id}/incoming`: the site's day as JSON, as its channel's
/// snapshot has it — every move to or from the site dated today (booked,
/// with its planned vehicle), in transit (with its ETA), or arrived within
/// the last 15 minutes; each with its `direction` (`incoming` or
/// `outgoing`), live status, ETA and interval, distance remaining, departure
/// and arrival, the two sites' names (`from_name`, `to_name`), where the
/// move comes from (`from_lat`, `from_lon`: the origin site's public location) and the
/// `supplier` running its vehicle (from its reports, else the vehicle
/// register; null if neither knows); and the positions of the vehicles the site may see (those
/// carrying its moves from the journey's start). A site token may ask only
/// for its own sites (403 before the site's existence is checked, so a probe
/// learns nothing).
pub(crate) async fn incoming(
    State(g): State<Gateway>,
    Path(id): Path<String>,
    access: Access,
) -> Response {
    let forbidden = || {
        error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token may not see this site's board",
        )
    };
    let site_id = match SiteId::parse(&id) {
        Ok(s) => s,
        Err(_) if matches!(access, Access::Site(_)) => return forbidden(),
        Err(_) => return error(StatusCode::NOT_FOUND, "not_found", &format!("no site {id}")),
    };
    match &access {
        Access::ControlRoom => {}
        Access::Site(sites) if sites.contains(&site_id) => {}
        _ => return forbidden(),
    }
    let Some(site) = g.sites.iter().find(|s| s.id == site_id) else {
        return error(StatusCode::NOT_FOUND, "not_found", &format!("no site {id}"));
    };
    let now = chrono::Utc::now();
    let (moves, seen) = {
        let moves: Vec<Value> = g
            .view
            .move_views(Some(&site_id), now)
            .into_iter()
            .map(|view| {
                let details = g.view.details(&view.move_id);
                let mut v = serde_json::to_value(&view).unwrap_or_else(|_| json!({}));
                v["direction"] = json!(if view.to_location == site_id {
                    "incoming"
                } else {
                    "outgoing"
                });
                let site_of = |id: &SiteId| g.sites.iter().find(|s| &s.id == id);
                let from = site_of(&view.from_location);
                v["from_name"] = json!(from.map(|s| s.name.clone()));
                v["to_name"] = json!(site_of(&view.to_location).map(|s| s.name.clone()));
                // Where the move comes from (a public prison or court), so a
                // board can name it on its map; no vehicle data.
                v["from_lat"] = json!(from.map(|s| s.lat));
                v["from_lon"] = json!(from.map(|s| s.lon));
                // The van's reports say who runs it; a planned van that has
                // not reported yet, the register.
                v["supplier"] = json!(
                    view.vehicle
                        .as_ref()
                        .and_then(|veh| g.view.supplier_of(veh).or_else(|| g.suppliers.owner(veh)))
                        .map(|s| s.to_string())
                );
                if let Some(d) = details {
                    v["reference"] = json!(d.spec.reference);
                    v["departed_at"] = json!(d.departed_at.map(|t| model::format_ts(&t)));
                    v["arrived_at"] = json!(d.arrived_at.map(|t| model::format_ts(&t)));
                }
                v
            })
            .collect();
        (moves, g.view.vehicles_seen_by(&site_id, now))
    };
    let vehicles: Vec<_> = seen
        .iter()
        .filter_map(|v| g.view.tracker().get(v).map(|s| s.view()))
        .collect();
    axum::Json(json!({
        "site": site,
        "generated_at": model::format_ts(&now),
        "moves": moves,
        "vehicles": vehicles,
    }))
    .into_response()
}
