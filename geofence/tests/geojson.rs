//! Loading polygon fences from GeoJSON, and the typed errors for bad files.

mod common;

use common::*;
use movewatch_geofence::{
    FeatureProblem, FenceError, FenceSet, GeoJsonError, LoadError, parse_fences_geojson,
};

const SQUARE: &str = "[[-1.59,53.78],[-1.57,53.78],[-1.57,53.80],[-1.59,53.80],[-1.59,53.78]]";

fn feature(id: &str, geometry: &str) -> String {
    format!(
        r#"{{"type":"Feature","properties":{{"id":"{id}","name":"Leeds","kind":"prison"}},"geometry":{geometry}}}"#
    )
}

fn collection(features: &[String]) -> String {
    format!(
        r#"{{"type":"FeatureCollection","features":[{}]}}"#,
        features.join(",")
    )
}

fn polygon(rings: &str) -> String {
    format!(r#"{{"type":"Polygon","coordinates":[{rings}]}}"#)
}

/// The error for a file whose feature #1 (id BAD) has this geometry.
fn problem(geometry: &str) -> (GeoJsonError, FeatureProblem) {
    let text = collection(&[feature("LEI", &polygon(SQUARE)), feature("BAD", geometry)]);
    let err = parse_fences_geojson(&text, "fences.geojson").unwrap_err();
    match &err {
        GeoJsonError::Feature {
            origin,
            index,
            id,
            problem,
        } => {
            assert_eq!(
                (origin.as_str(), *index, id.as_str()),
                ("fences.geojson", 1, "BAD"),
                "{err}"
            );
            let msg = err.to_string();
            assert!(msg.contains("feature #1") && msg.contains("BAD"), "{msg}");
            (err.clone(), problem.clone())
        }
        other => panic!("{other}"),
    }
}

#[test]
fn polygons_and_multipolygons_load_with_their_properties() {
    let multi = format!(
        r#"{{"type":"MultiPolygon","coordinates":[[{SQUARE}],[[[-1.50,53.70],[-1.49,53.70],[-1.49,53.71],[-1.50,53.70]]]]}}"#
    );
    let text = collection(&[feature("LEI", &polygon(SQUARE)), feature("CRT-X", &multi)]);
    let fences = parse_fences_geojson(&text, "f.geojson").unwrap();
    assert_eq!(fences.len(), 2);
    assert_eq!(fences[0].id, sid("LEI"));
    assert_eq!(fences[0].name.as_deref(), Some("Leeds"));
    assert!(fences[0].fence.contains(53.79, -1.58));
    assert!(!fences[0].fence.contains(53.79, -1.60));
    assert!(fences[1].fence.contains(53.703, -1.495));
    assert!(fences[1].fence.contains(53.79, -1.58));
}

#[test]
fn polygons_replace_csv_circles_and_new_ids_become_sites() {
    let dir = std::env::temp_dir().join(format!("geofence-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("sites.csv");
    std::fs::write(
        &csv,
        "id,name,kind,lat,lon\nLEI,Leeds,prison,53.79,-1.58\nCRT-A,Court,court,51.5,-0.1\n",
    )
    .unwrap();
    let gj = dir.join("fences.geojson");
    let hole = "[[-1.585,53.785],[-1.585,53.795],[-1.575,53.795],[-1.575,53.785],[-1.585,53.785]]";
    let extra = "[[-1.40,53.70],[-1.39,53.70],[-1.39,53.71],[-1.40,53.71],[-1.40,53.70]]";
    std::fs::write(
        &gj,
        collection(&[
            feature("LEI", &polygon(&format!("{SQUARE},{hole}"))),
            feature("NEW-1", &polygon(extra)),
        ]),
    )
    .unwrap();
    let set = FenceSet::load(&[&csv, &gj]).unwrap();
    assert_eq!(set.len(), 3);
    let lei = set.get(&sid("LEI")).unwrap();
    assert!(!lei.fence.is_circle());
    // The hole is outside the fence, the ring around it inside.
    assert!(!lei.fence.contains(53.79, -1.58));
    assert!(lei.fence.contains(53.782, -1.588));
    assert!(set.get(&sid("CRT-A")).unwrap().fence.is_circle());
    let new = set.get(&sid("NEW-1")).unwrap();
    assert!((new.site.lat - 53.705).abs() < 1e-9 && (new.site.lon + 1.395).abs() < 1e-9);
    assert_eq!(set.containing(53.705, -1.395).count(), 1);

    // All or nothing: one bad feature fails the whole load.
    std::fs::write(
        &gj,
        collection(&[
            feature("LEI", &polygon(SQUARE)),
            feature("X1", &polygon("[[0,0]]")),
        ]),
    )
    .unwrap();
    assert!(matches!(
        FenceSet::load(&[&csv, &gj]),
        Err(LoadError::GeoJson(_))
    ));
    let txt = dir.join("sites.txt");
    std::fs::write(&txt, "").unwrap();
    assert!(matches!(
        FenceSet::load(&[&txt]),
        Err(LoadError::UnknownFileType(_))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn self_intersecting_polygon() {
    let bow = "[[-1.59,53.78],[-1.57,53.80],[-1.57,53.78],[-1.59,53.80],[-1.59,53.78]]";
    let (err, p) = problem(&polygon(bow));
    assert!(
        matches!(p, FeatureProblem::Fence(FenceError::InvalidPolygon(_))),
        "{err}"
    );
    assert!(err.to_string().contains("self-intersection"), "{err}");
}

#[test]
fn open_ring() {
    let open = "[[-1.59,53.78],[-1.57,53.78],[-1.57,53.80],[-1.59,53.80]]";
    let (_, p) = problem(&polygon(open));
    assert_eq!(
        p,
        FeatureProblem::OpenRing {
            polygon: 0,
            ring: 0
        }
    );
    let (_, p) = problem(&polygon("[[-1.59,53.78],[-1.57,53.78],[-1.59,53.78]]"));
    assert!(matches!(
        p,
        FeatureProblem::TooFewPositions { count: 3, .. }
    ));
}

#[test]
fn lat_lon_order_is_detected() {
    let swapped = "[[53.78,-1.59],[53.78,-1.57],[53.80,-1.57],[53.80,-1.59],[53.78,-1.59]]";
    let (err, p) = problem(&polygon(swapped));
    assert_eq!(
        p,
        FeatureProblem::SwappedCoordinates {
            first: 53.78,
            second: -1.59
        }
    );
    assert!(err.to_string().contains("[longitude, latitude]"), "{err}");
}

#[test]
fn out_of_range_and_outside_the_service_area() {
    let (_, p) = problem(&polygon(
        "[[-1.59,93.78],[-1.57,53.78],[-1.57,53.80],[-1.59,93.78]]",
    ));
    assert_eq!(
        p,
        FeatureProblem::OutOfRange {
            lon: -1.59,
            lat: 93.78
        }
    );
    let (_, p) = problem(&polygon(
        "[[2.35,48.85],[2.36,48.85],[2.36,48.86],[2.35,48.85]]",
    ));
    assert_eq!(
        p,
        FeatureProblem::OutsideServiceArea {
            lon: 2.35,
            lat: 48.85
        }
    );
}

#[test]
fn wrong_geometry_and_malformed_coordinates() {
    let (_, p) = problem(r#"{"type":"Point","coordinates":[-1.58,53.79]}"#);
    assert_eq!(p, FeatureProblem::UnsupportedGeometry("Point".into()));
    let (_, p) = problem("null");
    assert_eq!(p, FeatureProblem::UnsupportedGeometry("(none)".into()));
    let (_, p) = problem(&polygon(
        r#"[["a",53.78],[-1.57,53.78],[-1.57,53.80],[-1.59,53.78]]"#,
    ));
    assert!(matches!(p, FeatureProblem::Malformed(_)));
}

#[test]
fn ids_missing_bad_or_repeated() {
    let no_id = r#"{"type":"Feature","properties":{"name":"x"},"geometry":{"type":"Polygon","coordinates":[]}}"#;
    let err = parse_fences_geojson(&collection(&[no_id.to_owned()]), "f").unwrap_err();
    assert!(
        matches!(&err, GeoJsonError::Feature { index: 0, id, problem: FeatureProblem::MissingId, .. } if id == "<none>"),
        "{err}"
    );
    let err =
        parse_fences_geojson(&collection(&[feature("bad id", &polygon(SQUARE))]), "f").unwrap_err();
    assert!(
        matches!(
            &err,
            GeoJsonError::Feature {
                problem: FeatureProblem::BadId(_),
                ..
            }
        ),
        "{err}"
    );
    let text = collection(&[
        feature("LEI", &polygon(SQUARE)),
        feature("LEI", &polygon(SQUARE)),
    ]);
    let err = parse_fences_geojson(&text, "f").unwrap_err();
    assert!(
        matches!(
            &err,
            GeoJsonError::Feature {
                index: 1,
                problem: FeatureProblem::DuplicateId,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn not_json_or_not_a_feature_collection() {
    assert!(matches!(
        parse_fences_geojson("{", "f"),
        Err(GeoJsonError::Json { .. })
    ));
    assert!(matches!(
        parse_fences_geojson(r#"{"type":"Polygon"}"#, "f"),
        Err(GeoJsonError::NotFeatureCollection { .. })
    ));
    // The basemap is GeoJSON but has no site ids: refused, not half-used.
    let basemap = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/england-wales.geojson"),
    )
    .unwrap();
    let err = parse_fences_geojson(&basemap, "england-wales.geojson").unwrap_err();
    assert!(
        matches!(
            err,
            GeoJsonError::Feature {
                index: 0,
                problem: FeatureProblem::MissingId,
                ..
            }
        ),
        "{err}"
    );
}
