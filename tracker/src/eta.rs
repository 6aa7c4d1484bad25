//! The ETA model (issue #6).
//!
//! Once it has history (`EtaConfig::min_curve_km` of learned tracks), the
//! time still to go is the *nominal* time to go from the vehicle's
//! great-circle distance to the destination ([`curve::Curves`]: minutes per
//! km of distance still to go, learned from the fixes of completed
//! journeys, per route when it has been driven, else per destination for
//! the approach and per origin for the way out, else for everyone; by hour
//! of day), times this trip's pace against that nominal so far
//! ([`TripPace`]), shrunk towards 1 while the trip is young. Before that
//! history: a per-hour linear fit of whole journeys (time = overhead +
//! distance / cruise speed) with road distance from a learned circuity,
//! blended with the live speed. Either way, the estimate is corrected by
//! the median of past residuals of estimates of about the same size, and the
//! interval is their 4th and 96th percentiles.
//!
//! Pure and synchronous: the caller passes every time, so tests and the
//! accuracy harness (`movewatch eval-eta`) drive it with synthetic clocks.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Timelike, Utc};
use model::SiteId;

pub mod curve;

pub use curve::{Curves, RouteRef, TripPace};

/// Tunables of the model, with the defaults used before any history.
#[derive(Debug, Clone, Copy)]
pub struct EtaConfig {
    /// Road distance / great-circle distance before any history.
    pub default_circuity: f64,
    /// Cruise speed before any history, km/h.
    pub default_speed_kmh: f64,
    /// Fixed overhead of a whole journey (slow start and end) before any history, minutes.
    pub default_overhead_min: f64,
    /// Share of the overhead that lies at the end of a journey.
    pub end_share: f64,
    /// Within this remaining road distance the end overhead shrinks linearly, km.
    pub end_zone_km: f64,
    /// Weight of the live speed over the next `live_horizon_min`.
    pub live_weight: f64,
    /// How far ahead the live speed says something, minutes.
    pub live_horizon_min: f64,
    /// Trips needed before an hour's own fit is used (else all hours together).
    pub min_trips_per_fit: u32,
    /// Residuals needed in a horizon bucket before its quantiles are used.
    pub min_residuals: usize,
    /// Residuals kept per horizon bucket.
    pub max_residuals: usize,
    /// Circuity samples kept per route.
    pub max_circuity_samples: usize,
    /// The interval's quantiles (low, high) of the residuals.
    pub quantiles: (f64, f64),
    /// Great-circle km of learned tracks before the curves replace the line.
    pub min_curve_km: f64,
    /// Nominal minutes driven at which the trip's own pace weighs as much as the route's.
    pub pace_prior_min: f64,
}

impl Default for EtaConfig {
    fn default() -> Self {
        EtaConfig {
            default_circuity: 1.3,
            default_speed_kmh: 65.0,
            default_overhead_min: 10.0,
            end_share: 0.5,
            end_zone_km: 6.0,
            live_weight: 0.5,
            live_horizon_min: 8.0,
            min_trips_per_fit: 8,
            min_residuals: 30,
            max_residuals: 2000,
            max_circuity_samples: 50,
            quantiles: (0.04, 0.96),
            min_curve_km: 300.0,
            pace_prior_min: 15.0,
        }
    }
}

/// Running sums for a least-squares line `minutes = a + b × km`.
#[derive(Debug, Clone, Copy, Default)]
struct Fit {
    n: u32,
    sx: f64,
    sy: f64,
    sxx: f64,
    sxy: f64,
}

impl Fit {
    fn add(&mut self, x: f64, y: f64) {
        self.n += 1;
        self.sx += x;
        self.sy += y;
        self.sxx += x * x;
        self.sxy += x * y;
    }

    /// (overhead minutes, minutes per km), if the fit is determined.
    fn line(&self, min_n: u32) -> Option<(f64, f64)> {
        if self.n < min_n.max(2) {
            return None;
        }
        let n = f64::from(self.n);
        let var = self.sxx - self.sx * self.sx / n;
        if var <= 1e-6 * n {
            return None;
        }
        let b = (self.sxy - self.sx * self.sy / n) / var;
        let a = (self.sy - b * self.sx) / n;
        // Keep to plausible lorries: 15..110 km/h cruise, 0..40 min overhead.
        Some((a.clamp(0.0, 40.0), b.clamp(60.0 / 110.0, 60.0 / 15.0)))
    }
}

/// Horizon buckets for residuals and reporting: 0–15, 15–30, 30–60, 60+ minutes.
pub fn horizon_bucket(minutes: f64) -> usize {
    match minutes {
        m if m < 15.0 => 0,
        m if m < 30.0 => 1,
        m if m < 60.0 => 2,
        _ => 3,
    }
}

/// Bins of the raw estimate for the residual correction: finer than the
/// reporting buckets, because the model's bias changes quickly near the end.
const RESIDUAL_BINS: [f64; 11] = [
    3.0, 6.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0, 90.0,
];

fn residual_bin(raw_minutes: f64) -> usize {
    RESIDUAL_BINS
        .iter()
        .position(|&edge| raw_minutes < edge)
        .unwrap_or(RESIDUAL_BINS.len())
}

/// One estimate of the time still to drive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Remaining {
    /// Best estimate, minutes.
    pub minutes: f64,
    /// Early end of the interval, minutes (≥ 0).
    pub low_minutes: f64,
    /// Late end of the interval, minutes.
    pub high_minutes: f64,
    /// The model's estimate before the residual correction (what residuals are learned on).
    pub raw_minutes: f64,
    /// Estimated road distance still to drive, metres.
    pub road_m: f64,
}

/// What the model has learned.
#[derive(Debug, Clone)]
pub struct EtaModel {
    config: EtaConfig,
    hours: [Fit; 24],
    all: Fit,
    route_circuity: HashMap<(SiteId, SiteId), VecDeque<f64>>,
    dest_circuity: HashMap<SiteId, VecDeque<f64>>,
    all_circuity: VecDeque<f64>,
    residuals: [VecDeque<f64>; RESIDUAL_BINS.len() + 1],
    curves: Curves,
    /// The configured quantiles of each bin's residuals, recomputed on learning.
    bounds: [Option<(f64, f64, f64)>; RESIDUAL_BINS.len() + 1],
}

fn push_bounded(q: &mut VecDeque<f64>, v: f64, max: usize) {
    if q.len() >= max {
        q.pop_front();
    }
    q.push_back(v);
}

fn median(q: &VecDeque<f64>) -> Option<f64> {
    if q.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = q.iter().copied().collect();
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// The `q` quantile (0..1) of unsorted values, nearest rank.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let i = ((q * (v.len() - 1) as f64).round() as usize).min(v.len() - 1);
    Some(v[i])
}

impl Default for EtaModel {
    fn default() -> Self {
        EtaModel::new(EtaConfig::default())
    }
}

impl EtaModel {
    /// A model with no history (the config's defaults).
    pub fn new(config: EtaConfig) -> Self {
        EtaModel {
            config,
            hours: [Fit::default(); 24],
            all: Fit::default(),
            route_circuity: HashMap::new(),
            dest_circuity: HashMap::new(),
            all_circuity: VecDeque::new(),
            residuals: Default::default(),
            curves: Curves::default(),
            bounds: [None; RESIDUAL_BINS.len() + 1],
        }
    }

    /// The config.
    pub fn config(&self) -> &EtaConfig {
        &self.config
    }

    /// How many completed journeys it has learned from.
    pub fn trips(&self) -> u32 {
        self.all.n
    }

    /// Learns from one completed journey: `direct_m` is the great-circle
    /// distance between the sites, `driven_m` the distance driven.
    pub fn learn_trip(
        &mut self,
        from: &SiteId,
        to: &SiteId,
        direct_m: f64,
        driven_m: f64,
        departed: DateTime<Utc>,
        arrived: DateTime<Utc>,
    ) {
        let minutes = (arrived - departed).num_seconds() as f64 / 60.0;
        if !(minutes > 0.0 && driven_m > 0.0 && direct_m > 500.0) {
            return;
        }
        let km = driven_m / 1000.0;
        // A trip slower than 5 km/h on average was not one drive (a lodging, a breakdown).
        if km / (minutes / 60.0) < 5.0 {
            return;
        }
        let hour = departed.hour() as usize;
        self.hours[hour].add(km, minutes);
        self.all.add(km, minutes);
        let ratio = (driven_m / direct_m).clamp(1.0, 3.0);
        let max = self.config.max_circuity_samples;
        push_bounded(
            self.route_circuity
                .entry((from.clone(), to.clone()))
                .or_default(),
            ratio,
            max,
        );
        push_bounded(
            self.dest_circuity.entry(to.clone()).or_default(),
            ratio,
            max,
        );
        push_bounded(&mut self.all_circuity, ratio, max * 20);
    }

    /// Road distance / great-circle distance for a route: its own history,
    /// else the destination's (the region around it), else everyone's, else the default.
    pub fn circuity(&self, from: &SiteId, to: &SiteId) -> f64 {
        self.route_circuity
            .get(&(from.clone(), to.clone()))
            .filter(|q| q.len() >= 3)
            .and_then(median)
            .or_else(|| {
                self.dest_circuity
                    .get(to)
                    .filter(|q| q.len() >= 3)
                    .and_then(median)
            })
            .or_else(|| median(&self.all_circuity).filter(|_| self.all_circuity.len() >= 3))
            .unwrap_or(self.config.default_circuity)
    }

    /// (overhead minutes, minutes per km) for journeys starting at this hour
    /// (UTC): its own fit, else all hours', else the defaults.
    pub fn line(&self, hour: usize) -> (f64, f64) {
        let min = self.config.min_trips_per_fit;
        self.hours[hour % 24]
            .line(min)
            .or_else(|| self.all.line(min))
            .unwrap_or((
                self.config.default_overhead_min,
                60.0 / self.config.default_speed_kmh,
            ))
    }

    /// The model's minutes still to drive `road_km` at `hour` (UTC), having
    /// come `from_origin_km` (road) from the origin, with the vehicle's
    /// smoothed live speed; before the residual correction.
    pub fn point_minutes(
        &self,
        road_km: f64,
        from_origin_km: f64,
        hour: usize,
        live_kmh: Option<f64>,
    ) -> f64 {
        self.paced_minutes(road_km, from_origin_km, hour, live_kmh, 1.0)
    }

    /// [`EtaModel::point_minutes`] with the cruise part scaled by `pace`
    /// (this trip's driving so far against the model's: > 1 is slower).
    fn paced_minutes(
        &self,
        road_km: f64,
        from_origin_km: f64,
        hour: usize,
        live_kmh: Option<f64>,
        pace: f64,
    ) -> f64 {
        let c = &self.config;
        let (overhead, per_km) = self.line(hour);
        let per_km = per_km * pace;
        // The overhead is the slow town driving at both ends: the end's share
        // shrinks over the last few km, the start's over the first few.
        let end = overhead * c.end_share * (road_km / c.end_zone_km).min(1.0);
        let start =
            overhead * (1.0 - c.end_share) * (1.0 - from_origin_km / c.end_zone_km).max(0.0);
        let model = start + end + per_km * road_km;
        let Some(live) = live_kmh.filter(|v| v.is_finite()) else {
            return model;
        };
        // Over the next few minutes the live speed says more than the history:
        // blend the two for the stretch driven in that time, the model after it.
        let cruise = 60.0 / per_km;
        let blended = (c.live_weight * live.max(3.0) + (1.0 - c.live_weight) * cruise).max(3.0);
        let near_km = (blended * c.live_horizon_min / 60.0).min(road_km);
        let near_model_min = near_km * per_km;
        let near_live_min = near_km / blended * 60.0;
        (model - near_model_min + near_live_min).max(0.0)
    }

    /// The route of a trip as the curves see it.
    fn route_ref<'a>(
        from: &'a SiteId,
        to: &'a SiteId,
        direct_m: f64,
        pace: Option<&TripPace>,
    ) -> RouteRef<'a> {
        RouteRef {
            from: pace.is_none_or(|p| p.from_origin).then_some(from),
            to,
            total_km: pace.map_or(direct_m / 1000.0, |p| p.total_km),
        }
    }

    /// Takes a live fix of a trip on `from` → `to`, `direct_m` metres (great
    /// circle) from the destination, into its pace.
    pub fn advance(
        &self,
        pace: &mut TripPace,
        from: &SiteId,
        to: &SiteId,
        ts: DateTime<Utc>,
        direct_m: f64,
    ) {
        let route = Self::route_ref(from, to, direct_m, Some(pace));
        pace.advance(&self.curves, &route, ts, direct_m / 1000.0);
    }

    /// Learns the curves from the fixes of a completed trip.
    pub fn learn_track(
        &mut self,
        from: &SiteId,
        to: &SiteId,
        pace: &TripPace,
        arrived: DateTime<Utc>,
    ) {
        let route = Self::route_ref(from, to, 0.0, Some(pace));
        let was = self.curves_active();
        self.curves.learn_track(&route, pace.track(), arrived);
        if !was && self.curves_active() {
            // The residuals so far are the line's: the curves start their own.
            self.residuals = Default::default();
            self.bounds = [None; RESIDUAL_BINS.len() + 1];
        }
    }

    /// Learns the curves from a completed trip's stored fixes (after a
    /// restart): `track` is (time, great-circle metres to the destination)
    /// in time order, `total_m` the origin's distance to the destination.
    pub fn learn_fixes(
        &mut self,
        from: &SiteId,
        to: &SiteId,
        total_m: f64,
        track: &[(DateTime<Utc>, f64)],
        arrived: DateTime<Utc>,
    ) {
        let mut pace = TripPace::new(total_m / 1000.0, true);
        let route = RouteRef {
            from: Some(from),
            to,
            total_km: total_m / 1000.0,
        };
        for &(ts, m) in track {
            pace.advance(&self.curves, &route, ts, m / 1000.0);
        }
        self.learn_track(from, to, &pace, arrived);
    }

    /// Whether the curves have enough history to replace the line.
    pub fn curves_active(&self) -> bool {
        self.curves.learned_km() >= self.config.min_curve_km
    }

    /// The learned curves.
    pub fn curves(&self) -> &Curves {
        &self.curves
    }

    /// ln(actual / nominal) for the rest of this trip: the trip's own pace
    /// so far (capped steps, see [`TripPace`]), weighed by how much of the
    /// trip it has seen (its nominal minutes against `pace_prior_min`).
    pub fn pace_log(&self, pace: Option<&TripPace>) -> f64 {
        let Some((actual, nominal)) = pace.and_then(TripPace::overall) else {
            return 0.0;
        };
        if !(nominal > 2.0 && actual > 0.0) {
            return 0.0;
        }
        let own = (actual / nominal).ln().clamp(-0.7, 0.7);
        own * nominal / (nominal + self.config.pace_prior_min)
    }

    /// The estimate with its interval, for `direct_m` metres of great-circle
    /// distance left on the route `from` → `to`, `from_origin_m` (great
    /// circle) from the origin. Once the curves have history: the nominal
    /// time to go from here times this trip's pace (`pace`, when it left);
    /// before: the per-hour line.
    #[allow(clippy::too_many_arguments)]
    pub fn remaining(
        &self,
        from: &SiteId,
        to: &SiteId,
        direct_m: f64,
        from_origin_m: f64,
        now: DateTime<Utc>,
        live_kmh: Option<f64>,
        pace: Option<&TripPace>,
    ) -> Remaining {
        let hour = now.hour() as usize;
        let circuity = self.circuity(from, to);
        let road_m = direct_m * circuity;
        let raw = if self.curves_active() {
            let route = Self::route_ref(from, to, direct_m, pace);
            let nominal = self.curves.nominal_minutes(&route, direct_m / 1000.0, now);
            nominal * self.pace_log(pace).exp()
        } else {
            self.paced_minutes(
                road_m / 1000.0,
                from_origin_m * circuity / 1000.0,
                hour,
                live_kmh,
                1.0,
            )
        };
        let (minutes, low, high) = self.corrected(raw);
        Remaining {
            minutes,
            low_minutes: low,
            high_minutes: high,
            raw_minutes: raw,
            road_m,
        }
    }

    /// (estimate, low, high) from the model's `raw` minutes: the median and
    /// the configured quantiles of the residuals of past raw estimates at
    /// that horizon, or (before enough history) the raw estimate with a
    /// default interval widening with the horizon.
    pub fn corrected(&self, raw: f64) -> (f64, f64, f64) {
        let (lo, mid, hi) =
            self.bounds[residual_bin(raw)].unwrap_or((-(2.0 + 0.15 * raw), 0.0, 3.0 + 0.25 * raw));
        let minutes = (raw + mid).max(0.0);
        (
            minutes,
            (raw + lo).max(0.0).min(minutes),
            (raw + hi).max(minutes),
        )
    }

    /// Learns from one past raw estimate: `predicted` minutes ahead, `actual` as it turned out.
    pub fn learn_residual(&mut self, predicted: f64, actual: f64) {
        if !(predicted.is_finite() && actual.is_finite()) {
            return;
        }
        let max = self.config.max_residuals;
        let bucket = residual_bin(predicted);
        push_bounded(&mut self.residuals[bucket], actual - predicted, max);
        let q = &self.residuals[bucket];
        self.bounds[bucket] = (q.len() >= self.config.min_residuals).then(|| {
            let mut v: Vec<f64> = q.iter().copied().collect();
            v.sort_by(f64::total_cmp);
            let at = |p: f64| v[((p * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
            (
                at(self.config.quantiles.0),
                at(0.5),
                at(self.config.quantiles.1),
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn site(s: &str) -> SiteId {
        SiteId::parse(s).unwrap()
    }

    #[test]
    fn defaults_before_history_and_learning_after() {
        let mut m = EtaModel::default();
        let (a, b) = (site("AAA"), site("BBB"));
        assert_eq!(m.circuity(&a, &b), 1.3);
        let t0 = Utc.with_ymd_and_hms(2026, 11, 2, 9, 0, 0).unwrap();
        let before = m.point_minutes(50.0, 20.0, 9, None);
        // 50 km at 65 km/h plus the end's half of 10 min.
        assert!((before - (50.0 * 60.0 / 65.0 + 5.0)).abs() < 1e-9);
        // Trips at a steady 12 min + 1 min/km (60 km/h), 1.2 circuity.
        for i in 0..20 {
            let km = 20.0 + 5.0 * f64::from(i);
            let mins = 12.0 + km;
            m.learn_trip(
                &a,
                &b,
                km * 1000.0 / 1.2,
                km * 1000.0,
                t0,
                t0 + chrono::Duration::seconds((mins * 60.0) as i64),
            );
        }
        assert!((m.circuity(&a, &b) - 1.2).abs() < 1e-9);
        assert!(
            (m.circuity(&site("CCC"), &b) - 1.2).abs() < 1e-9,
            "by destination"
        );
        let after = m.point_minutes(50.0, 20.0, 9, None);
        // At the gate the start's half of the overhead is still ahead.
        assert!((m.point_minutes(50.0, 0.0, 9, None) - after - 6.0).abs() < 0.1);
        assert!((after - (6.0 + 50.0)).abs() < 0.1, "{after}");
        // Hour 15 has no trips of its own: all hours together.
        assert!((m.point_minutes(50.0, 20.0, 15, None) - after).abs() < 1e-9);
        // Crawling now: the next stretch is slower than the model says.
        assert!(m.point_minutes(50.0, 20.0, 9, Some(10.0)) > after + 2.0);
    }

    #[test]
    fn the_interval_follows_past_residuals() {
        let mut m = EtaModel::default();
        let (mid, lo, hi) = m.corrected(20.0);
        assert!(lo < 20.0 && hi > 20.0 && mid == 20.0);
        // The model was 2.5 min early on average, give or take 5.
        for i in 0..100 {
            m.learn_residual(20.0, 20.0 + f64::from(i % 10) - 2.0);
        }
        assert_eq!(m.corrected(20.0), (23.0, 18.0, 27.0));
        // Other horizons keep the default.
        assert!(m.corrected(45.0).2 > 45.0 + 10.0);
    }
}
