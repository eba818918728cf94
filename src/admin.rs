//! The admin command line: `baton status`, `baton record R`, `baton audit tail` (whose reader,
//! [`run_tail`], `baton audit timeline` shares: see [`crate::timeline`]).
//!
//! Each command opens an admin connection, asks, and prints either aligned human-readable lines or
//! one JSON object per line (`--json`, for jq). The address and admin token come from the same
//! config file the server reads, so an operator types nothing secret on the command line.

use crate::client::{Client, ClientError, ClientTls, TlsArgs};
use crate::config::Config;
use crate::messages::*;
use std::io::Write;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Duration;

/// Where and how to reach the server as an admin.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The nodes of a cluster (`host:port` each), tried in turn for the active one; empty: `addr`
    /// alone (whose `not_active` answer, if it is a standby, still leads to the active node).
    pub nodes: Vec<String>,
    pub token: String,
    /// Set when the server speaks TLS.
    pub tls: Option<ClientTls>,
}

impl Target {
    /// The server's address as a client dials it: a wildcard listen address becomes loopback.
    pub fn from_config(config: &crate::config::Config) -> Target {
        let mut addr = config.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        Target {
            addr,
            nodes: Vec::new(),
            token: config.tokens.admin.clone(),
            tls: None,
        }
    }

    /// Connects as an admin.
    pub async fn connect(&self) -> Result<Client, ClientError> {
        self.connect_as(Role::Admin, &self.token).await
    }

    /// Connects to the same server with another role's token.
    pub async fn connect_as(&self, role: Role, token: &str) -> Result<Client, ClientError> {
        let nodes = if self.nodes.is_empty() {
            vec![self.addr.to_string()]
        } else {
            self.nodes.clone()
        };
        // One round through the nodes, following a standby's pointer to the active one.
        Client::connect_active(&nodes, self.tls.as_ref(), role, token, Duration::ZERO)
            .await
            .map(|(client, _)| client)
    }
}

pub(crate) fn refused(msg: ServerMsg) -> ClientError {
    match msg {
        ServerMsg::Error { code, message, .. } => ClientError::Refused { code, message },
        other => ClientError::Refused {
            code: ErrorCode::BadRequest,
            message: format!("unexpected answer: {other:?}"),
        },
    }
}

/// `baton status`.
pub async fn status(target: &Target, json: bool, out: &mut impl Write) -> Result<(), ClientError> {
    let mut c = target.connect().await?;
    let msg = c.request(Request::Status).await?;
    if !matches!(msg, ServerMsg::StatusReport { .. }) {
        return Err(refused(msg));
    }
    let value = serde_json::to_value(&msg)?;
    if json {
        writeln!(out, "{value}").ok();
        return Ok(());
    }
    if let Some(obj) = value.as_object() {
        for (k, v) in obj.iter().filter(|(k, _)| k.as_str() != "type") {
            match v.as_object() {
                // A group of figures (`startup`) prints one line per figure.
                Some(group) => {
                    for (sub, v) in group {
                        writeln!(out, "{:<24} {v}", format!("{k}.{sub}")).ok();
                    }
                }
                None => {
                    writeln!(out, "{k:<24} {v}").ok();
                }
            }
        }
    }
    Ok(())
}

/// `baton record R`.
pub async fn record(
    target: &Target,
    record: &str,
    json: bool,
    out: &mut impl Write,
) -> Result<(), ClientError> {
    let mut c = target.connect().await?;
    let msg = c
        .request(Request::RecordInfo(RecordRef {
            record: record.to_owned(),
        }))
        .await?;
    let ServerMsg::RecordReport {
        record,
        state,
        holders,
        call,
        final_,
        version,
        context,
    } = &msg
    else {
        return Err(refused(msg));
    };
    if json {
        writeln!(out, "{}", serde_json::to_value(&msg)?).ok();
        return Ok(());
    }
    writeln!(out, "record   {record}").ok();
    writeln!(out, "state    {state}").ok();
    writeln!(out, "call     {}", call.as_deref().unwrap_or("-")).ok();
    if let Some(v) = version {
        writeln!(out, "version  {v}").ok();
    }
    if holders.is_empty() {
        writeln!(out, "holders  -").ok();
    }
    for (i, h) in holders.iter().enumerate() {
        let label = if i == 0 { "holders" } else { "" };
        writeln!(out, "{label:<8} {:<12} {}", h.agent, h.access.as_str()).ok();
    }
    if let Some(f) = final_ {
        writeln!(
            out,
            "final    {} by {} at {}",
            f.outcome.as_str(),
            f.by.as_deref().unwrap_or("server"),
            f.at
        )
        .ok();
    }
    if let Some(ctx) = context {
        if let Some(cr) = &ctx.call_result {
            writeln!(out, "result   {cr}").ok();
        }
        if !ctx.fields.is_empty() {
            writeln!(
                out,
                "fields   {}",
                serde_json::Value::Object(ctx.fields.clone())
            )
            .ok();
        }
    }
    Ok(())
}

/// Options of `baton audit tail`.
#[derive(Debug, Clone, Default)]
pub struct TailOptions {
    pub from_seq: Option<u64>,
    pub follow: bool,
    pub record: Option<String>,
    pub agent: Option<String>,
    pub json: bool,
}

/// One audit entry as an aligned line: seq, time, kind, record, agent, then the details.
pub fn format_entry(e: &AuditEntry) -> String {
    let mut details = Vec::new();
    if let Some(dn) = &e.dn {
        details.push(format!("dn={dn}"));
    }
    if let Some(call) = &e.call {
        details.push(format!("call={call}"));
    }
    match (e.previous, e.access) {
        (Some(p), Some(a)) => details.push(format!("{}->{}", p.as_str(), a.as_str())),
        (None, Some(a)) => details.push(format!("access={}", a.as_str())),
        _ => {}
    }
    if let Some(r) = &e.request {
        details.push(format!("request={r}"));
    }
    if let Some(c) = e.code {
        details.push(format!("code={}", c.as_str()));
    }
    if let Some(c) = &e.cause {
        details.push(format!("cause={c:?}"));
    }
    format!(
        "{:>8}  {}  {:<10}  {:<14}  {:<10}  {}",
        e.seq,
        e.ts,
        e.kind.as_str(),
        e.record.as_deref().unwrap_or("-"),
        e.agent.as_deref().unwrap_or("-"),
        details.join(" ")
    )
}

/// One frame of an audit tail other than its end.
#[derive(Debug, Clone, PartialEq)]
pub enum TailItem {
    /// An entry that matched the tail's filters.
    Entry(AuditEntry),
    /// Entries `from_seq..=to_seq` were removed by retention before the tail reached them.
    Trimmed { from_seq: u64, to_seq: u64 },
}

/// Runs `tail` on `c` and hands every entry and trimmed gap to `each`, in `seq` order.
///
/// Returns the `AuditEnd`'s `last_seq` when the server ends the tail (`follow:false`), or `None`
/// when `each` stopped it by returning `Break`; a following tail otherwise runs until the
/// connection fails. A refusal (`Error`, or any other answer) comes back as
/// [`ClientError::Refused`].
pub async fn run_tail(
    c: &mut Client,
    tail: AuditTail,
    mut each: impl FnMut(TailItem) -> ControlFlow<()>,
) -> Result<Option<u64>, ClientError> {
    let follow = tail.follow;
    let r = c.send(&Request::AuditTail(tail)).await?;
    if follow {
        // Entries may be minutes apart; keep the connection alive meanwhile.
        c.set_timeout(std::time::Duration::from_millis(c.heartbeat_ms.max(100)));
    }
    // A filtered tail over a long log may scan for a while before its next match, sending
    // nothing meanwhile. A quiet spell therefore earns a `Ping`; only a second quiet spell with
    // not even the `Pong` back means the server is gone. A following tail pings for ever.
    let mut pinged = false;
    loop {
        let msg = match c.next_message().await {
            Ok(env) => {
                pinged = false;
                if env.r#ref != Some(r) {
                    continue; // a Pong, or a push this connection does not care about
                }
                env.msg
            }
            Err(ClientError::Timeout(_)) if follow || !pinged => {
                c.send(&Request::Ping).await?;
                pinged = true;
                continue;
            }
            Err(e) => return Err(e),
        };
        let item = match msg {
            ServerMsg::Audit(e) => TailItem::Entry(e),
            ServerMsg::AuditTrimmed { from_seq, to_seq } => TailItem::Trimmed { from_seq, to_seq },
            ServerMsg::AuditEnd { last_seq } => return Ok(Some(last_seq)),
            other => return Err(refused(other)),
        };
        if each(item).is_break() {
            return Ok(None);
        }
    }
}

/// `baton audit tail`: prints entries until `AuditEnd` (or for ever with `follow`).
pub async fn audit_tail(
    target: &Target,
    opts: &TailOptions,
    out: &mut impl Write,
) -> Result<(), ClientError> {
    let mut c = target.connect().await?;
    let tail = AuditTail {
        from_seq: opts.from_seq,
        follow: opts.follow,
        record: opts.record.clone(),
        agent: opts.agent.clone(),
    };
    let mut failed = None;
    run_tail(&mut c, tail, |item| {
        let line = match item {
            TailItem::Entry(e) if opts.json => match serde_json::to_string(&e) {
                Ok(line) => line,
                Err(e) => {
                    failed = Some(e);
                    return ControlFlow::Break(());
                }
            },
            TailItem::Entry(e) => format_entry(&e),
            TailItem::Trimmed { from_seq, to_seq } if opts.json => {
                serde_json::json!({"trimmed": {"from_seq": from_seq, "to_seq": to_seq}}).to_string()
            }
            TailItem::Trimmed { from_seq, to_seq } => format!(
                "{:>8}  entries {from_seq}..={to_seq} were trimmed by retention",
                "-"
            ),
        };
        if writeln!(out, "{line}").is_err() {
            return ControlFlow::Break(()); // stdout closed (e.g. piped into head)
        }
        out.flush().ok();
        ControlFlow::Continue(())
    })
    .await?;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// How an admin command reaches the server: the config file, or explicit flags.
#[derive(clap::Args)]
pub struct AdminConn {
    /// Configuration file to read the address and admin token from.
    #[arg(long, default_value = "config.toml")]
    pub config: PathBuf,
    /// Server address (overrides the config's `listen`).
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// The nodes of a cluster, `host:port` separated by commas: the active one is found among
    /// them (overrides `--addr`).
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Admin token (overrides the config's `tokens.admin`; prefer the config file, which
    /// other users of the machine cannot read in the process list).
    #[arg(long)]
    pub token: Option<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
}

impl AdminConn {
    /// Where to connect and with which token: the config's, overridden by the flags.
    pub fn target(&self) -> anyhow::Result<Target> {
        let config = Config::load_or_default(&self.config)?;
        let mut target = Target::from_config(&config);
        if let Some(addr) = self.addr {
            target.addr = addr;
        }
        if let Some(token) = &self.token {
            target.token = token.clone();
        }
        target.nodes = self.nodes.clone();
        target.tls = self.tls.client_tls(config.tls.is_some())?;
        Ok(target)
    }
}
