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

/// The envelope fields of a frame, read without building a JSON tree.
#[derive(Deserialize)]
pub(crate) struct Head<'a> {
    #[serde(rename = "type", borrow)]
    type_name: std::borrow::Cow<'a, str>,
    #[serde(rename = "ref", default)]
    r#ref: Option<u64>,
}

/// The common case, decoded straight from the bytes: a well-formed frame of a known type allowed
/// for `role`. Anything else returns `None` and goes through [`parse_request_slow`], which finds
/// the precise error.
pub(crate) fn parse_request_fast(frame: &[u8], role: Role) -> Option<Incoming> {
    fn de<'a, T: Deserialize<'a>>(frame: &'a [u8]) -> Option<T> {
        serde_json::from_slice(frame).ok()
    }
    let head: Head = serde_json::from_slice(frame).ok()?;
    let allowed = role_of(&head.type_name)?;
    if allowed.is_some_and(|r| r != role) {
        return None;
    }
    let request = match head.type_name.as_ref() {
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
        _ => return None, // Hello and anything new take the careful path
    };
    Some(Incoming {
        r#ref: head.r#ref,
        request,
    })
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

    #[test]
    fn times_round_trip() {
        let ms = 1_790_000_000_123;
        let s = rfc3339(ms);
        assert!(s.ends_with('Z'));
        assert_eq!(parse_rfc3339(&s), Some(ms));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
