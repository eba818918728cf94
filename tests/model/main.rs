//! Model-based property test of the pure engine (no sockets).
//!
//! A fixed small universe (agents A1..A4 on DNs D1..D4, an unmonitored DN D9, calls C1..C4,
//! records R1..R3, one switch, one dialer, one admin) is driven by random sequences of up to 60
//! steps: desktop logins, logouts, drops and resumes, switch events (consultations included),
//! dialer attaches and cancels, desktop record requests, admin releases, and time passing with
//! or without a timer tick. After every step the test checks, from the outputs plus what it
//! sent, the rules of `shared/SCENARIOS.md` and `shared/CONTRACT.md`:
//!
//! 1. one `finalized` audit entry per record life, and one dialer `RecordOutcome` per final;
//! 2. record requests are answered in the contract's check order (section 9), a change is only
//!    ever accepted from a `full` holder, and a refused request changes nothing but the audit log;
//! 3. an `Established`/`Ringing`/`Released` of a call never grants `full` on a record that is not
//!    attached to that very call (so a consultee is never above `read_only` before completion);
//! 4. every `AccessChanged` push (but the resume replay) and every `RecordFinalized` push has its
//!    audit entry, and every access change of a connected desktop is pushed to it;
//! 5. what each connected desktop was told (pushes, final acks, resume replay) equals the
//!    engine's access table, and its calls equal the calls on its DN (failover table);
//! 6. audit `seq` numbers are 1, 2, 3... with no gap;
//! 7. every request gets exactly one reply with its `ref` (a stream for `ChainedRecords`), on
//!    its own connection, and no reply carries a `ref` nobody sent;
//! 8. every frame the engine sends matches `protocol/schema` for its connection's role, and
//!    every audit entry matches the schema's `Audit` frame.
//!
//! and, rule by rule: first grant and conference grant (1, 6), transfer revokes the initiator
//! and grants the recipient (2, 4, 9), released consultation revokes the consultee (5), leaving a
//! conference revokes unless last (7), `already_final` names the winner (8), orphan timeout and
//! `stale` (9), grants carry data and context (2), smart and forced logout (11), audit entries
//! tell the access before and record accepted requests (12), resume only within the grace time
//! (CONTRACT 7).
//!
//! Run (CI, about a second): `cargo test --release --test model`
//! (2000 sequences; `-- --nocapture` prints the step count, the longest sequence and coverage).
//! Long mode: `BATON_PROPTEST_CASES=100000 cargo test --release --test model -- --nocapture`
//! (about 3 million steps, half a minute). `BATON_PROPTEST_MAX_STEPS=200` makes longer
//! sequences. The generator seed is fixed so that runs repeat; `BATON_PROPTEST_SEED=<u64>` picks
//! another. A failure prints the shrunk, minimal failing sequence of steps.

pub(crate) use baton::engine::{ConnId, Engine, EngineConfig, Input, Output};
pub(crate) use baton::messages::*;
pub(crate) use baton_kit::*;
pub(crate) use proptest::prelude::*;
pub(crate) use proptest::test_runner::{
    Config as ProptestConfig, RngSeed, TestCaseError, TestRunner,
};
pub(crate) use serde_json::json;
pub(crate) use std::collections::{BTreeMap, BTreeSet, HashMap};
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};

mod apply;
mod check;
mod harness;
mod replies;
mod rules;
mod steps;

use harness::*;
use steps::*;

const AGENTS: [&str; 4] = ["A1", "A2", "A3", "A4"];
/// D9 is never logged in on: a transfer there has no recipient (rule 9).
const DNS: [&str; 5] = ["D1", "D2", "D3", "D4", "D9"];
const CALLS: [&str; 4] = ["C1", "C2", "C3", "C4"];
const RECORDS: [&str; 3] = ["R1", "R2", "R3"];
const ANIS: [&str; 2] = ["5550001", "5550002"];

const SWITCH: ConnId = 10;
const DIALER: ConnId = 11;
const ADMIN: ConnId = 12;

const T0: u64 = 1_790_000_000_000;
const GRACE_MS: u64 = 1000;
const ORPHAN_MS: u64 = 2000;
const HEARTBEAT_MS: u64 = 1000;
const DAY_MS: u64 = 86_400_000;
const FINAL_MEMORY_MS: u64 = 1500;

pub(crate) static STEPS: AtomicU64 = AtomicU64::new(0);
pub(crate) static SEQUENCES: AtomicU64 = AtomicU64::new(0);
pub(crate) static LONGEST: AtomicU64 = AtomicU64::new(0);
pub(crate) static READ_ONLY_GRANTS: AtomicU64 = AtomicU64::new(0);
pub(crate) static TRANSFER_GRANTS: AtomicU64 = AtomicU64::new(0);
pub(crate) static CONFERENCE_GRANTS: AtomicU64 = AtomicU64::new(0);
pub(crate) static FINALS: AtomicU64 = AtomicU64::new(0);
pub(crate) static STALE: AtomicU64 = AtomicU64::new(0);
pub(crate) static RESUMED: AtomicU64 = AtomicU64::new(0);
pub(crate) static REFUSED_READ_ONLY: AtomicU64 = AtomicU64::new(0);
pub(crate) static ALREADY_FINAL: AtomicU64 = AtomicU64::new(0);
pub(crate) static LOGOUT_PENDING: AtomicU64 = AtomicU64::new(0);
pub(crate) static RULE5_JUDGED: AtomicU64 = AtomicU64::new(0);
pub(crate) static RULE5_CALLER_JUDGED: AtomicU64 = AtomicU64::new(0);
pub(crate) static REFUSED_BATCHES: AtomicU64 = AtomicU64::new(0);
pub(crate) static READ_BACK: AtomicU64 = AtomicU64::new(0);
pub(crate) static RULE7_JUDGED: AtomicU64 = AtomicU64::new(0);

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The agent that logs in on each DN (none on D9).
pub(crate) const DNS_AGENT: [&str; 5] = ["A1", "A2", "A3", "A4", "-"];

pub(crate) trait AllCauses {
    const ALL: [AccessCause; 9];
}
impl AllCauses for AccessCause {
    const ALL: [AccessCause; 9] = [
        AccessCause::Established,
        AccessCause::Transfer,
        AccessCause::Consultation,
        AccessCause::Conference,
        AccessCause::Left,
        AccessCause::Released,
        AccessCause::Logout,
        AccessCause::Admin,
        AccessCause::Resume,
    ];
}

/// The test's model as it was before a step, for the rule checks.
pub(crate) struct Before {
    pub(crate) call_record: HashMap<String, String>,
    pub(crate) parties: BTreeMap<String, BTreeMap<String, Party>>,
    pub(crate) maybe_consult: BTreeSet<String>,
    pub(crate) ro_via: HashMap<(String, String), (String, String)>,
    pub(crate) holders: HashMap<String, BTreeMap<String, Access>>,
    pub(crate) audit_log_len: usize,
}

/// Runs one sequence: every agent logs in first (checked like any step), then the steps.
pub(crate) fn run_sequence(steps: &[Step]) -> Result<(), String> {
    bump(&SEQUENCES);
    LONGEST.fetch_max(steps.len() as u64, Ordering::Relaxed);
    let mut h = Harness::new();
    for (a, name) in AGENTS.iter().enumerate() {
        h.step(&Step::Login(a))
            .map_err(|e| format!("setup login of {name}: {e}"))?;
    }
    h.next_conn = h.next_conn.max(100);
    for (i, s) in steps.iter().enumerate() {
        bump(&STEPS);
        h.step(s).map_err(|e| format!("step {i} {s:?}: {e}"))?;
    }
    Ok(())
}

#[test]
pub(crate) fn sharing_rules_hold_for_random_sequences() {
    let cases: u32 = std::env::var("BATON_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let seed: u64 = std::env::var("BATON_PROPTEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x0ba7_0001);
    let max_steps: usize = std::env::var("BATON_PROPTEST_MAX_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&steps_s(max_steps), |steps| {
        run_sequence(&steps).map_err(TestCaseError::fail)
    });
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    eprintln!(
        "model: {} sequences ({cases} cases, seed {seed}), {} steps, longest sequence {} steps; \
         coverage: {} read-only grants, {} transfer grants, {} conference grants, {} finals \
         ({} stale), {} already_final, {} read_only refusals, {} resumes, {} logout pending, \
         {} consultation releases ({} by the caller) and {} conference leaves judged, \
         {} refused batches rolled back, {} final records read back from the store",
        n(&SEQUENCES),
        n(&STEPS),
        n(&LONGEST),
        n(&READ_ONLY_GRANTS),
        n(&TRANSFER_GRANTS),
        n(&CONFERENCE_GRANTS),
        n(&FINALS),
        n(&STALE),
        n(&ALREADY_FINAL),
        n(&REFUSED_READ_ONLY),
        n(&RESUMED),
        n(&LOGOUT_PENDING),
        n(&RULE5_JUDGED),
        n(&RULE5_CALLER_JUDGED),
        n(&RULE7_JUDGED),
        n(&REFUSED_BATCHES),
        n(&READ_BACK),
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
