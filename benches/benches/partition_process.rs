//! Cost per fix (issue #12): one engine partition's synchronous core,
//! `engine::Partition::process`, on realistic batches, on one core.
//!
//! The world: the shipped sites (`data/sites.csv`, their fences as the engine
//! loads them), a moves book with 1,000 booked moves between real sites 5–30
//! km apart, each with its planned van; each van waits at its move's origin,
//! drives a straight line to the destination at 60 km/h with a fix a second,
//! waits there and drives back, so fences (enter, exit), departures, ETA
//! estimates and arrivals all do work. Fixes are handed to `process` in the
//! order they would arrive (every van's fix for second t, then t + 1), as
//! batches of 1 point (single-point messages) and of 10 points (one van's
//! 10-point array, store-and-forward style, as P1 sends). Making the batch is
//! not timed. Throughput is fixes/s on one core (criterion runs on one
//! thread).
//!
//! `cargo bench -p movewatch-benches --bench partition_process`

use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use engine::Partition;
use model::{
    CommitToken, IngestBatch, JourneyId, MoveId, Position, Site, Source, SupplierId, VehicleId,
};
use tracker::moves::{JourneySpec, MoveBook, MoveSpec, MoveStatus, MovesConfig};

const SITES_CSV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/sites.csv");
const VANS: usize = 1000;
/// 60 km/h in m/s.
const SPEED_MS: f64 = 60.0 / 3.6;

/// One van's route and timing: waits `dwell` s at each end, drives between.
struct Van {
    vehicle: VehicleId,
    from: Site,
    to: Site,
    dwell: f64,
    drive: f64,
}

impl Van {
    /// Where the van is `t` s into the run, and its speed (km/h).
    fn at(&self, t: f64) -> (f64, f64, f64) {
        let cycle = 2.0 * (self.dwell + self.drive);
        let x = t.rem_euclid(cycle);
        // Out: dwell at origin, drive; back: dwell at destination, drive.
        let (f, moving) = if x < self.dwell {
            (0.0, false)
        } else if x < self.dwell + self.drive {
            ((x - self.dwell) / self.drive, true)
        } else if x < 2.0 * self.dwell + self.drive {
            (1.0, false)
        } else {
            (1.0 - (x - 2.0 * self.dwell - self.drive) / self.drive, true)
        };
        let lat = self.from.lat + (self.to.lat - self.from.lat) * f;
        let lon = self.from.lon + (self.to.lon - self.from.lon) * f;
        (lat, lon, if moving { 60.0 } else { 0.0 })
    }
}

/// The fixes to come (kept apart from the partition: the batch is made
/// outside the timed part).
struct Fixes {
    vans: Vec<Van>,
    supplier: SupplierId,
    t0: DateTime<Utc>,
    /// Next fix: van `next % VANS` at second `next / VANS`.
    next: usize,
}

fn world() -> (Partition, Fixes) {
    let text = std::fs::read_to_string(SITES_CSV).expect("data/sites.csv");
    let sites = model::site::parse_sites_csv(&text, "sites.csv").expect("sites");
    let fences = geofence::FenceSet::load(&[SITES_CSV]).expect("fences");
    let book = MoveBook::new(&sites, MovesConfig::default(), Default::default());
    let mut partition = Partition::new(
        0,
        1,
        Arc::new(tracker::Tracker::new(Default::default())),
        geofence::GeofenceEngine::new(fences, geofence::EngineConfig::default()),
        book,
    );
    // Fix times start two hours ago, so a long run's stay in the past.
    let t0 = Utc::now() - Duration::hours(2);
    let mut vans = Vec::with_capacity(VANS);
    // Every ordered pair of real sites 5–30 km apart; van k takes one spread
    // over them (some sites have no neighbour that close).
    let pairs: Vec<(&Site, &Site)> = sites
        .iter()
        .flat_map(|a| sites.iter().map(move |b| (a, b)))
        .filter(|(a, b)| {
            let m = tracker::haversine_m(a.lat, a.lon, b.lat, b.lon);
            (5_000.0..30_000.0).contains(&m)
        })
        .collect();
    for k in 0..VANS {
        let (from, to) = pairs[k * 7919 % pairs.len()];
        let dist = tracker::haversine_m(from.lat, from.lon, to.lat, to.lon);
        let vehicle = VehicleId::parse(&format!("PB{k:05}")).expect("vehicle");
        let spec = MoveSpec {
            id: MoveId::parse(&format!("bench-move-{k}")).expect("move id"),
            reference: format!("BENCH{k:05}"),
            from_location: from.id.clone(),
            to_location: to.id.clone(),
            date: t0.date_naive(),
            status: MoveStatus::Booked,
            journeys: vec![JourneySpec {
                id: JourneyId::parse(&format!("bench-journey-{k}")).expect("journey id"),
                from_location: from.id.clone(),
                to_location: to.id.clone(),
                vehicle: Some(vehicle),
            }],
        };
        drop(partition.book(spec, t0));
        vans.push(Van {
            vehicle,
            from: from.clone(),
            to: to.clone(),
            // Staggered, so departures and arrivals are spread over the run.
            dwell: 60.0 + (k % 120) as f64,
            drive: dist / SPEED_MS,
        });
    }
    let fixes = Fixes {
        vans,
        supplier: SupplierId::parse("geoamey").expect("supplier"),
        t0,
        next: 0,
    };
    (partition, fixes)
}

impl Fixes {
    fn position(&self, van: usize, second: usize) -> Position {
        let v = &self.vans[van];
        let (lat, lon, speed) = v.at(second as f64);
        let ts = self.t0 + Duration::seconds(second as i64);
        Position {
            speed_kmh: Some(speed),
            hdop: Some(1.0),
            ..Position::fix(
                self.supplier,
                v.vehicle,
                format!("{}-{second}", v.vehicle),
                ts,
                lat,
                lon,
            )
        }
    }

    /// The next batch of `size` points: single points round the vans, or
    /// one van's next `size` seconds.
    fn batch(&mut self, size: usize) -> IngestBatch {
        let positions = if size == 1 {
            let p = self.position(self.next % VANS, self.next / VANS);
            self.next += 1;
            vec![p]
        } else {
            // Van k's fixes for seconds [s, s + size): each van advances
            // `size` seconds per round of the vans.
            let (round, van) = (self.next / VANS, self.next % VANS);
            self.next += 1;
            (0..size)
                .map(|i| self.position(van, round * size + i))
                .collect()
        };
        IngestBatch {
            source: Source::Mqtt {
                topic: "movewatch/v1/geoamey/bench/positions".into(),
            },
            received: Instant::now(),
            received_at: Utc::now(),
            positions,
            events: vec![],
            dead_letters: vec![],
            transitions: vec![],
            derived: Default::default(),
            commit: CommitToken::detached(),
        }
    }
}

fn process(c: &mut Criterion) {
    let mut group = c.benchmark_group("partition_process");
    for size in [1usize, 10] {
        let (mut partition, mut w) = world();
        // What the timed batches caused, to show the work is real.
        let (fixes, transitions, outputs) = (Cell::new(0u64), Cell::new(0u64), Cell::new(0u64));
        group.throughput(Throughput::Elements(size as u64));
        group.bench_function(
            format!("batches of {size} (1,000 vans, 1,000 moves)"),
            |b| {
                b.iter_batched_ref(
                    || w.batch(size),
                    |batch| {
                        let effects = partition.process(batch);
                        fixes.set(fixes.get() + batch.positions.len() as u64);
                        transitions.set(transitions.get() + batch.transitions.len() as u64);
                        outputs.set(outputs.get() + effects.outputs.len() as u64);
                        effects
                    },
                    BatchSize::SmallInput,
                )
            },
        );
        let simulated = if size == 1 {
            w.next / VANS
        } else {
            w.next / VANS * size
        };
        eprintln!(
            "  batches of {size}: {} fixes processed ({simulated} s of driving per van), \
             {} fence crossings, {} move outputs (frames, saves, arrivals, alerts)",
            fixes.get(),
            transitions.get(),
            outputs.get()
        );
    }
    group.finish();
}

criterion_group!(benches, process);
criterion_main!(benches);
