//! The embedded MQTT broker (rumqttd), the default when no external broker is configured.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::IngestError;

/// Settings of the embedded broker.
#[derive(Debug, Clone)]
pub struct EmbeddedBrokerConfig {
    /// Where it listens for devices (port 0: one the OS picks; the running
    /// broker's [`EmbeddedBroker::addr`] says which).
    pub listen: SocketAddr,
    /// username → password; empty means anonymous access.
    pub users: HashMap<String, String>,
    /// Unacknowledged QoS 1 messages a client may publish at once. (What
    /// the broker sends each subscriber unacknowledged is fixed at 1000 in
    /// the patched rumqttd, vendor/rumqttd/PATCHED.md.)
    pub max_inflight: usize,
    /// The engine's own client id, refused on the public port.
    pub engine_client_id: String,
    /// Where the devices' publishes go: with it, the topic guard hands them
    /// to the engine and acknowledges each only once committed
    /// ([`crate::guard`]); without it they go through the broker, which
    /// acknowledges them on receipt.
    pub intake: Option<crate::guard::DeviceIntake>,
}

/// The username the engine itself uses on the embedded broker. The dot is
/// outside the supplier id grammar, so no supplier can take it.
pub const ENGINE_USER: &str = "movewatch.engine";

/// A running embedded broker. It runs on its own threads until the process ends.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedBroker {
    /// The address devices connect to: the topic guard.
    pub addr: SocketAddr,
    /// The address the engine's own client connects to: the broker itself,
    /// on a private loopback port behind the topic guard. Its session (the
    /// engine's client id) cannot be reached from `addr`.
    pub engine_addr: SocketAddr,
}

/// Whether a TCP address can be bound now.
pub fn port_is_free(addr: SocketAddr) -> bool {
    TcpListener::bind(addr).is_ok()
}

/// A free port on the given IP, chosen by the OS and released at once: for
/// a server that cannot take a bound listener (a test's Mosquitto). The
/// embedded broker takes port 0 instead and reports what it bound.
pub fn free_port(ip: std::net::IpAddr) -> std::io::Result<SocketAddr> {
    TcpListener::bind(SocketAddr::new(ip, 0))?.local_addr()
}

/// Starts the embedded broker: binds the public address (for the topic
/// guard, [`crate::guard`]) and a private loopback one (for rumqttd, where
/// the engine connects) before it returns, so both accept connections at
/// once; nothing sleeps or probes. Fails with [`IngestError::PortInUse`]
/// when the public address is taken.
///
/// With `users` set, every user except [`ENGINE_USER`] is a supplier, and
/// the guard keeps each one to its own client ids (`{id}-…`) and to
/// `movewatch/v1/{id}/`. With no users (development) anyone may connect,
/// but never with the engine's client id. Must be called inside a Tokio
/// runtime.
pub fn start_embedded_broker(config: EmbeddedBrokerConfig) -> Result<EmbeddedBroker, IngestError> {
    let public = TcpListener::bind(config.listen).map_err(|_| IngestError::PortInUse {
        addr: config.listen,
    })?;
    let internal = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(|e| IngestError::Broker(format!("cannot bind the private port: {e}")))?;
    let engine_addr = start_rumqttd(internal, &config)?;
    public
        .set_nonblocking(true)
        .map_err(|e| IngestError::Broker(e.to_string()))?;
    let listener = tokio::net::TcpListener::from_std(public)
        .map_err(|e| IngestError::Broker(e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| IngestError::Broker(e.to_string()))?;
    let suppliers = (!config.users.is_empty()).then(|| {
        config
            .users
            .iter()
            .filter(|(u, _)| u.as_str() != ENGINE_USER)
            .map(|(u, p)| (u.clone(), p.clone()))
            .collect()
    });
    let policy = crate::guard::GuardPolicy {
        suppliers,
        engine_client_id: config.engine_client_id.clone(),
        intake: config.intake.clone(),
    };
    tokio::spawn(crate::guard::run_guard(
        listener,
        engine_addr,
        std::sync::Arc::new(policy),
    ));
    // Devices use `addr` only; the engine's own port behind the topic guard
    // is internal, so it is no second MQTT port to announce.
    tracing::info!(%addr, "embedded MQTT broker listening for devices");
    tracing::debug!(%engine_addr, "embedded broker's internal engine port");
    Ok(EmbeddedBroker { addr, engine_addr })
}

/// Starts rumqttd on a bound listener; returns its address.
fn start_rumqttd(
    listener: TcpListener,
    config: &EmbeddedBrokerConfig,
) -> Result<SocketAddr, IngestError> {
    let listen = listener
        .local_addr()
        .map_err(|e| IngestError::Broker(e.to_string()))?;
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        // Above the contract's 256 KiB so that intake, not the broker, rejects
        // slightly oversized payloads with a dead letter (`too_large`).
        max_payload_size: 512 * 1024,
        max_inflight_count: config.max_inflight,
        auth: if config.users.is_empty() {
            None
        } else {
            Some(config.users.clone())
        },
        external_auth: None,
        dynamic_filters: true,
    };
    let server_settings = ServerSettings {
        name: "movewatch-v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    let broker_config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 200_000,
            max_outgoing_packet_count: 1_000,
            max_segment_size: 32 * 1024 * 1024,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        // Served by `serve_v4` on the listener bound above, not started by rumqttd.
        v4: None,
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    let broker = Broker::new(broker_config);
    broker
        .serve_v4(listener, server_settings)
        .map_err(|e| IngestError::Broker(e.to_string()))?;
    Ok(listen)
}
