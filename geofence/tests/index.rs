//! The R-tree index against a brute-force scan, and the exact tests against
//! independent formulas (geo's planar containment, haversine).

mod common;

use common::*;
use geo::{Contains, Distance, Haversine, Point};
use model::SiteId;
use movewatch_geofence::{Fence, FenceSet};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Spec {
    Circle {
        lat: f64,
        lon: f64,
        r: f64,
    },
    Star {
        lat: f64,
        lon: f64,
        radii: Vec<f64>,
        turn: f64,
    },
}

/// Circles with radii in `circle_m` and stars with arms in `arm_m`, centred
/// in `lat` × `lon`.
fn spec_in(
    lat: std::ops::Range<f64>,
    lon: std::ops::Range<f64>,
    circle_m: std::ops::Range<f64>,
    arm_m: std::ops::Range<f64>,
) -> impl Strategy<Value = Spec> {
    let centre = (lat, lon);
    prop_oneof![
        (centre.clone(), circle_m).prop_map(|((lat, lon), r)| Spec::Circle { lat, lon, r }),
        (
            centre,
            prop::collection::vec(arm_m, 3..12),
            0.0..std::f64::consts::TAU
        )
            .prop_map(|((lat, lon), radii, turn)| Spec::Star {
                lat,
                lon,
                radii,
                turn
            }),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    // A 0.3° × 0.5° patch of Yorkshire, so that fences overlap often.
    spec_in(53.6..53.9, -1.8..-1.3, 20.0..3000.0, 30.0..2500.0)
}

fn build(s: &Spec) -> Fence {
    match s {
        Spec::Circle { lat, lon, r } => Fence::circle(*lat, *lon, *r).unwrap(),
        Spec::Star {
            lat,
            lon,
            radii,
            turn,
        } => star(*lat, *lon, radii, *turn),
    }
}

fn ids(n: usize) -> Vec<SiteId> {
    (0..n).map(|i| sid(&format!("S{i}"))).collect()
}

fn set_of(specs: &[Spec]) -> FenceSet {
    let sites = ids(specs.len())
        .into_iter()
        .map(|id| site(id.as_str(), "prison", 53.7, -1.5))
        .collect();
    let mut set = FenceSet::new(sites, vec![]).unwrap();
    for (id, s) in ids(specs.len()).iter().zip(specs) {
        set.replace(id, build(s)).unwrap();
    }
    set
}

/// The independent answer: geo's planar containment in degrees (our local
/// projection is affine per axis, so insideness is the same) and geo's
/// haversine for circles.
fn brute(specs: &[Spec], lat: f64, lon: f64) -> Vec<String> {
    let mut out = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let inside = match s {
            Spec::Circle { lat: c, lon: l, r } => {
                Haversine.distance(Point::new(*l, *c), Point::new(lon, lat)) <= *r
            }
            Spec::Star { .. } => build(s)
                .as_polygon()
                .unwrap()
                .contains(&Point::new(lon, lat)),
        };
        if inside {
            out.push(format!("S{i}"));
        }
    }
    out.sort();
    out
}

fn indexed(set: &FenceSet, lat: f64, lon: f64) -> Vec<String> {
    let mut v: Vec<String> = set
        .containing(lat, lon)
        .map(|s| s.site.id.to_string())
        .collect();
    v.sort();
    let mut w = Vec::new();
    set.for_each_containing(lat, lon, |s| w.push(s.site.id.to_string()));
    w.sort();
    assert_eq!(v, w, "the two query forms differ");
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn index_agrees_with_brute_force(
        specs in prop::collection::vec(spec(), 1..40),
        points in prop::collection::vec((53.55..53.95f64, -1.9..-1.2f64), 50),
        replace in prop::collection::vec((any::<prop::sample::Index>(), spec()), 0..5),
    ) {
        let mut specs = specs;
        let mut set = set_of(&specs);
        // Some fences replaced at run time: the index must follow.
        for (i, s) in replace {
            let i = i.index(specs.len());
            set.replace(&sid(&format!("S{i}")), build(&s)).unwrap();
            specs[i] = s;
        }
        for (lat, lon) in points {
            let got = indexed(&set, lat, lon);
            // Skip points within a few cm of an edge, where float rounding may differ.
            let near_edge = specs.iter().any(|s| build(s).signed_distance_m(lat, lon).abs() < 0.05);
            if !near_edge {
                prop_assert_eq!(got, brute(&specs, lat, lon), "at ({}, {})", lat, lon);
            }
        }
        // Also points placed on purpose just inside and just outside each fence.
        for (i, s) in specs.iter().enumerate() {
            let f = build(s);
            let (clat, clon) = f.centre();
            if f.contains(clat, clon) {
                let want = format!("S{}", i);
                prop_assert!(indexed(&set, clat, clon).contains(&want));
            }
        }
    }

    #[test]
    fn signed_distance_sign_matches_containment(s in spec(), lat in 53.55..53.95f64, lon in -1.9..-1.2f64) {
        let f = build(&s);
        let d = f.signed_distance_m(lat, lon);
        prop_assert_eq!(d <= 0.0, f.contains(lat, lon));
        if let Spec::Circle { lat: c, lon: l, r } = s {
            let h = Haversine.distance(Point::new(l, c), Point::new(lon, lat));
            prop_assert!((d - (h - r)).abs() < 1e-6);
        }
    }
}

#[test]
fn the_shipped_sites_are_indexed_as_circles() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/sites.csv");
    let set = FenceSet::load(&[path]).unwrap();
    assert_eq!(set.len(), 603);
    for s in set.iter() {
        assert_eq!(s.fence.radius_m(), Some(s.site.kind.default_radius_m()));
        assert!(
            set.containing(s.site.lat, s.site.lon)
                .any(|c| c.site.id == s.site.id)
        );
    }
}

/// Where a fence sits and how big it is, for the edge test: anywhere from
/// 80° S to 80° N (the index's flat metric is least exact far north and
/// south), circles of 1 m to 20 km, stars of 30 m to 20 km.
fn wide_spec() -> impl Strategy<Value = Spec> {
    spec_in(-80.0..80.0, -179.0..179.0, 1.0..20_000.0, 30.0..20_000.0)
}

/// The point `d` metres from (lat, lon) on bearing `bearing` (radians),
/// on the sphere.
fn destination(lat: f64, lon: f64, d: f64, bearing: f64) -> (f64, f64) {
    let (p1, l1) = (lat.to_radians(), lon.to_radians());
    let delta = d / movewatch_geofence::EARTH_RADIUS_M;
    let p2 = (p1.sin() * delta.cos() + p1.cos() * delta.sin() * bearing.cos()).asin();
    let l2 = l1 + (bearing.sin() * delta.sin() * p1.cos()).atan2(delta.cos() - p1.sin() * p2.sin());
    (p2.to_degrees(), l2.to_degrees())
}

/// A scan of every fence with the exact test: the index must give exactly
/// this, at any distance from an edge.
fn scan(fences: &[Fence], lat: f64, lon: f64) -> Vec<String> {
    let mut out: Vec<String> = fences
        .iter()
        .enumerate()
        .filter(|(_, f)| f.contains(lat, lon))
        .map(|(i, _)| format!("S{i}"))
        .collect();
    out.sort();
    out
}

/// Points on both sides of each fence's edge, from a nanometre-scale
/// relative offset to a few metres, where the index's f32 entries and flat
/// metric must hand over to the exact test.
fn edge_points(specs: &[Spec], bearings: &[f64]) -> Vec<(f64, f64)> {
    let mut pts = Vec::new();
    for s in specs {
        match s {
            Spec::Circle { lat, lon, r } => {
                for &b in bearings {
                    for rel in [1e-12, 1e-9, 1e-7, 1e-5, 1e-4, 1e-3, 1e-2] {
                        for side in [-1.0, 1.0] {
                            pts.push(destination(*lat, *lon, r * (1.0 + side * rel), b));
                        }
                    }
                    for m in [0.01, 0.1, 0.3, 0.7, 1.5, 4.0] {
                        for side in [-1.0, 1.0] {
                            pts.push(destination(*lat, *lon, (r + side * m).max(0.0), b));
                        }
                    }
                }
            }
            Spec::Star { .. } => {
                // Around each vertex and edge midpoint, just in and out.
                let f = build(s);
                let poly = f.as_polygon().unwrap();
                let ring = &poly.0[0].exterior().0;
                for w in ring.windows(2) {
                    for t in [0.0, 0.5] {
                        let (lon, lat) = (
                            w[0].x + t * (w[1].x - w[0].x),
                            w[0].y + t * (w[1].y - w[0].y),
                        );
                        for &b in bearings {
                            for m in [1e-6, 0.05, 0.5, 3.0] {
                                pts.push(destination(lat, lon, m, b));
                            }
                        }
                    }
                }
            }
        }
    }
    pts
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(120))]

    /// The grid (bitmap, f32 entries with margins) against a scan of every
    /// fence with its exact test, with no tolerance: random points over the
    /// fences' area and points within nanometres to metres of every edge,
    /// for fences in one patch (many overlaps) or spread over the globe
    /// (coarse cells, far-north fences).
    #[test]
    fn index_equals_an_exact_scan_even_at_the_edge(
        local in prop::collection::vec(spec(), 0..30),
        wide in prop::collection::vec(wide_spec(), 0..8),
        bearings in prop::collection::vec(0.0..std::f64::consts::TAU, 3),
        random in prop::collection::vec((53.55..53.95f64, -1.9..-1.2f64), 40),
    ) {
        let specs: Vec<Spec> = local.into_iter().chain(wide).collect();
        prop_assume!(!specs.is_empty());
        let set = set_of(&specs);
        let fences: Vec<Fence> = specs.iter().map(build).collect();
        let mut points = edge_points(&specs, &bearings);
        points.extend(random);
        for (lat, lon) in points {
            if !(lat.is_finite() && (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)) {
                continue;
            }
            prop_assert_eq!(indexed(&set, lat, lon), scan(&fences, lat, lon), "at ({}, {})", lat, lon);
        }
    }
}
