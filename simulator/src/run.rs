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

use crate::SimError;
use crate::emit::{Body, Clock, Device, DeviceContext, FaultConfig, Kind, Outgoing, TruthLine};
use crate::http::Client;
use crate::plan::{DayPlan, PlanConfig, plan_day};
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
}

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
    /// The load report, when measured.
    pub report: Option<LoadReport>,
}

/// Plans the day for a run (also used by tests to compare days).
pub fn plan_for(
    config: &RunConfig,
    sites: &[Site],
    start: DateTime<Utc>,
) -> Result<DayPlan, SimError> {
    plan_day(
        sites,
        &PlanConfig {
            vehicles: config.vehicles,
            seed: config.seed,
            date: start.date_naive(),
            breakdown_rate: config.faults.breakdown_rate,
        },
    )
}

struct Sink {
    mqtt: HashMap<SupplierId, Vec<AsyncClient>>,
    http: Option<mpsc::Sender<(SupplierId, Vec<u8>, u64)>>,
    http_batch: HashMap<SupplierId, (Vec<String>, u64)>,
    published: u64,
    log: Option<Arc<SendLog>>,
    expected_ids: Option<HashSet<String>>,
    expected_live: u64,
    summary: RunSummary,
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
            let entry = self.http_batch.entry(out.supplier).or_default();
            entry.0.extend(items);
            entry.1 += n;
            if entry.0.len() >= 500 {
                let (items, _) = std::mem::take(entry);
                let body = crate::emit::json_array(items.iter().map(String::as_str));
                tx.send((out.supplier, body, 0))
                    .await
                    .map_err(|_| SimError::Report("HTTP workers stopped".into()))?;
            }
            return Ok(());
        }
        let pool = self
            .mqtt
            .get(&out.supplier)
            .ok_or_else(|| SimError::Report(format!("no connection for {}", out.supplier)))?;
        let client = &pool[out.van as usize % pool.len()];
        client
            .publish(out.topic, QoS::AtLeastOnce, false, out.body.mqtt_payload())
            .await?;
        self.published += 1;
        Ok(())
    }

    async fn flush_http(&mut self) -> Result<(), SimError> {
        if let Some(tx) = &self.http {
            for (supplier, (items, _)) in self.http_batch.drain() {
                if items.is_empty() {
                    continue;
                }
                let body = crate::emit::json_array(items.iter().map(String::as_str));
                tx.send((supplier, body, 0))
                    .await
                    .map_err(|_| SimError::Report("HTTP workers stopped".into()))?;
            }
        }
        Ok(())
    }
}

fn mqtt_pool(
    host: &str,
    port: u16,
    passwords: &HashMap<String, String>,
    suppliers: &[SupplierId],
    connections: usize,
    seed: u64,
    acked: Arc<AtomicU64>,
) -> HashMap<SupplierId, Vec<AsyncClient>> {
    let run = crate::random_suffix();
    let mut pools = HashMap::new();
    for supplier in suppliers {
        let mut pool = Vec::new();
        for c in 0..connections.max(1) {
            let mut options = MqttOptions::new(
                format!("movewatch-sim-{seed}-{run}-{supplier}-{c}"),
                host,
                port,
            );
            options
                .set_keep_alive(Duration::from_secs(30))
                .set_max_packet_size(1024 * 1024, 1024 * 1024)
                .set_inflight(500);
            if let Some(pw) = passwords.get(supplier.as_str()) {
                options.set_credentials(supplier.as_str(), pw.clone());
            }
            // Bounded: a full request queue makes `publish` wait (back-pressure
            // on the simulator, nothing dropped).
            let (client, mut eventloop) = AsyncClient::new(options, 1000);
            let acked = acked.clone();
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if matches!(e, rumqttc::ConnectionError::RequestsDone) {
                                return;
                            }
                            tracing::warn!(error = %e, "simulator MQTT connection lost; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
            });
            pool.push(client);
        }
        pools.insert(*supplier, pool);
    }
    pools
}

/// Registers every move with `PUT /api/moves/{id}`; stops (warning once) if
/// the engine does not have the route (404/405) or refuses the token.
async fn register_moves(api: &str, token: &str, plan: &DayPlan) -> Result<usize, String> {
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
        let body = serde_json::to_vec(m).unwrap_or_default();
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

    let moves_registered = match (&config.api, &config.token, config.register_moves) {
        (Some(api), Some(token), true) => register_moves(api, token, &plan).await,
        (_, _, true) => Err("no --http-url or --token: moves not registered".into()),
        _ => Err("move registration off".into()),
    };

    let log = config.measure.then(|| Arc::new(SendLog::default()));
    let vans_by_reg: Arc<HashMap<String, u32>> = Arc::new(
        plan.vans
            .iter()
            .enumerate()
            .map(|(i, v)| (v.vehicle.to_string(), i as u32))
            .collect(),
    );
    let ws = match (&log, &config.api, &config.token) {
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

    let acked = Arc::new(AtomicU64::new(0));
    let suppliers: Vec<SupplierId> = by_supplier.keys().copied().collect();
    let http_rejected = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u64>::new()));
    let mut http_workers = Vec::new();
    let mut sink = Sink {
        mqtt: HashMap::new(),
        http: None,
        http_batch: HashMap::new(),
        published: 0,
        log: log.clone(),
        expected_ids: config.database_url.as_ref().map(|_| HashSet::new()),
        expected_live: 0,
        summary: RunSummary::default(),
    };
    match &config.transport {
        Transport::Mqtt {
            host,
            port,
            passwords,
            connections,
        } => {
            sink.mqtt = mqtt_pool(
                host,
                *port,
                passwords,
                &suppliers,
                *connections,
                config.seed,
                acked.clone(),
            );
        }
        Transport::Http {
            addr,
            keys,
            connections,
        } => {
            // Bounded: when the engine is slow, the producer waits.
            let (tx, rx) = async_channel::<(SupplierId, Vec<u8>, u64)>(connections.max(&1) * 2);
            for _ in 0..(*connections).max(1) {
                let rx = rx.clone();
                let mut client = Client::new(addr);
                let keys = keys.clone();
                let (acked, rejected) = (acked.clone(), http_rejected.clone());
                http_workers.push(tokio::spawn(async move {
                    while let Ok((supplier, body, _)) = recv(&rx).await {
                        let key = keys.get(supplier.as_str()).cloned().unwrap_or_default();
                        match client
                            .request("POST", "/tracks", &[("X-API-Key", &key), ("Content-Type", "application/json")], &body)
                            .await
                        {
                            Ok(r) if r.status == 202 => {
                                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                                acked.fetch_add(v["accepted"].as_u64().unwrap_or(0), Ordering::Relaxed);
                                if let (Some(list), Ok(mut map)) = (v["rejected"].as_array(), rejected.lock()) {
                                    for r in list {
                                        let reason = r["reason"].as_str().unwrap_or("?").to_owned();
                                        *map.entry(reason).or_default() += 1;
                                    }
                                }
                            }
                            Ok(r) => tracing::warn!(status = r.status, body = %String::from_utf8_lossy(&r.body), "POST /tracks refused"),
                            Err(e) => tracing::warn!(error = %e, "POST /tracks failed"),
                        }
                    }
                }));
            }
            sink.http = Some(tx);
        }
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
    while ticks.is_none_or(|n| k < n) {
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
