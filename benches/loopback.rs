//! One request and its reply over a real loopback TCP connection, server in-process.
//!
//! `Ping` is answered by the connection's reader and shows the floor (framing, JSON, two socket
//! hops); `GetRecord` goes through the engine on a record the desktop holds `full`; `UpdateRecord`
//! changes that record, once on the memory store and once on sled, where the reply waits for the
//! flush to disk (the fsync cost of a durable change).

use baton::client::Client;
use baton::config::Config;
use baton::messages::*;
use baton::server::{self, ServerHandle};
use baton::store::MemoryStore;
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

fn config(data_dir: Option<&std::path::Path>) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("valid address"),
        ..Config::default()
    };
    if let Some(dir) = data_dir {
        config.data_dir = dir.to_owned();
    }
    config
}

/// A server with one desktop holding `RECORD` full, plus the switch and dialer that got it there.
struct Centre {
    server: ServerHandle,
    desktop: Client,
    _switch: Client,
    _dialer: Client,
}

impl Centre {
    async fn start(server: ServerHandle) -> Centre {
        let addr = server.local_addr();
        let tokens = Config::default().tokens;
        let mut desktop = Client::connect(addr, Role::Desktop, &tokens.desktop)
            .await
            .expect("desktop connects");
        let login = Request::Login(Login {
            agent: AGENT.into(),
            dn: DN.into(),
            password: None,
            resume: None,
        });
        let reply = desktop.request(login).await.expect("login");
        assert!(matches!(reply, ServerMsg::LoggedIn { .. }), "{reply:?}");
        let mut switch = Client::connect(addr, Role::Switch, &tokens.switch)
            .await
            .expect("switch connects");
        switch.set_discard_pushes(true);
        let mut dialer = Client::connect(addr, Role::Dialer, &tokens.dialer)
            .await
            .expect("dialer connects");
        dialer.set_discard_pushes(true);
        let data = json!({"customer": "A. Customer", "balance": 120, "phone": "5551234"});
        let attach = Request::AttachRecord(AttachRecord {
            call: CALL.into(),
            record: RECORD.into(),
            campaign: "spring".into(),
            list: None,
            chain_id: None,
            chain_n: None,
            phone: None,
            data: data.as_object().cloned().unwrap_or_default(),
            chain: vec![],
        });
        let reply = dialer.request(attach).await.expect("attach");
        assert!(
            matches!(reply, ServerMsg::RecordAttached { .. }),
            "{reply:?}"
        );
        for event in [
            Request::Ringing(Ringing {
                call: CALL.into(),
                dn: DN.into(),
                ani: None,
                from_dn: None,
                consult_of: None,
            }),
            Request::Established(CallDn {
                call: CALL.into(),
                dn: DN.into(),
            }),
        ] {
            let reply = switch.request(event).await.expect("telephony event");
            assert_eq!(reply, ServerMsg::Ack);
        }
        loop {
            if let ServerMsg::AccessChanged {
                access: Access::Full,
                ..
            } = desktop.next_push().await.expect("access push")
            {
                break;
            }
        }
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
        let Centre { server, .. } = self;
        server.shutdown().await;
    }
}

fn get_record() -> Request {
    Request::GetRecord(RecordRef {
        record: RECORD.into(),
    })
}

fn update_record() -> Request {
    Request::UpdateRecord(RecordChange {
        record: RECORD.into(),
        call_result: Some("answered".into()),
        fields: json!({"note": "wants a callback after six", "amount": 120.5})
            .as_object()
            .cloned(),
    })
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

    let server = rt
        .block_on(server::start_with_store(
            config(None),
            Arc::new(MemoryStore::new()),
        ))
        .expect("server starts");
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

    let dir = tempfile::tempdir().expect("temp dir");
    let server = rt
        .block_on(server::start(config(Some(dir.path()))))
        .expect("sled server starts");
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
