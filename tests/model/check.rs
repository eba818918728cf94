//! Checking a step's outputs against the reference model: pushes, audit entries, finals.

use super::*;

impl Harness {
    // -----------------------------------------------------------------------------------------
    // The invariants
    // -----------------------------------------------------------------------------------------

    /// Invariant 8: every frame the engine sends matches `protocol/schema` for its connection's
    /// role, and every audit entry matches as the `Audit` frame a tail would carry it in.
    fn check_schema(o: &Output) -> Result<(), String> {
        let (entry, frame) = match o {
            Output::Send { conn, env } => {
                let role = match *conn {
                    SWITCH => Role::Switch,
                    DIALER => Role::Dialer,
                    ADMIN => Role::Admin,
                    _ => Role::Desktop,
                };
                let frame = serde_json::to_value(env).map_err(|e| e.to_string())?;
                (schema::from_server(Some(role)), frame)
            }
            Output::Audit(e) => {
                let mut frame = serde_json::to_value(e).map_err(|e| e.to_string())?;
                frame["type"] = "Audit".into();
                ("Audit", frame)
            }
            _ => return Ok(()),
        };
        let errors = schema::errors(entry, &frame);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("inv 8: {frame} is outside {entry}: {errors:?}"))
        }
    }

    pub(crate) fn check(
        &mut self,
        step: &Step,
        connected_at_start: &[bool; 4],
        call_record_before: &HashMap<String, String>,
        audit_log_len_before: usize,
        out: &[Output],
        sent: &[Sent],
    ) -> Result<(), String> {
        let mut replies: BTreeMap<u64, Vec<(ConnId, ServerMsg)>> = BTreeMap::new();
        // (record, agent, access, cause) of AccessChanged pushes other than the resume replay.
        let mut ac_pushes: Vec<(String, usize, Access, String)> = Vec::new();
        let mut step_audits: Vec<AuditEntry> = Vec::new();
        let mut finalized: Vec<String> = Vec::new();
        let mut outcomes: Vec<String> = Vec::new();
        self.cleared.clear();

        for o in out {
            Self::check_schema(o)?;
            match o {
                Output::Audit(e) => {
                    // Invariant 6: gap-free, increasing from 1.
                    if e.seq != self.audit_last + 1 {
                        return Err(format!(
                            "inv 6: audit seq {} after {}: {e:?}",
                            e.seq, self.audit_last
                        ));
                    }
                    self.audit_last = e.seq;
                    self.audit_log.push(e.clone());
                    step_audits.push(e.clone());
                    let rec = e.record.clone().unwrap_or_default();
                    self.track_holders(step, e)?;
                    match e.kind {
                        AuditKind::Attached => {
                            let life = self.life.entry(rec.clone()).or_insert((false, 0));
                            if life.0 {
                                return Err(format!(
                                    "inv 1: {rec} attached again while its life is not final: {e:?}"
                                ));
                            }
                            *life = (true, 0);
                            let call = e.call.clone().unwrap_or_default();
                            self.call_record.insert(call, rec);
                        }
                        AuditKind::Finalized => {
                            let Some(life) = self.life.get_mut(&rec) else {
                                return Err(format!(
                                    "inv 1: finalized a record never attached: {e:?}"
                                ));
                            };
                            life.1 += 1;
                            if life.1 > 1 {
                                return Err(format!(
                                    "inv 1: second `finalized` in one life of {rec}: {e:?}"
                                ));
                            }
                            life.0 = false;
                            self.call_record.retain(|_, r| *r != rec);
                            finalized.push(rec.clone());
                            bump(&FINALS);
                            if e.cause.as_deref() == Some("stale") {
                                bump(&STALE);
                            }
                        }
                        AuditKind::Granted => match e.cause.as_deref() {
                            Some("consultation") => bump(&READ_ONLY_GRANTS),
                            Some("transfer") => bump(&TRANSFER_GRANTS),
                            Some("conference") => bump(&CONFERENCE_GRANTS),
                            _ => {}
                        },
                        _ => {}
                    }
                }
                Output::Send { conn, env } => {
                    let conn = *conn;
                    if let Some(r) = env.r#ref {
                        replies.entry(r).or_default().push((conn, env.msg.clone()));
                    }
                    let desktop = ![SWITCH, DIALER, ADMIN].contains(&conn);
                    match &env.msg {
                        ServerMsg::LoggedIn {
                            agent,
                            session,
                            resumed,
                            ..
                        } => {
                            let a = agent_idx(agent)
                                .ok_or_else(|| format!("LoggedIn for unknown agent {agent}"))?;
                            self.conn_agent.insert(conn, a);
                            self.desk[a] = Some(conn);
                            self.logged_in[a] = true;
                            self.token[a] = Some(session.clone());
                            // The replay that follows tells the calls present now.
                            self.calls_view[a].clear();
                            if *resumed {
                                bump(&RESUMED);
                            } else {
                                self.view[a].clear();
                                self.logout_pending[a] = false;
                            }
                        }
                        ServerMsg::LoggedOut { .. } if desktop => {
                            if let Some(&a) = self.conn_agent.get(&conn) {
                                if self.desk[a] == Some(conn) {
                                    self.logged_in[a] = false;
                                    self.logout_pending[a] = false;
                                }
                            }
                        }
                        ServerMsg::LogoutPending { .. } => {
                            if let Some(&a) = self.conn_agent.get(&conn) {
                                self.logout_pending[a] = true;
                            }
                        }
                        ServerMsg::AccessChanged {
                            record,
                            access,
                            cause,
                            data,
                            context,
                            ..
                        } => {
                            let &a = self.conn_agent.get(&conn).ok_or_else(|| {
                                format!("AccessChanged to conn {conn} that never logged in")
                            })?;
                            // Rule 2 / CONTRACT 3: a grant carries the data and the context the
                            // earlier holders left; the receiver never polls.
                            if access.is_granted() {
                                let want = self.context.get(record).cloned().unwrap_or_default();
                                if data.as_ref() != Some(&customer(record))
                                    || context.as_ref() != Some(&want)
                                {
                                    return Err(format!(
                                        "rule 2: grant of {record} to {} carries data {data:?} \
                                         context {context:?}, expected context {want:?}",
                                        AGENTS[a]
                                    ));
                                }
                            }
                            self.view[a].insert(record.clone(), *access);
                            if *cause != AccessCause::Resume {
                                ac_pushes.push((
                                    record.clone(),
                                    a,
                                    *access,
                                    cause_str(*cause).to_owned(),
                                ));
                            }
                        }
                        ServerMsg::RecordFinalized {
                            record, outcome, ..
                        } => {
                            let &a = self.conn_agent.get(&conn).ok_or_else(|| {
                                format!("RecordFinalized to conn {conn} that never logged in")
                            })?;
                            self.view[a].insert(record.clone(), Access::Revoked);
                            ac_pushes.push((
                                record.clone(),
                                a,
                                Access::Revoked,
                                outcome.as_str().to_owned(),
                            ));
                        }
                        ServerMsg::RecordProcessedAck { record }
                        | ServerMsg::RecordRejected { record }
                        | ServerMsg::RecordCancelled { record }
                        | ServerMsg::DoNotCallAck { record, .. }
                        | ServerMsg::Rescheduled { record, .. }
                            if desktop =>
                        {
                            // The winner learns the final from its ack: it holds `revoked` now.
                            if let Some(&a) = self.conn_agent.get(&conn) {
                                self.view[a].insert(record.clone(), Access::Revoked);
                            }
                        }
                        ServerMsg::RecordUpdated { record, .. } if desktop => {
                            if let Some(&a) = self.conn_agent.get(&conn) {
                                let ctx = self.context.entry(record.clone()).or_default();
                                ctx.call_result = Some("busy".into());
                                ctx.fields
                                    .insert("note".into(), json!(format!("by {}", AGENTS[a])));
                            }
                        }
                        ServerMsg::CallCleared { call, dn, .. } => {
                            self.cleared.insert((call.clone(), dn.clone()));
                            if let Some(&a) = self.conn_agent.get(&conn) {
                                self.calls_view[a].remove(call);
                            }
                        }
                        ServerMsg::CallEstablished { call, .. } => {
                            if let Some(&a) = self.conn_agent.get(&conn) {
                                self.calls_view[a].insert(call.clone(), true);
                            }
                        }
                        ServerMsg::CallAlerting {
                            call, consult_of, ..
                        } => {
                            if consult_of.is_some() {
                                self.consult.insert(call.clone());
                            }
                            if let Some(&a) = self.conn_agent.get(&conn) {
                                self.calls_view[a].insert(call.clone(), false);
                            }
                        }
                        ServerMsg::RecordOutcome { record, .. } if conn == DIALER => {
                            outcomes.push(record.clone());
                        }
                        _ => {}
                    }
                }
                Output::Close { .. } => {}
            }
        }

        // Invariant 6, against the engine's own counter.
        if self.engine.counts().audit_last_seq != self.audit_last {
            return Err(format!(
                "inv 6: engine audit_last_seq {} but the outputs reached {}",
                self.engine.counts().audit_last_seq,
                self.audit_last
            ));
        }

        // Status counts: records with a final outcome and live ones, as the audit told them.
        let counts = self.engine.counts();
        let model_finals = self.life.values().filter(|(open, _)| !*open).count() as u64;
        let model_live = self.life.len() as u64 - model_finals;
        if (counts.records_final, counts.records_live) != (model_finals, model_live) {
            return Err(format!(
                "status counts: engine reports {} final and {} live records, the audit {} and {}",
                counts.records_final, counts.records_live, model_finals, model_live
            ));
        }

        // Invariant 1: one dialer outcome per final.
        finalized.sort();
        outcomes.sort();
        if finalized != outcomes {
            return Err(format!(
                "inv 1: finalized {finalized:?} but dialer outcomes {outcomes:?}"
            ));
        }

        // Invariant 4: every push has its audit entry (same record, agent, access and cause).
        let mut access_audits: Vec<&AuditEntry> = step_audits
            .iter()
            .filter(|e| {
                matches!(
                    e.kind,
                    AuditKind::Granted | AuditKind::Downgraded | AuditKind::Revoked
                )
            })
            .collect();
        for (record, a, access, cause) in &ac_pushes {
            let pos = access_audits.iter().position(|e| {
                e.record.as_deref() == Some(record.as_str())
                    && e.agent.as_deref() == Some(AGENTS[*a])
                    && e.access == Some(*access)
                    && e.cause.as_deref() == Some(cause.as_str())
                    && ((*access == Access::Revoked) == (e.kind == AuditKind::Revoked))
            });
            match pos {
                Some(p) => {
                    access_audits.remove(p);
                }
                None => {
                    return Err(format!(
                        "inv 4: push to {} on {record}: {access:?} ({cause}) has no audit entry; \
                         audits of the step: {step_audits:?}",
                        AGENTS[*a]
                    ))
                }
            }
        }
        // ... and every access change of a desktop connected through the step is pushed to it
        // (the winner of a final learns it from its ack instead).
        for e in access_audits {
            let Some(a) = e.agent.as_deref().and_then(agent_idx) else {
                continue;
            };
            if !connected_at_start[a] || matches!(step, Step::Disconnect(x) if *x == a) {
                continue;
            }
            let own_request = matches!(step,
                Step::Desk { agent, .. } | Step::Logout { agent, .. } if *agent == a);
            let is_final_revoke = e
                .cause
                .as_deref()
                .is_some_and(|c| AccessCause::ALL.iter().all(|x| x.as_str() != c));
            if own_request && is_final_revoke {
                continue;
            }
            return Err(format!(
                "inv 4: access change of connected agent {} was not pushed: {e:?}",
                AGENTS[a]
            ));
        }

        // Invariant 3: a call's own events grant `full` only on the record attached to it.
        let event_call = match step {
            Step::Ringing { call, .. }
            | Step::Established { call, .. }
            | Step::Consult { call, .. }
            | Step::Released { call, .. } => Some(CALLS[*call]),
            _ => None,
        };
        if let Some(call) = event_call {
            let own = call_record_before.get(call);
            for e in &step_audits {
                if e.kind == AuditKind::Granted
                    && e.access == Some(Access::Full)
                    && e.record.as_ref() != own
                {
                    return Err(format!(
                        "inv 3: {step:?} on {} call {call} granted full on {:?} to {:?} \
                         (call's own record: {own:?})",
                        if self.consult.contains(call) {
                            "consultation"
                        } else {
                            "a"
                        },
                        e.record,
                        e.agent
                    ));
                }
            }
        }

        // Invariants 7 and 2: replies.
        let sent_refs: BTreeSet<u64> = sent.iter().map(|s| s.r#ref).collect();
        for r in replies.keys() {
            if !sent_refs.contains(r) {
                return Err(format!(
                    "inv 7: reply with ref {r} nobody sent in this step"
                ));
            }
        }
        for s in sent {
            let got = replies.get(&s.r#ref).cloned().unwrap_or_default();
            if got.is_empty() {
                return Err(format!("inv 7: no reply to {:?}", s.kind));
            }
            if let Some((c, m)) = got.iter().find(|(c, _)| *c != s.conn) {
                return Err(format!(
                    "inv 7: reply {m:?} went to conn {c}, not {}",
                    s.conn
                ));
            }
            let msgs: Vec<ServerMsg> = got.into_iter().map(|(_, m)| m).collect();
            self.check_reply(s, &msgs, out, audit_log_len_before)?;
        }

        // Invariant 5: what each connected desktop was told equals the access table.
        let dns = self.engine.monitored_dns();
        for a in 0..4 {
            if self.desk[a].is_none() || !self.logged_in[a] {
                continue;
            }
            // Rule 11: a smart logout completes once the agent holds no live `full` record.
            if self.logout_pending[a] && self.full_live(a).is_empty() {
                return Err(format!(
                    "rule 11: {} is still logged in after LogoutPending with no full record left",
                    AGENTS[a]
                ));
            }
            if !dns.iter().any(|d| d == DNS[a]) {
                return Err(format!(
                    "inv 5: {} is logged in on its desktop but {} is not monitored",
                    AGENTS[a], DNS[a]
                ));
            }
            // Failover table of SCENARIOS.md: the desktop's calls (pushes and resume replay) are
            // the calls on its DN (consultations the engine may merge alone are left out).
            let judged = |c: &String| !self.maybe_consult.contains(c);
            let told: BTreeMap<&String, bool> = self.calls_view[a]
                .iter()
                .filter(|(c, _)| judged(c))
                .map(|(c, s)| (c, *s))
                .collect();
            let actual: BTreeMap<&String, bool> = self
                .parties
                .iter()
                .filter(|(c, _)| judged(c))
                .filter_map(|(c, p)| p.get(DNS[a]).map(|s| (c, *s != Party::Alerting)))
                .collect();
            if told != actual {
                return Err(format!(
                    "failover: {}'s desktop shows calls {told:?} (call -> answered), \
                     {} has {actual:?}",
                    AGENTS[a], DNS[a]
                ));
            }
            for r in RECORDS {
                let told = self.view[a].get(r).copied().unwrap_or(Access::Revoked);
                let actual = self
                    .engine
                    .access_of(r, AGENTS[a])
                    .unwrap_or(Access::Revoked);
                if told != actual {
                    return Err(format!(
                        "inv 5: {}'s desktop was told {told:?} on {r}, the engine says {actual:?}",
                        AGENTS[a]
                    ));
                }
            }
        }
        Ok(())
    }
}
