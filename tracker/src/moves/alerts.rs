//! The alerts: the time-based ones the ticker raises (`gps_gap`,
//! `device_silent`, `stopped`), `off_route` from the fixes, `arriving_30`
//! from the ETA, and the recent list kept for snapshots. Each alert is
//! raised once per episode: a flag marks it until its condition clears.

use chrono::{DateTime, Duration, Utc};
use model::wire::{AlertView, Frame};
use model::{
    AlertRecord, MoveId, Notification, NotificationKind, Position, SiteId, VehicleId, format_ts,
};

use super::{MoveBook, MoveOutput, MoveStatus};
use crate::haversine_m;

/// Alerts kept for snapshots.
const RECENT_ALERTS: usize = 100;

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

/// Whether `arriving_30` is due: not yet sent for this destination, and the
/// ETA closer than `threshold`.
pub(super) fn arriving_due(
    already_sent: bool,
    eta: DateTime<Utc>,
    now: DateTime<Utc>,
    threshold: Duration,
) -> bool {
    !already_sent && eta - now < threshold
}

impl MoveBook {
    /// Recent alerts (newest last): all, or those a site channel may see.
    pub fn recent_alerts(&self, site: Option<&SiteId>) -> Vec<AlertView> {
        self.alerts
            .iter()
            .filter(|(_, sites)| site.is_none_or(|s| sites.contains(s)))
            .map(|(a, _)| a.clone())
            .collect()
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
                Some(m) => self.visibility().vehicle_sites(&m.facts(), now),
                None => self.sites_seeing(&a.vehicle, now),
            };
            self.remember_alert(a, sites);
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
        self.forget_finished(now);
        out
    }

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

    /// `stopped`: slow for `stopped_after`, away from every site, while carrying a move in transit.
    pub(super) fn check_stopped(
        &mut self,
        vehicle: VehicleId,
        now: DateTime<Utc>,
        out: &mut Vec<MoveOutput>,
    ) {
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

    /// `off_route`: the distance from the origin–destination corridor grows
    /// sample after sample, a minute apart, beyond its half-width.
    pub(super) fn check_off_route(&mut self, id: &MoveId, p: &Position, out: &mut Vec<MoveOutput>) {
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

    /// Raises `arriving_30` for a move whose ETA (`eta`, `minutes` away) fell
    /// under the threshold.
    pub(super) fn raise_arriving(
        &mut self,
        id: &MoveId,
        vehicle: VehicleId,
        now: DateTime<Utc>,
        eta: DateTime<Utc>,
        minutes: f64,
        out: &mut Vec<MoveOutput>,
    ) {
        let detail = format!(
            "arriving at {} in about {:.0} min",
            self.moves
                .get(id)
                .map_or(String::new(), |m| m.spec.to_location.to_string()),
            minutes
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

    /// Raises an alert: its notification, its record and its frame, to the
    /// sites that may see the vehicle now.
    pub(super) fn alert(
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
            Some(m) => self.visibility().vehicle_sites(&m.facts(), now),
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
}

#[cfg(test)]
mod tests {
    use model::{EventKind, TransitionKind};
    use serde_json::json;

    use super::*;
    use crate::moves::MoveSpec;
    use crate::moves::test_support::*;

    fn records(out: &[MoveOutput]) -> Vec<AlertRecord> {
        out.iter()
            .filter_map(|o| match o {
                MoveOutput::Alert(a) => Some(a.clone()),
                _ => None,
            })
            .collect()
    }

    /// A book with m1 booked on VAN and VAN's last fix at t0.
    fn silent_van() -> MoveBook {
        let mut b = book();
        b.upsert(spec("m1", Some(VAN)), t0());
        b.on_position(&pos(VAN, at(0), 53.2, None), &mut Vec::new());
        b
    }

    #[test]
    fn device_silent_is_raised_once_and_not_again_after_a_restore() {
        let mut b = silent_van();
        let out = b.tick(at(6 * 60));
        // Booked, not in transit: no gps_gap, only device_silent.
        assert_eq!(alert_kinds(&out), vec!["device_silent"]);
        let raised = records(&out);
        assert_eq!(raised[0].ts, at(5 * 60), "stamped when the silence began");
        assert!(alert_kinds(&b.tick(at(7 * 60))).is_empty());

        // A restart: the same book rebuilt from the store.
        let mut again = book();
        again.upsert(spec("m1", Some(VAN)), t0());
        again.restore_fix(&pos(VAN, at(0), 53.2, None));
        again.restore_alerts(&raised, at(8 * 60));
        assert!(alert_kinds(&again.tick(at(8 * 60))).is_empty());
        assert_eq!(again.recent_alerts(None).len(), 1);

        // A new fix ends the episode; the next silence is a new alert.
        again.on_position(&pos(VAN, at(9 * 60), 53.2, None), &mut Vec::new());
        assert_eq!(alert_kinds(&again.tick(at(15 * 60))), vec!["device_silent"]);
    }

    #[test]
    fn gps_gap_needs_a_move_in_transit_and_fires_once_per_silence() {
        let mut b = silent_van();
        assert!(alert_kinds(&b.tick(at(90))).is_empty(), "booked: no gap");
        let start = event(VAN, EventKind::MoveStart, at(100), Some("m1"), json!({}));
        b.on_event(&start, &mut Vec::new());
        b.on_position(&pos(VAN, at(100), 53.2, None), &mut Vec::new());
        let out = b.tick(at(170));
        assert_eq!(alert_kinds(&out), vec!["gps_gap"]);
        assert_eq!(records(&out)[0].ts, at(160));
        assert!(alert_kinds(&b.tick(at(200))).is_empty());
        // Its frame goes to the sites seeing the vehicle in transit.
        let sites = out.iter().find_map(|o| match o {
            MoveOutput::Frame {
                frame: Frame::Alert(_),
                sites,
                ..
            } => Some(sites.clone()),
            _ => None,
        });
        assert_eq!(sites, Some(vec![site("ORG"), site("DST")]));
    }

    #[test]
    fn stopped_is_not_raised_inside_a_site() {
        let mut b = book();
        b.upsert(
            MoveSpec {
                status: MoveStatus::InTransit,
                ..spec("m1", Some(VAN))
            },
            t0(),
        );
        b.restore_inside(v(VAN), &site("ORG"));
        let slow = |s: i64| Position {
            speed_kmh: Some(1.0),
            ..pos(VAN, at(s), 53.0, None)
        };
        let mut out = Vec::new();
        for s in (0..=12 * 60).step_by(30) {
            b.on_position(&slow(s), &mut out);
        }
        assert!(alert_kinds(&out).is_empty(), "waiting in the yard");
        let exit = crossing(VAN, "ORG", TransitionKind::Exit, at(12 * 60 + 10));
        b.on_transition(&exit, &mut out);
        assert_eq!(alert_kinds(&b.tick(at(13 * 60))), vec!["stopped"]);
        // Once per episode (the silence since 12 min is a gps_gap, not a second stop).
        assert!(!alert_kinds(&b.tick(at(14 * 60))).contains(&"stopped".to_owned()));
    }

    #[test]
    fn arriving_30_is_due_once_under_the_threshold() {
        let thirty = Duration::minutes(30);
        assert!(arriving_due(false, at(29 * 60), at(0), thirty));
        assert!(!arriving_due(false, at(30 * 60), at(0), thirty));
        assert!(!arriving_due(true, at(60), at(0), thirty));
    }

    #[test]
    fn the_corridor_distance_is_measured_to_the_segment() {
        let (o, d) = ((53.0, -1.5), (53.5, -1.5));
        assert!(corridor_distance_m(o, d, (53.25, -1.5)) < 1e-6);
        // Beyond the destination: the distance to it, not to the line.
        let past = corridor_distance_m(o, d, (53.6, -1.5));
        assert!((past - 0.1 * 111_195.0).abs() < 1.0, "{past}");
        // Sideways at the midpoint: ~ 0.1° of longitude at 53.25 N.
        let side = corridor_distance_m(o, d, (53.25, -1.4));
        let expect = 0.1 * 111_195.0 * 53.25f64.to_radians().cos();
        assert!((side - expect).abs() < 1.0, "{side} vs {expect}");
    }
}
