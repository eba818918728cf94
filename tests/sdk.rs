//! The TypeScript desktop SDK's own tests, and the reference desktop's and the admin console's
//! tests in Chromium (`sdk/typescript/test.sh`: Node's test runner against
//! this build's `baton serve`), run as part of `cargo test`: the SDK, its committed build and the
//! server's WebSocket endpoint are checked together.

use std::process::Command;

#[test]
fn the_typescript_sdk_passes_its_tests_against_this_server() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/sdk/typescript/test.sh");
    let output = Command::new("bash")
        .arg(script)
        .env("BATON_EXE", env!("CARGO_BIN_EXE_baton"))
        .output()
        .expect("bash runs sdk/typescript/test.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the SDK's tests failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // The runner's summary: every test passed, and there were some.
    let passed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("# pass "))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    assert!(
        passed >= 27,
        "only {passed} SDK, desktop and admin console tests passed:\n{stdout}"
    );
    assert!(stdout.contains("# fail 0"), "{stdout}");
}
