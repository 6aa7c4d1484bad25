//! `POST /tracks`: the BaSM-compatible HTTP intake.
//!
//! `X-API-Key` names the supplier; the body is a JSON array of position
//! points. The reply is sent only after the store commits the batch:
//! 202 `{"accepted": n, "rejected": [{"index": i, "reason": ".."}]}`,
//! 401 for a missing or wrong key, 413 over 256 KiB, 400 for a body that is
//! not a JSON array, 503 if the store does not commit in time.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use model::{CommitToken, IngestBatch, MAX_PAYLOAD_BYTES, Reason};
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::{Suppliers, batch_from_http};

/// How long a request waits for its commit before answering 503.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
struct TracksState {
    suppliers: Arc<Suppliers>,
    out: mpsc::Sender<IngestBatch>,
}

#[derive(Serialize)]
struct RejectedItem {
    index: usize,
    reason: &'static str,
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "message": message})),
    )
        .into_response()
}

/// The `/tracks` route, to be merged into the engine's HTTP router.
pub fn tracks_router(suppliers: Arc<Suppliers>, out: mpsc::Sender<IngestBatch>) -> Router {
    Router::new()
        .route("/tracks", post(post_tracks))
        // axum answers 413 itself past this limit.
        .layer(DefaultBodyLimit::max(MAX_PAYLOAD_BYTES))
        .with_state(TracksState { suppliers, out })
}

async fn post_tracks(
    State(state): State<TracksState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "X-API-Key header is required",
        );
    };
    let Some(supplier) = state.suppliers.by_api_key(key) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "X-API-Key is not valid",
        );
    };
    let (commit, committed) = CommitToken::new();
    let (batch, indices, rejections) =
        match batch_from_http(&body, supplier, &state.suppliers, commit) {
            Ok(decoded) => decoded,
            Err(e) if e.reason == Reason::TooLarge => {
                return error(StatusCode::PAYLOAD_TOO_LARGE, e.reason.as_str(), &e.detail);
            }
            Err(e) => return error(StatusCode::BAD_REQUEST, e.reason.as_str(), &e.detail),
        };
    if state.out.send(batch).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the engine is shutting down",
        );
    }
    let outcome = match tokio::time::timeout(COMMIT_TIMEOUT, committed).await {
        Ok(Ok(outcome)) => outcome,
        _ => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the store did not commit in time; retry later",
            );
        }
    };
    let mut rejected: Vec<RejectedItem> = rejections
        .iter()
        .map(|r| RejectedItem {
            index: r.index,
            reason: r.reason.as_str(),
        })
        .collect();
    rejected.extend(outcome.duplicates.iter().map(|&i| RejectedItem {
        index: indices[i],
        reason: Reason::Duplicate.as_str(),
    }));
    rejected.sort_by_key(|r| r.index);
    let accepted = indices.len() - outcome.duplicates.len();
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"accepted": accepted, "rejected": rejected})),
    )
        .into_response()
}
