//! What a server acknowledged, kept by tests that kill it (the crash test, the cluster tests), and
//! the check that every acknowledged change survived.

use baton::client::Client;
use baton::messages::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What the server acknowledged for one record: its last acked version (the updates write
/// `{"v": version}`) and whether a `RecordProcessed` was acked.
#[derive(Debug, Default, Clone)]
pub struct Acked {
    pub version: u64,
    pub processed: bool,
}

/// Acknowledged changes by record, shared by the workers of a test.
pub type Ledger = Arc<Mutex<HashMap<String, Acked>>>;

/// Checks every acknowledged change through `admin`: each attach, update and final is there, no
/// record has two final outcomes, every acked final is audited, and the audit log runs from 1
/// with no gap and no repeat. Returns the number of audit entries.
pub async fn verify_acknowledged(admin: &mut Client, ledger: &Ledger) -> u64 {
    let ledger = ledger.lock().unwrap().clone();
    for (record, acked) in &ledger {
        let reply = admin
            .request(Request::RecordInfo(RecordRef {
                record: record.clone(),
            }))
            .await
            .unwrap();
        let ServerMsg::RecordReport {
            final_,
            version,
            context,
            ..
        } = reply
        else {
            panic!("{record}: acked attach lost: {reply:?}");
        };
        let version = version.unwrap();
        assert!(
            version >= acked.version,
            "{record}: acked version {} but found {version}",
            acked.version
        );
        if acked.version > 0 {
            let v = context.unwrap().fields["v"].as_u64().unwrap_or(0);
            assert!(
                v >= acked.version,
                "{record}: acked update v={} lost (found {v})",
                acked.version
            );
        }
        if acked.processed {
            let f = final_.unwrap_or_else(|| panic!("{record}: acked RecordProcessed lost"));
            assert_eq!(f.outcome, Outcome::Processed, "{record}");
        }
    }
    let all = admin
        .request_stream(crate::audit_tail(Some(1), false))
        .await
        .unwrap();
    let mut expected = 1;
    let mut finals: HashMap<String, usize> = HashMap::new();
    for m in &all {
        match m {
            ServerMsg::Audit(e) => {
                assert_eq!(e.seq, expected, "audit seq has a gap or repeat");
                expected += 1;
                if e.kind == AuditKind::Finalized {
                    *finals.entry(e.record.clone().unwrap()).or_default() += 1;
                }
            }
            ServerMsg::AuditEnd { last_seq } => assert_eq!(*last_seq, expected - 1),
            other => panic!("{other:?}"),
        }
    }
    for (record, n) in &finals {
        assert_eq!(*n, 1, "{record} has {n} final outcomes");
    }
    for (record, acked) in &ledger {
        if acked.processed {
            assert_eq!(
                finals.get(record),
                Some(&1),
                "{record}: acked final not audited"
            );
        }
    }
    expected - 1
}
