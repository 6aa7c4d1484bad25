//! One behaviour, two backends: every test here runs against a fresh SQLite
//! file and a fresh PostgreSQL database on the real server at 127.0.0.1:5432.

#[macro_use]
mod common;

use std::time::Duration as StdDuration;

use chrono::{Duration, NaiveDate, Utc};
use common::{TestDb, at, batch, point};
use model::{
    CommitToken, DeadLetter, Event, EventKind, JourneyId, MoveId, PointFlags, Reason, SiteId,
    SupplierId, VehicleId,
};
use movewatch_store::{
    AlertRecord, Arrival, Derived, FenceTransition, JourneyRecord, MoveRecord, PositionCursor,
    SiteFenceRecord, TransitionKind, VehicleRecord, WriterConfig, spawn_writer,
};
use tokio::sync::{mpsc, watch};

conformance!(
    duplicates_are_detected_within_and_across_transactions,
    duplicates_are_detected_across_restarts,
    a_repeat_in_a_later_statement_keeps_the_points_before_it,
    dead_letters_and_latest_positions_survive_reopen,
    track_returns_a_range_oldest_first_with_a_limit,
    positions_between_pages_in_time_order,
    events_are_stored,
    nul_characters_do_not_stall_writes,
    moves_round_trip_and_journeys_are_replaced,
    fence_transitions_round_trip,
    fence_transitions_commit_with_their_batch,
    latest_fence_transition_per_vehicle_and_site,
    site_fences_are_replaced_per_site_and_survive_reopen,
    the_vehicle_register_is_set_claimed_and_read_back,
    arrivals_round_trip_newest_first,
    derived_records_commit_with_their_batch_once,
    open_moves_are_the_unfinished_ones,
    retention_removes_old_positions_and_keeps_recent,
    writer_completes_tokens_after_commit,
    five_thousand_point_smoke,
);

async fn duplicates_are_detected_within_and_across_transactions(db: &TestDb) {
    let store = db.open().await;
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

    // The same tracking id from another supplier is a different point.
    let mut other = point("AB12CDE", "a", 5);
    other.supplier = SupplierId::parse("serco").unwrap();
    let outcome = store.write(&[batch(vec![other], vec![])]).await.unwrap();
    assert!(outcome[0].duplicates.is_empty());

    let counts = store.counts().await.unwrap();
    assert_eq!(counts.positions, 5);
    assert_eq!(counts.dead_letters, 3);
    assert_eq!(
        store.dead_letter_counts().await.unwrap(),
        vec![(Reason::Duplicate, 3)]
    );
    let letters = store.recent_dead_letters(1).await.unwrap();
    assert_eq!(letters[0].reason, Reason::Duplicate);
    assert_eq!(letters[0].index, Some(0));
    assert_eq!(letters[0].supplier.as_deref(), Some("geoamey"));
    assert!(letters[0].raw.contains("\"c\""), "{}", letters[0].raw);
}

async fn duplicates_are_detected_across_restarts(db: &TestDb) {
    {
        let store = db.open().await;
        let out = store
            .write(&[batch(
                vec![point("AB12CDE", "k1", 0), point("AB12CDE", "k2", 1)],
                vec![],
            )])
            .await
            .unwrap();
        assert!(out[0].duplicates.is_empty());
    }
    let store = db.open().await;
    let out = store
        .write(&[batch(
            vec![
                point("AB12CDE", "k3", 2),
                point("AB12CDE", "k2", 1),
                point("AB12CDE", "k1", 0),
            ],
            vec![],
        )])
        .await
        .unwrap();
    assert_eq!(out[0].duplicates, vec![1, 2]);
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.positions, 3);
    assert_eq!(counts.dead_letters, 2);
}

/// A write larger than one INSERT statement, with one repeat near its end:
/// the statements before it stay, the repeat alone is refused.
async fn a_repeat_in_a_later_statement_keeps_the_points_before_it(db: &TestDb) {
    let store = db.open().await;
    let out = store
        .write(&[batch(vec![point("AB12CDE", "old", 0)], vec![])])
        .await
        .unwrap();
    assert!(out[0].duplicates.is_empty());
    let mut points: Vec<_> = (0..1_200)
        .map(|i| point("AB12CDE", &format!("n{i}"), i + 1))
        .collect();
    points.insert(1_100, point("AB12CDE", "old", 0));
    let out = store.write(&[batch(points, vec![])]).await.unwrap();
    assert_eq!(out[0].duplicates, vec![1_100]);
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.positions, 1_201);
    assert_eq!(counts.dead_letters, 1);
}

async fn dead_letters_and_latest_positions_survive_reopen(db: &TestDb) {
    {
        let store = db.open().await;
        let letter = DeadLetter {
            reason: Reason::OutOfRange,
            detail: "latitude 123 not in -90..90".into(),
            supplier: Some("geoamey".into()),
            topic: Some("movewatch/v1/geoamey/AB12CDE/positions".into()),
            received_at: Utc::now(),
            index: Some(1),
            raw: "{\"latitude\":123}".into(),
        };
        let mut late = point("AB12CDE", "late", 9);
        late.flags = PointFlags {
            late: true,
            bad_fix: false,
        };
        let mut bad = point("XY99ZZZ", "bad", 8);
        bad.flags = PointFlags {
            late: false,
            bad_fix: true,
        };
        let b = batch(
            vec![
                point("AB12CDE", "x", 5),
                point("AB12CDE", "older", 4),
                late,
                point("XY99ZZZ", "y", 1),
                bad,
            ],
            vec![letter],
        );
        store.write(&[b]).await.unwrap();
    }
    let store = db.open().await;
    let mut latest = store.latest_positions().await.unwrap();
    latest.sort_by_key(|p| p.vehicle);
    assert_eq!(latest.len(), 2);
    assert_eq!(latest[0].tracking_id, "x");
    assert_eq!(latest[0].ts, at(5));
    assert_eq!(latest[0].speed_kmh, Some(50.0));
    assert_eq!(latest[1].tracking_id, "y");
    let letters = store.recent_dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, Reason::OutOfRange);
    assert_eq!(letters[0].index, Some(1));
    assert_eq!(letters[0].raw, "{\"latitude\":123}");
}

async fn track_returns_a_range_oldest_first_with_a_limit(db: &TestDb) {
    let store = db.open().await;
    let mut points: Vec<_> = (0..20)
        .rev()
        .map(|m| point("AB12CDE", &format!("t{m}"), m))
        .collect();
    points.push(point("XY99ZZZ", "other", 5));
    let mut full = point("AB12CDE", "full", 30);
    full.journey_id = Some(JourneyId::parse("j-1").unwrap());
    full.bearing = Some(90.5);
    full.altitude = Some(61.5);
    full.vdop = Some(1.8);
    full.vin = Some("WF0XXXTTGXJA12345".into());
    full.flags = PointFlags {
        late: true,
        bad_fix: true,
    };
    points.push(full.clone());
    store.write(&[batch(points, vec![])]).await.unwrap();

    let vehicle = VehicleId::parse("AB12CDE").unwrap();
    let track = store.track(&vehicle, at(5), at(10), 100).await.unwrap();
    let ids: Vec<&str> = track.iter().map(|p| p.tracking_id.as_str()).collect();
    assert_eq!(ids, vec!["t5", "t6", "t7", "t8", "t9", "t10"]);
    let limited = store.track(&vehicle, at(0), at(19), 3).await.unwrap();
    assert_eq!(limited.len(), 3);
    assert_eq!(limited[0].tracking_id, "t0");
    let all = store.track(&vehicle, at(-60), at(60), 1000).await.unwrap();
    assert_eq!(all.len(), 21);
    assert_eq!(all.last().unwrap(), &full, "every column round-trips");
}

async fn positions_between_pages_in_time_order(db: &TestDb) {
    let store = db.open().await;
    // Three vehicles and two suppliers, several points sharing a fix time,
    // written out of order over two transactions.
    let mut first = Vec::new();
    let mut second = Vec::new();
    for m in (0..10).rev() {
        first.push(point("AB12CDE", &format!("a{m}"), m));
        let mut other = point("XY99ZZZ", &format!("a{m}"), m);
        other.supplier = SupplierId::parse("serco").unwrap();
        second.push(other);
        if m % 2 == 0 {
            second.push(point("CD34EFG", &format!("c{m}"), m));
        }
    }
    store.write(&[batch(first, vec![])]).await.unwrap();
    store.write(&[batch(second, vec![])]).await.unwrap();

    let key = |p: &model::Position| (p.ts, p.supplier.to_string(), p.tracking_id.clone());
    // Walk [at(2), at(7)] three points at a time.
    let mut pages = 0;
    let mut walked = Vec::new();
    let mut cursor: Option<PositionCursor> = None;
    loop {
        let page = store
            .positions_between(at(2), at(7), cursor.as_ref(), 3)
            .await
            .unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        cursor = Some(PositionCursor::after(last));
        walked.extend(page);
        pages += 1;
        assert!(pages < 20, "paging does not end");
    }
    // 6 minutes x 2 suppliers' vehicles + c2, c4, c6.
    assert_eq!(walked.len(), 15);
    assert!(walked.iter().all(|p| p.ts >= at(2) && p.ts <= at(7)));
    let keys: Vec<_> = walked.iter().map(key).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        keys, sorted,
        "strictly increasing (ts, supplier, tracking_id), no repeats"
    );
    // Same fix time: geoamey's two vehicles before serco's.
    assert_eq!(walked[0].tracking_id, "a2");
    assert_eq!(walked[0].supplier.as_str(), "geoamey");
    assert_eq!(walked[2].supplier.as_str(), "serco");

    let all = store
        .positions_between(at(-60), at(60), None, 1000)
        .await
        .unwrap();
    assert_eq!(all.len(), 25);
    let none = store
        .positions_between(at(20), at(30), None, 1000)
        .await
        .unwrap();
    assert!(none.is_empty());
}

async fn events_are_stored(db: &TestDb) {
    let store = db.open().await;
    let mut b = batch(vec![], vec![]);
    b.events = vec![
        Event {
            supplier: SupplierId::parse("geoamey").unwrap(),
            vehicle: VehicleId::parse("AB12CDE").unwrap(),
            kind: EventKind::MoveStart,
            occurred_at: at(0),
            move_id: Some(MoveId::parse("m-1").unwrap()),
            journey_id: None,
            details: serde_json::json!({}),
        },
        Event {
            supplier: SupplierId::parse("geoamey").unwrap(),
            vehicle: VehicleId::parse("AB12CDE").unwrap(),
            kind: EventKind::Other("SomethingNew".into()),
            occurred_at: at(1),
            move_id: None,
            journey_id: Some(JourneyId::parse("j-1").unwrap()),
            details: serde_json::json!({"location": "LEI", "nested": {"nul": "a\u{0}b"}}),
        },
    ];
    store.write(&[b]).await.unwrap();
    assert_eq!(store.counts().await.unwrap().events, 2);
}

async fn nul_characters_do_not_stall_writes(db: &TestDb) {
    let store = db.open().await;
    let letter = DeadLetter {
        reason: Reason::MalformedJson,
        detail: "bad \0 byte".into(),
        supplier: Some("geo\0amey".into()),
        topic: None,
        received_at: Utc::now(),
        index: None,
        raw: "{\"a\":\0}".into(),
    };
    let mut p = point("AB12CDE", "nul\0id", 0);
    p.vin = Some("VIN\0".into());
    let out = store.write(&[batch(vec![p], vec![letter])]).await.unwrap();
    assert!(out[0].duplicates.is_empty());
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.positions, counts.dead_letters), (1, 1));
    let letters = store.recent_dead_letters(1).await.unwrap();
    assert!(letters[0].raw.starts_with("{\"a\":"));
}

fn site(s: &str) -> SiteId {
    SiteId::parse(s).unwrap()
}

async fn moves_round_trip_and_journeys_are_replaced(db: &TestDb) {
    let store = db.open().await;
    let date = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
    let mut m = MoveRecord {
        id: MoveId::parse("5d1f0c3e-7b4a-4c1e-9f2a-000000000001").unwrap(),
        reference: "ABC1234X".into(),
        from_location: site("LEI"),
        to_location: site("CRT-LEEDS-MC"),
        date,
        status: "booked".into(),
        journeys: vec![
            JourneyRecord {
                id: JourneyId::parse("j-1").unwrap(),
                from_location: site("LEI"),
                to_location: site("WYI"),
                vehicle: Some(VehicleId::parse("AB12CDE").unwrap()),
            },
            JourneyRecord {
                id: JourneyId::parse("j-2").unwrap(),
                from_location: site("WYI"),
                to_location: site("CRT-LEEDS-MC"),
                vehicle: None,
            },
        ],
    };
    store.upsert_move(&m).await.unwrap();
    assert_eq!(store.get_move(&m.id).await.unwrap(), Some(m.clone()));

    m.journeys.truncate(1);
    m.journeys[0].to_location = site("CRT-LEEDS-MC");
    m.status = "in_transit".into();
    store.upsert_move(&m).await.unwrap();
    assert_eq!(store.get_move(&m.id).await.unwrap(), Some(m.clone()));

    assert!(store.set_move_status(&m.id, "arrived").await.unwrap());
    let unknown = MoveId::parse("nope").unwrap();
    assert!(!store.set_move_status(&unknown, "arrived").await.unwrap());
    assert_eq!(store.get_move(&unknown).await.unwrap(), None);
    let on_day = store.moves_on(date).await.unwrap();
    assert_eq!(on_day.len(), 1);
    assert_eq!(on_day[0].status, "arrived");
    assert_eq!(on_day[0].journeys, m.journeys);
    assert!(
        store
            .moves_on(date.succ_opt().unwrap())
            .await
            .unwrap()
            .is_empty()
    );
}

async fn fence_transitions_round_trip(db: &TestDb) {
    let store = db.open().await;
    let vehicle = VehicleId::parse("AB12CDE").unwrap();
    let t = |kind, minute| FenceTransition {
        vehicle,
        site: site("LEI"),
        kind,
        ts: at(minute),
    };
    let all = vec![
        t(TransitionKind::Exit, 0),
        t(TransitionKind::PassThrough, 30),
        t(TransitionKind::Enter, 60),
    ];
    store.insert_fence_transitions(&all).await.unwrap();
    let mut other = t(TransitionKind::Enter, 10);
    other.vehicle = VehicleId::parse("XY99ZZZ").unwrap();
    store.insert_fence_transitions(&[other]).await.unwrap();
    assert_eq!(
        store
            .fence_transitions(&vehicle, at(0), at(60))
            .await
            .unwrap(),
        all
    );
    assert_eq!(
        store
            .fence_transitions(&vehicle, at(1), at(59))
            .await
            .unwrap(),
        all[1..2].to_vec()
    );
}

async fn fence_transitions_commit_with_their_batch(db: &TestDb) {
    let store = db.open().await;
    let vehicle = VehicleId::parse("AB12CDE").unwrap();
    let enter = FenceTransition {
        vehicle,
        site: site("LEI"),
        kind: TransitionKind::Enter,
        ts: at(1),
    };
    let mut b = batch(
        vec![point("AB12CDE", "a", 1), point("AB12CDE", "b", 2)],
        vec![],
    );
    b.transitions.push(enter.clone());
    let mut other = batch(vec![point("XY99ZZZ", "c", 3)], vec![]);
    other.transitions.push(FenceTransition {
        vehicle: VehicleId::parse("XY99ZZZ").unwrap(),
        site: site("WDI"),
        kind: TransitionKind::PassThrough,
        ts: at(3),
    });
    store.write(&[b, other]).await.unwrap();
    assert_eq!(store.counts().await.unwrap().positions, 3);
    assert_eq!(
        store
            .fence_transitions(&vehicle, at(0), at(60))
            .await
            .unwrap(),
        vec![enter]
    );
    assert_eq!(store.latest_fence_transitions().await.unwrap().len(), 2);
}

async fn latest_fence_transition_per_vehicle_and_site(db: &TestDb) {
    let store = db.open().await;
    assert!(store.latest_fence_transitions().await.unwrap().is_empty());
    let t = |vehicle: &str, site_id: &str, kind, minute| FenceTransition {
        vehicle: VehicleId::parse(vehicle).unwrap(),
        site: site(site_id),
        kind,
        ts: at(minute),
    };
    store
        .insert_fence_transitions(&[
            // AB12CDE entered LEI, left, entered again: inside.
            t("AB12CDE", "LEI", TransitionKind::Enter, 0),
            t("AB12CDE", "LEI", TransitionKind::Exit, 30),
            t("AB12CDE", "LEI", TransitionKind::Enter, 60),
            // ... and entered then left WDI: outside.
            t("AB12CDE", "WDI", TransitionKind::Enter, 5),
            t("AB12CDE", "WDI", TransitionKind::Exit, 20),
            // XY99ZZZ at LEI: two rows at the same time, the later written wins.
            t("XY99ZZZ", "LEI", TransitionKind::Exit, 10),
            t("XY99ZZZ", "LEI", TransitionKind::Enter, 10),
        ])
        .await
        .unwrap();
    // Written out of time order in a later transaction: time decides, not id.
    store
        .insert_fence_transitions(&[t("AB12CDE", "WDI", TransitionKind::Enter, 1)])
        .await
        .unwrap();
    assert_eq!(
        store.latest_fence_transitions().await.unwrap(),
        vec![
            t("AB12CDE", "LEI", TransitionKind::Enter, 60),
            t("AB12CDE", "WDI", TransitionKind::Exit, 20),
            t("XY99ZZZ", "LEI", TransitionKind::Enter, 10),
        ]
    );
}

async fn the_vehicle_register_is_set_claimed_and_read_back(db: &TestDb) {
    let entry = |v: &str, s: &str, source: &str, minute: i64| VehicleRecord {
        vehicle: v.parse().unwrap(),
        supplier: s.parse().unwrap(),
        source: source.into(),
        updated_at: at(minute),
    };
    {
        let store = db.open().await;
        assert_eq!(store.vehicle_register().await.unwrap(), vec![]);
        store
            .put_vehicle(&entry("SE11RCO", "serco", "config", 1))
            .await
            .unwrap();
        // A claim does not displace an entry; a put does.
        assert!(
            !store
                .claim_vehicle(&entry("SE11RCO", "geoamey", "claim", 2))
                .await
                .unwrap()
        );
        assert!(
            store
                .claim_vehicle(&entry("GA11AAA", "geoamey", "claim", 3))
                .await
                .unwrap()
        );
        store
            .put_vehicle(&entry("GA11AAA", "serco", "api", 4))
            .await
            .unwrap();
    }
    let store = db.open().await;
    assert_eq!(
        store.vehicle_register().await.unwrap(),
        vec![
            entry("GA11AAA", "serco", "api", 4),
            entry("SE11RCO", "serco", "config", 1),
        ]
    );
    let one: model::VehicleId = "SE11RCO".parse().unwrap();
    assert_eq!(
        store.vehicle(&one).await.unwrap(),
        Some(entry("SE11RCO", "serco", "config", 1))
    );
    let none: model::VehicleId = "NO11NE".parse().unwrap();
    assert_eq!(store.vehicle(&none).await.unwrap(), None);
}

async fn site_fences_are_replaced_per_site_and_survive_reopen(db: &TestDb) {
    let polygon = r#"{"type":"polygon","geometry":{"type":"MultiPolygon","coordinates":[[[[-1.5,53.7],[-1.4,53.7],[-1.4,53.8],[-1.5,53.7]]]]}}"#;
    let record = |s: &str, fence: &str, minute: i64| SiteFenceRecord {
        site: site(s),
        fence: fence.to_owned(),
        updated_at: at(minute),
    };
    {
        let store = db.open().await;
        assert_eq!(store.site_fences().await.unwrap(), vec![]);
        store
            .put_site_fence(&record("LEI", r#"{"type":"circle","radius_m":50.0}"#, 1))
            .await
            .unwrap();
        store
            .put_site_fence(&record("CRT-LEEDS", polygon, 2))
            .await
            .unwrap();
        // A second replacement of the same site overwrites the first.
        store
            .put_site_fence(&record("LEI", r#"{"type":"circle","radius_m":75.5}"#, 3))
            .await
            .unwrap();
    }
    let store = db.open().await;
    assert_eq!(
        store.site_fences().await.unwrap(),
        vec![
            record("CRT-LEEDS", polygon, 2),
            record("LEI", r#"{"type":"circle","radius_m":75.5}"#, 3),
        ],
        "one row per site, the latest, byte for byte, after a reopen"
    );
}

async fn arrivals_round_trip_newest_first(db: &TestDb) {
    let store = db.open().await;
    let arrival = |n: i64, from: &str| Arrival {
        move_id: MoveId::parse(&format!("m-{n}")).unwrap(),
        vehicle: VehicleId::parse("AB12CDE").unwrap(),
        site: site("LEI"),
        from_location: site(from),
        departed_at: at(n * 100),
        arrived_at: at(n * 100 + 75),
        distance_m: 61_250.5 + n as f64,
    };
    for n in 0..4 {
        store.insert_arrival(&arrival(n, "WYI")).await.unwrap();
    }
    store.insert_arrival(&arrival(9, "HMP")).await.unwrap();
    let got = store.arrivals(&site("WYI"), &site("LEI"), 3).await.unwrap();
    assert_eq!(
        got,
        vec![arrival(3, "WYI"), arrival(2, "WYI"), arrival(1, "WYI")]
    );
    assert!(
        store
            .arrivals(&site("LEI"), &site("WYI"), 3)
            .await
            .unwrap()
            .is_empty()
    );
    // Every route, newest first.
    assert_eq!(
        store.recent_arrivals(2).await.unwrap(),
        vec![arrival(9, "HMP"), arrival(3, "WYI")]
    );
    assert_eq!(store.recent_arrivals(100).await.unwrap().len(), 5);
}

async fn open_moves_are_the_unfinished_ones(db: &TestDb) {
    let store = db.open().await;
    let date = chrono::NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
    let mv = |id: &str, status: &str| MoveRecord {
        id: MoveId::parse(id).unwrap(),
        reference: format!("R-{id}"),
        from_location: site("WYI"),
        to_location: site("LEI"),
        date,
        status: status.into(),
        journeys: vec![JourneyRecord {
            id: JourneyId::parse(&format!("j-{id}")).unwrap(),
            from_location: site("WYI"),
            to_location: site("LEI"),
            vehicle: Some(VehicleId::parse("AB12CDE").unwrap()),
        }],
    };
    for (id, status) in [
        ("a", "booked"),
        ("b", "in_transit"),
        ("c", "arrived"),
        ("d", "completed"),
        ("e", "cancelled"),
    ] {
        store.upsert_move(&mv(id, status)).await.unwrap();
    }
    assert_eq!(
        store.open_moves().await.unwrap(),
        vec![mv("a", "booked"), mv("b", "in_transit"), mv("c", "arrived")]
    );
    assert!(
        store
            .set_move_status(&MoveId::parse("a").unwrap(), "cancelled")
            .await
            .unwrap()
    );
    assert_eq!(store.open_moves().await.unwrap().len(), 2);
}

async fn retention_removes_old_positions_and_keeps_recent(db: &TestDb) {
    let store = db.open().await;
    let now = Utc::now();
    let ages_days = [0i64, 1, 2, 4, 5, 6];
    let points: Vec<_> = ages_days
        .iter()
        .map(|d| {
            let mut p = point("AB12CDE", &format!("age{d}"), 0);
            p.ts = now - Duration::days(*d) - Duration::minutes(1);
            p
        })
        .collect();
    store.write(&[batch(points, vec![])]).await.unwrap();

    let none = store.apply_retention(now, None).await.unwrap();
    assert_eq!(none, Default::default());
    assert_eq!(store.counts().await.unwrap().positions, 6);

    let report = store.apply_retention(now, Some(3)).await.unwrap();
    let vehicle = VehicleId::parse("AB12CDE").unwrap();
    let kept: Vec<String> = store
        .track(&vehicle, now - Duration::days(30), now, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.tracking_id)
        .collect();
    assert_eq!(kept, vec!["age2", "age1", "age0"]);
    if db.is_postgres() {
        // Whole day partitions went (days 4, 5, 6 and older, none of them
        // reaching into the last 3 days), not rows.
        assert!(report.partitions_dropped.len() >= 3, "{report:?}");
        let cutoff = now - Duration::days(3);
        for name in &report.partitions_dropped {
            let day = movewatch_store::partition_day(name).unwrap();
            assert!(day < cutoff.date_naive(), "{name} dropped");
        }
    } else {
        assert_eq!(report.rows_deleted, 3);
    }
    // The store still takes writes for any time afterwards.
    let mut old = point("AB12CDE", "very-old", 0);
    old.ts = now - Duration::days(40);
    let out = store.write(&[batch(vec![old], vec![])]).await.unwrap();
    assert!(out[0].duplicates.is_empty());
    assert_eq!(store.counts().await.unwrap().positions, 4);
}

async fn writer_completes_tokens_after_commit(db: &TestDb) {
    let store = db.open().await;
    let (tx, rx) = mpsc::channel(16);
    let (health_tx, health) = watch::channel(true);
    let writer = spawn_writer(
        store.clone(),
        rx,
        WriterConfig {
            max_rows: 50,
            max_delay: StdDuration::from_millis(20),
            max_in_flight: None,
        },
        health_tx,
    );
    let mut waits = Vec::new();
    for n in 0..30 {
        let (token, done) = CommitToken::new();
        let mut b = batch(
            vec![
                point("AB12CDE", &format!("w{n}"), n),
                point("AB12CDE", &format!("w{}", n.max(1) - 1), n),
            ],
            vec![],
        );
        b.commit = token;
        tx.send(b).await.unwrap();
        waits.push(done);
    }
    drop(tx);
    let mut duplicates = 0;
    for done in waits {
        duplicates += done.await.expect("token completed").duplicates.len();
    }
    writer.await.unwrap();
    assert!(*health.borrow());
    assert_eq!(duplicates, 30);
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.positions, counts.dead_letters), (30, 30));
}

async fn five_thousand_point_smoke(db: &TestDb) {
    let store = db.open().await;
    let batches: Vec<_> = (0..5)
        .map(|b| {
            batch(
                (0..1000)
                    .map(|i| point("AB12CDE", &format!("s{b}-{i}"), (i % 600) as i64))
                    .collect(),
                vec![],
            )
        })
        .collect();
    let started = std::time::Instant::now();
    let out = store.write(&batches).await.unwrap();
    let elapsed = started.elapsed();
    assert!(out.iter().all(|o| o.duplicates.is_empty()));
    assert_eq!(store.counts().await.unwrap().positions, 5000);
    eprintln!("5000 points in one write: {elapsed:?}");
}

fn alert(kind: &str, move_id: Option<&str>, minute: i64) -> AlertRecord {
    AlertRecord {
        kind: kind.to_owned(),
        vehicle: VehicleId::parse("AB12CDE").unwrap(),
        move_id: move_id.map(|m| MoveId::parse(m).unwrap()),
        ts: at(minute),
        detail: format!("{kind} at minute {minute}"),
    }
}

fn derived_of(status: &str, minute: i64) -> Derived {
    Derived {
        moves: vec![MoveRecord {
            id: MoveId::parse("m-1").unwrap(),
            reference: "R1".into(),
            from_location: site("WYI"),
            to_location: site("LEI"),
            date: NaiveDate::from_ymd_opt(2026, 11, 21).unwrap(),
            status: status.into(),
            journeys: vec![],
        }],
        arrivals: vec![Arrival {
            move_id: MoveId::parse("m-1").unwrap(),
            vehicle: VehicleId::parse("AB12CDE").unwrap(),
            site: site("LEI"),
            from_location: site("WYI"),
            departed_at: at(0),
            arrived_at: at(minute),
            distance_m: 12_000.0,
        }],
        alerts: vec![
            alert("arriving_30", Some("m-1"), minute - 20),
            alert("breakdown", None, minute - 10),
        ],
        notifications: vec![],
    }
}

/// The stored status of move `m-1`, which must exist.
async fn status_of_m1(store: &movewatch_store::Store) -> String {
    store
        .get_move(&MoveId::parse("m-1").unwrap())
        .await
        .unwrap()
        .unwrap()
        .status
}

async fn derived_records_commit_with_their_batch_once(db: &TestDb) {
    let store = db.open().await;
    let mut b = batch(vec![point("AB12CDE", "a", 1)], vec![]);
    b.derived = derived_of("arrived", 50);
    store.write(&[b]).await.unwrap();
    assert_eq!(status_of_m1(&store).await, "arrived");
    assert_eq!(store.recent_arrivals(10).await.unwrap().len(), 1);
    assert_eq!(
        store.alerts_since(at(0), 10).await.unwrap(),
        vec![
            alert("arriving_30", Some("m-1"), 30),
            alert("breakdown", None, 40)
        ],
        "oldest first, a missing move stays missing"
    );
    // The same derived again (redelivered data) through both paths: kept once;
    // a different alert is added; the move is updated.
    let mut again = batch(vec![point("AB12CDE", "b", 2)], vec![]);
    again.derived = derived_of("completed", 50);
    store.write(&[again]).await.unwrap();
    let mut more = derived_of("completed", 50);
    more.alerts.push(alert("gps_gap", Some("m-1"), 45));
    store.write_derived(&more).await.unwrap();
    assert_eq!(
        store.recent_arrivals(10).await.unwrap().len(),
        1,
        "one arrival"
    );
    let kinds: Vec<_> = store
        .alerts_since(at(0), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.kind)
        .collect();
    assert_eq!(kinds, ["arriving_30", "breakdown", "gps_gap"]);
    assert_eq!(
        store.alerts_since(at(41), 10).await.unwrap().len(),
        1,
        "since"
    );
    assert_eq!(status_of_m1(&store).await, "completed");
}
