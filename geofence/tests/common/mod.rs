//! Helpers shared by the integration tests.
#![allow(dead_code)]

use chrono::{DateTime, Duration, TimeZone, Utc};
use geo::{LineString, MultiPolygon, Polygon};
use model::{Site, SiteId, SiteKind, VehicleId};
use movewatch_geofence::{EARTH_RADIUS_M, Fence, FenceSet, Fix};

pub const M_PER_DEG: f64 = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;

/// The point `east` / `north` metres from (lat, lon).
pub fn offset(lat: f64, lon: f64, east: f64, north: f64) -> (f64, f64) {
    (
        lat + north / M_PER_DEG,
        lon + east / (M_PER_DEG * lat.to_radians().cos()),
    )
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 21, 9, 0, 0).unwrap()
}

pub fn at(secs: f64) -> DateTime<Utc> {
    t0() + Duration::milliseconds((secs * 1000.0) as i64)
}

pub fn fix(p: (f64, f64), secs: f64, speed: Option<f64>, hdop: Option<f64>) -> Fix {
    Fix {
        lat: p.0,
        lon: p.1,
        ts: at(secs),
        hdop,
        speed_kmh: speed,
    }
}

pub fn site(id: &str, kind: &str, lat: f64, lon: f64) -> Site {
    let kind = SiteKind::parse(kind);
    Site {
        id: SiteId::parse(id).unwrap(),
        name: id.to_owned(),
        radius_m: kind.default_radius_m(),
        kind,
        lat,
        lon,
    }
}

pub fn one_site(id: &str, kind: &str, lat: f64, lon: f64) -> FenceSet {
    FenceSet::new(vec![site(id, kind, lat, lon)], vec![]).unwrap()
}

pub fn van(reg: &str) -> VehicleId {
    VehicleId::parse(reg).unwrap()
}

pub fn sid(id: &str) -> SiteId {
    SiteId::parse(id).unwrap()
}

/// A star-shaped (hence simple) polygon around (lat, lon): vertices at
/// increasing angles with the given radii in metres.
pub fn star(lat: f64, lon: f64, radii: &[f64], turn: f64) -> Fence {
    let n = radii.len();
    let mut ring: Vec<(f64, f64)> = radii
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let a = turn + i as f64 / n as f64 * std::f64::consts::TAU;
            let (la, lo) = offset(lat, lon, r * a.cos(), r * a.sin());
            (lo, la)
        })
        .collect();
    ring.push(ring[0]);
    Fence::polygon(MultiPolygon(vec![Polygon::new(
        LineString::from(ring),
        vec![],
    )]))
    .unwrap()
}

/// A small deterministic generator for test noise.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in -a..a.
    pub fn pm(&mut self, a: f64) -> f64 {
        (self.next_f64() * 2.0 - 1.0) * a
    }
}
