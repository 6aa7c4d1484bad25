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
    /// A site named in the run's settings is not among the sites.
    #[error("no site {0:?} among the sites")]
    UnknownSite(String),
    /// The run's settings do not work together.
    #[error("{0}")]
    Config(String),
    /// The broker refused the simulator, or never answered, or went away for good.
    #[error("{0}")]
    Broker(String),
    /// The engine's HTTP side refused the simulator, or never answered.
    #[error("{0}")]
    Engine(String),
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

/// A simple real-time fleet's settings (no moves registered; `movewatch demo`
/// now runs [`run_day`] itself, with moves).
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
            registration_prefix: None,
            focus_site: None,
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

const LETTERS: &[u8] = b"ABCDEFGHJKLMNOPRSTUVWXYZ";

/// The registrations of a run's vans, in the UK's current style (`AB12CDE`:
/// two letters, two digits, three letters), or starting with a chosen prefix.
///
/// Van `n` gets plate number `base + n` of the space of plates the prefix
/// leaves, scrambled by a fixed bijection so neighbours do not look
/// sequential: a run's plates are all different, and two runs clash only if
/// their blocks of `base .. base + vans` overlap. `base` comes from the
/// run's seed and start time ([`Registrations::for_run`]), so runs with other
/// seeds or at other times use other plates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registrations {
    prefix: String,
    base: u64,
}

/// A registration prefix that cannot lead a plate.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "a registration prefix is 0 to 4 characters of A-Z and 0-9 (spaces are removed), got {0:?}"
)]
pub struct BadPrefix(pub String);

impl Registrations {
    /// The longest prefix (what is left still numbers 13,824 plates).
    pub const MAX_PREFIX: usize = 4;

    /// Plates starting with `prefix` (upper-cased, spaces removed; may be
    /// empty), numbered from the one `key` picks.
    pub fn new(prefix: &str, key: u64) -> Result<Registrations, BadPrefix> {
        let p: String = prefix
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_uppercase();
        if p.len() > Self::MAX_PREFIX || !p.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(BadPrefix(prefix.to_owned()));
        }
        let mut r = Registrations { prefix: p, base: 0 };
        r.base = mix(key) % r.space();
        Ok(r)
    }

    /// The plates of a run: from its seed and start time (and a prefix).
    pub fn for_run(
        prefix: Option<&str>,
        seed: u64,
        start: chrono::DateTime<chrono::Utc>,
    ) -> Result<Registrations, BadPrefix> {
        let key = seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(start.timestamp_millis() as u64);
        Registrations::new(prefix.unwrap_or(""), key)
    }

    /// The prefix every plate starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How many different plates the prefix leaves.
    pub fn space(&self) -> u64 {
        PATTERN[self.prefix.len()..]
            .iter()
            .map(|&digit| if digit { 10 } else { LETTERS.len() as u64 })
            .product()
    }

    /// Van `n`'s registration.
    pub fn get(&self, n: usize) -> VehicleId {
        let space = self.space();
        let mut k = scramble((self.base + n as u64) % space, space);
        let mut tail = Vec::new();
        for &digit in PATTERN[self.prefix.len()..].iter().rev() {
            let radix = if digit { 10 } else { LETTERS.len() as u64 };
            let d = (k % radix) as usize;
            k /= radix;
            tail.push(if digit {
                (b'0' + d as u8) as char
            } else {
                LETTERS[d] as char
            });
        }
        let reg: String = self.prefix.chars().chain(tail.into_iter().rev()).collect();
        VehicleId::parse(&reg).unwrap_or_else(|_| unreachable!("plates are 7 of A-Z0-9"))
    }
}

/// The plate pattern: `true` for a digit, `false` for a letter (`AB12CDE`).
const PATTERN: [bool; 7] = [false, false, true, true, false, false, false];

/// A bijection of `0..space` (multiplication by a unit modulo `space`).
fn scramble(k: u64, space: u64) -> u64 {
    // 2654435761 is prime and so coprime to a plate space (a product of 2s,
    // 3s and 5s): multiplying by it permutes 0..space, and spreads neighbours.
    ((k as u128 * 2_654_435_761) % space as u128) as u64
}

/// SplitMix64's finaliser: spreads nearby keys over the whole range.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plates_are_valid_unique_in_a_run_and_differ_between_runs() {
        let t0: chrono::DateTime<chrono::Utc> = "2026-11-21T06:30:00Z".parse().unwrap();
        let a = Registrations::for_run(None, 1, t0).unwrap();
        let plates: Vec<String> = (0..5000).map(|n| a.get(n).to_string()).collect();
        let unique: std::collections::HashSet<&String> = plates.iter().collect();
        assert_eq!(unique.len(), plates.len(), "unique within a run");
        for p in &plates {
            let b = p.as_bytes();
            assert_eq!(b.len(), 7, "{p}");
            assert!(b[..2].iter().all(u8::is_ascii_uppercase), "{p}");
            assert!(b[2..4].iter().all(u8::is_ascii_digit), "{p}");
            assert!(b[4..].iter().all(u8::is_ascii_uppercase), "{p}");
        }
        // Another seed, or the same seed a second later: other plates.
        for other in [
            Registrations::for_run(None, 2, t0).unwrap(),
            Registrations::for_run(None, 1, t0 + chrono::Duration::seconds(1)).unwrap(),
        ] {
            let theirs: std::collections::HashSet<String> =
                (0..5000).map(|n| other.get(n).to_string()).collect();
            assert!(theirs.is_disjoint(&unique.iter().map(|s| (*s).clone()).collect()));
        }
        // The same seed and start: the same plates.
        assert_eq!(
            Registrations::for_run(None, 1, t0).unwrap().get(17),
            a.get(17)
        );
    }

    #[test]
    fn a_prefix_leads_every_plate() {
        let r = Registrations::new("sm", 99).unwrap();
        assert_eq!(r.space(), 100 * 24 * 24 * 24);
        let plates: std::collections::HashSet<String> =
            (0..2000).map(|n| r.get(n).to_string()).collect();
        assert_eq!(plates.len(), 2000);
        assert!(plates.iter().all(|p| p.starts_with("SM") && p.len() == 7));
        assert!(
            Registrations::new("AB C1", 1)
                .unwrap()
                .get(0)
                .as_str()
                .starts_with("ABC1")
        );
        for bad in ["ABCDE", "A-B", "ÄB"] {
            assert!(Registrations::new(bad, 1).is_err(), "{bad}");
        }
    }
}
