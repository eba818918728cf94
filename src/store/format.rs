//! The store's binary encoding (format version 1), and how it tells it apart from the JSON that
//! stores written before it hold.
//!
//! A value written in format 1 starts with the byte `0x01`; a value written as JSON starts with
//! `{`. Readers accept both, so a store written by an older server is read as it is, and each
//! value moves to format 1 the next time it is written. Nothing is ever rewritten just to change
//! its encoding: the audit log in particular is append-only.
//!
//! The encoding is deliberately plain: unsigned integers as LEB128 varints, strings and byte runs
//! as a varint length and the bytes, an optional value as a `0`/`1` byte and the value, the
//! protocol's small enums as one byte each from fixed tables (never from the Rust enum's order),
//! and free-form JSON data (customer fields) as a tagged tree. Each type that is stored implements
//! [`Persist`]; the field order is the format and must never change within a version.

use crate::messages::*;
use serde::de::DeserializeOwned;
use serde_json::{Number, Value};

/// The first byte of every value written in format 1.
pub const VERSION_1: u8 = 0x01;

/// A type the store keeps, written field by field in format 1.
pub trait Persist: Sized {
    fn put(&self, w: &mut Writer);
    fn get(r: &mut Reader<'_>) -> Result<Self, String>;
}

/// Encodes a value in format 1, with its version byte.
pub fn encode<T: Persist>(value: &T) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(VERSION_1);
    value.put(&mut w);
    w.0
}

/// Decodes a stored value of either format. The error says what is wrong, not which value: the
/// caller names it.
pub fn decode<T: Persist + DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.first() {
        Some(&VERSION_1) => {
            let mut r = Reader::new(&bytes[1..]);
            let value = T::get(&mut r)?;
            if !r.is_empty() {
                return Err(format!("{} bytes left over after the value", r.remaining()));
            }
            Ok(value)
        }
        Some(b'{') => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        Some(other) => Err(format!(
            "unknown format (first byte {other:#04x}); it was written by a newer Baton"
        )),
        None => Err("the value is empty".into()),
    }
}

/// Appends format-1 fields to a buffer.
pub struct Writer(pub(crate) Vec<u8>);

impl Default for Writer {
    fn default() -> Self {
        Writer::new()
    }
}

impl Writer {
    /// An empty buffer (the version byte is the caller's to write first).
    pub fn new() -> Writer {
        Writer(Vec::with_capacity(128))
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    pub fn u8(&mut self, b: u8) {
        self.0.push(b);
    }

    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    pub fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
            None => self.u8(0),
        }
    }

    pub fn opt_varint(&mut self, v: Option<u64>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.varint(v);
            }
            None => self.u8(0),
        }
    }

    /// Free-form JSON: a tag byte per node (see [`Reader::value`]).
    pub fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.u8(0),
            Value::Bool(false) => self.u8(1),
            Value::Bool(true) => self.u8(2),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    self.u8(3);
                    self.varint(u);
                } else if let Some(i) = n.as_i64() {
                    // Negative: stored as its magnitude minus one, so that i64::MIN fits.
                    self.u8(4);
                    self.varint(!(i as u64));
                } else {
                    self.u8(5);
                    let f = n.as_f64().unwrap_or(0.0);
                    self.0.extend_from_slice(&f.to_bits().to_le_bytes());
                }
            }
            Value::String(s) => {
                self.u8(6);
                self.str(s);
            }
            Value::Array(items) => {
                self.u8(7);
                self.varint(items.len() as u64);
                for item in items {
                    self.value(item);
                }
            }
            Value::Object(map) => {
                self.u8(8);
                self.object(map);
            }
        }
    }

    /// An object's members, without a tag (fields known to be objects).
    pub fn object(&mut self, map: &Object) {
        self.varint(map.len() as u64);
        for (k, v) in map {
            self.str(k);
            self.value(v);
        }
    }
}

/// Reads format-1 fields; every read checks what is left, so a truncated or corrupt value is an
/// error, never a panic.
pub struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

/// Free-form data nested deeper than this is refused (a corrupt value must not overflow the
/// stack); frames are limited far below it.
const MAX_DEPTH: usize = 128;

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, at: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.at == self.buf.len()
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.at
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.remaining() < n {
            return Err(format!(
                "truncated: {n} bytes wanted at offset {}, {} left",
                self.at,
                self.remaining()
            ));
        }
        let s = &self.buf[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    pub fn varint(&mut self) -> Result<u64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!(
            "a varint longer than 64 bits at offset {}",
            self.at
        ))
    }

    pub fn u32(&mut self) -> Result<u32, String> {
        let v = self.varint()?;
        u32::try_from(v).map_err(|_| format!("{v} does not fit in 32 bits"))
    }

    fn len(&mut self) -> Result<usize, String> {
        let n = self.varint()?;
        // A length can never exceed what is left: refusing early keeps a corrupt length from
        // reserving memory.
        match usize::try_from(n) {
            Ok(n) if n <= self.remaining() => Ok(n),
            _ => Err(format!(
                "a length of {n} at offset {} with {} bytes left",
                self.at,
                self.remaining()
            )),
        }
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.len()?;
        self.take(n)
    }

    pub fn str(&mut self) -> Result<&'a str, String> {
        let at = self.at;
        std::str::from_utf8(self.bytes()?)
            .map_err(|_| format!("a string at offset {at} is not UTF-8"))
    }

    pub fn string(&mut self) -> Result<String, String> {
        self.str().map(str::to_owned)
    }

    fn flag(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("an option tag of {b} at offset {}", self.at - 1)),
        }
    }

    pub fn opt_string(&mut self) -> Result<Option<String>, String> {
        Ok(if self.flag()? {
            Some(self.string()?)
        } else {
            None
        })
    }

    pub fn opt_varint(&mut self) -> Result<Option<u64>, String> {
        Ok(if self.flag()? {
            Some(self.varint()?)
        } else {
            None
        })
    }

    pub fn value(&mut self) -> Result<Value, String> {
        self.value_at(0)
    }

    fn value_at(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(format!("data nested deeper than {MAX_DEPTH} levels"));
        }
        let at = self.at;
        Ok(match self.u8()? {
            0 => Value::Null,
            1 => Value::Bool(false),
            2 => Value::Bool(true),
            3 => Value::from(self.varint()?),
            4 => Value::from(!self.varint()? as i64),
            5 => {
                let bits: [u8; 8] = self.take(8)?.try_into().expect("8 bytes");
                let f = f64::from_bits(u64::from_le_bytes(bits));
                Value::Number(Number::from_f64(f).ok_or("a number that is not finite")?)
            }
            6 => Value::String(self.string()?),
            7 => {
                let n = self.len()?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value_at(depth + 1)?);
                }
                Value::Array(items)
            }
            8 => Value::Object(self.object_at(depth + 1)?),
            tag => return Err(format!("an unknown data tag {tag} at offset {at}")),
        })
    }

    /// An object written by [`Writer::object`].
    pub fn object(&mut self) -> Result<Object, String> {
        self.object_at(0)
    }

    fn object_at(&mut self, depth: usize) -> Result<Object, String> {
        let n = self.len()?;
        let mut map = Object::new();
        for _ in 0..n {
            let k = self.string()?;
            let v = self.value_at(depth)?;
            map.insert(k, v);
        }
        Ok(map)
    }
}

/// The protocol's small enums, one byte each. The tables are the format: a new variant gets a
/// new number, and no number is ever reused.
pub fn put_access(w: &mut Writer, a: Access) {
    w.u8(match a {
        Access::Revoked => 0,
        Access::ReadOnly => 1,
        Access::Full => 2,
    });
}

pub fn get_access(r: &mut Reader<'_>) -> Result<Access, String> {
    Ok(match r.u8()? {
        0 => Access::Revoked,
        1 => Access::ReadOnly,
        2 => Access::Full,
        b => return Err(format!("an unknown access {b}")),
    })
}

pub fn put_outcome(w: &mut Writer, o: Outcome) {
    w.u8(match o {
        Outcome::Processed => 0,
        Outcome::Rejected => 1,
        Outcome::Cancelled => 2,
        Outcome::DoNotCall => 3,
        Outcome::Rescheduled => 4,
        Outcome::Returned => 5,
        Outcome::Stale => 6,
    });
}

pub fn get_outcome(r: &mut Reader<'_>) -> Result<Outcome, String> {
    Ok(match r.u8()? {
        0 => Outcome::Processed,
        1 => Outcome::Rejected,
        2 => Outcome::Cancelled,
        3 => Outcome::DoNotCall,
        4 => Outcome::Rescheduled,
        5 => Outcome::Returned,
        6 => Outcome::Stale,
        b => return Err(format!("an unknown outcome {b}")),
    })
}

fn put_kind(w: &mut Writer, k: AuditKind) {
    w.u8(match k {
        AuditKind::Granted => 0,
        AuditKind::Downgraded => 1,
        AuditKind::Revoked => 2,
        AuditKind::Accepted => 3,
        AuditKind::Denied => 4,
        AuditKind::Finalized => 5,
        AuditKind::Attached => 6,
        AuditKind::Orphaned => 7,
        AuditKind::Login => 8,
        AuditKind::Logout => 9,
        AuditKind::LoginFailed => 10,
    });
}

fn get_kind(r: &mut Reader<'_>) -> Result<AuditKind, String> {
    Ok(match r.u8()? {
        0 => AuditKind::Granted,
        1 => AuditKind::Downgraded,
        2 => AuditKind::Revoked,
        3 => AuditKind::Accepted,
        4 => AuditKind::Denied,
        5 => AuditKind::Finalized,
        6 => AuditKind::Attached,
        7 => AuditKind::Orphaned,
        8 => AuditKind::Login,
        9 => AuditKind::Logout,
        10 => AuditKind::LoginFailed,
        b => return Err(format!("an unknown audit kind {b}")),
    })
}

/// Error codes are many and grow with the contract: kept by name.
fn get_code(r: &mut Reader<'_>) -> Result<ErrorCode, String> {
    use serde::de::value::{Error, StrDeserializer};
    use serde::de::IntoDeserializer;
    use serde::Deserialize;
    let name = r.str()?;
    let de: StrDeserializer<'_, Error> = name.into_deserializer();
    ErrorCode::deserialize(de).map_err(|_| format!("an unknown error code {name:?}"))
}

/// Which optional fields of an audit entry are present, one bit each.
mod has {
    pub const RECORD: u16 = 1;
    pub const AGENT: u16 = 1 << 1;
    pub const DN: u16 = 1 << 2;
    pub const CALL: u16 = 1 << 3;
    pub const ACCESS: u16 = 1 << 4;
    pub const PREVIOUS: u16 = 1 << 5;
    pub const REQUEST: u16 = 1 << 6;
    pub const CODE: u16 = 1 << 7;
    pub const CAUSE: u16 = 1 << 8;
}

impl Persist for AuditEntry {
    fn put(&self, w: &mut Writer) {
        w.varint(self.seq);
        w.str(&self.ts);
        put_kind(w, self.kind);
        let bit = |present: bool, b: u16| if present { b } else { 0 };
        let mask = bit(self.record.is_some(), has::RECORD)
            | bit(self.agent.is_some(), has::AGENT)
            | bit(self.dn.is_some(), has::DN)
            | bit(self.call.is_some(), has::CALL)
            | bit(self.access.is_some(), has::ACCESS)
            | bit(self.previous.is_some(), has::PREVIOUS)
            | bit(self.request.is_some(), has::REQUEST)
            | bit(self.code.is_some(), has::CODE)
            | bit(self.cause.is_some(), has::CAUSE);
        w.varint(u64::from(mask));
        for s in [&self.record, &self.agent, &self.dn, &self.call]
            .into_iter()
            .flatten()
        {
            w.str(s);
        }
        for a in [self.access, self.previous].into_iter().flatten() {
            put_access(w, a);
        }
        if let Some(s) = &self.request {
            w.str(s);
        }
        if let Some(c) = self.code {
            w.str(c.as_str());
        }
        if let Some(s) = &self.cause {
            w.str(s);
        }
    }

    fn get(r: &mut Reader<'_>) -> Result<Self, String> {
        let seq = r.varint()?;
        let ts = r.string()?;
        let kind = get_kind(r)?;
        let mask = r.varint()?;
        if mask >> 9 != 0 {
            return Err(format!("unknown fields in an audit entry (mask {mask:#x})"));
        }
        let mask = mask as u16;
        let on = |b: u16| mask & b != 0;
        let opt_string = |b: u16, r: &mut Reader<'_>| -> Result<Option<String>, String> {
            if on(b) {
                r.string().map(Some)
            } else {
                Ok(None)
            }
        };
        let record = opt_string(has::RECORD, r)?;
        let agent = opt_string(has::AGENT, r)?;
        let dn = opt_string(has::DN, r)?;
        let call = opt_string(has::CALL, r)?;
        let access = if on(has::ACCESS) {
            Some(get_access(r)?)
        } else {
            None
        };
        let previous = if on(has::PREVIOUS) {
            Some(get_access(r)?)
        } else {
            None
        };
        let request = opt_string(has::REQUEST, r)?;
        let code = if on(has::CODE) {
            Some(get_code(r)?)
        } else {
            None
        };
        let cause = opt_string(has::CAUSE, r)?;
        Ok(AuditEntry {
            seq,
            ts,
            kind,
            record,
            agent,
            dn,
            call,
            access,
            previous,
            request,
            code,
            cause,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry() -> AuditEntry {
        AuditEntry {
            seq: 300,
            ts: "2026-12-02T06:34:06.123Z".into(),
            kind: AuditKind::Denied,
            record: Some("R-1".into()),
            agent: Some("1042".into()),
            dn: None,
            call: Some("C-9".into()),
            access: Some(Access::ReadOnly),
            previous: None,
            request: Some("UpdateRecord".into()),
            code: Some(ErrorCode::AccessDenied),
            cause: Some("consultation".into()),
        }
    }

    #[test]
    fn audit_entries_round_trip_and_are_smaller_than_json() {
        let e = entry();
        let bytes = encode(&e);
        assert_eq!(bytes[0], VERSION_1);
        assert_eq!(decode::<AuditEntry>(&bytes).unwrap(), e);
        let json = serde_json::to_vec(&e).unwrap();
        assert!(
            bytes.len() * 2 < json.len(),
            "{} vs {}",
            bytes.len(),
            json.len()
        );
        // What older stores hold is read as before.
        assert_eq!(decode::<AuditEntry>(&json).unwrap(), e);
        let bare = AuditEntry {
            record: None,
            agent: None,
            call: None,
            access: None,
            request: None,
            code: None,
            cause: None,
            ..e
        };
        assert_eq!(decode::<AuditEntry>(&encode(&bare)).unwrap(), bare);
    }

    #[test]
    fn free_form_data_round_trips() {
        let v = json!({
            "name": "Ada", "balance": -12.5, "n": 42, "neg": -7, "min": i64::MIN,
            "max": u64::MAX, "ok": true, "no": false, "none": null,
            "list": [1, "two", {"three": [3.0]}], "empty": {}, "e": []
        });
        let mut w = Writer(Vec::new());
        w.value(&v);
        let mut r = Reader::new(&w.0);
        assert_eq!(r.value().unwrap(), v);
        assert!(r.is_empty());
    }

    #[test]
    fn damaged_values_are_errors_not_panics() {
        let bytes = encode(&entry());
        for cut in 0..bytes.len() {
            assert!(decode::<AuditEntry>(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode::<AuditEntry>(&longer)
            .unwrap_err()
            .contains("left over"));
        let newer = [0x02, 0, 0];
        assert!(decode::<AuditEntry>(&newer)
            .unwrap_err()
            .contains("newer Baton"));
        // A nest deeper than any frame allows is refused, not followed down the stack.
        let mut deep = [7u8, 1].repeat(10_000);
        deep.push(0);
        assert!(Reader::new(&deep).value().is_err());
        // A length larger than what is left reserves nothing.
        let mut huge = Writer(Vec::new());
        huge.u8(7);
        huge.varint(u64::MAX >> 1);
        assert!(Reader::new(&huge.0).value().is_err());
    }
}
