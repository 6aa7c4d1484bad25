//! The RabbitMQ topology for running past one machine (docs/SCALE-OUT.md).
//!
//! Devices publish QoS 1 to the cluster's MQTT listener; the MQTT plugin puts
//! each message on `amq.topic` with the topic as routing key, `/` turned into
//! `.` (`movewatch/v1/s/v/positions` → `movewatch.v1.s.v.positions`). From
//! there:
//!
//! ```text
//! amq.topic ──movewatch.v1.#──▶ movewatch.ingress (topic, internal)
//!                                 │ one binding per registered vehicle:
//!                                 │ movewatch.v1.*.{VEHICLE}.*  ──▶ movewatch.partition.{p}
//!                                 │   p = the engine's partition of the vehicle
//!                                 └ no binding matched ──▶ alternate exchange
//!                                     movewatch.unrouted (fanout) ──▶ movewatch.unrouted (queue)
//! movewatch.partitions (direct, key "{p}") ──▶ movewatch.partition.{p}   (re-routing, tools)
//! ```
//!
//! Why per-vehicle bindings and not the consistent-hash exchange: that
//! exchange hashes the whole routing key, so a van's `…positions` and
//! `…events` land on different partitions and a `JourneyStart` could be
//! applied after the points it should precede. The MQTT plugin sets no
//! header or property that names the vehicle, so `hash-header` /
//! `hash-property` have nothing to hash; and its ring is not the engine's
//! FNV-1a, so a node owning queue `p` would get vehicles of other engine
//! partitions. A binding whose key names the vehicle and whose queue is the
//! engine's own partition of it keeps both topics in one queue, in the order
//! the device published them, with no hop in between: the device's PUBACK
//! comes once that partition's quorum queue has the message.
//!
//! Every queue is a quorum queue (replicated, survives the loss of a
//! minority of brokers) with single active consumer (one engine node owns a
//! partition at a time; another takes over, with every unacknowledged
//! message redelivered, when it goes).

use std::fmt;

use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ExchangeBindOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Consumer, ExchangeKind};
use model::VehicleId;

/// The MQTT plugin's exchange (`mqtt.exchange`, its default).
pub const MQTT_EXCHANGE: &str = "amq.topic";
/// The topic exchange between `amq.topic` and the partition queues; internal
/// (no client can publish to it directly), its alternate exchange catches
/// whatever no vehicle binding matches.
pub const INGRESS_EXCHANGE: &str = "movewatch.ingress";
/// What `amq.topic` passes on to [`INGRESS_EXCHANGE`]: everything of ours.
pub const INGRESS_KEY: &str = "movewatch.v1.#";
/// Alternate exchange (fanout) and queue for messages under `movewatch/v1/`
/// that no vehicle binding matched: bad topics, vehicles in no register
/// entry, a registration not written in its normal form. Never dropped in
/// silence: whoever consumes it dead-letters or re-routes each message.
pub const UNROUTED: &str = "movewatch.unrouted";
/// Direct exchange with binding key `"{p}"` to each partition queue, for
/// re-routing a message to a partition by number (from [`UNROUTED`]) and
/// for tools.
pub const PARTITIONS_EXCHANGE: &str = "movewatch.partitions";

/// Most partitions the topology accepts (each is a Raft group on every
/// broker; far more than the plan in docs/SCALE-OUT.md needs).
pub const MAX_PARTITIONS: usize = 1024;

/// A topology or consumption failure.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// The broker refused or failed an operation (the channel or connection
    /// is closed by the broker after most of these).
    #[error("AMQP {action} {name:?}: {source}")]
    Broker {
        /// What was being done ("declare queue", "bind", ...).
        action: &'static str,
        /// The exchange or queue it was done to.
        name: String,
        /// lapin's error (a broker reply such as PRECONDITION_FAILED, or I/O).
        #[source]
        source: lapin::Error,
    },
    /// The broker refused a message (a negative publisher confirm).
    #[error("the broker refused a message (negative confirm)")]
    Refused,
    /// The partition count is 0 or over [`MAX_PARTITIONS`].
    #[error("partition count {0} is out of range (1..={MAX_PARTITIONS})")]
    Partitions(usize),
    /// The partition function returned a partition that does not exist.
    #[error("vehicle {vehicle} mapped to partition {partition}, but there are {count}")]
    PartitionOutOfRange {
        /// The vehicle.
        vehicle: String,
        /// What the function returned.
        partition: usize,
        /// How many partitions there are.
        count: usize,
    },
}

fn broker(action: &'static str, name: impl fmt::Display) -> impl FnOnce(lapin::Error) -> AmqpError {
    let name = name.to_string();
    move |source| AmqpError::Broker {
        action,
        name,
        source,
    }
}

/// The queue of partition `p`.
pub fn partition_queue(p: usize) -> String {
    format!("movewatch.partition.{p}")
}

/// The binding key that sends both of a vehicle's topics, from any supplier,
/// to one queue. The supplier is left to the engine's register check (a
/// vehicle of another supplier is dead-lettered there, as on one machine).
pub fn vehicle_binding_key(vehicle: &VehicleId) -> String {
    format!("movewatch.v1.*.{}.*", vehicle.as_str())
}

/// The MQTT topic a message was published to, from the routing key the MQTT
/// plugin gave it (the plugin swaps `/` and `.`, so this swaps them back).
pub fn mqtt_topic(routing_key: &str) -> String {
    routing_key
        .chars()
        .map(|c| match c {
            '.' => '/',
            '/' => '.',
            c => c,
        })
        .collect()
}

fn str_arg(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// The arguments of every partition queue (and of [`UNROUTED`]); a queue
/// declared earlier with other arguments is an error (PRECONDITION_FAILED),
/// never silently kept.
fn queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-queue-type"), str_arg("quorum"));
    args.insert(
        ShortString::from("x-single-active-consumer"),
        AMQPValue::Boolean(true),
    );
    args
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn internal_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        internal: true,
        ..ExchangeDeclareOptions::default()
    }
}

/// Declares the topology for `partitions` partitions: idempotent (every
/// declaration and binding may be repeated, by every engine node at start).
/// Vehicles are bound separately ([`bind_vehicle`]).
pub async fn declare_topology(channel: &Channel, partitions: usize) -> Result<(), AmqpError> {
    if partitions == 0 || partitions > MAX_PARTITIONS {
        return Err(AmqpError::Partitions(partitions));
    }
    // The unrouted path first, so the ingress exchange's alternate exists
    // before anything can reach it.
    channel
        .exchange_declare(
            UNROUTED.into(),
            ExchangeKind::Fanout,
            internal_exchange(),
            FieldTable::default(),
        )
        .await
        .map_err(broker("declare exchange", UNROUTED))?;
    channel
        .queue_declare(UNROUTED.into(), durable_queue(), queue_arguments())
        .await
        .map_err(broker("declare queue", UNROUTED))?;
    channel
        .queue_bind(
            UNROUTED.into(),
            UNROUTED.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker("bind", UNROUTED))?;

    let mut ingress_args = FieldTable::default();
    ingress_args.insert(ShortString::from("alternate-exchange"), str_arg(UNROUTED));
    channel
        .exchange_declare(
            INGRESS_EXCHANGE.into(),
            ExchangeKind::Topic,
            internal_exchange(),
            ingress_args,
        )
        .await
        .map_err(broker("declare exchange", INGRESS_EXCHANGE))?;
    channel
        .exchange_declare(
            PARTITIONS_EXCHANGE.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(broker("declare exchange", PARTITIONS_EXCHANGE))?;
    for p in 0..partitions {
        let queue = partition_queue(p);
        channel
            .queue_declare(queue.as_str().into(), durable_queue(), queue_arguments())
            .await
            .map_err(broker("declare queue", &queue))?;
        channel
            .queue_bind(
                queue.as_str().into(),
                PARTITIONS_EXCHANGE.into(),
                p.to_string().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker("bind", &queue))?;
    }
    // Last: until now nothing of ours reaches the ingress exchange, so no
    // message is routed into a half-declared topology.
    channel
        .exchange_bind(
            INGRESS_EXCHANGE.into(),
            MQTT_EXCHANGE.into(),
            INGRESS_KEY.into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker("bind", INGRESS_EXCHANGE))?;
    Ok(())
}

/// Declares the fanout `exchange` (durable or not) and this process's own
/// queue on it: server-named, exclusive and deleted with the connection,
/// with `queue_args` (length and age limits), bound; every process with
/// such a queue gets every message (heartbeats, the command bus, live
/// frames). Returns the queue's name.
pub async fn fanout_queue(
    channel: &Channel,
    exchange: &str,
    durable: bool,
    queue_args: FieldTable,
) -> Result<ShortString, AmqpError> {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(broker("declare exchange", exchange))?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            queue_args,
        )
        .await
        .map_err(broker("declare queue (server-named) on", exchange))?;
    let name = queue.name().clone();
    channel
        .queue_bind(
            name.clone(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker("bind", &name))?;
    Ok(name)
}

/// Binds a vehicle's topics to its partition's queue (idempotent). The
/// caller passes the engine's partition of the vehicle
/// (`engine::partition_of(vehicle, partitions)`): queue and engine partition
/// must agree, or the node owning the queue would be handed vehicles whose
/// state another partition holds. Call it once the register entry is stored,
/// before the vehicle's data is expected (until then its messages go to
/// [`UNROUTED`], as `unknown_vehicle` on one machine).
pub async fn bind_vehicle(
    channel: &Channel,
    vehicle: &VehicleId,
    partition: usize,
    partitions: usize,
) -> Result<(), AmqpError> {
    if partition >= partitions {
        return Err(AmqpError::PartitionOutOfRange {
            vehicle: vehicle.to_string(),
            partition,
            count: partitions,
        });
    }
    let queue = partition_queue(partition);
    channel
        .queue_bind(
            queue.as_str().into(),
            INGRESS_EXCHANGE.into(),
            vehicle_binding_key(vehicle).into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker("bind", format!("{vehicle} to {queue}")))
}

/// Starts consuming partition `p` with manual acknowledgements and at most
/// `prefetch` unacknowledged messages (the bound on what a node holds in
/// memory; the broker sends no more until some are acknowledged). With
/// single active consumer, the broker delivers to one consumer of the queue
/// at a time; the others wait, and one of them takes over with every
/// unacknowledged message when the active one's channel or connection goes.
pub async fn consume_partition(
    channel: &Channel,
    p: usize,
    prefetch: u16,
    consumer_tag: &str,
) -> Result<Consumer, AmqpError> {
    consume_queue(channel, &partition_queue(p), prefetch, consumer_tag).await
}

/// A new channel on `connection` with publisher confirms on (each publish
/// then resolves once the broker has the message on its queues).
pub async fn confirmed_channel(connection: &lapin::Connection) -> Result<Channel, AmqpError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(broker("open", "a channel"))?;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .map_err(broker("turn on publisher confirms on", "a channel"))?;
    Ok(channel)
}

/// Consumes any queue with manual acknowledgements and at most `prefetch`
/// unacknowledged (its consumer tag `consumer_tag`).
pub async fn consume_queue(
    channel: &Channel,
    queue: &str,
    prefetch: u16,
    consumer_tag: &str,
) -> Result<Consumer, AmqpError> {
    channel
        .basic_qos(prefetch.max(1), BasicQosOptions::default())
        .await
        .map_err(broker("set prefetch on", queue))?;
    channel
        .basic_consume(
            queue.into(),
            consumer_tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker("consume", queue))
}

/// Sends a delivery on to partition `p`'s queue unchanged and waits for the
/// broker's confirm (`channel` in confirm mode). The partitions' exchange
/// routes by number, so the device's routing key travels as the message's
/// `type` ([`device_routing_key`] reads it back).
pub async fn forward_to_partition(
    channel: &Channel,
    p: usize,
    delivery: &lapin::message::Delivery,
) -> Result<(), AmqpError> {
    let confirm = channel
        .basic_publish(
            PARTITIONS_EXCHANGE.into(),
            p.to_string().as_str().into(),
            lapin::options::BasicPublishOptions::default(),
            &delivery.data,
            lapin::BasicProperties::default()
                .with_delivery_mode(2)
                .with_type(delivery.routing_key.clone()),
        )
        .await
        .map_err(broker("forward to", partition_queue(p)))?
        .await
        .map_err(broker("confirm", partition_queue(p)))?;
    if confirm.is_nack() {
        return Err(AmqpError::Refused);
    }
    Ok(())
}

/// The routing key a partition delivery was published with by a device:
/// its own, or, for one sent on from the unrouted queue by number, the
/// original kept as the message's `type`.
pub fn device_routing_key(delivery: &lapin::message::Delivery) -> &str {
    match delivery.properties.kind() {
        Some(kind) if delivery.exchange.as_str() == PARTITIONS_EXCHANGE => kind.as_str(),
        _ => delivery.routing_key.as_str(),
    }
}

/// Publishes a batch decoded elsewhere (`POST /tracks` on a cluster node)
/// as the devices' MQTT messages would arrive: each point and event in the
/// contract's wire form, one message each, on [`MQTT_EXCHANGE`] with its
/// topic's routing key, so it reaches its vehicle's partition queue in order
/// with that vehicle's MQTT messages. `channel` must be in confirm mode;
/// returns once the broker has confirmed every message (each is then on its
/// quorum queue), or the first failure.
pub async fn publish_batch(channel: &Channel, batch: &model::IngestBatch) -> Result<(), AmqpError> {
    let mut confirms = Vec::with_capacity(batch.positions.len() + batch.events.len());
    let publish = |key: String, body: Vec<u8>| async move {
        channel
            .basic_publish(
                MQTT_EXCHANGE.into(),
                key.as_str().into(),
                lapin::options::BasicPublishOptions::default(),
                &body,
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .map_err(broker("publish to", key))
    };
    for p in &batch.positions {
        let key = format!("movewatch.v1.{}.{}.positions", p.supplier, p.vehicle);
        let body = serde_json::to_vec(&p.to_wire()).unwrap_or_default();
        confirms.push(publish(key, body).await?);
    }
    for e in &batch.events {
        let key = format!("movewatch.v1.{}.{}.events", e.supplier, e.vehicle);
        let body = serde_json::json!({
            "event_type": e.kind.as_str(),
            "occurred_at": model::format_ts(&e.occurred_at),
            "move_id": e.move_id,
            "journey_id": e.journey_id,
            "details": e.details,
        });
        confirms.push(publish(key, body.to_string().into_bytes()).await?);
    }
    for confirm in confirms {
        let confirmation = confirm.await.map_err(broker("confirm", MQTT_EXCHANGE))?;
        if confirmation.is_nack() {
            return Err(AmqpError::Refused);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_turn_back_into_topics() {
        assert_eq!(
            mqtt_topic("movewatch.v1.geoamey.AB12CDE.positions"),
            "movewatch/v1/geoamey/AB12CDE/positions"
        );
        // The plugin turns a '.' inside a topic level into '/'.
        assert_eq!(mqtt_topic("a/b.c"), "a.b/c");
    }

    #[test]
    fn a_vehicle_binding_matches_both_topics_of_any_supplier() {
        let v = VehicleId::parse("ab12 cde").unwrap();
        assert_eq!(vehicle_binding_key(&v), "movewatch.v1.*.AB12CDE.*");
    }

    #[test]
    fn partition_queues_are_numbered() {
        assert_eq!(partition_queue(7), "movewatch.partition.7");
    }
}
