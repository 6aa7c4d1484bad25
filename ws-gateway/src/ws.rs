//! One WebSocket client: subscriptions, snapshot first, then live frames.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use model::VehicleId;
use model::wire::{Channel, ClientMessage, ErrorView, Frame, PositionView, SnapshotView};
use tokio::sync::broadcast::error::RecvError;

use crate::hub::SharedFrame;
use crate::outbox::{NO_PONG, Next, Outbox, SHUTTING_DOWN};
use crate::{Access, Gateway};

/// The largest message a client may send.
const MAX_CLIENT_MESSAGE: usize = 16 * 1024;

pub(crate) async fn upgrade(
    State(g): State<Gateway>,
    ws: WebSocketUpgrade,
    access: Access,
) -> Response {
    ws.max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| client(socket, g, access))
}

/// Counts connected clients for `movewatch_ws_clients`.
struct ClientGauge;

impl ClientGauge {
    fn new() -> Self {
        metrics::gauge!("movewatch_ws_clients").increment(1.0);
        ClientGauge
    }
}

impl Drop for ClientGauge {
    fn drop(&mut self) {
        metrics::gauge!("movewatch_ws_clients").decrement(1.0);
    }
}

#[derive(Default)]
struct Subscriptions {
    fleet: bool,
    vehicles: HashSet<VehicleId>,
    sites: HashSet<model::SiteId>,
}

impl Subscriptions {
    fn wants(&self, frame: &SharedFrame, access: &Access) -> bool {
        let on_site = || frame.sites.iter().any(|s| self.sites.contains(s));
        match access {
            Access::ControlRoom => {
                self.fleet || frame.vehicle.is_some_and(|v| self.vehicles.contains(&v)) || on_site()
            }
            Access::Supplier(s) => {
                frame.supplier == Some(*s)
                    && frame.vehicle.is_some_and(|v| self.vehicles.contains(&v))
            }
            // Only frames the moves registry scoped to one of its (subscribed) sites.
            Access::Site(allowed) => frame
                .sites
                .iter()
                .any(|s| allowed.contains(s) && self.sites.contains(s)),
        }
    }

    fn is_empty(&self) -> bool {
        !self.fleet && self.vehicles.is_empty() && self.sites.is_empty()
    }

    fn len(&self) -> usize {
        usize::from(self.fleet) + self.vehicles.len() + self.sites.len()
    }

    fn channels(&self) -> Vec<Channel> {
        let mut out = Vec::new();
        if self.fleet {
            out.push(Channel::Fleet);
        }
        out.extend(self.vehicles.iter().map(|v| Channel::Vehicle(*v)));
        out.extend(self.sites.iter().map(|s| Channel::Site(s.clone())));
        out
    }
}

fn text(frame: &Frame) -> Utf8Bytes {
    Utf8Bytes::from(frame.to_json())
}

fn error_frame(code: &'static str, message: String) -> Utf8Bytes {
    text(&Frame::Error(ErrorView { code, message }))
}

fn snapshot(g: &Gateway, access: &Access, channel: &Channel) -> Utf8Bytes {
    let visible = |v: &PositionView| match access {
        Access::ControlRoom => true,
        Access::Supplier(s) => g.tracker.supplier_of(&v.vehicle) == Some(*s),
        // Site channels list only the vehicles their moves make visible (below).
        Access::Site(_) => false,
    };
    let now = chrono::Utc::now();
    let (mut alerts, mut moves) = (Vec::new(), Vec::new());
    let vehicles = match channel {
        Channel::Fleet => {
            let vehicles = g.tracker.snapshot().into_iter().filter(visible).collect();
            if *access == Access::ControlRoom {
                let book = g.moves.lock();
                alerts = book.recent_alerts(None);
                moves = book.move_views(None, now);
            }
            vehicles
        }
        Channel::Vehicle(id) => g
            .tracker
            .get(id)
            .map(|s| s.view())
            .into_iter()
            .filter(visible)
            .collect(),
        Channel::Site(site) => {
            let seen = {
                let book = g.moves.lock();
                alerts = book.recent_alerts(Some(site));
                moves = book.move_views(Some(site), now);
                book.vehicles_seen_by(site, now)
            };
            seen.iter()
                .filter_map(|v| g.tracker.get(v).map(|s| s.view()))
                .collect()
        }
    };
    text(&Frame::Snapshot(SnapshotView {
        channel: channel.to_string(),
        vehicles,
        alerts,
        moves,
    }))
}

/// How often the server pings; two unanswered pings close the connection.
pub(crate) const PING_EVERY: Duration = Duration::from_secs(20);
/// How long one send may take before the client is taken as stuck and dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The most channels one client may hold (bounds a client's memory).
const MAX_SUBSCRIPTIONS: usize = 256;

/// One client: this task reads the client's messages and the fan-out, and
/// only ever queues into the client's [`Outbox`] (never waiting on the
/// socket); the writer task sends from it, pings, and closes with a reason.
async fn client(socket: WebSocket, g: Gateway, access: Access) {
    let _gauge = ClientGauge::new();
    let (sink, mut stream) = socket.split();
    let outbox = Outbox::default();
    let missed_pongs = Arc::new(AtomicU32::new(0));
    let mut writer = tokio::spawn(write_loop(sink, outbox.clone(), missed_pongs.clone()));
    let mut live = g.hub.subscribe();
    let mut closing = g.hub.closing();
    let mut subs = Subscriptions::default();
    loop {
        tokio::select! {
            _ = &mut writer => return,
            // Shutting down (or the hub gone): close with a reason.
            _ = async { drop(closing.wait_for(|c| *c).await) } => {
                outbox.close(SHUTTING_DOWN);
                let _ = tokio::time::timeout(SEND_TIMEOUT, &mut writer).await;
                return;
            }
            incoming = stream.next() => {
                let reply = match incoming {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Text(t))) => handle_client_message(&g, &access, &mut subs, t.as_str()),
                    Some(Ok(Message::Binary(_))) => vec![error_frame("bad_request", "send JSON text frames".into())],
                    Some(Ok(Message::Pong(_))) => {
                        missed_pongs.store(0, Ordering::Relaxed);
                        vec![]
                    }
                    Some(Ok(_)) => vec![],
                };
                for text in reply {
                    if !outbox.push(text, None, None, Instant::now()) {
                        break;
                    }
                }
            }
            frame = live.recv(), if !subs.is_empty() => {
                match frame {
                    Ok(frame) if subs.wants(&frame, &access) => {
                        let conflate = if frame.conflate { frame.vehicle } else { None };
                        if !outbox.push(frame.text.clone(), frame.mark.clone(), conflate, Instant::now()) {
                            tracing::debug!("slow WebSocket client closed");
                            metrics::counter!("movewatch_ws_slow_closed_total").increment(1);
                        }
                    }
                    Ok(_) => continue,
                    Err(RecvError::Lagged(missed)) => {
                        // This task was starved (it never waits on the socket):
                        // skip to the present with fresh snapshots.
                        tracing::debug!(missed, "WebSocket client resynchronised");
                        metrics::counter!("movewatch_ws_resyncs_total").increment(1);
                        for channel in subs.channels() {
                            outbox.push(snapshot(&g, &access, &channel), None, None, Instant::now());
                        }
                    }
                    Err(RecvError::Closed) => {
                        outbox.close(SHUTTING_DOWN);
                        let _ = tokio::time::timeout(SEND_TIMEOUT, &mut writer).await;
                        return;
                    }
                }
            }
        }
    }
    writer.abort();
}

/// Sends what the outbox holds, pings every [`PING_EVERY`], and closes with
/// a reason when asked (too slow, no pong, shutting down). Ends when the
/// connection does.
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    outbox: Outbox,
    missed_pongs: Arc<AtomicU32>,
) {
    let mut next_ping = tokio::time::Instant::now() + PING_EVERY;
    loop {
        // Pings go out on time even while frames are flowing.
        let mut mark = None;
        let message = if tokio::time::Instant::now() >= next_ping {
            next_ping += PING_EVERY;
            if missed_pongs.fetch_add(1, Ordering::Relaxed) >= 2 {
                outbox.close(NO_PONG);
                continue;
            }
            Message::Ping(Default::default())
        } else {
            match outbox.pop() {
                Next::Frame(text, latency) => {
                    mark = latency;
                    Message::Text(text)
                }
                Next::Close(reason) => {
                    let frame = CloseFrame {
                        code: reason.code,
                        reason: reason.reason.into(),
                    };
                    let _ =
                        tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Close(Some(frame))))
                            .await;
                    return;
                }
                Next::Empty => {
                    tokio::select! {
                        _ = outbox.ready() => {}
                        _ = tokio::time::sleep_until(next_ping) => {}
                    }
                    continue;
                }
            }
        };
        match tokio::time::timeout(SEND_TIMEOUT, sink.send(message)).await {
            Ok(Ok(())) => {
                if let Some(mark) = mark {
                    mark.sent();
                }
            }
            // Gone, or stuck for SEND_TIMEOUT: nothing more can be said to it.
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

fn handle_client_message(
    g: &Gateway,
    access: &Access,
    subs: &mut Subscriptions,
    raw: &str,
) -> Vec<Utf8Bytes> {
    let message: ClientMessage = match serde_json::from_str(raw) {
        Ok(m) => m,
        Err(e) => {
            return vec![error_frame(
                "bad_request",
                format!("expected {{\"type\":\"subscribe\"|\"unsubscribe\",\"channel\":..}}: {e}"),
            )];
        }
    };
    let (subscribe, name) = match &message {
        ClientMessage::Subscribe { channel } => (true, channel),
        ClientMessage::Unsubscribe { channel } => (false, channel),
    };
    let Some(channel) = Channel::parse(name) else {
        return vec![error_frame(
            "unknown_channel",
            format!("no channel {name:?}: use fleet, site:{{id}} or vehicle:{{registration}}"),
        )];
    };
    if let Channel::Site(id) = &channel
        && !g.sites.iter().any(|s| s.id == *id)
    {
        // Checked after scope for site tokens, so a probe learns nothing about other sites.
        if !access.may_subscribe(&channel) {
            return vec![error_frame(
                "forbidden",
                format!("this token may not see {channel}"),
            )];
        }
        return vec![error_frame("unknown_channel", format!("no site {id}"))];
    }
    if !access.may_subscribe(&channel) {
        return vec![error_frame(
            "forbidden",
            format!("this token may not see {channel}"),
        )];
    }
    if !subscribe {
        match &channel {
            Channel::Fleet => subs.fleet = false,
            Channel::Vehicle(v) => {
                subs.vehicles.remove(v);
            }
            Channel::Site(s) => {
                subs.sites.remove(s);
            }
        }
        return vec![];
    }
    if subs.len() >= MAX_SUBSCRIPTIONS {
        return vec![error_frame(
            "bad_request",
            format!("at most {MAX_SUBSCRIPTIONS} channels per connection"),
        )];
    }
    match &channel {
        Channel::Fleet => subs.fleet = true,
        Channel::Vehicle(v) => {
            subs.vehicles.insert(*v);
        }
        Channel::Site(s) => {
            subs.sites.insert(s.clone());
        }
    }
    vec![snapshot(g, access, &channel)]
}
