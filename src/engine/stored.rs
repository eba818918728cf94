//! How the engine's own state is written in the store's format 1 (see [`crate::store::format`]):
//! records and logged-in agents. The field order below is the format. A record's final outcome
//! comes first, so that the store can tell a final record, and when it became final, from the
//! first bytes without reading the rest.

use super::ids::{AgentId, CallId, Dn};
use super::state::{AgentState, Record};
use crate::messages::{ChainEntry, Context, FinalInfo};
use crate::store::format::{
    get_access, get_outcome, put_access, put_outcome, Persist, Reader, Writer,
};
use std::collections::BTreeMap;

impl Persist for Record {
    fn put(&self, w: &mut Writer) {
        match &self.final_ {
            Some(f) => {
                w.u8(1);
                put_outcome(w, f.outcome);
                w.opt_str(f.by.as_deref());
                w.str(&f.at);
            }
            None => w.u8(0),
        }
        w.str(self.call.as_str());
        w.str(&self.campaign);
        w.varint(u64::from(self.chain_n));
        w.opt_str(self.phone.as_deref());
        w.object(&self.data);
        w.varint(self.chain.len() as u64);
        for c in self.chain.iter() {
            w.str(&c.record);
            w.varint(u64::from(c.chain_n));
            w.opt_str(c.phone.as_deref());
            w.object(&c.data);
        }
        w.opt_str(self.context.call_result.as_deref());
        w.object(&self.context.fields);
        w.varint(self.version);
        w.varint(self.holders.len() as u64);
        for (agent, access) in &self.holders {
            w.str(agent.as_str());
            put_access(w, *access);
        }
        w.opt_varint(self.orphaned_since_ms);
    }

    fn get(r: &mut Reader<'_>) -> Result<Self, String> {
        let final_ = match r.u8()? {
            0 => None,
            1 => Some(FinalInfo {
                outcome: get_outcome(r)?,
                by: r.opt_string()?,
                at: r.string()?,
            }),
            b => return Err(format!("a final tag of {b}")),
        };
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
        let orphaned_since_ms = r.opt_varint()?;
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
        })
    }
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
