//! Decode and validate throughput on one core, for single-point payloads and
//! 1000-point arrays (issue target: at least 500k points/s per core).
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
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
