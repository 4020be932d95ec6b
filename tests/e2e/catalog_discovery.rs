//! Finding things in the catalog, on SQLite and PostgreSQL: ranked search, facet counts, the
//! remaining List filter fields, custom sort orders with stable pages, and WatchEntities (snapshot,
//! live changes, filtered-out entities, resuming after a sequence number).

use std::time::Duration;

use futures::StreamExt;
use platform_api::platform::catalog::v1 as cat;
use tonic::Code;

use crate::catalog::{catalog, import, setup};
use crate::storage_test;
use crate::support::{Backend, TestClient};

const CATALOG: &str = r#"
apiVersion: backstage.io/v1alpha1
kind: Component
metadata:
  name: payments
  title: Payments API
  tags: [java, payments]
  labels:
    tier: "1"
  annotations:
    backstage.io/techdocs-ref: dir:.
spec:
  type: service
  lifecycle: production
  owner: team-a
  system: billing
  dependsOn: [resource:payments-db]
---
apiVersion: backstage.io/v1alpha1
kind: Component
metadata:
  name: payments-ui
  title: Checkout
  tags: [react]
spec:
  type: website
  lifecycle: experimental
  owner: team-b
  dependsOn: [component:payments]
---
apiVersion: backstage.io/v1alpha1
kind: Component
metadata:
  name: ledger
  title: Ledger
  description: Keeps the payments history
  tags: [java]
spec:
  type: service
  lifecycle: production
  owner: team-a
---
apiVersion: backstage.io/v1alpha1
kind: System
metadata:
  name: billing
spec:
  owner: team-a
  domain: finance
---
apiVersion: backstage.io/v1alpha1
kind: Group
metadata:
  name: team-a
spec:
  type: team
  parent: org
  children: []
"#;

async fn seed(admin: &TestClient) {
    let imported = import(
        admin,
        vec![cat::ImportSource {
            path: "catalog-info.yaml".into(),
            content: CATALOG.into(),
        }],
        "",
    )
    .await
    .expect("import");
    assert_eq!(imported.failed_count, 0, "{imported:#?}");
}

async fn search(
    client: &TestClient,
    query: &str,
    page_size: i32,
    page_token: &str,
) -> Result<cat::SearchEntitiesResponse, tonic::Status> {
    catalog(client)
        .search_entities(client.req(cat::SearchEntitiesRequest {
            parent: "tenants/acme".into(),
            query: query.into(),
            page_size,
            page_token: page_token.into(),
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner())
}

fn refs(results: &[cat::SearchResult]) -> Vec<String> {
    results
        .iter()
        .map(|r| {
            r.entity
                .as_ref()
                .map(|e| e.r#ref.clone())
                .unwrap_or_default()
        })
        .collect()
}

async fn names(client: &TestClient, filter: &str, order_by: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = catalog(client)
            .list_entities(client.req(cat::ListEntitiesRequest {
                parent: "tenants/acme".into(),
                filter: filter.into(),
                order_by: order_by.into(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            }))
            .await
            .unwrap_or_else(|e| panic!("list {filter:?} {order_by:?}: {e:?}"))
            .into_inner();
        out.extend(page.entities.iter().map(|e| {
            e.metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default()
        }));
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

storage_test!(
    search_ranks_by_field_and_facets_count_values,
    |backend: Backend| async move {
        let (_db, server, admin) = setup(backend).await;
        seed(&admin).await;

        let hits = search(&admin, "payments", 0, "").await.expect("search");
        assert_eq!(
            refs(&hits.results),
            vec![
                "component:default/payments",
                "component:default/payments-ui",
                "component:default/ledger"
            ]
        );
        assert_eq!(hits.total_size, 3);
        assert!(hits.results[0].score > hits.results[1].score);
        assert!(
            hits.results[0]
                .matched_fields
                .contains(&"metadata.name".to_owned())
        );
        assert_eq!(
            hits.results[2].matched_fields,
            vec!["metadata.description".to_owned()]
        );
        // Word prefixes, in any field; every word must match.
        let hits = search(&admin, "che", 0, "").await.expect("prefix");
        assert_eq!(refs(&hits.results), vec!["component:default/payments-ui"]);
        assert!(
            search(&admin, "ments", 0, "")
                .await
                .expect("inside a word")
                .results
                .is_empty()
        );
        assert!(
            search(&admin, "payments react", 0, "")
                .await
                .expect("two words")
                .results
                .iter()
                .all(|r| r
                    .entity
                    .as_ref()
                    .is_some_and(|e| e.r#ref == "component:default/payments-ui"))
        );
        // Pages.
        let first = search(&admin, "payments", 2, "").await.expect("page 1");
        assert_eq!(first.results.len(), 2);
        let second = search(&admin, "payments", 2, &first.next_page_token)
            .await
            .expect("page 2");
        assert_eq!(refs(&second.results), vec!["component:default/ledger"]);
        assert!(second.next_page_token.is_empty());
        assert_eq!(
            search(&admin, "ledger", 2, &first.next_page_token)
                .await
                .expect_err("a token of another query")
                .code(),
            Code::InvalidArgument
        );
        for bad in ["", "   ", "--", &"x".repeat(257)] {
            assert_eq!(
                search(&admin, bad, 0, "")
                    .await
                    .expect_err("bad query")
                    .code(),
                Code::InvalidArgument,
                "{bad:?}"
            );
        }

        let facets = catalog(&admin)
            .get_entity_facets(admin.req(cat::GetEntityFacetsRequest {
                parent: "tenants/acme".into(),
                facets: vec![
                    "owner".into(),
                    "tags".into(),
                    "labels.tier".into(),
                    "kind".into(),
                    "domain".into(),
                ],
                filter: "kind = \"Component\" OR kind = \"System\"".into(),
                max_values: 0,
            }))
            .await
            .expect("facets")
            .into_inner()
            .facets;
        let values = |i: usize| -> Vec<(String, i32)> {
            facets[i]
                .values
                .iter()
                .map(|v| (v.value.clone(), v.count))
                .collect()
        };
        assert_eq!(
            values(0),
            vec![
                ("group:default/team-a".to_owned(), 3),
                ("group:default/team-b".to_owned(), 1)
            ]
        );
        assert_eq!(
            values(1),
            vec![
                ("java".to_owned(), 2),
                ("payments".to_owned(), 1),
                ("react".to_owned(), 1)
            ]
        );
        assert_eq!(values(2), vec![("1".to_owned(), 1)]);
        assert_eq!(
            values(3),
            vec![("component".to_owned(), 3), ("system".to_owned(), 1)]
        );
        assert_eq!(values(4), vec![("domain:default/finance".to_owned(), 1)]);
        let truncated = catalog(&admin)
            .get_entity_facets(admin.req(cat::GetEntityFacetsRequest {
                parent: "tenants/acme".into(),
                facets: vec!["tags".into()],
                max_values: 1,
                ..Default::default()
            }))
            .await
            .expect("facets")
            .into_inner();
        assert!(truncated.facets[0].truncated);
        assert_eq!(truncated.facets[0].values.len(), 1);
        for facets in [
            vec!["spec.definition".to_owned()],
            Vec::new(),
            vec!["kind".to_owned(); 21],
        ] {
            let err = catalog(&admin)
                .get_entity_facets(admin.req(cat::GetEntityFacetsRequest {
                    parent: "tenants/acme".into(),
                    facets,
                    ..Default::default()
                }))
                .await
                .expect_err("bad facets");
            assert_eq!(err.code(), Code::InvalidArgument);
        }
        server.stop().await;
    }
);

storage_test!(
    list_filters_cover_every_documented_field_and_any_sort_order,
    |backend: Backend| async move {
        let (_db, server, admin) = setup(backend).await;
        seed(&admin).await;
        for (filter, expected) in [
            ("annotations.backstage.io/techdocs-ref:*", vec!["payments"]),
            (
                "annotations.backstage.io/techdocs-ref = \"dir:.\"",
                vec!["payments"],
            ),
            (
                "relations.dependsOn:\"resource:payments-db\"",
                vec!["payments"],
            ),
            (
                "relations.dependencyOf:\"component:payments-ui\"",
                vec!["payments"],
            ),
            ("relations.ownedBy = \"group:team-b\"", vec!["payments-ui"]),
            // payments needs a database that is not in the catalog; team-b is not either.
            (
                "unresolved = true AND kind = \"Component\"",
                vec!["payments", "payments-ui"],
            ),
            (
                "unresolved = false AND kind = \"Component\"",
                vec!["ledger"],
            ),
            ("domain = \"finance\"", vec!["billing"]),
            ("parent = \"org\"", vec!["team-a"]),
            (
                "api_version = \"backstage.io/v1alpha1\" AND kind = \"System\"",
                vec!["billing"],
            ),
            (
                "create_time > \"2000-01-01T00:00:00Z\" AND kind = \"Group\"",
                vec!["team-a"],
            ),
            ("update_time < \"2000-01-01T00:00:00Z\"", vec![]),
        ] {
            assert_eq!(names(&admin, filter, "").await, expected, "{filter}");
        }
        for bad in [
            "relations.knows:\"group:x\"",
            "relations.dependsOn:\"\"",
            "unresolved = maybe",
            "create_time = \"2000-01-01T00:00:00Z\"",
            "update_time > \"yesterday\"",
            "spec.definition = \"x\"",
        ] {
            let err = catalog(&admin)
                .list_entities(admin.req(cat::ListEntitiesRequest {
                    parent: "tenants/acme".into(),
                    filter: bad.into(),
                    ..Default::default()
                }))
                .await
                .expect_err(bad);
            assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        }

        // Sort orders, paged two at a time: pages neither skip nor repeat.
        let components = "kind = \"Component\"";
        assert_eq!(
            names(&admin, components, "").await,
            vec!["ledger", "payments", "payments-ui"]
        );
        assert_eq!(
            names(&admin, components, "name desc").await,
            vec!["payments-ui", "payments", "ledger"]
        );
        assert_eq!(
            names(&admin, components, "title").await,
            vec!["payments-ui", "ledger", "payments"]
        );
        assert_eq!(
            names(&admin, components, "lifecycle desc, name").await,
            vec!["ledger", "payments", "payments-ui"]
        );
        assert_eq!(
            names(&admin, components, "owner, title desc").await,
            vec!["payments", "ledger", "payments-ui"]
        );
        assert_eq!(names(&admin, "", "create_time").await.len(), 5);
        for bad in ["colour", "name sideways", "name, name", "name desc desc"] {
            let err = catalog(&admin)
                .list_entities(admin.req(cat::ListEntitiesRequest {
                    parent: "tenants/acme".into(),
                    order_by: bad.into(),
                    ..Default::default()
                }))
                .await
                .expect_err(bad);
            assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        }
        server.stop().await;
    }
);

type Events = tonic::Streaming<cat::WatchEntitiesResponse>;

async fn watch(
    client: &TestClient,
    filter: &str,
    after_sequence: i64,
) -> Result<Events, tonic::Status> {
    catalog(client)
        .watch_entities(client.req(cat::WatchEntitiesRequest {
            parent: "tenants/acme".into(),
            filter: filter.into(),
            after_sequence,
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner())
}

async fn next(events: &mut Events) -> cat::WatchEntitiesResponse {
    tokio::time::timeout(Duration::from_secs(20), events.next())
        .await
        .expect("an event within 20 s")
        .expect("stream open")
        .expect("event")
}

fn describe(event: &cat::WatchEntitiesResponse) -> String {
    use cat::watch_entities_response::Event;
    let name = |e: &cat::Entity| {
        e.metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default()
    };
    match event.event.as_ref() {
        Some(Event::Existing(e)) => format!("existing {}", name(e)),
        Some(Event::SnapshotComplete(s)) => format!("snapshot {}", s.entity_count),
        Some(Event::Created(e)) => format!("created {}", name(e)),
        Some(Event::Updated(e)) => format!("updated {}", name(e)),
        Some(Event::Deleted(d)) => format!("deleted {} {}", d.r#ref, d.reason),
        None => "none".into(),
    }
}

async fn set_lifecycle(client: &TestClient, name: &str, lifecycle: &str) {
    catalog(client)
        .update_entity(client.req(cat::UpdateEntityRequest {
            entity: Some(cat::Entity {
                name: format!("tenants/acme/entities/component/default/{name}"),
                spec: Some(cat::entity::Spec::ComponentSpec(cat::ComponentSpec {
                    r#type: "service".into(),
                    lifecycle: lifecycle.into(),
                    owner: "team-a".into(),
                    ..Default::default()
                })),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["spec".into()],
            }),
            force_unmanaged: true,
            ..Default::default()
        }))
        .await
        .expect("update");
}

storage_test!(
    watch_sends_a_snapshot_then_live_changes_and_resumes,
    |backend: Backend| async move {
        let (_db, server, admin) = setup(backend).await;
        seed(&admin).await;
        let mut events = watch(&admin, "lifecycle = \"production\"", 0)
            .await
            .expect("watch");
        let mut snapshot = Vec::new();
        for _ in 0..3 {
            snapshot.push(describe(&next(&mut events).await));
        }
        assert_eq!(
            snapshot,
            vec!["existing ledger", "existing payments", "snapshot 2"]
        );

        // Live: an update, one that leaves the filter, one that enters it, a create, a delete.
        set_lifecycle(&admin, "ledger", "production").await; // unchanged content: no event
        set_lifecycle(&admin, "payments", "deprecated").await;
        set_lifecycle(&admin, "payments-ui", "production").await;
        import(
            &admin,
            vec![cat::ImportSource {
                path: "new.yaml".into(),
                content: "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: fresh\nspec:\n  type: service\n  lifecycle: production\n  owner: team-a\n".into(),
            }],
            "",
        )
        .await
        .expect("create");
        catalog(&admin)
            .delete_entity(admin.req(cat::DeleteEntityRequest {
                name: "tenants/acme/entities/component/default/ledger".into(),
                ..Default::default()
            }))
            .await
            .expect("delete");
        let mut live = Vec::new();
        let mut last = 0;
        for _ in 0..4 {
            let event = next(&mut events).await;
            assert!(event.sequence > last, "sequences increase");
            last = event.sequence;
            live.push(describe(&event));
        }
        assert_eq!(
            live,
            vec![
                format!(
                    "deleted component:default/payments {}",
                    cat::EntityRemovalReason::FilteredOut as i32
                ),
                "created payments-ui".to_owned(),
                "created fresh".to_owned(),
                format!(
                    "deleted component:default/ledger {}",
                    cat::EntityRemovalReason::Deleted as i32
                ),
            ]
        );
        drop(events);

        // Resume after the second live event: no snapshot, only what came later.
        let mut resumed = watch(&admin, "", last - 2).await.expect("resume");
        assert_eq!(describe(&next(&mut resumed).await), "created fresh");
        assert_eq!(
            describe(&next(&mut resumed).await),
            format!(
                "deleted component:default/ledger {}",
                cat::EntityRemovalReason::Deleted as i32
            )
        );

        for (filter, after) in [("bogus = 1", 0), ("", -1)] {
            let err = watch(&admin, filter, after).await.expect_err("bad watch");
            assert_eq!(err.code(), Code::InvalidArgument);
        }
        let outsider = server.user("eve").await;
        assert_eq!(
            watch(&outsider, "", 0)
                .await
                .expect_err("no permission")
                .code(),
            Code::PermissionDenied
        );
        server.stop().await;
    }
);

storage_test!(
    traversal_node_filters_prune_the_graph,
    |backend: Backend| async move {
        let (_db, server, admin) = setup(backend).await;
        seed(&admin).await;
        let traverse = |node_filter: &'static str| {
            let admin = admin.clone();
            async move {
                catalog(&admin)
                    .traverse_entity_graph(admin.req(cat::TraverseEntityGraphRequest {
                        parent: "tenants/acme".into(),
                        roots: vec!["component:payments-ui".into()],
                        relation_types: vec![cat::RelationType::DependsOn as i32],
                        direction: cat::TraversalDirection::Downstream as i32,
                        node_filter: node_filter.into(),
                        ..Default::default()
                    }))
                    .await
                    .map(|r| {
                        r.into_inner()
                            .nodes
                            .into_iter()
                            .map(|n| n.entity.map(|e| e.r#ref).unwrap_or_default())
                            .collect::<Vec<_>>()
                    })
            }
        };
        assert_eq!(
            traverse("").await.expect("all"),
            vec![
                "component:default/payments-ui",
                "component:default/payments",
                "resource:default/payments-db"
            ]
        );
        assert_eq!(
            traverse("kind = \"Component\"").await.expect("components"),
            vec![
                "component:default/payments-ui",
                "component:default/payments"
            ]
        );
        // The root is always included; nothing past a node that does not match.
        assert_eq!(
            traverse("lifecycle = \"experimental\"")
                .await
                .expect("root only"),
            vec!["component:default/payments-ui"]
        );
        let err = traverse("colour = \"red\"").await.expect_err("bad filter");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("node_filter"), "{err:?}");
        server.stop().await;
    }
);
