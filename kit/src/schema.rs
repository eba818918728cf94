//! The protocol's JSON Schema (`protocol/schema/baton.schema.json`), compiled once per entry
//! point, and the check every test client applies to every frame the server sends it.
//!
//! [`install`] (called by every [`crate::TestServer`] and [`crate::ServerProcess`]) makes each
//! [`baton::client::Client`] and [`crate::RawReader`] validate what it reads against the frames
//! its role may receive. A frame that does not match panics the reading task at once, and is also
//! kept, so that a test whose reading task's panic went unobserved still fails when its server is
//! dropped. So every scenario of the test suite is also a test that the server speaks the schema.

use baton::messages::Role;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

/// The schema's text, as committed.
pub const SCHEMA: &str = include_str!("../../protocol/schema/baton.schema.json");

/// The entry points of the schema: `<role>_to_server`, `<role>_from_server`, `to_server`,
/// `from_server`.
pub const ENTRY_POINTS: &[&str] = &[
    "desktop_to_server",
    "desktop_from_server",
    "dialer_to_server",
    "dialer_from_server",
    "switch_to_server",
    "switch_from_server",
    "admin_to_server",
    "admin_from_server",
    "to_server",
    "from_server",
];

/// The whole schema document.
pub fn document() -> &'static Value {
    static DOC: LazyLock<Value> =
        LazyLock::new(|| serde_json::from_str(SCHEMA).expect("the schema is JSON"));
    &DOC
}

fn compile(schema: &Value) -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|e| panic!("protocol/schema/baton.schema.json does not compile: {e}"))
}

/// A validator for one of the [`ENTRY_POINTS`], or for any `$defs` entry (a single message:
/// `"Login"`, `"AccessChanged"`...), or `""` for the root (any frame, either direction).
pub fn validator(entry: &str) -> &'static jsonschema::Validator {
    static CACHE: LazyLock<Mutex<HashMap<String, &'static jsonschema::Validator>>> =
        LazyLock::new(Default::default);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(v) = cache.get(entry) {
        return v;
    }
    let doc = document();
    let schema = if entry.is_empty() {
        doc.clone()
    } else {
        assert!(
            doc["$defs"].get(entry).is_some(),
            "the schema has no $defs/{entry}"
        );
        json!({
            "$schema": doc["$schema"],
            "$defs": doc["$defs"],
            "$ref": format!("#/$defs/{entry}"),
        })
    };
    let v: &'static jsonschema::Validator = Box::leak(Box::new(compile(&schema)));
    cache.insert(entry.to_owned(), v);
    v
}

/// Why `frame` does not match `entry`, one line per failure; empty when it matches.
pub fn errors(entry: &str, frame: &Value) -> Vec<String> {
    validator(entry)
        .iter_errors(frame)
        .map(|e| format!("at {}: {e}", e.instance_path()))
        .collect()
}

/// The entry point for what the server sends a client of `role` (`None`: not said yet).
pub fn from_server(role: Option<Role>) -> &'static str {
    match role {
        None => "from_server",
        Some(Role::Desktop) => "desktop_from_server",
        Some(Role::Dialer) => "dialer_from_server",
        Some(Role::Switch) => "switch_from_server",
        Some(Role::Admin) => "admin_from_server",
    }
}

/// The entry point for what a client of `role` may send.
pub fn to_server(role: Role) -> &'static str {
    match role {
        Role::Desktop => "desktop_to_server",
        Role::Dialer => "dialer_to_server",
        Role::Switch => "switch_to_server",
        Role::Admin => "admin_to_server",
    }
}

static VIOLATIONS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Every frame that failed the check in this process so far.
pub fn violations() -> Vec<String> {
    VIOLATIONS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Checks a frame the server sent a client of `role`: panics (and remembers it) if the frame is
/// not JSON or does not match the schema.
pub fn check_server_frame(role: Option<Role>, frame: &[u8]) {
    let entry = from_server(role);
    let problem = match serde_json::from_slice::<Value>(frame) {
        Err(e) => Some(format!("not JSON ({e})")),
        Ok(value) => {
            let errors = errors(entry, &value);
            (!errors.is_empty()).then(|| errors.join("; "))
        }
    };
    if let Some(problem) = problem {
        let text = String::from_utf8_lossy(frame);
        let report = format!("server frame outside {entry}: {text}\n  {problem}");
        VIOLATIONS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(report.clone());
        panic!("{report}");
    }
}

/// Makes every test client in this process check every frame it reads ([`check_server_frame`]).
pub fn install() {
    baton::client::check_every_frame(check_server_frame);
}

/// Panics if any frame failed the check in this process (for the end of a test, where a panic
/// in a reading task may have gone unobserved).
pub fn assert_no_violations() {
    let v = violations();
    assert!(
        v.is_empty(),
        "{} server frame(s) did not match protocol/schema:\n{}",
        v.len(),
        v.join("\n")
    );
}

/// Why the schema document is not a valid draft 2020-12 schema, if it is not.
pub fn meta_schema_error() -> Option<String> {
    jsonschema::draft202012::meta::validate(document())
        .err()
        .map(|e| format!("at {}: {e}", e.instance_path()))
}

/// The example frames of `protocol/examples/DIR` (`requests` or `server`), sorted by file name,
/// each with its path.
pub fn example_files(dir: &str) -> Vec<(std::path::PathBuf, Value)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../protocol/examples")
        .join(dir);
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("an example file");
            let value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
            (p, value)
        })
        .collect()
}
