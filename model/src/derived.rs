//! What the engine derives from a batch and must keep: move changes, completed
//! legs and alerts. They ride on the [`IngestBatch`](crate::IngestBatch) whose
//! points caused them, so the store commits them in the same transaction and
//! they are durable no later than those points are acknowledged.

use chrono::{DateTime, NaiveDate, Utc};

use crate::ids::{JourneyId, MoveId, SiteId, VehicleId};

/// A move as booked (`PUT /api/moves/{id}`), with its journeys.
#[derive(Debug, Clone, PartialEq)]
pub struct MoveRecord {
    /// The move id (BaSM uses UUIDs).
    pub id: MoveId,
    /// The human reference of the move.
    pub reference: String,
    /// Where the move starts.
    pub from_location: SiteId,
    /// Where the move ends.
    pub to_location: SiteId,
    /// The day the move is booked for.
    pub date: NaiveDate,
    /// The contract's status string (`booked`, `in_transit`, `arrived`, `completed`, `cancelled`).
    pub status: String,
    /// The legs of the move, in order.
    pub journeys: Vec<JourneyRecord>,
}

/// One leg of a move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JourneyRecord {
    /// The journey id.
    pub id: JourneyId,
    /// Where the leg starts.
    pub from_location: SiteId,
    /// Where the leg ends.
    pub to_location: SiteId,
    /// The vehicle, once known.
    pub vehicle: Option<VehicleId>,
}

/// A completed leg, the history ETA learning draws on.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    /// The move that arrived.
    pub move_id: MoveId,
    /// The vehicle that carried it.
    pub vehicle: VehicleId,
    /// Where it arrived.
    pub site: SiteId,
    /// Where it came from.
    pub from_location: SiteId,
    /// When it left `from_location`.
    pub departed_at: DateTime<Utc>,
    /// When it entered the fence of `site`.
    pub arrived_at: DateTime<Utc>,
    /// Distance driven, metres.
    pub distance_m: f64,
}

/// An alert as raised (and sent as an `alert` frame). `(kind, vehicle,
/// move_id, ts)` identifies it: the store keeps one of each, so an alert
/// derived again from redelivered data is not kept twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRecord {
    /// `gps_gap`, `stopped`, `device_silent`, `breakdown`, `off_route`, `arriving_30`, ...
    pub kind: String,
    /// The vehicle.
    pub vehicle: VehicleId,
    /// The move, if the alert concerns one.
    pub move_id: Option<MoveId>,
    /// When the condition began to hold (from the data, not the clock, where
    /// the data says: a gap's alert is at the last fix plus the threshold).
    pub ts: DateTime<Utc>,
    /// Human-readable detail.
    pub detail: String,
}

/// Everything derived from one batch (or one alert tick) that the store keeps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Derived {
    /// Moves whose status, destination or vehicles changed (upserted).
    pub moves: Vec<MoveRecord>,
    /// Completed legs.
    pub arrivals: Vec<Arrival>,
    /// Alerts raised.
    pub alerts: Vec<AlertRecord>,
}

impl Derived {
    /// Nothing to keep.
    pub fn is_empty(&self) -> bool {
        self.moves.is_empty() && self.arrivals.is_empty() && self.alerts.is_empty()
    }

    /// Appends `other`, keeping order.
    pub fn extend(&mut self, other: Derived) {
        self.moves.extend(other.moves);
        self.arrivals.extend(other.arrivals);
        self.alerts.extend(other.alerts);
    }
}
