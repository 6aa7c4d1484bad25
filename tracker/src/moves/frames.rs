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
