//! One partition's state and its synchronous core: a batch in, [`Effects`]
//! out, no tokio, no locks of its own (the [`Tracker`] is the shared,
//! concurrent read view of positions, written only by each vehicle's own
//! partition).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use geofence::{Fix, GeofenceEngine};
use model::{
    AlertRecord, FenceTransition, IngestBatch, MoveId, Position, TransitionKind, VehicleId,
};
use tracker::Tracker;
use tracker::Update;
use tracker::moves::{BookView, Claim, Handover, Lesson, MoveBook, MoveOutput, MoveSpec};

use crate::{home_of, partition_of};

/// What processing produced.
#[derive(Debug, Default)]
pub struct Effects {
    /// Position updates, each with the site channels that may see it.
    pub positions: Vec<(Update, Vec<model::SiteId>)>,
    /// What the moves book decided about moves and vehicles this partition
    /// owns, in order: frames to send, and what to keep with the batch.
    pub outputs: Vec<MoveOutput>,
    /// Matches made here, for every other partition.
    pub claims: Vec<Claim>,
    /// Journeys handed to the partition now owning them.
    pub handovers: Vec<(usize, Handover)>,
    /// What arrivals here taught the ETA model, for every other partition's.
    pub lessons: Vec<Arc<Lesson>>,
}

impl Effects {
    /// Whether nothing came of it.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
            && self.outputs.is_empty()
            && self.claims.is_empty()
            && self.handovers.is_empty()
            && self.lessons.is_empty()
    }
}

/// What the store held when the engine stopped, read back by the binary.
#[derive(Debug, Default, Clone)]
pub struct Recovered {
    /// Each vehicle's latest stored position.
    pub positions: Vec<Position>,
    /// The latest fence crossing of each (vehicle, site).
    pub crossings: Vec<FenceTransition>,
    /// The moves not yet final.
    pub open_moves: Vec<MoveSpec>,
    /// The alerts raised lately (not to be raised twice).
    pub alerts: Vec<AlertRecord>,
    /// The latest arrivals, newest first (their moves' departure and
    /// arrival times).
    pub arrivals: Vec<model::Arrival>,
}

/// One partition: the vehicles hashed onto it, with their fence states,
/// the moves they carry, the ETA's trips and the alerts.
#[derive(Debug)]
pub struct Partition {
    index: usize,
    count: usize,
    tracker: Arc<Tracker>,
    fences: GeofenceEngine,
    book: MoveBook,
}

impl Partition {
    /// Partition `index` of `count`, over these fences and this book.
    pub fn new(
        index: usize,
        count: usize,
        tracker: Arc<Tracker>,
        fences: GeofenceEngine,
        mut book: MoveBook,
    ) -> Self {
        book.set_partition(index);
        Partition {
            index,
            count,
            tracker,
            fences,
            book,
        }
    }

    /// The shared live positions.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// This partition's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether a vehicle is this partition's.
    pub fn is_local(&self, vehicle: &VehicleId) -> bool {
        partition_of(vehicle, self.count) == self.index
    }

    /// Rebuilds this partition's state from what was stored: its vehicles'
    /// fence states and last fixes, every open move, the alerts already
    /// raised; returns the estimates of its moves in transit.
    pub fn recover(&mut self, stored: &Recovered, now: DateTime<Utc>) -> Effects {
        for spec in &stored.open_moves {
            drop(self.book.upsert(spec.clone(), now));
        }
        self.book.restore_times(&stored.arrivals, &stored.crossings);
        let (count, index) = (self.count, self.index);
        let local = |v: &VehicleId| partition_of(v, count) == index;
        for c in stored
            .crossings
            .iter()
            .filter(|c| c.kind == TransitionKind::Enter && local(&c.vehicle))
        {
            self.fences.restore(c.vehicle, [&c.site]);
            self.book.restore_inside(c.vehicle, &c.site);
        }
        for p in stored.positions.iter().filter(|p| local(&p.vehicle)) {
            self.book.restore_fix(p);
        }
        // Each vehicle's alerts are its partition's (raised there, not twice).
        let alerts: Vec<AlertRecord> = stored
            .alerts
            .iter()
            .filter(|a| local(&a.vehicle))
            .cloned()
            .collect();
        self.book.restore_alerts(&alerts, now);
        // Every book saw the same bookings: their claims agree already.
        drop(self.book.take_claims());
        let outputs = self.book.restore_estimates();
        self.finish(outputs)
    }

    /// Processes one intake batch of this partition's vehicles: live state
    /// (the tracker sets each point's flags), fence crossings (put on the
    /// batch, committed with its points), then the moves (fixes, crossings,
    /// events), and the site channels that may see each position.
    pub fn process(&mut self, batch: &mut IngestBatch) -> Effects {
        let updates = self.tracker.apply(batch);
        self.observe_fences(batch);
        let mut outputs = Vec::new();
        for p in batch.positions.iter().filter(|p| p.flags.usable_live()) {
            self.book.on_position(p, &mut outputs);
        }
        for t in &batch.transitions {
            self.book.on_transition(t, &mut outputs);
        }
        for e in &batch.events {
            self.book.on_event(e, &mut outputs);
        }
        let now = Utc::now();
        let positions = updates
            .into_iter()
            .map(|mut update| {
                let Update::Position { view, .. } = &mut update;
                view.move_ids = self.book.move_ids_of(&view.vehicle);
                self.tracker.set_move_ids(&view.vehicle, &view.move_ids);
                let sites = if view.move_ids.is_empty() {
                    Vec::new()
                } else {
                    self.book.sites_seeing(&view.vehicle, now)
                };
                (update, sites)
            })
            .collect();
        let mut effects = self.finish(outputs);
        effects.positions = positions;
        effects
    }

    /// The time-based alerts and estimates due at `now`.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Effects {
        let outputs = self.book.tick(now);
        self.finish(outputs)
    }

    /// A booking (new, changed or cancelled), applied by every partition in
    /// the same order; what it changes is said by the move's owner only.
    pub fn book(&mut self, spec: MoveSpec, at: DateTime<Utc>) -> Effects {
        let outputs = self.book.upsert(spec, at);
        // Every book applied the same booking: nothing to tell the others.
        drop(self.book.take_claims());
        self.finish(outputs)
    }

    /// Replaces a site's fence (every partition, in the same order).
    pub fn replace_fence(
        &mut self,
        site: &model::SiteId,
        fence: geofence::Fence,
    ) -> Result<(), geofence::FenceError> {
        self.fences.replace_fence(site, fence).map(drop)
    }

    /// Another partition's claim on a move.
    pub fn on_claim(&mut self, claim: &Claim) -> Effects {
        let count = self.count;
        let index = self.index;
        let handover = self
            .book
            .on_claim(claim, |v| partition_of(v, count) == index);
        let mut effects = Effects::default();
        if let Some(h) = handover {
            let to = claim
                .vehicle
                .map_or(claim.partition, |v| partition_of(&v, count));
            effects.handovers.push((to, h));
        }
        effects
    }

    /// What another partition's arrival taught its ETA model.
    pub fn learn(&mut self, lesson: &Lesson) {
        self.book.learn(lesson);
    }

    /// A journey handed over by the partition that carried it before.
    pub fn adopt(&mut self, handover: Handover) -> Effects {
        let mut outputs = Vec::new();
        self.book.adopt(handover, Utc::now(), &mut outputs);
        self.finish(outputs)
    }

    /// A journey handed over by a partition on another engine node (its
    /// facts, without the ETA's samples); nothing for a move not held here.
    pub fn adopt_portable(&mut self, handover: tracker::moves::PortableHandover) -> Effects {
        match self.book.handover_from(handover) {
            Some(h) => self.adopt(h),
            None => Effects::default(),
        }
    }

    /// The moves this partition owns and its alerts, for readers.
    pub fn view(&self) -> BookView {
        let (count, index) = (self.count, self.index);
        self.book.publish(
            |id, vehicle| match vehicle {
                Some(v) => partition_of(&v, count) == index,
                None => home_of(id, count) == index,
            },
            |v| partition_of(v, count) == index,
        )
    }

    /// What this partition knows of a vehicle.
    pub fn inspect(&self, vehicle: &VehicleId) -> crate::runtime::Inspection {
        let curves = self.book.eta_model().curves();
        crate::runtime::Inspection {
            partition: self.index,
            inside: self.fences.inside(vehicle).cloned().collect(),
            eta_trips: curves.trips(),
            eta_learned_km: curves.learned_km(),
        }
    }

    /// The live view of a move, if this partition owns it.
    pub fn details(&self, id: &MoveId) -> Option<tracker::moves::MoveDetails> {
        self.owns(id).then(|| self.book.details(id)).flatten()
    }

    fn owns(&self, id: &MoveId) -> bool {
        let (count, index) = (self.count, self.index);
        self.book.owns(
            id,
            |v| partition_of(v, count) == index,
            home_of(id, count) == index,
        )
    }

    /// Keeps what this partition owns of the book's outputs, and collects
    /// its claims (with a handover where the move went to another
    /// partition's vehicle).
    fn finish(&mut self, outputs: Vec<MoveOutput>) -> Effects {
        let mut effects = Effects::default();
        let single = self.count == 1;
        effects.outputs = if single {
            outputs
        } else {
            outputs
                .into_iter()
                .filter(|o| match o.move_id() {
                    Some(id) => self.owns(id),
                    None => o.vehicle().is_none_or(|v| self.is_local(&v)),
                })
                .collect()
        };
        let lessons = self.book.take_lessons();
        if !single {
            effects.lessons = lessons.into_iter().map(Arc::new).collect();
        }
        for mut claim in self.book.take_claims() {
            if single {
                continue;
            }
            claim.partition = self.index;
            if let Some(v) = claim.vehicle
                && !self.is_local(&v)
            {
                // Evidence seen here named another partition's vehicle (a
                // change of vehicle reported by the old van): the new owner
                // gets the journey so far.
                if let Some(h) = self.book.hand_over(&claim.move_id) {
                    effects.handovers.push((partition_of(&v, self.count), h));
                }
            }
            effects.claims.push(claim);
        }
        effects
    }

    fn observe_fences(&mut self, batch: &mut IngestBatch) {
        for p in batch.positions.iter().filter(|p| p.flags.usable_live()) {
            for t in self.fences.observe(p.vehicle, &Fix::from(p)) {
                batch.transitions.push(FenceTransition {
                    vehicle: t.vehicle,
                    site: t.site,
                    kind: match t.kind {
                        geofence::TransitionKind::Enter => TransitionKind::Enter,
                        geofence::TransitionKind::Exit => TransitionKind::Exit,
                        geofence::TransitionKind::PassThrough => TransitionKind::PassThrough,
                    },
                    ts: t.ts,
                });
            }
        }
    }
}
