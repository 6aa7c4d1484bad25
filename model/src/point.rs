//! The validated position point (the BaSM "GPS Track a Move" point).

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::ids::{JourneyId, SupplierId, VehicleId};

/// Flags the engine sets on a stored point that is not used for live state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PointFlags {
    /// Older than the newest accepted fix of its vehicle: stored, not shown live.
    pub late: bool,
    /// Implies an impossible speed from the previous fix, or hdop over the limit.
    pub bad_fix: bool,
}

impl PointFlags {
    /// The flags packed into one small integer for storage (bit 0 late, bit 1 bad fix).
    pub fn bits(self) -> i64 {
        i64::from(self.late) | (i64::from(self.bad_fix) << 1)
    }

    /// Unpacks [`PointFlags::bits`].
    pub fn from_bits(bits: i64) -> Self {
        PointFlags {
            late: bits & 1 != 0,
            bad_fix: bits & 2 != 0,
        }
    }

    /// Whether the point may move a vehicle's live state.
    pub fn usable_live(self) -> bool {
        !self.late && !self.bad_fix
    }
}

/// A position point that passed validation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Position {
    /// The supplier whose topic or API key it came under.
    pub supplier: SupplierId,
    /// The normalised registration.
    pub vehicle: VehicleId,
    /// The device's unique id for this point within its supplier (the de-duplication key).
    pub tracking_id: String,
    /// Fix time, UTC.
    pub ts: DateTime<Utc>,
    /// Latitude, WGS84 degrees.
    pub lat: f64,
    /// Longitude, WGS84 degrees.
    pub lon: f64,
    /// The BaSM journey the vehicle says it is on.
    pub journey_id: Option<JourneyId>,
    /// Speed over ground, km/h.
    pub speed_kmh: Option<f64>,
    /// Bearing, degrees clockwise from north.
    pub bearing: Option<f64>,
    /// Altitude, metres.
    pub altitude: Option<f64>,
    /// Horizontal dilution of precision.
    pub hdop: Option<f64>,
    /// Vertical dilution of precision.
    pub vdop: Option<f64>,
    /// The vehicle's VIN, if sent.
    pub vin: Option<String>,
    /// Set by the tracker before storage.
    pub flags: PointFlags,
}

impl Position {
    /// A fix with only the required fields: every optional field unset and
    /// no flags. Set others with struct update syntax
    /// (`Position { speed_kmh: Some(40.0), ..Position::fix(…) }`).
    pub fn fix(
        supplier: SupplierId,
        vehicle: VehicleId,
        tracking_id: impl Into<String>,
        ts: DateTime<Utc>,
        lat: f64,
        lon: f64,
    ) -> Position {
        Position {
            supplier,
            vehicle,
            tracking_id: tracking_id.into(),
            ts,
            lat,
            lon,
            journey_id: None,
            speed_kmh: None,
            bearing: None,
            altitude: None,
            hdop: None,
            vdop: None,
            vin: None,
            flags: PointFlags::default(),
        }
    }
}
