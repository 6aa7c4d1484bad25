//! Fleet simulator: vans driving between real sites, publishing contract
//! points over MQTT with QoS 1.
//!
//! Routes bend like roads: between two sites the van follows a polyline
//! through a few waypoints pushed sideways off the straight line. Everything
//! is deterministic from the seed.

mod route;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use model::{MessageKind, Site, SupplierId, Topic, VehicleId};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, MqttOptions, QoS};

pub use route::{Route, Van};

/// A simulator failure.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Fewer than two sites to drive between.
    #[error("the simulator needs at least two sites, got {0}")]
    TooFewSites(usize),
    /// Publishing failed.
    #[error("MQTT publish: {0}")]
    Publish(#[from] rumqttc::ClientError),
}

/// What to simulate and where to send it.
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

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    /// Points published (and acknowledged by the broker's client queue).
    pub points: u64,
    /// Vans driven.
    pub vehicles: usize,
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

/// Builds the fleet: each van starts at a random site and drives to another.
pub fn build_fleet(sites: &[Site], vehicles: usize, seed: u64) -> Result<Vec<Van>, SimError> {
    if sites.len() < 2 {
        return Err(SimError::TooFewSites(sites.len()));
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    let sites: Arc<Vec<Site>> = Arc::new(sites.to_vec());
    Ok((0..vehicles)
        .map(|n| {
            let start = rng.random_range(0..sites.len());
            let supplier = supplier_for(sites[start].lat);
            Van::new(
                registration(n),
                supplier,
                sites.clone(),
                start,
                rng.random(),
            )
        })
        .collect())
}

/// Drives the fleet, publishing a fix per van per interval, until the duration ends.
pub async fn run(config: SimConfig, sites: &[Site]) -> Result<SimReport, SimError> {
    let mut fleet = build_fleet(sites, config.vehicles, config.seed)?;
    let published = Arc::new(AtomicU64::new(0));
    let per_conn = config.vans_per_connection.max(1);
    let mut groups: Vec<Vec<Van>> = Vec::new();
    while !fleet.is_empty() {
        let rest = fleet.split_off(per_conn.min(fleet.len()));
        groups.push(std::mem::replace(&mut fleet, rest));
    }
    let vehicles = config.vehicles;
    let mut tasks = Vec::new();
    for (i, vans) in groups.into_iter().enumerate() {
        let config = config.clone();
        let published = published.clone();
        tasks.push(tokio::spawn(async move {
            drive_group(i, vans, config, published).await
        }));
    }
    for t in tasks {
        match t.await {
            Ok(r) => r?,
            Err(e) => tracing::error!(error = %e, "simulator task failed"),
        }
    }
    Ok(SimReport {
        points: published.load(Ordering::Relaxed),
        vehicles,
    })
}

async fn drive_group(
    group: usize,
    mut vans: Vec<Van>,
    config: SimConfig,
    published: Arc<AtomicU64>,
) -> Result<(), SimError> {
    // One connection per supplier in the group, since brokers check the username against the topic.
    let mut clients: HashMap<SupplierId, AsyncClient> = HashMap::new();
    for supplier in vans
        .iter()
        .map(|v| v.supplier)
        .collect::<std::collections::BTreeSet<_>>()
    {
        let mut options = MqttOptions::new(
            format!("movewatch-sim-{}-{group}-{supplier}", config.seed),
            config.host.clone(),
            config.port,
        );
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_inflight(200);
        if let Some(pw) = config.passwords.get(supplier.as_str()) {
            options.set_credentials(supplier.as_str(), pw.clone());
        }
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        tokio::spawn(async move {
            loop {
                if let Err(e) = eventloop.poll().await {
                    tracing::warn!(error = %e, "simulator MQTT connection lost; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        });
        clients.insert(supplier, client);
    }
    let started = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if config.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        let now = Utc::now();
        for van in &mut vans {
            let point = van.step(config.interval.as_secs_f64(), now);
            let payload = serde_json::to_vec(&point.to_wire()).unwrap_or_default();
            let topic = Topic::format(&van.supplier, &van.vehicle, MessageKind::Positions);
            if let Some(client) = clients.get(&van.supplier) {
                client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await?;
                published.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    // Let queued publishes reach the broker before the connections drop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for client in clients.values() {
        let _ = client.disconnect().await;
    }
    Ok(())
}
