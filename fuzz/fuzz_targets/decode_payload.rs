//! Any bytes on a device topic: the positions and events decoders, in both
//! shapes, must return a result (never panic), and account for every element.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model::decode::{DecodeContext, Shape, decode_events, decode_positions};
use model::{SupplierId, VehicleId};

fuzz_target!(|data: &[u8]| {
    let (Ok(supplier), Ok(vehicle)) = (SupplierId::parse("geoamey"), VehicleId::parse("AB12CDE"))
    else {
        return;
    };
    for shape in [Shape::ObjectOrArray, Shape::Array] {
        let ctx = DecodeContext {
            supplier,
            topic_vehicle: Some(vehicle),
            now: chrono::Utc::now(),
            shape,
        };
        if let Ok(decoded) = decode_positions(data, &ctx) {
            assert_eq!(
                decoded.items.len() + decoded.rejections.len(),
                decoded.total
            );
        }
        if let Ok(decoded) = decode_events(data, &ctx) {
            assert_eq!(
                decoded.items.len() + decoded.rejections.len(),
                decoded.total
            );
        }
    }
});
