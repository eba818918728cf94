//! Crash safety in the manner of sled's own crash tests: run the real `baton` binary as a child
//! under concurrent record traffic, kill it with SIGKILL at a random moment, restart it on the same
//! data directory, and check that every acknowledged change is there, that no record has two final
//! outcomes, and that the audit log's sequence numbers have no gap.
//!
//! CI runs a few cycles; the long mode runs as many as asked:
//! `BATON_CRASH_CYCLES=200 cargo test --release --test crash -- --nocapture`.

use baton::client::Client;
use baton::messages::*;
use rand::Rng;
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WORKERS: usize = 6;

/// What the server acknowledged for one record.
#[derive(Debug, Default, Clone)]
struct Acked {
    version: u64,
    processed: bool,
}

type Ledger = Arc<Mutex<HashMap<String, Acked>>>;

fn start(exe: &str, config: &Path) -> Child {
    Command::new(exe)
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("server starts")
}

async fn wait_ready(addr: SocketAddr) {
    for _ in 0..400 {
        if let Ok(mut c) = Client::connect(addr, Role::Admin, "admin-secret").await {
            if c.request(Request::Status).await.is_ok() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server did not become ready");
}

/// One desktop agent working records end to end until the server dies.
async fn worker(
    addr: SocketAddr,
    cycle: usize,
    k: usize,
    ledger: Ledger,
) -> Result<(), baton::client::ClientError> {
    let agent = format!("agent{k}");
    let dn = format!("80{k:02}");
    let mut desk = Client::connect(addr, Role::Desktop, "desk-secret").await?;
    let mut switch = Client::connect(addr, Role::Switch, "switch-secret").await?;
    let mut dialer = Client::connect(addr, Role::Dialer, "dialer-secret").await?;
    match desk
        .request(Request::Login(Login {
            agent: agent.clone(),
            dn: dn.clone(),
            password: None,
            resume: None,
        }))
        .await?
    {
        ServerMsg::LoggedIn { .. } => {}
        other => panic!("login: {other:?}"),
    }
    for i in 0.. {
        let record = format!("c{cycle}-w{k}-r{i}");
        let call = format!("call-{record}");
        let data = json!({"customer": record}).as_object().unwrap().clone();
        let reply = dialer
            .request(Request::AttachRecord(AttachRecord {
                call: call.clone(),
                record: record.clone(),
                campaign: "crash".into(),
                list: None,
                chain_id: None,
                chain_n: None,
                phone: None,
                data,
                chain: vec![],
            }))
            .await?;
        assert!(
            matches!(reply, ServerMsg::RecordAttached { .. }),
            "{reply:?}"
        );
        ledger
            .lock()
            .unwrap()
            .insert(record.clone(), Acked::default());
        for ev in [
            Request::Ringing(Ringing {
                call: call.clone(),
                dn: dn.clone(),
                ani: None,
                from_dn: None,
                consult_of: None,
            }),
            Request::Established(CallDn {
                call: call.clone(),
                dn: dn.clone(),
            }),
        ] {
            assert_eq!(switch.request(ev).await?, ServerMsg::Ack);
        }
        loop {
            if let ServerMsg::AccessChanged {
                record: r,
                access: Access::Full,
                ..
            } = desk.next_push().await?
            {
                if r == record {
                    break;
                }
            }
        }
        for v in 1..=2u64 {
            let reply = desk
                .request(Request::UpdateRecord(RecordChange {
                    record: record.clone(),
                    call_result: None,
                    fields: Some(json!({"v": v}).as_object().unwrap().clone()),
                }))
                .await?;
            assert_eq!(
                reply,
                ServerMsg::RecordUpdated {
                    record: record.clone(),
                    version: v
                }
            );
            ledger.lock().unwrap().get_mut(&record).unwrap().version = v;
        }
        let reply = desk
            .request(Request::RecordProcessed(RecordChange {
                record: record.clone(),
                call_result: Some("done".into()),
                fields: None,
            }))
            .await?;
        assert_eq!(
            reply,
            ServerMsg::RecordProcessedAck {
                record: record.clone()
            }
        );
        ledger.lock().unwrap().get_mut(&record).unwrap().processed = true;
        assert_eq!(
            switch
                .request(Request::Released(Released {
                    call,
                    dn: dn.clone(),
                    cause: None
                }))
                .await?,
            ServerMsg::Ack
        );
    }
    Ok(())
}

/// Checks every acknowledged change against the restarted server.
async fn verify(addr: SocketAddr, ledger: &Ledger) -> (usize, u64) {
    let mut admin = Client::connect(addr, Role::Admin, "admin-secret")
        .await
        .unwrap();
    let ledger = ledger.lock().unwrap().clone();
    for (record, acked) in &ledger {
        match admin
            .request(Request::RecordInfo(RecordRef {
                record: record.clone(),
            }))
            .await
            .unwrap()
        {
            ServerMsg::RecordReport {
                final_,
                version,
                context,
                ..
            } => {
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
                    let f =
                        final_.unwrap_or_else(|| panic!("{record}: acked RecordProcessed lost"));
                    assert_eq!(f.outcome, Outcome::Processed, "{record}");
                }
            }
            other => panic!("{record}: acked attach lost: {other:?}"),
        }
    }
    let all = admin
        .request_stream(Request::AuditTail(AuditTail {
            from_seq: Some(1),
            ..Default::default()
        }))
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
    (ledger.len(), expected - 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_minus_nine_loses_nothing_acknowledged() {
    let cycles: usize = std::env::var("BATON_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let exe = env!("CARGO_BIN_EXE_baton");
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = dir.path().join("baton.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{addr}\"\ndata_dir = \"{}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let ledger: Ledger = Arc::default();
    let mut rng = rand::thread_rng();
    let mut total_acked_processed = 0;
    for cycle in 0..cycles {
        let mut child = start(exe, &config);
        wait_ready(addr).await;
        let (records, audit) = verify(addr, &ledger).await;
        let workers: Vec<_> = (0..WORKERS)
            .map(|k| tokio::spawn(worker(addr, cycle, k, ledger.clone())))
            .collect();
        let run_ms = rng.gen_range(200..1500);
        tokio::time::sleep(Duration::from_millis(run_ms)).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        for w in workers {
            // Every worker ends with a connection error once the server is gone.
            assert!(w.await.unwrap().is_err());
        }
        total_acked_processed = ledger
            .lock()
            .unwrap()
            .values()
            .filter(|a| a.processed)
            .count();
        eprintln!("cycle {cycle}: verified {records} records and {audit} audit entries; killed after {run_ms} ms");
    }
    let mut child = start(exe, &config);
    wait_ready(addr).await;
    let (records, audit) = verify(addr, &ledger).await;
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!("final: {records} records ({total_acked_processed} acked processed), {audit} audit entries, {cycles} kill -9 cycles");
    assert!(total_acked_processed > 0, "the traffic made progress");
}
