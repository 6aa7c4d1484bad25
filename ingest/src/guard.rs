//! The topic guard in front of the embedded broker.
//!
//! rumqttd checks usernames and passwords but has no topic ACLs, so when
//! suppliers are configured the broker listens on a private loopback port
//! and this guard owns the public one. It reads the client's MQTT 3.1.1
//! packets, checks every topic the client names against
//! `movewatch/v1/{username}/`, and forwards the bytes unchanged. The broker's
//! replies are copied back untouched. A client that names a topic outside its
//! prefix (publish, subscribe or will) is disconnected: with a persistent
//! session a silently dropped QoS 1 message would look delivered to the
//! device, so a loud refusal is the safer answer. This is what the documented
//! Mosquitto ACL `pattern write movewatch/v1/%u/#` does on an external broker.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
    /// The username is not a configured supplier.
    #[error("username {0:?} is not a configured supplier")]
    UnknownUser(String),
    /// No username given.
    #[error("a username (the supplier id) is required")]
    NoUsername,
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

/// What a client's packets have established so far.
#[derive(Debug, Default)]
pub struct ClientCheck {
    prefix: Option<String>,
    supplier: String,
}

impl ClientCheck {
    /// Checks one complete packet (`first` header byte and `body` after the
    /// remaining length). The first packet must be CONNECT.
    pub fn check(
        &mut self,
        first: u8,
        body: &[u8],
        suppliers: &HashSet<String>,
    ) -> Result<(), Refusal> {
        let kind = first >> 4;
        let Some(prefix) = &self.prefix else {
            if kind != CONNECT {
                return Err(Refusal::Malformed("first packet is not CONNECT"));
            }
            return self.connect(body, suppliers);
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

    fn connect(&mut self, body: &[u8], suppliers: &HashSet<String>) -> Result<(), Refusal> {
        let (protocol, rest) = read_str(body)?;
        let [level, flags, _keep_alive_hi, _keep_alive_lo, rest @ ..] = rest else {
            return Err(Refusal::Malformed("short CONNECT"));
        };
        if protocol != "MQTT" || *level != 4 {
            return Err(Refusal::Protocol(*level));
        }
        let (_client_id, mut rest) = read_str(rest)?;
        let mut will_topic = None;
        if flags & 0x04 != 0 {
            let (topic, after) = read_str(rest)?;
            let (_message, after) = read_bytes(after)?;
            will_topic = Some(topic);
            rest = after;
        }
        if flags & 0x80 == 0 {
            return Err(Refusal::NoUsername);
        }
        let (username, _) = read_str(rest)?;
        if !suppliers.contains(username) {
            return Err(Refusal::UnknownUser(username.to_owned()));
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
pub async fn run_guard(listener: TcpListener, broker: SocketAddr, suppliers: Arc<HashSet<String>>) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "MQTT accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let suppliers = suppliers.clone();
        tokio::spawn(async move {
            if let Err(refusal) = relay(client, broker, &suppliers).await {
                metrics::counter!("movewatch_mqtt_refused_total").increment(1);
                tracing::warn!(%peer, %refusal, "MQTT client disconnected by the topic guard");
            }
        });
    }
}

async fn relay(
    client: TcpStream,
    broker: SocketAddr,
    suppliers: &HashSet<String>,
) -> Result<(), Refusal> {
    let _ = client.set_nodelay(true);
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
    let mut check = ClientCheck::default();
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let outcome = loop {
        match frame(&buf) {
            Err(refusal) => break Err(refusal),
            Ok(Some((total, header))) => {
                if let Err(refusal) = check.check(buf[0], &buf[header..total], suppliers) {
                    break Err(refusal);
                }
                if broker_tx.write_all(&buf[..total]).await.is_err() {
                    break Ok(());
                }
                buf.advance(total);
            }
            Ok(None) => match client_rx.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break Ok(()),
                Ok(_) => {}
            },
        }
    };
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

    fn connect(username: Option<&str>, will: Option<&str>) -> Vec<u8> {
        let mut flags = 0x02;
        let mut payload = string("device-1");
        if let Some(topic) = will {
            flags |= 0x04;
            payload.extend(string(topic));
            payload.extend(string("gone"));
        }
        if let Some(user) = username {
            flags |= 0x80 | 0x40;
            payload.extend(string(user));
            payload.extend(string("secret"));
        }
        let mut body = string("MQTT");
        body.extend([4, flags, 0, 30]);
        body.extend(payload);
        body
    }

    fn suppliers() -> HashSet<String> {
        ["geoamey".to_owned(), "serco".to_owned()].into()
    }

    fn connected(user: &str) -> ClientCheck {
        let mut check = ClientCheck::default();
        assert_eq!(
            check.check(0x10, &connect(Some(user), None), &suppliers()),
            Ok(())
        );
        check
    }

    #[test]
    fn a_supplier_publishes_under_its_own_prefix_only() {
        let mut check = connected("geoamey");
        let mut own = string("movewatch/v1/geoamey/AB12CDE/positions");
        own.extend([0, 1, b'{', b'}']);
        assert_eq!(check.check(0x32, &own, &suppliers()), Ok(()));
        let other = string("movewatch/v1/serco/AB12CDE/positions");
        assert!(matches!(
            check.check(0x32, &other, &suppliers()),
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
        assert_eq!(check.check(0x82, &own, &suppliers()), Ok(()));
        let mut wide = vec![0, 8];
        wide.extend(string("movewatch/v1/serco/#"));
        wide.push(1);
        wide.extend(string("movewatch/v1/#"));
        wide.push(1);
        assert!(matches!(
            check.check(0x82, &wide, &suppliers()),
            Err(Refusal::OutsidePrefix {
                action: "subscribe",
                ..
            })
        ));
    }

    #[test]
    fn connect_needs_a_known_supplier_and_a_will_in_its_prefix() {
        let s = suppliers();
        let refuse = |body: Vec<u8>| ClientCheck::default().check(0x10, &body, &s);
        assert_eq!(refuse(connect(None, None)), Err(Refusal::NoUsername));
        assert_eq!(
            refuse(connect(Some("movewatch.engine"), None)),
            Err(Refusal::UnknownUser("movewatch.engine".into()))
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
                .check(0x30, &publish_first, &s)
                .is_err()
        );
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
        assert!(check.check(0x30, &[0, 40, b'm'], &suppliers()).is_err());
        assert!(check.check(0x30, &[0], &suppliers()).is_err());
    }
}
