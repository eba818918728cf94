//! Agent identity: what a desktop's `Login` proves, checked before the engine sees the login.
//!
//! The engine never checks a password or a signature: the connection's reader asks the
//! [`Authenticator`] and hands the engine the answer as [`LoginProof`]; the engine then audits a
//! refusal as `login_failed` and answers it in the connection's order. Password checks (argon2id,
//! tens of milliseconds each) run on blocking threads, at most `password_check_threads` at once,
//! so the async threads and the engine never wait on a hash.
//!
//! - `directory`: the agents file and password hashing (also used by `baton agents`);
//! - `jwt`: bearer tokens checked with the identity provider's JWKS;
//! - `throttle`: failed logins per agent id and per peer address.

pub mod directory;
pub mod jwt;
pub mod throttle;

use crate::config::{AgentAuth, AuthConfig};
use crate::messages::{Login, LoginFailure, LoginProof};
use directory::{AgentEntry, Directory};
use jwt::{JwtKeys, JwtRules};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;
use throttle::Throttle;
use tokio::sync::Semaphore;
use tracing::{info, warn};

/// Compares two secrets in time that depends on their lengths only, not on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The file a mode reads its credentials from, and when it was last read.
struct Source {
    path: PathBuf,
    stamp: Mutex<Option<(SystemTime, u64)>>,
}

impl Source {
    fn new(path: PathBuf) -> Source {
        Source {
            path,
            stamp: Mutex::new(None),
        }
    }

    fn current_stamp(&self) -> Option<(SystemTime, u64)> {
        let meta = std::fs::metadata(&self.path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    }

    /// Notes the file's present modification time and size as read.
    fn mark_read(&self) {
        *self.stamp.lock().expect("stamp lock") = self.current_stamp();
    }

    fn changed(&self) -> bool {
        let now = self.current_stamp();
        now.is_some() && now != *self.stamp.lock().expect("stamp lock")
    }
}

/// Why the credentials could not be loaded at start (the server does not start then).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(String);

/// Checks `Login` credentials for the configured mode. One per server, shared by its connections.
pub struct Authenticator {
    mode: AgentAuth,
    source: Option<Source>,
    directory: RwLock<Arc<Directory>>,
    keys: RwLock<Option<Arc<JwtKeys>>>,
    rules: Option<JwtRules>,
    throttle: Mutex<Throttle>,
    checks: Arc<Semaphore>,
    /// A hash of a random password with the default parameters: an unknown or disabled agent is
    /// checked against it, so that its refusal takes as long as a wrong password's.
    decoy: String,
}

impl Authenticator {
    /// Loads what the mode needs (the agents file, the JWKS file); an error stops the start.
    pub fn new(cfg: &AuthConfig) -> Result<Authenticator, AuthError> {
        let threads = match cfg.password_check_threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let source = match cfg.agents {
            AgentAuth::Open => None,
            AgentAuth::Directory => Some(Source::new(cfg.directory.clone())),
            AgentAuth::Jwt => Some(Source::new(cfg.jwt_keys.clone())),
        };
        let rules = (cfg.agents == AgentAuth::Jwt).then(|| JwtRules {
            issuer: cfg.jwt_issuer.clone().unwrap_or_default(),
            audience: cfg.jwt_audience.clone().unwrap_or_default(),
            agent_claim: cfg.jwt_agent_claim.clone(),
            leeway_ms: cfg.jwt_leeway_ms,
        });
        let decoy = if cfg.agents == AgentAuth::Directory {
            let random: [u8; 16] = rand::random();
            directory::hash_password(&format!("{random:?}"))
        } else {
            String::new()
        };
        let auth = Authenticator {
            mode: cfg.agents,
            source,
            directory: RwLock::new(Arc::new(Directory::default())),
            keys: RwLock::new(None),
            rules,
            throttle: Mutex::new(Throttle::new(
                cfg.max_failed_logins_per_agent,
                cfg.max_failed_logins_per_peer,
                cfg.failed_login_window_ms,
            )),
            checks: Arc::new(Semaphore::new(threads)),
            decoy,
        };
        auth.load().map_err(AuthError)?;
        Ok(auth)
    }

    pub fn mode(&self) -> AgentAuth {
        self.mode
    }

    /// Reads the mode's file again (SIGHUP). On error the credentials in use stay as they were.
    pub fn reload(&self) -> Result<(), String> {
        self.load()
    }

    /// Reads the mode's file again if it changed since it was last read; logs what happened.
    pub fn reload_if_changed(&self) {
        if self.source.as_ref().is_some_and(Source::changed) {
            match self.load() {
                Ok(()) => {}
                Err(e) => {
                    // Not again until it changes once more: one error line per bad edit.
                    if let Some(s) = &self.source {
                        s.mark_read();
                    }
                    warn!("{e}; keeping the credentials loaded before")
                }
            }
        }
    }

    fn load(&self) -> Result<(), String> {
        let Some(source) = &self.source else {
            return Ok(());
        };
        // Read the stamp first: an edit made while reading is then seen as a change next time.
        let stamp = source.current_stamp();
        match self.mode {
            AgentAuth::Open => {}
            AgentAuth::Directory => {
                let dir = Directory::load(&source.path).map_err(|e| e.to_string())?;
                let (agents, disabled) = (
                    dir.agents.len(),
                    dir.agents.values().filter(|a| a.disabled).count(),
                );
                *self.directory.write().expect("directory lock") = Arc::new(dir);
                info!(file = %source.path.display(), agents, disabled, "agents file loaded");
            }
            AgentAuth::Jwt => {
                let keys = JwtKeys::load(&source.path)?;
                info!(file = %source.path.display(), keys = keys.len(), "JWKS loaded");
                *self.keys.write().expect("keys lock") = Some(Arc::new(keys));
            }
        }
        *source.stamp.lock().expect("stamp lock") = stamp;
        Ok(())
    }

    /// What the login's credential proves. `open` mode checks nothing; a login with no
    /// credential is left to the engine, which takes it only as a resume of the agent's live
    /// session. Throttled agent ids and peers are refused without a check.
    pub async fn prove(&self, login: &Login, peer: IpAddr, now_ms: u64) -> LoginProof {
        if self.mode == AgentAuth::Open || (login.password.is_none() && login.jwt.is_none()) {
            return LoginProof::Unchecked;
        }
        let throttled =
            self.throttle
                .lock()
                .expect("throttle lock")
                .check(&login.agent, peer, now_ms);
        if let Err(wait) = throttled {
            return LoginProof::Refused {
                cause: LoginFailure::Throttled,
                retry_after_ms: Some(wait),
            };
        }
        let allowed = match self.mode {
            AgentAuth::Open => unreachable!("open mode returned above"),
            AgentAuth::Directory => self.check_password(login).await,
            AgentAuth::Jwt => self.check_jwt(login),
        };
        match allowed {
            Some(dns) if dns.is_empty() || dns.contains(&login.dn) => LoginProof::Verified,
            Some(_) => LoginProof::Refused {
                cause: LoginFailure::DnNotAllowed,
                retry_after_ms: None,
            },
            None => {
                self.throttle
                    .lock()
                    .expect("throttle lock")
                    .fail(&login.agent, peer, now_ms);
                LoginProof::Refused {
                    cause: LoginFailure::BadCredential,
                    retry_after_ms: None,
                }
            }
        }
    }

    /// The DNs the agent may use (empty: any) if the password is its own; `None` otherwise.
    /// Every path runs one hash check, the unknown and disabled agents' against the decoy.
    async fn check_password(&self, login: &Login) -> Option<Vec<String>> {
        let entry: Option<AgentEntry> = self
            .directory
            .read()
            .expect("directory lock")
            .agents
            .get(&login.agent)
            .cloned();
        let (hash, usable) = match &entry {
            Some(e) if !e.disabled => (e.password.clone(), true),
            Some(e) => (e.password.clone(), false),
            None => (self.decoy.clone(), false),
        };
        // A token sent in directory mode is checked like a wrong password.
        let password = login.password.clone().unwrap_or_default();
        let _turn = self.checks.acquire().await.ok()?;
        let matches =
            tokio::task::spawn_blocking(move || directory::verify_password(&hash, &password))
                .await
                .unwrap_or(false);
        (matches && usable).then(|| entry.map(|e| e.dns).unwrap_or_default())
    }

    /// Any DN (tokens carry no DN list) if the token vouches for this agent; `None` otherwise.
    fn check_jwt(&self, login: &Login) -> Option<Vec<String>> {
        let token = login.jwt.as_deref()?;
        let keys = self.keys.read().expect("keys lock").clone()?;
        let rules = self.rules.as_ref()?;
        let agent = keys.agent_of(token, rules)?;
        same_secret(&agent, &login.agent).then(Vec::new)
    }
}
