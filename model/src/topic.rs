//! MQTT topics: `movewatch/v1/{supplier}/{vehicle}/{positions|events}`.

use crate::ids::{SupplierId, VehicleId};
use crate::reject::Reason;

/// The filter the engine subscribes to: everything under `movewatch/v1/`,
/// so that a topic that is not one of the two below (a typo, an extra level,
/// a trailing `/`) reaches intake and is dead-lettered `bad_topic` instead of
/// being acknowledged by the broker and dropped for want of a subscriber.
pub const ALL_FILTER: &str = "movewatch/v1/#";
/// The topics of positions, as a filter.
pub const POSITIONS_FILTER: &str = "movewatch/v1/+/+/positions";
/// The topics of events, as a filter.
pub const EVENTS_FILTER: &str = "movewatch/v1/+/+/events";

/// What a topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// Position points.
    Positions,
    /// BaSM events.
    Events,
}

/// A parsed device topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topic {
    /// The topic's supplier segment.
    pub supplier: SupplierId,
    /// The topic's vehicle segment, normalised.
    pub vehicle: VehicleId,
    /// Positions or events.
    pub kind: MessageKind,
}

impl Topic {
    /// Parses a topic, or says why it is not one of ours (`bad_topic`).
    pub fn parse(topic: &str) -> Result<Topic, (Reason, String)> {
        let bad = |why: &str| (Reason::BadTopic, format!("topic {topic:?}: {why}"));
        let mut parts = topic.split('/');
        let (Some("movewatch"), Some("v1"), Some(supplier), Some(vehicle), Some(kind), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad(
                "expected movewatch/v1/{supplier}/{vehicle}/{positions|events}",
            ));
        };
        let supplier = SupplierId::parse(supplier).map_err(|e| bad(&e.to_string()))?;
        let vehicle = VehicleId::parse(vehicle).map_err(|e| bad(&e.to_string()))?;
        let kind = match kind {
            "positions" => MessageKind::Positions,
            "events" => MessageKind::Events,
            _ => return Err(bad("the last segment must be positions or events")),
        };
        Ok(Topic {
            supplier,
            vehicle,
            kind,
        })
    }

    /// The topic a device publishes to.
    pub fn format(supplier: &SupplierId, vehicle: &VehicleId, kind: MessageKind) -> String {
        let last = match kind {
            MessageKind::Positions => "positions",
            MessageKind::Events => "events",
        };
        format!("movewatch/v1/{supplier}/{vehicle}/{last}")
    }
}

/// The supplier segment of a topic, if it has one, for dead-lettering a
/// message whose topic is otherwise bad.
pub fn supplier_segment(topic: &str) -> Option<&str> {
    topic.strip_prefix("movewatch/v1/")?.split('/').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_parse_and_format() {
        let t = Topic::parse("movewatch/v1/geoamey/AB12CDE/positions").unwrap();
        assert_eq!(t.supplier.as_str(), "geoamey");
        assert_eq!(t.vehicle.as_str(), "AB12CDE");
        assert_eq!(t.kind, MessageKind::Positions);
        assert_eq!(
            Topic::format(&t.supplier, &t.vehicle, t.kind),
            "movewatch/v1/geoamey/AB12CDE/positions"
        );
        assert_eq!(
            Topic::parse("movewatch/v1/serco/ab12cde/events")
                .unwrap()
                .kind,
            MessageKind::Events
        );
        for bad in [
            "movewatch/v1/geoamey/AB12CDE",
            "movewatch/v2/g/AB12CDE/positions",
            "movewatch/v1/GEO/AB12CDE/positions",
            "movewatch/v1/g/AB12CDE/other",
            "movewatch/v1/g/AB12CDE/positions/x",
        ] {
            assert_eq!(Topic::parse(bad).unwrap_err().0, Reason::BadTopic, "{bad}");
        }
    }
}
