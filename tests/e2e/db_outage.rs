//! The database goes away and comes back (PostgreSQL, through a small TCP proxy in this test
//! rather than by stopping the machine's shared server): while it is away, calls that need it
//! fail with UNAVAILABLE (never INTERNAL, never a hang) and the server keeps running; once it is
//! back, the server recovers by itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use platform_api::platform::iam::v1 as iam;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tonic::Code;

use crate::iam_audit::create_tenant;
use crate::support::{Backend, TestDb, TestServer, postgres_configured};

/// Forwards connections to `target` while up; when taken down it cuts every open connection and
/// refuses new ones.
struct Proxy {
    addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    cut: Arc<Notify>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Notify::new());
        let (up_flag, cut_signal) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !up_flag.load(Ordering::SeqCst) {
                    drop(inbound); // refused: the "database" is away
                    continue;
                }
                let target = target.clone();
                let cut = cut_signal.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = cut.notified() => {} // both sockets close here
                    }
                });
            }
        });
        Proxy { addr, up, cut }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_goes_away_and_comes_back() {
    if !postgres_configured() {
        return;
    }
    let db = TestDb::new(Backend::Postgres).await;
    let platformd::config::DatabaseUrl::Postgres(url) = &db.database else {
        unreachable!("a PostgreSQL test database")
    };
    // postgres://user@host:port/db → the proxy in between.
    let after_at = url
        .split_once('@')
        .map(|(_, rest)| rest)
        .expect("user@host");
    let host_port = after_at.split('/').next().expect("host:port");
    let proxy = Proxy::start(host_port.to_owned()).await;
    let mut config = db.config();
    config.database = platformd::config::DatabaseUrl::Postgres(url.replacen(
        host_port,
        &proxy.addr.to_string(),
        1,
    ));
    config.db_acquire_timeout = Duration::from_secs(2);
    let server = TestServer::start_with(config).await;
    let admin = server.admin().await;
    create_tenant(&admin, "acme").await;
    let list = || {
        let admin = admin.clone();
        async move {
            admin
                .iam()
                .list_role_bindings(admin.req(iam::ListRoleBindingsRequest {
                    parent: "tenants/acme".into(),
                    ..Default::default()
                }))
                .await
        }
    };
    list().await.expect("served while the database is there");

    proxy.down();
    for attempt in 0..3 {
        let started = Instant::now();
        let status = tokio::time::timeout(Duration::from_secs(20), list())
            .await
            .expect("an answer, not a hang")
            .expect_err("the database is away");
        assert_eq!(
            status.code(),
            Code::Unavailable,
            "attempt {attempt}: {status:?}"
        );
        println!("database away: UNAVAILABLE after {:?}", started.elapsed());
    }
    // Writes too, and the server is still up (the health service answers).
    let status = admin
        .iam()
        .create_tenant(admin.req(iam::CreateTenantRequest {
            tenant_id: "while-away".into(),
            ..Default::default()
        }))
        .await
        .expect_err("no database, no write");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    admin.health_check("").await.expect("still running");

    proxy.up();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match list().await {
            Ok(_) => break,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(Instant::now() < deadline, "never recovered: {status:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    create_tenant(&admin, "after").await;
    server.stop().await;
}
