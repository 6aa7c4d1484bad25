//! `GET /api/cluster` on one node: its name, owning every partition; for
//! the control room only. A node told to join a RabbitMQ cluster with a
//! store of its own (SQLite) refuses to start, without repeating the URL's
//! password: a cluster's nodes share one PostgreSQL store. Nodes on a real
//! cluster: `cluster_failover.rs`.

mod common;

use std::time::Duration;

use common::*;
use movewatch::Engine;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_owns_every_partition_and_only_the_control_room_asks() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path(), None);
        config.cluster.node = "leeds-1".into();
        config.engine.partitions = 3;
        config.tokens.push(site_token("cluster-site-token", "LEI"));
        let engine = Engine::start(config).await.unwrap();
        let addr = engine.http_addr;
        let reply = get_as(addr, "/api/cluster", Some(TOKEN)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(
            reply.json(),
            serde_json::json!({"node": "leeds-1", "nodes": [{"id": "leeds-1", "partitions": [0, 1, 2]}]})
        );
        assert_eq!(
            get_as(addr, "/api/cluster", Some("cluster-site-token"))
                .await
                .status,
            403
        );
        assert_eq!(get_as(addr, "/api/cluster", None).await.status, 401);
        engine.stop();
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_with_a_store_of_its_own_refuses_to_start_without_leaking_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), None);
    config.cluster.amqp_url = Some("amqp://guest:s3cret-pw@127.0.0.1:5672/%2f".into());
    let err = match Engine::start(config).await {
        Ok(_) => panic!("started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("PostgreSQL"), "{err}");
    assert!(!err.contains("s3cret-pw"), "{err}");
}
