//! Applying one step: the requests and inputs it sends the engine, and what the reference model
//! expects of them.

use super::*;

impl Harness {
    pub(crate) fn apply_step(&mut self, step: &Step) -> Result<(), String> {
        let step = &self.resolve(step);
        // The record the step's request will name is read back before the test decides what
        // the answer must be, as the shell reads it back before the engine decides.
        if let Step::Desk { record, .. }
        | Step::DialerCancel(record)
        | Step::AdminRelease(record)
        | Step::Attach { record, .. } = *step
        {
            if !self.engine.is_in_memory(RECORDS[record]) {
                self.load(RECORDS[record]);
            }
        }
        let connected_at_start: [bool; 4] =
            std::array::from_fn(|a| self.desk[a].is_some() && self.logged_in[a]);
        let (desk_before, logged_in_before) = (self.desk, self.logged_in);
        let call_record_before = self.call_record.clone();
        let parties_before = self.parties.clone();
        let consult_before = self.consult.clone();
        let maybe_consult_before = self.maybe_consult.clone();
        let ro_via_before = self.ro_via.clone();
        let holders_before = self.holders.clone();
        let ignored_before = self.engine.counts().ignored_events;
        let audit_log_len_before = self.audit_log.len();
        let mut out = Vec::new();
        let mut sent = Vec::new();
        match step.clone() {
            Step::CallerHangsUp(_) => unreachable!("resolved into a Released"),
            Step::StorageFails(_) => unreachable!("a refused step is not nested"),
            Step::Login(a) => {
                let conn = match self.desk[a] {
                    Some(c) => c,
                    None => {
                        let c = self.new_conn();
                        self.input(
                            Input::Connected {
                                conn: c,
                                role: Role::Desktop,
                            },
                            &mut out,
                        );
                        self.desk[a] = Some(c);
                        c
                    }
                };
                let kind = Kind::Login {
                    conn_logged_in: self.logged_in[a],
                    resume_sent: false,
                    expect_resumed: None,
                };
                let req = self.login_req(a, None);
                self.request(conn, req, kind, &mut out, &mut sent);
            }
            Step::Reconnect { agent: a, resume } => {
                let was_away = self.desk[a].is_none();
                let alive = self.alive(a);
                let c = self.new_conn();
                self.input(
                    Input::Connected {
                        conn: c,
                        role: Role::Desktop,
                    },
                    &mut out,
                );
                self.desk[a] = Some(c);
                self.logged_in[a] = false;
                let token = if resume { self.token[a].clone() } else { None };
                // CONTRACT 7: the token resumes within resume_grace_ms of the drop; past it, it
                // has expired (exactly at the limit either answer is accepted).
                let away_for = self.now - self.away_since[a];
                let expect_resumed = if token.is_none() {
                    Some(false)
                } else if !was_away || (alive && away_for == GRACE_MS) {
                    None
                } else {
                    Some(alive && away_for < GRACE_MS)
                };
                let kind = Kind::Login {
                    conn_logged_in: false,
                    resume_sent: token.is_some(),
                    expect_resumed,
                };
                let req = self.login_req(a, token);
                self.request(c, req, kind, &mut out, &mut sent);
            }
            Step::Logout { agent: a, force } => {
                let Some(conn) = self.desk[a] else {
                    return Ok(());
                };
                let kind = Kind::Logout {
                    logged_in: self.logged_in[a],
                    force,
                    full_live: self.full_live(a),
                };
                self.request(conn, logout(force), kind, &mut out, &mut sent);
            }
            Step::Disconnect(a) => {
                let Some(conn) = self.desk[a].take() else {
                    return Ok(());
                };
                self.logged_in[a] = false;
                self.away_since[a] = self.now;
                self.input(Input::Disconnected { conn }, &mut out);
            }
            Step::Ringing {
                call,
                dn,
                ani,
                consult_of,
                from_dn,
            } => {
                let call_s = CALLS[call];
                if let Some(c1) = consult_of {
                    if c1 != call
                        && !self.parties.contains_key(call_s)
                        && !self.call_record.contains_key(call_s)
                    {
                        self.consult.insert(call_s.into());
                    }
                }
                if (consult_of.is_some() || ani.is_some()) && !self.call_record.contains_key(call_s)
                {
                    self.maybe_consult.insert(call_s.into());
                }
                self.add_party(call_s, DNS[dn], Party::Alerting);
                // CONTRACT 5: the caller is on the call from the Ringing on, dialing.
                if let Some(from) = from_dn.filter(|f| *f != dn) {
                    self.add_party(call_s, DNS[from], Party::Dialing);
                }
                let req = ringing_full(
                    call_s,
                    DNS[dn],
                    ani.map(|i| ANIS[i]),
                    from_dn.map(|d| DNS[d]),
                    consult_of.map(|c| CALLS[c]),
                );
                self.request(SWITCH, req, Kind::Switch, &mut out, &mut sent);
            }
            Step::Consult {
                call,
                of,
                dn,
                answer,
                caller,
                caller_answer,
            } => {
                let call_s = CALLS[call];
                if of != call
                    && !self.parties.contains_key(call_s)
                    && !self.call_record.contains_key(call_s)
                {
                    self.consult.insert(call_s.into());
                }
                if !self.call_record.contains_key(call_s) {
                    self.maybe_consult.insert(call_s.into());
                }
                let state = if answer {
                    Party::Answered
                } else {
                    Party::Alerting
                };
                self.add_party(call_s, DNS[dn], state);
                let caller = caller.flatten().filter(|c| *c != dn);
                if let Some(from) = caller {
                    self.add_party(call_s, DNS[from], Party::Dialing);
                }
                let req = ringing_full(
                    call_s,
                    DNS[dn],
                    None,
                    caller.map(|c| DNS[c]),
                    Some(CALLS[of]),
                );
                self.request(SWITCH, req, Kind::Switch, &mut out, &mut sent);
                // Some switches also report the caller's side answered, most do not.
                if let (Some(from), true) = (caller, caller_answer) {
                    self.add_party(call_s, DNS[from], Party::Answered);
                    let req = established(call_s, DNS[from]);
                    self.request(SWITCH, req, Kind::Switch, &mut out, &mut sent);
                }
                if answer {
                    let req = established(call_s, DNS[dn]);
                    self.request(SWITCH, req, Kind::Switch, &mut out, &mut sent);
                }
            }
            Step::Established { call, dn } => {
                self.add_party(CALLS[call], DNS[dn], Party::Answered);
                let req = established(CALLS[call], DNS[dn]);
                self.request(SWITCH, req, Kind::Switch, &mut out, &mut sent);
            }
            Step::Released { call, dn, rona } => {
                let dn = dn.unwrap_or_else(|| self.some_party(CALLS[call]));
                let c = CALLS[call];
                let was_party = self.parties.get(c).is_some_and(|p| p.contains_key(DNS[dn]));
                self.drop_party(c, DNS[dn]);
                // A call without a record of its own on which only unwatched DNs are left,
                // ringing, is forgotten once a party leaves it: no event about them can come.
                let monitored = self.engine.monitored_dns();
                let nobody = was_party
                    && self.parties.get(c).is_some_and(|p| {
                        p.iter()
                            .all(|(d, s)| *s == Party::Alerting && !monitored.contains(d))
                    });
                if nobody && !self.call_record.contains_key(c) {
                    self.drop_call(c);
                }
                let cause = if rona { "rona" } else { "hangup" };
                let req = released(CALLS[call], DNS[dn], Some(cause));
                self.request(SWITCH, req, Kind::Switch, &mut out, &mut sent);
            }
            Step::Transferred {
                call,
                from,
                to,
                kind,
                consult_call,
            } => {
                let from = from.unwrap_or_else(|| self.some_party(CALLS[call]));
                let kind = match kind {
                    0 => TransferKind::SingleStep,
                    1 => TransferKind::Mute,
                    _ => TransferKind::TwoStep,
                };
                let consult_call = consult_call.filter(|c| *c != call);
                if from != to {
                    // The engine ignores a transfer to the DN it comes from.
                    if let Some(p) = self.parties.get_mut(CALLS[call]) {
                        p.remove(DNS[from]);
                    }
                    let state = if kind == TransferKind::TwoStep {
                        Party::Answered
                    } else {
                        Party::Alerting
                    };
                    self.add_party(CALLS[call], DNS[to], state);
                }
                let req = transferred(
                    CALLS[call],
                    DNS[from],
                    DNS[to],
                    kind,
                    consult_call.map(|c| CALLS[c]),
                );
                self.request(SWITCH, req, Kind::Switch, &mut out, &mut sent);
            }
            Step::Conferenced {
                call,
                dn,
                consult_call,
            } => {
                let consult_call = consult_call.filter(|c| *c != call);
                // A merged consultation is dropped by the engine; its parties stay here, but it is
                // in `maybe_consult` and never judged by them.
                self.add_party(CALLS[call], DNS[dn], Party::Answered);
                let req = conferenced(CALLS[call], DNS[dn], consult_call.map(|c| CALLS[c]));
                self.request(SWITCH, req, Kind::Switch, &mut out, &mut sent);
            }
            Step::PhoneLogin { agent, dn } => {
                let req = agent_login(DNS[dn], AGENTS[agent]);
                self.request(SWITCH, req, Kind::Switch, &mut out, &mut sent);
            }
            Step::PhoneLogout { agent, dn } => {
                let dn = dn.unwrap_or(agent);
                let req = agent_logout(DNS[dn], AGENTS[agent]);
                self.request(SWITCH, req, Kind::Switch, &mut out, &mut sent);
            }
            Step::Attach {
                call,
                record,
                phone,
                chain,
            } => {
                let r = RECORDS[record];
                let busy_elsewhere = self
                    .call_record
                    .iter()
                    .any(|(c, rr)| rr == r && c != CALLS[call]);
                let chain = if chain {
                    vec![
                        ChainEntry {
                            record: r.into(),
                            chain_n: 1,
                            phone: None,
                            data: Object::new(),
                        },
                        ChainEntry {
                            record: format!("{r}-2"),
                            chain_n: 2,
                            phone: Some("5559999".into()),
                            data: json!({"name": "other"}).as_object().unwrap().clone(),
                        },
                    ]
                } else {
                    Vec::new()
                };
                let mut attach = attach_record(CALLS[call], r);
                attach.phone = phone.map(|i| ANIS[i].into());
                attach.chain_id = None;
                attach.chain_n = Some(1);
                attach.chain = chain;
                let req = Request::AttachRecord(attach);
                self.request(
                    DIALER,
                    req,
                    Kind::Attach { busy_elsewhere },
                    &mut out,
                    &mut sent,
                );
            }
            Step::DialerCancel(record) => {
                let r = RECORDS[record];
                let expect = if !self.known(r) {
                    Err(ErrorCode::NoSuchRecord)
                } else if self.is_final(r) {
                    Err(ErrorCode::AlreadyFinal)
                } else {
                    Ok(())
                };
                let req = record_req("CancelRecord", r);
                self.request(
                    DIALER,
                    req,
                    Kind::DialerCancel { expect },
                    &mut out,
                    &mut sent,
                );
            }
            Step::AdminRelease(record) => {
                let r = RECORDS[record];
                let expect = if !self.known(r) {
                    Err(ErrorCode::NoSuchRecord)
                } else if self.is_final(r) {
                    Err(ErrorCode::AlreadyFinal)
                } else {
                    Ok(())
                };
                let req = release(r, "stuck");
                self.request(
                    ADMIN,
                    req,
                    Kind::AdminRelease { expect },
                    &mut out,
                    &mut sent,
                );
            }
            Step::Desk { agent, record, op } => {
                let Some(conn) = self.desk[agent] else {
                    return Ok(());
                };
                let r = RECORDS[record].to_string();
                let expect = self.expect_desk(agent, &r, op);
                let rr = RecordRef { record: r.clone() };
                let req = match op {
                    DeskOp::Get => Request::GetRecord(rr),
                    DeskOp::Chained => Request::ChainedRecords(rr),
                    DeskOp::Update => update_with_result(
                        &r,
                        "busy",
                        json!({"note": format!("by {}", AGENTS[agent])}),
                    ),
                    DeskOp::Processed => processed(&r, "sale"),
                    DeskOp::Reject => Request::RecordReject(rr),
                    DeskOp::Cancel => Request::RecordCancel(rr),
                    DeskOp::DoNotCall { chain } => Request::DoNotCall(DoNotCall {
                        record: r.clone(),
                        scope: if chain {
                            DncScope::Chain
                        } else {
                            DncScope::Record
                        },
                    }),
                    DeskOp::Reschedule { campaign } => Request::Reschedule(Reschedule {
                        record: r.clone(),
                        at: rfc3339(self.now + DAY_MS),
                        callback: if campaign {
                            Callback::Campaign
                        } else {
                            Callback::Personal
                        },
                    }),
                };
                let kind = Kind::Desk {
                    agent,
                    record: r,
                    op,
                    expect,
                };
                self.request(conn, req, kind, &mut out, &mut sent);
            }
            Step::Advance(ms) => {
                self.now += ms;
                self.input(Input::Tick, &mut out);
            }
            Step::Wait(ms) => {
                // Something arrives (a Ping) but the timer has not ticked yet.
                self.now += ms;
                self.request(ADMIN, Request::Ping, Kind::Ping, &mut out, &mut sent);
            }
        }
        if self.refuse_writes {
            let writes = self.engine.take_writes();
            if !writes.is_empty() {
                // What the shell does when the store refuses a batch: nothing of it is sent,
                // requests get `unavailable`, the engine goes back to before the batch, and the
                // connection changes in it are applied again.
                self.engine.rollback();
                let mut expected = self.pre_step.take().expect("cloned before the step");
                let (mut fact_out, mut expected_out) = (Vec::new(), Vec::new());
                for input in std::mem::take(&mut self.step_facts) {
                    expected.reapply_fact(self.now, input.clone(), &mut expected_out);
                    self.engine.reapply_fact(self.now, input, &mut fact_out);
                }
                // The wrapper closes the step's batch; this one only stands in for it.
                self.engine.begin();
                let (got, want) = (self.engine.dump(), expected.dump());
                if got != want {
                    let diff: Vec<String> = got
                        .lines()
                        .zip(want.lines())
                        .filter(|(g, w)| g != w)
                        .map(|(g, w)| format!("after rollback: {g}\nbefore the batch: {w}"))
                        .collect();
                    return Err(format!(
                        "inv 8: a refused batch left the engine changed:\n{}",
                        diff.join("\n")
                    ));
                }
                if fact_out != expected_out {
                    return Err(format!(
                        "inv 8: connection changes applied again said {fact_out:?}, expected {expected_out:?}"
                    ));
                }
                if self.engine.counts().audit_last_seq != self.audit_last {
                    return Err("inv 8: a refused batch moved the audit seq".into());
                }
                // A refused login leaves the agent on the connection it had (its new connection
                // stays open, logged in as nobody).
                if let Step::Login(a) | Step::Reconnect { agent: a, .. } = *step {
                    self.desk[a] = desk_before[a];
                    self.logged_in[a] = logged_in_before[a];
                }
                // The switch's events were refused too: its calls are as before.
                self.parties = parties_before;
                self.consult = consult_before;
                self.maybe_consult = maybe_consult_before;
                bump(&REFUSED_BATCHES);
                self.rolled_back = true;
                return Ok(());
            }
            // Nothing to write: the store was never asked, and the step stands.
        }
        if self.engine.counts().ignored_events != ignored_before {
            // The engine ignored the event (unknown call, unmonitored DNs): so does the test's switch.
            self.parties = parties_before.clone();
            self.consult = consult_before;
            self.maybe_consult = maybe_consult_before.clone();
        }
        // A consultation merged into its customer call, a call forgotten: the switch's next event
        // about that id starts a new call. (A call dropped without telling its desktops would
        // still show: the failover check compares what the desktops were told.)
        let gone: Vec<String> = self
            .parties
            .keys()
            .filter(|c| !self.engine.tracks_call(c))
            .cloned()
            .collect();
        for c in gone {
            self.drop_call(&c);
        }
        self.check(
            step,
            &connected_at_start,
            &call_record_before,
            audit_log_len_before,
            &out,
            &sent,
        )?;
        let before = Before {
            call_record: call_record_before,
            parties: parties_before,
            maybe_consult: maybe_consult_before,
            ro_via: ro_via_before,
            holders: holders_before,
            audit_log_len: audit_log_len_before,
        };
        self.check_rules(step, &before)
    }
}
