//! Geofences in the live path (issue #5): vans publishing over MQTT to the
//! embedded broker produce stored crossings at a real prison (LEI, HMP
//! Leeds, a 400 m circle); the fence state survives a restart; the control
//! room replaces fences at run time with `PUT /api/sites/{id}/fence`.

mod common;

use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use common::*;
use model::config::{RoleName, TokenConfig};
use model::{FenceTransition, SiteId, TransitionKind, VehicleId};
use movewatch::Engine;
use rumqttc::AsyncClient;

/// Metres per degree of latitude.
const M_PER_DEG_LAT: f64 = 111_195.0;

fn lei() -> SiteId {
    SiteId::parse("LEI").unwrap()
}

/// LEI's centre, from the loaded sites.
fn lei_centre(engine: &Engine) -> (f64, f64) {
    let s = engine.sites.iter().find(|s| s.id == lei()).unwrap();
    (s.lat, s.lon)
}

/// A point `north_m` north and `east_m` east of (lat, lon).
fn offset((lat, lon): (f64, f64), north_m: f64, east_m: f64) -> (f64, f64) {
    (
        lat + north_m / M_PER_DEG_LAT,
        lon + east_m / (M_PER_DEG_LAT * lat.to_radians().cos()),
    )
}

/// Whole seconds, `minutes` ago: stored times then compare exactly.
fn base(minutes: i64) -> DateTime<Utc> {
    (Utc::now() - chrono::Duration::minutes(minutes))
        .duration_trunc(chrono::Duration::seconds(1))
        .unwrap()
}

/// One fix: the shared `point` with an exact time and speed.
fn fix(
    id: &str,
    vehicle: &str,
    ts: DateTime<Utc>,
    (lat, lon): (f64, f64),
    speed: f64,
) -> serde_json::Value {
    let mut p = point(id, vehicle, 0, lat, lon);
    p["tracking_timestamp"] = ts.to_rfc3339().into();
    p["speed"] = speed.into();
    p
}

/// Publishes each fix as its own message (QoS 1, in order), then waits
/// until the store holds `total` points: crossings commit with their points.
async fn drive(engine: &Engine, client: &AsyncClient, fixes: &[serde_json::Value], total: i64) {
    for f in fixes {
        let vehicle = f["vehicle_registration"].as_str().unwrap();
        publish_positions(client, vehicle, serde_json::to_vec(f).unwrap()).await;
    }
    assert_eq!(wait_for_positions(engine, total).await, total);
}

async fn crossings(engine: &Engine, vehicle: &str) -> Vec<FenceTransition> {
    let from = Utc::now() - chrono::Duration::days(1);
    engine
        .store
        .fence_transitions(&VehicleId::parse(vehicle).unwrap(), from, Utc::now())
        .await
        .unwrap()
}

fn crossing(vehicle: &str, kind: TransitionKind, ts: DateTime<Utc>) -> FenceTransition {
    FenceTransition {
        vehicle: VehicleId::parse(vehicle).unwrap(),
        site: lei(),
        kind,
        ts,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_van_entering_and_leaving_leeds_prison_is_stored_once_each_and_one_600_m_away_never() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::start(config(dir.path(), None)).await.unwrap();
        let client = publisher(&engine, None).await;
        let c = lei_centre(&engine);
        let t0 = base(20);
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        let van = "LE15VAN";
        let trip = [
            fix("in-1", van, at(0), offset(c, -1500.0, 0.0), 50.0),
            fix("in-2", van, at(30), offset(c, -1000.0, 0.0), 50.0),
            fix("in-3", van, at(60), offset(c, -600.0, 0.0), 50.0),
            // First fix inside, still moving: the visit starts here.
            fix("in-4", van, at(90), offset(c, -200.0, 0.0), 40.0),
            // Stopped inside: confirms the enter, stamped at in-4.
            fix("in-5", van, at(120), offset(c, -50.0, 0.0), 0.0),
            fix("in-6", van, at(150), c, 0.0),
            fix("in-7", van, at(600), offset(c, 10.0, 5.0), 0.0),
            fix("in-8", van, at(900), offset(c, 300.0, 0.0), 20.0),
            // Beyond 400 m + the 100 m exit buffer: the exit run starts here...
            fix("in-9", van, at(930), offset(c, 700.0, 0.0), 50.0),
            // ... and lasts 30 s here.
            fix("in-10", van, at(960), offset(c, 1200.0, 0.0), 50.0),
            fix("in-11", van, at(990), offset(c, 1700.0, 0.0), 50.0),
        ];
        drive(&engine, &client, &trip, trip.len() as i64).await;
        assert_eq!(
            crossings(&engine, van).await,
            vec![
                crossing(van, TransitionKind::Enter, at(90)),
                crossing(van, TransitionKind::Exit, at(930)),
            ]
        );

        // The road 600 m east of the prison, 1 Hz-ish, including a stop in traffic.
        let road = "LE15RD";
        let mut passing = Vec::new();
        for i in 0..=24 {
            let north = -1200.0 + 100.0 * i as f64;
            let speed = if (10..=12).contains(&i) { 0.0 } else { 45.0 };
            passing.push(fix(
                &format!("road-{i}"),
                road,
                at(i * 8),
                offset(c, north, 600.0),
                speed,
            ));
        }
        drive(
            &engine,
            &client,
            &passing,
            (trip.len() + passing.len()) as i64,
        )
        .await;
        assert_eq!(crossings(&engine, road).await, vec![]);
        engine.stop();
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_van_inside_at_restart_does_not_arrive_again() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::start(config(dir.path(), None)).await.unwrap();
        let client = publisher(&engine, None).await;
        let c = lei_centre(&engine);
        let t0 = base(30);
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        let van = "RS12TRT";
        let before = [
            fix("r-1", van, at(0), offset(c, -1000.0, 0.0), 50.0),
            fix("r-2", van, at(60), offset(c, -100.0, 0.0), 10.0),
            fix("r-3", van, at(90), c, 0.0),
        ];
        drive(&engine, &client, &before, 3).await;
        assert_eq!(
            crossings(&engine, van).await,
            vec![crossing(van, TransitionKind::Enter, at(60))]
        );
        engine.stop();

        // Same store file; the first engine's embedded broker keeps its port.
        let engine = Engine::start(config(dir.path(), None)).await.unwrap();
        let inside: Vec<SiteId> = engine
            .inspect(VehicleId::parse(van).unwrap())
            .await
            .unwrap()
            .inside;
        assert_eq!(inside, vec![lei()], "restored from the stored enter");
        let client = publisher(&engine, None).await;
        // Parked inside: two stationary fixes would confirm a fresh enter.
        let after = [
            fix("r-4", van, at(300), offset(c, 20.0, 0.0), 0.0),
            fix("r-5", van, at(330), offset(c, 25.0, 0.0), 0.0),
            fix("r-6", van, at(600), offset(c, 20.0, 5.0), 0.0),
        ];
        drive(&engine, &client, &after, 6).await;
        assert_eq!(
            crossings(&engine, van).await,
            vec![crossing(van, TransitionKind::Enter, at(60))],
            "no second enter after the restart"
        );
        // It still leaves normally.
        let leave = [
            fix("r-7", van, at(700), offset(c, 800.0, 0.0), 50.0),
            fix("r-8", van, at(740), offset(c, 1300.0, 0.0), 50.0),
        ];
        drive(&engine, &client, &leave, 8).await;
        assert_eq!(
            crossings(&engine, van).await,
            vec![
                crossing(van, TransitionKind::Enter, at(60)),
                crossing(van, TransitionKind::Exit, at(700)),
            ]
        );
        engine.stop();
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_fence_is_for_the_control_room_and_replaces_the_live_fence() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), None);
        cfg.tokens.push(TokenConfig {
            token: "site-token".into(),
            role: RoleName::Site,
            sites: vec![lei()],
            supplier: None,
        });
        let engine = Engine::start(cfg).await.unwrap();
        let addr = engine.http_addr;
        let c = lei_centre(&engine);
        let bearer = format!("Bearer {TOKEN}");
        let auth = [("Authorization", bearer.as_str())];
        let put = |path: &'static str, headers: Vec<(&'static str, String)>, body: String| async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http("PUT", addr, path, &headers, body.as_bytes()).await
        };
        let control = || vec![("Authorization", format!("Bearer {TOKEN}"))];
        let small = r#"{"radius_m": 50}"#.to_owned();

        // Who may.
        assert_eq!(put("/api/sites/LEI/fence", vec![], small.clone()).await.status, 401);
        let unknown = vec![("Authorization", "Bearer nope".to_owned())];
        assert_eq!(put("/api/sites/LEI/fence", unknown, small.clone()).await.status, 401);
        let site = vec![("Authorization", "Bearer site-token".to_owned())];
        assert_eq!(put("/api/sites/LEI/fence", site, small.clone()).await.status, 403);
        assert_eq!(put("/api/sites/NOPE/fence", control(), small.clone()).await.status, 404);

        // Bad bodies: 400 with the reason, and nothing changes.
        let bad = [
            ("not json", "not JSON"),
            (r#"{"type": "Point", "coordinates": [-1.57, 53.79]}"#, "Point"),
            (r#"{"radius_m": -3}"#, "radius"),
            (
                r#"{"type": "Polygon", "coordinates": [[[-1.58, 53.79], [-1.57, 53.79], [-1.57, 53.80], [-1.58, 53.80]]]}"#,
                "closed",
            ),
            (
                r#"{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [[[53.79, -1.58], [53.79, -1.57], [53.80, -1.57], [53.79, -1.58]]]}}"#,
                "[lat, lon]",
            ),
        ];
        for (body, says) in bad {
            let r = put("/api/sites/LEI/fence", control(), body.to_owned()).await;
            assert_eq!(r.status, 400, "{body}: {}", r.body);
            assert!(r.json()["message"].as_str().unwrap().contains(says), "{body}: {}", r.body);
        }

        let sites = http("GET", addr, "/api/sites", &auth, b"").await.json();
        let lei_json = |sites: &serde_json::Value| {
            sites
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["id"] == "LEI")
                .cloned()
                .unwrap()
        };
        assert_eq!(
            lei_json(&sites)["fence"],
            serde_json::json!({"type": "circle", "radius_m": 400.0})
        );

        // 200 m from the centre: inside the 400 m circle, outside a 50 m one.
        let parked = offset(c, 200.0, 0.0);
        let contains = |engine: &Engine| {
            let g = engine.view.fences();
            g.get(&lei()).unwrap().fence.contains(parked.0, parked.1)
        };
        assert!(contains(&engine));
        let r = put("/api/sites/LEI/fence", control(), small).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(!contains(&engine));
        let sites = http("GET", addr, "/api/sites", &auth, b"").await.json();
        assert_eq!(
            lei_json(&sites)["fence"],
            serde_json::json!({"type": "circle", "radius_m": 50.0})
        );

        // The live path uses the new fence: parked at 200 m is no arrival,
        // parked at the centre is.
        let client = publisher(&engine, None).await;
        let t0 = base(10);
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        let fixes = [
            fix("p-1", "PK11OUT", at(0), parked, 0.0),
            fix("p-2", "PK11OUT", at(30), parked, 0.0),
            fix("p-3", "PK11OUT", at(60), parked, 0.0),
            fix("p-4", "PK22IN", at(0), c, 0.0),
            fix("p-5", "PK22IN", at(30), c, 0.0),
        ];
        drive(&engine, &client, &fixes, 5).await;
        assert_eq!(crossings(&engine, "PK11OUT").await, vec![]);
        assert_eq!(
            crossings(&engine, "PK22IN").await,
            vec![crossing("PK22IN", TransitionKind::Enter, at(0))]
        );

        // A polygon Feature (a 300 m square around the centre) replaces the circle.
        let (s, w) = offset(c, -150.0, -150.0);
        let (n, e) = offset(c, 150.0, 150.0);
        let square = serde_json::json!({
            "type": "Feature", "properties": {"id": "ignored"},
            "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
        });
        let r = put("/api/sites/LEI/fence", control(), square.to_string()).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["fence"]["type"], "polygon");
        let sites = http("GET", addr, "/api/sites", &auth, b"").await.json();
        let fence = &lei_json(&sites)["fence"];
        assert_eq!(fence["type"], "polygon");
        assert_eq!(fence["geometry"]["type"], "MultiPolygon");
        // The square reaches 150 m: 200 m north is outside it, 100 m north inside.
        assert!(!contains(&engine));
        let near = offset(c, 100.0, 0.0);
        let g = engine.view.fences();
        assert!(g.get(&lei()).unwrap().fence.contains(near.0, near.1));
        engine.stop();
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_fence_survives_a_restart_and_detects_arrivals() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::start(config(dir.path(), None)).await.unwrap();
        let c = lei_centre(&engine);
        let control = format!("Bearer {TOKEN}");
        let auth = [("Authorization", control.as_str())];
        // A 300 m square 1.5 km east of the centre: wholly outside the old
        // 400 m circle.
        let east = offset(c, 0.0, 1500.0);
        let (s, w) = offset(east, -150.0, -150.0);
        let (n, e) = offset(east, 150.0, 150.0);
        let square = serde_json::json!({"type": "Polygon",
            "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]});
        let r = http(
            "PUT",
            engine.http_addr,
            "/api/sites/LEI/fence",
            &auth,
            square.to_string().as_bytes(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let fence_after_put = r.json()["fence"].clone();
        assert_eq!(fence_after_put["type"], "polygon");
        // A second site keeps a replaced circle too.
        let r = http(
            "PUT",
            engine.http_addr,
            "/api/sites/MDI/fence",
            &auth,
            br#"{"radius_m": 123.5}"#,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        engine.stop();

        // Same store file, same sites file: the replaced fences come back.
        let engine = Engine::start(config(dir.path(), None)).await.unwrap();
        let sites = http("GET", engine.http_addr, "/api/sites", &auth, b"")
            .await
            .json();
        let fence_of = |id: &str| {
            sites
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["id"] == id)
                .map(|s| s["fence"].clone())
                .unwrap()
        };
        assert_eq!(
            fence_of("LEI"),
            fence_after_put,
            "LEI's polygon after the restart"
        );
        assert_eq!(
            fence_of("MDI"),
            serde_json::json!({"type": "circle", "radius_m": 123.5})
        );
        {
            let g = engine.view.fences();
            let lei_fence = &g.get(&lei()).unwrap().fence;
            assert!(lei_fence.contains(east.0, east.1));
            assert!(!lei_fence.contains(c.0, c.1), "the old circle is gone");
        }

        // A van driving into the new fence (never near the old circle)
        // arrives at LEI; one parked at the old centre does not.
        let client = publisher(&engine, None).await;
        let t0 = base(20);
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        let van = "NW12FNC";
        let old = "OL12CTR";
        let fixes = [
            fix("n-1", van, at(0), offset(east, 0.0, 2000.0), 50.0),
            fix("n-2", van, at(60), offset(east, 0.0, 600.0), 40.0),
            fix("n-3", van, at(120), offset(east, 20.0, 50.0), 5.0),
            fix("n-4", van, at(150), east, 0.0),
            fix("o-1", old, at(0), c, 0.0),
            fix("o-2", old, at(30), c, 0.0),
            fix("o-3", old, at(60), c, 0.0),
        ];
        drive(&engine, &client, &fixes, fixes.len() as i64).await;
        assert_eq!(
            crossings(&engine, van).await,
            vec![crossing(van, TransitionKind::Enter, at(120))]
        );
        assert_eq!(crossings(&engine, old).await, vec![]);
        engine.stop();
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_load_from_csv_and_geojson_and_a_bad_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    let fences = dir.path().join("fences.geojson");
    std::fs::write(
        &fences,
        r#"{"type": "FeatureCollection", "features": [
          {"type": "Feature", "properties": {"id": "LEI"},
           "geometry": {"type": "Polygon", "coordinates": [[[-1.59, 53.78], [-1.57, 53.78],
             [-1.57, 53.80], [-1.59, 53.80], [-1.59, 53.78]]]}},
          {"type": "Feature", "properties": {"id": "YARD-1", "name": "Depot", "kind": "other"},
           "geometry": {"type": "Polygon", "coordinates": [[[-1.50, 53.70], [-1.49, 53.70],
             [-1.49, 53.71], [-1.50, 53.71], [-1.50, 53.70]]]}}
        ]}"#,
    )
    .unwrap();
    cfg.sites.files.push(fences.clone());
    let set = movewatch::load_fences(&cfg).unwrap();
    let leeds = set.get(&lei()).unwrap();
    assert!(
        !leeds.fence.is_circle(),
        "the polygon replaces LEI's circle"
    );
    assert_eq!(leeds.site.name, "Leeds (HMP)");
    assert_eq!(
        set.get(&SiteId::parse("YARD-1").unwrap())
            .unwrap()
            .site
            .name,
        "Depot"
    );
    let sites = movewatch::load_sites(&cfg).unwrap();
    assert_eq!(sites.len(), set.len());

    // Swapped coordinates in the second feature: nothing loads, the engine does not start.
    std::fs::write(
        &fences,
        r#"{"type": "FeatureCollection", "features": [
          {"type": "Feature", "properties": {"id": "LEI"},
           "geometry": {"type": "Polygon", "coordinates": [[[-1.59, 53.78], [-1.57, 53.78],
             [-1.57, 53.80], [-1.59, 53.80], [-1.59, 53.78]]]}},
          {"type": "Feature", "properties": {"id": "WDI"},
           "geometry": {"type": "Polygon", "coordinates": [[[53.78, -1.59], [53.78, -1.57],
             [53.80, -1.57], [53.78, -1.59]]]}}
        ]}"#,
    )
    .unwrap();
    let err = format!("{:#}", movewatch::load_fences(&cfg).unwrap_err());
    assert!(err.contains("fences.geojson: feature #1 (id WDI)"), "{err}");
    assert!(err.contains("[longitude, latitude]"), "{err}");
    let err = Engine::start(cfg.clone())
        .await
        .err()
        .expect("must not start");
    assert!(format!("{err:#}").contains("feature #1"), "{err:#}");

    // A bad CSV row names the file and line.
    let csv = dir.path().join("extra.csv");
    std::fs::write(
        &csv,
        "id,name,kind,lat,lon\nOK1,Fine,court,53.0,-1.5\nBAD1,Bad,court,x,-1.5\n",
    )
    .unwrap();
    cfg.sites.files = vec![csv];
    let err = format!("{:#}", movewatch::load_fences(&cfg).unwrap_err());
    assert!(err.contains("extra.csv") && err.contains('3'), "{err}");

    // The default file, absent (tests run in movewatch/, which has no data/): the shipped sites.
    assert!(!std::path::Path::new("data/sites.csv").exists());
    cfg.sites.files = vec!["data/sites.csv".into()];
    let set = movewatch::load_fences(&cfg).unwrap();
    assert!(set.get(&lei()).is_some_and(|s| s.fence.is_circle()));
    assert!(set.len() > 100);
}
