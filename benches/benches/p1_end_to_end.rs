//! P1 (issue #8): end-to-end throughput. The same publisher and the same
//! kind of broker in one run: (a) raw passthrough — a bare rumqttc QoS 1
//! subscriber that only counts; (b) the full engine (ingest, tracker,
//! geofence, store, WebSocket fan-out to one `fleet` client). Reports
//! points/s for both and the ratio, for the embedded broker and for a
//! bench-owned Mosquitto configured as docs/PROTOCOL.md says (no queue limit,
//! 1000 in flight). With the engine on PostgreSQL, the same run also
//! measures the store's ceiling: the rows the engine stored, exported as CSV
//! and loaded with `psql \copy` into a scratch database with the store's own
//! schema (its migrations, `Store::open`), psql's start-up included; and
//! reports the engine's points/s over the ceiling's rows/s (issue #12's
//! target: ≥ 90 %).
//!
//! `cargo bench -p movewatch-benches --bench p1_end_to_end`
//! Environment: `P1_POINTS` (default 200000), `P1_BATCH` points per message
//! (default 10; 1 = single-point messages), `P1_CONNECTIONS` publisher
//! connections (default 8), `P1_MOSQUITTO=0` to skip Mosquitto (and
//! PostgreSQL), `P1_PG=0` to skip the engine on PostgreSQL and the ceiling,
//! `P1_ENGINE_LOG` (e.g. `info`) the engine's log on stderr.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use model::config::{Config, RoleName, TokenConfig};
use rumqttc::{AsyncClient, MqttOptions, QoS};

const TOKEN: &str = "p1-bench-token";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Pre-serialised messages: (topic, payload, points).
fn messages(points: usize, batch: usize, run: &str) -> Vec<(String, Vec<u8>, usize)> {
    let vans = 2000;
    let t0 = chrono::Utc::now() - chrono::Duration::hours(2);
    let mut out = Vec::new();
    let mut n = 0;
    while n < points {
        let van = (n / batch) % vans;
        let reg = format!(
            "PA{:02}{}",
            van % 100,
            [
                "AAA", "BBB", "CCC", "DDD", "EEE", "FFF", "GGG", "HHH", "JJJ", "KKK", "LLL", "MMM",
                "NNN", "PPP", "RRR", "SSS", "TTT", "UUU", "VVV", "WWW"
            ][van / 100 % 20]
        );
        let k = batch.min(points - n);
        let items: Vec<String> = (0..k)
            .map(|i| {
                let seq = n + i;
                let ts = t0 + chrono::Duration::milliseconds(seq as i64 * 10);
                serde_json::json!({
                    "tracking_id": format!("{run}-{seq}"),
                    "tracking_timestamp": ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    "vehicle_registration": reg,
                    "latitude": 52.0 + (seq % 1000) as f64 * 1e-4,
                    "longitude": -1.5 + (van as f64) * 1e-3,
                    "speed": 48.0, "bearing": 90.0, "precision_hdop": 1.2,
                })
                .to_string()
            })
            .collect();
        let payload = if batch == 1 {
            items[0].clone().into_bytes()
        } else {
            format!("[{}]", items.join(",")).into_bytes()
        };
        out.push((format!("movewatch/v1/serco/{reg}/positions"), payload, k));
        n += k;
    }
    out
}

/// Publishes everything over `connections` QoS 1 connections; returns when all are PUBACKed.
async fn publish(
    host: &str,
    port: u16,
    msgs: Arc<Vec<(String, Vec<u8>, usize)>>,
    connections: usize,
) {
    let mut tasks = Vec::new();
    for c in 0..connections {
        let msgs = msgs.clone();
        let host = host.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut o = MqttOptions::new(format!("p1-pub-{c}-{}", std::process::id()), host, port);
            o.set_keep_alive(Duration::from_secs(30))
                .set_max_packet_size(1 << 20, 1 << 20)
                .set_inflight(500);
            let (client, mut el) = AsyncClient::new(o, 1000);
            let mine: Vec<usize> = (c..msgs.len()).step_by(connections).collect();
            let total = mine.len() as u64;
            let acked = Arc::new(AtomicU64::new(0));
            let a = acked.clone();
            let poll = tokio::spawn(async move {
                loop {
                    match el.poll().await {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                            a.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!("publisher {c}: {e}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            });
            for i in mine {
                let (t, p, _) = &msgs[i];
                client
                    .publish(t.clone(), QoS::AtLeastOnce, false, p.clone())
                    .await
                    .expect("publish");
            }
            while acked.load(Ordering::Relaxed) < total {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            poll.abort();
        }));
    }
    for t in tasks {
        t.await.expect("publisher task");
    }
}

/// (a) A bare subscriber that only counts points; returns points/s.
async fn raw(
    host: &str,
    port: u16,
    msgs: Arc<Vec<(String, Vec<u8>, usize)>>,
    connections: usize,
) -> f64 {
    let total: usize = msgs.iter().map(|m| m.2).sum();
    let mut o = MqttOptions::new(format!("p1-raw-{}", std::process::id()), host, port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(o, 1000);
    client
        .subscribe("movewatch/v1/+/+/positions", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let points = Arc::new(AtomicU64::new(0));
    let p = points.clone();
    let (suback_tx, suback) = tokio::sync::oneshot::channel();
    let mut suback_tx = Some(suback_tx);
    let counter = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    if let Some(tx) = suback_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(m))) => {
                    // Count points the cheapest honest way: elements of an array.
                    let n = if m.payload.first() == Some(&b'[') {
                        m.payload
                            .windows(13)
                            .filter(|w| *w == b"\"tracking_id\"")
                            .count()
                    } else {
                        1
                    };
                    p.fetch_add(n as u64, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("raw subscriber: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(10), suback).await;
    let t0 = Instant::now();
    publish(host, port, msgs, connections).await;
    let mut progress = Progress::new("raw passthrough", total);
    while points.load(Ordering::Relaxed) < total as u64 {
        progress.check(points.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    counter.abort();
    total as f64 / secs
}

/// (b) The full engine with one `fleet` WebSocket client; returns points/s (publish start → all stored).
async fn engine(
    mqtt_url: Option<String>,
    store_url: Option<String>,
    msgs: Arc<Vec<(String, Vec<u8>, usize)>>,
    connections: usize,
) -> f64 {
    let total: usize = msgs.iter().map(|m| m.2).sum();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Config::default();
    c.http.listen = "127.0.0.1:0".parse().expect("addr");
    c.mqtt.listen = "127.0.0.1:0".parse().expect("addr");
    c.mqtt.url = mqtt_url;
    // The bench's vans are in no register: the first report claims each.
    c.fleet.claim_on_first_report = true;
    c.mqtt.client_id = format!("p1-engine-{}", movewatch::random_token(6));
    c.store.url = store_url.unwrap_or_else(|| format!("sqlite://{}/p1.db", dir.path().display()));
    c.sites.files = vec![concat!(env!("CARGO_MANIFEST_DIR"), "/../data/sites.csv").into()];
    c.tokens.push(TokenConfig {
        token: TOKEN.into(),
        role: RoleName::ControlRoom,
        sites: vec![],
        supplier: None,
    });
    let e = movewatch::Engine::start(c).await.expect("engine");
    while !e.mqtt_connected() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?token={TOKEN}", e.http_addr))
            .await
            .expect("ws");
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        r#"{"type":"subscribe","channel":"fleet"}"#.into(),
    ))
    .await
    .expect("subscribe");
    let frames = Arc::new(AtomicU64::new(0));
    let f = frames.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(_)) = ws.next().await {
            f.fetch_add(1, Ordering::Relaxed);
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The recorder is process-wide: an earlier engine's points are counted too.
    let before = stored_points(e.http_addr).await;
    let t0 = Instant::now();
    publish(&e.mqtt_addr.0, e.mqtt_addr.1, msgs, connections).await;
    // Done when the store has committed every point. Read from the engine's
    // own counter: polling `COUNT(*)` every few ms took a good part of a core
    // from the engine being measured.
    let mut progress = Progress::new("engine", total);
    loop {
        let n = stored_points(e.http_addr).await - before;
        if n >= total as u64 {
            break;
        }
        progress.check(n);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let in_store = e.store.counts().await.expect("counts").positions;
    assert_eq!(in_store, total as i64, "the store holds every point once");
    eprintln!(
        "    (fleet WebSocket client received {} frames)",
        frames.load(Ordering::Relaxed)
    );
    reader.abort();
    e.stop();
    total as f64 / secs
}

/// Ends a run that stopped making progress, saying why it may have.
struct Progress {
    what: &'static str,
    total: usize,
    last: u64,
    since: Instant,
}

impl Progress {
    /// How long a run may go without a new point before it is taken as stalled.
    const STALL: Duration = Duration::from_secs(30);

    fn new(what: &'static str, total: usize) -> Self {
        Progress {
            what,
            total,
            last: 0,
            since: Instant::now(),
        }
    }

    fn check(&mut self, done: u64) {
        if done > self.last {
            (self.last, self.since) = (done, Instant::now());
            return;
        }
        assert!(
            self.since.elapsed() < Self::STALL,
            "{} run stalled at {done} of {} points for {:?}. On the embedded broker this is \
             rumqttd dropping its oldest messages: it keeps at most 4 x 32 MB per filter in memory \
             (ingest/src/broker.rs), and a subscriber that falls further behind loses the rest. \
             Use fewer P1_POINTS (200,000 10-point messages is about 40 MB).",
            self.what,
            self.total,
            Self::STALL,
        );
    }
}

/// Runs one `psql` command on database `db` of the bench server; returns how long it took
/// (psql's start-up included, as a loader's would be).
fn psql(db: &str, command: &str) -> Duration {
    let started = Instant::now();
    let status = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", db, "-X", "-q"])
        .args(["-v", "ON_ERROR_STOP=1", "-c", command])
        .status()
        .expect("psql (the ceiling needs it installed)");
    assert!(status.success(), "psql -c {command:?} failed");
    started.elapsed()
}

/// The store's ceiling on this machine: `psql \copy` of the rows the engine
/// stored in `engine_db` (exported first, untimed) into a scratch database
/// given the store's schema by the store itself. Returns (rows, seconds).
async fn copy_ceiling(engine_db: &str, scratch_db: &str) -> (u64, f64) {
    let columns = "supplier, tracking_id, vehicle, ts, lat, lon, journey_id, speed, bearing, \
                   altitude, hdop, vdop, vin, flags, received_at";
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("positions.csv");
    psql(
        engine_db,
        &format!(
            "\\copy (SELECT {columns} FROM positions) TO '{}' csv",
            csv.display()
        ),
    );
    let rows = std::fs::read_to_string(&csv)
        .expect("exported csv")
        .lines()
        .count() as u64;
    let url = movewatch_benches::fresh_pg_database(scratch_db).await;
    // The store's own migrations and day partitions, as the engine's database has them.
    drop(store::Store::open(&url).await.expect("scratch schema"));
    let took = psql(
        scratch_db,
        &format!("\\copy positions ({columns}) FROM '{}' csv", csv.display()),
    );
    movewatch_benches::pg_admin(format!("DROP DATABASE IF EXISTS {scratch_db} WITH (FORCE)")).await;
    (rows, took.as_secs_f64())
}

/// `movewatch_store_points_total`, read from the engine's `GET /metrics`.
async fn stored_points(http: std::net::SocketAddr) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(http).await.expect("metrics");
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await
        .expect("metrics request");
    let mut text = String::new();
    conn.read_to_string(&mut text)
        .await
        .expect("metrics response");
    text.lines()
        .find_map(|l| l.strip_prefix("movewatch_store_points_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::main]
async fn main() {
    if std::env::var("P1_ENGINE_LOG").is_ok() {
        // The engine's log on stderr, filtered by P1_ENGINE_LOG (e.g. `info`).
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("P1_ENGINE_LOG"))
            .with_writer(std::io::stderr)
            .init();
    }
    let points = env("P1_POINTS", 200_000);
    let batch = env("P1_BATCH", 10).max(1);
    let connections = env("P1_CONNECTIONS", 8).max(1);
    println!("P1: {points} points, {batch} per message, {connections} publisher connections");
    let mut rows = Vec::new();
    let mut ceiling_row = None;

    // Embedded broker: (a) a standalone embedded broker as the engine starts it; (b) the engine's own.
    let broker = ingest::broker::start_embedded_broker(ingest::broker::EmbeddedBrokerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        users: Default::default(),
        max_inflight: 1000,
        engine_client_id: "movewatch-engine".into(),
        intake: None,
    })
    .expect("embedded broker");
    let run = movewatch::random_token(6);
    let msgs = Arc::new(messages(points, batch, &format!("a{run}")));
    let a = raw(
        &broker.addr.ip().to_string(),
        broker.addr.port(),
        msgs,
        connections,
    )
    .await;
    println!("embedded  (a) raw passthrough: {a:>10.0} points/s");
    let msgs = Arc::new(messages(points, batch, &format!("b{run}")));
    let b = engine(None, None, msgs, connections).await;
    println!(
        "embedded  (b) full engine:     {b:>10.0} points/s   ratio {:.1} %",
        100.0 * b / a
    );
    rows.push(("embedded", a, b));

    if std::env::var("P1_MOSQUITTO").as_deref() != Ok("0") {
        match movewatch_benches::BenchMosquitto::start(env("P1_MOSQUITTO_INFLIGHT", 1000)) {
            Some(m) => {
                let msgs = Arc::new(messages(points, batch, &format!("c{run}")));
                let a = raw("127.0.0.1", m.port, msgs, connections).await;
                println!("mosquitto (a) raw passthrough: {a:>10.0} points/s");
                let msgs = Arc::new(messages(points, batch, &format!("d{run}")));
                let b = engine(
                    Some(format!("mqtt://127.0.0.1:{}", m.port)),
                    None,
                    msgs,
                    connections,
                )
                .await;
                println!(
                    "mosquitto (b) full engine:     {b:>10.0} points/s   ratio {:.1} %",
                    100.0 * b / a
                );
                rows.push(("mosquitto", a, b));
                // The same engine on PostgreSQL (P1_PG=0 skips it).
                if std::env::var("P1_PG").as_deref() != Ok("0") {
                    let db = format!("movewatch_p1_{}", run.to_lowercase());
                    let url = movewatch_benches::fresh_pg_database(&db).await;
                    let msgs = Arc::new(messages(points, batch, &format!("e{run}")));
                    let b = engine(
                        Some(format!("mqtt://127.0.0.1:{}", m.port)),
                        Some(url),
                        msgs,
                        connections,
                    )
                    .await;
                    println!(
                        "mosquitto (b) engine on PostgreSQL: {b:>10.0} points/s   ratio {:.1} %",
                        100.0 * b / a
                    );
                    rows.push(("mosquitto, engine on PostgreSQL", a, b));
                    let (n, secs) = copy_ceiling(&db, &format!("{db}_ceiling")).await;
                    let ceiling = n as f64 / secs;
                    println!(
                        "PostgreSQL ceiling: psql \\copy of the same {n} rows in {secs:.2} s: \
                         {ceiling:.0} rows/s; engine / ceiling {:.1} % (target ≥ 90 %)",
                        100.0 * b / ceiling
                    );
                    ceiling_row = Some((b, ceiling));
                    movewatch_benches::pg_admin(format!(
                        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
                    ))
                    .await;
                }
            }
            None => println!("mosquitto not available: skipped"),
        }
    }
    println!(
        "\n| broker | raw passthrough points/s | full engine points/s | ratio |\n|---|---:|---:|---:|"
    );
    for (name, a, b) in rows {
        println!("| {name} | {a:.0} | {b:.0} | {:.1} % |", 100.0 * b / a);
    }
    if let Some((b, ceiling)) = ceiling_row {
        println!(
            "\n| engine on PostgreSQL points/s | psql \\copy rows/s (ceiling) | engine / ceiling |\n|---:|---:|---:|\n| {b:.0} | {ceiling:.0} | {:.1} % |",
            100.0 * b / ceiling
        );
    }
}
