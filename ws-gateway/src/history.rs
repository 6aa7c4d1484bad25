//! History routes: a vehicle's or a move's stored track as GeoJSON,
//! simplified on the server (Douglas–Peucker in metres).
//!
//! - `GET /api/vehicles/{v}/track?from=&to=&simplify_m=`
//! - `GET /api/moves/{id}/track?simplify_m=`
//!
//! Scope (the contract's "Who may see what"): the control room sees every
//! track; a supplier token only its own vehicles (the tracker's supplier of
//! the vehicle), and only the points that supplier reported; a site token
//! a vehicle's track only while the vehicle carries a move to or from one of
//! its sites (journey start until 15 minutes after arrival), clipped to that
//! window, and a move's track only for moves to or from its sites. 401 for a missing or unknown token, 403 outside scope, both
//! before any data is read.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, TimeZone, Utc};
use geo::{Coord, LineString, SimplifyIdx};
use model::{MoveId, Position, SupplierId, VehicleId, format_ts};
use serde_json::{Value, json};
use store::{JourneyRecord, MoveRecord, TransitionKind};

use crate::{Access, Gateway, error};

/// The longest span one track request may cover.
pub const MAX_SPAN_DAYS: i64 = 7;
/// The most stored points one track may hold (before simplification).
pub const MAX_POINTS: usize = 50_000;
/// The largest accepted `simplify_m`.
pub const MAX_SIMPLIFY_M: f64 = 10_000.0;
/// The span of a vehicle track when `from` is not given: this long before `to`.
pub const DEFAULT_SPAN_MINUTES: i64 = 60;

/// Mean Earth radius, metres.
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// A validated track request.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackQuery {
    /// Start of the span, inclusive.
    pub from: DateTime<Utc>,
    /// End of the span, inclusive.
    pub to: DateTime<Utc>,
    /// Douglas–Peucker tolerance in metres; 0 keeps every point.
    pub simplify_m: f64,
}

/// Parses `from`, `to` (RFC 3339; default: the hour before `now`) and
/// `simplify_m` (metres, default 0) from a raw query string; other keys
/// (`token`) are ignored. `allow_span` is false for routes whose span is
/// not the caller's to choose. The error is the message for the 400.
pub fn parse_track_query(
    raw: Option<&str>,
    now: DateTime<Utc>,
    allow_span: bool,
) -> Result<TrackQuery, String> {
    let mut from = None;
    let mut to = None;
    let mut simplify_m = 0.0;
    for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "from" | "to" if !allow_span => {
                return Err(format!(
                    "{key} is not accepted here: a move's span is its journeys' start to arrival"
                ));
            }
            "from" => from = Some(parse_time("from", &value)?),
            "to" => to = Some(parse_time("to", &value)?),
            "simplify_m" => {
                simplify_m = value
                    .parse::<f64>()
                    .ok()
                    .filter(|m| m.is_finite() && (0.0..=MAX_SIMPLIFY_M).contains(m))
                    .ok_or_else(|| {
                        format!(
                            "simplify_m must be a number of metres from 0 to {MAX_SIMPLIFY_M}, got {value:?}"
                        )
                    })?;
            }
            _ => {}
        }
    }
    let to = to.unwrap_or(now);
    let from = from.unwrap_or(to - Duration::minutes(DEFAULT_SPAN_MINUTES));
    if from >= to {
        return Err(format!(
            "from ({}) must be before to ({})",
            format_ts(&from),
            format_ts(&to)
        ));
    }
    if to - from > Duration::days(MAX_SPAN_DAYS) {
        return Err(format!(
            "the span from {} to {} is longer than {MAX_SPAN_DAYS} days; ask for a shorter one",
            format_ts(&from),
            format_ts(&to)
        ));
    }
    Ok(TrackQuery {
        from,
        to,
        simplify_m,
    })
}

fn parse_time(key: &str, value: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!("{key} must be an RFC 3339 time with an offset (e.g. 2026-11-21T09:00:00Z), got {value:?}: {e}")
        })
}

/// The indices of the points Douglas–Peucker keeps at a tolerance of
/// `epsilon_m` metres, in order; the first and last are always kept.
/// `points` are (lat, lon) in degrees. They are projected to metres on a
/// local equirectangular plane around the first point (accurate to well under
/// a percent over the few hundred kilometres of a journey), simplified there
/// with `geo`'s `SimplifyIdx`, and mapped back by index — so each kept point
/// keeps its own timestamp.
pub fn simplify_indices(points: &[(f64, f64)], epsilon_m: f64) -> Vec<usize> {
    if points.len() <= 2 || epsilon_m <= 0.0 || !epsilon_m.is_finite() {
        return (0..points.len()).collect();
    }
    let (lat0, lon0) = points[0];
    let k = lat0.to_radians().cos();
    let line: LineString<f64> = points
        .iter()
        .map(|&(lat, lon)| Coord {
            x: EARTH_RADIUS_M * (lon - lon0).to_radians() * k,
            y: EARTH_RADIUS_M * (lat - lat0).to_radians(),
        })
        .collect();
    line.simplify_idx(epsilon_m)
}

/// A track as a GeoJSON Feature: a LineString (a Point for a single fix,
/// no geometry for none) with `properties.timestamps` aligned one to one
/// with the coordinates. Bad fixes (flagged by the tracker) are left out.
pub fn track_feature(vehicle: &VehicleId, points: &[Position], simplify_m: f64) -> Value {
    let good: Vec<&Position> = points.iter().filter(|p| !p.flags.bad_fix).collect();
    let latlon: Vec<(f64, f64)> = good.iter().map(|p| (p.lat, p.lon)).collect();
    let kept = simplify_indices(&latlon, simplify_m);
    let coordinates: Vec<[f64; 2]> = kept.iter().map(|&i| [good[i].lon, good[i].lat]).collect();
    let timestamps: Vec<String> = kept.iter().map(|&i| format_ts(&good[i].ts)).collect();
    let geometry = match coordinates.as_slice() {
        [] => Value::Null,
        [one] => json!({"type": "Point", "coordinates": one}),
        _ => json!({"type": "LineString", "coordinates": coordinates}),
    };
    json!({
        "type": "Feature",
        "geometry": geometry,
        "properties": {
            "vehicle": vehicle.as_str(),
            "timestamps": timestamps,
            "points_before": good.len(),
            "points_after": kept.len(),
            "bad_fixes_excluded": points.len() - good.len(),
            "simplify_m": simplify_m,
        }
    })
}

fn bad_request(message: String) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", &message)
}

fn forbidden(message: &str) -> Response {
    error(StatusCode::FORBIDDEN, "forbidden", message)
}

fn store_failed(e: store::StoreError) -> Response {
    tracing::warn!(error = %e, "history query failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the store could not answer; try again",
    )
}

/// A vehicle's points between two times, refusing more than [`MAX_POINTS`],
/// keeping only `only`'s points when set.
async fn load_track(
    g: &Gateway,
    vehicle: &VehicleId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    only: Option<SupplierId>,
) -> Result<Vec<Position>, Response> {
    let mut points = g
        .store
        .track(vehicle, from, to, MAX_POINTS as i64 + 1)
        .await
        .map_err(store_failed)?;
    if points.len() > MAX_POINTS {
        return Err(bad_request(format!(
            "{vehicle} has more than {MAX_POINTS} points between {} and {}; ask for a shorter span",
            format_ts(&from),
            format_ts(&to)
        )));
    }
    if let Some(s) = only {
        points.retain(|p| p.supplier == s);
    }
    Ok(points)
}

/// Whether a supplier token may see a vehicle (the one policy: [`Gateway::can_see`]).
fn supplier_owns(g: &Gateway, supplier: SupplierId, vehicle: &VehicleId) -> bool {
    g.can_see(&Access::Supplier(supplier), vehicle, Utc::now())
}

/// `GET /api/vehicles/{v}/track`.
pub(crate) async fn vehicle_track(
    State(g): State<Gateway>,
    Path(raw_vehicle): Path<String>,
    access: Access,
    RawQuery(query): RawQuery,
) -> Response {
    let vehicle = match VehicleId::parse(&raw_vehicle) {
        Ok(v) => v,
        Err(e) => return bad_request(e.to_string()),
    };
    let now = Utc::now();
    let (only, window) = match &access {
        Access::ControlRoom => (None, None),
        Access::Supplier(s) if supplier_owns(&g, *s, &vehicle) => (Some(*s), None),
        Access::Supplier(_) => return forbidden("this token may see only its supplier's vehicles"),
        Access::Site(sites) => match g.view.site_window(&vehicle, sites, now) {
            Some(w) => (None, Some(w)),
            None => {
                return forbidden(
                    "a site token sees a vehicle only while it carries a move to or from its sites",
                );
            }
        },
    };
    let mut q = match parse_track_query(query.as_deref(), now, true) {
        Ok(q) => q,
        Err(message) => return bad_request(message),
    };
    // A site sees the track only inside its visibility window.
    let empty = match window {
        Some((start, end)) => {
            q.from = q.from.max(start);
            q.to = q.to.min(end);
            q.from >= q.to
        }
        None => false,
    };
    let loaded = if empty {
        Ok(Vec::new())
    } else {
        load_track(&g, &vehicle, q.from, q.to, only).await
    };
    match loaded {
        Ok(points) => {
            let mut feature = track_feature(&vehicle, &points, q.simplify_m);
            feature["properties"]["from"] = json!(format_ts(&q.from));
            feature["properties"]["to"] = json!(format_ts(&q.to));
            axum::Json(feature).into_response()
        }
        Err(reply) => reply,
    }
}

/// `GET /api/moves/{id}/track`.
pub(crate) async fn move_track(
    State(g): State<Gateway>,
    Path(raw_id): Path<String>,
    access: Access,
    RawQuery(query): RawQuery,
) -> Response {
    let id = match MoveId::parse(&raw_id) {
        Ok(id) => id,
        Err(e) => return bad_request(e.to_string()),
    };
    let now = Utc::now();
    let q = match parse_track_query(query.as_deref(), now, false) {
        Ok(q) => q,
        Err(message) => return bad_request(message),
    };
    let m = match g.store.get_move(&id).await {
        Ok(Some(m)) => m,
        // Only the control room learns whether a move exists.
        Ok(None) if access == Access::ControlRoom => {
            return error(StatusCode::NOT_FOUND, "not_found", &format!("no move {id}"));
        }
        Ok(None) => return forbidden("this token may not see this move"),
        Err(e) => return store_failed(e),
    };
    let journeys: Vec<&JourneyRecord> = match &access {
        Access::ControlRoom => m.journeys.iter().collect(),
        Access::Site(sites) => {
            if !sites.contains(&m.from_location) && !sites.contains(&m.to_location) {
                return forbidden("this token may see only moves to or from its sites");
            }
            m.journeys.iter().collect()
        }
        Access::Supplier(s) => {
            let own: Vec<&JourneyRecord> = m
                .journeys
                .iter()
                .filter(|j| j.vehicle.is_some_and(|v| supplier_owns(&g, *s, &v)))
                .collect();
            if own.is_empty() {
                return forbidden("this move is not carried by this supplier's vehicles");
            }
            own
        }
    };
    let only = match access {
        Access::Supplier(s) => Some(s),
        _ => None,
    };
    let spans = match journey_spans(&g, &m, now).await {
        Ok(spans) => spans,
        Err(e) => return store_failed(e),
    };
    let mut features = Vec::new();
    for span in spans {
        if !journeys.iter().any(|j| j.id == span.journey.id) {
            continue;
        }
        // Until arrival data exists (#5/#6), a site token is not shown a
        // vehicle after an arrival it cannot see: only known ends, or moves still in transit.
        if matches!(access, Access::Site(_)) && !span.end_known && m.status != "in_transit" {
            continue;
        }
        let Some(vehicle) = span.journey.vehicle else {
            continue;
        };
        let points = if span.from < span.to {
            match load_track(&g, &vehicle, span.from, span.to, only).await {
                Ok(p) => p,
                Err(reply) => return reply,
            }
        } else {
            Vec::new()
        };
        let mut feature = track_feature(&vehicle, &points, q.simplify_m);
        let props = &mut feature["properties"];
        props["journey_id"] = json!(span.journey.id.as_str());
        props["from_location"] = json!(span.journey.from_location.as_str());
        props["to_location"] = json!(span.journey.to_location.as_str());
        props["from"] = json!(format_ts(&span.from));
        props["to"] = json!(format_ts(&span.to));
        props["arrived"] = json!(span.end_known);
        features.push(feature);
    }
    axum::Json(json!({
        "type": "FeatureCollection",
        "move_id": m.id.as_str(),
        "status": m.status,
        "from_location": m.from_location.as_str(),
        "to_location": m.to_location.as_str(),
        "features": features,
    }))
    .into_response()
}

/// The time span of one journey's track.
struct JourneySpan<'a> {
    journey: &'a JourneyRecord,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// Whether `to` is a known arrival (an arrival record or a fence entry),
    /// not "now" or the end of the move's day.
    end_known: bool,
}

/// Works out each journey's span, in journey order:
///
/// - start: for the first journey, the move's arrival record's `departed_at`
///   if there is one; otherwise the vehicle's first exit (or pass-through) of
///   the journey's `from_location` fence at or after the lower bound (the
///   move's date at 00:00 UTC for the first journey, the previous journey's
///   end after that), within a day; otherwise the lower bound itself;
/// - end: for the last journey, the arrival record's `arrived_at`; otherwise
///   the vehicle's first entry (or pass-through) of the journey's
///   `to_location` fence after the start; otherwise now, but no later than
///   the end of the day after the start's (a van is not followed for days
///   on a move whose arrival was never recorded).
async fn journey_spans<'a>(
    g: &Gateway,
    m: &'a MoveRecord,
    now: DateTime<Utc>,
) -> Result<Vec<JourneySpan<'a>>, store::StoreError> {
    let day_start = Utc.from_utc_datetime(&m.date.and_time(chrono::NaiveTime::MIN));
    let arrival = g
        .store
        .arrivals(&m.from_location, &m.to_location, 100)
        .await?
        .into_iter()
        .find(|a| a.move_id == m.id);
    let mut spans = Vec::new();
    let mut lower = day_start;
    let last = m.journeys.len().saturating_sub(1);
    for (k, journey) in m.journeys.iter().enumerate() {
        let transitions = match journey.vehicle {
            Some(v) => {
                g.store
                    .fence_transitions(&v, lower, lower + Duration::days(MAX_SPAN_DAYS))
                    .await?
            }
            None => Vec::new(),
        };
        let departed = transitions
            .iter()
            .find(|t| {
                t.site == journey.from_location
                    && matches!(t.kind, TransitionKind::Exit | TransitionKind::PassThrough)
                    && t.ts <= lower + Duration::days(1)
            })
            .map(|t| t.ts);
        let from = match (&arrival, k) {
            (Some(a), 0) => a.departed_at,
            _ => departed.unwrap_or(lower),
        };
        let entered = transitions
            .iter()
            .find(|t| {
                t.site == journey.to_location
                    && matches!(t.kind, TransitionKind::Enter | TransitionKind::PassThrough)
                    && t.ts > from
            })
            .map(|t| t.ts);
        let (to, end_known) = match (&arrival, entered) {
            (Some(a), _) if k == last => (a.arrived_at, true),
            (_, Some(t)) => (t, true),
            _ => {
                let day_after = Utc
                    .from_utc_datetime(&from.date_naive().and_time(chrono::NaiveTime::MIN))
                    + Duration::days(2);
                (now.min(day_after), false)
            }
        };
        spans.push(JourneySpan {
            journey,
            from,
            to,
            end_known,
        });
        lower = to.max(from);
    }
    Ok(spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 21, 9, 0, 0).unwrap() + Duration::seconds(s)
    }

    fn position(i: i64, lat: f64, lon: f64) -> Position {
        Position::fix(
            SupplierId::parse("geoamey").unwrap(),
            VehicleId::parse("AB12CDE").unwrap(),
            format!("t{i}"),
            at(i),
            lat,
            lon,
        )
    }

    /// A straight track north from Leeds, 10 m per step, with ±2 m of
    /// deterministic east–west noise.
    fn noisy_straight(n: i64) -> Vec<Position> {
        (0..n)
            .map(|i| {
                let noise_m = [2.0, -1.5, 0.5, -2.0, 1.0][(i % 5) as usize];
                let lat = 53.8 + (i as f64 * 10.0) / 111_195.0;
                let lon = -1.55 + noise_m / (111_195.0 * 53.8f64.to_radians().cos());
                position(i, lat, lon)
            })
            .collect()
    }

    #[test]
    fn simplification_reduces_a_noisy_straight_track_keeping_ends_and_times() {
        let points = noisy_straight(500);
        let vehicle = VehicleId::parse("AB12CDE").unwrap();
        let feature = track_feature(&vehicle, &points, 10.0);
        let props = &feature["properties"];
        assert_eq!(props["points_before"], 500);
        let after = props["points_after"].as_u64().unwrap();
        assert!(
            after <= 5,
            "a straight track within ±2 m keeps its ends: {after}"
        );
        let coords = feature["geometry"]["coordinates"].as_array().unwrap();
        let times = props["timestamps"].as_array().unwrap();
        assert_eq!(coords.len() as u64, after);
        assert_eq!(times.len(), coords.len(), "one timestamp per coordinate");
        assert_eq!(coords[0], json!([points[0].lon, points[0].lat]));
        assert_eq!(times[0], json!(format_ts(&points[0].ts)));
        assert_eq!(
            coords.last().unwrap(),
            &json!([points[499].lon, points[499].lat])
        );
        assert_eq!(times.last().unwrap(), &json!(format_ts(&points[499].ts)));
        // Every kept coordinate carries its own point's time.
        for (c, t) in coords.iter().zip(times) {
            let p = points.iter().find(|p| json!([p.lon, p.lat]) == *c).unwrap();
            assert_eq!(*t, json!(format_ts(&p.ts)));
        }
        // With a tolerance below the noise, most points stay.
        let fine = track_feature(&vehicle, &points, 0.5);
        assert!(fine["properties"]["points_after"].as_u64().unwrap() > 100);
        // 0 keeps everything.
        let all = track_feature(&vehicle, &points, 0.0);
        assert_eq!(all["properties"]["points_after"], 500);
    }

    #[test]
    fn simplification_keeps_a_corner() {
        // East 1 km, then north 1 km: the corner is more than 100 m off the chord.
        let mut pts = Vec::new();
        for i in 0..=100 {
            pts.push((53.8, -1.55 + i as f64 * 0.00015));
        }
        for i in 1..=100 {
            pts.push((53.8 + i as f64 * 0.00009, -1.55 + 100.0 * 0.00015));
        }
        assert_eq!(simplify_indices(&pts, 20.0), vec![0, 100, 200]);
    }

    #[test]
    fn short_tracks_and_bad_fixes() {
        let vehicle = VehicleId::parse("AB12CDE").unwrap();
        let none = track_feature(&vehicle, &[], 10.0);
        assert!(none["geometry"].is_null());
        let one = track_feature(&vehicle, &[position(0, 53.8, -1.5)], 10.0);
        assert_eq!(one["geometry"]["type"], "Point");
        let mut bad = position(1, 10.0, 10.0);
        bad.flags.bad_fix = true;
        let two = track_feature(
            &vehicle,
            &[position(0, 53.8, -1.5), bad, position(2, 53.81, -1.5)],
            0.0,
        );
        assert_eq!(two["geometry"]["type"], "LineString");
        assert_eq!(two["properties"]["points_after"], 2);
        assert_eq!(two["properties"]["bad_fixes_excluded"], 1);
    }

    #[test]
    fn query_parameters() {
        let now = at(0);
        let q = parse_track_query(Some("token=x"), now, true).unwrap();
        assert_eq!(
            (q.from, q.to, q.simplify_m),
            (now - Duration::hours(1), now, 0.0)
        );
        let q = parse_track_query(
            Some("from=2026-11-21T08:00:00%2B01:00&to=2026-11-21T09:00:00Z&simplify_m=25"),
            now,
            true,
        )
        .unwrap();
        assert_eq!(q.from, at(-7200));
        assert_eq!(q.simplify_m, 25.0);
        for (bad, says) in [
            ("from=yesterday", "RFC 3339"),
            ("from=2026-11-21T09:00:00", "RFC 3339"),
            (
                "from=2026-11-21T10:00:00Z&to=2026-11-21T09:00:00Z",
                "before",
            ),
            (
                "from=2026-11-01T00:00:00Z&to=2026-11-21T00:00:00Z",
                "7 days",
            ),
            ("simplify_m=-1", "simplify_m"),
            ("simplify_m=NaN", "simplify_m"),
            ("simplify_m=100000", "simplify_m"),
        ] {
            let e = parse_track_query(Some(bad), now, true).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(parse_track_query(Some("from=2026-11-21T09:00:00Z"), now, false).is_err());
    }
}
