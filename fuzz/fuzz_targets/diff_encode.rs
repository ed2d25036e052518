#![no_main]
//! Fuzz target: see `dragonlock_fuzz::encode_agrees` (what dragonlock encodes, redis-protocol
//! decodes to the same value).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dragonlock_fuzz::encode_agrees(data);
});
