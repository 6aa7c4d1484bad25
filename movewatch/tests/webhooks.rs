//! Notifications out (webhooks), end to end: the engine binary as a child
//! process on a test-owned Mosquitto, two booked moves driven over MQTT from
//! HMP Wakefield (WDI) to HMP Leeds (LEI), and a real local HTTP receiver that
//! first refuses connections (not listening), then holds its answers past the
//! client's timeout, then answers 500, then 200; the engine is SIGKILLed and
//! restarted on the same store twice along the way. Every notification must
//! reach the receiver, with the same id, body and valid signature on every
//! retry, one move's in order. And a receiver that never answers must not slow
//! intake down.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::*;
use movewatch::Engine;
use serde_json::Value;

const SECRET: &str = "hook-secret-for-tests";

/// How the receiver answers now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Holds the answer for 3 s (the engine's client gives up after 1 s).
    Hang,
    /// 500 at once.
    Fail,
    /// 200 at once.
    Accept,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    id: String,
    kind: String,
    move_id: Option<String>,
    body: Bytes,
    signature: Option<String>,
    content_type: Option<String>,
    mode: Mode,
}

#[derive(Clone)]
struct Shared {
    mode: Arc<Mutex<Mode>>,
    log: Arc<Mutex<Vec<Got>>>,
}

/// A real HTTP receiver on a fixed address that can stop listening (so
/// connections are refused) and listen again.
struct Receiver {
    addr: SocketAddr,
    shared: Shared,
    server: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
}

async fn hook(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mode = *s.mode.lock().unwrap();
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    s.log.lock().unwrap().push(Got {
        id: parsed["id"].as_str().unwrap_or_default().to_owned(),
        kind: parsed["type"].as_str().unwrap_or_default().to_owned(),
        move_id: parsed["move_id"].as_str().map(str::to_owned),
        body,
        signature: headers
            .get("x-movewatch-signature")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        content_type: headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        mode,
    });
    match mode {
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            StatusCode::OK
        }
        Mode::Fail => StatusCode::INTERNAL_SERVER_ERROR,
        Mode::Accept => StatusCode::OK,
    }
}

impl Receiver {
    fn new() -> Receiver {
        Receiver {
            addr: free_port(),
            shared: Shared {
                mode: Arc::new(Mutex::new(Mode::Accept)),
                log: Arc::default(),
            },
            server: None,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn set(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    fn log(&self) -> Vec<Got> {
        self.shared.log.lock().unwrap().clone()
    }

    async fn listen(&mut self) {
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(self.shared.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        self.server = Some((stop, task));
    }

    /// Stops listening: new connections are refused.
    async fn stop(&mut self) {
        if let Some((stop, task)) = self.server.take() {
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

fn webhook_toml(url: &str) -> String {
    format!(
        "[[webhooks]]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n\
         [webhook_delivery]\ntimeout_secs = 1\nfirst_retry_ms = 200\nmax_retry_secs = 2\n"
    )
}

async fn open_store(db: &std::path::Path) -> store::Store {
    store::Store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap()
}

/// The fixes of a van parked in WDI, then driving to LEI at ~60 km/h, then parked in LEI.
fn drive(
    van: &str,
    t0: chrono::DateTime<chrono::Utc>,
    wdi: (f64, f64),
    lei: (f64, f64),
) -> Vec<Value> {
    let at = |s: i64| t0 + chrono::Duration::seconds(s);
    let mut fixes = vec![
        fix(&format!("{van}-0"), van, at(10), wdi, 0.0),
        fix(&format!("{van}-1"), van, at(40), wdi, 0.0),
    ];
    let steps = 28;
    for i in 1..=steps {
        let f = i as f64 / steps as f64;
        let p = (wdi.0 + (lei.0 - wdi.0) * f, wdi.1 + (lei.1 - wdi.1) * f);
        let speed = if i == steps { 0.0 } else { 60.0 };
        fixes.push(fix(
            &format!("{van}-{}", i + 1),
            van,
            at(40 + 30 * i),
            p,
            speed,
        ));
    }
    fixes.push(fix(
        &format!("{van}-last"),
        van,
        at(40 + 30 * steps + 30),
        lei,
        0.0,
    ));
    fixes
}

fn site_centre(id: &str) -> (f64, f64) {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/sites.csv")).unwrap();
    let sites = model::site::parse_sites_csv(&text, "sites.csv").unwrap();
    let s = sites.iter().find(|s| s.id.as_str() == id).unwrap();
    (s.lat, s.lon)
}

async fn put_move_at(http_addr: SocketAddr, id: &str, van: &str, date: &str) {
    let body = serde_json::json!({
        "reference": format!("REF-{id}"), "from_location": "WDI", "to_location": "LEI",
        "date": date, "status": "booked",
        "journeys": [{"id": format!("j-{id}"), "from_location": "WDI", "to_location": "LEI",
                      "vehicle_registration": van}]
    });
    let reply = http(
        "PUT",
        http_addr,
        &format!("/api/moves/{id}"),
        &[
            ("Authorization", &format!("Bearer {TOKEN}")),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// Waits until the receiver's log satisfies `check`.
async fn wait_log(receiver: &Receiver, secs: u64, what: &str, check: impl Fn(&[Got]) -> bool) {
    wait_for(secs, what, || {
        let done = check(&receiver.log());
        async move { done.then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_notification_reaches_a_flaky_receiver_once_acknowledged_in_order_across_kills() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let broker = Mosquitto::start(&[("geoamey", "pw-geoamey")]);
        let mut receiver = Receiver::new();
        let files = child_files(&broker, "hooks", &webhook_toml(&receiver.url()));
        let (db, http_addr, config_file) = (files.db.clone(), files.http_addr, files.config_file.clone());

        // 1. The receiver is not listening: connections are refused.
        let mut engine = EngineProcess::spawn(&config_file);
        wait_ready(http_addr).await;
        let t0 = base(25);
        let date = t0.date_naive().to_string();
        let vans = ["WD15VAN", "WD16VAN"];
        for (i, van) in vans.iter().enumerate() {
            put_move_at(http_addr, &format!("m-{}", i + 1), van, &date).await;
        }
        let (wdi, lei) = (site_centre("WDI"), site_centre("LEI"));
        let (client, acks) =
            publisher_at("127.0.0.1", broker.port, Some(("geoamey", "pw-geoamey"))).await;
        let drives: Vec<Vec<Value>> = vans
            .iter()
            .enumerate()
            .map(|(i, v)| drive(v, t0 + chrono::Duration::seconds(7 * i as i64), wdi, lei))
            .collect();
        let half = drives[0].len() / 2;
        let mut sent = 0;
        for (van, fixes) in vans.iter().zip(&drives) {
            for f in &fixes[..half] {
                publish(&client, van, "positions", f).await;
                sent += 1;
            }
        }
        let store = open_store(&db).await;
        let url = receiver.url();
        wait_for(60, "departures queued and refused a few times", || {
            let (store, url) = (store.clone(), url.clone());
            async move {
                let rows = store.outbox_rows(&url).await.unwrap();
                let departures = rows.iter().filter(|r| r.event_id.starts_with("departure:")).count();
                (departures == 2 && rows.iter().any(|r| r.attempts >= 3)).then_some(())
            }
        })
        .await;
        assert!(receiver.log().is_empty());

        // 2. SIGKILL; the receiver listens but holds every answer past the timeout.
        engine.kill();
        receiver.set(Mode::Hang);
        receiver.listen().await;
        let mut engine = {
            engine = EngineProcess::spawn(&config_file);
            wait_ready(http_addr).await;
            engine
        };
        wait_log(&receiver, 60, "two held (timed-out) requests", |log| {
            log.iter().filter(|g| g.mode == Mode::Hang).count() >= 2
        })
        .await;

        // 3. It answers 500; the vans drive on into Leeds.
        receiver.set(Mode::Fail);
        for (van, fixes) in vans.iter().zip(&drives) {
            for f in &fixes[half..] {
                publish(&client, van, "positions", f).await;
                sent += 1;
            }
        }
        wait_for(60, "every fix acknowledged", || {
            let acked = acks.borrow().acked;
            async move { (acked >= sent).then_some(()) }
        })
        .await;
        wait_for(60, "both arrivals queued", || {
            let (store, url) = (store.clone(), url.clone());
            async move {
                let rows = store.outbox_rows(&url).await.unwrap();
                (rows.iter().filter(|r| r.event_id.starts_with("arrival:")).count() == 2).then_some(())
            }
        })
        .await;
        wait_log(&receiver, 60, "three 500s", |log| {
            log.iter().filter(|g| g.mode == Mode::Fail).count() >= 3
        })
        .await;

        // 4. SIGKILL again; restarted on the same store, the receiver accepts.
        engine.kill();
        receiver.set(Mode::Accept);
        engine = EngineProcess::spawn(&config_file);
        wait_ready(http_addr).await;
        let rows = wait_for(120, "every queued notification delivered", || {
            let (store, url) = (store.clone(), url.clone());
            async move {
                let rows = store.outbox_rows(&url).await.unwrap();
                let c = store.outbox_counts().await.unwrap();
                (c.waiting == 0 && c.failed == 0 && !rows.is_empty()).then_some(rows)
            }
        })
        .await;
        // Let anything late (a tick's alert) go out too, then stop.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let metrics = get(http_addr, "/metrics").await;
        engine.kill();
        let rows = {
            let again = store.outbox_rows(&url).await.unwrap();
            if again.len() >= rows.len() { again } else { rows }
        };
        drop(client);

        let log = receiver.log();
        // Every queued notification reached the receiver with a 200.
        let accepted: HashSet<&str> = log
            .iter()
            .filter(|g| g.mode == Mode::Accept)
            .map(|g| g.id.as_str())
            .collect();
        for r in &rows {
            assert!(r.delivered_at.is_some(), "undelivered: {r:?}");
            assert!(accepted.contains(r.event_id.as_str()), "never accepted: {}", r.event_id);
        }
        // Each of the kinds the drive makes, for both moves.
        for m in ["m-1", "m-2"] {
            for kind in ["departure", "arriving_30", "arrival"] {
                assert!(
                    rows.iter().any(|r| r.event_id.starts_with(&format!("{kind}:{m}:"))),
                    "no {kind} for {m}: {:?}",
                    rows.iter().map(|r| &r.event_id).collect::<Vec<_>>()
                );
            }
        }
        // Same id → same bytes, a valid signature, JSON.
        let mut bodies: HashMap<&str, &Bytes> = HashMap::new();
        for g in &log {
            assert!(!g.id.is_empty(), "a body without an id");
            assert_eq!(g.content_type.as_deref(), Some("application/json"));
            let expected = notify::signature(SECRET, &g.body);
            assert_eq!(g.signature.as_deref(), Some(expected.as_str()), "signature of {}", g.id);
            let first = bodies.entry(g.id.as_str()).or_insert(&g.body);
            assert_eq!(*first, &g.body, "the body of {} changed between attempts", g.id);
        }
        for r in &rows {
            assert_eq!(bodies.get(r.event_id.as_str()).map(|b| b.as_ref()), Some(r.body.as_bytes()));
        }
        // In order per move: no request for a move's arriving_30 before its
        // departure was accepted, none for its arrival before its arriving_30 was.
        for m in ["m-1", "m-2"] {
            let rank = |kind: &str| ["departure", "arriving_30", "arrival"].iter().position(|k| *k == kind);
            let mut accepted_rank: Option<usize> = None;
            for g in log.iter().filter(|g| g.move_id.as_deref() == Some(m)) {
                if let Some(r) = rank(&g.kind) {
                    if r > 0 {
                        assert!(
                            accepted_rank.is_some_and(|a| a >= r - 1),
                            "{m}: {} sent before its predecessor was accepted: {:?}",
                            g.kind,
                            log.iter().filter(|g| g.move_id.as_deref() == Some(m)).map(|g| (&g.kind, g.mode)).collect::<Vec<_>>()
                        );
                    }
                    if g.mode == Mode::Accept {
                        accepted_rank = Some(accepted_rank.map_or(r, |a| a.max(r)));
                    }
                }
            }
            assert_eq!(accepted_rank, Some(2), "{m} arrived");
        }
        assert!(metrics.contains("movewatch_webhook_pending"), "{metrics}");
        assert!(metrics.contains("movewatch_webhook_failures_total"), "{metrics}");

        // The figures.
        let events: HashSet<&str> = log.iter().map(|g| g.id.as_str()).collect();
        let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &rows {
            *by_type.entry(r.event_id.split(':').next().unwrap_or("")).or_default() += 1;
        }
        let accepted_requests = log.iter().filter(|g| g.mode == Mode::Accept).count();
        let duplicates = accepted_requests - accepted.len();
        println!(
            "webhooks end to end: {} events queued ({by_type:?}), {} distinct ids seen by the receiver, \
             {} requests ({} refused attempts recorded by the engine are not seen by a receiver), \
             {} retries seen (requests - distinct ids), {} held past the timeout, {} answered 500, \
             {} answered 200, {} duplicate deliveries (a 200 for an id already accepted)",
            rows.len(),
            events.len(),
            log.len(),
            rows.iter().map(|r| r.attempts as usize).sum::<usize>().saturating_sub(log.len()),
            log.len() - events.len(),
            log.iter().filter(|g| g.mode == Mode::Hang).count(),
            log.iter().filter(|g| g.mode == Mode::Fail).count(),
            accepted_requests,
            duplicates,
        );
        receiver.stop().await;
    })
    .await
    .expect("test timed out");
}

/// A receiver that accepts connections and never answers: every request
/// waits out the client's timeout, the concurrency bound fills up, and
/// intake must go on at its own pace regardless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_does_not_slow_intake() {
    tokio::time::timeout(Duration::from_secs(120), async {
        // The black hole: holds every connection open, reads nothing.
        let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hole_addr = hole.local_addr().unwrap();
        let held = Arc::new(Mutex::new(Vec::new()));
        let holder = {
            let held = held.clone();
            tokio::spawn(async move {
                while let Ok((socket, _)) = hole.accept().await {
                    held.lock().unwrap().push(socket);
                }
            })
        };
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path(), None);
        let text = format!("[[webhooks]]\nurl = \"http://{hole_addr}/hook\"\n");
        config.webhooks = model::config::Config::from_toml(&text, "test").unwrap().webhooks;
        config.webhook_delivery.concurrency = 4;
        let engine = Engine::start(config).await.unwrap();
        let client = publisher(&engine, None).await;

        // 40 vans report a breakdown each (40 notifications, none deliverable),
        // then 40 messages of 25 points each at a steady pace.
        let vans: Vec<String> = (0..40).map(|v| format!("BH{v:02}VAN")).collect();
        for van in &vans {
            publish(
                &client,
                van,
                "events",
                &serde_json::json!({
                    "event_type": "PersonMoveVehicleBrokeDown",
                    "occurred_at": chrono::Utc::now().to_rfc3339(),
                    "details": {}
                }),
            )
            .await;
        }
        wait_for(30, "the breakdowns queued", || async {
            let c = engine.store.outbox_counts().await.unwrap();
            (c.waiting >= 40).then_some(())
        })
        .await;
        wait_for(30, "the dispatcher to be stuck on the receiver", || {
            let n = held.lock().unwrap().len();
            async move { (n >= 1).then_some(()) }
        })
        .await;

        let started = Instant::now();
        let mut total = 0i64;
        for m in 0..40 {
            let van = &vans[m % vans.len()];
            let points: Vec<Value> = (0..25)
                .map(|p| {
                    let i = m * 25 + p;
                    point(&format!("bh-{i}"), van, 600 - i as i64 / 10, 52.0 + i as f64 * 1e-5, -1.5)
                })
                .collect();
            client
                .publish(
                    format!("movewatch/v1/geoamey/{van}/positions"),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    serde_json::to_vec(&points).unwrap(),
                )
                .await
                .unwrap();
            total += 25;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let stored = wait_for_positions(&engine, total).await;
        let took = started.elapsed();
        assert_eq!(stored, total);
        let counts = engine.store.outbox_counts().await.unwrap();
        println!(
            "dead receiver: {total} points in 40 messages stored in {:.2} s (publishing alone takes ~1 s) \
             while {} webhook rows wait, {} delivered, {} connections held by the receiver",
            took.as_secs_f64(),
            counts.waiting,
            counts.delivered,
            held.lock().unwrap().len()
        );
        assert_eq!(counts.delivered, 0);
        assert!(counts.waiting >= 40);
        // Publishing takes ~1 s. Delivery is stuck for good: 4 requests at a
        // time, each held for the 10 s timeout, 40 rows. Had intake waited on
        // it even once, this would be past 10 s.
        assert!(
            took < Duration::from_secs(8),
            "intake slowed down by the dead receiver: {took:?}"
        );
        engine.stop();
        holder.abort();
    })
    .await
    .expect("test timed out");
}
