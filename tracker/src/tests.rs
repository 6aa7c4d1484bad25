use std::time::Instant;

use chrono::{Duration, TimeZone};
use model::{CommitToken, Source};
use proptest::prelude::*;

use super::*;

fn point(vehicle: &str, seconds: i64, lat: f64, lon: f64) -> Position {
    Position {
        hdop: Some(1.0),
        ..Position::fix(
            SupplierId::parse("geoamey").unwrap(),
            VehicleId::parse(vehicle).unwrap(),
            format!("{vehicle}-{seconds}"),
            Utc.with_ymd_and_hms(2026, 11, 21, 9, 0, 0).unwrap() + Duration::seconds(seconds),
            lat,
            lon,
        )
    }
}

fn batch(positions: Vec<Position>) -> IngestBatch {
    IngestBatch {
        source: Source::Http,
        received: Instant::now(),
        received_at: Utc::now(),
        positions,
        events: vec![],
        dead_letters: vec![],
        transitions: vec![],
        derived: Default::default(),
        commit: CommitToken::detached(),
    }
}

#[test]
fn late_points_do_not_move_live_state_backwards() {
    let t = Tracker::new(TrackerConfig::default());
    let mut b = batch(vec![
        point("AB12CDE", 10, 53.0, -1.0),
        point("AB12CDE", 5, 53.001, -1.0),
        point("AB12CDE", 10, 53.0, -1.0),
    ]);
    let updates = t.apply(&mut b);
    assert_eq!(updates.len(), 1);
    assert!(!b.positions[0].flags.late);
    assert!(b.positions[1].flags.late, "older than the newest accepted");
    assert!(
        b.positions[2].flags.late,
        "same time as the newest accepted"
    );
    assert_eq!(
        t.get(&VehicleId::parse("AB12CDE").unwrap())
            .unwrap()
            .latest
            .ts,
        b.positions[0].ts
    );
}

#[test]
fn impossible_jumps_and_poor_hdop_are_flagged() {
    let t = Tracker::new(TrackerConfig::default());
    let mut poor = point("AB12CDE", 1, 53.0, -1.0);
    poor.hdop = Some(25.0);
    // 1 km in 10 s is 360 km/h.
    let mut b = batch(vec![
        poor,
        point("AB12CDE", 2, 53.0, -1.0),
        point("AB12CDE", 12, 53.009, -1.0),
        point("AB12CDE", 60, 53.009, -1.0),
    ]);
    t.apply(&mut b);
    let flags: Vec<bool> = b.positions.iter().map(|p| p.flags.bad_fix).collect();
    assert_eq!(flags, vec![true, false, true, false]);
    assert_eq!(
        t.get(&VehicleId::parse("AB12CDE").unwrap())
            .unwrap()
            .latest
            .ts,
        b.positions[3].ts
    );
}

#[test]
fn nearby_and_within_answer_from_the_index() {
    let t = Tracker::new(TrackerConfig::default());
    t.apply(&mut batch(vec![
        point("LEEDS1", 1, 53.80, -1.55),
        point("YORK1", 1, 53.96, -1.08),
        point("LONDON1", 1, 51.50, -0.12),
    ]));
    // Move Leeds to Sheffield: the index must follow.
    t.apply(&mut batch(vec![point("LEEDS1", 3600, 53.38, -1.47)]));
    let near: Vec<String> = t
        .nearby(53.40, -1.50, 2)
        .into_iter()
        .map(|(v, _)| v.to_string())
        .collect();
    assert_eq!(near, vec!["LEEDS1", "YORK1"]);
    let (_, d) = t.nearby(53.38, -1.47, 1)[0];
    assert!(d < 1.0, "{d}");
    let bbox = BoundingBox {
        min_lat: 53.0,
        min_lon: -2.0,
        max_lat: 54.5,
        max_lon: 0.0,
    };
    let inside: Vec<String> = t.within(bbox).into_iter().map(|v| v.to_string()).collect();
    assert_eq!(inside, vec!["LEEDS1", "YORK1"]);
    assert_eq!(t.len(), 3);
}

proptest! {
    #[test]
    fn index_matches_brute_force(
        points in proptest::collection::vec((49.9f64..55.8, -6.0f64..1.7), 1..60),
        query in (49.9f64..55.8, -6.0f64..1.7),
        boxed in ((49.9f64..55.8, -6.0f64..1.7), (0.01f64..3.0, 0.01f64..4.0)),
        k in 1usize..10,
    ) {
        let t = Tracker::new(TrackerConfig::default());
        let positions: Vec<Position> = points.iter().enumerate().map(|(i, (lat, lon))| point(&format!("V{i}"), 1, *lat, *lon)).collect();
        t.apply(&mut batch(positions.clone()));

        let mut brute: Vec<(f64, String)> = positions.iter().map(|p| (haversine_m(query.0, query.1, p.lat, p.lon), p.vehicle.to_string())).collect();
        brute.sort_by(|a, b| a.0.total_cmp(&b.0));
        let got = t.nearby(query.0, query.1, k);
        prop_assert_eq!(got.len(), k.min(positions.len()));
        for (i, (_, d)) in got.iter().enumerate() {
            prop_assert!((d - brute[i].0).abs() < 0.5, "rank {} distance {} vs {}", i, d, brute[i].0);
        }

        let ((lat, lon), (dlat, dlon)) = boxed;
        let bbox = BoundingBox { min_lat: lat, min_lon: lon, max_lat: lat + dlat, max_lon: lon + dlon };
        let mut expected: Vec<VehicleId> = positions.iter().filter(|p| bbox.contains(p.lat, p.lon)).map(|p| p.vehicle).collect();
        expected.sort();
        prop_assert_eq!(t.within(bbox), expected);
    }
}
