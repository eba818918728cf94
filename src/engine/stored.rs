//! How the engine's own state is written in the store's format 1 (see [`crate::store::format`]):
//! records and logged-in agents. The field order below is the format. A record's final outcome
//! comes first, so that the store can tell a final record, and when it became final, from the
//! first bytes without reading the rest.

use super::ids::{AgentId, CallId, Dn};
use super::state::{AgentState, Record};
use crate::messages::{Access, ChainEntry, Context, FinalInfo};
use crate::store::format::{
    get_access, get_outcome, put_access, put_outcome, Persist, Reader, Writer, VERSION_1,
};
use crate::store::records::{RECORD_FINAL, RECORD_SPLIT};
use std::collections::BTreeMap;

/// What changes in a record: its final outcome (first, see the module), context, version and
/// holders. Written on every change, under `r/` or `d/`.
fn put_state(rec: &Record, w: &mut Writer) {
    let final_flag = if rec.final_.is_some() {
        RECORD_FINAL
    } else {
        0
    };
    w.u8(RECORD_SPLIT | final_flag);
    if let Some(f) = &rec.final_ {
        put_outcome(w, f.outcome);
        w.opt_str(f.by.as_deref());
        w.str(&f.at);
    }
    put_context(rec, w);
    w.varint(rec.version);
    w.varint(rec.holders.len() as u64);
    for (agent, access) in &rec.holders {
        w.str(agent.as_str());
        put_access(w, *access);
    }
    w.opt_varint(rec.orphaned_since_ms);
}

fn put_context(rec: &Record, w: &mut Writer) {
    w.opt_str(rec.context.call_result.as_deref());
    w.object(&rec.context.fields);
}

/// What an attach gives a record and nothing changes afterwards: call, campaign, phone, data and
/// chain. Written once, under `b/`.
fn put_body(rec: &Record, w: &mut Writer) {
    w.str(rec.call.as_str());
    w.str(&rec.campaign);
    w.varint(u64::from(rec.chain_n));
    w.opt_str(rec.phone.as_deref());
    w.object(&rec.data);
    w.varint(rec.chain.len() as u64);
    for c in rec.chain.iter() {
        w.str(&c.record);
        w.varint(u64::from(c.chain_n));
        w.opt_str(c.phone.as_deref());
        w.object(&c.data);
    }
}

impl Record {
    /// The record's state as the store keeps it (format 1, split).
    pub(super) fn stored_state(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(VERSION_1);
        put_state(self, &mut w);
        w.into_bytes()
    }

    /// The record's body as the store keeps it (format 1), apart from its state.
    pub(super) fn stored_body(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(VERSION_1);
        put_body(self, &mut w);
        w.into_bytes()
    }
}

/// A record as the store hands it back: its state followed by its body (see
/// [`crate::store::records::join_record`]). A record written whole by an older server (no split
/// flag) is read too, and then has its body written apart the next time it changes.
impl Persist for Record {
    fn put(&self, w: &mut Writer) {
        put_state(self, w);
        w.u8(VERSION_1);
        put_body(self, w);
    }

    fn get(r: &mut Reader<'_>) -> Result<Self, String> {
        let flags = r.u8()?;
        if flags & !(RECORD_FINAL | RECORD_SPLIT) != 0 {
            return Err(format!("a record flags byte of {flags:#04x}"));
        }
        let final_ = if flags & RECORD_FINAL != 0 {
            Some(FinalInfo {
                outcome: get_outcome(r)?,
                by: r.opt_string()?,
                at: r.string()?,
            })
        } else {
            None
        };
        let split = flags & RECORD_SPLIT != 0;
        let mut state = None;
        if split {
            state = Some(get_state(r)?);
            match r.u8()? {
                VERSION_1 => {}
                v => return Err(format!("a record body of version {v:#04x}")),
            }
        }
        let call = CallId::from(r.str()?);
        let campaign = r.string()?;
        let chain_n = r.u32()?;
        let phone = r.opt_string()?;
        let data = r.object()?;
        let links = r.varint()?;
        let mut chain = Vec::new();
        for _ in 0..links {
            chain.push(ChainEntry {
                record: r.string()?,
                chain_n: r.u32()?,
                phone: r.opt_string()?,
                data: r.object()?,
            });
        }
        let (context, version, holders, orphaned_since_ms) = match state {
            Some(state) => state,
            None => get_state(r)?,
        };
        Ok(Record {
            call,
            campaign,
            chain_n,
            phone,
            data: std::sync::Arc::new(data),
            chain: std::sync::Arc::new(chain),
            context,
            version,
            final_,
            holders,
            orphaned_since_ms,
            resident_since_ms: 0,
            body_stored: split,
        })
    }
}

type State = (Context, u64, BTreeMap<AgentId, Access>, Option<u64>);

/// The fields of a record's state after its final outcome, in either layout.
fn get_state(r: &mut Reader<'_>) -> Result<State, String> {
    let context = Context {
        call_result: r.opt_string()?,
        fields: r.object()?,
    };
    let version = r.varint()?;
    let n = r.varint()?;
    let mut holders = BTreeMap::new();
    for _ in 0..n {
        let agent = AgentId::from(r.str()?);
        holders.insert(agent, get_access(r)?);
    }
    Ok((context, version, holders, r.opt_varint()?))
}

impl Persist for AgentState {
    fn put(&self, w: &mut Writer) {
        w.str(self.dn.as_str());
        w.str(&self.session);
    }

    fn get(r: &mut Reader<'_>) -> Result<Self, String> {
        Ok(AgentState {
            dn: Dn::from(r.str()?),
            session: r.string()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{Access, Outcome};
    use crate::store::format::{decode, encode};
    use crate::store::records::{stored_record_final_ms, stored_record_is_final};
    use serde_json::json;

    fn record(final_: Option<FinalInfo>) -> Record {
        let obj = |v: serde_json::Value| v.as_object().cloned().unwrap();
        Record {
            call: CallId::from("C-1"),
            campaign: "spring".into(),
            chain_n: 2,
            phone: Some("+441234".into()),
            data: std::sync::Arc::new(obj(
                json!({"name": "Ada", "balance": 12.5, "tags": ["a", 1, null]}),
            )),
            chain: std::sync::Arc::new(vec![ChainEntry {
                record: "R-1b".into(),
                chain_n: 3,
                phone: None,
                data: obj(json!({"alt": true})),
            }]),
            context: Context {
                call_result: Some("answered".into()),
                fields: obj(json!({"note": "call back"})),
            },
            version: 7,
            final_,
            holders: BTreeMap::from([
                (AgentId::from("1042"), Access::Full),
                (AgentId::from("1043"), Access::Revoked),
            ]),
            orphaned_since_ms: Some(1_764_000_000_000),
            resident_since_ms: 99,
            body_stored: false,
        }
    }

    /// Compared through JSON: what the store kept, field by field, is what was written (all
    /// but where it sits in memory, which is not stored).
    fn same(a: &Record, b: &Record) {
        assert_eq!(
            serde_json::to_value(a).unwrap(),
            serde_json::to_value(b).unwrap()
        );
    }

    #[test]
    fn records_round_trip_in_format_1_and_json_is_still_read() {
        let live = record(None);
        let bytes = encode(&live);
        let back: Record = decode(&bytes).unwrap();
        same(&back, &live);
        assert_eq!(back.resident_since_ms, 0);
        assert!(!stored_record_is_final(&bytes).unwrap());
        assert_eq!(stored_record_final_ms(&bytes).unwrap(), None);
        let json = serde_json::to_vec(&live).unwrap();
        assert!(
            bytes.len() < json.len() * 2 / 3,
            "{} vs {}",
            bytes.len(),
            json.len()
        );
        same(&decode::<Record>(&json).unwrap(), &live);
        assert!(!decode::<Record>(&json).unwrap().body_stored);
        // Stored as state and body; read back as one.
        assert_eq!(
            bytes,
            crate::store::records::join_record(&live.stored_state(), &live.stored_body()).to_vec()
        );
        assert!(back.body_stored);
        assert!(crate::store::records::stored_record_is_split(
            &live.stored_state()
        ));

        let done = record(Some(FinalInfo {
            outcome: Outcome::DoNotCall,
            by: Some("1042".into()),
            at: "2026-12-02T06:34:06.123Z".into(),
        }));
        let bytes = encode(&done);
        same(&decode::<Record>(&bytes).unwrap(), &done);
        assert!(stored_record_is_final(&bytes).unwrap());
        assert_eq!(
            stored_record_final_ms(&bytes).unwrap(),
            crate::messages::parse_rfc3339("2026-12-02T06:34:06.123Z")
        );
        let json = serde_json::to_vec(&done).unwrap();
        assert!(stored_record_is_final(&json).unwrap());
    }

    /// The layout, byte by byte (the fuzz corpus seeds with the same value): a final record as
    /// read back, its state then its body.
    #[test]
    fn a_split_record_reads_from_known_bytes() {
        let bytes = b"\x01\x03\x00\x01\x041042\x182026-12-02T06:34:06.123Z\x00\x00\x01\x01\x041042\x00\x00\x01\x02C1\x01c\x00\x00\x00\x00";
        let r: Record = decode(bytes).unwrap();
        let f = r.final_.as_ref().unwrap();
        assert_eq!(
            (f.outcome, f.by.as_deref()),
            (Outcome::Processed, Some("1042"))
        );
        assert_eq!(
            (r.call.as_str(), r.campaign.as_str(), r.version),
            ("C1", "c", 1)
        );
        assert_eq!(
            r.holders.get(&AgentId::from("1042")),
            Some(&Access::Revoked)
        );
        assert!(r.body_stored);
        assert_eq!(encode(&r), bytes.to_vec());
    }

    #[test]
    fn agents_round_trip() {
        let a = AgentState {
            dn: Dn::from("5001"),
            session: "s3cr3t-token".into(),
        };
        let back: AgentState = decode(&encode(&a)).unwrap();
        assert_eq!(
            (back.dn.as_str(), back.session.as_str()),
            ("5001", "s3cr3t-token")
        );
    }
}
