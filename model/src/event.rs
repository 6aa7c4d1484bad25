//! BaSM events sent by devices.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::ids::{JourneyId, MoveId, SupplierId, VehicleId};

/// The event types understood in v1. Any other well-formed type is kept as
/// [`EventKind::Other`] and passed on as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// `MoveStart`
    MoveStart,
    /// `MoveComplete`
    MoveComplete,
    /// `MoveCancel`
    MoveCancel,
    /// `MoveRedirect` (details.to_location)
    MoveRedirect,
    /// `MoveLodgingStart` (details.location)
    MoveLodgingStart,
    /// `MoveLodgingEnd` (details.location)
    MoveLodgingEnd,
    /// `JourneyStart` (details.vehicle_reg)
    JourneyStart,
    /// `JourneyComplete`
    JourneyComplete,
    /// `JourneyChangeVehicle` (details.vehicle_reg, details.previous_vehicle_reg)
    JourneyChangeVehicle,
    /// `JourneyArriveAtOuterGate` (details.location)
    JourneyArriveAtOuterGate,
    /// `PersonMoveVehicleBrokeDown`
    PersonMoveVehicleBrokeDown,
    /// `PersonMoveVehicleSystemsFailed`
    PersonMoveVehicleSystemsFailed,
    /// Any other well-formed event type, kept verbatim.
    Other(String),
}

impl EventKind {
    /// Maps the wire name to a kind.
    pub fn from_wire(name: &str) -> EventKind {
        match name {
            "MoveStart" => EventKind::MoveStart,
            "MoveComplete" => EventKind::MoveComplete,
            "MoveCancel" => EventKind::MoveCancel,
            "MoveRedirect" => EventKind::MoveRedirect,
            "MoveLodgingStart" => EventKind::MoveLodgingStart,
            "MoveLodgingEnd" => EventKind::MoveLodgingEnd,
            "JourneyStart" => EventKind::JourneyStart,
            "JourneyComplete" => EventKind::JourneyComplete,
            "JourneyChangeVehicle" => EventKind::JourneyChangeVehicle,
            "JourneyArriveAtOuterGate" => EventKind::JourneyArriveAtOuterGate,
            "PersonMoveVehicleBrokeDown" => EventKind::PersonMoveVehicleBrokeDown,
            "PersonMoveVehicleSystemsFailed" => EventKind::PersonMoveVehicleSystemsFailed,
            other => EventKind::Other(other.to_owned()),
        }
    }

    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            EventKind::MoveStart => "MoveStart",
            EventKind::MoveComplete => "MoveComplete",
            EventKind::MoveCancel => "MoveCancel",
            EventKind::MoveRedirect => "MoveRedirect",
            EventKind::MoveLodgingStart => "MoveLodgingStart",
            EventKind::MoveLodgingEnd => "MoveLodgingEnd",
            EventKind::JourneyStart => "JourneyStart",
            EventKind::JourneyComplete => "JourneyComplete",
            EventKind::JourneyChangeVehicle => "JourneyChangeVehicle",
            EventKind::JourneyArriveAtOuterGate => "JourneyArriveAtOuterGate",
            EventKind::PersonMoveVehicleBrokeDown => "PersonMoveVehicleBrokeDown",
            EventKind::PersonMoveVehicleSystemsFailed => "PersonMoveVehicleSystemsFailed",
            EventKind::Other(s) => s,
        }
    }
}

impl Serialize for EventKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A validated event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// The supplier whose topic it came under.
    pub supplier: SupplierId,
    /// The vehicle of the topic.
    pub vehicle: VehicleId,
    /// What happened.
    pub kind: EventKind,
    /// When, UTC.
    pub occurred_at: DateTime<Utc>,
    /// The move it concerns, if any.
    pub move_id: Option<MoveId>,
    /// The journey it concerns, if any.
    pub journey_id: Option<JourneyId>,
    /// The event's details object, as sent (`{}` when absent).
    pub details: serde_json::Value,
}
