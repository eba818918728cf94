//! One request and its reply over a real loopback TCP connection, server in-process.
//!
//! `Ping` is answered by the connection's reader and shows the floor (framing, JSON, two socket
//! hops); `GetRecord` goes through the engine on a record the desktop holds `full`; `UpdateRecord`
//! changes that record, once on the memory store and once on sled, where the reply waits for the
//! flush to disk (the fsync cost of a durable change).

use baton::client::Client;
use baton::messages::*;
use baton::store::MemoryStore;
use baton_kit::*;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;
use tokio::runtime::Runtime;

const AGENT: &str = "1042";
const DN: &str = "7001";
const CALL: &str = "C1";
const RECORD: &str = "R1";

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A server with one desktop holding `RECORD` full, plus the switch and dialer that got it there.
struct Centre {
    server: TestServer,
    desktop: Client,
    _switch: Client,
    _dialer: Client,
}

impl Centre {
    async fn start(server: TestServer) -> Centre {
        let (mut desktop, _) = server.desktop(AGENT, DN).await;
        let (mut switch, _) = server.switch().await;
        let mut dialer = server.connect(Role::Dialer).await;
        switch.set_discard_pushes(true);
        dialer.set_discard_pushes(true);
        give(&mut switch, &mut dialer, &mut desktop, CALL, RECORD, DN).await;
        desktop.set_discard_pushes(true);
        desktop.clear_pushes();
        Centre {
            server,
            desktop,
            _switch: switch,
            _dialer: dialer,
        }
    }

    async fn stop(self) {
        self.server.shutdown().await;
    }
}

fn get_record() -> Request {
    record_req("GetRecord", RECORD)
}

fn update_record() -> Request {
    update_with_result(
        RECORD,
        "answered",
        json!({"note": "wants a callback after six", "amount": 120.5}),
    )
}

/// Times `iters` round trips of `make()` on the desktop, each reply checked by `ok`.
fn round_trips(
    rt: &Runtime,
    client: &mut Client,
    iters: u64,
    make: fn() -> Request,
    ok: fn(&ServerMsg) -> bool,
) -> std::time::Duration {
    rt.block_on(async {
        let started = Instant::now();
        for _ in 0..iters {
            let reply = client.request(make()).await.expect("reply");
            assert!(ok(&reply), "unexpected reply: {reply:?}");
            black_box(reply);
        }
        started.elapsed()
    })
}

fn bench_loopback(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("loopback");
    group.throughput(Throughput::Elements(1));

    let server = rt.block_on(TestServer::start_with_store(Arc::new(MemoryStore::new())));
    let mut centre = rt.block_on(Centre::start(server));
    group.bench_function("ping", |b| {
        b.iter_custom(|iters| {
            round_trips(
                &rt,
                &mut centre.desktop,
                iters,
                || Request::Ping,
                |m| *m == ServerMsg::Pong,
            )
        })
    });
    group.bench_function("get_record_memory", |b| {
        b.iter_custom(|iters| {
            round_trips(&rt, &mut centre.desktop, iters, get_record, |m| {
                matches!(
                    m,
                    ServerMsg::Record {
                        access: Access::Full,
                        ..
                    }
                )
            })
        })
    });
    group.bench_function("update_record_memory", |b| {
        b.iter_custom(|iters| {
            round_trips(&rt, &mut centre.desktop, iters, update_record, |m| {
                matches!(m, ServerMsg::RecordUpdated { .. })
            })
        })
    });
    rt.block_on(centre.stop());

    let server = rt.block_on(TestServer::start());
    let mut centre = rt.block_on(Centre::start(server));
    group.bench_function("update_record_sled_durable", |b| {
        b.iter_custom(|iters| {
            round_trips(&rt, &mut centre.desktop, iters, update_record, |m| {
                matches!(m, ServerMsg::RecordUpdated { .. })
            })
        })
    });
    rt.block_on(centre.stop());
    group.finish();
}

criterion_group!(benches, bench_loopback);
criterion_main!(benches);
