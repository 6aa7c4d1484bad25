//! The engine against a test-owned Mosquitto with the documented production
//! settings (docs/PROTOCOL.md): the supplier ACL holds; with the isolating
//! configuration no device takes the engine's session or another supplier's,
//! reads nothing, and a bad topic is dead-lettered; a SIGKILL of the
//! engine in the middle of a 50,000-point QoS 1 stream loses nothing and
//! stores nothing twice, and a burst far past the broker's window is stored
//! whole.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use common::*;
use model::Reason;
use movewatch::Engine;
use rumqttc::QoS;

fn engine_config(dir: &Path, broker: &Mosquitto) -> model::config::Config {
    let mut c = config(dir, Some(&broker.url()));
    c.mqtt.username = Some(ENGINE_USER.into());
    c.mqtt.password = Some(ENGINE_PASSWORD.into());
    with_supplier(&mut c, "geoamey");
    with_supplier(&mut c, "serco");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mosquitto_acl_keeps_a_supplier_under_its_own_prefix() {
    // `rogue` is a broker user the engine does not know.
    let broker = Mosquitto::start(&[
        ("geoamey", "pw-geoamey"),
        ("serco", "pw-serco"),
        ("rogue", "pw-rogue"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(engine_config(dir.path(), &broker))
        .await
        .unwrap();
    wait_subscribed(&engine).await;

    // Under serco's prefix the ACL refuses it. Mosquitto 2.0 answers a denied
    // QoS 1 publish with a PUBACK carrying reason 135, which a 3.1.1 client
    // may treat as a protocol error and drop the connection: either way the
    // message must never reach the engine.
    let (spoofer, _) =
        publisher_at("127.0.0.1", broker.port, Some(("geoamey", "pw-geoamey"))).await;
    spoofer
        .publish(
            "movewatch/v1/serco/SP00FED/positions",
            QoS::AtLeastOnce,
            false,
            point("spoof", "SP00FED", 5, 51.0, -1.0).to_string(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (geoamey, _) =
        publisher_at("127.0.0.1", broker.port, Some(("geoamey", "pw-geoamey"))).await;
    geoamey
        .publish(
            "movewatch/v1/geoamey/H0NEST1/positions",
            QoS::AtLeastOnce,
            false,
            point("honest", "H0NEST1", 5, 51.0, -1.0).to_string(),
        )
        .await
        .unwrap();
    // A broker user that is not a configured supplier is dead-lettered `unknown_supplier`.
    let (rogue, _) = publisher_at("127.0.0.1", broker.port, Some(("rogue", "pw-rogue"))).await;
    rogue
        .publish(
            "movewatch/v1/rogue/R0GUE11/positions",
            QoS::AtLeastOnce,
            false,
            point("rogue-1", "R0GUE11", 5, 51.0, -1.0).to_string(),
        )
        .await
        .unwrap();

    assert_eq!(wait_for_positions(&engine, 1).await, 1);
    let letters = wait_for_dead_letters(&engine, 1).await;
    assert_eq!(letters, vec![(Reason::UnknownSupplier, 1)]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let latest = engine.store.latest_positions().await.unwrap();
    let vehicles: Vec<&str> = latest.iter().map(|p| p.vehicle.as_str()).collect();
    assert_eq!(vehicles, ["H0NEST1"]);
    engine.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_the_middle_of_a_50k_point_stream_loses_and_repeats_nothing() {
    const VANS: usize = 50;
    const MESSAGES_PER_VAN: usize = 100;
    const POINTS_PER_MESSAGE: usize = 10;
    const TOTAL: usize = VANS * MESSAGES_PER_VAN * POINTS_PER_MESSAGE;

    let broker = Mosquitto::start(&[("geoamey", "pw-geoamey")]);
    let ChildFiles {
        dir: _dir,
        db,
        http_addr,
        config_file,
    } = child_files(&broker, "kill", "");

    let mut engine = EngineProcess::spawn(&config_file);
    wait_ready(http_addr).await;

    let (client, acks) =
        publisher_at("127.0.0.1", broker.port, Some(("geoamey", "pw-geoamey"))).await;
    let start = chrono::Utc::now() - chrono::Duration::hours(2);
    let messages = stream("KL", VANS, MESSAGES_PER_VAN, POINTS_PER_MESSAGE, start);
    let publishing = tokio::spawn(async move {
        for (topic, payload, _) in messages {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        client
    });

    // Kill once the engine has committed some of the stream, well before the end.
    let db_path = db.clone();
    let at_kill = wait_for(60, "the engine to commit part of the stream", || {
        let db = db_path.clone();
        async move {
            let n = stored(&db).await;
            (n >= 5_000).then_some(n)
        }
    })
    .await;
    engine.kill();
    let after_kill = stored(&db).await;
    assert!(
        after_kill < TOTAL as i64,
        "the kill must land mid-stream (stored {after_kill} of {TOTAL}, {at_kill} when killing)"
    );

    // The devices go on publishing; the broker keeps the engine's session queue.
    let client = publishing.await.unwrap();
    wait_for(120, "the broker to acknowledge every message", || {
        let acked = acks.borrow().acked;
        async move { (acked == (VANS * MESSAGES_PER_VAN) as u64).then_some(()) }
    })
    .await;

    let mut engine = EngineProcess::spawn(&config_file);
    wait_ready(http_addr).await;
    let db_path = db.clone();
    wait_for(120, "every point in the store", || {
        let db = db_path.clone();
        async move { (stored(&db).await >= TOTAL as i64).then_some(()) }
    })
    .await;
    // Let any redelivered duplicates land before stopping.
    tokio::time::sleep(Duration::from_secs(1)).await;
    engine.kill();
    drop(client);

    let store = store::Store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.positions, TOTAL as i64, "every point exactly once");
    let mut ids = HashSet::new();
    for v in 0..VANS {
        let vehicle: model::VehicleId = format!("KL{v:02}ABC").parse().unwrap();
        let track = store
            .track(
                &vehicle,
                start - chrono::Duration::hours(1),
                chrono::Utc::now(),
                10_000,
            )
            .await
            .unwrap();
        assert_eq!(
            track.len(),
            MESSAGES_PER_VAN * POINTS_PER_MESSAGE,
            "{vehicle}"
        );
        ids.extend(track.into_iter().map(|p| p.tracking_id));
    }
    assert_eq!(ids.len(), TOTAL, "no point is missing or repeated");
    for v in 0..VANS {
        for step in 0..MESSAGES_PER_VAN * POINTS_PER_MESSAGE {
            assert!(ids.contains(&format!("KL-{v}-{step}")));
        }
    }
    // Whatever was redelivered after the kill was recognised as a duplicate.
    let letters = store.dead_letter_counts().await.unwrap();
    assert!(
        letters.iter().all(|(r, _)| *r == Reason::Duplicate),
        "only redelivery duplicates are dead-lettered: {letters:?}"
    );
}

/// Mosquitto with the documented settings (`max_queued_messages 0`) was seen
/// to send the engine far more than `max_inflight_messages` unacknowledged
/// messages. The engine once queued its acknowledgements through rumqttc's
/// event loop, which writes one per turn while it reads ten messages per
/// turn; under such a burst the unacknowledged count ran past the packet-id
/// space and intake deadlocked at about 75,000 of 100,000 single-point
/// messages. Every message must be stored, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_100k_single_point_messages_is_stored_whole() {
    const MESSAGES: usize = 100_000;
    const PUBLISHERS: usize = 4;
    let broker = Mosquitto::start(&[("geoamey", "pw-geoamey")]);
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(engine_config(dir.path(), &broker))
        .await
        .unwrap();
    wait_subscribed(&engine).await;

    let mut publishing = Vec::new();
    for p in 0..PUBLISHERS {
        let (client, acks) =
            publisher_at("127.0.0.1", broker.port, Some(("geoamey", "pw-geoamey"))).await;
        publishing.push(tokio::spawn(async move {
            for i in (p..MESSAGES).step_by(PUBLISHERS) {
                let vehicle = format!("BU{:03}RST", i % 500);
                let payload = point(
                    &format!("burst-{i}"),
                    &vehicle,
                    7_200 - (i / 500) as i64,
                    52.4,
                    -1.6,
                )
                .to_string();
                publish_positions(&client, &vehicle, payload).await;
            }
            (client, acks)
        }));
    }
    let mut clients = Vec::new();
    for p in publishing {
        clients.push(p.await.unwrap());
    }
    // Every message reached the broker (PUBACKed), and then the store.
    for (_, acks) in &clients {
        let mut acks = acks.clone();
        tokio::time::timeout(
            Duration::from_secs(120),
            acks.wait_for(|s| s.acked as usize >= MESSAGES / PUBLISHERS),
        )
        .await
        .expect("the broker acknowledged every publish")
        .unwrap();
    }
    let mut last = (0, std::time::Instant::now());
    loop {
        let n = engine.store.counts().await.unwrap().positions;
        if n as usize >= MESSAGES {
            break;
        }
        if n > last.0 {
            last = (n, std::time::Instant::now());
        }
        assert!(
            last.1.elapsed() < Duration::from_secs(30),
            "intake stalled at {n} of {MESSAGES} points"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let counts = engine.store.counts().await.unwrap();
    assert_eq!(counts.positions, MESSAGES as i64);
    assert_eq!(counts.dead_letters, 0, "nothing repeated or refused");
    engine.stop();
}

/// docs/PROTOCOL.md, "Mosquitto: suppliers isolated from each other": one
/// login per device used as its client id, writes only under its supplier's
/// prefix, no reads. Devices try the engine's client id and another
/// supplier's device id, and read everything; nothing of the engine's session
/// or of serco's is taken, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_isolating_configuration_keeps_sessions_and_data_apart() {
    let broker = Mosquitto::start_isolated(&[
        ("geoamey-van1", "geoamey", "pw-g1"),
        ("geoamey-van2", "geoamey", "pw-g2"),
        ("serco-van1", "serco", "pw-s1"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let mut c = engine_config(dir.path(), &broker);
    c.fleet.claim_on_first_report = false;
    for (v, s) in [("GA11AAA", "geoamey"), ("SE11RCO", "serco")] {
        c.vehicles.push(model::config::VehicleConfig {
            registration: v.parse().unwrap(),
            supplier: s.parse().unwrap(),
        });
    }
    let engine_id = c.mqtt.client_id.clone();
    let engine = Engine::start(c).await.unwrap();
    wait_subscribed(&engine).await;
    let port = broker.port;

    let (serco, serco_state, refused) =
        device_at("127.0.0.1", port, "serco-van1", ("serco-van1", "pw-s1")).await;
    assert_eq!(refused, None);
    let serco_point = |i: i64| point(&format!("s-{i}"), "SE11RCO", 30 - i, 53.8, -1.5).to_string();
    for i in 1..=5 {
        serco
            .publish(
                "movewatch/v1/serco/SE11RCO/positions",
                QoS::AtLeastOnce,
                false,
                serco_point(i),
            )
            .await
            .unwrap();
    }
    // geoamey's devices take the engine's client id and serco's device id,
    // and one reads everything it can.
    let (_a, _, refused) =
        device_at("127.0.0.1", port, &engine_id, ("geoamey-van1", "pw-g1")).await;
    assert_eq!(refused, None, "renamed to its login, not refused");
    let (_b, _, _) = device_at(
        "127.0.0.1",
        port,
        "movewatch-engine",
        ("geoamey-van1", "pw-g1"),
    )
    .await;
    let (spy, spy_state, refused) =
        device_at("127.0.0.1", port, "serco-van1", ("geoamey-van2", "pw-g2")).await;
    assert_eq!(refused, None);
    spy.subscribe("movewatch/v1/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(engine.mqtt_connected(), "the engine lost its session");
    assert!(
        serco_state.borrow().connected,
        "serco's device was kicked off"
    );
    for i in 6..=20 {
        serco
            .publish(
                "movewatch/v1/serco/SE11RCO/positions",
                QoS::AtLeastOnce,
                false,
                serco_point(i),
            )
            .await
            .unwrap();
    }
    // geoamey: its own van, serco's van under its own prefix, and bad topics.
    let (geoamey, _, _) =
        device_at("127.0.0.1", port, "geoamey-van1", ("geoamey-van1", "pw-g1")).await;
    let sends = [
        ("movewatch/v1/geoamey/GA11AAA/positions", "GA11AAA"),
        ("movewatch/v1/geoamey/SE11RCO/positions", "SE11RCO"),
        ("movewatch/v1/geoamey/GA11AAA/position", "GA11AAA"),
        ("movewatch/v1/geoamey/GA11AAA/positions/", "GA11AAA"),
    ];
    for (i, (t, v)) in sends.iter().enumerate() {
        geoamey
            .publish(
                *t,
                QoS::AtLeastOnce,
                false,
                point(&format!("g-{i}"), v, 5, 53.8, -1.5).to_string(),
            )
            .await
            .unwrap();
    }
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    wait_for(30, "serco's 20 points and geoamey's one", || async {
        let serco = stored_ids(&engine.store, ["SE11RCO".to_owned()], since).await;
        let geoamey = stored_ids(&engine.store, ["GA11AAA".to_owned()], since).await;
        (serco.len() == 20 && geoamey.len() == 1).then_some(())
    })
    .await;
    let letters = wait_for_dead_letters(&engine, 3).await;
    assert_eq!(
        letters,
        vec![
            (Reason::BadTopic, 2),
            (Reason::VehicleOwnedByOtherSupplier, 1)
        ]
    );
    assert_eq!(
        serco_state.borrow().acked,
        20,
        "every serco message acknowledged"
    );
    assert!(serco_state.borrow().connected);
    assert_eq!(
        spy_state.borrow().received,
        0,
        "a device read another's data"
    );
    assert!(engine.mqtt_connected());
    engine.stop();
}
