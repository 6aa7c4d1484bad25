//! Decoding and validating device payloads.
//!
//! A payload is one JSON object or an array of up to
//! [`MAX_POINTS_PER_PAYLOAD`]. Each element is parsed on its own (borrowing
//! from the payload where it can) so that a bad element is rejected alone
//! and the good ones are kept.

use std::borrow::Cow;

use chrono::SubsecRound;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::event::{Event, EventKind};
use crate::ids::{JourneyId, MoveId, SupplierId, VehicleId};
use crate::point::{PointFlags, Position};
use crate::reject::{Reason, Rejection, truncate_raw};

/// The largest payload accepted, in bytes (256 KiB).
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// The most elements one payload may carry.
pub const MAX_POINTS_PER_PAYLOAD: usize = 1000;
/// How far in the future a fix time may be.
pub const MAX_FUTURE_SKEW: Duration = Duration::minutes(5);
/// The longest `tracking_id` or `vehicle_vin` kept.
pub const MAX_TEXT_FIELD: usize = 128;

/// What a payload must look like at the top level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// MQTT: one object or an array of objects.
    ObjectOrArray,
    /// HTTP `POST /tracks`: an array of objects.
    Array,
}

/// Who sent a payload and where: what validation checks the points against.
#[derive(Debug, Clone, Copy)]
pub struct DecodeContext {
    /// The supplier of the topic or API key.
    pub supplier: SupplierId,
    /// The topic's vehicle (MQTT); `None` over HTTP, where each point names its own.
    pub topic_vehicle: Option<VehicleId>,
    /// The receipt time, for the future-timestamp check.
    pub now: DateTime<Utc>,
    /// The top-level shape required.
    pub shape: Shape,
}

/// The outcome of decoding one payload.
#[derive(Debug, Default)]
pub struct DecodedPayload<T> {
    /// The valid elements.
    pub items: Vec<T>,
    /// The rejected elements, with their index and reason.
    pub rejections: Vec<Rejection>,
    /// How many elements the payload had (valid plus rejected).
    pub total: usize,
}

/// A payload rejected as a whole: not JSON, the wrong shape, or too large.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct PayloadError {
    /// `malformed_json` or `too_large`.
    pub reason: Reason,
    /// What was wrong.
    pub detail: String,
}

fn payload_error(reason: Reason, detail: impl Into<String>) -> PayloadError {
    PayloadError {
        reason,
        detail: detail.into(),
    }
}

/// Splits a payload into its elements, checking size and shape.
fn split_elements(payload: &[u8], shape: Shape) -> Result<Vec<&RawValue>, PayloadError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(payload_error(
            Reason::TooLarge,
            format!(
                "payload of {} bytes exceeds {MAX_PAYLOAD_BYTES}",
                payload.len()
            ),
        ));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|e| payload_error(Reason::MalformedJson, format!("not UTF-8: {e}")))?;
    let first = text.trim_start().as_bytes().first().copied();
    match (first, shape) {
        (Some(b'['), _) => {
            let elements: Vec<&RawValue> = serde_json::from_str(text)
                .map_err(|e| payload_error(Reason::MalformedJson, e.to_string()))?;
            if elements.len() > MAX_POINTS_PER_PAYLOAD {
                return Err(payload_error(
                    Reason::TooLarge,
                    format!(
                        "array of {} elements exceeds {MAX_POINTS_PER_PAYLOAD}",
                        elements.len()
                    ),
                ));
            }
            Ok(elements)
        }
        (Some(b'{'), Shape::ObjectOrArray) => {
            let element: &RawValue = serde_json::from_str(text)
                .map_err(|e| payload_error(Reason::MalformedJson, e.to_string()))?;
            Ok(vec![element])
        }
        (_, Shape::Array) => {
            // Still tell JSON from not-JSON for a clear message.
            match serde_json::from_str::<&RawValue>(text) {
                Ok(_) => Err(payload_error(
                    Reason::MalformedJson,
                    "body is JSON but not an array",
                )),
                Err(e) => Err(payload_error(Reason::MalformedJson, e.to_string())),
            }
        }
        (_, Shape::ObjectOrArray) => match serde_json::from_str::<&RawValue>(text) {
            Ok(_) => Err(payload_error(
                Reason::MalformedJson,
                "payload is JSON but neither an object nor an array",
            )),
            Err(e) => Err(payload_error(Reason::MalformedJson, e.to_string())),
        },
    }
}

/// A `tracking_id` may be sent as a string or an integer.
fn str_or_int<'de, D>(d: D) -> Result<Option<Cow<'de, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string or an integer")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_owned())))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_string())))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_string())))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: serde::Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(V)
        }
    }
    d.deserialize_option(V)
}

/// A point as sent, borrowing from the payload. Unknown fields are ignored.
#[derive(Deserialize)]
struct RawPoint<'a> {
    #[serde(borrow, default, deserialize_with = "str_or_int")]
    tracking_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tracking_timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    vehicle_registration: Option<Cow<'a, str>>,
    #[serde(default)]
    latitude: Option<f64>,
    #[serde(default)]
    longitude: Option<f64>,
    #[serde(borrow, default)]
    journey_id: Option<Cow<'a, str>>,
    #[serde(default)]
    speed: Option<f64>,
    #[serde(default)]
    bearing: Option<f64>,
    #[serde(default)]
    altitude: Option<f64>,
    #[serde(default)]
    precision_hdop: Option<f64>,
    #[serde(default)]
    precision_vdop: Option<f64>,
    #[serde(borrow, default)]
    vehicle_vin: Option<Cow<'a, str>>,
}

/// A position point in the contract's wire form, for devices and the simulator.
#[derive(Debug, Serialize)]
pub struct WirePoint<'a> {
    /// `tracking_id`
    pub tracking_id: &'a str,
    /// `tracking_timestamp`, RFC 3339
    pub tracking_timestamp: String,
    /// `vehicle_registration`
    pub vehicle_registration: &'a str,
    /// `latitude`
    pub latitude: f64,
    /// `longitude`
    pub longitude: f64,
    /// `journey_id`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journey_id: Option<&'a str>,
    /// `speed`, km/h
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// `bearing`, degrees
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearing: Option<f64>,
    /// `altitude`, metres
    #[serde(skip_serializing_if = "Option::is_none")]
    pub altitude: Option<f64>,
    /// `precision_hdop`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision_hdop: Option<f64>,
    /// `precision_vdop`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision_vdop: Option<f64>,
    /// `vehicle_vin`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vehicle_vin: Option<&'a str>,
}

/// Formats a time the way the engine sends and stores it: RFC 3339, UTC, `Z`.
pub fn format_ts(ts: &DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

impl Position {
    /// This point in the contract's wire form.
    pub fn to_wire(&self) -> WirePoint<'_> {
        WirePoint {
            tracking_id: &self.tracking_id,
            tracking_timestamp: format_ts(&self.ts),
            vehicle_registration: self.vehicle.as_str(),
            latitude: self.lat,
            longitude: self.lon,
            journey_id: self.journey_id.as_ref().map(|j| j.as_str()),
            speed: self.speed_kmh,
            bearing: self.bearing,
            altitude: self.altitude,
            precision_hdop: self.hdop,
            precision_vdop: self.vdop,
            vehicle_vin: self.vin.as_deref(),
        }
    }
}

fn reject(index: usize, reason: Reason, detail: impl Into<String>) -> Rejection {
    Rejection {
        index,
        reason,
        detail: detail.into(),
        raw: String::new(),
    }
}

fn required<T>(index: usize, field: &str, value: Option<T>) -> Result<T, Rejection> {
    value.ok_or_else(|| reject(index, Reason::MissingField, format!("{field} is required")))
}

fn in_range(
    index: usize,
    field: &str,
    value: Option<f64>,
    ok: impl Fn(f64) -> bool,
    bounds: &str,
) -> Result<Option<f64>, Rejection> {
    match value {
        Some(v) if !(v.is_finite() && ok(v)) => Err(reject(
            index,
            Reason::OutOfRange,
            format!("{field} {v} not {bounds}"),
        )),
        other => Ok(other),
    }
}

fn parse_time(
    index: usize,
    field: &str,
    raw: &str,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, Rejection> {
    let ts = DateTime::parse_from_rfc3339(raw)
        .map_err(|e| {
            reject(
                index,
                Reason::InvalidValue,
                format!("{field} {raw:?} is not RFC 3339 with an offset: {e}"),
            )
        })?
        .with_timezone(&Utc)
        // Microseconds are what both stores keep: live state, frames and the
        // stored history then agree to the digit.
        .trunc_subsecs(6);
    if ts > now + MAX_FUTURE_SKEW {
        return Err(reject(
            index,
            Reason::FutureTimestamp,
            format!(
                "{field} {raw} is more than 5 minutes ahead of {}",
                format_ts(&now)
            ),
        ));
    }
    Ok(ts)
}

fn validate_point(
    index: usize,
    raw: RawPoint<'_>,
    ctx: &DecodeContext,
) -> Result<Position, Rejection> {
    let tracking_id = required(index, "tracking_id", raw.tracking_id)?;
    let timestamp = required(index, "tracking_timestamp", raw.tracking_timestamp)?;
    let registration = required(index, "vehicle_registration", raw.vehicle_registration)?;
    let lat = required(index, "latitude", raw.latitude)?;
    let lon = required(index, "longitude", raw.longitude)?;

    if tracking_id.is_empty() || tracking_id.len() > MAX_TEXT_FIELD {
        return Err(reject(
            index,
            Reason::InvalidValue,
            format!("tracking_id must be 1..={MAX_TEXT_FIELD} characters"),
        ));
    }
    let vehicle = VehicleId::parse(&registration)
        .map_err(|e| reject(index, Reason::InvalidValue, e.to_string()))?;
    if let Some(expected) = ctx.topic_vehicle
        && expected != vehicle
    {
        return Err(reject(
            index,
            Reason::VehicleMismatch,
            format!("vehicle_registration {vehicle} differs from the topic's {expected}"),
        ));
    }
    in_range(
        index,
        "latitude",
        Some(lat),
        |v| (-90.0..=90.0).contains(&v),
        "in -90..90",
    )?;
    in_range(
        index,
        "longitude",
        Some(lon),
        |v| (-180.0..=180.0).contains(&v),
        "in -180..180",
    )?;
    if lat == 0.0 && lon == 0.0 {
        return Err(reject(index, Reason::OutOfRange, "(0,0) is not a real fix"));
    }
    let speed_kmh = in_range(
        index,
        "speed",
        raw.speed,
        |v| (0.0..=250.0).contains(&v),
        "in 0..250 km/h",
    )?;
    let bearing = in_range(
        index,
        "bearing",
        raw.bearing,
        |v| (0.0..=360.0).contains(&v),
        "in 0..360",
    )?;
    let altitude = in_range(index, "altitude", raw.altitude, |_| true, "finite")?;
    let hdop = in_range(
        index,
        "precision_hdop",
        raw.precision_hdop,
        |v| v > 0.0,
        "> 0",
    )?;
    let vdop = in_range(
        index,
        "precision_vdop",
        raw.precision_vdop,
        |v| v > 0.0,
        "> 0",
    )?;
    let journey_id = raw
        .journey_id
        .map(|j| {
            JourneyId::parse(&j).map_err(|e| reject(index, Reason::InvalidValue, e.to_string()))
        })
        .transpose()?;
    let vin = match raw.vehicle_vin {
        Some(v) if v.len() > MAX_TEXT_FIELD => {
            return Err(reject(
                index,
                Reason::InvalidValue,
                format!("vehicle_vin longer than {MAX_TEXT_FIELD}"),
            ));
        }
        other => other.map(Cow::into_owned),
    };
    let ts = parse_time(index, "tracking_timestamp", &timestamp, ctx.now)?;

    Ok(Position {
        supplier: ctx.supplier,
        vehicle,
        tracking_id: tracking_id.into_owned(),
        ts,
        lat,
        lon,
        journey_id,
        speed_kmh,
        bearing,
        altitude,
        hdop,
        vdop,
        vin,
        flags: PointFlags::default(),
    })
}

/// Names the first field of a point whose JSON type is wrong (the slow path,
/// taken only when typed parsing failed).
fn diagnose_type_error(index: usize, element: &RawValue, err: &serde_json::Error) -> Rejection {
    let Ok(serde_json::Value::Object(map)) =
        serde_json::from_str::<serde_json::Value>(element.get())
    else {
        return reject(
            index,
            Reason::MalformedJson,
            format!("element is not a JSON object: {err}"),
        );
    };
    const NUMBERS: [&str; 7] = [
        "latitude",
        "longitude",
        "speed",
        "bearing",
        "altitude",
        "precision_hdop",
        "precision_vdop",
    ];
    const STRINGS: [&str; 4] = [
        "tracking_timestamp",
        "vehicle_registration",
        "journey_id",
        "vehicle_vin",
    ];
    for (key, value) in &map {
        let wrong = if NUMBERS.contains(&key.as_str()) {
            !(value.is_number() || value.is_null())
        } else if STRINGS.contains(&key.as_str()) {
            !(value.is_string() || value.is_null())
        } else if key == "tracking_id" {
            !(value.is_string() || value.is_i64() || value.is_u64() || value.is_null())
        } else {
            false
        };
        if wrong {
            return reject(
                index,
                Reason::InvalidValue,
                format!("{key} has the wrong type: {value}"),
            );
        }
    }
    reject(index, Reason::InvalidValue, err.to_string())
}

/// Decodes and validates a position payload.
///
/// Errors only when the payload as a whole is unusable; otherwise each
/// element is either a valid [`Position`] or a [`Rejection`] with its index.
pub fn decode_positions(
    payload: &[u8],
    ctx: &DecodeContext,
) -> Result<DecodedPayload<Position>, PayloadError> {
    let elements = split_elements(payload, ctx.shape)?;
    let mut out = DecodedPayload {
        items: Vec::with_capacity(elements.len()),
        rejections: Vec::new(),
        total: elements.len(),
    };
    for (index, element) in elements.into_iter().enumerate() {
        let result = match serde_json::from_str::<RawPoint<'_>>(element.get()) {
            Ok(raw) => validate_point(index, raw, ctx),
            Err(e) => Err(diagnose_type_error(index, element, &e)),
        };
        match result {
            Ok(p) => out.items.push(p),
            Err(r) => out.rejections.push(Rejection {
                raw: truncate_raw(element.get()),
                ..r
            }),
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(borrow, default)]
    event_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    occurred_at: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    move_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    journey_id: Option<Cow<'a, str>>,
    #[serde(default)]
    details: Option<serde_json::Value>,
}

fn validate_event(
    index: usize,
    raw: RawEvent<'_>,
    vehicle: VehicleId,
    ctx: &DecodeContext,
) -> Result<Event, Rejection> {
    let event_type = required(index, "event_type", raw.event_type)?;
    let occurred_at = required(index, "occurred_at", raw.occurred_at)?;
    if event_type.is_empty()
        || event_type.len() > 64
        || !event_type
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(reject(
            index,
            Reason::InvalidValue,
            format!("event_type {event_type:?} must be 1..=64 letters, digits or _"),
        ));
    }
    let move_id = raw
        .move_id
        .map(|m| MoveId::parse(&m).map_err(|e| reject(index, Reason::InvalidValue, e.to_string())))
        .transpose()?;
    let journey_id = raw
        .journey_id
        .map(|j| {
            JourneyId::parse(&j).map_err(|e| reject(index, Reason::InvalidValue, e.to_string()))
        })
        .transpose()?;
    let details = match raw.details {
        None | Some(serde_json::Value::Null) => serde_json::Value::Object(Default::default()),
        Some(v @ serde_json::Value::Object(_)) => v,
        Some(other) => {
            return Err(reject(
                index,
                Reason::InvalidValue,
                format!("details must be an object, not {other}"),
            ));
        }
    };
    let occurred_at = parse_time(index, "occurred_at", &occurred_at, ctx.now)?;
    Ok(Event {
        supplier: ctx.supplier,
        vehicle,
        kind: EventKind::from_wire(&event_type),
        occurred_at,
        move_id,
        journey_id,
        details,
    })
}

/// Decodes and validates an event payload from a topic whose vehicle is known.
pub fn decode_events(
    payload: &[u8],
    ctx: &DecodeContext,
) -> Result<DecodedPayload<Event>, PayloadError> {
    let elements = split_elements(payload, ctx.shape)?;
    let Some(vehicle) = ctx.topic_vehicle else {
        return Err(payload_error(
            Reason::BadTopic,
            "events need a topic naming the vehicle",
        ));
    };
    let mut out = DecodedPayload {
        items: Vec::with_capacity(elements.len()),
        rejections: Vec::new(),
        total: elements.len(),
    };
    for (index, element) in elements.into_iter().enumerate() {
        let result = match serde_json::from_str::<RawEvent<'_>>(element.get()) {
            Ok(raw) => validate_event(index, raw, vehicle, ctx),
            Err(e) => Err(reject(index, Reason::InvalidValue, e.to_string())),
        };
        match result {
            Ok(ev) => out.items.push(ev),
            Err(r) => out.rejections.push(Rejection {
                raw: truncate_raw(element.get()),
                ..r
            }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
