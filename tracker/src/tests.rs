use std::time::Instant;

use chrono::{Duration, TimeZone};
use model::{CommitToken, Source};

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
