//! `movewatch replay`: stored history streamed through the gateway as if it
//! were live, for incident review.
//!
//! A read-only runner, not the [`Engine`](crate::Engine): no broker, no
//! intake, no store writer (nothing is written). It opens the store, starts
//! the HTTP/WebSocket gateway on the configured address with a fresh tracker
//! and hub, then reads the stored positions of `[from, to]` in
//! `(ts, supplier, tracking_id)` order, page by page
//! ([`store::Store::positions_between`]), and publishes them through the
//! tracker and the hub at their original spacing divided by the speed-up.
//! The tracker re-derives live state from the replayed points alone, so the
//! pages show the fleet as it was.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use model::config::{Config, RoleName, TokenConfig};
use model::{CommitToken, IngestBatch, Position, Source};
use store::{PositionCursor, Store};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracker::{Tracker, TrackerConfig};
use ws_gateway::{Auth, Gateway, Hub, Readiness};

use crate::metrics::prometheus;
use crate::random_token;

/// Points per store query.
const PAGE_SIZE: i64 = 2_000;

/// The stored span is walked in windows of this length, so that no page
/// query scans more than one window (PostgreSQL orders a page by sorting the
/// window's rows; see `Store::positions_between`).
const WINDOW: chrono::Duration = chrono::Duration::minutes(10);

/// What to replay.
#[derive(Debug, Clone, Copy)]
pub struct ReplayConfig {
    /// First fix time replayed (inclusive).
    pub from: DateTime<Utc>,
    /// Last fix time replayed (inclusive).
    pub to: DateTime<Utc>,
    /// Speed-up: 10 plays ten minutes of history in one minute.
    pub speed: f64,
    /// How often `run` reports progress.
    pub progress_every: Duration,
}

/// Where a replay has got to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplayProgress {
    /// The fix time of the last point sent (the replay's "now").
    pub simulated: DateTime<Utc>,
    /// Points sent so far.
    pub points: u64,
    /// Wall time since the replay began.
    pub elapsed: Duration,
}

/// A replay whose gateway is listening, ready to [`Replay::run`].
pub struct Replay {
    /// Where HTTP and WebSocket listen.
    pub http_addr: SocketAddr,
    /// A control-room token made for this replay (valid until it exits),
    /// besides the config's tokens.
    pub token: String,
    config: ReplayConfig,
    store: Store,
    tracker: Arc<Tracker>,
    hub: Hub,
    server: JoinHandle<()>,
}

impl Replay {
    /// Checks the span, opens the store and starts the gateway on `[http] listen`.
    pub async fn start(config: &Config, replay: ReplayConfig) -> anyhow::Result<Replay> {
        if replay.from >= replay.to {
            bail!("--from must be before --to");
        }
        if !(replay.speed.is_finite() && replay.speed > 0.0) {
            bail!("--speed must be a positive number, got {}", replay.speed);
        }
        let metrics = prometheus()?;
        let mut fences = crate::load_fences(config)?;
        let sites = Arc::new(fences.iter().map(|s| s.site.clone()).collect::<Vec<_>>());
        let store = Store::open(&config.store.url)
            .await
            .with_context(|| format!("cannot open the store at {}", config.store.url))?;
        // Fences are served (GET /api/sites) as the engine has them, stored
        // replacements included; replay emits no transitions.
        crate::apply_stored_fences(&store, &mut fences).await?;
        let tracker = Arc::new(Tracker::new(TrackerConfig::from(&config.ingest)));
        let hub = Hub::new();
        let token = random_token(32);
        let mut tokens = config.tokens.clone();
        tokens.push(TokenConfig {
            token: token.clone(),
            role: RoleName::ControlRoom,
            sites: vec![],
            supplier: None,
        });
        // Replay has no moves of its own (the registry is live-only), and
        // changes nothing: its commands answer that it is read-only.
        let (view, commands) = engine::read_only(tracker.clone(), fences);
        // No broker is needed, and nothing is written: both count as ready.
        let gateway = Gateway {
            view,
            commands,
            hub: hub.clone(),
            auth: Arc::new(Auth::from_config(&tokens)),
            sites,
            suppliers: Arc::new(ingest::Suppliers::from_config(&[])),
            store: store.clone(),
            node: "replay".into(),
            readiness: Readiness {
                broker: watch::channel(true).1,
                store: watch::channel(true).1,
            },
            metrics,
        };
        let listener = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen for HTTP on {}: set [http] listen (or --http-listen) to a free address",
                    config.http.listen
                )
            })?;
        let http_addr = listener.local_addr()?;
        let app = ws_gateway::router(gateway);
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        });
        Ok(Replay {
            http_addr,
            token,
            config: replay,
            store,
            tracker,
            hub,
            server,
        })
    }

    /// How many WebSocket clients are connected.
    pub fn clients(&self) -> usize {
        self.hub.receiver_count()
    }

    /// Streams the span through the tracker and hub, calling `progress` every
    /// `progress_every` and once at the end, then stops the gateway. Returns
    /// the final progress.
    pub async fn run(
        self,
        mut progress: impl FnMut(ReplayProgress),
    ) -> anyhow::Result<ReplayProgress> {
        let ReplayConfig {
            from,
            to,
            speed,
            progress_every,
        } = self.config;
        let began = Instant::now();
        let due = |p: &Position| {
            let offset = (p.ts - from).to_std().unwrap_or_default();
            began + offset.div_f64(speed)
        };
        let mut state = ReplayProgress {
            simulated: from,
            points: 0,
            elapsed: Duration::ZERO,
        };
        let mut next_report = began + progress_every;
        let mut cursor: Option<PositionCursor> = None;
        let mut window_start = from;
        loop {
            let window_end = (window_start + WINDOW).min(to);
            loop {
                let page = self
                    .store
                    .positions_between(window_start, window_end, cursor.as_ref(), PAGE_SIZE)
                    .await
                    .context("reading stored positions")?;
                let Some(last) = page.last() else { break };
                cursor = Some(PositionCursor::after(last));
                let full = page.len() as i64 == PAGE_SIZE;
                let mut rest = page.as_slice();
                while let Some(first) = rest.first() {
                    tokio::time::sleep_until(due(first).into()).await;
                    // Everything already due goes out as one batch.
                    let now = Instant::now();
                    let n = rest.iter().take_while(|p| due(p) <= now).count().max(1);
                    let (sending, later) = rest.split_at(n);
                    rest = later;
                    let mut batch = IngestBatch {
                        source: Source::Replay,
                        received: now,
                        received_at: Utc::now(),
                        positions: sending.to_vec(),
                        events: vec![],
                        dead_letters: vec![],
                        transitions: vec![],
                        derived: Default::default(),
                        commit: CommitToken::detached(),
                    };
                    let updates = self.tracker.apply(&mut batch);
                    self.hub.publish(updates, now);
                    state.points += n as u64;
                    state.simulated = sending[n - 1].ts;
                    if Instant::now() >= next_report {
                        state.elapsed = began.elapsed();
                        progress(state);
                        next_report += progress_every;
                    }
                }
                if !full {
                    break;
                }
            }
            if window_end >= to {
                break;
            }
            window_start = window_end;
        }
        // Let the WebSocket tasks send what is queued before the gateway stops.
        tokio::time::sleep(Duration::from_millis(500)).await;
        state.elapsed = began.elapsed();
        progress(state);
        self.server.abort();
        Ok(state)
    }
}
