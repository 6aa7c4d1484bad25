//! Changes that do not come from devices: bookings (new, changed,
//! cancelled) and fence replacements. The gateway sends them here; the
//! engine makes each durable first, then applies it to every partition in
//! one order, so no partition ever sees them in another order and none is
//! reached through a shared lock.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};
use geofence::{Fence, SiteFence};
use model::{JourneyRecord, MoveRecord, SiteId};
use tokio::sync::{mpsc, oneshot};
use tracker::moves::{JourneySpec, MoveDetails, MoveSpec, MoveStatus};

/// A change the gateway asks of the engine.
#[derive(Debug)]
pub enum Command {
    /// Book a move, change its booking, or cancel it (status `cancelled`).
    Book(MoveSpec),
    /// Say which supplier runs a vehicle (the vehicle register).
    RegisterVehicle {
        /// The vehicle.
        vehicle: model::VehicleId,
        /// Its supplier.
        supplier: model::SupplierId,
    },
    /// Replace a site's fence.
    ReplaceFence {
        /// The site.
        site: SiteId,
        /// Its new fence.
        fence: Fence,
    },
    /// A claim or a journey from a partition on another engine node (a
    /// cluster), passed to the partitions here in order with the commands.
    Relay(crate::RemotePeer),
}

/// Why a command was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The store did not take it (nothing changed).
    #[error("the store did not take it: {0}")]
    Store(String),
    /// The store has not confirmed it yet: it is queued, and applies once stored.
    #[error("the store has not confirmed it within {0:?}; it is queued and applies once stored")]
    Pending(Duration),
    /// The fence cannot be used.
    #[error("{0}")]
    Fence(String),
    /// No such site.
    #[error("no site {0}")]
    UnknownSite(SiteId),
    /// The engine is stopping.
    #[error("the engine is stopping")]
    Stopped,
    /// Nothing can be changed here (a replay of history).
    #[error("nothing can be changed here: this is a replay of history")]
    ReadOnly,
}

/// What a command gave back.
#[derive(Debug)]
pub(crate) enum Reply {
    Booked(Option<MoveDetails>),
    Fenced(SiteFence),
    Registered(DateTime<Utc>),
    Relayed,
}

pub(crate) struct Request {
    pub(crate) command: Command,
    pub(crate) reply: oneshot::Sender<Result<Reply, CommandError>>,
    /// Made on another engine node, which stored and announced it: only
    /// applied here.
    pub(crate) remote: bool,
}

/// How long a caller waits for a command to be durable and applied.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateway's handle for sending commands (cheap to clone).
#[derive(Clone, Debug)]
pub struct Commands {
    pub(crate) tx: Option<mpsc::Sender<Request>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("command", &self.command)
            .finish()
    }
}

impl Commands {
    async fn send(&self, command: Command) -> Result<Reply, CommandError> {
        let (reply, rx) = oneshot::channel();
        let Some(tx) = &self.tx else {
            return Err(CommandError::ReadOnly);
        };
        tx.send(Request {
            command,
            reply,
            remote: false,
        })
        .await
        .map_err(|_| CommandError::Stopped)?;
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(CommandError::Stopped),
            Err(_) => Err(CommandError::Pending(COMMAND_TIMEOUT)),
        }
    }

    /// Applies a command another engine node has stored and announced
    /// (nothing is stored or announced again); returns once it is queued
    /// in order with this node's own commands.
    pub async fn apply_announced(&self, announced: Announcement) -> Result<(), CommandError> {
        let command = match announced {
            Announcement::Book(record) => Command::Book(spec_of(&record).ok_or_else(|| {
                CommandError::Store(format!(
                    "move {} has an unknown status {:?}",
                    record.id, record.status
                ))
            })?),
            Announcement::Vehicle { vehicle, supplier } => {
                Command::RegisterVehicle { vehicle, supplier }
            }
            Announcement::Fence { site, fence } => Command::ReplaceFence { site, fence },
        };
        let Some(tx) = &self.tx else {
            return Err(CommandError::ReadOnly);
        };
        let (reply, _) = oneshot::channel();
        tx.send(Request {
            command,
            reply,
            remote: true,
        })
        .await
        .map_err(|_| CommandError::Stopped)
    }

    /// Passes a claim or journey from another engine node's partition to
    /// the partitions here, in order with the commands (returns once queued).
    pub async fn relay(&self, peer: crate::RemotePeer) -> Result<(), CommandError> {
        let Some(tx) = &self.tx else {
            return Err(CommandError::ReadOnly);
        };
        let (reply, _) = oneshot::channel();
        tx.send(Request {
            command: Command::Relay(peer),
            reply,
            remote: true,
        })
        .await
        .map_err(|_| CommandError::Stopped)
    }

    /// Books, changes or cancels a move; once stored and applied, its live view.
    pub async fn book(&self, spec: MoveSpec) -> Result<Option<MoveDetails>, CommandError> {
        match self.send(Command::Book(spec)).await? {
            Reply::Booked(details) => Ok(details),
            _ => Err(CommandError::Stopped),
        }
    }

    /// Replaces a site's fence; once stored and live, the site with it.
    pub async fn replace_fence(
        &self,
        site: SiteId,
        fence: Fence,
    ) -> Result<SiteFence, CommandError> {
        match self.send(Command::ReplaceFence { site, fence }).await? {
            Reply::Fenced(f) => Ok(f),
            _ => Err(CommandError::Stopped),
        }
    }

    /// Registers a vehicle as a supplier's; once stored and live, when.
    pub async fn register_vehicle(
        &self,
        vehicle: model::VehicleId,
        supplier: model::SupplierId,
    ) -> Result<DateTime<Utc>, CommandError> {
        match self
            .send(Command::RegisterVehicle { vehicle, supplier })
            .await?
        {
            Reply::Registered(at) => Ok(at),
            _ => Err(CommandError::Stopped),
        }
    }
}

/// A boxed future, for [`Persist`].
pub type PersistFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Keeps what is not a batch's (a replaced fence, a register entry) before
/// it is applied.
pub trait Persist: Send + Sync + 'static {
    /// Stores a register entry made through the API as of `at`.
    fn put_vehicle<'a>(
        &'a self,
        vehicle: model::VehicleId,
        supplier: model::SupplierId,
        at: DateTime<Utc>,
    ) -> PersistFuture<'a>;
    /// Stores a site's replaced fence (GeoJSON text) as of `at`.
    fn put_fence<'a>(
        &'a self,
        site: &'a SiteId,
        fence: String,
        at: DateTime<Utc>,
    ) -> PersistFuture<'a>;
}

/// A command made on this node that the other engine nodes must apply too
/// (a cluster; docs/SCALE-OUT.md): announced once it is stored, before the
/// caller hears it is done.
#[derive(Debug, Clone)]
pub enum Announcement {
    /// A move booked, changed or cancelled.
    Book(MoveRecord),
    /// A register entry.
    Vehicle {
        /// The vehicle.
        vehicle: model::VehicleId,
        /// Its supplier.
        supplier: model::SupplierId,
    },
    /// A site's replaced fence.
    Fence {
        /// The site.
        site: SiteId,
        /// The new fence.
        fence: Fence,
    },
}

/// Tells the other engine nodes of a command (the cluster's command bus).
pub trait Announce: Send + Sync + 'static {
    /// Returns once the announcement is safe with the broker (confirmed).
    fn announce<'a>(&'a self, announced: &'a Announcement) -> PersistFuture<'a>;
}

/// The stored form of a move.
pub fn record_of(spec: &MoveSpec) -> MoveRecord {
    MoveRecord {
        id: spec.id.clone(),
        reference: spec.reference.clone(),
        from_location: spec.from_location.clone(),
        to_location: spec.to_location.clone(),
        date: spec.date,
        status: spec.status.as_str().to_owned(),
        journeys: spec
            .journeys
            .iter()
            .map(|j| JourneyRecord {
                id: j.id.clone(),
                from_location: j.from_location.clone(),
                to_location: j.to_location.clone(),
                vehicle: j.vehicle,
            })
            .collect(),
    }
}

/// The live form of a stored move (`None` for an unknown status).
pub fn spec_of(r: &MoveRecord) -> Option<MoveSpec> {
    Some(MoveSpec {
        id: r.id.clone(),
        reference: r.reference.clone(),
        from_location: r.from_location.clone(),
        to_location: r.to_location.clone(),
        date: r.date,
        status: MoveStatus::parse(&r.status)?,
        journeys: r
            .journeys
            .iter()
            .map(|j| JourneySpec {
                id: j.id.clone(),
                from_location: j.from_location.clone(),
                to_location: j.to_location.clone(),
                vehicle: j.vehicle,
            })
            .collect(),
    })
}
