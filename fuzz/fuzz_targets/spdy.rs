#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kestrel_fuzz_checks::check_spdy(data));
