//! The topic guard in front of the embedded broker.
//!
//! rumqttd checks usernames and passwords but has no topic ACLs and no rule
//! on client ids (a client with another's id takes over its persistent
//! session), so the broker always listens on a private loopback port, where
//! the engine's own client connects, and this guard owns the public one. It
//! reads the client's MQTT 3.1.1 packets and forwards them unchanged; the
//! broker's replies are copied back untouched.
//!
//! At CONNECT it refuses, with a CONNACK and a close: the engine's own client
//! id (its session is reachable from the private port only), and, when
//! suppliers have passwords, a username that is not a supplier, a wrong
//! password (checked here in constant time), and a client id that does not
//! start with `{username}-`. After CONNECT, a client that names a topic
//! outside `movewatch/v1/{username}/` (publish, subscribe or will) is
//! disconnected: with a persistent session a silently dropped QoS 1 message
//! would look delivered to the device, so a loud refusal is the safer answer.
//! This is what the documented Mosquitto ACL `pattern write
//! movewatch/v1/%u/#` does on an external broker.
//!
//! Nothing a client sends as a username or password is ever logged: a device
//! that swaps the two would otherwise write its password to the log.
//!
//! With a [`DeviceIntake`] (the engine's own embedded broker), a device's
//! publishes do not go to the broker at all, since rumqttd acknowledges a
//! QoS 1 message as soon as it has it in memory. Once the broker has
//! accepted the device's CONNECT, each PUBLISH is decoded into a batch and
//! handed to the engine's pipeline, and the guard itself writes its PUBACK,
//! in the order the publishes came, only once the store has committed the
//! batch (its [`CommitToken`]). A crash before the commit leaves the message
//! unacknowledged, so the device sends it again; a slow store holds the
//! device (at most [`MAX_PENDING`] of its messages wait for their commit,
//! then the guard stops reading it). Everything else (CONNECT, pings,
//! DISCONNECT) still goes through the broker, whose replies are copied back
//! whole packet by whole packet, between the PUBACKs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use std::sync::atomic::{AtomicU32, Ordering};

use bytes::{Buf, BytesMut};
use model::{CommitOutcome, CommitToken, IngestBatch};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::Suppliers;

/// Who may connect through the guard.
#[derive(Debug, Clone)]
pub struct GuardPolicy {
    /// Supplier id → MQTT password; `None`: no authentication (development),
    /// any username and topic, but never the engine's client id.
    pub suppliers: Option<HashMap<String, String>>,
    /// The engine's own client id, refused on the public port.
    pub engine_client_id: String,
    /// Where the devices' publishes go; `None`: through the broker.
    pub intake: Option<DeviceIntake>,
}

/// Where the guard hands the devices' publishes: the engine's pipeline.
#[derive(Debug, Clone)]
pub struct DeviceIntake {
    /// The pipeline's bounded input.
    pub out: mpsc::Sender<IngestBatch>,
    /// The suppliers and the vehicle register, for decoding.
    pub suppliers: Arc<Suppliers>,
}

/// The most QoS 1 messages of one device connection that wait for their
/// commit; past it the guard stops reading the device until one is
/// committed (TCP then slows the device), as a broker's in-flight window would.
pub const MAX_PENDING: usize = 1_000;

/// While a device's publishes go to the engine, the broker sees nothing of
/// it and would drop it after 1.5 keep-alives; the guard pings the broker
/// for it this often, and keeps the answers from the device.
const BROKER_PING_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
const PINGREQ_PACKET: [u8; 2] = [0xC0, 0x00];

/// Largest client packet the guard forwards (the broker's own limit plus headers).
const MAX_PACKET: usize = 512 * 1024 + 1024;

const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const SUBSCRIBE: u8 = 8;
const PINGRESP: u8 = 13;

/// Why the guard closed a client's connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The first packet was not CONNECT, or a packet did not parse.
    #[error("malformed MQTT packet: {0}")]
    Malformed(&'static str),
    /// Only MQTT 3.1.1 is served.
    #[error("unsupported MQTT protocol level {0} (the broker speaks 3.1.1)")]
    Protocol(u8),
    /// The username is not a configured supplier, or the password is wrong.
    /// Neither is kept: a device that swapped them would have its password
    /// written to the log.
    #[error("bad username or password")]
    BadCredentials,
    /// No username given.
    #[error("a username (the supplier id) is required")]
    NoUsername,
    /// The engine's own client id, from the public port.
    #[error("the engine's client id is refused on the public port")]
    EngineClientId,
    /// A client id that does not start with `{supplier}-`.
    #[error("client id {client_id:?} does not start with \"{supplier}-\"")]
    ClientId {
        /// The client id given.
        client_id: String,
        /// The supplier (the authenticated username).
        supplier: String,
    },
    /// A topic outside the supplier's prefix.
    #[error("{action} on {topic:?} is outside movewatch/v1/{supplier}/")]
    OutsidePrefix {
        /// publish, subscribe or will.
        action: &'static str,
        /// The topic or filter named.
        topic: String,
        /// The supplier (the username).
        supplier: String,
    },
    /// Packet over the size limit.
    #[error("packet of {0} bytes is over the limit")]
    TooLarge(usize),
    /// QoS 2 is not served (the contract's devices publish at QoS 1).
    #[error("QoS 2 publish refused: publish at QoS 1")]
    Qos2,
}

impl Refusal {
    /// The CONNACK return code a refusal at CONNECT is answered with
    /// (1: protocol version, 4: bad username or password, 5: not
    /// authorised), or `None` for a refusal after CONNECT (a plain close).
    pub fn connack_code(&self) -> Option<u8> {
        match self {
            Refusal::Protocol(_) => Some(1),
            Refusal::BadCredentials | Refusal::NoUsername => Some(4),
            Refusal::EngineClientId | Refusal::ClientId { .. } => Some(5),
            _ => None,
        }
    }
}

/// What a client's packets have established so far.
#[derive(Debug, Default)]
pub struct ClientCheck {
    prefix: Option<String>,
    supplier: String,
}

impl ClientCheck {
    /// Checks one complete packet (`first` header byte and `body` after the
    /// remaining length). The first packet must be CONNECT.
    pub fn check(&mut self, first: u8, body: &[u8], policy: &GuardPolicy) -> Result<(), Refusal> {
        let kind = first >> 4;
        let Some(prefix) = &self.prefix else {
            if kind != CONNECT {
                return Err(Refusal::Malformed("first packet is not CONNECT"));
            }
            return self.connect(body, policy);
        };
        match kind {
            CONNECT => Err(Refusal::Malformed("second CONNECT")),
            PUBLISH => {
                let (topic, _) = read_str(body)?;
                if topic.starts_with(prefix.as_str()) {
                    Ok(())
                } else {
                    Err(self.outside("publish", topic))
                }
            }
            SUBSCRIBE => {
                let mut rest = body.get(2..).ok_or(Refusal::Malformed("short SUBSCRIBE"))?;
                while !rest.is_empty() {
                    let (filter, after) = read_str(rest)?;
                    if !filter.starts_with(prefix.as_str()) {
                        return Err(self.outside("subscribe", filter));
                    }
                    rest = after
                        .get(1..)
                        .ok_or(Refusal::Malformed("short SUBSCRIBE"))?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn outside(&self, action: &'static str, topic: &str) -> Refusal {
        Refusal::OutsidePrefix {
            action,
            topic: topic.to_owned(),
            supplier: self.supplier.clone(),
        }
    }

    fn connect(&mut self, body: &[u8], policy: &GuardPolicy) -> Result<(), Refusal> {
        let (protocol, rest) = read_str(body)?;
        let [level, flags, _keep_alive_hi, _keep_alive_lo, rest @ ..] = rest else {
            return Err(Refusal::Malformed("short CONNECT"));
        };
        if protocol != "MQTT" || *level != 4 {
            return Err(Refusal::Protocol(*level));
        }
        let (client_id, mut rest) = read_str(rest)?;
        let mut will_topic = None;
        if flags & 0x04 != 0 {
            let (topic, after) = read_str(rest)?;
            let (_message, after) = read_bytes(after)?;
            will_topic = Some(topic);
            rest = after;
        }
        if client_id == policy.engine_client_id {
            return Err(Refusal::EngineClientId);
        }
        let Some(users) = &policy.suppliers else {
            // Open (development): no identity to hold the client to.
            self.prefix = Some(String::new());
            return Ok(());
        };
        if flags & 0x80 == 0 {
            return Err(Refusal::NoUsername);
        }
        let (username, rest) = read_str(rest)?;
        let password = if flags & 0x40 != 0 {
            read_bytes(rest)?.0
        } else {
            &[]
        };
        // Every password is compared, so the time taken says nothing of which
        // usernames exist.
        let mut valid = false;
        for (user, expected) in users {
            let same = bool::from(expected.as_bytes().ct_eq(password));
            valid |= same && user == username;
        }
        if !valid {
            return Err(Refusal::BadCredentials);
        }
        if client_id
            .strip_prefix(username)
            .and_then(|r| r.strip_prefix('-'))
            .is_none_or(str::is_empty)
        {
            return Err(Refusal::ClientId {
                client_id: client_id.to_owned(),
                supplier: username.to_owned(),
            });
        }
        self.supplier = username.to_owned();
        let prefix = format!("movewatch/v1/{username}/");
        if let Some(topic) = will_topic.filter(|t| !t.starts_with(&prefix)) {
            return Err(self.outside("will", topic));
        }
        self.prefix = Some(prefix);
        Ok(())
    }
}

fn read_bytes(buf: &[u8]) -> Result<(&[u8], &[u8]), Refusal> {
    let [hi, lo, rest @ ..] = buf else {
        return Err(Refusal::Malformed("truncated length"));
    };
    let len = usize::from(u16::from_be_bytes([*hi, *lo]));
    if rest.len() < len {
        return Err(Refusal::Malformed("truncated string"));
    }
    Ok(rest.split_at(len))
}

fn read_str(buf: &[u8]) -> Result<(&str, &[u8]), Refusal> {
    let (bytes, rest) = read_bytes(buf)?;
    let text = std::str::from_utf8(bytes).map_err(|_| Refusal::Malformed("topic not UTF-8"))?;
    Ok((text, rest))
}

/// The length of the first complete packet in `buf`, with the offset of its
/// body, or `None` when more bytes are needed.
pub fn frame(buf: &[u8]) -> Result<Option<(usize, usize)>, Refusal> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let header = 2 + i;
            let total = header + remaining;
            if total > MAX_PACKET {
                return Err(Refusal::TooLarge(total));
            }
            return Ok((buf.len() >= total).then_some((total, header)));
        }
    }
    Err(Refusal::Malformed("remaining length over 4 bytes"))
}

/// Accepts clients on `listener` and relays each to the broker at `broker`.
pub async fn run_guard(listener: TcpListener, broker: SocketAddr, policy: Arc<GuardPolicy>) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "MQTT accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let policy = policy.clone();
        tokio::spawn(async move {
            if let Err(refusal) = relay(client, broker, &policy).await {
                metrics::counter!("movewatch_mqtt_refused_total").increment(1);
                tracing::warn!(%peer, %refusal, "MQTT client refused by the topic guard");
            }
        });
    }
}

/// How long a client has to send its CONNECT.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads the next complete packet into `buf`: `(total, header)`, or `None`
/// when the client closed.
async fn next_packet(
    client: &mut (impl AsyncReadExt + Unpin),
    buf: &mut BytesMut,
) -> Result<Option<(usize, usize)>, Refusal> {
    loop {
        if let Some(found) = frame(buf)? {
            return Ok(Some(found));
        }
        match client.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

async fn relay(
    mut client: TcpStream,
    broker: SocketAddr,
    policy: &GuardPolicy,
) -> Result<(), Refusal> {
    let _ = client.set_nodelay(true);
    let mut check = ClientCheck::default();
    let mut buf = BytesMut::with_capacity(8 * 1024);
    // CONNECT first, checked before the broker hears of the client.
    let Ok(first) = tokio::time::timeout(CONNECT_TIMEOUT, next_packet(&mut client, &mut buf)).await
    else {
        return Ok(());
    };
    let Some((total, header)) = first? else {
        return Ok(());
    };
    if let Err(refusal) = check.check(buf[0], &buf[header..total], policy) {
        if let Some(code) = refusal.connack_code() {
            let _ = client.write_all(&[0x20, 0x02, 0x00, code]).await;
            let _ = client.shutdown().await;
        }
        return Err(refusal);
    }
    let Ok(upstream) = TcpStream::connect(broker).await else {
        tracing::error!(%broker, "embedded broker unreachable from the topic guard");
        return Ok(());
    };
    let _ = upstream.set_nodelay(true);
    let (mut client_rx, client_tx) = client.into_split();
    let (broker_rx, mut broker_tx) = upstream.into_split();
    let (accepted_tx, mut accepted) = watch::channel(None);
    let (pending_tx, pending_rx) = mpsc::channel(MAX_PENDING);
    let our_pings = Arc::new(AtomicU32::new(0));
    // The broker's replies and the guard's own PUBACKs; ends when either
    // side closes, or when a commit fails (the device then sends its
    // unacknowledged messages again on its next connection).
    let replies = tokio::spawn(write_replies(
        broker_rx,
        client_tx,
        pending_rx,
        accepted_tx,
        our_pings.clone(),
    ));
    let outcome = async {
        if broker_tx.write_all(&buf[..total]).await.is_err() {
            return Ok(());
        }
        buf.advance(total);
        let mut last_to_broker = tokio::time::Instant::now();
        loop {
            let Some((total, header)) = next_packet(&mut client_rx, &mut buf).await? else {
                return Ok(());
            };
            check.check(buf[0], &buf[header..total], policy)?;
            let to_engine = policy.intake.as_ref().filter(|_| buf[0] >> 4 == PUBLISH);
            if let Some(intake) = to_engine {
                let packet = &buf[..total];
                if !take_publish(intake, packet, header, &mut accepted, &pending_tx).await? {
                    return Ok(());
                }
                if last_to_broker.elapsed() >= BROKER_PING_EVERY {
                    our_pings.fetch_add(1, Ordering::Relaxed);
                    if broker_tx.write_all(&PINGREQ_PACKET).await.is_err() {
                        return Ok(());
                    }
                    last_to_broker = tokio::time::Instant::now();
                }
            } else if broker_tx.write_all(&buf[..total]).await.is_err() {
                return Ok(());
            } else {
                last_to_broker = tokio::time::Instant::now();
            }
            buf.advance(total);
        }
    }
    .await;
    // The PUBACKs of what is already handed over still go out as their
    // commits complete; the writer ends after the last one.
    drop(pending_tx);
    if outcome.is_err() {
        replies.abort();
    }
    outcome
}

/// Whether the broker accepted the client's CONNECT: `None` until its CONNACK.
type Accepted = watch::Receiver<Option<bool>>;

/// A message handed to the engine, waiting for its commit to be acknowledged.
type Pending = (u16, oneshot::Receiver<CommitOutcome>);

/// A PUBLISH's parts: QoS, packet id (0 at QoS 0), topic and payload.
fn parse_publish(first: u8, body: &[u8]) -> Result<(u8, u16, &str, &[u8]), Refusal> {
    let qos = (first >> 1) & 0x03;
    let (topic, rest) = read_str(body)?;
    if qos == 0 {
        return Ok((0, 0, topic, rest));
    }
    let [hi, lo, payload @ ..] = rest else {
        return Err(Refusal::Malformed("PUBLISH without a packet id"));
    };
    Ok((qos, u16::from_be_bytes([*hi, *lo]), topic, payload))
}

/// Hands one PUBLISH to the engine once the broker has accepted the client;
/// a QoS 1 message's commit joins the queue of PUBACKs to write.
/// `Ok(false)` ends the connection quietly (the broker refused the client,
/// or the engine is shutting down: the message stays unacknowledged).
async fn take_publish(
    intake: &DeviceIntake,
    packet: &[u8],
    header: usize,
    accepted: &mut Accepted,
    pending: &mpsc::Sender<Pending>,
) -> Result<bool, Refusal> {
    // A client may publish before its CONNACK: nothing counts until the
    // broker has taken the connection.
    match accepted.wait_for(Option::is_some).await.map(|a| *a) {
        Ok(Some(true)) => {}
        _ => return Ok(false),
    }
    let (qos, pkid, topic, payload) = parse_publish(packet[0], &packet[header..])?;
    if qos == 2 {
        return Err(Refusal::Qos2);
    }
    let (commit, committed) = CommitToken::new();
    let batch = crate::batch_from_mqtt(topic, payload, &intake.suppliers, commit);
    // Room for its PUBACK first: a full queue holds this device here.
    let Ok(slot) = pending.reserve().await else {
        return Ok(false);
    };
    if intake.out.send(batch).await.is_err() {
        return Ok(false);
    }
    if qos == 1 {
        slot.send((pkid, committed));
    }
    Ok(true)
}

/// The client's side of the connection: the broker's packets as they come
/// (whole packets, never cut by a PUBACK), and each PUBACK once its message
/// is committed, in the order the messages came.
async fn write_replies(
    mut broker_rx: OwnedReadHalf,
    mut client_tx: OwnedWriteHalf,
    mut pending: mpsc::Receiver<Pending>,
    accepted: watch::Sender<Option<bool>>,
    our_pings: Arc<AtomicU32>,
) {
    let mut buf = BytesMut::with_capacity(1024);
    let mut waiting: std::collections::VecDeque<Pending> = std::collections::VecDeque::new();
    // Until the reader is done (then only the PUBACKs due are written) and
    // the broker is open.
    let mut reading = true;
    loop {
        if !reading && waiting.is_empty() {
            break;
        }
        tokio::select! {
            next = pending.recv(), if reading => match next {
                Some(p) => waiting.push_back(p),
                None => reading = false,
            },
            outcome = async {
                match waiting.front_mut() {
                    Some((_, committed)) => committed.await,
                    None => std::future::pending().await,
                }
            }, if !waiting.is_empty() => {
                let Some((pkid, _)) = waiting.pop_front() else { break };
                if outcome.is_err() {
                    // Not durable: no PUBACK. The device sends it again on
                    // its next connection, so end this one.
                    tracing::warn!(pkid, "a device's message was not committed; closing its connection for redelivery");
                    break;
                }
                let [hi, lo] = pkid.to_be_bytes();
                if client_tx.write_all(&[0x40, 0x02, hi, lo]).await.is_err() {
                    break;
                }
            }
            read = broker_rx.read_buf(&mut buf), if reading => {
                if matches!(read, Ok(0) | Err(_)) {
                    // The broker closed the connection: so does the client,
                    // once the PUBACKs already due are out.
                    accepted.send_if_modified(|a| {
                        let unanswered = a.is_none();
                        a.get_or_insert(false);
                        unanswered
                    });
                    reading = false;
                    continue;
                }
                while let Ok(Some((total, header))) = frame(&buf) {
                    let kind = buf[0] >> 4;
                    if kind == CONNACK {
                        accepted.send_replace(Some(buf.get(header + 1) == Some(&0)));
                    }
                    let ours = kind == PINGRESP
                        && our_pings
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                            .is_ok();
                    if !ours && client_tx.write_all(&buf[..total]).await.is_err() {
                        return;
                    }
                    buf.advance(total);
                }
            }
        }
    }
    let _ = client_tx.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    fn connect_as(client_id: &str, login: Option<(&str, &str)>, will: Option<&str>) -> Vec<u8> {
        let mut flags = 0x02;
        let mut payload = string(client_id);
        if let Some(topic) = will {
            flags |= 0x04;
            payload.extend(string(topic));
            payload.extend(string("gone"));
        }
        if let Some((user, password)) = login {
            flags |= 0x80 | 0x40;
            payload.extend(string(user));
            payload.extend(string(password));
        }
        let mut body = string("MQTT");
        body.extend([4, flags, 0, 30]);
        body.extend(payload);
        body
    }

    fn connect(username: Option<&str>, will: Option<&str>) -> Vec<u8> {
        let id = format!("{}-device-1", username.unwrap_or("x"));
        let password = username.map(|u| format!("pw-{u}"));
        connect_as(&id, username.zip(password.as_deref()), will)
    }

    fn policy() -> GuardPolicy {
        GuardPolicy {
            suppliers: Some(
                [
                    ("geoamey".to_owned(), "pw-geoamey".to_owned()),
                    ("serco".to_owned(), "pw-serco".to_owned()),
                ]
                .into(),
            ),
            engine_client_id: "movewatch-engine".into(),
            intake: None,
        }
    }

    fn connected(user: &str) -> ClientCheck {
        let mut check = ClientCheck::default();
        assert_eq!(
            check.check(0x10, &connect(Some(user), None), &policy()),
            Ok(())
        );
        check
    }

    #[test]
    fn a_supplier_publishes_under_its_own_prefix_only() {
        let mut check = connected("geoamey");
        let mut own = string("movewatch/v1/geoamey/AB12CDE/positions");
        own.extend([0, 1, b'{', b'}']);
        assert_eq!(check.check(0x32, &own, &policy()), Ok(()));
        let other = string("movewatch/v1/serco/AB12CDE/positions");
        assert!(matches!(
            check.check(0x32, &other, &policy()),
            Err(Refusal::OutsidePrefix {
                action: "publish",
                ..
            })
        ));
    }

    #[test]
    fn subscriptions_outside_the_prefix_are_refused() {
        let mut check = connected("serco");
        let mut own = vec![0, 7];
        own.extend(string("movewatch/v1/serco/#"));
        own.push(1);
        assert_eq!(check.check(0x82, &own, &policy()), Ok(()));
        let mut wide = vec![0, 8];
        wide.extend(string("movewatch/v1/serco/#"));
        wide.push(1);
        wide.extend(string("movewatch/v1/#"));
        wide.push(1);
        assert!(matches!(
            check.check(0x82, &wide, &policy()),
            Err(Refusal::OutsidePrefix {
                action: "subscribe",
                ..
            })
        ));
    }

    #[test]
    fn connect_needs_a_known_supplier_and_a_will_in_its_prefix() {
        let p = policy();
        let refuse = |body: Vec<u8>| ClientCheck::default().check(0x10, &body, &p);
        assert_eq!(refuse(connect(None, None)), Err(Refusal::NoUsername));
        assert_eq!(
            refuse(connect_as(
                "movewatch.engine-1",
                Some(("movewatch.engine", "x")),
                None
            )),
            Err(Refusal::BadCredentials)
        );
        assert!(matches!(
            refuse(connect(
                Some("geoamey"),
                Some("movewatch/v1/serco/X/events")
            )),
            Err(Refusal::OutsidePrefix { action: "will", .. })
        ));
        assert_eq!(
            refuse(connect(
                Some("geoamey"),
                Some("movewatch/v1/geoamey/X/events")
            )),
            Ok(())
        );
        let publish_first = string("movewatch/v1/geoamey/X/positions");
        assert!(
            ClientCheck::default()
                .check(0x30, &publish_first, &p)
                .is_err()
        );
    }

    #[test]
    fn credentials_are_checked_and_never_shown() {
        let p = policy();
        let refuse = |body: Vec<u8>| ClientCheck::default().check(0x10, &body, &p);
        // Another supplier's password, and a swapped username and password.
        for login in [("geoamey", "pw-serco"), ("pw-geoamey", "geoamey")] {
            let refusal = refuse(connect_as("geoamey-1", Some(login), None)).unwrap_err();
            assert_eq!(refusal, Refusal::BadCredentials);
            assert_eq!(refusal.connack_code(), Some(4));
            assert!(!refusal.to_string().contains("pw-"), "{refusal}");
        }
    }

    #[test]
    fn client_ids_start_with_the_supplier_and_never_take_the_engines() {
        let p = policy();
        let refuse = |id: &str, user: &str| {
            ClientCheck::default().check(
                0x10,
                &connect_as(id, Some((user, &format!("pw-{user}"))), None),
                &p,
            )
        };
        assert_eq!(refuse("geoamey-van7", "geoamey"), Ok(()));
        assert_eq!(
            refuse("movewatch-engine", "geoamey"),
            Err(Refusal::EngineClientId)
        );
        for id in [
            "serco-van7",
            "geoamey",
            "geoamey-",
            "geoameyx-1",
            "van7",
            "",
        ] {
            let refusal = refuse(id, "geoamey").unwrap_err();
            assert!(
                matches!(refusal, Refusal::ClientId { .. }),
                "{id}: {refusal}"
            );
            assert_eq!(refusal.connack_code(), Some(5));
        }
        // Open (development): any client id but the engine's.
        let open = GuardPolicy {
            suppliers: None,
            engine_client_id: "movewatch-engine".into(),
            intake: None,
        };
        let check =
            |id: &str| ClientCheck::default().check(0x10, &connect_as(id, None, None), &open);
        assert_eq!(check("anything"), Ok(()));
        assert_eq!(check("movewatch-engine"), Err(Refusal::EngineClientId));
    }

    #[test]
    fn frames_are_found_and_bounded() {
        assert_eq!(frame(&[0x30]), Ok(None));
        assert_eq!(frame(&[0x30, 2, 0]), Ok(None));
        assert_eq!(frame(&[0x30, 2, 0, 0, 9]), Ok(Some((4, 2))));
        assert_eq!(frame(&[0x30, 0x80, 0x01]), Ok(None));
        assert!(matches!(
            frame(&[0x30, 0xff, 0xff, 0xff, 0x7f]),
            Err(Refusal::TooLarge(_))
        ));
        assert!(frame(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
        // Truncated strings never panic.
        let mut check = connected("geoamey");
        assert!(check.check(0x30, &[0, 40, b'm'], &policy()).is_err());
        assert!(check.check(0x30, &[0], &policy()).is_err());
    }
}
