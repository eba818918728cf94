//! Access: the one place it changes ([`Engine::set_access`]), orphaned records, a record made
//! final, the contract's check order for desktop requests, and the access a call's party gets.
//! Every other room asks here; none writes a record's holders itself.

use super::*;

impl Engine {
    /// True if `record` exists and is not final; otherwise answers `no_such_record` or
    /// `already_final` (with winner and outcome) and returns false. For the admin's and the
    /// dialer's requests, which have no holder to check.
    pub(super) fn is_live_or_refused(
        &self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        record: &RecordId,
    ) -> bool {
        match self.records.get(record) {
            None => {
                Self::send(
                    out,
                    conn,
                    r#ref,
                    ServerMsg::error(ErrorCode::NoSuchRecord, format!("no record {record}")),
                );
                false
            }
            Some(rec) => match &rec.final_ {
                Some(f) => {
                    Self::send(out, conn, r#ref, already_final_error(record, f));
                    false
                }
                None => true,
            },
        }
    }

    /// How far back a revocation may have gone unheard: a connection can be dead for up to three
    /// heartbeats before the server notices, plus a second for frames still in flight.
    pub(super) fn lost_window_ms(&self) -> u64 {
        self.cfg.heartbeat_ms.saturating_mul(3) + 1000
    }

    /// Remembers that `agent` lost `record` now, for a resume's replay. For a connected agent,
    /// what is older than the window is forgotten (its oldest first, so each entry is looked at
    /// once): a later drop replays only what came within the window before it.
    pub(super) fn note_lost(
        &mut self,
        agent: &AgentId,
        record: &RecordId,
        previous: Access,
        call: &CallId,
    ) {
        self.forget_lost(agent, record);
        let now_ms = self.now_ms;
        self.lost.insert(
            (agent.clone(), record.clone()),
            Lost {
                previous,
                at_ms: now_ms,
                call: call.clone(),
            },
        );
        self.lost_order
            .insert((agent.clone(), now_ms, record.clone()));
        if self.agents.get(agent).is_some_and(|a| a.conn.is_some()) {
            let cutoff = now_ms.saturating_sub(self.lost_window_ms());
            let from = (agent.clone(), 0, RecordId::from(""));
            while let Some((a, at, r)) = self.lost_order.range(&from..).next().cloned() {
                if &a != agent || at >= cutoff {
                    break;
                }
                self.lost_order.remove(&(a.clone(), at, r.clone()));
                self.lost.remove(&(a, r));
            }
        }
    }

    /// Forgets a revocation `agent` no longer needs to hear of (it holds the record again).
    pub(super) fn forget_lost(&mut self, agent: &AgentId, record: &RecordId) {
        let key = (agent.clone(), record.clone());
        if let Some(l) = self.lost.remove(&key) {
            let (a, r) = key;
            self.lost_order.remove(&(a, l.at_ms, r));
        }
    }

    /// Takes every revocation remembered for `agent` (at a login, a resume or a logout).
    pub(super) fn take_lost(&mut self, agent: &AgentId) -> BTreeMap<RecordId, Lost> {
        let from = (agent.clone(), 0, RecordId::from(""));
        let keys: Vec<(AgentId, u64, RecordId)> = self
            .lost_order
            .range(&from..)
            .take_while(|(a, _, _)| a == agent)
            .cloned()
            .collect();
        let mut taken = BTreeMap::new();
        for key in keys {
            self.lost_order.remove(&key);
            let (a, _, r) = key;
            if let Some(l) = self.lost.remove(&(a, r.clone())) {
                taken.insert(r, l);
            }
        }
        taken
    }

    /// The access `agent` has to `record`, if it ever held it (for a record in memory).
    pub(super) fn access_to(&self, record: &RecordId, agent: &AgentId) -> Option<Access> {
        self.records.get(record)?.holders.get(agent).copied()
    }

    /// Sets `agent`'s access to `record`, pushing `AccessChanged` (with data and context on a
    /// grant), auditing the change and keeping the orphan clock. No-op when nothing changes.
    pub(super) fn set_access(
        &mut self,
        out: &mut Vec<Output>,
        record: &RecordId,
        agent: &AgentId,
        access: Access,
        cause: AccessCause,
    ) {
        let Some(rec) = self.records.get_mut(record) else {
            return;
        };
        let previous = rec.holders.get(agent).copied();
        if previous == Some(access) || (previous.is_none() && access == Access::Revoked) {
            return;
        }
        assert!(
            rec.final_.is_none() || access == Access::Revoked,
            "a final record is never granted"
        );
        match rec.holders.get_mut(agent) {
            Some(held) => *held = access,
            None => {
                rec.holders.insert(agent.clone(), access);
            }
        }
        let had_live = previous.is_some_and(Access::is_granted);
        let call = rec.call.clone();
        // The desktop to tell, if it is connected: a grant carries data and context, worth
        // copying only for someone who will receive them.
        let desk = self.agents.get(agent).and_then(|a| a.conn);
        let (data, context) = if access.is_granted() && desk.is_some() {
            (Some((*rec.data).clone()), Some(rec.context.clone()))
        } else {
            (None, None)
        };
        let now_orphan = rec.final_.is_none() && !rec.has_live_holder();
        let previous = previous.unwrap_or(Access::Revoked);
        if access.is_granted() {
            rec.orphaned_since_ms = None;
            self.agent_records.insert((agent.clone(), record.clone()));
        } else {
            self.agent_records.remove(&(agent.clone(), record.clone()));
        }
        assert_eq!(
            self.agent_records
                .contains(&(agent.clone(), record.clone())),
            access.is_granted(),
            "agent_records lists exactly the records an agent holds"
        );
        self.mark_dirty(record);
        if self.agents.contains_key(agent) {
            if access == Access::Revoked {
                self.note_lost(agent, record, previous, &call);
            } else {
                self.forget_lost(agent, record);
            }
        }
        if let Some(conn) = desk {
            let msg = ServerMsg::AccessChanged {
                record: record.into(),
                access,
                previous,
                cause,
                call: Some(String::from(&call)),
                data,
                context,
            };
            Self::send(out, conn, None, msg);
        }
        let kind = if access > previous {
            AuditKind::Granted
        } else if access == Access::Revoked {
            AuditKind::Revoked
        } else {
            AuditKind::Downgraded
        };
        let dn = self.agents.get(agent).map(|a| String::from(&a.dn));
        self.audit(out, kind, |e| {
            e.record = Some(record.into());
            e.agent = Some(agent.into());
            e.dn = dn;
            e.call = Some(String::from(&call));
            e.access = Some(access);
            e.previous = Some(previous);
            e.cause = Some(cause.as_str().to_owned());
        });
        if had_live && now_orphan {
            self.orphan(out, record, &call);
        }
    }

    pub(super) fn orphan(&mut self, out: &mut Vec<Output>, record: &RecordId, call: &CallId) {
        let now_ms = self.now_ms;
        let Some(rec) = self.records.get_mut(record) else {
            return;
        };
        if rec.final_.is_some() || rec.has_live_holder() || rec.orphaned_since_ms.is_some() {
            return;
        }
        rec.orphaned_since_ms = Some(now_ms);
        self.mark_dirty(record);
        self.orphan_deadlines
            .insert((now_ms + self.cfg.orphan_timeout_ms, record.clone()));
        let call = String::from(call);
        self.audit(out, AuditKind::Orphaned, |e| {
            e.record = Some(record.into());
            e.call = Some(call);
        });
    }

    /// Makes the record final: every holder is revoked (told by `RecordFinalized`, except the
    /// agent who decided, who gets the ack instead), and every dialer learns the outcome.
    pub(super) fn finalize(
        &mut self,
        out: &mut Vec<Output>,
        record: &RecordId,
        outcome: Outcome,
        finisher: FinalBy,
        extra: FinalExtra,
    ) {
        let by = finisher.name();
        let now_ms = self.now_ms;
        let at = self.stamp();
        let Some(rec) = self.records.get_mut(record) else {
            return;
        };
        assert!(rec.final_.is_none(), "one final outcome per record");
        self.finals += 1;
        rec.final_ = Some(FinalInfo {
            outcome,
            by: by.clone(),
            at: at.clone(),
        });
        rec.orphaned_since_ms = None;
        rec.resident_since_ms = now_ms;
        self.final_queue.insert((now_ms, record.clone()));
        let call = rec.call.clone();
        // Only the dialers are told the outcome with the context; without one it is not copied.
        let context = if self.dialers.is_empty() {
            Context::default()
        } else {
            rec.context.clone()
        };
        let holders: Vec<(AgentId, Access)> = rec
            .holders
            .iter()
            .filter(|(_, a)| a.is_granted())
            .map(|(h, a)| (h.clone(), *a))
            .collect();
        for access in rec.holders.values_mut() {
            if access.is_granted() {
                *access = Access::Revoked;
            }
        }
        assert!(!rec.has_live_holder(), "a final record has no live holder");
        self.mark_dirty(record);
        if self.call_record.get(&call) == Some(record) {
            self.call_record.remove(&call);
        }
        let by_name = by.clone().unwrap_or_else(|| "server".to_owned());
        let request = extra.request.clone();
        self.audit(out, AuditKind::Finalized, |e| {
            e.record = Some(record.into());
            e.agent = by.clone();
            e.request = request;
            e.call = Some(String::from(&call));
            e.cause = Some(outcome.as_str().to_owned());
        });
        for (h, previous) in holders {
            self.agent_records.remove(&(h.clone(), record.clone()));
            if self.agents.contains_key(&h) {
                self.note_lost(&h, record, previous, &call);
            }
            if finisher.agent() != Some(&h) {
                self.push_agent(
                    out,
                    &h,
                    ServerMsg::RecordFinalized {
                        record: record.into(),
                        by: by_name.clone(),
                        outcome,
                    },
                );
            }
            let dn = self.agents.get(&h).map(|a| String::from(&a.dn));
            self.audit(out, AuditKind::Revoked, |e| {
                e.record = Some(record.into());
                e.agent = Some(String::from(&h));
                e.dn = dn;
                e.call = Some(String::from(&call));
                e.access = Some(Access::Revoked);
                e.previous = Some(previous);
                e.cause = Some(outcome.as_str().to_owned());
            });
        }
        let msg = ServerMsg::RecordOutcome {
            record: record.into(),
            outcome,
            call_result: context.call_result,
            fields: (!context.fields.is_empty()).then_some(context.fields),
            by,
            at,
            scope: extra.scope,
            callback_at: extra.callback_at,
            callback: extra.callback,
        };
        Self::send_all(out, &self.dialers, msg);
    }

    /// Gives `agent`, established on `call`, the access the call entitles it to: `full` on the
    /// call's own record, `read_only` on the record of the call a live consultation consults.
    /// With `only_unheld`, a direct record is taken only if nobody holds it (a login finding the call).
    pub(super) fn grant_for_party(
        &mut self,
        out: &mut Vec<Output>,
        call: &CallId,
        agent: &AgentId,
        only_unheld: bool,
    ) {
        let Some((record, via_consult)) = self.record_of_call(call) else {
            return;
        };
        let Some(rec) = self.records.get(&record) else {
            return;
        };
        if rec.final_.is_some() {
            return;
        }
        let current = rec.holders.get(agent).copied().unwrap_or(Access::Revoked);
        if via_consult {
            let over = self.calls.get(call).is_none_or(|c| c.consult_over);
            if !over && current == Access::Revoked {
                self.set_access(
                    out,
                    &record,
                    agent,
                    Access::ReadOnly,
                    AccessCause::Consultation,
                );
            }
        } else if current != Access::Full {
            if only_unheld && rec.holders.values().any(|a| *a == Access::Full) {
                return;
            }
            self.set_access(out, &record, agent, Access::Full, AccessCause::Established);
        }
    }

    /// The contract's check order: no_such_record, access_denied (never held), already_final,
    /// access_denied (revoked), read_only.
    #[allow(clippy::result_large_err)] // the error is the reply frame itself, built once
    pub(super) fn check_access(
        &self,
        record: &RecordId,
        agent: &AgentId,
        needs_full: bool,
    ) -> Result<Access, ServerMsg> {
        let Some(rec) = self.records.get(record) else {
            return Err(ServerMsg::error(
                ErrorCode::NoSuchRecord,
                format!("no record {record}"),
            ));
        };
        let denied = |access: Access, why: String| ServerMsg::Error {
            code: ErrorCode::AccessDenied,
            message: why,
            access: Some(access),
            holders: Some(rec.live_holders()),
            outcome: None,
            by: None,
            retry_after_ms: None,
            active: None,
        };
        let Some(access) = rec.holders.get(agent).copied() else {
            return Err(denied(
                Access::Revoked,
                format!("agent {agent} never held record {record}"),
            ));
        };
        if let Some(f) = &rec.final_ {
            return Err(ServerMsg::Error {
                code: ErrorCode::AlreadyFinal,
                message: format!(
                    "record {record} is already final ({} by {})",
                    f.outcome.as_str(),
                    f.by.as_deref().unwrap_or("server")
                ),
                access: None,
                holders: None,
                outcome: Some(f.outcome),
                by: Some(f.by.clone().unwrap_or_else(|| "server".into())),
                retry_after_ms: None,
                active: None,
            });
        }
        match access {
            Access::Revoked => Err(denied(
                Access::Revoked,
                format!("agent {agent}'s access to record {record} was revoked"),
            )),
            Access::ReadOnly if needs_full => Err(ServerMsg::error(
                ErrorCode::ReadOnly,
                format!("agent {agent} holds record {record} read-only (consultation)"),
            )),
            a => Ok(a),
        }
    }
}

/// Details of a final outcome that only some outcomes have.
#[derive(Debug, Clone, Default)]
pub(super) struct FinalExtra {
    /// Noted on the `finalized` audit entry (the admin's reason for a release).
    pub(super) request: Option<String>,
    pub(super) scope: Option<DncScope>,
    pub(super) callback_at: Option<String>,
    pub(super) callback: Option<Callback>,
}

pub(super) fn already_final_error(record: &RecordId, f: &FinalInfo) -> ServerMsg {
    let by = f.by.clone().unwrap_or_else(|| "server".into());
    ServerMsg::Error {
        code: ErrorCode::AlreadyFinal,
        message: format!(
            "record {record} is already final ({} by {by})",
            f.outcome.as_str()
        ),
        access: None,
        holders: None,
        outcome: Some(f.outcome),
        by: Some(by),
        retry_after_ms: None,
        active: None,
    }
}
