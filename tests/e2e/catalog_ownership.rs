//! Ownership drives access, on SQLite and PostgreSQL: members of the Group that owns an entity
//! hold the tenant's owner role on it (and only on it), the settings change what that role is,
//! catalog changes take effect at once, and IAM groups linked to catalog Groups mirror their
//! members so that role bindings follow the catalog too.

use std::time::{Duration, Instant};

use platform_api::platform::catalog::v1 as cat;
use platform_api::platform::iam::v1 as iam;
use tonic::Code;

use crate::catalog::{catalog, get, import, setup};
use crate::storage_test;
use crate::support::{Backend, TestClient};

fn source(content: String) -> Vec<cat::ImportSource> {
    vec![cat::ImportSource {
        path: "org.yaml".into(),
        content,
    }]
}

fn user(name: &str, member_of: &[&str]) -> String {
    format!(
        "---\napiVersion: backstage.io/v1alpha1\nkind: User\nmetadata:\n  name: {name}\n  annotations:\n    platform/subject: {name}\nspec:\n  memberOf: [{}]\n",
        member_of.join(", ")
    )
}

fn group(name: &str, parent: Option<&str>) -> String {
    let parent = parent
        .map(|p| format!("  parent: {p}\n"))
        .unwrap_or_default();
    format!(
        "---\napiVersion: backstage.io/v1alpha1\nkind: Group\nmetadata:\n  name: {name}\nspec:\n  type: team\n{parent}  children: []\n"
    )
}

fn component(name: &str, owner: &str) -> String {
    format!(
        "---\napiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: service\n  lifecycle: production\n  owner: {owner}\n"
    )
}

async fn describe(
    client: &TestClient,
    name: &str,
    text: &str,
) -> Result<cat::Entity, tonic::Status> {
    catalog(client)
        .update_entity(client.req(cat::UpdateEntityRequest {
            entity: Some(cat::Entity {
                name: format!("tenants/acme/entities/component/default/{name}"),
                metadata: Some(cat::EntityMetadata {
                    description: text.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["metadata.description".into()],
            }),
            force_unmanaged: true,
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner())
}

async fn settings_update(
    client: &TestClient,
    settings: cat::CatalogSettings,
    paths: &[&str],
) -> Result<cat::CatalogSettings, tonic::Status> {
    catalog(client)
        .update_catalog_settings(client.req(cat::UpdateCatalogSettingsRequest {
            catalog_settings: Some(cat::CatalogSettings {
                name: "tenants/acme/catalogSettings".into(),
                ..settings
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            }),
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner())
}

const PAYMENTS: &str = "tenants/acme/entities/component/default/payments";
const WEB: &str = "tenants/acme/entities/component/default/web";
const INFRA: &str = "tenants/acme/entities/component/default/infra";

storage_test!(
    members_of_the_owning_group_hold_the_owner_role_on_what_it_owns,
    |backend: Backend| async move {
        let (_db, server, admin) = setup(backend).await;
        let org = [
            group("platform", None),
            group("team-a", Some("platform")),
            group("team-b", None),
            user("alice", &["team-a"]),
            user("bob", &["team-b"]),
            component("payments", "team-a"),
            component("web", "team-b"),
            component("infra", "platform"),
        ]
        .concat();
        let imported = import(&admin, source(org.clone()), "")
            .await
            .expect("import");
        assert_eq!(imported.failed_count, 0, "{imported:#?}");

        // The defaults: owners are developers on what they own, nothing more.
        let settings = catalog(&admin)
            .get_catalog_settings(admin.req(cat::GetCatalogSettingsRequest {
                name: "tenants/acme/catalogSettings".into(),
            }))
            .await
            .expect("settings")
            .into_inner();
        assert_eq!(settings.owner_role, "tenants/acme/roles/developer");
        assert_eq!(settings.subject_annotation, "platform/subject");
        assert!(!settings.include_child_groups);

        let alice = server.user("alice").await;
        let bob = server.user("bob").await;
        get(&alice, PAYMENTS)
            .await
            .expect("alice reads what team-a owns");
        describe(&alice, "payments", "owned by alice's team")
            .await
            .expect("alice updates what team-a owns");
        assert_eq!(
            get(&alice, WEB).await.expect_err("team-b's").code(),
            Code::PermissionDenied
        );
        assert_eq!(
            describe(&bob, "payments", "not mine")
                .await
                .expect_err("bob")
                .code(),
            Code::PermissionDenied
        );
        assert_eq!(
            get(&alice, INFRA)
                .await
                .expect_err("parent group's, not included")
                .code(),
            Code::PermissionDenied
        );
        // Ownership grants nothing on the tenant as a whole.
        let listed = catalog(&alice)
            .list_entities(alice.req(cat::ListEntitiesRequest {
                parent: "tenants/acme".into(),
                ..Default::default()
            }))
            .await
            .expect_err("no list on the tenant");
        assert_eq!(listed.code(), Code::PermissionDenied);

        // Child groups, when the settings include them.
        let updated = settings_update(
            &admin,
            cat::CatalogSettings {
                include_child_groups: true,
                ..Default::default()
            },
            &["include_child_groups"],
        )
        .await
        .expect("include child groups");
        assert!(updated.include_child_groups);
        assert!(!updated.etag.is_empty());
        get(&alice, INFRA)
            .await
            .expect("team-a is a child of platform");

        // A different owner role: viewers read, but may not update.
        settings_update(
            &admin,
            cat::CatalogSettings {
                owner_role: "tenants/acme/roles/viewer".into(),
                ..Default::default()
            },
            &["owner_role"],
        )
        .await
        .expect("viewer owners");
        get(&alice, PAYMENTS).await.expect("still reads");
        assert_eq!(
            describe(&alice, "payments", "again")
                .await
                .expect_err("viewer")
                .code(),
            Code::PermissionDenied
        );

        // Bad settings are refused and change nothing.
        let missing = settings_update(
            &admin,
            cat::CatalogSettings {
                owner_role: "tenants/acme/roles/nope".into(),
                ..Default::default()
            },
            &["owner_role"],
        )
        .await
        .expect_err("unknown role");
        assert_eq!(missing.code(), Code::FailedPrecondition);
        let stale = settings_update(
            &admin,
            cat::CatalogSettings {
                etag: updated.etag.clone(),
                match_email: false,
                ..Default::default()
            },
            &["match_email"],
        )
        .await
        .expect_err("stale etag");
        assert_eq!(stale.code(), Code::Aborted);
        let bad_mask = settings_update(&admin, cat::CatalogSettings::default(), &["name"])
            .await
            .expect_err("not settable");
        assert_eq!(bad_mask.code(), Code::InvalidArgument);
        let other_tenant = settings_update(
            &admin,
            cat::CatalogSettings {
                owner_role: "tenants/other/roles/admin".into(),
                ..Default::default()
            },
            &["owner_role"],
        )
        .await
        .expect_err("a role of another tenant");
        assert_eq!(other_tenant.code(), Code::InvalidArgument);
        assert_eq!(
            catalog(&alice)
                .update_catalog_settings(alice.req(cat::UpdateCatalogSettingsRequest {
                    catalog_settings: Some(cat::CatalogSettings {
                        name: "tenants/acme/catalogSettings".into(),
                        owner_role: "tenants/acme/roles/admin".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }))
                .await
                .expect_err("owners may not change the settings")
                .code(),
            Code::PermissionDenied
        );

        // A catalog change is in force at once: alice leaves team-a.
        let moved = org.replace(&user("alice", &["team-a"]), &user("alice", &["team-b"]));
        import(&admin, source(moved), "").await.expect("re-import");
        get(&alice, WEB).await.expect("now in team-b");
        assert_eq!(
            get(&alice, PAYMENTS).await.expect_err("left team-a").code(),
            Code::PermissionDenied
        );

        // Empty owner role: ownership grants nothing.
        settings_update(&admin, cat::CatalogSettings::default(), &["owner_role"])
            .await
            .expect("disable");
        assert_eq!(
            get(&alice, WEB).await.expect_err("disabled").code(),
            Code::PermissionDenied
        );
        server.stop().await;
    }
);

storage_test!(
    iam_groups_linked_to_catalog_groups_mirror_their_members,
    |backend: Backend| async move {
        let (_db, server, admin) = setup(backend).await;
        let org = [
            group("team-a", None),
            user("alice", &["team-a"]),
            user("bob", &[]),
        ]
        .concat();
        import(&admin, source(org), "").await.expect("import");
        let created = admin
            .iam()
            .create_group(admin.req(iam::CreateGroupRequest {
                parent: "tenants/acme".into(),
                group_id: "team-a".into(),
                group: Some(iam::Group {
                    catalog_group: "group:team-a".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .await
            .expect("linked group")
            .into_inner();
        assert_eq!(created.member_count, 1);
        let members = |client: TestClient| async move {
            client
                .iam()
                .list_group_members(client.req(iam::ListGroupMembersRequest {
                    group: "tenants/acme/groups/team-a".into(),
                    ..Default::default()
                }))
                .await
                .expect("members")
                .into_inner()
                .members
                .into_iter()
                .map(|m| (m.member, m.source))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            members(admin.clone()).await,
            vec![(
                "user:alice".to_owned(),
                iam::GroupMemberSource::Catalog as i32
            )]
        );
        let removed = admin
            .iam()
            .remove_group_member(admin.req(iam::RemoveGroupMemberRequest {
                group: "tenants/acme/groups/team-a".into(),
                member: "user:alice".into(),
                ..Default::default()
            }))
            .await
            .expect_err("catalog memberships are changed in the catalog");
        assert_eq!(removed.code(), Code::FailedPrecondition);

        // A binding to the IAM group follows catalog membership.
        admin
            .iam()
            .create_role_binding(admin.req(iam::CreateRoleBindingRequest {
                parent: "tenants/acme".into(),
                role_binding_id: "team-a-viewers".into(),
                role_binding: Some(iam::RoleBinding {
                    principal: "group:tenants/acme/groups/team-a".into(),
                    role: "tenants/acme/roles/viewer".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .await
            .expect("bind the group");
        let bob = server.user("bob").await;
        let list = |client: TestClient| async move {
            catalog(&client)
                .list_entities(client.req(cat::ListEntitiesRequest {
                    parent: "tenants/acme".into(),
                    ..Default::default()
                }))
                .await
        };
        assert_eq!(
            list(bob.clone())
                .await
                .expect_err("not a member yet")
                .code(),
            Code::PermissionDenied
        );
        import(
            &admin,
            source(
                [
                    group("team-a", None),
                    user("alice", &["team-a"]),
                    user("bob", &["team-a"]),
                ]
                .concat(),
            ),
            "",
        )
        .await
        .expect("bob joins team-a");
        assert_eq!(
            members(admin.clone()).await,
            vec![
                (
                    "user:alice".to_owned(),
                    iam::GroupMemberSource::Catalog as i32
                ),
                (
                    "user:bob".to_owned(),
                    iam::GroupMemberSource::Catalog as i32
                ),
            ]
        );
        // The policy reloads within a second of the membership change (other replicas poll).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match list(bob.clone()).await {
                Ok(_) => break,
                Err(status)
                    if status.code() == Code::PermissionDenied && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => panic!("bob never gained the group's binding: {status:?}"),
            }
        }
        server.stop().await;
    }
);

storage_test!(
    strict_tenants_reject_unknown_kinds,
    |backend: Backend| async move {
        let (_db, server, admin) = setup(backend).await;
        let environment = "apiVersion: backstage.io/v1alpha1\nkind: Environment\nmetadata:\n  name: staging\nspec: {}\n".to_owned();
        let lenient = import(&admin, source(environment.clone()), "")
            .await
            .expect("lenient");
        assert_eq!(lenient.created_count, 1, "{lenient:#?}");
        assert!(
            lenient.results[0]
                .warnings
                .iter()
                .any(|w| w.reason == "UNKNOWN_KIND")
        );

        settings_update(
            &admin,
            cat::CatalogSettings {
                reject_unknown_kinds: true,
                ..Default::default()
            },
            &[],
        )
        .await
        .expect("strict (fields that are set, without a mask)");
        let strict = import(
            &admin,
            source(format!(
                "{}{}",
                environment.replace("staging", "prod"),
                component("api", "team-a")
            )),
            "",
        )
        .await
        .expect("strict import");
        assert_eq!(
            (strict.failed_count, strict.created_count),
            (1, 1),
            "{strict:#?}"
        );
        assert_eq!(strict.results[0].errors[0].field, "kind");
        let created = catalog(&admin)
            .create_entity(admin.req(cat::CreateEntityRequest {
                parent: "tenants/acme".into(),
                entity: Some(cat::Entity {
                    api_version: "backstage.io/v1alpha1".into(),
                    kind: "Environment".into(),
                    metadata: Some(cat::EntityMetadata {
                        name: "qa".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .await
            .expect_err("strict create");
        assert_eq!(created.code(), Code::InvalidArgument);
        assert!(created.message().contains("entity.kind"), "{created:?}");

        let email = settings_update(
            &admin,
            cat::CatalogSettings {
                match_email: true,
                ..Default::default()
            },
            &["match_email"],
        )
        .await
        .expect_err("not supported");
        assert_eq!(email.code(), Code::Unimplemented);
        server.stop().await;
    }
);
