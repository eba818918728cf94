//! `baton agents` managing the agents file of a running `baton serve`, and the promise that no
//! secret reaches a log line or the audit log: every authentication path is run against child
//! servers logging at `RUST_LOG=trace`, and their whole output and audit logs are searched.

use baton::client::Client;
use baton::messages::*;
use baton_kit::identity::Idp;
use baton_kit::*;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const BATON: &str = env!("CARGO_BIN_EXE_baton");

/// Runs `baton agents ARGS --file FILE`, writing `stdin` to it; returns its output.
fn agents(file: &Path, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(BATON)
        .arg("agents")
        .args(args)
        .arg("--file")
        .arg(file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `baton serve` with `extra` config lines, logging at trace level.
async fn traced_server(dir: &Path, extra: &str) -> ServerProcess {
    let addr = free_addr();
    let config = config_file(dir, addr, extra);
    let mut command = Command::new(BATON);
    command
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "trace");
    let mut server = ServerProcess::spawn(command, addr, "admin-secret").unwrap();
    server.wait_serving(Duration::from_secs(30)).await.unwrap();
    server
}

async fn desk(addr: std::net::SocketAddr) -> Client {
    Client::connect(addr, Role::Desktop, "").await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn baton_agents_manages_the_file_a_running_server_uses() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("agents.toml");
    let (ok, out) = agents(
        &file,
        &["add", "1042", "1043", "--dn", "7001", "--password-stdin"],
        "first-password-42\n",
    );
    assert!(ok, "{out}");
    // Refused: a short password, an agent already there, an unknown agent.
    let (ok, out) = agents(&file, &["add", "1050", "--password-stdin"], "short\n");
    assert!(!ok && out.contains("at least 8"), "{out}");
    let (ok, out) = agents(
        &file,
        &["add", "1042", "--password-stdin"],
        "another-pass\n",
    );
    assert!(!ok && out.contains("already"), "{out}");
    let (ok, _) = agents(&file, &["disable", "9999"], "");
    assert!(!ok);

    let extra = format!(
        "[auth]\nagents = \"directory\"\ndirectory = {:?}\n",
        file.display().to_string()
    );
    let mut server = traced_server(tmp.path(), &extra).await;
    let mut c = desk(server.addr).await;
    log_in_with_password(&mut c, "1042", "7001", "first-password-42")
        .await
        .unwrap();
    c.request(logout(true)).await.unwrap();

    // A new password, then a disabled agent: the server follows the file on its own.
    let (ok, out) = agents(
        &file,
        &["passwd", "1042", "--password-stdin"],
        "second-password-42\n",
    );
    assert!(ok, "{out}");
    let (ok, out) = agents(&file, &["disable", "1043"], "");
    assert!(ok, "{out}");
    // Wait for the server to say it read the file again (a login tried meanwhile would fail,
    // and enough failures would throttle the agent).
    let mut reread = false;
    for _ in 0..100 {
        if server.log().contains("agents=2 disabled=1") {
            reread = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reread, "the changed file was not read:\n{}", server.log());
    let mut d = desk(server.addr).await;
    log_in_with_password(&mut d, "1042", "7001", "second-password-42")
        .await
        .unwrap();
    let mut d = desk(server.addr).await;
    assert!(
        log_in_with_password(&mut d, "1043", "7001", "first-password-42")
            .await
            .is_err(),
        "a disabled agent logged in"
    );

    let (ok, out) = agents(&file, &["list", "--json"], "");
    assert!(ok, "{out}");
    let listed: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        listed,
        [
            serde_json::json!({"agent": "1042", "dns": ["7001"], "disabled": false}),
            serde_json::json!({"agent": "1043", "dns": ["7001"], "disabled": true}),
        ]
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("password-42") && text.contains("$argon2id$"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the agents file is readable by others");
    }
    server.stop();
}

/// Every secret a client sent, or was given, in any of the runs.
struct Secrets(Vec<String>);

impl Secrets {
    fn add(&mut self, s: &str) {
        self.0.push(s.to_owned());
        // A JWT's signature alone, too: a log line could hold a piece of the token.
        if let Some(sig) = s.rsplit('.').next().filter(|p| p.len() > 20) {
            self.0.push(sig.to_owned());
        }
    }

    fn assert_absent(&self, what: &str, text: &str) {
        for s in &self.0 {
            assert!(!text.contains(s.as_str()), "{what} holds the secret {s:?}");
        }
    }
}

async fn audit_text(addr: std::net::SocketAddr) -> String {
    let mut admin = Client::connect(addr, Role::Admin, "admin-secret")
        .await
        .unwrap();
    let entries = whole_audit_log(&mut admin).await;
    serde_json::to_string(&entries).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_the_log_or_the_audit_log_on_any_auth_path() {
    let tmp = tempfile::tempdir().unwrap();
    let mut secrets = Secrets(Vec::new());

    // Directory mode: wrong passwords until throttled, the right one, a resume token (right and
    // wrong), admin tokens (full, read-only and wrong).
    let dir = tmp.path().join("directory");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("agents.toml");
    let password = "Corr3ct-h0rse-battery";
    assert!(
        agents(
            &file,
            &["add", "1042", "--password-stdin"],
            &format!("{password}\n")
        )
        .0
    );
    let extra = format!(
        "[auth]\nagents = \"directory\"\ndirectory = {:?}\n[tokens]\nadmin_read = \"r3ad-only-t0ken\"\n",
        file.display().to_string()
    );
    let mut server = traced_server(&dir, &extra).await;
    secrets.add(password);
    secrets.add("r3ad-only-t0ken");
    secrets.add("admin-secret");
    let mut c = desk(server.addr).await;
    for i in 0..6 {
        let wrong = format!("wr0ng-passw0rd-{i}");
        secrets.add(&wrong);
        assert!(log_in_with_password(&mut c, "1043", "7001", &wrong)
            .await
            .is_err());
    }
    let token = log_in_with_password(&mut c, "1042", "7001", password)
        .await
        .unwrap();
    secrets.add(&token);
    drop(c);
    let mut again = desk(server.addr).await;
    let resumed = again
        .request(login("1042", "7001", Some(&token)))
        .await
        .unwrap();
    let ServerMsg::LoggedIn { session, .. } = resumed else {
        panic!("resume refused: {resumed:?}");
    };
    secrets.add(&session);
    let mut stranger = desk(server.addr).await;
    let forged = "00112233445566778899aabbccddeeff";
    secrets.add(forged);
    assert!(stranger
        .request(login("1042", "7001", Some(forged)))
        .await
        .is_ok());
    let mut reader = Client::connect(server.addr, Role::Admin, "r3ad-only-t0ken")
        .await
        .unwrap();
    reader.request(Request::Status).await.unwrap();
    secrets.add("wr0ng-admin-t0ken");
    assert!(
        Client::connect(server.addr, Role::Admin, "wr0ng-admin-t0ken")
            .await
            .is_err()
    );
    let directory_audit = audit_text(server.addr).await;
    server.stop();
    let directory_log = server.log();

    // JWT mode: a valid token, a tampered one, an expired one.
    let jwt_dir = tmp.path().join("jwt");
    std::fs::create_dir(&jwt_dir).unwrap();
    let idp = Idp::new("https://idp.example/realms/centre", "baton");
    let jwks = jwt_dir.join("jwks.json");
    idp.write_jwks(&jwks, &[]);
    let extra = format!(
        "[auth]\nagents = \"jwt\"\njwt_keys = {:?}\njwt_issuer = {:?}\njwt_audience = {:?}\n",
        jwks.display().to_string(),
        idp.issuer,
        idp.audience
    );
    let mut server = traced_server(&jwt_dir, &extra).await;
    let valid = idp.token("1042");
    let mut expired_claims = idp.claims("1042");
    expired_claims["exp"] = serde_json::json!(baton_kit::identity::now_s() - 3600);
    let expired = idp.sign("es-1", &expired_claims);
    let tampered = format!("{}x", &valid[..valid.len() - 1]);
    for t in [&valid, &expired, &tampered] {
        secrets.add(t);
    }
    let mut c = desk(server.addr).await;
    for bad in [&expired, &tampered] {
        let reply = c.request(login_jwt("1042", "7001", bad)).await.unwrap();
        assert!(matches!(reply, ServerMsg::Error { .. }), "{reply:?}");
    }
    let reply = c.request(login_jwt("1042", "7001", &valid)).await.unwrap();
    let ServerMsg::LoggedIn { session, .. } = reply else {
        panic!("valid token refused: {reply:?}");
    };
    secrets.add(&session);
    let jwt_audit = audit_text(server.addr).await;
    server.stop();
    let jwt_log = server.log();

    // The runs did log, at trace level, each refusal among them.
    for log in [&directory_log, &jwt_log] {
        assert!(log.contains("TRACE"), "not a trace-level log:\n{log}");
        assert!(log.contains("login refused"), "no refusal logged:\n{log}");
    }
    assert!(directory_audit.contains("login_failed") && directory_audit.contains("throttled"));
    assert!(jwt_audit.contains("login_failed"));
    secrets.assert_absent("the directory-mode log", &directory_log);
    secrets.assert_absent("the directory-mode audit log", &directory_audit);
    secrets.assert_absent("the jwt-mode log", &jwt_log);
    secrets.assert_absent("the jwt-mode audit log", &jwt_audit);
}
