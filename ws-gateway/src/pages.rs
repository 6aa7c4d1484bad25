//! The web pages and their data, embedded in the binary so they work with no
//! internet (no CDN, no web fonts, no map tiles: the basemap is our own
//! GeoJSON, drawn on a canvas by the pages).
//!
//! - `/control`: the control room (every vehicle and site, alerts, a
//!   vehicle's move and recent track); `/` redirects there.
//! - `/site/{id}`: a site's incoming board. The page itself holds no data:
//!   it asks `GET /api/sites/{id}/incoming` and the `site:{id}` channel,
//!   which apply the token's scope.

use axum::Router;
use axum::extract::RawQuery;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::Gateway;

const CONTROL_HTML: &str = include_str!("../../web/control.html");
const BOARD_HTML: &str = include_str!("../../web/board.html");
const APP_JS: &str = include_str!("../../web/app.js");
const BOARD_JS: &str = include_str!("../../web/board.js");
const COMMON_JS: &str = include_str!("../../web/common.js");
const MAP_JS: &str = include_str!("../../web/map.js");
const STYLE_CSS: &str = include_str!("../../web/style.css");
const BASEMAP: &str = include_str!("../../data/england-wales.geojson");

/// The pages' Content-Security-Policy: everything from this origin only.
const CSP: &str = "default-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

fn page(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
}

/// `/` → `/control`, keeping the query (a `?token=` the page then hides).
async fn root(RawQuery(query): RawQuery) -> Response {
    let location = match query {
        Some(q) if !q.is_empty() => format!("/control?{q}"),
        _ => "/control".to_owned(),
    };
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
    )
        .into_response()
}

pub(crate) fn routes() -> Router<Gateway> {
    const HTML: &str = "text/html; charset=utf-8";
    const JS: &str = "text/javascript; charset=utf-8";
    Router::new()
        .route("/", get(root))
        .route("/control", get(|| async { page(HTML, CONTROL_HTML) }))
        .route("/site/{id}", get(|| async { page(HTML, BOARD_HTML) }))
        .route("/app.js", get(|| async { page(JS, APP_JS) }))
        .route("/board.js", get(|| async { page(JS, BOARD_JS) }))
        .route("/common.js", get(|| async { page(JS, COMMON_JS) }))
        .route("/map.js", get(|| async { page(JS, MAP_JS) }))
        .route(
            "/style.css",
            get(|| async { page("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route(
            "/data/basemap.geojson",
            get(|| async { page("application/geo+json", BASEMAP) }),
        )
}
