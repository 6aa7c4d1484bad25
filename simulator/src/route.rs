//! Vans and their road-like routes.

use rand::Rng;
use rand::rngs::SmallRng;

const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Great-circle distance in metres between two (lat, lon) points.
pub fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (p1, p2) = (a.0.to_radians(), b.0.to_radians());
    let h = ((p2 - p1) / 2.0).sin().powi(2)
        + p1.cos() * p2.cos() * ((b.1 - a.1).to_radians() / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

/// Initial bearing in degrees from `a` to `b`.
pub fn bearing_deg(a: (f64, f64), b: (f64, f64)) -> f64 {
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

    /// How far along the route the van first comes within `radius_m` of
    /// `centre` (searching back from the end in 5 m steps); the route's length
    /// if its end is outside.
    pub fn entry_along(&self, centre: (f64, f64), radius_m: f64) -> f64 {
        let len = self.length_m();
        let mut along = len;
        while along > 0.0 && distance_m(self.at(along - 5.0).0, centre) < radius_m {
            along -= 5.0;
        }
        along.max(0.0)
    }

    /// How far along the route the van last is within `radius_m` of `centre`,
    /// searching forward from the start in 5 m steps.
    pub fn exit_along(&self, centre: (f64, f64), radius_m: f64) -> f64 {
        let len = self.length_m();
        let mut along = 0.0;
        while along < len && distance_m(self.at(along + 5.0).0, centre) < radius_m {
            along += 5.0;
        }
        along.min(len)
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

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
}
