//! The `baton` command hands `load`, `fill` and `restart-time` to the `baton-tools` binary built
//! next to it (the workspace's tools package), so that the server links none of their
//! dependencies while the user types the same commands.

use baton::messages::*;
use baton_kit::*;
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

/// `baton demo` plays the switch and the dialer step by step: a record pops on the agent's
/// desktop, a consultation makes the second agent read-only, a transfer moves the record to it.
#[tokio::test(flavor = "multi_thread")]
async fn demo_steps_play_a_call_a_consultation_and_a_transfer() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), server.addr, "");
    let demo = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_baton"))
            .arg("demo")
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "baton demo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (mut a, _) = server.desktop("1001", "7001").await;
    let (mut b, _) = server.desktop("1002", "7002").await;

    let said = demo(&[
        "call", "7001", "--call", "C9", "--record", "R9", "--name", "Sam Lee",
    ]);
    assert_eq!(said.trim(), "call C9 with record R9 answered on 7001");
    let (record, access, _, _, data, _) = expect_access_after_calls(&mut a).await;
    assert_eq!((record.as_str(), access), ("R9", Access::Full));
    assert_eq!(data.unwrap()["name"], "Sam Lee");

    demo(&["consult", "C9", "7001", "7002", "--answer"]);
    let (_, access, _, cause, _, _) = expect_access_after_calls(&mut b).await;
    assert_eq!(
        (access, cause),
        (Access::ReadOnly, AccessCause::Consultation)
    );

    demo(&["transfer", "C9", "7001", "7002"]);
    let (_, access, _, cause, _, _) = expect_access_after_calls(&mut b).await;
    assert_eq!((access, cause), (Access::Full, AccessCause::Transfer));
    let (_, access, _, _, _, _) = expect_access_after_calls(&mut a).await;
    assert_eq!(access, Access::Revoked);
}

/// The next `AccessChanged`, skipping the call pushes before it.
async fn expect_access_after_calls(desk: &mut baton::client::Client) -> AccessPush {
    loop {
        let push = next_record_push(desk).await;
        if let ServerMsg::AccessChanged { .. } = push {
            let (record, access, cause) = access_of(&push);
            let ServerMsg::AccessChanged {
                previous,
                data,
                context,
                ..
            } = push
            else {
                unreachable!()
            };
            return (record, access, previous, cause, data, context);
        }
    }
}
