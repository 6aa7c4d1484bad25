//! Two partitions driven by hand, without tokio: a move booked in both is
//! owned by its van's partition; evidence seen in the other partition claims
//! it there, the old owner yields and hands the journey over, and whatever
//! order two claims cross in, both partitions agree on one owner.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use geofence::{FenceSet, GeofenceEngine};
use model::{
    CommitToken, Event, EventKind, IngestBatch, JourneyId, MoveId, Site, SiteId, SiteKind, Source,
    SupplierId, VehicleId,
};
use movewatch_engine::{Effects, Partition, partition_of};
use tracker::Tracker;
use tracker::eta::EtaModel;
use tracker::moves::{JourneySpec, MoveBook, MoveSpec, MoveStatus, MovesConfig};

fn sites() -> Vec<Site> {
    let s = |id: &str, lat: f64| Site {
        id: SiteId::parse(id).unwrap(),
        name: id.into(),
        kind: SiteKind::Prison,
        lat,
        lon: -1.5,
        radius_m: 400.0,
    };
    vec![s("ORG", 53.0), s("DST", 53.5)]
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 21, 9, 0, 0).unwrap()
}

fn v(s: &str) -> VehicleId {
    VehicleId::parse(s).unwrap()
}

/// Two vans on different partitions of two.
fn vans() -> (&'static str, &'static str) {
    let a = "AB12CDE";
    let b = ["XY99ZZZ", "NEW3VAN", "BR0KE2", "QQ11AAA"]
        .into_iter()
        .find(|b| partition_of(&v(b), 2) != partition_of(&v(a), 2))
        .unwrap();
    (a, b)
}

fn partitions() -> Vec<Partition> {
    let tracker = Arc::new(Tracker::new(Default::default()));
    (0..2)
        .map(|i| {
            let fences = FenceSet::new(sites(), Vec::new()).unwrap();
            Partition::new(
                i,
                2,
                tracker.clone(),
                GeofenceEngine::new(fences, geofence::EngineConfig::default()),
                MoveBook::new(&sites(), MovesConfig::default(), EtaModel::default()),
            )
        })
        .collect()
}

fn spec(vehicle: &str) -> MoveSpec {
    MoveSpec {
        id: MoveId::parse("m-1").unwrap(),
        reference: "REF-1".into(),
        from_location: SiteId::parse("ORG").unwrap(),
        to_location: SiteId::parse("DST").unwrap(),
        date: t0().date_naive(),
        status: MoveStatus::Booked,
        journeys: vec![JourneySpec {
            id: JourneyId::parse("j-1").unwrap(),
            from_location: SiteId::parse("ORG").unwrap(),
            to_location: SiteId::parse("DST").unwrap(),
            vehicle: Some(v(vehicle)),
        }],
    }
}

fn journey_start(vehicle: &str, at: DateTime<Utc>) -> IngestBatch {
    IngestBatch {
        source: Source::Replay,
        received: std::time::Instant::now(),
        received_at: at,
        positions: Vec::new(),
        events: vec![Event {
            supplier: SupplierId::parse("geoamey").unwrap(),
            vehicle: v(vehicle),
            kind: EventKind::JourneyStart,
            occurred_at: at,
            move_id: Some(MoveId::parse("m-1").unwrap()),
            journey_id: None,
            details: serde_json::json!({"vehicle_reg": vehicle}),
        }],
        dead_letters: Vec::new(),
        transitions: Vec::new(),
        derived: Default::default(),
        commit: CommitToken::detached(),
    }
}

/// Which partitions publish m-1, with its vehicle and status.
fn owners(ps: &[Partition]) -> Vec<(usize, Option<String>, MoveStatus)> {
    let id = MoveId::parse("m-1").unwrap();
    ps.iter()
        .filter_map(|p| {
            let view = p.view();
            let d = view.details(&id)?;
            Some((
                p.index(),
                d.view.vehicle.map(|v| v.to_string()),
                d.spec.status,
            ))
        })
        .collect()
}

/// Delivers claims and handovers between the partitions until none is left.
fn settle(ps: &mut [Partition], mut pending: Vec<(usize, Effects)>) {
    while let Some((from, effects)) = pending.pop() {
        for claim in effects.claims {
            for (to, p) in ps.iter_mut().enumerate() {
                if to != from {
                    pending.push((to, p.on_claim(&claim)));
                }
            }
        }
        for (to, h) in effects.handovers {
            let e = ps[to].adopt(h);
            pending.push((to, e));
        }
    }
}

#[test]
fn a_journey_started_by_another_partitions_van_is_handed_over() {
    let (a, b) = vans();
    let (pa, pb) = (partition_of(&v(a), 2), partition_of(&v(b), 2));
    let mut ps = partitions();
    for p in &mut ps {
        let e = p.book(spec(a), t0());
        assert!(e.claims.is_empty(), "a booking is applied everywhere alike");
    }
    assert_eq!(owners(&ps), vec![(pa, Some(a.into()), MoveStatus::Booked)]);

    // B starts the journey: its partition claims the move and owns it at once.
    let mut batch = journey_start(b, t0() + Duration::minutes(1));
    let effects = ps[pb].process(&mut batch);
    assert_eq!(effects.claims.len(), 1);
    assert_eq!(effects.claims[0].vehicle, Some(v(b)));
    assert!(
        effects.outputs.iter().any(|o| o.move_id().is_some()),
        "the new owner speaks for the move"
    );
    settle(&mut ps, vec![(pb, effects)]);
    assert_eq!(
        owners(&ps),
        vec![(pb, Some(b.into()), MoveStatus::InTransit)],
        "one owner, A's partition yielded"
    );
}

#[test]
fn crossing_claims_end_with_one_owner_whatever_their_order() {
    let (a, b) = vans();
    for a_first in [true, false] {
        let mut ps = partitions();
        for p in &mut ps {
            drop(p.book(spec(a), t0()));
        }
        let (pa, pb) = (partition_of(&v(a), 2), partition_of(&v(b), 2));
        // Both vans report a start; B's is the later, so B's wins.
        let ea = ps[pa].process(&mut journey_start(a, t0() + Duration::minutes(1)));
        let eb = ps[pb].process(&mut journey_start(b, t0() + Duration::minutes(2)));
        let pending = if a_first {
            vec![(pb, eb), (pa, ea)]
        } else {
            vec![(pa, ea), (pb, eb)]
        };
        settle(&mut ps, pending);
        let owned = owners(&ps);
        assert_eq!(owned.len(), 1, "{owned:?}");
        assert_eq!(owned[0].1.as_deref(), Some(b), "{owned:?}");
        assert_eq!(owned[0].2, MoveStatus::InTransit);
    }
}

fn fixes(vehicle: &str, at: &[(i64, f64)]) -> IngestBatch {
    let mut batch = journey_start(vehicle, t0());
    batch.events.clear();
    batch.positions = at
        .iter()
        .enumerate()
        .map(|(i, &(minute, lat))| {
            model::Position::fix(
                SupplierId::parse("geoamey").unwrap(),
                v(vehicle),
                format!("{vehicle}-{i}"),
                t0() + Duration::minutes(minute),
                lat,
                -1.5,
            )
        })
        .collect();
    batch
}

/// On a cluster the partitions are on different engine nodes: a claim
/// crosses as JSON, and the journey as its portable facts (no ETA
/// samples). The new owner still knows when the move departed.
#[test]
fn a_journey_handed_over_between_nodes_keeps_its_departure() {
    let (a, b) = vans();
    let (pa, pb) = (partition_of(&v(a), 2), partition_of(&v(b), 2));
    let mut ps = partitions();
    for p in &mut ps {
        drop(p.book(spec(a), t0()));
    }
    // A leaves the origin: departed.
    let e = ps[pa].process(&mut fixes(
        a,
        &[
            (1, 53.0),
            (2, 53.0),
            (3, 53.0),
            (4, 53.006),
            (5, 53.012),
            (6, 53.018),
            (7, 53.024),
        ],
    ));
    settle(&mut ps, vec![(pa, e)]);
    let id = MoveId::parse("m-1").unwrap();
    let departed = ps[pa].details(&id).and_then(|d| d.departed_at);
    assert!(departed.is_some(), "A departed");
    // B takes the journey over: the claim and the handover cross as JSON.
    let mut pending = vec![(
        pb,
        ps[pb].process(&mut journey_start(b, t0() + Duration::minutes(9))),
    )];
    let mut crossed = 0;
    while let Some((from, effects)) = pending.pop() {
        for claim in effects.claims {
            let claim: tracker::moves::Claim =
                serde_json::from_str(&serde_json::to_string(&claim).unwrap()).unwrap();
            for (to, p) in ps.iter_mut().enumerate() {
                if to != from {
                    pending.push((to, p.on_claim(&claim)));
                }
            }
        }
        for (to, h) in effects.handovers {
            let portable: tracker::moves::PortableHandover =
                serde_json::from_str(&serde_json::to_string(&h.portable()).unwrap()).unwrap();
            crossed += 1;
            let e = ps[to].adopt_portable(portable);
            pending.push((to, e));
        }
    }
    assert_eq!(crossed, 1, "one journey handed over");
    assert_eq!(
        owners(&ps),
        vec![(pb, Some(b.into()), MoveStatus::InTransit)]
    );
    assert_eq!(
        ps[pb].details(&id).and_then(|d| d.departed_at),
        departed,
        "the departure crossed with the journey"
    );
}
