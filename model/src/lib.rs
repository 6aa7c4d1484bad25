//! Shared types of movewatch: typed identifiers, the contract's position point
//! and event, payload decoding with the contract's rejection reasons, sites,
//! configuration, the WebSocket wire frames, fence crossings, and the batch that flows from
//! intake to the store (carrying the commit token that releases MQTT acks).
//!
//! Everything here is plain data and pure functions; no I/O but file reads in
//! [`site::load_sites_csv`] and [`config::Config::from_file`].

pub mod batch;
pub mod config;
pub mod decode;
pub mod derived;
pub mod event;
pub mod fence;
pub mod fleet;
pub mod ids;
pub mod point;
pub mod reject;
pub mod site;
pub mod topic;
pub mod wire;

pub use batch::{CommitOutcome, CommitToken, DeadLetter, IngestBatch, Source};
pub use decode::{DecodeContext, PayloadError, Shape, WirePoint, format_ts};
pub use decode::{
    DecodedPayload, MAX_PAYLOAD_BYTES, MAX_POINTS_PER_PAYLOAD, decode_events, decode_positions,
};
pub use derived::{
    AlertRecord, Arrival, Derived, JourneyRecord, MoveRecord, Notification, NotificationKind,
};
pub use event::{Event, EventKind};
pub use fence::{FenceTransition, TransitionKind};
pub use ids::{IdError, JourneyId, MoveId, SiteId, SupplierId, VehicleId};
pub use point::{PointFlags, Position};
pub use reject::{Reason, Rejection};
pub use site::{Site, SiteKind};
pub use topic::{MessageKind, Topic};
