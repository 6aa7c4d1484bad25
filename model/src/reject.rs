//! The contract's rejection reasons.

use std::fmt;

/// Why a point, event or message was rejected. The strings are the
/// contract's and appear in metrics labels, dead letters and HTTP replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Not JSON, or an array element that is not an object.
    MalformedJson,
    /// A required field is absent or null.
    MissingField,
    /// A field has the wrong type or form (e.g. a timestamp that is not RFC 3339).
    InvalidValue,
    /// A number outside the contract's bounds, or the (0,0) fix.
    OutOfRange,
    /// A fix time more than 5 minutes in the future.
    FutureTimestamp,
    /// The payload's registration differs from the topic's vehicle.
    VehicleMismatch,
    /// The topic's supplier is not configured.
    UnknownSupplier,
    /// The (supplier, tracking_id) was already stored.
    Duplicate,
    /// Over 256 KiB, or an array of over 1000 points.
    TooLarge,
    /// A topic outside `movewatch/v1/{supplier}/{vehicle}/{positions|events}`.
    BadTopic,
    /// The vehicle is registered to (or was claimed by) another supplier.
    VehicleOwnedByOtherSupplier,
    /// The vehicle is in no register entry (and `[fleet]
    /// claim_on_first_report` is off).
    UnknownVehicle,
}

impl Reason {
    /// Every reason a device can provoke on an engine that lets a first
    /// report claim a vehicle (`[fleet] claim_on_first_report`, as the
    /// simulator's engines do), for tests and simulated faults. With a strict
    /// register there is one more, [`Reason::UnknownVehicle`]: see
    /// [`Reason::EVERY`].
    pub const ALL: [Reason; 11] = {
        // EVERY without its last reason, UnknownVehicle.
        let mut all = [Reason::MalformedJson; 11];
        let mut i = 0;
        while i < all.len() {
            all[i] = Reason::EVERY[i];
            i += 1;
        }
        all
    };

    /// Every reason, [`Reason::ALL`] and then [`Reason::UnknownVehicle`]
    /// (last: `ALL` is the rest): for pre-registering metric labels and
    /// reading dead letters back.
    pub const EVERY: [Reason; 12] = [
        Reason::MalformedJson,
        Reason::MissingField,
        Reason::InvalidValue,
        Reason::OutOfRange,
        Reason::FutureTimestamp,
        Reason::VehicleMismatch,
        Reason::UnknownSupplier,
        Reason::Duplicate,
        Reason::TooLarge,
        Reason::BadTopic,
        Reason::VehicleOwnedByOtherSupplier,
        Reason::UnknownVehicle,
    ];

    /// The contract's string for this reason.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::MalformedJson => "malformed_json",
            Reason::MissingField => "missing_field",
            Reason::InvalidValue => "invalid_value",
            Reason::OutOfRange => "out_of_range",
            Reason::FutureTimestamp => "future_timestamp",
            Reason::VehicleMismatch => "vehicle_mismatch",
            Reason::UnknownSupplier => "unknown_supplier",
            Reason::Duplicate => "duplicate",
            Reason::TooLarge => "too_large",
            Reason::BadTopic => "bad_topic",
            Reason::VehicleOwnedByOtherSupplier => "vehicle_owned_by_other_supplier",
            Reason::UnknownVehicle => "unknown_vehicle",
        }
    }

    /// Parses a reason string (as stored in dead letters).
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::EVERY.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected element of a payload: which one, why, and a human detail.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// Index of the element in the payload's array (0 for a single object or a whole message).
    pub index: usize,
    /// The contract reason.
    pub reason: Reason,
    /// What exactly was wrong, for people reading dead letters (e.g. `latitude 123 not in -90..90`).
    pub detail: String,
    /// The element's raw text, first [`MAX_RAW_BYTES`] bytes.
    pub raw: String,
}

/// How much of a rejected element's raw text is kept.
pub const MAX_RAW_BYTES: usize = 4096;

/// The first [`MAX_RAW_BYTES`] of `text`, cut at a character boundary.
pub fn truncate_raw(text: &str) -> String {
    let mut end = text.len().min(MAX_RAW_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
