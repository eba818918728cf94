//! The engine alone, no I/O: how many inputs per second the state machine applies.
//!
//! A centre of 300 desktops (one switch link, one dialer) plays pre-generated inputs. The calls of
//! one batch run side by side, one per pair of DNs, interleaved step by step as a switch would
//! report them. Only `Engine::handle` is timed; building the inputs, and (except in
//! `mix_with_take_writes`) serializing what changed for the store, happen between timed stretches.

use baton::config::Config;
use baton::engine::{ConnId, Engine, EngineConfig, Input, Output};
use baton::messages::*;
use baton_kit::*;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use std::time::{Duration, Instant};

const AGENTS: usize = 300;
/// Calls played side by side in one batch: each owns two DNs.
const LANES: usize = AGENTS / 2;
const SWITCH: ConnId = 1;
const DIALER: ConnId = 2;
const START_MS: u64 = 1_700_000_000_000;
/// Batches played on one engine before it is rebuilt (between timed stretches), so that final
/// records do not pile up without bound over a long run.
const BATCHES_PER_ENGINE: u64 = 200;

fn desk(i: usize) -> ConnId {
    100 + i as ConnId
}

fn dn(i: usize) -> String {
    format!("7{i:03}")
}

fn agent(i: usize) -> String {
    format!("1{i:03}")
}

/// An engine with the switch, the dialer and `AGENTS` desktops logged in on their DNs.
fn centre() -> Engine {
    let mut engine = Engine::new(
        EngineConfig::from_config(&Config::default()),
        [7; 32],
        START_MS,
    );
    let mut out = Vec::new();
    let mut feed = |engine: &mut Engine, input| {
        engine.handle(START_MS, input, &mut out);
        out.clear();
    };
    feed(
        &mut engine,
        Input::Connected {
            conn: SWITCH,
            role: Role::Switch,
        },
    );
    feed(
        &mut engine,
        Input::Connected {
            conn: DIALER,
            role: Role::Dialer,
        },
    );
    for i in 0..AGENTS {
        feed(
            &mut engine,
            Input::Connected {
                conn: desk(i),
                role: Role::Desktop,
            },
        );
        feed(
            &mut engine,
            Input::Request {
                conn: desk(i),
                r#ref: Some(1),
                request: login(&agent(i), &dn(i), None),
            },
        );
    }
    assert_eq!(
        engine.counts().dns,
        AGENTS as u64,
        "every desktop logged in"
    );
    engine.take_writes();
    engine
}

fn req(conn: ConnId, r#ref: u64, request: Request) -> Input {
    Input::Request {
        conn,
        r#ref: Some(r#ref),
        request,
    }
}

#[derive(Clone, Copy)]
enum Flow {
    Straight,
    Transfer,
    Consult,
    Conference,
}

/// The load tool's default mix (55/15/15/15), fixed per lane so every batch has the same length.
fn flow_of(lane: usize) -> Flow {
    match lane % 20 {
        0..=10 => Flow::Straight,
        11..=13 => Flow::Transfer,
        14..=16 => Flow::Consult,
        _ => Flow::Conference,
    }
}

/// The inputs of one call from attach to release; `n` makes its ids unique.
fn call_inputs(n: u64, lane: usize) -> Vec<Input> {
    let (ia, ib) = (2 * lane, 2 * lane + 1);
    let (a, b) = (dn(ia), dn(ib));
    let call = format!("C{n}");
    let record = format!("R{n}");
    let mut r = n * 100;
    let mut next_ref = || {
        r += 1;
        r
    };
    let mut v = vec![
        req(DIALER, next_ref(), attach(&call, &record)),
        req(SWITCH, next_ref(), ringing(&call, &a)),
        req(SWITCH, next_ref(), established(&call, &a)),
    ];
    // (desktop that finishes the record, DNs still on the call at the end)
    let (finisher, last): (usize, Vec<&str>) = match flow_of(lane) {
        Flow::Straight => (ia, vec![a.as_str()]),
        Flow::Transfer => {
            v.push(req(
                SWITCH,
                next_ref(),
                transferred(&call, &a, &b, TransferKind::SingleStep, None),
            ));
            v.push(req(SWITCH, next_ref(), established(&call, &b)));
            (ib, vec![b.as_str()])
        }
        Flow::Consult => {
            let c2 = format!("{call}-k");
            v.push(req(
                SWITCH,
                next_ref(),
                ringing_full(&c2, &b, None, Some(&a), Some(&call)),
            ));
            v.push(req(SWITCH, next_ref(), established(&c2, &a)));
            v.push(req(SWITCH, next_ref(), established(&c2, &b)));
            v.push(req(
                SWITCH,
                next_ref(),
                transferred(&call, &a, &b, TransferKind::TwoStep, Some(&c2)),
            ));
            (ib, vec![b.as_str()])
        }
        Flow::Conference => {
            v.push(req(SWITCH, next_ref(), conferenced(&call, &b, None)));
            (ia, vec![a.as_str(), b.as_str()])
        }
    };
    v.push(req(
        desk(finisher),
        next_ref(),
        update(
            &record,
            json!({"note": "wants a callback after six", "amount": 120.5}),
        ),
    ));
    v.push(req(
        desk(finisher),
        next_ref(),
        processed(&record, "answered"),
    ));
    for d in last {
        v.push(req(SWITCH, next_ref(), released(&call, d, None)));
    }
    v
}

/// Interleaves per-lane step lists: the first step of every lane, then the second, and so on.
fn interleave(lanes: Vec<Vec<Input>>) -> Vec<Input> {
    let total = lanes.iter().map(Vec::len).sum();
    let mut iters: Vec<_> = lanes.into_iter().map(Vec::into_iter).collect();
    let mut all = Vec::with_capacity(total);
    while all.len() < total {
        for it in iters.iter_mut() {
            if let Some(input) = it.next() {
                all.push(input);
            }
        }
    }
    all
}

/// One batch of the call mix: `LANES` calls side by side, ids from `first` on.
fn mix_batch(first: u64) -> Vec<Input> {
    interleave(
        (0..LANES)
            .map(|lane| call_inputs(first + lane as u64, lane))
            .collect(),
    )
}

/// One batch of plain telephony: a call rings, is answered and is released on every DN, no records.
fn telephony_batch(first: u64) -> Vec<Input> {
    interleave(
        (0..AGENTS)
            .map(|i| {
                let call = format!("T{}", first + i as u64);
                let d = dn(i);
                let r = (first + i as u64) * 10;
                vec![
                    req(SWITCH, r + 1, ringing(&call, &d)),
                    req(SWITCH, r + 2, established(&call, &d)),
                    req(SWITCH, r + 3, released(&call, &d, None)),
                ]
            })
            .collect(),
    )
}

/// Plays batches from `make` on a long-lived engine and returns the time spent in `handle` (and in
/// `take_writes` when `time_writes`).
struct Player {
    engine: Engine,
    batches: u64,
    next_id: u64,
    out: Vec<Output>,
}

impl Player {
    fn new() -> Player {
        Player {
            engine: centre(),
            batches: 0,
            next_id: 1,
            out: Vec::with_capacity(64),
        }
    }

    fn play(
        &mut self,
        iters: u64,
        per_batch: u64,
        make: fn(u64) -> Vec<Input>,
        time_writes: bool,
    ) -> Duration {
        let mut timed = Duration::ZERO;
        for _ in 0..iters {
            if self.batches == BATCHES_PER_ENGINE {
                self.engine = centre();
                self.batches = 0;
            }
            let inputs = make(self.next_id);
            self.next_id += per_batch;
            self.batches += 1;
            let now = START_MS + self.next_id;
            let started = Instant::now();
            for input in inputs {
                self.engine.handle(now, input, &mut self.out);
                black_box(&self.out);
                self.out.clear();
            }
            if time_writes {
                black_box(self.engine.take_writes());
                timed += started.elapsed();
            } else {
                timed += started.elapsed();
                self.engine.take_writes();
            }
        }
        timed
    }
}

/// Plays one batch of each kind on a fresh engine and checks it took the intended path: no input
/// refused, every record finished, every call gone.
fn check_batches() {
    for (make, records) in [
        (mix_batch as fn(u64) -> Vec<Input>, LANES),
        (telephony_batch, 0),
    ] {
        let mut engine = centre();
        let mut out = Vec::new();
        for input in make(1) {
            engine.handle(START_MS, input, &mut out);
            for o in out.drain(..) {
                if let Output::Send { env, .. } = o {
                    assert!(
                        !matches!(env.msg, ServerMsg::Error { .. }),
                        "refused: {env:?}"
                    );
                }
            }
        }
        let counts = engine.counts();
        assert_eq!(counts.records_final, records as u64);
        assert_eq!((counts.records_live, counts.calls), (0, 0));
    }
}

fn bench_engine(c: &mut Criterion) {
    check_batches();
    let mix_len = mix_batch(1).len() as u64;
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(mix_len));
    group.bench_function("call_mix_300_agents", |b| {
        let mut player = Player::new();
        b.iter_custom(|iters| player.play(iters, LANES as u64, mix_batch, false))
    });
    group.bench_function("call_mix_300_agents_with_take_writes", |b| {
        let mut player = Player::new();
        b.iter_custom(|iters| player.play(iters, LANES as u64, mix_batch, true))
    });

    let tel_len = telephony_batch(1).len() as u64;
    group.throughput(Throughput::Elements(tel_len));
    group.bench_function("telephony_only_300_dns", |b| {
        let mut player = Player::new();
        b.iter_custom(|iters| player.play(iters, AGENTS as u64, telephony_batch, false))
    });
    group.finish();
}

criterion_group!(benches, bench_engine);
criterion_main!(benches);
