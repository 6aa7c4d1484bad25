//! Serialise once, share everywhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use model::wire::Frame;
use tokio::sync::{broadcast, watch};
use tracker::Update;

/// How many frames the fan-out broadcast holds. Each client's task moves
/// them at once into its own queue (it never waits on the socket), so only a
/// starved task falls this far behind; it is then re-sent a snapshot.
pub const CLIENT_BACKLOG: usize = 4096;

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

/// A frame serialised once, with what it concerns for per-client filtering.
#[derive(Debug, Clone)]
pub struct SharedFrame {
    /// The JSON text, shared by every client.
    pub text: Utf8Bytes,
    /// A `position` frame: a slow client's queue keeps only the latest per vehicle.
    pub conflate: bool,
    /// The vehicle it concerns, if any.
    pub vehicle: Option<model::VehicleId>,
    /// The supplier reporting that vehicle, if known.
    pub supplier: Option<model::SupplierId>,
    /// The `site:{id}` channels that may see it now (the sites of the moves
    /// the vehicle carries, from journey start to 15 min after arrival).
    pub sites: Vec<model::SiteId>,
    /// For position frames: the batch's broker receipt, for the latency metric.
    pub mark: Option<Arc<LatencyMark>>,
}

/// The fleet-wide broadcast.
#[derive(Clone, Debug)]
pub struct Hub {
    fleet: broadcast::Sender<Arc<SharedFrame>>,
    /// True once the engine shuts down: every client is closed (1001).
    closing: Arc<watch::Sender<bool>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

impl Hub {
    /// A hub with no subscribers.
    pub fn new() -> Self {
        Hub {
            fleet: broadcast::channel(CLIENT_BACKLOG).0,
            closing: Arc::new(watch::channel(false).0),
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

    /// Serialises and broadcasts the tracker's updates for one batch;
    /// `received` is when the broker handed the batch to the engine.
    pub fn publish(&self, updates: Vec<Update>, received: Instant) {
        self.publish_scoped(updates.into_iter().map(|u| (u, Vec::new())), received);
    }

    /// As [`Hub::publish`], each update with the site channels that may see it.
    pub fn publish_scoped(
        &self,
        updates: impl IntoIterator<Item = (Update, Vec<model::SiteId>)>,
        received: Instant,
    ) {
        let mark = LatencyMark::new(received);
        for (update, sites) in updates {
            let frame = match update {
                Update::Position { view, supplier } => {
                    let vehicle = view.vehicle;
                    SharedFrame {
                        text: Utf8Bytes::from(Frame::Position(view).to_json()),
                        conflate: true,
                        vehicle: Some(vehicle),
                        supplier: Some(supplier),
                        sites,
                        mark: Some(mark.clone()),
                    }
                }
            };
            // No receivers is fine: nobody is watching.
            let _ = self.fleet.send(Arc::new(frame));
        }
    }

    /// Serialises and broadcasts one frame (`move`, `arrival`, `departure`,
    /// `alert`) concerning `vehicle`, visible on `fleet`, `vehicle:{vehicle}`
    /// and the site channels in `sites`.
    pub fn send(
        &self,
        frame: &Frame,
        vehicle: Option<model::VehicleId>,
        supplier: Option<model::SupplierId>,
        sites: Vec<model::SiteId>,
    ) {
        let _ = self.fleet.send(Arc::new(SharedFrame {
            text: Utf8Bytes::from(frame.to_json()),
            conflate: false,
            vehicle,
            supplier,
            sites,
            mark: None,
        }));
    }

    /// How many WebSocket clients are connected (each holds one receiver).
    pub fn receiver_count(&self) -> usize {
        self.fleet.receiver_count()
    }

    /// A new receiver of the fleet broadcast.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<SharedFrame>> {
        self.fleet.subscribe()
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
}
