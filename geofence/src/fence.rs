//! One fence: a circle (haversine) or a polygon (tested in a local metric
//! projection around its centre), with signed distance to the boundary in metres.

use geo::{MultiPolygon, Validation};

/// Mean Earth radius used by haversine and the local projections, metres.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Largest circle radius accepted, metres (as the sites CSV).
pub const MAX_RADIUS_M: f64 = 20_000.0;

/// Largest polygon extent accepted (width or height), metres: the local
/// projection stays well under a metre of error at this size.
pub const MAX_POLYGON_EXTENT_M: f64 = 50_000.0;

const M_PER_DEG: f64 = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;

/// Great-circle distance between two WGS84 points, metres (haversine).
pub fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp * 0.5).sin().powi(2) + p1.cos() * p2.cos() * (dl * 0.5).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
}

/// Why a fence was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FenceError {
    /// A coordinate is not finite or not in -90..90 / -180..180.
    #[error("coordinate (lat {lat}, lon {lon}) is out of range")]
    OutOfRange {
        /// Latitude as given.
        lat: f64,
        /// Longitude as given.
        lon: f64,
    },
    /// A circle's radius is not in (0, [`MAX_RADIUS_M`]].
    #[error("radius {0} m is not in 0..{MAX_RADIUS_M}")]
    BadRadius(f64),
    /// A polygon has no rings.
    #[error("the polygon is empty")]
    Empty,
    /// A polygon is not valid (self-intersection, too few points, overlapping parts, ...).
    #[error("invalid polygon: {0}")]
    InvalidPolygon(String),
    /// A polygon is wider or taller than [`MAX_POLYGON_EXTENT_M`].
    #[error("the polygon spans {0:.0} m; at most {MAX_POLYGON_EXTENT_M} m is accepted")]
    TooLarge(f64),
    /// No site has this id (fence replacement).
    #[error("no site {0}")]
    UnknownSite(String),
}

/// A site's fence: a circle or a polygon, in WGS84 degrees.
#[derive(Debug, Clone, PartialEq)]
pub struct Fence {
    shape: Shape,
    /// min lon, min lat, max lon, max lat (degrees).
    bbox: [f64; 4],
}

#[derive(Debug, Clone, PartialEq)]
enum Shape {
    Circle {
        lat: f64,
        lon: f64,
        radius_m: f64,
        /// cos(lat), for haversine.
        cos_lat: f64,
        /// sin²(radius / 2R): the haversine term at the radius.
        max_hav: f64,
    },
    Polygon {
        source: MultiPolygon<f64>,
        local: Local,
    },
}

/// A polygon projected to metres around its centre (equirectangular, which is
/// what ENU reduces to at these sizes).
#[derive(Debug, Clone, PartialEq)]
struct Local {
    frame: Frame,
    /// Ring vertices in metres, each ring closed (last == first), back to back.
    pts: Vec<[f64; 2]>,
    /// End offset (exclusive) of each ring in `pts`.
    ring_ends: Vec<u32>,
}

/// A local equirectangular frame: metres east / north of an origin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Frame {
    lat0: f64,
    lon0: f64,
    kx: f64,
}

impl Frame {
    pub(crate) fn at(lat0: f64, lon0: f64) -> Frame {
        Frame {
            lat0,
            lon0,
            kx: M_PER_DEG * lat0.to_radians().cos(),
        }
    }

    #[inline]
    pub(crate) fn project(&self, lat: f64, lon: f64) -> [f64; 2] {
        [(lon - self.lon0) * self.kx, (lat - self.lat0) * M_PER_DEG]
    }
}

fn check_coord(lat: f64, lon: f64) -> Result<(), FenceError> {
    if lat.is_finite()
        && lon.is_finite()
        && (-90.0..=90.0).contains(&lat)
        && (-180.0..=180.0).contains(&lon)
    {
        Ok(())
    } else {
        Err(FenceError::OutOfRange { lat, lon })
    }
}

impl Fence {
    /// A circle of `radius_m` metres around a point; distances are haversine.
    pub fn circle(lat: f64, lon: f64, radius_m: f64) -> Result<Fence, FenceError> {
        check_coord(lat, lon)?;
        if !(radius_m.is_finite() && radius_m > 0.0 && radius_m <= MAX_RADIUS_M) {
            return Err(FenceError::BadRadius(radius_m));
        }
        // Grow the degree box by 1% so that the curvature of parallels never
        // leaves part of the circle outside it.
        let dlat = radius_m / M_PER_DEG * 1.01;
        let worst_lat = (lat.abs() + dlat).min(89.9);
        let dlon = radius_m / (M_PER_DEG * worst_lat.to_radians().cos()) * 1.01;
        Ok(Fence {
            shape: Shape::Circle {
                lat,
                lon,
                radius_m,
                cos_lat: lat.to_radians().cos(),
                max_hav: (radius_m / (2.0 * EARTH_RADIUS_M)).sin().powi(2),
            },
            bbox: [lon - dlon, lat - dlat, lon + dlon, lat + dlat],
        })
    }

    /// A polygon fence (x = longitude, y = latitude). It must be a valid
    /// (multi)polygon: no self-intersection, rings of at least 3 distinct
    /// points, holes inside their shell, parts not overlapping.
    pub fn polygon(polygon: MultiPolygon<f64>) -> Result<Fence, FenceError> {
        if polygon.0.is_empty() {
            return Err(FenceError::Empty);
        }
        let mut bbox = [
            f64::INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        ];
        for p in &polygon.0 {
            for ring in std::iter::once(p.exterior()).chain(p.interiors()) {
                for c in &ring.0 {
                    check_coord(c.y, c.x)?;
                    bbox = [
                        bbox[0].min(c.x),
                        bbox[1].min(c.y),
                        bbox[2].max(c.x),
                        bbox[3].max(c.y),
                    ];
                }
            }
        }
        polygon
            .check_validation()
            .map_err(|e| FenceError::InvalidPolygon(e.to_string()))?;
        let lat0 = (bbox[1] + bbox[3]) * 0.5;
        let lon0 = (bbox[0] + bbox[2]) * 0.5;
        let frame = Frame::at(lat0, lon0);
        let extent = ((bbox[2] - bbox[0]) * frame.kx).max((bbox[3] - bbox[1]) * M_PER_DEG);
        if extent > MAX_POLYGON_EXTENT_M {
            return Err(FenceError::TooLarge(extent));
        }
        let mut pts = Vec::new();
        let mut ring_ends = Vec::new();
        for p in &polygon.0 {
            for ring in std::iter::once(p.exterior()).chain(p.interiors()) {
                pts.extend(ring.0.iter().map(|c| frame.project(c.y, c.x)));
                ring_ends.push(pts.len() as u32);
            }
        }
        Ok(Fence {
            shape: Shape::Polygon {
                source: polygon,
                local: Local {
                    frame,
                    pts,
                    ring_ends,
                },
            },
            bbox,
        })
    }

    /// Whether the fence is a circle.
    pub fn is_circle(&self) -> bool {
        matches!(self.shape, Shape::Circle { .. })
    }

    /// The circle's radius, or `None` for a polygon.
    pub fn radius_m(&self) -> Option<f64> {
        match self.shape {
            Shape::Circle { radius_m, .. } => Some(radius_m),
            Shape::Polygon { .. } => None,
        }
    }

    /// The polygon, or `None` for a circle.
    pub fn as_polygon(&self) -> Option<&MultiPolygon<f64>> {
        match &self.shape {
            Shape::Circle { .. } => None,
            Shape::Polygon { source, .. } => Some(source),
        }
    }

    /// The centre (circle) or the centre of the bounding box (polygon), `(lat, lon)`.
    pub fn centre(&self) -> (f64, f64) {
        match &self.shape {
            Shape::Circle { lat, lon, .. } => (*lat, *lon),
            Shape::Polygon { local, .. } => (local.frame.lat0, local.frame.lon0),
        }
    }

    /// A box holding the whole fence: `[min_lon, min_lat, max_lon, max_lat]`.
    pub fn bbox(&self) -> [f64; 4] {
        self.bbox
    }

    /// Signed distance from a point to the fence boundary, metres: negative
    /// inside, positive outside. Exact for circles (haversine); for polygons,
    /// planar in a local projection around the polygon.
    pub fn signed_distance_m(&self, lat: f64, lon: f64) -> f64 {
        match &self.shape {
            Shape::Circle {
                lat: clat,
                lon: clon,
                radius_m,
                ..
            } => haversine_m(*clat, *clon, lat, lon) - radius_m,
            Shape::Polygon { local, .. } => local.signed_distance(local.frame.project(lat, lon)),
        }
    }

    /// Whether the point is inside the fence; agrees with the sign of
    /// [`Fence::signed_distance_m`] (up to rounding exactly on a circle's edge).
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        match &self.shape {
            Shape::Circle {
                lat: clat,
                lon: clon,
                cos_lat,
                max_hav,
                ..
            } => {
                // The haversine term against a precomputed bound: no asin, no sqrt.
                let dp = (lat - clat).to_radians();
                let dl = (lon - clon).to_radians();
                let a = (dp * 0.5).sin().powi(2)
                    + cos_lat * lat.to_radians().cos() * (dl * 0.5).sin().powi(2);
                a <= *max_hav
            }
            Shape::Polygon { local, .. } => local.inside(local.frame.project(lat, lon)),
        }
    }

    /// For a straight segment `a → b` (lat, lon) whose ends are both outside:
    /// where it first enters the fence (fraction 0..1 along it) and how deep
    /// it goes (metres), if it enters at all.
    pub(crate) fn segment_entry(&self, a: (f64, f64), b: (f64, f64)) -> Option<(f64, f64)> {
        match &self.shape {
            Shape::Circle {
                lat, lon, radius_m, ..
            } => {
                let f = Frame::at(*lat, *lon);
                let (pa, pb) = (f.project(a.0, a.1), f.project(b.0, b.1));
                let d = [pb[0] - pa[0], pb[1] - pa[1]];
                let len2 = d[0] * d[0] + d[1] * d[1];
                if len2 == 0.0 {
                    return None;
                }
                // Closest approach to the centre (the origin).
                let t = (-(pa[0] * d[0] + pa[1] * d[1]) / len2).clamp(0.0, 1.0);
                let c = [pa[0] + t * d[0], pa[1] + t * d[1]];
                let closest = (c[0] * c[0] + c[1] * c[1]).sqrt();
                if closest >= *radius_m {
                    return None;
                }
                // First root of |pa + s d| = r.
                let bq = pa[0] * d[0] + pa[1] * d[1];
                let cq = pa[0] * pa[0] + pa[1] * pa[1] - radius_m * radius_m;
                let disc = (bq * bq - len2 * cq).max(0.0);
                let s = ((-bq - disc.sqrt()) / len2).clamp(0.0, 1.0);
                Some((s, radius_m - closest))
            }
            Shape::Polygon { local, .. } => {
                let pa = local.frame.project(a.0, a.1);
                let pb = local.frame.project(b.0, b.1);
                let first = local.first_crossing(pa, pb)?;
                // Depth: sample along the segment (the ends are outside).
                let len = ((pb[0] - pa[0]).powi(2) + (pb[1] - pa[1]).powi(2)).sqrt();
                let n = ((len / 5.0) as usize).clamp(8, 256);
                let mut depth: f64 = 0.0;
                for i in 1..n {
                    let t = i as f64 / n as f64;
                    let p = [pa[0] + t * (pb[0] - pa[0]), pa[1] + t * (pb[1] - pa[1])];
                    depth = depth.max(-local.signed_distance(p));
                }
                Some((first, depth))
            }
        }
    }

    /// The fence as a GeoJSON geometry (a circle is a `Point` with its radius
    /// left to the caller).
    pub fn to_geojson_geometry(&self) -> serde_json::Value {
        match &self.shape {
            Shape::Circle { lat, lon, .. } => {
                serde_json::json!({"type": "Point", "coordinates": [lon, lat]})
            }
            Shape::Polygon { source, .. } => {
                let polys: Vec<Vec<Vec<[f64; 2]>>> = source
                    .0
                    .iter()
                    .map(|p| {
                        std::iter::once(p.exterior())
                            .chain(p.interiors())
                            .map(|r| r.0.iter().map(|c| [c.x, c.y]).collect())
                            .collect()
                    })
                    .collect();
                serde_json::json!({"type": "MultiPolygon", "coordinates": polys})
            }
        }
    }
}

impl Local {
    fn rings(&self) -> impl Iterator<Item = &[[f64; 2]]> {
        let mut start = 0usize;
        self.ring_ends.iter().map(move |&end| {
            let r = &self.pts[start..end as usize];
            start = end as usize;
            r
        })
    }

    /// Even-odd rule over every ring (shells and holes).
    fn inside(&self, p: [f64; 2]) -> bool {
        let mut inside = false;
        for ring in self.rings() {
            for w in ring.windows(2) {
                let (a, b) = (w[0], w[1]);
                if (a[1] > p[1]) != (b[1] > p[1]) {
                    let x = a[0] + (p[1] - a[1]) / (b[1] - a[1]) * (b[0] - a[0]);
                    if p[0] < x {
                        inside = !inside;
                    }
                }
            }
        }
        inside
    }

    fn boundary_distance(&self, p: [f64; 2]) -> f64 {
        let mut best2 = f64::INFINITY;
        for ring in self.rings() {
            for w in ring.windows(2) {
                best2 = best2.min(point_segment_dist2(p, w[0], w[1]));
            }
        }
        best2.sqrt()
    }

    /// Negative inside (even-odd rule), positive outside; a boundary point
    /// that the even-odd rule puts outside gets the smallest positive value,
    /// so that the sign always agrees with [`Local::inside`].
    fn signed_distance(&self, p: [f64; 2]) -> f64 {
        let d = self.boundary_distance(p);
        if self.inside(p) {
            -d
        } else {
            d.max(f64::MIN_POSITIVE)
        }
    }

    /// The smallest fraction along `a → b` at which it crosses an edge.
    fn first_crossing(&self, a: [f64; 2], b: [f64; 2]) -> Option<f64> {
        let mut best: Option<f64> = None;
        let r = [b[0] - a[0], b[1] - a[1]];
        for ring in self.rings() {
            for w in ring.windows(2) {
                let (c, d) = (w[0], w[1]);
                let s = [d[0] - c[0], d[1] - c[1]];
                let den = r[0] * s[1] - r[1] * s[0];
                if den == 0.0 {
                    continue;
                }
                let ac = [c[0] - a[0], c[1] - a[1]];
                let t = (ac[0] * s[1] - ac[1] * s[0]) / den;
                let u = (ac[0] * r[1] - ac[1] * r[0]) / den;
                if (0.0..=1.0).contains(&t) && (0.0..=1.0).contains(&u) {
                    best = Some(best.map_or(t, |b: f64| b.min(t)));
                }
            }
        }
        best
    }
}

#[inline]
fn point_segment_dist2(p: [f64; 2], a: [f64; 2], b: [f64; 2]) -> f64 {
    let ab = [b[0] - a[0], b[1] - a[1]];
    let ap = [p[0] - a[0], p[1] - a[1]];
    let len2 = ab[0] * ab[0] + ab[1] * ab[1];
    let t = if len2 > 0.0 {
        ((ap[0] * ab[0] + ap[1] * ab[1]) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let dx = ap[0] - t * ab[0];
    let dy = ap[1] - t * ab[1];
    dx * dx + dy * dy
}

#[cfg(test)]
mod tests {
    use super::*;
    use geo::{LineString, Polygon};

    fn square(lat: f64, lon: f64, half_m: f64) -> Fence {
        let dlat = half_m / M_PER_DEG;
        let dlon = half_m / (M_PER_DEG * lat.to_radians().cos());
        let ring = LineString::from(vec![
            (lon - dlon, lat - dlat),
            (lon + dlon, lat - dlat),
            (lon + dlon, lat + dlat),
            (lon - dlon, lat + dlat),
            (lon - dlon, lat - dlat),
        ]);
        Fence::polygon(MultiPolygon(vec![Polygon::new(ring, vec![])])).unwrap()
    }

    #[test]
    fn haversine_matches_a_known_distance() {
        // One degree of latitude is about 111.2 km.
        let d = haversine_m(52.0, -1.0, 53.0, -1.0);
        assert!((d - 111_195.0).abs() < 10.0, "{d}");
    }

    #[test]
    fn circle_signed_distance() {
        let f = Fence::circle(53.79, -1.58, 400.0).unwrap();
        assert!(f.signed_distance_m(53.79, -1.58) + 400.0 < 1e-6);
        let north_500 = 53.79 + 500.0 / M_PER_DEG;
        let d = f.signed_distance_m(north_500, -1.58);
        assert!((d - 100.0).abs() < 0.01, "{d}");
        assert!(!f.contains(north_500, -1.58));
        let b = f.bbox();
        assert!(b[0] < -1.58 && b[2] > -1.58 && b[1] < 53.79 && b[3] > 53.79);
    }

    #[test]
    fn polygon_signed_distance_and_holes() {
        let f = square(52.0, -1.0, 200.0);
        let d = f.signed_distance_m(52.0, -1.0);
        assert!((d + 200.0).abs() < 0.5, "{d}");
        let east_300 = -1.0 + 300.0 / (M_PER_DEG * 52f64.to_radians().cos());
        let d = f.signed_distance_m(52.0, east_300);
        assert!((d - 100.0).abs() < 0.5, "{d}");
        assert!(f.contains(52.0, -1.0));
        assert!(!f.contains(52.0, east_300));
    }

    #[test]
    fn bad_circles_and_polygons_are_refused() {
        assert!(matches!(
            Fence::circle(53.0, -1.0, 0.0),
            Err(FenceError::BadRadius(_))
        ));
        assert!(matches!(
            Fence::circle(95.0, -1.0, 100.0),
            Err(FenceError::OutOfRange { .. })
        ));
        let bow = LineString::from(vec![
            (0.0, 50.0),
            (0.01, 50.01),
            (0.01, 50.0),
            (0.0, 50.01),
            (0.0, 50.0),
        ]);
        let err = Fence::polygon(MultiPolygon(vec![Polygon::new(bow, vec![])])).unwrap_err();
        assert!(
            matches!(err, FenceError::InvalidPolygon(ref m) if m.contains("self-intersection")),
            "{err}"
        );
    }

    #[test]
    fn segment_entry_for_circle_and_polygon() {
        let c = Fence::circle(52.0, -1.0, 400.0).unwrap();
        let dlon = 1000.0 / (M_PER_DEG * 52f64.to_radians().cos());
        let (t, depth) = c
            .segment_entry((52.0, -1.0 - dlon), (52.0, -1.0 + dlon))
            .unwrap();
        assert!((t - 0.3).abs() < 0.001, "{t}");
        assert!((depth - 400.0).abs() < 0.5, "{depth}");
        let north = 52.0 + 600.0 / M_PER_DEG;
        assert!(
            c.segment_entry((north, -1.0 - dlon), (north, -1.0 + dlon))
                .is_none()
        );
        let p = square(52.0, -1.0, 200.0);
        let (t, depth) = p
            .segment_entry((52.0, -1.0 - dlon), (52.0, -1.0 + dlon))
            .unwrap();
        assert!((t - 0.4).abs() < 0.001, "{t}");
        assert!((depth - 200.0).abs() < 5.0, "{depth}");
    }
}
