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
