use super::*;
use proptest::prelude::*;

fn ctx() -> DecodeContext {
    DecodeContext {
        supplier: SupplierId::parse("geoamey").unwrap(),
        topic_vehicle: Some(VehicleId::parse("AB12CDE").unwrap()),
        now: DateTime::parse_from_rfc3339("2026-11-21T09:00:00Z")
            .unwrap()
            .with_timezone(&Utc),
        shape: Shape::ObjectOrArray,
    }
}

const GOOD: &str = r#"{"tracking_id":"t1","tracking_timestamp":"2026-11-21T08:59:00+00:00","vehicle_registration":"AB12 CDE","latitude":53.8,"longitude":-1.55,"speed":48.5,"bearing":270,"precision_hdop":1.2,"unknown":"ignored"}"#;

fn with(field: &str, value: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
    if value == "<absent>" {
        v.as_object_mut().unwrap().remove(field);
    } else {
        v[field] = serde_json::from_str(value).unwrap();
    }
    v.to_string()
}

fn reason_of(payload: &str) -> Reason {
    let out = decode_positions(payload.as_bytes(), &ctx()).unwrap();
    assert_eq!(out.items.len(), 0, "expected a rejection for {payload}");
    out.rejections[0].reason
}

#[test]
fn a_good_point_decodes() {
    let out = decode_positions(GOOD.as_bytes(), &ctx()).unwrap();
    assert_eq!(out.total, 1);
    let p = &out.items[0];
    assert_eq!(p.vehicle.as_str(), "AB12CDE");
    assert_eq!(p.tracking_id, "t1");
    assert_eq!((p.lat, p.lon), (53.8, -1.55));
    assert_eq!(p.speed_kmh, Some(48.5));
    assert_eq!(format_ts(&p.ts), "2026-11-21T08:59:00Z");
}

#[test]
fn each_reason_is_given() {
    assert_eq!(
        reason_of(&with("latitude", "<absent>")),
        Reason::MissingField
    );
    assert_eq!(reason_of(&with("latitude", "null")), Reason::MissingField);
    assert_eq!(
        reason_of(&with("tracking_id", "<absent>")),
        Reason::MissingField
    );
    assert_eq!(reason_of(&with("latitude", "123")), Reason::OutOfRange);
    assert_eq!(reason_of(&with("longitude", "-181")), Reason::OutOfRange);
    assert_eq!(reason_of(&with("speed", "251")), Reason::OutOfRange);
    assert_eq!(reason_of(&with("bearing", "-1")), Reason::OutOfRange);
    assert_eq!(reason_of(&with("precision_hdop", "0")), Reason::OutOfRange);
    assert_eq!(
        reason_of(&with("latitude", "\"53.8\"")),
        Reason::InvalidValue
    );
    assert_eq!(
        reason_of(&with("tracking_timestamp", "\"yesterday\"")),
        Reason::InvalidValue
    );
    assert_eq!(
        reason_of(&with("tracking_timestamp", "\"2026-11-21T09:06:00Z\"")),
        Reason::FutureTimestamp
    );
    assert_eq!(
        reason_of(&with("vehicle_registration", "\"XY99ZZZ\"")),
        Reason::VehicleMismatch
    );
    assert_eq!(
        reason_of(&with("vehicle_registration", "\"!!\"")),
        Reason::InvalidValue
    );
    let zero = with("latitude", "0");
    let zero: serde_json::Value = serde_json::from_str(&zero).unwrap();
    let mut zero = zero;
    zero["longitude"] = 0.into();
    assert_eq!(reason_of(&zero.to_string()), Reason::OutOfRange);
    assert_eq!(reason_of("[42]"), Reason::MalformedJson);
}

#[test]
fn a_future_timestamp_within_five_minutes_is_accepted() {
    let out = decode_positions(
        with("tracking_timestamp", "\"2026-11-21T09:04:59Z\"").as_bytes(),
        &ctx(),
    )
    .unwrap();
    assert_eq!(out.items.len(), 1);
}

#[test]
fn whole_payload_errors() {
    assert_eq!(
        decode_positions(b"not json", &ctx()).unwrap_err().reason,
        Reason::MalformedJson
    );
    assert_eq!(
        decode_positions(b"\"a string\"", &ctx())
            .unwrap_err()
            .reason,
        Reason::MalformedJson
    );
    assert_eq!(
        decode_positions(b"[{\"a\":1}", &ctx()).unwrap_err().reason,
        Reason::MalformedJson
    );
    let big = vec![b' '; MAX_PAYLOAD_BYTES + 1];
    assert_eq!(
        decode_positions(&big, &ctx()).unwrap_err().reason,
        Reason::TooLarge
    );
    let many = format!("[{}]", vec!["{}"; MAX_POINTS_PER_PAYLOAD + 1].join(","));
    assert_eq!(
        decode_positions(many.as_bytes(), &ctx())
            .unwrap_err()
            .reason,
        Reason::TooLarge
    );
    let http = DecodeContext {
        shape: Shape::Array,
        ..ctx()
    };
    assert_eq!(
        decode_positions(GOOD.as_bytes(), &http).unwrap_err().reason,
        Reason::MalformedJson
    );
}

#[test]
fn a_bad_point_is_rejected_alone() {
    let payload = format!("[{GOOD},{},{GOOD},17]", with("latitude", "123"));
    let out = decode_positions(payload.as_bytes(), &ctx()).unwrap();
    assert_eq!(out.total, 4);
    assert_eq!(out.items.len(), 2);
    let got: Vec<(usize, Reason)> = out.rejections.iter().map(|r| (r.index, r.reason)).collect();
    assert_eq!(
        got,
        vec![(1, Reason::OutOfRange), (3, Reason::MalformedJson)]
    );
}

#[test]
fn integer_tracking_ids_and_escaped_strings_are_accepted() {
    let out = decode_positions(with("tracking_id", "12345").as_bytes(), &ctx()).unwrap();
    assert_eq!(out.items[0].tracking_id, "12345");
    let out = decode_positions(with("tracking_id", "\"a\\u0062c\"").as_bytes(), &ctx()).unwrap();
    assert_eq!(out.items[0].tracking_id, "abc");
}

#[test]
fn events_decode_and_unknown_types_pass_through() {
    let payload =
        br#"[{"event_type":"MoveStart","occurred_at":"2026-11-21T08:00:00Z","move_id":"m-1"},
        {"event_type":"SomethingNew","occurred_at":"2026-11-21T08:00:00Z","details":{"x":1}},
        {"event_type":"MoveStart"},
        {"event_type":"MoveRedirect","occurred_at":"2026-11-21T08:00:00Z","details":[1]}]"#;
    let out = decode_events(payload, &ctx()).unwrap();
    assert_eq!(out.items.len(), 2);
    assert_eq!(out.items[0].kind, EventKind::MoveStart);
    assert_eq!(out.items[1].kind, EventKind::Other("SomethingNew".into()));
    assert_eq!(
        out.rejections.iter().map(|r| r.reason).collect::<Vec<_>>(),
        vec![Reason::MissingField, Reason::InvalidValue]
    );
}

fn arb_position() -> impl Strategy<Value = Position> {
    (
        "[A-Za-z0-9:_-]{1,40}",
        -240_000_000i64..300_000_000_000,
        (-90.0f64..=90.0, -180.0f64..=180.0)
            .prop_filter("not (0,0)", |(a, b)| !(*a == 0.0 && *b == 0.0)),
        proptest::option::of(0.0f64..=250.0),
        proptest::option::of(0.0f64..=360.0),
        proptest::option::of(-500.0f64..5000.0),
        proptest::option::of(0.01f64..50.0),
        proptest::option::of("[A-Za-z0-9-]{1,20}"),
    )
        .prop_map(
            |(tid, secs_before, (lat, lon), speed, bearing, alt, hdop, journey)| Position {
                supplier: SupplierId::parse("geoamey").unwrap(),
                vehicle: VehicleId::parse("AB12CDE").unwrap(),
                tracking_id: tid,
                ts: ctx().now - Duration::microseconds(secs_before),
                lat,
                lon,
                journey_id: journey.map(|j| JourneyId::parse(&j).unwrap()),
                speed_kmh: speed,
                bearing,
                altitude: alt,
                hdop,
                vdop: hdop,
                vin: None,
                flags: PointFlags::default(),
            },
        )
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_positions(&bytes, &ctx());
        let _ = decode_events(&bytes, &ctx());
    }

    #[test]
    fn arbitrary_json_like_text_never_panics(text in r#"[\[\]{}",:0-9a-z_ .eE+-]{0,300}"#) {
        let _ = decode_positions(text.as_bytes(), &ctx());
        let _ = decode_events(text.as_bytes(), &ctx());
    }

    #[test]
    fn valid_points_round_trip(points in proptest::collection::vec(arb_position(), 1..20)) {
        let wire: Vec<WirePoint<'_>> = points.iter().map(Position::to_wire).collect();
        let payload = serde_json::to_vec(&wire).unwrap();
        let out = decode_positions(&payload, &ctx()).unwrap();
        prop_assert!(out.rejections.is_empty(), "{:?}", out.rejections);
        prop_assert_eq!(out.items, points);
    }
}
