#![no_main]
//! Fuzz target: see `dragonlock::resp::fuzzing::decode_whole`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dragonlock::resp::fuzzing::decode_whole(data);
});
