//! The move lifecycle of the contract's "Moves and sites", end to end over
//! MQTT against the live engine: a move arrives only after it departed (a
//! van based at the destination; a van dropping one move and then carrying
//! the next), a change of vehicle takes effect at the event (with and
//! without `journey_id` on the points), a redirect tells the old
//! destination once and nothing more, and a site's day shows booked moves
//! with their planned vehicle but no position before they depart.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use movewatch::Engine;
use rumqttc::AsyncClient;

const LEI_TOKEN: &str = "test-site-token-lei";

/// An engine with a control-room token and LEI's site token.
async fn engine(dir: &std::path::Path) -> Engine {
    let mut config = config(dir, None);
    config.tokens.push(site_token(LEI_TOKEN, "LEI"));
    Engine::start(config).await.unwrap()
}

/// Books `id` from `from` to `to` today (journey `j-{id}`), with its vehicle if given.
async fn book(engine: &Engine, id: &str, from: &str, to: &str, vehicle: Option<&str>) {
    let today = Utc::now().date_naive().to_string();
    let mut journey =
        serde_json::json!({"id": format!("j-{id}"), "from_location": from, "to_location": to});
    if let Some(v) = vehicle {
        journey["vehicle_registration"] = v.into();
    }
    let body = serde_json::json!({
        "reference": format!("REF-{id}"), "from_location": from, "to_location": to,
        "date": today, "status": "booked", "journeys": [journey]
    });
    let reply = put_move(engine, id, TOKEN, body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// A van's fixes: a journey at ~60 km/h sampled every 30 s.
struct Van<'a> {
    client: &'a AsyncClient,
    name: &'static str,
    /// The next fix's time.
    t: DateTime<Utc>,
    n: usize,
    /// Optional journey id on every point.
    journey: Option<String>,
    sent: usize,
}

impl<'a> Van<'a> {
    fn new(client: &'a AsyncClient, name: &'static str, t: DateTime<Utc>) -> Self {
        Van {
            client,
            name,
            t,
            n: 0,
            journey: None,
            sent: 0,
        }
    }

    async fn fix(&mut self, at: (f64, f64), speed: f64) {
        let mut p = fix(
            &format!("{}-{}", self.name, self.n),
            self.name,
            self.t,
            at,
            speed,
        );
        if let Some(j) = &self.journey {
            p["journey_id"] = j.clone().into();
        }
        publish(self.client, self.name, "positions", &p).await;
        self.n += 1;
        self.sent += 1;
        self.t += chrono::Duration::seconds(30);
    }

    /// Parked at `at` for `n` fixes.
    async fn park(&mut self, at: (f64, f64), n: usize) {
        for _ in 0..n {
            self.fix(at, 0.0).await;
        }
    }

    /// From `a` to `b` in `steps` fixes (the last one at `b`, stopped).
    async fn drive(&mut self, a: (f64, f64), b: (f64, f64), steps: usize) {
        for i in 1..=steps {
            let f = i as f64 / steps as f64;
            let p = (a.0 + (b.0 - a.0) * f, a.1 + (b.1 - a.1) * f);
            self.fix(p, if i == steps { 0.0 } else { 60.0 }).await;
        }
    }

    /// A `JourneyStart` for move `id` (journey `j-{id}`), naming this van.
    async fn start(&mut self, id: &str) {
        self.event(
            serde_json::json!({"event_type": "JourneyStart", "move_id": id,
            "journey_id": format!("j-{id}"), "details": {"vehicle_reg": self.name}}),
        )
        .await;
    }

    async fn event(&mut self, body: serde_json::Value) {
        let mut e = body;
        e["occurred_at"] = self.t.to_rfc3339().into();
        publish(self.client, self.name, "events", &e).await;
        self.t += chrono::Duration::seconds(1);
    }
}

/// The move's (status, vehicle, departed_at set, arrived_at set) as the control room sees it.
async fn state(engine: &Engine, id: &str) -> (String, Option<String>, bool, bool) {
    let m = get_move(engine, id, TOKEN).await.json();
    (
        m["status"].as_str().unwrap_or("").to_owned(),
        m["vehicle"].as_str().map(str::to_owned),
        m["departed_at"].is_string(),
        m["arrived_at"].is_string(),
    )
}

/// Waits until every point published so far is stored and processed.
async fn settle(engine: &Engine, points: usize) {
    assert_eq!(
        wait_for_positions(engine, points as i64).await,
        points as i64
    );
    // The moves registry runs before the store commits; a beat for the REST view.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

async fn wait_status(engine: &Engine, id: &str, status: &str) {
    wait_for(30, &format!("{id} to be {status}"), || async {
        (state(engine, id).await.0 == status).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_van_based_at_the_destination_arrives_only_after_leaving_the_origin() {
    tokio::time::timeout(Duration::from_secs(150), async {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path()).await;
        book(&engine, "m-home", "WDI", "LEI", Some("LE15VAN")).await;
        let client = publisher(&engine, None).await;
        let (wdi, lei) = (centre(&engine, "WDI"), centre(&engine, "LEI"));
        let mut van = Van::new(&client, "LE15VAN", base(70));
        // The van spends the night in Leeds's yard: its first fixes are inside LEI.
        van.park(lei, 3).await;
        settle(&engine, van.sent).await;
        assert_eq!(
            state(&engine, "m-home").await,
            ("booked".into(), Some("LE15VAN".into()), false, false),
            "a van based at the destination is no arrival"
        );
        // Out to Wakefield, where it collects the move, and back.
        van.drive(lei, wdi, 20).await;
        van.park(wdi, 3).await;
        settle(&engine, van.sent).await;
        assert_eq!(state(&engine, "m-home").await.0, "booked");
        van.drive(wdi, lei, 20).await;
        van.park(lei, 2).await;
        settle(&engine, van.sent).await;
        wait_status(&engine, "m-home", "arrived").await;
        let (_, vehicle, departed, arrived) = state(&engine, "m-home").await;
        assert_eq!(vehicle.as_deref(), Some("LE15VAN"));
        assert!(departed && arrived, "departed and then arrived");
        let arrivals = engine.store.recent_arrivals(10).await.unwrap();
        assert_eq!(arrivals.len(), 1, "{arrivals:?}");
        assert!(arrivals[0].departed_at < arrivals[0].arrived_at);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_van_dropping_one_move_then_carrying_the_next_arrives_each_once() {
    tokio::time::timeout(Duration::from_secs(150), async {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path()).await;
        // Wakefield → Leeds in the morning, then Wetherby → Leeds, same van.
        book(&engine, "m-am", "WDI", "LEI", Some("WD15VAN")).await;
        book(&engine, "m-pm", "WYI", "LEI", Some("WD15VAN")).await;
        let client = publisher(&engine, None).await;
        let (wdi, lei, wyi) = (
            centre(&engine, "WDI"),
            centre(&engine, "LEI"),
            centre(&engine, "WYI"),
        );
        let mut van = Van::new(&client, "WD15VAN", base(90));
        van.park(wdi, 2).await;
        van.start("m-am").await;
        van.drive(wdi, lei, 20).await;
        van.park(lei, 3).await;
        settle(&engine, van.sent).await;
        wait_status(&engine, "m-am", "arrived").await;
        assert_eq!(
            state(&engine, "m-pm").await,
            ("booked".into(), Some("WD15VAN".into()), false, false),
            "dropping the first move is not the second's arrival"
        );
        van.drive(lei, wyi, 20).await;
        van.park(wyi, 3).await;
        van.drive(wyi, lei, 20).await;
        van.park(lei, 2).await;
        settle(&engine, van.sent).await;
        wait_status(&engine, "m-pm", "arrived").await;
        let mut arrivals: Vec<String> = engine
            .store
            .recent_arrivals(10)
            .await
            .unwrap()
            .iter()
            .map(|a| format!("{}@{}<-{}", a.move_id, a.site, a.from_location))
            .collect();
        arrivals.sort();
        assert_eq!(arrivals, ["m-am@LEI<-WDI", "m-pm@LEI<-WYI"]);
    })
    .await
    .expect("test timed out");
}

/// m-chg is started on VAN1 (points with or without its journey id); VAN1
/// breaks down half-way and `JourneyChangeVehicle` hands it to VAN2, which
/// drives in without a journey id.
///
/// With `partitions` given, the engine runs that many and the two vans are
/// on different ones: the journey is handed from one partition to the other.
async fn change_of_vehicle(
    with_journey_ids: bool,
    new_van: &'static str,
    partitions: Option<usize>,
) {
    let dir = tempfile::tempdir().unwrap();
    let engine = match partitions {
        None => engine(dir.path()).await,
        Some(n) => {
            assert_ne!(
                engine::partition_of(&"BR0KE1".parse().unwrap(), n),
                engine::partition_of(&new_van.parse().unwrap(), n),
                "the two vans must be on different partitions"
            );
            let mut config = config(dir.path(), None);
            config.tokens.push(site_token(LEI_TOKEN, "LEI"));
            config.engine.partitions = n;
            Engine::start(config).await.unwrap()
        }
    };
    book(&engine, "m-chg", "WDI", "LEI", Some("BR0KE1")).await;
    let mut lei_board = subscribe(&engine, LEI_TOKEN, "site:LEI").await;
    frames_until(&mut lei_board, 5, |f| f["type"] == "snapshot").await;
    let client = publisher(&engine, None).await;
    let (wdi, lei) = (centre(&engine, "WDI"), centre(&engine, "LEI"));
    let half = ((wdi.0 + lei.0) / 2.0, (wdi.1 + lei.1) / 2.0);
    let t0 = base(60);
    let mut old = Van::new(&client, "BR0KE1", t0);
    if with_journey_ids {
        old.journey = Some("j-m-chg".into());
    }
    old.park(wdi, 2).await;
    old.start("m-chg").await;
    old.drive(wdi, half, 10).await;
    old.park(half, 2).await;
    settle(&engine, old.sent).await;
    wait_status(&engine, "m-chg", "in_transit").await;
    old.event(serde_json::json!({"event_type": "JourneyChangeVehicle", "move_id": "m-chg",
        "journey_id": "j-m-chg", "details": {"vehicle_reg": new_van, "previous_vehicle_reg": "BR0KE1"}}))
        .await;
    // At once, before the new van has sent anything.
    wait_for(20, "the change of vehicle", || async {
        (state(&engine, "m-chg").await.1.as_deref() == Some(new_van)).then_some(())
    })
    .await;
    // The broken-down van keeps reporting (with the journey id, if it did).
    old.park(half, 3).await;
    let mut new = Van::new(&client, new_van, old.t);
    new.park(half, 1).await;
    new.drive(half, lei, 10).await;
    new.park(lei, 2).await;
    settle(&engine, old.sent + new.sent).await;
    wait_status(&engine, "m-chg", "arrived").await;
    assert_eq!(
        state(&engine, "m-chg").await.1.as_deref(),
        Some(new_van),
        "the old van's points do not take the journey back"
    );
    let arrivals = engine.store.recent_arrivals(10).await.unwrap();
    assert_eq!(arrivals.len(), 1);
    assert_eq!(arrivals[0].vehicle.as_str(), new_van);
    // The board saw the replacement, and no position of the old van after the change.
    let board = frames_until(&mut lei_board, 5, |f| f["type"] == "arrival").await;
    assert!(
        of_type(&board, "move")
            .iter()
            .any(|m| m["vehicle"] == new_van),
        "{board:?}"
    );
    let positions = of_type(&board, "position");
    let after_change = positions
        .iter()
        .skip_while(|p| p["vehicle"] != new_van)
        .filter(|p| p["vehicle"] == "BR0KE1")
        .count();
    assert_eq!(after_change, 0, "{positions:?}");
    assert!(positions.iter().any(|p| p["vehicle"] == new_van));
    assert_eq!(
        of_type(&board, "arrival").len(),
        1,
        "one arrival: {board:?}"
    );
    assert_eq!(of_type(&board, "arrival")[0]["vehicle"], new_van);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_vehicle_after_journey_start_takes_effect_at_the_event() {
    tokio::time::timeout(
        Duration::from_secs(150),
        change_of_vehicle(false, "NEW2VAN", None),
    )
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_vehicle_takes_effect_at_the_event_with_journey_ids_on_the_points() {
    tokio::time::timeout(
        Duration::from_secs(150),
        change_of_vehicle(true, "NEW2VAN", None),
    )
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_vehicle_reported_by_the_old_van_hands_the_journey_to_another_partition() {
    tokio::time::timeout(
        Duration::from_secs(150),
        change_of_vehicle(false, "NEW3VAN", Some(2)),
    )
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_vehicle_across_partitions_with_journey_ids_on_the_points() {
    tokio::time::timeout(
        Duration::from_secs(150),
        change_of_vehicle(true, "NEW3VAN", Some(2)),
    )
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_tells_the_old_destination_once_then_nothing_more() {
    tokio::time::timeout(Duration::from_secs(150), async {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path()).await;
        book(&engine, "m-redir", "WDI", "LEI", Some("RD15VAN")).await;
        let mut lei_board = subscribe(&engine, LEI_TOKEN, "site:LEI").await;
        let snapshot = frames_until(&mut lei_board, 5, |f| f["type"] == "snapshot").await;
        assert_eq!(snapshot.last().unwrap()["moves"][0]["move_id"], "m-redir");
        let client = publisher(&engine, None).await;
        let (wdi, lei, wyi) = (
            centre(&engine, "WDI"),
            centre(&engine, "LEI"),
            centre(&engine, "WYI"),
        );
        let half = ((wdi.0 + lei.0) / 2.0, (wdi.1 + lei.1) / 2.0);
        let mut van = Van::new(&client, "RD15VAN", base(60));
        van.park(wdi, 2).await;
        van.start("m-redir").await;
        van.drive(wdi, half, 8).await;
        settle(&engine, van.sent).await;
        let before = frames_until(&mut lei_board, 10, |f| f["type"] == "position").await;
        assert!(!of_type(&before, "position").is_empty(), "{before:?}");
        van.event(
            serde_json::json!({"event_type": "MoveRedirect", "move_id": "m-redir",
            "details": {"to_location": "WYI"}}),
        )
        .await;
        wait_for(20, "the redirect", || async {
            let m = get_move(&engine, "m-redir", TOKEN).await.json();
            (m["to_location"] == "WYI").then_some(())
        })
        .await;
        // On to Wetherby, passing Leeds's gate on the way, and in.
        van.drive(half, lei, 6).await;
        van.drive(lei, wyi, 12).await;
        van.park(wyi, 2).await;
        settle(&engine, van.sent).await;
        wait_status(&engine, "m-redir", "arrived").await;
        let after = frames_until(&mut lei_board, 3, |_| false).await;
        // Exactly one frame of the move after the redirect, naming Wetherby...
        let told: Vec<_> = after
            .iter()
            .skip_while(|f| !(f["type"] == "move" && f["to_location"] == "WYI"))
            .collect();
        assert!(
            !told.is_empty(),
            "LEI was not told of the redirect: {after:?}"
        );
        assert_eq!(told[0]["move_id"], "m-redir");
        // ... then nothing more of the move or its van.
        assert_eq!(told.len(), 1, "LEI was told more: {told:?}");
        let board = get_as(engine.http_addr, "/api/sites/LEI/incoming", Some(LEI_TOKEN))
            .await
            .json();
        assert_eq!(board["moves"].as_array().unwrap().len(), 0, "{board}");
        assert_eq!(board["vehicles"].as_array().unwrap().len(), 0, "{board}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sites_day_shows_booked_moves_with_their_van_but_no_position_until_it_leaves() {
    tokio::time::timeout(Duration::from_secs(150), async {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path()).await;
        let mut lei_board = subscribe(&engine, LEI_TOKEN, "site:LEI").await;
        frames_until(&mut lei_board, 5, |f| f["type"] == "snapshot").await;
        book(&engine, "m-in", "WDI", "LEI", Some("BK15VAN")).await;
        book(&engine, "m-out", "LEI", "WYI", Some("OUT1VAN")).await;
        // The bookings reach the board as they are made.
        let booked = frames_until(&mut lei_board, 5, |f| f["move_id"] == "m-out").await;
        let moves = of_type(&booked, "move");
        assert!(
            moves.iter().any(|m| m["move_id"] == "m-in"
                && m["status"] == "booked"
                && m["vehicle"] == "BK15VAN"),
            "{moves:?}"
        );
        assert!(moves.iter().any(|m| m["move_id"] == "m-out"));
        let board = get_as(engine.http_addr, "/api/sites/LEI/incoming", Some(LEI_TOKEN))
            .await
            .json();
        let mut listed: Vec<(String, String)> = board["moves"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["move_id"].as_str().unwrap().to_owned(),
                    m["direction"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        listed.sort();
        // The outgoing van is in the register: its supplier shows before it moves.
        let registered = http(
            "PUT",
            engine.http_addr,
            "/api/vehicles/OUT1VAN",
            &[
                ("Authorization", &format!("Bearer {TOKEN}")),
                ("Content-Type", "application/json"),
            ],
            br#"{"supplier": "serco"}"#,
        )
        .await;
        assert_eq!(registered.status, 200, "{}", registered.body);
        let board = get_as(engine.http_addr, "/api/sites/LEI/incoming", Some(LEI_TOKEN))
            .await
            .json();
        let m_out = board["moves"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["move_id"] == "m-out")
            .unwrap();
        assert_eq!(m_out["supplier"], "serco", "{m_out}");
        // Names, not only codes; no supplier before the van is live or registered.
        let m_in = board["moves"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["move_id"] == "m-in")
            .unwrap();
        assert_eq!(m_in["from_name"], "Wakefield (HMP)", "{m_in}");
        assert_eq!(m_in["to_name"], "Leeds (HMP)", "{m_in}");
        assert!(m_in["supplier"].is_null(), "{m_in}");
        assert_eq!(
            listed,
            [
                ("m-in".to_owned(), "incoming".to_owned()),
                ("m-out".to_owned(), "outgoing".to_owned())
            ]
        );
        // The booked van reports from its yard: the board gets no position.
        let client = publisher(&engine, None).await;
        let (wdi, lei) = (centre(&engine, "WDI"), centre(&engine, "LEI"));
        let mut van = Van::new(&client, "BK15VAN", base(40));
        van.park(wdi, 3).await;
        settle(&engine, van.sent).await;
        let quiet = frames_until(&mut lei_board, 2, |_| false).await;
        assert!(of_type(&quiet, "position").is_empty(), "{quiet:?}");
        let board = get_as(engine.http_addr, "/api/sites/LEI/incoming", Some(LEI_TOKEN))
            .await
            .json();
        assert_eq!(board["vehicles"].as_array().unwrap().len(), 0, "{board}");
        // It leaves Wakefield: now the board sees it, with an ETA.
        van.drive(wdi, lei, 8).await;
        settle(&engine, van.sent).await;
        let moving = frames_until(&mut lei_board, 10, |f| f["type"] == "position").await;
        assert!(
            of_type(&moving, "position")
                .iter()
                .any(|p| p["vehicle"] == "BK15VAN"),
            "{moving:?}"
        );
        let m = get_move(&engine, "m-in", LEI_TOKEN).await.json();
        assert_eq!(m["status"], "in_transit");
        // Live now: the board names the supplier running the van.
        let board = get_as(engine.http_addr, "/api/sites/LEI/incoming", Some(LEI_TOKEN))
            .await
            .json();
        let m_in = board["moves"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["move_id"] == "m-in")
            .unwrap();
        assert!(m_in["supplier"].is_string(), "{m_in}");
        assert_eq!(m_in["from_name"], "Wakefield (HMP)", "{m_in}");
    })
    .await
    .expect("test timed out");
}
