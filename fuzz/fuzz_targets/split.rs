#![no_main]
//! Fuzz target: see `dragonlock::resp::fuzzing::split_agrees`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dragonlock::resp::fuzzing::split_agrees(data);
});
