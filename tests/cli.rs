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
