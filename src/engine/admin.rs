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
