//! Serialise once, share everywhere: each frame is serialised once and
//! routed, by the hub's table of who holds which channel, straight into the
//! queues of the clients that may see it. The routing is done by whoever
//! publishes (the pipeline, the moves ticker), under a read lock, pushing
//! into each [`Outbox`] (a short lock each, never waiting on a socket), so
//! its cost follows the frames delivered, not frames × clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use model::wire::{Channel, Frame};
use model::{SiteId, SupplierId, VehicleId};
use tokio::sync::watch;
use tracker::Update;

use crate::Access;
use crate::outbox::{Outbox, SnapshotSlot};

/// When a batch was handed over by the broker, shared by every frame of the
/// batch and every client's copy: the first WebSocket send of any of them
/// records `movewatch_pipeline_latency_seconds` (broker receipt to
/// WebSocket send, once per batch, as the contract defines it).
#[derive(Debug)]
pub struct LatencyMark {
    received: Instant,
    recorded: AtomicBool,
}

impl LatencyMark {
    /// A mark for a batch received at `received`.
    pub fn new(received: Instant) -> Arc<LatencyMark> {
        Arc::new(LatencyMark {
            received,
            recorded: AtomicBool::new(false),
        })
    }

    /// How long ago the broker handed the batch over.
    pub fn elapsed(&self) -> Duration {
        self.received.elapsed()
    }

    /// A frame carrying this mark was written to a WebSocket.
    pub fn sent(&self) {
        if !self.recorded.swap(true, Ordering::Relaxed) {
            metrics::histogram!("movewatch_pipeline_latency_seconds")
                .record(self.received.elapsed().as_secs_f64());
        }
    }
}

impl PartialEq for LatencyMark {
    fn eq(&self, other: &Self) -> bool {
        self.received == other.received
    }
}

/// Records one client's latencies, broker receipt to WebSocket send, once
/// per marked frame sent to that client (see [`SendObserver`]).
pub type SendRecorder = Box<dyn FnMut(Duration) + Send>;

/// Watches every marked frame's send to every client — what benchmark P4
/// measures per client (the metric `movewatch_pipeline_latency_seconds`
/// records only the first send of each batch). None is installed in
/// service: then a send costs one `Option` check more.
pub trait SendObserver: Send + Sync {
    /// A client connected from `peer` (when the server knows it); what
    /// records its sends, or None to leave it unobserved.
    fn connected(&self, peer: Option<SocketAddr>) -> Option<SendRecorder>;
}

/// A client of the hub: its queue and what its token grants.
#[derive(Clone)]
struct Member {
    id: u64,
    outbox: Outbox,
    access: Arc<Access>,
}

/// Who is subscribed to what. A frame is routed to the `fleet` members, the
/// members of each site channel it is scoped to, and those of its vehicle's
/// channel; no client looks at frames it did not ask for.
#[derive(Default)]
struct Routes {
    fleet: Vec<Member>,
    sites: HashMap<SiteId, Vec<Member>>,
    vehicles: HashMap<VehicleId, Vec<Member>>,
}

impl Routes {
    fn list(&mut self, channel: &Channel) -> &mut Vec<Member> {
        match channel {
            Channel::Fleet => &mut self.fleet,
            Channel::Site(s) => self.sites.entry(s.clone()).or_default(),
            Channel::Vehicle(v) => self.vehicles.entry(*v).or_default(),
        }
    }

    fn remove(&mut self, id: u64, channel: &Channel) {
        match channel {
            Channel::Fleet => self.fleet.retain(|m| m.id != id),
            Channel::Site(s) => {
                if let Some(list) = self.sites.get_mut(s) {
                    list.retain(|m| m.id != id);
                    if list.is_empty() {
                        self.sites.remove(s);
                    }
                }
            }
            Channel::Vehicle(v) => {
                if let Some(list) = self.vehicles.get_mut(v) {
                    list.retain(|m| m.id != id);
                    if list.is_empty() {
                        self.vehicles.remove(v);
                    }
                }
            }
        }
    }

    /// Queues one frame for every client that may see it, once each.
    fn route(&self, frame: &Routed<'_>, now: Instant) {
        let push = |m: &Member| {
            if !m
                .outbox
                .push(frame.text.clone(), frame.mark.clone(), frame.conflate, now)
            {
                tracing::debug!("slow WebSocket client closed");
                metrics::counter!("movewatch_ws_slow_closed_total").increment(1);
            }
        };
        // Only the control room may hold `fleet`; they get every frame.
        for m in &self.fleet {
            push(m);
        }
        let on_fleet = |id: u64| self.fleet.iter().any(|m| m.id == id);
        // Clients on more than one of the frame's channels get it once.
        let mut done: Vec<u64> = Vec::new();
        for site in frame.sites {
            // Scope was checked on subscribe: a site token holds only its own sites.
            for m in self.sites.get(site).into_iter().flatten() {
                if !on_fleet(m.id) && !done.contains(&m.id) {
                    done.push(m.id);
                    push(m);
                }
            }
        }
        if let Some(v) = frame.vehicle {
            for m in self.vehicles.get(&v).into_iter().flatten() {
                let may = match &*m.access {
                    Access::ControlRoom => true,
                    Access::Supplier(s) => frame.supplier == Some(*s),
                    Access::Site(_) => false,
                };
                if may && !on_fleet(m.id) && !done.contains(&m.id) {
                    done.push(m.id);
                    push(m);
                }
            }
        }
    }
}

/// One intake batch's position updates, each with the site channels that
/// may see it, and the batch's broker-receipt time.
pub type ScopedBatch = (Instant, Vec<(Update, Vec<SiteId>)>);

/// A position frame, serialised, before it is routed.
pub(crate) struct PositionFrame {
    /// The frame's JSON, as clients receive it.
    pub(crate) text: Utf8Bytes,
    /// Its vehicle (the frame conflates by it).
    pub(crate) vehicle: VehicleId,
    /// The vehicle's supplier.
    pub(crate) supplier: SupplierId,
    /// The site channels that may see it.
    pub(crate) sites: Vec<SiteId>,
    /// Its batch's broker receipt.
    pub(crate) mark: Option<Arc<LatencyMark>>,
}

/// Serialises the position updates of several intake batches, each frame
/// once, before any lock is taken (for [`Hub::route_positions`]).
pub(crate) fn render_positions(
    batches: impl IntoIterator<Item = ScopedBatch>,
) -> Vec<PositionFrame> {
    batches
        .into_iter()
        .filter(|(_, updates)| !updates.is_empty())
        .flat_map(|(received, updates)| {
            let mark = LatencyMark::new(received);
            updates
                .into_iter()
                .map(move |(update, sites)| match update {
                    Update::Position { view, supplier } => {
                        let vehicle = view.vehicle;
                        PositionFrame {
                            text: Utf8Bytes::from(Frame::Position(view).to_json()),
                            vehicle,
                            supplier,
                            sites,
                            mark: Some(mark.clone()),
                        }
                    }
                })
        })
        .collect()
}

/// Which kind of frame came from another node ([`Hub::route_remote`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RemoteKind {
    /// A `position` frame: conflates by its vehicle in a slow client's queue.
    Position,
    /// Any other frame (`move`, `arrival`, `departure`, `alert`): never conflated.
    Frame,
}

/// A frame another engine node serialised, with what routes it.
#[derive(Debug, Clone)]
pub struct RemoteFrame {
    /// Position or other frame.
    pub kind: RemoteKind,
    /// The frame's JSON exactly as that node's clients received it.
    pub text: Utf8Bytes,
    /// The vehicle it concerns (always set for a position).
    pub vehicle: Option<VehicleId>,
    /// The vehicle's supplier.
    pub supplier: Option<SupplierId>,
    /// The site channels that may see it.
    pub sites: Vec<SiteId>,
}

/// A frame on its way to the clients.
struct Routed<'a> {
    text: Utf8Bytes,
    conflate: Option<VehicleId>,
    vehicle: Option<VehicleId>,
    supplier: Option<SupplierId>,
    sites: &'a [SiteId],
    mark: Option<Arc<LatencyMark>>,
}

/// The fan-out: who is subscribed to what, and the frames routed to them.
#[derive(Clone)]
pub struct Hub {
    routes: Arc<RwLock<Routes>>,
    next_id: Arc<AtomicU64>,
    /// Connected WebSocket clients.
    clients: Arc<AtomicUsize>,
    /// True once the engine shuts down: every client is closed (1001).
    closing: Arc<watch::Sender<bool>>,
    /// Benchmarks only: watches each send to each client.
    observer: Arc<OnceLock<Arc<dyn SendObserver>>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hub({} clients)", self.receiver_count())
    }
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

/// One connected client's place in the hub: its routes go when it does.
pub(crate) struct ClientRoutes {
    hub: Hub,
    member: Member,
    channels: Vec<Channel>,
}

impl ClientRoutes {
    /// Routes `channel`'s frames to this client from now on. The snapshot
    /// slot is queued first, under the same lock, so every live frame of the
    /// channel comes after the snapshot that [`SnapshotSlot::fill`] puts in it.
    pub(crate) fn subscribe(&mut self, channel: Channel, now: Instant) -> SnapshotSlot {
        let mut routes = self.hub.write();
        let slot = self.member.outbox.reserve(now);
        if !self.channels.contains(&channel) {
            routes.list(&channel).push(self.member.clone());
            self.channels.push(channel);
        }
        slot
    }

    /// Stops routing `channel`'s frames to this client.
    pub(crate) fn unsubscribe(&mut self, channel: &Channel) {
        if let Some(i) = self.channels.iter().position(|c| c == channel) {
            self.channels.swap_remove(i);
            self.hub.write().remove(self.member.id, channel);
        }
    }

    /// The channels this client holds.
    pub(crate) fn channels(&self) -> &[Channel] {
        &self.channels
    }
}

impl Drop for ClientRoutes {
    fn drop(&mut self) {
        let mut routes = self.hub.write();
        for channel in &self.channels {
            routes.remove(self.member.id, channel);
        }
        drop(routes);
        self.hub.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Hub {
    /// A hub with no clients.
    pub fn new() -> Self {
        Hub {
            routes: Arc::default(),
            next_id: Arc::default(),
            clients: Arc::default(),
            closing: Arc::new(watch::channel(false).0),
            observer: Arc::new(OnceLock::new()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Routes> {
        self.routes
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Routes> {
        self.routes
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Installs a [`SendObserver`] for clients connecting from now on
    /// (benchmarks). Only the first one installed counts; returns whether
    /// this one was.
    pub fn observe_sends(&self, observer: Arc<dyn SendObserver>) -> bool {
        self.observer.set(observer).is_ok()
    }

    /// The recorder for a client connecting from `peer`, if sends are observed.
    pub(crate) fn send_recorder(&self, peer: Option<SocketAddr>) -> Option<SendRecorder> {
        self.observer.get()?.connected(peer)
    }

    /// A new client, queueing into `outbox`, with no channels yet; counted
    /// in [`Hub::receiver_count`] until the returned routes are dropped.
    pub(crate) fn join(&self, outbox: Outbox, access: Access) -> ClientRoutes {
        self.clients.fetch_add(1, Ordering::Relaxed);
        ClientRoutes {
            hub: self.clone(),
            member: Member {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                outbox,
                access: Arc::new(access),
            },
            channels: Vec::new(),
        }
    }

    /// Closes every WebSocket client, now and from now on, with code 1001
    /// and the reason "server shutting down" (graceful shutdown).
    pub fn close_clients(&self) {
        self.closing.send_replace(true);
    }

    /// Turns true when the clients are to be closed.
    pub(crate) fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Serialises and routes the tracker's updates for one batch;
    /// `received` is when the broker handed the batch to the engine.
    pub fn publish(&self, updates: Vec<Update>, received: Instant) {
        self.publish_scoped(updates.into_iter().map(|u| (u, Vec::new())), received);
    }

    /// As [`Hub::publish`], each update with the site channels that may see it.
    pub fn publish_scoped(
        &self,
        updates: impl IntoIterator<Item = (Update, Vec<SiteId>)>,
        received: Instant,
    ) {
        self.publish_batches([(received, updates.into_iter().collect())]);
    }

    /// As [`Hub::publish_scoped`] for several intake batches at once, each
    /// with its broker-receipt time, in order. The routes are read once for
    /// all of them, and each client's writer is woken once for the lot
    /// rather than once per frame: the pipeline hands over what queued up
    /// while it was busy, so the busier it is the cheaper each frame gets.
    pub fn publish_batches(&self, batches: impl IntoIterator<Item = ScopedBatch>) {
        self.route_positions(render_positions(batches));
    }

    /// Routes position frames serialised by [`render_positions`], under one
    /// read of the routes; each conflates with the vehicle's earlier
    /// position in a slow client's queue.
    pub(crate) fn route_positions(&self, frames: Vec<PositionFrame>) {
        if frames.is_empty() {
            return;
        }
        let now = Instant::now();
        let routes = self.read();
        for f in frames {
            routes.route(
                &Routed {
                    text: f.text,
                    conflate: Some(f.vehicle),
                    vehicle: Some(f.vehicle),
                    supplier: Some(f.supplier),
                    sites: &f.sites,
                    mark: f.mark,
                },
                now,
            );
        }
    }

    /// Serialises and routes one frame (`move`, `arrival`, `departure`,
    /// `alert`) concerning `vehicle`, visible on `fleet`, `vehicle:{vehicle}`
    /// and the site channels in `sites`.
    pub fn send(
        &self,
        frame: &Frame,
        vehicle: Option<VehicleId>,
        supplier: Option<SupplierId>,
        sites: Vec<SiteId>,
    ) {
        self.route_frame(Utf8Bytes::from(frame.to_json()), vehicle, supplier, &sites);
    }

    /// Routes one frame already serialised (as [`Hub::send`] does after
    /// serialising it): never conflated, no latency mark.
    pub(crate) fn route_frame(
        &self,
        text: Utf8Bytes,
        vehicle: Option<VehicleId>,
        supplier: Option<SupplierId>,
        sites: &[SiteId],
    ) {
        self.read().route(
            &Routed {
                text,
                conflate: None,
                vehicle,
                supplier,
                sites,
                mark: None,
            },
            Instant::now(),
        );
    }

    /// Routes frames another engine node serialised and published on the
    /// live exchange ([`crate::live`]), exactly as this node routes its own:
    /// a position conflates by its vehicle like a local one, any other frame
    /// is never conflated. No latency mark: the broker receipt was on
    /// another machine, so `movewatch_pipeline_latency_seconds` measures
    /// local batches only. The routes are read once for the lot.
    pub fn route_remote(&self, frames: impl IntoIterator<Item = RemoteFrame>) {
        let now = Instant::now();
        let routes = self.read();
        for f in frames {
            let conflate = match f.kind {
                RemoteKind::Position => f.vehicle,
                RemoteKind::Frame => None,
            };
            routes.route(
                &Routed {
                    text: f.text,
                    conflate,
                    vehicle: f.vehicle,
                    supplier: f.supplier,
                    sites: &f.sites,
                    mark: None,
                },
                now,
            );
        }
    }

    /// How many WebSocket clients are connected.
    pub fn receiver_count(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }
}

/// The engine's frames go out through the hub (serialised once, routed).
impl engine::Sink for Hub {
    fn positions(&self, batches: Vec<ScopedBatch>) {
        self.publish_batches(batches);
    }

    fn frame(
        &self,
        frame: &Frame,
        vehicle: Option<VehicleId>,
        supplier: Option<SupplierId>,
        sites: Vec<SiteId>,
    ) {
        self.send(frame, vehicle, supplier, sites);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_measured_once_however_many_clients_send_it() {
        let mark = LatencyMark::new(Instant::now());
        assert!(!mark.recorded.load(Ordering::Relaxed));
        mark.sent();
        assert!(mark.recorded.load(Ordering::Relaxed));
        // Later sends (other clients, other frames of the batch) record nothing more.
        mark.sent();
        assert!(mark.recorded.load(Ordering::Relaxed));
    }

    fn position(vehicle: &str, supplier: &str) -> Update {
        Update::Position {
            view: model::wire::PositionView {
                vehicle: VehicleId::parse(vehicle).unwrap(),
                lat: 53.8,
                lon: -1.5,
                speed_kmh: None,
                bearing: None,
                ts: "2026-11-21T09:00:00Z".into(),
                move_ids: vec![],
            },
            supplier: supplier.parse().unwrap(),
        }
    }

    /// The vehicles of the position frames waiting in `outbox`, in order.
    fn drain(outbox: &Outbox) -> Vec<String> {
        let mut out = Vec::new();
        while let crate::outbox::Next::Frame(text, _) = outbox.pop() {
            match serde_json::from_str::<serde_json::Value>(text.as_str()) {
                Ok(v) => out.push(v["vehicle"].as_str().unwrap_or("").to_owned()),
                Err(_) => out.push(text.as_str().to_owned()),
            }
        }
        out
    }

    #[test]
    fn frames_reach_only_the_clients_of_their_channels_and_each_once() {
        let hub = Hub::new();
        let lei = SiteId::parse("LEI").unwrap();
        let hli = SiteId::parse("HLI").unwrap();
        let now = Instant::now();
        let join = |access: Access, channels: &[Channel]| {
            let outbox = Outbox::default();
            let mut routes = hub.join(outbox.clone(), access);
            for c in channels {
                routes.subscribe(c.clone(), now).fill("snapshot".into());
            }
            // The snapshots.
            for _ in channels {
                assert!(matches!(outbox.pop(), crate::outbox::Next::Frame(..)));
            }
            (outbox, routes)
        };
        let van = VehicleId::parse("WD15VAN").unwrap();
        // The control room on fleet and on LEI and on the van: each frame once.
        let (control, _c) = join(
            Access::ControlRoom,
            &[
                Channel::Fleet,
                Channel::Site(lei.clone()),
                Channel::Vehicle(van),
            ],
        );
        let (lei_board, _l) = join(
            Access::Site(vec![lei.clone()]),
            &[Channel::Site(lei.clone())],
        );
        let (hli_board, _h) = join(Access::Site(vec![hli.clone()]), &[Channel::Site(hli)]);
        let (geoamey, _g) = join(
            Access::Supplier("geoamey".parse().unwrap()),
            &[Channel::Vehicle(van)],
        );
        let (serco, _s) = join(
            Access::Supplier("serco".parse().unwrap()),
            &[Channel::Vehicle(van)],
        );
        assert_eq!(hub.receiver_count(), 5);
        hub.publish_scoped(
            [
                (position("WD15VAN", "geoamey"), vec![lei.clone()]),
                (position("OT12HER", "geoamey"), vec![]),
            ],
            now,
        );
        assert_eq!(drain(&control), ["WD15VAN", "OT12HER"]);
        assert_eq!(drain(&lei_board), ["WD15VAN"]);
        assert!(drain(&hli_board).is_empty());
        assert_eq!(drain(&geoamey), ["WD15VAN"]);
        // Another supplier's vehicle, even on a channel naming it.
        assert!(drain(&serco).is_empty());
    }

    #[test]
    fn a_client_that_unsubscribes_or_leaves_gets_nothing_more() {
        let hub = Hub::new();
        let lei = SiteId::parse("LEI").unwrap();
        let now = Instant::now();
        let outbox = Outbox::default();
        let mut routes = hub.join(outbox.clone(), Access::ControlRoom);
        routes
            .subscribe(Channel::Fleet, now)
            .fill("snapshot".into());
        routes
            .subscribe(Channel::Site(lei.clone()), now)
            .fill("snapshot".into());
        assert_eq!(drain(&outbox), ["snapshot", "snapshot"]);
        routes.unsubscribe(&Channel::Fleet);
        hub.publish_scoped(
            [
                (position("WD15VAN", "geoamey"), vec![lei.clone()]),
                (position("OT12HER", "geoamey"), vec![]),
            ],
            now,
        );
        assert_eq!(drain(&outbox), ["WD15VAN"]);
        drop(routes);
        assert_eq!(hub.receiver_count(), 0);
        hub.publish_scoped([(position("WD15VAN", "geoamey"), vec![lei])], now);
        assert!(drain(&outbox).is_empty());
    }
}
