//! Every node serves the whole fleet (docs/SCALE-OUT.md, "every node serves
//! every channel"): in cluster mode each engine node owns some partitions,
//! and each node's live frames go to the clients of every other node over
//! the RabbitMQ cluster.
//!
//! ```text
//! engine partitions ──Sink──▶ LiveSink ──▶ local Hub (exactly as on one machine)
//!                                 │ one envelope per Sink call, try_send
//!                                 ▼
//!                       bounded channel (8192) ──full──▶ dropped, counted
//!                                 │ publisher task
//!                                 ▼
//!            movewatch.live (fanout, non-durable, no confirms)
//!                                 │ every node's own queue: server-named,
//!                                 │ exclusive, auto-delete, no-ack
//!                                 ▼
//!            consumer task ──other nodes' envelopes──▶ Hub::route_remote
//! ```
//!
//! Live frames are best-effort: the store is the truth, and a client that
//! missed a frame gets the state again in its next snapshot. So nothing on
//! this path waits: a slow or absent broker drops frames (and counts them),
//! it never blocks an engine partition.
//!
//! **Envelope.** One AMQP message per [`engine::Sink`] call: a
//! `positions` call (several intake batches, however many updates) becomes
//! one message, a `frame` call another. Per update would be up to 100k
//! messages a second per node at the planned load (docs/SCALE-OUT.md), each
//! fanned out to every node; per call the broker handles a few hundred
//! larger ones. The body is JSON:
//!
//! ```json
//! {"node":"n1","frames":[{"kind":"position","vehicle":"AB12CDE","supplier":"geoamey",
//!   "sites":["LEI"],"text":"{\"type\":\"position\",...}"}]}
//! ```
//!
//! `text` is the frame's JSON exactly as the sending node's hub sent it to
//! its own clients (serialised once, there); the receiver routes it as it is,
//! without rendering it again. `kind` is `position` (conflated by vehicle in
//! a slow client's queue, like a local position) or `frame` (never
//! conflated).
//!
//! Metrics: `movewatch_live_dropped_total` (envelopes dropped because the
//! channel to the publisher was full or gone, or a publish failed) and
//! `movewatch_live_rejected_total` (messages on the exchange that are not a
//! valid envelope; skipped).

#![deny(missing_docs)]

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer, ExchangeKind};
use model::wire::Frame;
use model::{SiteId, SupplierId, VehicleId};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::Hub;
use crate::hub::{RemoteFrame, RemoteKind, ScopedBatch, render_positions};

/// The fanout exchange every node publishes its frames to and consumes
/// every node's from. Non-durable: it holds nothing worth a restart.
pub const EXCHANGE: &str = "movewatch.live";

/// Envelopes waiting for the publisher, at most; past that they are dropped
/// (`movewatch_live_dropped_total`).
pub const CAPACITY: usize = 8192;

/// Messages a node's queue holds while its consumer is behind, at most; the
/// broker drops the oldest past that (live frames go stale; the broker's
/// memory must not grow with a slow node).
pub const QUEUE_MAX_LENGTH: i64 = 8192;

/// How long a message waits in a node's queue, at most (milliseconds):
/// later it is stale, and the broker drops it.
pub const QUEUE_TTL_MS: i64 = 10_000;

/// First wait before re-opening a closed channel; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between attempts to re-open a channel.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A failure to set up the live exchange.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// The broker refused or failed an operation (the channel or connection
    /// is closed by the broker after most of these).
    #[error("AMQP {action} {name:?}: {source}")]
    Broker {
        /// What was being done ("open channel", "declare exchange", ...).
        action: &'static str,
        /// The exchange or queue it was done to.
        name: String,
        /// lapin's error (a broker reply, or I/O).
        #[source]
        source: lapin::Error,
    },
    /// The exchange or this node's queue could not be declared.
    #[error(transparent)]
    Amqp(#[from] ingest::amqp::AmqpError),
    /// The node name is empty (envelopes are told apart by it).
    #[error("the node name is empty")]
    NoNode,
}

fn broker(action: &'static str, name: impl fmt::Display) -> impl FnOnce(lapin::Error) -> LiveError {
    let name = name.to_string();
    move |source| LiveError::Broker {
        action,
        name,
        source,
    }
}

/// What was dropped and rejected (for the metrics and for tests), and the
/// name of this node's queue.
#[derive(Debug, Default)]
struct Counts {
    dropped: AtomicU64,
    rejected: AtomicU64,
    queue: Mutex<String>,
}

impl Counts {
    fn set_queue(&self, name: &str) {
        *self.queue.lock().unwrap_or_else(|p| p.into_inner()) = name.to_owned();
    }

    fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("movewatch_live_dropped_total").increment(1);
    }

    fn rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("movewatch_live_rejected_total").increment(1);
    }
}

/// One frame of an envelope, as published (borrowing the serialised text).
#[derive(Serialize)]
struct ItemOut<'a> {
    kind: RemoteKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    vehicle: Option<VehicleId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    supplier: Option<SupplierId>,
    sites: &'a [SiteId],
    text: &'a str,
}

/// An envelope as published.
#[derive(Serialize)]
struct EnvelopeOut<'a> {
    node: &'a str,
    frames: Vec<ItemOut<'a>>,
}

/// One frame of an envelope, as received.
#[derive(Deserialize)]
struct ItemIn {
    kind: RemoteKind,
    #[serde(default)]
    vehicle: Option<VehicleId>,
    #[serde(default)]
    supplier: Option<SupplierId>,
    #[serde(default)]
    sites: Vec<SiteId>,
    text: String,
}

/// An envelope as received.
#[derive(Deserialize)]
struct EnvelopeIn {
    node: String,
    frames: Vec<ItemIn>,
}

/// The engine's [`engine::Sink`] in cluster mode: every call goes to the
/// local [`Hub`] exactly as [`Hub`]'s own `Sink` does, and is also encoded
/// once into an envelope for the other nodes.
///
/// **Never blocks.** The envelope goes into a bounded channel (capacity
/// [`CAPACITY`]) with `try_send`; when the channel is full (a slow or
/// unreachable broker) or the publisher is gone, the envelope is dropped
/// and counted in `movewatch_live_dropped_total`. The engine's partitions
/// call this on their own tasks, and a broker must never hold them up: the
/// local clients still get every frame, the other nodes' clients miss some
/// until the broker catches up.
#[derive(Clone)]
pub struct LiveSink {
    hub: Hub,
    node: Arc<str>,
    tx: mpsc::Sender<Vec<u8>>,
    counts: Arc<Counts>,
}

impl fmt::Debug for LiveSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveSink")
            .field("node", &self.node)
            .field("queued", &(CAPACITY - self.tx.capacity()))
            .finish()
    }
}

impl LiveSink {
    /// The local hub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Envelopes dropped so far (also `movewatch_live_dropped_total`).
    pub fn dropped(&self) -> u64 {
        self.counts.dropped.load(Ordering::Relaxed)
    }

    fn encode<'a>(&self, frames: impl IntoIterator<Item = ItemOut<'a>>) -> Option<Vec<u8>> {
        let envelope = EnvelopeOut {
            node: &self.node,
            frames: frames.into_iter().collect(),
        };
        match serde_json::to_vec(&envelope) {
            Ok(body) => Some(body),
            Err(e) => {
                // Plain strings and ids: not expected to fail.
                tracing::warn!(error = %e, "live envelope not encoded");
                self.counts.dropped();
                None
            }
        }
    }

    /// Hands an envelope to the publisher, or drops it (counted) without waiting.
    fn enqueue(&self, body: Option<Vec<u8>>) {
        let Some(body) = body else { return };
        if let Err(e) = self.tx.try_send(body) {
            if matches!(e, mpsc::error::TrySendError::Closed(_)) {
                tracing::debug!("live publisher gone; envelope dropped");
            }
            self.counts.dropped();
        }
    }
}

impl engine::Sink for LiveSink {
    fn positions(&self, batches: Vec<ScopedBatch>) {
        let frames = render_positions(batches);
        if frames.is_empty() {
            return;
        }
        let body = self.encode(frames.iter().map(|f| ItemOut {
            kind: RemoteKind::Position,
            vehicle: Some(f.vehicle),
            supplier: Some(f.supplier),
            sites: &f.sites,
            text: f.text.as_str(),
        }));
        self.hub.route_positions(frames);
        self.enqueue(body);
    }

    fn frame(
        &self,
        frame: &Frame,
        vehicle: Option<VehicleId>,
        supplier: Option<SupplierId>,
        sites: Vec<SiteId>,
    ) {
        let text = Utf8Bytes::from(frame.to_json());
        let body = self.encode([ItemOut {
            kind: RemoteKind::Frame,
            vehicle,
            supplier,
            sites: &sites,
            text: text.as_str(),
        }]);
        self.hub.route_frame(text, vehicle, supplier, &sites);
        self.enqueue(body);
    }
}

/// The live exchange running on one node: its [`LiveSink`] for the engine
/// and the publisher and consumer tasks.
///
/// The tasks run until [`Live::abort`] or until the connection closes (the
/// publisher also ends once every clone of the sink is dropped). Dropping
/// `Live` does not stop them.
#[derive(Debug)]
pub struct Live {
    /// What the engine publishes to (cheap to clone).
    pub sink: LiveSink,
    counts: Arc<Counts>,
    tasks: Vec<JoinHandle<()>>,
}

impl Live {
    /// Messages received from the exchange that were not a valid envelope
    /// (also `movewatch_live_rejected_total`).
    pub fn rejected(&self) -> u64 {
        self.counts.rejected.load(Ordering::Relaxed)
    }

    /// Envelopes dropped so far (also `movewatch_live_dropped_total`).
    pub fn dropped(&self) -> u64 {
        self.counts.dropped.load(Ordering::Relaxed)
    }

    /// The name the broker gave this node's queue; a new one each time the
    /// consumer's channel is re-opened.
    pub fn queue(&self) -> String {
        self.counts
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the publisher and the consumer (their channels close as they go;
    /// the node's queue, auto-delete, goes with its consumer).
    pub fn abort(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts the live exchange on `connection` for node `node`: declares
/// [`EXCHANGE`] (idempotent; every node does), opens a channel to publish
/// on and one to consume this node's own queue (server-named, exclusive,
/// auto-delete, bound to the exchange, no-ack), and spawns the publisher and
/// the consumer. Returns once the queue is bound, so whatever any node
/// publishes from then on reaches `hub`; fails if the broker refuses any of
/// that.
///
/// Envelopes whose `node` is `node` are skipped (this node's hub routed
/// them already); the others are routed into `hub` with
/// [`Hub::route_remote`]. Node names must differ across the cluster.
///
/// **Channel loss.** If a channel closes while the connection lives (a
/// broker error on the channel), or the consumer is cancelled (the broker
/// node holding this node's queue went, or the queue was deleted), the task
/// logs it and re-opens its channel (and a new queue) on the same
/// connection, waiting 100 ms, doubling up to 5 s between attempts;
/// meanwhile envelopes are dropped (counted) and other nodes' frames are
/// missed. Once the connection itself is closed or failed, the tasks log it
/// and end: re-connecting is the caller's business (call `start_live` again
/// on a new connection).
///
/// Takes the connection shared (`Arc`) rather than borrowed: re-opening a
/// channel needs it after this returns, and lapin's `Connection` is not
/// `Clone`.
pub async fn start_live(
    connection: Arc<Connection>,
    node: &str,
    hub: Hub,
) -> Result<Live, LiveError> {
    if node.is_empty() {
        return Err(LiveError::NoNode);
    }
    let node: Arc<str> = Arc::from(node);
    let counts = Arc::new(Counts::default());
    let publisher = open_publisher(&connection).await?;
    let consumer = open_consumer(&connection, &node).await?;
    counts.set_queue(consumer.2.as_str());
    let (tx, rx) = mpsc::channel(CAPACITY);
    let tasks = vec![
        tokio::spawn(publish(
            connection.clone(),
            publisher,
            rx,
            node.clone(),
            counts.clone(),
        )),
        tokio::spawn(consume(
            connection,
            consumer,
            node.clone(),
            hub.clone(),
            counts.clone(),
        )),
    ];
    Ok(Live {
        sink: LiveSink {
            hub,
            node,
            tx,
            counts: counts.clone(),
        },
        counts,
        tasks,
    })
}

async fn declare_exchange(channel: &Channel) -> Result<(), LiveError> {
    channel
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker("declare exchange", EXCHANGE))
}

async fn open_publisher(connection: &Connection) -> Result<Channel, LiveError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(broker("open channel for", EXCHANGE))?;
    declare_exchange(&channel).await?;
    Ok(channel)
}

/// This node's queue, bound and consumed. The channel is returned with the
/// consumer so that it stays open as long as the consumer is used.
async fn open_consumer(
    connection: &Connection,
    node: &str,
) -> Result<(Channel, Consumer, ShortString), LiveError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(broker("open channel for", EXCHANGE))?;
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-max-length"),
        AMQPValue::LongLongInt(QUEUE_MAX_LENGTH),
    );
    args.insert(
        ShortString::from("x-message-ttl"),
        AMQPValue::LongLongInt(QUEUE_TTL_MS),
    );
    let name = ingest::amqp::fanout_queue(&channel, EXCHANGE, false, args).await?;
    let consumer = channel
        .basic_consume(
            name.clone(),
            format!("movewatch-live-{node}").as_str().into(),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(broker("consume", &name))?;
    Ok((channel, consumer, name))
}

/// True once the connection is closed or failed for good (not while it is
/// connecting or recovering).
fn connection_gone(connection: &Connection) -> bool {
    let status = connection.status();
    status.closing() || status.closed() || status.errored()
}

/// Opens a channel with `open` until it works, waiting longer each time;
/// None once the connection is gone.
async fn reopen<T, F, Fut>(connection: &Connection, what: &str, mut open: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, LiveError>>,
{
    let mut backoff = MIN_BACKOFF;
    loop {
        if connection_gone(connection) {
            tracing::warn!("live {what}: the AMQP connection is closed; stopping");
            return None;
        }
        tokio::time::sleep(backoff).await;
        match open().await {
            Ok(opened) => {
                tracing::info!("live {what}: channel re-opened");
                return Some(opened);
            }
            Err(e) => {
                tracing::warn!(error = %e, "live {what}: re-opening the channel failed; retrying in {backoff:?}");
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Publishes each envelope, in order, to [`EXCHANGE`]; no confirms (best
/// effort). A failed publish drops that envelope (counted) and re-opens the
/// channel before the next.
async fn publish(
    connection: Arc<Connection>,
    mut channel: Channel,
    mut rx: mpsc::Receiver<Vec<u8>>,
    node: Arc<str>,
    counts: Arc<Counts>,
) {
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(1)
        .with_app_id(node.as_ref().into());
    while let Some(body) = rx.recv().await {
        if !channel.status().connected() {
            tracing::warn!("live publisher: channel closed; re-opening");
            match reopen(&connection, "publisher", || open_publisher(&connection)).await {
                Some(c) => channel = c,
                None => return,
            }
        }
        let sent = match channel
            .basic_publish(
                EXCHANGE.into(),
                "".into(),
                BasicPublishOptions::default(),
                &body,
                properties.clone(),
            )
            .await
        {
            // Without confirm mode this resolves at once ("not requested");
            // awaiting it lets lapin forget it.
            Ok(confirm) => confirm.await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "live publish failed; envelope dropped");
            counts.dropped();
        }
    }
}

/// Routes other nodes' envelopes into `hub`; re-opens the queue when its
/// channel closes, while the connection lives.
async fn consume(
    connection: Arc<Connection>,
    opened: (Channel, Consumer, ShortString),
    node: Arc<str>,
    hub: Hub,
    counts: Arc<Counts>,
) {
    let (mut _channel, mut consumer, _) = opened;
    loop {
        while let Some(delivery) = consumer.next().await {
            match delivery {
                Ok(d) => receive(&d.data, &node, &hub, &counts),
                Err(e) => {
                    tracing::warn!(error = %e, "live consumer: delivery failed");
                    break;
                }
            }
        }
        tracing::warn!("live consumer: ended (its channel closed or its queue went); re-opening");
        match reopen(&connection, "consumer", || {
            open_consumer(&connection, &node)
        })
        .await
        {
            Some((c, q, name)) => {
                tracing::info!(queue = %name, "live consumer: consuming again");
                counts.set_queue(name.as_str());
                _channel = c;
                consumer = q;
            }
            None => return,
        }
    }
}

/// Why a message is not a valid envelope.
#[derive(Debug, thiserror::Error)]
enum Rejected {
    /// Not JSON, or not the envelope's shape (a field missing, an id invalid).
    #[error("not an envelope: {0}")]
    Json(#[from] serde_json::Error),
    /// A position must name its vehicle (it conflates by it).
    #[error("a position without a vehicle")]
    PositionWithoutVehicle,
}

fn decode(body: &[u8]) -> Result<EnvelopeIn, Rejected> {
    let envelope: EnvelopeIn = serde_json::from_slice(body)?;
    if envelope
        .frames
        .iter()
        .any(|f| f.kind == RemoteKind::Position && f.vehicle.is_none())
    {
        return Err(Rejected::PositionWithoutVehicle);
    }
    Ok(envelope)
}

/// One message from the exchange: skipped if it is this node's own,
/// counted and skipped if it is not a valid envelope, routed otherwise.
fn receive(body: &[u8], node: &str, hub: &Hub, counts: &Counts) {
    let envelope = match decode(body) {
        Ok(envelope) => envelope,
        Err(e) => {
            tracing::debug!(error = %e, bytes = body.len(), "live message rejected");
            counts.rejected();
            return;
        }
    };
    if envelope.node == node {
        return;
    }
    hub.route_remote(envelope.frames.into_iter().map(|f| RemoteFrame {
        kind: f.kind,
        text: Utf8Bytes::from(f.text),
        vehicle: f.vehicle,
        supplier: f.supplier,
        sites: f.sites,
    }));
}

#[cfg(test)]
mod tests {
    use std::time::{Instant, SystemTime, UNIX_EPOCH};

    use engine::Sink;
    use lapin::ConnectionProperties;
    use model::wire::{AlertView, Channel as Subscription, PositionView};
    use tracker::Update;

    use super::*;
    use crate::Access;
    use crate::hub::ClientRoutes;
    use crate::outbox::{Next, Outbox};

    fn vehicle() -> VehicleId {
        VehicleId::parse("AB12CDE").unwrap()
    }

    fn lei() -> SiteId {
        SiteId::parse("LEI").unwrap()
    }

    fn position(lat: f64) -> Update {
        Update::Position {
            view: PositionView {
                vehicle: vehicle(),
                lat,
                lon: -1.5,
                speed_kmh: None,
                bearing: None,
                ts: "2026-11-21T09:00:00Z".into(),
                move_ids: vec![],
            },
            supplier: "geoamey".parse().unwrap(),
        }
    }

    /// A client of `hub` holding `channel`, its snapshot already taken.
    fn client(hub: &Hub, access: Access, channel: Subscription) -> (Outbox, ClientRoutes) {
        let outbox = Outbox::default();
        let mut routes = hub.join(outbox.clone(), access);
        routes
            .subscribe(channel, Instant::now())
            .fill("snapshot".into());
        assert!(matches!(outbox.pop(), Next::Frame(..)));
        (outbox, routes)
    }

    /// The texts waiting in `outbox`, in order.
    fn drain(outbox: &Outbox) -> Vec<String> {
        let mut out = Vec::new();
        while let Next::Frame(text, _) = outbox.pop() {
            out.push(text.as_str().to_owned());
        }
        out
    }

    /// What `outbox` receives of `want` within `within` (frames of other
    /// runs sharing the broker are ignored), in order.
    async fn collect(outbox: &Outbox, want: &[String], within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        loop {
            got.extend(drain(outbox).into_iter().filter(|t| want.contains(t)));
            if got.len() >= want.len() || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn envelopes_are_routed_once_skipped_when_ours_and_rejected_when_malformed() {
        let hub = Hub::new();
        let counts = Counts::default();
        let (control, _c) = client(&hub, Access::ControlRoom, Subscription::Fleet);
        let (serco, _s) = client(
            &hub,
            Access::Supplier("serco".parse().unwrap()),
            Subscription::Vehicle(vehicle()),
        );
        let envelope = |node: &str, lat: f64| {
            let text = Frame::Position(match position(lat) {
                Update::Position { view, .. } => view,
            })
            .to_json();
            let body = serde_json::to_vec(&EnvelopeOut {
                node,
                frames: vec![ItemOut {
                    kind: RemoteKind::Position,
                    vehicle: Some(vehicle()),
                    supplier: Some("geoamey".parse().unwrap()),
                    sites: &[],
                    text: &text,
                }],
            })
            .unwrap();
            (body, text)
        };
        let (first, _) = envelope("b", 53.1);
        let (second, second_text) = envelope("b", 53.2);
        let (ours, _) = envelope("a", 53.3);
        receive(&first, "a", &hub, &counts);
        receive(&second, "a", &hub, &counts);
        receive(&ours, "a", &hub, &counts);
        // Positions conflate by vehicle, as local ones do; our own is skipped.
        assert_eq!(drain(&control), [second_text]);
        // Scope holds for remote frames: another supplier's van is not seen.
        assert!(drain(&serco).is_empty());
        assert_eq!(counts.rejected.load(Ordering::Relaxed), 0);

        for bad in [
            &b"not json"[..],
            br#"{"node":"b"}"#,
            br#"{"node":"b","frames":[{"kind":"position","text":"{}"}]}"#,
            br#"{"node":"b","frames":[{"kind":"frame","vehicle":"not a reg!","text":"{}"}]}"#,
            br#"{"node":"b","frames":[{"kind":"teleport","text":"{}"}]}"#,
        ] {
            receive(bad, "a", &hub, &counts);
        }
        assert_eq!(counts.rejected.load(Ordering::Relaxed), 5);
        assert!(drain(&control).is_empty());
    }

    fn amqp_tests_enabled() -> bool {
        std::env::var("MOVEWATCH_AMQP_TESTS").map_or(true, |v| v != "0")
    }

    /// A connection to the test broker; panics (fails the test) with what to
    /// do if there is none.
    async fn connect() -> Arc<Connection> {
        let url = std::env::var("MOVEWATCH_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        let connecting = Connection::connect(&url, ConnectionProperties::default());
        match tokio::time::timeout(Duration::from_secs(10), connecting).await {
            Ok(Ok(connection)) => Arc::new(connection),
            Ok(Err(e)) => panic!(
                "RabbitMQ is not reachable (MOVEWATCH_AMQP_URL, default guest@127.0.0.1:5672): {e}. \
                 Start it, or set MOVEWATCH_AMQP_TESTS=0 to skip the tests that need it"
            ),
            Err(_) => panic!(
                "RabbitMQ did not answer within 10 s (MOVEWATCH_AMQP_URL, default \
                 guest@127.0.0.1:5672). Start it, or set MOVEWATCH_AMQP_TESTS=0 to skip"
            ),
        }
    }

    /// Two nodes in one process, each with its own connection, hub and
    /// live exchange, on the real broker.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_nodes_frames_reach_the_other_nodes_clients_within_a_second() {
        if !amqp_tests_enabled() {
            eprintln!("MOVEWATCH_AMQP_TESTS=0: skipped");
            return;
        }
        // Unique per run: other runs may share the broker and the exchange.
        let run = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let lat = 53.0 + (run % 1_000_000) as f64 * 1e-7;
        let (conn_a, conn_b) = (connect().await, connect().await);
        let (hub_a, hub_b) = (Hub::new(), Hub::new());
        let a = start_live(conn_a.clone(), &format!("a-{run}"), hub_a.clone())
            .await
            .expect("start node a");
        let b = start_live(conn_b.clone(), &format!("b-{run}"), hub_b.clone())
            .await
            .expect("start node b");

        let (a_control, _ac) = client(&hub_a, Access::ControlRoom, Subscription::Fleet);
        let (b_control, _bc) = client(&hub_b, Access::ControlRoom, Subscription::Fleet);
        let (b_lei, _bl) = client(&hub_b, Access::Site(vec![lei()]), Subscription::Site(lei()));
        let (b_serco, _bs) = client(
            &hub_b,
            Access::Supplier("serco".parse().unwrap()),
            Subscription::Vehicle(vehicle()),
        );

        let sent = Instant::now();
        a.sink
            .positions(vec![(Instant::now(), vec![(position(lat), vec![lei()])])]);
        a.sink.frame(
            &Frame::Alert(AlertView {
                kind: "stopped".into(),
                vehicle: vehicle(),
                move_id: None,
                ts: "2026-11-21T09:00:05Z".into(),
                detail: format!("live test run {run}"),
            }),
            Some(vehicle()),
            Some("geoamey".parse().unwrap()),
            vec![lei()],
        );
        // a's own clients get both at once, from a's hub.
        let local = drain(&a_control);
        assert_eq!(local.len(), 2, "a's hub routed {local:?}");
        assert!(local[0].contains("\"position\"") && local[1].contains("\"alert\""));

        // b's clients get the identical texts within a second.
        let remote = collect(&b_control, &local, Duration::from_secs(1)).await;
        let took = sent.elapsed();
        assert_eq!(remote, local, "b's control room after {took:?}");
        assert!(took < Duration::from_secs(1), "took {took:?}");
        assert_eq!(collect(&b_lei, &local, Duration::ZERO).await, local);
        assert!(drain(&b_serco).is_empty(), "another supplier saw the van");

        // a's own envelopes came back to a's queue along with b's copies,
        // and were skipped: a's clients do not get them twice.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = collect(&a_control, &local, Duration::ZERO).await;
        assert!(
            again.is_empty(),
            "a's hub routed its own frames twice: {again:?}"
        );

        // Malformed messages straight to the exchange: counted, skipped, and
        // the next good envelope still gets through.
        let rejected_before = b.rejected();
        let raw = conn_a.create_channel().await.expect("channel");
        for bad in [
            &b"not json"[..],
            br#"{"node":"x","frames":[{"kind":"position","text":"{}"}]}"#,
        ] {
            raw.basic_publish(
                EXCHANGE.into(),
                "".into(),
                BasicPublishOptions::default(),
                bad,
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("published");
        }
        a.sink.positions(vec![(
            Instant::now(),
            vec![(position(lat + 0.001), vec![])],
        )]);
        let next = drain(&a_control);
        assert_eq!(next.len(), 1);
        let got = collect(&b_control, &next, Duration::from_secs(1)).await;
        assert_eq!(got, next, "the good envelope after the malformed ones");
        let deadline = Instant::now() + Duration::from_secs(1);
        while b.rejected() < rejected_before + 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            b.rejected() >= rejected_before + 2,
            "rejected {}",
            b.rejected()
        );
        assert_eq!(a.dropped() + b.dropped(), 0);

        a.abort();
        b.abort();
        for conn in [conn_a, conn_b] {
            let _ = conn.close(200, "test done".into()).await;
        }
    }

    /// The consumer's queue goes (as when the broker node holding it dies,
    /// or an operator deletes it): the consumer opens a new one on the same
    /// connection, and frames flow again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_consumer_comes_back_when_its_queue_goes() {
        if !amqp_tests_enabled() {
            eprintln!("MOVEWATCH_AMQP_TESTS=0: skipped");
            return;
        }
        let run = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let (conn_a, conn_b) = (connect().await, connect().await);
        let (hub_a, hub_b) = (Hub::new(), Hub::new());
        let a = start_live(conn_a.clone(), &format!("a-{run}"), hub_a)
            .await
            .expect("start node a");
        let b = start_live(conn_b.clone(), &format!("b-{run}"), hub_b.clone())
            .await
            .expect("start node b");
        let (b_control, _bc) = client(&hub_b, Access::ControlRoom, Subscription::Fleet);

        let first = b.queue();
        assert!(!first.is_empty());
        // Exclusive: only b's own connection may delete it.
        let side = conn_b.create_channel().await.expect("channel");
        side.queue_delete(
            first.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .expect("delete b's queue");
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.queue() == first && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_ne!(b.queue(), first, "b's consumer did not re-open within 5 s");

        let text = Frame::Alert(AlertView {
            kind: "stopped".into(),
            vehicle: vehicle(),
            move_id: None,
            ts: "2026-11-21T09:00:05Z".into(),
            detail: format!("live re-open test run {run}"),
        });
        a.sink.frame(&text, Some(vehicle()), None, vec![]);
        let want = [text.to_json()];
        let got = collect(&b_control, &want, Duration::from_secs(1)).await;
        assert_eq!(got, want, "b's control room after b's queue was re-opened");

        a.abort();
        b.abort();
        for conn in [conn_a, conn_b] {
            let _ = conn.close(200, "test done".into()).await;
        }
    }
}
