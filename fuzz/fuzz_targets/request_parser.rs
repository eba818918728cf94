//! The request parser on arbitrary frame bodies, for a connection of each role and before `Hello`.
//!
//! Checked: `parse_request` never panics; whenever the fast path decodes a frame, the careful path
//! decodes it to the same request and `ref` (so which path answers never changes the answer);
//! `parse_request` answers exactly what the careful path answers; a decoded request is one the
//! role may send; and a decoded request written back out parses to itself (floats within one
//! unit in the last place: without serde_json's `float_roundtrip` feature, reading back a float it
//! wrote may be that far off).
#![no_main]

use baton::messages::fuzzing::{parse_request_fast, parse_request_slow};
use baton::messages::{parse_request, Request, Role};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const ROLES: [Option<Role>; 5] = [
    None,
    Some(Role::Desktop),
    Some(Role::Dialer),
    Some(Role::Switch),
    Some(Role::Admin),
];

/// Equal, but for floats that may differ in their last bit.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() && y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x.to_bits().abs_diff(y.to_bits()) <= 1
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fuzz_target!(|frame: &[u8]| {
    // parse_request takes the fast path only for valid UTF-8 (serde_json does not check the UTF-8
    // of the values it skips), so that is where the two paths must agree.
    let utf8 = std::str::from_utf8(frame).is_ok();
    for role in ROLES {
        let got = parse_request(frame, role);
        let slow = parse_request_slow(frame, role);
        if let (Some(role), true) = (role, utf8) {
            if let Some(fast) = parse_request_fast(frame, role) {
                assert_eq!(
                    slow.as_ref(),
                    Ok(&fast),
                    "fast path decoded a frame that the careful path decodes otherwise, as {role}"
                );
            }
        }
        assert_eq!(
            got, slow,
            "parse_request differs from the careful path, as {role:?}"
        );

        let Ok(incoming) = got else { continue };
        match role {
            None => assert!(
                matches!(incoming.request, Request::Hello(_)),
                "before Hello"
            ),
            Some(role) => assert!(
                incoming.request.role().is_none_or(|r| r == role),
                "{} accepted from a {role}",
                incoming.request.type_name()
            ),
        }
        let out = incoming.request.to_value(incoming.r#ref);
        let back = parse_request(out.to_string().as_bytes(), role)
            .unwrap_or_else(|e| panic!("written back out as {out}, the request is refused: {e:?}"));
        let back = back.request.to_value(back.r#ref);
        assert!(
            same(&out, &back),
            "written back out as {out}, it reads as {back}"
        );
    }
});
