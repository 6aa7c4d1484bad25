//! Time still to go against distance still to go, learned from the fixes of
//! completed journeys.
//!
//! The great-circle distance to the destination (`r`, km) is cut into
//! pieces: the last 10 km before a site (the *end zone*: urban streets, the
//! gate), the first 10 km after one (the *start zone*), and the middle of
//! the route in tenths of its length, by route length (longer routes have
//! more motorway). Each piece has a learned density, minutes per km of
//! great-circle progress, normalised to an hour-neutral level: the end zone
//! per destination (falling back to all destinations), the start zone per
//! origin, the middle for everyone; and a factor per hour of the day (UTC)
//! for zone and middle driving. The nominal time to go from `r` is the sum
//! of the pieces' minutes between `r` and 0, each at the hour it will be
//! driven. A [`TripPace`] measures how the current trip runs against that
//! nominal, and a route keeps how its past trips ran.
//!
//! Learning is by sums (minutes and km per piece), halved when a piece has
//! seen [`CELL_CAP_KM`], so the state is bounded (a few hundred numbers per
//! site) and follows slow changes.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Timelike, Utc};
use model::SiteId;

/// Edges (km from the site) of the pieces near a site.
const ZONE_EDGES_KM: [f64; 12] = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0];
const ZONE_BINS: usize = ZONE_EDGES_KM.len() - 1;
/// How far from a site its zone reaches, km.
const ZONE_KM: f64 = 10.0;
/// Pieces of the middle of a route (tenths of its great-circle length).
const MID_BINS: usize = 10;
/// Upper edges of the route-length classes of the middle, km (one more class above).
const LENGTH_CLASSES_KM: [f64; 4] = [25.0, 45.0, 70.0, 100.0];
const LENGTH_CLASSES: usize = LENGTH_CLASSES_KM.len() + 1;
/// A piece's sums are halved when its km pass this.
const CELL_CAP_KM: f64 = 4_000.0;
/// An hour factor's sums are halved when its nominal minutes pass this.
const HOUR_CAP_MIN: f64 = 20_000.0;
/// Weight (nominal minutes) of the neutral hour factor 1.0.
const HOUR_PRIOR_MIN: f64 = 60.0;
/// A global piece's default weighs as much as this many km of history.
const GLOBAL_PRIOR_KM: f64 = 2.0;
/// A site's piece weighs its fallback as much as this many trips over it.
const SITE_PRIOR_TRIPS: f64 = 4.0;
/// Routes remembered (least recently learned forgotten beyond it).
const MAX_ROUTES: usize = 5_000;
/// A route's piece weighs its fallback as much as this many trips over it.
const ROUTE_PRIOR_TRIPS: f64 = 0.5;
/// Pieces of one route: its end zone, its start zone, its middle.
const ROUTE_CELLS: usize = 2 * ZONE_BINS + MID_BINS;
/// A stretch between two fixes longer than this is not driving (a stop, a gap), minutes.
const MAX_SEGMENT_MIN: f64 = 20.0;

/// Running sums of one piece.
#[derive(Debug, Clone, Copy, Default)]
struct Cell {
    minutes: f64,
    km: f64,
}

impl Cell {
    fn add(&mut self, minutes: f64, km: f64, cap: f64) {
        self.minutes += minutes;
        self.km += km;
        if self.km > cap {
            self.minutes *= 0.5;
            self.km *= 0.5;
        }
    }

    /// Minutes per km, shrunk towards `prior` as if it had `prior_km` of history.
    fn density(&self, prior: f64, prior_km: f64) -> f64 {
        (self.minutes + prior * prior_km) / (self.km + prior_km)
    }
}

/// Where a piece lies.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Zone {
    /// Near the destination, by bin of km to go.
    End(usize),
    /// Near the origin, by bin of km from it.
    Start(usize),
    /// The middle: (length class, tenth of the route).
    Mid(usize, usize),
}

impl Zone {
    /// 0 for the zones near sites, 1 for the middle (the hour factors' kinds).
    fn kind(self) -> usize {
        match self {
            Zone::End(_) | Zone::Start(_) => 0,
            Zone::Mid(..) => 1,
        }
    }

    /// The piece's index among a route's own pieces.
    fn route_index(self) -> usize {
        match self {
            Zone::End(k) => k,
            Zone::Start(k) => ZONE_BINS + k,
            Zone::Mid(_, f) => 2 * ZONE_BINS + f,
        }
    }

    /// Great-circle km of the piece on a route `total` km long.
    fn width(self, total: f64) -> f64 {
        match self {
            Zone::End(k) | Zone::Start(k) => zone_width(k),
            Zone::Mid(..) => total / MID_BINS as f64,
        }
    }
}

fn zone_bin(km: f64) -> usize {
    ZONE_EDGES_KM[1..]
        .iter()
        .position(|&e| km < e)
        .unwrap_or(ZONE_BINS - 1)
}

fn length_class(total_km: f64) -> usize {
    LENGTH_CLASSES_KM
        .iter()
        .position(|&e| total_km < e)
        .unwrap_or(LENGTH_CLASSES - 1)
}

/// The piece at `s` km to go on a route `total` km long (great circle).
fn zone(s: f64, total: f64) -> Zone {
    let x = (total - s).max(0.0);
    if s < ZONE_KM && s <= x {
        Zone::End(zone_bin(s))
    } else if x < ZONE_KM {
        Zone::Start(zone_bin(x))
    } else {
        let f = ((s / total.max(1e-9)) * MID_BINS as f64) as usize;
        Zone::Mid(length_class(total), f.min(MID_BINS - 1))
    }
}

/// The pieces between `lo` and `hi` km to go (lo < hi), from `hi` down to `lo`:
/// calls `f(a, b, zone)` with `a < b` for each.
fn pieces(total: f64, lo: f64, hi: f64, mut f: impl FnMut(f64, f64, Zone)) {
    let mut cuts = [0.0f64; 2 * ZONE_EDGES_KM.len() + MID_BINS + 3];
    let mut n = 0;
    let put = |v: f64, cuts: &mut [f64], n: &mut usize| {
        if v > lo && v < hi && *n < cuts.len() {
            cuts[*n] = v;
            *n += 1;
        }
    };
    for &e in &ZONE_EDGES_KM {
        put(e, &mut cuts, &mut n);
        put(total - e, &mut cuts, &mut n);
    }
    for j in 1..MID_BINS {
        put(total * j as f64 / MID_BINS as f64, &mut cuts, &mut n);
    }
    put(total / 2.0, &mut cuts, &mut n);
    let inner = &mut cuts[..n];
    inner.sort_by(|a, b| b.total_cmp(a));
    let mut upper = hi;
    for &c in inner.iter().chain(std::iter::once(&lo)) {
        if upper - c > 1e-9 {
            f(c, upper, zone((c + upper) / 2.0, total));
        }
        upper = c;
    }
}

/// A default density before any history, minutes per great-circle km.
fn default_density(z: Zone) -> f64 {
    match z {
        // Town streets at ~28 km/h, winding (1.3).
        Zone::End(k) | Zone::Start(k) if ZONE_EDGES_KM[k] < 4.0 => 2.8,
        // A-roads at ~60 km/h.
        Zone::End(_) | Zone::Start(_) => 1.3,
        // A-road and motorway at ~65 km/h.
        Zone::Mid(..) => 1.2,
    }
}

fn zone_width(k: usize) -> f64 {
    ZONE_EDGES_KM[k + 1] - ZONE_EDGES_KM[k]
}

/// What a route's past trips said: its own pieces, how many trips (decayed
/// with the pieces) and when it last learned (for forgetting).
#[derive(Debug, Clone, Copy)]
struct RouteStat {
    n: u32,
    last: u64,
    cells: [Cell; ROUTE_CELLS],
}

impl Default for RouteStat {
    fn default() -> Self {
        RouteStat {
            n: 0,
            last: 0,
            cells: [Cell::default(); ROUTE_CELLS],
        }
    }
}

/// The learned curves.
#[derive(Debug, Clone)]
pub struct Curves {
    end: [Cell; ZONE_BINS],
    start: [Cell; ZONE_BINS],
    end_by_site: HashMap<SiteId, [Cell; ZONE_BINS]>,
    start_by_site: HashMap<SiteId, [Cell; ZONE_BINS]>,
    mid: [[Cell; MID_BINS]; LENGTH_CLASSES],
    /// Per hour (UTC) and kind: observed minutes (`minutes`) over nominal minutes (`km`).
    hours: [[Cell; 2]; 24],
    routes: HashMap<(SiteId, SiteId), RouteStat>,
    trips: u64,
    km: f64,
}

impl Default for Curves {
    fn default() -> Self {
        Curves {
            end: [Cell::default(); ZONE_BINS],
            start: [Cell::default(); ZONE_BINS],
            end_by_site: HashMap::new(),
            start_by_site: HashMap::new(),
            mid: [[Cell::default(); MID_BINS]; LENGTH_CLASSES],
            hours: [[Cell::default(); 2]; 24],
            routes: HashMap::new(),
            trips: 0,
            km: 0.0,
        }
    }
}

/// The route a trip is on: its sites (`from` is `None` after a redirect, when
/// the trip restarted somewhere on the road) and its great-circle length, km.
#[derive(Debug, Clone, Copy)]
pub struct RouteRef<'a> {
    /// The origin site.
    pub from: Option<&'a SiteId>,
    /// The destination site.
    pub to: &'a SiteId,
    /// Great-circle length from where the trip started to the destination, km.
    pub total_km: f64,
}

impl Curves {
    /// Tracks learned from.
    pub fn trips(&self) -> u64 {
        self.trips
    }

    /// Great-circle km of progress learned from.
    pub fn learned_km(&self) -> f64 {
        self.km
    }

    /// What the curves say about one route, looked up once.
    fn view<'a>(&'a self, route: &'a RouteRef<'a>) -> View<'a> {
        let kind_level = |kind: usize| {
            let (obs, nom) = self.hours.iter().fold((0.0, 0.0), |(o, n), h| {
                (o + h[kind].minutes, n + h[kind].km)
            });
            (obs + HOUR_PRIOR_MIN) / (nom + HOUR_PRIOR_MIN)
        };
        View {
            curves: self,
            route,
            own: route
                .from
                .and_then(|f| self.routes.get(&(f.clone(), route.to.clone()))),
            end_site: self.end_by_site.get(route.to),
            start_site: route.from.and_then(|s| self.start_by_site.get(s)),
            level: [kind_level(0), kind_level(1)],
        }
    }

    /// Trips learned on this route.
    pub fn route_trips(&self, route: &RouteRef<'_>) -> u32 {
        self.view(route).own.map_or(0, |r| r.n)
    }

    /// The nominal minutes still to go from `r_km` to the destination,
    /// leaving at `now`: each piece at the hour it will be driven.
    pub fn nominal_minutes(&self, route: &RouteRef<'_>, r_km: f64, now: DateTime<Utc>) -> f64 {
        let v = self.view(route);
        let base = f64::from(now.hour()) + f64::from(now.minute()) / 60.0;
        let mut acc = 0.0;
        pieces(route.total_km, 0.0, r_km.max(0.0), |a, b, z| {
            let hour = ((base + acc / 60.0) as usize) % 24;
            acc += v.density(z) * (b - a) * v.hour_factor(hour, z.kind());
        });
        acc
    }

    /// Nominal minutes of the stretch from `r0` to `r1` km to go at `hour`
    /// (negative when it went away from the destination).
    fn stretch_minutes(&self, route: &RouteRef<'_>, r0: f64, r1: f64, hour: usize) -> f64 {
        let v = self.view(route);
        let (lo, hi) = if r0 < r1 { (r0, r1) } else { (r1, r0) };
        let mut acc = 0.0;
        pieces(route.total_km, lo.max(0.0), hi.max(0.0), |a, b, z| {
            acc += v.density(z) * (b - a) * v.hour_factor(hour, z.kind());
        });
        if r1 > r0 { -acc } else { acc }
    }

    /// Learns from the fixes of a completed trip: `track` is (time, km to
    /// go) in time order, ending before `arrived` (where km to go is 0).
    pub fn learn_track(
        &mut self,
        route: &RouteRef<'_>,
        track: &[(DateTime<Utc>, f64)],
        arrived: DateTime<Utc>,
    ) {
        let Some(&(first_ts, _)) = track.first() else {
            return;
        };
        if !(route.total_km > 0.5 && arrived > first_ts) {
            return;
        }
        let points: Vec<(DateTime<Utc>, f64)> = track
            .iter()
            .copied()
            .filter(|(t, r)| *t <= arrived && r.is_finite() && *r >= 0.0)
            .chain(std::iter::once((arrived, 0.0)))
            .collect();
        let mut segments = Vec::with_capacity(points.len());
        for w in points.windows(2) {
            let ((t0, r0), (t1, r1)) = (w[0], w[1]);
            let dt = (t1 - t0).num_milliseconds() as f64 / 60_000.0;
            if !(dt > 0.0 && dt <= MAX_SEGMENT_MIN) {
                continue;
            }
            let mid = t0 + Duration::milliseconds((dt * 30_000.0) as i64);
            let hour = mid.hour() as usize;
            segments.push((dt, r0, r1, hour));
        }
        if segments.is_empty() {
            return;
        }
        // This trip's hour-neutral minutes and km per piece of the route.
        let mut own = [Cell::default(); ROUTE_CELLS];
        for (dt, r0, r1, hour) in segments {
            if r0 - r1 > 1e-3 {
                let span = r0 - r1;
                let mut parts: [(f64, f64, Option<Zone>); 40] = [(0.0, 0.0, None); 40];
                let mut n = 0;
                pieces(route.total_km, r1, r0, |a, b, z| {
                    if n < parts.len() {
                        parts[n] = (a, b, Some(z));
                        n += 1;
                    }
                });
                for &(a, b, z) in &parts[..n] {
                    let Some(z) = z else { continue };
                    let km = b - a;
                    let minutes = dt * km / span;
                    let h = self.add(route, z, minutes, km, hour);
                    let c = &mut own[z.route_index()];
                    c.minutes += minutes / h;
                    c.km += km;
                }
                self.km += span;
            } else {
                // No progress (a stop, a detour): time spent where it stood.
                let z = zone(r0.max(0.0), route.total_km);
                let h = self.add(route, z, dt, 0.0, hour);
                own[z.route_index()].minutes += dt / h;
            }
        }
        if let Some(from) = route.from {
            // The route's own pieces: a jam on one trip is not the road's, so a
            // trip adds at most ROUTE_CELL_CAP × the fallback's minutes to a piece.
            let mut fallback = [0.0; ROUTE_CELLS];
            let mut z_of = [None; ROUTE_CELLS];
            pieces(route.total_km, 0.0, route.total_km, |_, _, z| {
                z_of[z.route_index()] = Some(z);
            });
            let v = self.view(route);
            for (i, z) in z_of.iter().enumerate() {
                if let Some(z) = z {
                    fallback[i] = v.site_density(*z);
                }
            }
            let total = route.total_km;
            let r = self
                .routes
                .entry((from.clone(), route.to.clone()))
                .or_default();
            for (i, c) in own.iter().enumerate() {
                let Some(z) = z_of[i] else { continue };
                if c.km <= 0.0 {
                    continue;
                }
                let minutes = c.minutes.min(ROUTE_CELL_CAP * fallback[i] * c.km);
                // Bounded by 20 trips' worth, so the route follows change.
                r.cells[i].add(minutes, c.km, 20.0 * z.width(total));
            }
        }
        self.trips += 1;
        let Some(from) = route.from else { return };
        let stamp = self.trips;
        if let Some(r) = self.routes.get_mut(&(from.clone(), route.to.clone())) {
            r.n = (r.n + 1).min(u32::MAX - 1);
            r.last = stamp;
        }
        if self.routes.len() > MAX_ROUTES
            && let Some(oldest) = self
                .routes
                .iter()
                .min_by_key(|(_, r)| r.last)
                .map(|(k, _)| k.clone())
        {
            self.routes.remove(&oldest);
        }
    }

    /// Adds `minutes` observed over `km` of a piece at `hour`; returns the
    /// hour factor it was normalised by.
    fn add(&mut self, route: &RouteRef<'_>, z: Zone, minutes: f64, km: f64, hour: usize) -> f64 {
        let kind = z.kind();
        let (nominal, h) = {
            let v = self.view(route);
            (v.density(z) * km, v.hour_factor(hour, kind))
        };
        self.hours[hour % 24][kind].add(minutes, nominal, HOUR_CAP_MIN);
        let neutral = minutes / h;
        match z {
            Zone::End(k) => {
                self.end[k].add(neutral, km, CELL_CAP_KM);
                self.end_by_site
                    .entry(route.to.clone())
                    .or_insert([Cell::default(); ZONE_BINS])[k]
                    .add(neutral, km, CELL_CAP_KM / 10.0);
            }
            Zone::Start(k) => {
                self.start[k].add(neutral, km, CELL_CAP_KM);
                if let Some(from) = route.from {
                    self.start_by_site
                        .entry(from.clone())
                        .or_insert([Cell::default(); ZONE_BINS])[k]
                        .add(neutral, km, CELL_CAP_KM / 10.0);
                }
            }
            Zone::Mid(c, f) => self.mid[c][f].add(neutral, km, CELL_CAP_KM),
        }
        h
    }
}

/// The curves' answers for one route, with its lookups done once.
struct View<'a> {
    curves: &'a Curves,
    route: &'a RouteRef<'a>,
    own: Option<&'a RouteStat>,
    end_site: Option<&'a [Cell; ZONE_BINS]>,
    start_site: Option<&'a [Cell; ZONE_BINS]>,
    /// All hours' factor per kind.
    level: [f64; 2],
}

impl View<'_> {
    /// Hour-neutral minutes per great-circle km of a piece: the route's own
    /// trips, else the destination's (end zone) or the origin's (start
    /// zone), else everyone's, else the default.
    fn density(&self, z: Zone) -> f64 {
        let fallback = self.site_density(z);
        match self.own {
            Some(r) => r.cells[z.route_index()]
                .density(fallback, ROUTE_PRIOR_TRIPS * z.width(self.route.total_km)),
            None => fallback,
        }
    }

    fn site_density(&self, z: Zone) -> f64 {
        let c = self.curves;
        match z {
            Zone::End(k) => {
                let g = c.end[k].density(default_density(z), GLOBAL_PRIOR_KM);
                self.end_site
                    .map_or(g, |s| s[k].density(g, SITE_PRIOR_TRIPS * zone_width(k)))
            }
            Zone::Start(k) => {
                let g = c.start[k].density(default_density(z), GLOBAL_PRIOR_KM);
                self.start_site
                    .map_or(g, |s| s[k].density(g, SITE_PRIOR_TRIPS * zone_width(k)))
            }
            Zone::Mid(l, f) => c.mid[l][f].density(default_density(z), GLOBAL_PRIOR_KM),
        }
    }

    /// The factor of driving at this hour (UTC) in this kind of piece:
    /// the hour's own, shrunk towards all hours' (so an hour with no
    /// history gets the common level, not a bare 1).
    fn hour_factor(&self, hour: usize, kind: usize) -> f64 {
        let c = &self.curves.hours[hour % 24][kind];
        (c.minutes + HOUR_PRIOR_MIN * self.level[kind]) / (c.km + HOUR_PRIOR_MIN)
    }
}

/// How the current trip runs: its fixes against the nominal curve, and the
/// fixes kept to learn from once it arrives. Bounded: [`MAX_TRACK`] fixes
/// (thinned to every other one when full).
#[derive(Debug, Clone)]
pub struct TripPace {
    /// Great-circle km from where the trip started to the destination.
    pub total_km: f64,
    /// Whether the start was the origin site (not a redirect on the road).
    pub from_origin: bool,
    first: Option<DateTime<Utc>>,
    last: Option<(DateTime<Utc>, f64)>,
    /// Nominal minutes of the stretch driven since the first fix.
    expected: f64,
    /// Minutes it took, each step counted at most [`STEP_CAP`] × its nominal
    /// (plus [`STEP_SLACK_MIN`]): a jam or a long stop is a passing event, not the trip's pace.
    actual: f64,
    track: Vec<(DateTime<Utc>, f64)>,
    track_every_s: i64,
}

/// Fixes kept per trip for learning.
pub const MAX_TRACK: usize = 720;
/// A step between fixes counts at most this many times its nominal minutes in the pace…
const STEP_CAP: f64 = 2.0;
/// …plus this, minutes (a short stop at lights is part of the pace).
const STEP_SLACK_MIN: f64 = 0.25;
/// A route's trip adds at most this many times the fallback's minutes to a piece of the route.
const ROUTE_CELL_CAP: f64 = 2.5;

impl TripPace {
    /// A trip starting `total_km` (great circle) from its destination.
    pub fn new(total_km: f64, from_origin: bool) -> Self {
        TripPace {
            total_km,
            from_origin,
            first: None,
            last: None,
            expected: 0.0,
            actual: 0.0,
            track: Vec::new(),
            track_every_s: 30,
        }
    }

    /// The fixes kept for learning: (time, km to go).
    pub fn track(&self) -> &[(DateTime<Utc>, f64)] {
        &self.track
    }

    /// Forgets the last fix (the vehicle changed: the next fix is not a step from it).
    pub fn break_step(&mut self) {
        self.last = None;
    }

    /// Takes a fix `r_km` from the destination at `ts`.
    pub fn advance(&mut self, curves: &Curves, route: &RouteRef<'_>, ts: DateTime<Utc>, r_km: f64) {
        if !r_km.is_finite() {
            return;
        }
        match self.last {
            Some((t0, _)) if ts <= t0 => return,
            Some((t0, r0)) => {
                let dt = (ts - t0).num_seconds() as f64 / 60.0;
                if dt <= MAX_SEGMENT_MIN {
                    let nominal = curves.stretch_minutes(route, r0, r_km, ts.hour() as usize);
                    self.expected += nominal;
                    self.actual += dt.min(STEP_CAP * nominal.max(0.0) + STEP_SLACK_MIN);
                } else {
                    // A long gap says nothing about the pace: restart the clock.
                    self.first = Some(ts);
                    self.expected = 0.0;
                    self.actual = 0.0;
                }
            }
            None => {
                self.first.get_or_insert(ts);
            }
        }
        self.last = Some((ts, r_km));
        if self
            .track
            .last()
            .is_none_or(|(t, _)| (ts - *t).num_seconds() >= self.track_every_s)
        {
            if self.track.len() >= MAX_TRACK {
                let mut i = 0;
                self.track.retain(|_| {
                    i += 1;
                    i % 2 == 1
                });
                self.track_every_s *= 2;
            }
            self.track.push((ts, r_km));
        }
    }

    /// (actual minutes, nominal minutes) since the first fix (actual with
    /// each step capped, see [`TripPace::advance`]).
    pub fn overall(&self) -> Option<(f64, f64)> {
        self.first?;
        self.last?;
        Some((self.actual, self.expected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn site(s: &str) -> SiteId {
        SiteId::parse(s).unwrap()
    }

    /// Teaches `c` the 40 km trip of [`drive`] on `route`, leaving at 10:00
    /// at the usual pace, once a day for `days` days from 2 March 2026.
    fn learn_daily_trips(c: &mut Curves, route: &RouteRef, days: i64) {
        for day in 0..days {
            let t0 = Utc.with_ymd_and_hms(2026, 3, 2, 10, 0, 0).unwrap() + Duration::days(day);
            let (track, arrived) = drive(40.0, t0, 1.0);
            c.learn_track(route, &track, arrived);
        }
    }

    /// A synthetic trip of `total` km at a known curve: 3 min/km in the
    /// last 4 km, 1 min/km before, fixes every 30 s, leaving at `t0`.
    fn drive(
        total: f64,
        t0: DateTime<Utc>,
        slow: f64,
    ) -> (Vec<(DateTime<Utc>, f64)>, DateTime<Utc>) {
        let mut track = Vec::new();
        let (mut r, mut t) = (total, t0);
        while r > 0.0 {
            track.push((t, r));
            let per_km = if r <= 4.0 { 3.0 } else { 1.0 } * slow;
            r -= 0.5 / per_km; // half a minute of driving
            t += Duration::seconds(30);
        }
        let over = -r; // km driven past 0 in the last half minute
        let per_km = 3.0 * slow;
        (
            track,
            t - Duration::milliseconds((over * per_km * 60_000.0) as i64),
        )
    }

    fn truth(r: f64, slow: f64) -> f64 {
        (r.min(4.0) * 3.0 + (r - 4.0).max(0.0)) * slow
    }

    #[test]
    fn pieces_cover_the_stretch_in_order() {
        let mut last = 30.0;
        let mut total = 0.0;
        pieces(60.0, 0.3, 30.0, |a, b, _| {
            assert!((b - last).abs() < 1e-9, "contiguous from the top");
            last = a;
            total += b - a;
        });
        assert!((last - 0.3).abs() < 1e-9);
        assert!((total - 29.7).abs() < 1e-9);
        assert_eq!(zone(0.1, 60.0), Zone::End(0));
        assert_eq!(zone(59.0, 60.0), Zone::Start(3));
        assert_eq!(zone(30.0, 60.0), Zone::Mid(2, 5));
    }

    #[test]
    fn recovers_a_known_remaining_time_curve_from_synthetic_fixes() {
        let mut c = Curves::default();
        let (a, b) = (site("AAA"), site("BBB"));
        let route = RouteRef {
            from: Some(&a),
            to: &b,
            total_km: 40.0,
        };
        // Before history: the defaults, which know nothing of this site.
        let at = Utc.with_ymd_and_hms(2026, 3, 2, 11, 0, 0).unwrap();
        assert!((c.nominal_minutes(&route, 3.0, at) - 9.0).abs() > 0.5);
        learn_daily_trips(&mut c, &route, 40);
        assert_eq!(c.trips(), 40);
        for r in [0.5, 2.0, 3.0, 6.0, 15.0, 30.0] {
            let got = c.nominal_minutes(&route, r, at);
            let want = truth(r, 1.0);
            assert!(
                (got - want).abs() < 0.05 * want + 0.2,
                "{r} km: {got:.2} min, truth {want:.2}"
            );
        }
        assert_eq!(c.route_trips(&route), 40);
        // A route never driven to the same site: the site's approach, everyone's middle.
        let other = site("CCC");
        let unseen = RouteRef {
            from: Some(&other),
            to: &b,
            total_km: 40.0,
        };
        assert_eq!(c.route_trips(&unseen), 0);
        for r in [2.0, 3.0, 15.0] {
            let got = c.nominal_minutes(&unseen, r, at);
            let want = truth(r, 1.0);
            assert!(
                (got - want).abs() < 0.05 * want + 0.2,
                "unseen route, {r} km: {got:.2} min, truth {want:.2}"
            );
        }
    }

    #[test]
    fn hours_and_destinations_are_learned_apart() {
        let mut c = Curves::default();
        let (a, b, d) = (site("AAA"), site("BBB"), site("DDD"));
        let to_b = RouteRef {
            from: Some(&a),
            to: &b,
            total_km: 40.0,
        };
        let to_d = RouteRef {
            from: Some(&a),
            to: &d,
            total_km: 40.0,
        };
        for day in 0..40 {
            let base = Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap() + Duration::days(day);
            // Midday at the curve; at 17:00 everything 1.5× slower.
            let (track, arrived) = drive(40.0, base + Duration::hours(11), 1.0);
            c.learn_track(&to_b, &track, arrived);
            let (track, arrived) = drive(40.0, base + Duration::hours(17), 1.5);
            c.learn_track(&to_b, &track, arrived);
            // To DDD the last 4 km are as quick as the rest.
            let mut track = Vec::new();
            let t0 = base + Duration::hours(12);
            for i in 0..80 {
                track.push((t0 + Duration::seconds(30 * i), 40.0 - 0.5 * i as f64));
            }
            c.learn_track(&to_d, &track, t0 + Duration::minutes(40));
        }
        let noon = Utc.with_ymd_and_hms(2026, 4, 20, 11, 0, 0).unwrap();
        let five = Utc.with_ymd_and_hms(2026, 4, 20, 17, 0, 0).unwrap();
        let (n, f) = (
            c.nominal_minutes(&to_b, 3.0, noon),
            c.nominal_minutes(&to_b, 3.0, five),
        );
        assert!((n - 9.0).abs() < 0.8, "noon {n:.2}");
        assert!((f / n - 1.5).abs() < 0.1, "five {f:.2} against noon {n:.2}");
        let end_d = c.nominal_minutes(&to_d, 3.0, noon);
        assert!(
            (end_d - 3.0).abs() < 0.8,
            "DDD's approach is quick: {end_d:.2}"
        );
    }

    #[test]
    fn the_pace_measures_the_trip_against_the_curve() {
        let mut c = Curves::default();
        let (a, b) = (site("AAA"), site("BBB"));
        let route = RouteRef {
            from: Some(&a),
            to: &b,
            total_km: 40.0,
        };
        learn_daily_trips(&mut c, &route, 30);
        // This trip runs 20 % slower.
        let t0 = Utc.with_ymd_and_hms(2026, 5, 2, 10, 0, 0).unwrap();
        let (track, _) = drive(40.0, t0, 1.2);
        let mut pace = TripPace::new(40.0, true);
        for &(t, r) in track.iter().take(40) {
            pace.advance(&c, &route, t, r);
        }
        let (actual, nominal) = pace.overall().unwrap();
        assert!(
            (actual / nominal - 1.2).abs() < 0.05,
            "{actual} / {nominal}"
        );
        assert_eq!(pace.track().len(), 40);
    }
}
