//! `sriov_emu::fuzzing::frame_parse` under libFuzzer (docs/fuzzing.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sriov_emu::fuzzing::frame_parse(data);
});
