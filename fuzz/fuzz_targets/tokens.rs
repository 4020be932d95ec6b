#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| platformd::fuzzing::tokens(data));
