//! Which suppliers exist, their keys, and which vehicles are theirs.

use std::collections::HashMap;

use dashmap::DashMap;
use model::config::SupplierConfig;
use model::{SupplierId, VehicleId};
use subtle::ConstantTimeEq;

/// The configured suppliers and the vehicle → supplier ownership map.
///
/// With no `[[suppliers]]` configured the registry is *open*: any supplier
/// named by a topic is accepted (a development convenience, logged at start).
#[derive(Debug)]
pub struct Suppliers {
    known: HashMap<SupplierId, Option<String>>,
    owners: DashMap<VehicleId, SupplierId>,
}

impl Suppliers {
    /// From the `[[suppliers]]` of the config.
    pub fn from_config(configs: &[SupplierConfig]) -> Self {
        Suppliers {
            known: configs.iter().map(|c| (c.id, c.api_key.clone())).collect(),
            owners: DashMap::new(),
        }
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

    /// Claims a vehicle for a supplier: true if it is (now) that supplier's,
    /// false if another supplier reported it first.
    pub fn claim(&self, vehicle: VehicleId, supplier: SupplierId) -> bool {
        *self.owners.entry(vehicle).or_insert(supplier) == supplier
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

    #[test]
    fn keys_and_ownership() {
        let s = Suppliers::from_config(&[sup("geoamey", "key-g"), sup("serco", "key-s")]);
        assert_eq!(s.by_api_key("key-s").unwrap().as_str(), "serco");
        assert!(s.by_api_key("key-x").is_none());
        assert!(s.by_api_key("").is_none());
        let van = VehicleId::parse("AB12CDE").unwrap();
        let (g, c) = (
            SupplierId::parse("geoamey").unwrap(),
            SupplierId::parse("serco").unwrap(),
        );
        assert!(s.claim(van, g));
        assert!(s.claim(van, g));
        assert!(!s.claim(van, c));
        assert!(!s.accepts(&SupplierId::parse("other").unwrap()));
        assert!(Suppliers::from_config(&[]).accepts(&SupplierId::parse("other").unwrap()));
    }
}
