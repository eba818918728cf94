//! `protocol/schema/baton.schema.json` against the server: every example frame validates for its
//! role and direction, the schema's per-role message lists are exactly what the server lets each
//! role send and what it sends, and frames that break the protocol are refused by it. That every
//! frame the server really sends validates is checked by every other test: the kit's clients
//! validate each frame they read (see `kit/src/schema.rs`); the last test here shows that check
//! is wired in.

use baton::messages::*;
use baton_kit::schema;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

const ROLES: [Role; 4] = [Role::Desktop, Role::Dialer, Role::Switch, Role::Admin];

fn examples(dir: &str) -> Vec<(PathBuf, Value)> {
    schema::example_files(dir)
}

/// The message types an entry point lets through (its `type` enum).
fn types_of(entry: &str) -> BTreeSet<String> {
    schema::document()["$defs"][entry]["properties"]["type"]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("$defs/{entry} lists its types"))
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_schema_is_a_valid_draft_2020_12_schema() {
    assert_eq!(schema::meta_schema_error(), None);
    assert_eq!(
        schema::document()["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    for entry in schema::ENTRY_POINTS {
        schema::validator(entry);
    }
}

#[test]
fn every_request_example_validates_for_exactly_the_roles_the_server_accepts_it_from() {
    for (path, frame) in examples("requests") {
        let bytes = serde_json::to_vec(&frame).unwrap();
        let type_name = frame["type"].as_str().unwrap();
        for role in ROLES {
            let entry = schema::to_server(role);
            let errors = schema::errors(entry, &frame);
            // Hello is accepted only as the first frame, where the server has no role yet.
            let server_takes_it = type_name == "Hello" || parse_request(&bytes, Some(role)).is_ok();
            assert_eq!(
                errors.is_empty(),
                server_takes_it,
                "{} as {role}: schema says {errors:?}",
                path.display()
            );
        }
        assert!(schema::errors("to_server", &frame).is_empty());
        assert!(
            schema::errors("", &frame).is_empty(),
            "the root takes any frame"
        );
    }
}

#[test]
fn each_role_may_send_what_the_server_lets_it_send_and_nothing_else() {
    let mut all = BTreeSet::new();
    for role in ROLES {
        let listed = types_of(schema::to_server(role));
        let allowed: BTreeSet<String> = REQUEST_TYPES
            .iter()
            .filter(|t| {
                let probe = serde_json::to_vec(&json!({"type": t, "ref": 1})).unwrap();
                // A body error is fine here: only `wrong_role` says the role may not send it.
                match parse_request(&probe, Some(role)) {
                    Ok(_) => true,
                    Err(e) => e.code != ErrorCode::WrongRole,
                }
            })
            .map(|t| t.to_string())
            .collect();
        assert_eq!(listed, allowed, "{role}_to_server");
        all.extend(listed);
    }
    let every: BTreeSet<String> = REQUEST_TYPES.iter().map(|t| t.to_string()).collect();
    assert_eq!(all, every, "every request type is in the schema");
}

#[test]
fn every_server_example_validates_for_each_role_that_lists_its_type() {
    let mut seen = BTreeSet::new();
    for (path, frame) in examples("server") {
        let type_name = frame["type"].as_str().unwrap().to_owned();
        let mut roles = 0;
        for role in ROLES {
            let entry = schema::from_server(Some(role));
            if types_of(entry).contains(&type_name) {
                roles += 1;
                let errors = schema::errors(entry, &frame);
                assert!(
                    errors.is_empty(),
                    "{} for {role}: {errors:?}",
                    path.display()
                );
            }
        }
        assert!(
            roles > 0,
            "{}: no role receives {type_name}",
            path.display()
        );
        assert!(schema::errors("from_server", &frame).is_empty());
        seen.insert(type_name);
    }
    // Every type the schema says the server sends has an example, and the reverse.
    let listed: BTreeSet<String> = ROLES
        .iter()
        .flat_map(|r| types_of(schema::from_server(Some(*r))))
        .collect();
    assert_eq!(listed, seen);
}

#[test]
fn frames_that_break_the_protocol_are_refused() {
    let bad: &[(&str, Value, &str)] = &[
        (
            "desktop_to_server",
            json!({"type":"Login","ref":1,"agent":"alice","dn":7001}),
            "/dn",
        ),
        (
            "desktop_to_server",
            json!({"type":"Login","ref":1,"dn":"7001"}),
            "agent",
        ),
        (
            "desktop_to_server",
            json!({"type":"AttachRecord","ref":1,"call":"C1","record":"R1","campaign":"c","data":{}}),
            "AttachRecord",
        ),
        (
            "desktop_to_server",
            json!({"type":"GetRecord","ref":-1,"record":"R1"}),
            "/ref",
        ),
        (
            "desktop_to_server",
            json!({"type":"GetRecord","ref":1,"recrod":"R1"}),
            "recrod",
        ),
        (
            "desktop_to_server",
            json!({"type":"Reschedule","ref":1,"record":"R1","at":"tomorrow"}),
            "/at",
        ),
        (
            "switch_to_server",
            json!({"type":"Transferred","ref":1,"call":"C1","from_dn":"7001","to_dn":"7002","kind":"blind"}),
            "/kind",
        ),
        (
            "dialer_to_server",
            json!({"type":"AttachRecord","ref":1,"call":"","record":"R1","campaign":"c","data":{}}),
            "/call",
        ),
        (
            "desktop_from_server",
            json!({"type":"AccessChanged","record":"R1","access":"full","previous":"revoked","cause":"established","call":"C1"}),
            "data",
        ),
        (
            "desktop_from_server",
            json!({"type":"AccessChanged","record":"R1","access":"revoked","previous":"full","cause":"transfer","call":"C1","data":{}}),
            "AccessChanged",
        ),
        (
            "desktop_from_server",
            json!({"type":"Error","ref":3,"code":"access_denied","message":"no"}),
            "holders",
        ),
        (
            "desktop_from_server",
            json!({"type":"Error","ref":3,"code":"bad_request","message":"no","outcome":"processed"}),
            "outcome",
        ),
        (
            "desktop_from_server",
            json!({"type":"RecordOutcome","record":"R1","outcome":"processed","at":"2026-11-26T10:16:00.000Z"}),
            "RecordOutcome",
        ),
        (
            "dialer_from_server",
            json!({"type":"RecordOutcome","record":"R1","outcome":"stale","by":"bob","at":"2026-11-26T10:16:00.000Z"}),
            "by",
        ),
        (
            "dialer_from_server",
            json!({"type":"RecordOutcome","record":"R1","outcome":"do_not_call","by":"bob","at":"2026-11-26T10:16:00.000Z"}),
            "scope",
        ),
        (
            "admin_from_server",
            json!({"type":"Audit","ref":4,"seq":0,"ts":"2026-11-26T10:16:00.000Z","kind":"login"}),
            "/seq",
        ),
        (
            "admin_from_server",
            json!({"type":"Audit","ref":4,"seq":5,"ts":"2026-11-26T10:16:00.000Z","kind":"granted","record":"R1","agent":"bob","call":"C1","access":"revoked","previous":"full","cause":"transfer"}),
            "/access",
        ),
        (
            "switch_from_server",
            json!({"type":"Welcome","ref":1,"protocol":2,"server":"baton/0.1.0","heartbeat_ms":5000}),
            "/protocol",
        ),
    ];
    for (entry, frame, mentions) in bad {
        let errors = schema::errors(entry, frame);
        assert!(!errors.is_empty(), "{entry} accepted {frame}");
        assert!(
            errors.iter().any(|e| e.contains(mentions)),
            "{entry} refused {frame} but not for {mentions}: {errors:?}"
        );
    }
}

/// A server that sends `Welcome` and then `frame`: the kit's check must stop the client that
/// reads it.
#[tokio::test]
async fn a_client_that_reads_a_frame_outside_the_schema_fails_its_test() {
    schema::install();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut header = [0u8; 4];
        socket.read_exact(&mut header).await.unwrap();
        let mut hello = vec![0u8; u32::from_be_bytes(header) as usize];
        socket.read_exact(&mut hello).await.unwrap();
        for frame in [
            json!({"ref":1,"type":"Welcome","protocol":1,"server":"baton/0.1.0","heartbeat_ms":5000}),
            // A grant without the record's data: decodes into the server's own types, but is
            // not what the protocol promises.
            json!({"type":"AccessChanged","record":"R1","access":"full","previous":"revoked","cause":"established","call":"C1"}),
        ] {
            let body = serde_json::to_vec(&frame).unwrap();
            socket
                .write_all(&(body.len() as u32).to_be_bytes())
                .await
                .unwrap();
            socket.write_all(&body).await.unwrap();
        }
        socket
    });
    let reader = tokio::spawn(async move {
        let mut desk = baton::client::Client::connect(addr, Role::Desktop, "desk-secret")
            .await
            .expect("the Welcome passes");
        desk.next_push().await
    });
    let outcome = reader.await;
    let _socket = server.await.unwrap();
    let panic = outcome.expect_err("the client stops at the bad frame");
    assert!(panic.is_panic());
    let violations = schema::violations();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(
        violations[0].contains("desktop_from_server"),
        "{violations:?}"
    );
    assert!(violations[0].contains("data"), "{violations:?}");
}

/// Every frame written out in PROTOCOL.md's text blocks (the quick starts and the walk-throughs,
/// `C> {...}` and `name S> {...}` lines) is a frame of the schema in its direction.
#[test]
fn every_frame_line_in_protocol_md_validates() {
    let doc =
        fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/protocol/PROTOCOL.md")).unwrap();
    let mut checked = 0;
    for line in doc.lines() {
        let Some(at) = line.find("> {") else {
            continue;
        };
        let head = line[..at].trim_end();
        let dir = if head == "C" || head.ends_with(" C") {
            "to_server"
        } else if head == "S" || head.ends_with(" S") {
            "from_server"
        } else {
            continue;
        };
        let json = &line[at + 2..];
        let frame: Value = serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("PROTOCOL.md line is not JSON ({e}): {line}"));
        let errors = schema::errors(dir, &frame);
        assert!(errors.is_empty(), "PROTOCOL.md: {line}\n{errors:?}");
        checked += 1;
    }
    assert!(checked > 150, "only {checked} frame lines found");
}
