//! One move book per partition (the engine hashes vehicles onto
//! partitions): every partition holds every booking, but a move's live state
//! advances only in the partition of the vehicle carrying it, its *owner*.
//!
//! When a book matches a move to one of its vehicles (or matches it more
//! strongly), it records a [`Claim`]; the engine sends each claim to the
//! other partitions in order ([`MoveBook::on_claim`]). The claims are ranked
//! by (evidence strength, time, partition): a book yields a move only to a
//! higher-ranked claim, so whichever order claims cross in, every book ends
//! agreeing on one owner. A book that yields a move it owned hands its
//! journey so far (status, departure, distance driven, the ETA's samples)
//! to the claimer as a [`Handover`], which [`MoveBook::adopt`] merges: a van
//! changed mid-journey arrives as the move it carries, not a fresh booking.
//!
//! What a book says about a move it does not own (frames, saves, alerts) is
//! dropped by the engine ([`MoveBook::owns`]). With one partition every move
//! is owned and no claim is ever sent.

use chrono::{DateTime, Utc};
use model::{MoveId, VehicleId};

use super::{LiveMove, MatchKind, MoveBook, MoveOutput, MoveStatus};

/// A book took a move for one of its vehicles, or released it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Claim {
    /// The move.
    pub move_id: MoveId,
    /// The vehicle now carrying it; `None`: released (no vehicle).
    pub vehicle: Option<VehicleId>,
    /// The evidence (`None` when released).
    pub kind: Option<MatchKind>,
    /// When the evidence was seen.
    pub at: DateTime<Utc>,
    /// The claiming partition (set by the engine).
    pub partition: usize,
}

impl Claim {
    fn rank(&self) -> (u8, DateTime<Utc>, usize) {
        (
            self.kind.map_or(0, MatchKind::strength),
            self.at,
            self.partition,
        )
    }
}

/// A move's journey so far, from the book that owned it to its new owner.
#[derive(Debug, Clone)]
pub struct Handover {
    state: Box<LiveMove>,
}

impl Handover {
    /// The move handed over.
    pub fn move_id(&self) -> &MoveId {
        &self.state.spec.id
    }

    /// The vehicle the move went to.
    pub fn vehicle(&self) -> Option<VehicleId> {
        self.state.vehicle
    }
}

/// A [`Handover`] in a form that can cross to another process (an engine
/// node on a cluster): the journey's facts, without the ETA's samples
/// (the new owner's estimates start again from its own model).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PortableHandover {
    move_id: MoveId,
    vehicle: Option<VehicleId>,
    matched: Option<MatchKind>,
    status: String,
    started_at: Option<DateTime<Utc>>,
    departed_at: Option<DateTime<Utc>>,
    arrived_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    driven_m: f64,
    lodging: Option<model::SiteId>,
    arriving_sent: bool,
    off_route_alerted: bool,
    shown_to: Vec<model::SiteId>,
}

impl Handover {
    /// The journey's facts, to send to another process.
    pub fn portable(&self) -> PortableHandover {
        let m = &self.state;
        PortableHandover {
            move_id: m.spec.id.clone(),
            vehicle: m.vehicle,
            matched: m.matched,
            status: m.spec.status.as_str().to_owned(),
            started_at: m.started_at,
            departed_at: m.departed_at,
            arrived_at: m.arrived_at,
            finished_at: m.finished_at,
            driven_m: m.driven_m,
            lodging: m.lodging.clone(),
            arriving_sent: m.arriving_sent,
            off_route_alerted: m.off_route_alerted,
            shown_to: m.shown_to.clone(),
        }
    }
}

impl PortableHandover {
    /// The move handed over.
    pub fn move_id(&self) -> &MoveId {
        &self.move_id
    }
}

impl MoveBook {
    /// A handover received from another process, over this book's own
    /// state of the move (its booking); `None` for a move it does not hold.
    pub fn handover_from(&self, p: PortableHandover) -> Option<Handover> {
        let mine = self.moves.get(&p.move_id)?;
        let mut spec = mine.spec.clone();
        if let Some(status) = MoveStatus::parse(&p.status) {
            spec.status = status;
        }
        Some(Handover {
            state: Box::new(LiveMove {
                spec,
                vehicle: p.vehicle,
                matched: p.matched,
                started_at: p.started_at,
                departed_at: p.departed_at,
                arrived_at: p.arrived_at,
                finished_at: p.finished_at,
                driven_m: p.driven_m,
                lodging: p.lodging,
                arriving_sent: p.arriving_sent,
                off_route_alerted: p.off_route_alerted,
                shown_to: p.shown_to,
                predictions: Vec::new(),
                pace: None,
                ..mine.clone()
            }),
        })
    }
}

fn progress(s: MoveStatus) -> u8 {
    match s {
        MoveStatus::Booked => 0,
        MoveStatus::InTransit => 1,
        MoveStatus::Arrived => 2,
        MoveStatus::Completed => 3,
        MoveStatus::Cancelled => 4,
    }
}

impl MoveBook {
    /// The claims made since the last call, oldest first.
    pub fn take_claims(&mut self) -> Vec<Claim> {
        std::mem::take(&mut self.claims)
    }

    pub(super) fn record_claim(
        &mut self,
        id: &MoveId,
        vehicle: Option<VehicleId>,
        kind: Option<MatchKind>,
        at: DateTime<Utc>,
    ) {
        self.claimed_at.insert(id.clone(), at);
        self.claims.push(Claim {
            move_id: id.clone(),
            vehicle,
            kind,
            at,
            partition: self.partition,
        });
    }

    /// Sets which partition this book is, for its claims' rank.
    pub fn set_partition(&mut self, partition: usize) {
        self.partition = partition;
    }

    /// Whether this book owns the move: its vehicle is one of `is_local`'s,
    /// or it has none and `unassigned_here` (the engine hashes the move id).
    pub fn owns(
        &self,
        id: &MoveId,
        is_local: impl Fn(&VehicleId) -> bool,
        unassigned_here: bool,
    ) -> bool {
        match self.moves.get(id).map(|m| m.vehicle) {
            Some(Some(v)) => is_local(&v),
            Some(None) => unassigned_here,
            None => false,
        }
    }

    /// Another partition's claim. This book yields the move when the claim
    /// outranks its own; if the move was carried by one of this book's
    /// vehicles (`is_local`), its journey so far is returned, for the
    /// claimer to [`adopt`](MoveBook::adopt).
    pub fn on_claim(
        &mut self,
        claim: &Claim,
        is_local: impl Fn(&VehicleId) -> bool,
    ) -> Option<Handover> {
        let own_at = self.claimed_at.get(&claim.move_id).copied();
        let m = self.moves.get_mut(&claim.move_id)?;
        if m.vehicle == claim.vehicle && m.matched == claim.kind {
            return None;
        }
        let own = (
            m.vehicle.and(m.matched).map_or(0, MatchKind::strength),
            own_at.unwrap_or(DateTime::<Utc>::MIN_UTC),
            self.partition,
        );
        if m.vehicle.is_some() && claim.rank() <= own {
            return None;
        }
        let old = m.vehicle;
        let handover = old.filter(|v| is_local(v)).map(|_| Handover {
            state: Box::new(LiveMove {
                vehicle: claim.vehicle,
                matched: claim.kind,
                ..m.clone()
            }),
        });
        m.vehicle = claim.vehicle;
        m.matched = claim.kind;
        m.estimate = None;
        m.sent = None;
        m.off_route_samples.clear();
        if let Some(j) = m.spec.journeys.last_mut()
            && claim.kind.is_some_and(|k| k != MatchKind::Probable)
        {
            j.vehicle = claim.vehicle;
        }
        self.claimed_at.insert(claim.move_id.clone(), claim.at);
        self.unlink(&claim.move_id, old);
        if let Some(v) = claim.vehicle {
            // Linked here too: a handover of the journey follows when the
            // vehicle is this book's (a change reported by the old van).
            let v = self.vehicles.entry(v).or_default();
            if !v.moves.contains(&claim.move_id) {
                v.moves.push(claim.move_id.clone());
            }
        }
        handover
    }

    /// Takes over a move's journey from the book that carried it before:
    /// the further status, the earlier departure, the longer distance, the
    /// ETA's samples; then sends the move's frame as it now stands.
    pub fn adopt(&mut self, handover: Handover, now: DateTime<Utc>, out: &mut Vec<MoveOutput>) {
        let from = *handover.state;
        let id = from.spec.id.clone();
        let Some(m) = self.moves.get_mut(&id) else {
            return;
        };
        if m.vehicle != from.vehicle {
            // Claimed again since: the newer owner has it.
            return;
        }
        if progress(from.spec.status) > progress(m.spec.status) {
            m.spec.status = from.spec.status;
        }
        m.started_at = m.started_at.or(from.started_at);
        m.departed_at = m.departed_at.or(from.departed_at);
        m.arrived_at = m.arrived_at.or(from.arrived_at);
        m.finished_at = m.finished_at.or(from.finished_at);
        m.driven_m = m.driven_m.max(from.driven_m);
        m.lodging = m.lodging.clone().or(from.lodging);
        m.arriving_sent |= from.arriving_sent;
        m.off_route_alerted |= from.off_route_alerted;
        if m.predictions.is_empty() {
            m.predictions = from.predictions;
        }
        if m.pace.is_none()
            && let Some(mut pace) = from.pace
        {
            // The next fix comes from another vehicle: no step from the last.
            pace.break_step();
            m.pace = Some(pace);
        }
        for s in from.shown_to {
            if !m.shown_to.contains(&s) {
                m.shown_to.push(s);
            }
        }
        self.refresh(&id, now, true, out);
    }
}

impl MoveOutput {
    /// The move an output is about, if any.
    pub fn move_id(&self) -> Option<&MoveId> {
        use model::wire::Frame;
        match self {
            MoveOutput::Frame { frame, .. } => match frame {
                Frame::Move(v) => Some(&v.move_id),
                Frame::Arrival(e) | Frame::Departure(e) => Some(&e.move_id),
                Frame::Alert(a) => a.move_id.as_ref(),
                _ => None,
            },
            MoveOutput::Save(spec) => Some(&spec.id),
            MoveOutput::Arrived(a) => Some(&a.move_id),
            MoveOutput::Alert(a) => a.move_id.as_ref(),
            MoveOutput::Notify(n) => n.move_id.as_ref(),
        }
    }

    /// The vehicle an output is about, if any.
    pub fn vehicle(&self) -> Option<VehicleId> {
        match self {
            MoveOutput::Frame { vehicle, .. } => *vehicle,
            MoveOutput::Save(_) => None,
            MoveOutput::Arrived(a) => Some(a.vehicle),
            MoveOutput::Alert(a) => Some(a.vehicle),
            MoveOutput::Notify(n) => n.vehicle,
        }
    }
}

impl MoveBook {
    /// The move's journey so far, for the partition of the vehicle it was
    /// just matched to (when that vehicle is not this book's).
    pub fn hand_over(&self, id: &MoveId) -> Option<Handover> {
        self.moves.get(id).map(|m| Handover {
            state: Box::new(m.clone()),
        })
    }
}

/// What an arrival taught the ETA model (its estimates' errors, its track
/// against the curve, the trip's time), for every partition's model alike.
#[derive(Debug, Clone)]
pub struct Lesson {
    pub(super) residuals: Vec<(f64, f64)>,
    pub(super) pace: Option<crate::eta::TripPace>,
    pub(super) fact: super::ArrivalFact,
}

impl MoveBook {
    /// The lessons of the arrivals seen since the last call.
    pub fn take_lessons(&mut self) -> Vec<Lesson> {
        std::mem::take(&mut self.lessons)
    }

    /// Teaches this book's ETA model an arrival (its own, or another
    /// partition's): every partition's estimates learn from every trip.
    pub fn learn(&mut self, lesson: &Lesson) {
        for &(predicted, actual) in &lesson.residuals {
            self.eta.learn_residual(predicted, actual);
        }
        let fact = &lesson.fact;
        if let Some(pace) = &lesson.pace {
            self.eta
                .learn_track(&fact.from_location, &fact.site, pace, fact.arrived_at);
        }
        if let (Some(&o), Some(&d)) = (
            self.sites.get(&fact.from_location),
            self.sites.get(&fact.site),
        ) && fact.departed_at < fact.arrived_at
        {
            let direct = crate::haversine_m(o.0, o.1, d.0, d.1);
            self.eta.learn_trip(
                &fact.from_location,
                &fact.site,
                direct,
                fact.distance_m,
                fact.departed_at,
                fact.arrived_at,
            );
        }
    }
}
