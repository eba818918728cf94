//! Connections and desktop sessions: login, take-over and resume with its replay, logout (smart
//! and forced), the away time and its grace, DN monitoring, and logins reported by the phone.
//! Never grants access on its own: holders change only through the access room.

use super::*;

impl Engine {
    pub(super) fn monitor_dn(&mut self, dn: &Dn, agent: &AgentId) {
        if self.dn_agent.insert(dn.clone(), agent.clone()).is_none() {
            if let Err(i) = self.monitored.binary_search(dn) {
                self.monitored.insert(i, dn.clone());
            }
        }
        assert_eq!(
            self.monitored.len(),
            self.dn_agent.len(),
            "monitored mirrors dn_agent"
        );
    }

    fn unmonitor_dn(&mut self, dn: &Dn) {
        if self.dn_agent.remove(dn).is_some() {
            if let Ok(i) = self.monitored.binary_search(dn) {
                self.monitored.remove(i);
            }
        }
        assert_eq!(
            self.monitored.len(),
            self.dn_agent.len(),
            "monitored mirrors dn_agent"
        );
    }

    pub(super) fn agent_on(&self, dn: &Dn) -> Option<AgentId> {
        self.dn_agent.get(dn).cloned()
    }

    fn new_session_token(&mut self) -> String {
        let mut bytes = [0u8; 16];
        self.rng.fill_bytes(&mut bytes);
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(super) fn on_connected(&mut self, conn: ConnId, role: Role, out: &mut Vec<Output>) {
        self.conns.insert(conn, ConnState { role, agent: None });
        match role {
            Role::Switch => {
                self.switches.insert(conn);
                Self::send(
                    out,
                    conn,
                    None,
                    ServerMsg::Monitor {
                        dns: self.monitored_dns(),
                    },
                );
            }
            Role::Dialer => {
                self.dialers.insert(conn);
            }
            Role::Desktop | Role::Admin => {}
        }
    }

    pub(super) fn on_disconnected(&mut self, conn: ConnId) {
        let Some(state) = self.conns.remove(&conn) else {
            return;
        };
        self.switches.remove(&conn);
        self.dialers.remove(&conn);
        if let Some(agent) = state.agent {
            if let Some(a) = self.agents.get_mut(&agent) {
                if a.conn == Some(conn) {
                    a.conn = None;
                    a.away_since_ms = Some(self.now_ms);
                    self.grace_deadlines
                        .insert((self.now_ms + self.cfg.resume_grace_ms, agent));
                }
            }
        }
    }

    pub(super) fn on_shutdown(&mut self, out: &mut Vec<Output>) {
        let conns: Vec<(ConnId, ConnState)> =
            self.conns.iter().map(|(c, s)| (*c, s.clone())).collect();
        for (conn, state) in conns {
            if state.agent.is_some() {
                Self::send(
                    out,
                    conn,
                    None,
                    ServerMsg::LoggedOut {
                        cause: LogoutCause::Server,
                    },
                );
            }
            out.push(Output::Close { conn });
        }
    }

    pub(super) fn login(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        l: Login,
    ) {
        if l.agent.is_empty() || l.dn.is_empty() {
            let field = if l.agent.is_empty() { "agent" } else { "dn" };
            Self::send(
                out,
                conn,
                r#ref,
                ServerMsg::error(
                    ErrorCode::BadRequest,
                    format!("Login: field `{field}` must not be empty"),
                ),
            );
            return;
        }
        if let Err(failure) = self.login_proven(&l) {
            self.refuse_login(out, conn, r#ref, &l, failure);
            return;
        }
        if let Some(current) = self.conns.get(&conn).and_then(|c| c.agent.clone()) {
            Self::send(
                out,
                conn,
                r#ref,
                ServerMsg::error(
                    ErrorCode::BadRequest,
                    format!(
                        "this connection is already logged in as agent {current}; Logout first"
                    ),
                ),
            );
            return;
        }
        let dn = Dn::from(l.dn.as_str());
        let agent = AgentId::from(l.agent.as_str());
        if let Some(other) = self.dn_agent.get(&dn) {
            if *other != agent {
                let msg = format!("DN {} is in use by agent {other}", l.dn);
                Self::send(out, conn, r#ref, ServerMsg::error(ErrorCode::DnInUse, msg));
                return;
            }
        }
        if let Some(existing) = self.agents.get(&agent).cloned() {
            if existing.dn != dn {
                // The agent moves to another DN: the old session ends as replaced, then a fresh one.
                if let Some(old) = existing.conn {
                    Self::send(
                        out,
                        old,
                        None,
                        ServerMsg::LoggedOut {
                            cause: LogoutCause::Replaced,
                        },
                    );
                    if let Some(c) = self.conns.get_mut(&old) {
                        c.agent = None;
                    }
                    if let Some(a) = self.agents.get_mut(&agent) {
                        a.conn = None;
                    }
                }
                self.end_agent(out, &agent, None, true, SessionCause::Replaced);
            } else {
                self.take_over(out, conn, r#ref, &l, &agent, existing);
                return;
            }
        }
        self.fresh_login(out, conn, r#ref, &l, &agent, &dn);
    }

    /// Whether the login may go on, from what the server found of its credential. Without a
    /// checked credential (and outside `open` mode) only a resume stands: the token must be the
    /// agent's live session, on the DN it has.
    fn login_proven(&self, l: &Login) -> Result<(), (LoginFailure, Option<u64>)> {
        match l.proof {
            LoginProof::Verified => Ok(()),
            LoginProof::Refused {
                cause,
                retry_after_ms,
            } => Err((cause, retry_after_ms)),
            LoginProof::Unchecked if self.cfg.trust_agent_ids => Ok(()),
            LoginProof::Unchecked => {
                let agent = AgentId::from(l.agent.as_str());
                let resumes = match (self.agents.get(&agent), l.resume.as_deref()) {
                    (Some(a), Some(token)) => {
                        crate::auth::same_secret(&a.session, token) && a.dn.as_str() == l.dn
                    }
                    _ => false,
                };
                if resumes {
                    Ok(())
                } else {
                    Err((LoginFailure::BadCredential, None))
                }
            }
        }
    }

    /// Answers a refused login and audits it as `login_failed`. The answer never says which part
    /// of the credential was wrong.
    fn refuse_login(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        l: &Login,
        (cause, retry_after_ms): (LoginFailure, Option<u64>),
    ) {
        let reply = match cause {
            LoginFailure::DnNotAllowed => ServerMsg::error(
                ErrorCode::DnNotAllowed,
                format!("agent {} may not log in on DN {}", l.agent, l.dn),
            ),
            LoginFailure::BadCredential | LoginFailure::Throttled => {
                let mut refusal = ServerMsg::error(ErrorCode::AuthFailed, "login failed");
                if let ServerMsg::Error {
                    retry_after_ms: wait,
                    ..
                } = &mut refusal
                {
                    *wait = retry_after_ms;
                }
                refusal
            }
        };
        Self::send(out, conn, r#ref, reply);
        let (agent, dn) = (l.agent.clone(), l.dn.clone());
        self.audit(out, AuditKind::LoginFailed, |e| {
            e.agent = Some(agent);
            e.dn = Some(dn);
            e.cause = Some(cause.as_str().to_owned());
        });
    }

    /// The agent is already logged in on this DN (connected elsewhere, or away): this connection
    /// takes the session over, resumed if the token matches, and gets the present state.
    fn take_over(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        l: &Login,
        agent: &AgentId,
        existing: Agent,
    ) {
        // The login's own DN: `login` sends only an agent staying on its DN here.
        let dn = existing.dn.clone();
        let resumed = l
            .resume
            .as_deref()
            .is_some_and(|token| crate::auth::same_secret(&existing.session, token));
        if let Some(old) = existing.conn {
            Self::send(
                out,
                old,
                None,
                ServerMsg::LoggedOut {
                    cause: LogoutCause::Replaced,
                },
            );
            if let Some(c) = self.conns.get_mut(&old) {
                c.agent = None;
            }
        }
        let session = self.new_session_token();
        let remembered = self.take_lost(agent);
        let lost: BTreeMap<RecordId, Lost> = if resumed {
            // What was revoked since shortly before the desktop could have stopped hearing us.
            let since = existing
                .away_since_ms
                .unwrap_or(self.now_ms)
                .saturating_sub(self.lost_window_ms());
            remembered
                .into_iter()
                .filter(|(_, lost)| lost.at_ms >= since)
                .collect()
        } else {
            BTreeMap::new()
        };
        if let Some(a) = self.agents.get_mut(agent) {
            a.conn = Some(conn);
            a.away_since_ms = None;
            a.session = session.clone();
        }
        self.dirty_agents.insert(agent.clone());
        if let Some(c) = self.conns.get_mut(&conn) {
            c.agent = Some(agent.clone());
        }
        Self::send(
            out,
            conn,
            r#ref,
            ServerMsg::LoggedIn {
                agent: l.agent.clone(),
                dn: l.dn.clone(),
                session,
                resumed,
            },
        );
        let cause = if resumed {
            SessionCause::Resume
        } else {
            SessionCause::Replaced
        };
        let (agent_s, dn_s) = (l.agent.clone(), l.dn.clone());
        self.audit(out, AuditKind::Login, |e| {
            e.agent = Some(agent_s);
            e.dn = Some(dn_s);
            e.cause = Some(cause.as_str().to_owned());
        });
        self.replay(out, conn, agent, &dn, lost);
    }

    /// Pushes the agent's present state: its calls, then the records it holds, then what it lost.
    fn replay(
        &self,
        out: &mut Vec<Output>,
        conn: ConnId,
        agent: &AgentId,
        dn: &Dn,
        lost: BTreeMap<RecordId, Lost>,
    ) {
        self.push_calls_on_dn(out, conn, dn);
        {
            for record in self.held_by(agent) {
                let Some(rec) = self.records.get(record) else {
                    continue;
                };
                let Some(access) = rec.holders.get(agent).copied() else {
                    continue;
                };
                Self::send(
                    out,
                    conn,
                    None,
                    ServerMsg::AccessChanged {
                        record: record.into(),
                        access,
                        previous: access,
                        cause: AccessCause::Resume,
                        call: Some(String::from(&rec.call)),
                        data: Some((*rec.data).clone()),
                        context: Some(rec.context.clone()),
                    },
                );
            }
        }
        for (record, lost) in lost {
            Self::send(
                out,
                conn,
                None,
                ServerMsg::AccessChanged {
                    record: record.into(),
                    access: Access::Revoked,
                    previous: lost.previous,
                    cause: AccessCause::Resume,
                    call: Some(lost.call.into()),
                    data: None,
                    context: None,
                },
            );
        }
    }

    fn push_calls_on_dn(&self, out: &mut Vec<Output>, conn: ConnId, dn: &Dn) {
        let mut ordered: Vec<(&CallId, &Call)> = self
            .calls_on(dn)
            .filter_map(|id| self.calls.get(id).map(|c| (id, c)))
            .collect();
        ordered.sort_by_key(|(_, c)| c.order);
        for (id, call) in ordered {
            match call.parties.get(dn) {
                Some(PartyState::Alerting) => Self::send(
                    out,
                    conn,
                    None,
                    ServerMsg::CallAlerting {
                        call: id.into(),
                        dn: dn.into(),
                        record: self.record_of_call(id).map(|(r, _)| r.into()),
                        consult_of: call.consult_of.as_ref().map(String::from),
                    },
                ),
                Some(PartyState::Established | PartyState::Dialing) => Self::send(
                    out,
                    conn,
                    None,
                    ServerMsg::CallEstablished {
                        call: id.into(),
                        dn: dn.into(),
                    },
                ),
                None => {}
            }
        }
    }

    fn fresh_login(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        l: &Login,
        agent: &AgentId,
        dn: &Dn,
    ) {
        let session = self.new_session_token();
        self.agents.insert(
            agent.clone(),
            Agent {
                dn: dn.clone(),
                conn: Some(conn),
                session: session.clone(),
                away_since_ms: None,
                logout_pending: false,
            },
        );
        self.monitor_dn(dn, agent);
        self.dirty_agents.insert(agent.clone());
        if let Some(c) = self.conns.get_mut(&conn) {
            c.agent = Some(agent.clone());
        }
        Self::send(
            out,
            conn,
            r#ref,
            ServerMsg::LoggedIn {
                agent: l.agent.clone(),
                dn: l.dn.clone(),
                session,
                resumed: false,
            },
        );
        let (agent_s, dn_s) = (l.agent.clone(), l.dn.clone());
        self.audit(out, AuditKind::Login, |e| {
            e.agent = Some(agent_s);
            e.dn = Some(dn_s);
            e.cause = Some(SessionCause::Desktop.as_str().to_owned());
        });
        self.tell_switches(
            out,
            ServerMsg::AgentLogin {
                dn: l.dn.clone(),
                agent: l.agent.clone(),
            },
        );
        self.broadcast_monitor(out);
        // Calls already on the DN: show them, and take what nobody holds (rule 9).
        self.push_calls_on_dn(out, conn, dn);
        let calls: Vec<CallId> = self.calls_on(dn).cloned().collect();
        for call in calls {
            let established = self.calls.get(&call).and_then(|c| c.parties.get(dn))
                == Some(PartyState::Established);
            if established {
                self.grant_for_party(out, &call, agent, true);
            }
        }
    }

    /// Ends an agent's session: its DN is no longer monitored, its records are revoked (orphaned
    /// when nobody else holds them). `cause` goes to a connected desktop as `LoggedOut`.
    pub(super) fn end_agent(
        &mut self,
        out: &mut Vec<Output>,
        agent: &AgentId,
        cause: Option<LogoutCause>,
        tell_switch: bool,
        audit_cause: SessionCause,
    ) {
        let Some(a) = self.agents.get(agent).cloned() else {
            return;
        };
        if let Some(cause) = cause {
            self.push_agent(out, agent, ServerMsg::LoggedOut { cause });
        }
        let held: Vec<RecordId> = self.held_by(agent).cloned().collect();
        for record in held {
            self.set_access(out, &record, agent, Access::Revoked, AccessCause::Logout);
        }
        self.agents.remove(agent);
        self.take_lost(agent);
        self.dirty_agents.insert(agent.clone());
        if self.dn_agent.get(&a.dn) == Some(agent) {
            self.unmonitor_dn(&a.dn);
        }
        if let Some(conn) = a.conn {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.agent = None;
            }
        }
        let (agent_s, dn) = (String::from(agent), String::from(&a.dn));
        let cause_s = audit_cause.as_str().to_owned();
        self.audit(out, AuditKind::Logout, |e| {
            e.agent = Some(agent_s);
            e.dn = Some(dn);
            e.cause = Some(cause_s);
        });
        if tell_switch {
            self.tell_switches(
                out,
                ServerMsg::AgentLogout {
                    dn: String::from(&a.dn),
                    agent: agent.into(),
                },
            );
        }
        self.broadcast_monitor(out);
    }

    fn full_live_records(&self, agent: &AgentId) -> Vec<RecordId> {
        self.held_by(agent)
            .filter(|r| {
                self.records.get(*r).is_some_and(|rec| {
                    rec.final_.is_none() && rec.holders.get(agent) == Some(&Access::Full)
                })
            })
            .cloned()
            .collect()
    }

    pub(super) fn logout_request(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        l: Logout,
    ) {
        let Some(agent) = self.conns.get(&conn).and_then(|c| c.agent.clone()) else {
            Self::send(
                out,
                conn,
                r#ref,
                ServerMsg::error(ErrorCode::NotLoggedIn, "Logout needs a logged-in agent"),
            );
            return;
        };
        let held = self.full_live_records(&agent);
        if !held.is_empty() && !l.force {
            if let Some(a) = self.agents.get_mut(&agent) {
                a.logout_pending = true;
                self.pending_logouts.insert(agent.clone());
            }
            Self::send(
                out,
                conn,
                r#ref,
                ServerMsg::LogoutPending {
                    records: held.iter().map(String::from).collect(),
                },
            );
            return;
        }
        for record in &held {
            self.finalize(
                out,
                record,
                Outcome::Returned,
                FinalBy::Agent(agent.clone()),
                FinalExtra::default(),
            );
        }
        Self::send(
            out,
            conn,
            r#ref,
            ServerMsg::LoggedOut {
                cause: LogoutCause::Desktop,
            },
        );
        let cause = if l.force {
            SessionCause::DesktopForce
        } else {
            SessionCause::Desktop
        };
        self.end_agent(out, &agent, None, true, cause);
    }

    /// Smart logout: an agent waiting to log out goes once its last `full` record is final.
    pub(super) fn finish_pending_logouts(&mut self, out: &mut Vec<Output>) {
        if self.pending_logouts.is_empty() {
            return;
        }
        self.with_one_monitor(out, Self::finish_pending_logouts_now);
    }

    fn finish_pending_logouts_now(&mut self, out: &mut Vec<Output>) {
        let pending: Vec<AgentId> = self.pending_logouts.iter().cloned().collect();
        for agent in pending {
            if !self.agents.get(&agent).is_some_and(|a| a.logout_pending) {
                self.pending_logouts.remove(&agent);
                continue;
            }
            if self.full_live_records(&agent).is_empty() {
                self.pending_logouts.remove(&agent);
                self.end_agent(
                    out,
                    &agent,
                    Some(LogoutCause::Desktop),
                    true,
                    SessionCause::Desktop,
                );
            }
        }
    }

    /// The phone says `agent` logged in on `dn`. An echo of our own login changes nothing; a
    /// conflicting desktop session yields to the phone.
    pub(super) fn phone_login(&mut self, out: &mut Vec<Output>, e: DnAgent) {
        let agent = AgentId::from(e.agent.as_str());
        if self
            .agents
            .get(&agent)
            .is_some_and(|a| a.dn.as_str() == e.dn)
        {
            return;
        }
        let mut changed = false;
        if let Some(other) = self.dn_agent.get(e.dn.as_str()).cloned() {
            self.end_agent(
                out,
                &other,
                Some(LogoutCause::Phone),
                false,
                SessionCause::Phone,
            );
            changed = true;
        }
        if self.agents.contains_key(&agent) {
            self.end_agent(
                out,
                &agent,
                Some(LogoutCause::Phone),
                false,
                SessionCause::Phone,
            );
            changed = true;
        }
        if !changed {
            // Nobody to reconcile with: a phone login alone does not make a desktop session.
            self.ignored_events += 1;
        }
    }

    pub(super) fn phone_logout(&mut self, out: &mut Vec<Output>, e: DnAgent) {
        let agent = AgentId::from(e.agent.as_str());
        if self
            .agents
            .get(&agent)
            .is_some_and(|a| a.dn.as_str() == e.dn)
        {
            self.end_agent(
                out,
                &agent,
                Some(LogoutCause::Phone),
                false,
                SessionCause::Phone,
            );
        } else {
            self.ignored_events += 1;
        }
    }
}
