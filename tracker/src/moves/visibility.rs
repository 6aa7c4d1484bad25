//! The visibility policy: which sites may see a move, and a vehicle, at a
//! given time. Every site-facing answer of the book (live frames, alerts,
//! snapshots, track windows) comes from [`Visibility`], so a gateway asking
//! "may a token scoped to these sites see vehicle V now?" gets the same
//! answer as the frames it was sent.
//!
//! The rules (the contract's "Moves and sites"):
//! - a site's day is every move to or from it that is booked for today, on
//!   the way, or arrived within the grace period; never a cancelled one;
//! - a vehicle is visible to a move's sites only from the journey's start
//!   until the grace period after arrival: a booked move's vehicle is not;
//! - a probable vehicle (rule 4, unconfirmed) is never shown to a site, nor
//!   anything measured from it.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use model::wire::MoveView;
use model::{MoveId, SiteId, VehicleId};

use super::{LiveMove, MatchKind, MoveBook, MoveStatus};

/// What the policy needs to know of one move, borrowed from the book.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MoveFacts<'a> {
    /// Origin.
    pub from_location: &'a SiteId,
    /// Destination (after any redirect).
    pub to_location: &'a SiteId,
    /// The day it is booked for.
    pub date: NaiveDate,
    /// Live status.
    pub status: MoveStatus,
    /// The vehicle matched to it, if any.
    pub vehicle: Option<VehicleId>,
    /// How that vehicle was matched.
    pub matched: Option<MatchKind>,
    /// When its journey started (an event, or a booking in transit).
    pub started_at: Option<DateTime<Utc>>,
    /// When it left its origin's fence.
    pub departed_at: Option<DateTime<Utc>>,
    /// When it entered its destination's fence.
    pub arrived_at: Option<DateTime<Utc>>,
    /// When it was completed or cancelled.
    pub finished_at: Option<DateTime<Utc>>,
}

impl MoveFacts<'_> {
    /// Whether the move's vehicle is only a guess (rule 4, unconfirmed).
    pub fn is_probable(&self) -> bool {
        self.vehicle.is_some() && self.matched == Some(MatchKind::Probable)
    }

    fn both_ends(&self) -> Vec<SiteId> {
        vec![self.from_location.clone(), self.to_location.clone()]
    }
}

/// The policy, with its one parameter: how long after arrival a site still
/// sees the vehicle (and the move stays on its day).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visibility {
    /// `MovesConfig::site_grace`.
    pub grace: Duration,
}

impl Visibility {
    /// The policy with this grace period.
    pub fn new(grace: Duration) -> Self {
        Visibility { grace }
    }

    /// Whether a move is part of its sites' day now: booked for today, on
    /// the way (whatever its date: it is still coming), or arrived (or
    /// completed) within the grace period; never once cancelled.
    pub fn on_sites_day(&self, m: &MoveFacts<'_>, now: DateTime<Utc>) -> bool {
        match m.status {
            MoveStatus::Booked => m.date == now.date_naive(),
            MoveStatus::InTransit => true,
            MoveStatus::Arrived | MoveStatus::Completed => m
                .arrived_at
                .or(m.finished_at)
                .is_some_and(|a| now <= a + self.grace),
            MoveStatus::Cancelled => false,
        }
    }

    /// Whether `site`'s snapshot lists the move now (to or from it, on its
    /// day). A probable move is listed, but see [`redact_probable`].
    pub fn site_lists_move(&self, site: &SiteId, m: &MoveFacts<'_>, now: DateTime<Utc>) -> bool {
        (m.from_location == site || m.to_location == site) && self.on_sites_day(m, now)
    }

    /// The site channels that get a move's live frames now (`move`,
    /// `departure`, `arrival`): its origin and destination while it is part
    /// of their day. None while its vehicle is only probable: the sites keep
    /// the move as last shown (booked), and snapshots show it without the guess.
    pub fn move_sites(&self, m: &MoveFacts<'_>, now: DateTime<Utc>) -> Vec<SiteId> {
        if m.is_probable() || !self.on_sites_day(m, now) {
            return Vec::new();
        }
        m.both_ends()
    }

    /// The site channels that may see the move's vehicle now (its positions,
    /// its track, the alerts that name it): the origin and destination from
    /// the journey's start (the move in transit) until the grace period
    /// after arrival. Never a booked move's vehicle, nor a probable one.
    pub fn vehicle_sites(&self, m: &MoveFacts<'_>, now: DateTime<Utc>) -> Vec<SiteId> {
        if m.vehicle.is_none() || m.is_probable() {
            return Vec::new();
        }
        let visible = match m.status {
            MoveStatus::InTransit => true,
            MoveStatus::Arrived | MoveStatus::Completed => {
                m.arrived_at.is_some_and(|a| now <= a + self.grace)
            }
            MoveStatus::Booked | MoveStatus::Cancelled => false,
        };
        if visible { m.both_ends() } else { Vec::new() }
    }

    /// The site channels that may see `vehicle` now, given the moves it
    /// carries: the union of [`Visibility::vehicle_sites`] over those it is
    /// still matched to, in order.
    pub fn sites_seeing_vehicle<'a>(
        &self,
        vehicle: VehicleId,
        moves: impl IntoIterator<Item = MoveFacts<'a>>,
        now: DateTime<Utc>,
    ) -> Vec<SiteId> {
        let mut sites = Vec::new();
        for m in moves.into_iter().filter(|m| m.vehicle == Some(vehicle)) {
            for s in self.vehicle_sites(&m, now) {
                if !sites.contains(&s) {
                    sites.push(s);
                }
            }
        }
        sites
    }

    /// Whether a token scoped to `scope` may see `vehicle` now, given the
    /// moves it carries. The same as [`Visibility::window`] being `Some`.
    pub fn can_see_vehicle<'a>(
        &self,
        scope: &[SiteId],
        vehicle: VehicleId,
        moves: impl IntoIterator<Item = MoveFacts<'a>>,
        now: DateTime<Utc>,
    ) -> bool {
        moves
            .into_iter()
            .any(|m| self.scope_sees(scope, vehicle, &m, now))
    }

    /// The span of time in which `scope` may see `vehicle`'s track now:
    /// from the earliest journey start of the moves it carries that the
    /// scope may see, to now or (after arrival) arrival plus the grace
    /// period, whichever is earlier. `None` when it may not see it now.
    pub fn window<'a>(
        &self,
        scope: &[SiteId],
        vehicle: VehicleId,
        moves: impl IntoIterator<Item = MoveFacts<'a>>,
        now: DateTime<Utc>,
    ) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let mut window: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
        for m in moves {
            if !self.scope_sees(scope, vehicle, &m, now) {
                continue;
            }
            let start = m.started_at.or(m.departed_at).unwrap_or(now);
            let end = m.arrived_at.map_or(now, |a| (a + self.grace).min(now));
            window = Some(match window {
                None => (start, end),
                Some((s, e)) => (s.min(start), e.max(end)),
            });
        }
        window
    }

    fn scope_sees(
        &self,
        scope: &[SiteId],
        vehicle: VehicleId,
        m: &MoveFacts<'_>,
        now: DateTime<Utc>,
    ) -> bool {
        m.vehicle == Some(vehicle) && self.vehicle_sites(m, now).iter().any(|s| scope.contains(s))
    }
}

/// A move's view without its probable vehicle, nor the ETA measured from it.
pub fn redact_probable(view: MoveView) -> MoveView {
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

impl LiveMove {
    /// The facts the policy reads.
    pub(super) fn facts(&self) -> MoveFacts<'_> {
        MoveFacts {
            from_location: &self.spec.from_location,
            to_location: &self.spec.to_location,
            date: self.spec.date,
            status: self.spec.status,
            vehicle: self.vehicle,
            matched: self.matched,
            started_at: self.started_at,
            departed_at: self.departed_at,
            arrived_at: self.arrived_at,
            finished_at: self.finished_at,
        }
    }
}

impl MoveBook {
    /// The visibility policy this book applies.
    pub fn visibility(&self) -> Visibility {
        Visibility::new(self.config.site_grace)
    }

    /// What the policy knows of a live move (for "which sites see this move
    /// now?": [`Visibility::move_sites`], [`Visibility::vehicle_sites`]).
    pub fn move_facts(&self, id: &MoveId) -> Option<MoveFacts<'_>> {
        self.moves.get(id).map(LiveMove::facts)
    }

    /// What the policy knows of the moves a vehicle carries.
    pub fn vehicle_facts(&self, vehicle: &VehicleId) -> Vec<MoveFacts<'_>> {
        self.vehicles.get(vehicle).map_or_else(Vec::new, |v| {
            v.moves
                .iter()
                .filter_map(|id| self.moves.get(id))
                .map(LiveMove::facts)
                .collect()
        })
    }

    /// Whether a token scoped to `scope` may see `vehicle` now.
    pub fn can_see_vehicle(
        &self,
        scope: &[SiteId],
        vehicle: &VehicleId,
        now: DateTime<Utc>,
    ) -> bool {
        self.visibility()
            .can_see_vehicle(scope, *vehicle, self.vehicle_facts(vehicle), now)
    }

    /// The site channels that may see a vehicle now: the origins and
    /// destinations of the moves it carries with a confirmed match, from
    /// the journey's start until the grace period after arrival.
    pub fn sites_seeing(&self, vehicle: &VehicleId, now: DateTime<Utc>) -> Vec<SiteId> {
        self.visibility()
            .sites_seeing_vehicle(*vehicle, self.vehicle_facts(vehicle), now)
    }

    /// The span of time in which any of `sites` may see `vehicle`'s track
    /// now (see [`Visibility::window`]). `None` when none of them may see
    /// the vehicle now.
    pub fn site_window(
        &self,
        vehicle: &VehicleId,
        sites: &[SiteId],
        now: DateTime<Utc>,
    ) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        self.visibility()
            .window(sites, *vehicle, self.vehicle_facts(vehicle), now)
    }

    /// The vehicles a site channel may see now.
    pub fn vehicles_seen_by(&self, site: &SiteId, now: DateTime<Utc>) -> Vec<VehicleId> {
        let policy = self.visibility();
        // Every live move, not only those linked to a vehicle: a move booked
        // as completed is unlinked but its vehicle stays visible for the grace.
        let mut out: Vec<VehicleId> = self
            .moves
            .values()
            .filter(|m| policy.vehicle_sites(&m.facts(), now).contains(site))
            .filter_map(|m| m.vehicle)
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Live move views: every open move (`site` None, the control room), or
    /// a site's day (every move to or from it that
    /// [`Visibility::on_sites_day`] keeps; a probable vehicle and what is
    /// measured from it left out).
    pub fn move_views(&self, site: Option<&SiteId>, now: DateTime<Utc>) -> Vec<MoveView> {
        let policy = self.visibility();
        let mut views: Vec<MoveView> = self
            .moves
            .values()
            .filter_map(|m| match site {
                None => (!m.spec.status.is_final()).then(|| self.view(m)),
                Some(s) => {
                    let facts = m.facts();
                    policy.site_lists_move(s, &facts, now).then(|| {
                        if facts.is_probable() {
                            redact_probable(self.view(m))
                        } else {
                            self.view(m)
                        }
                    })
                }
            })
            .collect();
        views.sort_by(|a, b| a.move_id.cmp(&b.move_id));
        views
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moves::test_support::*;

    /// A rebuilt book (a restart, or a cluster node's follower) knows an
    /// arrived move's times again from the stored arrival, and an in-transit
    /// move's departure from the stored exit: the arrived move stays on its
    /// sites' day for the grace period, not one second more.
    #[test]
    fn a_rebuilt_book_keeps_an_arrived_move_on_its_sites_day() {
        let mut b = book();
        let now = at(600);
        let mut arrived = spec("m1", Some(VAN));
        arrived.status = MoveStatus::Arrived;
        let mut going = spec("m2", Some("GO22VAN"));
        going.status = MoveStatus::InTransit;
        drop(b.upsert(arrived, now));
        drop(b.upsert(going, now));
        // As stored status alone, the arrived move has no arrival time.
        assert!(
            b.move_views(Some(&site("DST")), now)
                .iter()
                .all(|m| m.move_id != mid("m1"))
        );
        let arrival = model::Arrival {
            move_id: mid("m1"),
            vehicle: v(VAN),
            site: site("DST"),
            from_location: site("ORG"),
            departed_at: at(0),
            arrived_at: at(500),
            distance_m: 55_000.0,
        };
        let exit = crossing("GO22VAN", "ORG", model::TransitionKind::Exit, at(300));
        b.restore_times(&[arrival], &[exit]);
        let day = b.move_views(Some(&site("DST")), now);
        assert!(day.iter().any(|m| m.move_id == mid("m1")), "{day:?}");
        let m1 = b.details(&mid("m1")).unwrap();
        assert_eq!(
            (m1.departed_at, m1.arrived_at),
            (Some(at(0)), Some(at(500)))
        );
        assert_eq!(b.details(&mid("m2")).unwrap().departed_at, Some(at(300)));
        // Past the grace period it leaves the day.
        assert!(
            b.move_views(Some(&site("DST")), at(500) + Duration::minutes(16))
                .iter()
                .all(|m| m.move_id != mid("m1"))
        );
    }

    fn grace() -> Visibility {
        Visibility::new(Duration::minutes(15))
    }

    /// ORG → DST for today, in `status`, carried by VAN as matched by `kind`.
    fn facts<'a>(
        from: &'a SiteId,
        to: &'a SiteId,
        status: MoveStatus,
        kind: Option<MatchKind>,
    ) -> MoveFacts<'a> {
        MoveFacts {
            from_location: from,
            to_location: to,
            date: today(),
            status,
            vehicle: kind.map(|_| v(VAN)),
            matched: kind,
            started_at: None,
            departed_at: None,
            arrived_at: None,
            finished_at: None,
        }
    }

    #[test]
    fn a_probable_vehicle_is_never_visible_to_a_site() {
        let (o, d) = (site("ORG"), site("DST"));
        let scope = [o.clone(), d.clone()];
        for status in [
            MoveStatus::Booked,
            MoveStatus::InTransit,
            MoveStatus::Arrived,
        ] {
            let mut m = facts(&o, &d, status, Some(MatchKind::Probable));
            m.departed_at = Some(at(0));
            m.arrived_at = Some(at(60));
            let now = at(120);
            assert!(grace().vehicle_sites(&m, now).is_empty(), "{status:?}");
            assert!(grace().move_sites(&m, now).is_empty(), "{status:?}");
            assert!(!grace().can_see_vehicle(&scope, v(VAN), [m], now));
            assert!(grace().window(&scope, v(VAN), [m], now).is_none());
            assert!(grace().sites_seeing_vehicle(v(VAN), [m], now).is_empty());
        }
        // Still on the sites' day (listed without the guess), once confirmed seen.
        let m = facts(&o, &d, MoveStatus::Booked, Some(MatchKind::Probable));
        assert!(grace().site_lists_move(&d, &m, at(0)));
        let inferred = facts(&o, &d, MoveStatus::InTransit, Some(MatchKind::Inferred));
        assert!(grace().can_see_vehicle(&scope, v(VAN), [inferred], at(0)));
    }

    #[test]
    fn a_booked_move_is_on_its_sites_day_but_its_vehicle_is_not_visible_before_it_leaves() {
        let (o, d, alt) = (site("ORG"), site("DST"), site("ALT"));
        let m = facts(&o, &d, MoveStatus::Booked, Some(MatchKind::Booked));
        let now = at(0);
        assert!(grace().on_sites_day(&m, now));
        assert!(grace().site_lists_move(&o, &m, now));
        assert!(grace().site_lists_move(&d, &m, now));
        assert!(!grace().site_lists_move(&alt, &m, now));
        assert_eq!(grace().move_sites(&m, now), vec![o.clone(), d.clone()]);
        assert!(grace().vehicle_sites(&m, now).is_empty());
        assert!(!grace().can_see_vehicle(std::slice::from_ref(&d), v(VAN), [m], now));
        // Once on the way, both ends see it, and no one else.
        let going = MoveFacts {
            status: MoveStatus::InTransit,
            started_at: Some(now),
            ..m
        };
        assert_eq!(
            grace().vehicle_sites(&going, now),
            vec![o.clone(), d.clone()]
        );
        assert!(grace().can_see_vehicle(std::slice::from_ref(&d), v(VAN), [going], now));
        assert!(!grace().can_see_vehicle(std::slice::from_ref(&alt), v(VAN), [going], now));
    }

    #[test]
    fn the_days_edges_a_booking_for_tomorrow_in_transit_and_cancelled() {
        let (o, d) = (site("ORG"), site("DST"));
        let tomorrow = MoveFacts {
            date: today().succ_opt().unwrap(),
            ..facts(&o, &d, MoveStatus::Booked, None)
        };
        assert!(!grace().on_sites_day(&tomorrow, at(0)));
        // Still coming, whatever its date.
        let late = MoveFacts {
            status: MoveStatus::InTransit,
            ..tomorrow
        };
        assert!(grace().on_sites_day(&late, at(0)));
        let cancelled = facts(&o, &d, MoveStatus::Cancelled, Some(MatchKind::Booked));
        assert!(!grace().on_sites_day(&cancelled, at(0)));
        assert!(grace().move_sites(&cancelled, at(0)).is_empty());
        assert!(grace().vehicle_sites(&cancelled, at(0)).is_empty());
    }

    #[test]
    fn a_site_sees_the_vehicle_until_15_minutes_after_arrival() {
        let (o, d) = (site("ORG"), site("DST"));
        let arrived = at(3600);
        let m = MoveFacts {
            started_at: Some(at(0)),
            arrived_at: Some(arrived),
            ..facts(&o, &d, MoveStatus::Arrived, Some(MatchKind::JourneyStart))
        };
        let scope = [d.clone()];
        let edge = arrived + Duration::minutes(15);
        assert!(grace().can_see_vehicle(&scope, v(VAN), [m], edge));
        assert_eq!(
            grace().window(&scope, v(VAN), [m], edge),
            Some((at(0), edge))
        );
        // The window never runs past now.
        assert_eq!(
            grace().window(&scope, v(VAN), [m], at(3700)),
            Some((at(0), at(3700)))
        );
        let after = edge + Duration::seconds(1);
        assert!(!grace().can_see_vehicle(&scope, v(VAN), [m], after));
        assert!(grace().window(&scope, v(VAN), [m], after).is_none());
        assert!(!grace().on_sites_day(&m, after));
        // Completed keeps the same grace, from arrival.
        let done = MoveFacts {
            status: MoveStatus::Completed,
            finished_at: Some(arrived + Duration::minutes(5)),
            ..m
        };
        assert!(grace().can_see_vehicle(&scope, v(VAN), [done], edge));
        assert!(!grace().can_see_vehicle(&scope, v(VAN), [done], after));
    }

    #[test]
    fn a_vehicle_is_seen_through_the_moves_it_is_matched_to_only() {
        let (o, d, alt) = (site("ORG"), site("DST"), site("ALT"));
        let first = MoveFacts {
            started_at: Some(at(100)),
            ..facts(&o, &d, MoveStatus::InTransit, Some(MatchKind::Booked))
        };
        let second = MoveFacts {
            to_location: &alt,
            started_at: Some(at(50)),
            ..first
        };
        // A move since handed to another vehicle shows nothing of this one.
        let handed_over = MoveFacts {
            vehicle: Some(v(OTHER)),
            ..second
        };
        let p = grace();
        assert_eq!(
            p.sites_seeing_vehicle(v(VAN), [first, second], at(200)),
            vec![o.clone(), d.clone(), alt.clone()]
        );
        assert_eq!(
            p.window(std::slice::from_ref(&o), v(VAN), [first, second], at(200)),
            Some((at(50), at(200)))
        );
        assert!(!p.can_see_vehicle(
            std::slice::from_ref(&alt),
            v(VAN),
            [first, handed_over],
            at(200)
        ));
        assert!(p.can_see_vehicle(
            std::slice::from_ref(&alt),
            v(OTHER),
            [first, handed_over],
            at(200)
        ));
        assert!(!p.can_see_vehicle(&[], v(VAN), [first], at(200)));
    }

    #[test]
    fn redaction_drops_the_vehicle_and_what_is_measured_from_it() {
        let mut b = book();
        b.upsert(spec("m1", None), t0());
        let mut view = b.details(&mid("m1")).unwrap().view;
        view.vehicle = Some(v(VAN));
        view.vehicle_match = Some("probable");
        view.eta = Some("2026-11-21T10:00:00Z".into());
        view.distance_remaining_m = Some(1000.0);
        let r = redact_probable(view.clone());
        assert_eq!(r.vehicle, None);
        assert_eq!(r.vehicle_match, None);
        assert_eq!(r.eta, None);
        assert_eq!(r.distance_remaining_m, None);
        assert_eq!((r.move_id, r.status), (view.move_id, view.status));
    }

    #[test]
    fn the_book_wrappers_answer_as_the_policy_does() {
        let mut b = book();
        let mut out = Vec::new();
        b.upsert(spec("m1", Some(VAN)), t0());
        let dst = [site("DST")];
        assert!(!b.can_see_vehicle(&dst, &v(VAN), at(0)));
        b.on_event(
            &event(
                VAN,
                model::EventKind::MoveStart,
                at(10),
                Some("m1"),
                serde_json::json!({}),
            ),
            &mut out,
        );
        let facts = b.move_facts(&mid("m1")).unwrap();
        assert_eq!(
            b.visibility().move_sites(&facts, at(20)),
            vec![site("ORG"), site("DST")]
        );
        for now in [at(20), at(86_400)] {
            assert_eq!(
                b.can_see_vehicle(&dst, &v(VAN), now),
                b.site_window(&v(VAN), &dst, now).is_some()
            );
            assert_eq!(
                b.sites_seeing(&v(VAN), now),
                b.visibility()
                    .sites_seeing_vehicle(v(VAN), b.vehicle_facts(&v(VAN)), now)
            );
        }
        assert!(b.can_see_vehicle(&dst, &v(VAN), at(20)));
        assert_eq!(b.vehicles_seen_by(&site("DST"), at(20)), vec![v(VAN)]);
    }
}
