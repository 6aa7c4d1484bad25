//! The embedded broker keeps the contract's promise (issue #11): a device's
//! PUBACK goes out only once the engine has committed every point of the
//! message. Checked with a real MQTT client that is not the engine's own
//! library (Eclipse Paho, `tests/devices/paho_device.py`, Debian's
//! python3-paho-mqtt), against `movewatch serve` on its embedded broker:
//! three SIGKILLs under load lose nothing that was acknowledged, and a
//! device that keeps sending while the store is stalled is slowed and never
//! acknowledged early.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

use common::*;

const PASSWORD: &str = "pw-geoamey";

/// A config for `movewatch serve` on its embedded broker at `mqtt`.
fn embedded_config(
    dir: &Path,
    http: std::net::SocketAddr,
    mqtt: std::net::SocketAddr,
) -> (PathBuf, PathBuf) {
    let db = dir.join("acks.db");
    let file = dir.join("movewatch.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[http]
listen = "{http}"
[mqtt]
listen = "{mqtt}"
[store]
url = "sqlite://{db}"
[sites]
files = ["{sites}"]
[fleet]
claim_on_first_report = true
[[suppliers]]
id = "geoamey"
api_key = "key-geoamey"
mqtt_password = "{PASSWORD}"
[[tokens]]
token = "{TOKEN}"
role = "control_room"
"#,
            db = db.display(),
            sites = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/sites.csv"),
        ),
    )
    .unwrap();
    (file, db)
}

/// The Paho device publishing `messages` messages of `points` points.
fn device(
    mqtt: std::net::SocketAddr,
    prefix: &str,
    messages: usize,
    points: usize,
    acked: &Path,
    pause_ms: u64,
) -> Child {
    Command::new("/usr/bin/python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/devices/paho_device.py"
        ))
        .args([
            mqtt.ip().to_string(),
            mqtt.port().to_string(),
            "geoamey".into(),
            PASSWORD.into(),
            format!("geoamey-{prefix}"),
            prefix.into(),
            "10".into(),
            messages.to_string(),
            points.to_string(),
            acked.display().to_string(),
            "240".into(),
            pause_ms.to_string(),
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("python3 with paho (Debian python3-paho-mqtt; scripts/test.sh installs it)")
}

/// The tracking ids the device was told are stored.
fn acked_ids(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Every tracking id in the SQLite store, with repeats.
async fn stored_tracking_ids(db: &Path) -> Vec<String> {
    use sqlx::Row;
    let options =
        sqlx::sqlite::SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display()))
            .unwrap()
            .read_only(true);
    let mut conn = sqlx::ConnectOptions::connect(&options).await.unwrap();
    sqlx::query("SELECT tracking_id FROM positions")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>("tracking_id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sigkills_of_serve_on_its_embedded_broker_lose_no_acknowledged_point() {
    const MESSAGES: usize = 3_000;
    const POINTS: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let (http, mqtt) = (free_port(), free_port());
    let (config, db) = embedded_config(dir.path(), http, mqtt);
    let acked_file = dir.path().join("acked.txt");
    let mut engine = EngineProcess::spawn(&config);
    wait_ready(http).await;
    let mut paho = device(mqtt, "EK", MESSAGES, POINTS, &acked_file, 1);

    let mut kills = Vec::new();
    for kill in 1..=3 {
        // Under load: kill once the device has been told of more points.
        let before = acked_ids(&acked_file).len();
        wait_for(120, "more acknowledgements", || async {
            (acked_ids(&acked_file).len() >= before + 1_500).then_some(())
        })
        .await;
        engine.kill();
        let acked_at_kill: HashSet<String> = acked_ids(&acked_file).into_iter().collect();
        let stored_at_kill: HashSet<String> = stored_tracking_ids(&db).await.into_iter().collect();
        let lost: Vec<_> = acked_at_kill.difference(&stored_at_kill).take(5).collect();
        assert!(
            lost.is_empty(),
            "kill {kill}: acknowledged but not stored: {lost:?} ({} acknowledged, {} stored)",
            acked_at_kill.len(),
            stored_at_kill.len()
        );
        kills.push((acked_at_kill.len(), stored_at_kill.len()));
        engine = EngineProcess::spawn(&config);
        wait_ready(http).await;
    }

    let status = tokio::task::spawn_blocking(move || paho.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "the device did not get every message acknowledged"
    );
    let acked: Vec<String> = acked_ids(&acked_file);
    let acked_set: HashSet<&String> = acked.iter().collect();
    let stored = stored_tracking_ids(&db).await;
    let stored_set: HashSet<&String> = stored.iter().collect();
    let repeats = stored.len() - stored_set.len();
    let lost = acked_set.difference(&stored_set).count();
    eprintln!(
        "embedded broker, 3 SIGKILLs: {} points sent, {} acknowledged, {} stored, {} stored twice, {} acknowledged and lost; at the kills (acknowledged, stored): {kills:?}",
        MESSAGES * POINTS,
        acked_set.len(),
        stored_set.len(),
        repeats,
        lost
    );
    assert_eq!(lost, 0);
    assert_eq!(repeats, 0);
    assert_eq!(acked_set.len(), MESSAGES * POINTS);
    assert_eq!(stored_set.len(), MESSAGES * POINTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_sending_into_a_stalled_store_is_slowed_and_never_acknowledged_early() {
    const MESSAGES: usize = 600;
    const POINTS: usize = 2;
    let dir = tempfile::tempdir().unwrap();
    let (http, mqtt) = (free_port(), free_port());
    let (config, db) = embedded_config(dir.path(), http, mqtt);
    let acked_file = dir.path().join("acked.txt");
    let _engine = EngineProcess::spawn(&config);
    wait_ready(http).await;

    // Stall the store: another connection holds SQLite's write lock.
    let options =
        sqlx::sqlite::SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display()))
            .unwrap();
    let mut locker = sqlx::ConnectOptions::connect(&options).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut locker)
        .await
        .unwrap();

    let mut paho = device(mqtt, "ST", MESSAGES, POINTS, &acked_file, 0);
    // The device sends on; nothing is acknowledged while nothing can be stored.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let during = acked_ids(&acked_file).len();
    let taken = {
        let metrics = get(http, "/metrics").await;
        metrics
            .lines()
            .find(|l| l.starts_with("movewatch_ingest_points_total"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(during, 0, "acknowledged while the store was stalled");
    assert!(
        paho.try_wait().unwrap().is_none(),
        "the device is still sending"
    );
    eprintln!("store stalled for 6 s: the engine took in {taken} points, acknowledged {during}");

    // The store comes back: everything is acknowledged, and all of it stored.
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    drop(locker);
    let status = tokio::task::spawn_blocking(move || paho.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let acked: HashSet<String> = acked_ids(&acked_file).into_iter().collect();
    let stored: HashSet<String> = stored_tracking_ids(&db).await.into_iter().collect();
    assert_eq!(acked.len(), MESSAGES * POINTS);
    assert!(acked.is_subset(&stored));
}
