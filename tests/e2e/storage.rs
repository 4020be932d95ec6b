//! The storage layer on both engines: start-up migrations are idempotent, and the write
//! transaction helper commits, rolls back, and serialises concurrent read-then-write requests.

use platformd::store::{PoolSettings, Store};

use crate::storage_test;
use crate::support::{Backend, TestDb, TestServer};

fn pool_settings() -> PoolSettings {
    PoolSettings {
        max_connections: Some(8),
        acquire_timeout: std::time::Duration::from_secs(10),
        statement_timeout: None,
    }
}

storage_test!(
    server_migrates_an_empty_database_then_restarts_without_changes,
    |backend: Backend| async move {
        let db = TestDb::new(backend).await;

        // First start on an empty database applies every migration.
        let server = TestServer::start(&db).await;
        let tables: i64 = match backend {
        Backend::Sqlite => sqlx::query_scalar(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'platform_meta'",
        ),
        Backend::Postgres => sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'platform_meta'",
        ),
    }
    .fetch_one(server.store.pool())
    .await
    .expect("count tables");
        assert_eq!(tables, 1);
        server.stop().await;

        // A second start on the same database is a no-op migration.
        let store = Store::connect(&db.database, &pool_settings())
            .await
            .expect("connect");
        let report = store.migrate().await.expect("migrate again");
        assert!(report.applied.is_empty(), "re-applied {:?}", report.applied);
        assert!(report.current.is_some());
        store.close().await;

        let server = TestServer::start(&db).await;
        server.stop().await;
    }
);

storage_test!(
    write_transactions_commit_or_leave_nothing,
    |backend: Backend| async move {
        let db = TestDb::new(backend).await;
        let store = Store::connect(&db.database, &pool_settings())
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");

        let mut tx = store.write_tx().await.expect("begin");
        let value = store
            .meta_put_if_absent(&mut tx, "k1", "first")
            .await
            .expect("put");
        assert_eq!(value, "first");
        drop(tx); // rolled back
        assert_eq!(store.meta_get("k1").await.expect("get"), None);

        let mut tx = store.write_tx().await.expect("begin");
        store
            .meta_put_if_absent(&mut tx, "k1", "first")
            .await
            .expect("put");
        tx.commit().await.expect("commit");
        assert_eq!(
            store.meta_get("k1").await.expect("get").as_deref(),
            Some("first")
        );

        // put-if-absent keeps the first value.
        let mut tx = store.write_tx().await.expect("begin");
        let value = store
            .meta_put_if_absent(&mut tx, "k1", "second")
            .await
            .expect("put");
        tx.commit().await.expect("commit");
        assert_eq!(value, "first");
        store.close().await;
    }
);

storage_test!(
    concurrent_read_then_write_transactions_never_lose_an_update,
    |backend: Backend| async move {
        // Each task reads a counter and writes it back plus one, inside one write transaction.
        // On SQLite this only works because write transactions begin IMMEDIATE (a deferred one
        // fails with SQLITE_BUSY_SNAPSHOT); on PostgreSQL the row lock does the same job.
        let db = TestDb::new(backend).await;
        let store = Store::connect(&db.database, &pool_settings())
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        let lock_clause = match store.engine() {
            platformd::store::Engine::Sqlite => "",
            platformd::store::Engine::Postgres => " FOR UPDATE",
        };
        let select = format!("SELECT value FROM platform_meta WHERE key = 'counter'{lock_clause}");

        let mut tx = store.write_tx().await.expect("begin");
        store
            .meta_put_if_absent(&mut tx, "counter", "0")
            .await
            .expect("seed");
        tx.commit().await.expect("commit");

        let mut tasks = Vec::new();
        for _ in 0..40 {
            let store = store.clone();
            let select = select.clone();
            tasks.push(tokio::spawn(async move {
                let mut tx = store.write_tx().await.expect("begin");
                let current: String = sqlx::query_scalar(&select)
                    .fetch_one(&mut *tx)
                    .await
                    .expect("read");
                let next = current.parse::<i64>().expect("number") + 1;
                tokio::task::yield_now().await;
                sqlx::query("UPDATE platform_meta SET value = $1 WHERE key = 'counter'")
                    .bind(next.to_string())
                    .execute(&mut *tx)
                    .await
                    .expect("write");
                tx.commit().await.expect("commit");
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        assert_eq!(
            store.meta_get("counter").await.expect("get").as_deref(),
            Some("40")
        );
        store.close().await;
    }
);

storage_test!(
    a_task_lease_has_one_holder_until_it_lapses,
    |backend: Backend| async move {
        let db = TestDb::new(backend).await;
        let first = Store::connect(&db.database, &pool_settings())
            .await
            .expect("connect");
        first.migrate().await.expect("migrate");
        let second = Store::connect(&db.database, &pool_settings())
            .await
            .expect("connect");
        let ttl = std::time::Duration::from_millis(300);
        assert!(first.task_lease("reaper", ttl).await.expect("take"));
        assert!(
            !second
                .task_lease("reaper", ttl)
                .await
                .expect("held elsewhere")
        );
        assert!(first.task_lease("reaper", ttl).await.expect("renew"));
        assert!(
            second
                .task_lease("other-task", ttl)
                .await
                .expect("tasks are separate")
        );
        tokio::time::sleep(ttl * 2).await;
        assert!(
            second.task_lease("reaper", ttl).await.expect("lapsed"),
            "a lease nobody renews passes to another replica"
        );
        assert!(
            !first
                .task_lease("reaper", ttl)
                .await
                .expect("now held by the second")
        );
        first.close().await;
        second.close().await;
    }
);

/// A burst of writes larger than the WAL limit (8,192 frames, 32 MiB) leaves a WAL that the
/// background checkpointer copies whole into the database, so that the next writes restart it
/// from its first frame: a second burst reuses the file instead of growing it to twice the size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_checkpointer_resets_a_long_wal() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = Store::connect(&db.database, &pool_settings())
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    let file_len = |name: &str| {
        std::fs::metadata(db.data_dir.path().join(name))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    sqlx::query("CREATE TABLE scratch (data BLOB NOT NULL)")
        .execute(store.pool())
        .await
        .expect("table");
    // 48 MiB in back-to-back transactions.
    let burst = || async {
        for _ in 0..12 {
            let mut tx = store.write_tx().await.expect("tx");
            for _ in 0..64 {
                sqlx::query("INSERT INTO scratch (data) VALUES (randomblob(65536))")
                    .execute(&mut *tx)
                    .await
                    .expect("insert");
            }
            tx.commit().await.expect("commit");
        }
    };
    burst().await;
    let first = file_len("platform.db-wal");
    assert!(first > 40 << 20, "the WAL holds the burst: {first}");
    assert!(
        file_len("platform.db") < 8 << 20,
        "nothing checkpointed yet"
    );

    store.start_checkpointer(std::time::Duration::from_millis(50));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while file_len("platform.db") < 48 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL was not copied into the database"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    burst().await;
    let second = file_len("platform.db-wal");
    assert!(
        // Appended, it would be twice as long; a restart may come a transaction or two late.
        second < first + first / 2,
        "the second burst grew the WAL from {first} to {second} bytes instead of restarting it"
    );
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM scratch")
        .fetch_one(store.pool())
        .await
        .expect("count");
    assert_eq!(rows, 2 * 12 * 64, "nothing written was lost");
    store.close().await;
}
