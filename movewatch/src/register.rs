//! The vehicle register on start: `[[vehicles]]` and the `[fleet] files`
//! upserted into the store, then everything the store holds (entries set by
//! `PUT /api/vehicles/{vehicle}` and stored claims included) loaded into the
//! ingest's [`Suppliers`]; and the task that stores first-report claims.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, bail};
use ingest::Suppliers;
use model::config::Config;
use model::fleet::{RegisterEntry, load_fleet_csv};
use model::{SupplierId, VehicleId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Claims waiting to be stored.
const CLAIM_QUEUE: usize = 4096;

/// Reads `[[vehicles]]` and `[fleet] files`, writes them into the store
/// (replacing stored entries for the same vehicles: the config is what the
/// operator declared), and loads the whole stored register into
/// `suppliers`. Returns how many vehicles the register holds.
pub async fn load_register(
    config: &Config,
    store: &store::Store,
    suppliers: &Suppliers,
) -> anyhow::Result<usize> {
    let mut declared: HashMap<VehicleId, (SupplierId, String)> = HashMap::new();
    let mut add = |entry: RegisterEntry, origin: String| -> anyhow::Result<()> {
        if !config.suppliers.is_empty() && !config.suppliers.iter().any(|s| s.id == entry.supplier)
        {
            bail!(
                "{origin}: vehicle {} is registered to supplier {}, which is not in [[suppliers]]",
                entry.vehicle,
                entry.supplier
            );
        }
        if let Some((before, first)) = declared.get(&entry.vehicle)
            && *before != entry.supplier
        {
            bail!(
                "vehicle {} is registered to {before} in {first} and to {} in {origin}",
                entry.vehicle,
                entry.supplier
            );
        }
        declared.insert(entry.vehicle, (entry.supplier, origin));
        Ok(())
    };
    for (i, v) in config.vehicles.iter().enumerate() {
        add(
            RegisterEntry {
                vehicle: v.registration,
                supplier: v.supplier,
            },
            format!("config [[vehicles]] #{}", i + 1),
        )?;
    }
    for file in &config.fleet.files {
        let entries =
            load_fleet_csv(file).context("cannot load the vehicle register ([fleet] files)")?;
        for entry in entries {
            add(entry, format!("fleet file {}", file.display()))?;
        }
    }
    let now = chrono::Utc::now();
    for (vehicle, (supplier, origin)) in &declared {
        let record = store::VehicleRecord {
            vehicle: *vehicle,
            supplier: *supplier,
            source: if origin.starts_with("config") {
                "config"
            } else {
                "file"
            }
            .into(),
            updated_at: now,
        };
        store
            .put_vehicle(&record)
            .await
            .context("cannot write the vehicle register to the store")?;
    }
    let stored = store
        .vehicle_register()
        .await
        .context("cannot read the vehicle register from the store")?;
    for r in &stored {
        suppliers.register(RegisterEntry {
            vehicle: r.vehicle,
            supplier: r.supplier,
        });
    }
    Ok(stored.len())
}

/// Stores each first-report claim (kept if the vehicle got an entry in the
/// meantime); retried with a back-off while the store refuses.
pub fn spawn_claim_writer(store: store::Store, suppliers: &Arc<Suppliers>) -> JoinHandle<()> {
    let (tx, mut rx) = mpsc::channel::<RegisterEntry>(CLAIM_QUEUE);
    suppliers.log_claims_to(tx);
    tokio::spawn(async move {
        while let Some(entry) = rx.recv().await {
            let record = store::VehicleRecord {
                vehicle: entry.vehicle,
                supplier: entry.supplier,
                source: "claim".into(),
                updated_at: chrono::Utc::now(),
            };
            let mut wait = std::time::Duration::from_millis(100);
            while let Err(e) = store.claim_vehicle(&record).await {
                tracing::warn!(vehicle = %entry.vehicle, error = %e, "cannot store a vehicle claim; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(10));
            }
        }
    })
}
