//! Typed rows for moves, journeys, fence transitions, arrivals and alerts (the
//! types live in `model`, since they ride on the batch), replaced site fences,
//! and row parsing helpers.

use chrono::{DateTime, Utc};
use model::SiteId;
pub use model::{AlertRecord, Arrival, Derived, JourneyRecord, MoveRecord};
pub use model::{FenceTransition, TransitionKind};

use crate::StoreError;

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

/// A vehicle register entry as stored: which supplier runs the vehicle,
/// where the entry came from (`config`, `file`, `api`, `claim`) and when.
#[derive(Debug, Clone, PartialEq)]
pub struct VehicleRecord {
    /// The vehicle.
    pub vehicle: model::VehicleId,
    /// The supplier that runs it.
    pub supplier: model::SupplierId,
    /// `config`, `file`, `api` or `claim`.
    pub source: String,
    /// When the entry was last set.
    pub updated_at: DateTime<Utc>,
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
