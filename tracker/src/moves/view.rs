//! What a partition's book publishes for readers ([`BookView`]): the moves it
//! owns, each with what the visibility rules need, and its recent alerts.
//! The gateway answers every query from the views of all partitions, never
//! from a book itself, so readers never wait on the pipeline.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use model::wire::{AlertView, MoveView};
use model::{MoveId, SiteId, VehicleId};

use super::{LiveMove, MoveBook, MoveDetails, Visibility, redact_probable};

/// One owned move as published.
#[derive(Debug, Clone)]
pub struct MoveEntry {
    /// The move's live view.
    pub details: MoveDetails,
    facts: LiveMove,
}

/// A partition's published state (immutable; replaced, never changed).
#[derive(Debug, Clone, Default)]
pub struct BookView {
    /// The owned moves by id.
    pub moves: HashMap<MoveId, MoveEntry>,
    /// Recent alerts of this partition's vehicles, with the sites that see each.
    pub alerts: Vec<(AlertView, Vec<SiteId>)>,
    policy: Option<Visibility>,
}

impl MoveBook {
    /// The view of the moves `owns` says are this book's (given each
    /// move's vehicle), and the alerts about them or, with no move, about
    /// its vehicles (`local`).
    pub fn publish(
        &self,
        owns: impl Fn(&MoveId, Option<VehicleId>) -> bool,
        local: impl Fn(&VehicleId) -> bool,
    ) -> BookView {
        let moves = self
            .moves
            .iter()
            .filter(|(id, m)| owns(id, m.vehicle))
            .map(|(id, m)| {
                let details = MoveDetails {
                    spec: self.spec_of(m),
                    view: self.view(m),
                    departed_at: m.departed_at,
                    arrived_at: m.arrived_at,
                    lodging: m.lodging.clone(),
                };
                // The rules need only the small facts, not the ETA's samples.
                let facts = LiveMove {
                    off_route_samples: Default::default(),
                    predictions: Vec::new(),
                    pace: None,
                    shown_to: Vec::new(),
                    estimate: None,
                    ..m.clone()
                };
                (id.clone(), MoveEntry { details, facts })
            })
            .collect();
        BookView {
            moves,
            alerts: self
                .alerts
                .iter()
                .filter(
                    |(a, _)| match a.move_id.as_ref().and_then(|id| self.moves.get(id)) {
                        Some(m) => owns(&m.spec.id, m.vehicle),
                        None => local(&a.vehicle),
                    },
                )
                .cloned()
                .collect(),
            policy: Some(self.visibility()),
        }
    }
}

impl BookView {
    fn policy(&self) -> Visibility {
        self.policy
            .unwrap_or_else(|| Visibility::new(chrono::Duration::minutes(15)))
    }

    /// The live view of a move this partition owns.
    pub fn details(&self, id: &MoveId) -> Option<&MoveDetails> {
        self.moves.get(id).map(|e| &e.details)
    }

    /// Moves for a site's day or, with `site` None, every open move; the
    /// same rules as [`MoveBook::move_views`].
    pub fn move_views(&self, site: Option<&SiteId>, now: DateTime<Utc>) -> Vec<MoveView> {
        let policy = self.policy();
        self.moves
            .values()
            .filter_map(|e| match site {
                None => (!e.facts.spec.status.is_final()).then(|| e.details.view.clone()),
                Some(s) => {
                    let facts = e.facts.facts();
                    policy.site_lists_move(s, &facts, now).then(|| {
                        if facts.is_probable() {
                            redact_probable(e.details.view.clone())
                        } else {
                            e.details.view.clone()
                        }
                    })
                }
            })
            .collect()
    }

    /// The moves a vehicle carries (owned here).
    pub fn move_ids_of(&self, vehicle: &VehicleId) -> Vec<MoveId> {
        self.moves
            .iter()
            .filter(|(_, e)| e.facts.vehicle == Some(*vehicle) && !e.facts.spec.status.is_final())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The sites that may see a vehicle now ([`MoveBook::sites_seeing`]).
    pub fn sites_seeing(&self, vehicle: &VehicleId, now: DateTime<Utc>, into: &mut Vec<SiteId>) {
        let policy = self.policy();
        let facts = self.moves.values().map(|e| e.facts.facts());
        for s in policy.sites_seeing_vehicle(*vehicle, facts, now) {
            if !into.contains(&s) {
                into.push(s);
            }
        }
    }

    /// The vehicles a site may see now ([`MoveBook::vehicles_seen_by`]).
    pub fn vehicles_seen_by(&self, site: &SiteId, now: DateTime<Utc>, into: &mut Vec<VehicleId>) {
        let policy = self.policy();
        into.extend(
            self.moves
                .values()
                .filter(|e| policy.vehicle_sites(&e.facts.facts(), now).contains(site))
                .filter_map(|e| e.facts.vehicle),
        );
    }

    /// The span in which `sites` may see `vehicle`'s track now
    /// ([`MoveBook::site_window`]), widened over this partition's moves.
    pub fn site_window(
        &self,
        vehicle: &VehicleId,
        sites: &[SiteId],
        now: DateTime<Utc>,
        window: &mut Option<(DateTime<Utc>, DateTime<Utc>)>,
    ) {
        let policy = self.policy();
        let facts = self.moves.values().map(|e| e.facts.facts());
        if let Some((start, end)) = policy.window(sites, *vehicle, facts, now) {
            *window = Some(match *window {
                None => (start, end),
                Some((s, e)) => (s.min(start), e.max(end)),
            });
        }
    }

    /// Recent alerts: all, or those a site may see.
    pub fn recent_alerts<'a>(
        &'a self,
        site: Option<&'a SiteId>,
    ) -> impl Iterator<Item = &'a AlertView> + 'a {
        self.alerts
            .iter()
            .filter(move |(_, sites)| site.is_none_or(|s| sites.contains(s)))
            .map(|(a, _)| a)
    }
}
