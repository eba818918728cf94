//! Connections of a load run: desktops logged in, side connections (switch, dialer, admin) and
//! the waits for a push.

use super::*;
use baton::client::Transport;

/// A desktop connected from `local`, logged in as `agent` on `dn`.
pub(crate) async fn desktop(
    opts: &LoadOptions,
    agent: &str,
    dn: &str,
    local: IpAddr,
) -> Result<Client, ClientError> {
    let addr = match opts.transport {
        Transport::Tcp => opts.addr,
        Transport::WebSocket => opts.http_addr.unwrap_or(opts.addr),
    };
    let mut c = Client::connect_over_from(
        opts.transport,
        addr,
        local,
        opts.tls.as_ref(),
        Role::Desktop,
        &opts.tokens.desktop,
    )
    .await?;
    match &opts.password {
        Some(password) => log_in_with_password(&mut c, agent, dn, password).await?,
        None => log_in(&mut c, agent, dn).await?,
    };
    Ok(c)
}

/// A switch, dialer or admin connection that keeps no pushes.
pub(crate) async fn side_conn(opts: &LoadOptions, role: Role) -> Result<Client, ClientError> {
    let mut c = Client::connect_with(
        opts.addr,
        opts.tls.as_ref(),
        role,
        token(&opts.tokens, role),
    )
    .await?;
    c.set_discard_pushes(true);
    Ok(c)
}

/// `RecordProcessed` as a load desktop sends it.
pub(crate) fn processed_req(record: &str) -> Request {
    processed(record, "answered")
}

/// The `i`-th `UpdateRecord` of a load desktop.
pub(crate) fn update_req(record: &str, i: u64) -> Request {
    update(record, serde_json::json!({"note": "load", "i": i}))
}

/// Sends telephony events in order, each acknowledged.
pub(crate) async fn events(
    sw: &mut Client,
    stats: &mut Stats,
    evs: Vec<Request>,
) -> Result<bool, ClientError> {
    for ev in evs {
        let name = ev.type_name();
        let reply = timed(sw, stats, name, ev).await?;
        if !expect(stats, name, &reply, |m| *m == ServerMsg::Ack) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Waits for the push granting `access` on `record` (other pushes are skipped).
pub(crate) async fn wait_access(
    c: &mut Client,
    record: &str,
    access: Access,
) -> Result<(), ClientError> {
    loop {
        if let ServerMsg::AccessChanged {
            record: r,
            access: a,
            ..
        } = c.next_push().await?
        {
            if r == record && a == access {
                return Ok(());
            }
        }
    }
}
