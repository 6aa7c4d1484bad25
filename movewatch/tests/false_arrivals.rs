//! False arrivals, measured: a seeded simulated morning (40 vans, sped up)
//! against an in-process engine, with the simulator's ground truth. A move
//! the engine reports `arrived` (`GET /api/moves/{id}`: `arrived_at`) when
//! the truth has no arrival of it at its destination by then (2 minutes'
//! tolerance) is a false arrival; one that matches the truth's arrival is a
//! correct one.
//!
//! The typical false arrival: a court-run van enters its prison in the
//! morning to pick a prisoner up, while the afternoon's move back to that
//! prison is already booked on it; a move may only arrive once it departed.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use movewatch::Engine;
use simulator::emit::FaultConfig;
use simulator::{Pace, RunConfig, Transport};

fn ts(v: &serde_json::Value) -> Option<DateTime<Utc>> {
    v.as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_move_arrives_before_the_truth_says_it_did() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(dir.path(), None)).await.unwrap();
    wait_subscribed(&engine).await;
    let sites = movewatch::load_sites(&config(dir.path(), None)).unwrap();

    // 06:30 to 11:30 of the planned day at 250x (72 s), fixes every 30 s:
    // the morning's pick-ups and deliveries.
    let span = Duration::from_secs(5 * 3600);
    let speed = 250.0;
    let truth_path = dir.path().join("truth.jsonl");
    let run = RunConfig {
        vehicles: 40,
        seed: 11,
        interval: Duration::from_secs(30),
        duration: Some(span),
        pace: Pace::Speed(speed),
        start: None,
        day_start_s: 6.5 * 3600.0,
        transport: Transport::Mqtt {
            host: engine.mqtt_addr.0.clone(),
            port: engine.mqtt_addr.1,
            passwords: HashMap::new(),
            connections: 2,
        },
        api: Some(engine.http_addr.to_string()),
        token: Some(TOKEN.into()),
        faults: FaultConfig {
            noise: true,
            ..Default::default()
        },
        truth: Some(truth_path.clone()),
        register_moves: true,
        measure: false,
        database_url: None,
        progress: false,
        registration_prefix: None,
        focus_site: None,
    };
    let summary = tokio::time::timeout(Duration::from_secs(150), simulator::run_day(run, &sites))
        .await
        .expect("the run finishes in time")
        .unwrap();
    assert!(
        matches!(summary.moves_registered, Some(Ok(n)) if n > 0),
        "{:?}",
        summary.moves_registered
    );
    assert_eq!(
        wait_for_positions(&engine, summary.points as i64).await,
        summary.points as i64
    );
    // Let the pipeline finish the last batches' derived state.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The truth: each move's destination, and its true arrivals there.
    let text = std::fs::read_to_string(&truth_path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let destination: HashMap<String, String> = lines
        .iter()
        .filter(|l| l["type"] == "move")
        .map(|l| {
            (
                l["move_id"].as_str().unwrap().to_owned(),
                l["to_location"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut true_arrival: HashMap<String, DateTime<Utc>> = HashMap::new();
    for l in lines.iter().filter(|l| l["type"] == "arrival") {
        let (Some(m), Some(site)) = (l["move_id"].as_str(), l["site"].as_str()) else {
            continue;
        };
        if destination.get(m).map(String::as_str) == Some(site) {
            true_arrival
                .entry(m.to_owned())
                .or_insert(ts(&l["ts"]).unwrap());
        }
    }

    // The engine's arrivals.
    let tolerance = chrono::Duration::minutes(2);
    let (mut arrivals, mut false_arrivals, mut correct) = (0, 0, 0);
    let mut report = Vec::new();
    for id in destination.keys() {
        let reply = get_move(&engine, id, TOKEN).await;
        assert_eq!(reply.status, 200, "GET /api/moves/{id}: {}", reply.body);
        let m = reply.json();
        let Some(at) = ts(&m["arrived_at"]) else {
            continue;
        };
        arrivals += 1;
        match true_arrival.get(id) {
            Some(truth) if *truth <= at + tolerance => {
                if (at - *truth).abs() <= tolerance {
                    correct += 1;
                } else {
                    report.push(format!(
                        "{id}: arrived at {at}, truly at {truth} (late by {} s)",
                        (at - *truth).num_seconds()
                    ));
                }
            }
            truth => {
                false_arrivals += 1;
                report.push(format!(
                    "FALSE {id} ({} -> {}, {}): engine arrived_at {at}, truth {truth:?}",
                    m["from_location"], m["to_location"], m["vehicle"]
                ));
            }
        }
    }
    let in_window = true_arrival.len();
    println!(
        "false arrivals: {false_arrivals} of {arrivals} arrivals ({} moves)",
        destination.len()
    );
    println!(
        "correct arrivals: {correct} of {arrivals} arrivals ({in_window} true arrivals at a destination in the run)"
    );
    for r in &report {
        println!("  {r}");
    }
    assert!(correct > 0, "the engine saw no true arrival");
    assert_eq!(false_arrivals, 0, "false arrivals:\n{}", report.join("\n"));
    engine.stop();
}
