//! Catalog benchmark: seeds a realistic catalog through the real server (in-process, over gRPC on
//! loopback) and reports Get, filtered List and traversal latencies and import throughput, on
//! SQLite and — when PLATFORM_BENCH_POSTGRES_URL is set — on PostgreSQL. It prints figures; it
//! asserts nothing about speed.
//!
//! `cargo bench -p platformd --bench catalog` (BENCH_ENTITIES, default 100000, sets the size).

use std::time::{Duration, Instant};

use platform_api::platform::catalog::v1 as cat;
use platformd::config::DatabaseUrl;

mod common;
use common::{PostgresDb, Server, req};

const TENANTS: usize = 5;
const OWNERS: usize = 1000;

struct Percentiles {
    median: Duration,
    p99: Duration,
}

fn percentiles(mut samples: Vec<Duration>) -> Percentiles {
    samples.sort();
    let at = |q: f64| {
        samples[((samples.len() as f64 * q).ceil() as usize)
            .saturating_sub(1)
            .min(samples.len() - 1)]
    };
    Percentiles {
        median: at(0.5),
        p99: at(0.99),
    }
}

/// A small deterministic generator (no extra dependency).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % bound.max(1)
    }
}

fn component_yaml(i: usize, rng: &mut Lcg) -> String {
    let owner = rng.next(OWNERS);
    let system = rng.next(200);
    let tier = rng.next(3) + 1;
    let mut deps = String::new();
    if i > 0 {
        for _ in 0..3 {
            deps.push_str(&format!("\"component:svc-{}\", ", rng.next(i)));
        }
    }
    format!(
        "---\napiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: svc-{i}\n  description: Service {i} of the benchmark catalog\n  labels:\n    tier: \"{tier}\"\n  tags: [bench]\nspec:\n  type: service\n  lifecycle: production\n  owner: group:team-{owner}\n  system: sys-{system}\n  dependsOn: [{}]\n",
        deps.trim_end_matches(", ")
    )
}

async fn run(name: &str, database: DatabaseUrl, data_dir: &std::path::Path, entities: usize) {
    let server = Server::start(&database, data_dir, |_| {}).await;
    let (channel, token) = (server.channel.clone(), server.token.clone());
    let mut catalog = cat::catalog_service_client::CatalogServiceClient::new(channel.clone())
        .max_decoding_message_size(64 * 1024 * 1024);
    let per_tenant = entities / TENANTS;
    let mut rng = Lcg(42);
    let mut import_rate = Vec::new();
    for t in 0..TENANTS {
        let tenant = format!("t{t}");
        server.create_tenant(&tenant).await;
        let started = Instant::now();
        let mut i = 0;
        while i < per_tenant {
            let batch: String = (i..(i + 1000).min(per_tenant))
                .map(|n| component_yaml(n, &mut rng))
                .collect();
            let response = catalog
                .import_entities(req(
                    &token,
                    cat::ImportEntitiesRequest {
                        parent: format!("tenants/{tenant}"),
                        sources: vec![cat::ImportSource {
                            path: format!("batch-{i}.yaml"),
                            content: batch,
                        }],
                        ..Default::default()
                    },
                ))
                .await
                .expect("import")
                .into_inner();
            assert_eq!(
                response.failed_count,
                0,
                "{:?}",
                response.results.iter().find(|r| !r.errors.is_empty())
            );
            i += 1000;
        }
        import_rate.push(per_tenant as f64 / started.elapsed().as_secs_f64());
    }

    let mut gets = Vec::new();
    for _ in 0..2000 {
        let name = format!(
            "tenants/t{}/entities/component/default/svc-{}",
            rng.next(TENANTS),
            rng.next(per_tenant)
        );
        let started = Instant::now();
        catalog
            .get_entity(req(
                &token,
                cat::GetEntityRequest {
                    name,
                    view: cat::EntityView::Full as i32,
                },
            ))
            .await
            .expect("get");
        gets.push(started.elapsed());
    }
    let mut lists = Vec::new();
    for _ in 0..500 {
        let filter = format!(
            "kind = \"component\" AND owner = \"team-{}\" AND labels.tier = \"{}\"",
            rng.next(OWNERS),
            rng.next(3) + 1
        );
        let started = Instant::now();
        catalog
            .list_entities(req(
                &token,
                cat::ListEntitiesRequest {
                    parent: format!("tenants/t{}", rng.next(TENANTS)),
                    filter,
                    page_size: 100,
                    ..Default::default()
                },
            ))
            .await
            .expect("list");
        lists.push(started.elapsed());
    }
    let mut traversals = Vec::new();
    for _ in 0..300 {
        let started = Instant::now();
        catalog
            .traverse_entity_graph(req(
                &token,
                cat::TraverseEntityGraphRequest {
                    parent: format!("tenants/t{}", rng.next(TENANTS)),
                    roots: vec![format!("component:svc-{}", rng.next(per_tenant))],
                    relation_types: vec![cat::RelationType::DependsOn as i32],
                    direction: cat::TraversalDirection::Downstream as i32,
                    max_depth: 3,
                    ..Default::default()
                },
            ))
            .await
            .expect("traverse");
        traversals.push(started.elapsed());
    }
    let (g, l, tr) = (
        percentiles(gets),
        percentiles(lists),
        percentiles(traversals),
    );
    let rate = import_rate.iter().sum::<f64>() / import_rate.len() as f64;
    println!(
        "| {name} | {entities} | {:.0} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} |",
        rate,
        g.median.as_secs_f64() * 1e3,
        g.p99.as_secs_f64() * 1e3,
        l.median.as_secs_f64() * 1e3,
        l.p99.as_secs_f64() * 1e3,
        tr.median.as_secs_f64() * 1e3,
        tr.p99.as_secs_f64() * 1e3,
    );
    server.stop().await;
}

fn main() {
    let entities: usize = std::env::var("BENCH_ENTITIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        println!("| engine | entities | import entities/s | Get ms median / p99 | filtered List (page 100) ms median / p99 | depth-3 traversal ms median / p99 |");
        println!("|---|---|---|---|---|---|");
        let dir = tempfile::tempdir().expect("tempdir");
        if std::env::var_os("BENCH_SKIP_SQLITE").is_none() {
            run("SQLite", DatabaseUrl::Sqlite(dir.path().join("platform.db")), dir.path(), entities).await;
        }
        if let Ok(admin_url) = std::env::var("PLATFORM_BENCH_POSTGRES_URL") {
            let db = PostgresDb::create(&admin_url).await;
            let pg_dir = tempfile::tempdir().expect("tempdir");
            run("PostgreSQL", db.url.clone(), pg_dir.path(), entities).await;
            db.drop().await;
        }
    });
}
