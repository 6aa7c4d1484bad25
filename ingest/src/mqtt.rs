//! The MQTT source: a QoS 1 subscriber with a persistent session and manual
//! acknowledgements.
//!
//! Two tasks. The *poll* task drives rumqttc's event loop, decodes each
//! publish into a batch and sends it on; it never awaits an acknowledgement
//! (rumqttc's requests are served by that same loop, so it would deadlock).
//! The *ack* task receives each message's commit receiver in arrival order,
//! waits for the store, then acknowledges. A message whose batch is never
//! committed (the engine stops first) is not acknowledged, so the broker
//! delivers it again.
//!
//! The poll task must never wait on anything that needs the event loop to
//! be polled: acks reach the broker only through that loop. It may wait on
//! the pipeline (which drains as the store commits, independent of MQTT),
//! but never on room for an ack. So the ack queue is sized to the MQTT
//! packet-id space ([`MAX_UNACKED`]): a broker cannot have more QoS 1
//! messages unacknowledged on one session, so the queue never fills. In
//! practice the broker's in-flight window (1000 on the embedded broker,
//! `max_inflight_messages` on Mosquitto) is the bound, and the queue
//! allocates only as it grows.
//!
//! Graceful shutdown ([`MqttSource::stop_intake`]): the poll task stops
//! passing messages on (one that arrives later is left unacknowledged, so the
//! broker delivers it again to the next session) and closes the ack queue,
//! but goes on polling so that the acks of batches still being committed
//! reach the broker. The ack task ends once it has sent the last of them;
//! then [`MqttSource::disconnect`] ends the session cleanly and the poll task.

use std::sync::Arc;
use std::time::Duration;

use model::topic::{EVENTS_FILTER, POSITIONS_FILTER};
use model::{CommitOutcome, CommitToken, IngestBatch};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::{IngestError, Suppliers, batch_from_mqtt};

/// How the engine connects to its broker.
#[derive(Debug, Clone)]
pub struct MqttSourceConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Fixed client id: the broker keeps the session (subscriptions and
    /// unacknowledged messages) under it across engine restarts.
    pub client_id: String,
    /// Credentials, if the broker needs them.
    pub credentials: Option<(String, String)>,
}

/// Most QoS 1 messages a broker can leave unacknowledged on one session:
/// packet identifiers are 16-bit and unique among in-flight messages.
pub const MAX_UNACKED: usize = 65_535;

/// Requests (acks, subscriptions) queued for the event loop. Generous, so the
/// ack task rarely waits; when it does, the poll task is still polling and
/// drains it.
const REQUEST_CAPACITY: usize = 4_096;

/// A running MQTT source.
#[derive(Debug)]
pub struct MqttSource {
    /// True while connected and subscribed (for `/readyz`).
    pub connected: watch::Receiver<bool>,
    /// The client, for a clean disconnect at shutdown.
    pub client: AsyncClient,
    /// The poll task.
    pub poll_task: JoinHandle<()>,
    /// The ack task.
    pub ack_task: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl MqttSource {
    /// Stops passing messages on (graceful shutdown); the poll task goes on
    /// polling so that the acks of batches already passed on are sent. The
    /// ack task ends once the last of them is sent.
    pub fn stop_intake(&self) {
        self.stop.send_replace(true);
    }

    /// Ends the session cleanly: a DISCONNECT queued after every ack already
    /// sent. The poll task ends once it is on the wire.
    pub async fn disconnect(&self) -> Result<(), IngestError> {
        self.client.disconnect().await?;
        Ok(())
    }
}

/// Connects and starts the two tasks. Batches go to `out`.
pub fn spawn_mqtt_source(
    config: MqttSourceConfig,
    suppliers: Arc<Suppliers>,
    out: mpsc::Sender<IngestBatch>,
) -> Result<MqttSource, IngestError> {
    let mut options = MqttOptions::new(config.client_id.clone(), config.host.clone(), config.port);
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1024 * 1024, 1024 * 1024);
    if let Some((user, pass)) = &config.credentials {
        options.set_credentials(user.clone(), pass.clone());
    }
    let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
    let (connected_tx, connected) = watch::channel(false);
    let (ack_tx, ack_rx) = mpsc::channel(MAX_UNACKED);
    let (stop, stop_rx) = watch::channel(false);
    let poll_task = tokio::spawn(poll_loop(
        eventloop,
        client.clone(),
        suppliers,
        Intake { out, acks: ack_tx },
        connected_tx,
        stop_rx,
    ));
    let ack_task = tokio::spawn(ack_loop(client.clone(), ack_rx));
    Ok(MqttSource {
        connected,
        client,
        poll_task,
        ack_task,
        stop,
    })
}

/// Where the poll task passes messages on, until intake stops.
struct Intake {
    out: mpsc::Sender<IngestBatch>,
    acks: mpsc::Sender<(oneshot::Receiver<CommitOutcome>, Publish)>,
}

async fn poll_loop(
    mut eventloop: EventLoop,
    client: AsyncClient,
    suppliers: Arc<Suppliers>,
    intake: Intake,
    connected: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    let mut intake = Some(intake);
    let mut watch_stop = true;
    // Set once the DISCONNECT is on the wire: read until the broker closes.
    let mut linger_until: Option<tokio::time::Instant> = None;
    loop {
        let polled = tokio::select! {
            // Taken once. Polling is interrupted at most here: rumqttc keeps
            // what it has read in its state and returns it on the next poll.
            stopped = async { stop.wait_for(|s| *s).await.is_ok() }, if watch_stop => {
                watch_stop = false;
                // Err: the owner is gone without a shutdown; go on as before.
                if stopped {
                    // Dropping the ack queue's sender lets the ack task end
                    // once it has acknowledged everything already passed on.
                    intake = None;
                    connected.send_replace(false);
                    tracing::info!("MQTT intake stopped; sending the last acks");
                }
                continue;
            }
            polled = poll_until(&mut eventloop, linger_until) => match polled {
                Some(polled) => polled,
                None => {
                    tracing::warn!("the broker did not close the connection after DISCONNECT");
                    return;
                }
            },
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                failures = 0;
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to MQTT broker"
                );
                // Subscribe on every connect: harmless when the session already has them.
                for filter in [POSITIONS_FILTER, EVENTS_FILTER] {
                    if let Err(e) = client.try_subscribe(filter, QoS::AtLeastOnce) {
                        tracing::error!(error = %e, filter, "cannot queue subscription");
                    }
                }
            }
            // Ready only once subscribed: before the SUBACK, new messages have no subscriber.
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                connected.send_replace(intake.is_some());
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                // Closing the socket now, with the broker's publishes unread,
                // would reset the connection (RST) and the broker could lose
                // the acks and the DISCONNECT still in its receive buffer.
                // So read on (dropping publishes) until the broker closes.
                connected.send_replace(false);
                linger_until = Some(tokio::time::Instant::now() + DISCONNECT_LINGER);
            }
            Err(_) if linger_until.is_some() => {
                tracing::info!("disconnected from the MQTT broker");
                return;
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let Some(Intake { out, acks }) = &intake else {
                    // Shutting down: left unacknowledged for the next session.
                    tracing::debug!(topic = %publish.topic, "message after intake stopped; left for redelivery");
                    continue;
                };
                let (commit, committed) = CommitToken::new();
                let batch = batch_from_mqtt(&publish.topic, &publish.payload, &suppliers, commit);
                // A slow pipeline holds us here and the broker's in-flight
                // window holds the devices' messages. The ack queue never
                // fills (see the module docs), so its send never waits.
                // A closed pipeline (shutting down) takes no more: the
                // message is left unacknowledged, and the poll goes on so
                // that the acks already queued reach the broker.
                if out.send(batch).await.is_err() || acks.send((committed, publish)).await.is_err()
                {
                    tracing::info!("pipeline closed; MQTT intake stopped");
                    intake = None;
                    connected.send_replace(false);
                }
            }
            Ok(_) => {}
            Err(e) => {
                connected.send_replace(false);
                failures += 1;
                let wait = Duration::from_millis((100u64 << failures.min(5)).min(3_000));
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "MQTT connection lost; reconnecting");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// How long the poll task reads on after its DISCONNECT, waiting for the
/// broker to close the connection.
const DISCONNECT_LINGER: Duration = Duration::from_secs(2);

/// The next event, or None once `until` (if set) passes.
async fn poll_until(
    eventloop: &mut EventLoop,
    until: Option<tokio::time::Instant>,
) -> Option<Result<Event, rumqttc::ConnectionError>> {
    match until {
        None => Some(eventloop.poll().await),
        Some(until) => tokio::time::timeout_at(until, eventloop.poll()).await.ok(),
    }
}

async fn ack_loop(
    client: AsyncClient,
    mut pending: mpsc::Receiver<(oneshot::Receiver<CommitOutcome>, Publish)>,
) {
    while let Some((committed, publish)) = pending.recv().await {
        match committed.await {
            Ok(_) => {
                if let Err(e) = client.ack(&publish).await {
                    tracing::warn!(error = %e, "cannot acknowledge; the broker will redeliver");
                }
            }
            Err(_) => {
                tracing::debug!(topic = %publish.topic, "batch not committed; message left unacknowledged")
            }
        }
    }
}
