//! Crash safety in the manner of sled's own crash tests: run the real `baton` binary as a child
//! under concurrent record traffic, kill it with SIGKILL at a random moment, restart it on the same
//! data directory, and check that every acknowledged change is there, that no record has two final
//! outcomes, and that the audit log's sequence numbers have no gap.
//!
//! CI runs a few cycles; the long mode runs as many as asked:
//! `BATON_CRASH_CYCLES=200 cargo test --release --test crash -- --nocapture`.

use baton::client::Client;
use baton::messages::*;
use baton_kit::ledger::{verify_acknowledged, Acked, Ledger};
use baton_kit::*;
use rand::Rng;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const WORKERS: usize = 6;

/// How long a restart may take before the test gives up on it.
const SERVING: Duration = Duration::from_secs(20);

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
    log_in(&mut desk, &agent, &dn).await?;
    for i in 0.. {
        let record = format!("c{cycle}-w{k}-r{i}");
        let call = format!("call-{record}");
        let reply = dialer.request(attach(&call, &record)).await?;
        assert!(
            matches!(reply, ServerMsg::RecordAttached { .. }),
            "{reply:?}"
        );
        ledger
            .lock()
            .unwrap()
            .insert(record.clone(), Acked::default());
        for ev in [ringing(&call, &dn), established(&call, &dn)] {
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
            let reply = desk.request(update(&record, json!({"v": v}))).await?;
            assert_eq!(
                reply,
                ServerMsg::RecordUpdated {
                    record: record.clone(),
                    version: v
                }
            );
            ledger.lock().unwrap().get_mut(&record).unwrap().version = v;
        }
        let reply = desk.request(processed(&record, "done")).await?;
        assert_eq!(
            reply,
            ServerMsg::RecordProcessedAck {
                record: record.clone()
            }
        );
        ledger.lock().unwrap().get_mut(&record).unwrap().processed = true;
        assert_eq!(
            switch.request(released(&call, &dn, None)).await?,
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
    let entries = verify_acknowledged(&mut admin, ledger).await;
    (ledger.lock().unwrap().len(), entries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_minus_nine_loses_nothing_acknowledged() {
    let cycles: usize = std::env::var("BATON_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_baton"));
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let config = config_file(dir.path(), addr, "");
    let ledger: Ledger = Arc::default();
    let mut rng = rand::thread_rng();
    let mut total_acked_processed = 0;
    for cycle in 0..cycles {
        let mut child = ServerProcess::serve(exe, &config).expect("server starts");
        child.wait_serving(SERVING).await.unwrap();
        let (records, audit) = verify(addr, &ledger).await;
        let workers: Vec<_> = (0..WORKERS)
            .map(|k| tokio::spawn(worker(addr, cycle, k, ledger.clone())))
            .collect();
        let run_ms = rng.gen_range(200..1500);
        tokio::time::sleep(Duration::from_millis(run_ms)).await;
        child.kill();
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
    let mut child = ServerProcess::serve(exe, &config).expect("server starts");
    child.wait_serving(SERVING).await.unwrap();
    let (records, audit) = verify(addr, &ledger).await;
    child.kill();
    eprintln!("final: {records} records ({total_acked_processed} acked processed), {audit} audit entries, {cycles} kill -9 cycles");
    assert!(total_acked_processed > 0, "the traffic made progress");
}
