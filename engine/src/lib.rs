//! The movewatch engine core (between `tracker`/`geofence` and the gateway
//! and store in the flow).
//!
//! Vehicles are hashed onto P partitions ([`partition_of`]). Each
//! [`Partition`] owns its vehicles' live state, fence states, move matching,
//! ETA trips and alerts; processing a batch is the synchronous
//! [`Partition::process`], which returns [`Effects`]. The [`runtime`] runs
//! each partition as its own task on its own bounded channel, splits intake
//! batches by partition (a batch is acknowledged once every part is
//! committed), fans bookings and fence replacements out to every partition
//! as ordered [`Command`]s, passes move claims and handovers between
//! partitions (`tracker::moves::peers`), ticks each partition's alerts, and
//! publishes each partition's read view ([`EngineView`]) for the gateway.
//!
//! The engine knows neither the store nor the gateway: what it produces
//! goes to a [`Sink`] (live frames) and to the store writer's channel
//! (batches with what they caused), and recovery is handed in as data
//! ([`Recovered`]).

#![deny(missing_docs)]

pub mod cluster;
mod command;
mod partition;
pub mod runtime;
mod split;
mod view;

use std::time::Instant;

use model::wire::Frame;
use model::{SiteId, SupplierId, VehicleId};
use tracker::Update;

pub use command::{
    Announce, Announcement, Command, CommandError, Commands, Persist, PersistFuture, record_of,
    spec_of,
};
pub use partition::{Effects, Partition, Recovered};
pub use runtime::{
    Control, EngineConfig, Inspection, RemotePeer, Running, Start, read_only, start,
};
pub use view::EngineView;

/// Position updates of one intake batch: its receipt time and, per update,
/// the site channels that may see it.
pub type ScopedPositions = (Instant, Vec<(Update, Vec<SiteId>)>);

/// Where live frames go (the gateway's fan-out hub).
pub trait Sink: Send + Sync + 'static {
    /// Position updates of several intake batches, each with its receipt
    /// time and, per update, the site channels that may see it.
    fn positions(&self, batches: Vec<ScopedPositions>);
    /// One frame (`move`, `arrival`, `departure`, `alert`) about `vehicle`,
    /// for `fleet`, `vehicle:{vehicle}` and the site channels in `sites`.
    fn frame(
        &self,
        frame: &Frame,
        vehicle: Option<VehicleId>,
        supplier: Option<SupplierId>,
        sites: Vec<SiteId>,
    );
}

/// The partition a vehicle belongs to, out of `count`: a stable hash of the
/// registration (FNV-1a), so the same vehicle lands on the same partition
/// in every process and every run.
pub fn partition_of(vehicle: &VehicleId, count: usize) -> usize {
    hash_index(vehicle.as_str().as_bytes(), count)
}

/// The partition that holds a move while no vehicle carries it.
pub fn home_of(move_id: &model::MoveId, count: usize) -> usize {
    hash_index(move_id.as_str().as_bytes(), count)
}

fn hash_index(bytes: &[u8], count: usize) -> usize {
    if count <= 1 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % count as u64) as usize
}
