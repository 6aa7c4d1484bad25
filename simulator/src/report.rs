//! The load report: WebSocket latency per point, loss and duplicates checked
//! against the store, a table, JSON and an SVG plot.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::SimError;

/// Send times of points not yet seen on the WebSocket, keyed by (van, ts ms).
#[derive(Debug)]
pub struct SendLog {
    sent: DashMap<(u32, i64), Instant>,
    /// Every point seen once (to count duplicates).
    seen: DashMap<(u32, i64), ()>,
    /// When the run started (latency-over-time x axis).
    pub t0: Instant,
}

impl Default for SendLog {
    fn default() -> Self {
        SendLog {
            sent: DashMap::new(),
            seen: DashMap::new(),
            t0: Instant::now(),
        }
    }
}

impl SendLog {
    /// Records that the point of `van` with timestamp `ts_ms` was sent now.
    pub fn sent(&self, van: u32, ts_ms: i64, at: Instant) {
        self.sent.insert((van, ts_ms), at);
    }

    /// Points sent and not yet seen.
    pub fn pending(&self) -> usize {
        self.sent.len()
    }
}

/// What the WebSocket subscriber saw.
#[derive(Debug)]
pub struct WsStats {
    /// Latency, microseconds, send → WebSocket receipt.
    pub hist: Histogram<u64>,
    /// Per second of the run: (p50, p99, max) in ms, and count.
    pub per_second: Vec<(f64, f64, f64, u64)>,
    /// Position frames received.
    pub frames: u64,
    /// Frames matched to a sent point.
    pub matched: u64,
    /// Frames for a point already seen.
    pub duplicates: u64,
    /// Frames matching nothing sent by this run.
    pub unmatched: u64,
    /// Snapshots after the first (the client fell behind and frames were skipped).
    pub resnapshots: u64,
    /// When the last matched frame arrived.
    pub last_match: Option<Instant>,
}

/// A running WebSocket subscriber on `fleet`.
pub struct WsSubscriber {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Result<WsStats, SimError>>,
}

impl WsSubscriber {
    /// Connects to `ws://{addr}/ws?token=…`, subscribes to `fleet` and waits for the snapshot.
    pub async fn start(
        addr: &str,
        token: &str,
        vans: Arc<HashMap<String, u32>>,
        log: Arc<SendLog>,
    ) -> Result<WsSubscriber, SimError> {
        let url = format!("ws://{addr}/ws?token={token}");
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .map_err(|e| SimError::WebSocket(e.to_string()))?;
        ws.send(Message::Text(
            r#"{"type":"subscribe","channel":"fleet"}"#.into(),
        ))
        .await
        .map_err(|e| SimError::WebSocket(e.to_string()))?;
        // The first frame is the snapshot.
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains("\"snapshot\"") => {}
            Ok(other) => {
                return Err(SimError::WebSocket(format!(
                    "expected a snapshot after subscribing, got {other:?}"
                )));
            }
            Err(_) => return Err(SimError::WebSocket("no snapshot within 10 s".into())),
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let mut stats = WsStats {
                hist: Histogram::new_with_bounds(1, 600_000_000, 3)
                    .map_err(|e| SimError::WebSocket(e.to_string()))?,
                per_second: Vec::new(),
                frames: 0,
                matched: 0,
                duplicates: 0,
                unmatched: 0,
                resnapshots: 0,
                last_match: None,
            };
            let mut second: Vec<Histogram<u64>> = Vec::new();
            // Once asked to stop: read what is in flight until the socket has
            // been quiet for 200 ms, but never longer than 2 s (an engine
            // with other traffic, such as the demo's own fleet, is never quiet).
            let mut stop_at: Option<Instant> = None;
            loop {
                if stop_at.is_none() && stopping.load(Ordering::Relaxed) {
                    stop_at = Some(Instant::now());
                }
                if stop_at.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
                    break;
                }
                let next = tokio::time::timeout(Duration::from_millis(200), ws.next()).await;
                let msg = match next {
                    Err(_) => {
                        if stopping.load(Ordering::Relaxed) {
                            break;
                        }
                        continue;
                    }
                    Ok(None) => break,
                    Ok(Some(Err(e))) => return Err(SimError::WebSocket(e.to_string())),
                    Ok(Some(Ok(m))) => m,
                };
                let now = Instant::now();
                let Message::Text(text) = msg else { continue };
                let Ok(frame) = serde_json::from_str::<Frame<'_>>(text.as_str()) else {
                    continue;
                };
                match frame.kind {
                    "position" => {}
                    "snapshot" => {
                        stats.resnapshots += 1;
                        continue;
                    }
                    _ => continue,
                }
                stats.frames += 1;
                let (Some(v), Some(ts)) = (frame.vehicle, frame.ts) else {
                    continue;
                };
                let Some(&van) = vans.get(v) else {
                    stats.unmatched += 1;
                    continue;
                };
                let Ok(ts) = chrono::DateTime::parse_from_rfc3339(ts) else {
                    stats.unmatched += 1;
                    continue;
                };
                let key = (van, ts.timestamp_millis());
                if let Some((_, sent)) = log.sent.remove(&key) {
                    log.seen.insert(key, ());
                    stats.matched += 1;
                    stats.last_match = Some(now);
                    let us = now.saturating_duration_since(sent).as_micros() as u64;
                    let _ = stats.hist.record(us.max(1));
                    let sec = now.saturating_duration_since(log.t0).as_secs() as usize;
                    while second.len() <= sec {
                        second.push(
                            Histogram::new_with_bounds(1, 600_000_000, 2)
                                .map_err(|e| SimError::WebSocket(e.to_string()))?,
                        );
                    }
                    let _ = second[sec].record(us.max(1));
                } else if log.seen.contains_key(&key) {
                    stats.duplicates += 1;
                } else {
                    stats.unmatched += 1;
                }
            }
            stats.per_second = second
                .iter()
                .map(|h| {
                    (
                        h.value_at_quantile(0.5) as f64 / 1000.0,
                        h.value_at_quantile(0.99) as f64 / 1000.0,
                        h.max() as f64 / 1000.0,
                        h.len(),
                    )
                })
                .collect();
            Ok(stats)
        });
        Ok(WsSubscriber { stop, task })
    }

    /// Stops after the frames in flight and returns what was seen.
    pub async fn finish(self) -> Result<WsStats, SimError> {
        self.stop.store(true, Ordering::Relaxed);
        self.task
            .await
            .map_err(|e| SimError::WebSocket(e.to_string()))?
    }
}

#[derive(serde::Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    vehicle: Option<&'a str>,
    ts: Option<&'a str>,
}

/// The load report.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LoadReport {
    /// How points were sent: `mqtt` or `http` (`POST /tracks`).
    pub transport: String,
    /// Vans.
    pub vehicles: usize,
    /// Valid points sent (each should be stored once).
    pub points_sent: u64,
    /// Messages published or posted.
    pub messages: u64,
    /// Broker PUBACKs (MQTT) or accepted points (HTTP).
    pub acknowledged: u64,
    /// Seconds from first send to last acknowledgement.
    pub send_seconds: f64,
    /// Points per second over `send_seconds`.
    pub throughput_pps: f64,
    /// Seconds from the first send to the last point seen on the WebSocket.
    pub end_to_end_seconds: f64,
    /// Points per second through the engine: points sent / `end_to_end_seconds`.
    pub end_to_end_pps: f64,
    /// Position frames received on `fleet`.
    pub ws_frames: u64,
    /// Frames matched to a sent point.
    pub ws_matched: u64,
    /// Points expected live that never came on the WebSocket (frames may be
    /// skipped for a slow client: see `ws_resnapshots`).
    pub ws_missing: u64,
    /// Frames for a point seen before.
    pub ws_duplicates: u64,
    /// Snapshots after the first (the subscriber fell behind).
    pub ws_resnapshots: u64,
    /// Latency percentiles, ms (send → WebSocket).
    pub latency_ms: BTreeMap<String, f64>,
    /// How the store was checked: `database`, `rest` or `none`.
    pub store_check: String,
    /// Points sent but not stored.
    pub lost: Option<u64>,
    /// Points stored more than once (impossible by construction; checked anyway).
    pub duplicated_in_store: Option<u64>,
    /// Dead letters expected by reason (malformed payloads and re-sends).
    pub expected_dead_letters: BTreeMap<String, u64>,
    /// Latency over time: (second, p50 ms, p99 ms, max ms, points).
    pub latency_over_time: Vec<(usize, f64, f64, f64, u64)>,
}

impl LoadReport {
    /// Fills the latency fields from the subscriber's stats.
    pub fn add_ws(&mut self, ws: &WsStats, expected_live: u64, first_send: Instant) {
        if let Some(last) = ws.last_match {
            self.end_to_end_seconds = last.saturating_duration_since(first_send).as_secs_f64();
            self.end_to_end_pps = self.points_sent as f64 / self.end_to_end_seconds.max(1e-9);
        }
        self.ws_frames = ws.frames;
        self.ws_matched = ws.matched;
        self.ws_missing = expected_live.saturating_sub(ws.matched);
        self.ws_duplicates = ws.duplicates;
        self.ws_resnapshots = ws.resnapshots;
        for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
            self.latency_ms
                .insert(name.into(), ws.hist.value_at_quantile(q) as f64 / 1000.0);
        }
        self.latency_ms
            .insert("max".into(), ws.hist.max() as f64 / 1000.0);
        self.latency_ms
            .insert("mean".into(), ws.hist.mean() / 1000.0);
        self.latency_over_time = ws
            .per_second
            .iter()
            .enumerate()
            .map(|(s, &(a, b, c, n))| (s, a, b, c, n))
            .collect();
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let mut row = |k: &str, v: String| t.push_str(&format!("  {k:<28} {v}\n"));
        let http = self.transport == "http";
        row(
            "transport",
            if http {
                "HTTP (POST /tracks)".to_owned()
            } else {
                "MQTT (QoS 1)".to_owned()
            },
        );
        row("vans", self.vehicles.to_string());
        row("points sent", self.points_sent.to_string());
        row(
            if http { "elements posted" } else { "messages" },
            self.messages.to_string(),
        );
        row(
            if http {
                "accepted (202 replies)"
            } else {
                "acknowledged (PUBACKs)"
            },
            self.acknowledged.to_string(),
        );
        row(
            if http {
                "sent (to 202 replies)"
            } else {
                "sent (to broker acks)"
            },
            format!(
                "{:.0} points/s over {:.1} s",
                self.throughput_pps, self.send_seconds
            ),
        );
        row(
            "end to end (to last frame)",
            format!(
                "{:.0} points/s over {:.1} s",
                self.end_to_end_pps, self.end_to_end_seconds
            ),
        );
        row(
            "websocket frames",
            format!(
                "{} ({} matched, {} missing, {} duplicated, {} re-snapshots)",
                self.ws_frames,
                self.ws_matched,
                self.ws_missing,
                self.ws_duplicates,
                self.ws_resnapshots
            ),
        );
        let l = |k: &str| self.latency_ms.get(k).copied().unwrap_or(0.0);
        row(
            "latency send→ws (ms)",
            format!(
                "p50 {:.1}  p99 {:.1}  p999 {:.1}  max {:.1}",
                l("p50"),
                l("p99"),
                l("p999"),
                l("max")
            ),
        );
        let opt = |v: Option<u64>| v.map_or("not checked".to_owned(), |n| n.to_string());
        row(
            &format!("lost (store, {})", self.store_check),
            opt(self.lost),
        );
        row("duplicated in store", opt(self.duplicated_in_store));
        if !self.expected_dead_letters.is_empty() {
            row(
                "expected dead letters",
                self.expected_dead_letters
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
        t
    }

    /// Writes the JSON report.
    pub fn write_json(&self, path: &Path) -> Result<(), SimError> {
        let text =
            serde_json::to_string_pretty(self).map_err(|e| SimError::Report(e.to_string()))?;
        std::fs::write(path, text).map_err(|e| SimError::Io(path.display().to_string(), e))
    }

    /// Writes latency over time (p50, p99, max per second) as an SVG plot.
    pub fn write_svg(&self, path: &Path) -> Result<(), SimError> {
        use plotters::prelude::*;
        let err = |e: &dyn std::fmt::Display| SimError::Report(e.to_string());
        let data = &self.latency_over_time;
        let x_max = data.len().max(2) as f64;
        let y_max = data.iter().map(|d| d.2).fold(1.0f64, f64::max) * 1.1;
        let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("movewatch: send → WebSocket latency", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("seconds into the run")
            .y_desc("latency (ms)")
            .draw()
            .map_err(|e| err(&e))?;
        for (name, pick) in [("p50", 0usize), ("p99", 1), ("max", 2)] {
            let series = data.iter().map(move |d| {
                let y = match pick {
                    0 => d.1,
                    1 => d.2,
                    _ => d.3,
                };
                (d.0 as f64, y)
            });
            let color: RGBColor = match pick {
                0 => BLUE,
                1 => RED,
                _ => RGBColor(120, 120, 120),
            };
            chart
                .draw_series(LineSeries::new(series, color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
        Ok(())
    }
}

/// What the engine rejected during a run, against what the run provoked on
/// purpose (malformed payloads, re-sent points).
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct Rejections {
    /// Where `observed` comes from: `replies` (the `rejected` entries of this
    /// run's `POST /tracks` 202 replies) or `metrics` (the engine's
    /// `movewatch_ingest_rejected_total{reason}` before and after the run:
    /// every client's, not only this run's).
    pub source: String,
    /// Rejections by reason.
    pub observed: BTreeMap<String, u64>,
    /// Rejections provoked on purpose, by reason (`--malformed-rate`, duplicates).
    pub expected: BTreeMap<String, u64>,
    /// Observed beyond expected, by reason: the engine refused points the run
    /// meant to be stored.
    pub unexpected: BTreeMap<String, u64>,
}

impl Rejections {
    /// Compares `observed` with `expected`.
    pub fn new(
        source: &str,
        observed: BTreeMap<String, u64>,
        expected: &BTreeMap<String, u64>,
    ) -> Rejections {
        let unexpected = observed
            .iter()
            .filter_map(|(reason, &n)| {
                let extra = n.saturating_sub(expected.get(reason).copied().unwrap_or(0));
                (extra > 0).then(|| (reason.clone(), extra))
            })
            .collect();
        Rejections {
            source: source.to_owned(),
            observed,
            expected: expected.clone(),
            unexpected,
        }
    }

    /// Unexpected rejections in all.
    pub fn unexpected_total(&self) -> u64 {
        self.unexpected.values().sum()
    }

    /// One line per unexpected reason, with what it most likely means.
    pub fn warnings(&self) -> Vec<String> {
        self.unexpected
            .iter()
            .map(|(reason, n)| {
                format!(
                    "the engine rejected {n} unexpected {reason}: {}",
                    hint(reason)
                )
            })
            .collect()
    }

    /// Lines for the end-of-run summary.
    pub fn table(&self) -> String {
        let list = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                "none".to_owned()
            } else {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        let source = if self.source == "metrics" {
            "the engine's /metrics, all clients"
        } else {
            "this run's 202 replies"
        };
        let mut t = format!(
            "  rejected ({source}): {}\n  provoked on purpose:          {}\n  unexpected:                   {}\n",
            list(&self.observed),
            list(&self.expected),
            list(&self.unexpected)
        );
        for w in self.warnings() {
            t.push_str(&format!("  warning: {w}\n"));
        }
        t
    }
}

/// What an unexpected rejection reason most likely means for a simulator run.
pub fn hint(reason: &str) -> &'static str {
    match reason {
        "vehicle_owned_by_other_supplier" => {
            "a vehicle belongs to the supplier that first reported it, and these \
             registrations were already reported by another supplier (another fleet or an \
             earlier run): those vans freeze on the pages. Use other registrations \
             (--registration-prefix, or another --seed)"
        }
        "unknown_vehicle" => {
            "the engine's fleet register has no entry for these vans: register them \
             ([[vehicles]], [fleet] files or PUT /api/vehicles/{vehicle}) or run the engine \
             with [fleet] claim_on_first_report = true"
        }
        "unknown_supplier" => "the engine has no [[suppliers]] entry for this supplier",
        "future_timestamp" => "fix times ahead of the engine's clock: check --start and the clocks",
        "duplicate" => {
            "points re-sent with the same tracking ids (a second run with the same seed and --start?)"
        }
        _ => "points the run meant to be stored were refused",
    }
}

/// `movewatch_ingest_rejected_total{reason}` from a Prometheus text page.
pub fn rejected_from_metrics(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("movewatch_ingest_rejected_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let Some(reason) = labels
            .split(',')
            .find_map(|l| l.trim().strip_prefix("reason=\""))
            .and_then(|r| r.strip_suffix('"'))
        else {
            continue;
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            *out.entry(reason.to_owned()).or_default() += v.max(0.0) as u64;
        }
    }
    out
}

/// An unlabelled counter's value from a Prometheus text page (0 if absent).
pub fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(' ')?;
            rest.trim().parse::<f64>().ok()
        })
        .map_or(0, |v| v.max(0.0) as u64)
}

/// `after − before`, by reason.
pub fn delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, &v)| {
            let d = v.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// Reads every stored position in `[from, to]` and counts the given tracking
/// ids that are missing, and ids stored more than once.
pub async fn check_store(
    database_url: &str,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
    expected: &HashSet<String>,
) -> Result<(u64, u64), SimError> {
    let store = store::Store::open(database_url)
        .await
        .map_err(|e| SimError::Report(format!("cannot open the store: {e}")))?;
    let mut seen: HashSet<String> = HashSet::with_capacity(expected.len());
    let mut dup = 0u64;
    let mut cursor = None;
    loop {
        let page = store
            .positions_between(from, to, cursor.as_ref(), 5000)
            .await
            .map_err(|e| SimError::Report(format!("reading the store: {e}")))?;
        let Some(last) = page.last() else { break };
        cursor = Some(store::PositionCursor::after(last));
        for p in page {
            if expected.contains(&p.tracking_id) && !seen.insert(p.tracking_id) {
                dup += 1;
            }
        }
    }
    let lost = expected.iter().filter(|id| !seen.contains(*id)).count() as u64;
    Ok((lost, dup))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_read_from_metrics_and_told_apart_from_provoked_ones() {
        let page = "# TYPE movewatch_ingest_rejected_total counter\n\
            movewatch_ingest_rejected_total{reason=\"out_of_range\"} 3\n\
            movewatch_ingest_rejected_total{reason=\"vehicle_owned_by_other_supplier\"} 40\n\
            movewatch_ingest_points_total 1000\n";
        assert_eq!(counter(page, "movewatch_ingest_points_total"), 1000);
        let before = BTreeMap::from([("vehicle_owned_by_other_supplier".to_owned(), 10)]);
        let observed = delta(&before, &rejected_from_metrics(page));
        assert_eq!(
            observed,
            BTreeMap::from([
                ("out_of_range".to_owned(), 3),
                ("vehicle_owned_by_other_supplier".to_owned(), 30)
            ])
        );
        let expected = BTreeMap::from([("out_of_range".to_owned(), 3)]);
        let r = Rejections::new("metrics", observed, &expected);
        assert_eq!(
            r.unexpected,
            BTreeMap::from([("vehicle_owned_by_other_supplier".to_owned(), 30)])
        );
        assert_eq!(r.unexpected_total(), 30);
        let w = r.warnings();
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("30 unexpected vehicle_owned_by_other_supplier"),
            "{w:?}"
        );
        assert!(w[0].contains("--registration-prefix"), "{w:?}");
        assert!(
            r.table()
                .contains("provoked on purpose:          out_of_range=3")
        );
    }
}
