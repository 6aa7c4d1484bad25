//! The security table: one test per row of the contract's "Vehicles belong
//! to suppliers" and "Who may see what", plus the embedded broker's client-id
//! rule, each through the engine's real edges (MQTT over TCP, HTTP,
//! WebSocket). A case that is let through when it should be refused fails.
//!
//! | contract row | test |
//! |---|---|
//! | a vehicle in no register entry: `unknown_vehicle` (MQTT, `/tracks`) | `a_vehicle_in_no_register_entry_is_unknown_vehicle` |
//! | another supplier's vehicle: `vehicle_owned_by_other_supplier`; no squatting, across a restart | `another_suppliers_vehicle_is_refused_and_cannot_be_squatted` |
//! | register from `[[vehicles]]`, `[fleet] files`, kept in the store | `another_suppliers_vehicle_is_refused_and_cannot_be_squatted`, `the_register_is_kept_by_the_control_room` |
//! | `PUT /api/vehicles/{vehicle}`: control room only (401, 403, 400) | `the_register_is_kept_by_the_control_room` |
//! | `claim_on_first_report` claims once, and the claim is stored | `claim_on_first_report_claims_once_and_keeps_the_claim` |
//! | client ids `{supplier}-…`; the engine's refused; no session takeover | `no_device_takes_the_engines_session_or_another_suppliers` |
//! | a bad topic under a supplier: `bad_topic`, never dropped | `a_bad_topic_is_dead_lettered_not_dropped` |
//! | supplier: `POST /tracks` only with its key, only its vehicles | `a_supplier_posts_tracks_only_with_its_key_for_its_vehicles` |
//! | supplier token: its own vehicles only; no register | `a_supplier_token_sees_only_its_own_vehicles` (and scope.rs) |
//! | site token: its own site channel and REST, vehicles on its moves in the window | scope.rs `every_route_and_channel_is_scoped_by_role`, history.rs |
//! | control room: everything | scope.rs, and `the_register_is_kept_by_the_control_room` |
//! | missing or unknown token: 401 | `a_missing_or_unknown_token_is_401_everywhere` (and scope.rs) |
//! | no credential in any log line | `no_credential_is_ever_logged` |
//! | an oversized WebSocket message: close 1009 | `an_oversized_websocket_message_is_closed_with_1009` |
//! | `/tracks` over 256 KiB: JSON 413, counted `too_large` | `a_tracks_body_over_the_limit_is_a_counted_json_413` |

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use model::config::{Config, RoleName, TokenConfig, VehicleConfig};
use model::{Reason, VehicleId};
use movewatch::Engine;
use rumqttc::QoS;
use tokio_tungstenite::tungstenite::Message;

const GEOAMEY_TOKEN: &str = "test-supplier-token-geoamey";
const LEI_TOKEN: &str = "test-site-token-lei";

/// A strict engine config: suppliers geoamey and serco (passwords
/// `pw-{id}`, keys `key-{id}`), no claims, GA11AAA geoamey's and SE11RCO
/// serco's in `[[vehicles]]`, a supplier and a site token.
fn strict(dir: &std::path::Path) -> Config {
    let mut c = config(dir, None);
    c.fleet.claim_on_first_report = false;
    with_supplier(&mut c, "geoamey");
    with_supplier(&mut c, "serco");
    for (v, s) in [("GA11AAA", "geoamey"), ("SE11RCO", "serco")] {
        c.vehicles.push(VehicleConfig {
            registration: v.parse().unwrap(),
            supplier: s.parse().unwrap(),
        });
    }
    c.tokens.push(TokenConfig {
        token: GEOAMEY_TOKEN.into(),
        role: RoleName::Supplier,
        sites: vec![],
        supplier: Some("geoamey".parse().unwrap()),
    });
    c.tokens.push(site_token(LEI_TOKEN, "LEI"));
    c
}

fn topic(supplier: &str, vehicle: &str, kind: &str) -> String {
    format!("movewatch/v1/{supplier}/{vehicle}/{kind}")
}

async fn send(client: &rumqttc::AsyncClient, topic: String, body: &serde_json::Value) {
    client
        .publish(topic, QoS::AtLeastOnce, false, body.to_string())
        .await
        .unwrap();
}

async fn tracks(engine: &Engine, key: Option<&str>, body: &[u8]) -> Reply {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(k) = key {
        headers.push(("X-API-Key", k));
    }
    http("POST", engine.http_addr, "/tracks", &headers, body).await
}

fn event(kind: &str) -> serde_json::Value {
    serde_json::json!({"event_type": kind, "occurred_at": chrono::Utc::now().to_rfc3339(), "details": {}})
}

/// The dead letters of one reason, waiting until there are `n`.
async fn letters_of(engine: &Engine, reason: Reason, n: usize) -> Vec<model::DeadLetter> {
    wait_for(20, &format!("{n} dead letters {reason}"), || async {
        let all = engine.store.recent_dead_letters(1000).await.unwrap();
        let of: Vec<_> = all.into_iter().filter(|d| d.reason == reason).collect();
        (of.len() >= n).then_some(of)
    })
    .await
}

fn counter(metrics: &str, reason: &str) -> f64 {
    let prefix = format!("movewatch_ingest_rejected_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn vehicles_stored(engine: &Engine, vehicle: &str) -> usize {
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    stored_ids(&engine.store, [vehicle.to_owned()], since)
        .await
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_in_no_register_entry_is_unknown_vehicle() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(strict(dir.path())).await.unwrap();
    let before = counter(&get(engine.http_addr, "/metrics").await, "unknown_vehicle");
    let geoamey = publisher(&engine, Some(("geoamey", "pw-geoamey"))).await;
    send(
        &geoamey,
        topic("geoamey", "NE11WWW", "positions"),
        &point("u1", "NE11WWW", 5, 53.8, -1.5),
    )
    .await;
    send(
        &geoamey,
        topic("geoamey", "NE11WWW", "events"),
        &event("MoveStart"),
    )
    .await;
    let body = serde_json::json!([
        point("u2", "NE11WWW", 5, 53.8, -1.5),
        point("ok1", "GA11AAA", 5, 53.8, -1.5)
    ]);
    let reply = tracks(&engine, Some("key-geoamey"), body.to_string().as_bytes()).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.json()["accepted"], 1);
    assert_eq!(reply.json()["rejected"][0]["reason"], "unknown_vehicle");
    let letters = letters_of(&engine, Reason::UnknownVehicle, 3).await;
    assert!(letters.iter().all(|d| !d.raw.is_empty()), "{letters:?}");
    let after = counter(&get(engine.http_addr, "/metrics").await, "unknown_vehicle");
    assert!(after - before >= 3.0, "counted: {before} -> {after}");
    assert_eq!(vehicles_stored(&engine, "NE11WWW").await, 0);
    assert_eq!(engine.store.counts().await.unwrap().events, 0);
    engine.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_suppliers_vehicle_is_refused_and_cannot_be_squatted() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = strict(dir.path());
    // serco's not-yet-seen van, from a fleet file read by header name.
    let fleet = dir.path().join("fleet.csv");
    std::fs::write(&fleet, "depot,supplier,registration\nYork,serco,se22 new\n").unwrap();
    c.fleet.files = vec![fleet];
    let engine = Engine::start(c.clone()).await.unwrap();
    let geoamey = publisher(&engine, Some(("geoamey", "pw-geoamey"))).await;
    // geoamey reports serco's vans first: MQTT positions and an event, and /tracks.
    for van in ["SE11RCO", "SE22NEW"] {
        send(
            &geoamey,
            topic("geoamey", van, "positions"),
            &point(&format!("sq-{van}"), van, 5, 53.8, -1.5),
        )
        .await;
        send(
            &geoamey,
            topic("geoamey", van, "events"),
            &event("MoveStart"),
        )
        .await;
    }
    let body = serde_json::json!([point("sq-http", "SE22NEW", 5, 53.8, -1.5)]);
    let reply = tracks(&engine, Some("key-geoamey"), body.to_string().as_bytes()).await;
    assert_eq!(
        reply.json()["rejected"][0]["reason"],
        "vehicle_owned_by_other_supplier"
    );
    letters_of(&engine, Reason::VehicleOwnedByOtherSupplier, 5).await;
    // serco's real points are taken.
    let serco = publisher(&engine, Some(("serco", "pw-serco"))).await;
    send(
        &serco,
        topic("serco", "SE22NEW", "positions"),
        &point("real-1", "SE22NEW", 4, 53.8, -1.5),
    )
    .await;
    let reply = tracks(
        &engine,
        Some("key-serco"),
        serde_json::json!([point("real-2", "SE11RCO", 4, 53.8, -1.5)])
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(reply.json()["accepted"], 1, "{}", reply.body);
    wait_for(20, "serco's points", || async {
        (vehicles_stored(&engine, "SE22NEW").await == 1).then_some(())
    })
    .await;
    assert_eq!(
        engine.store.counts().await.unwrap().events,
        0,
        "no squatted event"
    );
    engine.stop();

    // After a restart the register still says serco.
    let engine = Engine::start(c).await.unwrap();
    let reply = tracks(
        &engine,
        Some("key-geoamey"),
        serde_json::json!([point("sq-3", "SE22NEW", 3, 53.8, -1.5)])
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(
        reply.json()["rejected"][0]["reason"],
        "vehicle_owned_by_other_supplier"
    );
    let reply = tracks(
        &engine,
        Some("key-serco"),
        serde_json::json!([point("real-3", "SE22NEW", 3, 53.8, -1.5)])
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(reply.json()["accepted"], 1, "{}", reply.body);
    assert_eq!(vehicles_stored(&engine, "SE22NEW").await, 2);
    engine.stop();
}

async fn put_vehicle(engine: &Engine, vehicle: &str, token: Option<&str>, body: &str) -> Reply {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b));
    }
    http(
        "PUT",
        engine.http_addr,
        &format!("/api/vehicles/{vehicle}"),
        &headers,
        body.as_bytes(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_register_is_kept_by_the_control_room() {
    let dir = tempfile::tempdir().unwrap();
    let c = strict(dir.path());
    let engine = Engine::start(c.clone()).await.unwrap();
    let to_serco = r#"{"supplier": "serco"}"#;
    // Refused: no token, an unknown one (401); a supplier or a site token (403).
    assert_eq!(
        put_vehicle(&engine, "NE22VAN", None, to_serco).await.status,
        401
    );
    assert_eq!(
        put_vehicle(&engine, "NE22VAN", Some("not-a-token"), to_serco)
            .await
            .status,
        401
    );
    for token in [GEOAMEY_TOKEN, LEI_TOKEN] {
        let r = put_vehicle(&engine, "NE22VAN", Some(token), to_serco).await;
        assert_eq!(r.status, 403, "{token}: {}", r.body);
        assert_eq!(
            get_as(engine.http_addr, "/api/vehicles/GA11AAA", Some(token))
                .await
                .status,
            403
        );
    }
    // Bad bodies: 400 with {"error", "message"}.
    for (vehicle, body) in [
        ("NE22VAN", "not json"),
        ("NE22VAN", "{}"),
        ("NE22VAN", r#"{"supplier": 5}"#),
        ("NE22VAN", r#"{"supplier": "nosuchsupplier"}"#),
        ("NE22VAN", r#"{"supplier": "Bad Id"}"#),
        ("!!", to_serco),
    ] {
        let r = put_vehicle(&engine, vehicle, Some(TOKEN), body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let j = r.json();
        assert!(j["error"].is_string() && j["message"].is_string(), "{j}");
    }
    // The control room registers it; serco may report it, geoamey may not.
    let r = put_vehicle(&engine, "ne22van", Some(TOKEN), to_serco).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["vehicle"], "NE22VAN");
    let got = get_as(engine.http_addr, "/api/vehicles/NE22VAN", Some(TOKEN)).await;
    assert_eq!(
        (got.status, got.json()["supplier"].clone()),
        (200, "serco".into())
    );
    assert_eq!(
        get_as(engine.http_addr, "/api/vehicles/NO11NE", Some(TOKEN))
            .await
            .status,
        404
    );
    let one = |id: &str| serde_json::json!([point(id, "NE22VAN", 3, 53.8, -1.5)]).to_string();
    assert_eq!(
        tracks(&engine, Some("key-serco"), one("p1").as_bytes())
            .await
            .json()["accepted"],
        1
    );
    assert_eq!(
        tracks(&engine, Some("key-geoamey"), one("p2").as_bytes())
            .await
            .json()["rejected"][0]["reason"],
        "vehicle_owned_by_other_supplier"
    );
    // Moving GA11AAA (a config entry) to serco for this run.
    assert_eq!(
        put_vehicle(&engine, "GA11AAA", Some(TOKEN), to_serco)
            .await
            .status,
        200
    );
    engine.stop();

    // Stored: the PUT entry survives a restart; the config's entry is the config's again.
    let engine = Engine::start(c).await.unwrap();
    let got = get_as(engine.http_addr, "/api/vehicles/NE22VAN", Some(TOKEN))
        .await
        .json();
    assert_eq!(
        (got["supplier"].as_str(), got["source"].as_str()),
        (Some("serco"), Some("api"))
    );
    let got = get_as(engine.http_addr, "/api/vehicles/GA11AAA", Some(TOKEN))
        .await
        .json();
    assert_eq!(
        (got["supplier"].as_str(), got["source"].as_str()),
        (Some("geoamey"), Some("config"))
    );
    assert_eq!(
        tracks(&engine, Some("key-serco"), one("p3").as_bytes())
            .await
            .json()["accepted"],
        1
    );
    engine.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_on_first_report_claims_once_and_keeps_the_claim() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = strict(dir.path());
    c.fleet.claim_on_first_report = true;
    let engine = Engine::start(c.clone()).await.unwrap();
    let one = |id: &str| serde_json::json!([point(id, "CL41MED", 3, 53.8, -1.5)]).to_string();
    assert_eq!(
        tracks(&engine, Some("key-geoamey"), one("c1").as_bytes())
            .await
            .json()["accepted"],
        1
    );
    assert_eq!(
        tracks(&engine, Some("key-serco"), one("c2").as_bytes())
            .await
            .json()["rejected"][0]["reason"],
        "vehicle_owned_by_other_supplier"
    );
    // The claim is stored (written by its own task).
    wait_for(10, "the claim in the store", || async {
        let v: VehicleId = "CL41MED".parse().unwrap();
        engine
            .store
            .vehicle(&v)
            .await
            .unwrap()
            .filter(|r| r.source == "claim")
    })
    .await;
    engine.stop();
    // Strict after a restart: the stored claim holds, other vans are unknown.
    c.fleet.claim_on_first_report = false;
    let engine = Engine::start(c).await.unwrap();
    assert_eq!(
        tracks(&engine, Some("key-geoamey"), one("c3").as_bytes())
            .await
            .json()["accepted"],
        1
    );
    assert_eq!(
        tracks(&engine, Some("key-serco"), one("c4").as_bytes())
            .await
            .json()["rejected"][0]["reason"],
        "vehicle_owned_by_other_supplier"
    );
    let other = serde_json::json!([point("c5", "UN11SEN", 3, 53.8, -1.5)]).to_string();
    assert_eq!(
        tracks(&engine, Some("key-geoamey"), other.as_bytes())
            .await
            .json()["rejected"][0]["reason"],
        "unknown_vehicle"
    );
    engine.stop();
}

/// [`device_at`] the engine's device-facing broker address.
async fn connect_as(
    engine: &Engine,
    client_id: &str,
    login: (&str, &str),
) -> (
    rumqttc::AsyncClient,
    tokio::sync::watch::Receiver<PublisherState>,
    Option<String>,
) {
    device_at(&engine.mqtt_addr.0, engine.mqtt_addr.1, client_id, login).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_device_takes_the_engines_session_or_another_suppliers() {
    let dir = tempfile::tempdir().unwrap();
    let c = strict(dir.path());
    let engine_id = c.mqtt.client_id.clone();
    let engine = Engine::start(c).await.unwrap();
    wait_subscribed(&engine).await;
    // serco's device, connected and reporting.
    let (serco, serco_state, refused) =
        connect_as(&engine, "serco-van1", ("serco", "pw-serco")).await;
    assert_eq!(refused, None);
    send(
        &serco,
        topic("serco", "SE11RCO", "positions"),
        &point("s-1", "SE11RCO", 9, 53.8, -1.5),
    )
    .await;

    // geoamey, with a valid password, tries the engine's client id and serco's device id.
    for id in [engine_id.as_str(), "serco-van1", "movewatch-engine", "van1"] {
        let (_c, _s, refused) = connect_as(&engine, id, ("geoamey", "pw-geoamey")).await;
        let refused = refused.unwrap_or_else(|| panic!("geoamey connected as {id}"));
        assert!(refused.contains("NotAuthorized"), "{id}: {refused}");
    }
    // The engine kept its session and serco its connection: nothing lost.
    assert!(engine.mqtt_connected(), "the engine was kicked off");
    assert!(
        serco_state.borrow().connected,
        "serco's device was kicked off: {:?}",
        serco_state.borrow()
    );
    for i in 2..=20 {
        send(
            &serco,
            topic("serco", "SE11RCO", "positions"),
            &point(&format!("s-{i}"), "SE11RCO", 9 - i / 3, 53.8, -1.5),
        )
        .await;
    }
    wait_for(20, "serco's 20 points stored", || async {
        (vehicles_stored(&engine, "SE11RCO").await == 20).then_some(())
    })
    .await;
    assert_eq!(serco_state.borrow().acked, 20);
    // geoamey's own device id is let in.
    let (_g, _s, refused) = connect_as(&engine, "geoamey-van9", ("geoamey", "pw-geoamey")).await;
    assert_eq!(refused, None);
    engine.stop();

    // Open (development, no passwords): still never the engine's client id.
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), None);
    let engine_id = c.mqtt.client_id.clone();
    let engine = Engine::start(c).await.unwrap();
    wait_subscribed(&engine).await;
    let (_c, _s, refused) = connect_as(&engine, &engine_id, ("anyone", "x")).await;
    assert!(refused.is_some_and(|r| r.contains("NotAuthorized")));
    assert!(engine.mqtt_connected());
    engine.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_topic_is_dead_lettered_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(strict(dir.path())).await.unwrap();
    let before = counter(&get(engine.http_addr, "/metrics").await, "bad_topic");
    let (geoamey, state) = publisher_at(
        &engine.mqtt_addr.0,
        engine.mqtt_addr.1,
        Some(("geoamey", "pw-geoamey")),
    )
    .await;
    wait_subscribed(&engine).await;
    let bad = [
        "movewatch/v1/geoamey/GA11AAA/position",
        "movewatch/v1/geoamey/GA11AAA/positions/extra",
        "movewatch/v1/geoamey/GA11AAA/positions/",
        "movewatch/v1/geoamey/GA11AAA",
    ];
    for (i, t) in bad.iter().enumerate() {
        send(
            &geoamey,
            (*t).to_owned(),
            &point(&format!("b{i}"), "GA11AAA", 5, 53.8, -1.5),
        )
        .await;
    }
    let letters = letters_of(&engine, Reason::BadTopic, bad.len()).await;
    for t in bad {
        let d = letters
            .iter()
            .find(|d| d.topic.as_deref() == Some(t))
            .unwrap_or_else(|| panic!("{t} not dead-lettered"));
        assert!(d.raw.contains("tracking_id"), "raw text kept: {d:?}");
        assert_eq!(d.supplier.as_deref(), Some("geoamey"));
    }
    // Acknowledged once dead-lettered, and counted.
    wait_for(10, "the acks", || async {
        (state.borrow().acked == bad.len() as u64).then_some(())
    })
    .await;
    let after = counter(&get(engine.http_addr, "/metrics").await, "bad_topic");
    assert!(after - before >= bad.len() as f64, "{before} -> {after}");
    engine.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplier_posts_tracks_only_with_its_key_for_its_vehicles() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(strict(dir.path())).await.unwrap();
    let body = |v: &str, id: &str| serde_json::json!([point(id, v, 3, 53.8, -1.5)]).to_string();
    // Its own key, its own van: taken. Another's van: refused. Another's key or a wrong one: 401.
    assert_eq!(
        tracks(
            &engine,
            Some("key-geoamey"),
            body("GA11AAA", "k1").as_bytes()
        )
        .await
        .json()["accepted"],
        1
    );
    assert_eq!(
        tracks(
            &engine,
            Some("key-geoamey"),
            body("SE11RCO", "k2").as_bytes()
        )
        .await
        .json()["rejected"][0]["reason"],
        "vehicle_owned_by_other_supplier"
    );
    for key in [None, Some("key-nobody"), Some(GEOAMEY_TOKEN), Some(TOKEN)] {
        assert_eq!(
            tracks(&engine, key, body("GA11AAA", "k3").as_bytes())
                .await
                .status,
            401,
            "{key:?}"
        );
    }
    assert_eq!(vehicles_stored(&engine, "SE11RCO").await, 0);
    engine.stop();
}

/// The first frame after subscribing with geoamey's supplier token.
async fn first_frame(engine: &Engine, channel: &str) -> serde_json::Value {
    let mut ws = subscribe(engine, GEOAMEY_TOKEN, channel).await;
    frames_until(&mut ws, 5, |_| true).await.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplier_token_sees_only_its_own_vehicles() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(strict(dir.path())).await.unwrap();
    for (key, v) in [("key-geoamey", "GA11AAA"), ("key-serco", "SE11RCO")] {
        let body = serde_json::json!([point(&format!("{v}-1"), v, 3, 53.8, -1.5)]).to_string();
        assert_eq!(
            tracks(&engine, Some(key), body.as_bytes()).await.json()["accepted"],
            1
        );
    }
    let own = get_as(
        engine.http_addr,
        "/api/vehicles/GA11AAA/track",
        Some(GEOAMEY_TOKEN),
    )
    .await;
    assert_eq!(own.status, 200, "{}", own.body);
    for path in [
        "/api/vehicles/SE11RCO/track",
        "/api/vehicles",
        "/api/vehicles/GA11AAA",
    ] {
        let r = get_as(engine.http_addr, path, Some(GEOAMEY_TOKEN)).await;
        assert_eq!(r.status, 403, "{path}: {}", r.body);
        assert!(!r.body.contains("SE11RCO"), "{path} leaks: {}", r.body);
    }
    // Its own vehicle's channel; not another's, not the fleet.
    assert_eq!(
        first_frame(&engine, "vehicle:GA11AAA").await["type"],
        "snapshot"
    );
    for channel in ["vehicle:SE11RCO", "fleet", "site:LEI"] {
        let f = first_frame(&engine, channel).await;
        assert_eq!(
            (f["type"].as_str(), f["code"].as_str()),
            (Some("error"), Some("forbidden")),
            "{channel}: {f}"
        );
    }
    engine.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_unknown_token_is_401_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(strict(dir.path())).await.unwrap();
    for path in [
        "/api/sites",
        "/api/vehicles",
        "/api/vehicles/GA11AAA",
        "/api/vehicles/GA11AAA/track",
        "/api/moves/m1",
        "/api/sites/LEI/incoming",
    ] {
        for token in [None, Some("not-a-token")] {
            let r = get_as(engine.http_addr, path, token).await;
            assert_eq!(r.status, 401, "{path} {token:?}: {}", r.body);
        }
    }
    for query in ["", "?token=not-a-token"] {
        let url = format!("ws://{}/ws{query}", engine.http_addr);
        match tokio_tungstenite::connect_async(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), 401)
            }
            other => panic!("{query}: {:?}", other.map(|_| ())),
        }
    }
    engine.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_websocket_message_is_closed_with_1009() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(strict(dir.path())).await.unwrap();
    let url = format!("ws://{}/ws?token={TOKEN}", engine.http_addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let big = format!(
        "{{\"type\":\"subscribe\",\"channel\":\"{}\"}}",
        "x".repeat(20 * 1024)
    );
    ws.send(Message::text(big)).await.unwrap();
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(e) => panic!("closed without a close frame: {e}"),
            }
        }
        None
    })
    .await
    .expect("closed in time");
    assert_eq!(code, Some(1009));
    engine.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracks_body_over_the_limit_is_a_counted_json_413() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(strict(dir.path())).await.unwrap();
    let before = counter(&get(engine.http_addr, "/metrics").await, "too_large");
    let body = vec![b' '; 256 * 1024 + 1];
    let r = tracks(&engine, Some("key-geoamey"), &body).await;
    assert_eq!(r.status, 413, "{}", r.body);
    let j = r.json();
    assert_eq!(j["error"], "too_large");
    assert!(j["message"].is_string());
    let after = counter(&get(engine.http_addr, "/metrics").await, "too_large");
    assert!(after - before >= 1.0, "{before} -> {after}");
    // Without a key it is a 401 first, whatever the size.
    assert_eq!(tracks(&engine, None, &body).await.status, 401);
    engine.stop();
}

#[test]
fn no_credential_is_ever_logged() {
    let dir = tempfile::tempdir().unwrap();
    let http_addr = free_port();
    let db = dir.path().join("log.db");
    let config_file = dir.path().join("movewatch.toml");
    // The engine binary on its own ports; its MQTT port is read back from its log.
    std::fs::write(
        &config_file,
        format!(
            r#"
[http]
listen = "{http_addr}"
[mqtt]
listen = "127.0.0.1:0"
[store]
url = "sqlite://{db}"
[sites]
files = ["{sites}"]
[[suppliers]]
id = "geoamey"
api_key = "key-secret-geoamey"
mqtt_password = "pw-secret-geoamey"
[[tokens]]
token = "{TOKEN}"
role = "control_room"
"#,
            db = db.display(),
            sites = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/sites.csv"),
        ),
    )
    .unwrap();
    let log_path = dir.path().join("engine.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_movewatch"))
        .args(["serve", "--config"])
        .arg(&config_file)
        .env("RUST_LOG", "debug")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut engine = EngineProcess(child);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        wait_ready(http_addr).await;
        let text = std::fs::read_to_string(&log_path).unwrap();
        let port: u16 = text
            .lines()
            .find(|l| l.contains("embedded MQTT broker listening"))
            .and_then(|l| l.split("addr=127.0.0.1:").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no broker address in the log:\n{text}"));
        // Swapped username and password, a wrong password, an unknown user, a good login.
        for (id, user, pass) in [
            ("geoamey-a", "pw-secret-geoamey", "geoamey"),
            ("geoamey-b", "geoamey", "wrong-secret-1"),
            ("nobody-c", "nobody-secret-user", "wrong-secret-2"),
            ("geoamey-d", "geoamey", "pw-secret-geoamey"),
        ] {
            let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
            options.set_credentials(user, pass);
            let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
            let _ = tokio::time::timeout(Duration::from_secs(3), async {
                while eventloop.poll().await.is_ok() {}
            })
            .await;
        }
        // A wrong and a right API key.
        for key in ["key-secret-wrong", "key-secret-geoamey"] {
            http("POST", http_addr, "/tracks", &[("X-API-Key", key)], b"[]").await;
        }
        get_as(http_addr, "/api/vehicles", Some("wrong-secret-token")).await;
    });
    engine.kill();
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(text.contains("refused"), "the refusals are logged:\n{text}");
    for secret in [
        "pw-secret-geoamey",
        "wrong-secret",
        "nobody-secret-user",
        "key-secret",
        TOKEN,
        "secret-token",
    ] {
        let line = text.lines().find(|l| l.contains(secret));
        assert!(line.is_none(), "{secret:?} is in the log: {line:?}");
    }
}
