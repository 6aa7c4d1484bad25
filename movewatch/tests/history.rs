//! History routes through the running engine: each role's status codes,
//! bad parameters, and the move track.

mod common;

use chrono::{Duration, Utc};
use common::{TOKEN, config, get_as};
use model::config::{RoleName, TokenConfig};
use model::{CommitToken, IngestBatch, JourneyId, MoveId, Position, Source, SupplierId, VehicleId};
use movewatch::Engine;
use store::{JourneyRecord, MoveRecord};

const SITE_TOKEN: &str = "test-site-lei-token";
const OTHER_SITE_TOKEN: &str = "test-site-other-token";
const GEOAMEY_TOKEN: &str = "test-supplier-geoamey-token";
const SERCO_TOKEN: &str = "test-supplier-serco-token";

fn token(token: &str, role: RoleName, sites: &[&str], supplier: Option<&str>) -> TokenConfig {
    TokenConfig {
        token: token.into(),
        role,
        sites: sites.iter().map(|s| s.parse().unwrap()).collect(),
        supplier: supplier.map(|s| s.parse().unwrap()),
    }
}

fn position(supplier: &str, vehicle: &str, i: i64) -> Position {
    Position {
        speed_kmh: Some(40.0),
        hdop: Some(1.0),
        ..Position::fix(
            SupplierId::parse(supplier).unwrap(),
            VehicleId::parse(vehicle).unwrap(),
            format!("{vehicle}-{i}"),
            Utc::now() - Duration::minutes(30) + Duration::seconds(i * 10),
            53.8 + i as f64 * 0.0005,
            -1.55,
        )
    }
}

/// Stores 60 points of each vehicle and applies them to live state, as the pipeline would.
async fn seed(engine: &Engine) {
    let mut positions = Vec::new();
    for i in 0..60 {
        positions.push(position("geoamey", "AB12CDE", i));
        positions.push(position("serco", "XY99ZZZ", i));
    }
    let mut batch = IngestBatch {
        source: Source::Http,
        received: std::time::Instant::now(),
        received_at: Utc::now(),
        positions,
        events: vec![],
        dead_letters: vec![],
        transitions: vec![],
        derived: Default::default(),
        commit: CommitToken::detached(),
    };
    engine.tracker.apply(&mut batch);
    engine.store.write(&[batch]).await.unwrap();
    engine
        .store
        .upsert_move(&MoveRecord {
            id: MoveId::parse("move-1").unwrap(),
            reference: "REF1".into(),
            from_location: "LEI".parse().unwrap(),
            to_location: "WDI".parse().unwrap(),
            date: (Utc::now() - Duration::hours(1)).date_naive(),
            status: "in_transit".into(),
            journeys: vec![JourneyRecord {
                id: JourneyId::parse("journey-1").unwrap(),
                from_location: "LEI".parse().unwrap(),
                to_location: "WDI".parse().unwrap(),
                vehicle: Some(VehicleId::parse("AB12CDE").unwrap()),
            }],
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn history_routes_are_scoped_and_validated() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), None);
    c.tokens.extend([
        token(SITE_TOKEN, RoleName::Site, &["LEI"], None),
        token(OTHER_SITE_TOKEN, RoleName::Site, &["HMP-OTHER"], None),
        token(GEOAMEY_TOKEN, RoleName::Supplier, &[], Some("geoamey")),
        token(SERCO_TOKEN, RoleName::Supplier, &[], Some("serco")),
    ]);
    let engine = Engine::start(c).await.unwrap();
    seed(&engine).await;
    let addr = engine.http_addr;
    let track = "/api/vehicles/AB12CDE/track";

    // Control room: everything.
    let r = get_as(addr, track, Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let f = r.json();
    assert_eq!(f["type"], "Feature");
    assert_eq!(f["geometry"]["type"], "LineString");
    assert_eq!(f["properties"]["vehicle"], "AB12CDE");
    assert_eq!(f["properties"]["points_before"], 60);
    // A straight line north simplifies to its two ends.
    let r = get_as(addr, &format!("{track}?simplify_m=5"), Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let f = r.json();
    assert_eq!(f["properties"]["points_after"], 2);
    assert_eq!(f["properties"]["timestamps"].as_array().unwrap().len(), 2);
    // The token also works as ?token=, and the registration is normalised.
    let r = get_as(
        addr,
        &format!("/api/vehicles/ab12%20cde/track?token={TOKEN}"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // 401: no token, unknown token.
    assert_eq!(get_as(addr, track, None).await.status, 401);
    assert_eq!(get_as(addr, track, Some("nope")).await.status, 401);
    assert_eq!(
        get_as(addr, "/api/moves/move-1/track", None).await.status,
        401
    );

    // Suppliers: their own vehicles only; 403 carries no data.
    assert_eq!(get_as(addr, track, Some(GEOAMEY_TOKEN)).await.status, 200);
    let r = get_as(addr, track, Some(SERCO_TOKEN)).await;
    assert_eq!(r.status, 403);
    assert!(!r.body.contains("coordinates"), "{}", r.body);
    assert_eq!(
        get_as(addr, "/api/vehicles/XY99ZZZ/track", Some(SERCO_TOKEN))
            .await
            .status,
        200
    );
    // A vehicle nobody knows is nobody's.
    assert_eq!(
        get_as(addr, "/api/vehicles/ZZ00ZZZ/track", Some(SERCO_TOKEN))
            .await
            .status,
        403
    );

    // Site tokens: no vehicle tracks by registration.
    let r = get_as(addr, track, Some(SITE_TOKEN)).await;
    assert_eq!(r.status, 403);
    assert!(!r.body.contains("coordinates"));

    // Bad parameters: 400 with a message.
    let now = Utc::now();
    for (query, says) in [
        ("from=yesterday".to_owned(), "RFC 3339"),
        (
            format!(
                "from={}&to={}",
                (now - Duration::days(8)).format("%Y-%m-%dT%H:%M:%SZ"),
                now.format("%Y-%m-%dT%H:%M:%SZ")
            ),
            "7 days",
        ),
        (
            "from=2026-11-21T10:00:00Z&to=2026-11-21T09:00:00Z".to_owned(),
            "before",
        ),
        ("simplify_m=-3".to_owned(), "simplify_m"),
    ] {
        let r = get_as(addr, &format!("{track}?{query}"), Some(TOKEN)).await;
        assert_eq!(r.status, 400, "{query}: {}", r.body);
        let body = r.json();
        assert_eq!(body["error"], "bad_request");
        assert!(
            body["message"].as_str().unwrap().contains(says),
            "{query}: {}",
            r.body
        );
    }
    let r = get_as(addr, "/api/vehicles/not-a-reg!/track", Some(TOKEN)).await;
    assert_eq!(r.status, 400, "{}", r.body);

    // Moves.
    let mv = "/api/moves/move-1/track";
    let r = get_as(addr, mv, Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let fc = r.json();
    assert_eq!(fc["type"], "FeatureCollection");
    assert_eq!(fc["move_id"], "move-1");
    let features = fc["features"].as_array().unwrap();
    assert_eq!(features.len(), 1);
    assert_eq!(features[0]["properties"]["vehicle"], "AB12CDE");
    assert_eq!(features[0]["properties"]["journey_id"], "journey-1");
    assert_eq!(features[0]["properties"]["points_before"], 60);
    assert_eq!(
        get_as(addr, "/api/moves/no-such-move/track", Some(TOKEN))
            .await
            .status,
        404
    );
    // A site token sees a move from its site, not others'; unknown moves are 403, not 404.
    assert_eq!(get_as(addr, mv, Some(SITE_TOKEN)).await.status, 200);
    let r = get_as(addr, mv, Some(OTHER_SITE_TOKEN)).await;
    assert_eq!(r.status, 403);
    assert!(!r.body.contains("coordinates"));
    assert_eq!(
        get_as(addr, "/api/moves/no-such-move/track", Some(SITE_TOKEN))
            .await
            .status,
        403
    );
    // Suppliers: moves carried by their vehicles.
    assert_eq!(get_as(addr, mv, Some(GEOAMEY_TOKEN)).await.status, 200);
    assert_eq!(get_as(addr, mv, Some(SERCO_TOKEN)).await.status, 403);
    // The span is the move's, not the caller's.
    let r = get_as(
        addr,
        &format!("{mv}?from=2026-11-21T09:00:00Z"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, 400);

    engine.stop();
}
