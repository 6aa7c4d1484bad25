//! Fleet simulator and load harness for movewatch.
//!
//! [`plan::plan_day`] plans a realistic, seeded day (depots, van types, court
//! runs, transfers, police pick-ups, multi-drops; routes that bend like roads
//! with urban, A-road and motorway speeds, traffic, service stops, queues at
//! prison gates). [`emit::Device`] turns each van's timeline into what its
//! device sends, with faults at chosen rates (GPS noise, gaps and
//! store-and-forward bursts, duplicates, reordering, clock skew, malformed
//! payloads of every rejection reason, silent devices, breakdowns) and the
//! ground truth of it all. [`run::run_day`] sends it over MQTT (QoS 1, many
//! connections) or `POST /tracks`, in real time, accelerated or as fast as the
//! path takes, registers the day's moves first, and measures the engine
//! ([`report`]): WebSocket latency, loss against the store, JSON and SVG.

pub mod emit;
pub mod http;
pub mod plan;
pub mod report;
mod route;
pub mod run;

use std::collections::HashMap;
use std::time::Duration;

use model::{Site, SupplierId, VehicleId};

pub use route::{Route, distance_m};
pub use run::{Pace, RunConfig, RunSummary, Transport, run_day};

/// A simulator failure.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Not enough sites of the kinds a day needs (prisons, courts, police stations).
    #[error(
        "the simulator needs at least two prisons, a court and a police station among {0} sites"
    )]
    TooFewSites(usize),
    /// Publishing failed.
    #[error("MQTT publish: {0}")]
    Publish(#[from] rumqttc::ClientError),
    /// The WebSocket subscriber failed.
    #[error("WebSocket: {0}")]
    WebSocket(String),
    /// Building the report failed.
    #[error("report: {0}")]
    Report(String),
    /// A file could not be written.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// The demo's simulator settings (kept for `movewatch demo`).
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// How many vans.
    pub vehicles: usize,
    /// Time between a van's fixes.
    pub interval: Duration,
    /// Stop after this long; `None` runs until the task is dropped.
    pub duration: Option<Duration>,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Password per supplier id, when the broker needs them.
    pub passwords: HashMap<String, String>,
    /// Seed for everything random.
    pub seed: u64,
    /// Vans per MQTT connection.
    pub vans_per_connection: usize,
}

/// What a demo run did.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    /// Points published.
    pub points: u64,
    /// Vans driven.
    pub vehicles: usize,
}

/// Drives the demo fleet in real time (a realistic day with GPS noise, no
/// other faults) until the duration ends.
pub async fn run(config: SimConfig, sites: &[Site]) -> Result<SimReport, SimError> {
    let summary = run_day(
        RunConfig {
            vehicles: config.vehicles,
            seed: config.seed,
            interval: config.interval,
            duration: config.duration,
            pace: Pace::RealTime,
            start: None,
            day_start_s: 6.5 * 3600.0,
            transport: Transport::Mqtt {
                host: config.host,
                port: config.port,
                passwords: config.passwords,
                connections: config
                    .vehicles
                    .div_ceil(config.vans_per_connection.max(1))
                    .div_ceil(2),
            },
            api: None,
            token: None,
            faults: emit::FaultConfig {
                noise: true,
                ..Default::default()
            },
            truth: None,
            register_moves: false,
            measure: false,
            database_url: None,
            progress: false,
        },
        sites,
    )
    .await?;
    Ok(SimReport {
        points: summary.points,
        vehicles: config.vehicles,
    })
}

/// A short random suffix for MQTT client ids (not seeded: ids must differ between runs).
pub(crate) fn random_suffix() -> String {
    use rand::Rng;
    let n: u32 = rand::rng().random();
    format!("{n:08x}")
}

/// The supplier of a van starting at this latitude: GEOAmey runs the North lot, Serco the South.
pub fn supplier_for(lat: f64) -> SupplierId {
    let id = if lat >= 52.6 { "geoamey" } else { "serco" };
    SupplierId::parse(id).unwrap_or_else(|_| unreachable!("constant supplier ids are valid"))
}

/// A deterministic registration for van `n`: two letters, two digits, three letters.
pub fn registration(n: usize) -> VehicleId {
    const L: &[u8] = b"ABCDEFGHJKLMNOPRSTUVWXYZ";
    let letter = |k: usize| L[k % L.len()] as char;
    let reg = format!(
        "{}{}{:02}{}{}{}",
        letter(n / 13_824 % 24),
        letter(n / 576 / 24 % 24 + 3),
        n % 100,
        letter(n / 100 % 24),
        letter(n / 2400 % 24),
        letter(n / 57_600 % 24)
    );
    VehicleId::parse(&reg).unwrap_or_else(|_| unreachable!("generated registrations are valid"))
}
