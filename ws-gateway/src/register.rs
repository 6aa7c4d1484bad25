//! `PUT /api/vehicles/{vehicle}` and `GET /api/vehicles/{vehicle}`: the
//! vehicle register (which supplier runs which vehicle), control room only.
//! An entry is stored before it is live, so a restart never goes back on
//! what a caller was told.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ingest::Suppliers;
use model::{SupplierId, VehicleId};
use serde_json::{Value, json};

use crate::{Access, Auth, error};

#[derive(Clone)]
struct RegisterState {
    auth: Arc<Auth>,
    suppliers: Arc<Suppliers>,
    store: store::Store,
    commands: engine::Commands,
}

/// The register's routes, to be merged into the engine's router.
pub fn router(
    auth: Arc<Auth>,
    suppliers: Arc<Suppliers>,
    store: store::Store,
    commands: engine::Commands,
) -> Router {
    Router::new()
        .route("/api/vehicles/{vehicle}", get(get_vehicle).put(put_vehicle))
        .with_state(RegisterState {
            auth,
            suppliers,
            store,
            commands,
        })
}

/// The refusal (401, 403) for anyone but the control room.
fn refused(state: &RegisterState, headers: &HeaderMap, query: Option<&str>) -> Option<Response> {
    match state.auth.from_request(headers, query) {
        Err(r) => Some(r),
        Ok(Access::ControlRoom) => None,
        Ok(_) => Some(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the vehicle register is kept by the control room",
        )),
    }
}

fn record_json(r: &store::VehicleRecord) -> Value {
    json!({
        "vehicle": r.vehicle,
        "supplier": r.supplier,
        "source": r.source,
        "updated_at": model::format_ts(&r.updated_at),
    })
}

fn bad_vehicle(raw: &str, e: model::IdError) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        &format!("{raw:?} is not a registration: {e}"),
    )
}

async fn get_vehicle(
    State(state): State<RegisterState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    query: RawQuery,
) -> Response {
    if let Some(r) = refused(&state, &headers, query.0.as_deref()) {
        return r;
    }
    let vehicle = match VehicleId::parse(&raw) {
        Ok(v) => v,
        Err(e) => return bad_vehicle(&raw, e),
    };
    match state.store.vehicle(&vehicle).await {
        Ok(Some(r)) => axum::Json(record_json(&r)).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("vehicle {vehicle} is in no register entry"),
        ),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the vehicle register");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the store did not answer; retry",
            )
        }
    }
}

/// The supplier named by a `PUT` body, or why the body is refused.
fn supplier_of(body: &[u8], suppliers: &Suppliers) -> Result<SupplierId, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let raw = value
        .get("supplier")
        .ok_or_else(|| "expected {\"supplier\": \"..\"}".to_owned())?
        .as_str()
        .ok_or_else(|| "supplier must be a string".to_owned())?;
    let supplier = SupplierId::parse(raw).map_err(|e| format!("supplier: {e}"))?;
    if !suppliers.accepts(&supplier) {
        return Err(format!("supplier {supplier} is not in [[suppliers]]"));
    }
    Ok(supplier)
}

async fn put_vehicle(
    State(state): State<RegisterState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    query: RawQuery,
    body: Bytes,
) -> Response {
    if let Some(r) = refused(&state, &headers, query.0.as_deref()) {
        return r;
    }
    let vehicle = match VehicleId::parse(&raw) {
        Ok(v) => v,
        Err(e) => return bad_vehicle(&raw, e),
    };
    let supplier = match supplier_of(&body, &state.suppliers) {
        Ok(s) => s,
        Err(message) => return error(StatusCode::BAD_REQUEST, "bad_request", &message),
    };
    // The engine stores the entry before it is live.
    match state.commands.register_vehicle(vehicle, supplier).await {
        Ok(updated_at) => axum::Json(record_json(&store::VehicleRecord {
            vehicle,
            supplier,
            source: "api".into(),
            updated_at,
        }))
        .into_response(),
        Err(e) => {
            tracing::error!(%vehicle, error = %e, "a register entry was not carried out");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the store did not take the entry; nothing changed; retry",
            )
        }
    }
}
