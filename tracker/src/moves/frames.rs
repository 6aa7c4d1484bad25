//! Building what the book sends: the `move` frame (and the save that goes
//! with it), the `departure`/`arrival` frames, and the views they carry.

use chrono::{DateTime, Duration, Utc};
use model::wire::{Frame, MoveView, SiteEventView};
use model::{MoveId, SiteId, VehicleId, format_ts};

use super::{LiveMove, MatchKind, MoveBook, MoveOutput, MoveSpec, MoveStatus};

/// A `departure` or `arrival` frame (`frame` picks which) for the sites given.
pub(super) fn site_event(
    frame: fn(SiteEventView) -> Frame,
    id: &MoveId,
    vehicle: VehicleId,
    site: &SiteId,
    ts: DateTime<Utc>,
    sites: Vec<SiteId>,
) -> MoveOutput {
    MoveOutput::Frame {
        frame: frame(SiteEventView {
            move_id: id.clone(),
            vehicle,
            site: site.clone(),
            ts: format_ts(&ts),
        }),
        vehicle: Some(vehicle),
        sites,
    }
}

/// `at` plus `minutes`, to the second.
pub(super) fn eta_at(at: DateTime<Utc>, minutes: f64) -> DateTime<Utc> {
    at + Duration::seconds((minutes * 60.0).round() as i64)
}

impl MoveBook {
    /// Sends the move's frame when its status changed or its ETA moved by
    /// more than `eta_resend`; `save` also asks the engine to store it.
    pub(super) fn refresh(
        &mut self,
        id: &MoveId,
        now: DateTime<Utc>,
        save: bool,
        out: &mut Vec<MoveOutput>,
    ) {
        let policy = self.visibility();
        let Some(m) = self.moves.get(id) else { return };
        let view = self.view(m);
        let spec = self.spec_of(m);
        let Some(m) = self.moves.get_mut(id) else {
            return;
        };
        let seeing = policy.move_sites(&m.facts(), now);
        let mut sites = seeing.clone();
        if !m.facts().is_probable() {
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

    /// The move as saved: the booking with the confirmed vehicle on its last leg.
    pub(super) fn spec_of(&self, m: &LiveMove) -> MoveSpec {
        let mut spec = m.spec.clone();
        if let (Some(v), Some(k)) = (m.vehicle, m.matched)
            && k != MatchKind::Probable
            && let Some(last) = spec.journeys.last_mut()
        {
            last.vehicle = Some(v);
        }
        spec
    }

    /// The `move` frame body; no ETA once it is lodging or has arrived.
    pub(super) fn view(&self, m: &LiveMove) -> MoveView {
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

#[cfg(test)]
mod tests {
    use model::TransitionKind;

    use super::*;
    use crate::moves::test_support::*;

    #[test]
    fn eta_at_rounds_to_the_second() {
        assert_eq!(eta_at(at(0), 1.5), at(90));
        assert_eq!(eta_at(at(0), 0.00833), at(0));
        assert_eq!(eta_at(at(0), 0.0092), at(1));
    }

    #[test]
    fn a_probable_vehicle_is_in_the_view_but_never_saved_on_the_journey() {
        let mut b = book();
        let mut out = Vec::new();
        b.upsert(spec("m1", None), t0());
        b.on_transition(
            &crossing(VAN, "ORG", TransitionKind::Exit, at(10)),
            &mut out,
        );
        let m = &b.moves[&mid("m1")];
        assert_eq!(b.view(m).vehicle, Some(v(VAN)));
        assert_eq!(b.view(m).vehicle_match, Some("probable"));
        assert_eq!(b.spec_of(m).journeys[0].vehicle, None);
        // The departure frame went to no site, and nothing was saved.
        assert!(!out.iter().any(|o| matches!(o, MoveOutput::Save(_))));
        assert!(out.iter().any(|o| matches!(
            o,
            MoveOutput::Frame { frame: Frame::Departure(_), sites, .. } if sites.is_empty()
        )));
    }

    #[test]
    fn a_move_frame_tells_a_site_that_stopped_seeing_it_once() {
        let mut b = book();
        let mut out = Vec::new();
        b.upsert(spec("m1", Some(VAN)), t0());
        let cancelled = MoveSpec {
            status: MoveStatus::Cancelled,
            ..spec("m1", Some(VAN))
        };
        let out2 = b.upsert(cancelled, at(10));
        let sites = |out: &[MoveOutput]| {
            out.iter()
                .find_map(|o| match o {
                    MoveOutput::Frame {
                        frame: Frame::Move(_),
                        sites,
                        ..
                    } => Some(sites.clone()),
                    _ => None,
                })
                .unwrap()
        };
        assert_eq!(sites(&out2), vec![site("ORG"), site("DST")]);
        b.refresh(&mid("m1"), at(20), false, &mut out);
        assert!(sites(&out).is_empty());
    }

    #[test]
    fn a_site_event_frame_names_the_move_vehicle_and_site() {
        let o = site_event(
            Frame::Arrival,
            &mid("m1"),
            v(VAN),
            &site("DST"),
            at(0),
            vec![site("DST")],
        );
        let MoveOutput::Frame {
            frame: Frame::Arrival(e),
            vehicle,
            sites,
        } = o
        else {
            panic!("{o:?}");
        };
        assert_eq!(
            (e.move_id, e.vehicle, e.site),
            (mid("m1"), v(VAN), site("DST"))
        );
        assert_eq!(e.ts, format_ts(&at(0)));
        assert_eq!((vehicle, sites), (Some(v(VAN)), vec![site("DST")]));
    }
}
