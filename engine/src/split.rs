//! Splitting an intake batch by partition. Most batches are one device's,
//! so one vehicle's, and go whole. A batch naming vehicles of several
//! partitions is split; its commit token completes once every part is
//! committed (with the duplicates' indices mapped back to the whole batch),
//! so the device is acknowledged only for what is durable.

use model::{CommitOutcome, CommitToken, IngestBatch};

use crate::partition_of;

/// The batch's parts, each with its partition (one part, whole, when the
/// batch is one partition's). Dead letters ride with the first part.
pub(crate) fn split(batch: IngestBatch, count: usize) -> Vec<(usize, IngestBatch)> {
    let first = batch
        .positions
        .first()
        .map(|p| partition_of(&p.vehicle, count))
        .or_else(|| {
            batch
                .events
                .first()
                .map(|e| partition_of(&e.vehicle, count))
        })
        .unwrap_or(0);
    let single = count <= 1
        || (batch
            .positions
            .iter()
            .all(|p| partition_of(&p.vehicle, count) == first)
            && batch
                .events
                .iter()
                .all(|e| partition_of(&e.vehicle, count) == first));
    if single {
        return vec![(first, batch)];
    }
    let IngestBatch {
        source,
        received,
        received_at,
        positions,
        events,
        dead_letters,
        transitions,
        derived,
        commit,
    } = batch;
    // (partition, the part, each of its positions' index in the whole batch)
    let mut parts: Vec<(usize, IngestBatch, Vec<usize>)> = Vec::new();
    let part = |i: usize, parts: &mut Vec<(usize, IngestBatch, Vec<usize>)>| -> usize {
        if let Some(at) = parts.iter().position(|(p, _, _)| *p == i) {
            return at;
        }
        parts.push((
            i,
            IngestBatch {
                source: source.clone(),
                received,
                received_at,
                positions: Vec::new(),
                events: Vec::new(),
                dead_letters: Vec::new(),
                transitions: Vec::new(),
                derived: Default::default(),
                commit: CommitToken::detached(),
            },
            Vec::new(),
        ));
        parts.len() - 1
    };
    for (index, p) in positions.into_iter().enumerate() {
        let at = part(partition_of(&p.vehicle, count), &mut parts);
        parts[at].1.positions.push(p);
        parts[at].2.push(index);
    }
    for e in events {
        let at = part(partition_of(&e.vehicle, count), &mut parts);
        parts[at].1.events.push(e);
    }
    if let Some((_, first, _)) = parts.first_mut() {
        first.dead_letters = dead_letters;
        first.transitions = transitions;
        first.derived = derived;
    }
    let mut waits = Vec::with_capacity(parts.len());
    let out = parts
        .into_iter()
        .map(|(i, mut b, indices)| {
            let (token, rx) = CommitToken::new();
            b.commit = token;
            waits.push((rx, indices));
            (i, b)
        })
        .collect();
    tokio::spawn(async move {
        let mut whole = CommitOutcome::default();
        for (rx, indices) in waits {
            match rx.await {
                Ok(outcome) => whole.duplicates.extend(
                    outcome
                        .duplicates
                        .into_iter()
                        .filter_map(|d| indices.get(d).copied()),
                ),
                // A part was dropped uncommitted (the engine stopped): the
                // whole batch stays unacknowledged, for redelivery.
                Err(_) => return,
            }
        }
        whole.duplicates.sort_unstable();
        commit.complete(whole);
    });
    out
}
