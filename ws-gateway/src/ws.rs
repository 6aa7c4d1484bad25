//! One WebSocket client: subscriptions, snapshot first, then live frames.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use model::wire::{Channel, ClientMessage, ErrorView, Frame, PositionView, SnapshotView};

use crate::hub::{ClientRoutes, LatencyMark, SendRecorder};
use crate::outbox::{NO_PONG, Next, Outbox, SHUTTING_DOWN, TOO_LARGE};
use crate::{Access, Gateway};

/// The largest message a client may send.
const MAX_CLIENT_MESSAGE: usize = 16 * 1024;
/// The read buffer each connection starts with (it grows for a larger message).
const READ_BUFFER: usize = 4 * 1024;

pub(crate) async fn upgrade(
    State(g): State<Gateway>,
    ws: WebSocketUpgrade,
    access: Access,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Response {
    // Benchmarks only (none is installed in service): watches this client's sends.
    let recorder = g.hub.send_recorder(peer.map(|Extension(ConnectInfo(a))| a));
    // The pages send their token as a subprotocol beside this one; the
    // browser needs the server to select one it offered.
    ws.protocols([crate::auth::PAGE_PROTOCOL])
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        // Clients send only small subscriptions: the 128 KiB default read
        // buffer was most of a site client's memory.
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| client(socket, g, access, recorder))
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

fn text(frame: &Frame) -> Utf8Bytes {
    Utf8Bytes::from(frame.to_json())
}

fn error_frame(code: &'static str, message: String) -> Utf8Bytes {
    text(&Frame::Error(ErrorView { code, message }))
}

fn snapshot(g: &Gateway, access: &Access, channel: &Channel) -> Utf8Bytes {
    let now = chrono::Utc::now();
    // Site channels list only the vehicles their moves make visible (below).
    let visible =
        |v: &PositionView| !matches!(access, Access::Site(_)) && g.can_see(access, &v.vehicle, now);
    let (mut alerts, mut moves) = (Vec::new(), Vec::new());
    let vehicles = match channel {
        Channel::Fleet => {
            let vehicles = g
                .view
                .tracker()
                .snapshot()
                .into_iter()
                .filter(visible)
                .collect();
            if *access == Access::ControlRoom {
                alerts = g.view.recent_alerts(None);
                moves = g.view.move_views(None, now);
            }
            vehicles
        }
        Channel::Vehicle(id) => g
            .view
            .tracker()
            .get(id)
            .map(|s| s.view())
            .into_iter()
            .filter(visible)
            .collect(),
        Channel::Site(site) => {
            alerts = g.view.recent_alerts(Some(site));
            moves = g.view.move_views(Some(site), now);
            let seen = g.view.vehicles_seen_by(site, now);
            seen.iter()
                .filter_map(|v| g.view.tracker().get(v).map(|s| s.view()))
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

/// Whether a read failed because the client's message or frame was over
/// [`MAX_CLIENT_MESSAGE`].
fn too_large(e: axum::Error) -> bool {
    matches!(
        e.into_inner().downcast_ref::<tungstenite::Error>(),
        Some(tungstenite::Error::Capacity(_))
    )
}

/// How often the server pings; two unanswered pings close the connection.
pub(crate) const PING_EVERY: Duration = Duration::from_secs(20);
/// The most frames written at once before a flush.
const WRITE_BATCH: usize = 64;
/// How long one write may take before the client is taken as stuck and dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The most channels one client may hold (bounds a client's memory).
const MAX_SUBSCRIPTIONS: usize = 256;

/// One client: this task reads the client's messages (subscriptions, which
/// the hub then routes frames by, straight into the client's [`Outbox`]);
/// the writer task sends from the outbox, pings, and closes with a reason.
/// Nothing here ever waits on the socket's sending side.
async fn client(socket: WebSocket, g: Gateway, access: Access, recorder: Option<SendRecorder>) {
    let _gauge = ClientGauge::new();
    let (sink, mut stream) = socket.split();
    let outbox = Outbox::default();
    let missed_pongs = Arc::new(AtomicU32::new(0));
    let mut writer = tokio::spawn(write_loop(
        sink,
        outbox.clone(),
        missed_pongs.clone(),
        recorder,
    ));
    // Leaves every channel when this task ends.
    let mut routes = g.hub.join(outbox.clone(), access.clone());
    let mut closing = g.hub.closing();
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
                match incoming {
                    // Over the size limit: closed with 1009 and a reason, not a bare TCP close.
                    Some(Err(e)) => {
                        if too_large(e) {
                            outbox.close(TOO_LARGE);
                            let _ = tokio::time::timeout(SEND_TIMEOUT, &mut writer).await;
                            return;
                        }
                        break;
                    }
                    None | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Text(t))) => {
                        handle_client_message(&g, &access, &mut routes, &outbox, t.as_str());
                    }
                    Some(Ok(Message::Binary(_))) => {
                        outbox.push(error_frame("bad_request", "send JSON text frames".into()), None, None, Instant::now());
                    }
                    Some(Ok(Message::Pong(_))) => missed_pongs.store(0, Ordering::Relaxed),
                    Some(Ok(_)) => {}
                }
            }
        }
    }
    writer.abort();
}

/// Sends what the outbox holds, pings every [`PING_EVERY`], and closes with
/// a reason when asked (too slow, no pong, shutting down). Ends when the
/// connection does. `recorder` (benchmarks) gets each marked frame's latency.
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    outbox: Outbox,
    missed_pongs: Arc<AtomicU32>,
    mut recorder: Option<SendRecorder>,
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
        // Frames already waiting go in the same write: one flush (one
        // system call) for a burst instead of one per frame.
        let mut marks: Vec<Arc<LatencyMark>> = mark.into_iter().collect();
        let write = async {
            sink.feed(message).await?;
            for _ in 1..WRITE_BATCH {
                match outbox.pop() {
                    Next::Frame(text, latency) => {
                        marks.extend(latency);
                        sink.feed(Message::Text(text)).await?;
                    }
                    // A close is taken again on the next turn.
                    Next::Close(_) | Next::Empty => break,
                }
            }
            sink.flush().await
        };
        match tokio::time::timeout(SEND_TIMEOUT, write).await {
            Ok(Ok(())) => {
                for mark in marks {
                    mark.sent();
                    if let Some(record) = recorder.as_mut() {
                        record(mark.elapsed());
                    }
                }
            }
            // Gone, or stuck for SEND_TIMEOUT: nothing more can be said to it.
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// Subscribes or unsubscribes (the snapshot first, then the channel's live
/// frames), or queues the error that says why not.
fn handle_client_message(
    g: &Gateway,
    access: &Access,
    routes: &mut ClientRoutes,
    outbox: &Outbox,
    raw: &str,
) {
    let reply = |text: Utf8Bytes| {
        outbox.push(text, None, None, Instant::now());
    };
    let message: ClientMessage = match serde_json::from_str(raw) {
        Ok(m) => m,
        Err(e) => {
            return reply(error_frame(
                "bad_request",
                format!("expected {{\"type\":\"subscribe\"|\"unsubscribe\",\"channel\":..}}: {e}"),
            ));
        }
    };
    let (subscribe, name) = match &message {
        ClientMessage::Subscribe { channel } => (true, channel),
        ClientMessage::Unsubscribe { channel } => (false, channel),
    };
    let Some(channel) = Channel::parse(name) else {
        return reply(error_frame(
            "unknown_channel",
            format!("no channel {name:?}: use fleet, site:{{id}} or vehicle:{{registration}}"),
        ));
    };
    if let Channel::Site(id) = &channel
        && !g.sites.iter().any(|s| s.id == *id)
    {
        // Checked after scope for site tokens, so a probe learns nothing about other sites.
        if !access.may_subscribe(&channel) {
            return reply(error_frame(
                "forbidden",
                format!("this token may not see {channel}"),
            ));
        }
        return reply(error_frame("unknown_channel", format!("no site {id}")));
    }
    if !access.may_subscribe(&channel) {
        return reply(error_frame(
            "forbidden",
            format!("this token may not see {channel}"),
        ));
    }
    // A supplier's vehicle channel is for a vehicle it reports (as the
    // vehicle track route): another supplier's, or one nobody has reported
    // yet, is forbidden alike, so a probe learns nothing.
    if subscribe
        && let (Access::Supplier(supplier), Channel::Vehicle(vehicle)) = (access, &channel)
        && !g.can_see(&Access::Supplier(*supplier), vehicle, chrono::Utc::now())
    {
        return reply(error_frame(
            "forbidden",
            format!("{channel} is not one of this supplier's vehicles"),
        ));
    }
    if !subscribe {
        routes.unsubscribe(&channel);
        return;
    }
    if routes.channels().len() >= MAX_SUBSCRIPTIONS {
        return reply(error_frame(
            "bad_request",
            format!("at most {MAX_SUBSCRIPTIONS} channels per connection"),
        ));
    }
    // The snapshot's place is kept before the channel's frames are routed
    // here, and it is made after: nothing of the channel is missed, and
    // nothing of it goes out before the snapshot.
    let slot = routes.subscribe(channel.clone(), Instant::now());
    slot.fill(snapshot(g, access, &channel));
}
