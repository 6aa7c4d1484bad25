//! The store against a real SQLite file.

use std::time::Instant;

use chrono::{Duration, TimeZone, Utc};
use model::{
    CommitToken, DeadLetter, IngestBatch, PointFlags, Position, Reason, Source, SupplierId,
    VehicleId,
};
use movewatch_store::Store;

fn point(vehicle: &str, tracking_id: &str, minute: i64) -> Position {
    Position {
        supplier: SupplierId::parse("geoamey").unwrap(),
        vehicle: VehicleId::parse(vehicle).unwrap(),
        tracking_id: tracking_id.into(),
        ts: Utc.with_ymd_and_hms(2026, 11, 21, 9, 0, 0).unwrap() + Duration::minutes(minute),
        lat: 53.0 + minute as f64 / 100.0,
        lon: -1.5,
        journey_id: None,
        speed_kmh: Some(50.0),
        bearing: None,
        altitude: None,
        hdop: Some(1.0),
        vdop: None,
        vin: None,
        flags: PointFlags::default(),
    }
}

fn batch(positions: Vec<Position>, dead_letters: Vec<DeadLetter>) -> IngestBatch {
    IngestBatch {
        source: Source::Mqtt {
            topic: "movewatch/v1/geoamey/AB12CDE/positions".into(),
        },
        received: Instant::now(),
        received_at: Utc::now(),
        positions,
        events: vec![],
        dead_letters,
        commit: CommitToken::detached(),
    }
}

#[tokio::test]
async fn duplicates_are_detected_within_and_across_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}/s.db", dir.path().display()))
        .await
        .unwrap();

    let first = batch(
        vec![
            point("AB12CDE", "a", 0),
            point("AB12CDE", "b", 1),
            point("AB12CDE", "a", 2),
        ],
        vec![],
    );
    let second = batch(
        vec![point("AB12CDE", "b", 1), point("AB12CDE", "c", 3)],
        vec![],
    );
    let outcomes = store.write(&[first, second]).await.unwrap();
    assert_eq!(outcomes[0].duplicates, vec![2]);
    assert_eq!(outcomes[1].duplicates, vec![0]);

    let again = store
        .write(&[batch(
            vec![point("AB12CDE", "c", 3), point("AB12CDE", "d", 4)],
            vec![],
        )])
        .await
        .unwrap();
    assert_eq!(again[0].duplicates, vec![0]);

    let counts = store.counts().await.unwrap();
    assert_eq!(counts.positions, 4);
    assert_eq!(counts.dead_letters, 3);
    assert_eq!(
        store.dead_letter_counts().await.unwrap(),
        vec![(Reason::Duplicate, 3)]
    );
}

#[tokio::test]
async fn dead_letters_and_latest_positions_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/nested/s.db", dir.path().display());
    {
        let store = Store::open(&url).await.unwrap();
        let letter = DeadLetter {
            reason: Reason::OutOfRange,
            detail: "latitude 123 not in -90..90".into(),
            supplier: Some("geoamey".into()),
            topic: Some("movewatch/v1/geoamey/AB12CDE/positions".into()),
            received_at: Utc::now(),
            index: Some(1),
            raw: "{\"latitude\":123}".into(),
        };
        let mut late = point("AB12CDE", "late", 0);
        late.flags = PointFlags {
            late: true,
            bad_fix: false,
        };
        let b = batch(
            vec![point("AB12CDE", "x", 5), late, point("XY99ZZZ", "y", 1)],
            vec![letter],
        );
        store.write(&[b]).await.unwrap();
    }
    let store = Store::open(&url).await.unwrap();
    let mut latest = store.latest_positions().await.unwrap();
    latest.sort_by_key(|p| p.vehicle);
    assert_eq!(latest.len(), 2);
    assert_eq!(latest[0].tracking_id, "x");
    assert_eq!(latest[1].tracking_id, "y");
    let letters = store.recent_dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, Reason::OutOfRange);
    assert_eq!(letters[0].index, Some(1));
}
