//! One WebSocket client: subscriptions, snapshot first, then live frames.

use std::collections::HashSet;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use model::VehicleId;
use model::wire::{Channel, ClientMessage, ErrorView, Frame, PositionView, SnapshotView};
use tokio::sync::broadcast::error::RecvError;

use crate::hub::SharedFrame;
use crate::{Access, Gateway};

/// The largest message a client may send.
const MAX_CLIENT_MESSAGE: usize = 16 * 1024;

pub(crate) async fn upgrade(
    State(g): State<Gateway>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    match g.auth.from_request(&headers, query.as_deref()) {
        Err(reply) => reply,
        Ok(access) => ws
            .max_message_size(MAX_CLIENT_MESSAGE)
            .on_upgrade(move |socket| client(socket, g, access)),
    }
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
}

fn text(frame: &Frame) -> Message {
    Message::Text(Utf8Bytes::from(frame.to_json()))
}

fn error_frame(code: &'static str, message: String) -> Message {
    text(&Frame::Error(ErrorView { code, message }))
}

fn snapshot(g: &Gateway, access: &Access, channel: &Channel) -> Message {
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

async fn client(socket: WebSocket, g: Gateway, access: Access) {
    let _gauge = ClientGauge::new();
    let (mut sink, mut stream) = socket.split();
    let mut live = g.hub.subscribe();
    let mut subs = Subscriptions::default();
    loop {
        tokio::select! {
            incoming = stream.next() => {
                let reply = match incoming {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Text(t))) => handle_client_message(&g, &access, &mut subs, t.as_str()),
                    Some(Ok(Message::Binary(_))) => vec![error_frame("bad_request", "send JSON text frames".into())],
                    Some(Ok(_)) => vec![],
                };
                for message in reply {
                    if sink.send(message).await.is_err() {
                        return;
                    }
                }
            }
            frame = live.recv(), if !subs.is_empty() => {
                let message = match frame {
                    Ok(frame) if subs.wants(&frame, &access) => Message::Text(frame.text.clone()),
                    Ok(_) => continue,
                    Err(RecvError::Lagged(missed)) => {
                        // This client fell behind: skip to the present with a fresh snapshot.
                        tracing::debug!(missed, "slow WebSocket client resynchronised");
                        metrics::counter!("movewatch_ws_resyncs_total").increment(1);
                        let channel = if subs.fleet { Channel::Fleet } else if let Some(v) = subs.vehicles.iter().next() { Channel::Vehicle(*v) } else if let Some(s) = subs.sites.iter().next() { Channel::Site(s.clone()) } else { continue };
                        snapshot(&g, &access, &channel)
                    }
                    Err(RecvError::Closed) => {
                        let _ = sink.send(Message::Close(Some(CloseFrame { code: 1001, reason: "engine shutting down".into() }))).await;
                        return;
                    }
                };
                if sink.send(message).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn handle_client_message(
    g: &Gateway,
    access: &Access,
    subs: &mut Subscriptions,
    raw: &str,
) -> Vec<Message> {
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
