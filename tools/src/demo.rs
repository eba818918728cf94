//! `baton demo`: plays the switch link and the dialer against a running server, one step per
//! command, so that a person at the agent desktop (`/desk/`) can watch records pop, move and
//! finish. Each step connects with the config's switch and dialer tokens, sends its frames, waits
//! for their answers and disconnects; the server keeps the calls.

use anyhow::{bail, Context};
use baton::admin::Target;
use baton::client::Client;
use baton::config::Config;
use baton::messages::*;
use baton_kit::{attach_record, conferenced, established, ringing_full, transferred};
use clap::Subcommand;
use serde_json::json;

#[derive(Subcommand)]
pub enum DemoStep {
    /// A customer call carrying a new record rings on DN and is answered there: the agent
    /// logged in on DN gets the record with full access.
    Call {
        dn: String,
        /// The call's id (default: C-<time>).
        #[arg(long)]
        call: Option<String>,
        /// The record's handle (default: R-<time>).
        #[arg(long)]
        record: Option<String>,
        /// The customer's name shown on the record.
        #[arg(long, default_value = "Dana Reyes")]
        name: String,
    },
    /// The agent on FROM consults the agent on TO about CALL: the consultation call CALL-c rings
    /// on TO and, with --answer, is answered (TO's agent gets the record read-only).
    Consult {
        call: String,
        from: String,
        to: String,
        #[arg(long)]
        answer: bool,
    },
    /// Completes the transfer of CALL from FROM to TO: two-step (merging the consultation
    /// CALL-c) or, with --single-step, blind.
    Transfer {
        call: String,
        from: String,
        to: String,
        #[arg(long)]
        single_step: bool,
    },
    /// Conferences DN into CALL (through the consultation CALL-c, if there is one).
    Conference { call: String, dn: String },
    /// DN leaves CALL (the agent or the customer hangs up).
    Hangup { call: String, dn: String },
}

/// Plays one step against the server of `config`.
pub async fn run(
    config: &Config,
    step: DemoStep,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    let target = Target::from_config(config);
    let connect = |role: Role, token: String| {
        let target = &target;
        async move {
            target
                .connect_as(role, &token)
                .await
                .with_context(|| format!("connecting to {} as {role}", target.addr))
        }
    };
    let mut switch = connect(Role::Switch, config.tokens.switch.clone()).await?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() % 1_000_000)
        .unwrap_or_default();
    match step {
        DemoStep::Call {
            dn,
            call,
            record,
            name,
        } => {
            let call = call.unwrap_or_else(|| format!("C-{stamp}"));
            let record = record.unwrap_or_else(|| format!("R-{stamp}"));
            let mut dialer = connect(Role::Dialer, config.tokens.dialer.clone()).await?;
            let mut body = attach_record(&call, &record);
            body.data = match json!({"name": name, "plan": "silver", "balance_due": 120}) {
                serde_json::Value::Object(o) => o,
                _ => unreachable!("an object literal"),
            };
            body.chain = vec![ChainEntry {
                record: format!("{record}-2"),
                chain_n: 1,
                phone: Some("+15557654321".into()),
                data: Default::default(),
            }];
            expect(&mut dialer, Request::AttachRecord(body), "RecordAttached").await?;
            event(
                &mut switch,
                ringing_full(&call, &dn, Some("+15551234567"), None, None),
            )
            .await?;
            event(&mut switch, established(&call, &dn)).await?;
            writeln!(out, "call {call} with record {record} answered on {dn}")?;
        }
        DemoStep::Consult {
            call,
            from,
            to,
            answer,
        } => {
            let consult = format!("{call}-c");
            event(
                &mut switch,
                ringing_full(&consult, &to, None, Some(&from), Some(&call)),
            )
            .await?;
            if answer {
                event(&mut switch, established(&consult, &to)).await?;
            }
            let state = if answer { "answered" } else { "ringing" };
            writeln!(out, "consultation {consult} from {from} {state} on {to}")?;
        }
        DemoStep::Transfer {
            call,
            from,
            to,
            single_step,
        } => {
            let (kind, consult) = if single_step {
                (TransferKind::SingleStep, None)
            } else {
                (TransferKind::TwoStep, Some(format!("{call}-c")))
            };
            event(
                &mut switch,
                transferred(&call, &from, &to, kind, consult.as_deref()),
            )
            .await?;
            if single_step {
                event(&mut switch, established(&call, &to)).await?;
            }
            writeln!(out, "call {call} transferred from {from} to {to}")?;
        }
        DemoStep::Conference { call, dn } => {
            let consult = format!("{call}-c");
            event(&mut switch, conferenced(&call, &dn, Some(&consult))).await?;
            writeln!(out, "{dn} conferenced into {call}")?;
        }
        DemoStep::Hangup { call, dn } => {
            event(&mut switch, baton_kit::released(&call, &dn, None)).await?;
            writeln!(out, "{dn} left {call}")?;
        }
    }
    Ok(())
}

async fn event(switch: &mut Client, request: Request) -> anyhow::Result<()> {
    expect(switch, request, "Ack").await
}

async fn expect(client: &mut Client, request: Request, wanted: &str) -> anyhow::Result<()> {
    let what = request.type_name();
    match client.request(request).await? {
        msg if msg.type_name() == wanted => Ok(()),
        ServerMsg::Error { code, message, .. } => bail!("{what} refused: {code}: {message}"),
        other => bail!("{what}: unexpected answer {other:?}"),
    }
}
