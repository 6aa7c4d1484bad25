//! What `movewatch` prints when its output is not a terminal (a pipe, a log
//! file, journald): no colour codes, each warning once, one MQTT port (the
//! devices'), a taken HTTP port not blamed on a broker, and an error whose
//! cause is not printed twice.

use std::io::{BufRead, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_output_into_a_pipe_is_plain_and_says_each_thing_once() {
    let dir = tempfile::tempdir().unwrap();
    // A taken HTTP port: the demo replaces it and says so.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_movewatch"))
        .args(["demo", "--vehicles", "2", "--mqtt-listen", "127.0.0.1:0"])
        .arg("--http-listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.path())
        // No data/sites.csv here: the "using the shipped sites" warning.
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut child = Kill(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let done = line.starts_with("Press Ctrl-C");
        out.push(line);
        if done || Instant::now() > deadline {
            break;
        }
    }
    let _ = child.0.kill();
    let _ = child.0.wait();
    let mut err = String::new();
    stderr.read_to_string(&mut err).unwrap();
    let out = out.join("\n");
    assert!(
        out.contains("Press Ctrl-C"),
        "the demo did not start:\n{out}\n{err}"
    );
    for (name, text) in [("stdout", &out), ("stderr", &err)] {
        assert!(
            !text.contains('\u{1b}'),
            "ANSI escape codes in {name}:\n{text}"
        );
    }
    let warned = err
        .matches("not found; using the sites shipped with movewatch")
        .count();
    assert_eq!(warned, 1, "the sites warning once:\n{err}");
    assert!(
        out.contains(&format!("HTTP port {port} is taken")) && !out.contains("broker or server"),
        "{out}"
    );
    let taken_line = out.lines().find(|l| l.contains("is taken")).unwrap();
    assert!(!taken_line.contains("broker"), "{taken_line}");
    assert!(
        !err.contains("engine_addr"),
        "the internal engine port is logged:\n{err}"
    );
    let broker_lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("embedded MQTT broker"))
        .collect();
    assert_eq!(broker_lines.len(), 1, "{err}");
    drop(taken);
}

#[test]
fn an_error_names_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-config.toml");
    let run = Command::new(env!("CARGO_BIN_EXE_movewatch"))
        .arg("serve")
        .arg("--config")
        .arg(&missing)
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.starts_with("Error: "), "{err}");
    assert!(err.contains("no-such-config.toml"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(!err.contains("Stack backtrace"), "{err}");
    assert!(!err.contains('\u{1b}'), "{err}");
}
