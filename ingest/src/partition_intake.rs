//! Intake from one partition's queue on the RabbitMQ cluster (an engine
//! node's share of the fleet; docs/SCALE-OUT.md).
//!
//! Each delivery is decoded exactly as an MQTT message on one machine
//! ([`crate::convert::batch_from_mqtt`], the routing key turned back into
//! its topic) and handed to the engine with a [`CommitToken`]; the delivery
//! is acknowledged to the broker only once the store has committed the
//! batch (durable, or its bad elements dead-lettered), never before. At
//! most `prefetch` deliveries are unacknowledged at a time: that is the
//! back-pressure (a slow store stops the broker's deliveries, not memory).
//! A delivery whose batch is never committed (the engine stopped) is
//! returned to the queue, so the partition's next owner gets it.
//!
//! Releasing a partition ([`PartitionIntake::release`]) cancels the
//! consumer, waits for every batch already handed over to be committed and
//! acknowledged, then closes the channel: whatever the broker had sent but
//! was not handed over goes back to the queue, in order. The next owner,
//! which rebuilds from the store, then starts exactly after what this one
//! committed.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions};
use lapin::{Channel, Connection};
use model::{CommitOutcome, CommitToken, IngestBatch};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::Suppliers;
use crate::amqp::{AmqpError, consume_partition, mqtt_topic};

/// Runs once, before the first delivery of a newly taken partition is
/// handed over (the engine rebuilds the partition from the store then: the
/// previous owner may have committed more since the partition was taken).
pub type BeforeFirst = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// One partition being consumed.
pub struct PartitionIntake {
    partition: usize,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// True once the consumer has ended (released, or the channel closed).
    pub ended: watch::Receiver<bool>,
}

impl std::fmt::Debug for PartitionIntake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionIntake")
            .field("partition", &self.partition)
            .finish()
    }
}

impl PartitionIntake {
    /// Starts consuming partition `p` on a channel of its own.
    pub async fn start(
        connection: &Connection,
        p: usize,
        prefetch: u16,
        consumer_tag: &str,
        suppliers: Arc<Suppliers>,
        out: mpsc::Sender<IngestBatch>,
        before_first: BeforeFirst,
    ) -> Result<PartitionIntake, AmqpError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|source| AmqpError::Broker {
                action: "open a channel for",
                name: crate::amqp::partition_queue(p),
                source,
            })?;
        let consumer = consume_partition(&channel, p, prefetch, consumer_tag).await?;
        let (stop, stop_rx) = watch::channel(false);
        let (ended_tx, ended) = watch::channel(false);
        let task = tokio::spawn(run(
            p,
            channel,
            consumer,
            suppliers,
            out,
            before_first,
            stop_rx,
            ended_tx,
            usize::from(prefetch.max(1)),
        ));
        Ok(PartitionIntake {
            partition: p,
            stop,
            task,
            ended,
        })
    }

    /// The partition consumed.
    pub fn partition(&self) -> usize {
        self.partition
    }

    /// Whether the consumer has ended on its own (its channel or connection
    /// closed): the partition is no longer this node's.
    pub fn has_ended(&self) -> bool {
        *self.ended.borrow()
    }

    /// Stops taking deliveries, waits (at most `bound`) until every batch
    /// handed over is committed and acknowledged, then closes the channel;
    /// whether it finished within the bound (if not, the channel is closed
    /// anyway and the broker redelivers what was not acknowledged).
    pub async fn release(mut self, bound: Duration) -> bool {
        self.stop.send_replace(true);
        let finished = tokio::time::timeout(bound, &mut self.task).await.is_ok();
        if !finished {
            self.task.abort();
        }
        finished
    }

    /// Stops at once (the process is going; nothing more is acknowledged).
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// A delivery waiting for its batch's commit.
type Pending = (oneshot::Receiver<CommitOutcome>, lapin::Acker);

#[allow(clippy::too_many_arguments)]
async fn run(
    p: usize,
    channel: Channel,
    mut consumer: lapin::Consumer,
    suppliers: Arc<Suppliers>,
    out: mpsc::Sender<IngestBatch>,
    before_first: BeforeFirst,
    mut stop: watch::Receiver<bool>,
    ended: watch::Sender<bool>,
    prefetch: usize,
) {
    // Acknowledgements in delivery order, by a task of their own, so the
    // consumer never waits on a commit.
    let (pending_tx, pending_rx) = mpsc::channel::<Pending>(prefetch + 1);
    let acks = tokio::spawn(ack_loop(p, pending_rx));
    let mut before_first = Some(before_first);
    let tag = consumer.tag();
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                tracing::warn!(partition = p, error = %e, "partition consumer failed; the partition is released");
                break;
            }
            None => {
                tracing::warn!(partition = p, "partition consumer ended by the broker");
                break;
            }
        };
        if let Some(first) = before_first.take() {
            first().await;
        }
        let topic = mqtt_topic(crate::amqp::device_routing_key(&delivery));
        let (token, committed) = CommitToken::new();
        let batch = crate::convert::batch_from_mqtt(&topic, &delivery.data, &suppliers, token);
        if out.send(batch).await.is_err() {
            // The engine is stopping: returned to the queue for the next owner.
            let _ = delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await;
            break;
        }
        if pending_tx.send((committed, delivery.acker)).await.is_err() {
            break;
        }
    }
    let _ = channel
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await;
    // Every batch handed over is acknowledged (or returned) before the
    // channel closes; anything the broker sent after goes back to the queue.
    drop(pending_tx);
    let _ = acks.await;
    let _ = channel.close(200, "partition released".into()).await;
    ended.send_replace(true);
}

async fn ack_loop(p: usize, mut pending: mpsc::Receiver<Pending>) {
    while let Some((committed, acker)) = pending.recv().await {
        let result = match committed.await {
            Ok(_) => acker.ack(BasicAckOptions::default()).await,
            // Never committed: the next owner gets it again.
            Err(_) => {
                acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
            }
        };
        if let Err(e) = result {
            // The channel is gone: the broker redelivers it to the next owner
            // (stored once: UNIQUE (supplier, tracking_id)).
            tracing::debug!(partition = p, error = %e, "cannot acknowledge; the broker will redeliver");
        }
    }
}
