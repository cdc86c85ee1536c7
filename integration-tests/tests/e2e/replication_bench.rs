//! Replication throughput on loopback, a benchmark run by hand (not a timed test):
//! `cargo test -p lifeboat-integration-tests --test e2e replication_bench:: -- --ignored --nocapture`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lifeboat_integration_tests::s3::S3Server;

/// Replication throughput on loopback (a benchmark, run by hand): 256 MiB in 64 pack-sized
/// objects of 4 MiB, primary a local directory (fsync'd), secondary an s3s-fs server over HTTP
/// on 127.0.0.1, copied by the replication worker as in production (4 in flight, each object
/// read, its size and BLAKE3 checked, put with If-None-Match, its size checked with HEAD).
/// `cargo test -p lifeboat-integration-tests --test e2e replication_bench:: -- --ignored --nocapture`
#[test]
#[ignore = "benchmark: prints MB/s"]
fn replication_throughput_on_loopback() {
    use lifeboat_controller::catalog::Catalog;
    use lifeboat_controller::config::ConditionalPut;
    use lifeboat_controller::replication::queue::{self, Kind, NewObject};
    use lifeboat_controller::replication::worker::{Worker, WorkerConfig};
    use lifeboat_controller::store::Store;

    const OBJECTS: usize = 64;
    const SIZE: usize = 4 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(&tmp.path().join("s3"), "dr-bucket");
    let credentials = tmp.path().join("s3.credentials");
    server.write_credentials(&credentials);
    let mut cfg = server.config(Some("bench"), ConditionalPut::Auto);
    cfg.credentials_file = Some(credentials);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let primary = Store::local(&tmp.path().join("primary")).unwrap();
        let secondary = Store::s3(&cfg).unwrap();
        let catalog = Catalog::open_in_memory().unwrap();
        for i in 0..OBJECTS {
            let mut data = vec![0u8; SIZE];
            blake3::Hasher::new()
                .update(&(i as u64).to_le_bytes())
                .finalize_xof()
                .fill(&mut data);
            let hash = *blake3::hash(&data).as_bytes();
            let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
            let key = format!("packs/{}/{hex}", &hex[..2]);
            primary
                .put_new(&key, bytes::Bytes::from(data))
                .await
                .unwrap();
            let obj = NewObject {
                key,
                kind: Kind::Pack,
                size: SIZE as u64,
                blake3: hash,
            };
            catalog
                .run(move |c| queue::enqueue(c, &obj, 0))
                .await
                .unwrap();
        }
        let worker = Worker {
            catalog: catalog.clone(),
            primary,
            secondary,
            config: WorkerConfig::default(),
            runtime: Default::default(),
            progress: tokio::sync::watch::channel(0).0,
        };
        let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(worker.config.concurrency));
        let start = std::time::Instant::now();
        while worker.round(&limit).await > 0 {}
        let secs = start.elapsed().as_secs_f64();
        let s = catalog.run(|c| queue::summary(c)).await.unwrap();
        assert_eq!(s.pending_objects, 0, "{s:?}");
        assert_eq!(s.replicated_objects, OBJECTS as u64, "{s:?}");
        let mb = (OBJECTS * SIZE) as f64 / 1e6;
        println!(
            "replication throughput on loopback: {mb:.0} MB in {secs:.2} s = {:.1} MB/s",
            mb / secs
        );
    });
}
