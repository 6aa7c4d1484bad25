//! What the engine's partitions rebuild from on start, read back from the
//! store: live positions, fence crossings, open moves, the alerts already
//! raised, and the ETA model taught the stored arrivals and their fixes.

use anyhow::Context;
use model::Site;
use tracker::eta::EtaModel;

/// Alerts read back on start: those of the last day, at most this many.
const RESTORED_ALERTS: i64 = 10_000;
/// How far back those alerts go, hours.
const RESTORED_ALERTS_H: i64 = 24;

/// Arrivals read back for their moves' times (newest first).
const RESTORED_ARRIVALS: i64 = 5_000;

/// Arrivals the ETA model learns from on start.
const ETA_HISTORY: i64 = 20_000;

/// Where each site is, for the ETA's learning on start.
type SitePositions = std::collections::HashMap<model::SiteId, (f64, f64)>;

fn site_positions(sites: &[Site]) -> SitePositions {
    sites
        .iter()
        .map(|s| (s.id.clone(), (s.lat, s.lon)))
        .collect()
}

/// An ETA model taught the stored arrivals (routes between known sites).
fn learned_eta_model(at: &SitePositions, arrivals: &[store::Arrival]) -> EtaModel {
    let mut model = EtaModel::default();
    // Oldest first, as they happened.
    for a in arrivals.iter().rev() {
        if let (Some(o), Some(d)) = (at.get(&a.from_location), at.get(&a.site)) {
            let direct = tracker::haversine_m(o.0, o.1, d.0, d.1);
            model.learn_trip(
                &a.from_location,
                &a.site,
                direct,
                a.distance_m,
                a.departed_at,
                a.arrived_at,
            );
        }
    }
    model
}

/// Arrivals whose stored fixes teach the ETA's curves on start.
const ETA_TRACK_HISTORY: usize = 1_000;

/// Teaches the ETA model's curves (time to go against distance to go) the
/// stored fixes of the latest [`ETA_TRACK_HISTORY`] arrivals, oldest first.
async fn learn_stored_tracks(
    model: &mut EtaModel,
    store: &store::Store,
    at: &SitePositions,
    arrivals: &[store::Arrival],
) -> anyhow::Result<()> {
    for a in arrivals.iter().take(ETA_TRACK_HISTORY).rev() {
        let (Some(o), Some(d)) = (at.get(&a.from_location), at.get(&a.site)) else {
            continue;
        };
        let fixes = store
            .track(&a.vehicle, a.departed_at, a.arrived_at, 20_000)
            .await
            .context("cannot read an arrival's fixes for the ETA model")?;
        let track: Vec<_> = fixes
            .iter()
            .filter(|p| !p.flags.late && !p.flags.bad_fix)
            .map(|p| (p.ts, tracker::haversine_m(p.lat, p.lon, d.0, d.1)))
            .collect();
        let total = tracker::haversine_m(o.0, o.1, d.0, d.1);
        model.learn_fixes(&a.from_location, &a.site, total, &track, a.arrived_at);
    }
    Ok(())
}

/// What recovery read back from the store: the partitions' state and the
/// ETA model taught the stored arrivals.
pub(crate) struct Recovery {
    pub(crate) state: engine::Recovered,
    pub(crate) eta: EtaModel,
}

/// Reads back what the partitions rebuild from (each takes its share): live
/// positions, fence crossings, open moves, the alerts already raised (so a
/// restart raises none twice), and the arrivals the ETA model learns from.
pub(crate) async fn recover(store: &store::Store, sites: &[Site]) -> anyhow::Result<Recovery> {
    let arrivals = store
        .recent_arrivals(ETA_HISTORY)
        .await
        .context("cannot read arrivals for the ETA model")?;
    let at = site_positions(sites);
    let mut eta = learned_eta_model(&at, &arrivals);
    learn_stored_tracks(&mut eta, store, &at, &arrivals).await?;
    Ok(Recovery {
        state: recover_state(store).await?,
        eta,
    })
}

/// The partitions' share of [`recover`] (a cluster node reads it again for
/// each partition it takes, and for those it follows).
pub(crate) async fn recover_state(store: &store::Store) -> anyhow::Result<engine::Recovered> {
    let positions = store
        .latest_positions()
        .await
        .context("cannot read live state back from the store")?;
    // Vehicles inside a site when the engine stopped are inside it still:
    // their next fix there is no new arrival.
    let crossings = store
        .latest_fence_transitions()
        .await
        .context("cannot read fence state back from the store")?;
    let mut open_moves = Vec::new();
    for record in store
        .open_moves()
        .await
        .context("cannot read the open moves back from the store")?
    {
        match engine::spec_of(&record) {
            Some(spec) => open_moves.push(spec),
            None => {
                tracing::warn!(move_id = %record.id, status = %record.status, "stored move with an unknown status skipped")
            }
        }
    }
    let now = chrono::Utc::now();
    let alerts = store
        .alerts_since(
            now - chrono::Duration::hours(RESTORED_ALERTS_H),
            RESTORED_ALERTS,
        )
        .await
        .context("cannot read the alerts already raised back from the store")?;
    // The open moves' departure and arrival times (an arrived move stays
    // on its site's day for a while).
    let arrivals = store
        .recent_arrivals(RESTORED_ARRIVALS)
        .await
        .context("cannot read the latest arrivals back from the store")?;
    Ok(engine::Recovered {
        positions,
        crossings,
        open_moves,
        alerts,
        arrivals,
    })
}
