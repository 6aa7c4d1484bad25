//! `movewatch eval-eta`: the ETA accuracy harness (issue #6).
//!
//! Drives simulated journeys with known true arrival times through the real
//! [`MoveBook`] (booking, `JourneyStart`, the origin's exit, 30 s fixes, the
//! destination's enter), learning on the training days, then measures the
//! estimates made on the test days against the true arrivals, per horizon,
//! next to a naive baseline (straight line at 50 km/h). A day's journeys are
//! played together on one clock, so the model learns from a journey only
//! after it has arrived.
//!
//! The route model is synthetic and seeded: between real sites 10–150 km
//! apart, each route has its own circuity (1.15–1.45), an urban start and
//! end (2–6 km each), and A-road and motorway between (more motorway on
//! longer routes). Speeds: urban 28 km/h, A-road 65, motorway 95, scaled by
//! rush hours (07–09 and 16–18: ×0.7 urban, ×0.8 elsewhere), by the day
//! (weather, ±7 %), by the trip (driver, ±5 %); traffic lights on town
//! streets (40 % of urban 700 m stretches, 20–60 s); one trip in six meets a 3–12 minute jam
//! somewhere. The vehicle's way bends around the straight line, so the
//! straight-line distance left is not exactly proportional to the road left.

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Timelike, Utc};
use model::wire::MoveView;
use model::{
    Event, EventKind, FenceTransition, JourneyId, MoveId, Position, Site, SiteId, SupplierId,
    TransitionKind, VehicleId,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tracker::eta::{EtaModel, horizon_bucket};
use tracker::haversine_m;
use tracker::moves::{JourneySpec, MoveBook, MoveSpec, MoveStatus, MovesConfig};

/// What to simulate.
#[derive(Debug, Clone, Copy)]
pub struct EvalConfig {
    /// Days the model learns on.
    pub train_days: u32,
    /// Days it is measured on (it keeps learning, as in service).
    pub test_days: u32,
    /// Journeys per day.
    pub trips_per_day: u32,
    /// The seed.
    pub seed: u64,
}

/// Errors of one horizon bucket.
#[derive(Debug, Clone, Default)]
pub struct BucketResult {
    /// Estimates measured.
    pub n: usize,
    /// Absolute errors of the model, minutes.
    pub model: Vec<f64>,
    /// Absolute errors of the naive baseline, minutes.
    pub naive: Vec<f64>,
    /// Estimates whose interval held the true arrival.
    pub covered: usize,
    /// Signed errors of the model (estimate − truth), minutes.
    pub signed: Vec<f64>,
}

/// The whole evaluation.
#[derive(Debug, Clone, Default)]
pub struct EvalReport {
    /// 0–15, 15–30, 30–60, 60+ minutes before the true arrival.
    pub buckets: [BucketResult; 4],
    /// Journeys driven in training and in the test.
    pub trips: (u32, u32),
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

fn p90(v: &[f64]) -> f64 {
    tracker::eta::quantile(v, 0.9).unwrap_or(f64::NAN)
}

impl EvalReport {
    /// The Markdown table.
    pub fn table(&self) -> String {
        let names = ["0–15 min", "15–30 min", "30–60 min", "60+ min"];
        let mut s = String::from(
            "| horizon (true time to arrival) | estimates | mean error | MAE | P90 abs error | interval coverage | naive MAE | naive P90 |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        let mut all = BucketResult::default();
        for (name, b) in names.iter().zip(&self.buckets) {
            s.push_str(&row(name, b));
            all.n += b.n;
            all.model.extend_from_slice(&b.model);
            all.naive.extend_from_slice(&b.naive);
            all.covered += b.covered;
            all.signed.extend_from_slice(&b.signed);
        }
        s.push_str(&row("all", &all));
        s
    }
}

fn row(name: &str, b: &BucketResult) -> String {
    format!(
        "| {name} | {} | {:.2} min | {:.2} min | {:.2} min | {:.1} % | {:.2} min | {:.2} min |\n",
        b.n,
        mean(&b.signed),
        mean(&b.model),
        p90(&b.model),
        100.0 * b.covered as f64 / b.n.max(1) as f64,
        mean(&b.naive),
        p90(&b.naive),
    )
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Road {
    Urban,
    /// A-road.
    Rural,
    Motorway,
}

/// One route between two sites.
#[derive(Debug, Clone)]
struct Route {
    from: usize,
    to: usize,
    length_m: f64,
    /// (end of the stretch along the road, m, kind), in order.
    stretches: Vec<(f64, Road)>,
    bend: f64,
}

fn normal(rng: &mut SmallRng, sd: f64) -> f64 {
    let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
    sd * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn routes(sites: &[Site], rng: &mut SmallRng) -> Vec<Route> {
    let mut out = Vec::new();
    for (i, a) in sites.iter().enumerate() {
        for (j, b) in sites.iter().enumerate() {
            let direct = haversine_m(a.lat, a.lon, b.lat, b.lon);
            if i == j || !(10_000.0..=150_000.0).contains(&direct) {
                continue;
            }
            let length_m = direct * rng.random_range(1.15..1.45);
            let u1 = rng.random_range(2_000.0..6_000.0);
            let u2 = rng.random_range(2_000.0..6_000.0);
            let middle = (length_m - u1 - u2).max(0.0);
            let motorway_share = (middle / 120_000.0).min(0.8) * rng.random_range(0.5..1.0);
            let a_road = middle * (1.0 - motorway_share) / 2.0;
            let stretches = vec![
                (u1, Road::Urban),
                (u1 + a_road, Road::Rural),
                (u1 + a_road + middle * motorway_share, Road::Motorway),
                (u1 + middle, Road::Rural),
                (length_m, Road::Urban),
            ];
            out.push(Route {
                from: i,
                to: j,
                length_m,
                stretches,
                bend: rng.random_range(-0.05..0.05),
            });
        }
    }
    out
}

fn rush(hour: u32) -> bool {
    (7..9).contains(&hour) || (16..18).contains(&hour)
}

fn speed_kmh(road: Road, hour: u32) -> f64 {
    let (base, rush_factor) = match road {
        Road::Urban => (28.0, 0.7),
        Road::Rural => (65.0, 0.8),
        Road::Motorway => (95.0, 0.8),
    };
    if rush(hour) {
        base * rush_factor
    } else if !(6..21).contains(&hour) {
        base * 1.1
    } else {
        base
    }
}

/// Where the vehicle is after `s` metres of road.
fn place(route: &Route, sites: &[Site], s: f64) -> (f64, f64) {
    let (a, b) = (&sites[route.from], &sites[route.to]);
    let f = s / route.length_m;
    let g = (f + route.bend * (std::f64::consts::TAU * f).sin()).clamp(0.0, 1.0);
    // Sideways, so the way bends around the straight line.
    let side = 0.08 * (std::f64::consts::PI * f).sin() * route.bend.signum();
    let (dlat, dlon) = (b.lat - a.lat, b.lon - a.lon);
    (
        a.lat + dlat * g - dlon * side * 0.6,
        a.lon + dlon * g + dlat * side / 0.6,
    )
}

/// A simulated fix: time, latitude, longitude, reported speed (km/h).
type SimFix = (DateTime<Utc>, f64, f64, f64);

/// One simulated drive: 30 s fixes (time, position, speed) and the true arrival.
fn drive(
    route: &Route,
    sites: &[Site],
    depart: DateTime<Utc>,
    day_factor: f64,
    rng: &mut SmallRng,
) -> (Vec<SimFix>, DateTime<Utc>) {
    let trip_factor = 1.0 + normal(rng, 0.05);
    let jam = (rng.random::<f64>() < 1.0 / 6.0).then(|| {
        (
            rng.random_range(0.1..0.9) * route.length_m,
            rng.random_range(180.0..720.0),
        )
    });
    let mut jam_left = jam.map_or(0.0, |j| j.1);
    let mut s = 0.0;
    let mut t = 0.0f64; // seconds since departure
    let mut fixes = Vec::new();
    let mut next_fix = 0.0;
    let mut next_light = 700.0;
    let mut stop_left = 0.0;
    let dt = 5.0;
    while s < route.length_m {
        let now = depart + Duration::milliseconds((t * 1000.0) as i64);
        let road = route
            .stretches
            .iter()
            .find(|(end, _)| s < *end)
            .map_or(Road::Urban, |(_, r)| *r);
        let mut v = speed_kmh(road, now.hour()) * day_factor * trip_factor / 3.6;
        if road != Road::Urban {
            // Lights are on town streets only: the next one is 700 m into the
            // next town stretch (not every 700 m since the last town, caught up at once).
            next_light = s + 700.0;
        }
        if stop_left > 0.0 {
            stop_left -= dt;
            v = 0.0;
        } else if let Some((at, _)) = jam
            && s >= at
            && jam_left > 0.0
        {
            jam_left -= dt;
            v = 8.0 / 3.6;
        } else if road == Road::Urban && s >= next_light {
            next_light += 700.0;
            if rng.random::<f64>() < 0.4 {
                stop_left = rng.random_range(20.0..60.0);
            }
        }
        if t >= next_fix {
            let (lat, lon) = place(route, sites, s);
            fixes.push((now, lat, lon, v * 3.6 + normal(rng, 1.0).abs()));
            next_fix += 30.0;
        }
        s += v * dt;
        t += dt;
    }
    let arrival = depart + Duration::milliseconds((t * 1000.0) as i64);
    (fixes, arrival)
}

/// One simulated trip of a day, ready to be played.
struct Trip {
    n: u64,
    route: usize,
    depart: DateTime<Utc>,
    fixes: Vec<SimFix>,
    arrival: DateTime<Utc>,
    id: MoveId,
    journey: JourneyId,
    vehicle: VehicleId,
}

/// What happens when, in a day's play.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    /// Booking, `JourneyStart` and the origin's exit.
    Depart,
    /// The i-th fix.
    Fix(usize),
    /// The destination's enter.
    Arrive,
    /// `MoveComplete`.
    Complete,
}

/// Runs the evaluation on these sites.
///
/// The trips of a day are played together in time order (every trip's
/// departure, fixes, arrival and completion on one clock), so the model
/// learns from a journey only once it has arrived, as in service.
pub fn evaluate(sites: &[Site], config: EvalConfig) -> EvalReport {
    let mut rng = SmallRng::seed_from_u64(config.seed);
    let routes = routes(sites, &mut rng);
    let mut book = MoveBook::new(sites, MovesConfig::default(), EtaModel::default());
    let mut report = EvalReport::default();
    let supplier = SupplierId::parse("sim").unwrap_or_else(|_| unreachable!());
    let start = NaiveDate::from_ymd_opt(2026, 3, 2).unwrap_or_default();
    let mut n = 0u64;
    for day in 0..config.train_days + config.test_days {
        let testing = day >= config.train_days;
        let date = start + chrono::Days::new(u64::from(day));
        let midnight = Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).unwrap_or_default());
        let day_factor = 1.0 + normal(&mut rng, 0.07);
        let mut trips = Vec::new();
        for _ in 0..config.trips_per_day {
            if routes.is_empty() {
                break;
            }
            n += 1;
            let route = rng.random_range(0..routes.len());
            let minute = rng.random_range(6 * 60..20 * 60);
            let depart = midnight + Duration::minutes(minute);
            let (fixes, arrival) = drive(&routes[route], sites, depart, day_factor, &mut rng);
            let (Ok(id), Ok(journey), Ok(vehicle)) = (
                MoveId::parse(&format!("eval-{n}")),
                JourneyId::parse(&format!("eval-j-{n}")),
                VehicleId::parse(&format!("EV{}", n % 100_000)),
            ) else {
                continue;
            };
            trips.push(Trip {
                n,
                route,
                depart,
                fixes,
                arrival,
                id,
                journey,
                vehicle,
            });
        }
        let mut steps: Vec<(DateTime<Utc>, usize, Step)> = Vec::new();
        for (k, trip) in trips.iter().enumerate() {
            steps.push((trip.depart, k, Step::Depart));
            for (i, f) in trip.fixes.iter().enumerate() {
                steps.push((f.0, k, Step::Fix(i)));
            }
            steps.push((trip.arrival, k, Step::Arrive));
            steps.push((trip.arrival + Duration::minutes(5), k, Step::Complete));
        }
        // Time order; a trip's own steps keep their order at equal times.
        steps.sort();
        let mut out = Vec::new();
        for (_, k, step) in steps {
            let trip = &trips[k];
            let route = &routes[trip.route];
            let (from, to) = (sites[route.from].id.clone(), sites[route.to].id.clone());
            let vehicle = trip.vehicle;
            out.clear();
            match step {
                Step::Depart => {
                    let _ = book.upsert(
                        MoveSpec {
                            id: trip.id.clone(),
                            reference: format!("EVAL{}", trip.n),
                            from_location: from.clone(),
                            to_location: to.clone(),
                            date,
                            status: MoveStatus::Booked,
                            journeys: vec![JourneySpec {
                                id: trip.journey.clone(),
                                from_location: from.clone(),
                                to_location: to.clone(),
                                vehicle: None,
                            }],
                        },
                        trip.depart,
                    );
                    book.on_event(
                        &Event {
                            supplier,
                            vehicle,
                            kind: EventKind::JourneyStart,
                            occurred_at: trip.depart,
                            move_id: Some(trip.id.clone()),
                            journey_id: None,
                            details: serde_json::json!({"vehicle_reg": vehicle.as_str()}),
                        },
                        &mut out,
                    );
                    book.on_transition(
                        &transition(vehicle, &from, TransitionKind::Exit, trip.depart),
                        &mut out,
                    );
                }
                Step::Fix(i) => {
                    let (ts, lat, lon, speed) = trip.fixes[i];
                    book.on_position(
                        &Position {
                            speed_kmh: Some(speed),
                            ..Position::fix(
                                supplier,
                                vehicle,
                                format!("{}-{i}", trip.n),
                                ts,
                                lat,
                                lon,
                            )
                        },
                        &mut out,
                    );
                    if !testing {
                        continue;
                    }
                    let Some(view) = book.details(&trip.id).map(|d| d.view) else {
                        continue;
                    };
                    let Some((eta, low, high)) = times(&view) else {
                        continue;
                    };
                    let arrival = trip.arrival;
                    let dest = &sites[route.to];
                    let truth = (arrival - ts).num_seconds() as f64 / 60.0;
                    let naive = haversine_m(lat, lon, dest.lat, dest.lon) / 1000.0 / 50.0 * 60.0;
                    let b = &mut report.buckets[horizon_bucket(truth)];
                    b.n += 1;
                    let err = (eta - arrival).num_seconds() as f64 / 60.0;
                    b.model.push(err.abs());
                    b.signed.push(err);
                    b.naive.push((naive - truth).abs());
                    if low <= arrival && arrival <= high {
                        b.covered += 1;
                    }
                }
                Step::Arrive => {
                    book.on_transition(
                        &transition(vehicle, &to, TransitionKind::Enter, trip.arrival),
                        &mut out,
                    );
                }
                Step::Complete => {
                    book.on_event(
                        &Event {
                            supplier,
                            vehicle,
                            kind: EventKind::MoveComplete,
                            occurred_at: trip.arrival + Duration::minutes(5),
                            move_id: Some(trip.id.clone()),
                            journey_id: None,
                            details: serde_json::json!({}),
                        },
                        &mut out,
                    );
                    if testing {
                        report.trips.1 += 1;
                    } else {
                        report.trips.0 += 1;
                    }
                }
            }
        }
        // Forget the finished moves of the day.
        let _ = book.tick(midnight + Duration::days(2));
    }
    report
}

fn transition(
    vehicle: VehicleId,
    site: &SiteId,
    kind: TransitionKind,
    ts: DateTime<Utc>,
) -> FenceTransition {
    FenceTransition {
        vehicle,
        site: site.clone(),
        kind,
        ts,
    }
}

fn times(view: &MoveView) -> Option<(DateTime<Utc>, DateTime<Utc>, DateTime<Utc>)> {
    let parse = |s: &Option<String>| {
        s.as_deref()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    Some((
        parse(&view.eta)?,
        parse(&view.eta_low)?,
        parse(&view.eta_high)?,
    ))
}

/// The sites of the evaluation region (northern England: prisons and
/// courts between 53.3° and 54.3° N, 2.2° and 0.2° W), from the shipped list.
pub fn region_sites() -> anyhow::Result<Vec<Site>> {
    let all = crate::load_sites(&model::config::Config::default())?;
    Ok(all
        .into_iter()
        .filter(|s| (53.3..54.3).contains(&s.lat) && (-2.2..-0.2).contains(&s.lon))
        .filter(|s| matches!(s.kind, model::SiteKind::Prison | model::SiteKind::Court))
        .collect())
}

/// `movewatch eval-eta`: runs the evaluation and prints the table.
pub fn run(config: EvalConfig) -> anyhow::Result<()> {
    let sites = region_sites()?;
    let started = std::time::Instant::now();
    let report = evaluate(&sites, config);
    println!(
        "ETA accuracy: {} sites, {} training journeys ({} days), {} test journeys ({} days), seed {}, {:.1} s",
        sites.len(),
        report.trips.0,
        config.train_days,
        report.trips.1,
        config.test_days,
        config.seed,
        started.elapsed().as_secs_f64()
    );
    println!("naive = straight line at 50 km/h; interval = [eta_low, eta_high]\n");
    print!("{}", report.table());
    Ok(())
}
