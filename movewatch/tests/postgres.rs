//! The engine on PostgreSQL (issue #4): `[store] url = postgres://…` stores
//! what devices send and restores live state on restart; and when the
//! database goes away behind a TCP proxy, the engine reports itself not
//! ready, withholds acks, and loses nothing once the database returns.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use movewatch::{Engine, random_token};
use rumqttc::{AsyncClient, QoS};
use sqlx::Connection;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// A fresh database, dropped at the end of the test.
struct FreshDb {
    name: String,
}

impl FreshDb {
    async fn create() -> FreshDb {
        let name = format!("movewatch_e2e_{}", random_token(10).to_lowercase());
        admin(&format!("CREATE DATABASE {name}")).await;
        FreshDb { name }
    }

    fn url_via(&self, addr: &str) -> String {
        format!("postgres://postgres@{addr}/{}", self.name)
    }

    async fn drop_now(self) {
        admin(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .await;
    }
}

async fn admin(sql: &str) {
    let mut conn = sqlx::PgConnection::connect(&format!("{SERVER}/postgres"))
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (scripts/test.sh starts it)");
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap();
}

async fn publish(client: &AsyncClient, vehicle: &str, ids: std::ops::Range<usize>) {
    for i in ids {
        client
            .publish(
                format!("movewatch/v1/serco/{vehicle}/positions"),
                QoS::AtLeastOnce,
                false,
                point(
                    &format!("pg-{vehicle}-{i}"),
                    vehicle,
                    2_000 - i as i64,
                    51.5 + i as f64 * 1e-4,
                    -0.1,
                )
                .to_string(),
            )
            .await
            .unwrap();
    }
}

async fn stored(store: &store::Store) -> i64 {
    store.counts().await.map(|c| c.positions).unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_on_postgres_stores_and_restores() {
    let db = FreshDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), None);
    c.store.url = db.url_via("127.0.0.1:5432");
    let engine = Engine::start(c.clone()).await.unwrap();
    let client = publisher(&engine, None).await;
    publish(&client, "PG11AAA", 0..300).await;
    assert_eq!(wait_for_positions(&engine, 300).await, 300);
    let ready = http("GET", engine.http_addr, "/readyz", &[], b"").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let last = engine
        .tracker
        .get(&"PG11AAA".parse().unwrap())
        .unwrap()
        .latest;
    engine.stop();

    // A restart reads live state back from PostgreSQL.
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.mqtt.listen = "127.0.0.1:0".parse().unwrap();
    let engine = Engine::start(c).await.unwrap();
    let restored = engine
        .tracker
        .get(&"PG11AAA".parse().unwrap())
        .unwrap()
        .latest;
    assert_eq!(
        (restored.tracking_id, restored.ts),
        (last.tracking_id, last.ts)
    );
    engine.stop();
    db.drop_now().await;
}

/// Forwards a local port to PostgreSQL until cut.
struct Proxy {
    addr: SocketAddr,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            tasks: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().unwrap().push(conn.abort_handle());
            }
        });
        self.tasks.lock().unwrap().push(accept.abort_handle());
    }

    /// Drops every connection; new ones are refused.
    async fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            TcpStream::connect(self.addr).await.is_err(),
            "the cut proxy refuses"
        );
    }

    /// Listens again on the same port.
    async fn restore(&self) {
        self.serve(TcpListener::bind(self.addr).await.unwrap());
    }
}

/// How long the database is away.
const OUTAGE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_60_s_database_outage_withholds_acks_and_loses_nothing() {
    let db = FreshDb::create().await;
    let direct = store::Store::open(&db.url_via("127.0.0.1:5432"))
        .await
        .unwrap();
    let proxy = Proxy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), None);
    c.store.url = db.url_via(&proxy.addr.to_string());
    let engine = Engine::start(c).await.unwrap();
    let client = publisher(&engine, None).await;

    publish(&client, "PG22BBB", 0..200).await;
    assert_eq!(wait_for_positions(&engine, 200).await, 200);

    proxy.cut().await;
    let cut_at = tokio::time::Instant::now();
    publish(&client, "PG22BBB", 200..350).await;
    // A breakdown reported during the outage: its alert must be kept, once.
    let breakdown_at =
        chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() - 600, 0).unwrap();
    client
        .publish(
            "movewatch/v1/serco/PG22BBB/events",
            QoS::AtLeastOnce,
            false,
            serde_json::json!({
                "event_type": "PersonMoveVehicleBrokeDown",
                "occurred_at": breakdown_at.to_rfc3339(),
            })
            .to_string(),
        )
        .await
        .unwrap();
    publish(&client, "PG22BBB", 350..500).await;
    let addr = engine.http_addr;
    wait_for(60, "/readyz to report the database outage", || async move {
        (http("GET", addr, "/readyz", &[], b"").await.status == 503).then_some(())
    })
    .await;
    // The database stays away for 60 s.
    tokio::time::sleep_until(cut_at + OUTAGE).await;
    assert_eq!(
        stored(&direct).await,
        200,
        "nothing is written during the outage"
    );
    assert_eq!(
        http("GET", addr, "/readyz", &[], b"").await.status,
        503,
        "still not ready"
    );

    proxy.restore().await;
    wait_for(90, "every point after the database returns", || {
        let direct = direct.clone();
        async move { (stored(&direct).await >= 500).then_some(()) }
    })
    .await;
    wait_for(30, "/readyz to recover", || async move {
        (http("GET", addr, "/readyz", &[], b"").await.status == 200).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stored(&direct).await, 500, "every point exactly once");
    let track = direct
        .track(
            &"PG22BBB".parse().unwrap(),
            chrono::Utc::now() - chrono::Duration::hours(1),
            chrono::Utc::now(),
            10_000,
        )
        .await
        .unwrap();
    let ids: std::collections::HashSet<_> = track.into_iter().map(|p| p.tracking_id).collect();
    assert_eq!(ids.len(), 500);
    // The live state is the stream's newest point (the ids count down in time).
    let live = engine.tracker.get(&"PG22BBB".parse().unwrap()).unwrap();
    assert_eq!(live.latest.tracking_id, "pg-PG22BBB-499");
    let alerts = direct
        .alerts_since(breakdown_at - chrono::Duration::minutes(1), 100)
        .await
        .unwrap();
    assert_eq!(
        alerts
            .iter()
            .map(|a| (a.kind.as_str(), a.ts))
            .collect::<Vec<_>>(),
        vec![("breakdown", breakdown_at)],
        "the alert raised during the outage is kept once"
    );
    engine.stop();
    drop(direct);
    db.drop_now().await;
}
