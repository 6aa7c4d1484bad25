//! Enter / exit / pass-through per (vehicle, site), with dwell and hysteresis.
//! The rules are written out in docs/GEOFENCE.md.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use model::{Position, SiteId, VehicleId};

use crate::fence::{Fence, FenceError, haversine_m};
use crate::set::FenceSet;

/// One GPS fix as the engine needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fix {
    /// Latitude, WGS84 degrees.
    pub lat: f64,
    /// Longitude, WGS84 degrees.
    pub lon: f64,
    /// Fix time.
    pub ts: DateTime<Utc>,
    /// Horizontal dilution of precision; the uncertainty radius is hdop × 5 m.
    pub hdop: Option<f64>,
    /// Reported speed over ground, km/h.
    pub speed_kmh: Option<f64>,
}

impl From<&Position> for Fix {
    fn from(p: &Position) -> Fix {
        Fix {
            lat: p.lat,
            lon: p.lon,
            ts: p.ts,
            hdop: p.hdop,
            speed_kmh: p.speed_kmh,
        }
    }
}

/// What happened at a fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionKind {
    /// The vehicle arrived: it dwelt inside.
    Enter,
    /// The vehicle left: it stayed beyond the exit buffer.
    Exit,
    /// The vehicle crossed the fence without stopping (never an arrival).
    PassThrough,
}

/// A confirmed transition, time-stamped at its first qualifying fix.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Transition {
    /// The vehicle.
    pub vehicle: VehicleId,
    /// The site.
    pub site: SiteId,
    /// Enter, exit or pass-through.
    pub kind: TransitionKind,
    /// Time of the first qualifying fix (for a pass-through between two
    /// fixes, the time interpolated where the segment enters the fence).
    pub ts: DateTime<Utc>,
}

/// The rules' parameters; [`Default`] gives the documented values.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Consecutive inside fixes that confirm an enter (default 2).
    pub enter_min_fixes: u32,
    /// Time inside (since the first fix of the inside run) that confirms an enter (20 s).
    pub enter_min_dwell: Duration,
    /// How far the fence is grown for exits, metres (100).
    pub exit_buffer_m: f64,
    /// How long a vehicle must stay beyond the exit buffer (30 s).
    pub exit_min_duration: Duration,
    /// Uncertainty radius per unit of hdop, metres (5).
    pub metres_per_hdop: f64,
    /// hdop assumed when a fix has none (1).
    pub assumed_hdop: f64,
    /// A fix at or above this speed is "moving" and cannot confirm an enter (30 km/h).
    pub moving_kmh: f64,
    /// Two fixes further apart in time than this are not joined by a
    /// straight segment for pass-through detection (60 s).
    pub max_segment_gap: Duration,
    /// A segment must reach this far inside a fence to count as crossing it,
    /// metres (20); smaller clips are GPS noise at a corner.
    pub min_crossing_depth_m: f64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            enter_min_fixes: 2,
            enter_min_dwell: Duration::seconds(20),
            exit_buffer_m: 100.0,
            exit_min_duration: Duration::seconds(30),
            metres_per_hdop: 5.0,
            assumed_hdop: 1.0,
            moving_kmh: 30.0,
            max_segment_gap: Duration::seconds(60),
            min_crossing_depth_m: 20.0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Seen inside, enter not yet confirmed.
    Pending {
        /// First inside fix of the visit.
        visit_start: DateTime<Utc>,
        /// First inside fix of the current run of inside fixes, if a run is on.
        run_start: Option<DateTime<Utc>>,
        run_fixes: u32,
        /// Every inside fix of the visit was moving.
        all_moving: bool,
    },
    /// Enter confirmed.
    Inside {
        /// First fix of the current run beyond the exit buffer.
        exit_start: Option<DateTime<Utc>>,
    },
}

#[derive(Debug, Clone, Copy)]
struct SiteState {
    slot: u32,
    phase: Phase,
}

#[derive(Debug, Clone, Copy)]
struct LastFix {
    lat: f64,
    lon: f64,
    ts: DateTime<Utc>,
    uncertainty_m: f64,
}

#[derive(Debug, Default)]
struct VehicleState {
    last: Option<LastFix>,
    /// Only the sites the vehicle is inside or near (usually none or one).
    sites: Vec<SiteState>,
}

/// The geofence engine: the fences and, per vehicle, its last fix and the
/// state of the few sites it is inside or near.
#[derive(Debug)]
pub struct GeofenceEngine {
    fences: FenceSet,
    config: EngineConfig,
    vehicles: HashMap<VehicleId, VehicleState>,
}

impl GeofenceEngine {
    /// An engine over `fences` with the rules' parameters.
    pub fn new(fences: FenceSet, config: EngineConfig) -> GeofenceEngine {
        GeofenceEngine {
            fences,
            config,
            vehicles: HashMap::new(),
        }
    }

    /// The fences.
    pub fn fences(&self) -> &FenceSet {
        &self.fences
    }

    /// Replaces one site's fence at run time. Vehicle state is kept: the next
    /// fix is judged against the new fence with the same dwell and
    /// hysteresis rules, so a replacement alone emits nothing.
    pub fn replace_fence(&mut self, site: &SiteId, fence: Fence) -> Result<Fence, FenceError> {
        self.fences.replace(site, fence)
    }

    /// The sites the vehicle is confirmed inside.
    pub fn inside(&self, vehicle: &VehicleId) -> impl Iterator<Item = &SiteId> {
        self.vehicles
            .get(vehicle)
            .into_iter()
            .flat_map(|v| v.sites.iter())
            .filter(|s| matches!(s.phase, Phase::Inside { .. }))
            .map(|s| &self.fences.at(s.slot).site.id)
    }

    /// Restores, at start, that the vehicle is inside these sites (e.g. from
    /// the last stored transitions), without emitting anything: its next fix
    /// inside is no new arrival. Unknown site ids are skipped; returns how
    /// many were restored.
    pub fn restore<'a>(
        &mut self,
        vehicle: VehicleId,
        sites: impl IntoIterator<Item = &'a SiteId>,
    ) -> usize {
        let state = self.vehicles.entry(vehicle).or_default();
        let mut restored = 0;
        for id in sites {
            let Some(slot) = self.fences.slot(id) else {
                continue;
            };
            let phase = Phase::Inside { exit_start: None };
            match state.sites.iter_mut().find(|s| s.slot == slot) {
                Some(s) => s.phase = phase,
                None => state.sites.push(SiteState { slot, phase }),
            }
            restored += 1;
        }
        restored
    }

    /// Drops everything known about a vehicle.
    pub fn forget(&mut self, vehicle: &VehicleId) {
        self.vehicles.remove(vehicle);
    }

    /// Number of vehicles with state.
    pub fn vehicle_count(&self) -> usize {
        self.vehicles.len()
    }

    /// Feeds one fix; returns the transitions it confirms (usually none; an
    /// empty `Vec` does not allocate). A fix that is not newer than the
    /// vehicle's last, or has non-finite coordinates, is ignored.
    pub fn observe(&mut self, vehicle: VehicleId, fix: &Fix) -> Vec<Transition> {
        let mut out = Vec::new();
        if !(fix.lat.is_finite() && fix.lon.is_finite()) {
            return out;
        }
        let cfg = &self.config;
        let fences = &self.fences;
        let state = self.vehicles.entry(vehicle).or_default();
        if state.last.is_some_and(|l| fix.ts <= l.ts) {
            return out;
        }
        let hdop = fix
            .hdop
            .filter(|h| h.is_finite() && *h > 0.0)
            .unwrap_or(cfg.assumed_hdop);
        let u = hdop * cfg.metres_per_hdop;
        let moving = is_moving(fix, state.last, cfg);
        let emit = |out: &mut Vec<Transition>, slot: u32, kind, ts| {
            out.push(Transition {
                vehicle,
                site: fences.at(slot).site.id.clone(),
                kind,
                ts,
            })
        };

        // 1. Sites the vehicle already has state for.
        state.sites.retain_mut(|s| {
            let d = fences.at(s.slot).fence.signed_distance_m(fix.lat, fix.lon);
            match &mut s.phase {
                Phase::Pending {
                    visit_start,
                    run_start,
                    run_fixes,
                    all_moving,
                } => {
                    if d <= -u {
                        let start = *run_start.get_or_insert(fix.ts);
                        *run_fixes += 1;
                        *all_moving &= moving;
                        if !moving
                            && (*run_fixes >= cfg.enter_min_fixes
                                || fix.ts - start >= cfg.enter_min_dwell)
                        {
                            emit(&mut out, s.slot, TransitionKind::Enter, start);
                            s.phase = Phase::Inside { exit_start: None };
                        }
                        true
                    } else if d >= cfg.exit_buffer_m + u {
                        // The visit ended without an enter.
                        if *all_moving {
                            emit(&mut out, s.slot, TransitionKind::PassThrough, *visit_start);
                        }
                        false
                    } else {
                        if d >= u {
                            // Clearly outside the fence: the inside run is broken.
                            *run_start = None;
                            *run_fixes = 0;
                        }
                        true
                    }
                }
                Phase::Inside { exit_start } => {
                    if d >= cfg.exit_buffer_m + u {
                        let start = *exit_start.get_or_insert(fix.ts);
                        if fix.ts - start >= cfg.exit_min_duration {
                            emit(&mut out, s.slot, TransitionKind::Exit, start);
                            return false;
                        }
                    } else if d <= cfg.exit_buffer_m - u {
                        *exit_start = None;
                    }
                    true
                }
            }
        });

        // 2. Other fences near this fix or the segment from the last one.
        let segment_from = state.last.filter(|l| fix.ts - l.ts <= cfg.max_segment_gap);
        let mut bbox = [fix.lon, fix.lat, fix.lon, fix.lat];
        if let Some(l) = segment_from {
            bbox = [
                bbox[0].min(l.lon),
                bbox[1].min(l.lat),
                bbox[2].max(l.lon),
                bbox[3].max(l.lat),
            ];
        }
        for slot in fences.slots_meeting(bbox) {
            if state.sites.iter().any(|s| s.slot == slot) {
                continue;
            }
            let fence = &fences.at(slot).fence;
            let d = fence.signed_distance_m(fix.lat, fix.lon);
            if d <= -u {
                let mut phase = Phase::Pending {
                    visit_start: fix.ts,
                    run_start: Some(fix.ts),
                    run_fixes: 1,
                    all_moving: moving,
                };
                if !moving && cfg.enter_min_fixes <= 1 {
                    emit(&mut out, slot, TransitionKind::Enter, fix.ts);
                    phase = Phase::Inside { exit_start: None };
                }
                state.sites.push(SiteState { slot, phase });
            } else if d >= u
                && let Some(l) = segment_from
                && fence.signed_distance_m(l.lat, l.lon) >= l.uncertainty_m
                && let Some((t, depth)) = fence.segment_entry((l.lat, l.lon), (fix.lat, fix.lon))
                && depth >= cfg.min_crossing_depth_m.max(u).max(l.uncertainty_m)
            {
                let dt = (fix.ts - l.ts).num_milliseconds() as f64 * t;
                let ts = l.ts + Duration::milliseconds(dt.round() as i64);
                emit(&mut out, slot, TransitionKind::PassThrough, ts);
            }
        }

        state.last = Some(LastFix {
            lat: fix.lat,
            lon: fix.lon,
            ts: fix.ts,
            uncertainty_m: u,
        });
        out.sort_by_key(|t| t.ts);
        out
    }
}

/// Reported speed at or over the threshold; with no reported speed, the
/// speed implied by the last fix, trusted only over 100 m or more (so that
/// GPS noise cannot fake movement).
fn is_moving(fix: &Fix, last: Option<LastFix>, cfg: &EngineConfig) -> bool {
    if let Some(v) = fix.speed_kmh.filter(|v| v.is_finite()) {
        return v >= cfg.moving_kmh;
    }
    let Some(l) = last else { return false };
    let secs = (fix.ts - l.ts).num_milliseconds() as f64 / 1000.0;
    let dist = haversine_m(l.lat, l.lon, fix.lat, fix.lon);
    secs > 0.0 && dist >= 100.0 && dist / secs * 3.6 >= cfg.moving_kmh
}
