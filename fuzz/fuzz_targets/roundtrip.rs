#![no_main]
//! Fuzz target: see `dragonlock::resp::fuzzing::roundtrip`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dragonlock::resp::fuzzing::roundtrip(data);
});
