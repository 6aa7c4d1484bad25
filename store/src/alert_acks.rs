//! Acknowledgements of alerts (`alert_acks`): who in the control room
//! acknowledged which alert, and when. An alert is named by the key the
//! alerts table already keeps it once by: (kind, vehicle, move, time). The
//! first acknowledgement of an alert stands; a second one (another screen,
//! a retry) changes nothing and is answered with the first. The table has
//! the same columns on both backends (times as integer microseconds), so
//! its SQL is written once, here, and run on either pool by
//! [`crate::Store`].

use chrono::{DateTime, Utc};
use model::{MoveId, VehicleId};

use crate::StoreError;
use crate::records::id;

/// Keeps an acknowledgement unless the alert has one already.
pub(crate) const INSERT: &str = "INSERT INTO alert_acks
    (kind, vehicle, move_id, ts, acked_by, acked_at)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (kind, vehicle, move_id, ts) DO NOTHING";

/// The acknowledgement of one alert.
pub(crate) const ONE: &str = "SELECT kind, vehicle, move_id, ts, acked_by, acked_at
FROM alert_acks WHERE kind = $1 AND vehicle = $2 AND move_id = $3 AND ts = $4";

/// Acknowledgements of alerts raised at or after `$1`, oldest alert first, at most `$2`.
pub(crate) const SINCE: &str = "SELECT kind, vehicle, move_id, ts, acked_by, acked_at
FROM alert_acks WHERE ts >= $1 ORDER BY ts, kind, vehicle, move_id LIMIT $2";

/// Which alert: its kind, vehicle, move and time (the alerts table's key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AlertKey {
    /// `gps_gap`, `stopped`, `device_silent`, `arriving_30`, ...
    pub kind: String,
    /// The vehicle.
    pub vehicle: VehicleId,
    /// The move, if the alert concerns one.
    pub move_id: Option<MoveId>,
    /// When the alert's condition began (stored to the microsecond).
    pub ts: DateTime<Utc>,
}

impl AlertKey {
    /// Whether `alert` is the alert this key names (times to the microsecond).
    pub fn names(&self, alert: &model::AlertRecord) -> bool {
        alert.kind == self.kind
            && alert.vehicle == self.vehicle
            && alert.move_id == self.move_id
            && alert.ts.timestamp_micros() == self.ts.timestamp_micros()
    }
}

/// An acknowledgement: the alert, who, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertAck {
    /// The alert acknowledged.
    pub alert: AlertKey,
    /// The operator's name, as they gave it.
    pub by: String,
    /// When it was acknowledged.
    pub at: DateTime<Utc>,
}

/// Reads an [`AlertAck`] selected as `kind, vehicle, move_id, ts, acked_by, acked_at`.
pub(crate) fn ack_of<'r, R>(r: &'r R) -> Result<AlertAck, StoreError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let move_id: String = r.try_get(2)?;
    Ok(AlertAck {
        alert: AlertKey {
            kind: r.try_get(0)?,
            vehicle: id(VehicleId::parse, &r.try_get::<String, _>(1)?)?,
            move_id: if move_id.is_empty() {
                None
            } else {
                Some(id(MoveId::parse, &move_id)?)
            },
            ts: crate::from_micros(r.try_get(3)?)?,
        },
        by: r.try_get(4)?,
        at: crate::from_micros(r.try_get(5)?)?,
    })
}
