//! Vans and their road-like routes.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use model::{PointFlags, Position, Site, SupplierId, VehicleId};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const EARTH_RADIUS_M: f64 = 6_371_008.8;

fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (p1, p2) = (a.0.to_radians(), b.0.to_radians());
    let h = ((p2 - p1) / 2.0).sin().powi(2)
        + p1.cos() * p2.cos() * ((b.1 - a.1).to_radians() / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

fn bearing_deg(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (p1, p2) = (a.0.to_radians(), b.0.to_radians());
    let dl = (b.1 - a.1).to_radians();
    let y = dl.sin() * p2.cos();
    let x = p1.cos() * p2.sin() - p1.sin() * p2.cos() * dl.cos();
    (y.atan2(x).to_degrees() + 360.0) % 360.0
}

/// A polyline from one site to another, with its cumulative lengths.
#[derive(Debug, Clone)]
pub struct Route {
    /// (lat, lon) points, first at the origin site, last at the destination.
    pub points: Vec<(f64, f64)>,
    cumulative_m: Vec<f64>,
}

impl Route {
    /// A route that bends like a road: waypoints pushed sideways by up to
    /// 12 % of the trip, so the path is 5–20 % longer than the straight line.
    pub fn between(from: (f64, f64), to: (f64, f64), rng: &mut SmallRng) -> Route {
        let waypoints = rng.random_range(3..7);
        let (dlat, dlon) = (to.0 - from.0, to.1 - from.1);
        let mut points = vec![from];
        for k in 1..waypoints {
            let t = k as f64 / waypoints as f64;
            let side = rng.random_range(-0.12..0.12) * (1.0 - (2.0 * t - 1.0).abs()).max(0.3);
            points.push((
                from.0 + dlat * t - dlon * side * 0.6,
                from.1 + dlon * t + dlat * side / 0.6,
            ));
        }
        points.push(to);
        let mut cumulative_m = vec![0.0];
        for w in points.windows(2) {
            let last = *cumulative_m.last().unwrap_or(&0.0);
            cumulative_m.push(last + distance_m(w[0], w[1]));
        }
        Route {
            points,
            cumulative_m,
        }
    }

    /// Length in metres.
    pub fn length_m(&self) -> f64 {
        *self.cumulative_m.last().unwrap_or(&0.0)
    }

    /// The point and heading at a distance along the route.
    pub fn at(&self, along_m: f64) -> ((f64, f64), f64) {
        let along = along_m.clamp(0.0, self.length_m());
        let seg = self
            .cumulative_m
            .partition_point(|&c| c <= along)
            .clamp(1, self.points.len() - 1);
        let (a, b) = (self.points[seg - 1], self.points[seg]);
        let len = self.cumulative_m[seg] - self.cumulative_m[seg - 1];
        let t = if len > 0.0 {
            (along - self.cumulative_m[seg - 1]) / len
        } else {
            1.0
        };
        (
            (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t),
            bearing_deg(a, b),
        )
    }
}

/// One simulated van.
#[derive(Debug, Clone)]
pub struct Van {
    /// Its registration.
    pub vehicle: VehicleId,
    /// Its supplier.
    pub supplier: SupplierId,
    sites: Arc<Vec<Site>>,
    destination: usize,
    route: Route,
    along_m: f64,
    cruise_kmh: f64,
    dwell_left_s: f64,
    sequence: u64,
    rng: SmallRng,
}

impl Van {
    /// A van at site `start`, about to drive to another site.
    pub fn new(
        vehicle: VehicleId,
        supplier: SupplierId,
        sites: Arc<Vec<Site>>,
        start: usize,
        seed: u64,
    ) -> Van {
        let mut rng = SmallRng::seed_from_u64(seed);
        let at = (sites[start].lat, sites[start].lon);
        let mut van = Van {
            vehicle,
            supplier,
            sites,
            destination: start,
            route: Route {
                points: vec![at, at],
                cumulative_m: vec![0.0, 0.0],
            },
            along_m: 0.0,
            cruise_kmh: rng.random_range(55.0..95.0),
            dwell_left_s: 0.0,
            sequence: 0,
            rng,
        };
        van.next_trip();
        van
    }

    fn next_trip(&mut self) {
        let here = self.route.points[self.route.points.len() - 1];
        // Prefer a destination 10–150 km away, as escort runs are.
        let mut choice = self.rng.random_range(0..self.sites.len());
        for _ in 0..20 {
            let s = &self.sites[choice];
            let d = distance_m(here, (s.lat, s.lon));
            if choice != self.destination && (10_000.0..150_000.0).contains(&d) {
                break;
            }
            choice = self.rng.random_range(0..self.sites.len());
        }
        self.destination = choice;
        let to = (self.sites[choice].lat, self.sites[choice].lon);
        self.route = Route::between(here, to, &mut self.rng);
        self.along_m = 0.0;
    }

    /// Advances `dt_s` seconds and returns the fix for `now`.
    pub fn step(&mut self, dt_s: f64, now: DateTime<Utc>) -> Position {
        let speed_kmh = if self.dwell_left_s > 0.0 {
            self.dwell_left_s -= dt_s;
            if self.dwell_left_s <= 0.0 {
                self.next_trip();
            }
            0.0
        } else {
            let v = (self.cruise_kmh + self.rng.random_range(-8.0..8.0)).max(5.0);
            self.along_m += v / 3.6 * dt_s;
            if self.along_m >= self.route.length_m() {
                self.along_m = self.route.length_m();
                self.dwell_left_s = self.rng.random_range(60.0..600.0);
            }
            v
        };
        let ((lat, lon), bearing) = self.route.at(self.along_m);
        self.sequence += 1;
        Position {
            supplier: self.supplier,
            vehicle: self.vehicle,
            tracking_id: format!(
                "{}-{}-{}",
                self.vehicle,
                now.timestamp_millis(),
                self.sequence
            ),
            ts: now,
            lat,
            lon,
            journey_id: None,
            speed_kmh: Some((speed_kmh * 10.0).round() / 10.0),
            bearing: Some(bearing.round()),
            altitude: None,
            hdop: Some(1.0 + self.rng.random_range(0.0..1.5f64).round()),
            vdop: None,
            vin: None,
            flags: PointFlags::default(),
        }
    }

    /// The site it is driving to.
    pub fn destination(&self) -> &Site {
        &self.sites[self.destination]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_bend_and_stay_between_their_ends() {
        let mut rng = SmallRng::seed_from_u64(7);
        let (a, b) = ((53.79, -1.58), (53.38, -1.47));
        let r = Route::between(a, b, &mut rng);
        let straight = distance_m(a, b);
        assert!(
            r.length_m() > straight,
            "a road is longer than the crow flies"
        );
        assert!(r.length_m() < straight * 1.5);
        assert_eq!(r.at(0.0).0, a);
        let end = r.at(r.length_m() + 10.0).0;
        assert!(distance_m(end, b) < 1.0);
    }

    #[test]
    fn the_same_seed_drives_the_same_way() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/sites.csv");
        let sites = model::site::load_sites_csv(&path).unwrap();
        let now = Utc::now();
        let run = |seed| {
            let mut fleet = crate::build_fleet(&sites, 5, seed).unwrap();
            (0..50)
                .map(|_| {
                    fleet
                        .iter_mut()
                        .map(|v| v.step(10.0, now))
                        .map(|p| (p.lat, p.lon))
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
        let fleet = crate::build_fleet(&sites, 300, 1).unwrap();
        let regs: std::collections::HashSet<_> = fleet.iter().map(|v| v.vehicle).collect();
        assert_eq!(regs.len(), 300, "registrations are unique");
    }
}
