//! A configuration that cannot work is refused at start, by the real binary, with a message that
//! names the key and its allowed range, before anything listens or opens the store.

use std::process::Command;

#[test]
fn serve_refuses_a_config_that_cannot_work_and_says_which_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cases = [
        ("heartbeat_ms = 9223372036854775807", "heartbeat_ms"),
        ("max_frame_bytes = 512", "max_frame_bytes"),
        ("outbound_queue_frames = 0", "outbound_queue_frames"),
    ];
    for (line, key) in cases {
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n{line}\n",
                data.display().to_string()
            ),
        )
        .unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["serve", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{line}: server started");
        assert!(
            stderr.contains(&format!("`{key}` = ")) && stderr.contains("allowed"),
            "{line}: {stderr}"
        );
        assert!(
            !data.exists(),
            "{line}: the store was opened before the config was checked"
        );
    }
}

/// `open` mode trusts any agent id, so it is for loopback only; and a port other machines can
/// reach must not take the built-in, well-known role tokens.
#[test]
fn serve_refuses_open_mode_and_default_tokens_on_a_reachable_port() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let agents = dir.path().join("agents.toml");
    std::fs::write(&agents, "").unwrap();
    let reachable = format!(
        "listen = \"0.0.0.0:0\"\ndata_dir = {:?}\n",
        data.display().to_string()
    );
    let directory = format!(
        "[auth]\nagents = \"directory\"\ndirectory = {:?}\n",
        agents.display().to_string()
    );
    let cases = [
        (reachable.clone(), "`[auth] agents = \"open\"`"),
        (format!("{reachable}{directory}"), "`[tokens] dialer` is still the built-in default"),
        (
            format!("{reachable}[tokens]\ndialer = \"d-1\"\nswitch = \"s-1\"\nadmin = \"a-1\"\nadmin_read = \"a-1\"\n{directory}"),
            "`[tokens] admin_read` is the same as `admin`",
        ),
        (
            format!("listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[auth]\nagents = \"jwt\"\n", data.display().to_string()),
            "`[auth] jwt_issuer` is required",
        ),
        // The HTTP listener (browser desktops) counts as a reachable port too.
        (
            format!("listen = \"127.0.0.1:0\"\nhttp_listen = \"0.0.0.0:0\"\ndata_dir = {:?}\n", data.display().to_string()),
            "`http_listen` = 0.0.0.0:0 is reachable from other machines",
        ),
        (
            format!("listen = \"127.0.0.1:0\"\nhttp_listen = \"localhost\"\ndata_dir = {:?}\n", data.display().to_string()),
            "`http_listen` = \"localhost\" is not an address",
        ),
        (
            format!("listen = \"127.0.0.1:0\"\nallowed_origins = [\"https://desk.example/\"]\ndata_dir = {:?}\n", data.display().to_string()),
            "`allowed_origins`: \"https://desk.example/\" is not an origin",
        ),
    ];
    for (text, why) in cases {
        let config = dir.path().join("config.toml");
        std::fs::write(&config, &text).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["serve", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{text}: server started");
        assert!(stderr.contains(why), "{text}: {stderr}");
        assert!(!data.exists(), "{text}: the store was opened");
    }
}
