//! TLS on the client port (CONTRACT section 10): only TLS 1.2 and 1.3, nothing in clear text,
//! client certificates for the roles that must show one, and certificates reloaded without
//! dropping sessions. Certificates are made at run time; the listener is also checked from the
//! outside with `openssl s_client`.

use baton::client::{Client, ClientError, ClientTls};
use baton::config::{Config, TlsConfig};
use baton::messages::*;
use baton_kit::identity::{CertFiles, Pki};
use baton_kit::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn tls_config(server: &CertFiles, client_ca: Option<&Path>, require: &[&str]) -> TlsConfig {
    TlsConfig {
        cert: server.cert.clone(),
        key: server.key.clone(),
        client_ca: client_ca.map(Path::to_owned),
        require_client_cert: require.iter().map(|r| r.to_string()).collect(),
    }
}

async fn tls_server(tls: TlsConfig, adjust: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_with(move |c| {
        c.tls = Some(tls);
        adjust(c);
    })
    .await
}

fn trusting(pki: &Pki, client: Option<&CertFiles>) -> ClientTls {
    let client = client.map(|c| (c.cert.as_path(), c.key.as_path()));
    ClientTls::new(Some(&pki.ca_file), client, None).unwrap()
}

async fn connect(server: &TestServer, tls: &ClientTls, role: Role) -> Result<Client, ClientError> {
    let token = token(&server.config.tokens, role).to_owned();
    Client::connect_with(server.addr, Some(tls), role, &token).await
}

#[tokio::test]
async fn a_tls_port_serves_a_whole_session_over_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path(), "centre");
    let server = tls_server(tls_config(&pki.server("server"), None, &[]), |_| {}).await;
    let tls = trusting(&pki, None);

    let mut switch = connect(&server, &tls, Role::Switch).await.unwrap();
    let mut dialer = connect(&server, &tls, Role::Dialer).await.unwrap();
    let mut desk = connect(&server, &tls, Role::Desktop).await.unwrap();
    log_in(&mut desk, "A", "7001").await.unwrap();
    event(&mut switch, ringing("C1", "7001")).await;
    assert!(matches!(
        dialer.request(attach("C1", "R1")).await.unwrap(),
        ServerMsg::RecordAttached { .. }
    ));
    event(&mut switch, established("C1", "7001")).await;
    let push = next_record_push(&mut desk).await;
    assert_eq!(access_of(&push).1, Access::Full);
    assert_eq!(
        desk.request(processed("R1", "answered")).await.unwrap(),
        ServerMsg::RecordProcessedAck {
            record: "R1".into()
        }
    );

    // A client that does not trust the server's CA cannot connect.
    let stranger = Pki::new(tmp.path(), "stranger");
    let err = connect(&server, &trusting(&stranger, None), Role::Desktop)
        .await
        .err()
        .expect("a server certificate from an unknown CA is refused");
    assert!(matches!(err, ClientError::Tls(_)), "{err}");
}

#[tokio::test]
async fn a_tls_port_accepts_no_clear_text_frame() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path(), "centre");
    let server = tls_server(tls_config(&pki.server("server"), None, &[]), |_| {}).await;

    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let hello = request_frame(&hello(Role::Desktop, "desk-secret"), 1);
    socket.write_all(&hello).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut got)).await;
    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "the server kept a clear-text connection open"
    );
    let text = String::from_utf8_lossy(&got);
    assert!(
        !text.contains("Welcome") && !text.contains("\"type\""),
        "the server answered a clear-text frame: {text:?}"
    );
    // Whatever came back is a TLS alert record (content type 21), not a frame.
    assert!(got.is_empty() || got[0] == 21, "unexpected bytes {got:?}");
}

/// Runs `openssl s_client` against the port with the given extra arguments.
fn s_client(addr: std::net::SocketAddr, ca: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-CAfile")
        .arg(ca)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl is installed (.ci/run installs Debian's openssl package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn openssl_sees_tls_1_2_and_1_3_only() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path(), "centre");
    let server = tls_server(tls_config(&pki.server("server"), None, &[]), |_| {}).await;
    let (addr, ca) = (server.addr, pki.ca_file.clone());
    let results = tokio::task::spawn_blocking(move || {
        // SECLEVEL=0 lets this openssl offer the old versions at all, so that a refusal is the
        // server's.
        let old = ["-cipher", "DEFAULT:@SECLEVEL=0"];
        [
            s_client(addr, &ca, &["-tls1_3"]),
            s_client(addr, &ca, &["-tls1_2"]),
            s_client(addr, &ca, &["-tls1_1", old[0], old[1]]),
            s_client(addr, &ca, &["-tls1", old[0], old[1]]),
        ]
    })
    .await
    .unwrap();
    let [v13, v12, v11, v10] = results;
    for (version, (ok, text)) in [("TLSv1.3", &v13), ("TLSv1.2", &v12)] {
        assert!(*ok, "{version} refused:\n{text}");
        assert!(
            text.contains(&format!("Protocol  : {version}"))
                || text.contains(&format!("New, {version}")),
            "{version}:\n{text}"
        );
        assert!(
            text.contains("Verify return code: 0 (ok)"),
            "{version}:\n{text}"
        );
    }
    for (version, (ok, text)) in [("TLSv1.1", &v11), ("TLSv1", &v10)] {
        assert!(!*ok, "{version} was accepted:\n{text}");
        // The refusal is the server's: an alert it sent (rustls answers a client that offers
        // nothing newer than 1.1 with handshake_failure), not this openssl giving up.
        assert!(
            text.contains("SSL alert number"),
            "{version} was not refused by an alert from the server:\n{text}"
        );
    }
}

#[tokio::test]
async fn roles_listed_must_present_a_client_certificate_from_the_client_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path(), "centre");
    let clients = Pki::new(tmp.path(), "clients");
    let tls = tls_config(
        &pki.server("server"),
        Some(&clients.ca_file),
        &["switch", "dialer", "admin"],
    );
    let server = tls_server(tls, |_| {}).await;
    let link_cert = clients.client("switch-link");
    let bare = trusting(&pki, None);
    let with_cert = trusting(&pki, Some(&link_cert));

    for role in [Role::Switch, Role::Dialer, Role::Admin] {
        match connect(&server, &bare, role).await {
            Err(ClientError::Refused { code, message }) => {
                assert_eq!(code, ErrorCode::AuthFailed);
                assert!(message.contains("client certificate"), "{message}");
            }
            Err(e) => panic!("{role} without a certificate: {e}"),
            Ok(_) => panic!("{role} was admitted without a client certificate"),
        }
        connect(&server, &with_cert, role)
            .await
            .unwrap_or_else(|e| panic!("{role} with a certificate: {e}"));
    }
    // Desktops are not in the list: they come in without one.
    connect(&server, &bare, Role::Desktop).await.unwrap();

    // A certificate signed by another CA fails the handshake itself.
    let rogue = Pki::new(tmp.path(), "rogue").client("rogue-link");
    let result = connect(&server, &trusting(&pki, Some(&rogue)), Role::Switch).await;
    assert!(
        result.is_err(),
        "a certificate from an unknown CA was accepted"
    );
}

#[tokio::test]
async fn certificates_are_reloaded_without_dropping_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let old_pki = Pki::new(tmp.path(), "old");
    let files = old_pki.server("server");
    let server = tls_server(tls_config(&files, None, &[]), |_| {}).await;
    let old = trusting(&old_pki, None);
    let mut desk = connect(&server, &old, Role::Desktop).await.unwrap();
    log_in(&mut desk, "A", "7001").await.unwrap();

    // The certificate is renewed by another CA, in place.
    let new_pki = Pki::new(tmp.path(), "new");
    let renewed = new_pki.server("renewed");
    std::fs::copy(&renewed.cert, &files.cert).unwrap();
    std::fs::copy(&renewed.key, &files.key).unwrap();
    server.reload().unwrap();

    // The open session goes on; new connections get the new certificate.
    assert_eq!(desk.request(Request::Ping).await.unwrap(), ServerMsg::Pong);
    connect(&server, &trusting(&new_pki, None), Role::Desktop)
        .await
        .unwrap();
    assert!(connect(&server, &old, Role::Desktop).await.is_err());

    // A broken key is refused and the certificate in use stays.
    std::fs::write(&files.key, "not a key").unwrap();
    assert!(server.reload().is_err());
    connect(&server, &trusting(&new_pki, None), Role::Desktop)
        .await
        .unwrap();
    assert_eq!(desk.request(Request::Ping).await.unwrap(), ServerMsg::Pong);
}

/// `baton serve` reloads its certificate on SIGHUP, and the admin command line speaks TLS.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_certificate_of_a_running_server() {
    let tmp = tempfile::tempdir().unwrap();
    let old_pki = Pki::new(tmp.path(), "old");
    let files = old_pki.server("server");
    let addr = free_addr();
    let extra = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\n",
        files.cert.display().to_string(),
        files.key.display().to_string()
    );
    let config = config_file(tmp.path(), addr, &extra);
    let mut server = ServerProcess::serve(Path::new(env!("CARGO_BIN_EXE_baton")), &config).unwrap();
    server.tls = Some(trusting(&old_pki, None));
    server.wait_serving(Duration::from_secs(30)).await.unwrap();
    let mut desk = Client::connect_with(addr, server.tls.as_ref(), Role::Desktop, "desk-secret")
        .await
        .unwrap();
    log_in(&mut desk, "A", "7001").await.unwrap();

    let new_pki = Pki::new(tmp.path(), "new");
    let renewed = new_pki.server("renewed");
    std::fs::copy(&renewed.cert, &files.cert).unwrap();
    std::fs::copy(&renewed.key, &files.key).unwrap();
    server.signal("-HUP");
    let new = trusting(&new_pki, None);
    let mut reloaded = false;
    for _ in 0..50 {
        if Client::connect_with(addr, Some(&new), Role::Desktop, "desk-secret")
            .await
            .is_ok()
        {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reloaded,
        "no new certificate after SIGHUP:\n{}",
        server.log()
    );
    assert_eq!(desk.request(Request::Ping).await.unwrap(), ServerMsg::Pong);
    assert!(server.log().contains("TLS certificate reloaded"));

    // `baton status` over TLS, trusting the new CA.
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["status", "--json", "--config"])
        .arg(&config)
        .arg("--ca")
        .arg(&new_pki.ca_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["agents"], 1);
    server.stop();
}
