//! Moves in the live engine (issue #6): booked with `PUT /api/moves/{id}`,
//! matched by a `JourneyStart` event, a van driving over MQTT from HMP
//! Wakefield (WDI) to HMP Leeds (LEI): departure, ETA frames, one arrival,
//! stored; what a site token sees; the ticker's time-based alerts.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use model::MoveId;
use movewatch::Engine;

const SITE_TOKEN: &str = "test-site-token-lei";
const OTHER_SITE_TOKEN: &str = "test-site-token-hli";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booked_move_departs_gets_an_eta_and_arrives_once_seen_by_its_site_only() {
    tokio::time::timeout(Duration::from_secs(150), async {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path(), None);
        config.tokens.push(site_token(SITE_TOKEN, "LEI"));
        config.tokens.push(site_token(OTHER_SITE_TOKEN, "HLI"));
        let engine = Engine::start(config.clone()).await.unwrap();
        let today = base(25).date_naive().to_string();
        let body = serde_json::json!({
            "reference": "ABC123", "from_location": "WDI", "to_location": "LEI",
            "date": today, "status": "booked",
            "journeys": [{"id": "j-1", "from_location": "WDI", "to_location": "LEI"}]
        });
        // Only the control room books; the body is checked.
        assert_eq!(
            put_move(&engine, "m-1", SITE_TOKEN, body.clone())
                .await
                .status,
            403
        );
        assert_eq!(
            http("PUT", engine.http_addr, "/api/moves/m-1", &[], b"{}")
                .await
                .status,
            401
        );
        let mut bad = body.clone();
        bad["to_location"] = "NOPE".into();
        assert_eq!(put_move(&engine, "m-1", TOKEN, bad).await.status, 400);
        let mut bad = body.clone();
        bad["status"] = "lost".into();
        assert_eq!(put_move(&engine, "m-1", TOKEN, bad).await.status, 400);
        let reply = put_move(&engine, "m-1", TOKEN, body).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let got = get_move(&engine, "m-1", TOKEN).await.json();
        assert_eq!(
            (got["status"].as_str(), got["vehicle"].as_str()),
            (Some("booked"), None)
        );
        assert_eq!(get_move(&engine, "m-1", OTHER_SITE_TOKEN).await.status, 403);
        assert_eq!(get_move(&engine, "nope", TOKEN).await.status, 404);
        assert_eq!(
            engine
                .store
                .get_move(&MoveId::parse("m-1").unwrap())
                .await
                .unwrap()
                .unwrap()
                .status,
            "booked"
        );

        let mut fleet = subscribe(&engine, TOKEN, "fleet").await;
        let mut lei = subscribe(&engine, SITE_TOKEN, "site:LEI").await;
        let mut hli = subscribe(&engine, OTHER_SITE_TOKEN, "site:HLI").await;
        let snapshot = frames_until(&mut lei, 5, |f| f["type"] == "snapshot").await;
        assert_eq!(snapshot.last().unwrap()["moves"][0]["move_id"], "m-1");

        let client = publisher(&engine, None).await;
        let van = "WD15VAN";
        let t0 = base(25);
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        publish(
            &client,
            van,
            "events",
            &serde_json::json!({
                "event_type": "JourneyStart", "occurred_at": at(0).to_rfc3339(),
                "move_id": "m-1", "journey_id": "j-1", "details": {"vehicle_reg": "WD15 VAN"}
            }),
        )
        .await;
        wait_for(20, "the journey start to match the van", || async {
            let m = get_move(&engine, "m-1", TOKEN).await.json();
            (m["vehicle"] == van && m["status"] == "in_transit").then_some(())
        })
        .await;

        // Parked in Wakefield's yard, then out and straight to Leeds at ~60 km/h.
        let (wdi, lei_c) = (centre(&engine, "WDI"), centre(&engine, "LEI"));
        let mut fixes = vec![
            fix("p-0", van, at(10), wdi, 0.0),
            fix("p-1", van, at(40), wdi, 0.0),
        ];
        let steps = 28;
        for i in 1..=steps {
            let f = i as f64 / steps as f64;
            let p = (wdi.0 + (lei_c.0 - wdi.0) * f, wdi.1 + (lei_c.1 - wdi.1) * f);
            let speed = if i == steps { 0.0 } else { 60.0 };
            fixes.push(fix(&format!("p-{}", i + 1), van, at(40 + 30 * i), p, speed));
        }
        fixes.push(fix("p-last", van, at(40 + 30 * steps + 30), lei_c, 0.0));
        for f in &fixes {
            publish(&client, van, "positions", f).await;
        }
        assert_eq!(
            wait_for_positions(&engine, fixes.len() as i64).await,
            fixes.len() as i64
        );

        let seen = frames_until(&mut fleet, 20, |f| {
            f["type"] == "move" && f["status"] == "arrived"
        })
        .await;
        let departures = of_type(&seen, "departure");
        assert_eq!(departures.len(), 1, "{seen:?}");
        assert_eq!(
            (
                departures[0]["site"].as_str(),
                departures[0]["vehicle"].as_str()
            ),
            (Some("WDI"), Some(van))
        );
        let arrivals = of_type(&seen, "arrival");
        assert_eq!(arrivals.len(), 1);
        assert_eq!(arrivals[0]["site"], "LEI");
        let moves = of_type(&seen, "move");
        let with_eta: Vec<_> = moves.iter().filter(|m| m["eta"].is_string()).collect();
        assert!(!with_eta.is_empty(), "{moves:?}");
        for m in &with_eta {
            for key in [
                "move_id",
                "status",
                "vehicle",
                "eta",
                "eta_low",
                "eta_high",
                "distance_remaining_m",
                "from_location",
                "to_location",
            ] {
                assert!(m.get(key).is_some(), "missing {key}");
            }
            assert!(
                m["eta_low"].as_str() <= m["eta"].as_str()
                    && m["eta"].as_str() <= m["eta_high"].as_str()
            );
        }
        assert!(moves.iter().any(|m| m["status"] == "arrived"));
        let alerts = of_type(&seen, "alert");
        assert_eq!(
            alerts.iter().filter(|a| a["kind"] == "arriving_30").count(),
            1,
            "{alerts:?}"
        );
        let positions = of_type(&seen, "position");
        assert!(positions.iter().any(|p| p["move_ids"][0] == "m-1"));

        // The receiving prison saw the van, the move and the arrival; Hull saw nothing.
        let board = frames_until(&mut lei, 10, |f| f["type"] == "arrival").await;
        assert_eq!(of_type(&board, "arrival").len(), 1);
        assert!(
            of_type(&board, "position")
                .iter()
                .all(|p| p["vehicle"] == van)
        );
        assert!(!of_type(&board, "position").is_empty());
        assert!(!of_type(&board, "move").is_empty());
        let other = frames_until(&mut hli, 2, |_| false).await;
        assert!(other.iter().all(|f| f["type"] == "snapshot"), "{other:?}");

        // Stored: the status and the arrival, once.
        let stored = wait_for(20, "the arrival to be stored", || async {
            let a = engine.store.recent_arrivals(10).await.unwrap();
            (!a.is_empty()).then_some(a)
        })
        .await;
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].site.as_str(), "LEI");
        assert_eq!(stored[0].from_location.as_str(), "WDI");
        assert!(stored[0].distance_m > 10_000.0, "{}", stored[0].distance_m);
        let m = get_move(&engine, "m-1", TOKEN).await.json();
        assert_eq!(
            (m["status"].as_str(), m["eta"].as_str()),
            (Some("arrived"), None)
        );
        assert!(m["arrived_at"].is_string());
        let site_view = get_move(&engine, "m-1", SITE_TOKEN).await.json();
        assert_eq!(site_view["vehicle"], van, "within 15 min of arrival");
        wait_for(10, "the status to be stored", || async {
            let m = engine
                .store
                .get_move(&MoveId::parse("m-1").unwrap())
                .await
                .unwrap()?;
            (m.status == "arrived"
                && m.journeys[0].vehicle.map(|v| v.to_string()) == Some(van.into()))
            .then_some(())
        })
        .await;
        let seen = engine.inspect(van.parse().unwrap()).await.unwrap();
        assert_eq!(seen.eta_trips, 1);
        engine.shutdown().await;

        // After a restart the ETA's curves relearn the journey from its stored fixes
        // (on a fresh MQTT port: the embedded broker's may not be released yet).
        config.mqtt.listen = "127.0.0.1:0".parse().unwrap();
        let engine = Engine::start(config).await.unwrap();
        let seen = engine.inspect(van.parse().unwrap()).await.unwrap();
        assert_eq!(seen.eta_trips, 1);
        assert!(seen.eta_learned_km > 10.0);
        engine.stop();
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ticker_raises_gps_gap_and_device_silent_once_even_across_a_restart() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::start(config(dir.path(), None)).await.unwrap();
        let van = "SI13NT";
        let body = serde_json::json!({
            "reference": "Q1", "from_location": "HLI", "to_location": "LEI",
            "date": Utc::now().date_naive().to_string(),
            "journeys": [{"id": "j-q", "from_location": "HLI", "to_location": "LEI", "vehicle_registration": van}]
        });
        assert_eq!(put_move(&engine, "m-q", TOKEN, body).await.status, 200);
        let mut fleet = subscribe(&engine, TOKEN, "fleet").await;
        let client = publisher(&engine, None).await;
        publish(&client, van, "events", &serde_json::json!({
            "event_type": "MoveStart", "occurred_at": base(7).to_rfc3339(), "move_id": "m-q"
        })).await;
        // Its last point is six minutes old.
        let last_fix = base(6);
        publish(&client, van, "positions", &fix("q-1", van, last_fix, (53.75, -0.5), 50.0)).await;
        let seen = frames_until(&mut fleet, 30, |f| f["type"] == "alert" && f["kind"] == "device_silent").await;
        let alerts: Vec<_> = of_type(&seen, "alert").into_iter().map(|a| (a["kind"].as_str().unwrap().to_owned(), a["move_id"].as_str().map(str::to_owned))).collect();
        assert_eq!(
            alerts,
            vec![("gps_gap".to_owned(), Some("m-q".to_owned())), ("device_silent".to_owned(), Some("m-q".to_owned()))]
        );
        // Once each per silence.
        let more = frames_until(&mut fleet, 7, |_| false).await;
        assert!(of_type(&more, "alert").is_empty(), "{more:?}");
        let kept = |engine: &Engine| {
            let store = engine.store.clone();
            async move {
                let mut kinds: Vec<_> = store
                    .alerts_since(base(60), 100)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|a| (a.kind, a.move_id.map(|m| m.to_string()), a.ts))
                    .collect();
                kinds.sort();
                kinds
            }
        };
        let before = kept(&engine).await;
        assert_eq!(
            before.iter().map(|(k, m, _)| (k.as_str(), m.as_deref())).collect::<Vec<_>>(),
            vec![("device_silent", Some("m-q")), ("gps_gap", Some("m-q"))],
            "both alerts are stored"
        );
        // Stamped when the silence began to count, not when the ticker saw it.
        assert!(before.iter().any(|(k, _, ts)| k == "gps_gap" && *ts == last_fix + chrono::Duration::seconds(60)));
        assert!(before.iter().any(|(k, _, ts)| k == "device_silent" && *ts == last_fix + chrono::Duration::minutes(5)));
        engine.stop();

        // A restart on the same store: the silence goes on, but both alerts
        // were raised already; the control room sees them once, in the snapshot.
        let engine = Engine::start(config(dir.path(), None)).await.unwrap();
        let mut fleet = subscribe(&engine, TOKEN, "fleet").await;
        let seen = frames_until(&mut fleet, 12, |_| false).await;
        let snapshot = seen.iter().find(|f| f["type"] == "snapshot").expect("a snapshot first");
        let mut in_snapshot: Vec<_> = snapshot["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["kind"].as_str().unwrap().to_owned())
            .collect();
        in_snapshot.sort();
        assert_eq!(in_snapshot, ["device_silent", "gps_gap"]);
        assert!(of_type(&seen, "alert").is_empty(), "raised again after the restart: {seen:?}");
        assert_eq!(kept(&engine).await, before, "nothing stored twice");
        // The move is still in transit, with an estimate from the restored fix.
        let m = get_move(&engine, "m-q", TOKEN).await.json();
        assert_eq!(m["status"], "in_transit");
        assert!(m["eta"].is_string(), "an ETA right after the restart: {m}");
        engine.stop();
    })
    .await
    .expect("test timed out");
}
