//! The config parser on arbitrary text.
//!
//! Checked: `Config::from_toml` and `validate` never panic; a config that validates has every limit
//! within the bounds that config.rs documents (restated here on purpose, so that a change to either
//! side shows), its derived durations do not overflow, and it written back out as TOML parses to
//! the same config; a config that does not validate is refused with a message naming a key and
//! its allowed range.
#![no_main]

use baton::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;
use toml::{Table, Value};

const MAX_TIMER_MS: u64 = 365 * 86_400_000;

/// Every numeric key: its value and its documented bounds.
fn limits(c: &Config) -> [(&'static str, u64, u64, u64); 20] {
    let n = |v: usize| v as u64;
    [
        ("max_frame_bytes", n(c.max_frame_bytes), 4096, 64 << 20),
        ("max_connections", n(c.max_connections), 1, 1_000_000),
        (
            "handshake_timeout_ms",
            c.handshake_timeout_ms,
            10,
            MAX_TIMER_MS,
        ),
        ("heartbeat_ms", c.heartbeat_ms, 10, MAX_TIMER_MS),
        ("resume_grace_ms", c.resume_grace_ms, 0, MAX_TIMER_MS),
        ("orphan_timeout_ms", c.orphan_timeout_ms, 0, MAX_TIMER_MS),
        (
            "outbound_queue_frames",
            n(c.outbound_queue_frames),
            8,
            1 << 20,
        ),
        (
            "audit_retention_entries",
            c.audit_retention_entries,
            0,
            u64::MAX / 2,
        ),
        (
            "final_record_memory_ms",
            c.final_record_memory_ms,
            0,
            MAX_TIMER_MS,
        ),
        (
            "max_final_records_in_memory",
            c.max_final_records_in_memory,
            0,
            100_000_000,
        ),
        (
            "call_idle_timeout_ms",
            c.call_idle_timeout_ms,
            1_000,
            MAX_TIMER_MS,
        ),
        (
            "max_deferred_audit_entries",
            c.max_deferred_audit_entries,
            10_000,
            100_000_000,
        ),
        (
            "final_record_retention_ms",
            c.final_record_retention_ms,
            0,
            10 * MAX_TIMER_MS,
        ),
        (
            "max_audit_tails_per_connection",
            n(c.max_audit_tails_per_connection),
            1,
            1024,
        ),
        ("store_cache_bytes", c.store_cache_bytes, 1 << 20, 1 << 40),
        ("auth.jwt_leeway_ms", c.auth.jwt_leeway_ms, 0, 600_000),
        (
            "auth.max_failed_logins_per_agent",
            c.auth.max_failed_logins_per_agent.into(),
            1,
            1_000,
        ),
        (
            "auth.max_failed_logins_per_peer",
            c.auth.max_failed_logins_per_peer.into(),
            1,
            1_000_000,
        ),
        (
            "auth.failed_login_window_ms",
            c.auth.failed_login_window_ms,
            1_000,
            86_400_000,
        ),
        (
            "auth.password_check_threads",
            n(c.auth.password_check_threads),
            0,
            256,
        ),
    ]
}

/// The config as a TOML document, every key written out.
fn to_toml(c: &Config) -> String {
    let mut doc = Table::new();
    doc.insert("listen".into(), Value::String(c.listen.to_string()));
    doc.insert("http_listen".into(), Value::String(c.http_listen.clone()));
    let origins = c.allowed_origins.iter().cloned().map(Value::String);
    doc.insert("allowed_origins".into(), Value::Array(origins.collect()));
    let dir = c.data_dir.to_str().expect("a path read from TOML is UTF-8");
    doc.insert("data_dir".into(), Value::String(dir.into()));
    let mut auth = Table::new();
    for (key, value, _, _) in limits(c) {
        let value = i64::try_from(value).expect("a TOML integer fits an i64");
        match key.strip_prefix("auth.") {
            Some(key) => auth.insert(key.into(), Value::Integer(value)),
            None => doc.insert(key.into(), Value::Integer(value)),
        };
    }
    let path = |p: &std::path::Path| Value::String(p.to_str().expect("UTF-8 path").into());
    auth.insert(
        "agents".into(),
        Value::String(c.auth.agents.as_str().into()),
    );
    auth.insert("directory".into(), path(&c.auth.directory));
    auth.insert("jwt_keys".into(), path(&c.auth.jwt_keys));
    auth.insert(
        "jwt_agent_claim".into(),
        Value::String(c.auth.jwt_agent_claim.clone()),
    );
    for (key, value) in [
        ("jwt_issuer", &c.auth.jwt_issuer),
        ("jwt_audience", &c.auth.jwt_audience),
    ] {
        if let Some(v) = value {
            auth.insert(key.into(), Value::String(v.clone()));
        }
    }
    doc.insert("auth".into(), Value::Table(auth));
    if let Some(tls) = &c.tls {
        let mut t = Table::new();
        t.insert("cert".into(), path(&tls.cert));
        t.insert("key".into(), path(&tls.key));
        if let Some(ca) = &tls.client_ca {
            t.insert("client_ca".into(), path(ca));
        }
        let roles = tls.require_client_cert.iter().cloned().map(Value::String);
        t.insert("require_client_cert".into(), Value::Array(roles.collect()));
        doc.insert("tls".into(), Value::Table(t));
    }
    let mut tokens = Table::new();
    for (role, token) in [
        ("desktop", &c.tokens.desktop),
        ("dialer", &c.tokens.dialer),
        ("switch", &c.tokens.switch),
        ("admin", &c.tokens.admin),
    ] {
        tokens.insert(role.into(), Value::String(token.clone()));
    }
    if let Some(token) = &c.tokens.admin_read {
        tokens.insert("admin_read".into(), Value::String(token.clone()));
    }
    doc.insert("tokens".into(), Value::Table(tokens));
    toml::to_string(&doc).expect("a table of strings and integers serializes")
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_toml(text) else {
        return;
    };
    let again = to_toml(&config);
    assert_eq!(
        Config::from_toml(&again).as_ref(),
        Ok(&config),
        "written back out as\n{again}\nthe config reads otherwise"
    );
    match config.validate() {
        Ok(()) => {
            for (key, value, min, max) in limits(&config) {
                assert!((min..=max).contains(&value), "{key} = {value} validated");
            }
            // A deadline is now plus a timer: well within u64 milliseconds for centuries.
            let _ = config.heartbeat() + config.idle_timeout() + config.handshake_timeout();
            assert!(config.max_frame_bytes <= u32::MAX as usize);
        }
        // The identity, transport and HTTP listener checks name their section or key.
        Err(ConfigError::Invalid(message))
            if ["`[auth]", "`[tokens]", "`[tls]", "`http_listen`", "`allowed_origins`"]
                .iter()
                .any(|p| message.starts_with(p)) => {}
        Err(ConfigError::Invalid(message)) => {
            let key = limits(&config)
                .into_iter()
                .find(|(key, ..)| message.starts_with(&format!("`{key}` = ")));
            let (key, value, min, max) = key.expect("the refusal names a key");
            assert!(
                !(min..=max).contains(&value),
                "{key} = {value} refused: {message}"
            );
            assert!(message.contains("allowed"), "{message}");
        }
        Err(e) => panic!("validate failed with {e}"),
    }
});
