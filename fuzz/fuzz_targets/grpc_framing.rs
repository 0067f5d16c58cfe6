//! Fuzzes `enlace_fuzz_targets::grpc_framing` (its invariants are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| enlace_fuzz_targets::grpc_framing(data));
