#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| platformd::fuzzing::resource_names(data));
