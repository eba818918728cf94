//! Server configuration: every limit and timer in one struct, loaded from TOML.
//!
//! Every key is optional; a missing key takes the default listed in CONTRACT section 0, so an empty
//! file (or no file at all, see [`Config::load_or_default`]) gives a working server. Unknown keys are
//! rejected so that a typo in an operator's config file is an error at start-up, not a silent default.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One shared secret per client role; `Hello` must carry the one for the role it asks for.
/// (Desktops need none when agents prove who they are at `Login`: see [`AgentAuth`].)
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Tokens {
    pub desktop: String,
    pub dialer: String,
    pub switch: String,
    pub admin: String,
    /// An admin token that may only read (`Status`, `RecordInfo`, `AuditTail`); none by default.
    pub admin_read: Option<String>,
}

/// Secrets never reach a log line, not even through a `{:?}` of the whole configuration.
impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |s: &str| if s.is_empty() { "(empty)" } else { "(set)" };
        f.debug_struct("Tokens")
            .field("desktop", &hidden(&self.desktop))
            .field("dialer", &hidden(&self.dialer))
            .field("switch", &hidden(&self.switch))
            .field("admin", &hidden(&self.admin))
            .field("admin_read", &self.admin_read.as_deref().map(hidden))
            .finish()
    }
}

/// How a desktop proves which agent it is (`[auth] agents`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AgentAuth {
    /// The agent id in `Login` is trusted: for the quick start and tests, on loopback only.
    #[default]
    Open,
    /// A password checked against the agents file (argon2id hashes, optional allowed DNs).
    Directory,
    /// A bearer token (JWT) from the centre's identity provider, checked with its public keys.
    Jwt,
}

impl AgentAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentAuth::Open => "open",
            AgentAuth::Directory => "directory",
            AgentAuth::Jwt => "jwt",
        }
    }
}

/// `[auth]`: agent identity at `Login`, and the throttling of failed logins.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub agents: AgentAuth,
    /// `directory` mode: the agents file (`baton agents` manages it).
    pub directory: PathBuf,
    /// `jwt` mode: the identity provider's public keys, as a JWKS file.
    pub jwt_keys: PathBuf,
    /// `jwt` mode: the `iss` every token must carry (required in that mode).
    pub jwt_issuer: Option<String>,
    /// `jwt` mode: a value the token's `aud` must hold (required in that mode).
    pub jwt_audience: Option<String>,
    /// `jwt` mode: the claim holding the agent id.
    pub jwt_agent_claim: String,
    /// `jwt` mode: how far `exp` and `nbf` may be off, for clocks that disagree a little.
    pub jwt_leeway_ms: u64,
    /// Failed logins of one agent id within `failed_login_window_ms` before its logins are
    /// refused unchecked until the window passes.
    pub max_failed_logins_per_agent: u32,
    /// The same bound for one peer address; much higher, as a whole centre may sit behind one
    /// NAT address.
    pub max_failed_logins_per_peer: u32,
    pub failed_login_window_ms: u64,
    /// Password checks run at once at most (each takes tens of milliseconds of one core and
    /// 19 MiB); the rest wait their turn. 0 means one per core.
    pub password_check_threads: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            agents: AgentAuth::Open,
            directory: PathBuf::from("agents.toml"),
            jwt_keys: PathBuf::from("jwks.json"),
            jwt_issuer: None,
            jwt_audience: None,
            jwt_agent_claim: "sub".into(),
            jwt_leeway_ms: 30_000,
            max_failed_logins_per_agent: 5,
            max_failed_logins_per_peer: 500,
            failed_login_window_ms: 60_000,
            password_check_threads: 0,
        }
    }
}

/// `[tls]`: with `cert` and `key`, the port speaks only TLS 1.2 and 1.3.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Certificates (PEM) that sign the client certificates accepted.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Roles whose connections must present a certificate signed by `client_ca`.
    #[serde(default)]
    pub require_client_cert: Vec<String>,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens {
            desktop: "desk-secret".into(),
            dialer: "dialer-secret".into(),
            switch: "switch-secret".into(),
            admin: "admin-secret".into(),
            admin_read: None,
        }
    }
}

/// `[cluster]`: run as one node of an active/standby cluster whose authority is etcd. Absent: one
/// node on sled (the default). Needs a build with the `cluster` feature.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The etcd members' client URLs (`http://host:2379`).
    pub etcd: Vec<String>,
    /// This node's name, unique in the cluster (letters, digits, `.`, `_`, `-`).
    pub node_id: String,
    /// `host:port` where clients reach this node's `listen` port when it is active.
    pub advertise: String,
    /// `host:port` where browsers reach this node's HTTP listener when it is active; empty: the
    /// host of `advertise` with the port of `http_listen`.
    #[serde(default)]
    pub advertise_http: String,
    /// The election lease: a node that stops renewing it loses the active role this long after.
    #[serde(default = "ClusterConfig::default_lease_ms")]
    pub lease_ms: u64,
    /// The key prefix of this cluster's data in etcd (several clusters may share one etcd).
    #[serde(default = "ClusterConfig::default_prefix")]
    pub prefix: String,
    /// Operations etcd takes in one transaction: its `--max-txn-ops`. One group-commit batch is
    /// one transaction, so batches are kept below this; a bigger one is committed whole as one
    /// value and then folded into the state keys.
    #[serde(default = "ClusterConfig::default_max_txn_ops")]
    pub max_txn_ops: u64,
    /// How long a commit may wait for etcd before its requests are answered `unavailable`.
    #[serde(default = "ClusterConfig::default_commit_timeout_ms")]
    pub commit_timeout_ms: u64,
}

impl ClusterConfig {
    fn default_lease_ms() -> u64 {
        3000
    }
    fn default_prefix() -> String {
        "/baton".into()
    }
    fn default_max_txn_ops() -> u64 {
        4096
    }
    fn default_commit_timeout_ms() -> u64 {
        2000
    }

    /// Where browsers reach this node's HTTP listener when it is active.
    pub fn http_advertise(&self, http_listen: Option<SocketAddr>) -> Option<String> {
        if !self.advertise_http.is_empty() {
            return Some(self.advertise_http.clone());
        }
        let port = http_listen?.port();
        let host = self.advertise.rsplit_once(':').map(|(h, _)| h)?;
        Some(format!("{host}:{port}"))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.etcd.is_empty() {
            return invalid("`[cluster] etcd` lists no member: give the client URLs of the etcd members, like [\"http://10.0.0.1:2379\"]".into());
        }
        for url in &self.etcd {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return invalid(format!(
                    "`[cluster] etcd`: {url:?} is not a URL like \"http://10.0.0.1:2379\""
                ));
            }
        }
        let id_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if !id_ok(&self.node_id) {
            return invalid(format!(
                "`[cluster] node_id` = {:?}: use 1 to 64 letters, digits, `.`, `_` or `-`",
                self.node_id
            ));
        }
        for (key, addr) in [
            ("advertise", &self.advertise),
            ("advertise_http", &self.advertise_http),
        ] {
            if key == "advertise_http" && addr.is_empty() {
                continue;
            }
            let port_ok = addr
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                return invalid(format!(
                    "`[cluster] {key}` = {addr:?} is not `host:port` (where clients reach this node)"
                ));
            }
        }
        if !self.prefix.starts_with('/') || self.prefix.ends_with('/') {
            return invalid(format!(
                "`[cluster] prefix` = {:?}: start it with `/` and do not end it with one, like \"/baton\"",
                self.prefix
            ));
        }
        Bound::new(
            "cluster.lease_ms",
            self.lease_ms,
            2000,
            60_000,
            "etcd grants leases of 2 s at least; longer means a slower takeover",
        )
        .check()?;
        Bound::new(
            "cluster.max_txn_ops",
            self.max_txn_ops,
            128,
            1_000_000,
            "etcd's own default is 128; set it to etcd's --max-txn-ops",
        )
        .check()?;
        Bound::new(
            "cluster.commit_timeout_ms",
            self.commit_timeout_ms,
            100,
            60_000,
            "how long requests may wait for etcd",
        )
        .check()
    }
}

/// The server's whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the server listens on.
    pub listen: SocketAddr,
    /// Address of the HTTP listener (WebSocket desktops at `/ws`, the desktop page, the SDK);
    /// empty: no HTTP listener.
    pub http_listen: String,
    /// Origins (`scheme://host[:port]`) whose pages may open a WebSocket, besides the server's
    /// own origin.
    pub allowed_origins: Vec<String>,
    /// Directory of the embedded sled database.
    pub data_dir: PathBuf,
    /// Largest frame body accepted or sent, in bytes.
    pub max_frame_bytes: usize,
    /// Connections served at once; one more gets `Error{code:"overloaded"}` and is closed.
    pub max_connections: usize,
    /// Time a new connection has to send `Hello`.
    pub handshake_timeout_ms: u64,
    /// Heartbeat period announced in `Welcome`; a connection silent for three periods is dead.
    pub heartbeat_ms: u64,
    /// How long a desktop that dropped keeps its agent session.
    pub resume_grace_ms: u64,
    /// How long a record may have no holder before it goes back to the dialer as `stale`.
    pub orphan_timeout_ms: u64,
    /// Answers owed to one connection (frames queued plus requests with the engine) before the
    /// server stops reading its requests (backpressure). A client whose queue reaches twice this,
    /// or that takes nothing for 3 heartbeats while held off, has stopped reading and is dropped.
    pub outbound_queue_frames: usize,
    /// Audit entries kept on disk; older ones are trimmed. 0 keeps every entry.
    pub audit_retention_entries: u64,
    /// How long a final record stays in memory after it became final; later requests naming it
    /// read it back from the store.
    pub final_record_memory_ms: u64,
    /// Final records kept in memory at most; past it the oldest leave first.
    pub max_final_records_in_memory: u64,
    /// A call with no telephony event for this long is dropped (the switch never ended it).
    pub call_idle_timeout_ms: u64,
    /// A final record is deleted from the store this long after it became final. 0 keeps final
    /// records for ever.
    pub final_record_retention_ms: u64,
    /// Audit entries of reads and refusals waiting in memory to be written at most (they are
    /// written every 20 ms); past it (a disk that stalls) reads are refused with `unavailable`.
    pub max_deferred_audit_entries: u64,
    /// Memory the embedded store may use to cache its pages, in bytes.
    pub store_cache_bytes: u64,
    /// Audit tails one connection may run at once; one more is refused with
    /// `Error{code:"overloaded"}`. Each tail is a task and a live-feed subscription, so their
    /// number is bounded like everything else a client can make the server hold.
    pub max_audit_tails_per_connection: usize,
    pub tokens: Tokens,
    pub auth: AuthConfig,
    pub tls: Option<TlsConfig>,
    pub cluster: Option<ClusterConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7300".parse().expect("valid literal address"),
            http_listen: "127.0.0.1:7380".into(),
            allowed_origins: Vec::new(),
            data_dir: PathBuf::from("data"),
            max_frame_bytes: 65536,
            max_connections: 10000,
            handshake_timeout_ms: 5000,
            heartbeat_ms: 5000,
            resume_grace_ms: 30000,
            orphan_timeout_ms: 120000,
            outbound_queue_frames: 1024,
            audit_retention_entries: 0,
            final_record_memory_ms: 60_000,
            max_final_records_in_memory: 50_000,
            call_idle_timeout_ms: 4 * 3_600_000,
            final_record_retention_ms: 0,
            max_deferred_audit_entries: 100_000,
            store_cache_bytes: 256 * 1024 * 1024,
            max_audit_tails_per_connection: 4,
            tokens: Tokens::default(),
            auth: AuthConfig::default(),
            tls: None,
            cluster: None,
        }
    }
}

/// Longest timer accepted: a year. Deadlines are the current time plus a timer in milliseconds,
/// so nothing near `u64::MAX` may get in; and no call-centre timer is sensibly longer.
const MAX_TIMER_MS: u64 = 365 * 86_400_000;
/// A record's data and context may take `max_frame_bytes - 1024` (the rest is for the envelope of
/// the push that carries them); 4 KiB leaves a useful 3 KiB.
const MIN_FRAME_BYTES: u64 = 4096;
/// Every connection may have two queues' worth of frames this large waiting; 64 MiB is already
/// far beyond any calling-list record.
const MAX_FRAME_BYTES: u64 = 64 * 1024 * 1024;

/// One numeric key with its allowed range.
struct Bound {
    key: &'static str,
    value: u64,
    min: u64,
    max: u64,
    why: &'static str,
}

impl Bound {
    fn new(key: &'static str, value: u64, min: u64, max: u64, why: &'static str) -> Bound {
        Bound {
            key,
            value,
            min,
            max,
            why,
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        if (self.min..=self.max).contains(&self.value) {
            return Ok(());
        }
        Err(ConfigError::Invalid(format!(
            "`{}` = {} is out of range: allowed {} to {} ({})",
            self.key, self.value, self.min, self.max, self.why
        )))
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Parses a TOML document and checks the values make sense together.
    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Loads `path`; the file must exist.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Loads `path` if it exists, otherwise the embedded defaults.
    pub fn load_or_default(path: &Path) -> Result<Config, ConfigError> {
        if path.exists() {
            Config::load(path)
        } else {
            Ok(Config::default())
        }
    }

    /// Rejects values that cannot work, naming the key and its allowed range, rather than
    /// failing later at run time (a deadline that overflows, a frame too small for any record,
    /// a limit of zero).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for bound in self.bounds() {
            bound.check()?;
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        self.validate_security()
    }

    /// The identity and transport keys: modes that fit the listeners, what each mode needs, and
    /// no well-known secret on a port other machines can reach.
    /// The HTTP listener's address, if there is one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        (!self.http_listen.is_empty())
            .then(|| self.http_listen.parse().ok())
            .flatten()
    }

    fn validate_http(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !self.http_listen.is_empty() && self.http_listen.parse::<SocketAddr>().is_err() {
            return invalid(format!(
                "`http_listen` = {:?} is not an address like \"127.0.0.1:7380\" (or \"\" for no \
                 HTTP listener)",
                self.http_listen
            ));
        }
        for origin in &self.allowed_origins {
            let well_formed = ["http://", "https://"].iter().any(|scheme| {
                origin
                    .strip_prefix(scheme)
                    .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
            });
            if !well_formed {
                return invalid(format!(
                    "`allowed_origins`: {origin:?} is not an origin: write scheme://host[:port], \
                     as a browser sends it, with no path or trailing slash (\"https://desk.example:8443\")"
                ));
            }
        }
        Ok(())
    }

    fn validate_security(&self) -> Result<(), ConfigError> {
        self.validate_http()?;
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let exposed_addr = std::iter::once(("listen", self.listen))
            .chain(self.http_addr().map(|a| ("http_listen", a)))
            .find(|(_, a)| !a.ip().is_loopback());
        if let Some((key, addr)) = exposed_addr.filter(|_| self.auth.agents == AgentAuth::Open) {
            return invalid(format!(
                "`[auth] agents = \"open\"` trusts any agent id a desktop sends, so it is for \
                 loopback only, but `{key}` = {addr} is reachable from other machines: set \
                 `agents = \"directory\"` or `\"jwt\"` (see README, Securing Baton), or listen on \
                 127.0.0.1"
            ));
        }
        if let Some((listener, addr)) = exposed_addr {
            let defaults = Tokens::default();
            let t = &self.tokens;
            for (key, value, default) in [
                ("dialer", &t.dialer, &defaults.dialer),
                ("switch", &t.switch, &defaults.switch),
                ("admin", &t.admin, &defaults.admin),
            ] {
                if value == default {
                    return invalid(format!(
                        "`[tokens] {key}` is still the built-in default, which everybody knows, \
                         and `{listener}` = {addr} is reachable from other machines: set a secret \
                         of your own"
                    ));
                }
            }
        }
        let t = &self.tokens;
        for (key, value) in [
            ("desktop", Some(&t.desktop)),
            ("dialer", Some(&t.dialer)),
            ("switch", Some(&t.switch)),
            ("admin", Some(&t.admin)),
            ("admin_read", t.admin_read.as_ref()),
        ] {
            if value.is_some_and(|v| v.is_empty()) {
                return invalid(format!("`[tokens] {key}` must not be empty"));
            }
        }
        if t.admin_read.as_ref() == Some(&t.admin) {
            return invalid(
                "`[tokens] admin_read` is the same as `admin`: a read-only token must differ"
                    .into(),
            );
        }
        if self.auth.agents == AgentAuth::Jwt {
            for (key, value) in [
                ("jwt_issuer", &self.auth.jwt_issuer),
                ("jwt_audience", &self.auth.jwt_audience),
            ] {
                if value.as_deref().unwrap_or("").is_empty() {
                    return invalid(format!(
                        "`[auth] {key}` is required with `agents = \"jwt\"`: a token is only \
                         accepted from the centre's own identity provider, for Baton"
                    ));
                }
            }
            if self.auth.jwt_agent_claim.is_empty() {
                return invalid("`[auth] jwt_agent_claim` must not be empty".into());
            }
        }
        if let Some(tls) = &self.tls {
            for role in &tls.require_client_cert {
                if crate::messages::Role::parse(role).is_none() {
                    return invalid(format!(
                        "`[tls] require_client_cert`: unknown role `{role}` (expected desktop, \
                         dialer, switch or admin)"
                    ));
                }
            }
            if !tls.require_client_cert.is_empty() && tls.client_ca.is_none() {
                return invalid(
                    "`[tls] require_client_cert` needs `client_ca`: the certificates that sign \
                     the client certificates"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// Every numeric key with its allowed range and the reason for it.
    fn bounds(&self) -> [Bound; 20] {
        let n = |v: usize| v as u64;
        [
            Bound::new("max_frame_bytes", n(self.max_frame_bytes), MIN_FRAME_BYTES, MAX_FRAME_BYTES,
                "a frame must hold a record's data and context plus 1 KiB of envelope, and fit the 4-byte header with room to spare"),
            Bound::new("max_connections", n(self.max_connections), 1, 1_000_000,
                "at least one client must be able to connect"),
            Bound::new("handshake_timeout_ms", self.handshake_timeout_ms, 10, MAX_TIMER_MS,
                "a client needs time to send Hello"),
            Bound::new("heartbeat_ms", self.heartbeat_ms, 10, MAX_TIMER_MS,
                "a connection silent for 3 x heartbeat_ms is closed"),
            Bound::new("resume_grace_ms", self.resume_grace_ms, 0, MAX_TIMER_MS,
                "a deadline past a year overflows nothing but helps nobody; 0 logs an agent out as soon as its desktop drops"),
            Bound::new("orphan_timeout_ms", self.orphan_timeout_ms, 0, MAX_TIMER_MS,
                "0 returns an unheld record to the dialer at once"),
            Bound::new("outbound_queue_frames", n(self.outbound_queue_frames), 8, 1_048_576,
                "a client must be able to have a few answers and pushes queued"),
            Bound::new("audit_retention_entries", self.audit_retention_entries, 0, u64::MAX / 2,
                "0 keeps every entry"),
            Bound::new("final_record_memory_ms", self.final_record_memory_ms, 0, MAX_TIMER_MS,
                "0 lets final records leave memory at the next timer tick"),
            Bound::new("max_final_records_in_memory", self.max_final_records_in_memory, 0, 100_000_000,
                "0 keeps no final record in memory"),
            Bound::new("call_idle_timeout_ms", self.call_idle_timeout_ms, 1_000, MAX_TIMER_MS,
                "a call must live long enough to be answered and transferred"),
            Bound::new("max_deferred_audit_entries", self.max_deferred_audit_entries, 10_000, 100_000_000,
                "reads must not be refused while the disk merely catches up: entries are written every 20 ms"),
            Bound::new("final_record_retention_ms", self.final_record_retention_ms, 0, 10 * MAX_TIMER_MS,
                "0 keeps final records for ever"),
            Bound::new("max_audit_tails_per_connection", n(self.max_audit_tails_per_connection), 1, 1024,
                "an admin connection must be able to run a tail"),
            Bound::new("store_cache_bytes", self.store_cache_bytes, 1 << 20, 1 << 40,
                "the store needs some memory for its pages"),
            Bound::new("auth.jwt_leeway_ms", self.auth.jwt_leeway_ms, 0, 600_000,
                "clocks a few seconds apart need some; ten minutes would keep expired tokens alive"),
            Bound::new("auth.max_failed_logins_per_agent", self.auth.max_failed_logins_per_agent.into(), 1, 1_000,
                "guessing passwords must stay slow"),
            Bound::new("auth.max_failed_logins_per_peer", self.auth.max_failed_logins_per_peer.into(), 1, 1_000_000,
                "a whole centre may log in from one NAT address"),
            Bound::new("auth.failed_login_window_ms", self.auth.failed_login_window_ms, 1_000, 86_400_000,
                "the window over which failures are counted"),
            Bound::new("auth.password_check_threads", n(self.auth.password_check_threads), 0, 256,
                "0 means one per core; each check in progress holds 19 MiB"),
        ]
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// A connection that sends nothing for this long is considered dead (3 heartbeats).
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.saturating_mul(3))
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_contract_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.listen.port(), 7300);
        assert_eq!(c.max_frame_bytes, 65536);
        assert_eq!(c.tokens.switch, "switch-secret");
    }

    #[test]
    fn unknown_key_is_an_error() {
        assert!(Config::from_toml("max_frame_byte = 10").is_err());
    }

    #[test]
    fn zero_heartbeat_is_rejected() {
        let c = Config::from_toml("heartbeat_ms = 0").unwrap();
        assert!(c.validate().is_err());
    }

    /// Each value that cannot work is refused, and the message names the key and the range.
    #[test]
    fn values_that_cannot_work_are_refused_with_key_and_range() {
        let cases = [
            ("max_frame_bytes = 1000", "max_frame_bytes"),
            ("max_frame_bytes = 4294967296", "max_frame_bytes"),
            ("max_connections = 0", "max_connections"),
            ("handshake_timeout_ms = 0", "handshake_timeout_ms"),
            ("heartbeat_ms = 9223372036854775807", "heartbeat_ms"),
            ("resume_grace_ms = 9223372036854775807", "resume_grace_ms"),
            (
                "orphan_timeout_ms = 9223372036854775807",
                "orphan_timeout_ms",
            ),
            ("outbound_queue_frames = 0", "outbound_queue_frames"),
            (
                "final_record_memory_ms = 9223372036854775807",
                "final_record_memory_ms",
            ),
            ("call_idle_timeout_ms = 0", "call_idle_timeout_ms"),
            (
                "max_deferred_audit_entries = 0",
                "max_deferred_audit_entries",
            ),
            ("store_cache_bytes = 0", "store_cache_bytes"),
            (
                "max_audit_tails_per_connection = 0",
                "max_audit_tails_per_connection",
            ),
        ];
        for (text, key) in cases {
            let c = Config::from_toml(text).unwrap();
            let message = match c.validate() {
                Err(ConfigError::Invalid(m)) => m,
                other => panic!("{text}: expected Invalid, got {other:?}"),
            };
            assert!(
                message.starts_with(&format!("`{key}` = ")) && message.contains("allowed"),
                "{text}: {message}"
            );
        }
    }

    #[test]
    fn the_edges_of_each_range_are_accepted() {
        let text = "max_frame_bytes = 4096\nresume_grace_ms = 0\norphan_timeout_ms = 0\n\
                    final_record_memory_ms = 0\nmax_final_records_in_memory = 0\n\
                    outbound_queue_frames = 8\nheartbeat_ms = 31536000000\n";
        Config::from_toml(text).unwrap().validate().unwrap();
    }

    #[test]
    fn committed_config_parses_and_is_valid() {
        let text = include_str!("../config.toml");
        let c = Config::from_toml(text).unwrap();
        c.validate().unwrap();
    }
}
