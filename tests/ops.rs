//! What an operator gets from a running server: the `Agents` and `Calls` listings, `/metrics`
//! (checked by Prometheus's own `promtool`), `/healthz` and `/readyz`, the plain message a second
//! server gets on a data directory in use, and logs fit for a file or journald.

use baton::client::Client;
use baton::messages::*;
use baton::store::{MemoryStore, Store};
use baton_kit::centre::{DN_A, DN_B};
use baton_kit::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

fn agents_page(after: Option<&str>, limit: Option<u32>) -> Request {
    Request::Agents(Page {
        after: after.map(str::to_owned),
        limit,
    })
}

fn calls_page() -> Request {
    Request::Calls(Page::default())
}

async fn agents(
    admin: &mut Client,
    after: Option<&str>,
    limit: Option<u32>,
) -> (Vec<AgentInfo>, bool) {
    match admin.request(agents_page(after, limit)).await.unwrap() {
        ServerMsg::AgentsReport { agents, more } => (agents, more),
        other => panic!("Agents: {other:?}"),
    }
}

async fn calls(admin: &mut Client) -> Vec<CallInfo> {
    match admin.request(calls_page()).await.unwrap() {
        ServerMsg::CallsReport { calls, more } => {
            assert!(!more, "a handful of calls fit in one page");
            calls
        }
        other => panic!("Calls: {other:?}"),
    }
}

fn held(record: &str, access: Access) -> HeldRecord {
    HeldRecord {
        record: record.into(),
        access,
    }
}

fn party(dn: &str, state: &str, agent: &str) -> PartyInfo {
    PartyInfo {
        dn: dn.into(),
        state: state.into(),
        agent: Some(agent.into()),
    }
}

#[tokio::test]
async fn agents_and_calls_list_who_is_where_and_holds_what() {
    let mut t = Centre::with(|c| c.resume_grace_ms = 60_000).await;
    t.call_on_a("C1", "R1").await;
    t.consult_b("C1", "C2", "R1", true).await;

    let (list, more) = agents(&mut t.admin, None, None).await;
    assert!(!more);
    let by_agent: BTreeMap<&str, &AgentInfo> = list.iter().map(|a| (a.agent.as_str(), a)).collect();
    assert_eq!(
        by_agent.keys().copied().collect::<Vec<_>>(),
        ["A", "B", "C"]
    );
    assert_eq!(by_agent["A"].dn, DN_A);
    assert_eq!(by_agent["A"].state, Presence::LoggedIn);
    assert_eq!(by_agent["A"].grace_left_ms, None);
    assert_eq!(by_agent["A"].records, [held("R1", Access::Full)]);
    assert_eq!(by_agent["B"].records, [held("R1", Access::ReadOnly)]);
    assert_eq!(by_agent["C"].records, []);
    assert!(list.iter().all(|a| !a.logout_pending));

    let live = calls(&mut t.admin).await;
    assert_eq!(
        live,
        [
            CallInfo {
                call: "C1".into(),
                parties: vec![party(DN_A, "established", "A")],
                record: Some("R1".into()),
                consult_of: None,
            },
            CallInfo {
                call: "C2".into(),
                parties: vec![
                    party(DN_A, "established", "A"),
                    party(DN_B, "established", "B")
                ],
                record: None,
                consult_of: Some("C1".into()),
            },
        ]
    );

    // Pages: sorted by agent id, `after` exclusive, `more` while some follow.
    let (first, more) = agents(&mut t.admin, None, Some(1)).await;
    assert_eq!((first.len(), first[0].agent.as_str(), more), (1, "A", true));
    let (rest, more) = agents(&mut t.admin, Some("A"), Some(2)).await;
    let ids: Vec<&str> = rest.iter().map(|a| a.agent.as_str()).collect();
    assert_eq!((ids, more), (vec!["B", "C"], false));
    for limit in [0, 1001] {
        let refused = t
            .admin
            .request(agents_page(None, Some(limit)))
            .await
            .unwrap();
        assert!(expect_error(&refused, ErrorCode::BadRequest).contains("limit"));
    }

    // A logout asked while holding R1 waits for R1: listed as pending.
    match t.a.request(logout(false)).await.unwrap() {
        ServerMsg::LogoutPending { .. } => {}
        other => panic!("Logout while holding: {other:?}"),
    }
    let (list, _) = agents(&mut t.admin, None, None).await;
    assert!(list.iter().find(|a| a.agent == "A").unwrap().logout_pending);

    // B's desktop drops: B is away, with the grace it has left.
    hang_up(&mut t.b).await;
    let away = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (list, _) = agents(&mut t.admin, None, None).await;
            let b = list
                .into_iter()
                .find(|a| a.agent == "B")
                .expect("B still listed");
            if b.state == Presence::Away {
                return b;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("B listed as away");
    let left = away.grace_left_ms.expect("an away agent has grace left");
    assert!(
        left > 50_000 && left <= 60_000,
        "grace left {left} ms of 60000"
    );
    assert_eq!(
        away.records,
        [held("R1", Access::ReadOnly)],
        "an away agent keeps its records"
    );
}

#[tokio::test]
async fn a_read_only_admin_may_list() {
    let server = TestServer::start_with(|c| c.tokens.admin_read = Some("reader".into())).await;
    let mut reader = server.connect_as(Role::Admin, "reader").await.unwrap();
    let (list, more) = agents(&mut reader, None, None).await;
    assert!(list.is_empty() && !more);
    assert!(calls(&mut reader).await.is_empty());
}

/// The samples of a Prometheus text exposition: `name{labels}` -> value.
fn samples(exposition: &str) -> BTreeMap<String, f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("sample line {l}"));
            (
                series.to_owned(),
                value.parse().unwrap_or_else(|_| panic!("value in {l}")),
            )
        })
        .collect()
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| {
        panic!(
            "no series {series} among {:#?}",
            samples.keys().collect::<Vec<_>>()
        )
    })
}

/// Runs Prometheus's `promtool check metrics` on an exposition (installing Debian's `prometheus`
/// package, which carries it, when it is missing); returns what it said.
fn promtool_check(exposition: &str) -> String {
    let present = Command::new("promtool").arg("--version").output().is_ok();
    if !present {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/install-promtool");
        let status = Command::new("bash")
            .arg(script)
            .status()
            .expect("install script runs");
        assert!(status.success(), "{script} failed");
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed: {said}"
    );
    said
}

#[tokio::test]
async fn metrics_count_what_happened_and_pass_promtool() {
    let mut t = Centre::new().await;
    t.call_on_a("C1", "R1").await;
    let answer =
        t.a.request(update("R1", serde_json::json!({"plan": "gold"})))
            .await
            .unwrap();
    assert!(
        matches!(answer, ServerMsg::RecordUpdated { .. }),
        "{answer:?}"
    );
    // B never held R1: refused, and counted with its code.
    let refused = t.b.request(record_req("GetRecord", "R1")).await.unwrap();
    expect_error(&refused, ErrorCode::AccessDenied);
    // Two requests without `ref`, back to back: each is counted by its own answer.
    for record in ["X1", "X2"] {
        let body = format!(r#"{{"type":"GetRecord","record":"{record}"}}"#);
        t.c.send_bytes(body.into()).await.unwrap();
    }
    for _ in 0..2 {
        let refused = t.c.next_push().await.unwrap();
        expect_error(&refused, ErrorCode::NoSuchRecord);
    }
    // A Hello with a wrong token is counted too (someone guessing the dialer's secret).
    let guess = baton::client::Client::connect(t.server.addr, Role::Dialer, "guess").await;
    assert!(guess.is_err());
    let answer = t.a.request(processed("R1", "sale")).await.unwrap();
    assert!(
        matches!(answer, ServerMsg::RecordProcessedAck { .. }),
        "{answer:?}"
    );
    let http = t.server.http_addr.expect("an HTTP listener");

    // The audit gauge reads what is on disk: wait until the refusal's entry is flushed.
    let status_seq = match t.admin.request(Request::Status).await.unwrap() {
        ServerMsg::StatusReport { audit_last_seq, .. } => audit_last_seq,
        other => panic!("{other:?}"),
    };
    let reply = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let reply = http_get(http, "/metrics", &[]).await;
            if value(&samples(&reply.body), "baton_audit_last_seq") as u64 >= status_seq {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the audit entries reach the disk");
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    promtool_check(&reply.body);
    let s = samples(&reply.body);
    let desktops = match desktop_transport() {
        baton::client::Transport::Tcp => "tcp",
        baton::client::Transport::WebSocket => "websocket",
    };
    for (series, expected) in [
        (
            format!(r#"baton_connections{{role="desktop",transport="{desktops}"}}"#),
            3.0,
        ),
        (
            r#"baton_connections{role="switch",transport="tcp"}"#.to_owned(),
            1.0,
        ),
        (
            r#"baton_connections{role="dialer",transport="tcp"}"#.to_owned(),
            1.0,
        ),
        (
            r#"baton_connections{role="admin",transport="tcp"}"#.to_owned(),
            1.0,
        ),
        (r#"baton_agents{state="logged_in"}"#.to_owned(), 3.0),
        (r#"baton_agents{state="away"}"#.to_owned(), 0.0),
        ("baton_dns_monitored".to_owned(), 3.0),
        (r#"baton_records{state="live"}"#.to_owned(), 0.0),
        (r#"baton_records{state="final"}"#.to_owned(), 1.0),
        ("baton_calls".to_owned(), 1.0),
        (
            r#"baton_requests_total{type="AttachRecord",result="ok"}"#.to_owned(),
            1.0,
        ),
        (
            r#"baton_requests_total{type="UpdateRecord",result="ok"}"#.to_owned(),
            1.0,
        ),
        (
            r#"baton_requests_total{type="RecordProcessed",result="ok"}"#.to_owned(),
            1.0,
        ),
        (
            r#"baton_requests_total{type="GetRecord",result="access_denied"}"#.to_owned(),
            1.0,
        ),
        (
            r#"baton_requests_total{type="Login",result="ok"}"#.to_owned(),
            3.0,
        ),
        (
            r#"baton_requests_total{type="Status",result="ok"}"#.to_owned(),
            1.0,
        ),
        (
            r#"baton_access_changes_total{access="full",cause="established"}"#.to_owned(),
            1.0,
        ),
        (
            r#"baton_access_changes_total{access="revoked",cause="processed"}"#.to_owned(),
            1.0,
        ),
        (
            r#"baton_login_failures_total{cause="bad_credential"}"#.to_owned(),
            0.0,
        ),
        ("baton_outbound_queue_drops_total".to_owned(), 0.0),
        ("baton_audit_last_seq".to_owned(), status_seq as f64),
        ("baton_audit_tails".to_owned(), 0.0),
        (
            r#"baton_requests_total{type="GetRecord",result="no_such_record"}"#.to_owned(),
            2.0,
        ),
        (
            r#"baton_requests_total{type="Hello",result="ok"}"#.to_owned(),
            6.0,
        ),
        (
            r#"baton_requests_total{type="Hello",result="auth_failed"}"#.to_owned(),
            1.0,
        ),
        (
            r#"baton_connections{role="handshake",transport="tcp"}"#.to_owned(),
            0.0,
        ),
        (
            r#"baton_connections{role="dialer",transport="websocket"}"#.to_owned(),
            0.0,
        ),
    ] {
        assert_eq!(value(&s, &series), expected, "{series}");
    }
    assert!(
        !s.contains_key(r#"baton_requests_total{type="GetRecord",result="ok"}"#),
        "no GetRecord succeeded"
    );
    // Every durable commit is timed, and the sled store's flushes with it.
    assert!(value(&s, "baton_commit_duration_seconds_count") >= 3.0);
    assert!(value(&s, "baton_store_flush_duration_seconds_count") >= 3.0);
    assert!(value(&s, "baton_commit_batch_requests_sum") >= 3.0);
    assert_eq!(
        value(&s, "baton_commit_duration_seconds_count"),
        value(&s, r#"baton_commit_duration_seconds_bucket{le="+Inf"}"#)
    );
    // No record, agent, DN or call id ever becomes a label value.
    for id in ["R1", "C1", "\"A\"", "\"B\"", DN_A, DN_B] {
        assert!(!reply.body.contains(id), "{id} appears in /metrics");
    }

    // OpenMetrics for a scraper that asks for it.
    let open = http_get(
        http,
        "/metrics",
        &[("Accept", "application/openmetrics-text; version=1.0.0")],
    )
    .await;
    assert_eq!(open.status, 200);
    assert!(open
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert!(open.body.ends_with("# EOF\n"), "{}", open.body);
    assert!(open
        .body
        .contains("# UNIT baton_commit_duration_seconds seconds"));
}

#[tokio::test]
async fn an_audit_tail_that_follows_is_counted_with_its_lag() {
    let t = Centre::new().await;
    let http = t.server.http_addr.unwrap();
    let mut follower = t.server.connect(Role::Admin).await;
    follower
        .send(&audit_tail(Some(1), true))
        .await
        .expect("AuditTail sent");
    let counted = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let s = samples(&http_get(http, "/metrics", &[]).await.body);
            if value(&s, "baton_audit_tails") == 1.0
                && value(&s, "baton_audit_tail_lag_entries") == 0.0
            {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a following tail that caught up is counted");
    assert_eq!(
        value(
            &counted,
            r#"baton_requests_total{type="AuditTail",result="ok"}"#
        ),
        1.0
    );
    hang_up(&mut follower).await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while value(
            &samples(&http_get(http, "/metrics", &[]).await.body),
            "baton_audit_tails",
        ) != 0.0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a tail whose connection closed is no longer counted");
}

#[tokio::test]
async fn refused_logins_are_counted_by_cause() {
    use baton::auth::directory::{hash_password, AgentEntry, Directory};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agents.toml");
    let mut agents = Directory::default();
    agents.agents.insert(
        "1042".into(),
        AgentEntry {
            password: hash_password("right horse battery"),
            dns: vec!["7042".into()],
            disabled: false,
        },
    );
    agents.save(&file).unwrap();
    let server = TestServer::start_with(|c| {
        c.auth.agents = baton::config::AgentAuth::Directory;
        c.auth.directory = file;
    })
    .await;
    let mut desk = server.connect_as(Role::Desktop, "").await.unwrap();
    let wrong = desk
        .request(login_password("1042", "7042", "wrong"))
        .await
        .unwrap();
    expect_error(&wrong, ErrorCode::AuthFailed);
    let elsewhere = desk
        .request(login_password("1042", "7999", "right horse battery"))
        .await
        .unwrap();
    expect_error(&elsewhere, ErrorCode::DnNotAllowed);
    let http = server.http_addr.unwrap();
    let s = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let s = samples(&http_get(http, "/metrics", &[]).await.body);
            if value(&s, r#"baton_login_failures_total{cause="dn_not_allowed"}"#) == 1.0 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the refusals are counted");
    assert_eq!(
        value(&s, r#"baton_login_failures_total{cause="bad_credential"}"#),
        1.0
    );
    assert_eq!(
        value(
            &s,
            r#"baton_requests_total{type="Login",result="auth_failed"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            r#"baton_requests_total{type="Login",result="dn_not_allowed"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn healthz_and_readyz_tell_a_load_balancer_whether_to_send_work() {
    let store = Arc::new(MemoryStore::new());
    let server = TestServer::start_with_store(store.clone() as Arc<dyn Store>).await;
    let http = server.http_addr.unwrap();
    let health = http_get(http, "/healthz", &[]).await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let ready = http_get(http, "/readyz", &[]).await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));

    // The disk refuses a write: not ready (agents would only get `unavailable`), still alive.
    let mut desk = server.connect(Role::Desktop).await;
    store.set_failing(true);
    let refused = desk.request(login("1001", "7001", None)).await.unwrap();
    expect_error(&refused, ErrorCode::Unavailable);
    let ready = http_get(http, "/readyz", &[]).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("store refused"), "{}", ready.body);
    assert_eq!(http_get(http, "/healthz", &[]).await.status, 200);
    let s = samples(&http_get(http, "/metrics", &[]).await.body);
    assert_eq!(value(&s, "baton_commit_failures_total"), 1.0);
    assert!(
        value(&s, "baton_store_flush_duration_seconds_count") == 0.0,
        "a memory store has no disk to flush"
    );
    assert_eq!(
        value(
            &s,
            r#"baton_requests_total{type="Login",result="unavailable"}"#
        ),
        1.0
    );

    // The disk works again: ready again without waiting for a client to write (the server
    // probes a failing store with a flush every second).
    store.set_failing(false);
    let back = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let ready = http_get(http, "/readyz", &[]).await;
            if ready.status == 200 {
                return ready;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("ready again once the store works");
    assert_eq!(back.body, "ready\n");
    let answer = desk.request(login("1001", "7001", None)).await.unwrap();
    assert!(matches!(answer, ServerMsg::LoggedIn { .. }), "{answer:?}");
    let ready = http_get(http, "/readyz", &[]).await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
}

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_baton")
}

#[tokio::test]
async fn a_second_server_on_a_data_directory_in_use_says_who_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let first_config = config_file(dir.path(), free_addr(), "http_listen = \"\"\n");
    let mut first = ServerProcess::serve(exe().as_ref(), &first_config).unwrap();
    first.wait_serving(Duration::from_secs(30)).await.unwrap();

    // Same data directory (config_file puts it beside the config), other ports.
    let second_dir = dir.path().join("second");
    std::fs::create_dir_all(&second_dir).unwrap();
    let data_dir = dir.path().join("data");
    let second_config = second_dir.join("config.toml");
    std::fs::write(
        &second_config,
        format!(
            "listen = \"{}\"\nhttp_listen = \"\"\ndata_dir = \"{}\"\n",
            free_addr(),
            data_dir.display()
        ),
    )
    .unwrap();
    let out = Command::new(exe())
        .args(["serve", "--config"])
        .arg(&second_config)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the second server must not start: {said}"
    );
    let lock = data_dir.join("db");
    assert!(
        said.contains("another Baton process holds this data directory"),
        "{said}"
    );
    assert!(said.contains(&format!("pid {}", first.pid())), "{said}");
    assert!(said.contains(&lock.display().to_string()), "{said}");
    assert!(!said.contains("Caused by"), "said once, not twice: {said}");
    first.stop();
}

#[tokio::test]
async fn logs_off_a_terminal_have_no_colour_and_json_logs_carry_the_same_fields() {
    for json in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_addr();
        let extra = "http_listen = \"\"\n[tokens]\nadmin_read = \"reader\"\n";
        let config = config_file(dir.path(), addr, extra);
        let mut command = Command::new(exe());
        if json {
            command.args(["--log-format", "json"]);
        }
        command.arg("serve").arg("--config").arg(&config);
        let admin = baton::config::Config::load_or_default(&config)
            .unwrap()
            .tokens
            .admin;
        let mut server = ServerProcess::spawn(command, addr, &admin).unwrap();
        server.wait_serving(Duration::from_secs(30)).await.unwrap();
        // A read-only admin asks for a release: refused, and logged on its connection's span.
        let mut reader = baton::client::Client::connect(addr, Role::Admin, "reader")
            .await
            .unwrap();
        let refused = reader.request(release("R1", "test")).await.unwrap();
        expect_error(&refused, ErrorCode::AccessDenied);
        server.stop();
        let log = server.log();
        assert!(
            !log.contains('\u{1b}'),
            "escape codes in a log that is not a terminal:\n{log}"
        );
        let line = log
            .lines()
            .find(|l| l.contains("refused ReleaseRecord"))
            .unwrap_or_else(|| panic!("no line for the refused release:\n{log}"));
        if json {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
            let span = &v["span"];
            assert_eq!(span["role"], "admin", "{line}");
            assert!(
                span["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
                "{line}"
            );
            assert_eq!(span["transport"], "tcp", "{line}");
            assert_eq!(v["fields"]["record"], "R1", "{line}");
            assert_eq!(v["level"], "INFO", "{line}");
            for l in log.lines() {
                serde_json::from_str::<serde_json::Value>(l)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            }
        } else {
            assert!(
                line.contains("role=\"admin\"") && line.contains("peer=127.0.0.1:"),
                "{line}"
            );
            assert!(
                line.contains("transport=\"tcp\"") && line.contains("record=\"R1\""),
                "{line}"
            );
        }
    }
}
