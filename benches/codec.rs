//! Frame encode/decode cost, per message.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use ticketd_proto::{
    decode_request, decode_response, Command, Op, Purchase, Request, Response, ResultBody,
    DEFAULT_MAX_FRAME,
};

fn buy() -> Request {
    Request {
        req_id: 42,
        command: Command::Buy(Purchase {
            event: 1,
            user: 123_456,
            qty: 1,
        }),
    }
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));

    let request = buy();
    let mut buf = BytesMut::with_capacity(64);
    group.bench_function("encode_buy", |b| {
        b.iter(|| {
            buf.clear();
            black_box(request).encode(&mut buf);
            black_box(buf.len())
        })
    });

    let mut wire = BytesMut::new();
    request.encode(&mut wire);
    group.bench_function("decode_buy", |b| {
        b.iter(|| decode_request(black_box(&wire), DEFAULT_MAX_FRAME))
    });

    let response = Response::ok(Op::Buy, 42, ResultBody::Order { order_id: 99 });
    group.bench_function("encode_buy_ok", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&response).encode(&mut buf);
            black_box(buf.len())
        })
    });
    let mut wire = BytesMut::new();
    response.encode(&mut wire);
    group.bench_function("decode_buy_ok", |b| {
        b.iter(|| decode_response(black_box(&wire), DEFAULT_MAX_FRAME))
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
