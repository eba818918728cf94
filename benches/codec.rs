//! Framing and message decoding: what every request costs before the engine sees it.

use baton::codec::{encode_frame, FrameCodec};
use baton::messages::*;
use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use tokio_util::codec::{Decoder, Encoder};

fn update_record_frame() -> Vec<u8> {
    json!({
        "type": "UpdateRecord", "ref": 12345, "record": "R-000123",
        "call_result": "answered",
        "fields": {"note": "wants a callback after six", "amount": 120.5, "preferred": "evening"}
    })
    .to_string()
    .into_bytes()
}

fn bench_codec(c: &mut Criterion) {
    let body = update_record_frame();
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));

    group.bench_function("decode_frame", |b| {
        let wire = encode_frame(&body);
        let mut codec = FrameCodec::new(65536);
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            black_box(codec.decode(&mut buf).unwrap().unwrap());
        })
    });

    group.bench_function("parse_request", |b| {
        b.iter(|| black_box(parse_request(black_box(&body), Some(Role::Desktop)).unwrap()))
    });

    let access = Envelope::push(ServerMsg::AccessChanged {
        record: "R-000123".into(),
        access: Access::Full,
        previous: Access::Revoked,
        cause: AccessCause::Transfer,
        call: Some("C-98765".into()),
        data: Some(
            json!({"name": "A. Customer", "balance": 120, "phone": "5551234"})
                .as_object()
                .unwrap()
                .clone(),
        ),
        context: Some(Context {
            call_result: Some("answered".into()),
            fields: json!({"note": "wants a callback"})
                .as_object()
                .unwrap()
                .clone(),
        }),
    });
    group.bench_function("encode_access_changed", |b| {
        let mut codec = FrameCodec::new(65536);
        let mut dst = BytesMut::with_capacity(4096);
        b.iter(|| {
            dst.clear();
            codec.encode(access.to_bytes(), &mut dst).unwrap();
            black_box(&dst);
        })
    });

    group.bench_function("encode_ack", |b| {
        let ack = Envelope::reply(Some(12345), ServerMsg::Ack);
        b.iter(|| black_box(ack.to_bytes()))
    });

    let frames: Bytes = {
        let mut wire = BytesMut::new();
        for _ in 0..100 {
            wire.extend_from_slice(&encode_frame(&body));
        }
        wire.freeze()
    };
    group.throughput(Throughput::Elements(100));
    group.bench_function("decode_and_parse_100_pipelined", |b| {
        let mut codec = FrameCodec::new(65536);
        b.iter(|| {
            let mut buf = BytesMut::from(&frames[..]);
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                black_box(parse_request(&frame, Some(Role::Desktop)).unwrap());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench_codec);
criterion_main!(benches);
