//! `movewatch simulate` as a user runs it: it stops with a clear message when
//! the broker refuses its credentials or nobody answers, and its `--http`
//! report says HTTP and ends when the run ends.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use movewatch::Engine;

/// Runs `movewatch simulate ARGS` from the workspace root; panics if it
/// takes longer than `within`. Returns its output and how long it took.
fn simulate(args: Vec<String>, within: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_movewatch"))
        .arg("simulate")
        .args(&args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > within {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "simulate still running after {within:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = started.elapsed();
    (child.wait_with_output().unwrap(), took)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_stop_the_run_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), None);
    with_supplier(&mut config, "geoamey");
    with_supplier(&mut config, "serco");
    let engine = Engine::start(config).await.unwrap();
    wait_subscribed(&engine).await;
    let mqtt = format!("mqtt://{}:{}", engine.mqtt_addr.0, engine.mqtt_addr.1);
    let http = format!("http://{}", engine.http_addr);
    let args = [
        "--mqtt-url",
        &mqtt,
        "--http-url",
        &http,
        "--password",
        "geoamey=wrong",
        "--password",
        "serco=wrong",
        "--vehicles",
        "6",
        "--duration",
        "10m",
        "--quiet",
    ];
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let (out, took) = tokio::task::spawn_blocking(move || simulate(args, Duration::from_secs(20)))
        .await
        .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "exit status {:?}", out.status);
    assert!(took < Duration::from_secs(12), "took {took:?}");
    assert!(
        err.contains("refused") || err.contains("before accepting it"),
        "{err}"
    );
    assert!(err.contains("mqtt_password"), "says what it wants: {err}");
    // No flood: a handful of lines, not thousands.
    assert!(
        err.lines().count() < 20,
        "{} lines:\n{err}",
        err.lines().count()
    );
    engine.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connack_refusal_from_mosquitto_stops_the_run_with_a_reason() {
    // A Mosquitto with a password file answers a wrong password with a
    // CONNACK refusal (not a closed connection).
    let broker = Mosquitto::start(&[("geoamey", "right"), ("serco", "right")]);
    let args: Vec<String> = [
        "--mqtt-url",
        &broker.url(),
        "--password",
        "geoamey=wrong",
        "--password",
        "serco=wrong",
        "--vehicles",
        "4",
        "--duration",
        "10m",
        "--quiet",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let (out, took) = tokio::task::spawn_blocking(move || simulate(args, Duration::from_secs(20)))
        .await
        .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "exit status {:?}", out.status);
    assert!(took < Duration::from_secs(12), "took {took:?}");
    assert!(err.contains("refused") && err.contains("CONNACK"), "{err}");
    assert!(err.lines().count() < 20, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_stops_the_run_within_ten_seconds() {
    let (mqtt, http) = (free_port(), free_port());
    let mqtt = format!("mqtt://127.0.0.1:{}", mqtt.port());
    let http = format!("http://127.0.0.1:{}", http.port());
    for transport in ["mqtt", "http"] {
        let mut args = vec![
            "--mqtt-url".to_owned(),
            mqtt.clone(),
            "--http-url".to_owned(),
            http.clone(),
            "--vehicles".into(),
            "4".into(),
            "--duration".into(),
            "10m".into(),
            "--quiet".into(),
        ];
        if transport == "http" {
            args.push("--http".into());
        }
        let (out, took) =
            tokio::task::spawn_blocking(move || simulate(args, Duration::from_secs(25)))
                .await
                .unwrap();
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{transport}: {:?}", out.status);
        assert!(
            took >= Duration::from_secs(9) && took < Duration::from_secs(17),
            "{transport}: took {took:?}"
        );
        let expected = if transport == "http" {
            "no engine answered"
        } else {
            "no MQTT broker answered"
        };
        assert!(err.contains(expected), "{transport}: {err}");
        assert!(err.lines().count() < 20, "{transport}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_run_is_reported_as_http_and_ends() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), None);
    with_supplier(&mut config, "geoamey");
    with_supplier(&mut config, "serco");
    let engine = Engine::start(config).await.unwrap();
    wait_subscribed(&engine).await;
    let http = format!("http://{}", engine.http_addr);
    // Other traffic on the fleet channel all along (as the demo's own fleet
    // makes): the measuring WebSocket must still stop when the run ends.
    let client = publisher(&engine, Some(("geoamey", "pw-geoamey"))).await;
    let traffic = tokio::spawn(async move {
        for n in 0.. {
            let p = point(
                &format!("other-{n}"),
                "OT12HER",
                0,
                53.0,
                -1.5 + n as f64 * 1e-4,
            );
            publish_positions(&client, "OT12HER", p.to_string()).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let args = [
        "--http",
        "--http-url",
        &http,
        "--api-key",
        "geoamey=key-geoamey",
        "--api-key",
        "serco=key-serco",
        "--token",
        TOKEN,
        "--report",
        "--vehicles",
        "8",
        "--interval",
        "30s",
        "--duration",
        "1h",
        "--speed",
        "600",
        "--malformed-rate",
        "0.01",
        "--quiet",
    ];
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let (out, _) = tokio::task::spawn_blocking(move || simulate(args, Duration::from_secs(90)))
        .await
        .unwrap();
    let (stdout, err) = (text(&out.stdout), text(&out.stderr));
    traffic.abort();
    assert!(out.status.success(), "{stdout}\n{err}");
    assert!(stdout.contains("HTTP (POST /tracks)"), "{stdout}");
    assert!(stdout.contains("accepted (202 replies)"), "{stdout}");
    for mqtt_words in ["PUBACK", "broker acks", "MQTT"] {
        assert!(!stdout.contains(mqtt_words), "{mqtt_words} in\n{stdout}");
    }
    // Malformed points were provoked on purpose: rejected, but not unexpected.
    assert!(
        stdout.contains("rejected (this run's 202 replies)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("unexpected:                   none"),
        "{stdout}"
    );
    engine.stop();
}
