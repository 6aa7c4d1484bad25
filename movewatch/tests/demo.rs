//! `movewatch demo` as a new user runs it: within a minute HMP Leeds's board
//! has moves on the road with ETAs; arrivals and `arriving_30` alerts follow;
//! the printed MQTT credentials and `movewatch simulate` line work against it.

mod common;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value after `label` on the line that has it.
fn after<'a>(lines: &'a [String], label: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.split_once(label).map(|(_, rest)| rest.trim()))
        .unwrap_or_else(|| panic!("no {label:?} in\n{}", lines.join("\n")))
}

async fn count(db: &std::path::Path, sql: &'static str) -> i64 {
    use sqlx::Row;
    use std::str::FromStr;
    let Ok(options) =
        sqlx::sqlite::SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display()))
    else {
        return 0;
    };
    let Ok(mut conn) = sqlx::ConnectOptions::connect(&options.read_only(true)).await else {
        return 0;
    };
    match sqlx::query(sql).fetch_one(&mut conn).await {
        Ok(row) => row.try_get::<i64, _>(0).unwrap_or(0),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_moves_to_leeds_within_a_minute_and_its_simulate_line_works() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_movewatch"))
        .args([
            "demo",
            "--http-listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _demo = Demo(child);
    // What it prints, up to "Press Ctrl-C".
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.starts_with("Press Ctrl-C");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    })
    .await
    .unwrap();
    let board = after(&lines, "HMP Leeds board:");
    let (_, addr_path) = board.split_once("http://").unwrap();
    let (addr, query) = addr_path.split_once("/site/LEI?token=").unwrap();
    let http: std::net::SocketAddr = addr.parse().unwrap();
    let site_token = query.to_owned();
    let control_token = after(&lines, "control-room token:").to_owned();
    let mqtt = after(&lines, "MQTT broker:").to_owned();
    assert!(mqtt.starts_with("mqtt://127.0.0.1:"), "{mqtt}");
    // Each supplier's MQTT username and password.
    let mut passwords = Vec::new();
    for supplier in ["geoamey", "serco"] {
        let line = lines
            .iter()
            .find(|l| l.contains(&format!("MQTT username {supplier} password ")))
            .unwrap_or_else(|| panic!("no MQTT credentials of {supplier}:\n{}", lines.join("\n")));
        let pw = line
            .split_once(" password ")
            .unwrap()
            .1
            .split_whitespace()
            .next()
            .unwrap();
        assert!(
            pw.len() >= 16 && pw.chars().all(|c| c.is_ascii_alphanumeric()),
            "{pw}"
        );
        passwords.push(format!("{supplier}={pw}"));
    }
    // The ready simulate line.
    let line = lines
        .iter()
        .find(|l| l.contains(" simulate "))
        .unwrap_or_else(|| panic!("no simulate line:\n{}", lines.join("\n")))
        .trim()
        .to_owned();
    let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    let value = |flag: &str| -> Vec<String> {
        words
            .windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect()
    };
    assert_eq!(value("--mqtt-url"), vec![mqtt.clone()], "{line}");
    assert_eq!(
        value("--http-url"),
        vec![format!("http://{http}")],
        "{line}"
    );
    assert_eq!(value("--token"), vec![control_token.clone()], "{line}");
    assert_eq!(value("--password"), passwords, "{line}");
    assert_eq!(
        value("--registration-prefix"),
        vec!["SM".to_owned()],
        "{line}"
    );

    // Within 60 s of the start: moves to LEI on the road, with ETAs, on the board.
    let incoming = wait_for(60, "moves to LEI with ETAs", || {
        let token = site_token.clone();
        async move {
            let r = get_as(http, "/api/sites/LEI/incoming", Some(&token)).await;
            if r.status != 200 {
                return None;
            }
            let v = r.json();
            let moving = v["moves"]
                .as_array()?
                .iter()
                .filter(|m| m["status"] == "in_transit" && m["eta"].is_string())
                .count();
            let vans = v["vehicles"].as_array().map_or(0, Vec::len);
            (moving >= 2 && vans >= 2).then_some(v)
        }
    })
    .await;
    let at = started.elapsed();
    println!(
        "{} s: {} moves to LEI on the board, {} vans visible",
        at.as_secs(),
        incoming["moves"].as_array().unwrap().len(),
        incoming["vehicles"].as_array().unwrap().len()
    );
    assert!(at < Duration::from_secs(60));
    // arriving_30 alerts and arrivals follow (the first at LEI is due 3 min in).
    let db = dir.path().join("movewatch-demo.db");
    let alerts = wait_for(60, "an arriving_30 alert", || {
        let db = db.clone();
        async move {
            let n = count(
                &db,
                "SELECT COUNT(*) FROM alerts WHERE kind = 'arriving_30'",
            )
            .await;
            (n > 0).then_some(n)
        }
    })
    .await;
    println!(
        "{} s: {alerts} arriving_30 alerts",
        started.elapsed().as_secs()
    );

    // The printed simulate line runs against the demo: connects with the
    // printed passwords, registers its moves, and nothing of it is rejected.
    let mut args: Vec<String> = words[2..].to_vec();
    let i = args.iter().position(|a| a == "--duration").unwrap();
    args[i + 1] = "20s".into();
    args.push("--quiet".into());
    let simulated = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_movewatch"))
            .arg("simulate")
            .args(&args)
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{so}\n{se}");
    // A 20 s run ends soon after, though the demo's fleet never goes quiet.
    assert!(
        simulated.elapsed() < Duration::from_secs(40),
        "{:?}",
        simulated.elapsed()
    );
    assert!(so.contains("moves registered:"), "{so}");
    assert!(so.contains("unexpected:                   none"), "{so}");
    assert!(!se.contains("warning"), "{se}");

    let arrivals = wait_for(300, "an arrival", || {
        let db = db.clone();
        async move {
            let n = count(&db, "SELECT COUNT(*) FROM arrivals").await;
            (n > 0).then_some(n)
        }
    })
    .await;
    println!("{} s: {arrivals} arrivals", started.elapsed().as_secs());
    assert!(started.elapsed() < Duration::from_secs(300));
}
