//! The engine's side of the store: what changed since the last batch (for the shell to write),
//! the state restored at start, final records read back into memory and purged by retention.
//! Never touches the disk itself, and never decides access: it only files what other rooms did.

use super::*;

impl Engine {
    /// The record `input` names, if that record is not in memory: a final record that left
    /// memory (a live one never does), or one that never existed. The shell reads it from the
    /// store and hands it to [`Engine::admit`] just before applying the input, so that every
    /// answer is what it would have been had the record stayed.
    pub fn record_to_load<'a>(&self, input: &'a Input) -> Option<&'a str> {
        let Input::Request { request, .. } = input else {
            return None;
        };
        let id = match request {
            Request::GetRecord(r)
            | Request::ChainedRecords(r)
            | Request::RecordReject(r)
            | Request::RecordCancel(r)
            | Request::CancelRecord(r)
            | Request::RecordInfo(r) => &r.record,
            Request::UpdateRecord(c) | Request::RecordProcessed(c) => &c.record,
            Request::DoNotCall(d) => &d.record,
            Request::Reschedule(r) => &r.record,
            Request::ReleaseRecord(r) => &r.record,
            Request::AttachRecord(a) => &a.record,
            _ => return None,
        };
        (!self.records.contains_key(id.as_str())).then_some(id.as_str())
    }

    /// Retention (`final_record_retention_ms`): the store's index says `id` became final at
    /// `at_ms`, long enough ago. If that is still so, the record is deleted (from memory too),
    /// and no longer counted; requests naming it later get `no_such_record`, as for a record never
    /// attached. If the record is live again (attached anew) or became final again later, only
    /// the stale index entry goes. `stored_final_ms` is the final time of the record as stored,
    /// read by the shell, for a record not in memory. The deletions go to the store with the next
    /// [`Engine::take_writes`].
    pub fn purge_final(&mut self, at_ms: u64, id: &str, stored_final_ms: Option<u64>) {
        let id = RecordId::from(id);
        let same = match self.records.get(&id) {
            Some(rec) => rec.final_.as_ref().and_then(|f| parse_rfc3339(&f.at)) == Some(at_ms),
            None => stored_final_ms == Some(at_ms),
        };
        if same {
            assert!(
                !self.dirty_records.contains(&id),
                "a record is never purged in the batch that changed it"
            );
            if let Some(rec) = self.records.remove(&id) {
                let filed = self
                    .final_queue
                    .remove(&(rec.resident_since_ms, id.clone()));
                assert!(filed, "a final record in memory is in the final queue");
            }
            self.finals -= 1;
        }
        self.purged.push((at_ms, id, same));
    }

    /// Puts back in memory a final record read from the store (see [`Engine::record_to_load`]).
    /// It stays `final_record_memory_ms` from now, like one that just became final.
    pub fn admit(&mut self, id: &str, stored: &[u8]) -> Result<(), String> {
        if self.records.contains_key(id) {
            return Ok(());
        }
        let mut rec: Record = decode(&format!("record {id}"), stored)?;
        if rec.final_.is_none() {
            return Err(format!(
                "record {id} is live in the store but not in memory; live records never leave memory"
            ));
        }
        rec.resident_since_ms = self.now_ms;
        let id = RecordId::from(id);
        self.final_queue.insert((self.now_ms, id.clone()));
        self.records.insert(id, rec);
        Ok(())
    }

    /// What changed since the last call, serialized for the store: records and agents to write
    /// (or delete) and the new audit entries. The shell commits this before sending any output.
    pub fn take_writes(&mut self) -> WriteBatch {
        let mut batch = WriteBatch::default();
        for id in std::mem::take(&mut self.dirty_records) {
            // Records are never deleted, and one with unwritten changes never leaves memory.
            let Some(rec) = self.records.get_mut(&id) else {
                panic!("record {id} changed but is not in memory");
            };
            // Only the state is written again; the body once, with the first change after the
            // attach (or after a start on a store that kept the record whole).
            if !rec.body_stored {
                batch.bodies.push((String::from(&id), rec.stored_body()));
                rec.body_stored = true;
            }
            let value = rec.stored_state();
            if let Some(at) = rec.final_.as_ref().and_then(|f| parse_rfc3339(&f.at)) {
                // Filed by the time it became final, for retention (written again if the record
                // is, which changes nothing).
                batch.finals_add.push((at, String::from(&id)));
            }
            batch.records.push((id.into(), Some(value)));
        }
        for (at, id, with_record) in std::mem::take(&mut self.purged) {
            if with_record {
                batch.records.push((String::from(&id), None));
            }
            batch.finals_remove.push((at, id.into()));
        }
        if !batch.records.is_empty() {
            batch.finals_total = Some(self.finals);
        }
        for id in std::mem::take(&mut self.dirty_agents) {
            let value = self.agents.get(&id).map(|a| {
                let state = AgentState {
                    dn: a.dn.clone(),
                    session: a.session.clone(),
                };
                encode(&state)
            });
            batch.agents.push((id.into(), value));
        }
        for entry in std::mem::take(&mut self.pending_audit) {
            let bytes = encode(&entry);
            batch.audit.push((entry.seq, bytes));
        }
        batch
    }

    /// Replaces records, agents and the audit position with what the store holds, at start
    /// (a refused batch is taken back with [`Engine::rollback`], never by reloading). Final
    /// records are only counted: they are read back when a request names one.
    /// Agents come back away (their desktops may resume within `resume_grace_ms` of `now_ms`).
    pub fn restore(&mut self, snapshot: Snapshot, now_ms: u64) -> Result<(), String> {
        self.now_ms = self.now_ms.max(now_ms);
        // Final records stay on disk: requests that name one read it back (`record_to_load`).
        let parsed: Vec<(String, Record)> = parse_records(snapshot.records)?;
        if let Some((id, _)) = parsed.iter().find(|(_, r)| r.final_.is_some()) {
            return Err(format!("record {id} was loaded as live but is final"));
        }
        let mut records = FastMap::with_capacity_and_hasher(parsed.len(), Default::default());
        records.extend(parsed.into_iter().map(|(id, r)| (RecordId::from(id), r)));
        let finals = snapshot.records_final;
        let mut agents = Vec::with_capacity(snapshot.agents.len());
        for (id, bytes) in snapshot.agents {
            let a: AgentState = decode(&format!("agent {id}"), &bytes)?;
            agents.push((AgentId::from(id), a));
        }
        self.records.replace_all(records);
        self.finals = finals;
        self.final_queue.clear();
        self.call_record.replace_all(FastMap::default());
        self.agent_records.clear();
        self.lost.replace_all(FastMap::default());
        self.lost_order.clear();
        self.orphan_deadlines.clear();
        for (id, rec) in self.records.iter() {
            if rec.final_.is_none() {
                self.call_record.insert(rec.call.clone(), id.clone());
                if let Some(t) = rec.orphaned_since_ms {
                    self.orphan_deadlines
                        .insert((t + self.cfg.orphan_timeout_ms, id.clone()));
                }
            }
            for (agent, access) in &rec.holders {
                if access.is_granted() {
                    self.agent_records.insert((agent.clone(), id.clone()));
                }
            }
        }
        let bound: HashMap<AgentId, ConnId> = self
            .conns
            .iter()
            .filter_map(|(c, s)| s.agent.clone().map(|a| (a, *c)))
            .collect();
        self.agents.replace_all(FastMap::default());
        self.dn_agent.replace_all(FastMap::default());
        self.monitored.clear();
        self.grace_deadlines.clear();
        for (id, a) in agents {
            let conn = bound.get(&id).copied();
            let away_since_ms = if conn.is_some() {
                None
            } else {
                Some(self.now_ms)
            };
            if conn.is_none() {
                self.grace_deadlines
                    .insert((self.now_ms + self.cfg.resume_grace_ms, id.clone()));
            }
            self.monitor_dn(&a.dn, &id);
            self.agents.insert(
                id,
                Agent {
                    dn: a.dn,
                    conn,
                    session: a.session,
                    away_since_ms,
                    logout_pending: false,
                },
            );
        }
        let unbound: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, s)| {
                s.agent
                    .as_ref()
                    .is_some_and(|a| !self.agents.contains_key(a))
            })
            .map(|(c, _)| *c)
            .collect();
        for conn in unbound {
            if let Some(state) = self.conns.get_mut(&conn) {
                state.agent = None;
            }
        }
        self.audit_seq = snapshot.audit_last_seq;
        self.dirty_records.clear();
        self.dirty_agents.clear();
        self.pending_audit.clear();
        Ok(())
    }

    /// Marks `record` to be written by the next [`Engine::take_writes`].
    pub(super) fn mark_dirty(&mut self, record: &RecordId) {
        if !self.dirty_records.contains(record) {
            self.dirty_records.insert(record.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::store::format::{Writer, VERSION_1};
    use crate::store::records::join_record;
    use crate::store::{MemoryStore, Store, Stored};

    const DIALER: ConnId = 9;
    const NOW: u64 = 1_764_000_000_000;

    fn dialer_engine() -> Engine {
        let mut engine = Engine::new(EngineConfig::from_config(&Config::default()), [5; 32], NOW);
        let mut out = Vec::new();
        engine.handle(
            NOW,
            Input::Connected {
                conn: DIALER,
                role: Role::Dialer,
            },
            &mut out,
        );
        engine
    }

    fn ask(engine: &mut Engine, request: Request) -> WriteBatch {
        let mut out = Vec::new();
        engine.begin();
        let input = Input::Request {
            conn: DIALER,
            r#ref: Some(1),
            request,
        };
        engine.handle(NOW, input, &mut out);
        let batch = engine.take_writes();
        engine.commit();
        batch
    }

    fn attach(record: &str, data: &str) -> Request {
        let mut fields = Object::new();
        fields.insert("notes".into(), data.into());
        Request::AttachRecord(AttachRecord {
            call: format!("C-{record}"),
            record: record.into(),
            campaign: "spring".into(),
            list: None,
            chain_id: None,
            chain_n: None,
            phone: Some("5550100".into()),
            data: fields,
            chain: Vec::new(),
        })
    }

    fn cancel(record: &str) -> Request {
        Request::CancelRecord(RecordRef {
            record: record.into(),
        })
    }

    fn contains(haystack: &[u8], needle: &str) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    /// The body (data, chain, call, phone) is written once, with the attach; a later change writes
    /// only the state. What the store hands back (state, then body) is the record.
    #[test]
    fn a_change_writes_the_state_and_the_body_is_written_once() {
        let data = "customer notes ".repeat(100);
        let mut engine = dialer_engine();
        let attached = ask(&mut engine, attach("R1", &data));
        assert_eq!(attached.bodies.len(), 1);
        assert!(contains(&attached.bodies[0].1, &data));
        let Some(state) = &attached.records[0].1 else {
            panic!("an attach writes the record's state");
        };
        assert!(!contains(state, "customer notes"));

        let cancelled = ask(&mut engine, cancel("R1"));
        assert!(cancelled.bodies.is_empty(), "the body is not written again");
        let Some(state) = &cancelled.records[0].1 else {
            panic!("a cancel writes the record's state");
        };
        assert!(state.len() < 100, "{} bytes of state", state.len());
        assert!(crate::store::records::stored_record_is_final(state).unwrap());

        let store = MemoryStore::new();
        store.commit(&attached, true).unwrap();
        store.commit(&cancelled, true).unwrap();
        let back = store.record("R1").unwrap().expect("the record is stored");
        let whole: Record = decode("record R1", &back).unwrap();
        assert_eq!(
            whole.data.get("notes").and_then(|v| v.as_str()),
            Some(data.as_str())
        );
        assert!(whole.final_.is_some());
        assert_eq!(
            back,
            join_record(state, &attached.bodies[0].1),
            "state then body"
        );
    }

    /// A record an older server wrote whole (no split flag, body fields after the final outcome)
    /// is read, and has its body written apart with its first change.
    #[test]
    fn a_record_written_whole_gets_its_body_apart_at_its_first_change() {
        let mut w = Writer::new();
        w.u8(VERSION_1);
        w.u8(0); // flags: live, whole
        w.str("C-R2");
        w.str("spring");
        w.varint(0);
        w.opt_str(Some("5550100"));
        let mut data = Object::new();
        data.insert("name".into(), "Ada".into());
        w.object(&data);
        w.varint(0); // chain
        w.opt_str(None); // call result
        w.object(&Object::new());
        w.varint(3); // version
        w.varint(0); // holders
        w.opt_varint(None);
        let whole = w.into_bytes();

        let mut engine = dialer_engine();
        engine
            .restore(
                Snapshot {
                    records: vec![("R2".into(), Stored::from(whole))],
                    ..Snapshot::default()
                },
                NOW,
            )
            .unwrap();
        let first = ask(&mut engine, cancel("R2"));
        assert_eq!(first.bodies.len(), 1, "the body goes apart");
        let Some(state) = &first.records[0].1 else {
            panic!("a cancel writes the record's state");
        };
        let back: Record = decode("record R2", &join_record(state, &first.bodies[0].1)).unwrap();
        assert_eq!((back.call.as_str(), back.version), ("C-R2", 3));
        assert!(back.final_.is_some(), "the cancel made it final");
        assert_eq!(back.data.get("name").and_then(|v| v.as_str()), Some("Ada"));
    }
}
