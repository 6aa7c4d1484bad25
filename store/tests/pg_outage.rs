//! PostgreSQL goes away under the writer and comes back: writes retry, acks
//! wait, health says unhealthy, and nothing is lost or stored twice.
//!
//! A small TCP proxy between the store and 127.0.0.1:5432 is cut (every
//! connection dropped, new ones refused) and restored.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestDb, batch, point};
use model::{CommitOutcome, CommitToken, VehicleId};
use movewatch_store::{Store, WriterConfig, spawn_writer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

/// Forwards 127.0.0.1:port to PostgreSQL until cut.
struct Proxy {
    addr: SocketAddr,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = Proxy {
            addr,
            tasks: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().unwrap().push(conn.abort_handle());
            }
        });
        self.tasks.lock().unwrap().push(accept.abort_handle());
    }

    /// Drops every connection and stops listening: new connections are refused.
    async fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
        // Let the aborted tasks drop their sockets and the listener.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            TcpStream::connect(self.addr).await.is_err(),
            "the cut proxy must refuse connections"
        );
    }

    /// Listens again on the same port.
    async fn restore(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

async fn wait_for_health(health: &mut watch::Receiver<bool>, want: bool) {
    tokio::time::timeout(Duration::from_secs(30), health.wait_for(|h| *h == want))
        .await
        .unwrap_or_else(|_| panic!("writer health never became {want}"))
        .unwrap();
}

#[tokio::test]
async fn writes_wait_out_an_outage_and_nothing_is_lost_or_doubled() {
    tokio::time::timeout(Duration::from_secs(120), outage())
        .await
        .expect("outage test timed out");
}

async fn outage() {
    let db = TestDb::postgres().await;
    let direct = db.open().await;
    let proxy = Proxy::start().await;
    let proxied_url = db.url().replace("127.0.0.1:5432", &proxy.addr.to_string());
    assert_ne!(proxied_url, db.url());
    let store = Store::open(&proxied_url).await.unwrap();

    let (tx, rx) = mpsc::channel(4);
    let (health_tx, mut health) = watch::channel(true);
    let writer = spawn_writer(
        store.clone(),
        rx,
        WriterConfig {
            max_rows: 60,
            max_delay: Duration::from_millis(20),
            max_in_flight: None,
        },
        health_tx,
    );

    let make = |n: usize| {
        let (token, done) = CommitToken::new();
        let mut b = batch(
            (0..20)
                .map(|i| point("AB12CDE", &format!("b{n}-p{i}"), (n * 20 + i) as i64 % 1400))
                .collect(),
            vec![],
        );
        b.commit = token;
        (b, done)
    };

    // Before the cut: committed and acknowledged.
    let mut before = Vec::new();
    for n in 0..10 {
        let (b, done) = make(n);
        tx.send(b).await.unwrap();
        before.push(done);
    }
    for done in before {
        let outcome = tokio::time::timeout(Duration::from_secs(10), done)
            .await
            .unwrap()
            .unwrap();
        assert!(outcome.duplicates.is_empty());
    }

    proxy.cut().await;
    assert!(store.ping().await.is_err(), "ping must fail during the cut");

    // During the cut: batches go in (the bounded channel fills and holds the
    // sender, as it holds intake), nothing is acknowledged.
    let (waits_tx, waits_rx) = oneshot::channel::<Vec<oneshot::Receiver<CommitOutcome>>>();
    let sender = tokio::spawn(async move {
        let mut waits = Vec::new();
        for n in 10..40 {
            let (b, done) = make(n);
            waits.push(done);
            tx.send(b).await.unwrap();
        }
        let _ = waits_tx.send(waits);
    });
    wait_for_health(&mut health, false).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !*health.borrow(),
        "still unhealthy while the database is away"
    );
    assert!(
        !sender.is_finished(),
        "back-pressure: the writer must not take 30 batches while it cannot commit"
    );
    let stored_during_cut = direct.counts().await.unwrap().positions;
    assert_eq!(stored_during_cut, 200, "nothing committed during the cut");

    proxy.restore().await;
    wait_for_health(&mut health, true).await;
    let waits = tokio::time::timeout(Duration::from_secs(60), waits_rx)
        .await
        .unwrap()
        .unwrap();
    let mut duplicates = 0;
    for done in waits {
        let outcome = tokio::time::timeout(Duration::from_secs(60), done)
            .await
            .expect("every batch is acknowledged after the restore")
            .expect("token completed, not dropped");
        duplicates += outcome.duplicates.len();
    }
    sender.await.unwrap();
    writer.abort();

    // Every acknowledged point is there exactly once.
    let vehicle = VehicleId::parse("AB12CDE").unwrap();
    let stored = direct
        .track(&vehicle, common::at(-60), common::at(2000), 100_000)
        .await
        .unwrap();
    let ids: HashSet<&str> = stored.iter().map(|p| p.tracking_id.as_str()).collect();
    assert_eq!(stored.len(), 40 * 20, "no point lost, none stored twice");
    assert_eq!(ids.len(), 40 * 20);
    for n in 0..40 {
        for i in 0..20 {
            assert!(ids.contains(format!("b{n}-p{i}").as_str()));
        }
    }
    // A commit whose reply was lost in the cut is retried; its points then come
    // back as duplicates of themselves — still stored once.
    assert_eq!(
        direct.counts().await.unwrap().dead_letters as usize,
        duplicates
    );
}
