//! The transition rules, including the done-when scenarios.

mod common;

use common::*;
use movewatch_geofence::{
    EngineConfig, FenceSet, GeofenceEngine, Transition, TransitionKind, haversine_m,
};

const LEI: (f64, f64) = (53.79, -1.58);

fn engine(set: FenceSet) -> GeofenceEngine {
    GeofenceEngine::new(set, EngineConfig::default())
}

fn prison() -> GeofenceEngine {
    engine(one_site("LEI", "prison", LEI.0, LEI.1))
}

fn kinds(ts: &[Transition]) -> Vec<TransitionKind> {
    ts.iter().map(|t| t.kind).collect()
}

#[test]
fn noise_around_the_boundary_makes_at_most_one_transition() {
    // A van parked on the 400 m boundary, 200 fixes 5 s apart, each ±30 m
    // off in both axes; many seeds, bearings, and with and without speed/hdop.
    let mut entered = 0;
    for seed in 1..=60u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let bearing = rng.next_f64() * std::f64::consts::TAU;
        let mut eng = prison();
        let v = van("AB12CDE");
        let mut all = Vec::new();
        for i in 0..200 {
            let (e, n) = (
                400.0 * bearing.cos() + rng.pm(30.0),
                400.0 * bearing.sin() + rng.pm(30.0),
            );
            let speed = if seed % 2 == 0 { Some(0.0) } else { None };
            let hdop = if seed % 3 == 0 {
                Some(0.8 + rng.next_f64())
            } else {
                None
            };
            all.extend(eng.observe(
                v,
                &fix(offset(LEI.0, LEI.1, e, n), i as f64 * 5.0, speed, hdop),
            ));
        }
        assert!(all.len() <= 1, "seed {seed}: {all:?}");
        if let Some(t) = all.first() {
            assert_eq!(t.kind, TransitionKind::Enter, "seed {seed}");
            entered += 1;
        }
    }
    // The noise does put the van inside twice in a row sometimes: the test
    // exercises the enter path, not only "nothing happens".
    assert!(entered > 0);
}

#[test]
fn noise_on_a_road_along_the_boundary_is_never_an_arrival() {
    // Driving at 50 km/h along a road tangent to the 400 m fence, ±30 m noise.
    for seed in 1..=30u64 {
        let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let mut eng = prison();
        let v = van("AB12CDE");
        let mut all = Vec::new();
        for i in 0..200 {
            let s = -2000.0 + i as f64 * 5.0 * 50.0 / 3.6 / 2.5; // 5.6 m/s steps of 2 s
            let p = offset(LEI.0, LEI.1, s + rng.pm(30.0), 400.0 + rng.pm(30.0));
            all.extend(eng.observe(v, &fix(p, i as f64 * 2.0, Some(50.0), Some(1.0))));
        }
        assert!(all.len() <= 1, "seed {seed}: {all:?}");
        assert!(
            all.iter().all(|t| t.kind != TransitionKind::Enter),
            "seed {seed}: {all:?}"
        );
    }
}

#[test]
fn a_van_600_m_from_a_prison_at_100_kmh_makes_no_transition() {
    for interval in [1.0, 5.0, 30.0] {
        let mut eng = prison();
        let v = van("AB12CDE");
        let step = 100.0 / 3.6 * interval;
        let mut i = 0;
        let mut x = -5000.0;
        while x <= 5000.0 {
            let p = offset(LEI.0, LEI.1, x, -600.0);
            let out = eng.observe(v, &fix(p, i as f64 * interval, Some(100.0), Some(1.0)));
            assert!(out.is_empty(), "interval {interval}: {out:?}");
            x += step;
            i += 1;
        }
        assert_eq!(eng.inside(&v).count(), 0);
    }
}

#[test]
fn drive_in_wait_twenty_minutes_leave() {
    let mut eng = prison();
    let fence = eng.fences().get(&sid("LEI")).unwrap().fence.clone();
    let v = van("AB12CDE");
    let mut rng = Rng(7);
    let mut fixes = Vec::new();
    let mut t = 0.0;
    // In from 3 km west at 50 km/h, fixes every 10 s.
    let mut x = -3000.0;
    while x < -30.0 {
        fixes.push(fix(offset(LEI.0, LEI.1, x, 0.0), t, Some(50.0), Some(1.2)));
        x += 50.0 / 3.6 * 10.0;
        t += 10.0;
    }
    // Parked 20 minutes near the centre, ±8 m noise.
    let park_end = t + 1200.0;
    while t < park_end {
        let p = offset(LEI.0, LEI.1, rng.pm(8.0), rng.pm(8.0));
        fixes.push(fix(p, t, Some(0.0), Some(1.0)));
        t += 10.0;
    }
    // Out to 3 km east.
    let mut x = 0.0;
    while x < 3000.0 {
        fixes.push(fix(offset(LEI.0, LEI.1, x, 0.0), t, Some(50.0), Some(1.2)));
        x += 50.0 / 3.6 * 10.0;
        t += 10.0;
    }

    // The expected times, from the rules applied by hand to the fixes.
    let u = |f: &movewatch_geofence::Fix| f.hdop.unwrap() * 5.0;
    let first_in = fixes
        .iter()
        .find(|f| fence.signed_distance_m(f.lat, f.lon) <= -u(f))
        .unwrap()
        .ts;
    let first_beyond = fixes
        .iter()
        .filter(|f| f.ts > first_in)
        .find(|f| fence.signed_distance_m(f.lat, f.lon) >= 100.0 + u(f))
        .unwrap()
        .ts;

    let mut all = Vec::new();
    for f in &fixes {
        all.extend(eng.observe(v, f));
        if f.ts > first_in + chrono::Duration::seconds(60) && f.ts < first_beyond {
            assert_eq!(eng.inside(&v).collect::<Vec<_>>(), vec![&sid("LEI")]);
        }
    }
    assert_eq!(
        kinds(&all),
        vec![TransitionKind::Enter, TransitionKind::Exit],
        "{all:?}"
    );
    assert_eq!(all[0].ts, first_in);
    assert_eq!(all[1].ts, first_beyond);
    assert!(all.iter().all(|t| t.site == sid("LEI") && t.vehicle == v));
    assert_eq!(eng.inside(&v).count(), 0);
}

#[test]
fn a_point_one_km_away_is_never_inside() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/sites.csv");
    let set = FenceSet::load(&[path]).unwrap();
    assert_eq!(set.len(), 603);
    for s in set.iter() {
        for k in 0..16 {
            let a = k as f64 / 16.0 * std::f64::consts::TAU;
            let r = s.fence.radius_m().unwrap() + 1000.0;
            let (lat, lon) = offset(s.site.lat, s.site.lon, r * a.cos(), r * a.sin());
            assert!(
                set.containing(lat, lon).all(|c| c.site.id != s.site.id),
                "{}",
                s.site.id
            );
            assert!(s.fence.signed_distance_m(lat, lon) > 990.0);
        }
    }
    // And a van waiting there for an hour is never reported at the prison.
    let mut eng = prison();
    let v = van("AB12CDE");
    for i in 0..360 {
        let out = eng.observe(
            v,
            &fix(
                offset(LEI.0, LEI.1, 1400.0, 0.0),
                i as f64 * 10.0,
                Some(0.0),
                None,
            ),
        );
        assert!(out.is_empty());
    }
}

#[test]
fn crossing_between_two_fixes_is_a_pass_through_at_the_entry_time() {
    // A 150 m court; fixes 30 s apart at 100 km/h (833 m): none inside.
    let mut eng = engine(one_site("CRT-A", "court", LEI.0, LEI.1));
    let v = van("AB12CDE");
    let step = 100.0 / 3.6 * 30.0;
    let mut all = Vec::new();
    for i in 0..6 {
        let x = -1300.0 + i as f64 * step;
        all.extend(eng.observe(
            v,
            &fix(
                offset(LEI.0, LEI.1, x, 20.0),
                i as f64 * 30.0,
                Some(100.0),
                None,
            ),
        ));
    }
    assert_eq!(kinds(&all), vec![TransitionKind::PassThrough], "{all:?}");
    // Entry at x = -sqrt(150² - 20²) ≈ -148.7 m: between the fix at -1300 + step
    // (t = 30 s) and the next, linear in time.
    let entry_x = -(150.0f64.powi(2) - 20.0f64.powi(2)).sqrt();
    let expect = 30.0 + (entry_x - (-1300.0 + step)) / step * 30.0;
    let got = (all[0].ts - t0()).num_milliseconds() as f64 / 1000.0;
    assert!((got - expect).abs() < 0.5, "{got} vs {expect}");
    assert_eq!(eng.inside(&v).count(), 0);
}

#[test]
fn a_single_fast_inside_fix_is_a_pass_through_not_an_arrival() {
    let mut eng = prison();
    let v = van("AB12CDE");
    let pts = [-1500.0, -700.0, 100.0, 900.0, 1700.0];
    let mut all = Vec::new();
    for (i, x) in pts.iter().enumerate() {
        all.extend(eng.observe(
            v,
            &fix(
                offset(LEI.0, LEI.1, *x, 0.0),
                i as f64 * 29.0,
                Some(100.0),
                None,
            ),
        ));
    }
    assert_eq!(kinds(&all), vec![TransitionKind::PassThrough]);
    assert_eq!(all[0].ts, at(2.0 * 29.0), "stamped at the inside fix");
}

#[test]
fn driving_through_without_stopping_is_one_pass_through() {
    // 1 Hz fixes straight through the 400 m prison fence at 60 km/h: ~48 fixes inside.
    let mut eng = prison();
    let v = van("AB12CDE");
    let mut all = Vec::new();
    let mut first_inside = None;
    for i in 0..200 {
        let x = -1500.0 + i as f64 * 60.0 / 3.6;
        let p = offset(LEI.0, LEI.1, x, 50.0);
        if first_inside.is_none() && haversine_m(LEI.0, LEI.1, p.0, p.1) <= 400.0 - 5.0 {
            first_inside = Some(at(i as f64));
        }
        all.extend(eng.observe(v, &fix(p, i as f64, Some(60.0), Some(1.0))));
    }
    assert_eq!(kinds(&all), vec![TransitionKind::PassThrough], "{all:?}");
    assert_eq!(Some(all[0].ts), first_inside);
}

#[test]
fn a_straddling_fix_changes_nothing() {
    let mut eng = prison();
    let v = van("AB12CDE");
    // 10 m inside the boundary with hdop 4 (20 m uncertainty): straddles.
    let p = offset(LEI.0, LEI.1, 390.0, 0.0);
    for i in 0..20 {
        assert!(
            eng.observe(v, &fix(p, i as f64 * 10.0, Some(0.0), Some(4.0)))
                .is_empty()
        );
    }
    assert_eq!(eng.inside(&v).count(), 0);
    // The same place with a good fix (5 m): enter on the second fix, stamped at the first.
    assert!(
        eng.observe(v, &fix(p, 300.0, Some(0.0), Some(1.0)))
            .is_empty()
    );
    let out = eng.observe(v, &fix(p, 310.0, Some(0.0), Some(1.0)));
    assert_eq!(kinds(&out), vec![TransitionKind::Enter]);
    assert_eq!(out[0].ts, at(300.0));
    // Once inside, a fix straddling the exit buffer's edge does not start the exit clock.
    let edge = offset(LEI.0, LEI.1, 500.0, 0.0);
    assert!(
        eng.observe(v, &fix(edge, 400.0, Some(0.0), Some(4.0)))
            .is_empty()
    );
    let far = offset(LEI.0, LEI.1, 800.0, 0.0);
    assert!(
        eng.observe(v, &fix(far, 420.0, Some(20.0), Some(1.0)))
            .is_empty()
    );
    let out = eng.observe(v, &fix(far, 450.0, Some(0.0), Some(1.0)));
    assert_eq!(kinds(&out), vec![TransitionKind::Exit]);
    assert_eq!(out[0].ts, at(420.0));
}

#[test]
fn exit_needs_thirty_seconds_beyond_the_buffer() {
    let mut eng = prison();
    let v = van("AB12CDE");
    eng.restore(v, [&sid("LEI")]);
    // Between the fence and the buffer for a long time: still inside.
    for i in 0..30 {
        let out = eng.observe(
            v,
            &fix(
                offset(LEI.0, LEI.1, 460.0, 0.0),
                i as f64 * 10.0,
                Some(0.0),
                None,
            ),
        );
        assert!(out.is_empty());
    }
    // Beyond, back within, beyond again: the clock restarts.
    let beyond = offset(LEI.0, LEI.1, 520.0, 0.0);
    assert!(eng.observe(v, &fix(beyond, 400.0, None, None)).is_empty());
    assert!(
        eng.observe(v, &fix(offset(LEI.0, LEI.1, 450.0, 0.0), 420.0, None, None))
            .is_empty()
    );
    assert!(eng.observe(v, &fix(beyond, 440.0, None, None)).is_empty());
    assert!(eng.observe(v, &fix(beyond, 460.0, None, None)).is_empty());
    let out = eng.observe(v, &fix(beyond, 470.0, None, None));
    assert_eq!(kinds(&out), vec![TransitionKind::Exit]);
    assert_eq!(out[0].ts, at(440.0));
}

#[test]
fn restored_state_makes_no_false_arrival() {
    let mut eng = prison();
    let v = van("AB12CDE");
    assert_eq!(eng.restore(v, [&sid("LEI"), &sid("NOPE")]), 1);
    assert_eq!(eng.inside(&v).collect::<Vec<_>>(), vec![&sid("LEI")]);
    for i in 0..10 {
        assert!(
            eng.observe(v, &fix(LEI, i as f64 * 10.0, Some(0.0), None))
                .is_empty()
        );
    }
    assert_eq!(eng.inside(&v).count(), 1);
    // Without the restore the same fixes are an arrival.
    let mut fresh = prison();
    let mut all = Vec::new();
    for i in 0..10 {
        all.extend(fresh.observe(v, &fix(LEI, i as f64 * 10.0, Some(0.0), None)));
    }
    assert_eq!(kinds(&all), vec![TransitionKind::Enter]);
}

#[test]
fn overlapping_fences_are_each_entered() {
    let (lat2, lon2) = offset(LEI.0, LEI.1, 300.0, 0.0);
    let set = FenceSet::new(
        vec![
            site("LEI", "prison", LEI.0, LEI.1),
            site("CRT-B", "court", lat2, lon2),
        ],
        vec![],
    )
    .unwrap();
    let mut eng = engine(set);
    let v = van("AB12CDE");
    let p = offset(LEI.0, LEI.1, 250.0, 0.0);
    let mut all = Vec::new();
    for i in 0..3 {
        all.extend(eng.observe(v, &fix(p, i as f64 * 10.0, Some(0.0), None)));
    }
    let mut sites: Vec<_> = all.iter().map(|t| (t.site.to_string(), t.kind)).collect();
    sites.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        sites,
        vec![
            ("CRT-B".to_owned(), TransitionKind::Enter),
            ("LEI".to_owned(), TransitionKind::Enter)
        ]
    );
    assert_eq!(eng.inside(&v).count(), 2);
}

#[test]
fn old_fixes_are_ignored_and_state_stays_small() {
    let mut eng = prison();
    let v = van("AB12CDE");
    assert!(eng.observe(v, &fix(LEI, 100.0, Some(0.0), None)).is_empty());
    // Older and equal timestamps change nothing.
    assert!(eng.observe(v, &fix(LEI, 50.0, Some(0.0), None)).is_empty());
    assert!(eng.observe(v, &fix(LEI, 100.0, Some(0.0), None)).is_empty());
    let out = eng.observe(v, &fix(LEI, 110.0, Some(0.0), None));
    assert_eq!(kinds(&out), vec![TransitionKind::Enter]);
    assert_eq!(out[0].ts, at(100.0));
    // 1000 vans far from any fence add no per-site state (only a last fix each).
    for i in 0..1000 {
        let v = van(&format!("V{i}"));
        assert!(
            eng.observe(v, &fix(offset(LEI.0, LEI.1, 5000.0, 0.0), 1.0, None, None))
                .is_empty()
        );
        assert_eq!(eng.inside(&v).count(), 0);
    }
    assert_eq!(eng.vehicle_count(), 1001);
}

#[test]
fn replacing_a_fence_while_inside_emits_nothing_until_the_rules_say_so() {
    let mut eng = prison();
    let v = van("AB12CDE");
    eng.restore(v, [&sid("LEI")]);
    // Move the fence 5 km east; the van stays put.
    let (lat, lon) = offset(LEI.0, LEI.1, 5000.0, 0.0);
    let old = eng
        .replace_fence(&sid("LEI"), star(lat, lon, &[300.0; 8], 0.0))
        .unwrap();
    assert!(old.is_circle());
    assert_eq!(eng.inside(&v).count(), 1);
    assert!(eng.observe(v, &fix(LEI, 0.0, Some(0.0), None)).is_empty());
    let out = eng.observe(v, &fix(LEI, 30.0, Some(0.0), None));
    assert_eq!(kinds(&out), vec![TransitionKind::Exit]);
    assert_eq!(out[0].ts, at(0.0));
    assert!(eng.replace_fence(&sid("NOPE"), old).is_err());
}
