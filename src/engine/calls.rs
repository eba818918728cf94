//! The call table: calls and their parties, the DN -> calls and ANI -> calls indexes, linking a
//! consultation to its customer call, and the record a call carries. Bookkeeping only: it never
//! changes access and never pushes anything but a merged consultation's `CallCleared`.

use super::*;

impl Engine {
    /// The record a call carries, directly or (for a consultation) through the call it consults.
    pub(super) fn record_of_call(&self, call: &CallId) -> Option<(RecordId, bool)> {
        self.record_ref_of_call(call)
            .map(|(r, via_consult)| (r.clone(), via_consult))
    }

    pub(super) fn record_ref_of_call(&self, call: &CallId) -> Option<(&RecordId, bool)> {
        if let Some(r) = self.call_record.get(call) {
            return Some((r, false));
        }
        let c = self.calls.get(call)?;
        let original = c.consult_of.as_ref()?;
        self.call_record.get(original).map(|r| (r, true))
    }

    fn monitored(&self, dn: &Dn) -> bool {
        self.dn_agent.contains_key(dn)
    }

    /// An event is ours if it names a call we know (or one carrying a record) or a monitored DN.
    /// An applied event also tells that the call is alive (see `call_idle_timeout_ms`).
    pub(super) fn relevant(&mut self, call: &CallId, dns: &[&Dn]) -> bool {
        let ours = self.calls.contains_key(call)
            || self.call_record.contains_key(call)
            || dns.iter().any(|dn| self.monitored(dn));
        if !ours {
            self.ignored_events += 1;
        } else if let Some(c) = self.calls.get_mut(call) {
            c.last_event_ms = self.now_ms;
        }
        ours
    }

    pub(super) fn call_entry(&mut self, call: &CallId) -> &mut Call {
        if !self.calls.contains_key(call) {
            self.call_order += 1;
            let order = self.call_order;
            let deadline = self.now_ms.saturating_add(self.cfg.call_idle_timeout_ms);
            self.calls.insert(
                call.clone(),
                Call {
                    parties: Parties::default(),
                    ani: None,
                    ani_keys: Vec::new(),
                    consult_of: None,
                    caller: None,
                    consult_over: false,
                    order,
                    last_event_ms: self.now_ms,
                    idle_deadline_ms: deadline,
                },
            );
            self.call_deadlines.insert((deadline, call.clone()));
            if let Some(phone) = self
                .call_record
                .get(call)
                .and_then(|r| self.records.get(r))
                .and_then(|r| r.phone.clone())
            {
                self.index_ani(call, &phone);
            }
        }
        self.calls.get_mut(call).expect("inserted above")
    }

    /// A call the event being applied has just filed (through [`Engine::call_entry`] or
    /// [`Engine::add_party`]). Only [`Engine::drop_call`] removes a call, and no event handler
    /// drops one before it is done with it.
    pub(super) fn filed_call(&self, call: &CallId) -> &Call {
        match self.calls.get(call) {
            Some(c) => c,
            None => panic!("call {call} was filed by the event being applied"),
        }
    }

    /// [`Engine::filed_call`], to change it.
    pub(super) fn filed_call_mut(&mut self, call: &CallId) -> &mut Call {
        match self.calls.get_mut(call) {
            Some(c) => c,
            None => panic!("call {call} was filed by the event being applied"),
        }
    }

    pub(super) fn index_ani(&mut self, call: &CallId, ani: &str) {
        if ani.is_empty() {
            return;
        }
        let filed = self.ani_calls.get_or_default(ani).insert(call.clone());
        assert!(
            self.calls.contains_key(call),
            "only live calls are filed by ANI"
        );
        if filed {
            if let Some(c) = self.calls.get_mut(call) {
                c.ani_keys.push(ani.to_owned());
            }
        }
    }

    pub(super) fn add_party(&mut self, call: &CallId, dn: &Dn, state: PartyState) {
        self.call_entry(call).parties.add(dn, state);
        self.dn_calls.insert((dn.clone(), call.clone()));
    }

    /// Takes `call` off `dn`'s calls.
    fn unfile_call(&mut self, dn: &Dn, call: &CallId) {
        self.dn_calls.remove(&(dn.clone(), call.clone()));
    }

    pub(super) fn remove_party(&mut self, call: &CallId, dn: &Dn) -> Option<PartyState> {
        let state = self.calls.get_mut(call)?.parties.remove(dn);
        self.unfile_call(dn, call);
        state
    }

    /// Removes a call with no parties left. A record it carried that nobody ever held starts its
    /// orphan clock, so that no record waits forever.
    pub(super) fn end_call_if_empty(&mut self, out: &mut Vec<Output>, call: &CallId) {
        if !self.calls.get(call).is_some_and(|c| c.parties.is_empty()) {
            return;
        }
        self.drop_call(call);
        if let Some(record) = self.call_record.get(call).cloned() {
            if self
                .records
                .get(&record)
                .is_some_and(|r| r.final_.is_none() && !r.has_live_holder())
            {
                self.orphan(out, &record, call);
            }
        }
    }

    pub(super) fn drop_call(&mut self, call: &CallId) {
        let Some(c) = self.calls.remove(call) else {
            return;
        };
        self.call_deadlines
            .remove(&(c.idle_deadline_ms, call.clone()));
        for dn in c.parties.keys() {
            self.unfile_call(dn, call);
        }
        for ani in &c.ani_keys {
            if let Some(set) = self.ani_calls.get_mut(ani) {
                set.remove(call);
                if set.is_empty() {
                    self.ani_calls.remove(ani);
                }
            }
        }
    }

    /// The live call a consultation without `consult_of` belongs to: same customer ANI, carrying a
    /// record, not itself a consultation; one with `from_dn` as a party first, else the most recent.
    pub(super) fn link_by_ani(
        &self,
        call: &CallId,
        ani: &str,
        from_dn: Option<&Dn>,
    ) -> Option<CallId> {
        let candidates = self.ani_calls.get(ani)?;
        let mut best: Option<(bool, u64, CallId)> = None;
        for id in candidates {
            if id == call {
                continue;
            }
            let Some(c) = self.calls.get(id) else {
                continue;
            };
            if c.consult_of.is_some() || !self.call_record.contains_key(id) {
                continue;
            }
            let has_from = from_dn.is_some_and(|d| c.parties.contains_key(d));
            let key = (has_from, c.order, id.clone());
            if best.as_ref().is_none_or(|b| (key.0, key.1) > (b.0, b.1)) {
                best = Some(key);
            }
        }
        best.map(|b| b.2)
    }

    /// Forgets a call that carries no record of its own once only DNs the server does not watch
    /// are left on it, still ringing (a consultation to a DN nobody is logged in on, after the
    /// caller hung up): no event about them will ever come, and nothing depends on them. A call
    /// with a record stays, for whoever logs in where it is (rule 9).
    pub(super) fn end_call_nobody_is_on(&mut self, call: &CallId) {
        let Some(c) = self.calls.get(call) else {
            return;
        };
        let forgotten = !self.call_record.contains_key(call)
            && c.parties
                .0
                .iter()
                .all(|(dn, state)| *state == PartyState::Alerting && !self.monitored(dn));
        if forgotten {
            self.drop_call(call);
        }
    }

    /// Ends consultation `c2` because it was merged into the customer call; its parties are told.
    pub(super) fn merge_consultation(
        &mut self,
        out: &mut Vec<Output>,
        c2: &CallId,
        cause: ClearCause,
    ) {
        let Some(call) = self.calls.get(c2) else {
            return;
        };
        for dn in call.parties.keys() {
            self.push_dn(
                out,
                dn,
                ServerMsg::CallCleared {
                    call: c2.into(),
                    dn: dn.into(),
                    cause: cause.as_str().to_owned(),
                },
            );
        }
        self.drop_call(c2);
    }

    /// The consultation named by an event, if it really is a consultation of `call`; otherwise
    /// the live consultation of `call` that has `dn` as a party.
    pub(super) fn consultation_of(
        &self,
        call: &CallId,
        named: Option<&CallId>,
        dn: &Dn,
    ) -> Option<CallId> {
        if let Some(c2) = named {
            if self
                .calls
                .get(c2)
                .is_some_and(|c| c.consult_of.as_ref() == Some(call))
            {
                return Some(c2.clone());
            }
        }
        self.find_consultation(call, dn)
    }

    fn find_consultation(&self, call: &CallId, dn: &Dn) -> Option<CallId> {
        self.calls_on(dn).find_map(|id| {
            let c = self.calls.get(id)?;
            (c.consult_of.as_ref() == Some(call) && !c.consult_over).then(|| id.clone())
        })
    }
}
