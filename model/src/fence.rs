//! Fence crossings as stored: what the geofence engine confirmed for one
//! vehicle at one site. Defined here (not in `geofence`) so that a batch can
//! carry them to the store, which commits them with the points they came from.

use chrono::{DateTime, Utc};

use crate::ids::{SiteId, VehicleId};

/// What a vehicle did at a site's fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransitionKind {
    /// Arrived: dwelt inside the fence.
    Enter,
    /// Left: stayed beyond the fence's exit buffer.
    Exit,
    /// Crossed the fence without stopping (never an arrival).
    PassThrough,
}

impl TransitionKind {
    /// The stored string: `enter`, `exit`, `pass_through`.
    pub const fn as_str(self) -> &'static str {
        match self {
            TransitionKind::Enter => "enter",
            TransitionKind::Exit => "exit",
            TransitionKind::PassThrough => "pass_through",
        }
    }

    /// Parses [`TransitionKind::as_str`].
    pub fn parse(s: &str) -> Option<TransitionKind> {
        match s {
            "enter" => Some(TransitionKind::Enter),
            "exit" => Some(TransitionKind::Exit),
            "pass_through" => Some(TransitionKind::PassThrough),
            _ => None,
        }
    }
}

/// A fence crossing of one vehicle at one site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceTransition {
    /// The vehicle.
    pub vehicle: VehicleId,
    /// The site whose fence was crossed.
    pub site: SiteId,
    /// Enter, exit or pass-through.
    pub kind: TransitionKind,
    /// The fix time of the crossing (its first qualifying fix), UTC.
    pub ts: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_kinds_round_trip() {
        for k in [
            TransitionKind::Enter,
            TransitionKind::Exit,
            TransitionKind::PassThrough,
        ] {
            assert_eq!(TransitionKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(TransitionKind::parse("inside"), None);
    }
}
