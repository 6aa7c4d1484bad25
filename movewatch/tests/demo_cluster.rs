//! `movewatch demo --cluster` on a three-node RabbitMQ cluster of the test's
//! own (on spare ports: `--cluster-base-port`) and a PostgreSQL database of
//! its own: it prints both engine nodes' pages and tokens and how to kill
//! one, both nodes own partitions, and the boards show the simulated fleet's
//! moves within a bounded time; Ctrl-C (SIGTERM) stops the nodes too.
//!
//! Skipped unless `MOVEWATCH_CLUSTER_TESTS=1` (`scripts/test.sh` sets it).

mod common;

#[path = "../../ingest/tests/support/cluster_harness.rs"]
mod cluster_harness;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cluster_harness::{Cluster, enabled};
use common::{free_port, get_as, wait_for};
use sqlx::Connection;

const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";
const PARTITIONS: usize = 8;

async fn pg_admin(sql: String) -> Result<(), sqlx::Error> {
    let mut conn = sqlx::PgConnection::connect(&format!("{PG_SERVER}/postgres")).await?;
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// The demo, and its nodes' pids once printed: all SIGKILLed on drop.
struct Demo {
    child: Child,
    nodes: Vec<u32>,
    db: String,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for pid in &self.nodes {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db);
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(pg_admin(sql)))
        })
        .join();
    }
}

fn alive(pid: u32) -> bool {
    Command::new("kill")
        .arg("-0")
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The value after `label` on the first line that has it.
fn after<'a>(lines: &'a [String], label: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.split_once(label).map(|(_, rest)| rest.trim()))
        .unwrap_or_else(|| panic!("no {label:?} in\n{}", lines.join("\n")))
}

/// `http://ADDR/…` as ADDR.
fn addr_of(url: &str) -> SocketAddr {
    let rest = url.strip_prefix("http://").expect(url);
    rest.split('/').next().unwrap().parse().expect(url)
}

/// `GET /api/cluster` as `{node: partitions}`.
async fn membership(addr: SocketAddr, token: &str) -> Option<BTreeMap<String, Vec<u64>>> {
    let r = get_as(addr, "/api/cluster", Some(token)).await;
    if r.status != 200 {
        return None;
    }
    r.json()["nodes"]
        .as_array()?
        .iter()
        .map(|n| {
            Some((
                n["id"].as_str()?.to_owned(),
                n["partitions"]
                    .as_array()?
                    .iter()
                    .filter_map(|p| p.as_u64())
                    .collect(),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_demo_runs_two_nodes_that_share_the_partitions_and_show_moves() {
    if !enabled() {
        eprintln!("skipped: MOVEWATCH_CLUSTER_TESTS=1 runs the cluster tests");
        return;
    }
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("mw_demo_{}", std::process::id());
    let http = free_port();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_movewatch"))
        .args(["demo", "--cluster", "--vehicles", "12"])
        .arg("--http-listen")
        .arg(http.to_string())
        .arg("--cluster-base-port")
        .arg(cluster.base.to_string())
        .arg("--database-url")
        .arg(format!("{PG_SERVER}/{db}"))
        .arg("--data-dir")
        .arg(dir.path())
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .envs(cluster.script_env())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut demo = Demo {
        child,
        nodes: Vec::new(),
        db,
    };
    // What it prints, up to "Press Ctrl-C"; the rest is read (and echoed) on.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            println!("demo: {line}");
            let _ = tx.send(line);
        }
    });
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let done = line.starts_with("Press Ctrl-C");
                    lines.push(line);
                    if done {
                        return lines;
                    }
                }
                Err(e) => panic!(
                    "the demo did not print \"Press Ctrl-C\" ({e:?}):\n{}",
                    lines.join("\n")
                ),
            }
        }
    })
    .await
    .unwrap();
    println!("printed within {} s", started.elapsed().as_secs());

    // Both nodes' pages and pids, the tokens, and how to kill a node.
    let n1 = addr_of(after(&lines, "node n1  control room:"));
    let n2 = addr_of(after(&lines, "node n2  control room:"));
    assert_eq!(n1, http, "n1 listens on the demo's HTTP address");
    assert_ne!(n1, n2);
    assert_eq!(addr_of(after(&lines, "node n2  LEI board:")), n2);
    let control = after(&lines, "control-room token:").to_owned();
    let site = after(&lines, "site token (LEI):").to_owned();
    for id in ["n1", "n2"] {
        let pid: u32 = after(&lines, &format!("node {id}  pid "))
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(alive(pid), "node {id} (pid {pid}) runs");
        demo.nodes.push(pid);
    }
    assert!(
        lines
            .iter()
            .any(|l| l.trim() == format!("kill -9 {}", demo.nodes[0])),
        "how to kill n1:\n{}",
        lines.join("\n")
    );
    for port in 11..=13 {
        assert!(
            after(&lines, "MQTT listeners:").contains(&format!(":{}", cluster.base + port)),
            "{}",
            after(&lines, "MQTT listeners:")
        );
    }

    // Both nodes own partitions, every partition once, as either node says.
    let shares = wait_for(60, "n1 and n2 sharing the partitions", || {
        let control = control.clone();
        async move {
            let m = membership(n2, &control).await?;
            let mut all: Vec<u64> = m.values().flatten().copied().collect();
            all.sort_unstable();
            (m.len() == 2
                && m.values().all(|p| !p.is_empty())
                && all == (0..PARTITIONS as u64).collect::<Vec<_>>())
            .then_some(m)
        }
    })
    .await;
    println!("partitions: {shares:?}");

    // The boards show the fleet: vans and moves on n1's fleet, moves to LEI
    // on n2's board (n2 holds only some partitions: the rest arrive over
    // the live exchange and the command bus).
    let fleet = wait_for(120, "vans and moves on n1's /api/fleet", || {
        let control = control.clone();
        async move {
            let r = get_as(n1, "/api/fleet", Some(&control)).await;
            let v = r.json();
            let vans = v["vehicles"].as_array()?.len();
            let moves = v["moves"].as_array()?.len();
            (r.status == 200 && vans >= 6 && moves >= 2).then_some((vans, moves))
        }
    })
    .await;
    println!(
        "{} s: n1's fleet: {} vans, {} moves",
        started.elapsed().as_secs(),
        fleet.0,
        fleet.1
    );
    let incoming = wait_for(120, "moves on the road to LEI on n2's board", || {
        let site = site.clone();
        async move {
            let r = get_as(n2, "/api/sites/LEI/incoming", Some(&site)).await;
            if r.status != 200 {
                return None;
            }
            let v = r.json();
            let moving = v["moves"]
                .as_array()?
                .iter()
                .filter(|m| m["status"] == "in_transit")
                .count();
            (moving >= 1).then_some(moving)
        }
    })
    .await;
    println!(
        "{} s: {incoming} moves in transit to LEI on n2's board",
        started.elapsed().as_secs()
    );
    assert!(started.elapsed() < Duration::from_secs(420));

    // Ctrl-C (here SIGTERM) stops the nodes too.
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(demo.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if demo.child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the demo did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for pid in &demo.nodes {
        assert!(!alive(*pid), "node pid {pid} still runs after the demo");
    }
}
