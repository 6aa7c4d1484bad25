//! One WebSocket client's outgoing queue: bounded, conflating positions to
//! the latest per vehicle, and closing (with a reason) a client that lags
//! past a limit. The client's reader pushes; its writer task pops and sends.
//! The lock is held only to push or pop, never across an await.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use model::VehicleId;
use tokio::sync::Notify;

use crate::hub::LatencyMark;

/// A frame's text with its batch's latency mark, if it has one.
type Marked = (Utf8Bytes, Option<Arc<LatencyMark>>);

/// The most frames one client may have waiting (positions count once per vehicle).
pub const MAX_QUEUED: usize = 16_384;
/// The longest the oldest waiting frame may wait before the client is closed.
pub const MAX_LAG: Duration = Duration::from_secs(30);

/// Why a client is closed by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// The WebSocket close code.
    pub code: u16,
    /// The text sent with it (at most 123 bytes).
    pub reason: &'static str,
}

/// Too slow: lagging past [`MAX_LAG`] or [`MAX_QUEUED`].
pub const TOO_SLOW: CloseReason = CloseReason {
    code: 1013,
    reason: "too slow: fell too far behind the live feed; reconnect",
};
/// Two pings went unanswered.
pub const NO_PONG: CloseReason = CloseReason {
    code: 4000,
    reason: "no pong: two pings went unanswered",
};

/// A client message over 16 KiB (1009, message too big).
pub const TOO_LARGE: CloseReason = CloseReason {
    code: 1009,
    reason: "message too big: a client message may be at most 16 KiB",
};

/// Sent when the engine shuts down (1001, going away).
pub const SHUTTING_DOWN: CloseReason = CloseReason {
    code: 1001,
    reason: "server shutting down",
};

enum Slot {
    Frame(Marked),
    Position(VehicleId),
    /// A snapshot being made: nothing behind it goes out before it (None:
    /// abandoned, skipped).
    Snapshot(Arc<OnceLock<Option<Utf8Bytes>>>),
}

/// A place kept in the queue for a snapshot: frames queued after it wait
/// until it is filled (or dropped unfilled, when it is skipped).
pub struct SnapshotSlot {
    cell: Arc<OnceLock<Option<Utf8Bytes>>>,
    ready: Arc<Notify>,
}

impl SnapshotSlot {
    /// Puts the snapshot in its place; the frames behind it can go.
    pub fn fill(self, text: Utf8Bytes) {
        let _ = self.cell.set(Some(text));
        // Drop wakes the writer.
    }
}

impl Drop for SnapshotSlot {
    fn drop(&mut self) {
        let _ = self.cell.set(None);
        self.ready.notify_one();
    }
}

#[derive(Default)]
struct Inner {
    order: VecDeque<(Slot, Instant)>,
    positions: HashMap<VehicleId, Marked>,
    closed: Option<CloseReason>,
}

/// What the writer takes next.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// A frame to send, with its batch's latency mark (call
    /// [`LatencyMark::sent`] once it is written).
    Frame(Utf8Bytes, Option<Arc<LatencyMark>>),
    /// Nothing waiting.
    Empty,
    /// Close with this reason.
    Close(CloseReason),
}

/// A client's outgoing queue, shared by its reader and its writer.
#[derive(Clone, Default)]
pub struct Outbox {
    inner: Arc<Mutex<Inner>>,
    ready: Arc<Notify>,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a frame; a position (`vehicle` with `conflate`) replaces that
    /// vehicle's waiting position in place. Returns false once the client is
    /// closed (it lagged past a limit; the writer sends the reason).
    pub fn push(
        &self,
        text: Utf8Bytes,
        mark: Option<Arc<LatencyMark>>,
        conflate: Option<VehicleId>,
        now: Instant,
    ) -> bool {
        let mut q = self.lock();
        if q.closed.is_some() {
            return false;
        }
        match conflate {
            Some(v) => {
                if let Some(waiting) = q.positions.get_mut(&v) {
                    *waiting = (text, mark);
                    metrics::counter!("movewatch_ws_conflated_total").increment(1);
                } else {
                    q.positions.insert(v, (text, mark));
                    q.order.push_back((Slot::Position(v), now));
                }
            }
            None => q.order.push_back((Slot::Frame((text, mark)), now)),
        }
        let lagging = q.order.len() > MAX_QUEUED
            || q.order
                .front()
                .is_some_and(|(_, at)| now.saturating_duration_since(*at) > MAX_LAG);
        if lagging {
            q.closed = Some(TOO_SLOW);
            q.order.clear();
            q.positions.clear();
        }
        drop(q);
        self.ready.notify_one();
        !lagging
    }

    /// Keeps a place for a snapshot at the back of the queue: what is queued
    /// after it waits until it is filled.
    pub fn reserve(&self, now: Instant) -> SnapshotSlot {
        let cell = Arc::new(OnceLock::new());
        self.lock()
            .order
            .push_back((Slot::Snapshot(cell.clone()), now));
        SnapshotSlot {
            cell,
            ready: self.ready.clone(),
        }
    }

    /// Asks the writer to close with `reason` (after what is already queued
    /// is dropped).
    pub fn close(&self, reason: CloseReason) {
        let mut q = self.lock();
        q.closed.get_or_insert(reason);
        q.order.clear();
        q.positions.clear();
        drop(q);
        self.ready.notify_one();
    }

    /// The next thing for the writer.
    pub fn pop(&self) -> Next {
        let mut q = self.lock();
        if let Some(reason) = &q.closed {
            return Next::Close(reason.clone());
        }
        loop {
            if let Some((Slot::Snapshot(cell), _)) = q.order.front()
                && cell.get().is_none()
            {
                // Still being made: everything behind it waits.
                return Next::Empty;
            }
            let Some((slot, _)) = q.order.pop_front() else {
                return Next::Empty;
            };
            match slot {
                Slot::Frame((t, mark)) => return Next::Frame(t, mark),
                Slot::Position(v) => {
                    if let Some((t, mark)) = q.positions.remove(&v) {
                        return Next::Frame(t, mark);
                    }
                }
                Slot::Snapshot(cell) => {
                    if let Some(Some(t)) = cell.get() {
                        return Next::Frame(t.clone(), None);
                    }
                }
            }
        }
    }

    /// Waits until something is pushed (or a close is asked for).
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// How many frames are waiting.
    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.lock().order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> VehicleId {
        VehicleId::parse(s).unwrap()
    }

    #[test]
    fn positions_conflate_to_the_latest_per_vehicle_in_their_first_slot() {
        let q = Outbox::default();
        let now = Instant::now();
        assert!(q.push("a1".into(), None, Some(v("AA11AAA")), now));
        assert!(q.push("move".into(), None, None, now));
        assert!(q.push("b1".into(), None, Some(v("BB11BBB")), now));
        assert!(q.push("a2".into(), None, Some(v("AA11AAA")), now));
        assert_eq!(q.len(), 3);
        let got: Vec<Next> = std::iter::from_fn(|| match q.pop() {
            Next::Empty => None,
            n => Some(n),
        })
        .collect();
        assert_eq!(
            got,
            vec![
                Next::Frame("a2".into(), None),
                Next::Frame("move".into(), None),
                Next::Frame("b1".into(), None)
            ]
        );
    }

    #[test]
    fn frames_queued_after_a_snapshot_slot_wait_until_it_is_filled() {
        let q = Outbox::default();
        let now = Instant::now();
        assert!(q.push("before".into(), None, None, now));
        let slot = q.reserve(now);
        assert!(q.push("a1".into(), None, Some(v("AA11AAA")), now));
        assert_eq!(q.pop(), Next::Frame("before".into(), None));
        // The snapshot is still being made: the position behind it waits.
        assert_eq!(q.pop(), Next::Empty);
        slot.fill("snapshot".into());
        assert_eq!(q.pop(), Next::Frame("snapshot".into(), None));
        assert_eq!(q.pop(), Next::Frame("a1".into(), None));
        assert_eq!(q.pop(), Next::Empty);
        // A slot given up on (dropped unfilled) is skipped.
        let slot = q.reserve(now);
        assert!(q.push("after".into(), None, None, now));
        assert_eq!(q.pop(), Next::Empty);
        drop(slot);
        assert_eq!(q.pop(), Next::Frame("after".into(), None));
    }

    #[test]
    fn a_client_lagging_past_the_limit_is_closed_with_a_reason() {
        let q = Outbox::default();
        let t0 = Instant::now();
        assert!(q.push("old".into(), None, None, t0));
        assert!(!q.push(
            "late".into(),
            None,
            None,
            t0 + MAX_LAG + Duration::from_secs(1)
        ));
        assert_eq!(q.pop(), Next::Close(TOO_SLOW));
        assert!(!q.push("more".into(), None, None, t0));

        let q = Outbox::default();
        for i in 0..MAX_QUEUED {
            assert!(q.push(format!("{i}").into(), None, None, t0));
        }
        assert!(!q.push("one too many".into(), None, None, t0));
        assert_eq!(q.pop(), Next::Close(TOO_SLOW));
        // Positions of one vehicle never fill it.
        let q = Outbox::default();
        for i in 0..MAX_QUEUED * 2 {
            assert!(q.push(format!("{i}").into(), None, Some(v("AA11AAA")), t0));
        }
        assert_eq!(q.len(), 1);
    }
}
