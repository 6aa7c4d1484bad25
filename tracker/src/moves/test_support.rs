//! Fixtures for the moves modules' unit tests: sites on one meridian, a
//! book over them, and the reports that drive it at synthetic times.

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use model::wire::Frame;
use model::{
    Event, EventKind, FenceTransition, JourneyId, MoveId, Position, Site, SiteId, SiteKind,
    SupplierId, TransitionKind, VehicleId,
};

use super::{JourneySpec, MoveBook, MoveOutput, MoveSpec, MoveStatus, MovesConfig};
use crate::eta::EtaModel;

pub const VAN: &str = "AB12CDE";
pub const OTHER: &str = "XY99ZZZ";

pub fn site(s: &str) -> SiteId {
    SiteId::parse(s).unwrap()
}
pub fn v(s: &str) -> VehicleId {
    VehicleId::parse(s).unwrap()
}
pub fn mid(s: &str) -> MoveId {
    MoveId::parse(s).unwrap()
}
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 21, 9, 0, 0).unwrap()
}
pub fn at(s: i64) -> DateTime<Utc> {
    t0() + Duration::seconds(s)
}
pub fn today() -> NaiveDate {
    t0().date_naive()
}

/// ORG at 53.0 N, DST 0.5° north of it, ALT 0.5° south.
pub fn book() -> MoveBook {
    let s = |id: &str, lat: f64| Site {
        id: site(id),
        name: id.into(),
        kind: SiteKind::Prison,
        lat,
        lon: -1.5,
        radius_m: 400.0,
    };
    let sites = [s("ORG", 53.0), s("DST", 53.5), s("ALT", 52.5)];
    MoveBook::new(&sites, MovesConfig::default(), EtaModel::default())
}

/// Move `id` ORG → DST, booked for today, with journey `j-{id}`.
pub fn spec(id: &str, vehicle: Option<&str>) -> MoveSpec {
    MoveSpec {
        id: mid(id),
        reference: format!("REF-{id}"),
        from_location: site("ORG"),
        to_location: site("DST"),
        date: today(),
        status: MoveStatus::Booked,
        journeys: vec![JourneySpec {
            id: JourneyId::parse(&format!("j-{id}")).unwrap(),
            from_location: site("ORG"),
            to_location: site("DST"),
            vehicle: vehicle.map(v),
        }],
    }
}

pub fn pos(vehicle: &str, ts: DateTime<Utc>, lat: f64, journey: Option<&str>) -> Position {
    Position {
        journey_id: journey.map(|j| JourneyId::parse(j).unwrap()),
        speed_kmh: Some(60.0),
        ..Position::fix(
            SupplierId::parse("geoamey").unwrap(),
            v(vehicle),
            format!("{vehicle}-{}", ts.timestamp()),
            ts,
            lat,
            -1.5,
        )
    }
}

pub fn event(
    vehicle: &str,
    kind: EventKind,
    ts: DateTime<Utc>,
    move_id: Option<&str>,
    details: serde_json::Value,
) -> Event {
    Event {
        supplier: SupplierId::parse("geoamey").unwrap(),
        vehicle: v(vehicle),
        kind,
        occurred_at: ts,
        move_id: move_id.map(mid),
        journey_id: None,
        details,
    }
}

pub fn crossing(
    vehicle: &str,
    s: &str,
    kind: TransitionKind,
    ts: DateTime<Utc>,
) -> FenceTransition {
    FenceTransition {
        vehicle: v(vehicle),
        site: site(s),
        kind,
        ts,
    }
}

/// The kinds of the alert frames in `out`, in order.
pub fn alert_kinds(out: &[MoveOutput]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            MoveOutput::Frame {
                frame: Frame::Alert(a),
                ..
            } => Some(a.kind.clone()),
            _ => None,
        })
        .collect()
}
