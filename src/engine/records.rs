//! Desktop record requests: reading a record and its chain, changing it, and the requests that
//! make it final, one function per request. Each is checked in the contract's order (logged in,
//! then [`Engine::check_access`], then what is particular to the request) and audited as
//! accepted or denied. Never changes access directly: finals go through [`Engine::finalize`].

use super::*;

/// A desktop record request that passed the common checks: where to answer, who asked, with
/// what access.
struct Asked {
    conn: ConnId,
    r#ref: Option<u64>,
    /// The request's type name, for errors and the audit log.
    request: &'static str,
    agent: AgentId,
    access: Access,
}

impl Engine {
    pub(super) fn get_record(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        r: RecordRef,
    ) {
        let record = RecordId::from(r.record);
        let Some(asked) = self.check_request(out, conn, r#ref, "GetRecord", &record, false) else {
            return;
        };
        let rec = self.checked_record(&record);
        let reply = ServerMsg::Record {
            record: String::from(&record),
            access: asked.access,
            data: (*rec.data).clone(),
            context: rec.context.clone(),
            final_: rec.final_.clone(),
        };
        self.conclude(out, &asked, &record, None, reply);
    }

    pub(super) fn chained_records(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        r: RecordRef,
    ) {
        let record = RecordId::from(r.record);
        let Some(asked) = self.check_request(out, conn, r#ref, "ChainedRecords", &record, false)
        else {
            return;
        };
        let rec = self.checked_record(&record);
        let mut count = 0u32;
        for entry in rec.chain.iter().filter(|e| e.record != record.as_str()) {
            count += 1;
            Self::send(
                out,
                conn,
                r#ref,
                ServerMsg::ChainedRecord {
                    record: entry.record.clone(),
                    chain_n: entry.chain_n,
                    data: entry.data.clone(),
                    access: asked.access,
                },
            );
        }
        let reply = ServerMsg::ChainedRecordsEnd {
            record: String::from(&record),
            count,
        };
        self.conclude(out, &asked, &record, None, reply);
    }

    pub(super) fn update_record(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        change: RecordChange,
    ) {
        let record = &RecordId::from(change.record.as_str());
        let Some(asked) = self.check_request(out, conn, r#ref, "UpdateRecord", record, true) else {
            return;
        };
        if let Err(error) = self.check_size(record, &change) {
            self.refuse(out, &asked, record, error);
            return;
        }
        let version = self.apply_change(record, &change);
        let others: Vec<AgentId> = self
            .checked_record(record)
            .holders
            .iter()
            .filter(|(h, a)| a.is_granted() && **h != asked.agent)
            .map(|(h, _)| h.clone())
            .collect();
        for h in others {
            self.push_agent(
                out,
                &h,
                ServerMsg::RecordChanged {
                    record: record.into(),
                    version,
                    call_result: change.call_result.clone(),
                    fields: change.fields.clone(),
                    by: String::from(&asked.agent),
                },
            );
        }
        let reply = ServerMsg::RecordUpdated {
            record: record.into(),
            version,
        };
        self.conclude(out, &asked, record, None, reply);
    }

    pub(super) fn record_processed(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        change: RecordChange,
    ) {
        let record = &RecordId::from(change.record.as_str());
        let Some(asked) = self.check_request(out, conn, r#ref, "RecordProcessed", record, true)
        else {
            return;
        };
        if let Err(error) = self.check_size(record, &change) {
            self.refuse(out, &asked, record, error);
            return;
        }
        self.apply_change(record, &change);
        let finish = (Outcome::Processed, FinalExtra::default());
        let reply = ServerMsg::RecordProcessedAck {
            record: record.into(),
        };
        self.conclude(out, &asked, record, Some(finish), reply);
    }

    pub(super) fn record_reject(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        r: RecordRef,
    ) {
        let record = RecordId::from(r.record);
        let Some(asked) = self.check_request(out, conn, r#ref, "RecordReject", &record, true)
        else {
            return;
        };
        let finish = (Outcome::Rejected, FinalExtra::default());
        let reply = ServerMsg::RecordRejected {
            record: String::from(&record),
        };
        self.conclude(out, &asked, &record, Some(finish), reply);
    }

    pub(super) fn record_cancel(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        r: RecordRef,
    ) {
        let record = RecordId::from(r.record);
        let Some(asked) = self.check_request(out, conn, r#ref, "RecordCancel", &record, true)
        else {
            return;
        };
        let finish = (Outcome::Cancelled, FinalExtra::default());
        let reply = ServerMsg::RecordCancelled {
            record: String::from(&record),
        };
        self.conclude(out, &asked, &record, Some(finish), reply);
    }

    pub(super) fn do_not_call(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        d: DoNotCall,
    ) {
        let record = RecordId::from(d.record);
        let Some(asked) = self.check_request(out, conn, r#ref, "DoNotCall", &record, true) else {
            return;
        };
        let extra = FinalExtra {
            scope: Some(d.scope),
            ..FinalExtra::default()
        };
        let reply = ServerMsg::DoNotCallAck {
            record: String::from(&record),
            scope: d.scope,
        };
        self.conclude(
            out,
            &asked,
            &record,
            Some((Outcome::DoNotCall, extra)),
            reply,
        );
    }

    pub(super) fn reschedule(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        s: Reschedule,
    ) {
        let record = RecordId::from(s.record);
        let Some(asked) = self.check_request(out, conn, r#ref, "Reschedule", &record, true) else {
            return;
        };
        // Validated after the access checks, so that those come in the contract's order.
        let when = match parse_rfc3339(&s.at) {
            Some(ms) if ms > self.now_ms => Ok(ms),
            Some(_) => Err("must be in the future"),
            None => Err("is not an RFC 3339 time"),
        };
        let when = match when {
            Ok(ms) => ms,
            Err(problem) => {
                let e = ServerMsg::error(
                    ErrorCode::BadRequest,
                    format!("Reschedule: field `at` ({}) {problem}", s.at),
                );
                self.refuse(out, &asked, &record, e);
                return;
            }
        };
        let at = rfc3339(when);
        let extra = FinalExtra {
            callback_at: Some(at.clone()),
            callback: Some(s.callback),
            ..FinalExtra::default()
        };
        let reply = ServerMsg::Rescheduled {
            record: String::from(&record),
            at,
            callback: s.callback,
        };
        self.conclude(
            out,
            &asked,
            &record,
            Some((Outcome::Rescheduled, extra)),
            reply,
        );
    }

    /// A record that passed [`Engine::check_request`]: the access checks found it in memory, and
    /// nothing between them and the reply takes a record out of memory (only a tick does).
    fn checked_record(&self, record: &RecordId) -> &Record {
        match self.records.get(record) {
            Some(rec) => rec,
            None => panic!("record {record} passed the access checks, which find it in memory"),
        }
    }

    /// The checks every desktop record request starts with: a logged-in agent, then the access
    /// checks in the contract's order. A refusal is answered (and audited) here.
    fn check_request(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        request: &'static str,
        record: &RecordId,
        needs_full: bool,
    ) -> Option<Asked> {
        let Some(agent) = self.conns.get(&conn).and_then(|c| c.agent.clone()) else {
            Self::send(
                out,
                conn,
                r#ref,
                ServerMsg::error(
                    ErrorCode::NotLoggedIn,
                    format!("{request} needs a logged-in agent; send Login first"),
                ),
            );
            return None;
        };
        match self.check_access(record, &agent, needs_full) {
            Ok(access) => Some(Asked {
                conn,
                r#ref,
                request,
                agent,
                access,
            }),
            Err(error) => {
                self.deny(out, conn, r#ref, &agent, record, request, error);
                None
            }
        }
    }

    /// Refuses a request that passed the access checks but not its own.
    fn refuse(
        &mut self,
        out: &mut Vec<Output>,
        asked: &Asked,
        record: &RecordId,
        error: ServerMsg,
    ) {
        let (conn, r#ref, request) = (asked.conn, asked.r#ref, asked.request);
        self.deny(out, conn, r#ref, &asked.agent, record, request, error);
    }

    /// An accepted request: audited, made final when it is one of the final requests (this
    /// agent's request decides the outcome, everyone else is told), then answered.
    fn conclude(
        &mut self,
        out: &mut Vec<Output>,
        asked: &Asked,
        record: &RecordId,
        finish: Option<(Outcome, FinalExtra)>,
        reply: ServerMsg,
    ) {
        self.accept(out, &asked.agent, record, asked.request);
        if let Some((outcome, extra)) = finish {
            self.finalize(
                out,
                record,
                outcome,
                FinalBy::Agent(asked.agent.clone()),
                extra,
            );
        }
        Self::send(out, asked.conn, asked.r#ref, reply);
    }

    #[allow(clippy::result_large_err)]
    fn check_size(&self, record: &RecordId, change: &RecordChange) -> Result<(), ServerMsg> {
        let rec = self.checked_record(record);
        let mut context = rec.context.clone();
        merge_change(&mut context, change);
        let size = json_len(&rec.data) + json_len(&context);
        // Leave room for the envelope of an AccessChanged that carries both.
        let limit = self.cfg.max_frame_bytes.saturating_sub(1024);
        if size > limit {
            return Err(ServerMsg::error(
                ErrorCode::BadRequest,
                format!(
                    "record {record} would hold {size} bytes of data and context, over the limit of {limit}"
                ),
            ));
        }
        Ok(())
    }

    fn apply_change(&mut self, record: &RecordId, change: &RecordChange) -> u64 {
        let Some(rec) = self.records.get_mut(record) else {
            panic!("record {record} passed the access checks, which find it in memory");
        };
        merge_change(&mut rec.context, change);
        rec.version += 1;
        let version = rec.version;
        self.mark_dirty(record);
        version
    }

    fn accept(&mut self, out: &mut Vec<Output>, agent: &AgentId, record: &RecordId, request: &str) {
        let dn = self.agents.get(agent).map(|a| String::from(&a.dn));
        let call = self.records.get(record).map(|r| String::from(&r.call));
        let access = self.access_to(record, agent);
        self.audit(out, AuditKind::Accepted, |e| {
            e.record = Some(record.into());
            e.agent = Some(agent.into());
            e.dn = dn;
            e.call = call;
            e.access = access;
            e.request = Some(request.to_owned());
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn deny(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        agent: &AgentId,
        record: &RecordId,
        request: &str,
        error: ServerMsg,
    ) {
        let code = match &error {
            ServerMsg::Error { code, .. } => *code,
            _ => ErrorCode::BadRequest,
        };
        let message = match &error {
            ServerMsg::Error { message, .. } => message.clone(),
            _ => String::new(),
        };
        let dn = self.agents.get(agent).map(|a| String::from(&a.dn));
        let call = self.records.get(record).map(|r| String::from(&r.call));
        let access = self.access_to(record, agent);
        self.audit(out, AuditKind::Denied, |e| {
            e.record = Some(record.into());
            e.agent = Some(agent.into());
            e.dn = dn;
            e.call = call;
            e.access = access;
            e.request = Some(request.to_owned());
            e.code = Some(code);
            e.cause = Some(message);
        });
        Self::send(out, conn, r#ref, error);
    }
}

/// How many bytes `value` takes as JSON (0 if it cannot be written), counted without building it.
pub(super) fn json_len<T: Serialize>(value: &T) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, value).map_or(0, |()| counter.0)
}

fn merge_change(context: &mut Context, change: &RecordChange) {
    if let Some(cr) = &change.call_result {
        context.call_result = Some(cr.clone());
    }
    if let Some(fields) = &change.fields {
        for (k, v) in fields {
            context.fields.insert(k.clone(), v.clone());
        }
    }
}
