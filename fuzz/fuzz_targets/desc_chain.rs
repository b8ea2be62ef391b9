//! `sriov_emu::fuzzing::desc_chain` under libFuzzer (docs/fuzzing.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sriov_emu::fuzzing::desc_chain(data);
});
