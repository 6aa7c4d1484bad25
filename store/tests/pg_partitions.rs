//! Native day partitioning on PostgreSQL: partitions ahead of time, the
//! default partition that never refuses a row, and retention by dropping
//! whole partitions.

mod common;

use chrono::{Duration, Utc};
use common::{TestDb, batch, point};
use movewatch_store::{BackendKind, Layout, partition_name};
use sqlx::{Connection, PgConnection};

async fn partitions(conn: &mut PgConnection) -> Vec<String> {
    let mut names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'positions'::regclass",
    )
    .fetch_all(conn)
    .await
    .unwrap();
    names.sort();
    names
}

async fn rows_in(conn: &mut PgConnection, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn partitions_are_kept_ahead_and_dropped_whole() {
    tokio::time::timeout(std::time::Duration::from_secs(60), scenario())
        .await
        .expect("timed out");
}

async fn scenario() {
    let db = TestDb::postgres().await;
    let store = db.open().await;
    assert_eq!(store.kind(), BackendKind::Postgres(Layout::Native));
    let mut conn = PgConnection::connect(db.url()).await.unwrap();

    let now = Utc::now();
    let today = now.date_naive();
    let names = partitions(&mut conn).await;
    assert_eq!(names.len(), 12, "{names:?}");
    assert!(names.contains(&"positions_default".to_owned()));
    for d in -7..=3 {
        assert!(names.contains(&partition_name(today + Duration::days(d))));
    }
    // Each partition carries the BRIN on ts and the (vehicle, ts DESC) B-tree.
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE tablename = $1 ORDER BY indexname",
    )
    .bind(partition_name(today))
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(
        indexes.iter().any(|i| i.contains("USING brin (ts)")),
        "{indexes:?}"
    );
    assert!(
        indexes.iter().any(|i| i.contains("(vehicle, ts DESC)")),
        "{indexes:?}"
    );

    // Rows outside every day partition land in the default one.
    let mut ancient = point("AB12CDE", "ancient", 0);
    ancient.ts = now - Duration::days(30);
    let mut ahead = point("AB12CDE", "ahead", 0);
    ahead.ts = now + Duration::days(5);
    let recent = point("AB12CDE", "recent", 0);
    store
        .write(&[batch(vec![ancient.clone(), ahead.clone(), recent], vec![])])
        .await
        .unwrap();
    assert_eq!(rows_in(&mut conn, "positions_default").await, 2);

    // Maintenance three days later adds the partition of `ahead`'s day and
    // moves it out of the default partition.
    store.maintain(now + Duration::days(3)).await.unwrap();
    let ahead_partition = partition_name(ahead.ts.date_naive());
    assert_eq!(rows_in(&mut conn, &ahead_partition).await, 1);
    assert_eq!(rows_in(&mut conn, "positions_default").await, 1);
    // Maintenance is idempotent.
    store.maintain(now + Duration::days(3)).await.unwrap();
    assert_eq!(partitions(&mut conn).await.len(), 15);

    // De-duplication still holds for a moved row.
    let out = store.write(&[batch(vec![ahead], vec![])]).await.unwrap();
    assert_eq!(out[0].duplicates, vec![0]);

    // Retention of 3 days: the partitions of 4..7 days ago are dropped whole,
    // the default partition's straggler and the old keys are deleted.
    let report = store.apply_retention(now, Some(3)).await.unwrap();
    let expected: Vec<String> = (4..=7)
        .rev()
        .map(|d| partition_name(today - Duration::days(d)))
        .collect();
    assert_eq!(report.partitions_dropped, expected);
    assert_eq!(report.rows_deleted, 2, "default-partition row and its key");
    let names = partitions(&mut conn).await;
    assert!(names.contains(&partition_name(today - Duration::days(3))));
    assert!(!names.contains(&partition_name(today - Duration::days(4))));
    assert_eq!(rows_in(&mut conn, "positions_default").await, 0);
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.positions, 2);
    let keys: i64 = rows_in(&mut conn, "position_keys").await;
    assert_eq!(keys, 2);
    conn.close().await.unwrap();
}
