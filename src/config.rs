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
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Tokens {
    pub desktop: String,
    pub dialer: String,
    pub switch: String,
    pub admin: String,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens {
            desktop: "desk-secret".into(),
            dialer: "dialer-secret".into(),
            switch: "switch-secret".into(),
            admin: "admin-secret".into(),
        }
    }
}

/// The server's whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the server listens on.
    pub listen: SocketAddr,
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
    /// Frames queued for one connection before it counts as not reading and is dropped.
    pub outbound_queue_frames: usize,
    /// Audit entries kept on disk; older ones are trimmed. 0 keeps every entry.
    pub audit_retention_entries: u64,
    /// Audit tails one connection may run at once; one more is refused with
    /// `Error{code:"overloaded"}`. Each tail is a task and a live-feed subscription, so their
    /// number is bounded like everything else a client can make the server hold.
    pub max_audit_tails_per_connection: usize,
    pub tokens: Tokens,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7300".parse().expect("valid literal address"),
            data_dir: PathBuf::from("data"),
            max_frame_bytes: 65536,
            max_connections: 10000,
            handshake_timeout_ms: 5000,
            heartbeat_ms: 5000,
            resume_grace_ms: 30000,
            orphan_timeout_ms: 120000,
            outbound_queue_frames: 1024,
            audit_retention_entries: 0,
            max_audit_tails_per_connection: 4,
            tokens: Tokens::default(),
        }
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

    /// Rejects values that would make the server unusable rather than failing later at run time.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_frame_bytes", self.max_frame_bytes as u64),
            ("max_connections", self.max_connections as u64),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("heartbeat_ms", self.heartbeat_ms),
            ("outbound_queue_frames", self.outbound_queue_frames as u64),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be greater than 0"
                )));
            }
        }
        if self.max_frame_bytes > u32::MAX as usize {
            return Err(ConfigError::Invalid(
                "max_frame_bytes must fit the 4-byte frame header".into(),
            ));
        }
        Ok(())
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

    #[test]
    fn committed_config_parses_and_is_valid() {
        let text = include_str!("../config.toml");
        let c = Config::from_toml(text).unwrap();
        c.validate().unwrap();
    }
}
