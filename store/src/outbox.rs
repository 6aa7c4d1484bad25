//! The webhooks' durable outbox (`webhook_outbox`): one row per (webhook,
//! notification), inserted in the transaction that keeps the notification's
//! batch (or alert tick, or booking), so a notification is durable exactly
//! when what caused it is. The table has the same columns on both backends
//! (times as integer microseconds), so its SQL is written once, here, and
//! run on either pool by [`crate::Store`].
//!
//! Delivery (`movewatch-notify`) reads the due rows with [`DUE`]: the oldest
//! undelivered row of each (webhook, order key) whose retry time has come;
//! a row behind an undelivered one of the same move waits, which is what
//! keeps a move's notifications in order.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use model::Notification;
use model::config::WebhookConfig;
use tokio::sync::Notify;

/// What the store knows of the webhooks: their filters (a batch's
/// notifications are queued for each webhook that wants them) and the signal
/// poked after a commit that queued some.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub(crate) hooks: Vec<WebhookConfig>,
    pub(crate) signal: Arc<Notify>,
}

impl Outbox {
    /// Whether committing these notifications queues anything.
    pub(crate) fn queues_any<'a>(&self, mut ns: impl Iterator<Item = &'a Notification>) -> bool {
        !self.hooks.is_empty() && ns.any(|n| self.hooks.iter().any(|h| h.wants(n)))
    }
}

/// One row to queue: (webhook url, notification id, order key, occurred µs, body, now µs).
pub(crate) struct NewRow {
    pub(crate) hook: String,
    pub(crate) event_id: String,
    pub(crate) order_key: String,
    pub(crate) occurred_at: i64,
    pub(crate) body: String,
    pub(crate) now: i64,
}

/// The rows `notifications` make: one per webhook whose filters take it.
pub(crate) fn new_rows<'a>(
    hooks: &[WebhookConfig],
    notifications: impl Iterator<Item = &'a Notification>,
    now: DateTime<Utc>,
) -> Vec<NewRow> {
    let mut rows = Vec::new();
    if hooks.is_empty() {
        return rows;
    }
    for n in notifications {
        let wanted: Vec<&WebhookConfig> = hooks.iter().filter(|h| h.wants(n)).collect();
        if wanted.is_empty() {
            continue;
        }
        let (event_id, order_key, body) = (n.id(), n.order_key(), n.body());
        for h in wanted {
            rows.push(NewRow {
                hook: h.url.clone(),
                event_id: event_id.clone(),
                order_key: order_key.clone(),
                occurred_at: n.occurred_at.timestamp_micros(),
                body: body.clone(),
                now: now.timestamp_micros(),
            });
        }
    }
    rows
}

/// Queues one row; the same notification for the same webhook is kept once.
/// The first attempt is due at once.
pub(crate) const INSERT: &str = "INSERT INTO webhook_outbox
    (hook, event_id, order_key, occurred_at, body, created_at, next_at, attempts)
    VALUES ($1, $2, $3, $4, $5, $6, $6, 0)
    ON CONFLICT (hook, event_id) DO NOTHING";

/// The rows to send now: undelivered, not given up, due by `$1`, and first
/// in their (webhook, order key) queue (by occurrence time, then queue order).
pub(crate) const DUE: &str = "SELECT o.seq, o.hook, o.event_id, o.order_key, o.occurred_at, o.body,
       o.created_at, o.attempts, o.last_error
FROM webhook_outbox o
WHERE o.delivered_at IS NULL AND o.failed_at IS NULL AND o.next_at <= $1
  AND NOT EXISTS (
      SELECT 1 FROM webhook_outbox e
      WHERE e.hook = o.hook AND e.order_key = o.order_key
        AND e.delivered_at IS NULL AND e.failed_at IS NULL
        AND (e.occurred_at < o.occurred_at OR (e.occurred_at = o.occurred_at AND e.seq < o.seq)))
ORDER BY o.next_at, o.seq
LIMIT $2";

/// Every row of one webhook, in queue order (tests, inspection).
pub(crate) const ROWS_OF: &str = "SELECT seq, hook, event_id, order_key, occurred_at, body,
       created_at, attempts, last_error, delivered_at, failed_at
FROM webhook_outbox WHERE hook = $1 ORDER BY order_key, occurred_at, seq";

/// A 2xx: delivered at `$2` after `$3` attempts.
pub(crate) const DELIVERED: &str = "UPDATE webhook_outbox
    SET delivered_at = $2, attempts = $3, last_error = NULL WHERE seq = $1";

/// A failed attempt: `$2` attempts so far, next at `$3`, why in `$4`.
pub(crate) const RETRY: &str = "UPDATE webhook_outbox
    SET attempts = $2, next_at = $3, last_error = $4 WHERE seq = $1";

/// Given up at `$2` after `$3` attempts, the last error in `$4`: kept, not sent again.
pub(crate) const FAILED: &str = "UPDATE webhook_outbox
    SET failed_at = $2, attempts = $3, last_error = $4 WHERE seq = $1";

/// Delivered rows older than `$1` (their ids no longer need guarding against a re-derivation).
pub(crate) const PRUNE: &str =
    "DELETE FROM webhook_outbox WHERE delivered_at IS NOT NULL AND delivered_at < $1";

/// (waiting, failed, delivered) row counts.
pub(crate) const COUNTS: &str = "SELECT
    (SELECT COUNT(*) FROM webhook_outbox WHERE delivered_at IS NULL AND failed_at IS NULL),
    (SELECT COUNT(*) FROM webhook_outbox WHERE failed_at IS NOT NULL),
    (SELECT COUNT(*) FROM webhook_outbox WHERE delivered_at IS NOT NULL)";

/// Inserts the outbox rows of `$derived` (an iterator of `&Derived`) on
/// `$conn` (a connection inside the caller's transaction). One body for both
/// backends: the columns and SQL are the same.
macro_rules! queue_notifications {
    ($conn:expr, $hooks:expr, $derived:expr) => {{
        let rows = $crate::outbox::new_rows(
            $hooks,
            $derived.flat_map(|d: &model::Derived| d.notifications.iter()),
            chrono::Utc::now(),
        );
        for r in &rows {
            sqlx::query($crate::outbox::INSERT)
                .bind(r.hook.as_str())
                .bind(r.event_id.as_str())
                .bind(r.order_key.as_str())
                .bind(r.occurred_at)
                .bind(r.body.as_str())
                .bind(r.now)
                .execute(&mut *$conn)
                .await?;
        }
    }};
}
pub(crate) use queue_notifications;

/// A row of the outbox, as delivery sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// The row's number (queue order).
    pub seq: i64,
    /// The webhook's url.
    pub hook: String,
    /// The notification's stable id (the receiver's idempotency key).
    pub event_id: String,
    /// Rows of one order key (a move) go out in order.
    pub order_key: String,
    /// When the notified event happened.
    pub occurred_at: DateTime<Utc>,
    /// The exact JSON body, the same on every attempt.
    pub body: String,
    /// When it was queued (the 24-hour retry window starts here).
    pub created_at: DateTime<Utc>,
    /// Attempts made so far.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When a 2xx came (`None` while undelivered).
    pub delivered_at: Option<DateTime<Utc>>,
    /// When delivery was given up (kept, not sent again).
    pub failed_at: Option<DateTime<Utc>>,
}

/// How many outbox rows are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    /// Not yet delivered, still being tried.
    pub waiting: i64,
    /// Given up after the retry window (kept, logged).
    pub failed: i64,
    /// Delivered (kept a while to recognise a re-derived notification).
    pub delivered: i64,
}

/// An error text fit to store on either backend (no NUL, at most 500 characters).
pub(crate) fn error_text(e: &str) -> String {
    e.chars()
        .take(500)
        .map(|c| if c == '\0' { '\u{FFFD}' } else { c })
        .collect()
}
