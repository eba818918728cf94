//! The steps a sequence is made of, and their generator.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum DeskOp {
    Get,
    Update,
    Processed,
    Reject,
    Cancel,
    DoNotCall { chain: bool },
    Reschedule { campaign: bool },
    Chained,
}

impl DeskOp {
    pub(crate) fn needs_full(self) -> bool {
        !matches!(self, DeskOp::Get | DeskOp::Chained)
    }
    pub(crate) fn is_final(self) -> bool {
        !matches!(self, DeskOp::Get | DeskOp::Chained | DeskOp::Update)
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Step {
    /// Login on the agent's desktop (a new connection if it has none), without resume.
    Login(usize),
    Logout {
        agent: usize,
        force: bool,
    },
    /// The desktop connection drops (no Logout).
    Disconnect(usize),
    /// A new desktop connection logs in, with the last session token or without.
    Reconnect {
        agent: usize,
        resume: bool,
    },
    Ringing {
        call: usize,
        dn: usize,
        ani: Option<usize>,
        consult_of: Option<usize>,
        from_dn: Option<usize>,
    },
    Established {
        call: usize,
        dn: usize,
    },
    /// `Ringing call dn consult_of of` (with `from_dn` the caller, if any), then (with
    /// `caller_answer`) `Established call caller`, then (if answered) `Established call dn`.
    Consult {
        call: usize,
        of: usize,
        dn: usize,
        answer: bool,
        /// `None`: no `from_dn`; `Some(None)`: a DN on the consulted call, as the test's switch
        /// knows it; `Some(Some(dn))`: that DN.
        caller: Option<Option<usize>>,
        caller_answer: bool,
    },
    /// The DN that placed `call` (its `from_dn`) hangs up: `Released` on the caller's DN, or on
    /// a DN the call is on if the test's switch knows no caller.
    CallerHangsUp(usize),
    /// `dn: None`: a DN the call is on, as far as the test's switch knows.
    Released {
        call: usize,
        dn: Option<usize>,
        rona: bool,
    },
    Transferred {
        call: usize,
        from: Option<usize>,
        to: usize,
        kind: u8,
        consult_call: Option<usize>,
    },
    Conferenced {
        call: usize,
        dn: usize,
        consult_call: Option<usize>,
    },
    PhoneLogin {
        agent: usize,
        dn: usize,
    },
    /// `dn: None`: the agent's own DN.
    PhoneLogout {
        agent: usize,
        dn: Option<usize>,
    },
    Attach {
        call: usize,
        record: usize,
        phone: Option<usize>,
        chain: bool,
    },
    DialerCancel(usize),
    Desk {
        agent: usize,
        record: usize,
        op: DeskOp,
    },
    AdminRelease(usize),
    /// Time passes by this many milliseconds, then `Tick`.
    Advance(u64),
    /// Time passes and an admin `Ping` arrives, without a timer tick yet (the server ticks every
    /// 100 ms, and later under load).
    Wait(u64),
    /// The step runs as one batch whose writes the store refuses (a full or failing disk): the
    /// shell rolls the engine back and applies again the connection changes the step contained.
    StorageFails(Box<Step>),
}

pub(crate) fn agent_s() -> impl Strategy<Value = usize> {
    0..4usize
}
pub(crate) fn dn_s() -> BoxedStrategy<usize> {
    prop_oneof![5 => 0..4usize, 1 => Just(4usize)].boxed()
}
pub(crate) fn call_s() -> impl Strategy<Value = usize> {
    0..4usize
}
pub(crate) fn record_s() -> impl Strategy<Value = usize> {
    0..3usize
}

pub(crate) fn desk_op_s() -> BoxedStrategy<DeskOp> {
    prop_oneof![
        3 => Just(DeskOp::Get),
        3 => Just(DeskOp::Update),
        4 => Just(DeskOp::Processed),
        1 => Just(DeskOp::Reject),
        1 => Just(DeskOp::Cancel),
        1 => any::<bool>().prop_map(|chain| DeskOp::DoNotCall { chain }),
        1 => any::<bool>().prop_map(|campaign| DeskOp::Reschedule { campaign }),
        2 => Just(DeskOp::Chained),
    ]
    .boxed()
}

pub(crate) fn step_s() -> BoxedStrategy<Step> {
    prop_oneof![
        12 => base_step_s(),
        1 => base_step_s().prop_map(|s| Step::StorageFails(Box::new(s))),
    ]
    .boxed()
}

pub(crate) fn base_step_s() -> BoxedStrategy<Step> {
    prop_oneof![
        2 => agent_s().prop_map(Step::Login).boxed(),
        2 => (agent_s(), any::<bool>())
            .prop_map(|(agent, force)| Step::Logout { agent, force })
            .boxed(),
        2 => agent_s().prop_map(Step::Disconnect).boxed(),
        3 => (agent_s(), prop::bool::weighted(0.7))
            .prop_map(|(agent, resume)| Step::Reconnect { agent, resume })
            .boxed(),
        7 => (
            call_s(),
            dn_s(),
            prop::option::of(0..2usize),
            prop::option::weighted(0.4, call_s()),
            prop::option::weighted(0.3, dn_s()),
        )
            .prop_map(|(call, dn, ani, consult_of, from_dn)| Step::Ringing {
                call,
                dn,
                ani,
                consult_of,
                from_dn
            })
            .boxed(),
        10 => (call_s(), dn_s())
            .prop_map(|(call, dn)| Step::Established { call, dn })
            .boxed(),
        4 => (
            call_s(),
            call_s(),
            dn_s(),
            prop::bool::weighted(0.8),
            prop::option::weighted(0.7, prop::option::weighted(0.2, dn_s())),
            prop::bool::weighted(0.4),
        )
            .prop_map(|(call, of, dn, answer, caller, caller_answer)| Step::Consult {
                call,
                of,
                dn,
                answer,
                caller,
                caller_answer
            })
            .boxed(),
        2 => call_s().prop_map(Step::CallerHangsUp).boxed(),
        4 => (call_s(), prop::option::weighted(0.3, dn_s()), prop::bool::weighted(0.3))
            .prop_map(|(call, dn, rona)| Step::Released { call, dn, rona })
            .boxed(),
        5 => (
            call_s(),
            prop::option::weighted(0.2, dn_s()),
            dn_s(),
            0..3u8,
            prop::option::of(call_s()),
        )
            .prop_map(|(call, from, to, kind, consult_call)| Step::Transferred {
                call,
                from,
                to,
                kind,
                consult_call
            })
            .boxed(),
        3 => (call_s(), dn_s(), prop::option::of(call_s()))
            .prop_map(|(call, dn, consult_call)| Step::Conferenced {
                call,
                dn,
                consult_call
            })
            .boxed(),
        1 => (agent_s(), dn_s())
            .prop_map(|(agent, dn)| Step::PhoneLogin { agent, dn })
            .boxed(),
        1 => (agent_s(), prop::option::weighted(0.2, dn_s()))
            .prop_map(|(agent, dn)| Step::PhoneLogout { agent, dn })
            .boxed(),
        6 => (call_s(), record_s(), prop::option::of(0..2usize), any::<bool>())
            .prop_map(|(call, record, phone, chain)| Step::Attach {
                call,
                record,
                phone,
                chain
            })
            .boxed(),
        1 => record_s().prop_map(Step::DialerCancel).boxed(),
        14 => (agent_s(), record_s(), desk_op_s())
            .prop_map(|(agent, record, op)| Step::Desk { agent, record, op })
            .boxed(),
        1 => record_s().prop_map(Step::AdminRelease).boxed(),
        4 => (0..=3000u64).prop_map(Step::Advance).boxed(),
        1 => (0..=1500u64).prop_map(Step::Wait).boxed(),
    ]
    .boxed()
}

pub(crate) fn steps_s(max_steps: usize) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step_s(), 0..=max_steps)
}
