//! `movewatch demo --cluster`: engine nodes on the local RabbitMQ cluster
//! (`bash scripts/cluster.sh up`), sharing one PostgreSQL database, each a
//! child process (`movewatch serve --config …`) so that one can be killed
//! with `kill -9` to watch the others take its partitions over
//! (docs/SCALE-OUT.md). The simulated fleet publishes QoS 1 over MQTT to the
//! cluster's MQTT listeners, a third of the vans to each.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use movewatch::random_token;

/// The cluster demo's partitions (every node and the queues agree on it).
const PARTITIONS: usize = 8;
/// The local cluster's broker nodes (`scripts/cluster.sh`).
const BROKERS: u16 = 3;
const SUPPLIERS: [&str; 2] = ["geoamey", "serco"];

/// What `movewatch demo --cluster` was asked.
pub(crate) struct ClusterDemo {
    pub(crate) vehicles: usize,
    pub(crate) nodes: usize,
    pub(crate) http_listen: SocketAddr,
    pub(crate) base_port: u16,
    pub(crate) database_url: String,
    pub(crate) data_dir: PathBuf,
    pub(crate) interval: Duration,
    pub(crate) day_start_s: f64,
    pub(crate) prefix: &'static str,
}

/// An engine node's process; SIGKILLed when dropped (a graceful stop is
/// [`NodeProcess::stop`]).
struct NodeProcess {
    id: String,
    http: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    child: Child,
    exited: bool,
}

impl NodeProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// SIGTERM (the node hands its partitions over), then SIGKILL after `bound`.
    fn stop(&mut self, bound: Duration) {
        if self.exited || matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                self.exited = true;
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.exited = true;
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if !self.exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn answers(port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await,
        Ok(Ok(_))
    )
}

/// `postgres://…/NAME` as (`postgres://…/postgres`, `NAME`).
fn split_database_url(url: &str) -> anyhow::Result<(String, String)> {
    let bad = || {
        anyhow::anyhow!(
            "--database-url must be postgres://user@host:port/NAME with NAME of a-z, 0-9 and _, not {url:?}"
        )
    };
    if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
        return Err(bad());
    }
    let (server, name) = url.rsplit_once('/').ok_or_else(bad)?;
    if server.ends_with('/')
        || name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        || name.as_bytes()[0].is_ascii_digit()
        || name == "postgres"
    {
        return Err(bad());
    }
    Ok((format!("{server}/postgres"), name.to_owned()))
}

/// Drops the demo's database and creates it empty.
async fn reset_database(url: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let (admin, name) = split_database_url(url)?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::PgConnection::connect(&admin),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out"))
    .and_then(|r| r.map_err(anyhow::Error::from))
    .with_context(|| {
        format!(
            "cannot reach PostgreSQL at {admin}: the cluster demo's nodes share one PostgreSQL \
             database (start PostgreSQL on 127.0.0.1:5432 with user postgres, or pass --database-url)"
        )
    })?;
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&mut conn)
            .await
            .with_context(|| format!("cannot reset the demo database: {sql}"))?;
    }
    Ok(())
}

/// Empties the partition queues (and `movewatch.unrouted`) of an earlier
/// demo: with the store re-created, its vans' messages would only be
/// dead letters. A queue not declared yet is skipped.
async fn purge_queues(amqp_url: &str) -> anyhow::Result<u32> {
    let connection = lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default())
        .await
        .with_context(|| format!("cannot connect to the RabbitMQ cluster at {amqp_url}"))?;
    let mut purged = 0;
    let queues = (0..PARTITIONS)
        .map(ingest::amqp::partition_queue)
        .chain([ingest::amqp::UNROUTED.to_owned()]);
    for queue in queues {
        // A missing queue closes the channel: one channel per queue.
        let channel = connection.create_channel().await?;
        if let Ok(n) = channel
            .queue_purge(
                queue.as_str().into(),
                lapin::options::QueuePurgeOptions::default(),
            )
            .await
        {
            purged += n;
        }
    }
    let _ = connection.close(200, "purged".into()).await;
    Ok(purged)
}

/// `scripts/cluster.sh`: under the current directory, else in the source tree
/// this binary was built from.
fn cluster_script() -> anyhow::Result<PathBuf> {
    let here = PathBuf::from("scripts/cluster.sh");
    if here.is_file() {
        return Ok(here);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh");
    if built.is_file() {
        return Ok(built);
    }
    bail!(
        "scripts/cluster.sh not found (run the demo from the movewatch repository): it makes the suppliers' MQTT logins"
    )
}

/// A supplier's MQTT login on the cluster, as `MW_SUPPLIER_PASSWORD=… bash
/// scripts/cluster.sh supplier ID` makes it (publish only under
/// `movewatch/v1/ID/`). The password goes to the script in its environment.
fn make_supplier(script: &Path, base_port: u16, id: &str, password: &str) -> anyhow::Result<()> {
    let out = Command::new("bash")
        .arg(script)
        .args(["supplier", id])
        .env("MW_CLUSTER_BASE_PORT", base_port.to_string())
        .env("MW_SUPPLIER_PASSWORD", password)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "`bash {} supplier {id}` failed (is this the cluster `bash scripts/cluster.sh up` started? \
             MW_CLUSTER_DIR and MW_CLUSTER_NAME must match it): {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A node's config file.
#[allow(clippy::too_many_arguments)]
fn node_config(
    id: &str,
    http: SocketAddr,
    store_url: &str,
    amqp_url: &str,
    api_keys: &[(String, String)],
    vans: &BTreeMap<String, String>,
    control_token: &str,
    site_token: &str,
) -> String {
    let mut text = format!(
        "# Written by `movewatch demo --cluster`; rewritten at each demo start.\n\
         [http]\nlisten = \"{http}\"\n\
         [store]\nurl = \"{store_url}\"\n\
         [cluster]\nnode = \"{id}\"\namqp_url = \"{amqp_url}\"\npartitions = {PARTITIONS}\n"
    );
    for (supplier, key) in api_keys {
        text.push_str(&format!(
            "[[suppliers]]\nid = \"{supplier}\"\napi_key = \"{key}\"\n"
        ));
    }
    // On a cluster a vehicle in no register entry goes to movewatch.unrouted
    // (nothing consumes it yet): every van of the demo is registered.
    for (van, supplier) in vans {
        text.push_str(&format!(
            "[[vehicles]]\nregistration = \"{van}\"\nsupplier = \"{supplier}\"\n"
        ));
    }
    text.push_str(&format!(
        "[[tokens]]\ntoken = \"{control_token}\"\nrole = \"control_room\"\n\
         [[tokens]]\ntoken = \"{site_token}\"\nrole = \"site\"\nsites = [\"LEI\"]\n"
    ));
    text
}

/// `GET path` with a bearer token: status and body, or `None`.
async fn get(addr: SocketAddr, path: &str, token: &str) -> Option<(u16, String)> {
    let mut client = simulator::http::Client::new(&addr.to_string());
    let auth = format!("Bearer {token}");
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        client.request("GET", path, &[("Authorization", &auth)], b""),
    )
    .await
    .ok()?
    .ok()?;
    Some((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

/// `GET /api/cluster` as `{node: partitions}`.
async fn membership(addr: SocketAddr, token: &str) -> Option<BTreeMap<String, Vec<u64>>> {
    let (status, body) = get(addr, "/api/cluster", token).await?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["nodes"]
        .as_array()?
        .iter()
        .map(|n| {
            let parts = n["partitions"]
                .as_array()?
                .iter()
                .filter_map(|p| p.as_u64())
                .collect();
            Some((n["id"].as_str()?.to_owned(), parts))
        })
        .collect()
}

fn describe(m: &BTreeMap<String, Vec<u64>>) -> String {
    m.iter()
        .map(|(n, p)| format!("{n} {p:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) async fn run(d: ClusterDemo) -> anyhow::Result<()> {
    if !(1..=BROKERS as usize).contains(&d.nodes) {
        bail!("--nodes is 1 to {BROKERS} on the local cluster");
    }
    if d.base_port < 1024 || d.base_port > 65_500 {
        bail!("--cluster-base-port must be from 1024 to 65500");
    }
    // The local cluster: AMQP on base+N, MQTT on base+10+N.
    let amqp_port = |n: u16| d.base_port + n;
    let mqtt_port = |n: u16| d.base_port + 10 + n;
    if !answers(amqp_port(1)).await {
        bail!(
            "no RabbitMQ answers on AMQP 127.0.0.1:{}: start the local cluster first with \
             `bash scripts/cluster.sh up` (or point --cluster-base-port at yours)",
            amqp_port(1)
        );
    }
    let mut amqp_nodes = Vec::new();
    let mut mqtt_ports = Vec::new();
    for n in 1..=BROKERS {
        if answers(amqp_port(n)).await {
            amqp_nodes.push(n);
        }
        if answers(mqtt_port(n)).await {
            mqtt_ports.push(mqtt_port(n));
        }
    }
    if mqtt_ports.is_empty() {
        bail!(
            "the cluster answers on AMQP but no MQTT listener answers on 127.0.0.1:{}-{} \
             (is the rabbitmq_mqtt plugin on? `bash scripts/cluster.sh up` enables it)",
            mqtt_port(1),
            mqtt_port(BROKERS)
        );
    }
    if amqp_nodes.len() < BROKERS as usize {
        println!(
            "warning: only broker nodes {amqp_nodes:?} answer on AMQP; engine nodes use those"
        );
    }

    reset_database(&d.database_url).await?;
    let purged = purge_queues(&format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f",
        amqp_port(amqp_nodes[0])
    ))
    .await?;
    if purged > 0 {
        println!("emptied the partition queues of an earlier demo ({purged} messages)");
    }

    // The suppliers' MQTT logins (RabbitMQ's own users: username = supplier
    // id, publish only under movewatch/v1/{id}/).
    let script = cluster_script()?;
    let mut passwords = HashMap::new();
    let mut api_keys = Vec::new();
    for id in SUPPLIERS {
        let password = random_token(24);
        make_supplier(&script, d.base_port, id, &password)?;
        passwords.insert(id.to_owned(), password);
        api_keys.push((id.to_owned(), random_token(32)));
    }

    // One simulated fleet per MQTT listener, each with plates of its own;
    // planned here so that every van can be registered before the nodes start.
    let config = model::config::Config::default();
    let sites = movewatch::load_sites(&config)?;
    let start = Utc::now();
    let groups = mqtt_ports.len().min(d.vehicles.max(1));
    let mut runs = Vec::new();
    let mut vans = BTreeMap::new();
    for (g, port) in mqtt_ports.iter().take(groups).enumerate() {
        let vehicles = d.vehicles / groups + usize::from(g < d.vehicles % groups);
        if vehicles == 0 {
            continue;
        }
        let run = simulator::RunConfig {
            start: Some(start),
            ..crate::demo_fleet(
                vehicles,
                2026 + g as u64,
                d.interval,
                d.day_start_s,
                ("127.0.0.1".into(), *port, passwords.clone()),
                format!("{}{}", d.prefix, g + 1),
            )
        };
        let plan = simulator::run::plan_for(&run, &sites, start)
            .map_err(|e| anyhow::anyhow!("cannot plan the simulated fleet: {e}"))?;
        for van in &plan.vans {
            vans.insert(van.vehicle.to_string(), van.supplier.to_string());
        }
        runs.push(run);
    }

    // The engine nodes: n1 on the demo's HTTP port, n2 on the next, ...
    let dir = d.data_dir.join("cluster-demo");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let control_token = random_token(32);
    let site_token = random_token(32);
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let mut http_addrs: Vec<SocketAddr> = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..d.nodes {
        let id = format!("n{}", i + 1);
        let http = match http_addrs.last() {
            None => crate::usable_addr(d.http_listen, "HTTP")?,
            Some(prev) => {
                let next = SocketAddr::new(prev.ip(), prev.port().wrapping_add(1));
                if next.port() > prev.port() && ingest::broker::port_is_free(next) {
                    next
                } else {
                    ingest::broker::free_port(prev.ip())?
                }
            }
        };
        http_addrs.push(http);
        let broker = amqp_nodes[i % amqp_nodes.len()];
        let amqp_url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", amqp_port(broker));
        let config = dir.join(format!("{id}.toml"));
        std::fs::write(
            &config,
            node_config(
                &id,
                http,
                &d.database_url,
                &amqp_url,
                &api_keys,
                &vans,
                &control_token,
                &site_token,
            ),
        )
        .with_context(|| format!("cannot write {}", config.display()))?;
        let log = dir.join(format!("{id}.log"));
        let out = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new(&exe)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start engine node {id}"))?;
        nodes.push(NodeProcess {
            id,
            http,
            config,
            log,
            child,
            exited: false,
        });
    }

    // Every node answers, and (soon after) every node owns partitions.
    let deadline = Instant::now() + Duration::from_secs(90);
    for node in &mut nodes {
        loop {
            if let Ok(Some(status)) = node.child.try_wait() {
                node.exited = true;
                bail!(
                    "engine node {} exited ({status}) at start; its log ({}):\n{}",
                    node.id,
                    node.log.display(),
                    node.log_tail()
                );
            }
            if get(node.http, "/api/cluster", &control_token)
                .await
                .is_some()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "engine node {} did not answer on http://{} within 90 s; its log ({}):\n{}",
                    node.id,
                    node.http,
                    node.log.display(),
                    node.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let balanced = Instant::now() + Duration::from_secs(60);
    let mut shares = BTreeMap::new();
    while Instant::now() < balanced {
        if let Some(m) = membership(nodes[0].http, &control_token).await {
            let all = m.values().map(Vec::len).sum::<usize>();
            let every = nodes
                .iter()
                .all(|n| m.get(&n.id).is_some_and(|p| !p.is_empty()));
            shares = m;
            if every && all == PARTITIONS {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let first = &nodes[0];
    println!();
    println!(
        "movewatch demo is running on the RabbitMQ cluster: {} engine node(s), PostgreSQL, {} simulated vans",
        nodes.len(),
        d.vehicles
    );
    for node in &nodes {
        println!(
            "  node {:<3} control room: http://{}/control?token={control_token}",
            node.id, node.http
        );
        println!(
            "  node {:<3} LEI board:    http://{}/site/LEI?token={site_token}",
            node.id, node.http
        );
        println!(
            "  node {:<3} pid {}  config {}  log {}",
            node.id,
            node.pid(),
            node.config.display(),
            node.log.display()
        );
    }
    println!("  control-room token:  {control_token}");
    println!("  site token (LEI):    {site_token}");
    println!("  partitions:          {}", describe(&shares));
    println!(
        "  MQTT listeners:      {}",
        mqtt_ports
            .iter()
            .map(|p| format!("mqtt://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for id in SUPPLIERS {
        println!(
            "  supplier {id:<9}   MQTT username {id} password {} (a RabbitMQ user: scripts/cluster.sh supplier)",
            passwords[id]
        );
    }
    println!(
        "  store:               {} (dropped and re-created at start)",
        d.database_url
    );
    println!(
        "The day starts at 08:00 (fix times are real time); the vans ({}1…, {}2…, {}3…) publish a third to each MQTT listener.",
        d.prefix, d.prefix, d.prefix
    );
    if nodes.len() > 1 {
        let last = &nodes[nodes.len() - 1];
        println!("Failover: kill a node and watch the others take its partitions:");
        println!("  kill -9 {}", first.pid());
        println!(
            "  curl -s -H 'Authorization: Bearer {control_token}' http://{}/api/cluster",
            last.http
        );
        println!(
            "  restart it: {} serve --config {}",
            exe.display(),
            first.config.display()
        );
    }
    println!("Press Ctrl-C to stop.");

    // The fleets: moves registered through the nodes in turn.
    let sites = std::sync::Arc::new(sites);
    let mut fleets = tokio::task::JoinSet::new();
    for (g, mut run) in runs.into_iter().enumerate() {
        let node = &nodes[g % nodes.len()];
        run.api = Some(node.http.to_string());
        run.token = Some(control_token.clone());
        let sites = sites.clone();
        fleets.spawn(async move {
            let port = match &run.transport {
                simulator::Transport::Mqtt { port, .. } => *port,
                simulator::Transport::Http { .. } => 0,
            };
            (port, simulator::run_day(run, &sites).await)
        });
    }
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let stop = crate::stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            signal = &mut stop => {
                println!("{}: stopping the engine nodes", signal?);
                break;
            }
            Some(done) = fleets.join_next() => match done {
                Ok((port, Ok(_))) => println!("the fleet on MQTT port {port} finished"),
                Ok((port, Err(e))) => println!("the fleet on MQTT port {port} stopped: {e}"),
                Err(e) => println!("a fleet task failed: {e}"),
            },
            _ = tick.tick() => {
                for node in &mut nodes {
                    if node.exited {
                        continue;
                    }
                    if let Ok(Some(status)) = node.child.try_wait() {
                        node.exited = true;
                        println!(
                            "engine node {} (pid {}) exited ({status}); the other nodes take its partitions over. Restart it: {} serve --config {}",
                            node.id,
                            node.pid(),
                            exe.display(),
                            node.config.display()
                        );
                    }
                }
            }
        }
    }
    fleets.abort_all();
    tokio::task::spawn_blocking(move || {
        for node in &mut nodes {
            node.stop(Duration::from_secs(20));
        }
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_demo_database_url_names_a_database_of_its_own() {
        assert_eq!(
            super::split_database_url("postgres://postgres@127.0.0.1:5432/movewatch_demo").unwrap(),
            (
                "postgres://postgres@127.0.0.1:5432/postgres".to_owned(),
                "movewatch_demo".to_owned()
            )
        );
        for bad in [
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgres://postgres@127.0.0.1:5432/",
            "postgres://h/x;drop",
            "sqlite://data/x.db",
        ] {
            assert!(super::split_database_url(bad).is_err(), "{bad}");
        }
    }
}
