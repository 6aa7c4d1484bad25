//! Typed rows for moves, journeys, fence transitions, arrivals and alerts (the
//! types live in `model`, since they ride on the batch), and row parsing helpers.

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
