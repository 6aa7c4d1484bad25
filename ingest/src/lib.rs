//! Intake for movewatch: MQTT (embedded rumqttd broker or an external one)
//! and HTTP `POST /tracks`.
//!
//! Every message becomes one [`IngestBatch`] on a bounded channel: its valid
//! points and events, and a dead letter for each rejected element. Intake
//! acknowledges the MQTT message, or answers the HTTP request, only after
//! the store completes the batch's commit token.
//!
//! Back-pressure: the output channel is bounded; when it is full the MQTT
//! poll task waits, and the broker's in-flight window (unacknowledged QoS 1
//! messages) stops further delivery. Nothing is dropped inside the engine.

pub mod amqp;
pub mod broker;
mod convert;
pub mod guard;
pub mod http;
pub mod mqtt;
pub mod partition_intake;
mod suppliers;

pub use convert::{batch_from_http, batch_from_mqtt};
pub use suppliers::Suppliers;

/// An intake failure that stops a source (never caused by device input).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The embedded broker's port is in use.
    #[error(
        "MQTT port {addr} is already in use; set [mqtt] listen to a free address, or use an external broker with --mqtt-url / [mqtt] url"
    )]
    PortInUse {
        /// The address asked for.
        addr: std::net::SocketAddr,
    },
    /// The embedded broker could not start.
    #[error("embedded MQTT broker: {0}")]
    Broker(String),
    /// The MQTT client could not be set up.
    #[error("MQTT client: {0}")]
    Client(#[from] rumqttc::ClientError),
}
