//! The people-facing edge of movewatch: WebSocket fan-out with scoped
//! channels, REST, health and metrics endpoints, and the web pages.
//!
//! Fan-out: the pipeline hands [`Hub::publish`] the tracker's updates; each
//! frame is serialised once into shared bytes and routed by the hub's table
//! of who holds which channel (`fleet`, `site:{id}`, `vehicle:{v}`, checked
//! against the token's scope) straight into the bounded queue of each client
//! that may see it ([`outbox::Outbox`]), once per client; the queue keeps
//! only the latest position per vehicle while the client is slow, and a
//! separate writer task per client sends from it. Routing never waits on a
//! socket, and no client looks at frames it did not ask for. A client
//! lagging past a limit (30 s or 16,384 waiting frames) is closed with a
//! reason, one that leaves two pings (every 20 s) unanswered likewise, and
//! one stuck on a send for 10 s is dropped: no client ever delays another.

mod alerts;
mod auth;
mod fleet;
pub mod history;
mod hub;
pub mod live;
pub mod moves;
pub mod outbox;
mod pages;
pub mod register;
mod sites;
mod visibility;
mod ws;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use metrics_exporter_prometheus::PrometheusHandle;
use model::Site;
use serde_json::json;
use tokio::sync::watch;

pub use auth::{Access, Auth};
pub use hub::{Hub, RemoteFrame, RemoteKind, ScopedBatch, SendObserver, SendRecorder};

/// What `/readyz` checks.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// True while the engine's MQTT client is connected.
    pub broker: watch::Receiver<bool>,
    /// True while store writes succeed.
    pub store: watch::Receiver<bool>,
}

/// Everything the gateway's handlers share.
#[derive(Clone)]
pub struct Gateway {
    /// The engine's live state, read-only: positions, the partitions'
    /// published moves and alerts, the fences.
    pub view: engine::EngineView,
    /// Bookings and fence replacements go to the engine, which stores them
    /// and applies them in order; the gateway writes no live state itself.
    pub commands: engine::Commands,
    /// The fan-out hub.
    pub hub: Hub,
    /// Token checks.
    pub auth: Arc<Auth>,
    /// The loaded sites.
    pub sites: Arc<Vec<Site>>,
    /// The suppliers and the vehicle register (who runs a planned van).
    pub suppliers: Arc<ingest::Suppliers>,
    /// The store, for history and its health (read only).
    pub store: store::Store,
    /// This engine node's name (`[cluster] node`).
    pub node: String,
    /// For `/readyz`.
    pub readiness: Readiness,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
}

/// The gateway's routes.
pub fn router(gateway: Gateway) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/cluster", get(cluster))
        .route("/api/sites", get(sites::list))
        .route("/api/sites/{id}/fence", put(sites::put_fence))
        .route("/api/sites/{id}/incoming", get(sites::incoming))
        .route("/api/vehicles", get(api_vehicles))
        .route("/api/vehicles/{vehicle}/track", get(history::vehicle_track))
        .route("/api/moves/{id}", get(moves::get_move).put(moves::put_move))
        .route("/api/moves/{id}/track", get(history::move_track))
        .route("/ws", get(ws::upgrade))
        .merge(alerts::routes())
        .merge(fleet::routes())
        .merge(pages::routes())
        .with_state(gateway)
}

async fn readyz(State(g): State<Gateway>) -> Response {
    let broker = *g.readiness.broker.borrow();
    let store = *g.readiness.store.borrow() && g.store.ping().await.is_ok();
    let status = if broker && store {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({"ready": broker && store, "broker": broker, "store": store})),
    )
        .into_response()
}

/// `GET /api/cluster` (control room): this node and the partitions each
/// live node owns, as this node knows them (one machine: itself, owning
/// every partition; a cluster: from the nodes' heartbeats, docs/SCALE-OUT.md).
async fn cluster(State(g): State<Gateway>, access: Access) -> Response {
    if access != Access::ControlRoom {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the cluster's state is for the control room",
        );
    }
    let membership = g.view.membership();
    let nodes: Vec<serde_json::Value> = membership
        .nodes
        .iter()
        .map(|(id, partitions)| json!({"id": id, "partitions": partitions}))
        .collect();
    axum::Json(json!({
        "node": g.node,
        "nodes": nodes,
    }))
    .into_response()
}

async fn metrics(State(g): State<Gateway>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        g.metrics.render(),
    )
        .into_response()
}

/// JSON error bodies: `{"error": code, "message": ..}`.
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "message": message})),
    )
        .into_response()
}

async fn api_vehicles(State(g): State<Gateway>, access: Access) -> Response {
    match access {
        Access::ControlRoom => axum::Json(g.view.tracker().snapshot()).into_response(),
        _ => error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the vehicle list is for the control room",
        ),
    }
}
