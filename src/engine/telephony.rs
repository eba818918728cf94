//! Telephony events from the switch, `Ringing` to `Conferenced`: who is on which call, what their
//! desktops are told, and the access each event entitles to (rules 1 to 9 of the contract).
//! Never writes holders itself: every access change goes through [`Engine::set_access`].

use super::*;

impl Engine {
    pub(super) fn ringing(&mut self, out: &mut Vec<Output>, e: Ringing) {
        let call = CallId::from(e.call.as_str());
        let dn = Dn::from(e.dn.as_str());
        let from_dn = e.from_dn.as_deref().map(Dn::from);
        let relevant = match &from_dn {
            Some(from) => self.relevant(&call, &[&dn, from]),
            None => self.relevant(&call, &[&dn]),
        };
        if !relevant {
            return;
        }
        self.add_party(&call, &dn, PartyState::Alerting);
        if let Some(ani) = &e.ani {
            if self.filed_call(&call).ani.is_none() {
                self.filed_call_mut(&call).ani = Some(ani.clone());
                self.index_ani(&call, ani);
            }
        }
        let unlinked =
            self.filed_call(&call).consult_of.is_none() && !self.call_record.contains_key(&call);
        if unlinked {
            let link = match &e.consult_of {
                Some(c1) if *c1 != e.call => Some(CallId::from(c1.as_str())),
                Some(_) => None,
                None => e
                    .ani
                    .as_deref()
                    .and_then(|ani| self.link_by_ani(&call, ani, from_dn.as_ref())),
            };
            if let Some(c1) = link {
                self.filed_call_mut(&call).consult_of = Some(c1);
            }
        }
        // The caller is on the call from now on (CONTRACT section 5): when it hangs up, its
        // `Released` must find it, whether or not the switch ever sends `Established` for it.
        if let Some(from) = from_dn.as_ref().filter(|f| **f != dn) {
            let c = self.filed_call_mut(&call);
            if c.caller.is_none() {
                c.caller = Some(from.clone());
            }
            if !c.parties.contains_key(from) {
                self.add_party(&call, from, PartyState::Dialing);
                if let Some(conn) = self.conn_on_dn(from) {
                    let msg = ServerMsg::CallEstablished {
                        call: e.call.clone(),
                        dn: from.into(),
                    };
                    Self::send(out, conn, None, msg);
                }
            }
        }
        let c = &self.filed_call(&call);
        if c.parties.get(&dn) == Some(PartyState::Alerting) {
            if let Some(conn) = self.conn_on_dn(&dn) {
                let msg = ServerMsg::CallAlerting {
                    record: self.record_of_call(&call).map(|(r, _)| r.into()),
                    consult_of: c.consult_of.as_ref().map(String::from),
                    call: e.call,
                    dn: e.dn,
                };
                Self::send(out, conn, None, msg);
            }
        }
    }

    pub(super) fn established(&mut self, out: &mut Vec<Output>, e: CallDn) {
        let call = CallId::from(e.call.as_str());
        let dn = Dn::from(e.dn.as_str());
        if !self.relevant(&call, &[&dn]) {
            return;
        }
        let before = self.calls.get(&call).and_then(|c| c.parties.get(&dn));
        self.add_party(&call, &dn, PartyState::Established);
        if !PartyState::shown_established(before) {
            if let Some(conn) = self.conn_on_dn(&dn) {
                let msg = ServerMsg::CallEstablished {
                    call: e.call.clone(),
                    dn: e.dn.clone(),
                };
                Self::send(out, conn, None, msg);
            }
        }
        // Most calls carry no record: then there is nothing to grant, and no agent id to copy.
        if self.record_ref_of_call(&call).is_none() {
            return;
        }
        if let Some(agent) = self.agent_on(&dn) {
            self.grant_for_party(out, &call, &agent, false);
        }
    }

    pub(super) fn released(&mut self, out: &mut Vec<Output>, e: Released) {
        let call = CallId::from(e.call.as_str());
        let dn = Dn::from(e.dn.as_str());
        if !self.relevant(&call, &[&dn]) {
            return;
        }
        let Some(c) = self.calls.get(&call) else {
            return;
        };
        let linked = self.record_of_call(&call);
        // A consultation's parties as they were before this one left (sorted, as parties are).
        let consult_dns: Vec<Dn> = match linked {
            Some((_, true)) => c.parties.keys().cloned().collect(),
            _ => Vec::new(),
        };
        let Some(state) = self.remove_party(&call, &dn) else {
            return;
        };
        if let Some(conn) = self.conn_on_dn(&dn) {
            let msg = ServerMsg::CallCleared {
                call: e.call.clone(),
                dn: e.dn.clone(),
                cause: e.cause.unwrap_or_else(|| "hangup".to_owned()),
            };
            Self::send(out, conn, None, msg);
        }
        match linked {
            Some((record, true)) => {
                // A consultation ends when either side leaves (rule 5): read-only access it gave
                // is over. But while the DN that placed it is still on it, a consultee leaving
                // (RONA, a hang-up) ends only its own part: the switch may ring the same call
                // elsewhere (redistribution from a queue), and whoever answers is consulted.
                let caller_stays = self.calls.get(&call).is_some_and(|c| {
                    c.caller
                        .as_ref()
                        .is_some_and(|from| *from != dn && c.parties.contains_key(from))
                });
                // The agent holding the record leaving ends the consultation in any case.
                let holder_left = self
                    .agent_on(&dn)
                    .is_some_and(|a| self.access_to(&record, &a) == Some(Access::Full));
                let consult_dns = if caller_stays && !holder_left {
                    vec![dn.clone()]
                } else {
                    if let Some(c) = self.calls.get_mut(&call) {
                        c.consult_over = true;
                    }
                    consult_dns
                };
                for dn in consult_dns {
                    if let Some(a) = self.agent_on(&dn) {
                        if self.access_to(&record, &a) == Some(Access::ReadOnly) {
                            self.set_access(
                                out,
                                &record,
                                &a,
                                Access::Revoked,
                                AccessCause::Released,
                            );
                        }
                    }
                }
            }
            Some((record, false)) => {
                if let Some(agent) = self.agent_on(&dn) {
                    // Only answered parties count: someone still ringing may never join.
                    let remaining_agents = self
                        .filed_call(&call)
                        .parties
                        .established()
                        .filter_map(|dn| self.dn_agent.get(dn))
                        .any(|a| *a != agent);
                    let held = self
                        .access_to(&record, &agent)
                        .is_some_and(Access::is_granted);
                    if held && state == PartyState::Alerting {
                        // Never answered (RONA, busy, abandoned while ringing).
                        self.set_access(
                            out,
                            &record,
                            &agent,
                            Access::Revoked,
                            AccessCause::Released,
                        );
                    } else if held && remaining_agents {
                        self.set_access(out, &record, &agent, Access::Revoked, AccessCause::Left);
                    }
                }
            }
            None => {}
        }
        self.end_call_if_empty(out, &call);
        self.end_call_nobody_is_on(&call);
    }

    pub(super) fn transferred(&mut self, out: &mut Vec<Output>, e: Transferred) {
        let call = CallId::from(e.call.as_str());
        let from_dn = Dn::from(e.from_dn.as_str());
        let to_dn = Dn::from(e.to_dn.as_str());
        if !self.relevant(&call, &[&from_dn, &to_dn]) {
            return;
        }
        if e.from_dn == e.to_dn {
            return;
        }
        self.call_entry(&call);
        let named = e.consult_call.as_deref().map(CallId::from);
        let consult = match e.kind {
            TransferKind::TwoStep => self.consultation_of(&call, named.as_ref(), &to_dn),
            _ => None,
        };
        if self.remove_party(&call, &from_dn).is_some() {
            self.push_dn(
                out,
                &from_dn,
                ServerMsg::CallCleared {
                    call: e.call.clone(),
                    dn: e.from_dn.clone(),
                    cause: ClearCause::Transferred.as_str().to_owned(),
                },
            );
        }
        if let Some(c2) = &consult {
            self.merge_consultation(out, c2, ClearCause::Transferred);
        }
        let arriving = match e.kind {
            TransferKind::TwoStep => PartyState::Established,
            _ => PartyState::Alerting,
        };
        let before = self.filed_call(&call).parties.get(&to_dn);
        self.add_party(&call, &to_dn, arriving);
        let record = self.call_record.get(&call).cloned();
        match (before, arriving) {
            (Some(PartyState::Established | PartyState::Dialing), _) => {}
            (_, PartyState::Established | PartyState::Dialing) => self.push_dn(
                out,
                &to_dn,
                ServerMsg::CallEstablished {
                    call: e.call.clone(),
                    dn: e.to_dn.clone(),
                },
            ),
            (_, PartyState::Alerting) => self.push_dn(
                out,
                &to_dn,
                ServerMsg::CallAlerting {
                    call: e.call.clone(),
                    dn: e.to_dn.clone(),
                    record: record.as_ref().map(String::from),
                    consult_of: None,
                },
            ),
        }
        if let Some(record) = record {
            if self
                .records
                .get(&record)
                .is_some_and(|r| r.final_.is_none())
            {
                let from = self.agent_on(&from_dn);
                let to = self.agent_on(&to_dn);
                // Grant first, so the record is never seen without a holder when there is a recipient.
                if let Some(b) = &to {
                    self.set_access(out, &record, b, Access::Full, AccessCause::Transfer);
                }
                if let Some(a) = from {
                    if Some(&a) != to.as_ref() {
                        self.set_access(out, &record, &a, Access::Revoked, AccessCause::Transfer);
                    }
                }
            }
        }
        self.end_call_if_empty(out, &call);
    }

    pub(super) fn conferenced(&mut self, out: &mut Vec<Output>, e: Conferenced) {
        let call = CallId::from(e.call.as_str());
        let dn = Dn::from(e.dn.as_str());
        if !self.relevant(&call, &[&dn]) {
            return;
        }
        self.call_entry(&call);
        let named = e.consult_call.as_deref().map(CallId::from);
        let consult = self.consultation_of(&call, named.as_ref(), &dn);
        if let Some(c2) = &consult {
            self.merge_consultation(out, c2, ClearCause::Conferenced);
        }
        let before = self.filed_call(&call).parties.get(&dn);
        self.add_party(&call, &dn, PartyState::Established);
        if !PartyState::shown_established(before) {
            self.push_dn(
                out,
                &dn,
                ServerMsg::CallEstablished {
                    call: e.call.clone(),
                    dn: e.dn.clone(),
                },
            );
        }
        let Some(record) = self.call_record.get(&call).cloned() else {
            return;
        };
        if self.records.get(&record).is_none_or(|r| r.final_.is_some()) {
            return;
        }
        let dns: Vec<Dn> = self
            .filed_call(&call)
            .parties
            .established()
            .cloned()
            .collect();
        for dn in dns {
            if let Some(agent) = self.agent_on(&dn) {
                self.set_access(out, &record, &agent, Access::Full, AccessCause::Conference);
            }
        }
    }
}
