//! The simulator's rejection report against an in-process engine: plates
//! another supplier reported first are rejected, and the report says so,
//! apart from what the run provoked on purpose. Alone in its test binary:
//! the metrics recorder is per process, and the report reads `/metrics`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use common::*;
use movewatch::Engine;
use simulator::emit::FaultConfig;
use simulator::{Pace, RunConfig, Transport};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clashing_registrations_are_reported_and_provoked_rejections_are_not() {
    // The vans' plates were first reported by the other supplier (another
    // fleet, an earlier run): the engine rejects their points, and the run's
    // report says so, apart from the malformed payloads it sent on purpose.
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(dir.path(), None)).await.unwrap();
    wait_subscribed(&engine).await;
    let sites = movewatch::load_sites(&common::config(dir.path(), None)).unwrap();
    let span = Duration::from_secs(1800);
    let start = Utc::now() - chrono::Duration::from_std(span).unwrap();
    let run = RunConfig {
        vehicles: 6,
        seed: 5,
        interval: Duration::from_secs(30),
        duration: Some(span),
        pace: Pace::Load,
        start: Some(start),
        day_start_s: 6.5 * 3600.0,
        transport: Transport::Mqtt {
            host: engine.mqtt_addr.0.clone(),
            port: engine.mqtt_addr.1,
            passwords: HashMap::new(),
            connections: 1,
        },
        api: Some(engine.http_addr.to_string()),
        token: Some(TOKEN.into()),
        faults: FaultConfig {
            malformed_rate: 0.05,
            malformed_reasons: vec![model::Reason::OutOfRange, model::Reason::MissingField],
            ..Default::default()
        },
        truth: None,
        register_moves: false,
        measure: false,
        database_url: None,
        progress: false,
        registration_prefix: None,
        focus_site: None,
    };
    // The other supplier reports the first two vans first.
    let plan = simulator::run::plan_for(&run, &sites, start).unwrap();
    let client = publisher(&engine, None).await;
    for v in plan.vans.iter().take(2) {
        let other = if v.supplier.as_str() == "geoamey" {
            "serco"
        } else {
            "geoamey"
        };
        let p = point(
            &format!("claim-{}", v.vehicle),
            v.vehicle.as_str(),
            3600,
            53.0,
            -1.5,
        );
        client
            .publish(
                format!("movewatch/v1/{other}/{}/positions", v.vehicle),
                rumqttc::QoS::AtLeastOnce,
                false,
                p.to_string(),
            )
            .await
            .unwrap();
    }
    wait_for_positions(&engine, 2).await;
    let summary = simulator::run_day(run, &sites).await.unwrap();
    let r = summary.rejections.clone().expect("rejections checked");
    assert_eq!(r.source, "metrics");
    let clash = r
        .unexpected
        .get("vehicle_owned_by_other_supplier")
        .copied()
        .unwrap_or(0);
    assert!(clash >= 2 * 50, "{r:?}");
    assert!(
        r.expected.get("out_of_range").copied().unwrap_or(0) > 0,
        "{r:?}"
    );
    assert!(!r.unexpected.contains_key("out_of_range"), "{r:?}");
    assert!(!r.unexpected.contains_key("missing_field"), "{r:?}");
    let warnings = r.warnings().join("\n");
    assert!(warnings.contains("--registration-prefix"), "{warnings}");
    engine.stop();
}
