//! Every example frame in protocol/examples decodes with the server's own types, so PROTOCOL.md
//! (whose JSON blocks are these files) cannot drift from the code.

use baton::messages::*;
use std::fs;
use std::path::{Path, PathBuf};

fn files(dir: &str) -> Vec<PathBuf> {
    baton_kit::schema::example_files(dir)
        .into_iter()
        .map(|(path, _)| path)
        .collect()
}

fn type_of(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["type"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn every_request_example_parses_for_its_role() {
    let files = files("requests");
    let mut seen = std::collections::BTreeSet::new();
    for path in &files {
        let bytes = fs::read(path).unwrap();
        let type_name = type_of(path);
        let role = match type_name.as_str() {
            "Hello" => None,
            "Ping" | "Pong" => Some(Role::Desktop),
            _ => {
                // Find the role allowed to send it by trying each.
                [Role::Desktop, Role::Dialer, Role::Switch, Role::Admin]
                    .into_iter()
                    .find(|r| parse_request(&bytes, Some(*r)).is_ok())
            }
        };
        let parsed = parse_request(&bytes, role)
            .unwrap_or_else(|e| panic!("{}: {} ({:?})", path.display(), e.message, e.code));
        assert!(
            parsed.r#ref.is_some(),
            "{}: requests carry a ref",
            path.display()
        );
        assert_eq!(parsed.request.type_name(), type_name);
        seen.insert(type_name);
    }
    for t in REQUEST_TYPES {
        assert!(seen.contains(*t), "no example for request {t}");
    }
}

#[test]
fn every_server_example_round_trips_exactly() {
    let files = files("server");
    assert!(!files.is_empty());
    let mut seen = std::collections::BTreeSet::new();
    for path in &files {
        let text = fs::read_to_string(path).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let env: Envelope = serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let back = serde_json::to_value(&env).unwrap();
        assert_eq!(back, value, "{} does not round-trip", path.display());
        seen.insert(env.msg.type_name());
    }
    for t in [
        "Welcome",
        "Pong",
        "Error",
        "LoggedIn",
        "LoggedOut",
        "LogoutPending",
        "Record",
        "RecordUpdated",
        "RecordProcessedAck",
        "ChainedRecord",
        "ChainedRecordsEnd",
        "RecordRejected",
        "RecordCancelled",
        "DoNotCallAck",
        "Rescheduled",
        "AccessChanged",
        "RecordChanged",
        "RecordFinalized",
        "CallAlerting",
        "CallEstablished",
        "CallCleared",
        "RecordAttached",
        "RecordOutcome",
        "Monitor",
        "Ack",
        "AgentLogin",
        "AgentLogout",
        "Audit",
        "AuditEnd",
        "StatusReport",
        "RecordReport",
        "RecordReleased",
    ] {
        assert!(seen.contains(t), "no example for server message {t}");
    }
}

#[test]
fn every_json_block_in_protocol_md_is_an_example_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("protocol");
    let doc = fs::read_to_string(root.join("PROTOCOL.md")).unwrap();
    let mut examples: Vec<serde_json::Value> = Vec::new();
    for dir in ["requests", "server"] {
        for path in files(dir) {
            examples.push(serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap());
        }
    }
    let mut checked = 0;
    let mut rest = doc.as_str();
    while let Some(start) = rest.find("```json\n") {
        let body_start = start + "```json\n".len();
        let end = rest[body_start..].find("```").expect("closed block") + body_start;
        let block = &rest[body_start..end];
        rest = &rest[end + 3..];
        // Only single-object blocks are frames; walk-through blocks hold several lines of frames.
        let Ok(value) = serde_json::from_str::<serde_json::Value>(block) else {
            continue;
        };
        if value.get("type").is_some() {
            assert!(
                examples.contains(&value),
                "PROTOCOL.md block is not one of protocol/examples: {block}"
            );
            checked += 1;
        }
    }
    assert!(
        checked > 40,
        "only {checked} example blocks found in PROTOCOL.md"
    );
}
