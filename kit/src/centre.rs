//! A small centre to play the sharing rules in: a server, its switch link, a dialer, an admin and
//! three agents, A, B and C, logged in on DNs 7001, 7002 and 7003.

use crate::expect::*;
use crate::msg::*;
use crate::server::TestServer;
use baton::client::Client;
use baton::config::Config;
use baton::messages::*;
use std::time::Duration;

/// The DNs of agents A, B and C.
pub const DN_A: &str = "7001";
pub const DN_B: &str = "7002";
pub const DN_C: &str = "7003";

pub struct Centre {
    pub server: TestServer,
    pub switch: Client,
    pub dialer: Client,
    pub admin: Client,
    pub a: Client,
    pub b: Client,
    pub c: Client,
    /// The session tokens of A, B and C, for resuming.
    pub sessions: [String; 3],
}

impl Centre {
    pub async fn new() -> Centre {
        Centre::with(|_| {}).await
    }

    /// A centre on a server whose config `adjust` changed first.
    pub async fn with(adjust: impl FnOnce(&mut Config)) -> Centre {
        let server = TestServer::start_with(adjust).await;
        let (switch, _) = server.switch().await;
        let dialer = server.connect(Role::Dialer).await;
        let admin = server.connect(Role::Admin).await;
        let (a, session_a) = server.desktop("A", DN_A).await;
        let (b, session_b) = server.desktop("B", DN_B).await;
        let (c, session_c) = server.desktop("C", DN_C).await;
        let mut centre = Centre {
            server,
            switch,
            dialer,
            admin,
            a,
            b,
            c,
            sessions: [session_a, session_b, session_c],
        };
        // Each login told the switch: an AgentLogin and a new Monitor.
        for _ in 0..6 {
            centre.switch.next_push().await.expect("login pushes");
        }
        centre
    }

    /// The dialer attaches `record` to `call`; the call rings and is answered on A's DN, and A
    /// holds the record `full` (each of A's pushes checked in order).
    pub async fn call_on_a(&mut self, call: &str, record: &str) {
        self.dialer
            .request(attach(call, record))
            .await
            .expect("AttachRecord answered");
        let ani = format!("555{record}");
        event(
            &mut self.switch,
            ringing_full(call, DN_A, Some(&ani), None, None),
        )
        .await;
        event(&mut self.switch, established(call, DN_A)).await;
        expect_call_alerting(&mut self.a, call).await;
        expect_push(
            &mut self.a,
            ServerMsg::CallEstablished {
                call: call.into(),
                dn: DN_A.into(),
            },
        )
        .await;
        let (r, access, _, cause, _, _) = expect_access(&mut self.a).await;
        assert_eq!(
            (r.as_str(), access, cause),
            (record, Access::Full, AccessCause::Established)
        );
    }

    /// A consults B on `c2` (linked by `consult_of`); B is alerted and, when `answer`, answers
    /// and holds `record` read-only.
    pub async fn consult_b(&mut self, c1: &str, c2: &str, record: &str, answer: bool) {
        event(
            &mut self.switch,
            ringing_full(c2, DN_B, None, Some(DN_A), Some(c1)),
        )
        .await;
        // The caller is on the consultation from its Ringing on.
        expect_push(
            &mut self.a,
            ServerMsg::CallEstablished {
                call: c2.into(),
                dn: DN_A.into(),
            },
        )
        .await;
        event(&mut self.switch, established(c2, DN_A)).await;
        expect_call_alerting(&mut self.b, c2).await;
        if !answer {
            return;
        }
        event(&mut self.switch, established(c2, DN_B)).await;
        expect_push(
            &mut self.b,
            ServerMsg::CallEstablished {
                call: c2.into(),
                dn: DN_B.into(),
            },
        )
        .await;
        let (r, access, _, cause, data, _) = expect_access(&mut self.b).await;
        assert_eq!(
            (r.as_str(), access, cause),
            (record, Access::ReadOnly, AccessCause::Consultation)
        );
        assert!(data.is_some(), "a consultee sees the record's data");
    }

    /// The admin's `RecordInfo` of `record`: its state, holders and final outcome.
    pub async fn info(&mut self, record: &str) -> (String, Vec<Holder>, Option<FinalInfo>) {
        match self
            .admin
            .request(record_req("RecordInfo", record))
            .await
            .expect("RecordInfo answered")
        {
            ServerMsg::RecordReport {
                state,
                holders,
                final_,
                ..
            } => (state, holders, final_),
            other => panic!("expected RecordReport, got {other:?}"),
        }
    }

    /// The dialer's next `RecordOutcome`: record, outcome, who finished it, the fields.
    pub async fn outcome(&mut self) -> (String, Outcome, Option<String>, Option<Object>) {
        match self.dialer.next_push().await.expect("a push") {
            ServerMsg::RecordOutcome {
                record,
                outcome,
                by,
                fields,
                ..
            } => (record, outcome, by, fields),
            other => panic!("expected RecordOutcome, got {other:?}"),
        }
    }

    /// Every durable audit entry about `record`, in order.
    pub async fn audit(&mut self, record: &str) -> Vec<AuditEntry> {
        entries(
            self.admin
                .request_stream(record_history(record))
                .await
                .expect("AuditTail answered"),
        )
    }

    /// Waits until the server counts `connections` open connections (after a drop it has to
    /// notice).
    pub async fn wait_connections(&mut self, connections: u64) {
        for _ in 0..400 {
            if let ServerMsg::StatusReport { connections: c, .. } = self
                .admin
                .request(Request::Status)
                .await
                .expect("StatusReport")
            {
                if c == connections {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the server never counted {connections} connections");
    }
}
