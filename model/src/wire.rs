//! WebSocket frames exactly as the contract fixes them, and the client's
//! messages. Frames are serialised once by the gateway and shared.

use serde::{Deserialize, Serialize};

use crate::decode::format_ts;
use crate::ids::{MoveId, SiteId, VehicleId};
use crate::point::Position;

/// A channel a client may subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Channel {
    /// `fleet`: every vehicle and alert.
    Fleet,
    /// `site:{id}`: moves to and from the site, and their vehicles.
    Site(SiteId),
    /// `vehicle:{vehicle}`: one vehicle.
    Vehicle(VehicleId),
}

impl Channel {
    /// Parses `fleet`, `site:{id}` or `vehicle:{vehicle}`.
    pub fn parse(s: &str) -> Option<Channel> {
        if s == "fleet" {
            return Some(Channel::Fleet);
        }
        if let Some(id) = s.strip_prefix("site:") {
            return SiteId::parse(id).ok().map(Channel::Site);
        }
        if let Some(v) = s.strip_prefix("vehicle:") {
            return VehicleId::parse(v).ok().map(Channel::Vehicle);
        }
        None
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Channel::Fleet => f.write_str("fleet"),
            Channel::Site(id) => write!(f, "site:{id}"),
            Channel::Vehicle(v) => write!(f, "vehicle:{v}"),
        }
    }
}

/// A message from a WebSocket client.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// `{"type":"subscribe","channel":C}`
    Subscribe {
        /// The channel.
        channel: String,
    },
    /// `{"type":"unsubscribe","channel":C}`
    Unsubscribe {
        /// The channel.
        channel: String,
    },
}

/// A vehicle's live position, the body of a `position` frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PositionView {
    /// Registration.
    pub vehicle: VehicleId,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Speed, km/h, if the device sent it.
    pub speed_kmh: Option<f64>,
    /// Bearing, degrees, if the device sent it.
    pub bearing: Option<f64>,
    /// Fix time, RFC 3339 UTC.
    pub ts: String,
    /// Moves the vehicle is carrying.
    pub move_ids: Vec<MoveId>,
}

impl PositionView {
    /// The live view of a point.
    pub fn from_position(p: &Position, move_ids: Vec<MoveId>) -> Self {
        PositionView {
            vehicle: p.vehicle,
            lat: p.lat,
            lon: p.lon,
            speed_kmh: p.speed_kmh,
            bearing: p.bearing,
            ts: format_ts(&p.ts),
            move_ids,
        }
    }
}

/// An `alert` frame's body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertView {
    /// `gps_gap`, `stopped`, `device_silent`, `breakdown`, `off_route`, `arriving_30`, ...
    pub kind: String,
    /// The vehicle.
    pub vehicle: VehicleId,
    /// The move, if the alert concerns one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub move_id: Option<MoveId>,
    /// When, RFC 3339 UTC.
    pub ts: String,
    /// Human-readable detail.
    pub detail: String,
}

/// An `alert_ack` frame's body (and an acknowledgement in `GET /api/alerts`):
/// the alert, named by its kind, vehicle, move and time, and who in the
/// control room acknowledged it, when.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertAckView {
    /// The alert's kind.
    pub kind: String,
    /// The alert's vehicle.
    pub vehicle: VehicleId,
    /// The alert's move, if it concerns one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub move_id: Option<MoveId>,
    /// The alert's time, RFC 3339 UTC.
    pub ts: String,
    /// Who acknowledged it.
    pub by: String,
    /// When, RFC 3339 UTC.
    pub at: String,
}

/// A `move` frame's body: a move's live status and estimate (issue #6).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MoveView {
    /// The move.
    pub move_id: MoveId,
    /// `booked`, `in_transit`, `arrived`, `completed` or `cancelled`.
    pub status: &'static str,
    /// The vehicle carrying it, once known.
    pub vehicle: Option<VehicleId>,
    /// Estimated arrival, RFC 3339 UTC (in transit only).
    pub eta: Option<String>,
    /// Early end of the estimate's interval.
    pub eta_low: Option<String>,
    /// Late end of the estimate's interval.
    pub eta_high: Option<String>,
    /// Road distance still to drive, metres (estimated).
    pub distance_remaining_m: Option<f64>,
    /// Where the move starts.
    pub from_location: SiteId,
    /// Where the move ends (after any redirect).
    pub to_location: SiteId,
    /// How the vehicle was matched: `confirmed`, or `probable` (inferred from
    /// a departure; shown to the control room only). Absent without a vehicle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vehicle_match: Option<&'static str>,
}

/// An `arrival` or `departure` frame's body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SiteEventView {
    /// The move.
    pub move_id: MoveId,
    /// The vehicle carrying it.
    pub vehicle: VehicleId,
    /// The site arrived at or departed from.
    pub site: SiteId,
    /// When (the fence crossing's time), RFC 3339 UTC.
    pub ts: String,
}

/// A `snapshot` frame's body: the channel's current state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SnapshotView {
    /// The channel it describes.
    pub channel: String,
    /// Latest position of each vehicle visible on the channel.
    pub vehicles: Vec<PositionView>,
    /// Recent alerts visible on the channel, newest last.
    pub alerts: Vec<AlertView>,
    /// Live moves visible on the channel (absent when there are none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub moves: Vec<MoveView>,
}

/// An `error` frame's body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorView {
    /// `forbidden`, `unknown_channel` or `bad_request`.
    pub code: &'static str,
    /// What happened.
    pub message: String,
}

/// A server frame. Serialises with `"type"` first, as the contract shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Frame {
    /// `snapshot`
    Snapshot(SnapshotView),
    /// `position`
    Position(PositionView),
    /// `move`
    Move(MoveView),
    /// `arrival`
    Arrival(SiteEventView),
    /// `departure`
    Departure(SiteEventView),
    /// `alert`
    Alert(AlertView),
    /// `alert_ack`: an alert acknowledged in the control room (`fleet` only).
    AlertAck(AlertAckView),
    /// `error`
    Error(ErrorView),
}

impl Frame {
    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_frames_have_the_contract_fields() {
        let frame = Frame::Position(PositionView {
            vehicle: VehicleId::parse("AB12CDE").unwrap(),
            lat: 53.8,
            lon: -1.5,
            speed_kmh: Some(40.0),
            bearing: None,
            ts: "2026-11-21T09:14:03Z".into(),
            move_ids: vec![MoveId::parse("m1").unwrap()],
        });
        let v: serde_json::Value = serde_json::from_str(&frame.to_json()).unwrap();
        assert_eq!(v["type"], "position");
        for key in [
            "vehicle",
            "lat",
            "lon",
            "speed_kmh",
            "bearing",
            "ts",
            "move_ids",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["move_ids"][0], "m1");
    }

    #[test]
    fn channels_parse() {
        assert_eq!(Channel::parse("fleet"), Some(Channel::Fleet));
        assert_eq!(Channel::parse("site:LEI").unwrap().to_string(), "site:LEI");
        assert_eq!(
            Channel::parse("vehicle:ab12 cde").unwrap().to_string(),
            "vehicle:AB12CDE"
        );
        assert_eq!(Channel::parse("site:lei"), None);
        assert_eq!(Channel::parse("other"), None);
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"subscribe","channel":"fleet"}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Subscribe {
                channel: "fleet".into()
            }
        );
    }
}
