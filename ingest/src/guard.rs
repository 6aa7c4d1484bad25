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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Who may connect through the guard.
#[derive(Debug, Clone)]
pub struct GuardPolicy {
    /// Supplier id → MQTT password; `None`: no authentication (development),
    /// any username and topic, but never the engine's client id.
    pub suppliers: Option<HashMap<String, String>>,
    /// The engine's own client id, refused on the public port.
    pub engine_client_id: String,
}

/// Largest client packet the guard forwards (the broker's own limit plus headers).
const MAX_PACKET: usize = 512 * 1024 + 1024;

const CONNECT: u8 = 1;
const PUBLISH: u8 = 3;
const SUBSCRIBE: u8 = 8;

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
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut broker_rx, mut broker_tx) = upstream.into_split();
    // Replies flow back untouched; this task ends when either side closes.
    let replies = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut broker_rx, &mut client_tx).await;
        let _ = client_tx.shutdown().await;
    });
    let outcome = async {
        if broker_tx.write_all(&buf[..total]).await.is_err() {
            return Ok(());
        }
        buf.advance(total);
        loop {
            let Some((total, header)) = next_packet(&mut client_rx, &mut buf).await? else {
                return Ok(());
            };
            check.check(buf[0], &buf[header..total], policy)?;
            if broker_tx.write_all(&buf[..total]).await.is_err() {
                return Ok(());
            }
            buf.advance(total);
        }
    }
    .await;
    replies.abort();
    outcome
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
