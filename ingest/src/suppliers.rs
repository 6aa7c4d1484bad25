//! Which suppliers exist, their keys, and the vehicle register: which
//! supplier runs which vehicle.

use std::collections::HashMap;
use std::sync::OnceLock;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use model::config::SupplierConfig;
use model::fleet::RegisterEntry;
use model::{Reason, SupplierId, VehicleId};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;

/// The configured suppliers and the vehicle register.
///
/// With no `[[suppliers]]` configured any supplier named by a topic is
/// accepted (a development convenience, logged at start). The register is
/// strict either way: a report for a vehicle in no register entry is
/// `unknown_vehicle`, unless `[fleet] claim_on_first_report` lets the first
/// report claim it.
#[derive(Debug)]
pub struct Suppliers {
    known: HashMap<SupplierId, Option<String>>,
    owners: DashMap<VehicleId, SupplierId>,
    claim_on_first_report: bool,
    /// Where new claims go to be stored (set once the store is up).
    claims: OnceLock<mpsc::Sender<RegisterEntry>>,
}

impl Suppliers {
    /// From the `[[suppliers]]` of the config, with an empty, strict register.
    pub fn from_config(configs: &[SupplierConfig]) -> Self {
        Suppliers {
            known: configs.iter().map(|c| (c.id, c.api_key.clone())).collect(),
            owners: DashMap::new(),
            claim_on_first_report: false,
            claims: OnceLock::new(),
        }
    }

    /// Lets (or not) a first report claim a vehicle in no register entry
    /// (`[fleet] claim_on_first_report`; development and demos).
    pub fn claiming_on_first_report(mut self, on: bool) -> Self {
        self.claim_on_first_report = on;
        self
    }

    /// Whether a first report claims an unregistered vehicle.
    pub fn claims_on_first_report(&self) -> bool {
        self.claim_on_first_report
    }

    /// Sends every new claim to `log` (the engine stores them). A claim
    /// that does not fit (the queue is full) is kept in memory and logged.
    pub fn log_claims_to(&self, log: mpsc::Sender<RegisterEntry>) {
        let _ = self.claims.set(log);
    }

    /// Whether any supplier is configured (otherwise the registry is open).
    pub fn is_open(&self) -> bool {
        self.known.is_empty()
    }

    /// Whether points from this supplier are accepted.
    pub fn accepts(&self, supplier: &SupplierId) -> bool {
        self.is_open() || self.known.contains_key(supplier)
    }

    /// The supplier whose API key this is. Compares every key in constant time.
    pub fn by_api_key(&self, key: &str) -> Option<SupplierId> {
        let mut found = None;
        for (id, configured) in &self.known {
            if let Some(k) = configured
                && bool::from(k.as_bytes().ct_eq(key.as_bytes()))
            {
                found = Some(*id);
            }
        }
        found
    }

    /// Sets a register entry (config, fleet files, the store, `PUT
    /// /api/vehicles/{vehicle}`), replacing any earlier one.
    pub fn register(&self, entry: RegisterEntry) {
        self.owners.insert(entry.vehicle, entry.supplier);
    }

    /// The supplier that runs `vehicle`, if it is registered (or claimed).
    pub fn owner(&self, vehicle: &VehicleId) -> Option<SupplierId> {
        self.owners.get(vehicle).map(|s| *s)
    }

    /// Every register entry now.
    pub fn entries(&self) -> Vec<RegisterEntry> {
        self.owners
            .iter()
            .map(|e| RegisterEntry {
                vehicle: *e.key(),
                supplier: *e.value(),
            })
            .collect()
    }

    /// How many vehicles the register holds.
    pub fn registered(&self) -> usize {
        self.owners.len()
    }

    /// Whether `supplier` may report for `vehicle`: `Ok` if the register says
    /// it runs it (or, with claim on first report, it has just claimed it);
    /// otherwise the contract's reason and a detail.
    pub fn check_vehicle(
        &self,
        vehicle: VehicleId,
        supplier: SupplierId,
    ) -> Result<(), (Reason, String)> {
        // Bound first: a guard in the match's scrutinee would live through the arms.
        let current = self.owners.get(&vehicle).map(|s| *s);
        let owner = match current {
            Some(owner) => owner,
            None if !self.claim_on_first_report => {
                return Err((
                    Reason::UnknownVehicle,
                    format!("vehicle {vehicle} is in no register entry"),
                ));
            }
            None => match self.owners.entry(vehicle) {
                Entry::Occupied(e) => *e.get(),
                Entry::Vacant(e) => {
                    e.insert(supplier);
                    self.log_claim(RegisterEntry { vehicle, supplier });
                    supplier
                }
            },
        };
        if owner == supplier {
            Ok(())
        } else {
            Err((
                Reason::VehicleOwnedByOtherSupplier,
                format!("vehicle {vehicle} belongs to another supplier"),
            ))
        }
    }

    fn log_claim(&self, entry: RegisterEntry) {
        tracing::info!(vehicle = %entry.vehicle, supplier = %entry.supplier, "vehicle claimed on first report");
        if let Some(log) = self.claims.get()
            && log.try_send(entry).is_err()
        {
            tracing::warn!(vehicle = %entry.vehicle, "the claim could not be queued for the store; it holds until restart");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sup(id: &str, key: &str) -> SupplierConfig {
        SupplierConfig {
            id: SupplierId::parse(id).unwrap(),
            api_key: Some(key.into()),
            mqtt_password: None,
        }
    }

    fn ids() -> (VehicleId, SupplierId, SupplierId) {
        (
            VehicleId::parse("AB12CDE").unwrap(),
            SupplierId::parse("geoamey").unwrap(),
            SupplierId::parse("serco").unwrap(),
        )
    }

    #[test]
    fn keys_and_suppliers() {
        let s = Suppliers::from_config(&[sup("geoamey", "key-g"), sup("serco", "key-s")]);
        assert_eq!(s.by_api_key("key-s").unwrap().as_str(), "serco");
        assert!(s.by_api_key("key-x").is_none());
        assert!(s.by_api_key("").is_none());
        assert!(!s.accepts(&SupplierId::parse("other").unwrap()));
        assert!(Suppliers::from_config(&[]).accepts(&SupplierId::parse("other").unwrap()));
    }

    #[test]
    fn strict_register_by_default() {
        let (van, g, c) = ids();
        let s = Suppliers::from_config(&[]);
        assert_eq!(
            s.check_vehicle(van, g).unwrap_err().0,
            Reason::UnknownVehicle
        );
        s.register(RegisterEntry {
            vehicle: van,
            supplier: c,
        });
        assert_eq!(s.check_vehicle(van, c), Ok(()));
        assert_eq!(
            s.check_vehicle(van, g).unwrap_err().0,
            Reason::VehicleOwnedByOtherSupplier
        );
        // A new entry replaces the old one.
        s.register(RegisterEntry {
            vehicle: van,
            supplier: g,
        });
        assert_eq!(s.check_vehicle(van, g), Ok(()));
    }

    #[test]
    fn claim_on_first_report_is_stored_and_binding() {
        let (van, g, c) = ids();
        let s = Suppliers::from_config(&[]).claiming_on_first_report(true);
        let (tx, mut rx) = mpsc::channel(4);
        s.log_claims_to(tx);
        assert_eq!(s.check_vehicle(van, g), Ok(()));
        assert_eq!(s.check_vehicle(van, g), Ok(()));
        assert_eq!(
            s.check_vehicle(van, c).unwrap_err().0,
            Reason::VehicleOwnedByOtherSupplier
        );
        assert_eq!(
            rx.try_recv().unwrap(),
            RegisterEntry {
                vehicle: van,
                supplier: g
            }
        );
        assert!(rx.try_recv().is_err(), "claimed once");
    }
}
