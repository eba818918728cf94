//! A dead engine must not look alive: when the engine task dies, the server stops accepting, and
//! `baton serve` exits non-zero at once so that its supervisor restarts it.
//!
//! The engine is made to die through `StartOptions::engine_fault`, a switch only Rust code can
//! reach. The exit itself is tested in a child process: this test binary runs itself again with
//! an environment variable that only this file reads, and the child serves through
//! `baton::server::serve`, the function `baton serve` runs.

use baton::client::Client;
use baton::config::Config;
use baton::messages::*;
use baton::server::{self, ServerError, StartOptions, ENGINE_FAILURE_EXIT_CODE};
use baton_kit::{free_addr, ServerProcess};
use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Set by the parent test for its child process: `<listen address> <data directory>`.
const CHILD_ENV: &str = "BATON_TEST_ENGINE_FAILURE_CHILD";
const CHILD_TEST: &str = "serves_as_baton_serve_does_until_its_engine_is_broken";

fn config(listen: SocketAddr, data_dir: std::path::PathBuf) -> Config {
    Config {
        listen,
        // Any free port: the tests of this file run side by side.
        http_listen: "127.0.0.1:0".into(),
        data_dir,
        ..Config::default()
    }
}

#[tokio::test]
async fn a_dead_engine_closes_the_listener_and_the_handle_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = config("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
    let fault = Arc::new(AtomicBool::new(false));
    let opts = StartOptions {
        engine_fault: Some(fault.clone()),
        ..StartOptions::default()
    };
    let handle = server::start_with_options(config.clone(), opts)
        .await
        .unwrap();
    let addr = handle.local_addr();
    let mut admin = Client::connect(addr, Role::Admin, &config.tokens.admin)
        .await
        .unwrap();
    let status = admin.request(Request::Status).await.unwrap();
    assert!(
        matches!(status, ServerMsg::StatusReport { .. }),
        "{status:?}"
    );

    fault.store(true, Ordering::Relaxed);
    let ended = tokio::time::timeout(Duration::from_secs(10), handle.wait())
        .await
        .expect("the server ends when its engine dies");
    match ended {
        Err(ServerError::EngineFailed(why)) => {
            assert!(why.contains("engine fault injected"), "{why}")
        }
        other => panic!("expected EngineFailed, got {other:?}"),
    }
    // Nothing is left looking alive: new connections are refused, open ones are closed.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert!(admin.is_closed().await);
}

#[test]
fn baton_serve_exits_non_zero_at_once_when_its_engine_dies() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut child = Command::new(std::env::current_exe().unwrap());
    child
        .args(["--exact", CHILD_TEST, "--ignored", "--nocapture"])
        .env(
            CHILD_ENV,
            format!("{addr} {}", dir.path().join("data").display()),
        );
    let mut child = ServerProcess::spawn(child, addr, &Config::default().tokens.admin).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(child.wait_serving(Duration::from_secs(20)))
        .expect("the child serves");

    // Break its engine; the child must go away by itself, with a failing status.
    child
        .stdin()
        .expect("a pipe")
        .write_all(b"break\n")
        .unwrap();
    let status = child
        .wait_exit(Duration::from_secs(10))
        .expect("the server exits within 10 s of its engine's death");
    let stderr = child.log();
    assert_eq!(status.code(), Some(ENGINE_FAILURE_EXIT_CODE), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("ENGINE FAILURE") && l.contains("engine fault injected")),
        "{stderr}"
    );
    // The panic itself went through the log, as `baton serve` logs it.
    assert!(stderr.contains("panic: engine fault injected"), "{stderr}");
    assert!(std::net::TcpStream::connect(addr).is_err());
}

/// The child of the test above: serves as `baton serve` does (logging to stderr, panics logged)
/// until a line arrives on stdin, which breaks its engine.
#[test]
#[ignore = "run as a child process by baton_serve_exits_non_zero_at_once_when_its_engine_dies"]
fn serves_as_baton_serve_does_until_its_engine_is_broken() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (listen, data_dir) = spec.split_once(' ').expect("address and directory");
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    server::log_panics();
    let fault = Arc::new(AtomicBool::new(false));
    let trigger = fault.clone();
    std::thread::spawn(move || {
        // A line, or the parent going away (end of input), breaks the engine.
        let _ = std::io::stdin().read_line(&mut String::new());
        trigger.store(true, Ordering::Relaxed);
    });
    let opts = StartOptions {
        engine_fault: Some(fault),
        ..StartOptions::service()
    };
    let config = config(listen.parse().unwrap(), data_dir.into());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let result = runtime.block_on(server::serve(config, opts));
    panic!("serve returned instead of exiting the process: {result:?}");
}
