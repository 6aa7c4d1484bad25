//! Helpers shared by the engine's integration tests: configs, publishers,
//! a minimal HTTP client, waiting, and a test-owned Mosquitto.

#![allow(dead_code)] // each test binary uses its own subset

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use futures_util::{SinkExt, StreamExt};
use model::SiteId;
use model::config::{Config, RoleName, SupplierConfig, TokenConfig};
use movewatch::{Engine, random_token};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// The control-room token every test config carries.
pub const TOKEN: &str = "test-control-room-token";

/// A config on ports the OS picks (read back from `Engine::http_addr` and
/// `Engine::mqtt_addr`) with the store in `dir`, no suppliers (open mode),
/// and `[fleet] claim_on_first_report` on: most tests are about something
/// other than the vehicle register (`security.rs` is about it, and turns
/// it off).
pub fn config(dir: &Path, external_mqtt: Option<&str>) -> Config {
    let mut c = Config::default();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.mqtt.listen = "127.0.0.1:0".parse().unwrap();
    c.fleet.claim_on_first_report = true;
    c.mqtt.url = external_mqtt.map(str::to_owned);
    // A fresh session per run: Mosquitto keeps persistent sessions across tests.
    c.mqtt.client_id = format!("movewatch-test-{}", random_token(8));
    c.store.url = format!("sqlite://{}/test.db", dir.display());
    c.sites.files = vec![concat!(env!("CARGO_MANIFEST_DIR"), "/../data/sites.csv").into()];
    c.tokens.push(TokenConfig {
        token: TOKEN.into(),
        role: RoleName::ControlRoom,
        sites: vec![],
        supplier: None,
    });
    c
}

/// Adds a supplier with an API key `key-{id}` and MQTT password `pw-{id}`.
pub fn with_supplier(config: &mut Config, id: &str) {
    config.suppliers.push(SupplierConfig {
        id: id.parse().unwrap(),
        api_key: Some(format!("key-{id}")),
        mqtt_password: Some(format!("pw-{id}")),
    });
}

/// A free TCP port on 127.0.0.1, released at once: only for a server that
/// cannot take port 0 and report what it bound (a test's Mosquitto, a child
/// engine's HTTP). Never for the embedded broker: it binds port 0 itself.
pub fn free_port() -> SocketAddr {
    ingest::broker::free_port("127.0.0.1".parse().unwrap()).unwrap()
}

/// Waits until the engine is subscribed: before that the broker has nobody to deliver to.
pub async fn wait_subscribed(engine: &Engine) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !engine.mqtt_connected() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the engine never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connected QoS 1 publisher. The returned receiver yields the broker's
/// PUBACK count, and closes when the connection ends.
pub async fn publisher_at(
    host: &str,
    port: u16,
    credentials: Option<(&str, &str)>,
) -> (AsyncClient, tokio::sync::watch::Receiver<PublisherState>) {
    // A device's client id starts with its supplier (the username).
    let owner = credentials.map_or("test-publisher", |(user, _)| user);
    let mut options = MqttOptions::new(format!("{owner}-test-{}", random_token(8)), host, port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1024 * 1024, 1024 * 1024)
        .set_inflight(100);
    if let Some((user, pass)) = credentials {
        options.set_credentials(user, pass);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    let host = host.to_owned();
    let (state_tx, state) = tokio::sync::watch::channel(PublisherState::default());
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                    state_tx.send_modify(|s| s.acked += 1)
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    state_tx.send_modify(|s| s.connected = true)
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("test publisher {host}:{port}: {e}");
                    state_tx.send_modify(|s| {
                        s.connected = false;
                        s.error = Some(e.to_string());
                    });
                    return;
                }
            }
        }
    });
    (client, state)
}

/// A device connection with this client id and login, with what it has
/// seen; the third value is the CONNECT's refusal as text (`None`: connected).
pub async fn device_at(
    host: &str,
    port: u16,
    client_id: &str,
    login: (&str, &str),
) -> (
    AsyncClient,
    tokio::sync::watch::Receiver<PublisherState>,
    Option<String>,
) {
    let mut options = MqttOptions::new(client_id, host, port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_credentials(login.0, login.1);
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let (tx, mut state) = tokio::sync::watch::channel(PublisherState::default());
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    tx.send_modify(|s| s.connected = true)
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                    tx.send_modify(|s| s.acked += 1)
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(_))) => {
                    tx.send_modify(|s| s.received += 1)
                }
                Ok(_) => {}
                Err(e) => {
                    tx.send_modify(|s| {
                        s.connected = false;
                        s.error = Some(e.to_string());
                    });
                    return;
                }
            }
        }
    });
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| s.connected || s.error.is_some()),
    )
    .await
    .expect("an answer to CONNECT")
    .unwrap()
    .clone();
    (client, state, outcome.error)
}

/// Publishes `payload` with QoS 1 on geoamey's positions topic for `vehicle`.
pub async fn publish_positions(client: &AsyncClient, vehicle: &str, payload: impl Into<Vec<u8>>) {
    client
        .publish(
            format!("movewatch/v1/geoamey/{vehicle}/positions"),
            QoS::AtLeastOnce,
            false,
            payload,
        )
        .await
        .unwrap();
}

/// What a test publisher has seen.
#[derive(Debug, Clone, Default)]
pub struct PublisherState {
    /// CONNACK received.
    pub connected: bool,
    /// PUBACKs received.
    pub acked: u64,
    /// Messages received (a subscriber; [`device_at`] only).
    pub received: u64,
    /// Why the connection ended.
    pub error: Option<String>,
}

/// A publisher to the engine's device-facing broker address.
pub async fn publisher(engine: &Engine, credentials: Option<(&str, &str)>) -> AsyncClient {
    wait_subscribed(engine).await;
    publisher_at(&engine.mqtt_addr.0, engine.mqtt_addr.1, credentials)
        .await
        .0
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after `secs`.
pub async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the store holds at least `expected` positions; returns the count then
/// (or at the deadline).
pub async fn wait_for_positions(engine: &Engine, expected: i64) -> i64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let n = engine.store.counts().await.unwrap().positions;
        if n >= expected || tokio::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the store holds at least `expected` dead letters; returns them by reason.
pub async fn wait_for_dead_letters(engine: &Engine, expected: i64) -> Vec<(model::Reason, i64)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let letters = engine.store.dead_letter_counts().await.unwrap();
        if letters.iter().map(|(_, n)| n).sum::<i64>() >= expected
            || tokio::time::Instant::now() > deadline
        {
            return letters;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A position point as JSON.
pub fn point(
    tracking_id: &str,
    vehicle: &str,
    seconds_ago: i64,
    lat: f64,
    lon: f64,
) -> serde_json::Value {
    let ts = chrono::Utc::now() - chrono::Duration::seconds(seconds_ago);
    serde_json::json!({
        "tracking_id": tracking_id,
        "tracking_timestamp": ts.to_rfc3339(),
        "vehicle_registration": vehicle,
        "latitude": lat,
        "longitude": lon,
        "speed": 40.0,
    })
}

/// An HTTP response: status and body.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Body text.
    pub body: String,
    /// The status line and headers.
    pub head: String,
}

impl Reply {
    /// A header's value (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A minimal HTTP/1.1 request over a TCP stream (keeps the tests free of an HTTP client crate).
pub async fn http(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    // The server may answer (413) and close before reading a large body.
    let _ = stream.write_all(body).await;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {head:?}"));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Reply {
        status,
        body,
        head: head.to_owned(),
    }
}

fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        text = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A GET returning the body.
pub async fn get(addr: SocketAddr, path: &str) -> String {
    http("GET", addr, path, &[], b"").await.body
}

/// A Mosquitto owned by one test, on a spare port, configured as
/// docs/PROTOCOL.md recommends for production: password file, the supplier
/// ACL, no queue limit and a wide in-flight window. Killed on drop.
pub struct Mosquitto {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    conf: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// The username the engine uses on a test-owned Mosquitto.
pub const ENGINE_USER: &str = "movewatch-engine";
/// Its password.
pub const ENGINE_PASSWORD: &str = "engine-secret";

impl Mosquitto {
    /// Starts one with these supplier users (plus the engine's) and waits until it listens.
    pub fn start(suppliers: &[(&str, &str)]) -> Mosquitto {
        Mosquitto::start_with(suppliers, false)
    }

    /// As [`Mosquitto::start`], with `persistence true` in its temp dir, so
    /// that sessions and queued messages survive [`Mosquitto::restart`].
    pub fn start_persistent(suppliers: &[(&str, &str)]) -> Mosquitto {
        Mosquitto::start_with(suppliers, true)
    }

    fn start_with(suppliers: &[(&str, &str)], persistence: bool) -> Mosquitto {
        let acl = format!(
            "# Each supplier may publish only under its own prefix.\n\
             pattern write movewatch/v1/%u/#\n\n\
             user {ENGINE_USER}\ntopic read movewatch/v1/#\n"
        );
        Mosquitto::start_configured(suppliers, &acl, "", persistence)
    }

    /// The isolating configuration of docs/PROTOCOL.md ("Mosquitto: suppliers
    /// isolated from each other"): one login per device, `{supplier}-{device}`,
    /// used as the client id (`use_username_as_clientid`), each allowed to
    /// write only under its supplier's prefix and to read nothing; the engine
    /// alone reads. `devices`: (login, supplier, password).
    pub fn start_isolated(devices: &[(&str, &str, &str)]) -> Mosquitto {
        let mut acl = format!("user {ENGINE_USER}\ntopic read movewatch/v1/#\n");
        for (login, supplier, _) in devices {
            acl.push_str(&format!(
                "\nuser {login}\ntopic write movewatch/v1/{supplier}/#\n"
            ));
        }
        let users: Vec<(&str, &str)> = devices.iter().map(|(l, _, p)| (*l, *p)).collect();
        Mosquitto::start_configured(&users, &acl, "use_username_as_clientid true\n", false)
    }

    fn start_configured(
        suppliers: &[(&str, &str)],
        acl_text: &str,
        extra: &str,
        persistence: bool,
    ) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        // Mosquitto started as root drops to the `mosquitto` user, which must
        // be able to read its password and ACL files and write its log.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let port = free_port().port();
        let passwd = dir.path().join("passwd");
        let acl = dir.path().join("acl");
        let mut users = vec![(ENGINE_USER, ENGINE_PASSWORD)];
        users.extend_from_slice(suppliers);
        for (i, (user, pass)) in users.iter().enumerate() {
            let mut cmd = Command::new("mosquitto_passwd");
            if i == 0 {
                cmd.arg("-c");
            }
            let status = cmd
                .args(["-b", passwd.to_str().unwrap(), user, pass])
                .stdout(Stdio::null())
                .status()
                .expect("mosquitto_passwd (Debian package mosquitto) must be installed");
            assert!(status.success(), "mosquitto_passwd failed");
        }
        std::fs::write(&acl, acl_text).unwrap();
        for file in [&passwd, &acl] {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n\
                 allow_anonymous false\n\
                 password_file {}\n\
                 acl_file {}\n\
                 max_queued_messages 0\n\
                 max_inflight_messages 1000\n\
                 {extra}\
                 {}\n\
                 log_dest file {}\n\
                 log_type {}\n",
                passwd.display(),
                acl.display(),
                if persistence {
                    format!(
                        "persistence true\npersistence_location {}/\nautosave_interval 1",
                        dir.path().display()
                    )
                } else {
                    "persistence false".to_owned()
                },
                dir.path().join("mosquitto.log").display(),
                // MOVEWATCH_TEST_MOSQUITTO_LOG=all shows every packet when debugging.
                std::env::var("MOVEWATCH_TEST_MOSQUITTO_LOG").unwrap_or_else(|_| "warning".into())
            ),
        )
        .unwrap();
        let child = Mosquitto::spawn(&conf, port);
        Mosquitto {
            child,
            port,
            conf,
            _dir: dir,
        }
    }

    fn spawn(conf: &Path, port: u16) -> Child {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .spawn()
            .expect("mosquitto must be installed (scripts/test.sh installs it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "test Mosquitto did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// Stops it with SIGTERM (it saves its persistence file, if any) and
    /// starts it again on the same port with the same config and data dir.
    pub fn restart(&mut self) {
        signal(&self.child, "TERM");
        let _ = self.child.wait();
        self.child = Mosquitto::spawn(&self.conf, self.port);
    }

    /// `mqtt://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // SIGTERM first so that Mosquitto flushes its log.
            let _ = Command::new("kill")
                .arg(self.child.id().to_string())
                .status();
            let _ = self.child.wait();
            let log = std::fs::read_to_string(self._dir.path().join("mosquitto.log"));
            eprintln!(
                "--- test Mosquitto's log (port {}) ---\n{:?}",
                self.port, log
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `SIGname` (`TERM`, `KILL`) to a child process with `kill(1)`.
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill(1)");
    assert!(status.success(), "kill -{name} {} failed", child.id());
}

/// `movewatch serve --config FILE` as a child process, killed with SIGKILL on drop.
pub struct EngineProcess(pub Child);

impl EngineProcess {
    /// Starts the engine binary on a config file (logs at `warn`, or
    /// `MOVEWATCH_TEST_ENGINE_LOG`; its stderr is the test's).
    pub fn spawn(config: &Path) -> EngineProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_movewatch"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("MOVEWATCH_TEST_ENGINE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        EngineProcess(child)
    }

    /// SIGKILL: no chance to flush, ack or close anything.
    pub fn kill(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }

    /// SIGTERM: a graceful shutdown.
    pub fn terminate(&self) {
        signal(&self.0, "TERM");
    }

    /// Waits up to `within` for the process to exit; None if it is still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the engine at `http` answers `/readyz` with 200.
pub async fn wait_ready(http: SocketAddr) {
    wait_for(60, "the engine's /readyz", || async move {
        tokio::net::TcpStream::connect(http).await.ok()?;
        (self::http("GET", http, "/readyz", &[], b"").await.status == 200).then_some(())
    })
    .await;
}

/// Positions in a SQLite store file, read-only (0 if it cannot be read yet).
pub async fn stored(db: &Path) -> i64 {
    use sqlx::Row;
    use std::str::FromStr;
    let options =
        sqlx::sqlite::SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display()))
            .unwrap()
            .read_only(true);
    let Ok(mut conn) = sqlx::ConnectOptions::connect(&options).await else {
        return 0;
    };
    sqlx::query("SELECT COUNT(*) AS n FROM positions")
        .fetch_one(&mut conn)
        .await
        .map(|row| row.get::<i64, _>("n"))
        .unwrap_or(0)
}

// ---- a fleet stream for the fault tests (faults.rs, mosquitto.rs, shutdown.rs) ----

/// A sent point: vehicle, tracking id, lat, lon.
pub type SentPoint = (String, String, f64, f64);
/// A message: topic, payload, its points.
pub type StreamMessage = (String, Vec<u8>, Vec<SentPoint>);

/// Points of `vans` vans, `messages` messages each of `per_message` points,
/// in the order a fleet sends them: `(topic, payload, [(vehicle, id, lat, lon)])`.
pub fn stream(
    prefix: &str,
    vans: usize,
    messages: usize,
    per_message: usize,
    start: chrono::DateTime<chrono::Utc>,
) -> Vec<StreamMessage> {
    let mut out = Vec::new();
    for m in 0..messages {
        for v in 0..vans {
            let vehicle = format!("{prefix}{v:02}ABC");
            let mut ids = Vec::new();
            let points: Vec<_> = (0..per_message)
                .map(|p| {
                    let step = (m * per_message + p) as i64;
                    let (lat, lon) = (
                        52.0 + v as f64 * 0.01 + step as f64 * 1e-5,
                        -1.5 + step as f64 * 1e-5,
                    );
                    let id = format!("{prefix}-{v}-{step}");
                    ids.push((vehicle.clone(), id.clone(), lat, lon));
                    serde_json::json!({
                        "tracking_id": id,
                        "tracking_timestamp": (start + chrono::Duration::seconds(step)).to_rfc3339(),
                        "vehicle_registration": vehicle,
                        "latitude": lat,
                        "longitude": lon,
                        "speed": 36.0,
                    })
                })
                .collect();
            out.push((
                format!("movewatch/v1/geoamey/{vehicle}/positions"),
                serde_json::to_vec(&points).unwrap(),
                ids,
            ));
        }
    }
    out
}

/// A child engine's files: its temp dir (kept alive), SQLite file, HTTP
/// address and config (from [`child_config`] against `broker`).
pub struct ChildFiles {
    /// Removed when dropped.
    pub dir: tempfile::TempDir,
    /// The SQLite store.
    pub db: std::path::PathBuf,
    /// Where it serves HTTP.
    pub http_addr: SocketAddr,
    /// The config file to start it with.
    pub config_file: std::path::PathBuf,
}

/// Files for a child engine named `name` (its MQTT client id is unique per
/// call) on `broker`, with `extra` appended to its config.
pub fn child_files(broker: &Mosquitto, name: &str, extra: &str) -> ChildFiles {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(format!("{name}.db"));
    let http_addr = free_port();
    let config_file = child_config(
        dir.path(),
        broker,
        http_addr,
        &db,
        &format!("movewatch-{name}-{}", random_token(6)),
        extra,
    );
    ChildFiles {
        dir,
        db,
        http_addr,
        config_file,
    }
}

/// A config file for a child engine on `broker` (supplier `geoamey`) with
/// its store at `db`, HTTP on `http`, and extra TOML appended.
pub fn child_config(
    dir: &Path,
    broker: &Mosquitto,
    http: SocketAddr,
    db: &Path,
    client_id: &str,
    extra: &str,
) -> std::path::PathBuf {
    let file = dir.join("movewatch.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[http]
listen = "{http}"
[mqtt]
url = "{url}"
client_id = "{client_id}"
username = "{ENGINE_USER}"
password = "{ENGINE_PASSWORD}"
[store]
url = "sqlite://{db}"
[sites]
files = ["{sites}"]
[fleet]
# The fault tests' vans are in no register: each first report claims its van.
claim_on_first_report = true
[[suppliers]]
id = "geoamey"
api_key = "key-geoamey"
mqtt_password = "pw-geoamey"
[[tokens]]
token = "{TOKEN}"
role = "control_room"
{extra}
"#,
            url = broker.url(),
            db = db.display(),
            sites = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/sites.csv"),
        ),
    )
    .unwrap();
    file
}

// ---- moves, WebSocket clients, drives (shared by moves.rs and scope.rs) ----

/// A `site` token for one site.
pub fn site_token(token: &str, site: &str) -> TokenConfig {
    TokenConfig {
        token: token.into(),
        role: RoleName::Site,
        sites: vec![SiteId::parse(site).unwrap()],
        supplier: None,
    }
}

/// A site's centre (lat, lon).
pub fn centre(engine: &Engine, id: &str) -> (f64, f64) {
    let s = engine.sites.iter().find(|s| s.id.as_str() == id).unwrap();
    (s.lat, s.lon)
}

/// `PUT /api/moves/{id}` with a bearer token.
pub async fn put_move(engine: &Engine, id: &str, token: &str, body: serde_json::Value) -> Reply {
    http(
        "PUT",
        engine.http_addr,
        &format!("/api/moves/{id}"),
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
    .await
}

/// `GET /api/moves/{id}` with a bearer token.
pub async fn get_move(engine: &Engine, id: &str, token: &str) -> Reply {
    http(
        "GET",
        engine.http_addr,
        &format!("/api/moves/{id}"),
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    )
    .await
}

/// A WebSocket client of the engine.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to `/ws` with `token` and subscribes to `channel`.
pub async fn subscribe(engine: &Engine, token: &str, channel: &str) -> Ws {
    let url = format!("ws://{}/ws?token={token}", engine.http_addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(Message::text(
        serde_json::json!({"type": "subscribe", "channel": channel}).to_string(),
    ))
    .await
    .unwrap();
    ws
}

/// Every frame received within `secs`, or until `until` matches one.
pub async fn frames_until(
    ws: &mut Ws,
    secs: u64,
    until: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Text(t) = m {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            let done = until(&v);
            got.push(v);
            if done {
                break;
            }
        }
    }
    got
}

/// The frames of one `type`.
pub fn of_type<'a>(frames: &'a [serde_json::Value], t: &str) -> Vec<&'a serde_json::Value> {
    frames.iter().filter(|f| f["type"] == t).collect()
}

/// `minutes` ago, truncated to the second.
pub fn base(minutes: i64) -> DateTime<Utc> {
    (Utc::now() - chrono::Duration::minutes(minutes))
        .duration_trunc(chrono::Duration::seconds(1))
        .unwrap()
}

/// Publishes JSON under `movewatch/v1/geoamey/{vehicle}/{kind}` (QoS 1).
pub async fn publish(client: &AsyncClient, vehicle: &str, kind: &str, body: &serde_json::Value) {
    client
        .publish(
            format!("movewatch/v1/geoamey/{vehicle}/{kind}"),
            QoS::AtLeastOnce,
            false,
            serde_json::to_vec(body).unwrap(),
        )
        .await
        .unwrap();
}

/// A position point at `ts`, with a speed.
pub fn fix(
    id: &str,
    vehicle: &str,
    ts: DateTime<Utc>,
    (lat, lon): (f64, f64),
    speed: f64,
) -> serde_json::Value {
    let mut p = point(id, vehicle, 0, lat, lon);
    p["tracking_timestamp"] = ts.to_rfc3339().into();
    p["speed"] = speed.into();
    p
}

/// A GET with an optional bearer token.
pub async fn get_as(addr: SocketAddr, path: &str, bearer: Option<&str>) -> Reply {
    let header = bearer.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = header
        .as_deref()
        .map(|h| vec![("Authorization", h)])
        .unwrap_or_default();
    http("GET", addr, path, &headers, b"").await
}

/// Every tracking id stored for these vehicles, with repeats.
pub async fn stored_ids(
    store: &store::Store,
    vehicles: impl IntoIterator<Item = String>,
    since: chrono::DateTime<chrono::Utc>,
) -> Vec<String> {
    let mut ids = Vec::new();
    for v in vehicles {
        let vehicle: model::VehicleId = v.parse().unwrap();
        let track = store
            .track(&vehicle, since, chrono::Utc::now(), 100_000)
            .await
            .unwrap();
        ids.extend(track.into_iter().map(|p| p.tracking_id));
    }
    ids
}
