//! `movewatch serve | demo | replay | simulate`.

mod demo_cluster;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use model::config::{Config, RoleName, SupplierConfig, TokenConfig, parse_mqtt_url};
use movewatch::replay::{Replay, ReplayConfig};
use movewatch::{Engine, random_token};

#[derive(Parser)]
#[command(
    name = "movewatch",
    version,
    about = "Real-time GPS tracking for prisoner escort vans"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure the ETA model on simulated journeys (issue #6; run with --release).
    EvalEta {
        /// Days the model learns on.
        #[arg(long, default_value_t = 20)]
        train_days: u32,
        /// Days it is measured on.
        #[arg(long, default_value_t = 10)]
        test_days: u32,
        /// Journeys per day.
        #[arg(long, default_value_t = 80)]
        trips_per_day: u32,
        /// Seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Run the engine from a TOML config (every key defaults as in the contract).
    Serve {
        /// The config file; without it, the contract's defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Use an external broker (`mqtt://host:port`) instead of the embedded one.
        #[arg(long)]
        mqtt_url: Option<String>,
        /// Use this store instead of the config's (`postgres://…` or `sqlite://…`).
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Run everything on the defaults with a simulated fleet, and print the page address.
    Demo {
        /// Vans in the simulated fleet.
        #[arg(long, default_value_t = 50)]
        vehicles: usize,
        /// HTTP and WebSocket address (a taken port is replaced by a free one; port 0 picks one).
        #[arg(long, default_value = "127.0.0.1:8080")]
        http_listen: SocketAddr,
        /// Embedded broker address (a taken port is replaced by a free one; port 0 picks one).
        #[arg(long, default_value = "127.0.0.1:1883")]
        mqtt_listen: SocketAddr,
        /// Where the embedded store lives.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// Seconds between each van's fixes.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Run engine nodes (child processes) on the local RabbitMQ cluster
        /// (`bash scripts/cluster.sh up` first) and PostgreSQL instead.
        #[arg(long)]
        cluster: bool,
        /// With --cluster: how many engine nodes (n1 on --http-listen, n2 on the next port, ...).
        #[arg(long, default_value_t = 2, requires = "cluster")]
        nodes: usize,
        /// With --cluster: the cluster's base port (broker node N: AMQP base+N, MQTT base+10+N),
        /// as MW_CLUSTER_BASE_PORT for scripts/cluster.sh.
        #[arg(long, default_value_t = 5800, requires = "cluster")]
        cluster_base_port: u16,
        /// With --cluster: the nodes' shared database, dropped and re-created at start.
        #[arg(
            long,
            default_value = "postgres://postgres@127.0.0.1:5432/movewatch_demo",
            requires = "cluster"
        )]
        database_url: String,
    },
    /// Stream stored history through the gateway as if it were live (incident review).
    Replay {
        /// First fix time to replay, RFC 3339 (e.g. 2026-11-21T09:00:00Z).
        #[arg(long, value_parser = parse_time)]
        from: DateTime<Utc>,
        /// Last fix time to replay, RFC 3339.
        #[arg(long, value_parser = parse_time)]
        to: DateTime<Utc>,
        /// Speed-up over the original timing (10: ten minutes of history per minute).
        #[arg(long, default_value_t = 10.0)]
        speed: f64,
        /// The config file (store, sites, tokens, `[http] listen`); without it, the defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Read this store instead of the config's (`postgres://…` or `sqlite://…`).
        #[arg(long)]
        database_url: Option<String>,
        /// Listen here instead of the config's `[http] listen`.
        #[arg(long)]
        http_listen: Option<SocketAddr>,
        /// Wait this long for a first WebSocket client before starting (0s: start at once).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Drive a seeded, realistic day of vans between real sites against an
    /// engine, with faults at chosen rates, ground truth and a load report.
    Simulate(Box<SimulateArgs>),
}

/// `movewatch simulate` (issue #8). Durations are simulated time.
#[derive(clap::Args)]
struct SimulateArgs {
    /// How many vans.
    #[arg(long, default_value_t = 100)]
    vehicles: usize,
    /// Time between a van's fixes (e.g. 10s, 1s).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Simulated span (e.g. 120s, 10h).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Simulated seconds per wall second (60: an hour a minute). Default: real time.
    #[arg(long, conflicts_with = "load")]
    speed: Option<f64>,
    /// Send as fast as the path takes it (load mode).
    #[arg(long)]
    load: bool,
    /// UTC of the first fix (RFC 3339). Default: now in real time, else now − duration.
    #[arg(long, value_parser = parse_time)]
    start: Option<DateTime<Utc>>,
    /// Time of day in the planned day at the first fix (HH:MM).
    #[arg(long, default_value = "06:30", value_parser = parse_hhmm)]
    day_start: f64,
    /// Seed: the same seed (and --start) gives the same day.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Sites CSV to drive between.
    #[arg(long, default_value = "data/sites.csv")]
    sites: PathBuf,
    /// The broker.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    mqtt_url: String,
    /// Broker passwords as supplier=password (for brokers that check them).
    #[arg(long = "password", value_parser = parse_key_value)]
    passwords: Vec<(String, String)>,
    /// MQTT connections per supplier (vans share them round-robin).
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Post points to `POST /tracks` instead of MQTT (events are not sent then).
    #[arg(long)]
    http: bool,
    /// API keys for --http as supplier=key.
    #[arg(long = "api-key", value_parser = parse_key_value)]
    api_keys: Vec<(String, String)>,
    /// The engine's HTTP address (moves, WebSocket, /tracks).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http_url: String,
    /// A control-room token: moves are registered and the WebSocket measured with it.
    #[arg(long)]
    token: Option<String>,
    /// Do not register the day's moves with PUT /api/moves/{id}.
    #[arg(long)]
    no_moves: bool,
    /// Write the ground truth (JSON lines) here.
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Measure: WebSocket latency per point (needs --token) and loss.
    #[arg(long)]
    report: bool,
    /// Write the report as JSON here (implies --report).
    #[arg(long)]
    report_json: Option<PathBuf>,
    /// Write latency over time as SVG here (implies --report).
    #[arg(long)]
    report_svg: Option<PathBuf>,
    /// Check loss against this store (sqlite://… or postgres://…), by tracking id.
    #[arg(long)]
    database_url: Option<String>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// A preset of moderate fault rates (each flag below overrides it).
    #[arg(long)]
    faults: bool,
    /// No GPS noise.
    #[arg(long)]
    no_noise: bool,
    /// Per fix: a bad fix (hdop 12–25, ~150 m off).
    #[arg(long)]
    bad_fix_rate: Option<f64>,
    /// Per fix: a 1–5 min signal gap starts, then a store-and-forward array.
    #[arg(long)]
    gap_rate: Option<f64>,
    /// Per fix: the message is sent twice.
    #[arg(long)]
    duplicate_rate: Option<f64>,
    /// Per fix: held back and sent after the next fix.
    #[arg(long)]
    reorder_rate: Option<f64>,
    /// Of vans: device clock off by up to ±120 s.
    #[arg(long)]
    skew_rate: Option<f64>,
    /// Per fix: an extra malformed payload.
    #[arg(long)]
    malformed_rate: Option<f64>,
    /// Reasons the malformed payloads cycle through (comma-separated; default:
    /// all but unknown_supplier, which needs an engine with suppliers and an open broker).
    #[arg(long, value_delimiter = ',')]
    malformed_reasons: Vec<String>,
    /// Of vans: the device goes silent for good.
    #[arg(long)]
    silent_rate: Option<f64>,
    /// Of vans carrying a move: one breakdown (PersonMoveVehicleBrokeDown).
    #[arg(long)]
    breakdown_rate: Option<f64>,
    /// Every van's registration starts with this (0–4 of A-Z, 0-9); the rest
    /// comes from the seed and the start time, so runs do not share plates.
    #[arg(long)]
    registration_prefix: Option<String>,
    /// A site (id) several moves go to, some on the road at the first fix.
    #[arg(long)]
    focus_site: Option<String>,
}

fn parse_hhmm(s: &str) -> Result<f64, String> {
    let (h, m) = s
        .split_once(':')
        .ok_or_else(|| format!("expected HH:MM, got {s:?}"))?;
    let (h, m): (f64, f64) = (
        h.parse().map_err(|_| format!("bad hour in {s:?}"))?,
        m.parse().map_err(|_| format!("bad minute in {s:?}"))?,
    );
    Ok(h * 3600.0 + m * 60.0)
}

async fn simulate(a: SimulateArgs) -> anyhow::Result<()> {
    use simulator::emit::FaultConfig;
    let sites = model::site::load_sites_csv(&a.sites)?;
    let preset = |rate: f64| if a.faults { rate } else { 0.0 };
    let reasons = if a.malformed_reasons.is_empty() {
        FaultConfig::mqtt_reasons()
    } else {
        a.malformed_reasons
            .iter()
            .map(|r| {
                model::Reason::parse(r.trim())
                    .ok_or_else(|| anyhow::anyhow!("unknown rejection reason {r:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let faults = FaultConfig {
        noise: !a.no_noise,
        bad_fix_rate: a.bad_fix_rate.unwrap_or(preset(0.002)),
        gap_rate: a.gap_rate.unwrap_or(preset(0.001)),
        duplicate_rate: a.duplicate_rate.unwrap_or(preset(0.002)),
        reorder_rate: a.reorder_rate.unwrap_or(preset(0.002)),
        skew_rate: a.skew_rate.unwrap_or(preset(0.05)),
        malformed_rate: a.malformed_rate.unwrap_or(preset(0.001)),
        malformed_reasons: reasons,
        silent_rate: a.silent_rate.unwrap_or(preset(0.01)),
        breakdown_rate: a.breakdown_rate.unwrap_or(preset(0.01)),
    };
    let api = simulator::http::parse_http_url(&a.http_url)?;
    let transport = if a.http {
        simulator::Transport::Http {
            addr: api.clone(),
            keys: a.api_keys.into_iter().collect(),
            connections: a.connections.clamp(1, 64),
        }
    } else {
        let (host, port) = parse_mqtt_url(&a.mqtt_url).map_err(anyhow::Error::msg)?;
        simulator::Transport::Mqtt {
            host,
            port,
            passwords: a.passwords.into_iter().collect(),
            connections: a.connections,
        }
    };
    let measure = a.report || a.report_json.is_some() || a.report_svg.is_some();
    if measure && a.token.is_none() {
        anyhow::bail!("--report needs --token (a control-room token) to watch the WebSocket");
    }
    let pace = match (a.load, a.speed) {
        (true, _) => simulator::Pace::Load,
        (false, Some(x)) => simulator::Pace::Speed(x),
        (false, None) => simulator::Pace::RealTime,
    };
    eprintln!(
        "simulating {} vans, a fix every {} for {} (simulated), {:?}, seed {}",
        a.vehicles,
        humantime::format_duration(a.interval),
        humantime::format_duration(a.duration),
        pace,
        a.seed
    );
    let summary = simulator::run_day(
        simulator::RunConfig {
            vehicles: a.vehicles,
            seed: a.seed,
            interval: a.interval,
            duration: Some(a.duration),
            pace,
            start: a.start,
            day_start_s: a.day_start,
            transport,
            api: Some(api),
            token: a.token,
            faults,
            truth: a.truth.clone(),
            register_moves: !a.no_moves,
            measure,
            database_url: a.database_url,
            progress: !a.quiet,
            registration_prefix: a.registration_prefix.clone(),
            focus_site: a.focus_site.clone(),
        },
        &sites,
    )
    .await?;
    println!(
        "sent {} points, {} events, {} {} from {} vans {} .. {} ({} .. {})",
        summary.points,
        summary.events,
        summary.messages,
        if summary.transport == "http" {
            "POST /tracks elements"
        } else {
            "MQTT messages"
        },
        a.vehicles,
        summary.registrations.0,
        summary.registrations.1,
        model::format_ts(&summary.span.0),
        model::format_ts(&summary.span.1)
    );
    match &summary.moves_registered {
        Some(Ok(n)) => println!("moves registered: {n}"),
        Some(Err(why)) => println!("moves not registered: {why}"),
        None => {}
    }
    if !summary.expected_dead_letters.is_empty() {
        println!("expected dead letters: {:?}", summary.expected_dead_letters);
    }
    match (&summary.rejections, &summary.rejections_unchecked) {
        (Some(r), _) => {
            println!("rejections:\n{}", r.table().trim_end());
            for w in r.warnings() {
                eprintln!("warning: {w}");
            }
        }
        (None, Some(why)) => println!("rejections not checked: {why}"),
        (None, None) => {}
    }
    if let Some(t) = &a.truth {
        println!("ground truth: {}", t.display());
    }
    if let Some(report) = &summary.report {
        println!("load report:\n{}", report.table());
        if let Some(p) = &a.report_json {
            report.write_json(p)?;
            println!("report JSON: {}", p.display());
        }
        if let Some(p) = &a.report_svg {
            report.write_svg(p)?;
            println!("latency plot: {}", p.display());
        }
    }
    Ok(())
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("expected an RFC 3339 time such as 2026-11-21T09:00:00Z: {e}"))
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected supplier=password, got {s:?}"))
}

fn main() -> std::process::ExitCode {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=warn,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a log
        // file, a pipe or journald.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", error_report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `Error: …` and then each cause not already said: many errors (config,
/// store, I/O) put their source's text in their own message, and anyhow's
/// default report would print it a second time under "Caused by". No
/// backtrace: this is for the operator, not a developer.
fn error_report(e: &anyhow::Error) -> String {
    let mut said = e.to_string();
    let mut out = format!("Error: {said}");
    let mut causes = Vec::new();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if text.is_empty() || said.contains(&text) {
            continue;
        }
        said.push('\n');
        said.push_str(&text);
        causes.push(text);
    }
    match causes.as_slice() {
        [] => {}
        [one] => out.push_str(&format!("\n\nCaused by:\n    {one}")),
        many => {
            out.push_str("\n\nCaused by:");
            for (i, c) in many.iter().enumerate() {
                out.push_str(&format!("\n    {i}: {c}"));
            }
        }
    }
    out
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::EvalEta {
            train_days,
            test_days,
            trips_per_day,
            seed,
        } => movewatch::eta_eval::run(movewatch::eta_eval::EvalConfig {
            train_days,
            test_days,
            trips_per_day,
            seed,
        }),
        Command::Serve {
            config,
            mqtt_url,
            database_url,
        } => serve(config, mqtt_url, database_url).await,
        Command::Demo {
            vehicles,
            http_listen,
            mqtt_listen,
            data_dir,
            interval,
            cluster: false,
            ..
        } => demo(vehicles, http_listen, mqtt_listen, data_dir, interval).await,
        Command::Demo {
            vehicles,
            http_listen,
            data_dir,
            interval,
            cluster: true,
            nodes,
            cluster_base_port,
            database_url,
            ..
        } => {
            demo_cluster::run(demo_cluster::ClusterDemo {
                vehicles,
                nodes,
                http_listen,
                base_port: cluster_base_port,
                database_url,
                data_dir,
                interval,
                day_start_s: DEMO_DAY_START_S,
                prefix: DEMO_PREFIX,
            })
            .await
        }
        Command::Replay {
            from,
            to,
            speed,
            config,
            database_url,
            http_listen,
            wait,
        } => replay(from, to, speed, config, database_url, http_listen, wait).await,
        Command::Simulate(args) => simulate(*args).await,
    }
}

async fn serve(
    config_path: Option<PathBuf>,
    mqtt_url: Option<String>,
    database_url: Option<String>,
) -> anyhow::Result<()> {
    let mut config = match &config_path {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if mqtt_url.is_some() {
        config.mqtt.url = mqtt_url;
    }
    if let Some(url) = database_url {
        config.store.url = url;
    }
    config.validate()?;
    let engine = Engine::start(config).await?;
    match &engine.cluster_node {
        Some(node) => println!(
            "movewatch node {node} serving on http://{} (devices publish to the RabbitMQ cluster's MQTT listeners)",
            engine.http_addr
        ),
        None => println!(
            "movewatch serving on http://{} (MQTT {}:{})",
            engine.http_addr, engine.mqtt_addr.0, engine.mqtt_addr.1
        ),
    }
    let lost = engine.cluster_lost();
    let lost_broker = tokio::select! {
        signal = stop_signal() => {
            eprintln!("movewatch: {}: shutting down gracefully (a second signal exits at once)", signal?);
            false
        }
        () = lost => {
            eprintln!("movewatch: lost the RabbitMQ cluster for {} s: the other nodes take this node's partitions; stopping so that a supervisor restarts it (on another broker node: list several in [cluster] amqp_url)", movewatch::CLUSTER_LOST_AFTER.as_secs());
            true
        }
    };
    let report = tokio::select! {
        report = engine.shutdown() => report,
        second = stop_signal() => {
            anyhow::bail!("movewatch: {}: exiting without finishing the shutdown", second?);
        }
    };
    eprintln!("movewatch: {report}");
    if lost_broker {
        anyhow::bail!("stopped: this node lost its RabbitMQ cluster");
    }
    if !report.is_clean() {
        anyhow::bail!(
            "the shutdown did not finish within {} s: {}; unacknowledged messages will be redelivered",
            report.bound.as_secs(),
            report.unfinished.join(", ")
        );
    }
    Ok(())
}

/// Waits for SIGTERM or SIGINT (Ctrl-C) and names it.
async fn stop_signal() -> anyhow::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C").map(|()| "SIGINT"),
            _ = term.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")
            .map(|()| "Ctrl-C")
    }
}

async fn replay(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    speed: f64,
    config_path: Option<PathBuf>,
    database_url: Option<String>,
    http_listen: Option<SocketAddr>,
    wait: Duration,
) -> anyhow::Result<()> {
    let mut config = match &config_path {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(url) = database_url {
        config.store.url = url;
    }
    if let Some(addr) = http_listen {
        config.http.listen = addr;
    }
    config.validate()?;
    let replay = Replay::start(
        &config,
        ReplayConfig {
            from,
            to,
            speed,
            progress_every: Duration::from_secs(5),
        },
    )
    .await?;
    println!(
        "movewatch replay of {} .. {} at {speed}x from {}",
        model::format_ts(&from),
        model::format_ts(&to),
        config.store.url
    );
    println!(
        "  fleet page:          http://{}/?token={}",
        replay.http_addr, replay.token
    );
    println!("  control-room token:  {}", replay.token);
    if !wait.is_zero() {
        println!(
            "waiting up to {} for a first WebSocket client (--wait 0s starts at once)",
            humantime::format_duration(wait)
        );
        let deadline = tokio::time::Instant::now() + wait;
        while replay.clients() == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let the client subscribe and take its snapshot.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let done = tokio::select! {
        r = replay.run(|p| {
            println!(
                "  {}  {} points sent  ({} s)",
                model::format_ts(&p.simulated),
                p.points,
                p.elapsed.as_secs()
            );
        }) => r?,
        r = tokio::signal::ctrl_c() => {
            r.context("waiting for Ctrl-C")?;
            println!("replay interrupted");
            return Ok(());
        }
    };
    println!(
        "replay finished: {} points up to {} in {:.1} s",
        done.points,
        model::format_ts(&done.simulated),
        done.elapsed.as_secs_f64()
    );
    Ok(())
}

/// A taken port becomes a free one on the same IP, and port 0 a chosen one, saying so.
fn usable_addr(wanted: SocketAddr, what: &str) -> anyhow::Result<SocketAddr> {
    if wanted.port() != 0 && ingest::broker::port_is_free(wanted) {
        return Ok(wanted);
    }
    let free = ingest::broker::free_port(wanted.ip())?;
    if wanted.port() != 0 {
        let who = if what == "MQTT" {
            "another MQTT broker may be running"
        } else {
            "another web server may be running"
        };
        println!(
            "{what} port {} is taken ({who}); using {free} instead",
            wanted.port()
        );
    }
    Ok(free)
}

/// A demo's simulated fleet of `vehicles` vans: in real time, with GPS
/// noise, registering its day's moves, planned around Leeds (LEI); over
/// MQTT to `broker` (host, port, the suppliers' passwords), with plates
/// starting `prefix`.
fn demo_fleet(
    vehicles: usize,
    seed: u64,
    interval: std::time::Duration,
    day_start_s: f64,
    broker: (String, u16, std::collections::HashMap<String, String>),
    prefix: String,
) -> simulator::RunConfig {
    let (host, port, passwords) = broker;
    simulator::RunConfig {
        vehicles,
        seed,
        interval,
        duration: None,
        pace: simulator::Pace::RealTime,
        start: None,
        day_start_s,
        transport: simulator::Transport::Mqtt {
            host,
            port,
            passwords,
            connections: vehicles.div_ceil(100).max(1),
        },
        api: None,
        token: None,
        faults: simulator::emit::FaultConfig {
            noise: true,
            ..Default::default()
        },
        truth: None,
        register_moves: true,
        measure: false,
        database_url: None,
        progress: false,
        registration_prefix: Some(prefix),
        focus_site: Some("LEI".into()),
    }
}

/// The demo's day: it starts at 08:00 in the planned day, when the morning's
/// court runs and transfers are on the road (the vans left from 06:30).
const DEMO_DAY_START_S: f64 = 8.0 * 3600.0;
/// The demo fleet's registrations start with this, and the `simulate` line it
/// prints uses [`SIMULATE_PREFIX`]: the two can never share a vehicle.
const DEMO_PREFIX: &str = "DM";
const SIMULATE_PREFIX: &str = "SM";

async fn demo(
    vehicles: usize,
    http_listen: SocketAddr,
    mqtt_listen: SocketAddr,
    data_dir: PathBuf,
    interval: Duration,
) -> anyhow::Result<()> {
    let mut config = Config::default();
    config.mqtt.listen = usable_addr(mqtt_listen, "MQTT")?;
    config.http.listen = usable_addr(http_listen, "HTTP")?;
    // Each demo starts from an empty store: moves and vans of an earlier demo
    // would sit on the boards with nobody driving them.
    let db = data_dir.join("movewatch-demo.db");
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.clone().into_os_string();
        path.push(suffix);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot reset the demo store {path:?}"));
            }
        }
    }
    config.store.url = format!("sqlite://{}", db.display());
    // The demo's vans are nobody's until they report (development and demos only).
    config.fleet.claim_on_first_report = true;
    let mut passwords = HashMap::new();
    for id in ["geoamey", "serco"] {
        let password = random_token(24);
        passwords.insert(id.to_owned(), password.clone());
        config.suppliers.push(SupplierConfig {
            id: id.parse()?,
            api_key: Some(random_token(32)),
            mqtt_password: Some(password),
        });
    }
    let control_token = random_token(32);
    config.tokens.push(TokenConfig {
        token: control_token.clone(),
        role: RoleName::ControlRoom,
        sites: vec![],
        supplier: None,
    });
    // A site token for HMP Leeds's incoming board.
    let site_token = random_token(32);
    config.tokens.push(TokenConfig {
        token: site_token.clone(),
        role: RoleName::Site,
        sites: vec!["LEI".parse()?],
        supplier: None,
    });
    config.validate()?;

    let engine = Engine::start(config.clone()).await?;
    // The engine's own sites: loading them again here would warn twice about
    // a missing sites file.
    let sites: Vec<model::Site> = engine.sites.as_ref().clone();
    let http = engine.http_addr;
    let (mqtt_host, mqtt_port) = engine.mqtt_addr.clone();
    println!();
    println!(
        "movewatch demo is running: embedded broker, embedded store, {vehicles} simulated vans"
    );
    println!("  control room:        http://{http}/control?token={control_token}");
    println!("  control-room token:  {control_token}");
    println!("  HMP Leeds board:     http://{http}/site/LEI?token={site_token}");
    println!("  site token (LEI):    {site_token}");
    println!("  MQTT broker:         mqtt://{mqtt_host}:{mqtt_port}");
    for s in &config.suppliers {
        println!(
            "  supplier {:<9}   MQTT username {} password {}  POST /tracks key {}",
            s.id.as_str(),
            s.id.as_str(),
            s.mqtt_password.as_deref().unwrap_or(""),
            s.api_key.as_deref().unwrap_or("")
        );
    }
    println!(
        "  store:               {} (emptied at start)",
        config.store.url
    );
    println!(
        "The day starts at 08:00 (fix times are real time): the morning's vans are on the road, \
         several bound for HMP Leeds, the first due there within 5 minutes."
    );
    let exe = std::env::current_exe()
        .ok()
        .map(|p| p.display().to_string())
        .filter(|p| !p.contains(char::is_whitespace))
        .unwrap_or_else(|| "movewatch".into());
    let mut line = format!(
        "{exe} simulate --mqtt-url mqtt://{mqtt_host}:{mqtt_port} --http-url http://{http} \
         --token {control_token}"
    );
    for s in &config.suppliers {
        if let Some(pw) = &s.mqtt_password {
            line.push_str(&format!(" --password {}={pw}", s.id.as_str()));
        }
    }
    line.push_str(&format!(
        " --registration-prefix {SIMULATE_PREFIX} --seed 7 --vehicles 20 --interval 5s \
         --duration 15m --day-start 08:00"
    ));
    println!(
        "A second simulated fleet for this demo (another terminal; its vans are {SIMULATE_PREFIX}…, the demo's {DEMO_PREFIX}…):"
    );
    println!("  {line}");
    println!("Press Ctrl-C to stop.");

    let run = simulator::RunConfig {
        api: Some(http.to_string()),
        token: Some(control_token),
        ..demo_fleet(
            vehicles,
            2026,
            interval,
            DEMO_DAY_START_S,
            (mqtt_host, mqtt_port, passwords),
            DEMO_PREFIX.into(),
        )
    };
    let simulation = tokio::spawn(async move { simulator::run_day(run, &sites).await });
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        r = simulation => { r??; }
    }
    engine.stop();
    Ok(())
}
