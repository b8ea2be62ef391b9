//! The control socket with a real, unmodified QMP client library: Python's `qemu.qmp` from
//! PyPI (installed by scripts/setup into target/qmp-venv) connects, runs query-vfs and vf-set,
//! receives an event, gets an error for bad input, and keeps going.
//!
//! A missing venv fails the test (install it with ./scripts/setup); SRIOV_SKIP_QEMU=1 skips it
//! with a `SKIPPED:` line instead (tests/common/skip.rs).

mod common;

use common::*;
use std::path::PathBuf;
use std::process::Command;

#[test]
fn python_qemu_qmp_client_works_unchanged() {
    let python = match venv_python("qemu.qmp") {
        Ok(python) => python,
        Err(missing) => {
            skip::skip_or_fail("python_qemu_qmp_client_works_unchanged", &missing);
            return;
        }
    };
    let emu = Emu::start(&["--vfs", "2"]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/qmp_client.py");
    let out = Command::new(python)
        .arg(script)
        .arg(emu.path().join("control.sock"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "GREETING sriov-emu",
        "QUERY-VFS 2",
        "VF-SET 42 disable",
        r#"EVENT VF_LINK_CHANGE {"link-state": "disable", "port": "vf1", "state": "down", "vf": 1}"#,
        "ERROR GenericError vf 99 does not exist",
        "STILL-USABLE 42",
        "OK",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    // The change made through the Python client is visible to everyone.
    let vfs = emu
        .control()
        .execute("query-vfs", serde_json::json!({}))
        .unwrap();
    assert_eq!(vfs[1]["vlan"], 42);
}
