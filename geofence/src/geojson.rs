//! Polygon fences from GeoJSON: `Polygon` and `MultiPolygon` features with
//! `properties.id` (and optional `name`, `kind`). Every feature is checked
//! and the first wrong one fails the whole file, naming its index and id.

use geo::{Coord, LineString, MultiPolygon, Polygon};
use model::{SiteId, SiteKind};
use serde_json::Value;

use crate::fence::{Fence, FenceError};

/// The box fences must lie in: England and Wales with a generous margin
/// (`[min_lon, min_lat, max_lon, max_lat]`). A fence outside is a data error.
pub const SERVICE_AREA: [f64; 4] = [-8.0, 49.0, 3.0, 61.0];

/// One polygon fence read from GeoJSON.
#[derive(Debug, Clone, PartialEq)]
pub struct FenceFeature {
    /// 0-based position of the feature in the file.
    pub index: usize,
    /// `properties.id`.
    pub id: SiteId,
    /// `properties.name`, if any.
    pub name: Option<String>,
    /// `properties.kind`, if any.
    pub kind: Option<SiteKind>,
    /// The polygon.
    pub fence: Fence,
}

/// A GeoJSON file that could not be loaded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GeoJsonError {
    /// The text is not JSON.
    #[error("{origin}: not valid JSON: {message}")]
    Json {
        /// The file.
        origin: String,
        /// The parser's message.
        message: String,
    },
    /// The JSON is not a `FeatureCollection` (or a single `Feature`).
    #[error("{origin}: expected a GeoJSON FeatureCollection or Feature")]
    NotFeatureCollection {
        /// The file.
        origin: String,
    },
    /// One feature is wrong.
    #[error("{origin}: feature #{index} (id {id}): {problem}")]
    Feature {
        /// The file.
        origin: String,
        /// 0-based position of the feature.
        index: usize,
        /// Its `properties.id` as written, or `<none>`.
        id: String,
        /// What is wrong.
        problem: FeatureProblem,
    },
}

/// What is wrong with one GeoJSON feature.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeatureProblem {
    /// No `properties.id` string.
    #[error("no `properties.id` string")]
    MissingId,
    /// `properties.id` is not a valid site id.
    #[error("{0}")]
    BadId(String),
    /// Another feature of the same file has this id.
    #[error("the id appears in an earlier feature too")]
    DuplicateId,
    /// The geometry is missing or not a `Polygon` / `MultiPolygon`.
    #[error("geometry type {0} is not supported (Polygon or MultiPolygon)")]
    UnsupportedGeometry(String),
    /// The coordinates are not nested arrays of numbers.
    #[error("malformed coordinates: {0}")]
    Malformed(String),
    /// A ring's last position differs from its first.
    #[error(
        "polygon {polygon}, ring {ring} is not closed (its last position must equal its first)"
    )]
    OpenRing {
        /// Polygon index within the feature.
        polygon: usize,
        /// Ring index within the polygon (0 = exterior).
        ring: usize,
    },
    /// A ring has fewer than 4 positions.
    #[error("polygon {polygon}, ring {ring} has {count} positions; a closed ring needs at least 4")]
    TooFewPositions {
        /// Polygon index within the feature.
        polygon: usize,
        /// Ring index within the polygon.
        ring: usize,
        /// Positions found.
        count: usize,
    },
    /// Positions look like `[lat, lon]`; GeoJSON is `[lon, lat]`.
    #[error(
        "position [{first}, {second}] looks like [lat, lon]; GeoJSON positions are [longitude, latitude] (England & Wales: lon about -6..2, lat 49..56)"
    )]
    SwappedCoordinates {
        /// First number of the position as written.
        first: f64,
        /// Second number.
        second: f64,
    },
    /// A position is not a valid WGS84 longitude/latitude.
    #[error("position [{lon}, {lat}] is out of range (lon -180..180, lat -90..90)")]
    OutOfRange {
        /// Longitude as written.
        lon: f64,
        /// Latitude as written.
        lat: f64,
    },
    /// A position is valid WGS84 but far outside England and Wales.
    #[error("position [{lon}, {lat}] is outside the service area (lon -8..3, lat 49..61)")]
    OutsideServiceArea {
        /// Longitude as written.
        lon: f64,
        /// Latitude as written.
        lat: f64,
    },
    /// The polygon is invalid (self-intersection, ...).
    #[error(transparent)]
    Fence(#[from] FenceError),
}

/// Parses a GeoJSON `FeatureCollection` (or one `Feature`) of polygon fences.
/// All or nothing: the first wrong feature is returned as the error.
/// `origin` names the text in errors.
pub fn parse_fences_geojson(text: &str, origin: &str) -> Result<Vec<FenceFeature>, GeoJsonError> {
    let root: Value = serde_json::from_str(text).map_err(|e| GeoJsonError::Json {
        origin: origin.to_owned(),
        message: e.to_string(),
    })?;
    let not_fc = || GeoJsonError::NotFeatureCollection {
        origin: origin.to_owned(),
    };
    let features: Vec<&Value> = match root.get("type").and_then(Value::as_str) {
        Some("FeatureCollection") => root
            .get("features")
            .and_then(Value::as_array)
            .ok_or_else(not_fc)?
            .iter()
            .collect(),
        Some("Feature") => vec![&root],
        _ => return Err(not_fc()),
    };
    let mut out: Vec<FenceFeature> = Vec::with_capacity(features.len());
    let mut seen = std::collections::HashSet::new();
    for (index, feature) in features.into_iter().enumerate() {
        let props = feature.get("properties");
        let raw_id = props.and_then(|p| p.get("id")).and_then(Value::as_str);
        let fail = |problem: FeatureProblem| GeoJsonError::Feature {
            origin: origin.to_owned(),
            index,
            id: raw_id.unwrap_or("<none>").to_owned(),
            problem,
        };
        let raw_id = raw_id.ok_or_else(|| fail(FeatureProblem::MissingId))?;
        let id = SiteId::parse(raw_id).map_err(|e| fail(FeatureProblem::BadId(e.to_string())))?;
        if !seen.insert(id.clone()) {
            return Err(fail(FeatureProblem::DuplicateId));
        }
        let polygon = feature_polygon(feature.get("geometry")).map_err(fail)?;
        let fence = Fence::polygon(polygon).map_err(|e| fail(e.into()))?;
        let text_prop = |k: &str| {
            props
                .and_then(|p| p.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        out.push(FenceFeature {
            index,
            id,
            name: text_prop("name"),
            kind: text_prop("kind").map(|k| SiteKind::parse(&k)),
            fence,
        });
    }
    Ok(out)
}

/// Parses one GeoJSON `Polygon` or `MultiPolygon` geometry into a fence,
/// with the same checks as a feature of a fences file (closed rings, at
/// least 4 positions, `[longitude, latitude]` order, inside the service
/// area, a valid polygon). Used by `PUT /api/sites/{id}/fence`.
pub fn parse_fence_geometry(geometry: &Value) -> Result<Fence, FeatureProblem> {
    let polygon = feature_polygon(Some(geometry))?;
    Ok(Fence::polygon(polygon)?)
}

fn feature_polygon(geometry: Option<&Value>) -> Result<MultiPolygon<f64>, FeatureProblem> {
    let geometry = geometry.filter(|g| !g.is_null());
    let kind = geometry
        .and_then(|g| g.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("(none)");
    let coords = geometry.and_then(|g| g.get("coordinates"));
    let malformed = |what: &str| FeatureProblem::Malformed(what.to_owned());
    match (kind, coords) {
        ("Polygon", Some(c)) => Ok(MultiPolygon(vec![polygon(c, 0)?])),
        ("MultiPolygon", Some(c)) => {
            let parts = c.as_array().ok_or_else(|| {
                malformed("MultiPolygon coordinates must be an array of polygons")
            })?;
            let polys = parts
                .iter()
                .enumerate()
                .map(|(i, p)| polygon(p, i))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(MultiPolygon(polys))
        }
        ("Polygon" | "MultiPolygon", None) => Err(malformed("no `coordinates`")),
        (other, _) => Err(FeatureProblem::UnsupportedGeometry(other.to_owned())),
    }
}

fn polygon(value: &Value, index: usize) -> Result<Polygon<f64>, FeatureProblem> {
    let rings = value.as_array().filter(|r| !r.is_empty()).ok_or_else(|| {
        FeatureProblem::Malformed(format!(
            "polygon {index} must be a non-empty array of rings"
        ))
    })?;
    let mut parsed = Vec::with_capacity(rings.len());
    for (r, ring) in rings.iter().enumerate() {
        let positions = ring.as_array().ok_or_else(|| {
            FeatureProblem::Malformed(format!(
                "polygon {index}, ring {r} is not an array of positions"
            ))
        })?;
        let mut coords = Vec::with_capacity(positions.len());
        for p in positions {
            coords.push(position(p)?);
        }
        if coords.len() < 4 {
            return Err(FeatureProblem::TooFewPositions {
                polygon: index,
                ring: r,
                count: coords.len(),
            });
        }
        if coords.first() != coords.last() {
            return Err(FeatureProblem::OpenRing {
                polygon: index,
                ring: r,
            });
        }
        parsed.push(LineString(coords));
    }
    let mut it = parsed.into_iter();
    let exterior = it.next().unwrap_or_else(|| LineString(Vec::new()));
    Ok(Polygon::new(exterior, it.collect()))
}

fn position(value: &Value) -> Result<Coord<f64>, FeatureProblem> {
    let nums = value.as_array().filter(|a| a.len() >= 2);
    let (x, y) = match nums.map(|a| (a[0].as_f64(), a[1].as_f64())) {
        Some((Some(x), Some(y))) => (x, y),
        _ => {
            return Err(FeatureProblem::Malformed(format!(
                "position {value} is not [longitude, latitude]"
            )));
        }
    };
    if !(x.is_finite()
        && y.is_finite()
        && (-180.0..=180.0).contains(&x)
        && (-90.0..=90.0).contains(&y))
    {
        return Err(FeatureProblem::OutOfRange { lon: x, lat: y });
    }
    let [min_lon, min_lat, max_lon, max_lat] = SERVICE_AREA;
    let in_area = |lon: f64, lat: f64| {
        (min_lon..=max_lon).contains(&lon) && (min_lat..=max_lat).contains(&lat)
    };
    if !in_area(x, y) {
        if in_area(y, x) {
            return Err(FeatureProblem::SwappedCoordinates {
                first: x,
                second: y,
            });
        }
        return Err(FeatureProblem::OutsideServiceArea { lon: x, lat: y });
    }
    Ok(Coord { x, y })
}
