//! Typed identifiers with the forms fixed by the contract.
//!
//! Vehicle and supplier ids are short ASCII strings stored inline (`Copy`,
//! no allocation) because they sit on the hot path of every point.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a valid identifier of its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} id {value:?}: must match {pattern}")]
pub struct IdError {
    /// Which kind of id was being parsed (`vehicle`, `supplier`, ...).
    pub kind: &'static str,
    /// The offending input, cut to 64 characters.
    pub value: String,
    /// The form the contract requires.
    pub pattern: &'static str,
}

impl IdError {
    fn new(kind: &'static str, value: &str, pattern: &'static str) -> Self {
        IdError {
            kind,
            value: value.chars().take(64).collect(),
            pattern,
        }
    }
}

/// A short ASCII string stored inline, `N` bytes at most.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct InlineStr<const N: usize> {
    len: u8,
    bytes: [u8; N],
}

// Ordered as the strings are, not by length first.
impl<const N: usize> Ord for InlineStr<N> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl<const N: usize> PartialOrd for InlineStr<N> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<const N: usize> InlineStr<N> {
    fn from_ascii(s: &str) -> Self {
        debug_assert!(s.len() <= N && s.is_ascii());
        let mut bytes = [0u8; N];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        InlineStr {
            len: s.len() as u8,
            bytes,
        }
    }

    fn as_str(&self) -> &str {
        // Only ever built from validated ASCII.
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or_default()
    }
}

macro_rules! string_id_impls {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.as_str())
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }
        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                $name::parse(s)
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
                $name::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A vehicle registration, upper-cased with spaces removed: `[A-Z0-9]{2,10}`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VehicleId(InlineStr<10>);

impl VehicleId {
    /// Normalises a registration as devices write it (`ab12 cde`) and checks its form.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        const PATTERN: &str = "[A-Z0-9]{2,10} after upper-casing and removing spaces";
        let mut buf = [0u8; 10];
        let mut len = 0usize;
        for c in raw.chars() {
            if c == ' ' {
                continue;
            }
            let upper = c.to_ascii_uppercase();
            if !upper.is_ascii_alphanumeric() || len == buf.len() {
                return Err(IdError::new("vehicle", raw, PATTERN));
            }
            buf[len] = upper as u8;
            len += 1;
        }
        if len < 2 {
            return Err(IdError::new("vehicle", raw, PATTERN));
        }
        Ok(VehicleId(InlineStr {
            len: len as u8,
            bytes: buf,
        }))
    }

    /// The normalised registration.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}
string_id_impls!(VehicleId);

/// A supplier id: `[a-z0-9_-]{1,32}`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SupplierId(InlineStr<32>);

impl SupplierId {
    /// Checks the contract's form; no normalisation (topics are case-sensitive).
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let ok = (1..=32).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok {
            return Err(IdError::new("supplier", raw, "[a-z0-9_-]{1,32}"));
        }
        Ok(SupplierId(InlineStr::from_ascii(raw)))
    }

    /// The id as written.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}
string_id_impls!(SupplierId);

macro_rules! shared_string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $pattern:literal, $min:literal, $max:literal, $allowed:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Checks the contract's form.
            pub fn parse(raw: &str) -> Result<Self, IdError> {
                let allowed: fn(u8) -> bool = $allowed;
                if !($min..=$max).contains(&raw.len()) || !raw.bytes().all(allowed) {
                    return Err(IdError::new($kind, raw, $pattern));
                }
                Ok($name(Arc::from(raw)))
            }

            /// The id as written.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        string_id_impls!($name);
    };
}

shared_string_id!(
    /// A site id: `[A-Z0-9-]{2,40}` (the NOMIS agency id for prisons).
    SiteId, "site", "[A-Z0-9-]{2,40}", 2, 40,
    |b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-'
);
shared_string_id!(
    /// A move id: `[A-Za-z0-9._:-]{1,64}` (BaSM uses UUIDs).
    MoveId, "move", "[A-Za-z0-9._:-]{1,64}", 1, 64,
    |b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
);
shared_string_id!(
    /// A journey id: `[A-Za-z0-9._:-]{1,64}`.
    JourneyId, "journey", "[A-Za-z0-9._:-]{1,64}", 1, 64,
    |b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_normalise() {
        assert_eq!(VehicleId::parse("ab12 cde").unwrap().as_str(), "AB12CDE");
        assert_eq!(VehicleId::parse(" AB12CDE ").unwrap().as_str(), "AB12CDE");
        assert!(VehicleId::parse("A").is_err());
        assert!(VehicleId::parse("AB12CDEFGHJ").is_err());
        assert!(VehicleId::parse("AB-12").is_err());
        assert!(VehicleId::parse("ÄB12").is_err());
    }

    #[test]
    fn other_ids_check_their_forms() {
        assert!(SupplierId::parse("geoamey").is_ok());
        assert!(SupplierId::parse("GeoAmey").is_err());
        assert!(SupplierId::parse("").is_err());
        assert!(SiteId::parse("CRT-LEEDS-MC").is_ok());
        assert!(SiteId::parse("lei").is_err());
        assert!(MoveId::parse("5d1f0c3e-aa:1.x_y").is_ok());
        assert!(MoveId::parse("a b").is_err());
        assert!(JourneyId::parse(&"j".repeat(65)).is_err());
    }

    #[test]
    fn ids_order_as_strings() {
        let mut v: Vec<VehicleId> = ["YORK1", "LEEDS1", "AB12"]
            .iter()
            .map(|s| VehicleId::parse(s).unwrap())
            .collect();
        v.sort();
        assert_eq!(
            v.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
            vec!["AB12", "LEEDS1", "YORK1"]
        );
    }

    #[test]
    fn ids_serialise_as_strings() {
        let v = VehicleId::parse("AB12CDE").unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), "\"AB12CDE\"");
        let back: VehicleId = serde_json::from_str("\"ab12 cde\"").unwrap();
        assert_eq!(back, v);
    }
}
