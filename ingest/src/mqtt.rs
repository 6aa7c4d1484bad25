//! The MQTT source: a QoS 1 subscriber with a persistent session and manual
//! acknowledgements.
//!
//! Two tasks. The *poll* task drives rumqttc's event loop, decodes each
//! publish into a batch, sends it on, and writes the acknowledgements. The
//! *ack* task receives each message's commit receiver in arrival order,
//! waits for the store, and hands the packet id back to the poll task.
//!
//! Acknowledgements are written by the poll task itself, straight onto the
//! connection between polls, all that are ready at once and flushed once.
//! They do not go through rumqttc's request queue: its event loop takes one
//! request per turn and, while the socket has data, reads ten messages per
//! turn, so with a broker that sends beyond its window (Mosquitto 2.0 with
//! `max_queued_messages 0` was seen to) acknowledgements fell ten to one
//! behind the messages, the unacknowledged count ran past the packet-id
//! space, and the old design (an ack task queueing acks that only the
//! blocked poll task could drain) deadlocked. Now an acknowledgement is
//! written as soon as its batch is committed, whatever the broker sends.
//!
//! The poll task never waits on the ack task: the queue between them holds
//! [`MAX_UNACKED`] entries, the packet-id space, which no broker can exceed
//! on one session without reusing ids; a message beyond it is left
//! unacknowledged and not passed on (the broker delivers it again on the
//! next session). The poll task may wait on the pipeline (which drains as
//! the store commits, independent of MQTT); while it waits it goes on
//! writing the acknowledgements that become ready.
//!
//! Graceful shutdown ([`MqttSource::stop_intake`]): the poll task stops
//! passing messages on (one that arrives later is left unacknowledged, so the
//! broker delivers it again to the next session) and closes the ack queue,
//! but goes on polling and writing the acknowledgements of batches still
//! being committed. The ack task ends once it has handed over the last of
//! them; then [`MqttSource::disconnect`] queues a DISCONNECT, which the poll
//! task writes after every acknowledgement already handed over.

use std::sync::Arc;
use std::time::Duration;

use model::topic::ALL_FILTER;
use model::{CommitOutcome, CommitToken, IngestBatch};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, PubAck, QoS, Request};
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

/// Requests (subscriptions, the final DISCONNECT) queued for the event loop;
/// acknowledgements do not go this way.
const REQUEST_CAPACITY: usize = 64;

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
    // As large as the ack queue, so the ack task never waits on it either.
    let (ready_tx, ready_rx) = mpsc::channel(MAX_UNACKED);
    let (stop, stop_rx) = watch::channel(false);
    let poll_task = tokio::spawn(poll_loop(
        eventloop,
        client.clone(),
        suppliers,
        Intake { out, acks: ack_tx },
        ready_rx,
        connected_tx,
        stop_rx,
    ));
    let ack_task = tokio::spawn(ack_loop(ack_rx, ready_tx));
    Ok(MqttSource {
        connected,
        client,
        poll_task,
        ack_task,
        stop,
    })
}

/// A message waiting for its acknowledgement: the connection it came on
/// (counted from 1 by CONNACKs) and its packet id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AckId {
    connection: u64,
    pkid: u16,
}

/// Where the poll task passes messages on, until intake stops.
struct Intake {
    out: mpsc::Sender<IngestBatch>,
    acks: mpsc::Sender<(oneshot::Receiver<CommitOutcome>, AckId)>,
}

/// Writes the acknowledgements `first` and every other batch already handed
/// over, then flushes once. An acknowledgement from an earlier connection is
/// dropped: the broker delivers that message again on this one (a repeat,
/// stored once), and its packet id may now name another message.
async fn write_acks(
    eventloop: &mut EventLoop,
    connection: u64,
    first: Vec<AckId>,
    ready: &mut mpsc::Receiver<Vec<AckId>>,
) {
    let mut next = Some(first);
    let mut written = 0usize;
    while let Some(batch) = next {
        for ack in batch {
            if ack.connection != connection {
                continue;
            }
            let Some(network) = eventloop.network.as_mut() else {
                break;
            };
            let request = Request::PubAck(PubAck::new(ack.pkid));
            match eventloop.state.handle_outgoing_packet(request) {
                Ok(Some(packet)) => {
                    if let Err(e) = network.write(packet).await {
                        // The connection is going; the next poll sees it.
                        tracing::debug!(error = ?e, "cannot write an acknowledgement; the broker will redeliver");
                    }
                    written += 1;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot acknowledge; the broker will redeliver")
                }
            }
        }
        next = ready.try_recv().ok();
    }
    if written > 0
        && let Some(network) = eventloop.network.as_mut()
        && let Err(e) = network.flush().await
    {
        tracing::debug!(error = ?e, "cannot flush acknowledgements; the broker will redeliver");
    }
}

async fn poll_loop(
    mut eventloop: EventLoop,
    client: AsyncClient,
    suppliers: Arc<Suppliers>,
    intake: Intake,
    mut ready: mpsc::Receiver<Vec<AckId>>,
    connected: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    let mut intake = Some(intake);
    let mut watch_stop = true;
    let mut acks_open = true;
    // Counts CONNACKs: acknowledgements belong to the connection that delivered.
    let mut connection = 0u64;
    // Set once the DISCONNECT is on the wire: read until the broker closes.
    let mut linger_until: Option<tokio::time::Instant> = None;
    loop {
        let polled = tokio::select! {
            // First, so that every acknowledgement handed over is written
            // before anything else, the final DISCONNECT included. Polling is
            // interrupted here only between rumqttc's own steps in practice:
            // its reads keep what they have in its state, and the requests
            // it writes (subscriptions, the DISCONNECT) are a few bytes.
            biased;
            ack = ready.recv(), if acks_open && linger_until.is_none() => {
                match ack {
                    Some(ack) => write_acks(&mut eventloop, connection, ack, &mut ready).await,
                    None => acks_open = false,
                }
                continue;
            }
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
                connection += 1;
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to MQTT broker"
                );
                // Subscribe on every connect: harmless when the session
                // already has it. Everything under movewatch/v1/, so that a
                // bad topic is dead-lettered, never dropped in silence.
                if let Err(e) = client.try_subscribe(ALL_FILTER, QoS::AtLeastOnce) {
                    tracing::error!(error = %e, filter = ALL_FILTER, "cannot queue subscription");
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
                let id = AckId {
                    connection,
                    pkid: publish.pkid,
                };
                let Ok(slot) = acks.try_reserve() else {
                    // Full: the broker has more messages unacknowledged on
                    // this session than there are packet ids. Left
                    // unacknowledged, it comes again on the next session.
                    tracing::error!(topic = %publish.topic, "the broker sent more unacknowledged messages than packet ids; message left for redelivery");
                    continue;
                };
                let (commit, committed) = CommitToken::new();
                let batch = batch_from_mqtt(&publish.topic, &publish.payload, &suppliers, commit);
                // A slow pipeline holds us here and the broker's in-flight
                // window holds the devices' messages; meanwhile the
                // acknowledgements that become ready are written.
                let sent = {
                    let send = out.send(batch);
                    tokio::pin!(send);
                    loop {
                        tokio::select! {
                            biased;
                            ack = ready.recv(), if acks_open => match ack {
                                Some(ack) => write_acks(&mut eventloop, connection, ack, &mut ready).await,
                                None => acks_open = false,
                            },
                            sent = &mut send => break sent,
                        }
                    }
                };
                if sent.is_ok() {
                    slot.send((committed, id));
                } else {
                    drop(slot);
                    // A closed pipeline (shutting down) takes no more: the
                    // message is left unacknowledged, and the poll goes on so
                    // that the acks already queued reach the broker.
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

/// A message whose batch was never committed (the engine stopped first): not
/// acknowledged, so the broker delivers it again.
fn left_unacknowledged(id: AckId) {
    tracing::debug!(
        pkid = id.pkid,
        "batch not committed; message left unacknowledged"
    );
}

/// Waits for each message's commit, in arrival order, and hands the packet
/// ids to the poll task, every one already committed in one batch (a store
/// commit completes a whole group at once, so the poll task wakes and
/// flushes once per group, not per message). A batch never committed (the
/// engine stops first) is left unacknowledged. Ends when the poll task
/// closes the queue (intake stopped) and the last id is handed over.
async fn ack_loop(
    mut pending: mpsc::Receiver<(oneshot::Receiver<CommitOutcome>, AckId)>,
    ready: mpsc::Sender<Vec<AckId>>,
) {
    let mut held = None;
    loop {
        let Some((committed, id)) = (match held.take() {
            Some(next) => Some(next),
            None => pending.recv().await,
        }) else {
            return;
        };
        let mut batch = Vec::new();
        if committed.await.is_ok() {
            batch.push(id);
        } else {
            left_unacknowledged(id);
        }
        // Everything behind it that is already committed goes in the same batch.
        while let Ok((mut committed, id)) = pending.try_recv() {
            match committed.try_recv() {
                Ok(_) => batch.push(id),
                Err(oneshot::error::TryRecvError::Empty) => {
                    held = Some((committed, id));
                    break;
                }
                Err(oneshot::error::TryRecvError::Closed) => left_unacknowledged(id),
            }
        }
        // Never waits: as large as the ack queue (see the module docs).
        if !batch.is_empty() && ready.send(batch).await.is_err() {
            return;
        }
    }
}
