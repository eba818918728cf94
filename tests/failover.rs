//! Desktop failover (SCENARIOS.md, the consult-call case) and the agent lifecycle: each desktop
//! drops abruptly (no Logout), the switch moves on meanwhile, and the desktop comes back with its
//! resume token; the replay is checked push by push. Timers use short configured values.

mod common;

use baton::client::Client;
use baton::messages::*;
use common::*;
use std::time::Duration;

struct Pair {
    server: TestServer,
    switch: Client,
    dialer: Client,
    admin: Client,
    a: Option<Client>,
    b: Option<Client>,
    session_a: String,
    session_b: String,
}

impl Pair {
    async fn new(adjust: impl FnOnce(&mut baton::config::Config)) -> Pair {
        let server = TestServer::start_with(adjust).await;
        let (switch, _) = server.switch().await;
        let dialer = server.connect(Role::Dialer).await;
        let admin = server.connect(Role::Admin).await;
        let (a, session_a) = server.desktop("A", "7001").await;
        let (b, session_b) = server.desktop("B", "7002").await;
        let mut pair = Pair {
            server,
            switch,
            dialer,
            admin,
            a: Some(a),
            b: Some(b),
            session_a,
            session_b,
        };
        drain(&mut pair.switch).await; // the two logins' AgentLogin and Monitor pushes
        pair
    }

    fn a(&mut self) -> &mut Client {
        self.a.as_mut().unwrap()
    }
    fn b(&mut self) -> &mut Client {
        self.b.as_mut().unwrap()
    }

    /// R1 on C1 answered by A (full).
    async fn customer_call(&mut self) {
        self.dialer.request(attach("C1", "R1")).await.unwrap();
        event(&mut self.switch, ringing("C1", "7001")).await;
        event(&mut self.switch, established("C1", "7001")).await;
        drain(self.a()).await;
    }

    /// A consults B on C2; B is alerted (and answers when `answer`).
    async fn consult(&mut self, answer: bool) {
        event(
            &mut self.switch,
            ringing_full("C2", "7002", None, Some("7001"), Some("C1")),
        )
        .await;
        event(&mut self.switch, established("C2", "7001")).await;
        if answer {
            event(&mut self.switch, established("C2", "7002")).await;
        }
        drain(self.a()).await;
        drain(self.b()).await;
    }

    /// Waits until the server has seen `agent`'s desktop go (its agent stays, away).
    async fn wait_away(&mut self, connections: u64) {
        for _ in 0..200 {
            if let ServerMsg::StatusReport { connections: c, .. } =
                self.admin.request(Request::Status).await.unwrap()
            {
                if c == connections {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the server did not notice the dropped connection");
    }

    async fn resume(&mut self, agent: &str, dn: &str, token: &str) -> (Client, bool) {
        let mut c = self.server.connect(Role::Desktop).await;
        match c.request(login(agent, dn, Some(token))).await.unwrap() {
            ServerMsg::LoggedIn {
                resumed,
                agent: a,
                dn: d,
                ..
            } => {
                assert_eq!((a.as_str(), d.as_str()), (agent, dn));
                (c, resumed)
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Drops a connection the hard way: a TCP reset, no Logout.
fn drop_abruptly(mut client: Client) {
    #[allow(deprecated)]
    let _ = client.stream_mut().set_linger(Some(Duration::ZERO));
    drop(client);
}

async fn drain(c: &mut Client) {
    while c
        .try_next_push(Duration::from_millis(50))
        .await
        .unwrap()
        .is_some()
    {}
}

/// Every push of the replay, until a short quiet period.
async fn replay(c: &mut Client) -> Vec<ServerMsg> {
    let mut all = Vec::new();
    while let Some(m) = c.try_next_push(Duration::from_millis(150)).await.unwrap() {
        all.push(m);
    }
    all
}

fn resume_access(record: &str, access: Access) -> impl Fn(&ServerMsg) -> bool + '_ {
    move |m| {
        matches!(m, ServerMsg::AccessChanged { record: r, access: a, cause: AccessCause::Resume, data, .. }
        if r == record && *a == access && (access == Access::Revoked || data.is_some()))
    }
}

#[tokio::test]
async fn consultee_reconnects_while_the_consultation_is_up() {
    let mut t = Pair::new(|_| {}).await;
    t.customer_call().await;
    t.consult(true).await;
    drop_abruptly(t.b.take().unwrap());
    t.wait_away(4).await;
    let token = t.session_b.clone();
    let (mut b, resumed) = t.resume("B", "7002", &token).await;
    assert!(resumed);
    let pushes = replay(&mut b).await;
    assert_eq!(pushes.len(), 2, "{pushes:?}");
    assert_eq!(
        pushes[0],
        ServerMsg::CallEstablished {
            call: "C2".into(),
            dn: "7002".into()
        }
    );
    assert!(
        resume_access("R1", Access::ReadOnly)(&pushes[1]),
        "{pushes:?}"
    );
}

#[tokio::test]
async fn consultee_reconnects_after_the_transfer_completed() {
    let mut t = Pair::new(|_| {}).await;
    t.customer_call().await;
    t.consult(true).await;
    drop_abruptly(t.b.take().unwrap());
    t.wait_away(4).await;
    event(
        &mut t.switch,
        transferred("C1", "7001", "7002", TransferKind::TwoStep, Some("C2")),
    )
    .await;
    let token = t.session_b.clone();
    let (mut b, resumed) = t.resume("B", "7002", &token).await;
    assert!(resumed);
    let pushes = replay(&mut b).await;
    assert_eq!(pushes.len(), 2, "{pushes:?}");
    assert_eq!(
        pushes[0],
        ServerMsg::CallEstablished {
            call: "C1".into(),
            dn: "7002".into()
        }
    );
    assert!(resume_access("R1", Access::Full)(&pushes[1]), "{pushes:?}");
}

#[tokio::test]
async fn consultee_reconnects_after_the_call_dropped() {
    let mut t = Pair::new(|_| {}).await;
    t.customer_call().await;
    t.consult(true).await;
    drop_abruptly(t.b.take().unwrap());
    t.wait_away(4).await;
    event(&mut t.switch, released("C2", "7002", None)).await;
    event(&mut t.switch, released("C2", "7001", None)).await;
    let token = t.session_b.clone();
    let (mut b, resumed) = t.resume("B", "7002", &token).await;
    assert!(resumed);
    // The CallCleared was missed: no call in the replay; the read-only access is shown revoked.
    let pushes = replay(&mut b).await;
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    assert!(
        resume_access("R1", Access::Revoked)(&pushes[0]),
        "{pushes:?}"
    );
    match &pushes[0] {
        ServerMsg::AccessChanged { previous, .. } => assert_eq!(*previous, Access::ReadOnly),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn initiator_reconnects_while_the_consultation_still_rings() {
    let mut t = Pair::new(|_| {}).await;
    t.customer_call().await;
    drop_abruptly(t.a.take().unwrap());
    t.wait_away(4).await;
    event(
        &mut t.switch,
        ringing_full("C2", "7002", None, Some("7001"), Some("C1")),
    )
    .await;
    let token = t.session_a.clone();
    let (mut a, resumed) = t.resume("A", "7001", &token).await;
    assert!(resumed);
    // Its own call established, and the consultation it placed (from_dn: its DN is on that call,
    // dialing); R1 still full.
    let pushes = replay(&mut a).await;
    assert_eq!(pushes.len(), 3, "{pushes:?}");
    assert_eq!(
        pushes[..2],
        [
            ServerMsg::CallEstablished {
                call: "C1".into(),
                dn: "7001".into()
            },
            ServerMsg::CallEstablished {
                call: "C2".into(),
                dn: "7001".into()
            }
        ]
    );
    assert!(resume_access("R1", Access::Full)(&pushes[2]), "{pushes:?}");
}

#[tokio::test]
async fn initiator_reconnects_after_rona_on_the_consultee() {
    let mut t = Pair::new(|_| {}).await;
    t.customer_call().await;
    drop_abruptly(t.a.take().unwrap());
    t.wait_away(4).await;
    event(
        &mut t.switch,
        ringing_full("C2", "7002", None, Some("7001"), Some("C1")),
    )
    .await;
    event(&mut t.switch, released("C2", "7002", Some("rona"))).await;
    let token = t.session_a.clone();
    let (mut a, _) = t.resume("A", "7001", &token).await;
    let pushes = replay(&mut a).await;
    assert!(
        resume_access("R1", Access::Full)(pushes.last().unwrap()),
        "{pushes:?}"
    );
    // B: nothing alerting any more, and no right to R1.
    let b = t.b();
    let mut saw = Vec::new();
    while let Some(m) = b.try_next_push(Duration::from_millis(100)).await.unwrap() {
        saw.push(m);
    }
    assert!(
        matches!(saw.last(), Some(ServerMsg::CallCleared { cause, .. }) if cause == "rona"),
        "{saw:?}"
    );
    let reply = b.request(record_req("GetRecord", "R1")).await.unwrap();
    expect_error(&reply, ErrorCode::AccessDenied);
}

#[tokio::test]
async fn initiator_reconnects_after_the_consultee_took_the_call() {
    let mut t = Pair::new(|_| {}).await;
    t.customer_call().await;
    t.consult(true).await;
    drop_abruptly(t.a.take().unwrap());
    t.wait_away(4).await;
    event(
        &mut t.switch,
        transferred("C1", "7001", "7002", TransferKind::TwoStep, Some("C2")),
    )
    .await;
    let token = t.session_a.clone();
    let (mut a, _) = t.resume("A", "7001", &token).await;
    let pushes = replay(&mut a).await;
    assert_eq!(pushes.len(), 1, "no call left on A's DN: {pushes:?}");
    assert!(
        resume_access("R1", Access::Revoked)(&pushes[0]),
        "{pushes:?}"
    );
    let reply = t.b().request(record_req("GetRecord", "R1")).await.unwrap();
    assert!(
        matches!(
            reply,
            ServerMsg::Record {
                access: Access::Full,
                ..
            }
        ),
        "{reply:?}"
    );
}

#[tokio::test]
async fn consultee_reconnects_while_still_alerting() {
    let mut t = Pair::new(|_| {}).await;
    t.customer_call().await;
    t.consult(false).await;
    drop_abruptly(t.b.take().unwrap());
    t.wait_away(4).await;
    let token = t.session_b.clone();
    let (mut b, _) = t.resume("B", "7002", &token).await;
    let pushes = replay(&mut b).await;
    assert_eq!(
        pushes,
        vec![ServerMsg::CallAlerting {
            call: "C2".into(),
            dn: "7002".into(),
            record: Some("R1".into()),
            consult_of: Some("C1".into())
        }]
    );
}

#[tokio::test]
async fn consultee_reconnects_after_rona_or_hangup_ended_the_alerting() {
    for cause in ["rona", "hangup"] {
        let mut t = Pair::new(|_| {}).await;
        t.customer_call().await;
        t.consult(false).await;
        drop_abruptly(t.b.take().unwrap());
        t.wait_away(4).await;
        event(&mut t.switch, released("C2", "7002", Some(cause))).await;
        let token = t.session_b.clone();
        let (mut b, resumed) = t.resume("B", "7002", &token).await;
        assert!(resumed);
        assert_eq!(
            replay(&mut b).await,
            vec![],
            "{cause}: nothing alerting, nothing held"
        );
    }
}

#[tokio::test]
async fn consultee_not_back_within_the_grace_is_logged_out() {
    let mut t = Pair::new(|c| c.resume_grace_ms = 200).await;
    // B holds R2 alone (its own customer call) and R1 read-only.
    t.dialer.request(attach("C5", "R2")).await.unwrap();
    event(&mut t.switch, ringing("C5", "7002")).await;
    event(&mut t.switch, established("C5", "7002")).await;
    t.customer_call().await;
    t.consult(true).await;
    drain(&mut t.switch).await;
    drop_abruptly(t.b.take().unwrap());
    t.switch.set_timeout(Duration::from_secs(5));
    assert_eq!(
        t.switch.next_push().await.unwrap(),
        ServerMsg::AgentLogout {
            dn: "7002".into(),
            agent: "B".into()
        }
    );
    assert_eq!(
        t.switch.next_push().await.unwrap(),
        ServerMsg::Monitor {
            dns: vec!["7001".into()]
        }
    );
    // Rule 9: what B held full alone is orphaned; A keeps R1.
    match t
        .admin
        .request(record_req("RecordInfo", "R2"))
        .await
        .unwrap()
    {
        ServerMsg::RecordReport { state, .. } => assert_eq!(state, "orphaned"),
        other => panic!("{other:?}"),
    }
    match t
        .admin
        .request(record_req("RecordInfo", "R1"))
        .await
        .unwrap()
    {
        ServerMsg::RecordReport { state, holders, .. } => {
            assert_eq!(state, "held");
            assert!(holders.contains(&Holder {
                agent: "A".into(),
                access: Access::Full
            }));
            assert!(holders.contains(&Holder {
                agent: "B".into(),
                access: Access::Revoked
            }));
        }
        other => panic!("{other:?}"),
    }
    // The late resume is a fresh session.
    let token = t.session_b.clone();
    let (mut b, resumed) = t.resume("B", "7002", &token).await;
    assert!(!resumed);
    // Nothing is replayed as a resume; being on the DN where the calls are, B takes what nobody
    // holds (rule 9): R2 full, and R1 read-only through the consultation still up.
    let pushes = replay(&mut b).await;
    assert!(
        pushes.iter().all(|m| !matches!(
            m,
            ServerMsg::AccessChanged {
                cause: AccessCause::Resume,
                ..
            }
        )),
        "{pushes:?}"
    );
    assert!(pushes.iter().any(|m| matches!(m, ServerMsg::AccessChanged { record, access: Access::Full, cause: AccessCause::Established, .. } if record == "R2")), "{pushes:?}");
}

#[tokio::test]
async fn an_orphan_of_an_expired_session_goes_back_stale() {
    let mut t = Pair::new(|c| {
        c.resume_grace_ms = 100;
        c.orphan_timeout_ms = 100;
    })
    .await;
    t.customer_call().await;
    drop_abruptly(t.a.take().unwrap());
    t.dialer.set_timeout(Duration::from_secs(5));
    match t.dialer.next_push().await.unwrap() {
        ServerMsg::RecordOutcome {
            record, outcome, ..
        } => assert_eq!((record.as_str(), outcome), ("R1", Outcome::Stale)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn another_agents_token_gives_a_fresh_session_and_none_of_its_state() {
    let mut t = Pair::new(|_| {}).await;
    t.customer_call().await;
    drop_abruptly(t.a.take().unwrap());
    drop_abruptly(t.b.take().unwrap());
    t.wait_away(3).await;
    // B presents A's token.
    let token = t.session_a.clone();
    let (mut b, resumed) = t.resume("B", "7002", &token).await;
    assert!(!resumed);
    assert!(replay(&mut b)
        .await
        .iter()
        .all(|m| !matches!(m, ServerMsg::AccessChanged { record, .. } if record == "R1")));
    let reply = b.request(record_req("GetRecord", "R1")).await.unwrap();
    expect_error(&reply, ErrorCode::AccessDenied);
    // A wrong token for A itself: a fresh session too.
    let (_, resumed) = t
        .resume("A", "7001", "0123456789abcdef0123456789abcdef")
        .await;
    assert!(!resumed);
}

#[tokio::test]
async fn a_resumed_session_is_replaced_by_a_newer_login() {
    let mut t = Pair::new(|_| {}).await;
    drop_abruptly(t.a.take().unwrap());
    t.wait_away(4).await;
    let token = t.session_a.clone();
    let (mut resumed_a, resumed) = t.resume("A", "7001", &token).await;
    assert!(resumed);
    let mut newer = t.server.connect(Role::Desktop).await;
    assert!(matches!(
        newer.request(login("A", "7001", None)).await.unwrap(),
        ServerMsg::LoggedIn { resumed: false, .. }
    ));
    assert_eq!(
        resumed_a.next_push().await.unwrap(),
        ServerMsg::LoggedOut {
            cause: LogoutCause::Replaced
        }
    );
}

#[tokio::test]
async fn a_silent_desktop_is_dropped_by_heartbeat_and_can_resume() {
    let mut t = Pair::new(|c| c.heartbeat_ms = 100).await;
    t.customer_call().await;
    // A's socket stays open but sends nothing; the others keep pinging.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        t.b().request(Request::Ping).await.unwrap();
        t.switch.request(Request::Ping).await.unwrap();
        t.dialer.request(Request::Ping).await.unwrap();
        t.admin.request(Request::Ping).await.unwrap();
    }
    let a = t.a();
    a.set_timeout(Duration::from_secs(2));
    assert!(a.is_closed().await, "silent for 3 heartbeats: closed");
    // Still in grace: the switch was not told, and A resumes with everything.
    assert!(t
        .switch
        .try_next_push(Duration::from_millis(50))
        .await
        .unwrap()
        .is_none());
    let token = t.session_a.clone();
    let (mut a, resumed) = t.resume("A", "7001", &token).await;
    assert!(resumed);
    let pushes = replay(&mut a).await;
    assert!(
        pushes.iter().any(resume_access("R1", Access::Full)),
        "{pushes:?}"
    );
}

#[tokio::test]
async fn a_revocation_sent_just_before_the_drop_is_replayed() {
    // The transfer happens while the server still believes A is connected: the push goes to a
    // socket that is already dead. The resume replay must still say the record is gone.
    let mut t = Pair::new(|_| {}).await;
    t.customer_call().await;
    let a = t.a.take().unwrap();
    event(
        &mut t.switch,
        transferred("C1", "7001", "7002", TransferKind::SingleStep, None),
    )
    .await;
    drop_abruptly(a);
    t.wait_away(4).await;
    let token = t.session_a.clone();
    let (mut a, resumed) = t.resume("A", "7001", &token).await;
    assert!(resumed);
    let pushes = replay(&mut a).await;
    assert!(
        pushes.iter().any(resume_access("R1", Access::Revoked)),
        "{pushes:?}"
    );
}
