//! Decode and validate throughput on one core, for single-point payloads and
//! 1000-point arrays (issue target: at least 500k points/s per core), both
//! for the decoder alone and for the whole MQTT intake step
//! (`ingest::batch_from_mqtt`: topic, supplier, decode, validation,
//! vehicle ownership, dead letters).
//! Run: `cargo bench -p movewatch-benches --bench decode`.

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use model::decode::{DecodeContext, Shape, decode_positions};
use model::{SupplierId, VehicleId};
use movewatch_benches::{array_json, point_json};

fn ctx() -> DecodeContext {
    DecodeContext {
        supplier: SupplierId::parse("geoamey").unwrap(),
        topic_vehicle: Some(VehicleId::parse("AB12CDE").unwrap()),
        now: Utc::now(),
        shape: Shape::ObjectOrArray,
    }
}

fn decode(c: &mut Criterion) {
    let ctx = ctx();
    let singles: Vec<String> = (0..1000).map(|i| point_json("AB12CDE", i)).collect();
    let array = array_json("AB12CDE", 1000);
    assert!(
        array.len() <= model::MAX_PAYLOAD_BYTES,
        "the array must be a legal payload"
    );

    let mut group = c.benchmark_group("decode_validate");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("1000 single-point payloads", |b| {
        b.iter(|| {
            let mut ok = 0;
            for s in &singles {
                ok += decode_positions(s.as_bytes(), &ctx)
                    .map(|d| d.items.len())
                    .unwrap_or(0);
            }
            assert_eq!(ok, 1000);
        })
    });
    group.bench_function("one 1000-point array", |b| {
        b.iter(|| {
            let d = decode_positions(array.as_bytes(), &ctx).unwrap();
            assert_eq!(d.items.len(), 1000);
        })
    });

    // The whole intake step per MQTT message, as the poll task runs it.
    let suppliers = ingest::Suppliers::from_config(&[]).claiming_on_first_report(true);
    let topic = "movewatch/v1/geoamey/AB12CDE/positions";
    group.bench_function("intake: 1000 single-point messages", |b| {
        b.iter(|| {
            let mut ok = 0;
            for s in &singles {
                let (commit, _rx) = model::CommitToken::new();
                ok += ingest::batch_from_mqtt(topic, s.as_bytes(), &suppliers, commit)
                    .positions
                    .len();
            }
            assert_eq!(ok, 1000);
        })
    });
    group.bench_function("intake: one 1000-point message", |b| {
        b.iter(|| {
            let (commit, _rx) = model::CommitToken::new();
            let batch = ingest::batch_from_mqtt(topic, array.as_bytes(), &suppliers, commit);
            assert_eq!(batch.positions.len(), 1000);
        })
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
