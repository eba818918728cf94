//! The `baton` command hands `load`, `fill` and `restart-time` to the `baton-tools` binary built
//! next to it (the workspace's tools package), so that the server links none of their
//! dependencies while the user types the same commands.

use std::process::Command;

fn baton(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .output()
        .expect("baton runs")
}

#[test]
fn the_tool_commands_are_answered_by_the_tools_binary() {
    for (command, option) in [
        ("load", "--scenario"),
        ("fill", "--records"),
        ("restart-time", "--runs"),
    ] {
        let out = baton(&[command, "--help"]);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "baton {command} --help: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            help.contains(&format!("Usage: baton {command}")) && help.contains(option),
            "{help}"
        );
    }
    // Their own argument errors come back with clap's status and message.
    let out = baton(&["load", "--scenario", "nonsense"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonsense"));
}

#[test]
fn restart_time_starts_the_server_on_a_filled_store_and_reports_its_own_figures() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    let fill = baton(&[
        "fill",
        "--data-dir",
        store,
        "--records",
        "2000",
        "--audit",
        "20000",
        "--agents",
        "10",
        "--json",
    ]);
    assert!(
        fill.status.success(),
        "{}",
        String::from_utf8_lossy(&fill.stderr)
    );
    let listen = baton_kit::free_addr().to_string();
    let out = baton(&[
        "restart-time",
        "--data-dir",
        store,
        "--runs",
        "1",
        "--listen",
        &listen,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["records"], 2000, "{summary}");
    let run = &summary["runs"][0];
    // The breakdown comes from the server's Status, and fits in the time the tool saw it take.
    let part = |k: &str| run[k].as_u64().unwrap_or_else(|| panic!("{k} in {run}"));
    let ready = part("ready_ms");
    assert!(
        part("open_ms") + part("load_ms") + part("restore_ms") <= ready,
        "{run}"
    );
}
