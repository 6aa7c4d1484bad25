//! The R-tree of live vehicles.
//!
//! Points are stored as unit vectors on the sphere, so that Euclidean
//! (chord) distance orders vehicles exactly as great-circle distance does:
//! `nearest` needs no projection and has no distortion away from a centre.

use model::VehicleId;
use rstar::primitives::GeomWithData;
use rstar::{AABB, RTree};

const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Great-circle distance in metres.
pub fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
}

fn unit_vector(lat: f64, lon: f64) -> [f64; 3] {
    let (phi, lambda) = (lat.to_radians(), lon.to_radians());
    [
        phi.cos() * lambda.cos(),
        phi.cos() * lambda.sin(),
        phi.sin(),
    ]
}

fn chord_to_metres(chord: f64) -> f64 {
    2.0 * EARTH_RADIUS_M * (chord / 2.0).min(1.0).asin()
}

/// A latitude/longitude box (not crossing the antimeridian).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoundingBox {
    /// Southern edge.
    pub min_lat: f64,
    /// Western edge.
    pub min_lon: f64,
    /// Northern edge.
    pub max_lat: f64,
    /// Eastern edge.
    pub max_lon: f64,
}

impl BoundingBox {
    /// Whether a point lies in the box (edges included).
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        (self.min_lat..=self.max_lat).contains(&lat) && (self.min_lon..=self.max_lon).contains(&lon)
    }
}

pub(crate) type IndexedVehicle = GeomWithData<[f64; 3], (VehicleId, f64, f64)>;

pub(crate) fn indexed(vehicle: VehicleId, lat: f64, lon: f64) -> IndexedVehicle {
    GeomWithData::new(unit_vector(lat, lon), (vehicle, lat, lon))
}

#[derive(Debug, Default)]
pub(crate) struct VehicleIndex {
    tree: RTree<IndexedVehicle>,
}

impl VehicleIndex {
    pub(crate) fn insert(&mut self, v: IndexedVehicle) {
        self.tree.insert(v);
    }

    pub(crate) fn remove(&mut self, v: &IndexedVehicle) {
        self.tree.remove(v);
    }

    pub(crate) fn nearest(&self, lat: f64, lon: f64, k: usize) -> Vec<(VehicleId, f64)> {
        self.tree
            .nearest_neighbor_iter_with_distance_2(unit_vector(lat, lon))
            .take(k)
            .map(|(v, d2)| (v.data.0, chord_to_metres(d2.sqrt())))
            .collect()
    }

    pub(crate) fn within(&self, bbox: BoundingBox) -> Vec<VehicleId> {
        // The 3-D box around a grid of samples of the lat/lon box, grown by the
        // largest chord between neighbouring samples, contains the whole box;
        // candidates are then tested exactly.
        const STEPS: usize = 8;
        let mut lo = [f64::INFINITY; 3];
        let mut hi = [f64::NEG_INFINITY; 3];
        for i in 0..=STEPS {
            for j in 0..=STEPS {
                let lat = bbox.min_lat + (bbox.max_lat - bbox.min_lat) * i as f64 / STEPS as f64;
                let lon = bbox.min_lon + (bbox.max_lon - bbox.min_lon) * j as f64 / STEPS as f64;
                let p = unit_vector(lat, lon);
                for d in 0..3 {
                    lo[d] = lo[d].min(p[d]);
                    hi[d] = hi[d].max(p[d]);
                }
            }
        }
        let cell_deg = ((bbox.max_lat - bbox.min_lat).abs() + (bbox.max_lon - bbox.min_lon).abs())
            / STEPS as f64;
        let margin = cell_deg.to_radians();
        let envelope = AABB::from_corners(lo.map(|v| v - margin), hi.map(|v| v + margin));
        let mut found: Vec<VehicleId> = self
            .tree
            .locate_in_envelope_intersecting(envelope)
            .filter(|v| bbox.contains(v.data.1, v.data.2))
            .map(|v| v.data.0)
            .collect();
        found.sort();
        found
    }
}
