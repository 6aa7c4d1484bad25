//! Site fences and arrivals: circles and polygons around prisons, courts and
//! police stations, indexed by a uniform grid (point checks) and an R-tree
//! (box queries), and a per-(vehicle, site) state
//! machine that turns GPS fixes into `Enter`, `Exit` and `PassThrough`
//! transitions with dwell and hysteresis (issue #5; rules in docs/GEOFENCE.md).
//!
//! - [`Fence`]: one circle (haversine) or polygon (local metric projection),
//!   with signed distance to its boundary in metres.
//! - [`FenceSet`]: every site with its fence, loaded all-or-nothing from the
//!   sites CSV and GeoJSON ([`FenceSet::load`]), queried per point
//!   ([`FenceSet::containing`]), one fence replaceable at run time.
//! - [`GeofenceEngine`]: [`GeofenceEngine::observe`] a [`Fix`], get
//!   [`Transition`]s; [`GeofenceEngine::inside`] and [`GeofenceEngine::restore`].

mod engine;
mod fence;
mod geojson;
mod grid;
mod set;
mod stored;

pub use engine::{EngineConfig, Fix, GeofenceEngine, Transition, TransitionKind};
pub use fence::{
    EARTH_RADIUS_M, Fence, FenceError, MAX_POLYGON_EXTENT_M, MAX_RADIUS_M, haversine_m,
};
pub use geojson::{
    FeatureProblem, FenceFeature, GeoJsonError, SERVICE_AREA, parse_fence_geometry,
    parse_fences_geojson,
};
pub use set::{FenceSet, LoadError, SiteFence};
pub use stored::{StoredFenceError, fence_from_json, fence_to_json};
