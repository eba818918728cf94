//! Time: resume grace expiry, the orphan timeout, calls silent past `call_idle_timeout_ms`, and
//! final records leaving memory. Runs before every input, so that no deadline is decided late;
//! never reads the clock itself (the time comes with the input).

use super::*;

impl Engine {
    pub(super) fn on_tick(&mut self, out: &mut Vec<Output>) {
        let now_ms = self.now_ms;
        self.with_one_monitor(out, |engine, out| {
            while let Some((deadline, agent)) = engine.grace_deadlines.first().cloned() {
                if deadline > now_ms {
                    break;
                }
                engine.grace_deadlines.pop_first();
                let expired = engine.agents.get(&agent).is_some_and(|a| {
                    a.conn.is_none()
                        && a.away_since_ms.map(|t| t + engine.cfg.resume_grace_ms) == Some(deadline)
                });
                if expired {
                    engine.end_agent(out, &agent, None, true, SessionCause::GraceExpired);
                }
            }
        });
        while let Some((deadline, record)) = self.orphan_deadlines.first().cloned() {
            if deadline > now_ms {
                break;
            }
            self.orphan_deadlines.pop_first();
            let stale = self.records.get(&record).is_some_and(|r| {
                r.final_.is_none()
                    && r.orphaned_since_ms.map(|t| t + self.cfg.orphan_timeout_ms) == Some(deadline)
            });
            if stale {
                self.finalize(
                    out,
                    &record,
                    Outcome::Stale,
                    FinalBy::Server,
                    FinalExtra::default(),
                );
            }
        }
        while let Some((deadline, call)) = self.call_deadlines.first().cloned() {
            if deadline > now_ms {
                break;
            }
            self.call_deadlines.pop_first();
            let Some(c) = self.calls.get(&call) else {
                continue;
            };
            if c.idle_deadline_ms != deadline {
                continue;
            }
            let due = c
                .last_event_ms
                .saturating_add(self.cfg.call_idle_timeout_ms);
            if due > now_ms {
                // Events came meanwhile: look again when the call has been silent long enough.
                if let Some(c) = self.calls.get_mut(&call) {
                    c.idle_deadline_ms = due;
                }
                self.call_deadlines.insert((due, call));
            } else {
                self.drop_idle_call(out, &call);
            }
        }
    }

    /// Evicts final records from memory, oldest first, past their time or past the number kept.
    /// Only on a timer tick, never before a request: the shell may just have read back the
    /// record that request names. A record with changes not yet written stays (the write needs it).
    pub(super) fn evict_finals(&mut self) {
        let now_ms = self.now_ms;
        while let Some((since, record)) = self.final_queue.first().cloned() {
            let over_number = self.final_queue.len() as u64 > self.cfg.max_final_records_in_memory;
            let over_age = since.saturating_add(self.cfg.final_record_memory_ms) <= now_ms;
            if !(over_number || over_age) || self.dirty_records.contains(&record) {
                break;
            }
            self.final_queue.pop_first();
            let evicted = self.records.remove(&record);
            assert!(
                evicted.is_some_and(|r| r.final_.is_some()),
                "only final records leave memory"
            );
        }
    }

    /// The switch never ended `call` and has said nothing about it for `call_idle_timeout_ms`:
    /// forget it. A consultation is over (its read-only access ends, rule 5); the holders of a
    /// customer call's record keep their access to finish it, as when a call ends; a record
    /// nobody holds starts its orphan clock. Desktops on its DNs are told `CallCleared`.
    fn drop_idle_call(&mut self, out: &mut Vec<Output>, call: &CallId) {
        let Some(c) = self.calls.get(call) else {
            return;
        };
        let dns: Vec<Dn> = c.parties.keys().cloned().collect();
        let idle_ms = self.now_ms.saturating_sub(c.last_event_ms);
        tracing::warn!(
            call = call.as_str(),
            idle_ms,
            parties = ?dns,
            "dropping a call the switch never ended: no telephony event for call_idle_timeout_ms ({} ms)",
            self.cfg.call_idle_timeout_ms
        );
        for dn in &dns {
            self.push_dn(
                out,
                dn,
                ServerMsg::CallCleared {
                    call: call.into(),
                    dn: dn.into(),
                    cause: ClearCause::IdleTimeout.as_str().to_owned(),
                },
            );
        }
        if let Some((record, true)) = self.record_of_call(call) {
            if let Some(c) = self.calls.get_mut(call) {
                c.consult_over = true;
            }
            for dn in &dns {
                if let Some(a) = self.agent_on(dn) {
                    if self.access_to(&record, &a) == Some(Access::ReadOnly) {
                        self.set_access(out, &record, &a, Access::Revoked, AccessCause::Released);
                    }
                }
            }
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
}
