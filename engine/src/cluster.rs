//! An engine node on a RabbitMQ cluster (docs/SCALE-OUT.md): which node
//! owns which partition, taking and releasing partitions, and keeping the
//! partitions this node does not own close to their owners' stored state.
//!
//! Membership: every node publishes a heartbeat each second to the fanout
//! exchange [`NODES_EXCHANGE`] (its name and the partitions it owns) and
//! reads everyone's on a queue of its own. A node not heard from for
//! [`NodeConfig::dead_after`] is gone (a SIGKILLed node's connection is
//! closed by the kernel, so the broker has already given its unacknowledged
//! deliveries back).
//!
//! Assignment: the live nodes sorted by name; partition `p` belongs to
//! `nodes[p % n]`. Every node computes it from what it has heard, so the
//! handover is by two rules that never let two nodes consume a partition
//! from two different states:
//! - a node **releases** a partition assigned elsewhere: it stops its
//!   consumer, waits until everything handed to the engine is committed and
//!   acknowledged, then stops listing it;
//! - a node **takes** a partition assigned to it only once no live node
//!   lists it: it rebuilds the partition from the store, starts consuming
//!   (single active consumer on the queue, so a second consumer could only
//!   wait), and rebuilds once more before the first delivery, in case the
//!   previous owner committed more in between.
//!
//! Partitions not owned are **followers**: rebuilt from the store every
//! [`NodeConfig::follow_every`], so this node's boards, REST answers and
//! snapshots cover the whole fleet (live frames come from the owners over
//! the live exchange, `ws_gateway::live`); they raise, save and send
//! nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use ingest::Suppliers;
use ingest::partition_intake::PartitionIntake;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use model::IngestBatch;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracker::Tracker;

use crate::runtime::Control;
use crate::{Recovered, partition_of};

/// The fanout exchange of the nodes' heartbeats.
pub const NODES_EXCHANGE: &str = "movewatch.nodes";

/// Reads what the store holds now (the whole fleet's share the partitions
/// rebuild from).
pub type Recover = Arc<dyn Fn() -> BoxFuture<'static, Result<Recovered, String>> + Send + Sync>;

/// A cluster failure that stops a node from joining.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A declaration failed.
    #[error(transparent)]
    Amqp(ingest::amqp::AmqpError),
    /// The broker refused or failed an operation.
    #[error("AMQP {action}: {source}")]
    Broker {
        /// What was being done.
        action: &'static str,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
}

fn broker(action: &'static str) -> impl FnOnce(lapin::Error) -> ClusterError {
    move |source| ClusterError::Broker { action, source }
}

/// How a node takes part.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's name (unique in the cluster).
    pub node: String,
    /// Deliveries unacknowledged at a time, per partition.
    pub prefetch: u16,
    /// How often a heartbeat goes out.
    pub heartbeat: Duration,
    /// A node not heard from for this long is gone.
    pub dead_after: Duration,
    /// How often the partitions not owned are rebuilt from the store.
    pub follow_every: Duration,
    /// The longest a release waits for the partition's commits.
    pub release_bound: Duration,
}

impl NodeConfig {
    /// The defaults for a node named `node`.
    pub fn new(node: impl Into<String>) -> Self {
        NodeConfig {
            node: node.into(),
            prefetch: 256,
            heartbeat: Duration::from_secs(1),
            dead_after: Duration::from_secs(4),
            follow_every: Duration::from_secs(3),
            release_bound: Duration::from_secs(10),
        }
    }
}

/// A heartbeat: a node and the partitions it owns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Heartbeat {
    node: String,
    owned: Vec<usize>,
    /// Set by a node stopping gracefully: take its partitions now.
    #[serde(default)]
    leaving: bool,
}

/// Which node owns which partitions, as this node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// This node.
    pub node: String,
    /// Every live node (this one included) with the partitions it owns,
    /// sorted by name.
    pub nodes: Vec<(String, Vec<usize>)>,
}

/// What the node needs of the rest of the process.
pub struct NodeParts {
    /// The broker connection (the node opens its own channels on it).
    pub connection: Arc<Connection>,
    /// The engine's partitions.
    pub control: Control,
    /// Where consumed deliveries go (the engine's input).
    pub input: mpsc::Sender<IngestBatch>,
    /// The register intake checks.
    pub suppliers: Arc<Suppliers>,
    /// The shared live positions (restored for partitions taken or followed).
    pub tracker: Arc<Tracker>,
    /// Reads the store.
    pub recover: Recover,
    /// Published as ownership changes (for `GET /api/cluster`).
    pub membership: watch::Sender<Arc<Membership>>,
}

/// A running node.
pub struct Node {
    leave: Option<tokio::sync::oneshot::Sender<tokio::sync::oneshot::Sender<()>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Node")
    }
}

impl Node {
    /// Joins the cluster: declares the heartbeat exchange and this node's
    /// queue on it, and starts taking its share of the partitions.
    pub async fn join(config: NodeConfig, parts: NodeParts) -> Result<Node, ClusterError> {
        let channel = parts
            .connection
            .create_channel()
            .await
            .map_err(broker("open a channel"))?;
        let queue =
            ingest::amqp::fanout_queue(&channel, NODES_EXCHANGE, false, FieldTable::default())
                .await
                .map_err(ClusterError::Amqp)?;
        let mut consumer = channel
            .basic_consume(
                queue,
                format!("{}-nodes", config.node).as_str().into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(broker("consume heartbeats"))?;
        // Stamped when received: a busy coordinator must not take a beat
        // it had not read yet for a silent node.
        let (beats_tx, beats) = mpsc::channel::<(Heartbeat, Instant)>(256);
        let listener = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                match serde_json::from_slice::<Heartbeat>(&delivery.data) {
                    Ok(beat) => {
                        if beats_tx.send((beat, Instant::now())).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "a heartbeat that cannot be read; skipped")
                    }
                }
            }
            tracing::warn!("heartbeat consumer ended");
        });
        let (listed, listed_rx) = watch::channel(Vec::new());
        let beating = tokio::spawn(send_heartbeats(
            channel.clone(),
            config.node.clone(),
            config.heartbeat,
            listed_rx,
        ));
        let (leave_tx, leave_rx) = tokio::sync::oneshot::channel();
        let coordinator = tokio::spawn(
            Coordinator {
                config,
                parts,
                channel,
                owned: BTreeMap::new(),
                peers: HashMap::new(),
                followed_at: None,
                joined: Instant::now(),
                listed,
                beating: Some(beating),
            }
            .run(beats, leave_rx),
        );
        Ok(Node {
            leave: Some(leave_tx),
            tasks: vec![listener, coordinator],
        })
    }

    /// Leaves gracefully: releases every partition (each committed and
    /// acknowledged first) and tells the others to take them at once.
    pub async fn leave(&mut self, bound: Duration) -> bool {
        let Some(leave) = self.leave.take() else {
            return true;
        };
        let (done_tx, done) = tokio::sync::oneshot::channel();
        if leave.send(done_tx).is_err() {
            return false;
        }
        tokio::time::timeout(bound, done).await.is_ok()
    }

    /// Stops at once.
    pub fn abort(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Peer {
    seen: Instant,
    owned: Vec<usize>,
}

struct Coordinator {
    config: NodeConfig,
    parts: NodeParts,
    channel: lapin::Channel,
    owned: BTreeMap<usize, PartitionIntake>,
    peers: HashMap<String, Peer>,
    followed_at: Option<Instant>,
    /// Nothing is taken until the others have had time to be heard
    /// ([`NodeConfig::dead_after`]): a node that has just joined must not
    /// take partitions a live node still owns.
    joined: Instant,
    /// The partitions owned, for the heartbeat task.
    listed: watch::Sender<Vec<usize>>,
    /// Sends the heartbeats on its own, so a coordinator busy rebuilding
    /// partitions from the store never falls silent.
    beating: Option<JoinHandle<()>>,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        // Aborted with the node: it falls silent, the others take over.
        if let Some(beating) = self.beating.take() {
            beating.abort();
        }
    }
}

impl Coordinator {
    async fn run(
        mut self,
        mut beats: mpsc::Receiver<(Heartbeat, Instant)>,
        mut leave: tokio::sync::oneshot::Receiver<tokio::sync::oneshot::Sender<()>>,
    ) {
        let mut every = tokio::time::interval(self.config.heartbeat);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                done = &mut leave => {
                    self.leave().await;
                    if let Ok(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
                Some((beat, at)) = beats.recv() => {
                    self.heard(beat, at);
                    // Everything already queued, then one decision.
                    while let Ok((beat, at)) = beats.try_recv() {
                        self.heard(beat, at);
                    }
                    self.rebalance().await;
                }
                _ = every.tick() => {
                    // What came while this node was busy first.
                    while let Ok((beat, at)) = beats.try_recv() {
                        self.heard(beat, at);
                    }
                    self.rebalance().await;
                    self.follow().await;
                }
            }
        }
    }

    fn heard(&mut self, beat: Heartbeat, at: Instant) {
        if beat.node == self.config.node {
            return;
        }
        if beat.leaving {
            tracing::info!(node = %beat.node, "node leaving; taking its share");
            self.peers.remove(&beat.node);
        } else {
            if !self.peers.contains_key(&beat.node) {
                tracing::info!(node = %beat.node, "node joined");
            }
            self.peers.insert(
                beat.node,
                Peer {
                    seen: at,
                    owned: beat.owned,
                },
            );
        }
    }

    fn live_nodes(&self) -> Vec<&str> {
        let mut nodes: Vec<&str> = self.peers.keys().map(String::as_str).collect();
        nodes.push(&self.config.node);
        nodes.sort_unstable();
        nodes
    }

    /// Forgets nodes not heard from, drops partitions whose consumer ended,
    /// releases what is assigned elsewhere and takes what is free and ours.
    async fn rebalance(&mut self) {
        let dead_after = self.config.dead_after;
        self.peers.retain(|node, p| {
            let alive = p.seen.elapsed() < dead_after;
            if !alive {
                tracing::warn!(node = %node, "node not heard from; taking its share");
            }
            alive
        });
        let lost: Vec<usize> = self
            .owned
            .iter()
            .filter(|(_, i)| i.has_ended())
            .map(|(p, _)| *p)
            .collect();
        for p in lost {
            self.owned.remove(&p);
            self.parts.control.disown(p).await;
            tracing::warn!(partition = p, "partition consumer ended; no longer owned");
        }
        let count = self.parts.control.partitions();
        let nodes: Vec<String> = self.live_nodes().into_iter().map(str::to_owned).collect();
        let assigned = |p: usize| nodes[p % nodes.len()].as_str();
        let release: Vec<usize> = self
            .owned
            .keys()
            .copied()
            .filter(|&p| assigned(p) != self.config.node)
            .collect();
        for p in release {
            if let Some(intake) = self.owned.remove(&p) {
                let clean = intake.release(self.config.release_bound).await;
                self.parts.control.disown(p).await;
                tracing::info!(partition = p, to = assigned(p), clean, "partition released");
            }
        }
        let listening = self.joined.elapsed() < self.config.dead_after;
        let take: Vec<usize> = (0..count)
            .filter(|_| !listening)
            .filter(|&p| assigned(p) == self.config.node && !self.owned.contains_key(&p))
            .filter(|p| !self.peers.values().any(|peer| peer.owned.contains(p)))
            .collect();
        if !take.is_empty() {
            match (self.parts.recover)().await {
                Ok(recovered) => {
                    let recovered = Arc::new(recovered);
                    for p in take {
                        self.take(p, recovered.clone()).await;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the store to take partitions; retrying")
                }
            }
        }
        self.publish_membership();
    }

    async fn take(&mut self, p: usize, recovered: Arc<Recovered>) {
        let started = Instant::now();
        restore_positions(
            &self.parts.tracker,
            &recovered,
            p,
            self.parts.control.partitions(),
        );
        if !self.parts.control.reset(p, true, recovered).await {
            return;
        }
        let (control, recover, tracker) = (
            self.parts.control.clone(),
            self.parts.recover.clone(),
            self.parts.tracker.clone(),
        );
        // The previous owner may have committed more since: rebuilt again
        // before the first delivery is applied.
        let before_first: ingest::partition_intake::BeforeFirst = Box::new(move || {
            Box::pin(async move {
                match recover().await {
                    Ok(r) => {
                        restore_positions(&tracker, &r, p, control.partitions());
                        control.reset(p, true, Arc::new(r)).await;
                    }
                    Err(e) => {
                        tracing::error!(partition = p, error = %e, "cannot read the store before the first delivery; going on from the state at takeover")
                    }
                }
            })
        });
        let tag = format!("{}-p{p}", self.config.node);
        match PartitionIntake::start(
            &self.parts.connection,
            p,
            self.config.prefetch,
            &tag,
            self.parts.suppliers.clone(),
            self.parts.input.clone(),
            before_first,
        )
        .await
        {
            Ok(intake) => {
                metrics::counter!("movewatch_cluster_partitions_taken_total").increment(1);
                tracing::info!(
                    partition = p,
                    took_ms = started.elapsed().as_millis() as u64,
                    "partition taken"
                );
                self.owned.insert(p, intake);
            }
            Err(e) => {
                tracing::error!(partition = p, error = %e, "cannot consume the partition; retrying");
                self.parts.control.disown(p).await;
            }
        }
    }

    /// Rebuilds the partitions not owned from the store, now and then.
    async fn follow(&mut self) {
        if self
            .followed_at
            .is_some_and(|at| at.elapsed() < self.config.follow_every)
        {
            return;
        }
        self.followed_at = Some(Instant::now());
        let count = self.parts.control.partitions();
        let followed: Vec<usize> = (0..count).filter(|p| !self.owned.contains_key(p)).collect();
        if followed.is_empty() {
            return;
        }
        match (self.parts.recover)().await {
            Ok(recovered) => {
                let recovered = Arc::new(recovered);
                for p in followed {
                    // Taken meanwhile? Then the take rebuilt it already.
                    if self.owned.contains_key(&p) {
                        continue;
                    }
                    restore_positions(&self.parts.tracker, &recovered, p, count);
                    self.parts.control.reset(p, false, recovered.clone()).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the store to follow the other nodes' partitions")
            }
        }
    }

    async fn leave(&mut self) {
        let owned = std::mem::take(&mut self.owned);
        for (p, intake) in owned {
            intake.release(self.config.release_bound).await;
            self.parts.control.disown(p).await;
        }
        if let Some(beating) = self.beating.take() {
            beating.abort();
        }
        let _ = publish_heartbeat(
            &self.channel,
            &Heartbeat {
                node: self.config.node.clone(),
                owned: Vec::new(),
                leaving: true,
            },
        )
        .await;
        self.publish_membership();
        tracing::info!("left the cluster; every partition released");
    }

    fn publish_membership(&self) {
        metrics::gauge!("movewatch_cluster_partitions_owned").set(self.owned.len() as f64);
        let owned: Vec<usize> = self.owned.keys().copied().collect();
        self.listed.send_if_modified(|l| {
            let changed = *l != owned;
            if changed {
                *l = owned.clone();
            }
            changed
        });
        let mut nodes: Vec<(String, Vec<usize>)> = self
            .peers
            .iter()
            .map(|(n, p)| {
                let mut owned = p.owned.clone();
                owned.sort_unstable();
                (n.clone(), owned)
            })
            .collect();
        nodes.push((
            self.config.node.clone(),
            self.owned.keys().copied().collect(),
        ));
        nodes.sort();
        let next = Membership {
            node: self.config.node.clone(),
            nodes,
        };
        self.parts.membership.send_if_modified(|m| {
            if **m == next {
                false
            } else {
                *m = Arc::new(next);
                true
            }
        });
    }
}

/// Sends this node's heartbeat every `every`, with what it owns now.
async fn send_heartbeats(
    channel: lapin::Channel,
    node: String,
    every: Duration,
    listed: watch::Receiver<Vec<usize>>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let beat = Heartbeat {
            node: node.clone(),
            owned: listed.borrow().clone(),
            leaving: false,
        };
        if let Err(e) = publish_heartbeat(&channel, &beat).await {
            tracing::warn!(error = %e, "cannot send this node's heartbeat");
        }
    }
}

async fn publish_heartbeat(channel: &lapin::Channel, beat: &Heartbeat) -> Result<(), String> {
    let body = serde_json::to_vec(beat).map_err(|e| e.to_string())?;
    channel
        .basic_publish(
            NODES_EXCHANGE.into(),
            "".into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default(),
        )
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Restores partition `p`'s vehicles' last stored fixes into the shared
/// live positions (newer fixes only move them).
fn restore_positions(tracker: &Tracker, recovered: &Recovered, p: usize, count: usize) {
    tracker.restore(
        recovered
            .positions
            .iter()
            .filter(|pos| partition_of(&pos.vehicle, count) == p)
            .cloned(),
    );
}

/// The fanout exchange of the command bus: bookings, register entries and
/// fence replacements made on one node, for every other node.
pub const COMMANDS_EXCHANGE: &str = "movewatch.commands";

/// One announced command on the bus, as JSON.
#[derive(Debug, Serialize, Deserialize)]
struct BusMessage {
    /// The node that made (stored) it.
    node: String,
    #[serde(flatten)]
    body: BusBody,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum BusBody {
    Book {
        record: model::MoveRecord,
    },
    Vehicle {
        vehicle: model::VehicleId,
        supplier: model::SupplierId,
    },
    Fence {
        site: model::SiteId,
        fence: serde_json::Value,
    },
    /// A partition's claim on a move (for every other node's partitions).
    Claim {
        claim: tracker::moves::Claim,
    },
    /// A journey handed to partition `to`, owned by another node.
    Handover {
        to: usize,
        handover: tracker::moves::PortableHandover,
    },
}

/// The command bus: announces this node's commands (with publisher
/// confirms, so a command is with every other node's queue before its
/// caller hears it is done) and applies the other nodes' ones here.
pub struct CommandBus {
    node: String,
    queue: String,
    channel: lapin::Channel,
    /// One publish (and its confirm) at a time: commands keep their order.
    publishing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for CommandBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandBus")
            .field("node", &self.node)
            .finish()
    }
}

impl CommandBus {
    /// Declares the bus and this node's queue on it, which from now on
    /// keeps every other node's announcements until [`CommandBus::apply`]
    /// starts applying them (so a node that opens the bus before it serves
    /// anything misses nothing announced after).
    pub async fn open(
        connection: &Connection,
        node: &str,
    ) -> Result<Arc<CommandBus>, ClusterError> {
        let channel = ingest::amqp::confirmed_channel(connection)
            .await
            .map_err(ClusterError::Amqp)?;
        let queue =
            ingest::amqp::fanout_queue(&channel, COMMANDS_EXCHANGE, true, FieldTable::default())
                .await
                .map_err(ClusterError::Amqp)?;
        Ok(Arc::new(CommandBus {
            node: node.to_owned(),
            queue: queue.to_string(),
            channel,
            publishing: tokio::sync::Mutex::new(()),
        }))
    }

    /// Applies the other nodes' announcements here, in the order they were
    /// announced, through `commands` (fences read their site's centre from
    /// `view`).
    pub async fn apply(
        &self,
        commands: crate::Commands,
        view: crate::EngineView,
    ) -> Result<JoinHandle<()>, ClusterError> {
        let mut consumer = self
            .channel
            .basic_consume(
                self.queue.as_str().into(),
                format!("{}-commands", self.node).as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker("consume commands"))?;
        let me = self.node.clone();
        Ok(tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                match serde_json::from_slice::<BusMessage>(&delivery.data) {
                    Ok(m) if m.node == me => {}
                    Ok(m) => {
                        let from = m.node;
                        let applied = match m.body {
                            BusBody::Claim { claim } => {
                                commands.relay(crate::RemotePeer::Claim(claim)).await
                            }
                            BusBody::Handover { to, handover } => {
                                commands
                                    .relay(crate::RemotePeer::Handover { to, handover })
                                    .await
                            }
                            body => match announced_of(body, &view) {
                                Some(announced) => commands.apply_announced(announced).await,
                                None => Ok(()),
                            },
                        };
                        if let Err(e) = applied {
                            tracing::warn!(node = %from, error = %e, "a message from another node did not apply");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "a command on the bus that cannot be read; skipped")
                    }
                }
                // Acknowledged once queued, in order, with this node's own.
                let _ = delivery
                    .acker
                    .ack(lapin::options::BasicAckOptions::default())
                    .await;
            }
            tracing::warn!("command bus consumer ended");
        }))
    }
}

impl CommandBus {
    /// Passes this node's partitions' claims and handovers to the other
    /// nodes, in order, on the bus (not confirmed one by one: they are
    /// small and ordered, and a node that misses one rebuilds the move from
    /// the store when it next takes or follows the partition).
    pub fn relay(
        self: Arc<Self>,
        mut peers: mpsc::UnboundedReceiver<crate::RemotePeer>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            while let Some(peer) = peers.recv().await {
                let body = match peer {
                    crate::RemotePeer::Claim(claim) => BusBody::Claim { claim },
                    crate::RemotePeer::Handover { to, handover } => {
                        BusBody::Handover { to, handover }
                    }
                };
                let message = BusMessage {
                    node: self.node.clone(),
                    body,
                };
                let Ok(bytes) = serde_json::to_vec(&message) else {
                    continue;
                };
                let _order = self.publishing.lock().await;
                if let Err(e) = self
                    .channel
                    .basic_publish(
                        COMMANDS_EXCHANGE.into(),
                        "".into(),
                        BasicPublishOptions::default(),
                        &bytes,
                        BasicProperties::default(),
                    )
                    .await
                {
                    tracing::warn!(error = %e, "cannot pass a claim or handover to the other nodes");
                }
            }
        })
    }
}

fn announced_of(body: BusBody, view: &crate::EngineView) -> Option<crate::Announcement> {
    Some(match body {
        BusBody::Claim { .. } | BusBody::Handover { .. } => return None,
        BusBody::Book { record } => crate::Announcement::Book(record),
        BusBody::Vehicle { vehicle, supplier } => {
            crate::Announcement::Vehicle { vehicle, supplier }
        }
        BusBody::Fence { site, fence } => {
            let Some(centre) = view.fence_of(&site).map(|s| (s.site.lat, s.site.lon)) else {
                tracing::warn!(site = %site, "an announced fence for a site not loaded here; skipped");
                return None;
            };
            match geofence::fence_from_json(&fence.to_string(), centre.0, centre.1) {
                Ok(fence) => crate::Announcement::Fence { site, fence },
                Err(e) => {
                    tracing::warn!(site = %site, error = %e, "an announced fence that cannot be read; skipped");
                    return None;
                }
            }
        }
    })
}

impl crate::Announce for CommandBus {
    fn announce<'a>(&'a self, announced: &'a crate::Announcement) -> crate::PersistFuture<'a> {
        Box::pin(async move {
            let body = match announced {
                crate::Announcement::Book(record) => BusBody::Book {
                    record: record.clone(),
                },
                crate::Announcement::Vehicle { vehicle, supplier } => BusBody::Vehicle {
                    vehicle: *vehicle,
                    supplier: *supplier,
                },
                crate::Announcement::Fence { site, fence } => BusBody::Fence {
                    site: site.clone(),
                    fence: geofence::fence_to_json(fence),
                },
            };
            let message = BusMessage {
                node: self.node.clone(),
                body,
            };
            let bytes = serde_json::to_vec(&message).map_err(|e| e.to_string())?;
            let _order = self.publishing.lock().await;
            let confirm = self
                .channel
                .basic_publish(
                    COMMANDS_EXCHANGE.into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    &bytes,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .map_err(|e| e.to_string())?;
            let confirmation = confirm.await.map_err(|e| e.to_string())?;
            if confirmation.is_nack() {
                return Err("the broker refused the announcement".to_owned());
            }
            Ok(())
        })
    }
}

/// Consumes `movewatch.unrouted` (what no vehicle binding matched: a
/// vehicle in no register entry, a bad topic, a registration not in its
/// normal form) on every node, one node at a time (single active
/// consumer), so nothing a device sends is dropped in silence. Each message
/// is decoded as on one machine: what the register now accepts (registered
/// since, or claimed on first report) is bound to its partition and sent
/// on to the partition's queue (confirmed); the rest becomes dead letters,
/// stored through this node's engine. Either way the message is
/// acknowledged only after that.
pub async fn consume_unrouted(
    connection: &Connection,
    node: &str,
    partitions: usize,
    suppliers: Arc<Suppliers>,
    input: mpsc::Sender<IngestBatch>,
) -> Result<JoinHandle<()>, ClusterError> {
    let channel = ingest::amqp::confirmed_channel(connection)
        .await
        .map_err(ClusterError::Amqp)?;
    let mut consumer = ingest::amqp::consume_queue(
        &channel,
        ingest::amqp::UNROUTED,
        64,
        &format!("{node}-unrouted"),
    )
    .await
    .map_err(ClusterError::Amqp)?;
    Ok(tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let topic = ingest::amqp::mqtt_topic(delivery.routing_key.as_str());
            let (token, committed) = model::CommitToken::new();
            let mut batch = ingest::batch_from_mqtt(&topic, &delivery.data, &suppliers, token);
            let vehicle = batch
                .positions
                .first()
                .map(|p| p.vehicle)
                .or_else(|| batch.events.first().map(|e| e.vehicle));
            let done = match vehicle {
                Some(vehicle) => {
                    // Accepted now: bound, then on to its partition.
                    let p = partition_of(&vehicle, partitions);
                    let forwarded = async {
                        ingest::amqp::bind_vehicle(&channel, &vehicle, p, partitions).await?;
                        ingest::amqp::forward_to_partition(&channel, p, &delivery).await
                    }
                    .await;
                    batch.positions.clear();
                    batch.events.clear();
                    match forwarded {
                        Ok(()) if batch.dead_letters.is_empty() => Ok(()),
                        Ok(()) => stored(&input, batch, committed).await,
                        Err(e) => Err(e.to_string()),
                    }
                }
                None => stored(&input, batch, committed).await,
            };
            let result = match done {
                Ok(()) => {
                    delivery
                        .acker
                        .ack(lapin::options::BasicAckOptions::default())
                        .await
                }
                Err(e) => {
                    tracing::warn!(topic = %topic, error = %e, "an unrouted message could not be handled; returned to its queue");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    delivery
                        .acker
                        .nack(lapin::options::BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "cannot acknowledge an unrouted message; it comes again");
            }
        }
        tracing::warn!("unrouted queue consumer ended");
    }))
}

/// Hands a batch of dead letters to the engine and waits for its commit.
async fn stored(
    input: &mpsc::Sender<IngestBatch>,
    batch: IngestBatch,
    committed: tokio::sync::oneshot::Receiver<model::CommitOutcome>,
) -> Result<(), String> {
    input
        .send(batch)
        .await
        .map_err(|_| "the engine is stopping".to_owned())?;
    committed
        .await
        .map(drop)
        .map_err(|_| "the store did not commit".to_owned())
}
