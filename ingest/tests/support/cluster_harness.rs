//! A three-node RabbitMQ cluster of a test's own (`scripts/cluster.sh` on
//! spare ports in a temporary directory, stopped and deleted on drop) and an
//! MQTT device that reports each PUBACK. Shared by `ingest/tests/cluster.rs`
//! and `movewatch/tests/cluster_failover.rs`, each of which includes it with
//! `#[path = "..."] mod cluster_harness;` (one copy; each uses a subset).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// Whether the cluster tests run: `MOVEWATCH_CLUSTER_TESTS=1` (`scripts/test.sh` sets it).
pub fn enabled() -> bool {
    std::env::var("MOVEWATCH_CLUSTER_TESTS").is_ok_and(|v| v == "1")
}

/// A cluster of our own; stopped and deleted when dropped.
pub struct Cluster {
    dir: tempfile::TempDir,
    /// Node N: AMQP `base + N`, MQTT `base + 10 + N`, Erlang distribution `base + 20 + N`.
    pub base: u16,
    name: String,
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

impl Cluster {
    pub fn start() -> Cluster {
        let pid = std::process::id();
        // A range of 24 free ports below the ephemeral range, away from the
        // system node (5672, 25672) and the CLI's own (35672-35682).
        let base = (0..40)
            .map(|i| 20_000 + ((pid as u16 % 300) + i * 7) % 300 * 40)
            .find(|b| {
                !(b.saturating_sub(30)..b + 30).contains(&25_672) && (b + 1..=b + 23).all(port_free)
            })
            .expect("no free port range for a test cluster");
        let cluster = Cluster {
            dir: tempfile::tempdir().expect("temp dir"),
            base,
            name: format!("mwt{pid}-"),
        };
        let started = Instant::now();
        let out = cluster.script(&["up"]);
        assert!(
            out.status.success(),
            "cluster.sh up failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "cluster of three nodes up in {:.1} s (base port {base})",
            started.elapsed().as_secs_f64()
        );
        cluster
    }

    pub fn script(&self, args: &[&str]) -> Output {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh");
        Command::new("bash")
            .arg(script)
            .args(args)
            .env("MW_CLUSTER_DIR", self.dir.path())
            .env("MW_CLUSTER_BASE_PORT", self.base.to_string())
            .env("MW_CLUSTER_NAME", &self.name)
            .output()
            .expect("run scripts/cluster.sh")
    }

    pub fn script_ok(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh");
        let out = Command::new("bash")
            .arg(script)
            .args(args)
            .env("MW_CLUSTER_DIR", self.dir.path())
            .env("MW_CLUSTER_BASE_PORT", self.base.to_string())
            .env("MW_CLUSTER_NAME", &self.name)
            .envs(env.iter().copied())
            .output()
            .expect("run scripts/cluster.sh");
        assert!(
            out.status.success(),
            "cluster.sh {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The environment that points `scripts/cluster.sh` (and a program
    /// that runs it, such as `movewatch demo --cluster`) at this cluster.
    pub fn script_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("MW_CLUSTER_DIR", self.dir.path().display().to_string()),
            ("MW_CLUSTER_BASE_PORT", self.base.to_string()),
            ("MW_CLUSTER_NAME", self.name.clone()),
        ]
    }

    pub fn amqp_url(&self, node: u16) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.base + node)
    }

    pub fn mqtt_port(&self, node: u16) -> u16 {
        self.base + 10 + node
    }

    /// SIGKILLs broker node `node`'s VM (`cluster.sh pid N`: by its own pid, never by name).
    pub fn kill_node(&self, node: u16) {
        let pid = self.script_ok(&["pid", &node.to_string()], &[]);
        let pid = pid.trim();
        let status = Command::new("kill")
            .args(["-9", pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -9 {pid} (broker node {node})");
    }

    pub fn node_name(&self, node: u16) -> String {
        format!("{}{node}@localhost", self.name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let out = self.script(&["down", "--purge"]);
        if !out.status.success() {
            eprintln!(
                "cluster.sh down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// An MQTT device: the event loop is polled by a task of its own (never the
/// one that publishes), which reports PUBACK packet ids and a lost
/// connection on a bounded channel.
pub struct Device {
    pub client: AsyncClient,
    events: mpsc::Receiver<DeviceEvent>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, PartialEq)]
pub enum DeviceEvent {
    Connected,
    PubAck(u16),
    Lost(String),
}

impl Device {
    pub async fn connect(port: u16, client_id: &str, user: &str, password: &str) -> Device {
        Device::try_connect(port, client_id, user, password)
            .await
            .unwrap_or_else(|e| panic!("{client_id} did not connect: {e}"))
    }

    /// As `connect`, but a refused or lost connection (a dead broker node) is an `Err`.
    pub async fn try_connect(
        port: u16,
        client_id: &str,
        user: &str,
        password: &str,
    ) -> Result<Device, String> {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options
            .set_credentials(user, password)
            .set_keep_alive(Duration::from_secs(30))
            .set_inflight(200);
        let (client, mut eventloop) = AsyncClient::new(options, 256);
        let (tx, events) = mpsc::channel(65_536);
        let task = tokio::spawn(async move {
            loop {
                let event = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => DeviceEvent::Connected,
                    Ok(Event::Incoming(Packet::PubAck(ack))) => DeviceEvent::PubAck(ack.pkid),
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = tx.try_send(DeviceEvent::Lost(e.to_string()));
                        return;
                    }
                };
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        let mut device = Device {
            client,
            events,
            task,
        };
        match device.next(Duration::from_secs(20)).await {
            Some(DeviceEvent::Connected) => Ok(device),
            other => Err(format!("no CONNACK from port {port}: {other:?}")),
        }
    }

    pub async fn next(&mut self, wait: Duration) -> Option<DeviceEvent> {
        tokio::time::timeout(wait, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Publishes QoS 1 messages in order and waits for every PUBACK.
    pub async fn publish_acked(&mut self, messages: &[(String, Vec<u8>)]) {
        if let Err(e) = self.try_publish_acked(messages).await {
            panic!("{e}");
        }
    }

    /// As `publish_acked`, but a lost connection (or 30 s without a PUBACK)
    /// is an `Err`: the caller reconnects and publishes again what was not
    /// acknowledged.
    pub async fn try_publish_acked(
        &mut self,
        messages: &[(String, Vec<u8>)],
    ) -> Result<(), String> {
        for (topic, payload) in messages {
            self.client
                .publish(topic, QoS::AtLeastOnce, false, payload.clone())
                .await
                .map_err(|e| format!("queue publish: {e}"))?;
        }
        let mut acked = 0;
        while acked < messages.len() {
            match self.next(Duration::from_secs(30)).await {
                Some(DeviceEvent::PubAck(_)) => acked += 1,
                other => {
                    return Err(format!(
                        "waiting for PUBACK {acked}/{}: {other:?}",
                        messages.len()
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}
