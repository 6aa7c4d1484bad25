//! The store, as the engine's [`engine::Persist`]: a replaced fence or a
//! register entry is stored before the engine makes it live.

/// Keeps replaced fences in the store for the engine (durable before live).
pub(crate) struct StorePersist(pub(crate) store::Store);

impl engine::Persist for StorePersist {
    fn put_fence<'a>(
        &'a self,
        site: &'a model::SiteId,
        fence: String,
        at: chrono::DateTime<chrono::Utc>,
    ) -> engine::PersistFuture<'a> {
        Box::pin(async move {
            let record = store::SiteFenceRecord {
                site: site.clone(),
                fence,
                updated_at: at,
            };
            self.0
                .put_site_fence(&record)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn put_vehicle<'a>(
        &'a self,
        vehicle: model::VehicleId,
        supplier: model::SupplierId,
        at: chrono::DateTime<chrono::Utc>,
    ) -> engine::PersistFuture<'a> {
        Box::pin(async move {
            let record = store::VehicleRecord {
                vehicle,
                supplier,
                source: "api".into(),
                updated_at: at,
            };
            self.0.put_vehicle(&record).await.map_err(|e| e.to_string())
        })
    }
}
