//! Fault tests (issue #9), bounded so that they run in the normal suite:
//!
//! - the engine killed with SIGKILL three times during a stream: every point
//!   and every breakdown alert stored exactly once;
//! - a 10,000-message malformed flood interleaved with good traffic: every
//!   good point stored, every bad message dead-lettered by reason, the
//!   engine ready throughout;
//! - Mosquitto (persistent) restarted three times under load: every point
//!   and breakdown alert the publisher got a PUBACK for stored exactly once,
//!   and the live state ends on each vehicle's last point;
//! - behind a flag (`scripts/test.sh --soak`): both faults in turn for ten
//!   minutes under a steady stream with breakdown reports.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::*;
use model::Reason;
use movewatch::Engine;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

/// A reported breakdown: the vehicle and the event's time.
type Breakdown = (String, chrono::DateTime<chrono::Utc>);

/// Inserts `rounds` breakdown reports per van (vehicles `{prefix}{v:02}ABC`),
/// spread evenly over `messages`, reported `round * 10 + 1` minutes after
/// `start` (whole seconds). An inserted message carries one marker point,
/// `(vehicle, "breakdown", NaN, NaN)`, so acknowledged reports can be told
/// apart. Returns every report.
fn insert_breakdowns(
    messages: &mut Vec<StreamMessage>,
    prefix: &str,
    vans: usize,
    rounds: usize,
    start: chrono::DateTime<chrono::Utc>,
) -> Vec<Breakdown> {
    let whole_second = chrono::DateTime::from_timestamp(start.timestamp(), 0).unwrap();
    let mut reports = Vec::new();
    for round in (0..rounds).rev() {
        let at = (round + 1) * messages.len() / (rounds + 1);
        let ts = whole_second + chrono::Duration::minutes(round as i64 * 10 + 1);
        for v in 0..vans {
            let vehicle = format!("{prefix}{v:02}ABC");
            let event = serde_json::json!({
                "event_type": "PersonMoveVehicleBrokeDown",
                "occurred_at": ts.to_rfc3339(),
            });
            messages.insert(
                at,
                (
                    format!("movewatch/v1/geoamey/{vehicle}/events"),
                    serde_json::to_vec(&event).unwrap(),
                    vec![(vehicle.clone(), ts.to_rfc3339(), f64::NAN, f64::NAN)],
                ),
            );
            reports.push((vehicle, ts));
        }
    }
    reports.sort();
    reports
}

/// `/api/vehicles` shows each van `{prefix}{v:02}ABC` at its last point in `points`.
async fn assert_live_state_is_the_last_point(
    http_addr: std::net::SocketAddr,
    points: &[SentPoint],
    prefix: &str,
    vans: usize,
) {
    let vehicles = http(
        "GET",
        http_addr,
        "/api/vehicles",
        &[("authorization", &format!("Bearer {TOKEN}"))],
        b"",
    )
    .await;
    assert_eq!(vehicles.status, 200, "{}", vehicles.body);
    let vehicles: serde_json::Value = serde_json::from_str(&vehicles.body).unwrap();
    for v in 0..vans {
        let vehicle = format!("{prefix}{v:02}ABC");
        let Some((_, id, lat, lon)) = points.iter().rev().find(|p| p.0 == vehicle) else {
            continue;
        };
        let live = vehicles
            .as_array()
            .and_then(|a| a.iter().find(|x| x["vehicle"] == vehicle.as_str()))
            .unwrap_or_else(|| panic!("{vehicle} is live: {vehicles}"));
        assert!(
            (live["lat"].as_f64().unwrap() - lat).abs() < 1e-9
                && (live["lon"].as_f64().unwrap() - lon).abs() < 1e-9,
            "{vehicle}: live {live} but last point {id} is {lat},{lon}"
        );
    }
}

/// Splits acknowledged points from acknowledged breakdown reports.
fn split_breakdowns(acked: Vec<SentPoint>) -> (Vec<SentPoint>, Vec<Breakdown>) {
    let (events, points): (Vec<_>, Vec<_>) = acked.into_iter().partition(|p| p.2.is_nan());
    let mut reports: Vec<Breakdown> = events
        .into_iter()
        .map(|(vehicle, ts, _, _)| (vehicle, ts.parse().unwrap()))
        .collect();
    reports.sort();
    (points, reports)
}

/// Every alert stored since `since`, each must be a breakdown: (vehicle, time), sorted.
async fn kept_breakdowns(
    store: &store::Store,
    since: chrono::DateTime<chrono::Utc>,
) -> Vec<Breakdown> {
    let mut kept: Vec<Breakdown> = store
        .alerts_since(since, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|a| {
            assert_eq!(a.kind, "breakdown", "{a:?}");
            (a.vehicle.to_string(), a.ts)
        })
        .collect();
    kept.sort();
    kept
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sigkills_during_a_stream_store_every_point_exactly_once() {
    const VANS: usize = 20;
    const MESSAGES: usize = 150;
    const PER_MESSAGE: usize = 10;
    const TOTAL: usize = VANS * MESSAGES * PER_MESSAGE;
    const BREAKDOWNS: usize = 3;

    let broker = Mosquitto::start(&[("geoamey", "pw-geoamey")]);
    let ChildFiles {
        dir: _dir,
        db,
        http_addr,
        config_file,
    } = child_files(&broker, "kills", "");
    let mut engine = EngineProcess::spawn(&config_file);
    wait_ready(http_addr).await;

    let start = chrono::Utc::now() - chrono::Duration::hours(2);
    let mut messages = stream("KT", VANS, MESSAGES, PER_MESSAGE, start);
    // Each van reports a breakdown three times, spread over the stream, so
    // some alerts are derived around the kills: each must be kept once.
    let breakdowns = insert_breakdowns(&mut messages, "KT", VANS, BREAKDOWNS, start);
    let (points, _) = split_breakdowns(messages.iter().flat_map(|m| m.2.clone()).collect());
    let sent = messages.len();
    let (client, acks) =
        publisher_at("127.0.0.1", broker.port, Some(("geoamey", "pw-geoamey"))).await;
    let publishing = tokio::spawn(async move {
        for (i, (topic, payload, _)) in messages.into_iter().enumerate() {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
            if i % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        client
    });

    let mut last = 0;
    for kill in 1..=3 {
        let db_path = db.clone();
        let at_kill = wait_for(120, "the engine to commit more of the stream", || {
            let db = db_path.clone();
            async move {
                let n = stored(&db).await;
                (n >= last + 1_500).then_some(n)
            }
        })
        .await;
        engine.kill();
        last = stored(&db).await;
        assert!(
            last < TOTAL as i64,
            "kill {kill} must land mid-stream (stored {last} of {TOTAL}, {at_kill} when killing)"
        );
        engine = EngineProcess::spawn(&config_file);
        wait_ready(http_addr).await;
    }

    let client = publishing.await.unwrap();
    wait_for(120, "the broker to acknowledge every message", || {
        let acked = acks.borrow().acked;
        async move { (acked == sent as u64).then_some(()) }
    })
    .await;
    let db_path = db.clone();
    wait_for(120, "every point in the store", || {
        let db = db_path.clone();
        async move { (stored(&db).await >= TOTAL as i64).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The restarted engine's live state is each van's last point.
    assert_live_state_is_the_last_point(http_addr, &points, "KT", VANS).await;
    engine.kill();
    drop(client);

    let store = store::Store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    assert_eq!(store.counts().await.unwrap().positions, TOTAL as i64);
    let ids = stored_ids(
        &store,
        (0..VANS).map(|v| format!("KT{v:02}ABC")),
        start - chrono::Duration::hours(1),
    )
    .await;
    assert_eq!(ids.len(), TOTAL);
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        TOTAL,
        "no point repeated"
    );
    let letters = store.dead_letter_counts().await.unwrap();
    assert!(
        letters.iter().all(|(r, _)| *r == Reason::Duplicate),
        "only redelivery duplicates are dead-lettered: {letters:?}"
    );
    // Every breakdown alert kept, none twice (a second with another time or
    // detail would be a second row).
    assert_eq!(
        kept_breakdowns(&store, start - chrono::Duration::hours(1)).await,
        breakdowns,
        "each breakdown alert exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10k_malformed_flood_is_dead_lettered_by_reason_and_good_points_still_land() {
    const BAD: usize = 10_000;
    const GOOD_EVERY: usize = 10;
    const GOOD: usize = BAD / GOOD_EVERY;

    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), None);
    with_supplier(&mut c, "geoamey");
    let engine = Engine::start(c).await.unwrap();
    let client = publisher(&engine, Some(("geoamey", "pw-geoamey"))).await;

    let topic = |v: &str| format!("movewatch/v1/geoamey/{v}/positions");
    let good = |id: String, v: &str| point(&id, v, 600, 53.8, -1.5);
    let bad = |i: usize| -> (Reason, Vec<u8>) {
        let mut p = good(format!("bad-{i}"), "FL00BAD");
        let payload = match i % 5 {
            0 => {
                return (
                    Reason::MalformedJson,
                    format!("{{not json {i}").into_bytes(),
                );
            }
            1 => {
                p.as_object_mut().unwrap().remove("longitude");
                (Reason::MissingField, p)
            }
            2 => {
                p["latitude"] = "53.8".into();
                (Reason::InvalidValue, p)
            }
            3 => {
                p["latitude"] = 91.0.into();
                (Reason::OutOfRange, p)
            }
            _ => {
                p["vehicle_registration"] = "OTHER1".into();
                (Reason::VehicleMismatch, p)
            }
        };
        (payload.0, payload.1.to_string().into_bytes())
    };

    let mut expected: BTreeMap<Reason, i64> = BTreeMap::new();
    let mut good_sent = 0;
    for i in 0..BAD {
        let (reason, payload) = bad(i);
        *expected.entry(reason).or_default() += 1;
        client
            .publish(topic("FL00BAD"), QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        if i % GOOD_EVERY == GOOD_EVERY - 1 {
            let vehicle = format!("FG{:02}ABC", good_sent % 10);
            let mut p = good(format!("good-{good_sent}"), &vehicle);
            p["tracking_timestamp"] = (chrono::Utc::now()
                - chrono::Duration::seconds((GOOD - good_sent) as i64))
            .to_rfc3339()
            .into();
            client
                .publish(topic(&vehicle), QoS::AtLeastOnce, false, p.to_string())
                .await
                .unwrap();
            good_sent += 1;
        }
        if i % 1_000 == 999 {
            // Ready all through the flood.
            let ready = http("GET", engine.http_addr, "/readyz", &[], b"").await;
            assert_eq!(ready.status, 200, "{}", ready.body);
        }
    }
    assert_eq!(good_sent, GOOD);

    assert_eq!(
        wait_for_positions(&engine, GOOD as i64).await,
        GOOD as i64,
        "every good point stored"
    );
    let letters: BTreeMap<Reason, i64> = wait_for_dead_letters(&engine, BAD as i64)
        .await
        .into_iter()
        .collect();
    assert_eq!(
        letters, expected,
        "every malformed message dead-lettered by reason"
    );
    let ready = http("GET", engine.http_addr, "/readyz", &[], b"").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(engine.tracker.len(), 10);
    engine.stop();
}

/// A QoS 1 publisher that sends one message at a time and, until the broker
/// acknowledges it, sends it again (reconnecting as needed). Returns the
/// points of the acknowledged messages.
async fn publish_with_retries(
    port: u16,
    messages: Vec<StreamMessage>,
    pause: Duration,
) -> Vec<SentPoint> {
    let mut options = MqttOptions::new(
        format!("geoamey-fault-publisher-{}", movewatch::random_token(6)),
        "127.0.0.1",
        port,
    );
    options
        .set_keep_alive(Duration::from_secs(5))
        .set_credentials("geoamey", "pw-geoamey");
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let poller = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    let _ = events_tx.send((true, pkid));
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    let _ = events_tx.send((false, ack.pkid));
                }
                Ok(_) => {}
                // rumqttc reconnects on the next poll.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    let mut acked = Vec::new();
    for (topic, payload, points) in messages {
        'attempt: loop {
            client
                .publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
                .await
                .unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            let mut sent = None;
            while let Ok(Some((outgoing, pkid))) =
                tokio::time::timeout_at(deadline, events.recv()).await
            {
                match (outgoing, sent) {
                    (true, None) => sent = Some(pkid),
                    (false, Some(p)) if p == pkid => break 'attempt,
                    _ => {}
                }
            }
            // No PUBACK in time (the broker is restarting): send it again.
        }
        acked.extend(points);
        tokio::time::sleep(pause).await;
    }
    poller.abort();
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_mosquitto_restarts_under_load_lose_no_acknowledged_point() {
    const VANS: usize = 10;
    const MESSAGES: usize = 60;
    const PER_MESSAGE: usize = 5;

    let mut broker = Mosquitto::start_persistent(&[("geoamey", "pw-geoamey")]);
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), Some(&broker.url()));
    c.mqtt.username = Some(ENGINE_USER.into());
    c.mqtt.password = Some(ENGINE_PASSWORD.into());
    with_supplier(&mut c, "geoamey");
    let engine = Engine::start(c).await.unwrap();
    wait_subscribed(&engine).await;

    let start = chrono::Utc::now() - chrono::Duration::hours(1);
    let mut messages = stream("MR", VANS, MESSAGES, PER_MESSAGE, start);
    let breakdowns = insert_breakdowns(&mut messages, "MR", VANS, 3, start);
    let publishing = tokio::spawn(publish_with_retries(
        broker.port,
        messages,
        Duration::from_millis(5),
    ));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(
            !publishing.is_finished(),
            "the restart must land during the load"
        );
        tokio::task::block_in_place(|| broker.restart());
    }
    let acked = tokio::time::timeout(Duration::from_secs(120), publishing)
        .await
        .expect("the publisher finishes")
        .unwrap();
    let (acked, acked_breakdowns) = split_breakdowns(acked);
    assert_eq!(acked.len(), VANS * MESSAGES * PER_MESSAGE);
    assert_eq!(acked_breakdowns, breakdowns);

    assert_eq!(
        wait_for_positions(&engine, acked.len() as i64).await,
        acked.len() as i64,
        "every acknowledged point stored"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ids = stored_ids(
        &engine.store,
        (0..VANS).map(|v| format!("MR{v:02}ABC")),
        start - chrono::Duration::hours(1),
    )
    .await;
    assert_eq!(ids.len(), acked.len(), "stored exactly once");
    let ids: HashSet<String> = ids.into_iter().collect();
    for (_, id, _, _) in &acked {
        assert!(ids.contains(id), "{id} acknowledged but not stored");
    }
    // The live state is each vehicle's last point.
    for v in 0..VANS {
        let vehicle = format!("MR{v:02}ABC");
        let (_, id, lat, lon) = acked.iter().rev().find(|p| p.0 == vehicle).unwrap();
        let live = engine
            .tracker
            .get(&vehicle.parse().unwrap())
            .expect("a live fix")
            .view();
        assert!(
            (live.lat - lat).abs() < 1e-9 && (live.lon - lon).abs() < 1e-9,
            "{vehicle}: live {},{} but last point {id} is {lat},{lon}",
            live.lat,
            live.lon
        );
    }
    assert_eq!(
        kept_breakdowns(&engine.store, start - chrono::Duration::hours(1)).await,
        breakdowns,
        "each breakdown alert exactly once"
    );
    engine.stop();
}

/// The soak's length: `MOVEWATCH_SOAK_SECS`, default ten minutes.
fn soak_length() -> Duration {
    let secs = std::env::var("MOVEWATCH_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    Duration::from_secs(secs)
}

/// The long run behind a flag (`scripts/test.sh --soak`): a steady stream with
/// breakdown reports while the engine is SIGKILLed and Mosquitto restarted in
/// turn, every 20–40 s, for [`soak_length`]. Afterwards every acknowledged
/// point is stored once, every breakdown alert once, and the live state is
/// each van's last point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: run with scripts/test.sh --soak (MOVEWATCH_SOAK_SECS, default 600)"]
async fn soak_engine_kills_and_broker_restarts_in_turn_lose_and_repeat_nothing() {
    const VANS: usize = 10;
    const PER_MESSAGE: usize = 5;
    let length = soak_length();
    // The publisher sends at most 100 messages a second (one at a time, 10 ms
    // apart); make that many for the whole soak, and stop it when the soak ends.
    let messages_per_van = (length.as_secs() as usize * 100 / VANS).max(50);

    let mut broker = Mosquitto::start_persistent(&[("geoamey", "pw-geoamey")]);
    let ChildFiles {
        dir: _dir,
        db,
        http_addr,
        config_file,
    } = child_files(&broker, "soak", "");
    let mut engine = EngineProcess::spawn(&config_file);
    wait_ready(http_addr).await;

    let start = chrono::Utc::now() - chrono::Duration::hours(6);
    let mut messages = stream("SK", VANS, messages_per_van, PER_MESSAGE, start);
    let breakdowns = insert_breakdowns(&mut messages, "SK", VANS, messages_per_van / 200, start);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let publishing = tokio::spawn(publish_until(broker.port, messages, stop_rx));

    let mut rng_state = 0x5eed_u64;
    let mut next_pause = || {
        // xorshift: deterministic 20–40 s pauses.
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        Duration::from_secs(20 + rng_state % 21)
    };
    let began = tokio::time::Instant::now();
    let mut faults = 0;
    while began.elapsed() + Duration::from_secs(20) < length {
        tokio::time::sleep(next_pause()).await;
        if faults % 2 == 0 {
            engine.kill();
            engine = EngineProcess::spawn(&config_file);
            wait_ready(http_addr).await;
        } else {
            tokio::task::block_in_place(|| broker.restart());
        }
        faults += 1;
        eprintln!(
            "soak: fault {faults} at {:.0} s",
            began.elapsed().as_secs_f64()
        );
    }
    // Err: the publisher ran out of messages already.
    let _ = stop_tx.send(true);
    let acked = tokio::time::timeout(Duration::from_secs(120), publishing)
        .await
        .expect("the publisher stops")
        .unwrap();
    let (points, acked_breakdowns) = split_breakdowns(acked);
    assert!(
        !sent_everything(&points, messages_per_van * VANS * PER_MESSAGE),
        "the stream lasted the whole soak"
    );
    assert!(
        faults >= 2 || length < Duration::from_secs(60),
        "faults happened: {faults}"
    );
    let db_path = db.clone();
    let expected = points.len() as i64;
    wait_for(120, "every acknowledged point in the store", || {
        let db = db_path.clone();
        async move { (stored(&db).await >= expected).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The live state: each van's last acknowledged point.
    assert_live_state_is_the_last_point(http_addr, &points, "SK", VANS).await;
    engine.kill();

    let store = store::Store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let ids = stored_ids(
        &store,
        (0..VANS).map(|v| format!("SK{v:02}ABC")),
        start - chrono::Duration::hours(1),
    )
    .await;
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no point stored twice");
    for (_, id, _, _) in &points {
        assert!(unique.contains(id), "{id} acknowledged but not stored");
    }
    let kept = kept_breakdowns(&store, start - chrono::Duration::hours(1)).await;
    for b in &acked_breakdowns {
        assert!(
            kept.contains(b),
            "breakdown {b:?} acknowledged but its alert lost"
        );
    }
    let unique: HashSet<_> = kept.iter().collect();
    assert_eq!(unique.len(), kept.len(), "no alert twice");
    assert!(
        kept.iter().all(|k| breakdowns.contains(k)),
        "only the reported breakdowns alerted: {kept:?}"
    );
    eprintln!(
        "soak: {} s, {faults} faults, {} points and {} breakdowns acknowledged, all stored once",
        began.elapsed().as_secs(),
        points.len(),
        acked_breakdowns.len()
    );
}

/// True when every message was sent: the stream may have ended before the faults did.
fn sent_everything(points: &[SentPoint], all: usize) -> bool {
    points.len() >= all
}

/// As [`publish_with_retries`], until `stop` turns true.
async fn publish_until(
    port: u16,
    messages: Vec<StreamMessage>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<SentPoint> {
    let mut acked = Vec::new();
    for chunk in messages.chunks(100) {
        if *stop.borrow() {
            break;
        }
        acked.extend(publish_with_retries(port, chunk.to_vec(), Duration::from_millis(10)).await);
    }
    acked
}
