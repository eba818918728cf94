//! The administrator's requests: what the engine knows about one record, and releasing a record
//! an agent holds. Never changes access except by making the record final.

use super::*;

impl Engine {
    pub(super) fn record_info(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        r: RecordRef,
    ) {
        let Some(rec) = self.records.get(r.record.as_str()) else {
            Self::send(
                out,
                conn,
                r#ref,
                ServerMsg::error(ErrorCode::NoSuchRecord, format!("no record {}", r.record)),
            );
            return;
        };
        let state = if rec.final_.is_some() {
            RecordState::Final
        } else if rec.has_live_holder() {
            RecordState::Held
        } else if rec.orphaned_since_ms.is_some() {
            RecordState::Orphaned
        } else {
            RecordState::Waiting
        };
        let holders = rec
            .holders
            .iter()
            .map(|(agent, access)| Holder {
                agent: agent.into(),
                access: *access,
            })
            .collect();
        Self::send(
            out,
            conn,
            r#ref,
            ServerMsg::RecordReport {
                record: r.record,
                state: state.as_str().to_owned(),
                holders,
                call: Some(String::from(&rec.call)),
                final_: rec.final_.clone(),
                version: Some(rec.version),
                context: Some(rec.context.clone()),
            },
        );
    }

    pub(super) fn release_record(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        r: ReleaseRecord,
    ) {
        let record = RecordId::from(r.record);
        if !self.is_live_or_refused(out, conn, r#ref, &record) {
            return;
        }
        let extra = FinalExtra {
            request: Some(format!("ReleaseRecord: {}", r.reason)),
            ..FinalExtra::default()
        };
        self.finalize(out, &record, Outcome::Returned, FinalBy::Admin, extra);
        Self::send(
            out,
            conn,
            r#ref,
            ServerMsg::RecordReleased {
                record: record.into(),
            },
        );
    }
}

/// The ids of `ids` after `after`, smallest first, at most `limit`; and whether more follow.
/// Walks the ids once and sorts only the page: the maps are hashed, and a listing runs on the
/// engine's thread while every other request waits.
fn page_of<'a, T: Ord + ?Sized + 'a>(
    ids: impl Iterator<Item = &'a T>,
    after: Option<&T>,
    limit: usize,
) -> (Vec<&'a T>, bool) {
    let mut ids: Vec<&T> = ids.filter(|id| after.is_none_or(|a| *id > a)).collect();
    let more = ids.len() > limit;
    if more {
        ids.select_nth_unstable(limit);
        ids.truncate(limit);
    }
    ids.sort_unstable();
    (ids, more)
}

impl Engine {
    /// `limit` of a listing request; a limit out of range is refused with `bad_request` here
    /// and gives `None`.
    fn page_limit(
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        page: &Page,
    ) -> Option<usize> {
        match page.limit {
            None => Some(Page::DEFAULT_LIMIT as usize),
            Some(n) if (1..=Page::MAX_LIMIT).contains(&n) => Some(n as usize),
            Some(n) => {
                let why = format!("field `limit` must be 1 to {}, not {n}", Page::MAX_LIMIT);
                Self::send(
                    out,
                    conn,
                    r#ref,
                    ServerMsg::error(ErrorCode::BadRequest, why),
                );
                None
            }
        }
    }

    pub(super) fn list_agents(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        page: Page,
    ) {
        let Some(limit) = Self::page_limit(out, conn, r#ref, &page) else {
            return;
        };
        let (ids, more) = page_of(
            self.agents.keys().map(|a| a.as_str()),
            page.after.as_deref(),
            limit,
        );
        let agents = ids
            .into_iter()
            .filter_map(|id| {
                let (agent_id, a) = self.agents.get_key_value(id)?;
                let records = self
                    .held_by(agent_id)
                    .filter_map(|r| {
                        let access = self.records.get(r)?.holders.get(agent_id)?;
                        Some(HeldRecord {
                            record: r.into(),
                            access: *access,
                        })
                    })
                    .collect();
                Some(AgentInfo {
                    agent: id.to_owned(),
                    dn: (&a.dn).into(),
                    state: match a.away_since_ms {
                        Some(_) => Presence::Away,
                        None => Presence::LoggedIn,
                    },
                    grace_left_ms: a.away_since_ms.map(|since| {
                        (since + self.cfg.resume_grace_ms).saturating_sub(self.now_ms)
                    }),
                    logout_pending: a.logout_pending,
                    records,
                })
            })
            .collect();
        Self::send(out, conn, r#ref, ServerMsg::AgentsReport { agents, more });
    }

    pub(super) fn list_calls(
        &mut self,
        out: &mut Vec<Output>,
        conn: ConnId,
        r#ref: Option<u64>,
        page: Page,
    ) {
        let Some(limit) = Self::page_limit(out, conn, r#ref, &page) else {
            return;
        };
        let (ids, more) = page_of(
            self.calls.keys().map(|c| c.as_str()),
            page.after.as_deref(),
            limit,
        );
        let calls = ids
            .into_iter()
            .filter_map(|id| {
                let c = self.calls.get(id)?;
                let parties = c
                    .parties
                    .0
                    .iter()
                    .map(|(dn, state)| PartyInfo {
                        dn: dn.into(),
                        state: match state {
                            PartyState::Alerting => "alerting",
                            PartyState::Dialing => "dialing",
                            PartyState::Established => "established",
                        }
                        .to_owned(),
                        agent: self.dn_agent.get(dn).map(String::from),
                    })
                    .collect();
                Some(CallInfo {
                    call: id.to_owned(),
                    parties,
                    record: self.call_record.get(id).map(String::from),
                    consult_of: c.consult_of.as_ref().map(String::from),
                })
            })
            .collect();
        Self::send(out, conn, r#ref, ServerMsg::CallsReport { calls, more });
    }
}
