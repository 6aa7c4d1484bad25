//! P4 (issue #7): live fan-out. 10,000 vehicles at 1 Hz into the engine,
//! 1,000 WebSocket clients (a few `fleet`, the rest `site:{id}`), and the
//! latency from broker receipt to WebSocket send for the normal clients,
//! first with every client reading promptly (0 % slow), then with 5 % of
//! them slow (half stop reading, half read slowly through a tiny receive
//! buffer) — the same connections and the same load in one run, so the two
//! p99s compare. Memory: the engine's RSS per vehicle and per client.
//!
//! The engine runs in a child process (this same executable, re-run with
//! `P4_CHILD=1`), so its RSS and CPU are its own; the publisher and the
//! clients run here. The latency is measured in the engine: a
//! `ws_gateway::SendObserver` records, for every position frame sent to
//! every client, the time since the broker handed its batch over, into
//! histograms by client class (the bench tells the engine which client —
//! by its local port — is a normal `fleet`, a normal `site` or a slow one).
//! The clients also measure the device's `ts` (stamped just before publish)
//! to receipt, an upper bound that adds the publisher, the broker and the
//! client.
//!
//! `cargo bench -p movewatch-benches --bench p4_fanout`
//! Environment (defaults in brackets): `P4_VEHICLES` [10000], `P4_CLIENTS`
//! [1000], `P4_FLEET_PCT` fleet clients in % [2], `P4_SLOW_PCT` [5],
//! `P4_MOVES` vehicles carrying a move [1500], `P4_PHASE_SECS` [30],
//! `P4_WARMUP_SECS` [10], `P4_PHASES` [`normal,slow`], `P4_MQTT_URL` an
//! external broker (e.g. `mqtt://127.0.0.1:1883`) instead of the embedded
//! one, `P4_MOSQUITTO=1` a bench-owned Mosquitto (docs/PROTOCOL.md settings)
//! instead of the embedded broker, `P4_STORE_URL` [a SQLite file on tmpfs,
//! `/dev/shm`, so the shared disk's fsync stalls do not hold intake],
//! `P4_PARTITIONS` the engine's `[engine] partitions` [0: one per core].
//! A short run: `P4_VEHICLES=2000 P4_CLIENTS=200 P4_PHASE_SECS=5 P4_WARMUP_SECS=3`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use model::config::{Config, RoleName, TokenConfig};
use model::{Site, SiteId};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

const CONTROL: &str = "p4-control-room-token";
const SITES_CSV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/sites.csv");
/// Client classes, as the engine's histograms are kept.
const NORMAL_FLEET: u8 = 0;
const NORMAL_SITE: u8 = 1;
const SLOW: u8 = 2;
const UNCLASSIFIED: u8 = 3;
const CLASSES: [&str; 4] = ["normal fleet", "normal site", "slow", "unclassified"];
/// The largest `fleet` snapshot a client received, bytes.
static FLEET_SNAPSHOT_BYTES: AtomicU64 = AtomicU64::new(0);
/// Vans drive at 50 km/h.
const SPEED_MS: f64 = 50.0 / 3.6;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn site_token(site: &SiteId) -> String {
    format!("p4-site-token-{site}")
}

fn sites() -> Vec<Site> {
    let text = std::fs::read_to_string(SITES_CSV).expect("data/sites.csv");
    model::site::parse_sites_csv(&text, "sites.csv").expect("sites")
}

fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 10 min, 3 significant figures.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

/// `n p50 p90 p99 p999 max`, in µs.
fn summary(h: &Histogram<u64>) -> [u64; 6] {
    if h.is_empty() {
        return [0; 6];
    }
    [
        h.len(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
    ]
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

// ---------------------------------------------------------------------------
// The engine, in the child process.

/// Records each client's sends into its class's histogram.
struct Observer {
    ports: Mutex<HashMap<u16, Arc<AtomicU8>>>,
    classes: Arc<[Mutex<Histogram<u64>>; 4]>,
}

impl ws_gateway::SendObserver for Observer {
    fn connected(&self, peer: Option<SocketAddr>) -> Option<ws_gateway::SendRecorder> {
        let class = Arc::new(AtomicU8::new(UNCLASSIFIED));
        if let Some(peer) = peer {
            self.ports
                .lock()
                .expect("ports")
                .insert(peer.port(), class.clone());
        }
        let classes = self.classes.clone();
        Some(Box::new(move |d| {
            let c = usize::from(class.load(Ordering::Relaxed));
            record(&mut classes[c].lock().expect("histogram"), d);
        }))
    }
}

fn child() {
    if std::env::var("P4_ENGINE_LOG").is_ok() {
        // The engine's log on stderr, filtered by P4_ENGINE_LOG (e.g. `info`).
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("P4_ENGINE_LOG"))
            .with_writer(std::io::stderr)
            .init();
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let var = |k: &str| std::env::var(k).expect(k);
        let mut c = Config::default();
        c.http.listen = var("P4_CHILD_HTTP").parse().expect("http addr");
        c.mqtt.listen = var("P4_CHILD_MQTT").parse().expect("mqtt addr");
        c.mqtt.url = std::env::var("P4_MQTT_URL").ok();
        c.mqtt.client_id = format!("p4-engine-{}", movewatch::random_token(6));
        // The bench's vans are in no register: the first report claims each.
        c.fleet.claim_on_first_report = true;
        c.store.url = var("P4_CHILD_STORE");
        c.engine.partitions = var("P4_PARTITIONS").parse().expect("P4_PARTITIONS");
        c.sites.files = vec![SITES_CSV.into()];
        c.tokens.push(TokenConfig {
            token: CONTROL.into(),
            role: RoleName::ControlRoom,
            sites: vec![],
            supplier: None,
        });
        for s in var("P4_CHILD_SITES").split(',').filter(|s| !s.is_empty()) {
            let id = SiteId::parse(s).expect("site id");
            c.tokens.push(TokenConfig {
                token: site_token(&id),
                role: RoleName::Site,
                sites: vec![id],
                supplier: None,
            });
        }
        let engine = movewatch::Engine::start(c).await.expect("engine");
        let observer = Arc::new(Observer {
            ports: Default::default(),
            classes: Arc::new(std::array::from_fn(|_| Mutex::new(histogram()))),
        });
        engine.hub().observe_sends(observer.clone());
        while !engine.mqtt_connected() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(16);
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        let mut out = std::io::stdout();
        let _ = writeln!(out, "READY");
        let _ = out.flush();
        while let Some(line) = rx.recv().await {
            let mut words = line.split_whitespace();
            let reply = match words.next() {
                Some("tracked") => format!("{}", engine.tracker.len()),
                Some("clients") => format!("{}", engine.hub().receiver_count()),
                Some("classes") => {
                    let ports = observer.ports.lock().expect("ports");
                    for pair in words.next().unwrap_or("").split(',') {
                        if let Some((p, c)) = pair.split_once(':')
                            && let (Ok(p), Ok(c)) = (p.parse::<u16>(), c.parse::<u8>())
                            && let Some(class) = ports.get(&p)
                        {
                            class.store(c, Ordering::Relaxed);
                        }
                    }
                    "ok".into()
                }
                Some("reset") => {
                    for h in observer.classes.iter() {
                        h.lock().expect("histogram").reset();
                    }
                    "ok".into()
                }
                Some("report") => {
                    // The four classes, then the normal ones together.
                    let mut all: Vec<Histogram<u64>> = observer
                        .classes
                        .iter()
                        .map(|h| h.lock().expect("histogram").clone())
                        .collect();
                    let mut normal = all[usize::from(NORMAL_FLEET)].clone();
                    normal
                        .add(&all[usize::from(NORMAL_SITE)])
                        .expect("same bounds");
                    all.push(normal);
                    all.iter()
                        .map(|h| summary(h).map(|v| v.to_string()).join(" "))
                        .collect::<Vec<_>>()
                        .join(";")
                }
                Some("quit") | None => break,
                Some(other) => format!("unknown command {other}"),
            };
            let _ = writeln!(out, "{reply}");
            let _ = out.flush();
        }
        engine.stop();
    });
}

/// The engine process and its command line.
struct EngineProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl EngineProcess {
    fn ask(&mut self, command: &str) -> String {
        tokio::task::block_in_place(|| {
            writeln!(self.stdin, "{command}").expect("engine stdin");
            self.stdin.flush().expect("engine stdin");
            let mut line = String::new();
            self.stdout.read_line(&mut line).expect("engine stdout");
            line.trim().to_owned()
        })
    }

    /// The engine's resident memory, bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// CPU seconds used so far (user + system).
    fn cpu(&self) -> f64 {
        cpu_of(&format!("/proc/{}/stat", self.child.id()))
    }

    /// Per class: `n p50 p90 p99 p999 max` (µs) since the last reset.
    fn report(&mut self) -> Vec<[u64; 6]> {
        self.ask("report")
            .split(';')
            .map(|class| {
                let v: Vec<u64> = class
                    .split_whitespace()
                    .map(|x| x.parse().expect("number"))
                    .collect();
                std::array::from_fn(|i| v.get(i).copied().unwrap_or(0))
            })
            .collect()
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        std::thread::sleep(Duration::from_millis(500));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn cpu_of(stat: &str) -> f64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    // Fields after the command's closing parenthesis: state is 3rd, utime 14th, stime 15th.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

// ---------------------------------------------------------------------------
// The devices.

/// Where vehicle `k` is `t` seconds into the run: a van on a move shuttles
/// between a quarter and three quarters of the way from its origin to its
/// destination (so it never reaches either fence); the others shuttle east
/// and west over England.
fn place(k: usize, t: f64, route: Option<&(Site, Site)>) -> (f64, f64) {
    let tri = |x: f64| {
        let x = x.rem_euclid(2.0);
        if x < 1.0 { x } else { 2.0 - x }
    };
    match route {
        Some((o, d)) => {
            let dist = tracker::haversine_m(o.lat, o.lon, d.lat, d.lon).max(1.0);
            let f = 0.25 + 0.5 * tri(t * SPEED_MS / (0.5 * dist) + (k % 97) as f64 / 97.0);
            (o.lat + (d.lat - o.lat) * f, o.lon + (d.lon - o.lon) * f)
        }
        None => {
            let lat = 51.0 + (k % 100) as f64 * 0.03;
            // 30 km of shuttle, about 0.45° of longitude at 52° N.
            let span = 30_000.0 / SPEED_MS;
            let lon = -3.0 + (k / 100 % 100) as f64 * 0.03 + 0.45 * tri(t / span + k as f64 * 0.01);
            (lat, lon)
        }
    }
}

fn registration(k: usize) -> String {
    format!("PV{k:06}")
}

/// Publishes every vehicle once a second, spread evenly over the second,
/// over `connections` QoS 1 connections, until `stop`.
fn spawn_publisher(
    host: String,
    port: u16,
    vehicles: usize,
    routes: Arc<Vec<(Site, Site)>>,
    connections: usize,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let start = Instant::now();
    for c in 0..connections {
        let (host, routes, sent, stop) = (host.clone(), routes.clone(), sent.clone(), stop.clone());
        tokio::spawn(async move {
            let mut o = MqttOptions::new(format!("p4-pub-{c}-{}", std::process::id()), host, port);
            o.set_keep_alive(Duration::from_secs(30))
                .set_max_packet_size(1 << 20, 1 << 20)
                .set_inflight(1000);
            let (client, mut el) = AsyncClient::new(o, 4096);
            let stopped = stop.clone();
            tokio::spawn(async move {
                loop {
                    if let Err(e) = el.poll().await {
                        if stopped.load(Ordering::Relaxed) {
                            return;
                        }
                        eprintln!("publisher {c}: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            });
            let mine: Vec<usize> = (c..vehicles).step_by(connections).collect();
            let regs: Vec<String> = mine.iter().map(|&k| registration(k)).collect();
            let mut done: u64 = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let due = (start.elapsed().as_secs_f64() * mine.len() as f64) as u64;
                while done < due {
                    let i = (done % mine.len() as u64) as usize;
                    let seq = done / mine.len() as u64;
                    let k = mine[i];
                    let now = chrono::Utc::now();
                    let (lat, lon) = place(k, start.elapsed().as_secs_f64(), routes.get(k));
                    let payload = format!(
                        r#"{{"tracking_id":"{reg}-{seq}","tracking_timestamp":"{ts}","vehicle_registration":"{reg}","latitude":{lat:.6},"longitude":{lon:.6},"speed":50.0,"bearing":90.0,"precision_hdop":1.0}}"#,
                        reg = regs[i],
                        ts = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    );
                    if client
                        .publish(
                            format!("movewatch/v1/serco/{}/positions", regs[i]),
                            QoS::AtLeastOnce,
                            false,
                            payload,
                        )
                        .await
                        .is_err()
                    {
                        return;
                    }
                    done += 1;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

/// Books move `k` (`from` → `to`, in transit on vehicle `k`).
async fn put_move(http: SocketAddr, k: usize, from: &SiteId, to: &SiteId) {
    let id = format!("p4-move-{k}");
    let body = serde_json::json!({
        "reference": id, "from_location": from.as_str(), "to_location": to.as_str(),
        "date": chrono::Utc::now().date_naive().to_string(), "status": "in_transit",
        "journeys": [{"id": format!("p4-journey-{k}"), "from_location": from.as_str(),
                      "to_location": to.as_str(), "vehicle_registration": registration(k)}]
    })
    .to_string();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(http).await.expect("http");
    let req = format!(
        "PUT /api/moves/{id} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\nAuthorization: Bearer {CONTROL}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("PUT");
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply).await;
    let head = String::from_utf8_lossy(&reply[..reply.len().min(16)]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "PUT move {k}: {head}");
}

// ---------------------------------------------------------------------------
// The clients.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Normal,
    Slow,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Behaviour {
    Normal,
    /// Stops reading while the phase is `Slow`.
    Stalls,
    /// Reads one frame per 50 ms while the phase is `Slow`.
    Crawls,
}

/// What all clients of one class saw.
struct ClassStats {
    /// Device `ts` to receipt, µs (millisecond resolution).
    latency: Mutex<Histogram<u64>>,
    frames: AtomicU64,
    closed: AtomicU64,
}

impl ClassStats {
    fn new() -> Self {
        ClassStats {
            latency: Mutex::new(histogram()),
            frames: AtomicU64::new(0),
            closed: AtomicU64::new(0),
        }
    }
}

/// Milliseconds since midnight UTC of a `"ts":"…THH:MM:SS.mmmZ"` in a position frame.
fn ts_ms_of_day(frame: &str) -> Option<u64> {
    let at = frame.find("\"ts\":\"")? + 6;
    let t = frame.get(at..)?;
    let time = &t[t.find('T')? + 1..];
    let n = |r: std::ops::Range<usize>| time.get(r)?.parse::<u64>().ok();
    let (h, m, s) = (n(0..2)?, n(3..5)?, n(6..8)?);
    let frac = if time.as_bytes().get(8) == Some(&b'.') {
        let digits: String = time[9..]
            .chars()
            .take_while(char::is_ascii_digit)
            .chain("000".chars())
            .take(3)
            .collect();
        digits.parse::<u64>().ok()?
    } else {
        0
    };
    Some(((h * 60 + m) * 60 + s) * 1000 + frac)
}

fn now_ms_of_day() -> u64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (unix.as_millis() % 86_400_000) as u64
}

/// Connects, subscribes, waits for the snapshot; returns the local port.
async fn connect_client(
    http: SocketAddr,
    token: &str,
    channel: &str,
    tiny_buffer: bool,
) -> (
    u16,
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    if tiny_buffer {
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    }
    let tcp = socket.connect(http).await.expect("connect");
    let port = tcp.local_addr().expect("local addr").port();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{http}/ws?token={token}"), tcp)
        .await
        .expect("WebSocket handshake");
    ws.send(Message::Text(
        format!(r#"{{"type":"subscribe","channel":"{channel}"}}"#).into(),
    ))
    .await
    .expect("subscribe");
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().starts_with(r#"{"type":"snapshot""#) => {
                // A fleet client's snapshot size, to set beside its memory.
                if channel == "fleet" {
                    FLEET_SNAPSHOT_BYTES.fetch_max(t.len() as u64, Ordering::Relaxed);
                }
                break;
            }
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().starts_with(r#"{"type":"error""#) => {
                panic!("subscribing {channel}: {t}")
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no snapshot for {channel}: {other:?}"),
        }
    }
    (port, ws)
}

fn spawn_reader(
    mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    behaviour: Behaviour,
    stats: Arc<ClassStats>,
    mut phase: watch::Receiver<Phase>,
) {
    tokio::spawn(async move {
        loop {
            if behaviour != Behaviour::Normal && *phase.borrow() == Phase::Slow {
                match behaviour {
                    Behaviour::Stalls => {
                        if phase.wait_for(|p| *p != Phase::Slow).await.is_err() {
                            return;
                        }
                    }
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    stats.frames.fetch_add(1, Ordering::Relaxed);
                    let t = t.as_str();
                    if t.starts_with(r#"{"type":"position""#)
                        && let Some(sent) = ts_ms_of_day(t)
                    {
                        let lag = (now_ms_of_day() + 86_400_000 - sent) % 86_400_000;
                        record(
                            &mut stats.latency.lock().expect("histogram"),
                            Duration::from_millis(lag),
                        );
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    stats.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Some(Ok(_)) => {}
            }
        }
    });
}

/// Connects `(channel, token, slow)` clients, 16 at a time, each reading
/// as soon as it has its snapshot; `first` is the index of the first (slow
/// ones alternate between stalling and crawling). Returns `port:class`.
async fn connect_all(
    http: SocketAddr,
    plan: Vec<(String, String, bool)>,
    first: usize,
    stats: &[Arc<ClassStats>],
    phase: &watch::Receiver<Phase>,
) -> Vec<String> {
    futures_util::stream::iter(plan.into_iter().enumerate().map(
        move |(i, (channel, token, slow))| async move {
            let (port, ws) = connect_client(http, &token, &channel, slow).await;
            let class = match (slow, channel == "fleet") {
                (true, _) => SLOW,
                (false, true) => NORMAL_FLEET,
                (false, false) => NORMAL_SITE,
            };
            let behaviour = match (slow, (first + i) % 2) {
                (false, _) => Behaviour::Normal,
                (true, 0) => Behaviour::Stalls,
                (true, _) => Behaviour::Crawls,
            };
            spawn_reader(
                ws,
                behaviour,
                stats[usize::from(class)].clone(),
                phase.clone(),
            );
            format!("{port}:{class}")
        },
    ))
    .buffer_unordered(16)
    .collect()
    .await
}

// ---------------------------------------------------------------------------

fn main() {
    if std::env::var("P4_CHILD").is_ok() {
        // The engine: its own process, its own runtime.
        return child();
    }
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(bench());
}

async fn bench() {
    let vehicles = env("P4_VEHICLES", 10_000);
    let clients = env("P4_CLIENTS", 1000);
    let fleet_pct = env("P4_FLEET_PCT", 2);
    let slow_pct = env("P4_SLOW_PCT", 5);
    let moving = env("P4_MOVES", 1500).min(vehicles);
    let phase_secs = env("P4_PHASE_SECS", 30) as u64;
    let partitions = env("P4_PARTITIONS", 0);
    let warmup = env("P4_WARMUP_SECS", 10) as u64;
    let phases: Vec<Phase> = std::env::var("P4_PHASES")
        .unwrap_or_else(|_| "normal,slow".into())
        .split(',')
        .map(|p| match p.trim() {
            "slow" => Phase::Slow,
            _ => Phase::Normal,
        })
        .collect();

    let fleet = (clients * fleet_pct).div_ceil(100).max(1).min(clients);
    let site_clients = clients - fleet;
    let slow = clients * slow_pct / 100;
    let slow_fleet = if slow == 0 {
        0
    } else {
        // At least one of each kind (stalled, crawling), never half the fleet clients.
        (fleet * slow_pct)
            .div_ceil(100)
            .max(2)
            .min(fleet / 2)
            .min(slow)
    };
    let slow_site = (slow - slow_fleet).min(site_clients);

    // Sites with a board: about two clients each (a gate and a reception).
    let all_sites = sites();
    let boards: Vec<Site> = all_sites
        .iter()
        .take(site_clients.div_ceil(2).clamp(1, all_sites.len()))
        .cloned()
        .collect();
    // Move k: vehicle k from one board site to another at least 10 km away.
    let routes: Vec<(Site, Site)> = (0..moving)
        .map(|k| {
            let o = &boards[k % boards.len()];
            let d = (1..boards.len())
                .map(|j| &boards[(k * 7 + boards.len() / 2 + j) % boards.len()])
                .find(|d| tracker::haversine_m(o.lat, o.lon, d.lat, d.lon) > 10_000.0)
                .unwrap_or(&boards[(k + 1) % boards.len()]);
            (o.clone(), d.clone())
        })
        .collect();
    let routes = Arc::new(routes);
    println!(
        "P4 ({} UTC, load {}): {vehicles} vehicles at 1 Hz ({moving} carrying moves between {} sites), {clients} \
         clients: {fleet} fleet ({slow_fleet} slow), {site_clients} site ({slow_site} slow); \
         phases {phases:?} of {phase_secs} s; engine partitions {partitions} (0: one per core)",
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S"),
        loadavg(),
        boards.len()
    );

    // The engine.
    // The store on tmpfs: this measures the fan-out, and on the shared disk a
    // SQLite WAL checkpoint's fsync was seen to block for tens of seconds,
    // holding intake (back-pressure) and with it every frame.
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir");
    let free = || ingest::broker::free_port("127.0.0.1".parse().expect("ip")).expect("port");
    let (http, mqtt) = (free(), free());
    let store = std::env::var("P4_STORE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}/p4.db", dir.path().display()));
    let mosquitto = (std::env::var("P4_MOSQUITTO").as_deref() == Ok("1")).then(|| {
        movewatch_benches::BenchMosquitto::start(1000)
            .expect("mosquitto (P4_MOSQUITTO=1 needs it installed)")
    });
    let mqtt_url = match &mosquitto {
        Some(m) => Some(format!("mqtt://127.0.0.1:{}", m.port)),
        None => std::env::var("P4_MQTT_URL").ok(),
    };
    let mut command = Command::new(std::env::current_exe().expect("own path"));
    if let Some(url) = &mqtt_url {
        command.env("P4_MQTT_URL", url);
    }
    let mut child = command
        .env("P4_CHILD", "1")
        .env("P4_PARTITIONS", partitions.to_string())
        .env("P4_CHILD_HTTP", http.to_string())
        .env("P4_CHILD_MQTT", mqtt.to_string())
        .env("P4_CHILD_STORE", &store)
        .env(
            "P4_CHILD_SITES",
            boards
                .iter()
                .map(|s| s.id.as_str())
                .collect::<Vec<_>>()
                .join(","),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("engine process");
    let mut engine = EngineProcess {
        stdin: child.stdin.take().expect("stdin"),
        stdout: BufReader::new(child.stdout.take().expect("stdout")),
        child,
    };
    let mut ready = String::new();
    tokio::task::block_in_place(|| engine.stdout.read_line(&mut ready)).expect("engine start");
    assert_eq!(ready.trim(), "READY", "the engine did not start");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = engine.rss();

    // Moves, then the devices.
    for (k, (o, d)) in routes.iter().enumerate() {
        put_move(http, k, &o.id, &d.id).await;
    }
    let rss_moves = engine.rss();
    let (mqtt_host, mqtt_port) = match &mqtt_url {
        Some(url) => model::config::parse_mqtt_url(url).expect("P4_MQTT_URL"),
        None => (mqtt.ip().to_string(), mqtt.port()),
    };
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    spawn_publisher(
        mqtt_host,
        mqtt_port,
        vehicles,
        routes.clone(),
        8,
        sent.clone(),
        stop.clone(),
    );
    let t0 = Instant::now();
    loop {
        let tracked: usize = engine.ask("tracked").parse().unwrap_or(0);
        if tracked >= vehicles {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "only {tracked} of {vehicles} vehicles tracked after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "all {vehicles} vehicles tracked {:.1} s after the first publish",
        t0.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(warmup)).await;
    let rss_vehicles = engine.rss();

    // The clients: fleet first, then site boards; the last of each are the slow ones.
    let (phase_tx, phase_rx) = watch::channel(Phase::Normal);
    let stats: Vec<Arc<ClassStats>> = (0..3).map(|_| Arc::new(ClassStats::new())).collect();
    let mut plan = Vec::new();
    for i in 0..fleet {
        let slow = i >= fleet - slow_fleet;
        plan.push(("fleet".to_string(), CONTROL.to_string(), slow));
    }
    for i in 0..site_clients {
        let site = &boards[i % boards.len()].id;
        let slow = i >= site_clients - slow_site;
        plan.push((format!("site:{site}"), site_token(site), slow));
    }
    let t1 = Instant::now();
    let site_plan = plan.split_off(fleet);
    let mut classes = connect_all(http, plan, 0, &stats, &phase_rx).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_fleet = engine.rss();
    classes.extend(connect_all(http, site_plan, fleet, &stats, &phase_rx).await);
    assert_eq!(engine.ask(&format!("classes {}", classes.join(","))), "ok");
    println!(
        "{clients} clients connected and subscribed in {:.1} s; engine sees {}",
        t1.elapsed().as_secs_f64(),
        engine.ask("clients")
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_clients = engine.rss();

    // The phases.
    let mut rows = Vec::new();
    for (n, phase) in phases.iter().enumerate() {
        phase_tx.send_replace(*phase);
        // Let the slow ones back up before measuring.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(engine.ask("reset"), "ok");
        for s in &stats {
            s.latency.lock().expect("histogram").reset();
            s.frames.store(0, Ordering::Relaxed);
        }
        let (cpu_engine, cpu_bench, sent0) = (
            engine.cpu(),
            cpu_of("/proc/self/stat"),
            sent.load(Ordering::Relaxed),
        );
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(phase_secs)).await;
        let secs = started.elapsed().as_secs_f64();
        let server = engine.report();
        let cpu_engine = (engine.cpu() - cpu_engine) / secs;
        let cpu_bench = (cpu_of("/proc/self/stat") - cpu_bench) / secs;
        let rate = (sent.load(Ordering::Relaxed) - sent0) as f64 / secs;
        let client: Vec<[u64; 6]> = stats
            .iter()
            .map(|s| summary(&s.latency.lock().expect("histogram")))
            .collect();
        let frames: Vec<f64> = stats
            .iter()
            .map(|s| s.frames.load(Ordering::Relaxed) as f64 / secs)
            .collect();
        let closed: Vec<u64> = stats
            .iter()
            .map(|s| s.closed.load(Ordering::Relaxed))
            .collect();
        println!(
            "\nphase {} ({phase:?}): {rate:.0} msgs/s published, engine CPU {:.0} %, bench CPU {:.0} %, load {}",
            n + 1,
            cpu_engine * 100.0,
            cpu_bench * 100.0,
            loadavg()
        );
        for c in [NORMAL_FLEET, NORMAL_SITE, SLOW, UNCLASSIFIED] {
            let [n, p50, p90, p99, p999, max] = server[usize::from(c)];
            if n == 0 && c == UNCLASSIFIED {
                continue;
            }
            println!(
                "  server, {:<13} {n:>9} sends  p50 {} p90 {} p99 {} p999 {} max {} ms",
                CLASSES[usize::from(c)],
                ms(p50),
                ms(p90),
                ms(p99),
                ms(p999),
                ms(max)
            );
        }
        for c in [NORMAL_FLEET, NORMAL_SITE, SLOW] {
            let [n, p50, _, p99, p999, max] = client[usize::from(c)];
            println!(
                "  client, {:<13} {n:>9} positions ({:.0} frames/s, {} closed so far)  ts→receipt p50 {} p99 {} p999 {} max {} ms",
                CLASSES[usize::from(c)],
                frames[usize::from(c)],
                closed[usize::from(c)],
                ms(p50),
                ms(p99),
                ms(p999),
                ms(max)
            );
        }
        let [n, p50, p90, p99, p999, max] = server[4];
        println!(
            "  server, all normal    {n:>9} sends  p50 {} p90 {} p99 {} p999 {} max {} ms",
            ms(p50),
            ms(p90),
            ms(p99),
            ms(p999),
            ms(max)
        );
        rows.push((*phase, server, client, cpu_engine, rate));
    }

    stop.store(true, Ordering::Relaxed);
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "\nengine RSS: idle {:.1} MB, with {moving} moves {:.1} MB, tracking {vehicles} vehicles {:.1} MB, \
         with {fleet} fleet clients {:.1} MB, with all {clients} clients {:.1} MB",
        mb(rss_idle),
        mb(rss_moves),
        mb(rss_vehicles),
        mb(rss_fleet),
        mb(rss_clients)
    );
    println!(
        "memory: {:.2} KiB per vehicle (tracking, incl. moves), {:.1} KiB per client on average \
         ({:.1} KiB per fleet client, {:.1} KiB per site client); a fleet snapshot is {:.1} KiB",
        (rss_vehicles as f64 - rss_idle as f64) / vehicles as f64 / 1024.0,
        (rss_clients as f64 - rss_vehicles as f64) / clients as f64 / 1024.0,
        (rss_fleet as f64 - rss_vehicles as f64) / fleet as f64 / 1024.0,
        (rss_clients as f64 - rss_fleet as f64) / site_clients.max(1) as f64 / 1024.0,
        FLEET_SNAPSHOT_BYTES.load(Ordering::Relaxed) as f64 / 1024.0,
    );
    println!(
        "\n| phase | all normal p50 / p99 / p999 ms | normal fleet p50 / p99 / p999 ms | normal site p50 / p99 / p999 ms | slow p99 ms | engine CPU |\n|---|---|---|---|---|---|"
    );
    for (phase, server, _, cpu, _) in &rows {
        let a = server[4];
        let f = server[usize::from(NORMAL_FLEET)];
        let s = server[usize::from(NORMAL_SITE)];
        println!(
            "| {phase:?} | {} / {} / {} | {} / {} / {} | {} / {} / {} | {} | {:.0} % |",
            ms(a[1]),
            ms(a[3]),
            ms(a[4]),
            ms(f[1]),
            ms(f[3]),
            ms(f[4]),
            ms(s[1]),
            ms(s[3]),
            ms(s[4]),
            ms(server[usize::from(SLOW)][3]),
            cpu * 100.0
        );
    }
}
