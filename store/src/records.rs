//! Typed rows for moves, journeys, fence transitions and arrivals: the tables
//! later issues (moves API, geofencing, ETA learning) read and write.

use chrono::{DateTime, NaiveDate, Utc};
pub use model::{FenceTransition, TransitionKind};
use model::{JourneyId, MoveId, SiteId, VehicleId};

use crate::StoreError;

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

/// Parses a stored id, reporting a bad one as a corrupt row.
pub(crate) fn id<T>(
    parse: fn(&str) -> Result<T, model::IdError>,
    raw: &str,
) -> Result<T, StoreError> {
    parse(raw).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn kind(raw: &str) -> Result<TransitionKind, StoreError> {
    TransitionKind::parse(raw)
        .ok_or_else(|| StoreError::Corrupt(format!("fence transition kind {raw:?}")))
}

/// A site's fence as replaced by the control room (`PUT /api/sites/{id}/fence`):
/// on start it is applied over the fence loaded from the sites files.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteFenceRecord {
    /// The site.
    pub site: SiteId,
    /// The fence as JSON text, in the form `GET /api/sites` shows it
    /// (`{"type": "circle", "radius_m": r}` or `{"type": "polygon", "geometry": ..}`);
    /// the store does not interpret it.
    pub fence: String,
    /// When it was replaced.
    pub updated_at: DateTime<Utc>,
}
