#![no_main]
//! Fuzz target: see `dragonlock_fuzz::decode_agrees` (dragonlock's decoder against
//! redis-protocol's, RESP3 or RESP2 by the first byte).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dragonlock_fuzz::decode_agrees(data);
});
