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

mod alerts;
mod frames;
mod matching;
mod peers;
#[cfg(test)]
mod test_support;
mod view;
mod visibility;

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use model::wire::{AlertView, Frame, MoveView};
use model::{
    AlertRecord, Event, EventKind, FenceTransition, JourneyId, MoveId, Notification,
    NotificationKind, Position, Site, SiteId, TransitionKind, VehicleId,
};

pub use matching::MatchKind;
pub use peers::{Claim, Handover, Lesson, PortableHandover};
pub use view::{BookView, MoveEntry};
pub use visibility::{MoveFacts, Visibility, redact_probable};

use crate::eta::{EtaModel, Remaining, TripPace};
use crate::haversine_m;
use frames::{eta_at, site_event};
use matching::vehicle_reg;

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
    /// Arrivals learned from since the engine last took them, for the
    /// other partitions' ETA models ([`peers`]).
    lessons: Vec<Lesson>,
    /// This book's partition (ranks its claims; 0 with one partition).
    partition: usize,
    /// Matches made since the engine last took them ([`peers`]).
    claims: Vec<Claim>,
    /// When each move's current match was claimed, for the claims' rank.
    claimed_at: HashMap<MoveId, DateTime<Utc>>,
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
            partition: 0,
            lessons: Vec::new(),
            claims: Vec::new(),
            claimed_at: HashMap::new(),
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

    /// Restores the times the stored status does not carry (on start, or
    /// when a cluster node rebuilds a partition): an arrived move's
    /// departure and arrival from its stored arrival, and a move in
    /// transit's departure from its vehicle's last stored exit of the
    /// origin. Without them an arrived move would leave its site's day at
    /// once, and a board would lose its "arrived" row.
    pub fn restore_times(&mut self, arrivals: &[model::Arrival], crossings: &[FenceTransition]) {
        let arrived: HashMap<&MoveId, &model::Arrival> =
            arrivals.iter().map(|a| (&a.move_id, a)).collect();
        for m in self.moves.values_mut() {
            match m.spec.status {
                MoveStatus::Arrived | MoveStatus::Completed if m.arrived_at.is_none() => {
                    if let Some(a) = arrived.get(&m.spec.id) {
                        m.departed_at = m.departed_at.or(Some(a.departed_at));
                        m.started_at = m.started_at.or(Some(a.departed_at));
                        m.arrived_at = Some(a.arrived_at);
                    }
                }
                MoveStatus::InTransit if m.departed_at.is_none() => {
                    let left = m.vehicle.and_then(|v| {
                        crossings.iter().find(|c| {
                            c.vehicle == v
                                && c.site == m.spec.from_location
                                && c.kind == model::TransitionKind::Exit
                        })
                    });
                    if let Some(c) = left {
                        m.departed_at = Some(c.ts);
                        m.started_at = m.started_at.or(Some(c.ts));
                    }
                }
                _ => {}
            }
        }
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
        if let Some(id) = p
            .journey_id
            .as_ref()
            .and_then(|j| self.journeys.get(j).cloned())
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
        let policy = self.visibility();
        for id in self.move_ids_of(&t.vehicle) {
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
                let sites = policy.move_sites(&m.facts(), t.ts);
                out.push(site_event(
                    Frame::Arrival,
                    &id,
                    t.vehicle,
                    &t.site,
                    t.ts,
                    sites,
                ));
                let lesson = Lesson {
                    residuals: predictions
                        .into_iter()
                        .map(|(made, predicted)| {
                            (predicted, (t.ts - made).num_seconds() as f64 / 60.0)
                        })
                        .collect(),
                    // A trip redirected on the road did not start at a site: its
                    // first 10 km would teach open road as a way out of a site, so
                    // the curves do not learn it.
                    pace: pace.filter(|p| p.from_origin),
                    fact: fact.clone(),
                };
                self.learn(&lesson);
                self.lessons.push(lesson);
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
        for id in self.probable_candidates(&t.site, t.ts.date_naive()) {
            self.assign(&id, t.vehicle, MatchKind::Probable, t.ts, out);
            self.depart(&id, t, out);
        }
    }

    fn depart(&mut self, id: &MoveId, t: &FenceTransition, out: &mut Vec<MoveOutput>) {
        let policy = self.visibility();
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
        let sites = policy.move_sites(&m.facts(), t.ts);
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
        out.push(site_event(
            Frame::Departure,
            id,
            t.vehicle,
            &t.site,
            t.ts,
            sites,
        ));
        self.refresh(id, t.ts, !probable, out);
    }

    /// A BaSM event.
    pub fn on_event(&mut self, e: &Event, out: &mut Vec<MoveOutput>) {
        let now = e.occurred_at;
        let id = self.move_of_event(e);
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
                for id in self.change_vehicle_targets(e, v, id) {
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

    // ---- internals -----------------------------------------------------

    /// Forgets the moves finished a day ago (the store keeps them), and the
    /// vehicles left carrying nothing and inside no site.
    fn forget_finished(&mut self, now: DateTime<Utc>) {
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
    }

    /// Moves a move to `status` from an event (never out of a final one,
    /// nor an arrival back to in transit).
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
        let arriving = alerts::arriving_due(m.arriving_sent, eta, now, config.arriving);
        if arriving {
            m.arriving_sent = true;
        }
        if moved {
            self.refresh(id, now, false, out);
        }
        if arriving {
            self.raise_arriving(id, vehicle, now, eta, r.minutes, out);
        }
    }
}
