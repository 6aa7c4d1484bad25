//! Wiring of an engine node on a RabbitMQ cluster (`[cluster] amqp_url`;
//! docs/SCALE-OUT.md): the connection, the topology, the register's
//! bindings, the command bus and the node's membership.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use engine::cluster::{Membership, Node, NodeConfig, NodeParts, Recover};
use ingest::Suppliers;
use lapin::{Connection, ConnectionProperties};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// How long a node keeps trying to reach the broker at start.
const CONNECT_FOR: Duration = Duration::from_secs(30);

/// The broker URL without its password, for messages.
pub(crate) fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Connects to the first broker node that answers among `urls` (one URL,
/// or several separated by commas), trying them in turn for a while (a
/// cluster's nodes may start in any order).
pub(crate) async fn connect(urls: &str) -> anyhow::Result<Arc<Connection>> {
    let urls: Vec<&str> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    let shown = urls
        .iter()
        .map(|u| redacted(u))
        .collect::<Vec<_>>()
        .join(", ");
    let deadline = Instant::now() + CONNECT_FOR;
    loop {
        let mut last = None;
        for url in &urls {
            match Connection::connect(url, ConnectionProperties::default()).await {
                Ok(c) => {
                    tracing::info!(broker = %redacted(url), "connected to the RabbitMQ cluster");
                    return Ok(Arc::new(c));
                }
                Err(e) => {
                    tracing::warn!(broker = %redacted(url), error = %e, "cannot reach this broker node");
                    last = Some(e);
                }
            }
        }
        if Instant::now() >= deadline {
            let detail = last.map_or_else(|| "no URL given".to_owned(), |e| e.to_string());
            anyhow::bail!(
                "cannot reach the RabbitMQ cluster at {shown} ([cluster] amqp_url) for {} s ({detail}); is it up (bash scripts/cluster.sh up)?",
                CONNECT_FOR.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Declares the partitions' topology and binds every registered vehicle to
/// its partition's queue (idempotent: every node does it at start).
pub(crate) async fn prepare(
    connection: &Connection,
    suppliers: &Suppliers,
    partitions: usize,
) -> anyhow::Result<lapin::Channel> {
    let channel = connection
        .create_channel()
        .await
        .context("cannot open a channel on the RabbitMQ cluster")?;
    ingest::amqp::declare_topology(&channel, partitions)
        .await
        .context("cannot declare the partitions' queues")?;
    let entries = suppliers.entries();
    let started = Instant::now();
    for e in &entries {
        ingest::amqp::bind_vehicle(
            &channel,
            &e.vehicle,
            engine::partition_of(&e.vehicle, partitions),
            partitions,
        )
        .await
        .with_context(|| format!("cannot bind vehicle {} to its partition", e.vehicle))?;
    }
    tracing::info!(
        vehicles = entries.len(),
        partitions,
        took_ms = started.elapsed().as_millis() as u64,
        "partition queues declared and the register's vehicles bound"
    );
    Ok(channel)
}

/// Whether the broker connection is up, checked each second (for `/readyz`).
pub(crate) fn readiness(connection: Arc<Connection>) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(connection.status().connected());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tx.send_replace(connection.status().connected());
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

/// A node's cluster parts, started once the engine is.
pub(crate) struct Joined {
    pub(crate) node: Node,
    bus: JoinHandle<()>,
    relay: Option<JoinHandle<()>>,
    unrouted: JoinHandle<()>,
    live: Option<ws_gateway::live::Live>,
}

impl Joined {
    pub(crate) fn abort(&self) {
        self.node.abort();
        self.bus.abort();
        self.unrouted.abort();
        if let Some(relay) = &self.relay {
            relay.abort();
        }
        if let Some(live) = &self.live {
            live.abort();
        }
    }
}

/// What joining needs.
pub(crate) struct JoinParts {
    pub(crate) connection: Arc<Connection>,
    pub(crate) node: String,
    pub(crate) running: engine::Control,
    pub(crate) input: mpsc::Sender<model::IngestBatch>,
    pub(crate) suppliers: Arc<Suppliers>,
    pub(crate) tracker: Arc<tracker::Tracker>,
    pub(crate) store: store::Store,
    pub(crate) membership: watch::Sender<Arc<Membership>>,
    pub(crate) bus_task: JoinHandle<()>,
    pub(crate) relay: Option<JoinHandle<()>>,
    pub(crate) live: Option<ws_gateway::live::Live>,
}

/// Joins the cluster: from now on the node takes its share of partitions.
pub(crate) async fn join(p: JoinParts) -> anyhow::Result<Joined> {
    let store = p.store.clone();
    let recover: Recover = Arc::new(move || {
        let store = store.clone();
        Box::pin(async move {
            crate::recovery::recover_state(&store)
                .await
                .map_err(|e| format!("{e:#}"))
        })
    });
    // What no vehicle binding matched: dead-lettered, or sent on once the
    // register accepts it (one node at a time: single active consumer).
    let unrouted = engine::cluster::consume_unrouted(
        &p.connection,
        &p.node,
        p.running.partitions(),
        p.suppliers.clone(),
        p.input.clone(),
    )
    .await
    .context("cannot consume the cluster's unrouted queue")?;
    let node = Node::join(
        NodeConfig::new(p.node),
        NodeParts {
            connection: p.connection,
            control: p.running,
            input: p.input,
            suppliers: p.suppliers,
            tracker: p.tracker,
            recover,
            membership: p.membership,
        },
    )
    .await
    .context("cannot join the cluster")?;
    Ok(Joined {
        node,
        bus: p.bus_task,
        relay: p.relay,
        unrouted,
        live: p.live,
    })
}

/// `POST /tracks` on a cluster node: each decoded batch is published to the
/// cluster as the devices' MQTT messages (so it reaches its vehicles'
/// owners through their queues, in order with the devices' own messages),
/// and answered 202 once the broker confirmed every message, i.e. once it
/// is on its replicated queue, as a device's PUBACK is. The request's dead
/// letters are stored through this node's writer. A batch the broker does
/// not confirm is answered 503 (the commit token is dropped).
pub(crate) async fn spawn_tracks_forwarder(
    connection: &Connection,
    local: mpsc::Sender<model::IngestBatch>,
) -> anyhow::Result<(mpsc::Sender<model::IngestBatch>, JoinHandle<()>)> {
    let channel = ingest::amqp::confirmed_channel(connection)
        .await
        .context("cannot open a channel for POST /tracks")?;
    let (tx, mut rx) = mpsc::channel::<model::IngestBatch>(64);
    let task = tokio::spawn(async move {
        while let Some(mut batch) = rx.recv().await {
            let published = ingest::amqp::publish_batch(&channel, &batch).await;
            let commit = std::mem::replace(&mut batch.commit, model::CommitToken::detached());
            match published {
                Ok(()) => {
                    if !batch.dead_letters.is_empty() {
                        batch.positions.clear();
                        batch.events.clear();
                        if local.send(batch).await.is_err() {
                            // Stopping: the request is answered 503.
                            continue;
                        }
                    }
                    commit.complete(model::CommitOutcome::default());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "POST /tracks: the cluster did not take the batch; answered 503");
                }
            }
        }
    });
    Ok((tx, task))
}

/// Binds a vehicle to its partition once its register entry is stored (a
/// cluster node's [`engine::Persist`]: the entry is kept by `inner`, then
/// its messages start reaching the partition's queue).
pub(crate) struct ClusterPersist {
    pub(crate) inner: crate::persist::StorePersist,
    pub(crate) channel: lapin::Channel,
    pub(crate) partitions: usize,
}

impl engine::Persist for ClusterPersist {
    fn put_fence<'a>(
        &'a self,
        site: &'a model::SiteId,
        fence: String,
        at: chrono::DateTime<chrono::Utc>,
    ) -> engine::PersistFuture<'a> {
        self.inner.put_fence(site, fence, at)
    }

    fn put_vehicle<'a>(
        &'a self,
        vehicle: model::VehicleId,
        supplier: model::SupplierId,
        at: chrono::DateTime<chrono::Utc>,
    ) -> engine::PersistFuture<'a> {
        Box::pin(async move {
            self.inner.put_vehicle(vehicle, supplier, at).await?;
            ingest::amqp::bind_vehicle(
                &self.channel,
                &vehicle,
                engine::partition_of(&vehicle, self.partitions),
                self.partitions,
            )
            .await
            .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_broker_url_is_shown_without_its_password() {
        assert_eq!(
            super::redacted("amqp://guest:s3cret@10.0.0.1:5672/%2f"),
            "amqp://guest:***@10.0.0.1:5672/%2f"
        );
        assert_eq!(
            super::redacted("amqp://10.0.0.1:5672"),
            "amqp://10.0.0.1:5672"
        );
    }
}
