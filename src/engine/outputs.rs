//! How the engine speaks: replies to one connection, pushes to an agent or a DN, broadcasts to
//! the switches and dialers, and audit entries with their sequence numbers and time stamps.
//! Nothing here decides anything: it only turns decisions made elsewhere into [`Output`]s.

use super::*;

impl Engine {
    pub(super) fn send(out: &mut Vec<Output>, conn: ConnId, r#ref: Option<u64>, msg: ServerMsg) {
        out.push(Output::Send {
            conn,
            env: Envelope { r#ref, msg },
        });
    }

    /// Pushes `msg` to the agent's desktop if it is connected; otherwise the resume replay covers it.
    pub(super) fn push_agent(&self, out: &mut Vec<Output>, agent: &AgentId, msg: ServerMsg) {
        if let Some(conn) = self.agents.get(agent).and_then(|a| a.conn) {
            Self::send(out, conn, None, msg);
        }
    }

    pub(super) fn push_dn(&self, out: &mut Vec<Output>, dn: &Dn, msg: ServerMsg) {
        if let Some(conn) = self.conn_on_dn(dn) {
            Self::send(out, conn, None, msg);
        }
    }

    /// The connection of the desktop logged in on `dn`, if it is connected: pushes for the DN go
    /// there, and a push nobody would receive need not be built.
    pub(super) fn conn_on_dn(&self, dn: &Dn) -> Option<ConnId> {
        self.agents.get(self.dn_agent.get(dn)?)?.conn
    }

    /// `now_ms` as RFC 3339.
    pub(super) fn stamp(&mut self) -> String {
        if self.stamp.0 != self.now_ms {
            self.stamp = (self.now_ms, rfc3339(self.now_ms));
        }
        self.stamp.1.clone()
    }

    pub(super) fn audit(
        &mut self,
        out: &mut Vec<Output>,
        kind: AuditKind,
        fill: impl FnOnce(&mut AuditEntry),
    ) {
        self.audit_seq += 1;
        let mut entry = AuditEntry {
            seq: self.audit_seq,
            ts: self.stamp(),
            kind,
            record: None,
            agent: None,
            dn: None,
            call: None,
            access: None,
            previous: None,
            request: None,
            code: None,
            cause: None,
        };
        fill(&mut entry);
        self.pending_audit.push(entry.clone());
        out.push(Output::Audit(entry));
    }

    /// Pushes `msg` to each of `conns` in order, moving it to the last rather than copying it.
    pub(super) fn send_all(out: &mut Vec<Output>, conns: &BTreeSet<ConnId>, msg: ServerMsg) {
        let Some(&last) = conns.last() else {
            return;
        };
        for &conn in conns.range(..last) {
            Self::send(out, conn, None, msg.clone());
        }
        Self::send(out, last, None, msg);
    }

    pub(super) fn broadcast_monitor(&mut self, out: &mut Vec<Output>) {
        if let Some(pending) = &mut self.monitor_held {
            *pending = true;
            return;
        }
        if self.switches.is_empty() {
            return;
        }
        let dns = self.monitored_dns();
        Self::send_all(out, &self.switches, ServerMsg::Monitor { dns });
    }

    /// Runs `f` with `Monitor` broadcasts held back, then sends at most one, with the list as it
    /// is at the end. For loops that end many sessions at once (resume grace expiring for a whole
    /// floor after a network cut): one `Monitor` per ended agent would send each switch link a
    /// list per agent, quadratic in the number of agents.
    pub(super) fn with_one_monitor(
        &mut self,
        out: &mut Vec<Output>,
        f: impl FnOnce(&mut Self, &mut Vec<Output>),
    ) {
        let outer = self.monitor_held.replace(false);
        f(self, out);
        let changed = self.monitor_held.take() == Some(true);
        match outer {
            Some(pending) => self.monitor_held = Some(pending || changed),
            None if changed => self.broadcast_monitor(out),
            None => {}
        }
    }

    pub(super) fn tell_switches(&self, out: &mut Vec<Output>, msg: ServerMsg) {
        Self::send_all(out, &self.switches, msg);
    }
}
