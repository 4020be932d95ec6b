//! Scaffolding the benchmarks share: the real server started in-process on a loopback port with
//! its bootstrap token, a tenant, and a throw-away PostgreSQL database.

// Each benchmark is its own crate and uses a part of this module.
#![allow(dead_code)]

use platform_api::platform::iam::v1 as iam;
use platformd::config::DatabaseUrl;
use tonic::transport::Channel;

/// A request carrying `token` as its bearer credential.
pub fn req<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

/// A platformd serving in this process, and a connection to it as the bootstrap admin.
pub struct Server {
    pub channel: Channel,
    pub token: String,
    pub store: platformd::store::Store,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Starts a server on `database` with the test defaults, changed by `configure`.
    pub async fn start(
        database: &DatabaseUrl,
        data_dir: &std::path::Path,
        configure: impl FnOnce(&mut platformd::Config),
    ) -> Server {
        let mut config = platformd::Config::for_data_dir(data_dir);
        config.database = database.clone();
        configure(&mut config);
        let app = platformd::App::build(config).await.expect("server starts");
        let uri = format!("http://{}", app.local_addr());
        let store = app.store().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = app
                .run_until(async {
                    let _ = stopped.await;
                })
                .await;
        });
        let token = std::fs::read_to_string(data_dir.join(platformd::server::BOOTSTRAP_TOKEN_FILE))
            .expect("token")
            .trim()
            .to_owned();
        let channel = Channel::from_shared(uri)
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        Server {
            channel,
            token,
            store,
            stop,
            task,
        }
    }

    /// Creates tenant `id` as the bootstrap admin.
    pub async fn create_tenant(&self, id: &str) {
        iam::iam_service_client::IamServiceClient::new(self.channel.clone())
            .create_tenant(req(
                &self.token,
                iam::CreateTenantRequest {
                    tenant_id: id.into(),
                    ..Default::default()
                },
            ))
            .await
            .expect("tenant");
    }

    /// Stops the server and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// A fresh PostgreSQL database on the server of `admin_url`, dropped by [`PostgresDb::drop`].
pub struct PostgresDb {
    admin: sqlx::PgConnection,
    name: String,
    pub url: DatabaseUrl,
}

impl PostgresDb {
    pub async fn create(admin_url: &str) -> PostgresDb {
        use sqlx::Connection;
        let name = format!("platform_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .expect("postgres");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .expect("create db");
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b.to_owned())
            .unwrap_or(admin_url.to_owned());
        PostgresDb {
            admin,
            url: DatabaseUrl::Postgres(format!("{base}/{name}")),
            name,
        }
    }

    pub async fn drop(mut self) {
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .execute(&mut self.admin)
        .await;
    }
}
