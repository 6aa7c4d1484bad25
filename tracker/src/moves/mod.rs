//! The moves registry (issue #6): which vehicle carries which move, status
//! from BaSM events and fence crossings, arrivals and departures, the ETA of
//! every move in transit, and the alerts.
//!
//! [`MoveBook`] is plain synchronous state; every call takes the time it
//! should act at (a fix's time, an event's, or the ticker's clock), so tests
//! drive it with synthetic time. It returns [`MoveOutput`]s: frames for the
//! gateway to fan out, moves to save and arrivals to record, which the
//! engine hands to the store.
//!
//! Matching a vehicle to a move, strongest first: `JourneyChangeVehicle`
//! (it hands the journey over at once, whatever matched before); a point's
//! `journey_id`; `JourneyStart` (`details.vehicle_reg`); the booking's
//! `vehicle_registration`; and inference — a vehicle leaving a booked move's
//! origin on its date while the move has no vehicle is a `probable` match,
//! confirmed by arriving at the destination or by any stronger evidence,
//! dropped by evidence for another vehicle, a return to the origin, or a
//! cancellation. Weaker evidence never replaces stronger.
//!
//! The lifecycle (the contract's "Moves and sites"):
//! - a move arrives only after it departed: a `MoveStart` or `JourneyStart`
//!   for it, a booking as `in_transit`, or its vehicle seen leaving the
//!   origin's fence while carrying it. A vehicle that enters the destination
//!   before that (it is based there, or drops another move there first) does
//!   not make the move `arrived`;
//! - a site's channel sees every move of its day (dated today, to or from
//!   it, not cancelled) from its booking ([`MoveBook::move_views`]), but a
//!   vehicle's position only from the journey's start until 15 minutes after
//!   arrival ([`MoveBook::sites_seeing`]);
//! - a site that stops seeing a move (a redirect, a cancellation, a new
//!   date) is sent its last `move` frame once, then nothing more of it.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use model::wire::{AlertView, Frame, MoveView, SiteEventView};
use model::{
    AlertRecord, Event, EventKind, FenceTransition, JourneyId, MoveId, Notification,
    NotificationKind, Position, Site, SiteId, TransitionKind, VehicleId, format_ts,
};

use crate::eta::{EtaModel, Remaining, TripPace};
use crate::haversine_m;

/// A move's status, as the contract names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MoveStatus {
    /// `booked`
    Booked,
    /// `in_transit`
    InTransit,
    /// `arrived`
    Arrived,
    /// `completed`
    Completed,
    /// `cancelled`
    Cancelled,
}

impl MoveStatus {
    /// The contract's name.
    pub fn as_str(self) -> &'static str {
        match self {
            MoveStatus::Booked => "booked",
            MoveStatus::InTransit => "in_transit",
            MoveStatus::Arrived => "arrived",
            MoveStatus::Completed => "completed",
            MoveStatus::Cancelled => "cancelled",
        }
    }

    /// Parses the contract's name.
    pub fn parse(s: &str) -> Option<MoveStatus> {
        Some(match s {
            "booked" => MoveStatus::Booked,
            "in_transit" => MoveStatus::InTransit,
            "arrived" => MoveStatus::Arrived,
            "completed" => MoveStatus::Completed,
            "cancelled" => MoveStatus::Cancelled,
            _ => return None,
        })
    }

    /// Completed or cancelled: nothing more happens to it.
    pub fn is_final(self) -> bool {
        matches!(self, MoveStatus::Completed | MoveStatus::Cancelled)
    }
}

/// How a vehicle was matched to a move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    /// A `JourneyChangeVehicle` naming the vehicle: the supplier's word that
    /// the journey is now on it, whatever matched before.
    ChangeVehicle,
    /// A point carrying one of the move's journey ids.
    JourneyId,
    /// A `JourneyStart` naming the vehicle.
    JourneyStart,
    /// The booking's `vehicle_registration`.
    Booked,
    /// Rule 4 confirmed: the probable vehicle arrived at the destination.
    Inferred,
    /// Rule 4: left the origin on the move's date; not yet confirmed.
    Probable,
}

impl MatchKind {
    fn strength(self) -> u8 {
        match self {
            MatchKind::ChangeVehicle => 7,
            MatchKind::JourneyId => 6,
            MatchKind::JourneyStart => 5,
            MatchKind::Booked => 3,
            MatchKind::Inferred => 2,
            MatchKind::Probable => 1,
        }
    }

    /// `probable` or `confirmed`, as the `move` frame's `vehicle_match`.
    pub fn as_str(self) -> &'static str {
        match self {
            MatchKind::Probable => "probable",
            _ => "confirmed",
        }
    }
}

/// One leg of a booked move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JourneySpec {
    /// The journey id.
    pub id: JourneyId,
    /// Where the leg starts.
    pub from_location: SiteId,
    /// Where the leg ends.
    pub to_location: SiteId,
    /// The vehicle, once known (booked or confirmed).
    pub vehicle: Option<VehicleId>,
}

/// A move as booked (and as saved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveSpec {
    /// The move id.
    pub id: MoveId,
    /// The human reference.
    pub reference: String,
    /// Origin.
    pub from_location: SiteId,
    /// Destination (after any redirect).
    pub to_location: SiteId,
    /// The day it is booked for.
    pub date: NaiveDate,
    /// Status.
    pub status: MoveStatus,
    /// The legs, in order.
    pub journeys: Vec<JourneySpec>,
}

/// A move's live view for `GET /api/moves/{id}`.
#[derive(Debug, Clone, PartialEq)]
pub struct MoveDetails {
    /// The move as booked, with its live status, destination and vehicles.
    pub spec: MoveSpec,
    /// The `move` frame body (status, vehicle, eta, interval, distance).
    pub view: MoveView,
    /// When it left its origin, if seen.
    pub departed_at: Option<DateTime<Utc>>,
    /// When it entered its destination's fence, if it has.
    pub arrived_at: Option<DateTime<Utc>>,
    /// Where it is lodging overnight, if it is.
    pub lodging: Option<SiteId>,
}

/// A completed leg (the store's arrival row).
pub type ArrivalFact = model::Arrival;

/// What the book asks the engine to do.
#[derive(Debug, Clone, PartialEq)]
pub enum MoveOutput {
    /// Fan a frame out: to `fleet`, to `vehicle:{vehicle}`, and to the site
    /// channels in `sites` (empty when no site may see it now).
    Frame {
        /// The frame.
        frame: Frame,
        /// The vehicle it concerns, if any.
        vehicle: Option<VehicleId>,
        /// The site channels that may see it.
        sites: Vec<SiteId>,
    },
    /// Save the move (status, destination, journeys' vehicles).
    Save(MoveSpec),
    /// Record a completed leg.
    Arrived(ArrivalFact),
    /// Keep an alert (its frame is a separate [`MoveOutput::Frame`]).
    Alert(AlertRecord),
    /// Tell the people outside (webhooks): kept with the batch, then sent.
    Notify(Notification),
}

/// Alert thresholds.
#[derive(Debug, Clone, Copy)]
pub struct MovesConfig {
    /// `gps_gap`: no point for this long while carrying a move in transit.
    pub gps_gap: Duration,
    /// `device_silent`: no point for this long while carrying any open move.
    pub device_silent: Duration,
    /// `stopped`: slower than `stopped_kmh` for this long, inside no site.
    pub stopped_after: Duration,
    /// The `stopped` speed, km/h.
    pub stopped_kmh: f64,
    /// A new `move` frame when the ETA moves by more than this.
    pub eta_resend: Duration,
    /// `arriving_30`: the ETA falls under this.
    pub arriving: Duration,
    /// A site sees a vehicle until this long after its arrival.
    pub site_grace: Duration,
    /// `off_route`: the corridor's half-width is the larger of this (m) ...
    pub corridor_min_m: f64,
    /// ... and this share of the origin–destination distance.
    pub corridor_share: f64,
    /// `off_route`: the distance from the corridor grows for this many
    /// samples, a minute apart, by `off_route_growth_m` in all.
    pub off_route_samples: usize,
    /// See `off_route_samples`.
    pub off_route_growth_m: f64,
}

impl Default for MovesConfig {
    fn default() -> Self {
        MovesConfig {
            gps_gap: Duration::seconds(60),
            device_silent: Duration::minutes(5),
            stopped_after: Duration::minutes(10),
            stopped_kmh: 5.0,
            eta_resend: Duration::seconds(60),
            arriving: Duration::minutes(30),
            site_grace: Duration::minutes(15),
            corridor_min_m: 5_000.0,
            corridor_share: 0.25,
            off_route_samples: 4,
            off_route_growth_m: 1_000.0,
        }
    }
}

#[derive(Debug, Clone)]
struct LiveMove {
    spec: MoveSpec,
    vehicle: Option<VehicleId>,
    matched: Option<MatchKind>,
    started_at: Option<DateTime<Utc>>,
    departed_at: Option<DateTime<Utc>>,
    arrived_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    driven_m: f64,
    lodging: Option<SiteId>,
    estimate: Option<(DateTime<Utc>, Remaining)>,
    sent: Option<Option<DateTime<Utc>>>,
    arriving_sent: bool,
    off_route_samples: VecDeque<(DateTime<Utc>, f64)>,
    off_route_alerted: bool,
    /// (made at, predicted minutes) every few minutes, for the interval's residuals.
    predictions: Vec<(DateTime<Utc>, f64)>,
    /// How the trip runs since it left (its fixes against the ETA model's curve).
    pace: Option<TripPace>,
    /// The site channels its last `move` frame went to: one that no longer
    /// sees the move gets the next frame once (a redirect's old destination).
    shown_to: Vec<SiteId>,
}

#[derive(Debug, Clone, Default)]
struct LiveVehicle {
    last: Option<(DateTime<Utc>, f64, f64)>,
    speed_kmh: Option<f64>,
    slow_since: Option<DateTime<Utc>>,
    inside: Vec<SiteId>,
    gap_alerted: bool,
    silent_alerted: bool,
    stopped_alerted: bool,
    moves: Vec<MoveId>,
}

/// Alerts kept for snapshots.
const RECENT_ALERTS: usize = 100;
/// Estimates kept per move for the interval's calibration.
const MAX_PREDICTIONS: usize = 120;
/// Minimum spacing of those estimates.
const PREDICTION_EVERY_S: i64 = 120;
/// A finished move is forgotten (kept only in the store) after this.
const FORGET_AFTER_H: i64 = 24;

/// Every live move and the vehicles carrying them.
#[derive(Debug)]
pub struct MoveBook {
    config: MovesConfig,
    sites: HashMap<SiteId, (f64, f64)>,
    moves: HashMap<MoveId, LiveMove>,
    journeys: HashMap<JourneyId, MoveId>,
    vehicles: HashMap<VehicleId, LiveVehicle>,
    eta: EtaModel,
    alerts: VecDeque<(AlertView, Vec<SiteId>)>,
}

/// Whether a move is part of its sites' day now: booked for today, on the
/// way (whatever its date: it is still coming), or arrived (or completed)
/// within the grace period; never once cancelled.
fn on_sites_day(m: &LiveMove, now: DateTime<Utc>, grace: Duration) -> bool {
    match m.spec.status {
        MoveStatus::Booked => m.spec.date == now.date_naive(),
        MoveStatus::InTransit => true,
        MoveStatus::Arrived | MoveStatus::Completed => m
            .arrived_at
            .or(m.finished_at)
            .is_some_and(|a| now <= a + grace),
        MoveStatus::Cancelled => false,
    }
}

/// Whether the move's vehicle is only a guess (rule 4, unconfirmed): such a
/// vehicle is never shown to a site, nor anything measured from it.
fn is_probable(m: &LiveMove) -> bool {
    m.vehicle.is_some() && m.matched == Some(MatchKind::Probable)
}

/// The site channels that get a move's live frames now (`move`,
/// `departure`, `arrival`): its origin and destination while it is part of
/// their day. None while its vehicle is only probable: the sites keep the
/// move as last shown (booked), and snapshots show it without the guess.
fn move_sites(m: &LiveMove, now: DateTime<Utc>, grace: Duration) -> Vec<SiteId> {
    if is_probable(m) || !on_sites_day(m, now, grace) {
        return Vec::new();
    }
    vec![m.spec.from_location.clone(), m.spec.to_location.clone()]
}

/// The site channels that may see the move's vehicle now (its positions,
/// its track, the alerts that name it): the origin and destination from the
/// journey's start (the move in transit) until the grace period after
/// arrival. Never a booked move's vehicle, nor a probable one.
fn vehicle_sites(m: &LiveMove, now: DateTime<Utc>, grace: Duration) -> Vec<SiteId> {
    if m.vehicle.is_none() || is_probable(m) {
        return Vec::new();
    }
    let visible = match m.spec.status {
        MoveStatus::InTransit => true,
        MoveStatus::Arrived | MoveStatus::Completed => {
            m.arrived_at.is_some_and(|a| now <= a + grace)
        }
        MoveStatus::Booked | MoveStatus::Cancelled => false,
    };
    if visible {
        vec![m.spec.from_location.clone(), m.spec.to_location.clone()]
    } else {
        Vec::new()
    }
}

/// Metres from P to the segment O–D, in a local plane.
fn corridor_distance_m(o: (f64, f64), d: (f64, f64), p: (f64, f64)) -> f64 {
    let lat0 = ((o.0 + d.0) / 2.0).to_radians();
    let k = 111_195.0;
    let xy = |q: (f64, f64)| ((q.1 - o.1) * k * lat0.cos(), (q.0 - o.0) * k);
    let (dx, dy) = xy(d);
    let (px, py) = xy(p);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        ((px * dx + py * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    ((px - t * dx).powi(2) + (py - t * dy).powi(2)).sqrt()
}

fn vehicle_reg(details: &serde_json::Value, key: &str) -> Option<VehicleId> {
    details
        .get(key)
        .and_then(|v| v.as_str())
        .and_then(|s| VehicleId::parse(s).ok())
}

impl MoveBook {
    /// An empty book over these sites, with this ETA model.
    pub fn new(sites: &[Site], config: MovesConfig, eta: EtaModel) -> Self {
        MoveBook {
            config,
            sites: sites
                .iter()
                .map(|s| (s.id.clone(), (s.lat, s.lon)))
                .collect(),
            moves: HashMap::new(),
            journeys: HashMap::new(),
            vehicles: HashMap::new(),
            eta,
            alerts: VecDeque::new(),
        }
    }

    /// The ETA model (learns from every arrival).
    pub fn eta_model(&self) -> &EtaModel {
        &self.eta
    }

    /// The ETA model, to teach it history.
    pub fn eta_model_mut(&mut self) -> &mut EtaModel {
        &mut self.eta
    }

    /// Whether a site is known (has coordinates).
    pub fn knows_site(&self, site: &SiteId) -> bool {
        self.sites.contains_key(site)
    }

    /// How many moves are live.
    pub fn len(&self) -> usize {
        self.moves.len()
    }

    /// Whether no move is live.
    pub fn is_empty(&self) -> bool {
        self.moves.is_empty()
    }

    // ---- registry -------------------------------------------------------

    /// Books or re-books a move (`PUT /api/moves/{id}`, or a restore on
    /// start). Live state (vehicle, departure, estimate) carries over; a
    /// journey's `vehicle` is a booked match (or restores a confirmed one).
    pub fn upsert(&mut self, spec: MoveSpec, now: DateTime<Utc>) -> Vec<MoveOutput> {
        let mut out = Vec::new();
        let id = spec.id.clone();
        for j in &spec.journeys {
            self.journeys.insert(j.id.clone(), id.clone());
        }
        let booked_vehicle = spec.journeys.iter().rev().find_map(|j| j.vehicle);
        match self.moves.get_mut(&id) {
            Some(m) => {
                let destination_changed = m.spec.to_location != spec.to_location;
                m.spec = spec;
                if destination_changed {
                    m.off_route_samples.clear();
                    m.estimate = None;
                }
            }
            None => {
                self.moves.insert(
                    id.clone(),
                    LiveMove {
                        spec,
                        vehicle: None,
                        matched: None,
                        started_at: None,
                        departed_at: None,
                        arrived_at: None,
                        finished_at: None,
                        driven_m: 0.0,
                        lodging: None,
                        estimate: None,
                        sent: None,
                        arriving_sent: false,
                        off_route_samples: VecDeque::new(),
                        off_route_alerted: false,
                        predictions: Vec::new(),
                        pace: None,
                        shown_to: Vec::new(),
                    },
                );
            }
        }
        if let Some(v) = booked_vehicle {
            self.assign(&id, v, MatchKind::Booked, now, &mut out);
        }
        if let Some(m) = self.moves.get_mut(&id) {
            if m.spec.status.is_final() {
                m.finished_at.get_or_insert(now);
                let v = m.vehicle;
                self.unlink(&id, v);
            } else if m.spec.status == MoveStatus::InTransit {
                m.started_at.get_or_insert(now);
            }
        }
        self.refresh(&id, now, true, &mut out);
        out
    }

    /// The live view of a move.
    pub fn details(&self, id: &MoveId) -> Option<MoveDetails> {
        let m = self.moves.get(id)?;
        Some(MoveDetails {
            spec: self.spec_of(m),
            view: self.view(m),
            departed_at: m.departed_at,
            arrived_at: m.arrived_at,
            lodging: m.lodging.clone(),
        })
    }

    /// The move ids a vehicle carries (for its position frames).
    pub fn move_ids_of(&self, vehicle: &VehicleId) -> Vec<MoveId> {
        self.vehicles
            .get(vehicle)
            .map(|v| v.moves.clone())
            .unwrap_or_default()
    }

    /// The site channels that may see a vehicle now: the origins and
    /// destinations of the moves it carries with a confirmed match, from
    /// the journey's start until the grace period after arrival.
    pub fn sites_seeing(&self, vehicle: &VehicleId, now: DateTime<Utc>) -> Vec<SiteId> {
        let Some(v) = self.vehicles.get(vehicle) else {
            return Vec::new();
        };
        let mut sites = Vec::new();
        for id in &v.moves {
            if let Some(m) = self.moves.get(id)
                && m.vehicle == Some(*vehicle)
            {
                for s in vehicle_sites(m, now, self.config.site_grace) {
                    if !sites.contains(&s) {
                        sites.push(s);
                    }
                }
            }
        }
        sites
    }

    /// The span of time in which any of `sites` may see `vehicle`'s track
    /// now: from the earliest journey start of the moves it carries that
    /// those sites may see, to now or (after arrival) arrival plus the
    /// grace period, whichever is earlier. `None` when none of them may see
    /// the vehicle now.
    pub fn site_window(
        &self,
        vehicle: &VehicleId,
        sites: &[SiteId],
        now: DateTime<Utc>,
    ) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let v = self.vehicles.get(vehicle)?;
        let mut window: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
        for id in &v.moves {
            let Some(m) = self.moves.get(id) else {
                continue;
            };
            if m.vehicle != Some(*vehicle)
                || !vehicle_sites(m, now, self.config.site_grace)
                    .iter()
                    .any(|s| sites.contains(s))
            {
                continue;
            }
            let start = m.started_at.or(m.departed_at).unwrap_or(now);
            let end = m
                .arrived_at
                .map_or(now, |a| (a + self.config.site_grace).min(now));
            window = Some(match window {
                None => (start, end),
                Some((s, e)) => (s.min(start), e.max(end)),
            });
        }
        window
    }

    /// The vehicles a site channel may see now.
    pub fn vehicles_seen_by(&self, site: &SiteId, now: DateTime<Utc>) -> Vec<VehicleId> {
        let mut out: Vec<VehicleId> = self
            .moves
            .values()
            .filter(|m| vehicle_sites(m, now, self.config.site_grace).contains(site))
            .filter_map(|m| m.vehicle)
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Live move views: every open move (`site` None, the control room), or
    /// a site's day (every move to or from it that [`on_sites_day`] keeps; a
    /// probable vehicle and what is measured from it left out).
    pub fn move_views(&self, site: Option<&SiteId>, now: DateTime<Utc>) -> Vec<MoveView> {
        let grace = self.config.site_grace;
        let mut views: Vec<MoveView> = self
            .moves
            .values()
            .filter_map(|m| match site {
                None => (!m.spec.status.is_final()).then(|| self.view(m)),
                Some(s) => ((m.spec.from_location == *s || m.spec.to_location == *s)
                    && on_sites_day(m, now, grace))
                .then(|| {
                    if is_probable(m) {
                        unconfirmed_view(self.view(m))
                    } else {
                        self.view(m)
                    }
                }),
            })
            .collect();
        views.sort_by(|a, b| a.move_id.cmp(&b.move_id));
        views
    }

    /// Recent alerts (newest last): all, or those a site channel may see.
    pub fn recent_alerts(&self, site: Option<&SiteId>) -> Vec<AlertView> {
        self.alerts
            .iter()
            .filter(|(_, sites)| site.is_none_or(|s| sites.contains(s)))
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// Marks a vehicle as inside a site (restored on start from the stored
    /// crossings), without any arrival: `stopped` is not raised there.
    pub fn restore_inside(&mut self, vehicle: VehicleId, site: &SiteId) {
        let v = self.vehicles.entry(vehicle).or_default();
        if !v.inside.contains(site) {
            v.inside.push(site.clone());
        }
    }

    /// The last live fix of a vehicle the book tracks (restored on start
    /// from the store's latest positions), so the time-based alerts measure
    /// silence from it. A slow fix counts as stopped from its time.
    pub fn restore_fix(&mut self, p: &Position) {
        let stopped_kmh = self.config.stopped_kmh;
        let Some(v) = self.vehicles.get_mut(&p.vehicle) else {
            return;
        };
        if v.last.is_some_and(|(ts, _, _)| ts >= p.ts) {
            return;
        }
        v.last = Some((p.ts, p.lat, p.lon));
        v.speed_kmh = p.speed_kmh;
        v.slow_since = p.speed_kmh.filter(|s| *s < stopped_kmh).map(|_| p.ts);
    }

    /// The alerts already raised (read back from the store on start, oldest
    /// first): they go back into the recent list, and each marks what it
    /// alerted, so a restart raises none of them again.
    pub fn restore_alerts(&mut self, alerts: &[AlertRecord], now: DateTime<Utc>) {
        for a in alerts {
            if let Some(m) = a.move_id.as_ref().and_then(|id| self.moves.get_mut(id)) {
                match a.kind.as_str() {
                    "arriving_30" => m.arriving_sent = true,
                    "off_route" => m.off_route_alerted = true,
                    _ => {}
                }
            }
            if let Some(v) = self.vehicles.get_mut(&a.vehicle) {
                // Only an alert of the current episode (raised after the
                // last fix) still holds.
                let current = v.last.is_none_or(|(ts, _, _)| a.ts > ts);
                match a.kind.as_str() {
                    "gps_gap" if current => v.gap_alerted = true,
                    "device_silent" if current => v.silent_alerted = true,
                    "stopped" if v.slow_since.is_some() => v.stopped_alerted = true,
                    _ => {}
                }
            }
            let sites = match a.move_id.as_ref().and_then(|id| self.moves.get(id)) {
                Some(m) => vehicle_sites(m, now, self.config.site_grace),
                None => self.sites_seeing(&a.vehicle, now),
            };
            self.remember_alert(a, sites);
        }
    }

    /// Estimates every move in transit from its vehicle's last fix (on start,
    /// after [`MoveBook::restore_fix`] and [`MoveBook::restore_alerts`]), so
    /// the board has arrival times before the next fix comes.
    pub fn restore_estimates(&mut self) -> Vec<MoveOutput> {
        let mut out = Vec::new();
        let ids: Vec<(MoveId, DateTime<Utc>)> = self
            .moves
            .values()
            .filter_map(|m| {
                let v = self.vehicles.get(&m.vehicle?)?;
                Some((m.spec.id.clone(), v.last?.0))
            })
            .collect();
        for (id, at) in ids {
            self.estimate(&id, at, &mut out);
        }
        out
    }

    // ---- evidence ------------------------------------------------------

    /// A live fix (not late, not bad): rule 1 matching, distance driven,
    /// ETA, `arriving_30`, `off_route`, and what the alerts need.
    pub fn on_position(&mut self, p: &Position, out: &mut Vec<MoveOutput>) {
        let now = p.ts;
        if let Some(j) = &p.journey_id
            && let Some(id) = self.journeys.get(j).cloned()
        {
            self.assign(&id, p.vehicle, MatchKind::JourneyId, now, out);
        }
        let stopped_kmh = self.config.stopped_kmh;
        let Some(v) = self.vehicles.get_mut(&p.vehicle) else {
            // Carries nothing: remember nothing (the tracker has its position).
            return;
        };
        let step = v
            .last
            .map(|(ts, lat, lon)| (haversine_m(lat, lon, p.lat, p.lon), (p.ts - ts)));
        let speed = p.speed_kmh.or_else(|| {
            step.and_then(|(m, dt)| {
                let s = dt.num_milliseconds() as f64 / 1000.0;
                (s > 0.0).then(|| m / s * 3.6)
            })
        });
        if let Some(s) = speed {
            v.speed_kmh = Some(match v.speed_kmh {
                Some(old) => 0.7 * old + 0.3 * s,
                None => s,
            });
            if s < stopped_kmh {
                v.slow_since.get_or_insert(now);
            } else {
                v.slow_since = None;
                v.stopped_alerted = false;
            }
        }
        v.last = Some((p.ts, p.lat, p.lon));
        v.gap_alerted = false;
        v.silent_alerted = false;
        let driven = step.map_or(0.0, |(m, _)| m);
        let ids = v.moves.clone();
        for id in &ids {
            if let Some(m) = self.moves.get_mut(id)
                && m.vehicle == Some(p.vehicle)
                && m.spec.status == MoveStatus::InTransit
            {
                m.driven_m += driven;
            }
            self.estimate(id, now, out);
            self.check_off_route(id, p, out);
        }
        self.check_stopped(p.vehicle, now, out);
    }

    /// A fence crossing confirmed by the geofence engine: departure
    /// (exit of the origin), arrival (enter of the destination), inference.
    /// A pass-through is never either.
    pub fn on_transition(&mut self, t: &FenceTransition, out: &mut Vec<MoveOutput>) {
        match t.kind {
            TransitionKind::PassThrough => {}
            TransitionKind::Enter => {
                // Kept for every vehicle: one assigned a move while waiting in a yard
                // must not be `stopped` there.
                self.restore_inside(t.vehicle, &t.site);
                self.on_enter(t, out);
            }
            TransitionKind::Exit => {
                if let Some(v) = self.vehicles.get_mut(&t.vehicle) {
                    v.inside.retain(|s| *s != t.site);
                }
                self.on_exit(t, out);
            }
        }
    }

    fn on_enter(&mut self, t: &FenceTransition, out: &mut Vec<MoveOutput>) {
        for id in self.move_ids_of(&t.vehicle) {
            let grace = self.config.site_grace;
            let Some(m) = self.moves.get_mut(&id) else {
                continue;
            };
            if m.vehicle != Some(t.vehicle) {
                continue;
            }
            // Only a move that has left arrives: a vehicle based at the
            // destination, or dropping another move there first, is not
            // bringing this one yet.
            let departed = m.spec.status == MoveStatus::InTransit
                || (m.matched == Some(MatchKind::Probable) && m.departed_at.is_some());
            if departed && m.spec.to_location == t.site {
                if m.matched == Some(MatchKind::Probable) {
                    m.matched = Some(MatchKind::Inferred);
                }
                m.spec.status = MoveStatus::Arrived;
                m.arrived_at = Some(t.ts);
                m.estimate = None;
                let fact = ArrivalFact {
                    move_id: id.clone(),
                    vehicle: t.vehicle,
                    site: t.site.clone(),
                    from_location: m.spec.from_location.clone(),
                    departed_at: m.departed_at.or(m.started_at).unwrap_or(t.ts),
                    arrived_at: t.ts,
                    distance_m: m.driven_m,
                };
                let predictions = std::mem::take(&mut m.predictions);
                let pace = m.pace.take();
                let sites = move_sites(m, t.ts, grace);
                out.push(MoveOutput::Frame {
                    frame: Frame::Arrival(SiteEventView {
                        move_id: id.clone(),
                        vehicle: t.vehicle,
                        site: t.site.clone(),
                        ts: format_ts(&t.ts),
                    }),
                    vehicle: Some(t.vehicle),
                    sites,
                });
                for (made, predicted) in predictions {
                    let actual = (t.ts - made).num_seconds() as f64 / 60.0;
                    self.eta.learn_residual(predicted, actual);
                }
                // A trip redirected on the road did not start at a site: its
                // first 10 km would teach open road as a way out of a site, so
                // the curves do not learn it.
                if let Some(pace) = pace.as_ref().filter(|p| p.from_origin) {
                    self.eta
                        .learn_track(&fact.from_location, &fact.site, pace, t.ts);
                }
                if let (Some(&o), Some(&d)) = (
                    self.sites.get(&fact.from_location),
                    self.sites.get(&fact.site),
                ) && fact.departed_at < fact.arrived_at
                {
                    let direct = haversine_m(o.0, o.1, d.0, d.1);
                    self.eta.learn_trip(
                        &fact.from_location,
                        &fact.site,
                        direct,
                        fact.distance_m,
                        fact.departed_at,
                        fact.arrived_at,
                    );
                }
                out.push(MoveOutput::Notify(Notification {
                    kind: NotificationKind::Arrival,
                    occurred_at: t.ts,
                    move_id: Some(id.clone()),
                    vehicle: Some(t.vehicle),
                    site: Some(t.site.clone()),
                    sites: vec![fact.from_location.clone(), fact.site.clone()],
                    alert_kind: None,
                    detail: None,
                    expected_at: None,
                }));
                out.push(MoveOutput::Arrived(fact));
                self.refresh(&id, t.ts, true, out);
            } else if m.matched == Some(MatchKind::Probable)
                && m.spec.from_location == t.site
                && m.departed_at.is_some()
            {
                // The probable vehicle went back to the origin: not this move's.
                self.drop_vehicle(&id, t.ts, out);
            }
        }
    }

    fn on_exit(&mut self, t: &FenceTransition, out: &mut Vec<MoveOutput>) {
        let mut carried = false;
        for id in self.move_ids_of(&t.vehicle) {
            let Some(m) = self.moves.get_mut(&id) else {
                continue;
            };
            if m.vehicle != Some(t.vehicle) || m.spec.from_location != t.site {
                continue;
            }
            carried = true;
            if m.departed_at.is_some()
                || !matches!(m.spec.status, MoveStatus::Booked | MoveStatus::InTransit)
            {
                continue;
            }
            self.depart(&id, t, out);
        }
        if carried {
            return;
        }
        // Rule 4: a vehicle carrying nothing from here leaves on the move's date.
        let candidates: Vec<MoveId> = self
            .moves
            .values()
            .filter(|m| {
                m.vehicle.is_none()
                    && m.spec.status == MoveStatus::Booked
                    && m.spec.from_location == t.site
                    && m.spec.date == t.ts.date_naive()
            })
            .map(|m| m.spec.id.clone())
            .collect();
        for id in candidates {
            self.assign(&id, t.vehicle, MatchKind::Probable, t.ts, out);
            self.depart(&id, t, out);
        }
    }

    fn depart(&mut self, id: &MoveId, t: &FenceTransition, out: &mut Vec<MoveOutput>) {
        let grace = self.config.site_grace;
        let Some(m) = self.moves.get_mut(id) else {
            return;
        };
        m.departed_at = Some(t.ts);
        m.started_at.get_or_insert(t.ts);
        m.driven_m = 0.0;
        m.pace = match (
            self.sites.get(&m.spec.from_location),
            self.sites.get(&m.spec.to_location),
        ) {
            (Some(o), Some(d)) => Some(TripPace::new(
                haversine_m(o.0, o.1, d.0, d.1) / 1000.0,
                true,
            )),
            _ => None,
        };
        let probable = m.matched == Some(MatchKind::Probable);
        if !probable {
            m.spec.status = MoveStatus::InTransit;
        }
        let sites = move_sites(m, t.ts, grace);
        if !probable {
            out.push(MoveOutput::Notify(Notification {
                kind: NotificationKind::Departure,
                occurred_at: t.ts,
                move_id: Some(id.clone()),
                vehicle: Some(t.vehicle),
                site: Some(t.site.clone()),
                sites: vec![m.spec.from_location.clone(), m.spec.to_location.clone()],
                alert_kind: None,
                detail: None,
                expected_at: None,
            }));
        }
        out.push(MoveOutput::Frame {
            frame: Frame::Departure(SiteEventView {
                move_id: id.clone(),
                vehicle: t.vehicle,
                site: t.site.clone(),
                ts: format_ts(&t.ts),
            }),
            vehicle: Some(t.vehicle),
            sites,
        });
        self.refresh(id, t.ts, !probable, out);
    }

    /// A BaSM event.
    pub fn on_event(&mut self, e: &Event, out: &mut Vec<MoveOutput>) {
        let now = e.occurred_at;
        let id = e
            .move_id
            .clone()
            .filter(|id| self.moves.contains_key(id))
            .or_else(|| {
                e.journey_id
                    .as_ref()
                    .and_then(|j| self.journeys.get(j).cloned())
            });
        match &e.kind {
            EventKind::MoveStart => {
                if let Some(id) = id {
                    self.set_status(&id, MoveStatus::InTransit, now, out);
                }
            }
            EventKind::MoveComplete => {
                if let Some(id) = id {
                    self.set_status(&id, MoveStatus::Completed, now, out);
                }
            }
            EventKind::MoveCancel => {
                if let Some(id) = id {
                    if self.moves.get(&id).and_then(|m| m.matched) == Some(MatchKind::Probable) {
                        self.drop_vehicle(&id, now, out);
                    }
                    self.set_status(&id, MoveStatus::Cancelled, now, out);
                }
            }
            EventKind::MoveRedirect => {
                let to = e
                    .details
                    .get("to_location")
                    .and_then(|v| v.as_str())
                    .and_then(|s| SiteId::parse(s).ok());
                if let (Some(id), Some(to)) = (id, to)
                    && let Some(m) = self.moves.get_mut(&id)
                    && !m.spec.status.is_final()
                {
                    m.spec.to_location = to.clone();
                    if let Some(last) = m.spec.journeys.last_mut() {
                        last.to_location = to;
                    }
                    m.estimate = None;
                    m.sent = None;
                    m.arriving_sent = false;
                    m.off_route_samples.clear();
                    m.off_route_alerted = false;
                    m.predictions.clear();
                    // The pace starts again from where the vehicle is now.
                    let here = m
                        .vehicle
                        .and_then(|v| self.vehicles.get(&v))
                        .and_then(|v| v.last)
                        .zip(self.sites.get(&m.spec.to_location));
                    m.pace = match here {
                        Some(((_, lat, lon), d)) if m.departed_at.is_some() => Some(TripPace::new(
                            haversine_m(lat, lon, d.0, d.1) / 1000.0,
                            false,
                        )),
                        _ => None,
                    };
                    if m.spec.status == MoveStatus::Arrived {
                        m.spec.status = MoveStatus::InTransit;
                        m.arrived_at = None;
                    }
                    self.estimate(&id, now, out);
                    self.refresh(&id, now, true, out);
                }
            }
            EventKind::MoveLodgingStart | EventKind::MoveLodgingEnd => {
                if let Some(id) = id
                    && let Some(m) = self.moves.get_mut(&id)
                {
                    m.lodging = if e.kind == EventKind::MoveLodgingStart {
                        Some(
                            e.details
                                .get("location")
                                .and_then(|v| v.as_str())
                                .and_then(|s| SiteId::parse(s).ok())
                                .unwrap_or_else(|| m.spec.to_location.clone()),
                        )
                    } else {
                        None
                    };
                    m.estimate = None;
                    m.sent = None;
                    self.refresh(&id, now, false, out);
                }
            }
            EventKind::JourneyStart => {
                if let Some(id) = id {
                    let v = vehicle_reg(&e.details, "vehicle_reg").unwrap_or(e.vehicle);
                    self.assign(&id, v, MatchKind::JourneyStart, now, out);
                    self.set_status(&id, MoveStatus::InTransit, now, out);
                }
            }
            EventKind::JourneyChangeVehicle => {
                let Some(v) = vehicle_reg(&e.details, "vehicle_reg") else {
                    return;
                };
                // Named by move or journey; else the open moves the previous
                // vehicle (or the reporting one, when it is not the new one) carries.
                let ids = match id {
                    Some(id) => vec![id],
                    None => {
                        let previous = vehicle_reg(&e.details, "previous_vehicle_reg")
                            .or((e.vehicle != v).then_some(e.vehicle));
                        previous.map_or_else(Vec::new, |p| {
                            self.move_ids_of(&p)
                                .into_iter()
                                .filter(|m| {
                                    self.moves.get(m).is_some_and(|m| {
                                        m.vehicle == Some(p) && !m.spec.status.is_final()
                                    })
                                })
                                .collect()
                        })
                    }
                };
                for id in ids {
                    self.assign(&id, v, MatchKind::ChangeVehicle, now, out);
                }
            }
            EventKind::PersonMoveVehicleBrokeDown | EventKind::PersonMoveVehicleSystemsFailed => {
                let kind = if e.kind == EventKind::PersonMoveVehicleBrokeDown {
                    "breakdown"
                } else {
                    "systems_failed"
                };
                let move_id = id.or_else(|| {
                    self.move_ids_of(&e.vehicle).into_iter().find(|m| {
                        self.moves
                            .get(m)
                            .is_some_and(|m| m.spec.status == MoveStatus::InTransit)
                    })
                });
                let detail = format!("{} reported by the vehicle", e.kind.as_str());
                self.alert(kind, e.vehicle, move_id, now, detail, out);
            }
            _ => {}
        }
    }

    /// Time-based alerts at `now` (the ticker calls this every few seconds):
    /// `gps_gap`, `device_silent`, `stopped`. Also forgets moves finished
    /// a day ago.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Vec<MoveOutput> {
        let mut out = Vec::new();
        let vehicles: Vec<VehicleId> = self.vehicles.keys().copied().collect();
        for vehicle in vehicles {
            let (in_transit, open) = self.carrying(&vehicle);
            let Some(v) = self.vehicles.get_mut(&vehicle) else {
                continue;
            };
            let Some((last, _, _)) = v.last else { continue };
            let silence = now - last;
            // Each is time-stamped when its condition began (the last fix plus
            // the threshold), so detecting it again after a restart names the
            // same alert and the store keeps it once.
            let mut fire = Vec::new();
            if in_transit.is_some() && silence > self.config.gps_gap && !v.gap_alerted {
                v.gap_alerted = true;
                fire.push((
                    "gps_gap",
                    in_transit.clone(),
                    last + self.config.gps_gap,
                    format!("no position for {} s", silence.num_seconds()),
                ));
            }
            if open.is_some() && silence > self.config.device_silent && !v.silent_alerted {
                v.silent_alerted = true;
                fire.push((
                    "device_silent",
                    in_transit.clone().or(open),
                    last + self.config.device_silent,
                    format!("no position for {} min", silence.num_minutes()),
                ));
            }
            for (kind, move_id, at, detail) in fire {
                self.alert(kind, vehicle, move_id, at, detail, &mut out);
            }
            self.check_stopped(vehicle, now, &mut out);
        }
        let forget = now - Duration::hours(FORGET_AFTER_H);
        let old: Vec<MoveId> = self
            .moves
            .values()
            .filter(|m| m.finished_at.is_some_and(|f| f < forget))
            .map(|m| m.spec.id.clone())
            .collect();
        for id in old {
            if let Some(m) = self.moves.remove(&id) {
                for j in &m.spec.journeys {
                    self.journeys.remove(&j.id);
                }
                self.unlink(&id, m.vehicle);
            }
        }
        self.vehicles
            .retain(|_, v| !v.moves.is_empty() || !v.inside.is_empty());
        out
    }

    // ---- internals -----------------------------------------------------

    /// The first in-transit (not lodging) move and the first open move a vehicle carries.
    fn carrying(&self, vehicle: &VehicleId) -> (Option<MoveId>, Option<MoveId>) {
        let mut in_transit = None;
        let mut open = None;
        if let Some(v) = self.vehicles.get(vehicle) {
            for id in &v.moves {
                let Some(m) = self.moves.get(id) else {
                    continue;
                };
                if m.vehicle != Some(*vehicle) || m.lodging.is_some() {
                    continue;
                }
                match m.spec.status {
                    MoveStatus::InTransit => {
                        in_transit.get_or_insert(id.clone());
                        open.get_or_insert(id.clone());
                    }
                    MoveStatus::Booked => {
                        open.get_or_insert(id.clone());
                    }
                    _ => {}
                }
            }
        }
        (in_transit, open)
    }

    fn check_stopped(&mut self, vehicle: VehicleId, now: DateTime<Utc>, out: &mut Vec<MoveOutput>) {
        let (in_transit, _) = self.carrying(&vehicle);
        let Some(move_id) = in_transit else { return };
        let Some(v) = self.vehicles.get_mut(&vehicle) else {
            return;
        };
        let Some(since) = v.slow_since else { return };
        if v.stopped_alerted || !v.inside.is_empty() || now - since < self.config.stopped_after {
            return;
        }
        v.stopped_alerted = true;
        let detail = format!(
            "below {} km/h for {} min, away from any site",
            self.config.stopped_kmh,
            (now - since).num_minutes()
        );
        let at = since + self.config.stopped_after;
        self.alert("stopped", vehicle, Some(move_id), at, detail, out);
    }

    fn check_off_route(&mut self, id: &MoveId, p: &Position, out: &mut Vec<MoveOutput>) {
        let config = self.config;
        let Some(m) = self.moves.get_mut(id) else {
            return;
        };
        if m.vehicle != Some(p.vehicle)
            || m.spec.status != MoveStatus::InTransit
            || m.lodging.is_some()
        {
            return;
        }
        let (Some(&o), Some(&d)) = (
            self.sites.get(&m.spec.from_location),
            self.sites.get(&m.spec.to_location),
        ) else {
            return;
        };
        let dist = corridor_distance_m(o, d, (p.lat, p.lon));
        let half_width = config
            .corridor_min_m
            .max(config.corridor_share * haversine_m(o.0, o.1, d.0, d.1));
        if dist < half_width / 2.0 {
            m.off_route_alerted = false;
        }
        if m.off_route_samples
            .back()
            .is_some_and(|(ts, _)| p.ts - *ts < Duration::seconds(60))
        {
            return;
        }
        if m.off_route_samples.len() >= config.off_route_samples {
            m.off_route_samples.pop_front();
        }
        m.off_route_samples.push_back((p.ts, dist));
        let s = &m.off_route_samples;
        let growing = s.len() >= config.off_route_samples
            && s.iter().zip(s.iter().skip(1)).all(|(a, b)| b.1 > a.1)
            && s.back().map_or(0.0, |b| b.1) - s.front().map_or(0.0, |a| a.1)
                >= config.off_route_growth_m;
        if growing && dist > half_width && !m.off_route_alerted {
            m.off_route_alerted = true;
            let detail = format!(
                "{:.1} km from the {}–{} corridor and moving away",
                dist / 1000.0,
                m.spec.from_location,
                m.spec.to_location
            );
            self.alert("off_route", p.vehicle, Some(id.clone()), p.ts, detail, out);
        }
    }

    /// Keeps an alert for snapshots; returns its frame body.
    fn remember_alert(&mut self, a: &AlertRecord, sites: Vec<SiteId>) -> AlertView {
        let view = AlertView {
            kind: a.kind.clone(),
            vehicle: a.vehicle,
            move_id: a.move_id.clone(),
            ts: format_ts(&a.ts),
            detail: a.detail.clone(),
        };
        if self.alerts.len() >= RECENT_ALERTS {
            self.alerts.pop_front();
        }
        self.alerts.push_back((view.clone(), sites));
        view
    }

    fn alert(
        &mut self,
        kind: &str,
        vehicle: VehicleId,
        move_id: Option<MoveId>,
        now: DateTime<Utc>,
        detail: String,
        out: &mut Vec<MoveOutput>,
    ) {
        self.alert_expecting(kind, vehicle, move_id, now, detail, None, out);
    }

    /// As [`MoveBook::alert`]; `expected_at` is the ETA an `arriving_30` tells.
    #[allow(clippy::too_many_arguments)]
    fn alert_expecting(
        &mut self,
        kind: &str,
        vehicle: VehicleId,
        move_id: Option<MoveId>,
        now: DateTime<Utc>,
        detail: String,
        expected_at: Option<DateTime<Utc>>,
        out: &mut Vec<MoveOutput>,
    ) {
        let the_move = move_id.as_ref().and_then(|id| self.moves.get(id));
        let sites = match the_move {
            Some(m) => vehicle_sites(m, now, self.config.site_grace),
            None => self.sites_seeing(&vehicle, now),
        };
        let arriving = kind == "arriving_30";
        out.push(MoveOutput::Notify(Notification {
            kind: if arriving {
                NotificationKind::Arriving30
            } else {
                NotificationKind::Alert
            },
            occurred_at: now,
            move_id: move_id.clone(),
            vehicle: Some(vehicle),
            site: the_move
                .filter(|_| arriving)
                .map(|m| m.spec.to_location.clone()),
            sites: the_move.map_or_else(Vec::new, |m| {
                vec![m.spec.from_location.clone(), m.spec.to_location.clone()]
            }),
            alert_kind: (!arriving).then(|| kind.to_owned()),
            detail: Some(detail.clone()),
            expected_at,
        }));
        let record = AlertRecord {
            kind: kind.to_owned(),
            vehicle,
            move_id,
            ts: now,
            detail,
        };
        let view = self.remember_alert(&record, sites.clone());
        out.push(MoveOutput::Alert(record));
        out.push(MoveOutput::Frame {
            frame: Frame::Alert(view),
            vehicle: Some(vehicle),
            sites,
        });
    }

    /// Matches `vehicle` to a move unless stronger evidence already names another.
    fn assign(
        &mut self,
        id: &MoveId,
        vehicle: VehicleId,
        kind: MatchKind,
        now: DateTime<Utc>,
        out: &mut Vec<MoveOutput>,
    ) {
        let Some(m) = self.moves.get_mut(id) else {
            return;
        };
        if m.spec.status.is_final() {
            return;
        }
        let old = m.vehicle;
        if old == Some(vehicle) {
            if m.matched.is_none_or(|k| kind.strength() > k.strength()) {
                let was_probable = m.matched == Some(MatchKind::Probable);
                m.matched = Some(kind);
                if was_probable {
                    // Confirmed: it left the origin with the move.
                    if m.departed_at.is_some() && m.spec.status == MoveStatus::Booked {
                        m.spec.status = MoveStatus::InTransit;
                    }
                    self.refresh(id, now, true, out);
                }
            }
            return;
        }
        // A different vehicle: evidence at least as strong replaces it
        // (a vehicle change is news, not a contradiction).
        if m.matched.is_some_and(|k| kind.strength() < k.strength()) {
            return;
        }
        let dropped_probable = m.matched == Some(MatchKind::Probable);
        m.vehicle = Some(vehicle);
        m.matched = Some(kind);
        m.estimate = None;
        m.sent = None;
        m.off_route_samples.clear();
        if dropped_probable {
            // The inferred departure was another vehicle's.
            m.departed_at = None;
            m.driven_m = 0.0;
            m.pace = None;
        } else if let Some(p) = &mut m.pace {
            // The next fix comes from another vehicle: no step from the last.
            p.break_step();
        }
        if kind != MatchKind::Probable
            && let Some(j) = m.spec.journeys.last_mut()
        {
            j.vehicle = Some(vehicle);
        }
        self.unlink(id, old);
        let v = self.vehicles.entry(vehicle).or_default();
        if !v.moves.contains(id) {
            v.moves.push(id.clone());
        }
        self.refresh(id, now, kind != MatchKind::Probable, out);
    }

    fn drop_vehicle(&mut self, id: &MoveId, now: DateTime<Utc>, out: &mut Vec<MoveOutput>) {
        let Some(m) = self.moves.get_mut(id) else {
            return;
        };
        let old = m.vehicle.take();
        m.matched = None;
        m.departed_at = None;
        m.estimate = None;
        m.driven_m = 0.0;
        m.pace = None;
        self.unlink(id, old);
        self.refresh(id, now, false, out);
    }

    fn unlink(&mut self, id: &MoveId, vehicle: Option<VehicleId>) {
        if let Some(v) = vehicle.and_then(|v| self.vehicles.get_mut(&v)) {
            v.moves.retain(|m| m != id);
        }
    }

    fn set_status(
        &mut self,
        id: &MoveId,
        status: MoveStatus,
        now: DateTime<Utc>,
        out: &mut Vec<MoveOutput>,
    ) {
        let Some(m) = self.moves.get_mut(id) else {
            return;
        };
        if m.spec.status == status || m.spec.status.is_final() {
            return;
        }
        // An event never undoes an arrival seen by the fences (but completes it).
        if m.spec.status == MoveStatus::Arrived && status == MoveStatus::InTransit {
            return;
        }
        m.spec.status = status;
        match status {
            MoveStatus::InTransit => {
                m.started_at.get_or_insert(now);
            }
            MoveStatus::Completed | MoveStatus::Cancelled => {
                m.finished_at = Some(now);
                m.estimate = None;
            }
            _ => {}
        }
        self.refresh(id, now, true, out);
        if status == MoveStatus::Cancelled
            && let Some(m) = self.moves.get(id)
        {
            let v = m.vehicle;
            self.unlink(id, v);
        }
    }

    /// Sends the move's frame when its status changed or its ETA moved by
    /// more than `eta_resend`; `save` also asks the engine to store it.
    fn refresh(&mut self, id: &MoveId, now: DateTime<Utc>, save: bool, out: &mut Vec<MoveOutput>) {
        let grace = self.config.site_grace;
        let Some(m) = self.moves.get(id) else { return };
        let view = self.view(m);
        let spec = self.spec_of(m);
        let Some(m) = self.moves.get_mut(id) else {
            return;
        };
        let seeing = move_sites(m, now, grace);
        let mut sites = seeing.clone();
        if !is_probable(m) {
            // A site that saw the move and no longer does (a redirect's old
            // destination, a cancellation) is told this once.
            for s in std::mem::replace(&mut m.shown_to, seeing) {
                if !sites.contains(&s) {
                    sites.push(s);
                }
            }
        }
        m.sent = Some(m.estimate.map(|(at, r)| eta_at(at, r.minutes)));
        out.push(MoveOutput::Frame {
            frame: Frame::Move(view),
            vehicle: m.vehicle,
            sites,
        });
        if save {
            out.push(MoveOutput::Save(spec));
        }
    }

    /// Re-estimates an in-transit move at a fix; sends a `move` frame when
    /// the ETA moved by more than a minute, and `arriving_30` once.
    fn estimate(&mut self, id: &MoveId, now: DateTime<Utc>, out: &mut Vec<MoveOutput>) {
        let config = self.config;
        let Some(m) = self.moves.get(id) else { return };
        let Some(vehicle) = m.vehicle else { return };
        let estimating = m.lodging.is_none()
            && (m.spec.status == MoveStatus::InTransit
                || (m.matched == Some(MatchKind::Probable) && m.departed_at.is_some()));
        if !estimating {
            return;
        }
        let Some(v) = self.vehicles.get(&vehicle) else {
            return;
        };
        let Some((_, lat, lon)) = v.last else { return };
        let Some(&dest) = self.sites.get(&m.spec.to_location) else {
            return;
        };
        let direct = haversine_m(lat, lon, dest.0, dest.1);
        let from_origin = self
            .sites
            .get(&m.spec.from_location)
            .map_or(f64::INFINITY, |o| haversine_m(lat, lon, o.0, o.1));
        let (fix_ts, live_kmh) = (v.last.map(|l| l.0), v.speed_kmh);
        let (from, to) = (m.spec.from_location.clone(), m.spec.to_location.clone());
        let Some(m) = self.moves.get_mut(id) else {
            return;
        };
        if let (Some(pace), Some(ts)) = (&mut m.pace, fix_ts) {
            self.eta.advance(pace, &from, &to, ts, direct);
        }
        let r = self.eta.remaining(
            &from,
            &to,
            direct,
            from_origin,
            now,
            live_kmh,
            m.pace.as_ref(),
        );
        let eta = eta_at(now, r.minutes);
        m.estimate = Some((now, r));
        if m.predictions.len() < MAX_PREDICTIONS
            && m.predictions
                .last()
                .is_none_or(|(t, _)| (now - *t).num_seconds() >= PREDICTION_EVERY_S)
        {
            m.predictions.push((now, r.raw_minutes));
        }
        let moved = match m.sent {
            Some(Some(sent)) => (eta - sent).abs() > config.eta_resend,
            _ => true,
        };
        let arriving = !m.arriving_sent && eta - now < config.arriving;
        if arriving {
            m.arriving_sent = true;
        }
        if moved {
            self.refresh(id, now, false, out);
        }
        if arriving {
            let detail = format!(
                "arriving at {} in about {:.0} min",
                self.moves
                    .get(id)
                    .map_or(String::new(), |m| m.spec.to_location.to_string()),
                r.minutes
            );
            self.alert_expecting(
                "arriving_30",
                vehicle,
                Some(id.clone()),
                now,
                detail,
                Some(eta),
                out,
            );
        }
    }

    fn spec_of(&self, m: &LiveMove) -> MoveSpec {
        let mut spec = m.spec.clone();
        if let (Some(v), Some(k)) = (m.vehicle, m.matched)
            && k != MatchKind::Probable
            && let Some(last) = spec.journeys.last_mut()
        {
            last.vehicle = Some(v);
        }
        spec
    }

    fn view(&self, m: &LiveMove) -> MoveView {
        let est = m.estimate.filter(|_| {
            m.lodging.is_none()
                && !matches!(
                    m.spec.status,
                    MoveStatus::Arrived | MoveStatus::Completed | MoveStatus::Cancelled
                )
        });
        let ts = |at: DateTime<Utc>, minutes: f64| Some(format_ts(&eta_at(at, minutes)));
        MoveView {
            move_id: m.spec.id.clone(),
            status: m.spec.status.as_str(),
            vehicle: m.vehicle,
            eta: est.and_then(|(at, r)| ts(at, r.minutes)),
            eta_low: est.and_then(|(at, r)| ts(at, r.low_minutes)),
            eta_high: est.and_then(|(at, r)| ts(at, r.high_minutes)),
            distance_remaining_m: est.map(|(_, r)| r.road_m.round()),
            from_location: m.spec.from_location.clone(),
            to_location: m.spec.to_location.clone(),
            vehicle_match: m.vehicle.and(m.matched).map(MatchKind::as_str),
        }
    }
}

/// A move's view without its probable vehicle, nor the ETA measured from it.
fn unconfirmed_view(view: MoveView) -> MoveView {
    MoveView {
        vehicle: None,
        vehicle_match: None,
        eta: None,
        eta_low: None,
        eta_high: None,
        distance_remaining_m: None,
        ..view
    }
}

/// `at` plus `minutes`, to the second.
fn eta_at(at: DateTime<Utc>, minutes: f64) -> DateTime<Utc> {
    at + Duration::seconds((minutes * 60.0).round() as i64)
}
