//! Alert acknowledgement end to end: `POST /api/alerts/ack` refuses a
//! missing token (401), a site token (403) and a bad body (400), stores the
//! first acknowledgement, tells every `fleet` screen at once (`alert_ack`),
//! lists it in `GET /api/alerts`, and still has it after a restart.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use movewatch::Engine;

const SITE: &str = "test-site-token-lei";

async fn post_ack(engine: &Engine, bearer: Option<&str>, body: &serde_json::Value) -> Reply {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = auth.as_deref() {
        headers.push(("Authorization", a));
    }
    http(
        "POST",
        engine.http_addr,
        "/api/alerts/ack",
        &headers,
        body.to_string().as_bytes(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_is_checked_stored_shared_and_kept_across_a_restart() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = || {
            let mut c = config(dir.path(), None);
            c.tokens.push(site_token(SITE, "LEI"));
            c
        };
        let engine = Engine::start(cfg()).await.unwrap();
        let van = "AC12KED";
        let body = serde_json::json!({
            "reference": "ACK1", "from_location": "HLI", "to_location": "LEI",
            "date": Utc::now().date_naive().to_string(),
            "journeys": [{"id": "j-ack", "from_location": "HLI", "to_location": "LEI", "vehicle_registration": van}]
        });
        assert_eq!(put_move(&engine, "m-ack", TOKEN, body).await.status, 200);
        let mut screen = subscribe(&engine, TOKEN, "fleet").await;
        let client = publisher(&engine, None).await;
        publish(&client, van, "events", &serde_json::json!({
            "event_type": "MoveStart", "occurred_at": base(7).to_rfc3339(), "move_id": "m-ack"
        }))
        .await;
        publish(&client, van, "positions", &fix("ack-1", van, base(6), (53.75, -0.5), 50.0)).await;
        let seen = frames_until(&mut screen, 30, |f| f["type"] == "alert" && f["kind"] == "device_silent").await;
        let alert = of_type(&seen, "alert")
            .into_iter()
            .find(|a| a["kind"] == "device_silent")
            .cloned()
            .expect("a device_silent alert");
        let ack = serde_json::json!({
            "kind": alert["kind"], "vehicle": alert["vehicle"], "move_id": alert["move_id"],
            "ts": alert["ts"], "by": "  Sam Jones  "
        });

        // 401 without a token, 403 with a site token, 400 for bad input.
        assert_eq!(post_ack(&engine, None, &ack).await.status, 401);
        let r = post_ack(&engine, Some(SITE), &ack).await;
        assert_eq!(r.status, 403, "{}", r.body);
        assert_eq!(get_as(engine.http_addr, "/api/alerts", Some(SITE)).await.status, 403);
        assert_eq!(get_as(engine.http_addr, "/api/alerts", None).await.status, 401);
        for bad in [
            serde_json::json!({"kind": alert["kind"], "vehicle": van, "move_id": "m-ack", "ts": alert["ts"], "by": "   "}),
            serde_json::json!({"kind": alert["kind"], "vehicle": van, "move_id": "m-ack", "ts": alert["ts"]}),
            serde_json::json!({"kind": alert["kind"], "vehicle": van, "move_id": "m-ack", "ts": alert["ts"], "by": "x".repeat(81)}),
            serde_json::json!({"kind": alert["kind"], "vehicle": van, "move_id": "m-ack", "ts": "not a time", "by": "Sam"}),
            serde_json::json!({"kind": "no such kind!", "vehicle": van, "ts": alert["ts"], "by": "Sam"}),
        ] {
            let r = post_ack(&engine, Some(TOKEN), &bad).await;
            assert_eq!(r.status, 400, "{bad}: {}", r.body);
            let e = r.json();
            assert_eq!(e["error"], "bad_request");
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
        }
        // An alert the engine never raised.
        let mut unknown = ack.clone();
        unknown["ts"] = "2020-01-01T00:00:00Z".into();
        assert_eq!(post_ack(&engine, Some(TOKEN), &unknown).await.status, 404);

        // Acknowledged: stored, answered, and sent to the other screen.
        let r = post_ack(&engine, Some(TOKEN), &ack).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let stored = r.json();
        assert_eq!(stored["by"], "Sam Jones");
        assert_eq!(stored["vehicle"], van);
        assert!(stored["at"].is_string());
        let live = frames_until(&mut screen, 10, |f| f["type"] == "alert_ack").await;
        let frame = of_type(&live, "alert_ack").into_iter().next().cloned().expect("an alert_ack frame on fleet");
        assert_eq!(frame["by"], "Sam Jones");
        assert_eq!(frame["kind"], "device_silent");
        assert_eq!(frame["move_id"], "m-ack");
        assert_eq!(frame["ts"], alert["ts"]);
        // A second acknowledgement changes nothing: the first stands.
        let mut again = ack.clone();
        again["by"] = "Alex Other".into();
        let r = post_ack(&engine, Some(TOKEN), &again).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["by"], "Sam Jones");

        let listed = |engine: &Engine| {
            let addr = engine.http_addr;
            async move {
                let r = get_as(addr, "/api/alerts", Some(TOKEN)).await;
                assert_eq!(r.status, 200, "{}", r.body);
                r.json()
            }
        };
        let check = |list: &serde_json::Value| {
            let acks = list["acks"].as_array().unwrap();
            assert_eq!(acks.len(), 1, "{list}");
            assert_eq!(acks[0]["by"], "Sam Jones");
            assert_eq!(acks[0]["ts"], alert["ts"]);
            let a = list["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["kind"] == "device_silent")
                .unwrap_or_else(|| panic!("the alert is listed: {list}"));
            assert_eq!(a["ack"]["by"], "Sam Jones");
        };
        check(&listed(&engine).await);
        engine.stop();

        // After a restart on the same store, a screen opened then sees it.
        let engine = Engine::start(cfg()).await.unwrap();
        check(&listed(&engine).await);
        engine.stop();
    })
    .await
    .expect("test timed out");
}
