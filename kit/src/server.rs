//! One way to start a Baton server and know when it serves: [`TestServer`] runs one in this
//! process on a free port and a temporary store; [`ServerProcess`] runs a `baton serve` (or any
//! command that serves) as a child process, for crash tests, the command-line tests and the
//! restart timer.

use baton::client::{Client, ClientError, Transport};
use baton::config::{Config, Tokens};
use baton::messages::*;
use baton::server::ServerHandle;
use baton::store::Store;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The token `tokens` gives `role`.
pub fn token(tokens: &Tokens, role: Role) -> &str {
    match role {
        Role::Desktop => &tokens.desktop,
        Role::Dialer => &tokens.dialer,
        Role::Switch => &tokens.switch,
        Role::Admin => &tokens.admin,
    }
}

/// A loopback address with a port free at the time of the call (for servers started elsewhere,
/// which must be told their address before they bind it).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// Writes `DIR/baton.toml` for a server on `addr` with its store in `DIR/data`, plus the TOML
/// lines in `extra`; returns the file's path. Unless `extra` sets `http_listen`, the HTTP
/// listener takes any free port, so that servers of tests running side by side never meet.
pub fn config_file(dir: &Path, addr: SocketAddr, extra: &str) -> PathBuf {
    let path = dir.join("baton.toml");
    let data = dir.join("data").display().to_string().replace('\\', "\\\\");
    let http = if extra.contains("http_listen") {
        ""
    } else {
        "http_listen = \"127.0.0.1:0\"\n"
    };
    std::fs::write(
        &path,
        format!("listen = \"{addr}\"\ndata_dir = \"{data}\"\n{http}{extra}"),
    )
    .expect("config written");
    path
}

/// The transport the tests' desktops use: `BATON_TEST_DESKTOP_TRANSPORT=ws` runs them over
/// WebSocket (the HTTP listener's `/ws`), anything else over the TCP port. The same tests check
/// both: a WebSocket desktop is the same to every rule.
pub fn desktop_transport() -> Transport {
    match std::env::var("BATON_TEST_DESKTOP_TRANSPORT").as_deref() {
        Ok("ws" | "websocket") => Transport::WebSocket,
        _ => Transport::Tcp,
    }
}

/// A server running in this process on `127.0.0.1:0`.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The HTTP listener (WebSocket desktops), when the config has one.
    pub http_addr: Option<SocketAddr>,
    pub config: Config,
    handle: Option<ServerHandle>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// A server with the default config on a fresh sled store in a temporary directory.
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// As [`TestServer::start`], with the config adjusted first.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = TestServer::start_in(dir.path().join("data"), adjust).await;
        server._dir = Some(dir);
        server
    }

    /// A server on the sled store in `data_dir` (which outlives it, for restart tests).
    pub async fn start_in(data_dir: PathBuf, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = TestServer::config();
        config.data_dir = data_dir;
        adjust(&mut config);
        let handle = baton::server::start(config.clone())
            .await
            .expect("server starts");
        TestServer::serving(handle, config)
    }

    /// A server on the given store (e.g. a `MemoryStore` with its fault switch).
    pub async fn start_with_store(store: Arc<dyn Store>) -> TestServer {
        TestServer::start_with_store_and(store, |_| {}).await
    }

    /// A server on the given store, with its config adjusted.
    pub async fn start_with_store_and(
        store: Arc<dyn Store>,
        adjust: impl FnOnce(&mut Config),
    ) -> TestServer {
        let mut config = TestServer::config();
        adjust(&mut config);
        let handle = baton::server::start_with_store(config.clone(), store)
            .await
            .expect("server starts");
        TestServer::serving(handle, config)
    }

    fn config() -> Config {
        Config {
            listen: "127.0.0.1:0".parse().expect("an address"),
            http_listen: "127.0.0.1:0".into(),
            ..Config::default()
        }
    }

    fn serving(handle: ServerHandle, config: Config) -> TestServer {
        crate::schema::install();
        TestServer {
            addr: handle.local_addr(),
            http_addr: handle.http_addr(),
            config,
            handle: Some(handle),
            _dir: None,
        }
    }

    /// Reloads credentials and certificates, as SIGHUP does.
    pub fn reload(&self) -> Result<(), String> {
        self.handle.as_ref().expect("a running server").reload()
    }

    /// Stops the server the way SIGTERM does, and waits until it has.
    pub async fn shutdown(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }

    /// A connection that said `Hello` as `role`, with the role's token. A desktop connects over
    /// the transport of [`desktop_transport`].
    pub async fn connect(&self, role: Role) -> Client {
        self.connect_as(role, token(&self.config.tokens, role))
            .await
            .expect("Hello accepted")
    }

    /// A connection that said `Hello` as `role` with `token`, or the server's refusal. A desktop
    /// connects over the transport of [`desktop_transport`].
    pub async fn connect_as(&self, role: Role, token: &str) -> Result<Client, ClientError> {
        match (role, desktop_transport()) {
            (Role::Desktop, Transport::WebSocket) => {
                let http = self
                    .http_addr
                    .expect("a WebSocket desktop needs the server's HTTP listener");
                Client::connect_ws(http, None, role, token).await
            }
            _ => Client::connect(self.addr, role, token).await,
        }
    }

    /// A desktop logged in as `agent` on `dn`; returns the client and its session token.
    pub async fn desktop(&self, agent: &str, dn: &str) -> (Client, String) {
        let mut c = self.connect(Role::Desktop).await;
        let session = log_in(&mut c, agent, dn).await.expect("LoggedIn");
        (c, session)
    }

    /// A desktop that logs in as `agent` on `dn` presenting the session token `token`; returns
    /// the client and whether the server resumed that session.
    pub async fn resume(&self, agent: &str, dn: &str, token: &str) -> (Client, bool) {
        let mut c = self.connect(Role::Desktop).await;
        match c
            .request(crate::login(agent, dn, Some(token)))
            .await
            .expect("an answer to Login")
        {
            ServerMsg::LoggedIn {
                resumed,
                agent: a,
                dn: d,
                ..
            } => {
                assert_eq!((a.as_str(), d.as_str()), (agent, dn));
                (c, resumed)
            }
            other => panic!("expected LoggedIn, got {other:?}"),
        }
    }

    /// A switch link, after its initial `Monitor`.
    pub async fn switch(&self) -> (Client, Vec<String>) {
        let mut c = self.connect(Role::Switch).await;
        match c.next_push().await.expect("Monitor") {
            ServerMsg::Monitor { dns } => (c, dns),
            other => panic!("expected Monitor, got {other:?}"),
        }
    }

    /// Asks `Status` on a fresh admin connection: proves the server still serves.
    pub async fn status(&self) -> ServerMsg {
        let mut admin = self.connect(Role::Admin).await;
        admin.request(Request::Status).await.expect("StatusReport")
    }
}

/// Logs `client` in as `agent` on `dn` (a fresh session); returns its session token. A refusal,
/// or a login that resumed or landed elsewhere, is an error.
pub async fn log_in(client: &mut Client, agent: &str, dn: &str) -> Result<String, ClientError> {
    logged_in(client, crate::login(agent, dn, None), agent, dn).await
}

/// Logs `agent` in on `dn` with a password (`directory` mode); returns the resume token.
pub async fn log_in_with_password(
    client: &mut Client,
    agent: &str,
    dn: &str,
    password: &str,
) -> Result<String, ClientError> {
    logged_in(
        client,
        crate::login_password(agent, dn, password),
        agent,
        dn,
    )
    .await
}

async fn logged_in(
    client: &mut Client,
    login: Request,
    agent: &str,
    dn: &str,
) -> Result<String, ClientError> {
    match client.request(login).await? {
        ServerMsg::LoggedIn {
            agent: a,
            dn: d,
            session,
            resumed: false,
        } if a == agent && d == dn => Ok(session),
        ServerMsg::Error { code, message, .. } => Err(ClientError::Refused { code, message }),
        other => Err(ClientError::Refused {
            code: ErrorCode::BadRequest,
            message: format!("unexpected answer to Login of {agent} on {dn}: {other:?}"),
        }),
    }
}

/// A server running as a child process, with its standard error kept for the failure message.
pub struct ServerProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    admin_token: String,
    /// How to reach it when it speaks TLS.
    pub tls: Option<baton::client::ClientTls>,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ServerProcess {
    /// Starts `command` (which must serve on `addr` with `admin_token`), keeping its standard
    /// error. Its standard input is a pipe ([`ServerProcess::stdin`]), its output discarded.
    pub fn spawn(
        mut command: Command,
        addr: SocketAddr,
        admin_token: &str,
    ) -> std::io::Result<ServerProcess> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        crate::schema::install();
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().expect("log lock").push(line);
            }
        });
        Ok(ServerProcess {
            child,
            addr,
            admin_token: admin_token.to_owned(),
            tls: None,
            log,
            reader: Some(reader),
        })
    }

    /// `baton serve --config CONFIG` with the binary at `exe`, on the config's address and
    /// admin token.
    pub fn serve(exe: &Path, config_path: &Path) -> std::io::Result<Self> {
        let config = Config::load_or_default(config_path)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let mut command = Command::new(exe);
        command.arg("serve").arg("--config").arg(config_path);
        ServerProcess::spawn(command, config.listen, &config.tokens.admin)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's standard input, once (a test may use it to signal the child).
    pub fn stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.stdin.take()
    }

    /// Waits until the server answers `Status`, and returns how long that took. Fails with its
    /// log if it exits first, or if it does not answer within `timeout`.
    pub async fn wait_serving(&mut self, timeout: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "the server exited with {status} before serving:\n{}",
                    self.log()
                ));
            }
            if started.elapsed() > timeout {
                return Err(format!(
                    "the server did not answer within {timeout:?}:\n{}",
                    self.log()
                ));
            }
            let attempt = tokio::time::timeout(Duration::from_secs(5), async {
                let mut c = Client::connect_with(
                    self.addr,
                    self.tls.as_ref(),
                    Role::Admin,
                    &self.admin_token,
                )
                .await?;
                c.request(Request::Status).await
            })
            .await;
            if let Ok(Ok(ServerMsg::StatusReport { .. })) = attempt {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Everything the child has written to its standard error so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// Waits up to `limit` for the child to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.join_log();
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A clean stop: SIGTERM, then SIGKILL if it is still there after 30 s. Returns how it
    /// exited.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.signal("-TERM");
        match self.wait_exit(Duration::from_secs(30)) {
            Some(status) => Some(status),
            None => {
                self.kill();
                None
            }
        }
    }

    /// SIGKILL, as a machine losing power would stop it; waits until it is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.join_log();
    }

    /// Sends `signal` (as `kill` spells it, e.g. `-TERM`) to the child.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(signal)
            .arg(self.child.id().to_string())
            .status();
    }

    fn join_log(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for TestServer {
    /// A frame outside the schema fails the test that saw it, even if the task that read it
    /// panicked unobserved.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            crate::schema::assert_no_violations();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
