//! `baton fill` writes a store the server starts on: every record in the state the fill reports,
//! the audit log continuing from where the fill left it.

use baton::client::Client;
use baton::config::Config;
use baton::messages::*;
use baton_tools::fill::{fill, FillOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filled_store_restarts_with_its_records_holders_and_audit_position() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("store");
    let summary = fill(&FillOptions {
        data_dir: data_dir.clone(),
        records: 1000,
        audit: 12_000,
        agents: 10,
        progress: false,
    })
    .unwrap();
    let m = summary.manifest;
    assert_eq!(m.records_final + m.records_held + m.records_waiting, 1000);
    assert!(m.records_held > 0 && m.records_waiting > 0);
    assert_eq!(m.audit_last_seq, 12_000);

    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir,
        ..Config::default()
    };
    let token = config.tokens.admin.clone();
    let server = baton::server::start(config).await.unwrap();
    let mut admin = Client::connect(server.local_addr(), Role::Admin, &token)
        .await
        .unwrap();
    match admin.request(Request::Status).await.unwrap() {
        ServerMsg::StatusReport {
            records_live,
            records_final,
            audit_last_seq,
            agents,
            ..
        } => {
            assert_eq!(records_final, m.records_final);
            assert_eq!(records_live, m.records_held + m.records_waiting);
            assert_eq!(audit_last_seq, m.audit_last_seq);
            assert_eq!(agents, 10);
        }
        other => panic!("Status answered {other:?}"),
    }
    let (held, holder) = m.held_record.clone().unwrap();
    match admin
        .request(Request::RecordInfo(RecordRef { record: held }))
        .await
        .unwrap()
    {
        ServerMsg::RecordReport { state, holders, .. } => {
            assert_eq!(state, "held");
            assert!(holders
                .iter()
                .any(|h| h.agent == holder && h.access == Access::Full));
        }
        other => panic!("RecordInfo answered {other:?}"),
    }
    match admin
        .request(Request::RecordInfo(RecordRef {
            record: m.final_record.clone().unwrap(),
        }))
        .await
        .unwrap()
    {
        ServerMsg::RecordReport { state, final_, .. } => {
            assert_eq!(state, "final");
            assert!(final_.is_some());
        }
        other => panic!("RecordInfo answered {other:?}"),
    }
    server.shutdown().await;
}
