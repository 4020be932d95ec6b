//! The catalog over the wire, on SQLite and PostgreSQL: the Backstage conformance corpus imports
//! as it is, re-imports change nothing, entities are queried with filters and graph traversals,
//! and bad input is refused cleanly.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use platform_api::platform::catalog::v1 as cat;
use platform_api::platform::iam::v1 as iam;
use tonic::Code;

use crate::storage_test;
use crate::support::{Backend, TestClient, TestDb, TestServer};

/// The shared conformance corpus (`../shared/conformance/backstage` from the repository root).
fn corpus_dir() -> PathBuf {
    let mut dir = Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
    loop {
        for candidate in [
            dir.join("shared/conformance/backstage"),
            dir.join("../shared/conformance/backstage"),
        ] {
            if candidate.is_dir() {
                return candidate;
            }
        }
        assert!(
            dir.pop(),
            "the conformance corpus (shared/conformance/backstage) was not found"
        );
    }
}

fn corpus_sources(dir: &Path, sub: &str, out: &mut Vec<cat::ImportSource>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir.join(sub))
        .expect("corpus dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let rel = path
            .strip_prefix(dir)
            .expect("relative")
            .display()
            .to_string();
        if path.is_dir() {
            if rel != "invalid" {
                corpus_sources(dir, &rel, out);
            }
        } else if rel.ends_with(".yaml") || rel.ends_with(".yml") {
            out.push(cat::ImportSource {
                path: rel,
                content: std::fs::read_to_string(&path).expect("read"),
            });
        }
    }
}

pub(crate) async fn setup(backend: Backend) -> (TestDb, TestServer, TestClient) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(&db).await;
    let admin = server.admin().await;
    admin
        .iam()
        .create_tenant(admin.req(iam::CreateTenantRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        }))
        .await
        .expect("tenant");
    (db, server, admin)
}

pub(crate) fn catalog(
    client: &TestClient,
) -> cat::catalog_service_client::CatalogServiceClient<tonic::transport::Channel> {
    cat::catalog_service_client::CatalogServiceClient::new(client.channel.clone())
}

pub(crate) async fn import(
    client: &TestClient,
    sources: Vec<cat::ImportSource>,
    location_key: &str,
) -> Result<cat::ImportEntitiesResponse, tonic::Status> {
    catalog(client)
        .import_entities(client.req(cat::ImportEntitiesRequest {
            parent: "tenants/acme".into(),
            sources,
            location_key: location_key.into(),
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner())
}

pub(crate) async fn list(
    client: &TestClient,
    filter: &str,
    query: &str,
    page_size: i32,
    page_token: &str,
) -> cat::ListEntitiesResponse {
    catalog(client)
        .list_entities(client.req(cat::ListEntitiesRequest {
            parent: "tenants/acme".into(),
            filter: filter.into(),
            query: query.into(),
            page_size,
            page_token: page_token.into(),
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner()
}

pub(crate) async fn get(client: &TestClient, name: &str) -> Result<cat::Entity, tonic::Status> {
    catalog(client)
        .get_entity(client.req(cat::GetEntityRequest {
            name: name.into(),
            view: cat::EntityView::Full as i32,
        }))
        .await
        .map(|r| r.into_inner())
}

storage_test!(
    the_backstage_corpus_imports_as_it_is_and_reimports_change_nothing,
    |backend: Backend| async move {
        let (_db, server, admin) = setup(backend).await;
        let dir = corpus_dir();
        let mut sources = Vec::new();
        corpus_sources(&dir, "", &mut sources);
        assert!(sources.len() >= 60, "corpus has {} files", sources.len());

        let first = import(&admin, sources.clone(), "corpus")
            .await
            .expect("import");
        let failures: Vec<_> = first
            .results
            .iter()
            .filter(|r| r.action == cat::ImportAction::Failed as i32)
            .collect();
        assert!(failures.is_empty(), "documents failed: {failures:?}");
        assert!(first.created_count >= 79, "{first:?}");

        // Every entity EXPECTED.json lists is there.
        let expected: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("EXPECTED.json")).expect("expected"),
        )
        .expect("json");
        let mut wanted = BTreeSet::new();
        for (file, entities) in expected["files"].as_object().expect("files") {
            if file.starts_with("invalid/") {
                continue;
            }
            for e in entities.as_array().expect("list") {
                let s = |k: &str| e[k].as_str().expect(k).to_owned();
                wanted.insert(format!(
                    "tenants/acme/entities/{}/{}/{}",
                    s("kind").to_lowercase(),
                    s("namespace").to_lowercase(),
                    s("name")
                ));
            }
        }
        for name in &wanted {
            get(&admin, name)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
        let all = list(&admin, "", "", 1000, "").await;
        assert_eq!(
            all.total_size as usize,
            wanted.len(),
            "entities stored vs EXPECTED.json"
        );

        // Relations are derived in both directions, including towards entities that do not exist.
        let team_a = get(&admin, "tenants/acme/entities/group/default/team-a")
            .await
            .expect("team-a");
        let has = |e: &cat::Entity, t: cat::RelationType, target: &str| {
            e.relations
                .iter()
                .any(|r| r.r#type == t as i32 && r.target_ref == target)
        };
        assert!(
            has(
                &team_a,
                cat::RelationType::HasMember,
                "user:default/breanna.davison"
            ),
            "{:?}",
            team_a.relations
        );
        let breanna = get(&admin, "tenants/acme/entities/user/default/breanna.davison")
            .await
            .expect("user");
        assert!(has(
            &breanna,
            cat::RelationType::MemberOf,
            "group:default/team-a"
        ));
        let owned: Vec<_> = team_a
            .relations
            .iter()
            .filter(|r| r.r#type == cat::RelationType::OwnerOf as i32)
            .collect();
        assert!(
            !owned.is_empty(),
            "team-a owns things: {:?}",
            team_a.relations
        );

        // Importing the same files again changes nothing: every document UNCHANGED, same etags.
        let etag_before = team_a.etag.clone();
        let again = import(&admin, sources, "corpus").await.expect("re-import");
        assert_eq!(again.created_count + again.updated_count, 0, "{again:?}");
        assert_eq!(again.unchanged_count, first.created_count);
        assert_eq!(
            get(&admin, "tenants/acme/entities/group/default/team-a")
                .await
                .expect("team-a")
                .etag,
            etag_before
        );
        server.stop().await;
    }
);

storage_test!(
    invalid_documents_fail_alone_with_the_field_named,
    |backend: Backend| async move {
        let (_db, server, admin) = setup(backend).await;
        let invalid = std::fs::read_to_string(corpus_dir().join("invalid/invalid-component.yaml"))
            .expect("invalid file");
        let good = "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: payments\nspec:\n  type: service\n  lifecycle: production\n  owner: team-a\n".to_owned();
        let response = import(
            &admin,
            vec![
                cat::ImportSource {
                    path: "invalid.yaml".into(),
                    content: invalid,
                },
                cat::ImportSource {
                    path: "good.yaml".into(),
                    content: good,
                },
            ],
            "",
        )
        .await
        .expect("import");
        let failed: Vec<_> = response
            .results
            .iter()
            .filter(|r| r.action == cat::ImportAction::Failed as i32)
            .collect();
        assert_eq!(failed.len(), 1, "{response:?}");
        assert!(
            failed[0]
                .errors
                .iter()
                .any(|e| e.field.contains("name") || e.field.contains("tags")),
            "{:?}",
            failed[0].errors
        );
        assert_eq!(response.created_count, 1);
        get(&admin, "tenants/acme/entities/component/default/payments")
            .await
            .expect("the valid document landed");

        // Not YAML at all, or a YAML bomb: the whole request is refused, nothing written.
        let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n";
        let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
        // 10 MB in one document: over the 1 MiB document limit, refused naming the source.
        let huge = format!(
            "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: huge\n  description: {}\n",
            "x".repeat(10_000_000)
        );
        for content in [bomb.to_owned(), deep, "kind: [unclosed".to_owned(), huge] {
            let err = import(
                &admin,
                vec![cat::ImportSource {
                    path: "bad.yaml".into(),
                    content,
                }],
                "",
            )
            .await
            .expect_err("refused");
            assert_eq!(err.code(), Code::InvalidArgument, "{:?}", err.message());
            assert!(
                err.message().contains("sources[0].content"),
                "{:?}",
                err.message()
            );
        }
        assert_eq!(list(&admin, "", "", 100, "").await.total_size, 1);
        server.stop().await;
    }
);

storage_test!(
    entities_are_created_queried_updated_and_deleted,
    |backend: Backend| async move {
        let (_db, server, admin) = setup(backend).await;
        let mut yaml = String::new();
        for i in 0..30 {
            let owner = if i % 2 == 0 { "team-a" } else { "team-b" };
            let tier = if i % 3 == 0 { "1" } else { "2" };
            yaml.push_str(&format!(
            "---\napiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: svc-{i:02}\n  description: Service number {i} handles payments\n  labels:\n    tier: \"{tier}\"\n  tags: [rust]\nspec:\n  type: service\n  lifecycle: production\n  owner: {owner}\n  system: shop\n  dependsOn: [\"component:svc-{:02}\"]\n",
            (i + 1) % 30
        ));
        }
        yaml.push_str("---\napiVersion: backstage.io/v1alpha1\nkind: System\nmetadata:\n  name: shop\nspec:\n  owner: team-a\n");
        let imported = import(
            &admin,
            vec![cat::ImportSource {
                path: "all.yaml".into(),
                content: yaml,
            }],
            "",
        )
        .await
        .expect("import");
        assert_eq!(imported.created_count, 31, "{imported:?}");

        // Filters are pushed into SQL: kind + owner + label.
        let page = list(
            &admin,
            r#"kind = "component" AND owner = "team-a" AND labels.tier = "1""#,
            "",
            100,
            "",
        )
        .await;
        let names: Vec<_> = page
            .entities
            .iter()
            .map(|e| e.metadata.clone().unwrap_or_default().name)
            .collect();
        assert_eq!(names, ["svc-00", "svc-06", "svc-12", "svc-18", "svc-24"]);
        assert_eq!(page.total_size, 5);
        assert_eq!(
            list(&admin, r#"tags:"rust" AND system = "shop""#, "", 100, "")
                .await
                .total_size,
            30
        );
        // AIP-160 connectives: OR binds tighter than AND, NOT / `-` negate, parentheses group.
        let count = |filter: &'static str| {
            let admin = &admin;
            async move { list(admin, filter, "", 100, "").await.total_size }
        };
        assert_eq!(count(r#"kind = "component" AND (labels.tier = "1" OR labels.tier = "3") -owner = "team-b""#).await, 5);
        assert_eq!(count(r#"NOT tags:"rust""#).await, 1);
        assert_eq!(
            count(r#"owner = "team-a" OR owner = "team-b" kind = "system""#).await,
            1
        );
        assert_eq!(
            list(&admin, "", "SVC-07 payments", 100, "")
                .await
                .total_size,
            1
        );
        assert_eq!(
            list(&admin, "", "number 7 handles", 100, "")
                .await
                .total_size,
            3
        );
        let err = catalog(&admin)
            .list_entities(admin.req(cat::ListEntitiesRequest {
                parent: "tenants/acme".into(),
                filter: "nonsense ~ 1".into(),
                ..Default::default()
            }))
            .await
            .expect_err("bad filter");
        assert_eq!(err.code(), Code::InvalidArgument);

        // Pages are stable and complete.
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = list(&admin, r#"kind = "component""#, "", 7, &token).await;
            seen.extend(page.entities.iter().map(|e| e.name.clone()));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(seen.len(), 30);
        assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 30);

        // Traversal: what depends on svc-00 (upstream over dependsOn), three steps out.
        let graph = catalog(&admin)
            .traverse_entity_graph(admin.req(cat::TraverseEntityGraphRequest {
                parent: "tenants/acme".into(),
                roots: vec!["component:svc-00".into()],
                relation_types: vec![cat::RelationType::DependsOn as i32],
                direction: cat::TraversalDirection::Upstream as i32,
                max_depth: 3,
                ..Default::default()
            }))
            .await
            .expect("traverse")
            .into_inner();
        let refs: Vec<_> = graph
            .nodes
            .iter()
            .map(|n| n.entity.clone().unwrap_or_default().r#ref)
            .collect();
        assert_eq!(
            refs,
            [
                "component:default/svc-00",
                "component:default/svc-29",
                "component:default/svc-28",
                "component:default/svc-27"
            ]
        );
        assert!(
            graph
                .edges
                .iter()
                .all(|e| e.r#type == cat::RelationType::DependsOn as i32),
            "{:?}",
            graph.edges
        );

        // Update with etag; a stale one is ABORTED.
        let current = get(&admin, "tenants/acme/entities/component/default/svc-01")
            .await
            .expect("get");
        let mut changed = current.clone();
        changed.metadata.as_mut().expect("metadata").title = "Service One".into();
        let update = |entity: cat::Entity| cat::UpdateEntityRequest {
            entity: Some(entity),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["metadata.title".into()],
            }),
            ..Default::default()
        };
        let updated = catalog(&admin)
            .update_entity(admin.req(update(changed.clone())))
            .await
            .expect("update")
            .into_inner();
        assert_eq!(
            updated.metadata.clone().expect("metadata").title,
            "Service One"
        );
        assert_ne!(updated.etag, current.etag);
        let stale = catalog(&admin)
            .update_entity(admin.req(update(changed)))
            .await
            .expect_err("stale");
        assert_eq!(stale.code(), Code::Aborted);

        // Delete: the entity goes; relations pointing at it stay, unresolved.
        catalog(&admin)
            .delete_entity(admin.req(cat::DeleteEntityRequest {
                name: "tenants/acme/entities/component/default/svc-00".into(),
                ..Default::default()
            }))
            .await
            .expect("delete");
        assert_eq!(
            get(&admin, "tenants/acme/entities/component/default/svc-00")
                .await
                .expect_err("gone")
                .code(),
            Code::NotFound
        );
        let svc29 = get(&admin, "tenants/acme/entities/component/default/svc-29")
            .await
            .expect("svc-29");
        let dep = svc29
            .relations
            .iter()
            .find(|r| r.target_ref == "component:default/svc-00")
            .expect("dangling relation kept");
        assert!(!dep.target_resolved);
        server.stop().await;
    }
);

#[tokio::test]
async fn catalog_access_follows_roles_and_is_audited() {
    let (_db, server, admin) = setup(Backend::Sqlite).await;
    for (id, principal, role) in [
        ("dev", "user:dev", "developer"),
        ("view", "user:vic", "viewer"),
    ] {
        admin
            .iam()
            .create_role_binding(admin.req(iam::CreateRoleBindingRequest {
                parent: "tenants/acme".into(),
                role_binding_id: id.into(),
                role_binding: Some(iam::RoleBinding {
                    principal: principal.into(),
                    role: format!("tenants/acme/roles/{role}"),
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .await
            .expect("bind");
    }
    let doc = "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: web\nspec:\n  type: website\n  lifecycle: production\n  owner: team-a\n";
    let dev = server.user("dev").await;
    import(
        &dev,
        vec![cat::ImportSource {
            path: "web.yaml".into(),
            content: doc.into(),
        }],
        "",
    )
    .await
    .expect("developers import");
    let vic = server.user("vic").await;
    get(&vic, "tenants/acme/entities/component/default/web")
        .await
        .expect("viewers read");
    let denied = import(
        &vic,
        vec![cat::ImportSource {
            path: "web.yaml".into(),
            content: doc.into(),
        }],
        "",
    )
    .await
    .expect_err("viewers cannot import");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let outsider = server.user("eve").await;
    assert_eq!(
        get(&outsider, "tenants/acme/entities/component/default/web")
            .await
            .expect_err("no role")
            .code(),
        Code::PermissionDenied
    );
    server.stop().await;
}

storage_test!(
    reimports_update_changed_entities_and_prune_removed_ones,
    |backend: Backend| async move {
        let (_db, server, admin) = setup(backend).await;
        let doc = |name: &str, description: &str| {
            format!(
                "---\napiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\n  description: {description}\nspec:\n  type: service\n  lifecycle: production\n  owner: team-a\n"
            )
        };
        let source = |content: String| {
            vec![cat::ImportSource {
                path: "catalog-info.yaml".into(),
                content,
            }]
        };
        let first = import(
            &admin,
            source(format!("{}{}", doc("api", "v1"), doc("web", "v1"))),
            "repo-a",
        )
        .await
        .expect("first");
        assert_eq!(first.created_count, 2);
        let before = get(&admin, "tenants/acme/entities/component/default/api")
            .await
            .expect("api");

        // One changed, one unchanged.
        let second = import(
            &admin,
            source(format!("{}{}", doc("api", "v2"), doc("web", "v1"))),
            "repo-a",
        )
        .await
        .expect("second");
        assert_eq!(
            (second.updated_count, second.unchanged_count),
            (1, 1),
            "{second:?}"
        );
        let after = get(&admin, "tenants/acme/entities/component/default/api")
            .await
            .expect("api");
        assert_ne!(after.etag, before.etag);
        assert_eq!(after.uid, before.uid);

        // Another location may not take them over; a direct update needs force_unmanaged.
        let other = import(&admin, source(doc("api", "v3")), "repo-b")
            .await
            .expect("other location");
        assert_eq!(other.failed_count, 1);
        assert!(
            other.results[0]
                .errors
                .iter()
                .any(|e| e.reason == "MANAGED_BY_OTHER_LOCATION")
        );

        // Pruning removes what the location no longer declares.
        let pruned = catalog(&admin)
            .import_entities(admin.req(cat::ImportEntitiesRequest {
                parent: "tenants/acme".into(),
                sources: source(doc("api", "v2")),
                location_key: "repo-a".into(),
                prune: true,
                ..Default::default()
            }))
            .await
            .expect("prune")
            .into_inner();
        assert_eq!(pruned.deleted_count, 1, "{pruned:?}");
        assert_eq!(
            get(&admin, "tenants/acme/entities/component/default/web")
                .await
                .expect_err("pruned")
                .code(),
            Code::NotFound
        );
        server.stop().await;
    }
);

storage_test!(
    get_entity_returns_every_relation_once_in_order_with_its_target,
    |backend: Backend| async move {
        let (_db, server, admin) = setup(backend).await;
        let docs = "---\napiVersion: backstage.io/v1alpha1\nkind: System\nmetadata:\n  name: shop\nspec:\n  owner: team-a\n---\napiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: db-svc\nspec:\n  type: service\n  lifecycle: production\n  owner: team-a\n---\napiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: api-svc\nspec:\n  type: service\n  lifecycle: production\n  owner: team-a\n  system: shop\n  dependsOn: [\"component:db-svc\", \"resource:ghost\", \"component:db-svc\"]\n---\napiVersion: backstage.io/v1alpha1\nkind: Group\nmetadata:\n  name: lonely\nspec:\n  type: team\n  children: []\n";
        import(
            &admin,
            vec![cat::ImportSource {
                path: "shop.yaml".into(),
                content: docs.into(),
            }],
            "",
        )
        .await
        .expect("import");

        let api = get(&admin, "tenants/acme/entities/component/default/api-svc")
            .await
            .expect("api-svc");
        let relations: Vec<(String, String, bool, String)> = api
            .relations
            .iter()
            .map(|r| {
                (
                    r.type_name.clone(),
                    r.target_ref.clone(),
                    r.target_resolved,
                    r.target_name.clone(),
                )
            })
            .collect();
        // Ordered by relation type number, then target; the repeated dependsOn appears once;
        // the missing group and resource are unresolved and have no resource name.
        let mut expected = vec![
            (
                "ownedBy".to_owned(),
                "group:default/team-a".to_owned(),
                false,
                String::new(),
            ),
            (
                "partOf".to_owned(),
                "system:default/shop".to_owned(),
                true,
                "tenants/acme/entities/system/default/shop".to_owned(),
            ),
            (
                "dependsOn".to_owned(),
                "component:default/db-svc".to_owned(),
                true,
                "tenants/acme/entities/component/default/db-svc".to_owned(),
            ),
            (
                "dependsOn".to_owned(),
                "resource:default/ghost".to_owned(),
                false,
                String::new(),
            ),
        ];
        let rank = |r: &cat::Relation| (r.r#type, r.target_ref.clone());
        let ranks: Vec<_> = api.relations.iter().map(rank).collect();
        let mut sorted = ranks.clone();
        sorted.sort();
        assert_eq!(ranks, sorted, "relations come ordered by type, then target");
        assert_eq!(relations.len(), expected.len(), "{relations:?}");
        expected.sort();
        let mut actual = relations.clone();
        actual.sort();
        assert_eq!(actual, expected);
        assert_eq!(
            api.status
                .as_ref()
                .expect("status")
                .unresolved_relation_count,
            2
        );

        // The same relations as the batch read (a separate query path).
        let batch = catalog(&admin)
            .batch_get_entities(admin.req(cat::BatchGetEntitiesRequest {
                parent: "tenants/acme".into(),
                names: vec!["component:api-svc".into()],
                ..Default::default()
            }))
            .await
            .expect("batch")
            .into_inner();
        assert_eq!(batch.entities.len(), 1);
        assert_eq!(batch.entities[0].relations, api.relations);

        // An entity without relations is found, with none.
        let lonely = get(&admin, "tenants/acme/entities/group/default/lonely")
            .await
            .expect("lonely");
        assert!(lonely.relations.is_empty(), "{:?}", lonely.relations);
        assert_eq!(
            lonely
                .status
                .as_ref()
                .expect("status")
                .unresolved_relation_count,
            0
        );

        // The BASIC view carries none; the target of a dependsOn has the inverse relation.
        let basic = catalog(&admin)
            .get_entity(admin.req(cat::GetEntityRequest {
                name: "tenants/acme/entities/component/default/api-svc".into(),
                view: cat::EntityView::Basic as i32,
            }))
            .await
            .expect("basic")
            .into_inner();
        assert!(basic.relations.is_empty());
        assert_eq!(basic.metadata, api.metadata);
        let db = get(&admin, "tenants/acme/entities/component/default/db-svc")
            .await
            .expect("db-svc");
        assert!(
            db.relations.iter().any(|r| r.type_name == "dependencyOf"
                && r.target_ref == "component:default/api-svc"
                && r.target_resolved),
            "{:?}",
            db.relations
        );
        server.stop().await;
    }
);
