//! Desktop record requests: reading a record and its chain, changing it, and the requests that
//! make it final, each checked in the contract's order and audited as accepted or denied.
//! Never changes access directly: finals go through [`Engine::finalize`].

use super::*;

impl Engine {
    pub(super) fn record_request(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        request: Request,
    ) {
        let type_name = request.type_name();
        let Some(agent) = self.conns.get(&conn).and_then(|c| c.agent.clone()) else {
            Self::send(
                out,
                conn,
                r#ref,
                ServerMsg::error(
                    ErrorCode::NotLoggedIn,
                    format!("{type_name} needs a logged-in agent; send Login first"),
                ),
            );
            return;
        };
        let (record, needs_full) = match &request {
            Request::GetRecord(r) | Request::ChainedRecords(r) => (r.record.clone(), false),
            Request::UpdateRecord(r) | Request::RecordProcessed(r) => (r.record.clone(), true),
            Request::RecordReject(r) | Request::RecordCancel(r) => (r.record.clone(), true),
            Request::DoNotCall(r) => (r.record.clone(), true),
            Request::Reschedule(r) => (r.record.clone(), true),
            _ => unreachable!("record_request only gets record requests"),
        };
        let access = match self.check_access(&record, &agent, needs_full) {
            Ok(access) => access,
            Err(error) => {
                self.deny(out, conn, r#ref, &agent, &record, type_name, error);
                return;
            }
        };
        // Request-specific validation, after the access checks so that those come in contract order.
        let mut finish: Option<(Outcome, FinalExtra)> = None;
        let reply = match request {
            Request::GetRecord(_) => {
                let rec = &self.records[&record];
                ServerMsg::Record {
                    record: record.clone(),
                    access,
                    data: rec.data.clone(),
                    context: rec.context.clone(),
                    final_: rec.final_.clone(),
                }
            }
            Request::ChainedRecords(_) => {
                let rec = &self.records[&record];
                let mut count = 0u32;
                for entry in rec.chain.iter().filter(|e| e.record != record) {
                    count += 1;
                    Self::send(
                        out,
                        conn,
                        r#ref,
                        ServerMsg::ChainedRecord {
                            record: entry.record.clone(),
                            chain_n: entry.chain_n,
                            data: entry.data.clone(),
                            access,
                        },
                    );
                }
                ServerMsg::ChainedRecordsEnd {
                    record: record.clone(),
                    count,
                }
            }
            Request::UpdateRecord(change) => {
                if let Err(error) = self.check_size(&record, &change) {
                    self.deny(out, conn, r#ref, &agent, &record, type_name, error);
                    return;
                }
                let version = self.apply_change(&record, &change);
                let others: Vec<String> = self.records[&record]
                    .holders
                    .iter()
                    .filter(|(h, a)| a.is_granted() && h.as_str() != agent)
                    .map(|(h, _)| h.clone())
                    .collect();
                for h in others {
                    self.push_agent(
                        out,
                        &h,
                        ServerMsg::RecordChanged {
                            record: record.clone(),
                            version,
                            call_result: change.call_result.clone(),
                            fields: change.fields.clone(),
                            by: agent.clone(),
                        },
                    );
                }
                ServerMsg::RecordUpdated {
                    record: record.clone(),
                    version,
                }
            }
            Request::RecordProcessed(change) => {
                if let Err(error) = self.check_size(&record, &change) {
                    self.deny(out, conn, r#ref, &agent, &record, type_name, error);
                    return;
                }
                self.apply_change(&record, &change);
                finish = Some((Outcome::Processed, FinalExtra::default()));
                ServerMsg::RecordProcessedAck {
                    record: record.clone(),
                }
            }
            Request::RecordReject(_) => {
                finish = Some((Outcome::Rejected, FinalExtra::default()));
                ServerMsg::RecordRejected {
                    record: record.clone(),
                }
            }
            Request::RecordCancel(_) => {
                finish = Some((Outcome::Cancelled, FinalExtra::default()));
                ServerMsg::RecordCancelled {
                    record: record.clone(),
                }
            }
            Request::DoNotCall(d) => {
                let extra = FinalExtra {
                    scope: Some(d.scope),
                    ..FinalExtra::default()
                };
                finish = Some((Outcome::DoNotCall, extra));
                ServerMsg::DoNotCallAck {
                    record: record.clone(),
                    scope: d.scope,
                }
            }
            Request::Reschedule(s) => {
                let when = match parse_rfc3339(&s.at) {
                    Some(ms) if ms > self.now => Ok(ms),
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
                        self.deny(out, conn, r#ref, &agent, &record, type_name, e);
                        return;
                    }
                };
                let at = rfc3339(when);
                let extra = FinalExtra {
                    callback_at: Some(at.clone()),
                    callback: Some(s.callback),
                    ..FinalExtra::default()
                };
                finish = Some((Outcome::Rescheduled, extra));
                ServerMsg::Rescheduled {
                    record: record.clone(),
                    at,
                    callback: s.callback,
                }
            }
            _ => unreachable!(),
        };
        self.accept(out, &agent, &record, type_name);
        // The final requests: this agent's request decides the outcome, everyone else is told.
        if let Some((outcome, extra)) = finish {
            self.finalize(
                out,
                &record,
                outcome,
                Some(agent.clone()),
                Some(&agent),
                extra,
            );
        }
        Self::send(out, conn, r#ref, reply);
    }

    #[allow(clippy::result_large_err)]
    fn check_size(&self, record: &str, change: &RecordChange) -> Result<(), ServerMsg> {
        let rec = &self.records[record];
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

    fn apply_change(&mut self, record: &str, change: &RecordChange) -> u64 {
        let rec = self.records.get_mut(record).expect("checked record");
        merge_change(&mut rec.context, change);
        rec.version += 1;
        let version = rec.version;
        self.mark_dirty(record);
        version
    }

    fn accept(&mut self, out: &mut Vec<Output>, agent: &str, record: &str, request: &str) {
        let dn = self.agents.get(agent).map(|a| a.dn.clone());
        let call = self.records.get(record).map(|r| r.call.clone());
        let access = self.access_of(record, agent);
        self.audit(out, AuditKind::Accepted, |e| {
            e.record = Some(record.to_owned());
            e.agent = Some(agent.to_owned());
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
        agent: &str,
        record: &str,
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
        let dn = self.agents.get(agent).map(|a| a.dn.clone());
        let call = self.records.get(record).map(|r| r.call.clone());
        let access = self.access_of(record, agent);
        self.audit(out, AuditKind::Denied, |e| {
            e.record = Some(record.to_owned());
            e.agent = Some(agent.to_owned());
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
