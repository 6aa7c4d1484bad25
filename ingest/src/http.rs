//! `POST /tracks`: the BaSM-compatible HTTP intake.
//!
//! `X-API-Key` names the supplier; the body is a JSON array of position
//! points. The reply is sent only after the store commits the batch:
//! 202 `{"accepted": n, "rejected": [{"index": i, "reason": ".."}]}`,
//! 401 for a missing or wrong key, 413 over 256 KiB, 400 for a body that is
//! not a JSON array, 429 with `Retry-After` past the supplier's request rate
//! (`[ingest] tracks_per_minute`, `tracks_burst`), 503 if the store does not
//! commit in time or the engine is shutting down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use model::{CommitToken, IngestBatch, MAX_PAYLOAD_BYTES, Reason, SupplierId};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::{Suppliers, batch_from_http};

/// How long a request waits for its commit before answering 503.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Seconds a client is told to wait (`Retry-After`) while the engine shuts down.
const SHUTDOWN_RETRY_AFTER: u64 = 5;

/// A request rate per supplier: a token bucket of `burst` requests refilled
/// at `per_minute` requests a minute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Requests per minute, sustained; 0: unlimited.
    pub per_minute: u32,
    /// Requests at once (the bucket's size), at least 1.
    pub burst: u32,
}

impl RateLimit {
    /// From `[ingest] tracks_per_minute` and `tracks_burst`.
    pub fn from_config(c: &model::config::IngestConfig) -> RateLimit {
        RateLimit {
            per_minute: c.tracks_per_minute,
            burst: c.tracks_burst,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One token bucket per supplier. The lock is held only to take a token,
/// never across an await.
#[derive(Debug)]
struct Buckets {
    limit: RateLimit,
    by_supplier: Mutex<HashMap<SupplierId, Bucket>>,
}

impl Buckets {
    /// Takes a token for `supplier` at `now`; `Err(wait)` when there is none,
    /// with how long until the next one.
    fn take(&self, supplier: SupplierId, now: Instant) -> Result<(), Duration> {
        if self.limit.per_minute == 0 {
            return Ok(());
        }
        let burst = f64::from(self.limit.burst.max(1));
        let per_second = f64::from(self.limit.per_minute) / 60.0;
        let mut buckets = self
            .by_supplier
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let bucket = buckets.entry(supplier).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * per_second;
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }
}

#[derive(Clone)]
struct TracksState {
    suppliers: Arc<Suppliers>,
    out: mpsc::Sender<IngestBatch>,
    buckets: Arc<Buckets>,
    stopping: watch::Receiver<bool>,
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

fn with_retry_after(mut reply: Response, wait: Duration) -> Response {
    // Whole seconds, rounded up: a client retrying on time finds a token.
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if let Ok(v) = axum::http::HeaderValue::from_str(&secs.max(1).to_string()) {
        reply
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, v);
    }
    reply
}

/// The `/tracks` route, to be merged into the engine's HTTP router. Each
/// supplier's requests are limited by `limit`; once `stopping` turns true
/// (graceful shutdown) new requests are answered 503.
pub fn tracks_router(
    suppliers: Arc<Suppliers>,
    out: mpsc::Sender<IngestBatch>,
    limit: RateLimit,
    stopping: watch::Receiver<bool>,
) -> Router {
    Router::new()
        .route("/tracks", post(post_tracks))
        // Past this limit the body extractor fails, and `post_tracks`
        // answers 413 with a JSON body (counted as `too_large`).
        .layer(DefaultBodyLimit::max(MAX_PAYLOAD_BYTES))
        .with_state(TracksState {
            suppliers,
            out,
            buckets: Arc::new(Buckets {
                limit,
                by_supplier: Mutex::new(HashMap::new()),
            }),
            stopping,
        })
}

fn shutting_down() -> Response {
    with_retry_after(
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the engine is shutting down; retry later",
        ),
        Duration::from_secs(SHUTDOWN_RETRY_AFTER),
    )
}

async fn post_tracks(
    State(state): State<TracksState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
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
    if *state.stopping.borrow() {
        return shutting_down();
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            metrics::counter!("movewatch_ingest_rejected_total", "reason" => Reason::TooLarge.as_str())
                .increment(1);
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                Reason::TooLarge.as_str(),
                &format!("the body is over {MAX_PAYLOAD_BYTES} bytes"),
            );
        }
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("cannot read the body: {rejection}"),
            );
        }
    };
    if let Err(wait) = state.buckets.take(supplier, Instant::now()) {
        metrics::counter!("movewatch_tracks_rate_limited_total").increment(1);
        return with_retry_after(
            error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many /tracks requests for this supplier; retry after the Retry-After seconds",
            ),
            wait,
        );
    }
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
        return shutting_down();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_the_rate() {
        let buckets = Buckets {
            limit: RateLimit {
                per_minute: 60,
                burst: 3,
            },
            by_supplier: Mutex::new(HashMap::new()),
        };
        let (a, b): (SupplierId, SupplierId) =
            ("geoamey".parse().unwrap(), "serco".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(buckets.take(a, t0).is_ok());
        }
        let wait = buckets.take(a, t0).unwrap_err();
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::from_millis(900),
            "{wait:?}"
        );
        // Another supplier has its own bucket.
        assert!(buckets.take(b, t0).is_ok());
        // One token a second.
        assert!(buckets.take(a, t0 + Duration::from_millis(1001)).is_ok());
        assert!(buckets.take(a, t0 + Duration::from_millis(1002)).is_err());
    }

    #[test]
    fn zero_per_minute_is_unlimited() {
        let buckets = Buckets {
            limit: RateLimit {
                per_minute: 0,
                burst: 0,
            },
            by_supplier: Mutex::new(HashMap::new()),
        };
        let a: SupplierId = "geoamey".parse().unwrap();
        for _ in 0..10_000 {
            assert!(buckets.take(a, Instant::now()).is_ok());
        }
    }
}
