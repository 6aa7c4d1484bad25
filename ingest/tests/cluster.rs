//! The cluster topology against a real three-node RabbitMQ cluster, started by
//! `scripts/cluster.sh` on spare ports in a temporary directory and stopped
//! at the end (docs/SCALE-OUT.md lists each guarantee beside its phase here).
//!
//! Skipped unless `MOVEWATCH_CLUSTER_TESTS=1`: starting three nodes takes
//! about a minute on a two-core machine. `scripts/test.sh` sets it.
//! `MOVEWATCH_CLUSTER_PUBLISH=N` also measures N QoS 1 publishes.
//!
//! One test, in phases, on one cluster: the last phase kills a broker.

use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use model::VehicleId;
use movewatch_ingest::amqp::{self, AmqpError};
use rumqttc::QoS;

#[path = "support/cluster_harness.rs"]
mod cluster_harness;
use cluster_harness::{Cluster, Device, DeviceEvent, enabled};

const PARTITIONS: usize = 8;
const PASSWORD_ACME: &str = "acme-secret";
const PASSWORD_OTHER: &str = "other-secret";

async fn connect(url: &str) -> Connection {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match Connection::connect(url, ConnectionProperties::default()).await {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("AMQP {url}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("AMQP {url}: {e}"),
        }
    }
}

async fn message_count(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare")
        .message_count()
}

fn position(vehicle: &str, tracking_id: &str, minute: u32) -> Vec<u8> {
    serde_json::json!({
        "tracking_id": tracking_id,
        "tracking_timestamp": format!("2025-03-01T09:{minute:02}:00Z"),
        "vehicle_registration": vehicle,
        "latitude": 53.8,
        "longitude": -1.55,
    })
    .to_string()
    .into_bytes()
}

fn journey_start(vehicle: &str) -> Vec<u8> {
    serde_json::json!({
        "event_type": "JourneyStart",
        "occurred_at": "2025-03-01T08:59:00Z",
        "journey_id": "J-1",
        "details": {"vehicle_reg": vehicle},
    })
    .to_string()
    .into_bytes()
}

fn topic(supplier: &str, vehicle: &str, kind: &str) -> String {
    format!("movewatch/v1/{supplier}/{vehicle}/{kind}")
}

/// Takes `n` messages from a queue (acknowledging each), or fewer if none
/// comes for two seconds. Through a consumer of its own channel, closed at
/// the end: quorum queues with single active consumer refuse basic.get.
async fn drain(conn: &Connection, queue: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    let channel = conn.create_channel().await.expect("channel");
    channel
        .basic_qos(64, Default::default())
        .await
        .expect("qos");
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "drain".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut got = Vec::new();
    while got.len() < n {
        let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_secs(2), consumer.next()).await
        else {
            break;
        };
        let delivery = delivery.expect("delivery");
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
        got.push((delivery.routing_key.to_string(), delivery.data.clone()));
    }
    channel.close(200, "drained".into()).await.expect("close");
    got
}

/// The trap, shown on the broker itself: a consistent-hash exchange over the
/// routing key puts the two topics of most vans on different queues. Returns
/// a van for which it does.
async fn van_split_by_consistent_hash(channel: &Channel) -> String {
    const X: &str = "trap.hash";
    channel
        .exchange_declare(
            X.into(),
            ExchangeKind::Custom("x-consistent-hash".into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare x-consistent-hash");
    for q in 0..PARTITIONS {
        let name = format!("trap.q{q}");
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare trap queue");
        channel
            .queue_bind(
                name.as_str().into(),
                X.into(),
                "1".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind trap queue");
    }
    let mut found = None;
    for i in 0..50 {
        let van = format!("TR{i:02}APX");
        for kind in ["events", "positions"] {
            channel
                .basic_publish(
                    X.into(),
                    format!("movewatch.v1.acme.{van}.{kind}").as_str().into(),
                    BasicPublishOptions::default(),
                    kind.as_bytes(),
                    BasicProperties::default(),
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
        }
        let mut holding = Vec::new();
        for q in 0..PARTITIONS {
            let name = format!("trap.q{q}");
            if message_count(channel, &name).await > 0 {
                holding.push(q);
            }
            channel
                .queue_purge(name.as_str().into(), Default::default())
                .await
                .expect("purge");
        }
        if holding.len() == 2 {
            eprintln!(
                "trap: the consistent-hash exchange puts {van}'s events and positions on queues {holding:?}"
            );
            found = Some(van);
            break;
        }
    }
    for q in 0..PARTITIONS {
        channel
            .queue_delete(
                format!("trap.q{q}").as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await
            .expect("delete trap queue");
    }
    found.expect("no van among 50 whose two topics hash apart")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_brokers_partition_queues_failover_and_supplier_rights() {
    if !enabled() {
        eprintln!(
            "skipped: set MOVEWATCH_CLUSTER_TESTS=1 to start a three-node RabbitMQ cluster (about a minute)"
        );
        return;
    }
    let cluster = Cluster::start();

    // --- the topology declares, twice (idempotent), with typed errors -----
    let admin = connect(&cluster.amqp_url(1)).await;
    let ch = admin.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let started = Instant::now();
    amqp::declare_topology(&ch, PARTITIONS)
        .await
        .expect("declare");
    eprintln!(
        "topology ({PARTITIONS} quorum queues) declared in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    amqp::declare_topology(&ch, PARTITIONS)
        .await
        .expect("declare again");
    assert!(matches!(
        amqp::declare_topology(&ch, 0).await,
        Err(AmqpError::Partitions(0))
    ));

    // --- the trap: a van whose two topics the hash exchange would split ---
    let van = van_split_by_consistent_hash(&ch).await;
    let vehicle = VehicleId::parse(&van).expect("vehicle id");
    let p = engine::partition_of(&vehicle, PARTITIONS);
    amqp::bind_vehicle(&ch, &vehicle, p, PARTITIONS)
        .await
        .expect("bind vehicle");
    amqp::bind_vehicle(&ch, &vehicle, p, PARTITIONS)
        .await
        .expect("bind vehicle again");
    let queue = amqp::partition_queue(p);

    // --- suppliers: logins that may publish only under their own prefix ---
    cluster.script_ok(
        &["supplier", "acme"],
        &[("MW_SUPPLIER_PASSWORD", PASSWORD_ACME)],
    );
    cluster.script_ok(
        &["supplier", "other"],
        &[("MW_SUPPLIER_PASSWORD", PASSWORD_OTHER)],
    );

    // --- (a) + the trap solved: MQTT QoS 1 to node 2, one partition queue,
    // in order, consumed over AMQP on node 3 --------------------------------
    let mut device =
        Device::connect(cluster.mqtt_port(2), "acme-dev1", "acme", PASSWORD_ACME).await;
    let sent = vec![
        (topic("acme", &van, "events"), journey_start(&van)),
        (topic("acme", &van, "positions"), position(&van, "t1", 0)),
        (topic("acme", &van, "positions"), position(&van, "t2", 1)),
        (topic("acme", &van, "positions"), position(&van, "t3", 2)),
    ];
    device.publish_acked(&sent).await;
    let node3 = connect(&cluster.amqp_url(3)).await;
    let ch3 = node3.create_channel().await.expect("channel");
    for q in (0..PARTITIONS).filter(|q| *q != p) {
        let other = amqp::partition_queue(q);
        assert_eq!(
            message_count(&ch3, &other).await,
            0,
            "{other} got a message"
        );
    }
    assert_eq!(message_count(&ch3, amqp::UNROUTED).await, 0);
    let got = drain(&node3, &queue, 5).await;
    let suppliers = movewatch_ingest::Suppliers::from_config(&[]);
    suppliers.register(model::fleet::RegisterEntry {
        vehicle,
        supplier: model::SupplierId::parse("acme").expect("supplier"),
    });
    assert_eq!(
        got.len(),
        sent.len(),
        "every message exactly once in {queue}"
    );
    for ((routing_key, payload), (topic, sent_payload)) in got.iter().zip(&sent) {
        assert_eq!(&amqp::mqtt_topic(routing_key), topic);
        assert_eq!(payload, sent_payload, "in the order published");
        // The engine node's side: the message decodes as on one machine.
        let batch = movewatch_ingest::batch_from_mqtt(
            &amqp::mqtt_topic(routing_key),
            payload,
            &suppliers,
            model::CommitToken::detached(),
        );
        assert!(batch.dead_letters.is_empty(), "{:?}", batch.dead_letters);
        assert_eq!(batch.events.len() + batch.positions.len(), 1);
    }
    eprintln!("(a) JourneyStart and three points for {van}: one queue ({queue}), in order");

    // --- nothing under movewatch/v1/ is dropped: unregistered vehicles and
    // bad topics go to the unrouted queue ---------------------------------
    device
        .publish_acked(&[
            (
                topic("acme", "ZZ99ZZZ", "positions"),
                position("ZZ99ZZZ", "u1", 3),
            ),
            ("movewatch/v1/acme/oops".to_owned(), b"{}".to_vec()),
        ])
        .await;
    let unrouted = drain(&node3, amqp::UNROUTED, 3).await;
    assert_eq!(
        unrouted.iter().map(|m| m.0.as_str()).collect::<Vec<_>>(),
        [
            "movewatch.v1.acme.ZZ99ZZZ.positions",
            "movewatch.v1.acme.oops"
        ]
    );
    for q in 0..PARTITIONS {
        assert_eq!(message_count(&ch3, &amqp::partition_queue(q)).await, 0);
    }

    // --- supplier rights: acme cannot publish under other's prefix --------
    let mut intruder =
        Device::connect(cluster.mqtt_port(1), "acme-dev2", "acme", PASSWORD_ACME).await;
    intruder
        .client
        .publish(
            topic("other", &van, "positions"),
            QoS::AtLeastOnce,
            false,
            position(&van, "forged", 4),
        )
        .await
        .expect("queue publish");
    match intruder.next(Duration::from_secs(5)).await {
        Some(DeviceEvent::PubAck(_)) => panic!("a publish under another supplier was acknowledged"),
        outcome => eprintln!("forged publish under movewatch/v1/other/: {outcome:?}"),
    }
    let mut honest =
        Device::connect(cluster.mqtt_port(1), "other-dev1", "other", PASSWORD_OTHER).await;
    honest
        .publish_acked(&[(topic("other", &van, "positions"), position(&van, "real", 5))])
        .await;
    let got = drain(&node3, &queue, 2).await;
    assert_eq!(got.len(), 1, "only the honest message is queued");
    assert_eq!(got[0].1, position(&van, "real", 5));
    assert_eq!(message_count(&ch3, amqp::UNROUTED).await, 0);

    // Client-id takeover: another supplier's login using acme's client id
    // disconnects acme's device, and gains no right to acme's topics.
    let mut victim =
        Device::connect(cluster.mqtt_port(1), "acme-dev3", "acme", PASSWORD_ACME).await;
    let mut taker =
        Device::connect(cluster.mqtt_port(2), "acme-dev3", "other", PASSWORD_OTHER).await;
    match victim.next(Duration::from_secs(10)).await {
        Some(DeviceEvent::Lost(why)) => {
            eprintln!("client-id takeover closed the first session: {why}")
        }
        other => panic!("the first session with client id acme-dev3 stayed up: {other:?}"),
    }
    taker
        .client
        .publish(
            topic("acme", &van, "positions"),
            QoS::AtLeastOnce,
            false,
            position(&van, "taken", 6),
        )
        .await
        .expect("queue publish");
    assert!(
        !matches!(
            taker.next(Duration::from_secs(5)).await,
            Some(DeviceEvent::PubAck(_))
        ),
        "the taker published under acme's prefix"
    );
    assert!(drain(&node3, &queue, 1).await.is_empty());
    drop((intruder, honest, victim, taker));

    // --- (c) single active consumer: one consumer gets everything; when its
    // connection goes, the other takes over with the unacknowledged ones ---
    let first = connect(&cluster.amqp_url(1)).await;
    let first_ch = first.create_channel().await.expect("channel");
    let mut active = amqp::consume_partition(&first_ch, p, 16, "node-a")
        .await
        .expect("consume");
    let second = connect(&cluster.amqp_url(3)).await;
    let second_ch = second.create_channel().await.expect("channel");
    let mut standby = amqp::consume_partition(&second_ch, p, 16, "node-b")
        .await
        .expect("consume");
    for i in 0..5u8 {
        ch.basic_publish(
            amqp::PARTITIONS_EXCHANGE.into(),
            p.to_string().as_str().into(),
            BasicPublishOptions::default(),
            &[i],
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
    for i in 0..5u8 {
        let d = tokio::time::timeout(Duration::from_secs(10), active.next())
            .await
            .expect("the active consumer gets every message")
            .expect("stream")
            .expect("delivery");
        assert_eq!(d.data, [i]);
        // Not acknowledged: as if the node died before its store committed.
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(2), standby.next())
            .await
            .is_err(),
        "the standby consumer got a message while the first was active"
    );
    first.close(200, "gone".into()).await.expect("close");
    for i in 0..5u8 {
        let d = tokio::time::timeout(Duration::from_secs(15), standby.next())
            .await
            .expect("the standby takes over")
            .expect("stream")
            .expect("delivery");
        assert_eq!(d.data, [i], "redelivered in order");
        assert!(d.redelivered);
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    drop(standby);
    second.close(200, "done".into()).await.expect("close");
    eprintln!("(c) single active consumer: takeover with 5 unacknowledged messages redelivered");

    // --- optional: how fast MQTT QoS 1 publishes reach the quorum queues ---
    if let Some(n) = std::env::var("MOVEWATCH_CLUSTER_PUBLISH")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        measure_publish_rate(&cluster, &ch, n).await;
    }

    // --- (b) the PUBACK waits for the quorum: acknowledged, then the queue's
    // leader is killed, and the message is consumed from a survivor --------
    let mut device =
        Device::connect(cluster.mqtt_port(2), "acme-dev4", "acme", PASSWORD_ACME).await;
    let durable = position(&van, "durable", 7);
    device
        .publish_acked(&[(topic("acme", &van, "positions"), durable.clone())])
        .await;
    drop(device);
    let leaders = cluster.script_ok(&["ctl", "1", "-q", "list_queues", "name", "leader"], &[]);
    let leader = leaders
        .lines()
        .find_map(|l| {
            let mut cols = l.split_whitespace();
            (cols.next() == Some(queue.as_str())).then(|| cols.next().map(str::to_owned))?
        })
        .expect("the queue's leader");
    let dead: u16 = (1..=3)
        .find(|n| cluster.node_name(*n) == leader)
        .expect("leader is one of ours");
    let pid = cluster.script_ok(&["pid", &dead.to_string()], &[]);
    let pid = pid.trim();
    eprintln!("(b) PUBACK received; kill -9 {leader} (pid {pid}), the leader of {queue}");
    drop((ch3, node3, ch, admin));
    let killed = Command::new("kill")
        .args(["-9", pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let survivor = if dead == 3 { 1 } else { 3 };
    let conn = std::sync::Arc::new(connect(&cluster.amqp_url(survivor)).await);
    let after = Instant::now();
    let mut got = Vec::new();
    while got.is_empty() && after.elapsed() < Duration::from_secs(60) {
        // Until a new leader is elected the queue may refuse a consumer:
        // the channel is closed, and another is tried.
        let attempt = tokio::spawn({
            let conn = conn.clone();
            let queue = queue.clone();
            async move { drain(&conn, &queue, 1).await }
        });
        match attempt.await {
            Ok(messages) => got = messages.into_iter().map(|m| m.1).collect(),
            Err(e) => {
                eprintln!("consuming after the kill: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    assert_eq!(
        got,
        [durable],
        "the acknowledged message survives its leader"
    );
    eprintln!(
        "(b) consumed from {} {:.1} s after the kill",
        cluster.node_name(survivor),
        after.elapsed().as_secs_f64()
    );
}

/// Publishes `n` QoS 1 messages from one MQTT connection (200 in flight) for
/// 100 vehicles and reports the rate at which PUBACKs come back.
async fn measure_publish_rate(cluster: &Cluster, ch: &Channel, n: usize) {
    let vans: Vec<String> = (0..100).map(|i| format!("BN{i:03}CH")).collect();
    for v in &vans {
        let id = VehicleId::parse(v).expect("vehicle");
        amqp::bind_vehicle(ch, &id, engine::partition_of(&id, PARTITIONS), PARTITIONS)
            .await
            .expect("bind");
    }
    let mut device =
        Device::connect(cluster.mqtt_port(2), "acme-bench", "acme", PASSWORD_ACME).await;
    let payload = position("BN000CH", "bench", 0);
    let started = Instant::now();
    let client = device.client.clone();
    let topics: Vec<String> = vans.iter().map(|v| topic("acme", v, "positions")).collect();
    // Publishes from a task of their own; PUBACKs are counted here.
    let publisher = tokio::spawn(async move {
        for i in 0..n {
            client
                .publish(
                    &topics[i % topics.len()],
                    QoS::AtLeastOnce,
                    false,
                    payload.clone(),
                )
                .await
                .expect("queue publish");
        }
    });
    let mut acked = 0;
    while acked < n {
        match device.next(Duration::from_secs(60)).await {
            Some(DeviceEvent::PubAck(_)) => acked += 1,
            other => panic!("after {acked} PUBACKs: {other:?}"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    publisher.await.expect("publisher");
    let mut queued = 0;
    for q in 0..PARTITIONS {
        let name = amqp::partition_queue(q);
        queued += message_count(ch, &name).await;
        ch.queue_purge(name.as_str().into(), Default::default())
            .await
            .expect("purge");
    }
    assert_eq!(queued as usize, n);
    eprintln!(
        "publish rate: {n} QoS 1 messages, MQTT on node 2 to {PARTITIONS} quorum queues: {secs:.1} s, {:.0} msg/s",
        n as f64 / secs
    );
}
