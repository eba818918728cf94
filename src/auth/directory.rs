//! The agents file of `directory` mode: one entry per agent with its argon2id password hash, the
//! DNs it may use (none listed: any) and whether it is disabled. `baton agents` writes it; the
//! server reads it at start, on SIGHUP and when it changes.
//!
//! ```toml
//! [agents.1042]
//! password = "$argon2id$v=19$m=19456,t=2,p=1$...$..."
//! dns = ["7001", "7002"]
//! ```

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, PasswordVerifier, Version};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// argon2id with OWASP's first recommended setting: 19 MiB of memory, 2 passes, 1 lane.
pub const MEMORY_KIB: u32 = 19 * 1024;
pub const PASSES: u32 = 2;
pub const LANES: u32 = 1;

/// Shortest password `baton agents` accepts.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// One agent of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    /// The argon2id hash, in the PHC string format (it carries its own salt and parameters).
    pub password: String,
    /// DNs the agent may log in on; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

impl AgentEntry {
    pub fn allows_dn(&self, dn: &str) -> bool {
        self.dns.is_empty() || self.dns.iter().any(|d| d == dn)
    }
}

/// The whole agents file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    #[serde(default)]
    pub agents: BTreeMap<String, AgentEntry>,
}

/// Why the agents file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("cannot read the agents file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid agents file {path}: {why}")]
    Invalid { path: String, why: String },
    #[error("cannot write the agents file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

impl Directory {
    /// Reads and checks the file: every hash must be an argon2id PHC string.
    pub fn load(path: &Path) -> Result<Directory, DirectoryError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| DirectoryError::Read {
            path: shown.clone(),
            source,
        })?;
        Directory::parse(&text).map_err(|why| DirectoryError::Invalid { path: shown, why })
    }

    pub fn parse(text: &str) -> Result<Directory, String> {
        let dir: Directory = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        for (agent, entry) in &dir.agents {
            if agent.is_empty() {
                return Err("an agent id must not be empty".into());
            }
            let hash = PasswordHash::new(&entry.password)
                .map_err(|e| format!("agent {agent}: `password` is not a password hash: {e}"))?;
            if hash.algorithm.as_str() != "argon2id" {
                return Err(format!(
                    "agent {agent}: the hash is {}, not argon2id",
                    hash.algorithm
                ));
            }
        }
        Ok(dir)
    }

    /// Writes the file atomically (a new file renamed over the old one), readable by its owner
    /// only: the hashes are not passwords, but nobody else needs them.
    pub fn save(&self, path: &Path) -> Result<(), DirectoryError> {
        let shown = path.display().to_string();
        let werr = |source| DirectoryError::Write {
            path: shown.clone(),
            source,
        };
        let body = toml::to_string_pretty(self).map_err(|e| DirectoryError::Invalid {
            path: shown.clone(),
            why: e.to_string(),
        })?;
        let text = format!(
            "# Baton agents for `[auth] agents = \"directory\"`. Managed with `baton agents`;\n\
             # the server reloads it on change and on SIGHUP.\n\n{body}"
        );
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
        let tmp = path.with_extension("toml.new");
        {
            use std::io::Write;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(&tmp).map_err(werr)?;
            file.write_all(text.as_bytes()).map_err(werr)?;
            file.sync_all().map_err(werr)?;
        }
        std::fs::rename(&tmp, path).map_err(werr)?;
        if let Some(dir) = dir {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

fn hasher() -> Argon2<'static> {
    let params = Params::new(MEMORY_KIB, PASSES, LANES, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password with a fresh random salt.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashes any password")
        .to_string()
}

/// Checks a password against a PHC hash, with the hash's own parameters. Takes tens of
/// milliseconds of one core: call it off the async threads.
pub fn verify_password(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let hash = hash_password("correct horse");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "correct hors"));
        assert!(!verify_password("not a hash", "correct horse"));
    }

    #[test]
    fn the_file_round_trips_and_refuses_what_is_not_argon2id() {
        let mut dir = Directory::default();
        dir.agents.insert(
            "1042".into(),
            AgentEntry {
                password: hash_password("secret-1042"),
                dns: vec!["7001".into()],
                disabled: false,
            },
        );
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("agents.toml");
        dir.save(&path).unwrap();
        assert_eq!(Directory::load(&path).unwrap(), dir);
        let entry = &dir.agents["1042"];
        assert!(entry.allows_dn("7001") && !entry.allows_dn("7002"));

        let bcrypt = "[agents.a]\npassword = \"$2b$12$abcdefghijklmnopqrstuuA1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6\"\n";
        assert!(Directory::parse(bcrypt).is_err());
        assert!(Directory::parse("[agents.a]\npassword = \"plain text\"\n").is_err());
        assert!(Directory::parse("[agents.a]\npasword = \"x\"\n").is_err());
    }
}
