//! The Prometheus recorder, installed once per process, with every series
//! the contract names registered before the first point.

use std::sync::Mutex;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub(crate) fn prometheus() -> anyhow::Result<PrometheusHandle> {
    // Installed once per process; a lock, not a OnceLock, because two engines
    // starting at once (tests) must not both try to install it.
    static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);
    let mut slot = HANDLE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(h) = slot.as_ref() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("movewatch_pipeline_latency_seconds".into()),
            &[
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full("movewatch_store_write_seconds".into()),
            &[
                0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ],
        )?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    // Pre-register every series so /metrics shows them before the first point.
    metrics::counter!("movewatch_ingest_points_total").increment(0);
    metrics::counter!("movewatch_store_points_total").increment(0);
    for reason in model::Reason::EVERY {
        metrics::counter!("movewatch_ingest_rejected_total", "reason" => reason.as_str())
            .increment(0);
    }
    metrics::gauge!("movewatch_tracked_vehicles").set(0.0);
    metrics::gauge!("movewatch_ws_clients").set(0.0);
    metrics::gauge!("movewatch_webhook_pending").set(0.0);
    metrics::counter!("movewatch_webhook_failures_total").increment(0);
    metrics::gauge!("movewatch_cluster_partitions_owned").set(0.0);
    metrics::counter!("movewatch_cluster_partitions_taken_total").increment(0);
    metrics::counter!("movewatch_live_dropped_total").increment(0);
    metrics::counter!("movewatch_live_rejected_total").increment(0);
    // Histogram samples pile up until drained: with `install_recorder` that
    // is ours to do (a /metrics scrape drains them too, but nothing promises
    // one). Every 5 s, on a thread of its own, for the life of the process.
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        })
        .context("cannot start the metrics upkeep thread")?;
    *slot = Some(handle.clone());
    Ok(handle)
}
