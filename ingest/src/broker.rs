//! The embedded MQTT broker (rumqttd), the default when no external broker is configured.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::IngestError;

/// Settings of the embedded broker.
#[derive(Debug, Clone)]
pub struct EmbeddedBrokerConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// username → password; empty means anonymous access.
    pub users: HashMap<String, String>,
    /// Unacknowledged QoS 1 messages a client may publish at once. (What
    /// the broker sends each subscriber unacknowledged is fixed at 1000 in
    /// the patched rumqttd, vendor/rumqttd/PATCHED.md.)
    pub max_inflight: usize,
}

/// The username the engine itself uses on the embedded broker. The dot is
/// outside the supplier id grammar, so no supplier can take it.
pub const ENGINE_USER: &str = "movewatch.engine";

/// A running embedded broker. It runs on its own threads until the process ends.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedBroker {
    /// The address devices connect to.
    pub addr: SocketAddr,
    /// The address the engine's own client connects to: the broker itself,
    /// which is behind the topic guard on a private loopback port when
    /// suppliers have passwords, and `addr` otherwise.
    pub engine_addr: SocketAddr,
}

/// Whether a TCP address can be bound now.
pub fn port_is_free(addr: SocketAddr) -> bool {
    TcpListener::bind(addr).is_ok()
}

/// A free port on the given IP, chosen by the OS.
pub fn free_port(ip: std::net::IpAddr) -> std::io::Result<SocketAddr> {
    TcpListener::bind(SocketAddr::new(ip, 0))?.local_addr()
}

/// Starts the embedded broker. Fails with [`IngestError::PortInUse`] when
/// the address is taken (checked before starting, since rumqttd only logs it).
///
/// With `users` set, every user except [`ENGINE_USER`] is a supplier: the
/// broker then listens on a private loopback port and the topic guard
/// ([`crate::guard`]) on `listen` keeps each supplier under
/// `movewatch/v1/{id}/`. Must be called inside a Tokio runtime.
pub fn start_embedded_broker(config: EmbeddedBrokerConfig) -> Result<EmbeddedBroker, IngestError> {
    let public =
        std::net::TcpListener::bind(config.listen).map_err(|_| IngestError::PortInUse {
            addr: config.listen,
        })?;
    if config.users.is_empty() {
        drop(public);
        let addr = start_rumqttd(config.listen, &config)?;
        return Ok(EmbeddedBroker {
            addr,
            engine_addr: addr,
        });
    }
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let internal = free_port(loopback.ip()).map_err(|e| IngestError::Broker(e.to_string()))?;
    let engine_addr = start_rumqttd(internal, &config)?;
    public
        .set_nonblocking(true)
        .map_err(|e| IngestError::Broker(e.to_string()))?;
    let listener = tokio::net::TcpListener::from_std(public)
        .map_err(|e| IngestError::Broker(e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| IngestError::Broker(e.to_string()))?;
    let suppliers = config
        .users
        .keys()
        .filter(|u| u.as_str() != ENGINE_USER)
        .cloned()
        .collect();
    tokio::spawn(crate::guard::run_guard(
        listener,
        engine_addr,
        std::sync::Arc::new(suppliers),
    ));
    tracing::info!(%addr, "MQTT topic guard listening");
    Ok(EmbeddedBroker { addr, engine_addr })
}

fn start_rumqttd(
    listen: SocketAddr,
    config: &EmbeddedBrokerConfig,
) -> Result<SocketAddr, IngestError> {
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
    let server = ServerSettings {
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
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    let mut broker = Broker::new(broker_config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(|e| IngestError::Broker(e.to_string()))?;
    // Wait until it has bound its port (binding then fails), so callers can
    // connect at once; probing with a connection would make rumqttd log an error.
    for _ in 0..500 {
        if !port_is_free(listen) {
            tracing::info!(addr = %listen, "embedded MQTT broker listening");
            return Ok(listen);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(IngestError::Broker(format!(
        "did not start listening on {listen}"
    )))
}
