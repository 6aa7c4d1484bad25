//! `GET /api/fleet` (control room): what the control room's search and
//! details need beside the live frames, which carry codes only — each
//! tracked vehicle's supplier, and each live move's reference and vehicle.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::{Access, Gateway, error};

pub(crate) fn routes() -> Router<Gateway> {
    Router::new().route("/api/fleet", get(fleet))
}

async fn fleet(State(g): State<Gateway>, access: Access) -> Response {
    if access != Access::ControlRoom {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the fleet is for the control room",
        );
    }
    let vehicles: Vec<serde_json::Value> = g
        .view
        .tracker()
        .snapshot()
        .into_iter()
        .map(|p| {
            let supplier = g
                .view
                .supplier_of(&p.vehicle)
                .or_else(|| g.suppliers.owner(&p.vehicle));
            json!({"vehicle": p.vehicle, "supplier": supplier})
        })
        .collect();
    let moves: Vec<serde_json::Value> = {
        g.view
            .move_views(None, chrono::Utc::now())
            .into_iter()
            .filter_map(|v| g.view.details(&v.move_id))
            .map(|d| {
                let supplier = d
                    .view
                    .vehicle
                    .and_then(|v| g.view.supplier_of(&v).or_else(|| g.suppliers.owner(&v)));
                json!({
                    "move_id": d.spec.id,
                    "reference": d.spec.reference,
                    "vehicle": d.view.vehicle,
                    "supplier": supplier,
                })
            })
            .collect()
    };
    axum::Json(json!({"vehicles": vehicles, "moves": moves})).into_response()
}
