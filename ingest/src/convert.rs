//! From a received payload to an [`IngestBatch`], counting as it goes.

use std::time::Instant;

use chrono::Utc;
use model::decode::{DecodeContext, Shape, decode_events, decode_positions};
use model::reject::truncate_raw;
use model::topic::{MessageKind, supplier_segment};
use model::{
    CommitToken, DeadLetter, IngestBatch, Position, Reason, Rejection, Source, SupplierId, Topic,
};

fn count_rejected(reason: Reason, n: u64) {
    metrics::counter!("movewatch_ingest_rejected_total", "reason" => reason.as_str()).increment(n);
}

fn whole_message_letter(
    reason: Reason,
    detail: String,
    supplier: Option<&str>,
    topic: Option<&str>,
    payload: &[u8],
) -> DeadLetter {
    count_rejected(reason, 1);
    DeadLetter {
        reason,
        detail,
        supplier: supplier.map(str::to_owned),
        topic: topic.map(str::to_owned),
        received_at: Utc::now(),
        index: None,
        raw: truncate_raw(&String::from_utf8_lossy(
            &payload[..payload.len().min(2 * model::reject::MAX_RAW_BYTES)],
        )),
    }
}

fn empty_batch(source: Source, commit: CommitToken) -> IngestBatch {
    IngestBatch {
        source,
        received: Instant::now(),
        received_at: Utc::now(),
        positions: vec![],
        events: vec![],
        dead_letters: vec![],
        transitions: vec![],
        derived: Default::default(),
        commit,
    }
}

/// The payload indices of the elements that were not rejected, in order.
fn valid_indices(total: usize, rejections: &[Rejection]) -> Vec<usize> {
    let mut rejected = vec![false; total];
    for r in rejections {
        if let Some(slot) = rejected.get_mut(r.index) {
            *slot = true;
        }
    }
    (0..total).filter(|i| !rejected[*i]).collect()
}

/// Moves elements (points or events) for a vehicle the register does not
/// give to their supplier into rejections (`vehicle_owned_by_other_supplier`,
/// `unknown_vehicle`), keeping `indices` (payload index of each kept element)
/// in step.
fn enforce_ownership<T>(
    items: &mut Vec<T>,
    rejections: &mut Vec<Rejection>,
    suppliers: &crate::Suppliers,
    indices: &mut Vec<usize>,
    owner_of: impl Fn(&T) -> (model::VehicleId, SupplierId),
    raw_of: impl Fn(&T) -> String,
) {
    let mut kept = Vec::with_capacity(items.len());
    let mut kept_indices = Vec::with_capacity(items.len());
    for (item, i) in items.drain(..).zip(indices.drain(..)) {
        let (vehicle, supplier) = owner_of(&item);
        match suppliers.check_vehicle(vehicle, supplier) {
            Ok(()) => {
                kept.push(item);
                kept_indices.push(i);
            }
            Err((reason, detail)) => rejections.push(Rejection {
                index: i,
                reason,
                detail,
                raw: truncate_raw(&raw_of(&item)),
            }),
        }
    }
    *items = kept;
    *indices = kept_indices;
}

/// A point as the device's JSON, for a dead letter.
fn position_text(p: &Position) -> String {
    serde_json::to_string(&p.to_wire()).unwrap_or_default()
}

/// Decodes an MQTT message into a batch. Never fails: whatever is wrong
/// becomes dead letters in the batch.
pub fn batch_from_mqtt(
    topic: &str,
    payload: &[u8],
    suppliers: &crate::Suppliers,
    commit: CommitToken,
) -> IngestBatch {
    let mut batch = empty_batch(
        Source::Mqtt {
            topic: topic.to_owned(),
        },
        commit,
    );
    let parsed = match Topic::parse(topic) {
        Ok(t) => t,
        Err((reason, detail)) => {
            metrics::counter!("movewatch_ingest_points_total").increment(1);
            batch.dead_letters.push(whole_message_letter(
                reason,
                detail,
                supplier_segment(topic),
                Some(topic),
                payload,
            ));
            return batch;
        }
    };
    let supplier = parsed.supplier.as_str();
    if !suppliers.accepts(&parsed.supplier) {
        metrics::counter!("movewatch_ingest_points_total").increment(1);
        let detail = format!("supplier {supplier} is not configured");
        batch.dead_letters.push(whole_message_letter(
            Reason::UnknownSupplier,
            detail,
            Some(supplier),
            Some(topic),
            payload,
        ));
        return batch;
    }
    let ctx = DecodeContext {
        supplier: parsed.supplier,
        topic_vehicle: Some(parsed.vehicle),
        now: batch.received_at,
        shape: Shape::ObjectOrArray,
    };
    let decoded = match parsed.kind {
        MessageKind::Positions => decode_positions(payload, &ctx).map(|mut decoded| {
            let mut indices = valid_indices(decoded.total, &decoded.rejections);
            enforce_ownership(
                &mut decoded.items,
                &mut decoded.rejections,
                suppliers,
                &mut indices,
                |p| (p.vehicle, p.supplier),
                position_text,
            );
            batch.positions = decoded.items;
            (decoded.total, decoded.rejections)
        }),
        MessageKind::Events => decode_events(payload, &ctx).map(|mut decoded| {
            let mut indices = valid_indices(decoded.total, &decoded.rejections);
            enforce_ownership(
                &mut decoded.items,
                &mut decoded.rejections,
                suppliers,
                &mut indices,
                |e| (e.vehicle, e.supplier),
                |e| serde_json::to_string(e).unwrap_or_default(),
            );
            batch.events = decoded.items;
            (decoded.total, decoded.rejections)
        }),
    };
    let (total, rejections) = match decoded {
        Ok(counts) => counts,
        Err(e) => {
            metrics::counter!("movewatch_ingest_points_total").increment(1);
            batch.dead_letters.push(whole_message_letter(
                e.reason,
                e.detail,
                Some(supplier),
                Some(topic),
                payload,
            ));
            return batch;
        }
    };
    metrics::counter!("movewatch_ingest_points_total").increment(total as u64);
    for r in &rejections {
        count_rejected(r.reason, 1);
        batch.dead_letters.push(DeadLetter::from_rejection(
            r,
            Some(supplier),
            &batch.source,
            batch.received_at,
        ));
    }
    batch
}

/// Decodes a `POST /tracks` body for an authenticated supplier. Errors when
/// the body as a whole is unusable (400 or 413); otherwise returns the batch
/// and the rejections (with their indices) for the reply.
pub fn batch_from_http(
    body: &[u8],
    supplier: SupplierId,
    suppliers: &crate::Suppliers,
    commit: CommitToken,
) -> Result<(IngestBatch, Vec<usize>, Vec<Rejection>), model::PayloadError> {
    let mut batch = empty_batch(Source::Http, commit);
    let ctx = DecodeContext {
        supplier,
        topic_vehicle: None,
        now: batch.received_at,
        shape: Shape::Array,
    };
    let mut decoded = match decode_positions(body, &ctx) {
        Ok(d) => d,
        Err(e) => {
            count_rejected(e.reason, 1);
            return Err(e);
        }
    };
    let mut indices = valid_indices(decoded.total, &decoded.rejections);
    enforce_ownership(
        &mut decoded.items,
        &mut decoded.rejections,
        suppliers,
        &mut indices,
        |p| (p.vehicle, p.supplier),
        position_text,
    );
    metrics::counter!("movewatch_ingest_points_total").increment(decoded.total as u64);
    decoded.rejections.sort_by_key(|r| r.index);
    for r in &decoded.rejections {
        count_rejected(r.reason, 1);
        batch.dead_letters.push(DeadLetter::from_rejection(
            r,
            Some(supplier.as_str()),
            &batch.source,
            batch.received_at,
        ));
    }
    batch.positions = decoded.items;
    Ok((batch, indices, decoded.rejections))
}
