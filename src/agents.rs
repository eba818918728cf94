//! `baton agents`: manage the agents file of `directory` mode. Passwords are read without echo
//! from the terminal (twice), or from standard input with `--password-stdin` for scripts; never
//! from the command line, where other users of the machine could read them in the process list.
//! The running server picks the change up within seconds (it watches the file) or on SIGHUP.

use crate::auth::directory::{hash_password, AgentEntry, Directory, MIN_PASSWORD_CHARS};
use anyhow::{bail, Context};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum AgentsCommand {
    /// Add agents, all with the same new password (each gets its own salt).
    Add {
        #[arg(required = true)]
        agents: Vec<String>,
        /// A DN the agents may log in on (repeat it; none means any DN).
        #[arg(long = "dn")]
        dns: Vec<String>,
        #[command(flatten)]
        input: PasswordInput,
    },
    /// Set an agent's password.
    Passwd {
        agent: String,
        #[command(flatten)]
        input: PasswordInput,
    },
    /// Set the DNs an agent may log in on (none: any DN).
    Dns { agent: String, dns: Vec<String> },
    /// Refuse the agent's logins from now on (its password is kept).
    Disable { agent: String },
    /// Accept the agent's logins again.
    Enable { agent: String },
    /// Delete agents from the file.
    Remove {
        #[arg(required = true)]
        agents: Vec<String>,
    },
    /// List the agents with their DNs and state (never their hashes).
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub struct PasswordInput {
    /// Read the password from the first line of standard input instead of the terminal.
    #[arg(long)]
    pub password_stdin: bool,
}

/// Which agents file: `--file`, or the `[auth] directory` of the config file.
#[derive(clap::Args)]
pub struct AgentsFile {
    /// The agents file (default: `[auth] directory` of the config file).
    #[arg(long, global = true)]
    pub file: Option<PathBuf>,
    /// Configuration file to read `[auth] directory` from.
    #[arg(long, default_value = "config.toml", global = true)]
    pub config: PathBuf,
}

impl AgentsFile {
    pub fn path(&self) -> anyhow::Result<PathBuf> {
        match &self.file {
            Some(f) => Ok(f.clone()),
            None => Ok(crate::config::Config::load_or_default(&self.config)?
                .auth
                .directory),
        }
    }
}

fn read_password(input: &PasswordInput, stdin: &mut dyn BufRead) -> anyhow::Result<String> {
    let password = if input.password_stdin {
        let mut line = String::new();
        stdin
            .read_line(&mut line)
            .context("cannot read standard input")?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        let first = rpassword::prompt_password("New password: ")
            .context("cannot read the password from the terminal (use --password-stdin)")?;
        let second = rpassword::prompt_password("Again: ")?;
        if first != second {
            bail!("the two passwords differ; nothing changed");
        }
        first
    };
    if password.chars().count() < MIN_PASSWORD_CHARS {
        bail!("a password needs at least {MIN_PASSWORD_CHARS} characters; nothing changed");
    }
    Ok(password)
}

fn load_or_new(path: &Path) -> anyhow::Result<Directory> {
    if path.exists() {
        Ok(Directory::load(path)?)
    } else {
        Ok(Directory::default())
    }
}

fn entry<'a>(dir: &'a mut Directory, agent: &str) -> anyhow::Result<&'a mut AgentEntry> {
    dir.agents
        .get_mut(agent)
        .with_context(|| format!("no agent {agent} in the file"))
}

/// Runs one `baton agents` command on the file at `path`.
pub fn run(
    command: AgentsCommand,
    path: &Path,
    stdin: &mut dyn BufRead,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut dir = load_or_new(path)?;
    let done = match command {
        AgentsCommand::Add { agents, dns, input } => {
            for agent in &agents {
                if agent.is_empty() {
                    bail!("an agent id must not be empty");
                }
                if dir.agents.contains_key(agent) {
                    bail!("agent {agent} is already in the file (use `baton agents passwd`)");
                }
            }
            let password = read_password(&input, stdin)?;
            for agent in &agents {
                let entry = AgentEntry {
                    password: hash_password(&password),
                    dns: dns.clone(),
                    disabled: false,
                };
                dir.agents.insert(agent.clone(), entry);
            }
            format!("added {} agent(s)", agents.len())
        }
        AgentsCommand::Passwd { agent, input } => {
            entry(&mut dir, &agent)?;
            let password = read_password(&input, stdin)?;
            entry(&mut dir, &agent)?.password = hash_password(&password);
            format!("password of agent {agent} changed")
        }
        AgentsCommand::Dns { agent, dns } => {
            let any = dns.is_empty();
            entry(&mut dir, &agent)?.dns = dns;
            if any {
                format!("agent {agent} may log in on any DN")
            } else {
                format!("agent {agent}'s DNs set")
            }
        }
        AgentsCommand::Disable { agent } => {
            entry(&mut dir, &agent)?.disabled = true;
            format!("agent {agent} disabled")
        }
        AgentsCommand::Enable { agent } => {
            entry(&mut dir, &agent)?.disabled = false;
            format!("agent {agent} enabled")
        }
        AgentsCommand::Remove { agents } => {
            for agent in &agents {
                if dir.agents.remove(agent).is_none() {
                    bail!("no agent {agent} in the file; nothing changed");
                }
            }
            format!("removed {} agent(s)", agents.len())
        }
        AgentsCommand::List { json } => {
            for (agent, e) in &dir.agents {
                if json {
                    let line = serde_json::json!({
                        "agent": agent, "dns": e.dns, "disabled": e.disabled,
                    });
                    writeln!(out, "{line}")?;
                } else {
                    let dns = if e.dns.is_empty() {
                        "any DN".to_owned()
                    } else {
                        e.dns.join(",")
                    };
                    let state = if e.disabled { "disabled" } else { "enabled" };
                    writeln!(out, "{agent:<20} {state:<9} {dns}")?;
                }
            }
            return Ok(());
        }
    };
    dir.save(path)?;
    writeln!(out, "{done} in {}", path.display())?;
    Ok(())
}
