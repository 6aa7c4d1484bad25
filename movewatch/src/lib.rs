//! The movewatch engine, wired: broker → ingest → tracker (+ geofence) → gateway and store.
//! `main.rs` is the command line around [`Engine::start`] and [`replay::Replay`].

mod cluster;
pub mod eta_eval;
mod metrics;
mod persist;
mod recovery;
pub mod register;
pub mod replay;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use geofence::FenceSet;
use ingest::Suppliers;
use ingest::broker::{ENGINE_USER, EmbeddedBrokerConfig, start_embedded_broker};
use ingest::mqtt::{MqttSource, MqttSourceConfig, spawn_mqtt_source};
use model::config::{Config, parse_mqtt_url};
use model::{IngestBatch, Site, TransitionKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracker::moves::{MoveBook, MovesConfig};
use tracker::{Tracker, TrackerConfig};
use ws_gateway::{Auth, Gateway, Hub, Readiness};

/// Batches between intake and the tracker, and between the tracker and the store.
/// With the broker's in-flight window this bounds what the engine holds.
const PIPELINE_CAPACITY: usize = 1024;
/// The most intake batches the pipeline takes in one round.
const PIPELINE_ROUND: usize = 64;

/// A cluster node's broker connection and its command bus.
type ClusterLink = (Arc<lapin::Connection>, Arc<engine::cluster::CommandBus>);

/// The shipped sites, used when the configured default file is absent.
const SHIPPED_SITES: &str = include_str!("../../data/sites.csv");

/// A running engine.
pub struct Engine {
    /// Where HTTP and WebSocket listen.
    pub http_addr: SocketAddr,
    /// The broker the engine subscribes to (embedded or external).
    pub mqtt_addr: (String, u16),
    /// Whether the broker is the embedded one.
    pub embedded_broker: bool,
    /// On a RabbitMQ cluster: this node's name (devices publish to the
    /// cluster's MQTT listeners, not to this process).
    pub cluster_node: Option<String>,
    /// Live state.
    pub tracker: Arc<Tracker>,
    /// The store.
    pub store: store::Store,
    /// The loaded sites.
    pub sites: Arc<Vec<Site>>,
    /// The engine's read view (moves, alerts and fences as the partitions
    /// last published them).
    pub view: engine::EngineView,
    /// The MQTT source (none on a cluster: partitions are consumed from
    /// the cluster's queues).
    mqtt: Option<MqttSource>,
    /// This node's part in the cluster.
    joined: Option<cluster::Joined>,
    /// Whether the broker (or the cluster's connection) is up.
    broker_ready: watch::Receiver<bool>,
    hub: Hub,
    /// Turns true when a graceful shutdown begins: `/tracks` answers 503 and
    /// the pipeline closes its input and drains.
    stopping: watch::Sender<bool>,
    /// Tells the HTTP server to finish its requests in flight and stop.
    http_done: Option<tokio::sync::oneshot::Sender<()>>,
    shutdown_timeout: std::time::Duration,
    /// The partitions, their splitter and the commander.
    running: engine::Running,
    writer: JoinHandle<()>,
    server: JoinHandle<()>,
    /// Maintenance and the alert ticker.
    background: Vec<JoinHandle<()>>,
}

/// What a graceful shutdown ([`Engine::shutdown`]) did.
#[derive(Debug, Clone)]
pub struct ShutdownReport {
    /// How long it took.
    pub elapsed: std::time::Duration,
    /// The bound it had (`[ingest] shutdown_timeout_secs`).
    pub bound: std::time::Duration,
    /// WebSocket clients connected when it began (each sent a 1001 close).
    pub websockets: usize,
    /// WebSocket clients still connected at the end.
    pub websockets_left: usize,
    /// The stages that did not finish within the bound (empty: a clean stop).
    pub unfinished: Vec<&'static str>,
    /// Whether this was a cluster node (it handed its partitions over).
    pub cluster: bool,
}

impl ShutdownReport {
    /// Whether every stage finished within the bound.
    pub fn is_clean(&self) -> bool {
        self.unfinished.is_empty()
    }
}

impl std::fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "shutdown took {:.1} s (bound {} s); {} WebSocket client(s) closed",
            self.elapsed.as_secs_f64(),
            self.bound.as_secs(),
            self.websockets - self.websockets_left.min(self.websockets),
        )?;
        if self.websockets_left > 0 {
            write!(f, ", {} still connected", self.websockets_left)?;
        }
        if self.is_clean() {
            write!(
                f,
                "; intake stopped, pipeline drained, store flushed, acks sent, {}",
                if self.cluster {
                    "partitions handed over"
                } else {
                    "MQTT disconnected"
                }
            )
        } else {
            write!(f, "; NOT finished: {}", self.unfinished.join(", "))
        }
    }
}

/// Loads every configured sites file (`.csv` sites, `.geojson` / `.json`
/// polygon fences) into the fence set; any error fails the whole load, naming
/// the file and the row or feature. When the only file is the default
/// `data/sites.csv` and it is absent, the sites shipped with movewatch are
/// used instead (with a warning).
pub fn load_fences(config: &Config) -> anyhow::Result<FenceSet> {
    let files = &config.sites.files;
    if files.len() == 1 && files[0] == Path::new("data/sites.csv") && !files[0].exists() {
        tracing::warn!(
            "{} not found; using the sites shipped with movewatch",
            files[0].display()
        );
        let sites = model::site::parse_sites_csv(SHIPPED_SITES, "shipped sites.csv")?;
        return FenceSet::new(sites, Vec::new()).context("the shipped sites.csv is invalid");
    }
    FenceSet::load(files).context("cannot load the sites ([sites] files)")
}

/// Applies the fences replaced at run time (`PUT /api/sites/{id}/fence`,
/// kept in the store) over the fences loaded from the sites files; returns
/// how many were applied. A stored fence of a site that the files no longer
/// have is skipped with a warning; one that cannot be read back stops the
/// start (it was checked when stored, so the store is damaged).
pub async fn apply_stored_fences(
    store: &store::Store,
    fences: &mut FenceSet,
) -> anyhow::Result<usize> {
    let stored = store
        .site_fences()
        .await
        .context("cannot read the replaced fences from the store")?;
    let mut applied = 0;
    for record in stored {
        let Some((lat, lon)) = fences.get(&record.site).map(|s| (s.site.lat, s.site.lon)) else {
            tracing::warn!(site = %record.site, "a stored fence is for a site that is not in the sites files; skipped");
            continue;
        };
        let fence = geofence::fence_from_json(&record.fence, lat, lon).with_context(|| {
            format!(
                "the stored fence of site {} cannot be read back",
                record.site
            )
        })?;
        fences
            .replace(&record.site, fence)
            .with_context(|| format!("cannot apply the stored fence of site {}", record.site))?;
        tracing::info!(site = %record.site, updated_at = %model::format_ts(&record.updated_at), "stored fence applied over the sites files");
        applied += 1;
    }
    Ok(applied)
}

/// The configured sites (see [`load_fences`]), without their fences.
pub fn load_sites(config: &Config) -> anyhow::Result<Vec<Site>> {
    Ok(load_fences(config)?
        .iter()
        .map(|s| s.site.clone())
        .collect())
}

/// How long a cluster node may be cut off from its broker before it stops.
pub const CLUSTER_LOST_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// How often the time-based alerts (`gps_gap`, `device_silent`, `stopped`) are checked.
pub const ALERT_TICK: std::time::Duration = std::time::Duration::from_secs(5);

impl Engine {
    /// Starts everything the config describes. With `mqtt.url` unset the
    /// embedded broker starts on `mqtt.listen`, which must be free.
    pub async fn start(config: Config) -> anyhow::Result<Engine> {
        let cluster_url = config.cluster.amqp_url.clone();
        if cluster_url.is_some() && !config.store.url.starts_with("postgres") {
            anyhow::bail!(
                "[cluster] amqp_url is set, but [store] url is not PostgreSQL: the engine nodes of a cluster share one store (url = \"postgres://user@host/db\")"
            );
        }
        let metrics = metrics::prometheus()?;
        let fences = load_fences(&config)?;
        let sites = Arc::new(fences.iter().map(|s| s.site.clone()).collect::<Vec<_>>());
        let suppliers = Arc::new(
            Suppliers::from_config(&config.suppliers)
                .claiming_on_first_report(config.fleet.claim_on_first_report),
        );
        if suppliers.is_open() {
            tracing::warn!("no [[suppliers]] configured: accepting points from any supplier");
        }

        let store = store::Store::open(&config.store.url)
            .await
            .with_context(|| format!("cannot open the store at {}", config.store.url))?
            // Notifications are queued for the webhooks with what caused them.
            .with_webhooks(&config.webhooks);
        // Fences the control room replaced while running, over the files' ones.
        let mut fences = fences;
        let replaced = apply_stored_fences(&store, &mut fences).await?;
        let tracker = Arc::new(Tracker::new(TrackerConfig::from(&config.ingest)));
        let registered = register::load_register(&config, &store, &suppliers).await?;
        let claims = register::spawn_claim_writer(store.clone(), &suppliers);
        let recovered = recovery::recover(&store, &sites).await?;
        if suppliers.claims_on_first_report() {
            tracing::warn!(
                "[fleet] claim_on_first_report is on: the first report for an unregistered vehicle claims it (development and demos only)"
            );
            // Vehicles reported before claims were stored are theirs still
            // (and their claims are stored now).
            for p in &recovered.state.positions {
                let _ = suppliers.check_vehicle(p.vehicle, p.supplier);
            }
        }
        tracker.restore(recovered.state.positions.iter().cloned());

        let (stopping, stopping_rx) = watch::channel(false);
        let (store_tx, store_rx) = mpsc::channel::<IngestBatch>(PIPELINE_CAPACITY);
        let (store_healthy_tx, store_healthy) = watch::channel(true);
        let writer = store::spawn_writer(
            store.clone(),
            store_rx,
            store::WriterConfig::default(),
            store_healthy_tx,
        );

        let hub = Hub::new();
        let partitions = match (&cluster_url, config.cluster.partitions) {
            (_, Some(n)) if n > 0 => n,
            // A cluster's partition count is fixed up front (every node and
            // the queues agree on it): the contract's default.
            (Some(_), _) => 16,
            (None, _) => match config.engine.partitions {
                0 => engine::EngineConfig::default().partitions,
                n => n,
            },
        };
        let node = config.cluster.node.clone();
        let (membership_tx, membership) = watch::channel(Arc::new(engine::cluster::Membership {
            node: node.clone(),
            nodes: vec![(
                node.clone(),
                if cluster_url.is_some() {
                    Vec::new()
                } else {
                    (0..partitions).collect()
                },
            )],
        }));
        // On a cluster: the queues and the register's bindings first, and
        // this node's queue on the command bus, before anything is served.
        let (amqp, persist, announce): (Option<ClusterLink>, Arc<dyn engine::Persist>, _) =
            match &cluster_url {
                None => (None, Arc::new(persist::StorePersist(store.clone())), None),
                Some(url) => {
                    let connection = cluster::connect(url).await?;
                    let channel = cluster::prepare(&connection, &suppliers, partitions).await?;
                    let bus = engine::cluster::CommandBus::open(&connection, &node)
                        .await
                        .context("cannot open the cluster's command bus")?;
                    (
                        Some((connection, bus.clone())),
                        Arc::new(cluster::ClusterPersist {
                            inner: persist::StorePersist(store.clone()),
                            channel,
                            partitions,
                        }),
                        Some(bus as Arc<dyn engine::Announce>),
                    )
                }
            };
        let inside = recovered
            .state
            .crossings
            .iter()
            .filter(|c| c.kind == TransitionKind::Enter)
            .count();
        let open_moves = recovered.state.open_moves.len();
        let eta = recovered.eta;
        // On a cluster every node's frames go to every other node's clients.
        let (sink, live): (Arc<dyn engine::Sink>, _) = match &amqp {
            None => (Arc::new(hub.clone()), None),
            Some((connection, _)) => {
                let live = ws_gateway::live::start_live(connection.clone(), &node, hub.clone())
                    .await
                    .context("cannot open the cluster's live exchange")?;
                (Arc::new(live.sink.clone()), Some(live))
            }
        };
        // Claims and handovers for the other nodes' partitions.
        let (remote, remote_rx) = match &amqp {
            Some(_) => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let book_sites = sites.clone();
        let owned = cluster_url.is_none();
        if owned {
            ::metrics::gauge!("movewatch_cluster_partitions_owned").set(partitions as f64);
        }
        let running = engine::start(engine::Start {
            config: engine::EngineConfig {
                partitions,
                capacity: PIPELINE_CAPACITY,
                round: PIPELINE_ROUND,
                tick: ALERT_TICK,
                ..Default::default()
            },
            tracker: tracker.clone(),
            fences,
            fence_rules: geofence::EngineConfig::default(),
            book: Arc::new(move || MoveBook::new(&book_sites, MovesConfig::default(), eta.clone())),
            owned,
            recovered: recovered.state,
            sink,
            store: store_tx,
            persist,
            suppliers: suppliers.clone(),
            stopping: stopping_rx.clone(),
            membership,
            announce,
            remote,
        });
        let ingest_tx = running.input.clone();

        // Devices connect to `mqtt_host:mqtt_port`; the engine's own client to
        // `engine_broker`, which differs when the topic guard fronts the broker.
        let (mqtt_host, mqtt_port, engine_broker, embedded_broker, credentials) =
            match &config.mqtt.url {
                // Devices publish to the cluster's MQTT listeners.
                _ if cluster_url.is_some() => (String::new(), 0, (String::new(), 0), false, None),
                Some(url) => {
                    let (host, port) = parse_mqtt_url(url).map_err(anyhow::Error::msg)?;
                    let creds = config
                        .mqtt
                        .username
                        .clone()
                        .zip(config.mqtt.password.clone());
                    (host.clone(), port, (host, port), false, creds)
                }
                None => {
                    let mut users: std::collections::HashMap<String, String> = config
                        .suppliers
                        .iter()
                        .filter_map(|s| Some((s.id.to_string(), s.mqtt_password.clone()?)))
                        .collect();
                    let creds = if users.is_empty() {
                        None
                    } else {
                        let engine_password = random_token(32);
                        users.insert(ENGINE_USER.to_owned(), engine_password.clone());
                        Some((ENGINE_USER.to_owned(), engine_password))
                    };
                    let broker = start_embedded_broker(EmbeddedBrokerConfig {
                        listen: config.mqtt.listen,
                        users,
                        max_inflight: 1000,
                        engine_client_id: config.mqtt.client_id.clone(),
                        // The guard hands the devices' messages to the pipeline
                        // and acknowledges each once it is committed.
                        intake: Some(ingest::guard::DeviceIntake {
                            out: ingest_tx.clone(),
                            suppliers: suppliers.clone(),
                        }),
                    })?;
                    (
                        broker.addr.ip().to_string(),
                        broker.addr.port(),
                        (
                            broker.engine_addr.ip().to_string(),
                            broker.engine_addr.port(),
                        ),
                        true,
                        creds,
                    )
                }
            };

        let http_listener = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen for HTTP on {}: set [http] listen to a free address",
                    config.http.listen
                )
            })?;
        let http_addr = http_listener.local_addr()?;

        // Partitions ahead and retention, hourly (the first pass runs now).
        let maintenance = store::spawn_maintenance(
            store.clone(),
            store::MaintenanceConfig {
                retention_days: config.store.retention_days,
                ..Default::default()
            },
        );

        // Webhooks: delivered from the store's outbox by their own task, which
        // intake never waits on; aborted at shutdown, undelivered rows stay stored.
        let webhooks = if config.webhooks.is_empty() {
            None
        } else {
            Some(notify::spawn_dispatcher(
                store.clone(),
                notify::DeliveryConfig::new(&config.webhooks, &config.webhook_delivery),
            )?)
        };

        let mqtt = match &amqp {
            Some(_) => None,
            None => Some(spawn_mqtt_source(
                MqttSourceConfig {
                    host: engine_broker.0,
                    port: engine_broker.1,
                    client_id: config.mqtt.client_id.clone(),
                    credentials,
                },
                suppliers.clone(),
                ingest_tx.clone(),
            )?),
        };
        let broker_ready = match (&mqtt, &amqp) {
            (Some(m), _) => m.connected.clone(),
            (None, Some((connection, _))) => cluster::readiness(connection.clone()),
            (None, None) => watch::channel(false).1,
        };
        let tracks_forwarder = match &amqp {
            None => None,
            Some((connection, _)) => {
                Some(cluster::spawn_tracks_forwarder(connection, ingest_tx.clone()).await?)
            }
        };
        let joined = match amqp {
            None => None,
            Some((connection, bus)) => {
                let bus_task = bus
                    .apply(running.commands.clone(), running.view.clone())
                    .await
                    .context("cannot consume the cluster's command bus")?;
                let relay = remote_rx.map(|rx| bus.clone().relay(rx));
                Some(
                    cluster::join(cluster::JoinParts {
                        connection,
                        node: node.clone(),
                        running: running.control(),
                        input: ingest_tx.clone(),
                        suppliers: suppliers.clone(),
                        tracker: tracker.clone(),
                        store: store.clone(),
                        membership: membership_tx,
                        bus_task,
                        relay,
                        live,
                    })
                    .await?,
                )
            }
        };
        let auth = Arc::new(Auth::from_config(&config.tokens));
        let register_routes = ws_gateway::register::router(
            auth.clone(),
            suppliers.clone(),
            store.clone(),
            running.commands.clone(),
        );
        let gateway = Gateway {
            view: running.view.clone(),
            commands: running.commands.clone(),
            hub: hub.clone(),
            auth: auth.clone(),
            sites: sites.clone(),
            suppliers: suppliers.clone(),
            store: store.clone(),
            node: config.cluster.node.clone(),
            readiness: Readiness {
                broker: broker_ready.clone(),
                store: store_healthy,
            },
            metrics,
        };
        // On a cluster a batch goes to its vehicles' owners through their
        // queues, as the devices' MQTT messages do.
        let tracks_out = match &tracks_forwarder {
            Some((tx, _)) => tx.clone(),
            None => ingest_tx,
        };
        let tracks = ingest::http::tracks_router(
            suppliers,
            tracks_out,
            ingest::http::RateLimit::from_config(&config.ingest),
            stopping_rx,
        );
        let app = ws_gateway::router(gateway)
            .merge(register_routes)
            .merge(tracks);
        let (http_done, http_done_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            // With the peer's address (a benchmark's send observer tells clients apart by it).
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let serving = axum::serve(http_listener, app).with_graceful_shutdown(async move {
                // Err: the engine was dropped without a shutdown; serve on.
                if http_done_rx.await.is_err() {
                    std::future::pending::<()>().await;
                }
            });
            if let Err(e) = serving.await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        });
        tracing::info!(%http_addr, mqtt = %format!("{mqtt_host}:{mqtt_port}"), sites = sites.len(), vehicles = tracker.len(), partitions, registered, open_moves, inside_fences = inside, replaced_fences = replaced, "movewatch engine started");
        Ok(Engine {
            http_addr,
            mqtt_addr: (mqtt_host, mqtt_port),
            embedded_broker,
            cluster_node: joined.as_ref().map(|_| node.clone()),
            tracker,
            store,
            sites,
            view: running.view.clone(),
            mqtt,
            joined,
            broker_ready,
            hub,
            stopping,
            http_done: Some(http_done),
            shutdown_timeout: std::time::Duration::from_secs(config.ingest.shutdown_timeout_secs),
            running,
            writer,
            server,
            background: [maintenance, claims]
                .into_iter()
                .chain(webhooks)
                .chain(tracks_forwarder.map(|(_, task)| task))
                .collect(),
        })
    }

    /// What a vehicle's partition knows of it: the sites it is inside, its
    /// ETA model's learning (tests and diagnostics).
    pub async fn inspect(&self, vehicle: model::VehicleId) -> Option<engine::Inspection> {
        self.running.inspect(vehicle).await
    }

    /// Resolves once a cluster node has been cut off from its RabbitMQ
    /// cluster for [`CLUSTER_LOST_AFTER`] (never on one machine): its
    /// partitions have gone to the other nodes, and it does not reconnect
    /// by itself (`serve` stops, for a supervisor to restart it).
    pub fn cluster_lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let ready = self.joined.as_ref().map(|_| self.broker_ready.clone());
        async move {
            let Some(mut ready) = ready else {
                return std::future::pending().await;
            };
            loop {
                if ready.wait_for(|up| !*up).await.is_err() {
                    return std::future::pending().await;
                }
                let back = tokio::time::timeout(CLUSTER_LOST_AFTER, ready.wait_for(|up| *up)).await;
                if back.is_err() {
                    return;
                }
            }
        }
    }

    /// The fan-out hub (benchmarks install a send observer on it).
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Whether the engine's MQTT client is connected now.
    pub fn mqtt_connected(&self) -> bool {
        self.mqtt.as_ref().is_some_and(|m| *m.connected.borrow())
    }

    /// Stops the engine's tasks at once, committing and acknowledging
    /// nothing more (tests; the embedded broker lives until the process ends).
    /// [`Engine::shutdown`] is the graceful stop.
    pub fn stop(self) {
        if let Some(mqtt) = &self.mqtt {
            mqtt.poll_task.abort();
            mqtt.ack_task.abort();
        }
        if let Some(joined) = &self.joined {
            joined.abort();
        }
        self.running.abort();
        for t in [self.writer, self.server]
            .into_iter()
            .chain(self.background)
        {
            t.abort();
        }
    }

    /// Stops gracefully within `[ingest] shutdown_timeout_secs`:
    ///
    /// 1. intake stops: MQTT messages are no longer taken (a later one is
    ///    left unacknowledged for redelivery), `POST /tracks` answers 503;
    ///    every WebSocket client is closed with 1001 "server shutting down";
    /// 2. the pipeline drains into the store writer, which commits every
    ///    pending batch (completing their acks and `/tracks` replies);
    /// 3. the ack task sends the last acks, then the MQTT session ends with
    ///    a DISCONNECT; the HTTP server finishes its requests in flight.
    ///
    /// Past the bound whatever is left is aborted, and the report names it:
    /// an uncommitted batch is unacknowledged, so the broker redelivers it.
    pub async fn shutdown(mut self) -> ShutdownReport {
        use std::time::Duration;
        let started = tokio::time::Instant::now();
        let bound = self.shutdown_timeout;
        let deadline = started + bound;
        let websockets = self.hub.receiver_count();
        tracing::info!(
            bound_s = bound.as_secs(),
            websockets,
            "shutting down: intake stopped, draining"
        );
        let mut unfinished = Vec::new();
        // A cluster node first hands its partitions over: each drained,
        // committed and acknowledged, and the others told to take them now.
        if let Some(joined) = &mut self.joined
            && !joined.node.leave(bound).await
        {
            unfinished.push("partition handover");
        }
        self.stopping.send_replace(true);
        if let Some(mqtt) = &self.mqtt {
            mqtt.stop_intake();
        }
        self.hub.close_clients();

        if !self.running.drained(deadline).await {
            unfinished.push("pipeline drain");
        }
        if !finished_by(deadline, &mut self.writer).await {
            unfinished.push("store flush");
        }
        if let Some(mqtt) = &mut self.mqtt {
            if !finished_by(deadline, &mut mqtt.ack_task).await {
                unfinished.push("MQTT acks");
            }
            // Queued behind every ack, so it goes out after them.
            let disconnect = tokio::time::timeout_at(deadline, mqtt.disconnect()).await;
            if !matches!(disconnect, Ok(Ok(())))
                || !finished_by(deadline, &mut mqtt.poll_task).await
            {
                unfinished.push("MQTT disconnect");
            }
        }
        if let Some(done) = self.http_done.take() {
            let _ = done.send(());
        }
        if !finished_by(deadline, &mut self.server).await {
            unfinished.push("HTTP requests in flight");
        }
        // The close frames are sent by each client's own task.
        while self.hub.receiver_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let websockets_left = self.hub.receiver_count();
        if websockets_left > 0 {
            unfinished.push("WebSocket close");
        }
        let report = ShutdownReport {
            elapsed: started.elapsed(),
            bound,
            websockets,
            websockets_left,
            unfinished,
            cluster: self.joined.is_some(),
        };
        self.stop();
        report
    }
}

/// Whether the task ended (however) before `deadline`.
async fn finished_by(deadline: tokio::time::Instant, task: &mut JoinHandle<()>) -> bool {
    tokio::time::timeout_at(deadline, task).await.is_ok()
}

/// A random token of `len` URL-safe characters.
pub fn random_token(len: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}
