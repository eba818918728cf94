//! Turning a frame into a [`Request`], with the error code the contract asks for at each step:
//! a fast path for well-formed frames, a careful one that names what is wrong. Never reads a
//! socket and never holds state between frames.

use super::*;

/// Why a frame could not become a request. Each maps to one error code.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub code: ErrorCode,
    pub message: String,
    /// The `ref` of the frame, when it could be read, so the error can echo it.
    pub r#ref: Option<u64>,
    /// The `type` of the frame, when it could be read.
    pub type_name: Option<String>,
}

/// A decoded request with its `ref`.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub r#ref: Option<u64>,
    pub request: Request,
}

/// The envelope fields of a frame, read without building a JSON tree. Every other field's value
/// is read through [`Checked`], and the frame must be an object (a derived struct would read an
/// array too), so that the fast path takes no frame that the careful path refuses.
pub(crate) struct Head<'a> {
    type_name: &'a str,
    r#ref: Option<u64>,
}

impl<'de> Deserialize<'de> for Head<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(HeadVisitor)
    }
}

struct HeadVisitor;

impl<'de> serde::de::Visitor<'de> for HeadVisitor {
    type Value = Head<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Head<'de>, A::Error> {
        use serde::de::Error;
        let (mut type_name, mut r#ref) = (None, None);
        // A key or a type with an escape in it is refused here: rare, and left to the careful path.
        while let Some(key) = map.next_key::<&str>()? {
            match key {
                "type" if type_name.is_none() => type_name = Some(map.next_value()?),
                "ref" if r#ref.is_none() => r#ref = Some(map.next_value::<Option<u64>>()?),
                "type" | "ref" => return Err(A::Error::custom("duplicate field")),
                _ => map.next_value::<Checked>().map(drop)?,
            }
        }
        Ok(Head {
            type_name: type_name.ok_or_else(|| A::Error::missing_field("type"))?,
            r#ref: r#ref.flatten(),
        })
    }
}

/// The common case, decoded straight from the bytes: a well-formed frame of a known type allowed
/// for `role`. Anything else returns `None` and goes through [`parse_request_slow`], which finds
/// the precise error.
pub(crate) fn parse_request_fast(frame: &[u8], role: Role) -> Option<Incoming> {
    fn de<'a, T: Deserialize<'a>>(frame: &'a [u8]) -> Option<T> {
        serde_json::from_slice(frame).ok()
    }
    let head: Head = serde_json::from_slice(frame).ok()?;
    let allowed = role_of(head.type_name)?;
    if allowed.is_some_and(|r| r != role) {
        return None;
    }
    let request = match head.type_name {
        "Ping" => Request::Ping,
        "Pong" => Request::Pong,
        "Status" => Request::Status,
        "Login" => Request::Login(de(frame)?),
        "Logout" => Request::Logout(de(frame)?),
        "GetRecord" => Request::GetRecord(de(frame)?),
        "UpdateRecord" => Request::UpdateRecord(de(frame)?),
        "RecordProcessed" => Request::RecordProcessed(de(frame)?),
        "ChainedRecords" => Request::ChainedRecords(de(frame)?),
        "RecordReject" => Request::RecordReject(de(frame)?),
        "RecordCancel" => Request::RecordCancel(de(frame)?),
        "DoNotCall" => Request::DoNotCall(de(frame)?),
        "Reschedule" => Request::Reschedule(de(frame)?),
        "AttachRecord" => Request::AttachRecord(de(frame)?),
        "CancelRecord" => Request::CancelRecord(de(frame)?),
        "Ringing" => Request::Ringing(de(frame)?),
        "Established" => Request::Established(de(frame)?),
        "Released" => Request::Released(de(frame)?),
        "Transferred" => Request::Transferred(de(frame)?),
        "Conferenced" => Request::Conferenced(de(frame)?),
        "AgentLogin" => Request::AgentLogin(de(frame)?),
        "AgentLogout" => Request::AgentLogout(de(frame)?),
        "AuditTail" => Request::AuditTail(de(frame)?),
        "RecordInfo" => Request::RecordInfo(de(frame)?),
        "ReleaseRecord" => Request::ReleaseRecord(de(frame)?),
        "Agents" => Request::Agents(de(frame)?),
        "Calls" => Request::Calls(de(frame)?),
        _ => return None, // Hello and anything new take the careful path
    };
    Some(Incoming {
        r#ref: head.r#ref,
        request,
    })
}

/// Any JSON value, read through and dropped, with the checks the careful path's `Value` makes.
/// serde_json skips the fields a struct does not have (and `IgnoredAny`) without them: it lets
/// through a lone surrogate (`"\ud800"`), a number out of range (`1e999`) and nesting past its
/// depth limit, all of which the careful path refuses as bad JSON.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Checked, D::Error> {
        d.deserialize_any(Checked)
    }
}

impl<'de> serde::de::Visitor<'de> for Checked {
    type Value = Checked;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

/// Parses one frame body sent by a client whose role is `role` (`None` before `Hello`).
pub fn parse_request(frame: &[u8], role: Option<Role>) -> Result<Incoming, ParseError> {
    // serde_json does not check the UTF-8 of values it skips, so check the whole frame first.
    if let (Some(role), Ok(_)) = (role, std::str::from_utf8(frame)) {
        if let Some(incoming) = parse_request_fast(frame, role) {
            return Ok(incoming);
        }
    }
    parse_request_slow(frame, role)
}

pub(crate) fn parse_request_slow(frame: &[u8], role: Option<Role>) -> Result<Incoming, ParseError> {
    let err = |code, message: String, r#ref, type_name| ParseError {
        code,
        message,
        r#ref,
        type_name,
    };
    let text = std::str::from_utf8(frame).map_err(|e| {
        err(
            ErrorCode::BadFrame,
            format!("frame is not valid UTF-8: {e}"),
            None,
            None,
        )
    })?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        err(
            ErrorCode::BadFrame,
            format!("frame is not valid JSON: {e}"),
            None,
            None,
        )
    })?;
    let Value::Object(mut obj) = value else {
        return Err(err(
            ErrorCode::BadFrame,
            "frame must hold one JSON object".into(),
            None,
            None,
        ));
    };
    let r#ref = match obj.remove("ref") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(r) => Some(r),
            None => {
                return Err(err(
                    ErrorCode::BadRequest,
                    "field `ref` must be an unsigned integer".into(),
                    None,
                    obj.get("type").and_then(Value::as_str).map(str::to_owned),
                ))
            }
        },
    };
    let type_name = match obj.remove("type") {
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(err(
                ErrorCode::BadRequest,
                "field `type` must be a string".into(),
                r#ref,
                None,
            ))
        }
        None => {
            return Err(err(
                ErrorCode::BadRequest,
                "missing field `type`".into(),
                r#ref,
                None,
            ))
        }
    };
    let Some(allowed) = role_of(&type_name) else {
        return Err(err(
            ErrorCode::UnknownType,
            format!("unknown message type `{type_name}`"),
            r#ref,
            Some(type_name),
        ));
    };
    if role.is_none() && type_name != "Hello" {
        return Err(err(
            ErrorCode::HelloRequired,
            format!("the first frame must be Hello, not `{type_name}`"),
            r#ref,
            Some(type_name),
        ));
    }
    if let (Some(allowed), Some(role)) = (allowed, role) {
        if allowed != role {
            return Err(err(
                ErrorCode::WrongRole,
                format!("`{type_name}` is for role `{allowed}`, this connection is `{role}`"),
                r#ref,
                Some(type_name),
            ));
        }
    }
    let body = Value::Object(obj);
    fn de<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, String> {
        serde_path_to_error::deserialize(body).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            if path == "." || inner.contains("missing field") {
                inner
            } else {
                format!("field `{path}`: {inner}")
            }
        })
    }
    let request = match type_name.as_str() {
        "Hello" => de(body).map(Request::Hello),
        "Ping" => Ok(Request::Ping),
        "Pong" => Ok(Request::Pong),
        "Login" => de(body).map(Request::Login),
        "Logout" => de(body).map(Request::Logout),
        "GetRecord" => de(body).map(Request::GetRecord),
        "UpdateRecord" => de(body).map(Request::UpdateRecord),
        "RecordProcessed" => de(body).map(Request::RecordProcessed),
        "ChainedRecords" => de(body).map(Request::ChainedRecords),
        "RecordReject" => de(body).map(Request::RecordReject),
        "RecordCancel" => de(body).map(Request::RecordCancel),
        "DoNotCall" => de(body).map(Request::DoNotCall),
        "Reschedule" => de(body).map(Request::Reschedule),
        "AttachRecord" => de(body).map(Request::AttachRecord),
        "CancelRecord" => de(body).map(Request::CancelRecord),
        "Ringing" => de(body).map(Request::Ringing),
        "Established" => de(body).map(Request::Established),
        "Released" => de(body).map(Request::Released),
        "Transferred" => de(body).map(Request::Transferred),
        "Conferenced" => de(body).map(Request::Conferenced),
        "AgentLogin" => de(body).map(Request::AgentLogin),
        "AgentLogout" => de(body).map(Request::AgentLogout),
        "AuditTail" => de(body).map(Request::AuditTail),
        "Status" => Ok(Request::Status),
        "RecordInfo" => de(body).map(Request::RecordInfo),
        "ReleaseRecord" => de(body).map(Request::ReleaseRecord),
        "Agents" => de(body).map(Request::Agents),
        "Calls" => de(body).map(Request::Calls),
        other => unreachable!("role_of knows `{other}` but the decoder does not"),
    };
    request
        .map(|request| Incoming { r#ref, request })
        .map_err(|message| {
            err(
                ErrorCode::BadRequest,
                format!("{type_name}: {message}"),
                r#ref,
                Some(type_name.clone()),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str, role: Option<Role>) -> Result<Incoming, ParseError> {
        parse_request(s.as_bytes(), role)
    }

    #[test]
    fn hello_parses_before_a_role_is_known() {
        let inc = parse(
            r#"{"type":"Hello","ref":1,"protocol":1,"role":"desktop","token":"t"}"#,
            None,
        )
        .unwrap();
        assert_eq!(inc.r#ref, Some(1));
        assert!(matches!(inc.request, Request::Hello(ref h) if h.role == "desktop"));
    }

    #[test]
    fn not_an_object_is_bad_frame() {
        for s in ["[1,2]", "\"x\"", "12", "{nope", ""] {
            assert_eq!(parse(s, None).unwrap_err().code, ErrorCode::BadFrame, "{s}");
        }
        let e = parse_request(&[0x7b, 0xff, 0x7d], None).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadFrame);
    }

    #[test]
    fn unknown_type_keeps_ref() {
        let e = parse(r#"{"type":"Frobnicate","ref":9}"#, Some(Role::Desktop)).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownType);
        assert_eq!(e.r#ref, Some(9));
    }

    #[test]
    fn missing_field_is_named() {
        let e = parse(
            r#"{"type":"Login","ref":3,"dn":"7001"}"#,
            Some(Role::Desktop),
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("agent"), "{}", e.message);
        let e = parse(
            r#"{"type":"Login","ref":3,"dn":7001,"agent":"a"}"#,
            Some(Role::Desktop),
        )
        .unwrap_err();
        assert!(e.message.contains("dn"), "{}", e.message);
    }

    #[test]
    fn wrong_role_is_detected_before_the_body() {
        let e = parse(r#"{"type":"AttachRecord","ref":1}"#, Some(Role::Desktop)).unwrap_err();
        assert_eq!(e.code, ErrorCode::WrongRole);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let inc = parse(
            r#"{"type":"GetRecord","ref":2,"record":"R1","colour":"blue"}"#,
            Some(Role::Desktop),
        )
        .unwrap();
        assert_eq!(
            inc.request,
            Request::GetRecord(RecordRef {
                record: "R1".into()
            })
        );
    }

    #[test]
    fn requests_round_trip_through_to_value() {
        let req = Request::Transferred(Transferred {
            call: "C1".into(),
            from_dn: "7001".into(),
            to_dn: "7002".into(),
            kind: TransferKind::TwoStep,
            consult_call: Some("C2".into()),
        });
        let v = req.to_value(Some(5));
        let back = parse_request(v.to_string().as_bytes(), Some(Role::Switch)).unwrap();
        assert_eq!(back.request, req);
        assert_eq!(back.r#ref, Some(5));
    }

    #[test]
    fn envelope_carries_ref_and_type() {
        let e = Envelope::reply(Some(7), ServerMsg::Ack);
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"type":"Ack","ref":7})
        );
        let p = Envelope::push(ServerMsg::LoggedOut {
            cause: LogoutCause::Replaced,
        });
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"type":"LoggedOut","cause":"replaced"})
        );
        let back: Envelope = serde_json::from_slice(&e.to_bytes()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn fast_and_careful_parsers_agree() {
        let frames = [
            r#"{"type":"GetRecord","ref":2,"record":"R1","extra":[1,2]}"#,
            r#"{"ref":3,"type":"UpdateRecord","record":"R1","fields":{"a":1},"call_result":"x"}"#,
            r#"{"type":"Transferred","ref":4,"call":"C","from_dn":"1","to_dn":"2","kind":"mute"}"#,
            r#"{"type":"Ping"}"#,
            r#"{"type":"Logout","ref":5}"#,
        ];
        for f in frames {
            for role in [Role::Desktop, Role::Switch] {
                let fast = parse_request_fast(f.as_bytes(), role);
                let slow = parse_request_slow(f.as_bytes(), Some(role)).ok();
                assert_eq!(fast, slow, "{f} as {role}");
            }
        }
    }

    const ROLES: [Role; 4] = [Role::Desktop, Role::Dialer, Role::Switch, Role::Admin];

    /// Found by fuzzing: the fast path took `["Ping"]` for a Ping and `["RecordInfo"]` for a
    /// RecordInfo of record "RecordInfo", since serde's derived structs read arrays too.
    #[test]
    fn an_array_is_a_bad_frame_on_both_paths() {
        for f in [r#"["Ping"]"#, r#" ["RecordInfo"]"#, r#"["GetRecord",1]"#] {
            for role in ROLES {
                assert_eq!(
                    parse_request_fast(f.as_bytes(), role),
                    None,
                    "{f} as {role}"
                );
                let e = parse(f, Some(role)).unwrap_err();
                assert_eq!(e.code, ErrorCode::BadFrame, "{f} as {role}");
            }
        }
    }

    /// Found by fuzzing: serde_json checks a lone surrogate, a number's range and the depth of
    /// nesting only in the values it keeps, so the fast path took a frame with one of them in a
    /// field the request does not have, which the careful path refuses as bad JSON.
    #[test]
    fn bad_json_in_an_unknown_field_is_a_bad_frame_on_both_paths() {
        let deep = format!(
            r#"{{"type":"Ping","x":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        for f in [
            r#"{"type":"Ping","note":"\ud800"}"#,
            r#"{"type":"GetRecord","record":"R1","x":["\uDC00"]}"#,
            r#"{"type":"AuditTail","x":1e999}"#,
            r#"{"type":"Status","x":{"y":-1e400}}"#,
            &deep,
        ] {
            for role in ROLES {
                assert_eq!(
                    parse_request_fast(f.as_bytes(), role),
                    None,
                    "{f} as {role}"
                );
                let e = parse(f, Some(role)).unwrap_err();
                assert_eq!(e.code, ErrorCode::BadFrame, "{f} as {role}");
            }
        }
        // A surrogate pair is a character like any other.
        let f = r#"{"type":"GetRecord","record":"R\ud83d\ude00","x":"\ud83d\ude00"}"#;
        let inc = parse(f, Some(Role::Desktop)).unwrap();
        assert_eq!(
            inc.request,
            Request::GetRecord(RecordRef {
                record: "R\u{1f600}".into()
            })
        );
        // An escape in a key or in the type leaves the frame to the careful path, which reads it.
        let f = r#"{"typ\u0065":"GetRecord","rec\u006frd":"R1"}"#;
        assert_eq!(parse_request_fast(f.as_bytes(), Role::Desktop), None);
        let inc = parse(f, Some(Role::Desktop)).unwrap();
        assert_eq!(
            inc.request,
            Request::GetRecord(RecordRef {
                record: "R1".into()
            })
        );
    }

    #[test]
    fn times_round_trip() {
        let ms = 1_790_000_000_123;
        let s = rfc3339(ms);
        assert!(s.ends_with('Z'));
        assert_eq!(parse_rfc3339(&s), Some(ms));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
