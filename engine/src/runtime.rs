//! The partitions at work: one task per partition on its own bounded
//! channel, a splitter in front of them, a commander for bookings and
//! fences, and each partition's alert ticker.
//!
//! Channels, and who waits or drops when a consumer is slow:
//! - intake → splitter: bounded ([`EngineConfig::capacity`]); intake waits
//!   (and the broker's window closes), nothing is dropped;
//! - splitter → each partition: bounded; the splitter waits;
//! - partition → store writer: bounded; the partition waits;
//! - partition → partition (claims, handovers) and commander → partitions
//!   (bookings, fences): unbounded, because two partitions must never wait
//!   on each other (a cycle could deadlock). They carry one message per
//!   change of a move's vehicle or per command, never per point, so they
//!   stay small; their depth is a metric (`movewatch_engine_peer_depth`).
//! - frames go to the [`Sink`], which never waits on a client (the hub
//!   drops a slow client, not a frame for the others).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use geofence::{FenceSet, GeofenceEngine};
use model::wire::Frame;
use model::{CommitToken, Derived, IngestBatch, SiteId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracker::Tracker;
use tracker::moves::{
    BookView, Claim, Handover, Lesson, MoveBook, MoveDetails, MoveOutput, MoveSpec,
    PortableHandover,
};

use crate::command::{Reply, Request};
use crate::split::split;
use crate::{Command, CommandError, Commands, EngineView, Partition, Persist, Recovered, Sink};

/// How the engine runs.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// How many partitions (at least 1).
    pub partitions: usize,
    /// Batches queued in front of each partition and of the splitter.
    pub capacity: usize,
    /// The most batches one partition takes in one round.
    pub round: usize,
    /// How often the time-based alerts are checked.
    pub tick: Duration,
    /// The longest a partition's published view lags behind its state
    /// when only estimates changed (a status change publishes at once).
    pub view_every: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            partitions: std::thread::available_parallelism().map_or(1, |n| n.get()),
            capacity: 1024,
            round: 64,
            tick: Duration::from_secs(5),
            view_every: Duration::from_millis(100),
        }
    }
}

type DetailsReply = Arc<Mutex<Option<oneshot::Sender<Result<Reply, CommandError>>>>>;

/// What partitions receive besides intake batches, in order.
enum Peer {
    Claim(Claim),
    Handover(Handover),
    Book {
        spec: MoveSpec,
        at: chrono::DateTime<Utc>,
        reply: DetailsReply,
        left: Arc<AtomicUsize>,
    },
    Fence {
        site: SiteId,
        fence: geofence::Fence,
    },
    Inspect(model::VehicleId, oneshot::Sender<Inspection>),
    Lesson(Arc<Lesson>),
    /// A journey handed over by a partition on another engine node.
    RemoteHandover(PortableHandover),
    /// Rebuild the partition from what is stored, owning it or not.
    Reset {
        own: bool,
        recovered: Option<Arc<Recovered>>,
        done: oneshot::Sender<()>,
    },
}

/// What a vehicle's partition knows of it (tests and diagnostics).
#[derive(Debug, Clone, PartialEq)]
pub struct Inspection {
    /// The partition that owns the vehicle.
    pub partition: usize,
    /// The sites it is confirmed inside.
    pub inside: Vec<SiteId>,
    /// The trips that partition's ETA model has learned.
    pub eta_trips: u64,
    /// The kilometres of track its ETA curves have learned.
    pub eta_learned_km: f64,
}

/// A started engine.
#[derive(Debug)]
pub struct Running {
    /// What the gateway reads.
    pub view: EngineView,
    /// What the gateway changes things through.
    pub commands: Commands,
    /// Where intake sends batches.
    pub input: mpsc::Sender<IngestBatch>,
    splitter: JoinHandle<()>,
    partitions: Vec<JoinHandle<()>>,
    commander: JoinHandle<()>,
    peers: Vec<mpsc::UnboundedSender<Peer>>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Peer::Claim(_) => "Claim",
            Peer::Handover(_) => "Handover",
            Peer::Book { .. } => "Book",
            Peer::Fence { .. } => "Fence",
            Peer::Inspect(..) => "Inspect",
            Peer::Lesson(_) => "Lesson",
            Peer::RemoteHandover(_) => "RemoteHandover",
            Peer::Reset { .. } => "Reset",
        })
    }
}

impl Running {
    /// Asks a vehicle's partition what it knows of it (after everything
    /// queued before the question).
    pub async fn inspect(&self, vehicle: model::VehicleId) -> Option<Inspection> {
        let partition = crate::partition_of(&vehicle, self.peers.len());
        let (tx, rx) = oneshot::channel();
        self.peers
            .get(partition)?
            .send(Peer::Inspect(vehicle, tx))
            .ok()?;
        rx.await.ok()
    }

    /// What a cluster node takes and releases partitions through.
    pub fn control(&self) -> Control {
        Control {
            peers: self.peers.clone(),
        }
    }

    /// Waits (until `deadline`) for intake to drain through the partitions
    /// into the store's channel; whether it did.
    pub async fn drained(&mut self, deadline: tokio::time::Instant) -> bool {
        let mut all = true;
        all &= tokio::time::timeout_at(deadline, &mut self.splitter)
            .await
            .is_ok();
        for p in &mut self.partitions {
            all &= tokio::time::timeout_at(deadline, p).await.is_ok();
        }
        all &= tokio::time::timeout_at(deadline, &mut self.commander)
            .await
            .is_ok();
        all
    }

    /// Stops every task at once.
    pub fn abort(&self) {
        self.splitter.abort();
        self.commander.abort();
        for p in &self.partitions {
            p.abort();
        }
    }
}

/// Takes partitions and gives them up (a cluster node's coordinator).
#[derive(Debug, Clone)]
pub struct Control {
    peers: Vec<mpsc::UnboundedSender<Peer>>,
}

/// What a partition sends to partitions on other engine nodes (a cluster):
/// the engine passes it on, in order, through the cluster's bus.
#[derive(Debug, Clone)]
pub enum RemotePeer {
    /// A claim, for every partition but the claimer's.
    Claim(Claim),
    /// A journey for partition `to`.
    Handover {
        /// The partition the move went to.
        to: usize,
        /// The journey so far.
        handover: PortableHandover,
    },
}

impl Control {
    /// How many partitions run.
    pub fn partitions(&self) -> usize {
        self.peers.len()
    }

    /// Rebuilds partition `p` from `recovered` (its own vehicles' share of
    /// it), after everything queued before; `own`: whether this process now
    /// owns the partition (a cluster node consumes its queue). A partition
    /// not owned keeps the bookings and publishes its view, but raises,
    /// saves and sends nothing: its owner does. Returns once it has been
    /// rebuilt (false: the partition has stopped).
    pub async fn reset(&self, p: usize, own: bool, recovered: Arc<Recovered>) -> bool {
        self.ask(p, own, Some(recovered)).await
    }

    /// Partition `p` is no longer owned here (its state stays until the
    /// next rebuild).
    pub async fn disown(&self, p: usize) -> bool {
        self.ask(p, false, None).await
    }

    async fn ask(&self, p: usize, own: bool, recovered: Option<Arc<Recovered>>) -> bool {
        let (done, applied) = oneshot::channel();
        let Some(peer) = self.peers.get(p) else {
            return false;
        };
        if peer
            .send(Peer::Reset {
                own,
                recovered,
                done,
            })
            .is_err()
        {
            return false;
        }
        applied.await.is_ok()
    }
}

/// What every partition needs to start.
pub struct Start {
    /// Engine settings.
    pub config: EngineConfig,
    /// The shared live positions (already restored).
    pub tracker: Arc<Tracker>,
    /// The fences (with the stored replacements applied).
    pub fences: FenceSet,
    /// The fence rules' parameters.
    pub fence_rules: geofence::EngineConfig,
    /// A fresh move book (one per partition, and again whenever one is
    /// rebuilt; each with the learned ETA model).
    pub book: Arc<dyn Fn() -> MoveBook + Send + Sync>,
    /// Whether this process owns every partition from the start (one
    /// machine), or none until it takes them ([`Running::reset`]; a cluster
    /// node).
    pub owned: bool,
    /// What the store held.
    pub recovered: Recovered,
    /// Where frames go.
    pub sink: Arc<dyn Sink>,
    /// The store writer's input.
    pub store: mpsc::Sender<IngestBatch>,
    /// Keeps replaced fences and register entries.
    pub persist: Arc<dyn Persist>,
    /// The vehicle register intake checks (a registration goes live here).
    pub suppliers: Arc<ingest::Suppliers>,
    /// Turns true when a graceful stop begins: intake is closed and drained.
    pub stopping: watch::Receiver<bool>,
    /// Which node owns which partitions (one machine: this one, all).
    pub membership: watch::Receiver<Arc<crate::cluster::Membership>>,
    /// Tells the other engine nodes of this node's commands (a cluster).
    pub announce: Option<Arc<dyn crate::Announce>>,
    /// Claims and handovers for partitions on other engine nodes (a
    /// cluster; unbounded for the reason partition ⇄ partition is).
    pub remote: Option<mpsc::UnboundedSender<RemotePeer>>,
}

/// Starts the partitions, the splitter and the commander.
pub fn start(s: Start) -> Running {
    let count = s.config.partitions.max(1);
    let now = Utc::now();
    let mut batch_txs = Vec::with_capacity(count);
    let mut batch_rxs = Vec::with_capacity(count);
    let mut peer_txs = Vec::with_capacity(count);
    let mut peer_rxs = Vec::with_capacity(count);
    for _ in 0..count {
        let (tx, rx) = mpsc::channel::<IngestBatch>(s.config.capacity);
        batch_txs.push(tx);
        batch_rxs.push(rx);
        let (tx, rx) = mpsc::unbounded_channel::<Peer>();
        peer_txs.push(tx);
        peer_rxs.push(rx);
    }
    let mut views = Vec::with_capacity(count);
    let mut partitions = Vec::with_capacity(count);
    let (fences_tx, fences_rx) = watch::channel(Arc::new(s.fences.clone()));
    let owned_here: Arc<Vec<AtomicBool>> =
        Arc::new((0..count).map(|_| AtomicBool::new(s.owned)).collect());
    for (index, (batches, peers)) in batch_rxs.into_iter().zip(peer_rxs).enumerate() {
        let fences = GeofenceEngine::new(s.fences.clone(), s.fence_rules.clone());
        let mut partition = Partition::new(index, count, s.tracker.clone(), fences, (s.book)());
        let estimated = partition.recover(&s.recovered, now);
        let (view_tx, view_rx) = watch::channel(Arc::new(partition.view()));
        views.push(view_rx);
        let worker = Worker {
            partition,
            owned_here: owned_here.clone(),
            remote: s.remote.clone(),
            rebuild: Rebuild {
                tracker: s.tracker.clone(),
                fences: fences_rx.clone(),
                rules: s.fence_rules.clone(),
                book: s.book.clone(),
            },
            count,
            config: s.config,
            sink: s.sink.clone(),
            store: s.store.clone(),
            peers: peer_txs.clone(),
            view: view_tx,
            last_view: Instant::now(),
            dirty: false,
        };
        partitions.push(tokio::spawn(worker.run(batches, peers, estimated)));
    }
    let (input, intake) = mpsc::channel::<IngestBatch>(s.config.capacity);
    let splitter = tokio::spawn(run_splitter(intake, batch_txs, s.stopping.clone()));
    let (command_tx, command_rx) = mpsc::channel::<Request>(64);
    let commander = tokio::spawn(run_commander(
        command_rx,
        Commander {
            fences: s.fences,
            published: fences_tx,
            partitions: peer_txs.clone(),
            store: s.store,
            persist: s.persist,
            suppliers: s.suppliers,
            announce: s.announce,
        },
        s.stopping,
    ));
    tracing::info!(partitions = count, "engine partitions started");
    Running {
        view: EngineView::new(s.tracker, views, fences_rx, s.membership),
        commands: Commands {
            tx: Some(command_tx),
        },
        input,
        splitter,
        partitions,
        commander,
        peers: peer_txs,
    }
}

async fn run_splitter(
    mut intake: mpsc::Receiver<IngestBatch>,
    partitions: Vec<mpsc::Sender<IngestBatch>>,
    mut stopping: watch::Receiver<bool>,
) {
    let count = partitions.len();
    let mut watch_stop = true;
    loop {
        let next = tokio::select! {
            // Graceful stop: take nothing new, pass on what is queued.
            stopped = async { stopping.wait_for(|s| *s).await.is_ok() }, if watch_stop => {
                watch_stop = false;
                if stopped {
                    intake.close();
                }
                continue;
            }
            next = intake.recv() => next,
        };
        let Some(batch) = next else { break };
        for (index, part) in split(batch, count) {
            if partitions[index].send(part).await.is_err() {
                return;
            }
        }
    }
    // Dropping the senders lets each partition finish its queue and end.
}

/// What the commander works with.
struct Commander {
    /// The fences as last replaced.
    fences: FenceSet,
    published: watch::Sender<Arc<FenceSet>>,
    partitions: Vec<mpsc::UnboundedSender<Peer>>,
    store: mpsc::Sender<IngestBatch>,
    persist: Arc<dyn Persist>,
    suppliers: Arc<ingest::Suppliers>,
    announce: Option<Arc<dyn crate::Announce>>,
}

/// Tells the other nodes (when there are any, and the command was made
/// here); the error to give the caller if they could not be told.
async fn tell_others(
    announce: &Option<Arc<dyn crate::Announce>>,
    remote: bool,
    what: impl FnOnce() -> crate::Announcement,
) -> Result<(), CommandError> {
    let Some(announce) = announce.as_ref().filter(|_| !remote) else {
        return Ok(());
    };
    announce.announce(&what()).await.map_err(|e| {
        CommandError::Store(format!(
            "stored, but the other engine nodes could not be told ({e}); send it again"
        ))
    })
}

async fn run_commander(
    mut requests: mpsc::Receiver<Request>,
    c: Commander,
    mut stopping: watch::Receiver<bool>,
) {
    let Commander {
        mut fences,
        published,
        partitions,
        store,
        persist,
        suppliers,
        announce,
    } = c;
    loop {
        let request = tokio::select! {
            _ = stopping.wait_for(|s| *s) => break,
            r = requests.recv() => match r { Some(r) => r, None => break },
        };
        let remote = request.remote;
        match request.command {
            Command::Relay(peer) => {
                // In order with the bookings announced before it.
                match peer {
                    RemotePeer::Claim(claim) => {
                        for (i, p) in partitions.iter().enumerate() {
                            if i != claim.partition {
                                let _ = p.send(Peer::Claim(claim.clone()));
                            }
                        }
                    }
                    RemotePeer::Handover { to, handover } => {
                        if let Some(p) = partitions.get(to) {
                            let _ = p.send(Peer::RemoteHandover(handover));
                        }
                    }
                }
                let _ = request.reply.send(Ok(Reply::Relayed));
            }
            Command::RegisterVehicle { vehicle, supplier } => {
                // Stored before it is live, so a restart never forgets it.
                let at = Utc::now();
                let stored = if remote {
                    Ok(())
                } else {
                    persist.put_vehicle(vehicle, supplier, at).await
                };
                let told = match stored {
                    Err(e) => Err(CommandError::Store(e)),
                    Ok(()) => {
                        tell_others(&announce, remote, || crate::Announcement::Vehicle {
                            vehicle,
                            supplier,
                        })
                        .await
                    }
                };
                let result = match told {
                    Err(e) => Err(e),
                    Ok(()) => {
                        suppliers.register(model::fleet::RegisterEntry { vehicle, supplier });
                        tracing::info!(%vehicle, %supplier, "vehicle registered");
                        Ok(Reply::Registered(at))
                    }
                };
                let _ = request.reply.send(result);
            }
            Command::Book(spec) => {
                // Durable first, through the same writer as the points.
                let (token, stored) = CommitToken::new();
                let record = crate::record_of(&spec);
                let derived = Derived {
                    moves: vec![record.clone()],
                    ..Default::default()
                };
                if !remote
                    && (store
                        .send(IngestBatch::derived_only(derived, token))
                        .await
                        .is_err()
                        || stored.await.is_err())
                {
                    let _ = request.reply.send(Err(CommandError::Stopped));
                    continue;
                }
                if let Err(e) =
                    tell_others(&announce, remote, || crate::Announcement::Book(record)).await
                {
                    let _ = request.reply.send(Err(e));
                    continue;
                }
                let reply: DetailsReply = Arc::new(Mutex::new(Some(request.reply)));
                let left = Arc::new(AtomicUsize::new(partitions.len()));
                let at = Utc::now();
                for p in &partitions {
                    let _ = p.send(Peer::Book {
                        spec: spec.clone(),
                        at,
                        reply: reply.clone(),
                        left: left.clone(),
                    });
                }
            }
            Command::ReplaceFence { site, fence } => {
                // Checked on a copy first: nothing is stored that cannot apply.
                let mut next = fences.clone();
                let result = match next.replace(&site, fence.clone()) {
                    Err(e) if fences.get(&site).is_none() => {
                        drop(e);
                        Err(CommandError::UnknownSite(site.clone()))
                    }
                    Err(e) => Err(CommandError::Fence(e.to_string())),
                    Ok(_) => {
                        let json = geofence::fence_to_json(&fence).to_string();
                        let stored = if remote {
                            Ok(())
                        } else {
                            persist.put_fence(&site, json, Utc::now()).await
                        };
                        let told = match stored {
                            Err(e) => Err(CommandError::Store(e)),
                            Ok(()) => {
                                tell_others(&announce, remote, || crate::Announcement::Fence {
                                    site: site.clone(),
                                    fence: fence.clone(),
                                })
                                .await
                            }
                        };
                        match told {
                            Err(e) => Err(e),
                            Ok(()) => {
                                fences = next;
                                published.send_replace(Arc::new(fences.clone()));
                                for p in &partitions {
                                    let _ = p.send(Peer::Fence {
                                        site: site.clone(),
                                        fence: fence.clone(),
                                    });
                                }
                                fences
                                    .get(&site)
                                    .cloned()
                                    .map(Reply::Fenced)
                                    .ok_or(CommandError::UnknownSite(site.clone()))
                            }
                        }
                    }
                };
                if result.is_ok() {
                    tracing::info!(site = %site, "site fence replaced");
                }
                let _ = request.reply.send(result);
            }
        }
    }
}

/// What rebuilding a partition needs.
struct Rebuild {
    tracker: Arc<Tracker>,
    fences: watch::Receiver<Arc<FenceSet>>,
    rules: geofence::EngineConfig,
    book: Arc<dyn Fn() -> MoveBook + Send + Sync>,
}

struct Worker {
    partition: Partition,
    /// Which partitions this process owns (always all, on one machine): this
    /// one raises, saves and sends only while it is owned here, and a
    /// partition owned elsewhere gets its journey through `remote`.
    owned_here: Arc<Vec<AtomicBool>>,
    remote: Option<mpsc::UnboundedSender<RemotePeer>>,
    rebuild: Rebuild,
    count: usize,
    config: EngineConfig,
    sink: Arc<dyn Sink>,
    store: mpsc::Sender<IngestBatch>,
    peers: Vec<mpsc::UnboundedSender<Peer>>,
    view: watch::Sender<Arc<BookView>>,
    last_view: Instant,
    dirty: bool,
}

impl Worker {
    async fn run(
        mut self,
        mut batches: mpsc::Receiver<IngestBatch>,
        mut peers: mpsc::UnboundedReceiver<Peer>,
        estimated: crate::Effects,
    ) {
        // Estimates of the moves in transit, so boards have times at once.
        self.derived_only(estimated).await;
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + self.config.tick,
            self.config.tick,
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let publish_at =
                tokio::time::Instant::from_std(self.last_view + self.config.view_every);
            tokio::select! {
                biased;
                Some(peer) = peers.recv() => {
                    metrics::gauge!("movewatch_engine_peer_depth").set(peers.len() as f64);
                    self.on_peer(peer).await;
                }
                next = batches.recv() => {
                    let Some(first) = next else { break };
                    let mut round = vec![first];
                    while round.len() < self.config.round {
                        match batches.try_recv() {
                            Ok(b) => round.push(b),
                            Err(_) => break,
                        }
                    }
                    if !self.process_round(round).await {
                        break;
                    }
                }
                _ = tick.tick(), if self.owned() => {
                    let effects = self.partition.tick(Utc::now());
                    self.dirty = true;
                    self.publish_view();
                    self.derived_only(effects).await;
                }
                _ = tokio::time::sleep_until(publish_at), if self.dirty => self.publish_view(),
            }
        }
        self.publish_view();
        tracing::debug!(partition = self.partition.index(), "partition drained");
    }

    /// Whether this process owns the partition now.
    fn owned(&self) -> bool {
        self.owned_here[self.partition.index()].load(Ordering::Acquire)
    }

    fn publish_view(&mut self) {
        self.view.send_replace(Arc::new(self.partition.view()));
        self.last_view = Instant::now();
        self.dirty = false;
    }

    /// Processes a round of batches; false when the store has gone.
    async fn process_round(&mut self, mut round: Vec<IngestBatch>) -> bool {
        let mut positions = Vec::new();
        for batch in &mut round {
            let effects = self.partition.process(batch);
            positions.push((batch.received, effects.positions));
            if effects.outputs.is_empty() && effects.claims.is_empty() && effects.lessons.is_empty()
            {
                continue;
            }
            self.dirty = true;
            // Readers see a change of status before any client hears of it.
            if effects.outputs.iter().any(changes_status) {
                self.publish_view();
            }
            // Frames keep their order: the positions so far, then what this
            // batch caused.
            self.sink.positions(std::mem::take(&mut positions));
            self.send_peers(effects.claims, effects.handovers, effects.lessons);
            batch.derived.extend(self.dispatch(effects.outputs));
        }
        if !positions.is_empty() {
            self.sink.positions(positions);
        }
        for batch in round {
            if self.store.send(batch).await.is_err() {
                return false;
            }
        }
        true
    }

    async fn on_peer(&mut self, peer: Peer) {
        let effects = match peer {
            Peer::Claim(claim) => self.partition.on_claim(&claim),
            Peer::Handover(h) => self.partition.adopt(h),
            Peer::RemoteHandover(h) => self.partition.adopt_portable(h),
            Peer::Lesson(lesson) => {
                self.partition.learn(&lesson);
                return;
            }
            Peer::Inspect(vehicle, reply) => {
                let _ = reply.send(self.partition.inspect(&vehicle));
                return;
            }
            Peer::Reset {
                own,
                recovered,
                done,
            } => {
                let index = self.partition.index();
                self.owned_here[index].store(own, Ordering::Release);
                let Some(recovered) = recovered else {
                    let _ = done.send(());
                    return;
                };
                let r = &self.rebuild;
                // The fences as last replaced (the commander publishes them
                // before it sends a replacement to the partitions).
                let fences = GeofenceEngine::new((**r.fences.borrow()).clone(), r.rules.clone());
                self.partition =
                    Partition::new(index, self.count, r.tracker.clone(), fences, (r.book)());
                let estimated = self.partition.recover(&recovered, Utc::now());
                self.publish_view();
                let _ = done.send(());
                tracing::debug!(
                    partition = index,
                    owned = own,
                    "partition rebuilt from the store"
                );
                estimated
            }
            Peer::Fence { site, fence } => {
                if let Err(e) = self.partition.replace_fence(&site, fence) {
                    tracing::error!(partition = self.partition.index(), site = %site, error = %e, "a stored fence did not apply");
                }
                return;
            }
            Peer::Book {
                spec,
                at,
                reply,
                left,
            } => {
                let id = spec.id.clone();
                let effects = self.partition.book(spec, at);
                self.publish_view();
                let mine: Option<MoveDetails> = self.partition.details(&id);
                let last = left.fetch_sub(1, Ordering::AcqRel) == 1;
                if mine.is_some() || last {
                    let sender = reply.lock().unwrap_or_else(|p| p.into_inner()).take();
                    if let Some(sender) = sender {
                        let _ = sender.send(Ok(Reply::Booked(mine)));
                    }
                }
                effects
            }
        };
        self.dirty = true;
        self.derived_only(effects).await;
    }

    /// Sends frames and keeps the rest through the writer (never given up).
    async fn derived_only(&mut self, effects: crate::Effects) {
        if !self.owned() {
            // Its owner (another node) raises, saves and sends these.
            return;
        }
        self.send_peers(effects.claims, effects.handovers, effects.lessons);
        let derived = self.dispatch(effects.outputs);
        if !derived.is_empty() {
            let _ = self
                .store
                .send(IngestBatch::derived_only(derived, CommitToken::detached()))
                .await;
        }
    }

    fn send_peers(
        &self,
        claims: Vec<Claim>,
        handovers: Vec<(usize, Handover)>,
        lessons: Vec<Arc<Lesson>>,
    ) {
        for lesson in lessons {
            for (i, p) in self.peers.iter().enumerate() {
                if i != self.partition.index() {
                    let _ = p.send(Peer::Lesson(lesson.clone()));
                }
            }
        }
        for claim in claims {
            for (i, p) in self.peers.iter().enumerate() {
                if i != self.partition.index() {
                    let _ = p.send(Peer::Claim(claim.clone()));
                }
            }
            if let Some(remote) = &self.remote {
                let _ = remote.send(RemotePeer::Claim(claim));
            }
        }
        for (to, h) in handovers {
            let to = to % self.count;
            if let Some(remote) = &self.remote
                && !self.owned_here[to].load(Ordering::Acquire)
            {
                let _ = remote.send(RemotePeer::Handover {
                    to,
                    handover: h.portable(),
                });
                continue;
            }
            if let Some(p) = self.peers.get(to) {
                let _ = p.send(Peer::Handover(h));
            }
        }
    }

    fn dispatch(&self, outputs: Vec<MoveOutput>) -> Derived {
        let mut keep = Derived::default();
        for output in outputs {
            match output {
                MoveOutput::Frame {
                    frame,
                    vehicle,
                    sites,
                } => {
                    let supplier = vehicle.and_then(|v| self.partition_supplier(&v));
                    self.sink.frame(&frame, vehicle, supplier, sites);
                }
                MoveOutput::Save(spec) => keep.moves.push(crate::record_of(&spec)),
                MoveOutput::Arrived(fact) => keep.arrivals.push(fact),
                MoveOutput::Alert(alert) => keep.alerts.push(alert),
                MoveOutput::Notify(n) => keep.notifications.push(n),
            }
        }
        keep
    }

    fn partition_supplier(&self, v: &model::VehicleId) -> Option<model::SupplierId> {
        self.partition.tracker().supplier_of(v)
    }
}

/// Whether readers must see this output's change before clients hear of it
/// (anything but an estimate's `move` frame).
fn changes_status(o: &MoveOutput) -> bool {
    !matches!(
        o,
        MoveOutput::Frame {
            frame: Frame::Move(_),
            ..
        }
    )
}

/// A view over live positions and fences with no partitions behind it, and
/// commands that change nothing (a replay of history serves these).
pub fn read_only(tracker: Arc<Tracker>, fences: FenceSet) -> (EngineView, Commands) {
    let (_, fences) = watch::channel(Arc::new(fences));
    let (_, membership) = watch::channel(Arc::default());
    (
        EngineView::new(tracker, Vec::new(), fences, membership),
        Commands { tx: None },
    )
}
