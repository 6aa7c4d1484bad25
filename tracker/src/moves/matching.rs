//! Which vehicle carries which move: the evidence ranking ([`MatchKind`])
//! and the book's functions that find the move a report names and claim it
//! for a vehicle. Weaker evidence never replaces stronger.

use chrono::{DateTime, NaiveDate, Utc};
use model::{Event, MoveId, SiteId, VehicleId};

use super::{MoveBook, MoveOutput, MoveStatus};

/// How a vehicle was matched to a move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
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
    pub(super) fn strength(self) -> u8 {
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

/// A registration in an event's details (`vehicle_reg`, `previous_vehicle_reg`).
pub(super) fn vehicle_reg(details: &serde_json::Value, key: &str) -> Option<VehicleId> {
    details
        .get(key)
        .and_then(|v| v.as_str())
        .and_then(|s| VehicleId::parse(s).ok())
}

impl MoveBook {
    /// The move an event names: its `move_id` when the book knows it, else
    /// the move owning its `journey_id`.
    pub(super) fn move_of_event(&self, e: &Event) -> Option<MoveId> {
        e.move_id
            .clone()
            .filter(|id| self.moves.contains_key(id))
            .or_else(|| {
                e.journey_id
                    .as_ref()
                    .and_then(|j| self.journeys.get(j).cloned())
            })
    }

    /// The moves a `JourneyChangeVehicle` to `to` hands over: the one it
    /// names (`named`); else the open moves the previous vehicle (or the
    /// reporting one, when it is not the new one) carries.
    pub(super) fn change_vehicle_targets(
        &self,
        e: &Event,
        to: VehicleId,
        named: Option<MoveId>,
    ) -> Vec<MoveId> {
        if let Some(id) = named {
            return vec![id];
        }
        let previous = vehicle_reg(&e.details, "previous_vehicle_reg")
            .or((e.vehicle != to).then_some(e.vehicle));
        previous.map_or_else(Vec::new, |p| {
            self.move_ids_of(&p)
                .into_iter()
                .filter(|m| {
                    self.moves
                        .get(m)
                        .is_some_and(|m| m.vehicle == Some(p) && !m.spec.status.is_final())
                })
                .collect()
        })
    }

    /// Rule 4's candidates for a vehicle carrying nothing that leaves `site`
    /// on `date`: the booked moves from there that day with no vehicle yet.
    pub(super) fn probable_candidates(&self, site: &SiteId, date: NaiveDate) -> Vec<MoveId> {
        self.moves
            .values()
            .filter(|m| {
                m.vehicle.is_none()
                    && m.spec.status == MoveStatus::Booked
                    && m.spec.from_location == *site
                    && m.spec.date == date
            })
            .map(|m| m.spec.id.clone())
            .collect()
    }

    /// Matches `vehicle` to a move unless stronger evidence already names another.
    pub(super) fn assign(
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
                self.record_claim(id, Some(vehicle), Some(kind), now);
                let Some(m) = self.moves.get_mut(id) else {
                    return;
                };
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
        self.record_claim(id, Some(vehicle), Some(kind), now);
        self.refresh(id, now, kind != MatchKind::Probable, out);
    }

    /// Forgets a probable vehicle (evidence for another, a return to the
    /// origin, a cancellation) and the departure inferred from it.
    pub(super) fn drop_vehicle(
        &mut self,
        id: &MoveId,
        now: DateTime<Utc>,
        out: &mut Vec<MoveOutput>,
    ) {
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
        self.record_claim(id, None, None, now);
        self.refresh(id, now, false, out);
    }

    /// Takes a move off a vehicle's list.
    pub(super) fn unlink(&mut self, id: &MoveId, vehicle: Option<VehicleId>) {
        if let Some(v) = vehicle.and_then(|v| self.vehicles.get_mut(&v)) {
            v.moves.retain(|m| m != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use model::{EventKind, TransitionKind};
    use serde_json::json;

    use super::*;
    use crate::moves::test_support::*;

    fn matched(b: &MoveBook, id: &str) -> (Option<VehicleId>, Option<MatchKind>) {
        let m = &b.moves[&mid(id)];
        (m.vehicle, m.matched)
    }

    #[test]
    fn the_ranking_is_change_vehicle_journey_id_journey_start_booked_inferred_probable() {
        let ranked = [
            MatchKind::ChangeVehicle,
            MatchKind::JourneyId,
            MatchKind::JourneyStart,
            MatchKind::Booked,
            MatchKind::Inferred,
            MatchKind::Probable,
        ];
        for pair in ranked.windows(2) {
            assert!(pair[0].strength() > pair[1].strength(), "{pair:?}");
        }
        assert_eq!(MatchKind::Probable.as_str(), "probable");
        assert!(ranked[..5].iter().all(|k| k.as_str() == "confirmed"));
    }

    #[test]
    fn change_vehicle_outranks_journey_id_which_outranks_the_booking() {
        let mut b = book();
        let mut out = Vec::new();
        b.upsert(spec("m1", Some(VAN)), t0());
        assert_eq!(matched(&b, "m1"), (Some(v(VAN)), Some(MatchKind::Booked)));
        // A point with the journey id beats the booking.
        b.on_position(&pos(OTHER, at(10), 53.0, Some("j-m1")), &mut out);
        assert_eq!(
            matched(&b, "m1"),
            (Some(v(OTHER)), Some(MatchKind::JourneyId))
        );
        assert!(
            b.move_ids_of(&v(VAN)).is_empty(),
            "unlinked from the booked van"
        );
        // A journey start naming the booked van is weaker: ignored.
        let start = event(
            VAN,
            EventKind::JourneyStart,
            at(20),
            Some("m1"),
            json!({ "vehicle_reg": VAN }),
        );
        b.on_event(&start, &mut out);
        assert_eq!(matched(&b, "m1").0, Some(v(OTHER)));
        // The supplier's vehicle change beats the journey id ...
        let change = event(
            OTHER,
            EventKind::JourneyChangeVehicle,
            at(30),
            Some("m1"),
            json!({ "vehicle_reg": VAN }),
        );
        b.on_event(&change, &mut out);
        assert_eq!(
            matched(&b, "m1"),
            (Some(v(VAN)), Some(MatchKind::ChangeVehicle))
        );
        // ... and a later point still carrying the journey id does not undo it.
        b.on_position(&pos(OTHER, at(40), 53.0, Some("j-m1")), &mut out);
        assert_eq!(matched(&b, "m1").0, Some(v(VAN)));
        assert_eq!(b.move_ids_of(&v(VAN)), vec![mid("m1")]);
        assert!(b.move_ids_of(&v(OTHER)).is_empty());
    }

    #[test]
    fn equal_evidence_for_another_vehicle_replaces_the_match() {
        let mut b = book();
        let mut out = Vec::new();
        b.upsert(spec("m1", None), t0());
        b.assign(&mid("m1"), v(VAN), MatchKind::JourneyStart, at(0), &mut out);
        b.assign(
            &mid("m1"),
            v(OTHER),
            MatchKind::JourneyStart,
            at(10),
            &mut out,
        );
        assert_eq!(
            matched(&b, "m1"),
            (Some(v(OTHER)), Some(MatchKind::JourneyStart))
        );
        // Stronger evidence for the same vehicle upgrades the kind only.
        b.assign(&mid("m1"), v(OTHER), MatchKind::JourneyId, at(20), &mut out);
        assert_eq!(
            matched(&b, "m1"),
            (Some(v(OTHER)), Some(MatchKind::JourneyId))
        );
        // A finished move takes no new match.
        let cancel = event(OTHER, EventKind::MoveCancel, at(30), Some("m1"), json!({}));
        b.on_event(&cancel, &mut out);
        b.assign(
            &mid("m1"),
            v(VAN),
            MatchKind::ChangeVehicle,
            at(40),
            &mut out,
        );
        assert_eq!(matched(&b, "m1").0, Some(v(OTHER)));
    }

    #[test]
    fn leaving_the_origin_empty_makes_a_probable_match_that_stronger_evidence_replaces() {
        let mut b = book();
        let mut out = Vec::new();
        b.upsert(spec("m1", None), t0());
        let tomorrow = crate::moves::MoveSpec {
            date: today().succ_opt().unwrap(),
            ..spec("m2", None)
        };
        b.upsert(tomorrow, t0());
        assert_eq!(
            b.probable_candidates(&site("ORG"), today()),
            vec![mid("m1")]
        );
        assert!(b.probable_candidates(&site("DST"), today()).is_empty());
        b.on_transition(
            &crossing(VAN, "ORG", TransitionKind::Exit, at(10)),
            &mut out,
        );
        assert_eq!(matched(&b, "m1"), (Some(v(VAN)), Some(MatchKind::Probable)));
        assert_eq!(matched(&b, "m2"), (None, None));
        // The booking's own vehicle is stronger: the guess and its departure go.
        b.upsert(spec("m1", Some(OTHER)), at(20));
        assert_eq!(matched(&b, "m1"), (Some(v(OTHER)), Some(MatchKind::Booked)));
        assert_eq!(b.moves[&mid("m1")].departed_at, None);
    }

    #[test]
    fn an_unnamed_vehicle_change_takes_the_previous_vehicles_open_moves() {
        let mut b = book();
        let mut out = Vec::new();
        b.upsert(spec("m1", Some(VAN)), t0());
        b.upsert(spec("m2", Some(VAN)), t0());
        let change = event(
            VAN,
            EventKind::JourneyChangeVehicle,
            at(10),
            None,
            json!({ "vehicle_reg": OTHER }),
        );
        assert_eq!(b.move_of_event(&change), None);
        let mut targets = b.change_vehicle_targets(&change, v(OTHER), None);
        targets.sort();
        assert_eq!(targets, vec![mid("m1"), mid("m2")]);
        // Named by its journey instead, only that move.
        let by_journey = Event {
            journey_id: Some(model::JourneyId::parse("j-m2").unwrap()),
            ..change.clone()
        };
        assert_eq!(b.move_of_event(&by_journey), Some(mid("m2")));
        b.on_event(&by_journey, &mut out);
        assert_eq!(matched(&b, "m2").0, Some(v(OTHER)));
        assert_eq!(matched(&b, "m1").0, Some(v(VAN)));
    }
}
