//! Who may see a vehicle now: the one policy every route and channel asks.
//! The control room sees every vehicle; a supplier its own (the ones it
//! reports); a site the vehicles carrying its moves from the journey's
//! start until 15 minutes after arrival, as the engine's partitions publish
//! it (`tracker::moves::Visibility`, the same rule that scopes live frames).

use chrono::{DateTime, Utc};
use model::VehicleId;

use crate::{Access, Gateway};

impl Gateway {
    /// Whether `access` may see `vehicle` (its position, its track, the
    /// alerts that name it) now.
    pub fn can_see(&self, access: &Access, vehicle: &VehicleId, now: DateTime<Utc>) -> bool {
        match access {
            Access::ControlRoom => true,
            Access::Supplier(s) => self.view.supplier_of(vehicle) == Some(*s),
            Access::Site(sites) => self
                .view
                .sites_seeing(vehicle, now)
                .iter()
                .any(|s| sites.contains(s)),
        }
    }
}
