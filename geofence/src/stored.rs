//! A fence as JSON, in the form `GET /api/sites` shows it and the store keeps
//! a replaced fence in: `{"type": "circle", "radius_m": r}` (centred on the
//! site) or `{"type": "polygon", "geometry": <GeoJSON MultiPolygon>}`.

use serde_json::{Value, json};

use crate::fence::{Fence, FenceError};
use crate::geojson::{FeatureProblem, parse_fence_geometry};

/// A stored fence could not be read back.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoredFenceError {
    /// The text is not JSON.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// `type` is missing or neither `circle` nor `polygon`.
    #[error("fence type {0} is not circle or polygon")]
    UnknownType(String),
    /// A circle without a numeric `radius_m`.
    #[error("a circle fence needs a numeric radius_m")]
    NoRadius,
    /// The circle is refused.
    #[error(transparent)]
    Circle(#[from] FenceError),
    /// The polygon is refused.
    #[error(transparent)]
    Polygon(#[from] FeatureProblem),
}

/// The fence as JSON: `{"type": "circle", "radius_m": r}` or
/// `{"type": "polygon", "geometry": <GeoJSON MultiPolygon>}`.
pub fn fence_to_json(fence: &Fence) -> Value {
    match fence.radius_m() {
        Some(r) => json!({"type": "circle", "radius_m": r}),
        None => json!({"type": "polygon", "geometry": fence.to_geojson_geometry()}),
    }
}

/// Reads back [`fence_to_json`]'s form for the site at `(lat, lon)` (a
/// circle is centred there), with every check a new fence gets.
pub fn fence_from_json(text: &str, lat: f64, lon: f64) -> Result<Fence, StoredFenceError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| StoredFenceError::NotJson(e.to_string()))?;
    match value.get("type").and_then(Value::as_str) {
        Some("circle") => {
            let r = value
                .get("radius_m")
                .and_then(Value::as_f64)
                .ok_or(StoredFenceError::NoRadius)?;
            Ok(Fence::circle(lat, lon, r)?)
        }
        Some("polygon") => {
            let geometry = value.get("geometry").unwrap_or(&Value::Null);
            Ok(parse_fence_geometry(geometry)?)
        }
        other => Err(StoredFenceError::UnknownType(
            other.unwrap_or("(none)").to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circles_and_polygons_round_trip_and_bad_text_is_refused() {
        let c = Fence::circle(53.79, -1.58, 75.5).unwrap();
        let text = fence_to_json(&c).to_string();
        assert_eq!(fence_from_json(&text, 53.79, -1.58).unwrap(), c);

        let square = json!({"type": "Polygon", "coordinates":
            [[[-1.58, 53.79], [-1.57, 53.79], [-1.57, 53.80], [-1.58, 53.80], [-1.58, 53.79]]]});
        let p = parse_fence_geometry(&square).unwrap();
        let text = fence_to_json(&p).to_string();
        let back = fence_from_json(&text, 0.0, 0.0).unwrap();
        assert_eq!(back.as_polygon(), p.as_polygon());
        assert!(back.contains(53.795, -1.575));

        assert!(matches!(
            fence_from_json("nope", 53.0, -1.0),
            Err(StoredFenceError::NotJson(_))
        ));
        assert!(matches!(
            fence_from_json(r#"{"type": "circle"}"#, 53.0, -1.0),
            Err(StoredFenceError::NoRadius)
        ));
        assert!(matches!(
            fence_from_json(r#"{"type": "circle", "radius_m": -1}"#, 53.0, -1.0),
            Err(StoredFenceError::Circle(FenceError::BadRadius(_)))
        ));
        assert!(matches!(
            fence_from_json(r#"{"type": "square"}"#, 53.0, -1.0),
            Err(StoredFenceError::UnknownType(t)) if t == "square"
        ));
        assert!(matches!(
            fence_from_json(r#"{"type": "polygon"}"#, 53.0, -1.0),
            Err(StoredFenceError::Polygon(_))
        ));
    }
}
