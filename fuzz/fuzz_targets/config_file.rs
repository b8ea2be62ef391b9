//! `sriov_emu::fuzzing::config_file` under libFuzzer (docs/fuzzing.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sriov_emu::fuzzing::config_file(data);
});
