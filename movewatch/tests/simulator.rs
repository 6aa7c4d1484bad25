//! A small seeded day driven by the simulator against an in-process engine
//! (embedded broker): what the engine stored must match the ground truth.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use model::config::SupplierConfig;
use movewatch::Engine;
use simulator::emit::FaultConfig;
use simulator::{Pace, RunConfig, Transport};

fn ts(v: &serde_json::Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_day_matches_its_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), None);
    // Suppliers with API keys but no MQTT passwords: the embedded broker stays
    // open (no topic guard), so the simulator can provoke `unknown_supplier`.
    for id in ["geoamey", "serco"] {
        config.suppliers.push(SupplierConfig {
            id: id.parse().unwrap(),
            api_key: Some(format!("key-{id}")),
            mqtt_password: None,
        });
    }
    let store_url = config.store.url.clone();
    let engine = Engine::start(config).await.unwrap();
    wait_subscribed(&engine).await;
    let sites = movewatch::load_sites(&common::config(dir.path(), None)).unwrap();

    let span = Duration::from_secs(2 * 3600);
    let interval = Duration::from_secs(20);
    let truth_path = dir.path().join("truth.jsonl");
    let run = RunConfig {
        vehicles: 24,
        seed: 42,
        interval,
        duration: Some(span),
        pace: Pace::Load,
        start: Some(
            Utc::now() - chrono::Duration::from_std(span).unwrap() - chrono::Duration::minutes(1),
        ),
        day_start_s: 6.5 * 3600.0,
        transport: Transport::Mqtt {
            host: engine.mqtt_addr.0.clone(),
            port: engine.mqtt_addr.1,
            passwords: HashMap::new(),
            connections: 3,
        },
        api: Some(engine.http_addr.to_string()),
        token: Some(TOKEN.into()),
        faults: FaultConfig {
            noise: true,
            bad_fix_rate: 0.005,
            gap_rate: 0.003,
            duplicate_rate: 0.005,
            reorder_rate: 0.005,
            skew_rate: 0.2,
            malformed_rate: 0.01,
            malformed_reasons: model::Reason::ALL.to_vec(),
            silent_rate: 0.05,
            breakdown_rate: 0.1,
        },
        truth: Some(truth_path.clone()),
        register_moves: true,
        measure: true,
        database_url: Some(store_url),
        progress: false,
        registration_prefix: None,
        focus_site: None,
    };
    let summary = tokio::time::timeout(Duration::from_secs(240), simulator::run_day(run, &sites))
        .await
        .expect("the run finishes in time")
        .unwrap();
    assert!(summary.points > 5_000, "{} points", summary.points);

    // Every valid point stored once; every malformed payload and re-send dead-lettered with its reason.
    let stored = wait_for_positions(&engine, summary.points as i64).await;
    assert_eq!(stored, summary.points as i64, "points stored");
    let expected_letters: i64 = summary.expected_dead_letters.values().sum::<u64>() as i64;
    let letters = wait_for_dead_letters(&engine, expected_letters).await;
    let got: BTreeMap<String, u64> = letters
        .iter()
        .map(|(r, n)| (r.as_str().to_owned(), *n as u64))
        .collect();
    assert_eq!(got, summary.expected_dead_letters, "dead letters by reason");
    assert_eq!(
        got.len(),
        model::Reason::ALL.len(),
        "every rejection reason provoked: {got:?}"
    );
    let counts = engine.store.counts().await.unwrap();
    assert_eq!(counts.events, summary.events as i64, "events stored");
    // The run's own rejection report: every rejection was provoked on purpose.
    let rejections = summary.rejections.clone().expect("rejections checked");
    assert_eq!(
        rejections.observed, summary.expected_dead_letters,
        "{rejections:?}"
    );
    assert!(rejections.unexpected.is_empty(), "{rejections:?}");

    // The load report: nothing lost, nothing twice, latencies measured.
    let report = summary.report.clone().unwrap();
    assert_eq!(report.lost, Some(0), "{}", report.table());
    assert_eq!(report.duplicated_in_store, Some(0));
    assert_eq!(report.ws_duplicates, 0);
    // The gateway conflates a slow client's queue to the latest position per
    // vehicle, so under this burst the fleet client sees at least one frame
    // per van, not every point (the store check above is the loss check).
    assert!(report.ws_matched >= 20, "{}", report.table());
    // Moves: registered if the engine has PUT /api/moves, skipped gracefully otherwise.
    assert!(summary.moves_registered.is_some());

    // Arrivals: each true arrival (before the last 10 minutes, while the
    // device still reports) is a fence entry at that site in the store, at the
    // true time shifted by the device's clock skew, within two fixes.
    let text = std::fs::read_to_string(&truth_path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut skew: HashMap<String, chrono::Duration> = HashMap::new();
    let mut silent: HashMap<String, DateTime<Utc>> = HashMap::new();
    for l in &lines {
        let v = l["vehicle"].as_str().unwrap_or_default().to_owned();
        match l["type"].as_str() {
            Some("point") => {
                skew.entry(v)
                    .or_insert_with(|| ts(&l["ts"]) - ts(&l["true_ts"]));
            }
            Some("silent") => {
                silent.entry(v).or_insert_with(|| ts(&l["ts"]));
            }
            _ => {}
        }
    }
    let (_, end) = summary.span;
    let mut checked = 0;
    for a in lines.iter().filter(|l| l["type"] == "arrival") {
        let v = a["vehicle"].as_str().unwrap();
        let at = ts(&a["ts"]);
        if at > end - chrono::Duration::minutes(10)
            || silent
                .get(v)
                .is_some_and(|s| *s < at + chrono::Duration::minutes(5))
        {
            continue;
        }
        let at = at + skew.get(v).copied().unwrap_or_default();
        let vehicle: model::VehicleId = v.parse().unwrap();
        let crossings = engine
            .store
            .fence_transitions(
                &vehicle,
                at - chrono::Duration::minutes(5),
                at + chrono::Duration::minutes(5),
            )
            .await
            .unwrap();
        let site = a["site"].as_str().unwrap();
        let hit = crossings.iter().find(|c| {
            c.site.as_str() == site
                && matches!(
                    c.kind,
                    model::TransitionKind::Enter | model::TransitionKind::PassThrough
                )
        });
        let Some(hit) = hit else {
            let track = engine
                .store
                .track(
                    &vehicle,
                    at - chrono::Duration::minutes(3),
                    at + chrono::Duration::minutes(3),
                    100,
                )
                .await
                .unwrap();
            let s = sites.iter().find(|s| s.id.as_str() == site).unwrap();
            let near: Vec<String> = track
                .iter()
                .map(|p| {
                    format!(
                        "{} {:.0}m {:?}kmh {:?}",
                        p.ts,
                        simulator::distance_m((p.lat, p.lon), (s.lat, s.lon)),
                        p.speed_kmh,
                        p.flags
                    )
                })
                .collect();
            let mine: Vec<&serde_json::Value> = lines
                .iter()
                .filter(|l| l["vehicle"] == v && l["type"] != "point")
                .collect();
            let pts: Vec<&serde_json::Value> = lines
                .iter()
                .filter(|l| l["vehicle"] == v && l["type"] == "point")
                .collect();
            panic!(
                "no entry of {site} by {v} near {at} (span {:?}): {crossings:?}\n{near:#?}\n{mine:#?}\n{} points, first {:?} last {:?}",
                summary.span,
                pts.len(),
                pts.first(),
                pts.last()
            );
        };
        let lag = (hit.ts - at).num_seconds();
        assert!(
            (-5..=2 * interval.as_secs() as i64 + 30).contains(&lag),
            "{v} entered {site} {lag} s after the true arrival"
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} arrivals checked");
    engine.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_are_skipped_gracefully_without_the_moves_route() {
    // Whatever the engine answers for PUT /api/moves, the run goes on.
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(dir.path(), None)).await.unwrap();
    wait_subscribed(&engine).await;
    let sites = movewatch::load_sites(&common::config(dir.path(), None)).unwrap();
    let span = Duration::from_secs(600);
    let summary = simulator::run_day(
        RunConfig {
            vehicles: 5,
            seed: 1,
            interval: Duration::from_secs(30),
            duration: Some(span),
            pace: Pace::Load,
            start: None,
            day_start_s: 7.0 * 3600.0,
            transport: Transport::Mqtt {
                host: engine.mqtt_addr.0.clone(),
                port: engine.mqtt_addr.1,
                passwords: HashMap::new(),
                connections: 1,
            },
            api: Some(engine.http_addr.to_string()),
            token: Some(TOKEN.into()),
            faults: FaultConfig::default(),
            truth: None,
            register_moves: true,
            measure: false,
            database_url: None,
            progress: false,
            registration_prefix: None,
            focus_site: None,
        },
        &sites,
    )
    .await
    .unwrap();
    assert_eq!(
        wait_for_positions(&engine, summary.points as i64).await,
        summary.points as i64
    );
    match summary.moves_registered {
        Some(Ok(n)) => assert!(n > 0),
        Some(Err(why)) => assert!(why.contains("PUT /api/moves"), "{why}"),
        None => panic!("registration was asked for"),
    }
    engine.stop();
}
