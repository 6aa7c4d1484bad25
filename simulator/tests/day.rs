//! The simulated day: deterministic from the seed, realistic in shape, and
//! its ground truth consistent with the vans' true positions.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use model::Site;
use movewatch_simulator::emit::FaultConfig;
use movewatch_simulator::emit::started_before;
use movewatch_simulator::plan::{DayShape, FIRST_LEAVE_S, Happening, VanType};
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
        registration_prefix: None,
        focus_site: None,
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

#[test]
fn vans_begin_the_default_day_at_their_depot() {
    // The first fix is at 06:30 by default: every van is parked at its depot
    // then, and nothing has happened yet (no van starts on the road).
    let sites = sites();
    let plan = plan_for(&config(300, 5, all_faults()), &sites, start()).unwrap();
    for v in &plan.vans {
        let depot = &plan.depots[v.depot];
        let f = v.at(6.5 * 3600.0);
        assert!(
            distance_m((f.lat, f.lon), (depot.lat, depot.lon)) < 1.0 && f.kmh == 0.0,
            "{} is not at {} at 06:30",
            v.vehicle,
            depot.id
        );
        assert!(
            v.happenings.iter().all(|h| h.t >= FIRST_LEAVE_S),
            "{} did something before 06:30",
            v.vehicle
        );
        // Its first drive goes to the origin of its first move.
        let first_move = v.happenings.iter().find_map(|h| match &h.what {
            Happening::Event {
                event_type: "JourneyStart",
                move_id: Some(m),
                ..
            } => Some(m.clone()),
            _ => None,
        });
        let first_arrival = v.happenings.iter().find_map(|h| match &h.what {
            Happening::Arrival { site, .. } => Some(site.clone()),
            _ => None,
        });
        if let (Some(m), Some(site)) = (first_move, first_arrival) {
            let m = plan.moves.iter().find(|x| x.id == m).unwrap();
            assert_eq!(
                m.from_location, site,
                "{} goes first to its pick-up",
                v.vehicle
            );
        }
    }
    // The first fixes sent are at the depots (within GPS noise).
    let (truth, _) = dry_run(&config(40, 5, FaultConfig::default()), &sites, start()).unwrap();
    let plan = plan_for(&config(40, 5, FaultConfig::default()), &sites, start()).unwrap();
    let mut seen = HashSet::new();
    for line in &truth {
        let l: serde_json::Value = serde_json::from_str(line).unwrap();
        if l["type"] == "point" {
            seen.insert(l["vehicle"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(seen.len(), 40, "every van reports from the first fixes");
    for v in &plan.vans {
        assert!(seen.contains(v.vehicle.as_str()));
    }
}

#[test]
fn registrations_differ_between_seeds_and_runs_and_take_a_prefix() {
    let sites = sites();
    let regs = |c: &RunConfig, at: DateTime<Utc>| -> HashSet<String> {
        plan_for(c, &sites, at)
            .unwrap()
            .vans
            .iter()
            .map(|v| v.vehicle.to_string())
            .collect()
    };
    let base = config(100, 1, FaultConfig::default());
    let a = regs(&base, start());
    assert_eq!(a.len(), 100);
    assert_eq!(a, regs(&base, start()), "same seed and start, same plates");
    assert!(a.is_disjoint(&regs(&config(100, 2, FaultConfig::default()), start())));
    assert!(a.is_disjoint(&regs(&base, start() + chrono::Duration::seconds(1))));
    let mut prefixed = config(100, 1, FaultConfig::default());
    prefixed.registration_prefix = Some("sm".into());
    let p = regs(&prefixed, start());
    assert_eq!(p.len(), 100);
    assert!(
        p.iter().all(|r| r.starts_with("SM") && r.len() == 7),
        "{p:?}"
    );
    prefixed.registration_prefix = Some("TOOLONG".into());
    assert!(plan_for(&prefixed, &sites, start()).is_err());
}

#[test]
fn a_focus_day_has_moves_on_the_road_to_the_focus_site_from_the_first_fix() {
    // The demo's day: 50 vans, first fix at 08:00, several moves to LEI.
    let sites = sites();
    let mut c = config(50, 2026, FaultConfig::default());
    c.day_start_s = 8.0 * 3600.0;
    c.duration = Some(Duration::from_secs(600));
    c.focus_site = Some("LEI".into());
    let plan = plan_for(&c, &sites, start()).unwrap();
    let to_lei: Vec<_> = plan
        .moves
        .iter()
        .filter(|m| m.to_location == "LEI")
        .collect();
    assert!(to_lei.len() >= 6, "{} moves to LEI", to_lei.len());
    let t0 = c.day_start_s;
    let mut on_the_road = 0;
    let mut arriving_soon = 0;
    for v in &plan.vans {
        let before = v.happenings.partition_point(|h| h.t < t0);
        let started = started_before(&v.happenings[..before]);
        for &i in &started {
            let Happening::Event {
                move_id: Some(m), ..
            } = &v.happenings[i].what
            else {
                panic!("a start event without a move");
            };
            if to_lei.iter().any(|x| &x.id == m) {
                on_the_road += 1;
            }
        }
        for h in &v.happenings {
            if let Happening::Arrival {
                site,
                move_id: Some(_),
            } = &h.what
                && site == "LEI"
                && h.t > t0
                && h.t <= t0 + 300.0
            {
                arriving_soon += 1;
            }
        }
    }
    // Start events counted twice per move (JourneyStart and MoveStart).
    assert!(
        on_the_road / 2 >= 4,
        "{} LEI moves started before the first fix",
        on_the_road / 2
    );
    assert!(arriving_soon >= 1, "a van arrives at LEI within 5 minutes");
    // Those moves' start events go out with the first fixes.
    let (truth, msgs) = dry_run(&c, &sites, start()).unwrap();
    let early: Vec<&(String, Vec<u8>)> = msgs.iter().take(200).collect();
    for m in &to_lei {
        let started = plan.vans.iter().any(|v| {
            let before = v.happenings.partition_point(|h| h.t < t0);
            started_before(&v.happenings[..before]).iter().any(|&i| {
                matches!(&v.happenings[i].what, Happening::Event { move_id: Some(x), .. } if x == &m.id)
            })
        });
        if started {
            let sent = early.iter().any(|(topic, body)| {
                let b = String::from_utf8_lossy(body);
                topic.ends_with("/events") && b.contains("JourneyStart") && b.contains(&m.id)
            });
            assert!(sent, "JourneyStart of {} sent with the first fixes", m.id);
        }
    }
    // No fix is stamped after the run's first fix plus its span.
    let end = start() + chrono::Duration::seconds(600);
    for line in truth.iter().filter(|l| l.contains("\"type\":\"point\"")) {
        let l: serde_json::Value = serde_json::from_str(line).unwrap();
        let ts: DateTime<Utc> = l["ts"].as_str().unwrap().parse().unwrap();
        assert!(ts <= end, "fix at {ts} after {end}");
    }
}
