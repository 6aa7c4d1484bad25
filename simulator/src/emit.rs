//! What a van's device sends, fix by fix, with the faults it suffers.

use chrono::{DateTime, Utc};
use model::{Reason, SupplierId, VehicleId};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::plan::{Happening, VanPlan};

/// Faults and their rates. Rates "per fix" are probabilities for each fix;
/// rates "of vans" are the share of the fleet affected. All zero = a clean run.
#[derive(Debug, Clone, Default)]
pub struct FaultConfig {
    /// GPS noise scaled by each fix's hdop (σ = 3 m × hdop).
    pub noise: bool,
    /// Per fix: a bad fix (hdop 12–25, ~150 m off), which the engine stores flagged.
    pub bad_fix_rate: f64,
    /// Per fix: a tunnel / signal gap of 1–5 minutes starts; the fixes taken
    /// during it are sent afterwards as one array (store and forward).
    pub gap_rate: f64,
    /// Per fix: the same message is sent again on the next fix (a duplicate).
    pub duplicate_rate: f64,
    /// Per fix: the fix is held back and sent after the next one (reordering).
    pub reorder_rate: f64,
    /// Of vans: the device clock is off by up to ±120 s.
    pub skew_rate: f64,
    /// Per fix: an extra deliberately malformed payload is sent.
    pub malformed_rate: f64,
    /// Which rejection reasons malformed payloads cycle through.
    pub malformed_reasons: Vec<Reason>,
    /// Of vans: the device goes silent for good at a random time.
    pub silent_rate: f64,
    /// Of vans carrying a move: one breakdown on the road (planned into the day).
    pub breakdown_rate: f64,
}

impl FaultConfig {
    /// Every rejection reason a simulator can provoke over MQTT (not
    /// `unknown_supplier`, which needs an engine with suppliers configured and a
    /// broker that lets a client publish under another supplier's prefix).
    pub fn mqtt_reasons() -> Vec<Reason> {
        Reason::ALL
            .into_iter()
            .filter(|r| *r != Reason::UnknownSupplier)
            .collect()
    }

    /// The reasons a `POST /tracks` element can be rejected with (the others
    /// are whole-request statuses: 401, 413, 400).
    pub fn http_reasons() -> Vec<Reason> {
        vec![
            Reason::MalformedJson,
            Reason::MissingField,
            Reason::InvalidValue,
            Reason::OutOfRange,
            Reason::FutureTimestamp,
            Reason::VehicleMismatch,
            Reason::Duplicate,
            Reason::VehicleOwnedByOtherSupplier,
        ]
    }
}

/// A message body: JSON elements (sent as one object, or an array), or raw bytes.
#[derive(Debug, Clone)]
pub enum Body {
    /// JSON texts of points or events.
    Elements {
        /// The elements.
        items: Vec<String>,
        /// Send as an array even if there is one.
        array: bool,
    },
    /// Raw bytes (a malformed payload).
    Raw(Vec<u8>),
}

impl Body {
    /// The MQTT payload.
    pub fn mqtt_payload(&self) -> Vec<u8> {
        match self {
            Body::Raw(b) => b.clone(),
            Body::Elements { items, array } if items.len() == 1 && !array => {
                items[0].clone().into_bytes()
            }
            Body::Elements { items, .. } => json_array(items.iter().map(String::as_str)),
        }
    }
}

/// `[a,b,...]` from JSON texts.
pub fn json_array<'a>(items: impl Iterator<Item = &'a str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(b'[');
    for (i, s) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(s.as_bytes());
    }
    out.push(b']');
    out
}

/// A point as sent, for matching it later.
#[derive(Debug, Clone, Serialize)]
pub struct SentPoint {
    /// Its tracking id.
    pub tracking_id: String,
    /// Its timestamp as sent (device clock), milliseconds since the epoch.
    pub ts_ms: i64,
    /// Whether the engine should show it live (not a bad fix, not held back).
    pub live: bool,
}

/// What a message is.
#[derive(Debug, Clone)]
pub enum Kind {
    /// Valid position points (to be stored once each).
    Points(Vec<SentPoint>),
    /// A re-send of points already sent (each a `duplicate` dead letter).
    Duplicate(usize),
    /// A BaSM event.
    Event,
    /// A deliberately malformed payload, with the reason the engine must give.
    Malformed(Reason),
}

/// One message to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The van (index) it comes from.
    pub van: u32,
    /// The supplier whose connection sends it.
    pub supplier: SupplierId,
    /// The MQTT topic.
    pub topic: String,
    /// The body.
    pub body: Body,
    /// What it is.
    pub kind: Kind,
}

/// A ground-truth record (one JSON line each).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TruthLine {
    /// A point sent.
    Point {
        /// Vehicle.
        vehicle: String,
        /// Tracking id.
        tracking_id: String,
        /// Timestamp as sent.
        ts: String,
        /// True time of the fix (differs from `ts` under clock skew).
        true_ts: String,
        /// Whether the engine should show it live.
        live: bool,
        /// Sent late in a store-and-forward burst.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        buffered: bool,
    },
    /// A re-sent point (expect a `duplicate` dead letter).
    Duplicate {
        /// Vehicle.
        vehicle: String,
        /// Tracking id.
        tracking_id: String,
    },
    /// A deliberately malformed payload.
    Malformed {
        /// Vehicle of the van that sent it.
        vehicle: String,
        /// The topic used.
        topic: String,
        /// The reason the engine must give.
        reason: &'static str,
    },
    /// A true arrival at a site's fence.
    Arrival {
        /// Vehicle.
        vehicle: String,
        /// Site.
        site: String,
        /// Move picked up or dropped there.
        move_id: Option<String>,
        /// True time.
        ts: String,
    },
    /// A true departure from a site's fence.
    Departure {
        /// Vehicle.
        vehicle: String,
        /// Site.
        site: String,
        /// Move picked up or dropped there.
        move_id: Option<String>,
        /// True time.
        ts: String,
    },
    /// A BaSM event sent.
    Event {
        /// Vehicle.
        vehicle: String,
        /// `event_type`.
        event_type: &'static str,
        /// `move_id`.
        move_id: Option<String>,
        /// True time.
        ts: String,
    },
    /// A signal gap began (the buffered fixes follow in one array).
    Gap {
        /// Vehicle.
        vehicle: String,
        /// True start.
        ts: String,
        /// Seconds.
        seconds: f64,
    },
    /// The device went silent for good.
    Silent {
        /// Vehicle.
        vehicle: String,
        /// True time.
        ts: String,
    },
}

/// A van's device: its plan, clock and faults.
pub struct Device {
    /// Van index.
    pub index: u32,
    /// Registration.
    pub vehicle: VehicleId,
    /// Supplier.
    pub supplier: SupplierId,
    /// A vehicle of another supplier (for `vehicle_owned_by_other_supplier`).
    pub foreign: Option<VehicleId>,
    rng: SmallRng,
    skew_ms: i64,
    silent_at: Option<f64>,
    silenced: bool,
    gap_until: Option<f64>,
    buffered: Vec<(String, SentPoint)>,
    held: Option<(String, SentPoint)>,
    resend: Option<(String, String)>,
    last_element: Option<(String, String)>,
    next_happening: usize,
    /// Start events (indices into the plan's happenings) of moves on board at the first fix.
    catch_up: Vec<usize>,
    seq: u64,
    fixes: u64,
    malformed_turn: usize,
    id_prefix: String,
}

/// What a device needs to know about the run.
pub struct DeviceContext<'a> {
    /// The van's plan.
    pub plan: &'a VanPlan,
    /// Faults.
    pub faults: &'a FaultConfig,
    /// Virtual times of the run's first and last fix.
    pub window: (f64, f64),
    /// Tracking ids start with this (seed and start time: unique per run).
    pub id_prefix: &'a str,
    /// The run's seed.
    pub seed: u64,
    /// Whether positions go over HTTP (no topic-level faults then).
    pub http: bool,
}

/// Turns virtual plan time into UTC.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// UTC of virtual time `day_start`.
    pub start: DateTime<Utc>,
    /// Virtual seconds since midnight at `start`.
    pub day_start: f64,
}

impl Clock {
    /// UTC milliseconds of virtual time `t`.
    pub fn ms(&self, t: f64) -> i64 {
        self.start.timestamp_millis() + ((t - self.day_start) * 1000.0).round() as i64
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn ts_text(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Device {
    /// A device for van `index`.
    pub fn new(index: u32, ctx: &DeviceContext<'_>) -> Device {
        let mut rng = SmallRng::seed_from_u64(
            ctx.seed ^ (u64::from(index) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let skew_ms = if rng.random_bool(ctx.faults.skew_rate.clamp(0.0, 1.0)) {
            rng.random_range(-120_000..120_000)
        } else {
            0
        };
        let silent_at = rng
            .random_bool(ctx.faults.silent_rate.clamp(0.0, 1.0))
            .then(|| {
                let (a, b) = ctx.window;
                a + (b - a) * rng.random_range(0.2..0.8)
            });
        let next_happening = ctx.plan.happenings.partition_point(|h| h.t < ctx.window.0);
        let catch_up = started_before(&ctx.plan.happenings[..next_happening]);
        Device {
            index,
            vehicle: ctx.plan.vehicle,
            supplier: ctx.plan.supplier,
            foreign: None,
            rng,
            skew_ms,
            silent_at,
            silenced: false,
            gap_until: None,
            buffered: Vec::new(),
            held: None,
            resend: None,
            last_element: None,
            next_happening,
            catch_up,
            seq: 0,
            fixes: 0,
            malformed_turn: index as usize,
            id_prefix: format!("{}{}-", ctx.id_prefix, ctx.plan.vehicle),
        }
    }

    /// The message and truth line of a BaSM event happening at `ms` (true time).
    fn event(&self, what: &Happening, ms: i64) -> Option<(Outgoing, TruthLine)> {
        let Happening::Event {
            event_type,
            move_id,
            journey_id,
            details,
        } = what
        else {
            return None;
        };
        let mut ev = serde_json::json!({
            "event_type": event_type,
            "occurred_at": ts_text(ms + self.skew_ms),
            "details": details,
        });
        if let Some(m) = move_id {
            ev["move_id"] = m.clone().into();
        }
        if let Some(j) = journey_id {
            ev["journey_id"] = j.clone().into();
        }
        let o = self.out(
            self.topic("events"),
            Body::Elements {
                items: vec![ev.to_string()],
                array: false,
            },
            Kind::Event,
        );
        let line = TruthLine::Event {
            vehicle: self.vehicle.to_string(),
            event_type,
            move_id: move_id.clone(),
            ts: ts_text(ms),
        };
        Some((o, line))
    }

    fn topic(&self, kind: &str) -> String {
        format!("movewatch/v1/{}/{}/{kind}", self.supplier, self.vehicle)
    }

    fn out(&self, topic: String, body: Body, kind: Kind) -> Outgoing {
        Outgoing {
            van: self.index,
            supplier: self.supplier,
            topic,
            body,
            kind,
        }
    }

    /// Takes the fix at virtual time `t`: appends what the device sends now
    /// to `out`, and the ground truth to `truth` when given.
    pub fn tick(
        &mut self,
        t: f64,
        ctx: &DeviceContext<'_>,
        clock: &Clock,
        out: &mut Vec<Outgoing>,
        mut truth: Option<&mut Vec<TruthLine>>,
    ) {
        let faults = ctx.faults;
        let vehicle = self.vehicle.to_string();
        let silent = self.silent_at.is_some_and(|s| t >= s);
        // A run that starts mid-journey: the crew's start events of the moves
        // on board were sent before the first fix; send them now.
        for i in std::mem::take(&mut self.catch_up) {
            if silent || ctx.http {
                break;
            }
            let h = &ctx.plan.happenings[i];
            if let Some((o, line)) = self.event(&h.what, clock.ms(h.t)) {
                out.push(o);
                if let Some(tr) = truth.as_deref_mut() {
                    tr.push(line);
                }
            }
        }
        // What truly happened since the last fix.
        while let Some(h) = ctx.plan.happenings.get(self.next_happening)
            && h.t <= t
        {
            self.next_happening += 1;
            let ms = clock.ms(h.t);
            let line = match &h.what {
                Happening::Arrival { site, move_id } => TruthLine::Arrival {
                    vehicle: vehicle.clone(),
                    site: site.clone(),
                    move_id: move_id.clone(),
                    ts: ts_text(ms),
                },
                Happening::Departure { site, move_id } => TruthLine::Departure {
                    vehicle: vehicle.clone(),
                    site: site.clone(),
                    move_id: move_id.clone(),
                    ts: ts_text(ms),
                },
                Happening::Event { .. } => {
                    if silent || ctx.http {
                        continue;
                    }
                    match self.event(&h.what, ms) {
                        Some((o, line)) => {
                            out.push(o);
                            line
                        }
                        None => continue,
                    }
                }
            };
            if let Some(tr) = truth.as_deref_mut() {
                tr.push(line);
            }
        }
        if silent {
            if !self.silenced
                && let Some(tr) = truth.as_deref_mut()
            {
                tr.push(TruthLine::Silent {
                    vehicle: vehicle.clone(),
                    ts: ts_text(clock.ms(t)),
                });
            }
            self.silenced = true;
            return;
        }
        self.fixes += 1;
        // The fix.
        let fix = ctx.plan.at(t);
        let bad = self.rng.random_bool(faults.bad_fix_rate.clamp(0.0, 1.0));
        let hdop: f64 = if bad {
            self.rng.random_range(12.0..25.0)
        } else {
            self.rng.random_range(0.7..2.5)
        };
        let (mut lat, mut lon) = (fix.lat, fix.lon);
        if faults.noise || bad {
            let sigma = if bad { 150.0 } else { 3.0 * hdop };
            let (dn, de) = gauss2(&mut self.rng);
            lat += dn * sigma / 111_195.0;
            lon += de * sigma / (111_195.0 * lat.to_radians().cos().max(0.1));
        }
        let kmh = if fix.kmh > 0.0 {
            (fix.kmh + self.rng.random_range(-4.0..4.0)).max(3.0)
        } else {
            0.0
        };
        let true_ms = clock.ms(t);
        let ts_ms = true_ms + self.skew_ms;
        self.seq += 1;
        let tracking_id = format!("{}{}", self.id_prefix, self.seq);
        let element = serde_json::json!({
            "tracking_id": tracking_id,
            "tracking_timestamp": ts_text(ts_ms),
            "vehicle_registration": vehicle,
            "latitude": (lat * 1e6).round() / 1e6,
            "longitude": (lon * 1e6).round() / 1e6,
            "speed": (kmh * 10.0).round() / 10.0,
            "bearing": fix.bearing.round() % 360.0,
            "precision_hdop": (hdop * 10.0).round() / 10.0,
        })
        .to_string();
        let mut sent = SentPoint {
            tracking_id: tracking_id.clone(),
            ts_ms,
            live: !bad,
        };
        // A duplicate queued on the previous fix goes first.
        if let Some((id, el)) = self.resend.take() {
            if let Some(tr) = truth.as_deref_mut() {
                tr.push(TruthLine::Duplicate {
                    vehicle: vehicle.clone(),
                    tracking_id: id,
                });
            }
            out.push(self.out(
                self.topic("positions"),
                Body::Elements {
                    items: vec![el],
                    array: false,
                },
                Kind::Duplicate(1),
            ));
        }
        // Signal gaps: buffer, then send everything in one array.
        if self.gap_until.is_none() && self.rng.random_bool(faults.gap_rate.clamp(0.0, 1.0)) {
            let seconds = self.rng.random_range(60.0..300.0);
            self.gap_until = Some(t + seconds);
            if let Some(tr) = truth.as_deref_mut() {
                tr.push(TruthLine::Gap {
                    vehicle: vehicle.clone(),
                    ts: ts_text(true_ms),
                    seconds,
                });
            }
        }
        let buffering = self.gap_until.is_some_and(|g| t < g) || self.buffered.len() >= 999;
        // Reordering: this fix is held and sent after the next one, so it
        // arrives late: the engine stores it but does not show it live.
        let hold = !buffering
            && self.gap_until.is_none()
            && self.held.is_none()
            && self.rng.random_bool(faults.reorder_rate.clamp(0.0, 1.0));
        if hold {
            sent.live = false;
        }
        if let Some(tr) = truth.as_deref_mut() {
            tr.push(TruthLine::Point {
                vehicle: vehicle.clone(),
                tracking_id: tracking_id.clone(),
                ts: ts_text(ts_ms),
                true_ts: ts_text(true_ms),
                live: sent.live,
                buffered: buffering,
            });
        }
        if buffering && self.buffered.len() < 999 {
            // Nothing is sent during the gap, so the burst is in time order.
            self.buffered.push((element, sent));
            return;
        }
        if self.gap_until.is_some() || !self.buffered.is_empty() {
            self.gap_until = None;
            self.buffered.push((element, sent));
            if let Some(held) = self.held.take() {
                self.buffered.push(held);
            }
            let (items, points): (Vec<String>, Vec<SentPoint>) =
                std::mem::take(&mut self.buffered).into_iter().unzip();
            out.push(self.out(
                self.topic("positions"),
                Body::Elements { items, array: true },
                Kind::Points(points),
            ));
            return;
        }
        if self.rng.random_bool(faults.duplicate_rate.clamp(0.0, 1.0)) {
            self.resend = Some((tracking_id.clone(), element.clone()));
        }
        self.last_element = Some((tracking_id.clone(), element.clone()));
        let single = |el: String| Body::Elements {
            items: vec![el],
            array: false,
        };
        if hold {
            self.held = Some((element, sent));
        } else {
            out.push(self.out(
                self.topic("positions"),
                single(element),
                Kind::Points(vec![sent]),
            ));
            if let Some((el, p)) = self.held.take() {
                out.push(self.out(self.topic("positions"), single(el), Kind::Points(vec![p])));
            }
        }
        if !faults.malformed_reasons.is_empty()
            && self.rng.random_bool(faults.malformed_rate.clamp(0.0, 1.0))
        {
            let reason =
                faults.malformed_reasons[self.malformed_turn % faults.malformed_reasons.len()];
            // A reason this van cannot provoke yet stays its next turn.
            if let Some(m) = self.malformed(reason, ts_ms, (lat, lon)) {
                self.malformed_turn += 1;
                if let Some(tr) = truth {
                    tr.push(TruthLine::Malformed {
                        vehicle: vehicle.clone(),
                        topic: m.topic.clone(),
                        reason: reason.as_str(),
                    });
                }
                out.push(m);
            }
        }
    }

    /// A payload the engine must reject with `reason` (None if this van cannot make one now).
    fn malformed(
        &mut self,
        reason: Reason,
        ts_ms: i64,
        (lat, lon): (f64, f64),
    ) -> Option<Outgoing> {
        self.seq += 1;
        let id = format!("{}bad{}", self.id_prefix, self.seq);
        let v = self.vehicle.to_string();
        let point = |ts: &str, reg: &str, lat: serde_json::Value| {
            serde_json::json!({
                "tracking_id": id,
                "tracking_timestamp": ts,
                "vehicle_registration": reg,
                "latitude": lat,
                "longitude": lon,
            })
        };
        let ts = ts_text(ts_ms);
        let one = |value: serde_json::Value| Body::Elements {
            items: vec![value.to_string()],
            array: false,
        };
        let pos = self.topic("positions");
        let (topic, body) = match reason {
            Reason::MalformedJson => (
                pos,
                Body::Raw(format!("{{\"tracking_id\": \"{id}\", \"latitude\": ").into_bytes()),
            ),
            Reason::MissingField => {
                let mut p = point(&ts, &v, lat.into());
                p.as_object_mut()?.remove("latitude");
                (pos, one(p))
            }
            Reason::InvalidValue => (pos, one(point("yesterday at noon", &v, lat.into()))),
            Reason::OutOfRange => (pos, one(point(&ts, &v, 91.5.into()))),
            // Two days ahead of the fix: in the future for any run that does
            // not itself start in the future (fix times never do).
            Reason::FutureTimestamp => (
                pos,
                one(point(&ts_text(ts_ms + 48 * 3_600_000), &v, lat.into())),
            ),
            Reason::VehicleMismatch => {
                let other = if v == "ZZ99ZZZ" { "ZZ98ZZZ" } else { "ZZ99ZZZ" };
                (pos, one(point(&ts, other, lat.into())))
            }
            Reason::UnknownSupplier => (
                format!("movewatch/v1/nosuchsupplier/{v}/positions"),
                one(point(&ts, &v, lat.into())),
            ),
            Reason::Duplicate => {
                let (_, el) = self.last_element.clone()?;
                (
                    pos,
                    Body::Elements {
                        items: vec![el],
                        array: false,
                    },
                )
            }
            Reason::TooLarge => (pos, Body::Raw(json_array(std::iter::repeat_n("{}", 1001)))),
            Reason::BadTopic => (
                format!("movewatch/v1/{}/B@D/positions", self.supplier),
                one(point(&ts, &v, lat.into())),
            ),
            Reason::VehicleOwnedByOtherSupplier => {
                // Only once the other van has long been claimed by its supplier.
                let foreign = self.foreign.filter(|_| self.fixes > 10)?.to_string();
                (
                    format!("movewatch/v1/{}/{foreign}/positions", self.supplier),
                    one(point(&ts, &foreign, lat.into())),
                )
            }
            // Needs a strict register; the simulator's engines claim on first report.
            Reason::UnknownVehicle => return None,
        };
        Some(self.out(topic, body, Kind::Malformed(reason)))
    }

    /// Flushes a held-back or buffered fix at the end of the run.
    pub fn flush(&mut self, out: &mut Vec<Outgoing>) {
        let mut rest: Vec<(String, SentPoint)> = std::mem::take(&mut self.buffered);
        if let Some(held) = self.held.take() {
            rest.push(held);
        }
        if !rest.is_empty() {
            let (items, points): (Vec<String>, Vec<SentPoint>) = rest.into_iter().unzip();
            out.push(self.out(
                self.topic("positions"),
                Body::Elements { items, array: true },
                Kind::Points(points),
            ));
        }
    }
}

/// The `JourneyStart` and `MoveStart` events among `before` (what happened
/// before a run's first fix) of moves not completed by then: the van carries
/// them when the run starts, so the engine must hear that they started.
pub fn started_before(before: &[crate::plan::Timed]) -> Vec<usize> {
    let completed: std::collections::HashSet<&str> = before
        .iter()
        .filter_map(|h| match &h.what {
            Happening::Event {
                event_type: "MoveComplete",
                move_id: Some(m),
                ..
            } => Some(m.as_str()),
            _ => None,
        })
        .collect();
    before
        .iter()
        .enumerate()
        .filter(|(_, h)| {
            matches!(&h.what, Happening::Event {
                event_type: "JourneyStart" | "MoveStart",
                move_id: Some(m),
                ..
            } if !completed.contains(m.as_str()))
        })
        .map(|(i, _)| i)
        .collect()
}

/// Two independent standard normal samples (Box–Muller).
fn gauss2(rng: &mut SmallRng) -> (f64, f64) {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    let r = (-2.0 * u1.ln()).sqrt();
    let a = std::f64::consts::TAU * u2;
    (r * a.cos(), r * a.sin())
}
