//! "Who may see what" (issue #7), end to end: every REST route and every
//! WebSocket channel with each role — control room, site, supplier, no token
//! and a wrong one — including a site token probing another site's vehicles
//! by every route.
//!
//! The scene: a move WDI → LEI in transit on WD15VAN (geoamey); a move
//! WDI → LEI that arrived 30 minutes ago on OLD1VAN (past the 15-minute
//! grace); OT12HER (geoamey) parked next to LEI on no move; SE12RCO (serco)
//! on no move.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use model::config::{RoleName, TokenConfig};
use movewatch::Engine;
use tokio_tungstenite::tungstenite::Message;

const LEI: &str = "test-site-token-lei";
const HLI: &str = "test-site-token-hli";
const GEOAMEY: &str = "test-supplier-token-geoamey";
const SERCO: &str = "test-supplier-token-serco";
const WRONG: &str = "not-a-token";

fn supplier_token(token: &str, supplier: &str) -> TokenConfig {
    TokenConfig {
        token: token.into(),
        role: RoleName::Supplier,
        sites: vec![],
        supplier: Some(supplier.parse().unwrap()),
    }
}

/// Books `id` WDI → LEI, starts its journey on `van` at `t0`, and drives the
/// van from Wakefield's yard `steps` of 28 towards Leeds (28 arrives).
async fn drive(
    engine: &Engine,
    client: &rumqttc::AsyncClient,
    id: &str,
    van: &str,
    t0: chrono::DateTime<chrono::Utc>,
    steps: usize,
) -> usize {
    let body = serde_json::json!({
        "reference": id, "from_location": "WDI", "to_location": "LEI",
        "date": t0.date_naive().to_string(), "status": "booked",
        "journeys": [{"id": format!("j-{id}"), "from_location": "WDI", "to_location": "LEI"}]
    });
    let reply = put_move(engine, id, TOKEN, body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let at = |s: i64| t0 + chrono::Duration::seconds(s);
    publish(
        client,
        van,
        "events",
        &serde_json::json!({
            "event_type": "JourneyStart", "occurred_at": at(0).to_rfc3339(),
            "move_id": id, "journey_id": format!("j-{id}"), "details": {"vehicle_reg": van}
        }),
    )
    .await;
    wait_for(20, "the journey start to match the van", || async {
        let m = get_move(engine, id, TOKEN).await.json();
        (m["vehicle"] == van).then_some(())
    })
    .await;
    let (wdi, lei) = (centre(engine, "WDI"), centre(engine, "LEI"));
    let mut fixes = vec![
        fix(&format!("{van}-a"), van, at(10), wdi, 0.0),
        fix(&format!("{van}-b"), van, at(40), wdi, 0.0),
    ];
    let total = 28;
    for i in 1..=steps {
        let f = i as f64 / total as f64;
        let p = (wdi.0 + (lei.0 - wdi.0) * f, wdi.1 + (lei.1 - wdi.1) * f);
        let speed = if i == total { 0.0 } else { 60.0 };
        fixes.push(fix(
            &format!("{van}-{i}"),
            van,
            at(40 + 30 * i as i64),
            p,
            speed,
        ));
    }
    if steps == total {
        fixes.push(fix(&format!("{van}-z"), van, at(40 + 30 * 29), lei, 0.0));
    }
    for f in &fixes {
        publish(client, van, "positions", f).await;
    }
    fixes.len()
}

async fn status(engine: &Engine, path: &str, token: Option<&str>) -> u16 {
    get_as(engine.http_addr, path, token).await.status
}

async fn ws_refused(engine: &Engine, query: &str) -> u16 {
    let url = format!("ws://{}/ws{query}", engine.http_addr);
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => 101,
    }
}

/// Subscribes and returns the first reply (a snapshot or an error).
async fn first_reply(engine: &Engine, token: &str, channel: &str) -> serde_json::Value {
    let mut ws = subscribe(engine, token, channel).await;
    let got = frames_until(&mut ws, 5, |_| true).await;
    got.into_iter()
        .next()
        .unwrap_or_else(|| panic!("no reply to subscribing {channel}"))
}

fn vehicles_of(snapshot: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = snapshot["vehicles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["vehicle"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_and_channel_is_scoped_by_role() {
    tokio::time::timeout(Duration::from_secs(180), async {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path(), None);
        c.tokens.push(site_token(LEI, "LEI"));
        c.tokens.push(site_token(HLI, "HLI"));
        c.tokens.push(supplier_token(GEOAMEY, "geoamey"));
        c.tokens.push(supplier_token(SERCO, "serco"));
        let engine = Engine::start(c).await.unwrap();
        let client = publisher(&engine, None).await;

        // The scene.
        let mut sent = drive(&engine, &client, "m-old", "OLD1VAN", base(60), 28).await;
        // Kept: base() moves with the clock, and the assertions come later.
        let live_start = base(10);
        sent += drive(&engine, &client, "m-live", "WD15VAN", live_start, 12).await;
        let lei = centre(&engine, "LEI");
        let near_lei = (lei.0 + 0.003, lei.1 + 0.003);
        publish(
            &client,
            "OT12HER",
            "positions",
            &fix("ot-1", "OT12HER", base(1), near_lei, 0.0),
        )
        .await;
        client
            .publish(
                "movewatch/v1/serco/SE12RCO/positions",
                rumqttc::QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&fix("se-1", "SE12RCO", base(1), near_lei, 0.0)).unwrap(),
            )
            .await
            .unwrap();
        sent += 2;
        assert_eq!(wait_for_positions(&engine, sent as i64).await, sent as i64);
        wait_for(20, "the old move to arrive", || async {
            (get_move(&engine, "m-old", TOKEN).await.json()["status"] == "arrived").then_some(())
        })
        .await;

        // ---- REST: 401 without a token or with a wrong one, on every route.
        let routes = [
            "/api/sites",
            "/api/sites/LEI/incoming",
            "/api/vehicles",
            "/api/vehicles/WD15VAN/track",
            "/api/moves/m-live",
            "/api/moves/m-live/track",
        ];
        for route in routes {
            assert_eq!(
                status(&engine, route, None).await,
                401,
                "{route} without a token"
            );
            assert_eq!(
                status(&engine, route, Some(WRONG)).await,
                401,
                "{route} with a wrong token"
            );
            assert_eq!(
                status(&engine, route, Some(TOKEN)).await,
                200,
                "{route} for the control room"
            );
        }
        for (method, route) in [("PUT", "/api/moves/m-x"), ("PUT", "/api/sites/LEI/fence")] {
            let none = http(method, engine.http_addr, route, &[], b"{}").await;
            assert_eq!(none.status, 401, "{method} {route}");
            for token in [LEI, GEOAMEY] {
                let auth = format!("Bearer {token}");
                let r = http(
                    method,
                    engine.http_addr,
                    route,
                    &[("Authorization", &auth)],
                    b"{}",
                )
                .await;
                assert_eq!(r.status, 403, "{method} {route} with {token}");
            }
        }

        // ---- /api/sites: a site token sees its own sites only.
        let sites = get_as(engine.http_addr, "/api/sites", Some(LEI))
            .await
            .json();
        let ids: Vec<&str> = sites
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["LEI"]);
        assert!(
            get_as(engine.http_addr, "/api/sites", Some(TOKEN))
                .await
                .json()
                .as_array()
                .unwrap()
                .len()
                > 100
        );

        // ---- /api/sites/{id}/incoming: its own board; 403 for others, even unknown sites.
        let board = get_as(engine.http_addr, "/api/sites/LEI/incoming", Some(LEI))
            .await
            .json();
        let moves: Vec<&str> = board["moves"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["move_id"].as_str().unwrap())
            .collect();
        assert_eq!(
            moves,
            ["m-live"],
            "the arrived move left the board 15 min after arrival: {board}"
        );
        assert_eq!(board["moves"][0]["vehicle"], "WD15VAN");
        assert_eq!(vehicles_of(&board), ["WD15VAN"]);
        for (path, token) in [
            ("/api/sites/LEI/incoming", HLI),
            ("/api/sites/HLI/incoming", LEI),
            ("/api/sites/NOPE/incoming", LEI),
            ("/api/sites/LEI/incoming", GEOAMEY),
        ] {
            let r = get_as(engine.http_addr, path, Some(token)).await;
            assert_eq!(r.status, 403, "{path} with {token}");
            assert!(!r.body.contains("WD15VAN"), "{}", r.body);
        }
        assert_eq!(
            status(&engine, "/api/sites/NOPE/incoming", Some(TOKEN)).await,
            404
        );

        // ---- /api/vehicles: the control room only.
        let all = get_as(engine.http_addr, "/api/vehicles", Some(TOKEN))
            .await
            .json();
        assert_eq!(all.as_array().unwrap().len(), 4);
        for token in [LEI, HLI, GEOAMEY, SERCO] {
            assert_eq!(status(&engine, "/api/vehicles", Some(token)).await, 403);
        }

        // ---- /api/moves/{id}: sites of the move; suppliers carrying it.
        assert_eq!(
            get_move(&engine, "m-live", LEI).await.json()["vehicle"],
            "WD15VAN"
        );
        assert_eq!(get_move(&engine, "m-live", GEOAMEY).await.status, 200);
        assert_eq!(get_move(&engine, "m-live", HLI).await.status, 403);
        assert_eq!(get_move(&engine, "m-live", SERCO).await.status, 403);
        // Past the grace, the move is still the site's, but not the vehicle.
        let old = get_move(&engine, "m-old", LEI).await.json();
        assert_eq!(
            (old["status"].as_str(), old["vehicle"].as_str()),
            (Some("arrived"), None),
            "{old}"
        );
        // An unknown move: only the control room learns it does not exist.
        assert_eq!(get_move(&engine, "m-nope", LEI).await.status, 403);
        assert_eq!(get_move(&engine, "m-nope", TOKEN).await.status, 404);

        // ---- vehicle tracks: a site sees a vehicle only while it carries its move, clipped.
        let track = get_as(engine.http_addr, "/api/vehicles/WD15VAN/track", Some(LEI)).await;
        assert_eq!(track.status, 200, "{}", track.body);
        let track = track.json();
        assert!(
            track["properties"]["points_before"].as_u64().unwrap() >= 12,
            "{track}"
        );
        let from =
            chrono::DateTime::parse_from_rfc3339(track["properties"]["from"].as_str().unwrap())
                .unwrap();
        assert!(from >= live_start, "clipped to the journey start: {from}");
        // A wide span does not widen the window.
        let wide = format!(
            "/api/vehicles/WD15VAN/track?from={}",
            (base(120)).to_rfc3339().replace('+', "%2B")
        );
        let wide = get_as(engine.http_addr, &wide, Some(LEI)).await.json();
        assert_eq!(
            wide["properties"]["points_before"],
            track["properties"]["points_before"]
        );
        for (vehicle, token) in [
            ("WD15VAN", HLI), // another site's token
            ("OT12HER", LEI), // a van next to the site, on no move
            ("OLD1VAN", LEI), // arrived more than 15 minutes ago
            ("SE12RCO", LEI),
            ("WD15VAN", SERCO), // another supplier's van
        ] {
            let r = get_as(
                engine.http_addr,
                &format!("/api/vehicles/{vehicle}/track"),
                Some(token),
            )
            .await;
            assert_eq!(r.status, 403, "{vehicle} with {token}: {}", r.body);
            assert!(!r.body.contains("coordinates"), "{}", r.body);
        }
        assert_eq!(
            status(&engine, "/api/vehicles/WD15VAN/track", Some(GEOAMEY)).await,
            200
        );
        assert_eq!(
            status(&engine, "/api/vehicles/OT12HER/track", Some(TOKEN)).await,
            200
        );
        // Move tracks: the sites of the move.
        assert_eq!(
            status(&engine, "/api/moves/m-live/track", Some(LEI)).await,
            200
        );
        assert_eq!(
            status(&engine, "/api/moves/m-live/track", Some(HLI)).await,
            403
        );

        // ---- WebSocket: 401 at the handshake.
        assert_eq!(ws_refused(&engine, "").await, 401);
        assert_eq!(ws_refused(&engine, &format!("?token={WRONG}")).await, 401);

        // Which channels each role may subscribe to.
        let forbidden = [
            (LEI, "fleet"),
            (LEI, "site:HLI"),
            (LEI, "site:NOPE"), // not `unknown_channel`: a probe learns nothing
            (LEI, "vehicle:WD15VAN"),
            (LEI, "vehicle:OT12HER"),
            (HLI, "site:LEI"),
            (GEOAMEY, "fleet"),
            (GEOAMEY, "site:LEI"),
        ];
        for (token, channel) in forbidden {
            let reply = first_reply(&engine, token, channel).await;
            assert_eq!(
                (reply["type"].as_str(), reply["code"].as_str()),
                (Some("error"), Some("forbidden")),
                "{channel} with {token}: {reply}"
            );
        }
        let reply = first_reply(&engine, LEI, "nonsense").await;
        assert_eq!(reply["code"], "unknown_channel");
        let reply = first_reply(&engine, TOKEN, "site:NOPE").await;
        assert_eq!(reply["code"], "unknown_channel");

        // Snapshots show only what the token may see.
        let snap = first_reply(&engine, TOKEN, "fleet").await;
        assert_eq!(
            vehicles_of(&snap),
            ["OLD1VAN", "OT12HER", "SE12RCO", "WD15VAN"]
        );
        let snap = first_reply(&engine, LEI, "site:LEI").await;
        assert_eq!(snap["type"], "snapshot");
        assert_eq!(vehicles_of(&snap), ["WD15VAN"]);
        let moves: Vec<&str> = snap["moves"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["move_id"].as_str().unwrap())
            .collect();
        assert_eq!(moves, ["m-live"]);
        let snap = first_reply(&engine, TOKEN, "site:LEI").await;
        assert_eq!(vehicles_of(&snap), ["WD15VAN"]);
        let snap = first_reply(&engine, GEOAMEY, "vehicle:WD15VAN").await;
        assert_eq!(vehicles_of(&snap), ["WD15VAN"]);
        // Another supplier's van: forbidden, and nothing of it.
        let refused = first_reply(&engine, SERCO, "vehicle:WD15VAN").await;
        assert_eq!(
            (refused["type"].as_str(), refused["code"].as_str()),
            (Some("error"), Some("forbidden")),
            "another supplier's van: {refused}"
        );

        // Live frames: each client gets only its scope's.
        let mut fleet = subscribe(&engine, TOKEN, "fleet").await;
        let mut lei_ws = subscribe(&engine, LEI, "site:LEI").await;
        let mut hli_ws = subscribe(&engine, HLI, "site:HLI").await;
        let mut serco_ws = subscribe(&engine, SERCO, "vehicle:WD15VAN").await;
        for ws in [&mut fleet, &mut lei_ws, &mut hli_ws, &mut serco_ws] {
            frames_until(ws, 5, |f| f["type"] == "snapshot" || f["type"] == "error").await;
        }
        // Unsubscribing stops the frames.
        let mut gone = subscribe(&engine, LEI, "site:LEI").await;
        frames_until(&mut gone, 5, |f| f["type"] == "snapshot").await;
        gone.send(Message::text(
            r#"{"type":"unsubscribe","channel":"site:LEI"}"#,
        ))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;

        let at = base(0);
        publish(
            &client,
            "OT12HER",
            "positions",
            &fix("ot-2", "OT12HER", at, near_lei, 0.0),
        )
        .await;
        publish(
            &client,
            "OLD1VAN",
            "positions",
            &fix("old-2", "OLD1VAN", at, lei, 0.0),
        )
        .await;
        let p = centre(&engine, "LEI");
        publish(
            &client,
            "WD15VAN",
            "positions",
            &fix("wd-live", "WD15VAN", at, (p.0 - 0.05, p.1), 50.0),
        )
        .await;
        // Vans on different partitions: their frames come in either order.
        let waiting = std::cell::RefCell::new(vec!["OT12HER", "WD15VAN"]);
        let seen = frames_until(&mut fleet, 10, |f| {
            let mut waiting = waiting.borrow_mut();
            if f["type"] == "position" {
                waiting.retain(|v| f["vehicle"] != *v);
            }
            waiting.is_empty()
        })
        .await;
        let fleet_vans: Vec<&str> = of_type(&seen, "position")
            .iter()
            .map(|f| f["vehicle"].as_str().unwrap())
            .collect();
        assert!(
            fleet_vans.contains(&"OT12HER") && fleet_vans.contains(&"WD15VAN"),
            "{fleet_vans:?}"
        );
        let mut seen = frames_until(&mut lei_ws, 5, |f| {
            f["type"] == "position" && f["vehicle"] == "WD15VAN"
        })
        .await;
        // Whatever else the hub routed to this client with the fleet's
        // frames is queued by now; take it too, so a leak cannot hide
        // behind the order of partitions.
        seen.extend(frames_until(&mut lei_ws, 1, |_| false).await);
        let lei_vans: Vec<&str> = of_type(&seen, "position")
            .iter()
            .map(|f| f["vehicle"].as_str().unwrap())
            .collect();
        assert_eq!(lei_vans, ["WD15VAN"], "{seen:?}");
        let text = serde_json::to_string(&seen).unwrap();
        assert!(
            !text.contains("OT12HER") && !text.contains("OLD1VAN"),
            "{text}"
        );
        for (name, ws) in [
            ("HLI", &mut hli_ws),
            ("serco", &mut serco_ws),
            ("unsubscribed", &mut gone),
        ] {
            let got = frames_until(ws, 1, |_| false).await;
            assert!(got.is_empty(), "{name} got {got:?}");
        }
    })
    .await
    .expect("the scope test took too long");
}
