//! The dialer's requests: attaching a record to a call (granting at once if the call is already
//! answered on an agent's DN) and cancelling a record. Never touches calls or sessions.

use super::*;
use std::sync::Arc;

impl Engine {
    pub(super) fn attach(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        a: AttachRecord,
    ) {
        if a.record.is_empty() || a.call.is_empty() {
            Self::send(
                out,
                conn,
                r#ref,
                ServerMsg::error(
                    ErrorCode::BadRequest,
                    "AttachRecord: fields `record` and `call` must not be empty",
                ),
            );
            return;
        }
        let size = json_len(&a.data);
        let limit = self.cfg.max_frame_bytes.saturating_sub(1024);
        if size > limit {
            let msg = format!(
                "AttachRecord: field `data` holds {size} bytes, over the limit of {limit} (max_frame_bytes - 1024)"
            );
            Self::send(
                out,
                conn,
                r#ref,
                ServerMsg::error(ErrorCode::BadRequest, msg),
            );
            return;
        }
        if let Some(rec) = self.records.get(a.record.as_str()) {
            if rec.final_.is_none() {
                if rec.call.as_str() == a.call {
                    Self::send(
                        out,
                        conn,
                        r#ref,
                        ServerMsg::RecordAttached {
                            record: a.record,
                            call: a.call,
                        },
                    );
                } else {
                    let msg = format!(
                        "record {} is live on call {}; it can be attached to call {} once it is final",
                        a.record, rec.call, a.call
                    );
                    Self::send(
                        out,
                        conn,
                        r#ref,
                        ServerMsg::error(ErrorCode::RecordBusy, msg),
                    );
                }
                return;
            }
        }
        let call = CallId::from(a.call.as_str());
        if let Some(other) = self.call_record.get(&call) {
            let msg = format!("call {} already carries live record {other}", a.call);
            Self::send(
                out,
                conn,
                r#ref,
                ServerMsg::error(ErrorCode::RecordBusy, msg),
            );
            return;
        }
        let chain_n = a.chain_n.unwrap_or(0);
        let cause = format!("campaign {}, chain_n {chain_n}", a.campaign);
        let record = Record {
            call: call.clone(),
            campaign: a.campaign,
            chain_n,
            phone: a.phone.clone(),
            data: Arc::new(a.data),
            chain: Arc::new(a.chain),
            context: Context::default(),
            version: 0,
            final_: None,
            holders: BTreeMap::new(),
            orphaned_since_ms: None,
            resident_since_ms: 0,
            body_stored: false,
        };
        let id = RecordId::from(a.record.as_str());
        if let Some(old) = self.records.insert(id.clone(), record) {
            if old.final_.is_some() {
                // A final record attached again is live again.
                self.finals -= 1;
                let filed = self
                    .final_queue
                    .remove(&(old.resident_since_ms, id.clone()));
                assert!(filed, "a final record in memory is in the final queue");
            }
        }
        self.mark_dirty(&id);
        self.call_record.insert(call.clone(), id);
        let (rid, cid) = (a.record.clone(), a.call.clone());
        self.audit(out, AuditKind::Attached, |e| {
            e.record = Some(rid);
            e.call = Some(cid);
            e.cause = Some(cause);
        });
        Self::send(
            out,
            conn,
            r#ref,
            ServerMsg::RecordAttached {
                record: a.record,
                call: a.call.clone(),
            },
        );
        if self.calls.contains_key(&call) {
            if let Some(phone) = a.phone {
                self.index_ani(&call, &phone);
            }
            // The call may already be answered on an agent's DN: grant at once (rule 1).
            let established: Vec<Dn> = self
                .calls
                .get(&call)
                .map_or_else(Vec::new, |c| c.parties.established().cloned().collect());
            for dn in established {
                if let Some(agent) = self.agent_on(&dn) {
                    self.grant_for_party(out, &call, &agent, false);
                }
            }
        }
    }

    pub(super) fn dialer_cancel(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        c: RecordRef,
    ) {
        let record = RecordId::from(c.record);
        if !self.is_live_or_refused(out, conn, r#ref, &record) {
            return;
        }
        self.finalize(
            out,
            &record,
            Outcome::Cancelled,
            FinalBy::Dialer,
            FinalExtra::default(),
        );
        Self::send(
            out,
            conn,
            r#ref,
            ServerMsg::RecordCancelled {
                record: record.into(),
            },
        );
    }
}
