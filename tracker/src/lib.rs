//! Live vehicle state for movewatch.
//!
//! [`Tracker::apply`] takes each decoded batch in arrival order, flags points
//! that must not move live state (late, or a bad fix), updates the latest
//! fix per vehicle, and returns the [`Update`]s for the gateway to fan out.
//! The batch then goes on to the store, flags included. The tracker is
//! shared by the engine's partitions, each writing only its own vehicles
//! (a concurrent map: no lock is held across vehicles), and read by the
//! gateway.
//!
//! Invariant: a vehicle's live fix only moves forward in time.

mod distance;
pub mod eta;
pub mod moves;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use model::wire::PositionView;
use model::{IngestBatch, MoveId, Position, SupplierId, VehicleId};

pub use distance::haversine_m;

/// Thresholds for bad-fix flags.
#[derive(Debug, Clone, Copy)]
pub struct TrackerConfig {
    /// A fix with a larger hdop is flagged.
    pub max_hdop: f64,
    /// A fix implying a faster speed from the previous live fix is flagged (km/h).
    pub max_implied_speed_kmh: f64,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            max_hdop: 10.0,
            max_implied_speed_kmh: 300.0,
        }
    }
}

impl From<&model::config::IngestConfig> for TrackerConfig {
    fn from(c: &model::config::IngestConfig) -> Self {
        TrackerConfig {
            max_hdop: c.max_hdop,
            max_implied_speed_kmh: c.max_implied_speed_kmh,
        }
    }
}

/// What one vehicle looks like now.
#[derive(Debug, Clone, PartialEq)]
pub struct VehicleState {
    /// The supplier reporting it.
    pub supplier: SupplierId,
    /// Its latest usable fix.
    pub latest: Position,
    /// Moves it is carrying.
    pub move_ids: Vec<MoveId>,
}

impl VehicleState {
    /// The state as the contract's position view.
    pub fn view(&self) -> PositionView {
        PositionView::from_position(&self.latest, self.move_ids.clone())
    }
}

/// A change for the gateway to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// A vehicle's live position moved.
    Position {
        /// The new live view.
        view: PositionView,
        /// The supplier reporting the vehicle (for scoping).
        supplier: SupplierId,
    },
}

/// What the checks need of a vehicle's previous live fix.
#[derive(Clone, Copy)]
struct PreviousFix {
    ts: DateTime<Utc>,
    lat: f64,
    lon: f64,
}

/// The live state of every vehicle.
#[derive(Debug)]
pub struct Tracker {
    config: TrackerConfig,
    vehicles: DashMap<VehicleId, VehicleState>,
}

impl Tracker {
    /// An empty tracker.
    pub fn new(config: TrackerConfig) -> Self {
        Tracker {
            config,
            vehicles: DashMap::new(),
        }
    }

    /// Seeds live state from stored fixes (on start), without emitting updates.
    pub fn restore(&self, positions: impl IntoIterator<Item = Position>) {
        let mut batch = IngestBatch {
            source: model::Source::Replay,
            received: std::time::Instant::now(),
            received_at: Utc::now(),
            positions: positions.into_iter().collect(),
            events: vec![],
            dead_letters: vec![],
            transitions: vec![],
            derived: Default::default(),
            commit: model::CommitToken::detached(),
        };
        batch.positions.sort_by_key(|p| p.ts);
        let _ = self.apply(&mut batch);
    }

    /// Applies a batch: sets each point's flags and returns the live updates.
    pub fn apply(&self, batch: &mut IngestBatch) -> Vec<Update> {
        let mut updates = Vec::new();
        for p in &mut batch.positions {
            let mut entry = self.vehicles.entry(p.vehicle);
            // Only the time and place of the previous fix are needed: copy those, not the point.
            let previous = match &entry {
                dashmap::Entry::Occupied(o) => {
                    let l = &o.get().latest;
                    Some(PreviousFix {
                        ts: l.ts,
                        lat: l.lat,
                        lon: l.lon,
                    })
                }
                dashmap::Entry::Vacant(_) => None,
            };
            p.flags.late = previous.is_some_and(|prev| p.ts <= prev.ts);
            p.flags.bad_fix = !p.flags.late && self.is_bad_fix(p, previous);
            if !p.flags.usable_live() {
                continue;
            }
            let view = match &mut entry {
                dashmap::Entry::Occupied(o) => {
                    let state = o.get_mut();
                    state.latest = p.clone();
                    state.supplier = p.supplier;
                    state.view()
                }
                dashmap::Entry::Vacant(_) => {
                    let state = VehicleState {
                        supplier: p.supplier,
                        latest: p.clone(),
                        move_ids: Vec::new(),
                    };
                    let view = state.view();
                    entry.insert(state);
                    view
                }
            };
            updates.push(Update::Position {
                view,
                supplier: p.supplier,
            });
        }
        metrics::gauge!("movewatch_tracked_vehicles").set(self.vehicles.len() as f64);
        updates
    }

    fn is_bad_fix(&self, p: &Position, previous: Option<PreviousFix>) -> bool {
        if p.hdop.is_some_and(|h| h > self.config.max_hdop) {
            return true;
        }
        let Some(prev) = previous else { return false };
        let hours = (p.ts - prev.ts).num_milliseconds() as f64 / 3_600_000.0;
        let km = haversine_m(prev.lat, prev.lon, p.lat, p.lon) / 1000.0;
        // Below 50 m any jump is GPS noise, not a teleport.
        km > 0.05 && km / hours > self.config.max_implied_speed_kmh
    }

    /// How many vehicles are live.
    pub fn len(&self) -> usize {
        self.vehicles.len()
    }

    /// Whether no vehicle is live.
    pub fn is_empty(&self) -> bool {
        self.vehicles.is_empty()
    }

    /// One vehicle's state.
    pub fn get(&self, vehicle: &VehicleId) -> Option<VehicleState> {
        self.vehicles.get(vehicle).map(|s| s.clone())
    }

    /// The supplier reporting a vehicle, if it is live.
    pub fn supplier_of(&self, vehicle: &VehicleId) -> Option<SupplierId> {
        self.vehicles.get(vehicle).map(|s| s.supplier)
    }

    /// Sets the moves a vehicle carries (shown in its position views); a
    /// vehicle that is not live is left alone.
    pub fn set_move_ids(&self, vehicle: &VehicleId, move_ids: &[MoveId]) {
        if let Some(mut s) = self.vehicles.get_mut(vehicle)
            && s.move_ids != move_ids
        {
            s.move_ids = move_ids.to_vec();
        }
    }

    /// Every vehicle's live view, sorted by registration.
    pub fn snapshot(&self) -> Vec<PositionView> {
        let mut all: Vec<PositionView> = self.vehicles.iter().map(|s| s.view()).collect();
        all.sort_by_key(|v| v.vehicle);
        all
    }

    /// The newest fix time of any vehicle, if any.
    pub fn newest_fix(&self) -> Option<DateTime<Utc>> {
        self.vehicles.iter().map(|s| s.latest.ts).max()
    }
}

#[cfg(test)]
mod tests;
