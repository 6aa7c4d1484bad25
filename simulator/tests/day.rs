//! The simulated day: deterministic from the seed, realistic in shape, and
//! its ground truth consistent with the vans' true positions.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use model::Site;
use movewatch_simulator::emit::FaultConfig;
use movewatch_simulator::plan::{DayShape, Happening, VanType};
use movewatch_simulator::run::{RunConfig, dry_run, plan_for};
use movewatch_simulator::{Pace, Transport, distance_m};

fn sites() -> Vec<Site> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/sites.csv");
    model::site::load_sites_csv(&path).unwrap()
}

fn config(vehicles: usize, seed: u64, faults: FaultConfig) -> RunConfig {
    RunConfig {
        vehicles,
        seed,
        interval: Duration::from_secs(30),
        duration: Some(Duration::from_secs(3 * 3600)),
        pace: Pace::Load,
        start: None,
        day_start_s: 6.5 * 3600.0,
        transport: Transport::Mqtt {
            host: "127.0.0.1".into(),
            port: 1,
            passwords: Default::default(),
            connections: 1,
        },
        api: None,
        token: None,
        faults,
        truth: None,
        register_moves: false,
        measure: false,
        database_url: None,
        progress: false,
    }
}

fn start() -> DateTime<Utc> {
    "2026-11-21T06:30:00Z".parse().unwrap()
}

fn all_faults() -> FaultConfig {
    FaultConfig {
        noise: true,
        bad_fix_rate: 0.01,
        gap_rate: 0.005,
        duplicate_rate: 0.01,
        reorder_rate: 0.01,
        skew_rate: 0.2,
        malformed_rate: 0.01,
        malformed_reasons: model::Reason::ALL.to_vec(),
        silent_rate: 0.05,
        breakdown_rate: 0.1,
    }
}

#[test]
fn the_same_seed_gives_the_same_day() {
    let sites = sites();
    let a = dry_run(&config(40, 7, all_faults()), &sites, start()).unwrap();
    let b = dry_run(&config(40, 7, all_faults()), &sites, start()).unwrap();
    assert!(a.0.len() > 10_000, "a busy day: {} truth lines", a.0.len());
    assert_eq!(a.0, b.0, "same ground truth");
    assert_eq!(a.1, b.1, "same messages, byte for byte");
    let c = dry_run(&config(40, 8, all_faults()), &sites, start()).unwrap();
    assert_ne!(a.0, c.0, "another seed, another day");
}

#[test]
fn a_day_has_depots_types_suppliers_and_moves_of_every_shape() {
    let sites = sites();
    let plan = plan_for(&config(400, 3, FaultConfig::default()), &sites, start()).unwrap();
    let types: HashSet<VanType> = plan.vans.iter().map(|v| v.van_type).collect();
    assert_eq!(types.len(), VanType::MIX.len(), "every van type");
    let shapes: HashSet<DayShape> = plan.vans.iter().map(|v| v.day).collect();
    assert_eq!(shapes.len(), 5, "every day shape: {shapes:?}");
    let suppliers: HashSet<&str> = plan.vans.iter().map(|v| v.supplier.as_str()).collect();
    assert_eq!(suppliers, HashSet::from(["geoamey", "serco"]));
    for v in &plan.vans {
        let d = &plan.depots[v.depot];
        let expected = if d.lat >= 52.6 { "geoamey" } else { "serco" };
        assert_eq!(v.supplier.as_str(), expected, "supplier by region");
    }
    assert!(plan.moves.len() > 400, "{} moves", plan.moves.len());
    let kind = |id: &str| {
        sites
            .iter()
            .find(|s| s.id.as_str() == id)
            .map(|s| s.kind.as_str().to_owned())
            .unwrap()
    };
    let pairs: HashSet<(String, String)> = plan
        .moves
        .iter()
        .map(|m| (kind(&m.from_location), kind(&m.to_location)))
        .collect();
    for pair in [
        ("prison", "court"),
        ("court", "prison"),
        ("prison", "prison"),
        ("police", "court"),
    ] {
        assert!(
            pairs.contains(&(pair.0.to_owned(), pair.1.to_owned())),
            "a {pair:?} move"
        );
    }
    // Unique move ids and registrations.
    let ids: HashSet<&str> = plan.moves.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids.len(), plan.moves.len());
    let regs: HashSet<_> = plan.vans.iter().map(|v| v.vehicle).collect();
    assert_eq!(regs.len(), plan.vans.len());
}

#[test]
fn vans_drive_at_road_speeds_and_arrive_where_the_truth_says() {
    let sites = sites();
    let plan = plan_for(&config(200, 11, FaultConfig::default()), &sites, start()).unwrap();
    let mut speeds = BTreeMap::<&str, u64>::new();
    let mut arrivals = 0;
    for v in &plan.vans {
        for t in (6 * 3600..20 * 3600).step_by(30) {
            let f = v.at(t as f64);
            let band = match f.kmh {
                0.0 => "stopped",
                k if k < 30.0 => "slow",
                k if k < 50.0 => "urban",
                k if k < 86.0 => "a_road",
                _ => "motorway",
            };
            *speeds.entry(band).or_default() += 1;
        }
        for h in &v.happenings {
            if let Happening::Arrival { site, .. } = &h.what {
                arrivals += 1;
                let s = sites.iter().find(|s| s.id.as_str() == site).unwrap();
                // A few seconds after the true arrival the van is inside the fence.
                let f = v.at(h.t + 5.0);
                let d = distance_m((f.lat, f.lon), (s.lat, s.lon));
                assert!(
                    d < s.radius_m,
                    "{} at {site}: {d:.0} m from the centre",
                    v.vehicle
                );
                let before = v.at(h.t - 5.0);
                let d = distance_m((before.lat, before.lon), (s.lat, s.lon));
                assert!(
                    d >= s.radius_m - 10.0,
                    "{} outside {site} just before arrival",
                    v.vehicle
                );
            }
        }
    }
    assert!(arrivals > 300, "{arrivals} arrivals");
    for band in ["stopped", "slow", "urban", "a_road", "motorway"] {
        assert!(
            speeds.get(band).copied().unwrap_or(0) > 50,
            "{band}: {speeds:?}"
        );
    }
}

#[test]
fn faults_show_in_the_truth_and_the_messages() {
    let sites = sites();
    let (truth, msgs) = dry_run(&config(60, 5, all_faults()), &sites, start()).unwrap();
    let lines: Vec<serde_json::Value> = truth
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |t: &str| lines.iter().filter(|l| l["type"] == t).count();
    for t in [
        "point",
        "duplicate",
        "malformed",
        "arrival",
        "departure",
        "event",
        "gap",
        "silent",
    ] {
        assert!(of(t) > 0, "no {t} in the ground truth");
    }
    let reasons: HashSet<&str> = lines
        .iter()
        .filter(|l| l["type"] == "malformed")
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons.len(),
        model::Reason::ALL.len(),
        "every reason: {reasons:?}"
    );
    // Store-and-forward bursts are arrays; breakdowns are events.
    assert!(msgs.iter().any(|(_, p)| p.starts_with(b"[{")));
    assert!(msgs.iter().any(|(t, p)| t.ends_with("/events")
        && String::from_utf8_lossy(p).contains("PersonMoveVehicleBrokeDown")));
    for ev in [
        "JourneyStart",
        "MoveStart",
        "JourneyArriveAtOuterGate",
        "MoveComplete",
    ] {
        assert!(
            msgs.iter()
                .any(|(_, p)| String::from_utf8_lossy(p).contains(ev)),
            "{ev}"
        );
    }
    // A silent device is reported silent once.
    let silent: Vec<&str> = lines
        .iter()
        .filter(|l| l["type"] == "silent")
        .map(|l| l["vehicle"].as_str().unwrap())
        .collect();
    assert_eq!(silent.iter().collect::<HashSet<_>>().len(), silent.len());
    // Tracking ids are unique per point.
    let ids: Vec<&str> = lines
        .iter()
        .filter(|l| l["type"] == "point")
        .map(|l| l["tracking_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
}
