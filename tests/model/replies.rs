//! Checking each reply against what the reference model expected of its request.

use super::*;

impl Harness {
    pub(crate) fn check_reply(
        &self,
        s: &Sent,
        msgs: &[ServerMsg],
        out: &[Output],
        audit_log_len_before: usize,
    ) -> Result<(), String> {
        let single = |what: &str| -> Result<&ServerMsg, String> {
            if msgs.len() != 1 {
                return Err(format!(
                    "inv 7: {what} got {} replies: {msgs:?}",
                    msgs.len()
                ));
            }
            Ok(&msgs[0])
        };
        let code_of = |m: &ServerMsg| match m {
            ServerMsg::Error { code, .. } => Some(*code),
            _ => None,
        };
        match &s.kind {
            Kind::Ping => {
                let m = single("Ping")?;
                if *m != ServerMsg::Pong {
                    return Err(format!("Ping answered {m:?}"));
                }
            }
            Kind::Switch => {
                let m = single("switch event")?;
                if *m != ServerMsg::Ack {
                    return Err(format!("switch event answered {m:?}"));
                }
            }
            Kind::Login {
                conn_logged_in,
                resume_sent,
                expect_resumed,
            } => {
                let m = single("Login")?;
                match m {
                    ServerMsg::LoggedIn { resumed, .. } => {
                        if *conn_logged_in {
                            return Err(format!(
                                "Login on an already logged-in connection got {m:?}"
                            ));
                        }
                        if *resumed && !resume_sent {
                            return Err("LoggedIn{resumed:true} without a resume token".into());
                        }
                        if let Some(e) = expect_resumed {
                            if e != resumed {
                                return Err(format!("resume: expected resumed:{e}, got {m:?}"));
                            }
                        }
                    }
                    ServerMsg::Error {
                        code: ErrorCode::BadRequest,
                        ..
                    } if *conn_logged_in => {}
                    other => return Err(format!("Login answered {other:?}")),
                }
            }
            Kind::Logout {
                logged_in,
                force,
                full_live,
            } => {
                let m = single("Logout")?;
                match m {
                    ServerMsg::Error {
                        code: ErrorCode::NotLoggedIn,
                        ..
                    } if !logged_in => {}
                    ServerMsg::LoggedOut {
                        cause: LogoutCause::Desktop,
                    } if *logged_in && (*force || full_live.is_empty()) => {
                        // Rule 11: a forced logout returns its `full` records to the dialer.
                        for r in full_live {
                            let f = self.engine.final_of(r);
                            if f.as_ref().map(|f| f.outcome) != Some(Outcome::Returned) {
                                return Err(format!(
                                    "rule 11: forced logout left {r} with final {f:?}"
                                ));
                            }
                        }
                    }
                    ServerMsg::LogoutPending { records } if *logged_in && !force => {
                        bump(&LOGOUT_PENDING);
                        let got: BTreeSet<String> = records.iter().cloned().collect();
                        if got != *full_live {
                            return Err(format!(
                                "rule 11: LogoutPending {got:?}, full live records {full_live:?}"
                            ));
                        }
                    }
                    other => {
                        return Err(format!(
                            "rule 11: Logout(force {force}, logged in {logged_in}, \
                             full {full_live:?}) answered {other:?}"
                        ))
                    }
                }
            }
            Kind::Attach { busy_elsewhere } => {
                let m = single("AttachRecord")?;
                match m {
                    ServerMsg::RecordAttached { .. } if !busy_elsewhere => {}
                    ServerMsg::Error {
                        code: ErrorCode::RecordBusy,
                        ..
                    } => {}
                    other => {
                        return Err(format!(
                            "AttachRecord (live elsewhere: {busy_elsewhere}) answered {other:?}"
                        ))
                    }
                }
            }
            Kind::DialerCancel { expect } | Kind::AdminRelease { expect } => {
                let m = single("CancelRecord/ReleaseRecord")?;
                let ok = matches!(
                    m,
                    ServerMsg::RecordCancelled { .. } | ServerMsg::RecordReleased { .. }
                );
                let got = if ok { Ok(()) } else { Err(code_of(m)) };
                if got != expect.map_err(Some) {
                    return Err(format!("expected {expect:?}, got {m:?}"));
                }
            }
            Kind::Desk {
                agent,
                record,
                op,
                expect,
            } => {
                let op = *op;
                let last = msgs.last().expect("non-empty");
                if op == DeskOp::Chained && code_of(last).is_none() {
                    let (end, items) = msgs.split_last().expect("non-empty");
                    let ServerMsg::ChainedRecordsEnd { count, .. } = end else {
                        return Err(format!("inv 7: ChainedRecords stream ends with {end:?}"));
                    };
                    if *count as usize != items.len() {
                        return Err(format!(
                            "ChainedRecordsEnd count {count} after {} records",
                            items.len()
                        ));
                    }
                    for i in items {
                        match i {
                            ServerMsg::ChainedRecord {
                                record: r, access, ..
                            } => {
                                if r == record {
                                    return Err(format!(
                                        "ChainedRecords returned the record asked about: {i:?}"
                                    ));
                                }
                                if Ok(*access) != *expect {
                                    return Err(format!(
                                        "rule 3: chained record with access {access:?}, \
                                         holder has {expect:?}"
                                    ));
                                }
                            }
                            other => {
                                return Err(format!(
                                    "inv 7: {other:?} inside a ChainedRecords stream"
                                ))
                            }
                        }
                    }
                } else {
                    single("record request")?;
                }
                match (code_of(last), expect) {
                    (Some(code), Err(want)) if code == *want => {
                        match code {
                            ErrorCode::ReadOnly => bump(&REFUSED_READ_ONLY),
                            ErrorCode::AlreadyFinal => bump(&ALREADY_FINAL),
                            _ => {}
                        }
                        // Rule 8: `already_final` names the winner and the outcome.
                        if let (
                            ServerMsg::Error {
                                code: ErrorCode::AlreadyFinal,
                                outcome,
                                by,
                                ..
                            },
                            Some((f_by, f_outcome)),
                        ) = (last, self.final_info.get(record.as_str()))
                        {
                            let winner = f_by.clone().unwrap_or_else(|| "server".into());
                            if outcome.map(Outcome::as_str) != Some(f_outcome.as_str())
                                || by.as_deref() != Some(&winner)
                            {
                                return Err(format!(
                                    "rule 8: already_final says {outcome:?} by {by:?}, the final \
                                     is {f_outcome} by {winner}"
                                ));
                            }
                        }
                        // A refused request changes nothing but the audit log.
                        let denied_audits = out
                            .iter()
                            .filter(
                                |o| matches!(o, Output::Audit(e) if e.kind == AuditKind::Denied),
                            )
                            .count();
                        let want_audits = usize::from(code != ErrorCode::NotLoggedIn);
                        if denied_audits != want_audits || out.len() != 1 + want_audits {
                            return Err(format!(
                                "inv 2: refused {op:?} ({code:?}) produced more than its \
                                 denial: {out:?}"
                            ));
                        }
                    }
                    (None, Ok(access)) => {
                        // Invariant 2: nobody without `full` ever changed a record.
                        if op.needs_full() && *access != Access::Full {
                            return Err(format!(
                                "inv 2: {op:?} accepted from {} holding {access:?}",
                                AGENTS[*agent]
                            ));
                        }
                        let shape_ok = match (op, last) {
                            (
                                DeskOp::Get,
                                ServerMsg::Record {
                                    access: a,
                                    final_,
                                    data,
                                    context,
                                    ..
                                },
                            ) => {
                                a == access
                                    && final_.is_none()
                                    && *data == customer(record)
                                    && *context
                                        == self.context.get(record).cloned().unwrap_or_default()
                            }
                            (DeskOp::Chained, ServerMsg::ChainedRecordsEnd { .. }) => true,
                            (DeskOp::Update, ServerMsg::RecordUpdated { .. }) => true,
                            (DeskOp::Processed, ServerMsg::RecordProcessedAck { .. }) => true,
                            (DeskOp::Reject, ServerMsg::RecordRejected { .. }) => true,
                            (DeskOp::Cancel, ServerMsg::RecordCancelled { .. }) => true,
                            (DeskOp::DoNotCall { .. }, ServerMsg::DoNotCallAck { .. }) => true,
                            (DeskOp::Reschedule { .. }, ServerMsg::Rescheduled { .. }) => true,
                            _ => false,
                        };
                        if !shape_ok {
                            return Err(format!("{op:?} answered {last:?}"));
                        }
                        // Rule 12: an accepted request is audited as such.
                        let accepted = self.audit_log[audit_log_len_before..]
                            .iter()
                            .filter(|e| {
                                e.kind == AuditKind::Accepted
                                    && e.agent.as_deref() == Some(AGENTS[*agent])
                                    && e.record.as_deref() == Some(record.as_str())
                            })
                            .count();
                        if accepted != 1 {
                            return Err(format!(
                                "rule 12: accepted {op:?} has {accepted} `accepted` entries"
                            ));
                        }
                        if op.is_final() {
                            let f = self.engine.final_of(record);
                            if f.as_ref().and_then(|f| f.by.as_deref()) != Some(AGENTS[*agent]) {
                                return Err(format!("rule 8: {op:?} acked but the final is {f:?}"));
                            }
                            let finals = self.audit_log[audit_log_len_before..]
                                .iter()
                                .filter(|e| e.kind == AuditKind::Finalized)
                                .count();
                            if finals != 1 {
                                return Err(format!("rule 8: {op:?} acked with {finals} finals"));
                            }
                        }
                    }
                    _ => {
                        return Err(format!(
                            "inv 2: {} {op:?} {record}: contract says {expect:?}, got {last:?}",
                            AGENTS[*agent]
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}
