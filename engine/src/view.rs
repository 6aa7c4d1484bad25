//! The read view the gateway answers from: the shared tracker (positions,
//! written only by each vehicle's own partition), each partition's last
//! published [`BookView`], and the fences as last replaced. Reading never
//! waits on a partition.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use geofence::{FenceSet, SiteFence};
use model::wire::{AlertView, MoveView};
use model::{MoveId, SiteId, SupplierId, VehicleId};
use tokio::sync::watch;
use tracker::Tracker;
use tracker::moves::{BookView, MoveDetails};

use crate::cluster::Membership;

/// A read-only view of the engine's live state.
#[derive(Clone, Debug)]
pub struct EngineView {
    tracker: Arc<Tracker>,
    books: Vec<watch::Receiver<Arc<BookView>>>,
    fences: watch::Receiver<Arc<FenceSet>>,
    membership: watch::Receiver<Arc<Membership>>,
}

impl EngineView {
    pub(crate) fn new(
        tracker: Arc<Tracker>,
        books: Vec<watch::Receiver<Arc<BookView>>>,
        fences: watch::Receiver<Arc<FenceSet>>,
        membership: watch::Receiver<Arc<Membership>>,
    ) -> Self {
        EngineView {
            tracker,
            books,
            fences,
            membership,
        }
    }

    /// Which node owns which partitions now.
    pub fn membership(&self) -> Arc<Membership> {
        self.membership.borrow().clone()
    }

    /// How many partitions publish into this view.
    pub fn partitions(&self) -> usize {
        self.books.len()
    }

    /// Live positions (read-only use).
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// The fences now.
    pub fn fences(&self) -> Arc<FenceSet> {
        self.fences.borrow().clone()
    }

    /// One site with its fence now.
    pub fn fence_of(&self, site: &SiteId) -> Option<SiteFence> {
        self.fences.borrow().get(site).cloned()
    }

    fn each(&self) -> impl Iterator<Item = Arc<BookView>> + '_ {
        self.books.iter().map(|b| b.borrow().clone())
    }

    /// A move's live view (from the partition that owns it).
    pub fn details(&self, id: &MoveId) -> Option<MoveDetails> {
        self.each().find_map(|b| b.details(id).cloned())
    }

    /// Every open move (`site` None), or a site's day; sorted by move id.
    pub fn move_views(&self, site: Option<&SiteId>, now: DateTime<Utc>) -> Vec<MoveView> {
        let mut views: Vec<MoveView> = self.each().flat_map(|b| b.move_views(site, now)).collect();
        views.sort_by(|a, b| a.move_id.cmp(&b.move_id));
        views.dedup_by(|a, b| a.move_id == b.move_id);
        views
    }

    /// The moves a vehicle carries.
    pub fn move_ids_of(&self, vehicle: &VehicleId) -> Vec<MoveId> {
        let mut ids: Vec<MoveId> = self.each().flat_map(|b| b.move_ids_of(vehicle)).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// The site channels that may see a vehicle now.
    pub fn sites_seeing(&self, vehicle: &VehicleId, now: DateTime<Utc>) -> Vec<SiteId> {
        let mut sites = Vec::new();
        for b in self.each() {
            b.sites_seeing(vehicle, now, &mut sites);
        }
        sites
    }

    /// The vehicles a site channel may see now, sorted.
    pub fn vehicles_seen_by(&self, site: &SiteId, now: DateTime<Utc>) -> Vec<VehicleId> {
        let mut out = Vec::new();
        for b in self.each() {
            b.vehicles_seen_by(site, now, &mut out);
        }
        out.sort();
        out.dedup();
        out
    }

    /// The span in which any of `sites` may see `vehicle`'s track now.
    pub fn site_window(
        &self,
        vehicle: &VehicleId,
        sites: &[SiteId],
        now: DateTime<Utc>,
    ) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let mut window = None;
        for b in self.each() {
            b.site_window(vehicle, sites, now, &mut window);
        }
        window
    }

    /// Recent alerts, oldest first: all (`site` None) or those a site may see.
    pub fn recent_alerts(&self, site: Option<&SiteId>) -> Vec<AlertView> {
        let mut alerts: Vec<AlertView> = self
            .each()
            .flat_map(|b| b.recent_alerts(site).cloned().collect::<Vec<_>>())
            .collect();
        // RFC 3339 UTC strings of one format sort as their times.
        alerts.sort_by(|a, b| a.ts.cmp(&b.ts));
        alerts
    }

    /// The supplier reporting a vehicle, if it is live.
    pub fn supplier_of(&self, vehicle: &VehicleId) -> Option<SupplierId> {
        self.tracker.supplier_of(vehicle)
    }
}
