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

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use model::{Position, Source, SupplierId, VehicleId};

    use super::*;

    fn point(vehicle: &str, n: i64) -> Position {
        Position::fix(
            SupplierId::parse("geoamey").unwrap(),
            VehicleId::parse(vehicle).unwrap(),
            format!("{vehicle}-{n}"),
            Utc.with_ymd_and_hms(2026, 11, 21, 9, 0, 0).unwrap() + chrono::Duration::seconds(n),
            53.0,
            -1.5,
        )
    }

    fn batch(
        points: Vec<Position>,
    ) -> (IngestBatch, tokio::sync::oneshot::Receiver<CommitOutcome>) {
        let (commit, rx) = CommitToken::new();
        let batch = IngestBatch {
            source: Source::Http,
            received: std::time::Instant::now(),
            received_at: Utc::now(),
            positions: points,
            events: Vec::new(),
            dead_letters: Vec::new(),
            transitions: Vec::new(),
            derived: Default::default(),
            commit,
        };
        (batch, rx)
    }

    /// Two vans on different partitions of two.
    fn vans() -> (&'static str, &'static str) {
        let a = "AB12CDE";
        let b = ["XY99ZZZ", "NEW3VAN", "BR0KE2", "QQ11AAA"]
            .into_iter()
            .find(|b| {
                partition_of(&VehicleId::parse(b).unwrap(), 2)
                    != partition_of(&VehicleId::parse(a).unwrap(), 2)
            })
            .unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn a_batch_of_two_partitions_is_acknowledged_once_both_parts_are_committed() {
        let (a, b) = vans();
        let (whole, done) = batch(vec![point(a, 0), point(b, 1), point(a, 2), point(b, 3)]);
        let mut parts = split(whole, 2);
        assert_eq!(parts.len(), 2);
        for (i, part) in &parts {
            assert!(
                part.positions
                    .iter()
                    .all(|p| partition_of(&p.vehicle, 2) == *i)
            );
        }
        let (_, second) = parts.pop().unwrap();
        let (_, first) = parts.pop().unwrap();
        // The first part's second point was a duplicate: index 1 of the part.
        first.commit.complete(CommitOutcome {
            duplicates: vec![1],
        });
        let mut done = done;
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(100), &mut done)
                .await
                .is_err(),
            "not acknowledged before every part is committed"
        );
        second.commit.complete(CommitOutcome::default());
        let outcome = done.await.unwrap();
        // Index 1 of the first part is index 2 of the whole batch.
        assert_eq!(outcome.duplicates, vec![2]);
    }

    #[tokio::test]
    async fn a_part_dropped_uncommitted_leaves_the_whole_batch_unacknowledged() {
        let (a, b) = vans();
        let (whole, done) = batch(vec![point(a, 0), point(b, 1)]);
        let mut parts = split(whole, 2);
        let (_, second) = parts.pop().unwrap();
        let (_, first) = parts.pop().unwrap();
        first.commit.complete(CommitOutcome::default());
        drop(second);
        assert!(
            done.await.is_err(),
            "no acknowledgement: the broker redelivers"
        );
    }

    #[test]
    fn one_vehicles_batch_goes_whole() {
        let (a, _) = vans();
        let (whole, _done) = batch(vec![point(a, 0), point(a, 1)]);
        let parts = split(whole, 4);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].1.positions.len(), 2);
    }
}
