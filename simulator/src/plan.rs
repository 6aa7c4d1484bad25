//! A realistic day, planned up front and deterministic from the seed.
//!
//! Every van belongs to a depot near a prison or court; the supplier is
//! chosen by the depot's latitude (GEOAmey runs the North lot, Serco the
//! South). Each van gets one of a few day shapes — morning prison → court run
//! and afternoon return, multi-drop court run, prison transfer, police →
//! court runs, or a spare day at the depot — and its whole day becomes a
//! timeline of [`Segment`]s: dwells and drives along road-like routes with
//! urban, A-road and motorway speeds, traffic slowdowns, service stops,
//! queues outside prisons and dwells at gates. Because the timeline is
//! computed analytically, a van's position at any time is a pure function
//! of the plan (and so of the seed).

use std::collections::HashMap;

use chrono::NaiveDate;
use model::{Site, SiteKind, SupplierId, VehicleId};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::route::{Route, distance_m};
use crate::{Registrations, SimError, supplier_for};

/// A van's body type, as suppliers' fleets list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VanType {
    /// Car with a cage (4 seats).
    C4,
    /// Pick-up style cab.
    ProCab,
    /// Multi-purpose vehicle.
    Mpv,
    /// Two-cell van.
    #[serde(rename = "2_cell")]
    TwoCell,
    /// Three-cell van.
    #[serde(rename = "3_cell")]
    ThreeCell,
    /// Six-cell van.
    #[serde(rename = "6_cell")]
    SixCell,
    /// Twelve-cell van (the big court runs).
    #[serde(rename = "12_cell")]
    TwelveCell,
}

impl VanType {
    /// Every type with its share of the fleet (per mille).
    pub const MIX: [(VanType, u32); 7] = [
        (VanType::C4, 150),
        (VanType::ProCab, 100),
        (VanType::Mpv, 150),
        (VanType::TwoCell, 100),
        (VanType::ThreeCell, 150),
        (VanType::SixCell, 200),
        (VanType::TwelveCell, 150),
    ];

    /// The name used in fleet lists (`c4`, `pro_cab`, `mpv`, `2_cell`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            VanType::C4 => "c4",
            VanType::ProCab => "pro_cab",
            VanType::Mpv => "mpv",
            VanType::TwoCell => "2_cell",
            VanType::ThreeCell => "3_cell",
            VanType::SixCell => "6_cell",
            VanType::TwelveCell => "12_cell",
        }
    }

    /// Motorway cruising speed, km/h: cellular vans are governed lower.
    fn motorway_kmh(self) -> f64 {
        match self {
            VanType::C4 | VanType::Mpv => 110.0,
            VanType::ProCab | VanType::TwoCell => 100.0,
            VanType::ThreeCell | VanType::SixCell => 95.0,
            VanType::TwelveCell => 88.0,
        }
    }

    fn pick(rng: &mut SmallRng) -> VanType {
        let mut r = rng.random_range(0..1000);
        for (t, share) in VanType::MIX {
            if r < share {
                return t;
            }
            r -= share;
        }
        VanType::SixCell
    }
}

/// A depot vans start from and return to (not a site: it has no fence).
#[derive(Debug, Clone, Serialize)]
pub struct Depot {
    /// `DEPOT-n`.
    pub id: String,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Who runs it.
    pub supplier: SupplierId,
}

/// Why a van stands still.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopKind {
    /// Parked at the depot.
    Depot,
    /// Queueing on the road outside a prison's gate.
    GateQueue,
    /// Inside a site (loading, handing over, waiting at court).
    AtSite,
    /// A motorway service stop on a long drive.
    ServiceStop,
    /// Broken down at the roadside.
    Breakdown,
}

/// A point of a drive's time/distance profile: from `t` on, the van moves
/// at `kmh` (0 while stopped) starting `along` metres into the route.
#[derive(Debug, Clone, Copy)]
pub struct Knot {
    /// Virtual time, seconds since the plan's midnight.
    pub t: f64,
    /// Metres along the route.
    pub along: f64,
    /// Speed until the next knot.
    pub kmh: f64,
}

/// One piece of a van's day.
#[derive(Debug, Clone)]
pub enum Segment {
    /// Standing still at one place.
    Dwell {
        /// First second of the dwell.
        start: f64,
        /// Where.
        at: (f64, f64),
        /// Why.
        kind: StopKind,
    },
    /// Driving a route with a speed profile.
    Drive {
        /// First second of the drive.
        start: f64,
        /// The road.
        route: Route,
        /// The time/distance profile, first knot at `start`.
        knots: Vec<Knot>,
    },
}

impl Segment {
    fn start(&self) -> f64 {
        match self {
            Segment::Dwell { start, .. } | Segment::Drive { start, .. } => *start,
        }
    }
}

/// Where a van truly is at a moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrueFix {
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Speed, km/h.
    pub kmh: f64,
    /// Heading, degrees.
    pub bearing: f64,
}

/// Something that truly happens at a moment, for the ground truth and the
/// BaSM events the van's crew sends.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Happening {
    /// The van enters a site's fence.
    Arrival {
        /// The site.
        site: String,
        /// The move being picked up or dropped off there, if any.
        move_id: Option<String>,
    },
    /// The van leaves a site's fence.
    Departure {
        /// The site.
        site: String,
        /// The move picked up or dropped off there, if any.
        move_id: Option<String>,
    },
    /// A BaSM event the van sends.
    Event {
        /// `event_type`.
        event_type: &'static str,
        /// `move_id`.
        move_id: Option<String>,
        /// `journey_id`.
        journey_id: Option<String>,
        /// `details`.
        details: serde_json::Value,
    },
}

/// A happening at a virtual time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timed {
    /// Virtual seconds since the plan's midnight.
    pub t: f64,
    /// What.
    #[serde(flatten)]
    pub what: Happening,
}

/// A van's whole day.
#[derive(Debug, Clone)]
pub struct VanPlan {
    /// Its registration.
    pub vehicle: VehicleId,
    /// Its supplier.
    pub supplier: SupplierId,
    /// Index into [`DayPlan::depots`].
    pub depot: usize,
    /// Body type.
    pub van_type: VanType,
    /// The shape of its day.
    pub day: DayShape,
    /// Its timeline, in time order, the first starting at minus infinity.
    pub segments: Vec<Segment>,
    /// Arrivals, departures and BaSM events, in time order.
    pub happenings: Vec<Timed>,
}

impl VanPlan {
    /// Moves the whole day `dt` seconds later (earlier when negative).
    fn shift(&mut self, dt: f64) {
        for s in &mut self.segments {
            match s {
                Segment::Dwell { start, .. } => *start += dt,
                Segment::Drive { start, knots, .. } => {
                    *start += dt;
                    for k in knots {
                        k.t += dt;
                    }
                }
            }
        }
        for h in &mut self.happenings {
            h.t += dt;
        }
    }

    /// Where the van truly is at virtual time `t`.
    pub fn at(&self, t: f64) -> TrueFix {
        let i = self
            .segments
            .partition_point(|s| s.start() <= t)
            .saturating_sub(1);
        match &self.segments[i] {
            Segment::Dwell { at, .. } => TrueFix {
                lat: at.0,
                lon: at.1,
                kmh: 0.0,
                bearing: 0.0,
            },
            Segment::Drive { route, knots, .. } => {
                let k = knots.partition_point(|k| k.t <= t).saturating_sub(1);
                let knot = knots[k];
                let limit = knots.get(k + 1).map_or(route.length_m(), |n| n.along);
                let along = (knot.along + (t - knot.t).max(0.0) * knot.kmh / 3.6).min(limit);
                let ((lat, lon), bearing) = route.at(along);
                TrueFix {
                    lat,
                    lon,
                    kmh: knot.kmh,
                    bearing,
                }
            }
        }
    }
}

/// The shape of a van's day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DayShape {
    /// Prison → court in the morning, court → prison in the afternoon.
    CourtRun,
    /// Prison → two courts in the morning, the second court → prison later.
    MultiDrop,
    /// Prison → prison.
    Transfer,
    /// Police station → court, twice.
    PoliceCourt,
    /// Stays at the depot.
    Spare,
}

/// A registered move's journey.
#[derive(Debug, Clone, Serialize)]
pub struct JourneyPlan {
    /// Journey id.
    pub id: String,
    /// From site.
    pub from_location: String,
    /// To site.
    pub to_location: String,
    /// The van carrying it.
    pub vehicle_registration: String,
}

/// A move as registered with `PUT /api/moves/{id}` (the contract's body).
#[derive(Debug, Clone, Serialize)]
pub struct MovePlan {
    /// Move id (a UUID, as BaSM's).
    #[serde(skip)]
    pub id: String,
    /// Human reference.
    pub reference: String,
    /// From site.
    pub from_location: String,
    /// To site.
    pub to_location: String,
    /// The day, `YYYY-MM-DD`.
    pub date: String,
    /// `booked`; `in_transit` when registered by a run whose first fix
    /// comes after the move's pick-up.
    pub status: &'static str,
    /// Its journeys (one per van leg).
    pub journeys: Vec<JourneyPlan>,
}

/// Everything about the simulated day.
#[derive(Debug, Clone)]
pub struct DayPlan {
    /// Depots.
    pub depots: Vec<Depot>,
    /// Vans, index = van number.
    pub vans: Vec<VanPlan>,
    /// Moves, in creation order.
    pub moves: Vec<MovePlan>,
}

/// What to plan.
#[derive(Debug, Clone)]
pub struct PlanConfig {
    /// How many vans.
    pub vehicles: usize,
    /// The seed.
    pub seed: u64,
    /// The moves' date.
    pub date: NaiveDate,
    /// Share of vans carrying a move that break down once (0..1).
    pub breakdown_rate: f64,
    /// The vans' registrations (van `n` is `registrations.get(n)`).
    pub registrations: Registrations,
    /// Several moves to one site, on the road when the run starts (the demo).
    pub focus: Option<Focus>,
}

/// A site several of the day's moves go to, and the moment the run starts:
/// the first vans of the fleet each bring a prisoner there from a prison
/// 25–150 km away, timed to arrive [`Focus::ARRIVALS_MIN`] minutes after the
/// run's first fix. At that first fix some are about to arrive, some are on
/// the road and some have not left yet: a board that is busy from the start.
#[derive(Debug, Clone)]
pub struct Focus {
    /// The site's id (e.g. `LEI`).
    pub site: String,
    /// Virtual time of day (seconds) of the run's first fix.
    pub at: f64,
}

impl Focus {
    /// When the focus moves arrive, in minutes after the run's first fix (one van each).
    pub const ARRIVALS_MIN: [f64; 8] = [3.0, 9.0, 16.0, 26.0, 40.0, 60.0, 90.0, 150.0];

    /// How many of `vehicles` vans bring a move to the focus site.
    pub fn vans(vehicles: usize) -> usize {
        (vehicles / 5)
            .clamp(1, Self::ARRIVALS_MIN.len())
            .min(vehicles)
    }
}

/// Vans leave their depot no earlier than this (06:30, the default first fix),
/// so a run that starts at the default time finds every van at its depot.
pub const FIRST_LEAVE_S: f64 = 6.5 * 3600.0;

/// A site index list by kind, for picking nearby sites.
struct Catalogue<'a> {
    sites: &'a [Site],
    prisons: Vec<usize>,
    courts: Vec<usize>,
    police: Vec<usize>,
}

impl<'a> Catalogue<'a> {
    fn new(sites: &'a [Site]) -> Catalogue<'a> {
        let of = |k: SiteKind| {
            sites
                .iter()
                .enumerate()
                .filter(|(_, s)| s.kind == k)
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        };
        Catalogue {
            sites,
            prisons: of(SiteKind::Prison),
            courts: of(SiteKind::Court),
            police: of(SiteKind::Police),
        }
    }

    fn pos(&self, i: usize) -> (f64, f64) {
        (self.sites[i].lat, self.sites[i].lon)
    }

    /// One of the `k` nearest of `list` to `at` that are between `min_m` and
    /// `max_m` away (or the nearest beyond `min_m` if none), excluding `not`.
    fn near(
        &self,
        list: &[usize],
        at: (f64, f64),
        k: usize,
        (min_m, max_m): (f64, f64),
        not: &[usize],
        rng: &mut SmallRng,
    ) -> Option<usize> {
        let mut by: Vec<(f64, usize)> = list
            .iter()
            .filter(|i| !not.contains(i))
            .map(|&i| (distance_m(at, self.pos(i)), i))
            .filter(|(d, _)| *d >= min_m)
            .collect();
        by.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let within: Vec<usize> = by
            .iter()
            .filter(|(d, _)| *d <= max_m)
            .take(k)
            .map(|(_, i)| *i)
            .collect();
        if within.is_empty() {
            return by.first().map(|(_, i)| *i);
        }
        Some(within[rng.random_range(0..within.len())])
    }
}

/// A deterministic UUID-shaped id.
fn uuid(rng: &mut SmallRng) -> String {
    let a: u128 = rng.random();
    let h = format!("{a:032x}");
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn hms(h: f64, m: f64) -> f64 {
    h * 3600.0 + m * 60.0
}

/// Builds one van's timeline.
struct Builder<'a> {
    cat: &'a Catalogue<'a>,
    vehicle: VehicleId,
    van_type: VanType,
    t: f64,
    at: (f64, f64),
    /// The fence we are inside of, with its move, to record the departure.
    inside: Option<(usize, Option<String>)>,
    segments: Vec<Segment>,
    happenings: Vec<Timed>,
    breakdown_pending: bool,
    rng: SmallRng,
}

/// A move leg the van is carrying on a drive.
struct Carry<'a> {
    move_id: &'a str,
    journey_id: &'a str,
}

impl<'a> Builder<'a> {
    fn happen(&mut self, t: f64, what: Happening) {
        self.happenings.push(Timed { t, what });
    }

    fn event(
        &mut self,
        t: f64,
        event_type: &'static str,
        carry: Option<&Carry<'_>>,
        details: serde_json::Value,
    ) {
        self.happen(
            t,
            Happening::Event {
                event_type,
                move_id: carry.map(|c| c.move_id.to_owned()),
                journey_id: carry.map(|c| c.journey_id.to_owned()),
                details,
            },
        );
    }

    fn dwell_until(&mut self, until: f64, kind: StopKind) {
        if until <= self.t {
            return;
        }
        self.segments.push(Segment::Dwell {
            start: self.t,
            at: self.at,
            kind,
        });
        self.t = until;
    }

    /// Drives to `dest` (a site index, or a plain point), recording the
    /// departure from the fence we are in and the arrival at the site's fence.
    fn drive(
        &mut self,
        dest: Result<usize, (f64, f64)>,
        carry: Option<&Carry<'_>>,
        arrive_move: Option<&str>,
    ) {
        let to = match dest {
            Ok(i) => self.cat.pos(i),
            Err(p) => p,
        };
        let route = Route::between(self.at, to, &mut self.rng);
        let len = route.length_m();
        // Base sections: approach, urban, A-road, motorway.
        let urban = (len * 0.2).min(3_000.0);
        let urban_kmh = self.rng.random_range(30.0..45.0);
        let a_kmh = self.rng.random_range(65.0..85.0);
        let mut sections: Vec<(f64, f64, f64)> = Vec::new();
        let cut = |a: f64, b: f64, kmh: f64, v: &mut Vec<(f64, f64, f64)>| {
            if b > a {
                v.push((a, b, kmh));
            }
        };
        let approach_out = 300f64.min(len * 0.1);
        let approach_in = 400f64.min(len * 0.1);
        cut(0.0, approach_out, 20.0, &mut sections);
        cut(approach_out, urban, urban_kmh, &mut sections);
        if len > 40_000.0 {
            let m = self.van_type.motorway_kmh() - self.rng.random_range(0.0..8.0);
            cut(urban, urban + 5_000.0, a_kmh, &mut sections);
            cut(urban + 5_000.0, len - urban - 5_000.0, m, &mut sections);
            cut(len - urban - 5_000.0, len - urban, a_kmh, &mut sections);
        } else {
            cut(urban, len - urban, a_kmh, &mut sections);
        }
        cut(len - urban, len - approach_in, urban_kmh, &mut sections);
        cut(len - approach_in, len, 20.0, &mut sections);
        // Traffic: each 20 km may hold a 1–3 km slowdown.
        let mut s = urban;
        while s + 20_000.0 < len - urban {
            if self.rng.random_bool(0.35) {
                let a = s + self.rng.random_range(0.0..15_000.0);
                let b = a + self.rng.random_range(1_000.0..3_000.0);
                let kmh = self.rng.random_range(8.0..25.0);
                sections = slow_down(&sections, a, b, kmh);
            }
            s += 20_000.0;
        }
        // Stops along the way.
        let mut stops: Vec<(f64, f64, StopKind)> = Vec::new();
        let drive_s: f64 = sections.iter().map(|(a, b, k)| (b - a) / (k / 3.6)).sum();
        if drive_s > 90.0 * 60.0 {
            stops.push((
                len * 0.5,
                self.rng.random_range(900.0..1_800.0),
                StopKind::ServiceStop,
            ));
        }
        if carry.is_some() && self.breakdown_pending && len > 5_000.0 {
            self.breakdown_pending = false;
            stops.push((
                len * 0.35,
                self.rng.random_range(1_800.0..3_600.0),
                StopKind::Breakdown,
            ));
        }
        let dest_site = dest.ok();
        if let Some(i) = dest_site
            && self.cat.sites[i].kind == SiteKind::Prison
        {
            // Queue outside the gate, just outside the fence.
            let entry = route.entry_along(to, self.cat.sites[i].radius_m);
            stops.push((
                (entry - 60.0).max(0.0),
                self.rng.random_range(120.0..1_500.0),
                StopKind::GateQueue,
            ));
        }
        stops.sort_by(|a, b| a.0.total_cmp(&b.0));
        let knots = profile(self.t, &sections, &stops);
        // Breakdown event at its start.
        for (along, _, kind) in &stops {
            if *kind == StopKind::Breakdown {
                let t = time_at_along(&knots, *along);
                self.event(
                    t,
                    "PersonMoveVehicleBrokeDown",
                    carry,
                    serde_json::json!({}),
                );
            }
        }
        if let Some((site, move_id)) = self.inside.take() {
            let exit = route.exit_along(self.cat.pos(site), self.cat.sites[site].radius_m);
            let t = time_at_along(&knots, exit);
            self.happen(
                t,
                Happening::Departure {
                    site: self.cat.sites[site].id.to_string(),
                    move_id,
                },
            );
        }
        if let Some(i) = dest_site {
            let entry = route.entry_along(to, self.cat.sites[i].radius_m);
            let t = time_at_along(&knots, entry);
            let move_id = arrive_move.map(str::to_owned);
            self.happen(
                t,
                Happening::Arrival {
                    site: self.cat.sites[i].id.to_string(),
                    move_id: move_id.clone(),
                },
            );
            self.inside = Some((i, move_id));
        }
        let end = knots.last().map_or(self.t, |k| k.t);
        self.segments.push(Segment::Drive {
            start: self.t,
            route,
            knots,
        });
        self.t = end;
        self.at = to;
    }

    /// Picks up a move at the current site: dwell, then JourneyStart and MoveStart.
    fn load(&mut self, minutes: (f64, f64), carry: &Carry<'_>) {
        let until = self.t + self.rng.random_range(minutes.0..minutes.1) * 60.0;
        self.dwell_until(until, StopKind::AtSite);
        let reg = self.vehicle.to_string();
        self.event(
            self.t,
            "JourneyStart",
            Some(carry),
            serde_json::json!({"vehicle_reg": reg}),
        );
        self.event(self.t, "MoveStart", Some(carry), serde_json::json!({}));
    }

    /// Drops a move at the current site: outer-gate event on arrival, MoveComplete after handover.
    fn drop_off(&mut self, site: usize, carry: &Carry<'_>) {
        let arrived = self
            .happenings
            .iter()
            .rev()
            .find(|h| matches!(h.what, Happening::Arrival { .. }))
            .map_or(self.t, |h| h.t);
        let location = self.cat.sites[site].id.to_string();
        self.event(
            arrived,
            "JourneyArriveAtOuterGate",
            Some(carry),
            serde_json::json!({"location": location}),
        );
        let until = self.t + self.rng.random_range(5.0..20.0) * 60.0;
        self.dwell_until(until, StopKind::AtSite);
        self.event(self.t, "MoveComplete", Some(carry), serde_json::json!({}));
    }
}

/// Splits `sections` so that `[a, b]` runs at most `kmh`.
fn slow_down(sections: &[(f64, f64, f64)], a: f64, b: f64, kmh: f64) -> Vec<(f64, f64, f64)> {
    let mut out = Vec::with_capacity(sections.len() + 2);
    for &(s, e, k) in sections {
        for (x, y, slow) in [
            (s, e.min(a), false),
            (s.max(a), e.min(b), true),
            (s.max(b), e, false),
        ] {
            if y > x {
                out.push((x, y, if slow { k.min(kmh) } else { k }));
            }
        }
    }
    out
}

/// Knots for driving `sections` from time `t0`, standing still at each stop.
fn profile(t0: f64, sections: &[(f64, f64, f64)], stops: &[(f64, f64, StopKind)]) -> Vec<Knot> {
    let mut knots = Vec::with_capacity(sections.len() + 2 * stops.len() + 1);
    let mut t = t0;
    let mut next_stop = 0;
    for &(a, b, kmh) in sections {
        let mut along = a;
        loop {
            knots.push(Knot { t, along, kmh });
            match stops.get(next_stop) {
                Some(&(s, dur, _)) if s >= along && s < b => {
                    t += (s - along) / (kmh / 3.6);
                    knots.push(Knot {
                        t,
                        along: s,
                        kmh: 0.0,
                    });
                    t += dur;
                    along = s;
                    next_stop += 1;
                }
                _ => break,
            }
        }
        t += (b - along) / (kmh / 3.6);
    }
    let end = sections.last().map_or(0.0, |s| s.1);
    knots.push(Knot {
        t,
        along: end,
        kmh: 0.0,
    });
    knots
}

/// The first time the profile reaches `along`.
fn time_at_along(knots: &[Knot], along: f64) -> f64 {
    for w in knots.windows(2) {
        if w[0].kmh > 0.0 && along >= w[0].along && along < w[1].along {
            return w[0].t + (along - w[0].along) / (w[0].kmh / 3.6);
        }
    }
    knots.last().map_or(0.0, |k| k.t)
}

/// Plans the day for `config.vehicles` vans between `sites`.
pub fn plan_day(sites: &[Site], config: &PlanConfig) -> Result<DayPlan, SimError> {
    let cat = Catalogue::new(sites);
    if cat.prisons.len() < 2 || cat.courts.is_empty() || cat.police.is_empty() {
        return Err(SimError::TooFewSites(sites.len()));
    }
    let mut rng = SmallRng::seed_from_u64(config.seed);
    let date = config.date.format("%Y-%m-%d").to_string();
    // Depots: next to a random prison or court, one per ~20 vans, North
    // (GEOAmey) and South (Serco) in turn, so both suppliers run vans.
    let n_depots = (config.vehicles / 20).clamp(2, 150);
    let bases: Vec<usize> = cat.prisons.iter().chain(&cat.courts).copied().collect();
    let north: Vec<usize> = bases
        .iter()
        .copied()
        .filter(|&i| cat.pos(i).0 >= 52.7)
        .collect();
    let south: Vec<usize> = bases
        .iter()
        .copied()
        .filter(|&i| cat.pos(i).0 < 52.5)
        .collect();
    let depots: Vec<Depot> = (0..n_depots)
        .map(|n| {
            let region = match (n % 2, north.is_empty(), south.is_empty()) {
                (0, false, _) | (_, false, true) => &north,
                (_, _, false) => &south,
                _ => &bases,
            };
            let b = region[rng.random_range(0..region.len())];
            let (lat, lon) = cat.pos(b);
            let (lat, lon) = (
                lat + rng.random_range(-0.02..0.02),
                lon + rng.random_range(-0.04..0.04),
            );
            Depot {
                id: format!("DEPOT-{n}"),
                lat,
                lon,
                supplier: supplier_for(lat),
            }
        })
        .collect();
    let focus = match &config.focus {
        Some(f) => {
            let i = sites
                .iter()
                .position(|s| s.id.as_str() == f.site)
                .ok_or_else(|| SimError::UnknownSite(f.site.clone()))?;
            Some((i, f.at))
        }
        None => None,
    };
    let focus_vans = focus.map_or(0, |_| Focus::vans(config.vehicles));
    let mut vans = Vec::with_capacity(config.vehicles);
    let mut moves = Vec::new();
    for n in 0..config.vehicles {
        let depot = rng.random_range(0..depots.len());
        let van_type = VanType::pick(&mut rng);
        let vehicle = config.registrations.get(n);
        let van_seed: u64 = rng.random();
        let breakdown = rng.random_bool(config.breakdown_rate.clamp(0.0, 1.0));
        let day = match rng.random_range(0..100) {
            0..35 => DayShape::CourtRun,
            35..45 => DayShape::MultiDrop,
            45..65 => DayShape::Transfer,
            65..90 => DayShape::PoliceCourt,
            _ => DayShape::Spare,
        };
        // A focus van brings a prisoner to the focus site from a prison
        // 25–150 km away, from the depot nearest that prison.
        let focus_trip = match focus {
            Some((f, at)) if n < focus_vans => {
                let from = cat
                    .near(
                        &cat.prisons,
                        cat.pos(f),
                        12,
                        (25_000.0, 150_000.0),
                        &[f],
                        &mut rng,
                    )
                    .unwrap_or(cat.prisons[0]);
                Some((from, f, at + Focus::ARRIVALS_MIN[n] * 60.0))
            }
            _ => None,
        };
        let (depot, day) = match focus_trip {
            Some((from, _, _)) => {
                let nearest = (0..depots.len())
                    .min_by(|&a, &b| {
                        let d =
                            |i: usize| distance_m(cat.pos(from), (depots[i].lat, depots[i].lon));
                        d(a).total_cmp(&d(b))
                    })
                    .unwrap_or(depot);
                (nearest, DayShape::Transfer)
            }
            None => (depot, day),
        };
        let home = (depots[depot].lat, depots[depot].lon);
        let mut b = Builder {
            cat: &cat,
            vehicle,
            van_type,
            t: f64::NEG_INFINITY,
            at: home,
            inside: None,
            segments: Vec::new(),
            happenings: Vec::new(),
            breakdown_pending: breakdown,
            rng: SmallRng::seed_from_u64(van_seed),
        };
        let reg = vehicle.to_string();
        let mut new_move = |b: &mut Builder<'_>, from: usize, to: usize| -> (String, String) {
            let id = uuid(&mut b.rng);
            let journey = uuid(&mut b.rng);
            let (f, t) = (sites[from].id.to_string(), sites[to].id.to_string());
            moves.push(MovePlan {
                id: id.clone(),
                reference: format!("SIM{:08}", moves.len()),
                from_location: f.clone(),
                to_location: t.clone(),
                date: date.clone(),
                status: "booked",
                journeys: vec![JourneyPlan {
                    id: journey.clone(),
                    from_location: f,
                    to_location: t,
                    vehicle_registration: reg.clone(),
                }],
            });
            (id, journey)
        };
        let leave = FIRST_LEAVE_S + b.rng.random_range(0.0..60.0) * 60.0;
        let deliver = |b: &mut Builder<'_>,
                       from: usize,
                       to: usize,
                       m: &(String, String),
                       load: (f64, f64)| {
            let carry = Carry {
                move_id: &m.0,
                journey_id: &m.1,
            };
            b.load(load, &carry);
            b.drive(Ok(to), Some(&carry), Some(&m.0));
            b.drop_off(to, &carry);
            let _ = from;
        };
        b.segments.push(Segment::Dwell {
            start: f64::NEG_INFINITY,
            at: home,
            kind: StopKind::Depot,
        });
        b.t = leave;
        match day {
            DayShape::Spare => {}
            DayShape::CourtRun | DayShape::MultiDrop => {
                let p = cat
                    .near(&cat.prisons, home, 3, (0.0, 60_000.0), &[], &mut b.rng)
                    .unwrap_or(cat.prisons[0]);
                let c1 = cat
                    .near(
                        &cat.courts,
                        cat.pos(p),
                        6,
                        (3_000.0, 60_000.0),
                        &[],
                        &mut b.rng,
                    )
                    .unwrap_or(cat.courts[0]);
                let m1 = new_move(&mut b, p, c1);
                b.drive(Ok(p), None, Some(&m1.0));
                let last = if day == DayShape::MultiDrop {
                    let c2 = cat
                        .near(
                            &cat.courts,
                            cat.pos(c1),
                            4,
                            (2_000.0, 40_000.0),
                            &[c1],
                            &mut b.rng,
                        )
                        .unwrap_or(c1);
                    let m2 = new_move(&mut b, p, c2);
                    // Both prisoners board at the prison; the first is dropped at c1.
                    let c_m2 = Carry {
                        move_id: &m2.0,
                        journey_id: &m2.1,
                    };
                    deliver(&mut b, p, c1, &m1, (15.0, 35.0));
                    b.event(
                        b.t,
                        "JourneyStart",
                        Some(&c_m2),
                        serde_json::json!({"vehicle_reg": reg}),
                    );
                    b.event(b.t, "MoveStart", Some(&c_m2), serde_json::json!({}));
                    b.drive(Ok(c2), Some(&c_m2), Some(&m2.0));
                    b.drop_off(c2, &c_m2);
                    c2
                } else {
                    deliver(&mut b, p, c1, &m1, (15.0, 35.0));
                    c1
                };
                let back = hms(14.5, 0.0) + b.rng.random_range(0.0..120.0) * 60.0;
                b.dwell_until(back, StopKind::AtSite);
                let m3 = new_move(&mut b, last, p);
                deliver(&mut b, last, p, &m3, (5.0, 15.0));
                b.drive(Err(home), None, None);
            }
            DayShape::Transfer => {
                let (p1, p2) = match focus_trip {
                    Some((from, to, _)) => (from, to),
                    None => {
                        let p1 = cat
                            .near(&cat.prisons, home, 3, (0.0, 60_000.0), &[], &mut b.rng)
                            .unwrap_or(cat.prisons[0]);
                        let p2 = cat
                            .near(
                                &cat.prisons,
                                cat.pos(p1),
                                8,
                                (30_000.0, 150_000.0),
                                &[p1],
                                &mut b.rng,
                            )
                            .unwrap_or(cat.prisons[1]);
                        (p1, p2)
                    }
                };
                let m = new_move(&mut b, p1, p2);
                b.drive(Ok(p1), None, Some(&m.0));
                deliver(&mut b, p1, p2, &m, (20.0, 45.0));
                b.drive(Err(home), None, None);
            }
            DayShape::PoliceCourt => {
                let s1 = cat
                    .near(&cat.police, home, 4, (0.0, 40_000.0), &[], &mut b.rng)
                    .unwrap_or(cat.police[0]);
                let c = cat
                    .near(
                        &cat.courts,
                        cat.pos(s1),
                        4,
                        (2_000.0, 40_000.0),
                        &[],
                        &mut b.rng,
                    )
                    .unwrap_or(cat.courts[0]);
                let s2 = cat
                    .near(
                        &cat.police,
                        cat.pos(c),
                        4,
                        (2_000.0, 30_000.0),
                        &[s1],
                        &mut b.rng,
                    )
                    .unwrap_or(s1);
                let m1 = new_move(&mut b, s1, c);
                b.drive(Ok(s1), None, Some(&m1.0));
                deliver(&mut b, s1, c, &m1, (10.0, 25.0));
                let m2 = new_move(&mut b, s2, c);
                b.drive(Ok(s2), None, Some(&m2.0));
                deliver(&mut b, s2, c, &m2, (10.0, 25.0));
                b.drive(Err(home), None, None);
            }
        }
        b.dwell_until(f64::INFINITY, StopKind::Depot);
        let mut happenings = b.happenings;
        happenings.sort_by(|a, b| a.t.total_cmp(&b.t));
        let mut van = VanPlan {
            vehicle,
            supplier: depots[depot].supplier,
            depot,
            van_type,
            day,
            segments: b.segments,
            happenings,
        };
        // A focus van's day is moved so that it arrives when planned.
        if let Some((_, to, arrive)) = focus_trip {
            let site = sites[to].id.as_str();
            if let Some(t) = van.happenings.iter().find_map(|h| match &h.what {
                Happening::Arrival {
                    site: s,
                    move_id: Some(_),
                } if s == site => Some(h.t),
                _ => None,
            }) {
                van.shift(arrive - t);
            }
        }
        vans.push(van);
    }
    Ok(DayPlan {
        depots,
        vans,
        moves,
    })
}

/// Counts of a plan, for logs and the ground truth header.
pub fn summary(plan: &DayPlan) -> HashMap<&'static str, usize> {
    let mut m = HashMap::new();
    for v in &plan.vans {
        *m.entry(match v.day {
            DayShape::CourtRun => "court_run",
            DayShape::MultiDrop => "multi_drop",
            DayShape::Transfer => "transfer",
            DayShape::PoliceCourt => "police_court",
            DayShape::Spare => "spare",
        })
        .or_default() += 1;
    }
    m.insert("moves", plan.moves.len());
    m.insert("depots", plan.depots.len());
    m
}
