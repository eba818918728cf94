//! Agent identity (CONTRACT section 10) through real sockets: `directory` mode with its agents
//! file, `jwt` mode with a JWKS, the throttling of failed logins and its audit entries, resume
//! tokens that resume only their own agent, and the read-only admin token.

use baton::auth::directory::{hash_password, AgentEntry, Directory};
use baton::client::Client;
use baton::config::{AgentAuth, Config};
use baton::messages::*;
use baton_kit::identity::{now_s, Idp};
use baton_kit::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

const PW_1042: &str = "tall-blue-heron-1042";
const PW_1043: &str = "quiet-red-finch-1043";

fn agent(password: &str, dns: &[&str], disabled: bool) -> AgentEntry {
    AgentEntry {
        password: hash_password(password),
        dns: dns.iter().map(|d| d.to_string()).collect(),
        disabled,
    }
}

/// 1042 may use DN 7001 only; 1043 any DN; 1044 is disabled.
fn write_agents(path: &Path) {
    let mut dir = Directory::default();
    dir.agents
        .insert("1042".into(), agent(PW_1042, &["7001"], false));
    dir.agents.insert("1043".into(), agent(PW_1043, &[], false));
    dir.agents
        .insert("1044".into(), agent("disabled-agent-pw", &[], true));
    dir.save(path).unwrap();
}

async fn directory_server(tmp: &Path, adjust: impl FnOnce(&mut Config)) -> TestServer {
    let file = tmp.join("agents.toml");
    write_agents(&file);
    TestServer::start_with(|c| {
        c.auth.agents = AgentAuth::Directory;
        c.auth.directory = file;
        adjust(c);
    })
    .await
}

/// A desktop connection: in directory and jwt modes its `Hello` carries no token at all.
async fn desk(server: &TestServer) -> Client {
    server.connect_as(Role::Desktop, "").await.unwrap()
}

fn refusal(msg: &ServerMsg) -> (ErrorCode, String, Option<u64>) {
    match msg {
        ServerMsg::Error {
            code,
            message,
            retry_after_ms,
            ..
        } => (*code, message.clone(), *retry_after_ms),
        other => panic!("expected an Error, got {other:?}"),
    }
}

async fn send_login(c: &mut Client, request: Request) -> ServerMsg {
    c.request(request).await.unwrap()
}

async fn failed_logins(admin: &mut Client) -> Vec<(String, String, String)> {
    whole_audit_log(admin)
        .await
        .into_iter()
        .filter(|e| e.kind == AuditKind::LoginFailed)
        .map(|e| {
            (
                e.agent.unwrap_or_default(),
                e.dn.unwrap_or_default(),
                e.cause.unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn directory_mode_accepts_the_right_password_and_refuses_the_rest_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let server = directory_server(tmp.path(), |_| {}).await;
    let mut c = desk(&server).await;

    // Every wrong credential gets the same answer, and the connection stays open.
    let wrong = [
        login_password("1042", "7001", "tall-blue-heron-1043"), // wrong password
        login_password("9999", "7001", PW_1042),                // unknown agent
        login_password("1044", "7001", "disabled-agent-pw"),    // disabled agent
        login("1042", "7001", None),                            // no credential
        login_jwt("1042", "7001", "a.b.c"),                     // a token in directory mode
    ];
    let mut answers = Vec::new();
    for request in wrong {
        let (code, message, retry) = refusal(&send_login(&mut c, request).await);
        assert_eq!(code, ErrorCode::AuthFailed);
        assert_eq!(retry, None);
        answers.push(message);
    }
    answers.dedup();
    assert_eq!(answers.len(), 1, "the answers differ: {answers:?}");
    assert!(!answers[0].contains("1042") && !answers[0].contains("password"));
    assert_eq!(c.request(Request::Ping).await.unwrap(), ServerMsg::Pong);

    // The right password on a DN the agent may not use.
    let (code, _, _) = refusal(&send_login(&mut c, login_password("1042", "7002", PW_1042)).await);
    assert_eq!(code, ErrorCode::DnNotAllowed);

    // And on its own DN.
    match send_login(&mut c, login_password("1042", "7001", PW_1042)).await {
        ServerMsg::LoggedIn {
            agent,
            dn,
            resumed: false,
            ..
        } => assert_eq!((agent.as_str(), dn.as_str()), ("1042", "7001")),
        other => panic!("expected LoggedIn, got {other:?}"),
    }
    // An agent with no DN list may use any DN.
    let mut c2 = desk(&server).await;
    assert!(matches!(
        send_login(&mut c2, login_password("1043", "7999", PW_1043)).await,
        ServerMsg::LoggedIn { .. }
    ));

    let mut admin = server.connect(Role::Admin).await;
    let failed = failed_logins(&mut admin).await;
    let causes: Vec<(&str, &str)> = failed
        .iter()
        .map(|(a, _, c)| (a.as_str(), c.as_str()))
        .collect();
    assert_eq!(
        causes,
        [
            ("1042", "bad_credential"),
            ("9999", "bad_credential"),
            ("1044", "bad_credential"),
            ("1042", "bad_credential"),
            ("1042", "bad_credential"),
            ("1042", "dn_not_allowed"),
        ]
    );
    assert_eq!(failed[5].1, "7002");
}

#[tokio::test]
async fn a_resume_token_resumes_only_the_agent_it_was_issued_to() {
    let tmp = tempfile::tempdir().unwrap();
    let server = directory_server(tmp.path(), |_| {}).await;
    let mut a = desk(&server).await;
    let token_a = log_in_with_password(&mut a, "1042", "7001", PW_1042)
        .await
        .unwrap();
    let mut b = desk(&server).await;
    let token_b = log_in_with_password(&mut b, "1043", "7002", PW_1043)
        .await
        .unwrap();
    drop(a);
    drop(b);

    // A token alone (a browser reload keeps no password) resumes its own agent.
    let mut again = desk(&server).await;
    match send_login(&mut again, login("1042", "7001", Some(&token_a))).await {
        ServerMsg::LoggedIn { resumed: true, .. } => {}
        other => panic!("expected a resumed LoggedIn, got {other:?}"),
    }
    // Another agent's token, a made-up one, or the right one on another DN: refused.
    for request in [
        login("1043", "7002", Some(&token_a)),
        login("1043", "7002", Some("0123456789abcdef0123456789abcdef")),
        login("1043", "7003", Some(&token_b)),
    ] {
        let mut c = desk(&server).await;
        let (code, _, _) = refusal(&send_login(&mut c, request).await);
        assert_eq!(code, ErrorCode::AuthFailed);
    }
    // The right token still works after those attempts.
    let mut c = desk(&server).await;
    assert!(matches!(
        send_login(&mut c, login("1043", "7002", Some(&token_b))).await,
        ServerMsg::LoggedIn { resumed: true, .. }
    ));
}

#[tokio::test]
async fn failed_logins_are_throttled_per_agent_and_per_peer_and_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let server = directory_server(tmp.path(), |c| {
        c.auth.max_failed_logins_per_peer = 8;
    })
    .await;
    let mut c = desk(&server).await;
    for _ in 0..5 {
        let (code, _, retry) =
            refusal(&send_login(&mut c, login_password("1042", "7001", "guess-guess")).await);
        assert_eq!((code, retry), (ErrorCode::AuthFailed, None));
    }
    // The sixth try is refused unchecked, even with the right password, and says how long.
    let (code, _, retry) =
        refusal(&send_login(&mut c, login_password("1042", "7001", PW_1042)).await);
    assert_eq!(code, ErrorCode::AuthFailed);
    let retry = retry.expect("retry_after_ms while throttled");
    assert!(retry > 0 && retry <= 60_000, "retry_after_ms = {retry}");

    // Another agent from the same address is not throttled by 1042's failures...
    let mut other = desk(&server).await;
    assert!(matches!(
        send_login(&mut other, login_password("1043", "7002", PW_1043)).await,
        ServerMsg::LoggedIn { .. }
    ));
    // ...until the address itself reaches its bound (8 failures, whatever the agent ids).
    for i in 0..3 {
        let agent = format!("guess-{i}");
        let (_, _, retry) =
            refusal(&send_login(&mut c, login_password(&agent, "7100", "guess-guess")).await);
        assert_eq!(retry, None);
    }
    let (code, _, retry) =
        refusal(&send_login(&mut c, login_password("1043", "7002", PW_1043)).await);
    assert_eq!(code, ErrorCode::AuthFailed);
    assert!(retry.is_some());

    let mut admin = server.connect(Role::Admin).await;
    let failed = failed_logins(&mut admin).await;
    let causes: Vec<&str> = failed.iter().map(|(_, _, c)| c.as_str()).collect();
    assert_eq!(
        causes,
        [
            "bad_credential",
            "bad_credential",
            "bad_credential",
            "bad_credential",
            "bad_credential",
            "throttled",
            "bad_credential",
            "bad_credential",
            "bad_credential",
            "throttled",
        ]
    );
    assert_eq!(failed[5].0, "1042");
    assert_eq!(failed[9].0, "1043");
}

#[tokio::test]
async fn the_agents_file_is_reloaded_on_request_and_when_it_changes() {
    let tmp = tempfile::tempdir().unwrap();
    // The test retries a login until the change is seen: no throttling in its way.
    let server = directory_server(tmp.path(), |c| {
        c.auth.max_failed_logins_per_agent = 1000;
    })
    .await;
    let file = tmp.path().join("agents.toml");
    let add = |id: &str, pw: &str| {
        let mut dir = Directory::load(&file).unwrap();
        dir.agents.insert(id.into(), agent(pw, &[], false));
        dir.save(&file).unwrap();
    };

    let mut c = desk(&server).await;
    let (code, _, _) =
        refusal(&send_login(&mut c, login_password("2001", "7201", "new-agent-2001")).await);
    assert_eq!(code, ErrorCode::AuthFailed);

    // As on SIGHUP.
    add("2001", "new-agent-2001");
    server.reload().unwrap();
    assert!(matches!(
        send_login(&mut c, login_password("2001", "7201", "new-agent-2001")).await,
        ServerMsg::LoggedIn { .. }
    ));

    // Without a signal: the server notices the file changed.
    add("2002", "new-agent-2002");
    let mut logged_in = false;
    for _ in 0..50 {
        let mut d = desk(&server).await;
        if let ServerMsg::LoggedIn { .. } =
            send_login(&mut d, login_password("2002", "7202", "new-agent-2002")).await
        {
            logged_in = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(logged_in, "the changed agents file was not picked up");

    // A broken file is refused and the agents loaded before stay.
    std::fs::write(&file, "[agents.x]\npassword = \"not a hash\"\n").unwrap();
    assert!(server.reload().unwrap_err().contains("agents file"));
    let mut e = desk(&server).await;
    assert!(matches!(
        send_login(&mut e, login_password("1043", "7300", PW_1043)).await,
        ServerMsg::LoggedIn { .. }
    ));
}

struct JwtCentre {
    server: TestServer,
    idp: Idp,
    jwks: PathBuf,
    _tmp: tempfile::TempDir,
}

async fn jwt_server(adjust: impl FnOnce(&mut Config) + Send + 'static) -> JwtCentre {
    let tmp = tempfile::tempdir().unwrap();
    let idp = Idp::new("https://idp.example/realms/centre", "baton");
    let jwks = tmp.path().join("jwks.json");
    idp.write_jwks(&jwks, &["es-1", "ed-1"]);
    let (issuer, audience, keys) = (idp.issuer.clone(), idp.audience.clone(), jwks.clone());
    let server = TestServer::start_with(move |c| {
        c.auth.agents = AgentAuth::Jwt;
        c.auth.jwt_keys = keys;
        c.auth.jwt_issuer = Some(issuer);
        c.auth.jwt_audience = Some(audience);
        adjust(c);
    })
    .await;
    JwtCentre {
        server,
        idp,
        jwks,
        _tmp: tmp,
    }
}

/// `header.payload.signature` with the payload replaced.
fn tampered(token: &str, claims: &serde_json::Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let parts: Vec<&str> = token.split('.').collect();
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

#[tokio::test]
async fn jwt_mode_accepts_a_valid_token_and_refuses_every_bad_one_alike() {
    // Eleven bad tokens for one agent: no throttling in the way of the last ones.
    let JwtCentre {
        server, idp, _tmp, ..
    } = jwt_server(|c| c.auth.max_failed_logins_per_agent = 1000).await;
    let mut c = desk(&server).await;

    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut claims = idp.claims("1042");
        f(&mut claims);
        idp.sign("es-1", &claims)
    };
    let other_idp = Idp::new(&idp.issuer, &idp.audience);
    let mut rich = idp.claims("1042");
    rich["sub"] = json!("1043");
    let bad = [
        with(&|c| c["iss"] = json!("https://evil.example/")),
        with(&|c| c["aud"] = json!("another-app")),
        with(&|c| c["exp"] = json!(now_s() - 120)), // expired beyond the 30 s leeway
        with(&|c| c["nbf"] = json!(now_s() + 120)), // not valid yet
        with(&|c| {
            c.as_object_mut().unwrap().remove("exp");
        }),
        with(&|c| c["sub"] = json!("1043")), // another agent's token
        other_idp.token("1042"),             // same kid, a key the server does not have
        tampered(&idp.token("1042"), &rich),
        // HS256 "signed" with a made-up secret under a kid the server has.
        "eyJhbGciOiJIUzI1NiIsImtpZCI6ImVzLTEifQ.eyJzdWIiOiIxMDQyIn0.c2lnbmF0dXJl".to_owned(),
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxMDQyIn0.".to_owned(), // alg none
        "not a token".to_owned(),
    ];
    let mut answers = Vec::new();
    for (i, token) in bad.iter().enumerate() {
        let mut c = desk(&server).await;
        let (code, message, _) =
            refusal(&send_login(&mut c, login_jwt("1042", "7001", token)).await);
        assert_eq!(code, ErrorCode::AuthFailed, "bad token {i} was accepted");
        answers.push(message);
    }
    answers.dedup();
    assert_eq!(answers.len(), 1, "the answers differ: {answers:?}");

    // Within the leeway, ES256 and EdDSA alike.
    let late = with(&|c| c["exp"] = json!(now_s() - 5));
    for token in [idp.token("1042"), late] {
        match send_login(&mut c, login_jwt("1042", "7001", &token)).await {
            ServerMsg::LoggedIn { agent, .. } => assert_eq!(agent, "1042"),
            other => panic!("expected LoggedIn, got {other:?}"),
        }
        c.request(logout(true)).await.unwrap();
    }
    let mut d = desk(&server).await;
    let ed = idp.sign("ed-1", &idp.claims("1043"));
    assert!(matches!(
        send_login(&mut d, login_jwt("1043", "7002", &ed)).await,
        ServerMsg::LoggedIn { .. }
    ));
}

#[tokio::test]
async fn jwt_keys_are_reloaded_for_a_key_rotation() {
    let JwtCentre {
        server,
        mut idp,
        jwks,
        _tmp,
    } = jwt_server(|_| {}).await;
    idp.add_es256("es-2");
    let rotated = idp.sign("es-2", &idp.claims("1042"));
    let mut c = desk(&server).await;
    let (code, _, _) = refusal(&send_login(&mut c, login_jwt("1042", "7001", &rotated)).await);
    assert_eq!(code, ErrorCode::AuthFailed);

    // The provider publishes its new key and drops the old one.
    idp.write_jwks(&jwks, &["es-2"]);
    server.reload().unwrap();
    assert!(matches!(
        send_login(&mut c, login_jwt("1042", "7001", &rotated)).await,
        ServerMsg::LoggedIn { .. }
    ));
    let mut d = desk(&server).await;
    let old = idp.sign("es-1", &idp.claims("1043"));
    let (code, _, _) = refusal(&send_login(&mut d, login_jwt("1043", "7002", &old)).await);
    assert_eq!(code, ErrorCode::AuthFailed);
}

#[tokio::test]
async fn an_admin_read_session_reads_and_may_not_release() {
    let server = TestServer::start_with(|c| {
        c.tokens.admin_read = Some("read-only-admin-secret".into());
    })
    .await;
    let mut centre_switch = server.connect(Role::Switch).await;
    let mut dialer = server.connect(Role::Dialer).await;
    let (mut a, _) = server.desktop("A", "7001").await;
    event(&mut centre_switch, ringing("C1", "7001")).await;
    assert!(matches!(
        dialer.request(attach("C1", "R1")).await.unwrap(),
        ServerMsg::RecordAttached { .. }
    ));
    event(&mut centre_switch, established("C1", "7001")).await;
    drain(&mut a).await;

    let mut reader = Client::connect(server.addr, Role::Admin, "read-only-admin-secret")
        .await
        .unwrap();
    assert!(matches!(
        reader.request(Request::Status).await.unwrap(),
        ServerMsg::StatusReport { .. }
    ));
    assert!(matches!(
        reader
            .request(Request::RecordInfo(RecordRef {
                record: "R1".into()
            }))
            .await
            .unwrap(),
        ServerMsg::RecordReport { .. }
    ));
    assert!(!whole_audit_log(&mut reader).await.is_empty());
    let release = Request::ReleaseRecord(ReleaseRecord {
        record: "R1".into(),
        reason: "stuck".into(),
    });
    let (code, _, _) = refusal(&reader.request(release.clone()).await.unwrap());
    assert_eq!(code, ErrorCode::AccessDenied);
    // Nothing changed: A still holds the record, and the full admin token may release it.
    expect_quiet(&mut a).await;
    let mut admin = server.connect(Role::Admin).await;
    assert_eq!(
        admin.request(release).await.unwrap(),
        ServerMsg::RecordReleased {
            record: "R1".into()
        }
    );
    // A wrong token is still refused outright.
    assert!(
        Client::connect(server.addr, Role::Admin, "read-only-admin-secreT")
            .await
            .is_err()
    );
}
