//! The sharing rules checked after every step, rule by rule, from the audit entries.

use super::*;

impl Harness {
    /// Keeps the holder table and the orphan clock from the audit entries (rules 5 and 9).
    pub(crate) fn track_holders(&mut self, step: &Step, e: &AuditEntry) -> Result<(), String> {
        let Some(rec) = e.record.clone() else {
            return Ok(());
        };
        let agent = e.agent.clone().unwrap_or_default();
        match e.kind {
            AuditKind::Attached => {
                self.holders.insert(rec.clone(), BTreeMap::new());
                self.ever_held.remove(&rec);
                self.final_info.remove(&rec);
                self.context.remove(&rec);
                self.lost_at.remove(&rec);
                self.ro_via.retain(|(r, _), _| *r != rec);
                // A consultation that gets a record of its own is no longer judged as one.
                let call = e.call.clone().unwrap_or_default();
                self.ro_via.retain(|_, (x, _)| *x != call);
            }
            AuditKind::Granted | AuditKind::Downgraded | AuditKind::Revoked => {
                // Rule 12: the entry tells the access before, as the trail itself had it.
                let before = self
                    .holders
                    .get(&rec)
                    .and_then(|h| h.get(&agent))
                    .copied()
                    .unwrap_or(Access::Revoked);
                if e.previous != Some(before) || e.access.is_none() {
                    return Err(format!(
                        "rule 12: audit entry says previous {:?}, the trail had {before:?}: {e:?}",
                        e.previous
                    ));
                }
            }
            _ => {}
        }
        match e.kind {
            AuditKind::Granted | AuditKind::Downgraded => {
                // Rule 9: past orphan_timeout_ms without a holder the record is the dialer's
                // again (stale); nobody can take it any more.
                if let Some(t) = self.lost_at.get(&rec) {
                    if self.now > t + ORPHAN_MS {
                        return Err(format!(
                            "rule 9: {rec} taken by {agent} {} ms after losing its last holder \
                             (orphan_timeout_ms {ORPHAN_MS})",
                            self.now - t
                        ));
                    }
                }
                let access = e.access.unwrap_or(Access::Revoked);
                self.holders
                    .entry(rec.clone())
                    .or_default()
                    .insert(agent.clone(), access);
                self.ever_held
                    .entry(rec.clone())
                    .or_default()
                    .insert(agent.clone());
                self.lost_at.remove(&rec);
                self.ro_via.remove(&(rec.clone(), agent.clone()));
                if e.kind == AuditKind::Granted
                    && access == Access::ReadOnly
                    && e.cause.as_deref() == Some("consultation")
                {
                    if let Step::Established { call, .. } | Step::Consult { call, .. } = step {
                        let customer = e.call.clone().unwrap_or_default();
                        self.ro_via
                            .insert((rec, agent), (CALLS[*call].to_owned(), customer));
                    }
                }
            }
            AuditKind::Revoked => {
                self.ro_via.remove(&(rec.clone(), agent.clone()));
                let set = self.holders.entry(rec.clone()).or_default();
                set.remove(&agent);
                let live = self.life.get(&rec).is_some_and(|l| l.0);
                if set.is_empty() && live {
                    self.lost_at.insert(rec, self.now);
                }
            }
            AuditKind::Finalized => {
                self.final_info.insert(
                    rec.clone(),
                    (e.agent.clone(), e.cause.clone().unwrap_or_default()),
                );
                if e.cause.as_deref() == Some("stale") {
                    if self.holders.get(&rec).is_some_and(|h| !h.is_empty()) {
                        return Err(format!(
                            "rule 9: {rec} returned stale while held by {:?}",
                            self.holders[&rec]
                        ));
                    }
                    if let Some(t) = self.lost_at.get(&rec) {
                        if self.now < t + ORPHAN_MS {
                            return Err(format!(
                                "rule 9: {rec} returned stale {} ms after losing its last holder",
                                self.now - t
                            ));
                        }
                    }
                }
                self.lost_at.remove(&rec);
            }
            _ => {}
        }
        Ok(())
    }

    /// Rule-level checks of SCENARIOS.md that need only the step, the state before and the engine.
    pub(crate) fn check_rules(&mut self, step: &Step, before: &Before) -> Result<(), String> {
        let Before {
            call_record: call_record_before,
            parties: parties_before,
            maybe_consult: maybe_consult_before,
            ro_via: ro_via_before,
            holders: holders_before,
            audit_log_len: audit_log_len_before,
        } = before;
        let audit_log_len_before = *audit_log_len_before;
        let acc = |r: &str, a: &str| self.engine.access_of(r, a).unwrap_or(Access::Revoked);
        let agent_on = |d: usize| (d < 4 && self.alive(d)).then(|| AGENTS[d]);
        let live_record = |call: usize| {
            call_record_before
                .get(CALLS[call])
                .filter(|r| self.engine.final_of(r).is_none())
                .cloned()
        };
        match *step {
            // Rule 1: Established on a DN with a logged-in agent gives it `full`.
            // Rule 6: so does joining the call as a conference party.
            Step::Established { call, dn }
            | Step::Conferenced { call, dn, .. }
            | Step::Consult {
                call,
                dn,
                answer: true,
                ..
            } => {
                if let (Some(r), Some(a)) = (live_record(call), agent_on(dn)) {
                    if acc(&r, a) != Access::Full {
                        return Err(format!(
                            "rules 1/6: {a} on {} is on {} carrying {r} but holds {:?}",
                            DNS[dn],
                            CALLS[call],
                            acc(&r, a)
                        ));
                    }
                }
            }
            // Rules 2, 4, 9: after a transfer the initiator is revoked and the recipient is `full`.
            Step::Transferred {
                call,
                from: Some(from),
                to,
                ..
            } if from != to => {
                if let Some(r) = live_record(call) {
                    if let Some(b) = agent_on(to) {
                        if acc(&r, b) != Access::Full {
                            return Err(format!(
                                "rules 2/4: recipient {b} holds {:?} on {r}",
                                acc(&r, b)
                            ));
                        }
                    }
                    if from < 4 && acc(&r, AGENTS[from]) != Access::Revoked {
                        return Err(format!(
                            "rules 2/4/9: initiator {} still holds {:?} on {r}",
                            AGENTS[from],
                            acc(&r, AGENTS[from])
                        ));
                    }
                }
            }
            Step::Released {
                call, dn: Some(dn), ..
            } => {
                // Rules 5 and 7: a DN leaving a call takes `full` from nobody but its own agent.
                for e in &self.audit_log[audit_log_len_before..] {
                    if e.kind == AuditKind::Revoked
                        && e.previous == Some(Access::Full)
                        && e.agent.as_deref() != Some(DNS_AGENT[dn])
                    {
                        return Err(format!(
                            "rules 5/7: Released on {} revoked someone else's full: {e:?}",
                            DNS[dn]
                        ));
                    }
                }
                // Rule 5: the consultation released on B's DN (or A's) ends B's read-only access.
                // Rule 7: leaving while another answered agent remains on the call revokes; the
                // last agent to leave keeps `full`.
                let c = CALLS[call];
                let x = DNS_AGENT[dn];
                let was_full = |r: &String| {
                    holders_before.get(r).and_then(|h| h.get(x)) == Some(&Access::Full)
                };
                if let (false, Some(r), Some(_), Some(&state)) = (
                    maybe_consult_before.contains(c),
                    live_record(call).filter(was_full),
                    agent_on(dn),
                    parties_before.get(c).and_then(|p| p.get(DNS[dn])),
                ) {
                    let others: Vec<&str> = self
                        .parties
                        .get(c)
                        .map(|p| {
                            p.iter()
                                .filter(|(d, s)| **s == Party::Answered && d.as_str() != DNS[dn])
                                .filter_map(|(d, _)| DNS.iter().position(|x| x == d))
                                .filter_map(agent_on)
                                .collect()
                        })
                        .unwrap_or_default();
                    let now = acc(&r, x);
                    bump(&RULE7_JUDGED);
                    if !others.is_empty() && now != Access::Revoked {
                        return Err(format!(
                            "rule 7: {x} left {c} while {others:?} remain, but still holds {now:?} on {r}"
                        ));
                    }
                    // A caller that leaves while dialing is on the call as much as one that answered.
                    if others.is_empty() && state != Party::Alerting && now != Access::Full {
                        return Err(format!(
                            "rule 7: {x} was the last agent to leave {c} but holds {now:?} on {r}"
                        ));
                    }
                }
                // Judged when the engine showed (by `CallCleared`) that the DN left the call, or
                // the DN was the consultation's caller (CONTRACT 5: on the call from its Ringing,
                // with or without an Established), and B is still a party of the consultation.
                let c2 = CALLS[call];
                let on =
                    |c: &str, d: &str| parties_before.get(c).is_some_and(|p| p.contains_key(d));
                let caller = parties_before
                    .get(c2)
                    .and_then(|p| p.get(DNS[dn]))
                    .is_some_and(|s| *s == Party::Dialing);
                let left = caller || self.cleared.contains(&(c2.to_owned(), DNS[dn].to_owned()));
                for ((r, b), (x, _customer)) in ro_via_before {
                    let Some(bi) = agent_idx(b) else { continue };
                    if x != c2 || !left || !on(x, DNS[bi]) {
                        continue;
                    }
                    let a_full = holders_before.get(r).and_then(|h| h.get(DNS_AGENT[dn]))
                        == Some(&Access::Full);
                    if bi == dn || a_full {
                        bump(&RULE5_JUDGED);
                        if caller {
                            bump(&RULE5_CALLER_JUDGED);
                        }
                    }
                    if (bi == dn || a_full) && acc(r, b) != Access::Revoked {
                        return Err(format!(
                            "rule 5: consultation {c2} released on {} but {b} still holds {:?} on {r}",
                            DNS[dn],
                            acc(r, b)
                        ));
                    }
                }
            }
            _ => {}
        }
        // A consultation merged into its customer call by a transfer or conference is over
        // without a Released; forget the read-only grants it gave (the engine may find it alone).
        match *step {
            Step::Transferred {
                call,
                to: dn,
                consult_call,
                ..
            }
            | Step::Conferenced {
                call,
                dn,
                consult_call,
            } => {
                let on =
                    |c: &str, d: &str| parties_before.get(c).is_some_and(|p| p.contains_key(d));
                self.ro_via.retain(|_, (x, customer)| {
                    // A consultation transferred itself is not judged by rule 5 either.
                    let itself = x.as_str() == CALLS[call];
                    let explicit = consult_call.is_some_and(|c| CALLS[c] == x.as_str());
                    let found = customer == CALLS[call] && on(x, DNS[dn]);
                    !(itself || explicit || found)
                });
            }
            _ => {}
        }
        // Rule 9: a record nobody took within orphan_timeout_ms of losing its last holder is stale.
        if let Step::Advance(_) = step {
            for (r, t) in &self.lost_at {
                if self.now >= t + ORPHAN_MS && self.engine.final_of(r).is_none() {
                    return Err(format!(
                        "rule 9: {r} unheld since {} ms ago is still live after a tick",
                        self.now - t
                    ));
                }
            }
        }
        Ok(())
    }
}
