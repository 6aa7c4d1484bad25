//! The moves registry with synthetic time (issue #6): matching rules,
//! arrival and departure, redirects, multi-drop, the ETA's frames and every
//! alert kind, each firing when it should and not otherwise.

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use model::wire::Frame;
use model::{
    AlertRecord, Event, EventKind, FenceTransition, JourneyId, MoveId, Position, Site, SiteId,
    SiteKind, SupplierId, TransitionKind, VehicleId,
};
use movewatch_tracker::eta::EtaModel;
use movewatch_tracker::moves::{
    JourneySpec, MoveBook, MoveOutput, MoveSpec, MoveStatus, MovesConfig,
};

const VAN: &str = "AB12CDE";
const OTHER: &str = "XY99ZZZ";

fn site_id(s: &str) -> SiteId {
    SiteId::parse(s).unwrap()
}
fn v(s: &str) -> VehicleId {
    VehicleId::parse(s).unwrap()
}
fn mid(s: &str) -> MoveId {
    MoveId::parse(s).unwrap()
}

/// ORG at 53.0 N; DST 0.5° north (~55.6 km); ALT 0.5° south; MID halfway ORG–DST.
fn sites() -> Vec<Site> {
    let s = |id: &str, lat: f64| Site {
        id: site_id(id),
        name: id.into(),
        kind: SiteKind::Prison,
        lat,
        lon: -1.5,
        radius_m: 400.0,
    };
    vec![
        s("ORG", 53.0),
        s("DST", 53.5),
        s("ALT", 52.5),
        s("MID", 53.25),
    ]
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 21, 9, 0, 0).unwrap()
}
fn at(s: i64) -> DateTime<Utc> {
    t0() + Duration::seconds(s)
}
fn date() -> NaiveDate {
    t0().date_naive()
}

fn book() -> MoveBook {
    MoveBook::new(&sites(), MovesConfig::default(), EtaModel::default())
}

/// A book with move `m1` (ORG → DST) carried by VAN and started at t0, and
/// what that produced.
fn started() -> (MoveBook, Vec<MoveOutput>) {
    let mut b = book();
    b.upsert(spec("m1", "ORG", "DST", Some(VAN)), t0());
    let mut out = Vec::new();
    b.on_event(
        &event(
            VAN,
            EventKind::MoveStart,
            at(0),
            Some("m1"),
            serde_json::json!({}),
        ),
        &mut out,
    );
    (b, out)
}

fn spec(id: &str, from: &str, to: &str, vehicle: Option<&str>) -> MoveSpec {
    MoveSpec {
        id: mid(id),
        reference: format!("REF-{id}"),
        from_location: site_id(from),
        to_location: site_id(to),
        date: date(),
        status: MoveStatus::Booked,
        journeys: vec![JourneySpec {
            id: JourneyId::parse(&format!("j-{id}")).unwrap(),
            from_location: site_id(from),
            to_location: site_id(to),
            vehicle: vehicle.map(v),
        }],
    }
}

fn pos(vehicle: &str, ts: DateTime<Utc>, lat: f64, speed: f64, journey: Option<&str>) -> Position {
    Position {
        journey_id: journey.map(|j| JourneyId::parse(j).unwrap()),
        speed_kmh: Some(speed),
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

fn event(
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

/// A `JourneyStart` for move `id`, naming the vehicle that reports it.
fn journey_start(vehicle: &str, ts: DateTime<Utc>, id: &str) -> Event {
    event(
        vehicle,
        EventKind::JourneyStart,
        ts,
        Some(id),
        serde_json::json!({ "vehicle_reg": vehicle }),
    )
}

fn crossing(vehicle: &str, site: &str, kind: TransitionKind, ts: DateTime<Utc>) -> FenceTransition {
    FenceTransition {
        vehicle: v(vehicle),
        site: site_id(site),
        kind,
        ts,
    }
}

fn frames(out: &[MoveOutput]) -> Vec<&Frame> {
    out.iter()
        .filter_map(|o| match o {
            MoveOutput::Frame { frame, .. } => Some(frame),
            _ => None,
        })
        .collect()
}

fn arrivals(out: &[MoveOutput]) -> Vec<(String, String)> {
    frames(out)
        .into_iter()
        .filter_map(|f| match f {
            Frame::Arrival(a) => Some((a.move_id.to_string(), a.site.to_string())),
            _ => None,
        })
        .collect()
}

fn alerts(out: &[MoveOutput]) -> Vec<String> {
    frames(out)
        .into_iter()
        .filter_map(|f| match f {
            Frame::Alert(a) => Some(a.kind.clone()),
            _ => None,
        })
        .collect()
}

fn status(b: &MoveBook, id: &str) -> MoveStatus {
    b.details(&mid(id)).unwrap().spec.status
}
fn vehicle_of(b: &MoveBook, id: &str) -> (Option<VehicleId>, Option<&'static str>) {
    let d = b.details(&mid(id)).unwrap();
    (d.view.vehicle, d.view.vehicle_match)
}

/// Drives `vehicle` from `from_lat` to `to_lat` at `kmh`, one fix every 30 s.
fn drive(
    b: &mut MoveBook,
    vehicle: &str,
    start: i64,
    from_lat: f64,
    to_lat: f64,
    kmh: f64,
    out: &mut Vec<MoveOutput>,
) -> i64 {
    let metres = (to_lat - from_lat).abs() * 111_195.0;
    let steps = (metres / (kmh / 3.6 * 30.0)).ceil().max(1.0) as i64;
    for i in 0..=steps {
        let lat = from_lat + (to_lat - from_lat) * i as f64 / steps as f64;
        b.on_position(&pos(vehicle, at(start + 30 * i), lat, kmh, None), out);
    }
    start + 30 * steps
}

#[test]
fn an_arrival_is_detected_exactly_once_and_departure_before_it() {
    let mut b = book();
    let mut out = b.upsert(spec("m1", "ORG", "DST", Some(VAN)), t0());
    assert!(out.iter().any(|o| matches!(o, MoveOutput::Save(_))));
    out.clear();
    b.on_position(&pos(VAN, at(0), 53.0, 0.0, None), &mut out);
    b.on_transition(
        &crossing(VAN, "ORG", TransitionKind::Exit, at(60)),
        &mut out,
    );
    assert_eq!(status(&b, "m1"), MoveStatus::InTransit);
    assert!(
        frames(&out)
            .iter()
            .any(|f| matches!(f, Frame::Departure(d) if d.site == site_id("ORG")))
    );
    let end = drive(&mut b, VAN, 60, 53.0, 53.5, 80.0, &mut out);
    assert!(b.details(&mid("m1")).unwrap().view.eta.is_some());
    out.clear();
    b.on_transition(
        &crossing(VAN, "DST", TransitionKind::Enter, at(end)),
        &mut out,
    );
    b.on_transition(
        &crossing(VAN, "DST", TransitionKind::Enter, at(end + 10)),
        &mut out,
    );
    assert_eq!(arrivals(&out), vec![("m1".into(), "DST".into())]);
    let facts: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            MoveOutput::Arrived(a) => Some(a.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(facts.len(), 1);
    assert_eq!(facts[0].departed_at, at(60));
    assert_eq!(facts[0].arrived_at, at(end));
    assert!(
        (facts[0].distance_m - 55_600.0).abs() < 1_000.0,
        "{}",
        facts[0].distance_m
    );
    assert_eq!(status(&b, "m1"), MoveStatus::Arrived);
    assert_eq!(b.details(&mid("m1")).unwrap().view.eta, None);
    // The fences' exit and a later enter at the destination are no second arrival.
    out.clear();
    b.on_transition(
        &crossing(VAN, "DST", TransitionKind::Exit, at(end + 900)),
        &mut out,
    );
    b.on_transition(
        &crossing(VAN, "DST", TransitionKind::Enter, at(end + 1900)),
        &mut out,
    );
    assert!(arrivals(&out).is_empty());
    // Completed by the event; the model learned the trip.
    b.on_event(
        &event(
            VAN,
            EventKind::MoveComplete,
            at(end + 2000),
            Some("m1"),
            serde_json::json!({}),
        ),
        &mut out,
    );
    assert_eq!(status(&b, "m1"), MoveStatus::Completed);
    assert_eq!(b.eta_model().trips(), 1);
}

#[test]
fn a_van_passing_a_prison_on_the_motorway_never_arrives_there() {
    let (mut b, mut out) = started();
    b.on_transition(
        &crossing(VAN, "DST", TransitionKind::PassThrough, at(100)),
        &mut out,
    );
    assert!(arrivals(&out).is_empty());
    assert_eq!(status(&b, "m1"), MoveStatus::InTransit);
    // Nor does stopping at another prison on the way.
    b.on_transition(
        &crossing(VAN, "MID", TransitionKind::Enter, at(200)),
        &mut out,
    );
    assert!(arrivals(&out).is_empty());
    assert_eq!(status(&b, "m1"), MoveStatus::InTransit);
}

#[test]
fn a_redirect_moves_the_eta_to_the_new_destination() {
    let (mut b, mut out) = started();
    b.on_position(&pos(VAN, at(10), 53.25, 70.0, None), &mut out);
    let before = b.details(&mid("m1")).unwrap().view;
    let d_before = before.distance_remaining_m.unwrap();
    out.clear();
    b.on_event(
        &event(
            VAN,
            EventKind::MoveRedirect,
            at(20),
            Some("m1"),
            serde_json::json!({"to_location": "ALT"}),
        ),
        &mut out,
    );
    let after = b.details(&mid("m1")).unwrap().view;
    assert_eq!(after.to_location, site_id("ALT"));
    // ALT is three times as far from MID as DST is.
    let d_after = after.distance_remaining_m.unwrap();
    assert!(
        (d_after / d_before - 3.0).abs() < 0.05,
        "{d_before} → {d_after}"
    );
    assert!(after.eta.unwrap() > before.eta.unwrap());
    assert!(frames(&out).iter().any(
        |f| matches!(f, Frame::Move(m) if m.to_location == site_id("ALT") && m.eta.is_some())
    ));
    assert!(
        out.iter()
            .any(|o| matches!(o, MoveOutput::Save(s) if s.to_location == site_id("ALT")))
    );
    // Entering the old destination is no arrival; the new one is.
    out.clear();
    b.on_transition(
        &crossing(VAN, "DST", TransitionKind::Enter, at(900)),
        &mut out,
    );
    b.on_transition(
        &crossing(VAN, "ALT", TransitionKind::Enter, at(3000)),
        &mut out,
    );
    assert_eq!(arrivals(&out), vec![("m1".into(), "ALT".into())]);
}

#[test]
fn two_moves_on_one_van_both_arrive_at_their_own_sites() {
    let mut b = book();
    b.upsert(spec("m1", "ORG", "MID", Some(VAN)), t0());
    b.upsert(spec("m2", "ORG", "DST", Some(VAN)), t0());
    let mut out = Vec::new();
    b.on_position(&pos(VAN, at(0), 53.0, 0.0, None), &mut out);
    b.on_transition(
        &crossing(VAN, "ORG", TransitionKind::Exit, at(30)),
        &mut out,
    );
    assert_eq!(b.move_ids_of(&v(VAN)).len(), 2);
    let end = drive(&mut b, VAN, 30, 53.0, 53.25, 80.0, &mut out);
    out.clear();
    b.on_transition(
        &crossing(VAN, "MID", TransitionKind::Enter, at(end)),
        &mut out,
    );
    assert_eq!(arrivals(&out), vec![("m1".into(), "MID".into())]);
    assert_eq!(status(&b, "m2"), MoveStatus::InTransit);
    b.on_transition(
        &crossing(VAN, "MID", TransitionKind::Exit, at(end + 600)),
        &mut out,
    );
    let end = drive(&mut b, VAN, end + 600, 53.25, 53.5, 80.0, &mut out);
    out.clear();
    b.on_transition(
        &crossing(VAN, "DST", TransitionKind::Enter, at(end)),
        &mut out,
    );
    assert_eq!(arrivals(&out), vec![("m2".into(), "DST".into())]);
    assert_eq!(status(&b, "m1"), MoveStatus::Arrived);
}

#[test]
fn matching_by_vehicle_change_journey_id_and_journey_start_strongest_first() {
    let mut b = book();
    b.upsert(spec("m1", "ORG", "DST", None), t0());
    let mut out = Vec::new();
    // A JourneyStart names VAN.
    b.on_event(
        &event(
            OTHER,
            EventKind::JourneyStart,
            at(10),
            Some("m1"),
            serde_json::json!({"vehicle_reg": VAN}),
        ),
        &mut out,
    );
    assert_eq!(vehicle_of(&b, "m1"), (Some(v(VAN)), Some("confirmed")));
    assert_eq!(status(&b, "m1"), MoveStatus::InTransit);
    assert_eq!(b.move_ids_of(&v(VAN)), vec![mid("m1")]);
    assert!(b.move_ids_of(&v(OTHER)).is_empty());
    // A change of vehicle after the start hands the journey over at once.
    out.clear();
    b.on_event(
        &Event {
            journey_id: Some(JourneyId::parse("j-m1").unwrap()),
            ..event(
                OTHER,
                EventKind::JourneyChangeVehicle,
                at(20),
                None,
                serde_json::json!({"vehicle_reg": OTHER, "previous_vehicle_reg": VAN}),
            )
        },
        &mut out,
    );
    assert_eq!(vehicle_of(&b, "m1"), (Some(v(OTHER)), Some("confirmed")));
    assert_eq!(b.move_ids_of(&v(OTHER)), vec![mid("m1")]);
    assert!(b.move_ids_of(&v(VAN)).is_empty());
    assert!(
        out.iter()
            .any(|o| matches!(o, MoveOutput::Save(s) if s.journeys[0].vehicle == Some(v(OTHER))))
    );
    // The old van's points still carrying the journey id do not take it back,
    // and neither does a late JourneyStart naming it.
    b.on_position(&pos(VAN, at(30), 53.1, 60.0, Some("j-m1")), &mut out);
    assert_eq!(vehicle_of(&b, "m1").0, Some(v(OTHER)));
    b.on_event(&journey_start(VAN, at(40), "m1"), &mut out);
    assert_eq!(vehicle_of(&b, "m1").0, Some(v(OTHER)));
    // A later change (found by the previous vehicle alone) hands it back.
    b.on_event(
        &event(
            OTHER,
            EventKind::JourneyChangeVehicle,
            at(50),
            None,
            serde_json::json!({"vehicle_reg": VAN, "previous_vehicle_reg": OTHER}),
        ),
        &mut out,
    );
    assert_eq!(vehicle_of(&b, "m1").0, Some(v(VAN)));
}

#[test]
fn a_journey_id_outranks_a_journey_start_and_the_booking() {
    let mut b = book();
    b.upsert(spec("m1", "ORG", "DST", Some(VAN)), t0());
    let mut out = Vec::new();
    b.on_position(&pos(OTHER, at(30), 53.1, 60.0, Some("j-m1")), &mut out);
    assert_eq!(vehicle_of(&b, "m1").0, Some(v(OTHER)));
    b.on_event(&journey_start(VAN, at(40), "m1"), &mut out);
    assert_eq!(vehicle_of(&b, "m1").0, Some(v(OTHER)));
}

#[test]
fn inference_makes_a_probable_match_that_arrival_confirms() {
    let mut b = book();
    b.upsert(spec("m1", "ORG", "DST", None), t0());
    let mut out = Vec::new();
    b.on_position(&pos(VAN, at(0), 53.0, 0.0, None), &mut out);
    b.on_transition(
        &crossing(VAN, "ORG", TransitionKind::Exit, at(60)),
        &mut out,
    );
    assert_eq!(vehicle_of(&b, "m1"), (Some(v(VAN)), Some("probable")));
    // The guess is shown to the control room; the sites keep the booked
    // move without it (no vehicle, nothing measured from it).
    assert_eq!(status(&b, "m1"), MoveStatus::Booked);
    assert!(b.sites_seeing(&v(VAN), at(60)).is_empty());
    let site_view = b.move_views(Some(&site_id("DST")), at(60));
    assert_eq!(site_view.len(), 1);
    assert_eq!(site_view[0].status, "booked");
    assert_eq!(site_view[0].vehicle, None);
    assert_eq!(site_view[0].eta, None);
    assert_eq!(b.move_views(None, at(60)).len(), 1);
    assert_eq!(
        b.move_views(None, at(60))[0].vehicle_match,
        Some("probable")
    );
    let end = drive(&mut b, VAN, 60, 53.0, 53.5, 80.0, &mut out);
    assert!(
        b.details(&mid("m1")).unwrap().view.eta.is_some(),
        "probable moves get an ETA"
    );
    out.clear();
    b.on_transition(
        &crossing(VAN, "DST", TransitionKind::Enter, at(end)),
        &mut out,
    );
    assert_eq!(arrivals(&out), vec![("m1".into(), "DST".into())]);
    assert_eq!(vehicle_of(&b, "m1"), (Some(v(VAN)), Some("confirmed")));
}

#[test]
fn inference_is_confirmed_or_dropped_by_later_events() {
    // Confirmed by a JourneyStart naming the same vehicle.
    let mut b = book();
    b.upsert(spec("m1", "ORG", "DST", None), t0());
    let mut out = Vec::new();
    b.on_transition(
        &crossing(VAN, "ORG", TransitionKind::Exit, at(60)),
        &mut out,
    );
    b.on_event(&journey_start(VAN, at(90), "m1"), &mut out);
    assert_eq!(vehicle_of(&b, "m1"), (Some(v(VAN)), Some("confirmed")));
    assert_eq!(status(&b, "m1"), MoveStatus::InTransit);
    assert_eq!(b.details(&mid("m1")).unwrap().departed_at, Some(at(60)));
    assert!(!b.sites_seeing(&v(VAN), at(90)).is_empty());

    // Dropped by a JourneyStart naming another vehicle.
    let mut b = book();
    b.upsert(spec("m1", "ORG", "DST", None), t0());
    b.on_transition(
        &crossing(VAN, "ORG", TransitionKind::Exit, at(60)),
        &mut out,
    );
    b.on_event(&journey_start(OTHER, at(90), "m1"), &mut out);
    assert_eq!(vehicle_of(&b, "m1"), (Some(v(OTHER)), Some("confirmed")));
    assert!(b.move_ids_of(&v(VAN)).is_empty());
    assert_eq!(b.details(&mid("m1")).unwrap().departed_at, None);

    // Dropped when the vehicle goes back into the origin.
    let mut b = book();
    b.upsert(spec("m1", "ORG", "DST", None), t0());
    b.on_transition(
        &crossing(VAN, "ORG", TransitionKind::Exit, at(60)),
        &mut out,
    );
    b.on_transition(
        &crossing(VAN, "ORG", TransitionKind::Enter, at(600)),
        &mut out,
    );
    assert_eq!(vehicle_of(&b, "m1"), (None, None));

    // Never for a move on another day, nor one that has a vehicle, nor a pass-through.
    let mut b = book();
    let mut tomorrow = spec("m1", "ORG", "DST", None);
    tomorrow.date = date().succ_opt().unwrap();
    b.upsert(tomorrow, t0());
    b.upsert(spec("m2", "ORG", "DST", Some(OTHER)), t0());
    b.upsert(spec("m3", "ORG", "DST", None), t0());
    b.on_transition(
        &crossing(VAN, "ORG", TransitionKind::PassThrough, at(30)),
        &mut out,
    );
    assert_eq!(vehicle_of(&b, "m3"), (None, None));
    b.on_transition(
        &crossing(VAN, "ORG", TransitionKind::Exit, at(60)),
        &mut out,
    );
    assert_eq!(vehicle_of(&b, "m1"), (None, None));
    assert_eq!(vehicle_of(&b, "m2").0, Some(v(OTHER)));
    assert_eq!(vehicle_of(&b, "m3"), (Some(v(VAN)), Some("probable")));
}

#[test]
fn move_frames_follow_the_eta_and_arriving_30_fires_once() {
    let (mut b, mut out) = started();
    out.clear();
    let end = drive(&mut b, VAN, 0, 53.0, 53.5, 80.0, &mut out);
    let moves: Vec<_> = frames(&out)
        .into_iter()
        .filter_map(|f| match f {
            Frame::Move(m) => Some(m.clone()),
            _ => None,
        })
        .collect();
    // Steady driving keeps the ETA still: far fewer frames than fixes.
    assert!(
        !moves.is_empty() && moves.len() < (end / 30) as usize / 2,
        "{} frames",
        moves.len()
    );
    for m in &moves {
        assert!(m.eta_low <= m.eta && m.eta <= m.eta_high, "{m:?}");
    }
    assert_eq!(alerts(&out), vec!["arriving_30".to_string()]);
}

#[test]
fn lodging_suspends_the_eta_and_the_time_alerts() {
    let (mut b, mut out) = started();
    b.on_position(&pos(VAN, at(10), 53.1, 0.0, None), &mut out);
    b.on_event(
        &event(
            VAN,
            EventKind::MoveLodgingStart,
            at(20),
            Some("m1"),
            serde_json::json!({"location": "MID"}),
        ),
        &mut out,
    );
    let d = b.details(&mid("m1")).unwrap();
    assert_eq!((d.view.eta, d.lodging), (None, Some(site_id("MID"))));
    out.clear();
    out.extend(b.tick(at(4 * 3600)));
    assert!(alerts(&out).is_empty(), "{:?}", alerts(&out));
    b.on_event(
        &event(
            VAN,
            EventKind::MoveLodgingEnd,
            at(5 * 3600),
            Some("m1"),
            serde_json::json!({}),
        ),
        &mut out,
    );
    b.on_position(&pos(VAN, at(5 * 3600 + 10), 53.1, 50.0, None), &mut out);
    assert!(b.details(&mid("m1")).unwrap().view.eta.is_some());
}

#[test]
fn gps_gap_and_device_silent_fire_once_per_silence() {
    let mut b = book();
    b.upsert(spec("m1", "ORG", "DST", Some(VAN)), t0());
    let mut out = Vec::new();
    b.on_position(&pos(VAN, at(0), 53.0, 0.0, None), &mut out);
    // Booked, not in transit: no gps_gap, but device_silent after 5 min.
    assert!(alerts(&b.tick(at(120))).is_empty());
    assert_eq!(alerts(&b.tick(at(301))), vec!["device_silent"]);
    assert!(alerts(&b.tick(at(400))).is_empty());
    b.on_event(
        &event(
            VAN,
            EventKind::MoveStart,
            at(410),
            Some("m1"),
            serde_json::json!({}),
        ),
        &mut out,
    );
    b.on_position(&pos(VAN, at(420), 53.01, 50.0, None), &mut out);
    assert!(alerts(&b.tick(at(470))).is_empty(), "50 s is no gap");
    assert_eq!(alerts(&b.tick(at(481))), vec!["gps_gap"]);
    assert!(alerts(&b.tick(at(600))).is_empty());
    assert_eq!(alerts(&b.tick(at(721))), vec!["device_silent"]);
    // A point re-arms both.
    b.on_position(&pos(VAN, at(730), 53.02, 50.0, None), &mut out);
    assert_eq!(alerts(&b.tick(at(800))), vec!["gps_gap"]);
    // A vehicle carrying nothing never alerts.
    b.on_position(&pos(OTHER, at(0), 52.0, 50.0, None), &mut out);
    assert!(
        b.tick(at(3600))
            .iter()
            .all(|o| !matches!(o, MoveOutput::Frame { vehicle: Some(x), .. } if *x == v(OTHER)))
    );
}

#[test]
fn stopped_fires_after_ten_slow_minutes_away_from_sites_only() {
    let (mut b, mut out) = started();
    // Slow for 9.5 minutes, then moving again: nothing.
    for i in 0..20 {
        b.on_position(&pos(VAN, at(30 * i), 53.1, 2.0, None), &mut out);
    }
    b.on_position(&pos(VAN, at(600), 53.11, 50.0, None), &mut out);
    assert!(alerts(&out).iter().all(|a| a != "stopped"));
    // Slow for 10 minutes on the road: one alert.
    for i in 0..25 {
        b.on_position(&pos(VAN, at(630 + 30 * i), 53.11, 1.0, None), &mut out);
        out.extend(b.tick(at(640 + 30 * i)));
    }
    assert_eq!(alerts(&out).iter().filter(|a| *a == "stopped").count(), 1);
    // Waiting inside a site (entered): never.
    out.clear();
    b.on_position(&pos(VAN, at(2000), 53.25, 50.0, None), &mut out);
    b.on_transition(
        &crossing(VAN, "MID", TransitionKind::Enter, at(2010)),
        &mut out,
    );
    for i in 0..40 {
        b.on_position(&pos(VAN, at(2030 + 30 * i), 53.25, 0.0, None), &mut out);
        out.extend(b.tick(at(2040 + 30 * i)));
    }
    assert!(
        alerts(&out).iter().all(|a| a != "stopped"),
        "{:?}",
        alerts(&out)
    );
}

#[test]
fn breakdown_alerts_name_the_vehicle_and_its_move() {
    let (mut b, mut out) = started();
    out.clear();
    b.on_event(
        &event(
            VAN,
            EventKind::PersonMoveVehicleBrokeDown,
            at(60),
            None,
            serde_json::json!({}),
        ),
        &mut out,
    );
    let alert = frames(&out)
        .into_iter()
        .find_map(|f| match f {
            Frame::Alert(a) => Some(a.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (alert.kind.as_str(), alert.vehicle, alert.move_id),
        ("breakdown", v(VAN), Some(mid("m1")))
    );
    // Sent to the sites of the move, and kept for snapshots.
    assert!(out.iter().any(|o| matches!(o, MoveOutput::Frame { frame: Frame::Alert(_), sites, .. } if sites.contains(&site_id("DST")))));
    assert_eq!(b.recent_alerts(Some(&site_id("DST"))).len(), 1);
    assert!(b.recent_alerts(Some(&site_id("ALT"))).is_empty());
    // Other events are no breakdown.
    out.clear();
    b.on_event(
        &event(
            VAN,
            EventKind::JourneyArriveAtOuterGate,
            at(70),
            Some("m1"),
            serde_json::json!({}),
        ),
        &mut out,
    );
    assert!(alerts(&out).is_empty());
}

#[test]
fn off_route_fires_when_the_distance_from_the_corridor_keeps_growing() {
    let (mut b, mut out) = started();
    // On the corridor, weaving a little: nothing.
    for i in 0..30 {
        let mut p = pos(VAN, at(60 * i), 53.0 + 0.01 * i as f64, 60.0, None);
        p.lon = -1.5 + if i % 2 == 0 { 0.02 } else { -0.02 };
        b.on_position(&p, &mut out);
    }
    assert!(alerts(&out).iter().all(|a| a != "off_route"));
    // Heading west, away from the line: beyond 14 km (25 % of 55.6 km) and growing.
    for i in 0..20 {
        let mut p = pos(VAN, at(1800 + 60 * i), 53.3, 60.0, None);
        p.lon = -1.5 - 0.03 * i as f64;
        b.on_position(&p, &mut out);
    }
    assert_eq!(alerts(&out).iter().filter(|a| *a == "off_route").count(), 1);
    // Far out but coming back: no new alert.
    out.clear();
    for i in 0..10 {
        let mut p = pos(VAN, at(3000 + 60 * i), 53.3, 60.0, None);
        p.lon = -2.07 + 0.03 * i as f64;
        b.on_position(&p, &mut out);
    }
    assert!(alerts(&out).iter().all(|a| a != "off_route"));
}

#[test]
fn site_visibility_runs_from_journey_start_until_15_minutes_after_arrival() {
    let mut b = book();
    b.upsert(spec("m1", "ORG", "DST", Some(VAN)), t0());
    let dst = site_id("DST");
    // Booked with a vehicle: the move is the site's, the vehicle not yet.
    assert!(b.sites_seeing(&v(VAN), at(0)).is_empty());
    assert!(b.vehicles_seen_by(&dst, at(0)).is_empty());
    let mut out = Vec::new();
    b.on_event(&journey_start(VAN, at(10), "m1"), &mut out);
    assert_eq!(
        b.sites_seeing(&v(VAN), at(10)),
        vec![site_id("ORG"), dst.clone()]
    );
    assert_eq!(b.vehicles_seen_by(&dst, at(10)), vec![v(VAN)]);
    assert!(b.vehicles_seen_by(&site_id("ALT"), at(10)).is_empty());
    b.on_transition(
        &crossing(VAN, "DST", TransitionKind::Enter, at(3600)),
        &mut out,
    );
    assert_eq!(b.vehicles_seen_by(&dst, at(3600 + 899)), vec![v(VAN)]);
    assert!(b.vehicles_seen_by(&dst, at(3600 + 901)).is_empty());
    assert!(b.sites_seeing(&v(VAN), at(3600 + 901)).is_empty());
}

/// One trip ORG → DST: fast (90 km/h) until 5 km out, then 20 km/h to the
/// gate; fixes every 30 s from the origin's exit; the enter at the end.
/// Returns the move's (fix time, ETA) at each fix.
fn slow_end_trip(
    b: &mut MoveBook,
    id: &str,
    vehicle: &str,
    start: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, f64, DateTime<Utc>)> {
    let mut out = Vec::new();
    b.upsert(spec(id, "ORG", "DST", Some(vehicle)), start);
    b.on_transition(
        &crossing(vehicle, "ORG", TransitionKind::Exit, start),
        &mut out,
    );
    let to_go_km = |lat: f64| (53.5 - lat) * 111.195;
    let (mut lat, mut t) = (53.0, start);
    let mut seen = Vec::new();
    while to_go_km(lat) > 0.0 {
        let kmh = if to_go_km(lat) > 5.0 { 90.0 } else { 20.0 };
        b.on_position(&pos(vehicle, t, lat, kmh, None), &mut out);
        if let Some(eta) = b.details(&mid(id)).unwrap().view.eta {
            let eta = DateTime::parse_from_rfc3339(&eta).unwrap().to_utc();
            seen.push((t, to_go_km(lat), eta));
        }
        lat += kmh / 120.0 / 111.195;
        t += Duration::seconds(30);
    }
    b.on_transition(
        &crossing(vehicle, "DST", TransitionKind::Enter, t),
        &mut out,
    );
    assert_eq!(arrivals(&out), vec![(id.to_string(), "DST".to_string())]);
    seen
}

#[test]
fn the_eta_learns_a_sites_slow_approach_from_completed_journeys() {
    let mut b = book();
    // Minutes the ETA was late (negative: early) at the first fix under `km` to go.
    let error_at = |seen: &[(DateTime<Utc>, f64, DateTime<Utc>)], km: f64| {
        let arrived = seen.last().unwrap().0 + Duration::seconds(30);
        let &(_, _, eta) = seen.iter().find(|(_, to_go, _)| *to_go < km).unwrap();
        (eta - arrived).num_seconds() as f64 / 60.0
    };
    // 8 km out the van is still fast; the 5 slow km (15 min) are ahead.
    let first = slow_end_trip(&mut b, "m0", "VAN0", t0());
    let before = error_at(&first, 8.0);
    assert!(before < -2.0, "before history, 8 km out: {before:.1} min");
    for day in 1..15 {
        let start = t0() + Duration::days(day);
        slow_end_trip(&mut b, &format!("m{day}"), &format!("VAN{day}"), start);
    }
    assert!(b.eta_model().curves().trips() >= 15);
    let last = slow_end_trip(&mut b, "m99", "VAN99", t0() + Duration::days(20));
    for km in [40.0, 8.0, 3.0, 1.0] {
        let err = error_at(&last, km);
        assert!(err.abs() < 1.0, "after, {km} km out: {err:.1} min");
    }
}

/// The alerts kept (as the store would get them), not their frames.
fn kept_alerts(out: &[MoveOutput]) -> Vec<AlertRecord> {
    out.iter()
        .filter_map(|o| match o {
            MoveOutput::Alert(a) => Some(a.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn an_alert_raised_before_a_restart_is_not_raised_again_after_it() {
    // Live: 10 km out at 60 km/h, so `arriving_30` is raised.
    let near = |s| pos(VAN, at(s), 53.41, 60.0, None);
    let (mut live, _) = started();
    let mut out = Vec::new();
    live.on_position(&near(600), &mut out);
    let raised = kept_alerts(&out);
    assert_eq!(
        raised.iter().map(|a| a.kind.as_str()).collect::<Vec<_>>(),
        ["arriving_30"]
    );

    // Restarted with what the store kept: the fix and the alert.
    let (mut restarted, _) = started();
    restarted.restore_fix(&near(600));
    restarted.restore_alerts(&raised, at(600));
    assert!(kept_alerts(&restarted.restore_estimates()).is_empty());
    let mut out = Vec::new();
    restarted.on_position(&near(630), &mut out);
    assert!(kept_alerts(&out).is_empty(), "raised again: {out:?}");
    assert_eq!(restarted.recent_alerts(None).len(), 1, "kept for snapshots");

    // Without the alert kept, the restarted book raises it (so the check above can fail).
    let (mut forgetful, _) = started();
    forgetful.restore_fix(&near(600));
    let estimated = kept_alerts(&forgetful.restore_estimates());
    assert_eq!(estimated.len(), 1, "{estimated:?}");
}

#[test]
fn a_gap_alert_is_stamped_when_the_gap_began_so_a_repeat_is_identical() {
    let silent_from = pos(VAN, at(0), 53.2, 50.0, None);
    let gap = |book: &mut MoveBook, minutes_later: i64| {
        kept_alerts(&book.tick(silent_from.ts + Duration::minutes(minutes_later)))
            .into_iter()
            .find(|a| a.kind == "gps_gap")
            .expect("a gps_gap alert")
    };
    let (mut first, _) = started();
    first.restore_fix(&silent_from);
    let (mut second, _) = started();
    second.restore_fix(&silent_from);
    let (a, b) = (gap(&mut first, 2), gap(&mut second, 4));
    assert_eq!(a.ts, silent_from.ts + Duration::seconds(60));
    assert_eq!(
        (a.kind, a.vehicle, a.move_id, a.ts),
        (b.kind, b.vehicle, b.move_id, b.ts)
    );
}

// ---- the lifecycle of the amended contract ("Moves and sites") ----------

/// A `move` frame as sent: (move id, status, vehicle, to_location, the site
/// channels it goes to).
type SentMove = (String, &'static str, Option<VehicleId>, String, Vec<String>);

/// The `move` frames in `out`.
fn move_frames(out: &[MoveOutput]) -> Vec<SentMove> {
    out.iter()
        .filter_map(|o| match o {
            MoveOutput::Frame {
                frame: Frame::Move(m),
                sites,
                ..
            } => Some((
                m.move_id.to_string(),
                m.status,
                m.vehicle,
                m.to_location.to_string(),
                sites.iter().map(|s| s.to_string()).collect(),
            )),
            _ => None,
        })
        .collect()
}

/// Every site channel any frame in `out` goes to.
fn sites_told(out: &[MoveOutput]) -> Vec<String> {
    let mut all: Vec<String> = out
        .iter()
        .filter_map(|o| match o {
            MoveOutput::Frame { sites, .. } => Some(sites.iter().map(|s| s.to_string())),
            _ => None,
        })
        .flatten()
        .collect();
    all.sort();
    all.dedup();
    all
}

#[test]
fn a_van_based_at_the_destination_does_not_arrive_before_it_left_the_origin() {
    let mut b = book();
    b.upsert(spec("m1", "ORG", "DST", Some(VAN)), t0());
    let mut out = Vec::new();
    // The van's first fix is in its yard at the destination.
    b.on_position(&pos(VAN, at(0), 53.5, 0.0, None), &mut out);
    b.on_transition(
        &crossing(VAN, "DST", TransitionKind::Enter, at(0)),
        &mut out,
    );
    assert!(arrivals(&out).is_empty(), "no arrival before departure");
    assert_eq!(status(&b, "m1"), MoveStatus::Booked);
    assert!(b.details(&mid("m1")).unwrap().arrived_at.is_none());
    // It leaves its yard, drives to the origin and collects the move.
    b.on_transition(
        &crossing(VAN, "DST", TransitionKind::Exit, at(300)),
        &mut out,
    );
    let t = drive(&mut b, VAN, 300, 53.5, 53.0, 80.0, &mut out);
    b.on_transition(
        &crossing(VAN, "ORG", TransitionKind::Enter, at(t)),
        &mut out,
    );
    assert!(arrivals(&out).is_empty());
    assert_eq!(status(&b, "m1"), MoveStatus::Booked);
    b.on_transition(
        &crossing(VAN, "ORG", TransitionKind::Exit, at(t + 1800)),
        &mut out,
    );
    assert_eq!(status(&b, "m1"), MoveStatus::InTransit);
    let end = drive(&mut b, VAN, t + 1800, 53.0, 53.5, 80.0, &mut out);
    out.clear();
    b.on_transition(
        &crossing(VAN, "DST", TransitionKind::Enter, at(end)),
        &mut out,
    );
    assert_eq!(arrivals(&out), vec![("m1".into(), "DST".into())]);
    let d = b.details(&mid("m1")).unwrap();
    assert_eq!(d.spec.status, MoveStatus::Arrived);
    assert_eq!(d.departed_at, Some(at(t + 1800)));
    assert_eq!(d.arrived_at, Some(at(end)));
}

#[test]
fn a_van_dropping_one_move_then_carrying_the_next_arrives_each_in_turn() {
    let mut b = book();
    // The morning move ORG → DST, then the next one ALT → DST, same van.
    b.upsert(spec("m1", "ORG", "DST", Some(VAN)), t0());
    b.upsert(spec("m2", "ALT", "DST", Some(VAN)), t0());
    let mut out = Vec::new();
    b.on_event(&journey_start(VAN, at(0), "m1"), &mut out);
    b.on_transition(
        &crossing(VAN, "ORG", TransitionKind::Exit, at(60)),
        &mut out,
    );
    let t = drive(&mut b, VAN, 60, 53.0, 53.5, 80.0, &mut out);
    out.clear();
    b.on_transition(
        &crossing(VAN, "DST", TransitionKind::Enter, at(t)),
        &mut out,
    );
    // Dropping m1 is m1's arrival only.
    assert_eq!(arrivals(&out), vec![("m1".into(), "DST".into())]);
    assert_eq!(status(&b, "m2"), MoveStatus::Booked);
    assert!(b.details(&mid("m2")).unwrap().arrived_at.is_none());
    // DST sees the van for m1's sake, not yet for m2's.
    assert_eq!(
        b.move_views(Some(&site_id("DST")), at(t))
            .iter()
            .map(|m| (m.move_id.to_string(), m.status))
            .collect::<Vec<_>>(),
        vec![("m1".to_owned(), "arrived"), ("m2".to_owned(), "booked")]
    );
    // Out to ALT, collect m2, back to DST.
    b.on_transition(
        &crossing(VAN, "DST", TransitionKind::Exit, at(t + 600)),
        &mut out,
    );
    let t2 = drive(&mut b, VAN, t + 600, 53.5, 52.5, 80.0, &mut out);
    b.on_transition(
        &crossing(VAN, "ALT", TransitionKind::Enter, at(t2)),
        &mut out,
    );
    assert_eq!(status(&b, "m2"), MoveStatus::Booked);
    b.on_transition(
        &crossing(VAN, "ALT", TransitionKind::Exit, at(t2 + 900)),
        &mut out,
    );
    assert_eq!(status(&b, "m2"), MoveStatus::InTransit);
    let t3 = drive(&mut b, VAN, t2 + 900, 52.5, 53.5, 80.0, &mut out);
    out.clear();
    b.on_transition(
        &crossing(VAN, "DST", TransitionKind::Enter, at(t3)),
        &mut out,
    );
    assert_eq!(arrivals(&out), vec![("m2".into(), "DST".into())]);
}

/// m1 started on VAN, half-way; then `JourneyChangeVehicle` to OTHER, with
/// VAN's points carrying the journey id or not; OTHER then drives in.
fn change_of_vehicle_after_the_start(with_journey_ids: bool) {
    let (mut b, mut out) = started();
    b.on_event(&journey_start(VAN, at(5), "m1"), &mut out);
    let journey = with_journey_ids.then_some("j-m1");
    b.on_position(&pos(VAN, at(10), 53.1, 70.0, journey), &mut out);
    assert_eq!(
        b.sites_seeing(&v(VAN), at(10)),
        vec![site_id("ORG"), site_id("DST")]
    );
    out.clear();
    b.on_event(
        &event(
            VAN,
            EventKind::JourneyChangeVehicle,
            at(600),
            Some("m1"),
            serde_json::json!({"vehicle_reg": OTHER, "previous_vehicle_reg": VAN}),
        ),
        &mut out,
    );
    // At once: no point of the new van needed.
    assert_eq!(vehicle_of(&b, "m1"), (Some(v(OTHER)), Some("confirmed")));
    assert_eq!(status(&b, "m1"), MoveStatus::InTransit);
    let frames = move_frames(&out);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].2, Some(v(OTHER)));
    assert!(frames[0].4.contains(&"DST".to_owned()));
    // The broken-down van is nobody's business now; the replacement is.
    assert!(b.sites_seeing(&v(VAN), at(610)).is_empty());
    assert_eq!(
        b.sites_seeing(&v(OTHER), at(610)),
        vec![site_id("ORG"), site_id("DST")]
    );
    assert_eq!(b.vehicles_seen_by(&site_id("DST"), at(610)), vec![v(OTHER)]);
    // The old van keeps reporting (with the journey id, if it did).
    b.on_position(&pos(VAN, at(620), 53.1, 0.0, journey), &mut out);
    assert_eq!(vehicle_of(&b, "m1").0, Some(v(OTHER)));
    assert!(b.move_ids_of(&v(VAN)).is_empty());
    // The replacement drives in and the move arrives with it.
    let end = drive(&mut b, OTHER, 700, 53.1, 53.5, 80.0, &mut out);
    out.clear();
    b.on_transition(
        &crossing(VAN, "DST", TransitionKind::Enter, at(end)),
        &mut out,
    );
    assert!(arrivals(&out).is_empty(), "the old van brings nothing");
    b.on_transition(
        &crossing(OTHER, "DST", TransitionKind::Enter, at(end + 5)),
        &mut out,
    );
    assert_eq!(arrivals(&out), vec![("m1".into(), "DST".into())]);
    assert_eq!(status(&b, "m1"), MoveStatus::Arrived);
}

#[test]
fn a_change_of_vehicle_after_journey_start_takes_effect_at_the_event() {
    change_of_vehicle_after_the_start(false);
}

#[test]
fn a_change_of_vehicle_takes_effect_at_the_event_even_when_points_carry_the_journey_id() {
    change_of_vehicle_after_the_start(true);
}

#[test]
fn a_redirect_tells_the_old_destination_once_then_nothing_more() {
    let (mut b, mut out) = started();
    b.on_position(&pos(VAN, at(10), 53.25, 70.0, None), &mut out);
    out.clear();
    b.on_event(
        &event(
            VAN,
            EventKind::MoveRedirect,
            at(20),
            Some("m1"),
            serde_json::json!({"to_location": "ALT"}),
        ),
        &mut out,
    );
    // One move frame reaches DST, naming the new destination.
    let to_dst: Vec<_> = move_frames(&out)
        .into_iter()
        .filter(|f| f.4.contains(&"DST".to_owned()))
        .collect();
    assert_eq!(to_dst.len(), 1, "{to_dst:?}");
    assert_eq!(to_dst[0].3, "ALT");
    assert_eq!(to_dst[0].1, "in_transit");
    // From then on DST sees nothing of the move or its van.
    assert!(b.move_views(Some(&site_id("DST")), at(30)).is_empty());
    assert!(b.vehicles_seen_by(&site_id("DST"), at(30)).is_empty());
    assert!(!b.sites_seeing(&v(VAN), at(30)).contains(&site_id("DST")));
    assert!(b.site_window(&v(VAN), &[site_id("DST")], at(30)).is_none());
    assert_eq!(b.vehicles_seen_by(&site_id("ALT"), at(30)), vec![v(VAN)]);
    out.clear();
    let end = drive(&mut b, VAN, 30, 53.25, 52.5, 80.0, &mut out);
    b.on_transition(
        &crossing(VAN, "DST", TransitionKind::Enter, at(40)),
        &mut out,
    );
    b.on_transition(
        &crossing(VAN, "ALT", TransitionKind::Enter, at(end)),
        &mut out,
    );
    assert_eq!(arrivals(&out), vec![("m1".into(), "ALT".into())]);
    assert!(
        !sites_told(&out).contains(&"DST".to_owned()),
        "DST was told more: {:?}",
        sites_told(&out)
    );
}

#[test]
fn a_sites_day_shows_booked_moves_with_their_vehicle_but_no_position_until_they_leave() {
    let mut b = book();
    let out = b.upsert(spec("m1", "ORG", "DST", Some(VAN)), t0());
    // The booking itself is news to both sites.
    let frames = move_frames(&out);
    assert_eq!(
        frames.last().map(|f| f.4.clone()),
        Some(vec!["ORG".to_owned(), "DST".to_owned()])
    );
    let mut tomorrow = spec("m2", "ORG", "DST", Some(OTHER));
    tomorrow.date = date().succ_opt().unwrap();
    b.upsert(tomorrow, t0());
    // Incoming at DST, outgoing at ORG: today's booking, with its van.
    for site in ["DST", "ORG"] {
        let views = b.move_views(Some(&site_id(site)), at(0));
        assert_eq!(views.len(), 1, "{site}: {views:?}");
        assert_eq!(views[0].move_id, mid("m1"));
        assert_eq!(views[0].status, "booked");
        assert_eq!(views[0].vehicle, Some(v(VAN)));
        assert_eq!(views[0].eta, None);
    }
    // But not where the van is.
    let mut out = Vec::new();
    b.on_position(&pos(VAN, at(10), 53.0, 0.0, None), &mut out);
    assert!(b.sites_seeing(&v(VAN), at(10)).is_empty());
    assert!(b.vehicles_seen_by(&site_id("DST"), at(10)).is_empty());
    // Departed: now it is.
    b.on_transition(
        &crossing(VAN, "ORG", TransitionKind::Exit, at(60)),
        &mut out,
    );
    assert_eq!(b.vehicles_seen_by(&site_id("DST"), at(60)), vec![v(VAN)]);
    // Arrived: on the board 15 minutes, then gone from the day's view.
    let end = drive(&mut b, VAN, 60, 53.0, 53.5, 80.0, &mut out);
    b.on_transition(
        &crossing(VAN, "DST", TransitionKind::Enter, at(end)),
        &mut out,
    );
    assert_eq!(b.move_views(Some(&site_id("DST")), at(end + 899)).len(), 1);
    assert!(
        b.move_views(Some(&site_id("DST")), at(end + 901))
            .is_empty()
    );
}

#[test]
fn a_cancellation_is_told_to_both_sites_once() {
    let mut b = book();
    b.upsert(spec("m1", "ORG", "DST", Some(VAN)), t0());
    let mut out = Vec::new();
    b.on_event(
        &event(
            VAN,
            EventKind::MoveCancel,
            at(30),
            Some("m1"),
            serde_json::json!({}),
        ),
        &mut out,
    );
    let frames = move_frames(&out);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].1, "cancelled");
    assert_eq!(frames[0].4, vec!["ORG".to_owned(), "DST".to_owned()]);
    assert!(b.move_views(Some(&site_id("DST")), at(40)).is_empty());
    out.clear();
    b.on_position(&pos(VAN, at(50), 53.2, 50.0, None), &mut out);
    assert!(sites_told(&out).is_empty());
}
