//! Any WebSocket text frame from a browser: parsing the client message and
//! its channel never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model::wire::{Channel, ClientMessage};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = serde_json::from_str::<ClientMessage>(text);
    let _ = Channel::parse(text);
});
