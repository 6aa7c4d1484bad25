//! Running a simulated day against an engine: pacing, transports, move
//! registration, ground truth and the load report.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use model::{Site, SupplierId};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio::sync::mpsc;

use crate::Registrations;
use crate::SimError;
use crate::emit::{Body, Clock, Device, DeviceContext, FaultConfig, Kind, Outgoing, TruthLine};
use crate::http::Client;
use crate::plan::{DayPlan, Focus, PlanConfig, plan_day};
use crate::report::{LoadReport, SendLog, WsSubscriber, check_store};

/// How fast simulated time runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Wall-clock time (the demo).
    RealTime,
    /// This many simulated seconds per wall second (`--speed 60`).
    Speed(f64),
    /// As fast as the path takes it.
    Load,
}

/// Where points go.
#[derive(Debug, Clone)]
pub enum Transport {
    /// MQTT, QoS 1.
    Mqtt {
        /// Broker host.
        host: String,
        /// Broker port.
        port: u16,
        /// Password per supplier id (username = supplier id), when the broker checks them.
        passwords: HashMap<String, String>,
        /// Connections per supplier (vans share them round-robin).
        connections: usize,
    },
    /// `POST /tracks` with `X-API-Key` (events are not sent: the contract has no HTTP route for them).
    Http {
        /// `host:port` of the engine.
        addr: String,
        /// API key per supplier id.
        keys: HashMap<String, String>,
        /// Concurrent HTTP connections.
        connections: usize,
    },
}

/// A whole run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Vans.
    pub vehicles: usize,
    /// Seed for the day and the faults.
    pub seed: u64,
    /// Time between a van's fixes (simulated).
    pub interval: Duration,
    /// Simulated span; `None` runs until the task is dropped (real time only).
    pub duration: Option<Duration>,
    /// Pacing.
    pub pace: Pace,
    /// UTC of the first fix; default: now for real time, else now − duration
    /// (so that no timestamp is in the future).
    pub start: Option<DateTime<Utc>>,
    /// Time of day (seconds since midnight) in the planned day at `start`
    /// (default 06:30: the morning runs begin).
    pub day_start_s: f64,
    /// Where to send.
    pub transport: Transport,
    /// The engine's HTTP `host:port`, for moves, the WebSocket and REST.
    pub api: Option<String>,
    /// A control-room token (moves, WebSocket).
    pub token: Option<String>,
    /// Faults.
    pub faults: FaultConfig,
    /// Ground-truth JSON lines file.
    pub truth: Option<PathBuf>,
    /// Register the day's moves with `PUT /api/moves/{id}` first.
    pub register_moves: bool,
    /// Measure latency on the WebSocket (needs `api` and `token`).
    pub measure: bool,
    /// Check loss against this store.
    pub database_url: Option<String>,
    /// Show a progress bar.
    pub progress: bool,
    /// Every registration starts with this (0–4 of A-Z0-9); the rest comes
    /// from the seed and start time. `None`: the whole plate does.
    pub registration_prefix: Option<String>,
    /// A site several moves go to, on the road at the first fix (the demo's `LEI`).
    pub focus_site: Option<String>,
}

/// How long the simulator waits for a broker or an engine to answer (at the
/// start, or after losing it) before it stops with an error.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Valid points sent.
    pub points: u64,
    /// Messages sent.
    pub messages: u64,
    /// Events sent.
    pub events: u64,
    /// Deliberately malformed payloads by expected reason, and re-sent points as `duplicate`.
    pub expected_dead_letters: BTreeMap<String, u64>,
    /// Moves registered, or why not.
    pub moves_registered: Option<Result<usize, String>>,
    /// UTC of the first and last fix.
    pub span: (DateTime<Utc>, DateTime<Utc>),
    /// The prefix of every tracking id of the run.
    pub id_prefix: String,
    /// HTTP transport: rejections the engine reported, by reason.
    pub http_rejected: BTreeMap<String, u64>,
    /// What the engine rejected, against what the run provoked on purpose
    /// (`None` when it could not be checked: see `rejections_unchecked`).
    pub rejections: Option<crate::report::Rejections>,
    /// Why rejections were not checked.
    pub rejections_unchecked: Option<String>,
    /// The transport: `mqtt` or `http`.
    pub transport: &'static str,
    /// The first and last registration of the fleet.
    pub registrations: (String, String),
    /// The load report, when measured.
    pub report: Option<LoadReport>,
}

/// Plans the day for a run (also used by tests to compare days).
pub fn plan_for(
    config: &RunConfig,
    sites: &[Site],
    start: DateTime<Utc>,
) -> Result<DayPlan, SimError> {
    let registrations =
        Registrations::for_run(config.registration_prefix.as_deref(), config.seed, start)
            .map_err(|e| SimError::Config(e.to_string()))?;
    if config.vehicles as u64 > registrations.space() {
        return Err(SimError::Config(format!(
            "registration prefix {:?} leaves {} plates, fewer than {} vans",
            registrations.prefix(),
            registrations.space(),
            config.vehicles
        )));
    }
    plan_day(
        sites,
        &PlanConfig {
            vehicles: config.vehicles,
            seed: config.seed,
            date: start.date_naive(),
            breakdown_rate: config.faults.breakdown_rate,
            registrations,
            focus: config.focus_site.clone().map(|site| Focus {
                site,
                at: config.day_start_s,
            }),
        },
    )
}

struct Sink {
    mqtt: HashMap<SupplierId, Vec<AsyncClient>>,
    http: Option<mpsc::Sender<(SupplierId, Vec<u8>, u64)>>,
    http_batch: HashMap<SupplierId, (Vec<String>, u64)>,
    /// When the oldest element waiting in `http_batch` was queued.
    http_since: Option<Instant>,
    published: u64,
    log: Option<Arc<SendLog>>,
    expected_ids: Option<HashSet<String>>,
    expected_live: u64,
    summary: RunSummary,
    fatal: Fatal,
}

impl Sink {
    async fn send(&mut self, out: Outgoing) -> Result<(), SimError> {
        let now = Instant::now();
        match &out.kind {
            Kind::Points(points) => {
                self.summary.points += points.len() as u64;
                for p in points {
                    if let Some(log) = &self.log
                        && p.live
                    {
                        log.sent(out.van, p.ts_ms, now);
                        self.expected_live += 1;
                    }
                    if let Some(ids) = &mut self.expected_ids {
                        ids.insert(p.tracking_id.clone());
                    }
                }
            }
            Kind::Duplicate(n) => {
                *self
                    .summary
                    .expected_dead_letters
                    .entry("duplicate".into())
                    .or_default() += *n as u64;
            }
            Kind::Event => self.summary.events += 1,
            Kind::Malformed(r) => {
                *self
                    .summary
                    .expected_dead_letters
                    .entry(r.as_str().into())
                    .or_default() += 1;
            }
        }
        self.summary.messages += 1;
        if let Some(tx) = &self.http {
            let Body::Elements { items, .. } = out.body else {
                return Ok(());
            };
            let n = items.len() as u64;
            self.http_since.get_or_insert_with(Instant::now);
            let entry = self.http_batch.entry(out.supplier).or_default();
            entry.0.extend(items);
            entry.1 += n;
            if entry.0.len() >= 500 {
                let (items, _) = std::mem::take(entry);
                let body = crate::emit::json_array(items.iter().map(String::as_str));
                self.post(tx.clone(), out.supplier, body).await?;
            }
            return Ok(());
        }
        let pool = self
            .mqtt
            .get(&out.supplier)
            .ok_or_else(|| SimError::Report(format!("no connection for {}", out.supplier)))?;
        let client = &pool[out.van as usize % pool.len()];
        // A connection that gave up never drains its queue: stop instead of waiting.
        tokio::select! {
            r = client.publish(out.topic, QoS::AtLeastOnce, false, out.body.mqtt_payload()) => r?,
            why = self.fatal.wait() => return Err(SimError::Broker(why)),
        }
        self.published += 1;
        Ok(())
    }

    async fn flush_http(&mut self) -> Result<(), SimError> {
        if let Some(tx) = &self.http {
            self.http_since = None;
            let batches: Vec<_> = self.http_batch.drain().collect();
            for (supplier, (items, _)) in batches {
                if items.is_empty() {
                    continue;
                }
                let body = crate::emit::json_array(items.iter().map(String::as_str));
                self.post(tx.clone(), supplier, body).await?;
            }
        }
        Ok(())
    }

    /// Queues a `POST /tracks` body for the workers, unless the run must stop.
    async fn post(
        &self,
        tx: mpsc::Sender<(SupplierId, Vec<u8>, u64)>,
        supplier: SupplierId,
        body: Vec<u8>,
    ) -> Result<(), SimError> {
        tokio::select! {
            r = tx.send((supplier, body, 0)) => r.map_err(|_| SimError::Report("HTTP workers stopped".into())),
            why = self.fatal.wait() => Err(SimError::Engine(why)),
        }
    }
}

/// The first reason the run must stop (a refused or silent broker or engine),
/// shared by the connections and workers that notice it.
#[derive(Clone)]
pub(crate) struct Fatal(Arc<tokio::sync::watch::Sender<Option<String>>>);

impl Fatal {
    fn new() -> Fatal {
        Fatal(Arc::new(tokio::sync::watch::channel(None).0))
    }

    /// Records `why` unless a reason is already recorded.
    fn set(&self, why: String) {
        self.0.send_if_modified(|slot| {
            if slot.is_some() {
                return false;
            }
            *slot = Some(why);
            true
        });
    }

    fn get(&self) -> Option<String> {
        self.0.borrow().clone()
    }

    /// Resolves once a reason is recorded.
    async fn wait(&self) -> String {
        let mut rx = self.0.subscribe();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                // Cannot happen while `self` holds the sender; wait forever then.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Whether an MQTT error means the broker closed the connection after the TCP
/// connect, before any CONNACK (how rumqttd and the topic guard refuse a client).
fn closed_by_broker(e: &rumqttc::ConnectionError) -> bool {
    use rumqttc::{ConnectionError, StateError};
    let io_closed = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::BrokenPipe
        )
    };
    match e {
        ConnectionError::MqttState(StateError::ConnectionAborted) => true,
        ConnectionError::MqttState(StateError::Io(e)) => io_closed(e),
        ConnectionError::Io(e) => io_closed(e),
        _ => false,
    }
}

/// One QoS 1 connection per (supplier, slot). Each connection's event loop
/// counts PUBACKs, and stops the run (through `fatal`) when the broker
/// refuses the credentials, never answers within [`ANSWER_WITHIN`], or is
/// lost for longer than that: no endless reconnecting.
#[allow(clippy::too_many_arguments)]
fn mqtt_pool(
    host: &str,
    port: u16,
    passwords: &HashMap<String, String>,
    suppliers: &[SupplierId],
    connections: usize,
    seed: u64,
    acked: Arc<AtomicU64>,
    connected: Arc<AtomicU64>,
    fatal: &Fatal,
) -> HashMap<SupplierId, Vec<AsyncClient>> {
    let run = crate::random_suffix();
    let mut pools = HashMap::new();
    for supplier in suppliers {
        let mut pool = Vec::new();
        for c in 0..connections.max(1) {
            // Client ids start with `{supplier}-`, as the contract asks of devices.
            let mut options =
                MqttOptions::new(format!("{supplier}-sim-{seed}-{run}-{c}"), host, port);
            options
                .set_keep_alive(Duration::from_secs(30))
                .set_max_packet_size(1024 * 1024, 1024 * 1024)
                .set_inflight(500);
            let password = passwords.get(supplier.as_str());
            if let Some(pw) = password {
                options.set_credentials(supplier.as_str(), pw.clone());
            }
            let credentials = match password {
                Some(_) => format!("username \"{supplier}\" with the --password given for it"),
                None => format!("no username or password (no --password {supplier}=… given)"),
            };
            // Bounded: a full request queue makes `publish` wait (back-pressure
            // on the simulator, nothing dropped).
            let (client, mut eventloop) = AsyncClient::new(options, 1000);
            let (acked, connected, fatal) = (acked.clone(), connected.clone(), fatal.clone());
            let broker = format!("{host}:{port}");
            let supplier = *supplier;
            tokio::spawn(async move {
                let mut ever = false;
                let mut down_since = Some(tokio::time::Instant::now());
                let mut closed = 0;
                let mut warned = false;
                loop {
                    let e = match eventloop.poll().await {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                            if !ever {
                                connected.fetch_add(1, Ordering::Relaxed);
                            }
                            if warned {
                                tracing::info!(%broker, "simulator reconnected to the broker");
                            }
                            (ever, down_since, closed, warned) = (true, None, 0, false);
                            continue;
                        }
                        Ok(_) => continue,
                        Err(rumqttc::ConnectionError::RequestsDone) => return,
                        Err(e) => e,
                    };
                    if fatal.get().is_some() {
                        return;
                    }
                    let since = *down_since.get_or_insert_with(tokio::time::Instant::now);
                    if !ever && closed_by_broker(&e) {
                        closed += 1;
                    }
                    let stop = if let rumqttc::ConnectionError::ConnectionRefused(code) = &e {
                        Some(format!(
                            "the MQTT broker at {broker} refused supplier {supplier}'s connection \
                             (CONNACK {code:?}: bad username or password, or not authorised); \
                             it was sent {credentials}. The embedded broker wants username = \
                             supplier id and its [[suppliers]] mqtt_password (`movewatch demo` \
                             prints them)"
                        ))
                    } else if closed >= 2 {
                        Some(format!(
                            "the MQTT broker at {broker} closed supplier {supplier}'s connection \
                             before accepting it (no CONNACK), twice: it refuses the credentials \
                             or the client id. It was sent {credentials}. The embedded broker \
                             wants username = supplier id and its [[suppliers]] mqtt_password \
                             (`movewatch demo` prints them)"
                        ))
                    } else if since.elapsed() >= ANSWER_WITHIN {
                        Some(if ever {
                            format!(
                                "lost the MQTT broker at {broker} and could not reconnect within \
                                 {} s ({e}); stopping",
                                ANSWER_WITHIN.as_secs()
                            )
                        } else {
                            format!(
                                "no MQTT broker answered at {broker} within {} s ({e}): is the \
                                 engine (`movewatch serve` or `movewatch demo`) or the broker \
                                 running, and is --mqtt-url right?",
                                ANSWER_WITHIN.as_secs()
                            )
                        })
                    } else {
                        None
                    };
                    if let Some(why) = stop {
                        fatal.set(why);
                        return;
                    }
                    if ever && !warned {
                        tracing::warn!(%broker, error = %e, "simulator lost the broker; reconnecting for up to {} s", ANSWER_WITHIN.as_secs());
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            });
            pool.push(client);
        }
        pools.insert(*supplier, pool);
    }
    pools
}

/// Waits until `n` connections have their CONNACK, or a connection gives up.
async fn wait_connected(connected: &AtomicU64, n: u64, fatal: &Fatal) -> Result<(), SimError> {
    // Each connection gives up by itself within ANSWER_WITHIN plus one
    // connect timeout; this bound is only a backstop.
    let deadline = tokio::time::Instant::now() + ANSWER_WITHIN + Duration::from_secs(10);
    loop {
        if let Some(why) = fatal.get() {
            return Err(SimError::Broker(why));
        }
        if connected.load(Ordering::Relaxed) >= n {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(SimError::Broker(format!(
                "the MQTT broker accepted {} of {n} connections within {} s",
                connected.load(Ordering::Relaxed),
                ANSWER_WITHIN.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to [`ANSWER_WITHIN`]) for the engine's `GET /healthz`.
async fn engine_answers(api: &str) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        let mut client = Client::new(api);
        match tokio::time::timeout(
            Duration::from_secs(2),
            client.request("GET", "/healthz", &[], b""),
        )
        .await
        {
            Ok(Ok(r)) if r.status == 200 => return Ok(()),
            Ok(Ok(r)) => last = format!("GET /healthz answered {}", r.status),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "GET /healthz timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!(
        "no engine answered at http://{api} within {} s ({last}): is the engine \
         (`movewatch serve` or `movewatch demo`) running, and is --http-url right?",
        ANSWER_WITHIN.as_secs()
    ))
}

/// The engine's `movewatch_ingest_rejected_total{reason}` now.
async fn rejected_now(api: &str) -> Result<BTreeMap<String, u64>, String> {
    metrics_now(api)
        .await
        .map(|text| crate::report::rejected_from_metrics(&text))
}

/// The engine's rejections once it has taken in everything sent: the
/// broker acknowledges a message when it has it, not when the engine has
/// read it. Settled when the rejections have not moved for three polls half
/// a second apart and either every provoked reason is counted in full or the
/// engine's intake is idle (an engine with other traffic, such as the demo's
/// fleet, is never idle); at most 20 s.
async fn rejected_when_settled(
    api: &str,
    before: &BTreeMap<String, u64>,
    expected: &BTreeMap<String, u64>,
) -> Result<BTreeMap<String, u64>, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (mut last, mut still) = (None, 0);
    loop {
        let text = metrics_now(api).await?;
        let now = (
            crate::report::counter(&text, "movewatch_ingest_points_total"),
            crate::report::rejected_from_metrics(&text),
        );
        let (same_rejections, idle) = match &last {
            Some((points, rejected)) => (*rejected == now.1, *points == now.0),
            None => (false, false),
        };
        still = if same_rejections { still + 1 } else { 0 };
        let observed = crate::report::delta(before, &now.1);
        let complete = expected
            .iter()
            .all(|(reason, n)| observed.get(reason).copied().unwrap_or(0) >= *n);
        if (still >= 3 && (complete || idle)) || tokio::time::Instant::now() > deadline {
            return Ok(now.1);
        }
        last = Some(now);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The engine's `/metrics` page.
async fn metrics_now(api: &str) -> Result<String, String> {
    let mut client = Client::new(api);
    match tokio::time::timeout(
        Duration::from_secs(5),
        client.request("GET", "/metrics", &[], b""),
    )
    .await
    {
        Ok(Ok(r)) if r.status == 200 => Ok(String::from_utf8_lossy(&r.body).into_owned()),
        Ok(Ok(r)) => Err(format!("GET /metrics answered {}", r.status)),
        Ok(Err(e)) => Err(format!("GET /metrics: {e}")),
        Err(_) => Err("GET /metrics timed out".into()),
    }
}

/// Registers every move with `PUT /api/moves/{id}`; stops (warning once) if
/// the engine does not have the route (404/405) or refuses the token.
/// Moves already picked up (not completed) when the run's first fix is taken
/// at virtual time `t0`: registered `in_transit`, since they departed.
fn started_at(plan: &DayPlan, t0: f64) -> HashSet<String> {
    let mut started = HashSet::new();
    for v in &plan.vans {
        let before = &v.happenings[..v.happenings.partition_point(|h| h.t < t0)];
        for i in crate::emit::started_before(before) {
            if let crate::plan::Happening::Event {
                move_id: Some(m), ..
            } = &before[i].what
            {
                started.insert(m.clone());
            }
        }
    }
    started
}

async fn register_moves(
    api: &str,
    token: &str,
    plan: &DayPlan,
    started: &HashSet<String>,
) -> Result<usize, String> {
    let skip = Arc::new(AtomicBool::new(false));
    let why = Arc::new(std::sync::Mutex::new(None::<String>));
    let done = Arc::new(AtomicU64::new(0));
    let (tx, rx) = async_channel::<(String, Vec<u8>)>(1024);
    let mut workers = Vec::new();
    for _ in 0..4 {
        let rx = rx.clone();
        let (skip, why, done) = (skip.clone(), why.clone(), done.clone());
        let mut client = Client::new(api);
        let auth = format!("Bearer {token}");
        workers.push(tokio::spawn(async move {
            while let Ok((id, body)) = recv(&rx).await {
                if skip.load(Ordering::Relaxed) {
                    continue;
                }
                let path = format!("/api/moves/{id}");
                let r = client
                    .request(
                        "PUT",
                        &path,
                        &[
                            ("Authorization", &auth),
                            ("Content-Type", "application/json"),
                        ],
                        &body,
                    )
                    .await;
                let stop = match r {
                    Ok(r) if (200..300).contains(&r.status) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                    Ok(r) if r.status == 404 || r.status == 405 => Some(format!(
                        "the engine has no PUT /api/moves (HTTP {}); moves not registered",
                        r.status
                    )),
                    Ok(r) => Some(format!(
                        "PUT {path} answered {}: {}; moves not registered further",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    )),
                    Err(e) => Some(format!("PUT {path}: {e}; moves not registered further")),
                };
                if let Some(w) = stop
                    && !skip.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!("{w}");
                    if let Ok(mut slot) = why.lock() {
                        *slot = Some(w);
                    }
                }
            }
        }));
    }
    for m in &plan.moves {
        if skip.load(Ordering::Relaxed) {
            break;
        }
        let body = if started.contains(&m.id) {
            let mut m = m.clone();
            m.status = "in_transit";
            serde_json::to_vec(&m).unwrap_or_default()
        } else {
            serde_json::to_vec(m).unwrap_or_default()
        };
        if tx.send((m.id.clone(), body)).await.is_err() {
            break;
        }
    }
    drop(tx);
    for w in workers {
        let _ = w.await;
    }
    let why = why.lock().ok().and_then(|w| w.clone());
    match why {
        Some(w) => Err(w),
        None => Ok(done.load(Ordering::Relaxed) as usize),
    }
}

/// The faults with the malformed reasons the transport can carry.
fn faults_for(faults: &FaultConfig, http: bool) -> FaultConfig {
    let mut faults = faults.clone();
    let allowed = if http {
        FaultConfig::http_reasons()
    } else {
        model::Reason::ALL.to_vec()
    };
    faults.malformed_reasons.retain(|r| allowed.contains(r));
    faults
}

/// Every van's device.
fn devices<'a>(
    plan: &'a DayPlan,
    faults: &'a FaultConfig,
    window: (f64, f64),
    id_prefix: &'a str,
    seed: u64,
    http: bool,
) -> (Vec<DeviceContext<'a>>, Vec<Device>) {
    let contexts: Vec<DeviceContext<'_>> = plan
        .vans
        .iter()
        .map(|p| DeviceContext {
            plan: p,
            faults,
            window,
            id_prefix,
            seed,
            http,
        })
        .collect();
    let mut devices: Vec<Device> = contexts
        .iter()
        .enumerate()
        .map(|(i, c)| Device::new(i as u32, c))
        .collect();
    // A van of the other supplier, for `vehicle_owned_by_other_supplier`.
    let mut by_supplier: BTreeMap<SupplierId, Vec<usize>> = BTreeMap::new();
    for (i, v) in plan.vans.iter().enumerate() {
        by_supplier.entry(v.supplier).or_default().push(i);
    }
    for (i, d) in devices.iter_mut().enumerate() {
        d.foreign = by_supplier
            .iter()
            .find(|(s, _)| **s != d.supplier)
            .map(|(_, vans)| plan.vans[vans[i % vans.len()]].vehicle);
    }
    (contexts, devices)
}

/// Ground-truth lines (JSON) and (topic, payload) messages of a dry run.
pub type DryRun = (Vec<String>, Vec<(String, Vec<u8>)>);

/// What [`run_day`] would send and record for `config` starting at `start`,
/// without sending anything: every ground-truth line (JSON) and every
/// (topic, payload), in order. For tests and inspection.
pub fn dry_run(
    config: &RunConfig,
    sites: &[Site],
    start: DateTime<Utc>,
) -> Result<DryRun, SimError> {
    let interval = config.interval.as_secs_f64().max(0.001);
    let span_s = config.duration.map_or(3600.0, |d| d.as_secs_f64());
    let plan = plan_for(config, sites, start)?;
    let clock = Clock {
        start,
        day_start: config.day_start_s,
    };
    let id_prefix = format!("s{}-{}-", config.seed, start.timestamp());
    let window = (config.day_start_s, config.day_start_s + span_s);
    let http = matches!(config.transport, Transport::Http { .. });
    let faults = faults_for(&config.faults, http);
    let (contexts, mut devices) = devices(&plan, &faults, window, &id_prefix, config.seed, http);
    let slices = config.vehicles.clamp(1, 100);
    let (mut out, mut lines) = (Vec::new(), Vec::new());
    for k in 0..((span_s / interval).floor() as u64).max(1) {
        for s in 0..slices {
            let t = config.day_start_s + k as f64 * interval + s as f64 * interval / slices as f64;
            for van in (s..devices.len()).step_by(slices) {
                devices[van].tick(t, &contexts[van], &clock, &mut out, Some(&mut lines));
            }
        }
    }
    for d in &mut devices {
        d.flush(&mut out);
    }
    let lines = lines
        .iter()
        .map(|l| serde_json::to_string(l).unwrap_or_default())
        .collect();
    let msgs = out
        .into_iter()
        .map(|o| (o.topic, o.body.mqtt_payload()))
        .collect();
    Ok((lines, msgs))
}

type Shared<T> = Arc<tokio::sync::Mutex<mpsc::Receiver<T>>>;

fn async_channel<T>(cap: usize) -> (mpsc::Sender<T>, Shared<T>) {
    let (tx, rx) = mpsc::channel(cap);
    (tx, Arc::new(tokio::sync::Mutex::new(rx)))
}

async fn recv<T>(rx: &Shared<T>) -> Result<T, ()> {
    rx.lock().await.recv().await.ok_or(())
}

/// Runs the day: plans it, registers moves, drives and sends, waits for the
/// acknowledgements, and measures when asked.
pub async fn run_day(config: RunConfig, sites: &[Site]) -> Result<RunSummary, SimError> {
    let interval = config.interval.as_secs_f64().max(0.001);
    let span_s = config.duration.map(|d| d.as_secs_f64());
    let start = config.start.unwrap_or_else(|| match (config.pace, span_s) {
        (Pace::RealTime, _) | (_, None) => Utc::now(),
        (_, Some(s)) => Utc::now() - chrono::Duration::milliseconds((s * 1000.0) as i64),
    });
    let plan = plan_for(&config, sites, start)?;
    let clock = Clock {
        start,
        day_start: config.day_start_s,
    };
    let id_prefix = format!("s{}-{}-", config.seed, start.timestamp());
    let window = (
        config.day_start_s,
        config.day_start_s + span_s.unwrap_or(86_400.0),
    );
    let http = matches!(config.transport, Transport::Http { .. });
    let faults = faults_for(&config.faults, http);
    let (contexts, mut devices) = devices(&plan, &faults, window, &id_prefix, config.seed, http);
    let mut by_supplier: BTreeMap<SupplierId, Vec<usize>> = BTreeMap::new();
    for (i, v) in plan.vans.iter().enumerate() {
        by_supplier.entry(v.supplier).or_default().push(i);
    }
    let mut truth = match &config.truth {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|e| SimError::Io(path.display().to_string(), e))?,
        )),
        None => None,
    };
    if let Some(w) = truth.as_mut() {
        let header = serde_json::json!({
            "type": "run", "seed": config.seed, "vehicles": config.vehicles,
            "start": crate::emit::ts_text(start.timestamp_millis()),
            "interval_s": interval, "duration_s": span_s, "id_prefix": id_prefix,
            "plan": crate::plan::summary(&plan),
        });
        write_line(w, &header, &config.truth)?;
        for (i, v) in plan.vans.iter().enumerate() {
            let d = &plan.depots[v.depot];
            let line = serde_json::json!({"type": "van", "index": i, "vehicle": v.vehicle.as_str(),
                "supplier": v.supplier.as_str(), "depot": d.id, "depot_lat": d.lat, "depot_lon": d.lon,
                "van_type": v.van_type.as_str(), "day": v.day});
            write_line(w, &line, &config.truth)?;
        }
        for m in &plan.moves {
            let mut line = serde_json::to_value(m).map_err(|e| SimError::Report(e.to_string()))?;
            line["type"] = "move".into();
            line["move_id"] = m.id.clone().into();
            write_line(w, &line, &config.truth)?;
        }
    }

    let fatal = Fatal::new();
    let acked = Arc::new(AtomicU64::new(0));
    let suppliers: Vec<SupplierId> = by_supplier.keys().copied().collect();
    let http_rejected = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u64>::new()));
    let mut http_workers = Vec::new();
    let mut sink = Sink {
        mqtt: HashMap::new(),
        http: None,
        http_batch: HashMap::new(),
        http_since: None,
        published: 0,
        log: None,
        expected_ids: config.database_url.as_ref().map(|_| HashSet::new()),
        expected_live: 0,
        summary: RunSummary::default(),
        fatal: fatal.clone(),
    };
    // Connect first, and stop with a reason when nobody answers or the
    // credentials are refused.
    let connected = Arc::new(AtomicU64::new(0));
    let mut connections_wanted = 0;
    if let Transport::Mqtt {
        host,
        port,
        passwords,
        connections,
    } = &config.transport
    {
        sink.mqtt = mqtt_pool(
            host,
            *port,
            passwords,
            &suppliers,
            *connections,
            config.seed,
            acked.clone(),
            connected.clone(),
            &fatal,
        );
        connections_wanted = (suppliers.len() * (*connections).max(1)) as u64;
    }
    let wants_engine = http || config.token.is_some();
    let (broker, engine) = tokio::join!(
        wait_connected(&connected, connections_wanted, &fatal),
        async {
            match &config.api {
                Some(api) if wants_engine => engine_answers(api).await,
                Some(_) => Ok(()),
                None => Err("no engine HTTP address given".to_owned()),
            }
        }
    );
    broker?;
    if http && let Err(why) = &engine {
        return Err(SimError::Engine(why.clone()));
    }
    if let (Err(why), true) = (&engine, wants_engine) {
        tracing::warn!("{why}; moves not registered, rejections not checked");
    }
    let api = config.api.clone().filter(|_| engine.is_ok());

    let moves_registered = match (&api, &config.token, config.register_moves) {
        (Some(api), Some(token), true) => {
            register_moves(api, token, &plan, &started_at(&plan, config.day_start_s)).await
        }
        (None, Some(_), true) => Err(format!(
            "moves not registered: {}",
            engine.as_ref().err().cloned().unwrap_or_default()
        )),
        (_, _, true) => Err("no --http-url or --token: moves not registered".into()),
        _ => Err("move registration off".into()),
    };

    let log = config.measure.then(|| Arc::new(SendLog::default()));
    sink.log = log.clone();
    let vans_by_reg: Arc<HashMap<String, u32>> = Arc::new(
        plan.vans
            .iter()
            .enumerate()
            .map(|(i, v)| (v.vehicle.to_string(), i as u32))
            .collect(),
    );
    let ws = match (&log, &api, &config.token) {
        (Some(log), Some(api), Some(token)) => {
            Some(WsSubscriber::start(api, token, vans_by_reg.clone(), log.clone()).await?)
        }
        (Some(_), _, _) => {
            return Err(SimError::Report(
                "measuring needs the engine's HTTP address and a control-room token".into(),
            ));
        }
        _ => None,
    };

    // Rejections: over HTTP from the replies; over MQTT from the engine's
    // metrics before and after (when its HTTP address answers).
    let mut unchecked = None;
    let metrics_before = match (&api, http) {
        (_, true) => None,
        (Some(api), false) => match rejected_now(api).await {
            Ok(m) => Some(m),
            Err(e) => {
                unchecked = Some(e);
                None
            }
        },
        (None, false) => {
            unchecked = Some(match &engine {
                Err(why) if wants_engine => why.clone(),
                _ => "the engine's HTTP address is unknown (give --token and --http-url)".into(),
            });
            None
        }
    };

    if let Transport::Http {
        addr,
        keys,
        connections,
    } = &config.transport
    {
        // Bounded: when the engine is slow, the producer waits.
        let (tx, rx) = async_channel::<(SupplierId, Vec<u8>, u64)>(connections.max(&1) * 2);
        for _ in 0..(*connections).max(1) {
            let rx = rx.clone();
            let mut client = Client::new(addr);
            let keys = keys.clone();
            let (acked, rejected, fatal) = (acked.clone(), http_rejected.clone(), fatal.clone());
            let engine = addr.clone();
            http_workers.push(tokio::spawn(async move {
                let mut failing_since: Option<tokio::time::Instant> = None;
                let (mut limited_warned, mut warned) = (false, false);
                while let Ok((supplier, body, _)) = recv(&rx).await {
                    if fatal.get().is_some() {
                        continue; // drain: the run is stopping
                    }
                    let key = keys.get(supplier.as_str()).cloned().unwrap_or_default();
                    let mut r = client
                        .request("POST", "/tracks", &[("X-API-Key", &key), ("Content-Type", "application/json")], &body)
                        .await;
                    // Rate limited: back-pressure, not loss. Wait and send the
                    // same body again (for up to ANSWER_WITHIN).
                    let limited_since = tokio::time::Instant::now();
                    while matches!(&r, Ok(x) if x.status == 429)
                        && limited_since.elapsed() < ANSWER_WITHIN
                        && fatal.get().is_none()
                    {
                        if !limited_warned {
                            tracing::warn!("POST /tracks rate limited (429); slowing down");
                            limited_warned = true;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        r = client
                            .request("POST", "/tracks", &[("X-API-Key", &key), ("Content-Type", "application/json")], &body)
                            .await;
                    }
                    let failure = match r {
                        Ok(r) if r.status == 202 => {
                            (failing_since, warned) = (None, false);
                            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                            acked.fetch_add(v["accepted"].as_u64().unwrap_or(0), Ordering::Relaxed);
                            if let (Some(list), Ok(mut map)) = (v["rejected"].as_array(), rejected.lock()) {
                                for r in list {
                                    let reason = r["reason"].as_str().unwrap_or("?").to_owned();
                                    *map.entry(reason).or_default() += 1;
                                }
                            }
                            continue;
                        }
                        Ok(r) if r.status == 401 || r.status == 403 => {
                            let given = if key.is_empty() { "no --api-key given for it" } else { "with the --api-key given for it" };
                            fatal.set(format!(
                                "the engine at http://{engine} refused supplier {supplier}'s POST /tracks \
                                 (HTTP {}, {given}): give --api-key {supplier}=KEY with the supplier's \
                                 api_key (`movewatch demo` prints them)",
                                r.status
                            ));
                            continue;
                        }
                        Ok(r) => format!("POST /tracks answered {}: {}", r.status, String::from_utf8_lossy(&r.body)),
                        Err(e) => format!("POST /tracks: {e}"),
                    };
                    let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= ANSWER_WITHIN {
                        fatal.set(format!(
                            "the engine at http://{engine} has failed every POST /tracks for {} s \
                             ({failure}); stopping",
                            ANSWER_WITHIN.as_secs()
                        ));
                    } else if !warned {
                        // Once: a failing engine is reported by the stop above.
                        tracing::warn!("{failure}");
                        warned = true;
                    }
                }
            }));
        }
        sink.http = Some(tx);
    }

    // Vans are spread over `slices` phases of the interval, so the load is even.
    let slices = config.vehicles.clamp(1, 100);
    let ticks: Option<u64> = span_s.map(|s| ((s / interval).floor() as u64).max(1));
    let bar = match (config.progress, ticks) {
        (true, Some(t)) => {
            let bar = indicatif::ProgressBar::new(t);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} fixes per van  {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            Some(bar)
        }
        _ => None,
    };
    let wall0 = tokio::time::Instant::now();
    let t_first = Instant::now();
    let mut out = Vec::new();
    let mut lines = Vec::new();
    let mut k = 0u64;
    let mut watch = RejectionWatch {
        api: api.clone().filter(|_| !http),
        before: metrics_before.clone(),
        http: http.then(|| http_rejected.clone()),
        next: tokio::time::Instant::now() + ANSWER_WITHIN,
        warned: HashSet::new(),
    };
    while ticks.is_none_or(|n| k < n) {
        if let Some(why) = fatal.get() {
            return Err(if http {
                SimError::Engine(why)
            } else {
                SimError::Broker(why)
            });
        }
        watch
            .check(&sink.summary.expected_dead_letters, false)
            .await;
        for s in 0..slices {
            let offset = k as f64 * interval + s as f64 * interval / slices as f64;
            let wall = match config.pace {
                Pace::RealTime => Some(offset),
                Pace::Speed(x) => Some(offset / x.max(0.001)),
                Pace::Load => None,
            };
            if let Some(w) = wall {
                tokio::time::sleep_until(wall0 + Duration::from_secs_f64(w)).await;
            }
            let t = config.day_start_s + offset;
            for van in (s..devices.len()).step_by(slices) {
                let truth_buf = truth.as_ref().map(|_| &mut lines);
                devices[van].tick(t, &contexts[van], &clock, &mut out, truth_buf);
            }
            for o in out.drain(..) {
                sink.send(o).await?;
            }
            if let Some(w) = truth.as_mut() {
                for l in lines.drain(..) {
                    write_line(w, &l, &config.truth)?;
                }
            }
            // Paced: fixes are posted within a second of being taken, not
            // held to the end of the interval (at most one request a second
            // per supplier, well under the engine's default rate limit).
            if config.pace != Pace::Load
                && sink
                    .http_since
                    .is_some_and(|t| t.elapsed() >= Duration::from_secs(1))
            {
                sink.flush_http().await?;
            }
        }
        sink.flush_http().await?;
        k += 1;
        if let Some(b) = &bar {
            b.set_position(k);
            b.set_message(format!(
                "{} points, {} acked",
                sink.summary.points,
                acked.load(Ordering::Relaxed)
            ));
        }
    }
    for d in &mut devices {
        d.flush(&mut out);
    }
    for o in out.drain(..) {
        sink.send(o).await?;
    }
    sink.flush_http().await?;
    if let Some(w) = truth.as_mut() {
        w.flush()
            .map_err(|e| SimError::Io("ground truth".into(), e))?;
    }
    // Wait for every acknowledgement.
    if let Some(tx) = sink.http.take() {
        drop(tx);
        for w in http_workers {
            let _ = w.await;
        }
    } else {
        let deadline = Instant::now() + Duration::from_secs(300);
        while acked.load(Ordering::Relaxed) < sink.published && Instant::now() < deadline {
            if let Some(why) = fatal.get() {
                return Err(SimError::Broker(why));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if acked.load(Ordering::Relaxed) < sink.published {
            tracing::warn!(
                published = sink.published,
                acked = acked.load(Ordering::Relaxed),
                "not every publish was acknowledged within 300 s"
            );
        }
    }
    let send_seconds = t_first.elapsed().as_secs_f64();
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let end =
        DateTime::<Utc>::from_timestamp_millis(clock.ms(config.day_start_s + k as f64 * interval))
            .unwrap_or(start);
    let mut summary = std::mem::take(&mut sink.summary);
    summary.moves_registered = Some(moves_registered);
    summary.span = (start, end);
    summary.id_prefix = id_prefix;
    summary.http_rejected = http_rejected.lock().map(|m| m.clone()).unwrap_or_default();
    if let Some(why) = fatal.get() {
        return Err(if http {
            SimError::Engine(why)
        } else {
            SimError::Broker(why)
        });
    }
    summary.transport = if http { "http" } else { "mqtt" };
    summary.registrations = (
        plan.vans
            .first()
            .map(|v| v.vehicle.to_string())
            .unwrap_or_default(),
        plan.vans
            .last()
            .map(|v| v.vehicle.to_string())
            .unwrap_or_default(),
    );
    summary.rejections = watch.check(&summary.expected_dead_letters, true).await;
    summary.rejections_unchecked = match (&summary.rejections, unchecked) {
        (Some(_), _) => None,
        (None, Some(why)) => Some(why),
        (None, None) => Some("the engine's /metrics could not be read".into()),
    };

    if let Some(ws) = ws {
        // Let the last frames arrive.
        // Let the last frames arrive: wait while the backlog still drains
        // (stop after 3 s without progress, or 15 minutes).
        let (mut last, mut still) = (usize::MAX, 0);
        let deadline = Instant::now() + Duration::from_secs(900);
        while let Some(l) = &log {
            let n = l_pending(l);
            still = if n == last { still + 1 } else { 0 };
            if n == 0 || still >= 3 || Instant::now() > deadline {
                break;
            }
            last = n;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let stats = ws.finish().await?;
        let mut report = LoadReport {
            transport: summary.transport.into(),
            vehicles: config.vehicles,
            points_sent: summary.points,
            messages: summary.messages,
            acknowledged: acked.load(Ordering::Relaxed),
            send_seconds,
            throughput_pps: summary.points as f64 / send_seconds.max(1e-9),
            store_check: "none".into(),
            expected_dead_letters: summary.expected_dead_letters.clone(),
            ..Default::default()
        };
        report.add_ws(&stats, sink.expected_live, t_first);
        if let (Some(url), Some(ids)) = (&config.database_url, &sink.expected_ids) {
            let margin = chrono::Duration::minutes(10);
            let (lost, dup) = check_store(url, start - margin, end + margin, ids).await?;
            report.lost = Some(lost);
            report.duplicated_in_store = Some(dup);
            report.store_check = "database".into();
        }
        summary.report = Some(report);
    }
    Ok(summary)
}

/// Watches what the engine rejects while a run goes on: warns (once per
/// reason, on stderr) as soon as rejections exceed what the run provoked.
struct RejectionWatch {
    /// The engine to read `/metrics` from (MQTT runs).
    api: Option<String>,
    /// Its rejections when the run began.
    before: Option<BTreeMap<String, u64>>,
    /// The rejections of this run's 202 replies (HTTP runs).
    http: Option<Arc<std::sync::Mutex<BTreeMap<String, u64>>>>,
    next: tokio::time::Instant,
    warned: HashSet<String>,
}

impl RejectionWatch {
    /// Every [`ANSWER_WITHIN`] (or now, when `last`): what was rejected so far.
    async fn check(
        &mut self,
        expected: &BTreeMap<String, u64>,
        last: bool,
    ) -> Option<crate::report::Rejections> {
        if !last && tokio::time::Instant::now() < self.next {
            return None;
        }
        self.next = tokio::time::Instant::now() + ANSWER_WITHIN;
        let rejections = if let Some(map) = &self.http {
            let observed = map.lock().map(|m| m.clone()).unwrap_or_default();
            crate::report::Rejections::new("replies", observed, expected)
        } else {
            let (Some(api), Some(before)) = (&self.api, &self.before) else {
                return None;
            };
            // While the run goes on, the engine may not have read what was
            // just sent (observed lags expected); at the end, wait for it.
            let after = if last {
                rejected_when_settled(api, before, expected).await.ok()?
            } else {
                rejected_now(api).await.ok()?
            };
            crate::report::Rejections::new(
                "metrics",
                crate::report::delta(before, &after),
                expected,
            )
        };
        for (reason, n) in &rejections.unexpected {
            if self.warned.insert(reason.clone()) {
                let w = format!(
                    "warning: the engine rejected {n} unexpected {reason} so far: {}",
                    crate::report::hint(reason)
                );
                eprintln!("{w}");
            }
        }
        Some(rejections)
    }
}

fn l_pending(log: &SendLog) -> usize {
    log.pending()
}

fn write_line<T: serde::Serialize>(
    w: &mut std::io::BufWriter<std::fs::File>,
    line: &T,
    path: &Option<PathBuf>,
) -> Result<(), SimError> {
    let name = || {
        path.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    serde_json::to_writer(&mut *w, line).map_err(|e| SimError::Report(e.to_string()))?;
    w.write_all(b"\n").map_err(|e| SimError::Io(name(), e))
}

/// A ground-truth line, re-exported for readers of the file.
pub type Truth = TruthLine;
