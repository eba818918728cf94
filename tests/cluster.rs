//! Cluster mode through real processes: three etcd members on loopback (Debian's etcd-server,
//! installed by `.ci/install-cluster-deps`) and two Baton nodes run as `baton serve`, killed with
//! SIGKILL, paused with SIGSTOP, and their etcd members killed, while clients work through the
//! node list as a desktop would.
//!
//! Built only with the `cluster` feature: `cargo test --release --features cluster --test cluster`
//! (what `.ci/run` runs).
#![cfg(feature = "cluster")]

use baton::client::{Client, ClientError};
use baton::messages::*;
use baton_kit::etcd::EtcdCluster;
use baton_kit::ledger::{verify_acknowledged, Acked, Ledger};
use baton_kit::*;
use rand::Rng;
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LEASE_MS: u64 = 3000;
/// How long a client keeps trying the node list (a takeover takes about the lease).
const PATIENCE: Duration = Duration::from_secs(30);

struct Node {
    process: Option<ServerProcess>,
    config: PathBuf,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start(&mut self) {
        let exe = std::path::Path::new(env!("CARGO_BIN_EXE_baton"));
        self.process = Some(ServerProcess::serve(exe, &self.config).expect("baton starts"));
    }

    fn process(&self) -> &ServerProcess {
        self.process.as_ref().expect("the node runs")
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }
}

struct Cluster {
    etcd: EtcdCluster,
    nodes: Vec<Node>,
}

impl Cluster {
    async fn start(nodes: usize) -> Cluster {
        Cluster::start_with(nodes, "", "").await
    }

    /// As [`Cluster::start`], with `top` among each node's top-level keys and `extra` in its
    /// `[cluster]` section.
    async fn start_with(nodes: usize, top: &str, extra: &str) -> Cluster {
        let etcd = EtcdCluster::start(3).await;
        let mut list = Vec::new();
        for i in 0..nodes {
            let dir = tempfile::tempdir().unwrap();
            let addr = free_addr();
            let extra = format!(
                "{top}[cluster]\netcd = {}\nnode_id = \"node{i}\"\nadvertise = \"{addr}\"\nlease_ms = {LEASE_MS}\n{extra}",
                etcd.toml_endpoints()
            );
            let config = config_file(dir.path(), addr, &extra);
            list.push(Node {
                process: None,
                config,
                addr,
                _dir: dir,
            });
        }
        let mut cluster = Cluster { etcd, nodes: list };
        for node in &mut cluster.nodes {
            node.start();
        }
        cluster
    }

    fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.to_string()).collect()
    }

    /// Connects to the active node through the node list.
    async fn connect(&self, role: Role) -> Client {
        connect(&self.addrs(), role).await
    }

    /// The index of the node that answers as active (waiting for one).
    async fn active(&self) -> usize {
        let (_, addr) =
            Client::connect_active(&self.addrs(), None, Role::Admin, "admin-secret", PATIENCE)
                .await
                .unwrap_or_else(|e| panic!("no node became active: {e}\n{}", self.logs()));
        self.nodes.iter().position(|n| n.addr == addr).unwrap()
    }

    /// Waits until node `standby` answers `Hello` with `not_active` naming node `active`.
    async fn wait_standby(&self, standby: usize, active: usize, what: &str) {
        let want = self.nodes[active].addr.to_string();
        let started = Instant::now();
        loop {
            match Client::connect(self.nodes[standby].addr, Role::Admin, "admin-secret").await {
                Err(ClientError::NotActive {
                    active: Some(a), ..
                }) if a == want => return,
                got => {
                    assert!(
                        started.elapsed() < PATIENCE,
                        "{what}: {:?}\n{}",
                        got.map(|_| ()),
                        self.logs()
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "--- node{i} ---\n{}",
                    n.process.as_ref().map(|p| p.log()).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `baton cluster status --json` as the operator runs it.
    fn status(&self) -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["cluster", "status", "--json", "--config"])
            .arg(&self.nodes[0].config)
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

async fn connect(addrs: &[String], role: Role) -> Client {
    let token = match role {
        Role::Desktop => "desk-secret",
        Role::Dialer => "dialer-secret",
        Role::Switch => "switch-secret",
        Role::Admin => "admin-secret",
    };
    let (client, _) = Client::connect_active(addrs, None, role, token, PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the active node as {role:?}: {e}"));
    client
}

/// One agent working records end to end; a record whose step is refused (`unavailable` while
/// etcd elects a leader) is left as it was acknowledged so far. Ends at the first connection
/// error, or when `stop` is set.
async fn worker(
    addrs: Vec<String>,
    tag: String,
    k: usize,
    ledger: Ledger,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<usize, ClientError> {
    let agent = format!("{tag}-agent{k}");
    let dn = format!("8{k:03}");
    let mut desk = connect(&addrs, Role::Desktop).await;
    let mut switch = connect(&addrs, Role::Switch).await;
    let mut dialer = connect(&addrs, Role::Dialer).await;
    log_in(&mut desk, &agent, &dn).await?;
    let mut done = 0;
    for i in 0.. {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let record = format!("{tag}-w{k}-r{i}");
        let call = format!("call-{record}");
        if !matches!(
            dialer.request(attach(&call, &record)).await?,
            ServerMsg::RecordAttached { .. }
        ) {
            continue;
        }
        ledger
            .lock()
            .unwrap()
            .insert(record.clone(), Acked::default());
        let mut answered = true;
        for ev in [ringing(&call, &dn), established(&call, &dn)] {
            answered &= switch.request(ev).await? == ServerMsg::Ack;
        }
        if !answered {
            continue;
        }
        let granted = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let ServerMsg::AccessChanged {
                    record: r,
                    access: Access::Full,
                    ..
                } = desk.next_push().await?
                {
                    if r == record {
                        return Ok::<_, ClientError>(());
                    }
                }
            }
        })
        .await;
        match granted {
            Ok(r) => r?,
            Err(_) => continue,
        }
        for v in 1..=2u64 {
            if desk.request(update(&record, json!({"v": v}))).await?
                == (ServerMsg::RecordUpdated {
                    record: record.clone(),
                    version: v,
                })
            {
                ledger.lock().unwrap().get_mut(&record).unwrap().version = v;
            }
        }
        if desk.request(processed(&record, "done")).await?
            == (ServerMsg::RecordProcessedAck {
                record: record.clone(),
            })
        {
            ledger.lock().unwrap().get_mut(&record).unwrap().processed = true;
            done += 1;
        }
        let _ = switch.request(released(&call, &dn, None)).await?;
    }
    Ok(done)
}

/// Checks every acknowledged change on the active node (see [`verify_acknowledged`]); returns
/// the number of audit entries.
async fn verify(addrs: &[String], ledger: &Ledger) -> u64 {
    let mut admin = connect(addrs, Role::Admin).await;
    verify_acknowledged(&mut admin, ledger).await
}

/// A desktop holding a record on a live call: returns the desktop and its resume token.
async fn holding(addrs: &[String], agent: &str, dn: &str, record: &str) -> (Client, String) {
    let mut desk = connect(addrs, Role::Desktop).await;
    let token = log_in(&mut desk, agent, dn).await.unwrap();
    let mut dialer = connect(addrs, Role::Dialer).await;
    let mut switch = connect(addrs, Role::Switch).await;
    let call = format!("call-{record}");
    assert!(matches!(
        dialer.request(attach(&call, record)).await.unwrap(),
        ServerMsg::RecordAttached { .. }
    ));
    for ev in [ringing(&call, dn), established(&call, dn)] {
        assert_eq!(switch.request(ev).await.unwrap(), ServerMsg::Ack);
    }
    wait_full(&mut desk, record).await;
    (desk, token)
}

async fn wait_full(desk: &mut Client, record: &str) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let ServerMsg::AccessChanged {
                record: r,
                access: Access::Full,
                ..
            } = desk.next_push().await.unwrap()
            {
                if r == record {
                    return;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no full access to {record}"));
}

/// Reconnects a desktop through the node list and resumes its session with `token`; returns it
/// once the replay has given back `record` with full access.
async fn resume(addrs: &[String], agent: &str, dn: &str, token: &str, record: &str) -> Client {
    let mut desk = connect(addrs, Role::Desktop).await;
    match desk.request(login(agent, dn, Some(token))).await.unwrap() {
        ServerMsg::LoggedIn { resumed: true, .. } => {}
        other => panic!("{agent} did not resume: {other:?}"),
    }
    wait_full(&mut desk, record).await;
    desk
}

/// Test 1: kill -9 of the active node under durable load.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_minus_nine_of_the_active_node_loses_nothing_acknowledged() {
    let mut cluster = Cluster::start(2).await;
    let addrs = cluster.addrs();
    let first = cluster.active().await;
    let (_held, token) = holding(&addrs, "resumer", "9000", "held-1").await;
    let ledger: Ledger = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|k| {
            tokio::spawn(worker(
                addrs.clone(),
                "k".into(),
                k,
                ledger.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let run_ms = rand::thread_rng().gen_range(800..2000);
    tokio::time::sleep(Duration::from_millis(run_ms)).await;
    cluster.nodes[first].kill();
    let killed = Instant::now();
    for w in workers {
        assert!(
            w.await.unwrap().is_err(),
            "every worker loses its connection"
        );
    }
    // The standby takes over: the first acknowledged request on it.
    let mut admin = cluster.connect(Role::Admin).await;
    assert!(matches!(
        admin.request(Request::Status).await.unwrap(),
        ServerMsg::StatusReport { .. }
    ));
    let takeover = killed.elapsed();
    let second = cluster.active().await;
    assert_ne!(second, first);
    eprintln!("takeover after kill -9: {takeover:?} (lease {LEASE_MS} ms)");
    assert!(
        takeover
            < Duration::from_millis(LEASE_MS) + Duration::from_secs(2) + Duration::from_secs(3),
        "the standby took {takeover:?} to take over\n{}",
        cluster.logs()
    );
    // The desktop resumes with its token and gets its record back.
    let _desk = resume(&addrs, "resumer", "9000", &token, "held-1").await;
    let acked = ledger
        .lock()
        .unwrap()
        .values()
        .filter(|a| a.processed)
        .count();
    assert!(acked > 0, "the load made progress before the kill");
    let entries = verify(&addrs, &ledger).await;
    eprintln!(
        "verified {} records ({acked} processed) and {entries} audit entries",
        ledger.lock().unwrap().len()
    );
    // The killed node comes back as a standby that sends clients to the active one.
    cluster.nodes[first].start();
    cluster
        .wait_standby(first, second, "the restarted node")
        .await;
    // `baton cluster status` shows both nodes, the active one, and both copies caught up.
    let started = Instant::now();
    loop {
        let s = cluster.status();
        let caught_up = s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["caught_up"] == true)
            .count();
        if s["active"]["node"] == format!("node{second}") && caught_up == 2 {
            assert_eq!(s["members"].as_array().unwrap().len(), 3);
            assert!(s["head_revision"].as_i64().unwrap() > 0);
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "status never showed both nodes caught up: {s}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Test 2: a paused active node wakes up after losing its lease and acknowledges nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_active_node_acknowledges_nothing_after_its_lease_ended() {
    let mut cluster = Cluster::start(2).await;
    let addrs = cluster.addrs();
    let first = cluster.active().await;
    let other = 1 - first;
    let (mut desk, _token) = holding(&addrs, "paused", "9100", "held-2").await;
    cluster.nodes[first].process().signal("-STOP");
    // The other node takes over once the paused node's lease has ended.
    let other_addr = vec![cluster.nodes[other].addr.to_string()];
    let mut admin = connect(&other_addr, Role::Admin).await;
    // While paused, the desktop asks for a change on the old node; it is read only on waking.
    let r = desk.send(&processed("held-2", "done")).await.unwrap();
    cluster.nodes[first].process().signal("-CONT");
    desk.set_timeout(Duration::from_secs(20));
    match desk.reply_to(r).await {
        Ok(ServerMsg::Error {
            code: ErrorCode::Unavailable,
            ..
        })
        | Err(_) => {}
        other => panic!(
            "the node that lost its lease answered {other:?}\n{}",
            cluster.logs()
        ),
    }
    // Nothing of it reached the cluster.
    match admin
        .request(Request::RecordInfo(RecordRef {
            record: "held-2".into(),
        }))
        .await
        .unwrap()
    {
        ServerMsg::RecordReport { final_, state, .. } => {
            assert!(
                final_.is_none(),
                "a change nobody acknowledged was applied: {state:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The old node stepped down and is a standby that names the active node.
    cluster.wait_standby(first, other, "the woken node").await;
    let log = cluster.nodes[first].process().log();
    assert!(
        log.contains("STEPPING DOWN") || log.contains("lease"),
        "{log}"
    );
    drop(admin);
    cluster.nodes[first].kill();
}

/// Test 3: kill -9 of etcd's raft leader under load: decisions stall briefly, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_etcd_leader_under_load_loses_nothing() {
    let mut cluster = Cluster::start(2).await;
    let addrs = cluster.addrs();
    cluster.active().await;
    let ledger: Ledger = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|k| {
            tokio::spawn(worker(
                addrs.clone(),
                "e".into(),
                k,
                ledger.clone(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let leader = cluster.etcd.leader().await.expect("etcd has a leader");
    let before = ledger
        .lock()
        .unwrap()
        .values()
        .filter(|a| a.processed)
        .count();
    cluster.etcd.kill(leader);
    tokio::time::sleep(Duration::from_millis(4000)).await;
    let during = ledger
        .lock()
        .unwrap()
        .values()
        .filter(|a| a.processed)
        .count();
    cluster.etcd.restart(leader);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        let _ = w.await.unwrap();
    }
    let after = ledger
        .lock()
        .unwrap()
        .values()
        .filter(|a| a.processed)
        .count();
    eprintln!(
        "processed: {before} before the etcd leader died, {during} 4 s later, {after} in all"
    );
    assert!(
        during > before,
        "decisions went on after etcd elected a new leader\n{}",
        cluster.logs()
    );
    verify(&addrs, &ledger).await;
}

/// Test 4: two desktops race for one conference record while the active node is killed: at most
/// one acknowledgement, and it is the record's only final outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conference_race_across_a_takeover_has_one_winner() {
    let rounds: usize = std::env::var("BATON_CLUSTER_RACES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mut cluster = Cluster::start(2).await;
    let addrs = cluster.addrs();
    let mut rng = rand::thread_rng();
    let mut acks_seen = 0;
    for round in 0..rounds {
        let active = cluster.active().await;
        let record = format!("race-{round}");
        let call = format!("call-{record}");
        let (a, b) = (format!("ra{round}"), format!("rb{round}"));
        let (dn_a, dn_b) = (format!("92{round:02}1"), format!("92{round:02}2"));
        let (mut desk_a, _) = holding(&addrs, &a, &dn_a, &record).await;
        let mut desk_b = connect(&addrs, Role::Desktop).await;
        log_in(&mut desk_b, &b, &dn_b).await.unwrap();
        let mut switch = connect(&addrs, Role::Switch).await;
        assert_eq!(
            switch
                .request(conferenced(&call, &dn_b, None))
                .await
                .unwrap(),
            ServerMsg::Ack
        );
        wait_full(&mut desk_b, &record).await;
        let ra = desk_a.send(&processed(&record, "a")).await.unwrap();
        let rb = desk_b.send(&processed(&record, "b")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..15))).await;
        cluster.nodes[active].kill();
        let killed = Instant::now();
        let mut winners = Vec::new();
        for (who, desk, r) in [(&a, &mut desk_a, ra), (&b, &mut desk_b, rb)] {
            if let Ok(ServerMsg::RecordProcessedAck { .. }) = desk.reply_to(r).await {
                winners.push(who.clone());
            }
        }
        assert!(
            winners.len() <= 1,
            "round {round}: two acknowledgements {winners:?}"
        );
        acks_seen += winners.len();
        let mut admin = cluster.connect(Role::Admin).await;
        eprintln!(
            "round {round}: a new active node answered {:?} after the kill",
            killed.elapsed()
        );
        let report = admin
            .request(Request::RecordInfo(RecordRef {
                record: record.clone(),
            }))
            .await
            .unwrap();
        let ServerMsg::RecordReport { final_, .. } = report else {
            panic!("{report:?}")
        };
        if let Some(w) = winners.first() {
            let f =
                final_.unwrap_or_else(|| panic!("round {round}: the acknowledged final was lost"));
            assert_eq!(
                f.by.as_deref(),
                Some(w.as_str()),
                "round {round}: the final is not the acknowledged one"
            );
        }
        let entries = admin
            .request_stream(audit_tail(Some(1), false))
            .await
            .unwrap();
        let finals = entries
            .iter()
            .filter(|m| matches!(m, ServerMsg::Audit(e) if e.kind == AuditKind::Finalized && e.record.as_deref() == Some(record.as_str())))
            .count();
        assert!(finals <= 1, "round {round}: {finals} final outcomes");
        cluster.nodes[active].start();
    }
    eprintln!("{rounds} races across a takeover, {acks_seen} acknowledged before the kill");
}

/// Test 5: without an etcd quorum no change is acknowledged (a refusal after a timeout may still
/// land later, as PROTOCOL.md section 20 says); the
/// cluster serves again by itself once the quorum is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_etcd_quorum_refuses_every_change_and_recovers() {
    let mut cluster = Cluster::start(2).await;
    let addrs = cluster.addrs();
    cluster.active().await;
    let (mut desk, token) = holding(&addrs, "quorum", "9300", "held-5").await;
    assert!(matches!(
        desk.request(update("held-5", json!({"v": 1})))
            .await
            .unwrap(),
        ServerMsg::RecordUpdated { version: 1, .. }
    ));
    cluster.etcd.kill(1);
    cluster.etcd.kill(2);
    // Changes now: refused with `unavailable` while the session lasts (the node steps down once
    // its lease cannot be renewed, and closes it), never acknowledged.
    let mut refused = 0;
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(6) {
        match desk
            .request(update("held-5", json!({"v": 100 + refused})))
            .await
        {
            Ok(ServerMsg::Error {
                code: ErrorCode::Unavailable,
                ..
            }) => refused += 1,
            Ok(other) => panic!("a change without an etcd quorum was answered {other:?}"),
            Err(_) => break,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(refused > 0, "no change was tried during the outage");
    eprintln!("{refused} changes refused with `unavailable` during the outage");
    cluster.etcd.restart(1);
    cluster.etcd.restart(2);
    // Back by itself: the desktop resumes (trying again while etcd elects its leader and a node
    // takes the election) and its next change is acknowledged as the second version.
    let started = Instant::now();
    loop {
        let mut desk = connect(&addrs, Role::Desktop).await;
        match desk.request(login("quorum", "9300", Some(&token))).await {
            Ok(ServerMsg::LoggedIn { resumed: true, .. }) => {
                wait_full(&mut desk, "held-5").await;
                match desk
                    .request(update("held-5", json!({"v": 9})))
                    .await
                    .unwrap()
                {
                    ServerMsg::RecordUpdated { version, .. } => {
                        // An update refused because etcd did not confirm it in time may still
                        // have landed once the quorum came back (it was never acknowledged).
                        assert!(
                            (2..=2 + refused as u64).contains(&version),
                            "version {version} after one acknowledged and {refused} refused updates"
                        );
                        break;
                    }
                    ServerMsg::Error {
                        code: ErrorCode::Unavailable,
                        ..
                    } => {}
                    other => panic!("{other:?}"),
                }
            }
            Ok(ServerMsg::Error {
                code: ErrorCode::Unavailable,
                ..
            })
            | Err(_) => {}
            Ok(other) => panic!("resuming after the outage: {other:?}\n{}", cluster.logs()),
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the cluster did not recover\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "recovered {:?} after the quorum came back",
        started.elapsed()
    );
}

/// A batch too big for one etcd transaction (here 150 sessions whose resume grace ends in the same
/// tick, with `max_txn_ops` at etcd's default of 128) is committed whole and folded: every session
/// ends, the standby has it all when it takes over, and the audit log stays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_too_big_for_one_transaction_is_committed_whole() {
    const AGENTS: usize = 150;
    let mut cluster =
        Cluster::start_with(2, "resume_grace_ms = 2000\n", "max_txn_ops = 128\n").await;
    let addrs = cluster.addrs();
    let first = cluster.active().await;
    let mut desks = Vec::new();
    for k in 0..AGENTS {
        let mut desk = connect(&addrs, Role::Desktop).await;
        log_in(&mut desk, &format!("bulk{k}"), &format!("6{k:03}"))
            .await
            .unwrap();
        desks.push(desk);
    }
    // Every desktop goes at once; their sessions end together 2 s later.
    drop(desks);
    let mut admin = connect(&addrs, Role::Admin).await;
    let started = Instant::now();
    loop {
        let ServerMsg::StatusReport { agents, .. } = admin.request(Request::Status).await.unwrap()
        else {
            panic!("no status");
        };
        if agents == 0 {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{agents} sessions never ended\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        cluster.nodes[first]
            .process()
            .log()
            .contains("committed whole and folded"),
        "no batch needed folding\n{}",
        cluster.logs()
    );
    let ledger: Ledger = Arc::default();
    let before = verify(&addrs, &ledger).await;
    // The standby takes over with every session ended and every entry of the audit log.
    cluster.nodes[first].kill();
    let mut admin = cluster.connect(Role::Admin).await;
    let ServerMsg::StatusReport { agents, .. } = admin.request(Request::Status).await.unwrap()
    else {
        panic!("no status");
    };
    assert_eq!(agents, 0, "sessions ended before the takeover are back");
    let after = verify(&addrs, &ledger).await;
    assert_eq!(after, before, "the audit log changed across the takeover");
    let logouts = admin
        .request_stream(audit_tail(Some(1), false))
        .await
        .unwrap()
        .iter()
        .filter(|m| matches!(m, ServerMsg::Audit(e) if e.kind == AuditKind::Logout))
        .count();
    assert_eq!(logouts, AGENTS);
}
