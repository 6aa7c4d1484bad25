//! What flows from intake through the tracker to the store, and the commit
//! token by which the store tells intake that a message is durable.
//!
//! Intake acknowledges an MQTT message (or answers `POST /tracks`) only when
//! the token of its batch is completed; a token dropped uncompleted means
//! "not durable" and the message is not acknowledged.

use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use crate::derived::Derived;
use crate::event::Event;
use crate::fence::FenceTransition;
use crate::point::Position;
use crate::reject::{Reason, Rejection};

/// Where a batch came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An MQTT message on this topic.
    Mqtt {
        /// The topic.
        topic: String,
    },
    /// A `POST /tracks` request.
    Http,
    /// Recorded history replayed through the gateway.
    Replay,
    /// Kept by the engine itself: alerts from its ticker, bookings.
    Engine,
}

/// A rejected point, event or message, as kept in the dead-letter record.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The contract reason.
    pub reason: Reason,
    /// What exactly was wrong.
    pub detail: String,
    /// The supplier as the topic or key named it (may be unknown or invalid).
    pub supplier: Option<String>,
    /// The MQTT topic, if it came over MQTT.
    pub topic: Option<String>,
    /// When the engine received it.
    pub received_at: DateTime<Utc>,
    /// Index in its payload's array.
    pub index: Option<usize>,
    /// Raw text, first 4 KiB.
    pub raw: String,
}

impl DeadLetter {
    /// A dead letter for one rejected element.
    pub fn from_rejection(
        r: &Rejection,
        supplier: Option<&str>,
        source: &Source,
        received_at: DateTime<Utc>,
    ) -> Self {
        DeadLetter {
            reason: r.reason,
            detail: r.detail.clone(),
            supplier: supplier.map(str::to_owned),
            topic: match source {
                Source::Mqtt { topic } => Some(topic.clone()),
                _ => None,
            },
            received_at,
            index: Some(r.index),
            raw: r.raw.clone(),
        }
    }
}

/// What the store reports back when a batch is durable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    /// Indices into the batch's `positions` that were already stored (and
    /// were dead-lettered as `duplicate` instead).
    pub duplicates: Vec<usize>,
}

/// Completed by the store once everything in a batch is committed.
#[derive(Debug)]
pub struct CommitToken(Option<oneshot::Sender<CommitOutcome>>);

impl CommitToken {
    /// A token and the receiver that intake waits on before acknowledging.
    pub fn new() -> (CommitToken, oneshot::Receiver<CommitOutcome>) {
        let (tx, rx) = oneshot::channel();
        (CommitToken(Some(tx)), rx)
    }

    /// A token nobody waits for (replayed or test data).
    pub fn detached() -> CommitToken {
        CommitToken(None)
    }

    /// Reports the batch durable. Intake may have gone away; that is fine.
    pub fn complete(mut self, outcome: CommitOutcome) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(outcome);
        }
    }
}

/// One decoded message (or HTTP request) on its way to the store.
#[derive(Debug)]
pub struct IngestBatch {
    /// Where it came from.
    pub source: Source,
    /// Monotonic receipt time, for the pipeline latency metric.
    pub received: Instant,
    /// Wall-clock receipt time.
    pub received_at: DateTime<Utc>,
    /// Valid points, in payload order.
    pub positions: Vec<Position>,
    /// Valid events, in payload order.
    pub events: Vec<Event>,
    /// Rejected elements or the whole rejected message.
    pub dead_letters: Vec<DeadLetter>,
    /// Fence crossings confirmed by this batch's live points (set by the
    /// pipeline; empty from intake). Committed in the same transaction as
    /// the points, so a crossing is durable no later than the points' ack.
    pub transitions: Vec<FenceTransition>,
    /// Move changes, completed legs and alerts these points caused (set by
    /// the pipeline; empty from intake). Committed in the same transaction.
    pub derived: Derived,
    /// Completed by the store after commit.
    pub commit: CommitToken,
}

impl IngestBatch {
    /// A batch of what the engine derived without new points (alerts from
    /// its ticker, a booking): it goes through the same writer as the
    /// points, retried until stored, never given up.
    pub fn derived_only(derived: Derived, commit: CommitToken) -> IngestBatch {
        IngestBatch {
            source: Source::Engine,
            received: Instant::now(),
            received_at: Utc::now(),
            positions: Vec::new(),
            events: Vec::new(),
            dead_letters: Vec::new(),
            transitions: Vec::new(),
            derived,
            commit,
        }
    }
}
