//! What the engine derives from a batch and must keep: move changes, completed
//! legs and alerts. They ride on the [`IngestBatch`](crate::IngestBatch) whose
//! points caused them, so the store commits them in the same transaction and
//! they are durable no later than those points are acknowledged.

use chrono::{DateTime, NaiveDate, Utc};

use crate::ids::{JourneyId, MoveId, SiteId, VehicleId};

/// A move as booked (`PUT /api/moves/{id}`), with its journeys.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MoveRecord {
    /// The move id (BaSM uses UUIDs).
    pub id: MoveId,
    /// The human reference of the move.
    pub reference: String,
    /// Where the move starts.
    pub from_location: SiteId,
    /// Where the move ends.
    pub to_location: SiteId,
    /// The day the move is booked for.
    pub date: NaiveDate,
    /// The contract's status string (`booked`, `in_transit`, `arrived`, `completed`, `cancelled`).
    pub status: String,
    /// The legs of the move, in order.
    pub journeys: Vec<JourneyRecord>,
}

/// One leg of a move.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JourneyRecord {
    /// The journey id.
    pub id: JourneyId,
    /// Where the leg starts.
    pub from_location: SiteId,
    /// Where the leg ends.
    pub to_location: SiteId,
    /// The vehicle, once known.
    pub vehicle: Option<VehicleId>,
}

/// A completed leg, the history ETA learning draws on.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    /// The move that arrived.
    pub move_id: MoveId,
    /// The vehicle that carried it.
    pub vehicle: VehicleId,
    /// Where it arrived.
    pub site: SiteId,
    /// Where it came from.
    pub from_location: SiteId,
    /// When it left `from_location`.
    pub departed_at: DateTime<Utc>,
    /// When it entered the fence of `site`.
    pub arrived_at: DateTime<Utc>,
    /// Distance driven, metres.
    pub distance_m: f64,
}

/// An alert as raised (and sent as an `alert` frame). `(kind, vehicle,
/// move_id, ts)` identifies it: the store keeps one of each, so an alert
/// derived again from redelivered data is not kept twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRecord {
    /// `gps_gap`, `stopped`, `device_silent`, `breakdown`, `off_route`, `arriving_30`, ...
    pub kind: String,
    /// The vehicle.
    pub vehicle: VehicleId,
    /// The move, if the alert concerns one.
    pub move_id: Option<MoveId>,
    /// When the condition began to hold (from the data, not the clock, where
    /// the data says: a gap's alert is at the last fix plus the threshold).
    pub ts: DateTime<Utc>,
    /// Human-readable detail.
    pub detail: String,
}

/// What a notification (webhook) tells: the contract's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotificationKind {
    /// A move's vehicle entered its destination's fence.
    Arrival,
    /// A move's vehicle left its origin's fence (or the move started).
    Departure,
    /// A move's ETA fell under 30 minutes.
    Arriving30,
    /// Any other alert (`gps_gap`, `stopped`, `breakdown`, ...).
    Alert,
}

impl NotificationKind {
    /// Every kind, as `[[webhooks]] events` defaults to.
    pub const ALL: [NotificationKind; 4] = [
        NotificationKind::Arrival,
        NotificationKind::Departure,
        NotificationKind::Arriving30,
        NotificationKind::Alert,
    ];

    /// The contract's name (`arrival`, `departure`, `arriving_30`, `alert`).
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::Arrival => "arrival",
            NotificationKind::Departure => "departure",
            NotificationKind::Arriving30 => "arriving_30",
            NotificationKind::Alert => "alert",
        }
    }

    /// Parses the contract's name.
    pub fn parse(s: &str) -> Option<NotificationKind> {
        NotificationKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// An event for the people outside (webhooks, "Notifications out"), derived
/// with the batch or tick that caused it and kept with it, so it is sent at
/// least once. Its [`Notification::id`] comes from the data, not the clock:
/// the same event derived again (a redelivery, a restart) has the same id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// What happened.
    pub kind: NotificationKind,
    /// When it happened (the crossing's, the event's or the alert's time).
    pub occurred_at: DateTime<Utc>,
    /// The move it concerns, if any.
    pub move_id: Option<MoveId>,
    /// The vehicle it concerns.
    pub vehicle: Option<VehicleId>,
    /// The site of an arrival or departure; the destination of `arriving_30`.
    pub site: Option<SiteId>,
    /// The sites whose `[[webhooks]] sites` filter lets it through: the move's
    /// origin and destination (empty: an alert of no move, only unfiltered hooks).
    pub sites: Vec<SiteId>,
    /// For alerts, the alert's kind (`gps_gap`, `breakdown`, ...).
    pub alert_kind: Option<String>,
    /// Human-readable detail.
    pub detail: Option<String>,
    /// For `arriving_30`: the expected arrival time.
    pub expected_at: Option<DateTime<Utc>>,
}

impl Notification {
    /// The stable id: the receiver's idempotency key. Built from what the
    /// event is (its type, alert kind, move or vehicle, site, time), so the
    /// same event derived twice is the same notification.
    pub fn id(&self) -> String {
        let subject = match (&self.move_id, &self.vehicle) {
            (Some(m), _) => m.to_string(),
            (None, Some(v)) => v.to_string(),
            (None, None) => String::new(),
        };
        let mut id = format!(
            "{}:{}:{}",
            self.kind.as_str(),
            subject,
            self.occurred_at.timestamp_millis()
        );
        if let Some(k) = &self.alert_kind {
            id.push(':');
            id.push_str(k);
        }
        if let Some(s) = &self.site {
            id.push(':');
            id.push_str(s.as_str());
        }
        id
    }

    /// The key its deliveries are ordered by: events of one move go out in
    /// order; an event of no move is ordered with its vehicle's.
    pub fn order_key(&self) -> String {
        match (&self.move_id, &self.vehicle) {
            (Some(m), _) => format!("move:{m}"),
            (None, Some(v)) => format!("vehicle:{v}"),
            (None, None) => String::from("none"),
        }
    }
}

impl Notification {
    /// The webhook body: the contract's `{"id", "type", "occurred_at",
    /// "move_id"?, "vehicle"?, "site"?, "detail"?, "basm_event"?}`, plus
    /// `kind` (an alert's kind) and `expected_at` (`arriving_30`). Times are
    /// RFC 3339 UTC. Rendered once, when the notification is put in the
    /// outbox, and stored: every retry sends these exact bytes (which the
    /// signature covers). Keys come out sorted, so the same notification
    /// always renders the same text.
    pub fn body(&self) -> String {
        use serde_json::{Map, Value, json};
        let mut body = Map::new();
        body.insert("id".into(), Value::from(self.id()));
        body.insert("type".into(), Value::from(self.kind.as_str()));
        body.insert(
            "occurred_at".into(),
            Value::from(crate::format_ts(&self.occurred_at)),
        );
        if let Some(m) = &self.move_id {
            body.insert("move_id".into(), Value::from(m.to_string()));
        }
        if let Some(v) = &self.vehicle {
            body.insert("vehicle".into(), Value::from(v.to_string()));
        }
        if let Some(s) = &self.site {
            body.insert("site".into(), Value::from(s.to_string()));
        }
        if let Some(k) = &self.alert_kind {
            body.insert("kind".into(), Value::from(k.as_str()));
        }
        if let Some(d) = &self.detail {
            body.insert("detail".into(), Value::from(d.as_str()));
        }
        if let Some(e) = &self.expected_at {
            body.insert("expected_at".into(), Value::from(crate::format_ts(e)));
        }
        let basm = match (self.kind, &self.move_id) {
            (NotificationKind::Arrival, Some(m)) => Some(json!({
                "event_type": "JourneyArriveAtOuterGate",
                "occurred_at": crate::format_ts(&self.occurred_at),
                "move_id": m.to_string(),
                "details": {"location": self.site.as_ref().map(|s| s.to_string())},
            })),
            (NotificationKind::Arriving30, Some(m)) => Some(json!({
                "event_type": "MoveNotifyPremisesOfDropOffEta",
                "occurred_at": crate::format_ts(&self.occurred_at),
                "move_id": m.to_string(),
                "details": {"expected_at": self.expected_at.as_ref().map(crate::format_ts)},
            })),
            _ => None,
        };
        if let Some(b) = basm {
            body.insert("basm_event".into(), b);
        }
        Value::Object(body).to_string()
    }
}

/// Everything derived from one batch (or one alert tick) that the store keeps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Derived {
    /// Moves whose status, destination or vehicles changed (upserted).
    pub moves: Vec<MoveRecord>,
    /// Completed legs.
    pub arrivals: Vec<Arrival>,
    /// Alerts raised.
    pub alerts: Vec<AlertRecord>,
    /// Notifications for the webhooks' outbox.
    pub notifications: Vec<Notification>,
}

impl Derived {
    /// Nothing to keep.
    pub fn is_empty(&self) -> bool {
        self.moves.is_empty()
            && self.arrivals.is_empty()
            && self.alerts.is_empty()
            && self.notifications.is_empty()
    }

    /// Appends `other`, keeping order.
    pub fn extend(&mut self, other: Derived) {
        self.moves.extend(other.moves);
        self.arrivals.extend(other.arrivals);
        self.alerts.extend(other.alerts);
        self.notifications.extend(other.notifications);
    }
}
