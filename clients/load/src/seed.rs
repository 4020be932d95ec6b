//! The data every scenario runs against, written through the public API as the bootstrap admin:
//! a tenant with a catalog of Components, a development environment, a secret with one version,
//! and two service accounts with their own tokens — a `developer` (the portal user: reads the
//! catalog, deploys to non-production) and a `secret-admin` bot (reads secret values).

use std::time::Instant;

use anyhow::Context;
use platform_api::platform::catalog::v1 as cat;
use platform_api::platform::environments::v1 as env;
use platform_api::platform::iam::v1 as iam;
use platform_api::platform::secrets::v1 as sec;
use tonic::transport::Channel;

use crate::req;

/// Entities per owner, so a filter on one owner matches a full page of 100 and more.
pub const ENTITIES_PER_OWNER: usize = 200;
/// Components that deployments go to (deployments of one component queue behind each other).
pub const DEPLOYED_COMPONENTS: usize = 50;
/// Documents per ImportEntities call.
const IMPORT_BATCH: usize = 1000;

/// What the scenarios need to know about the seeded data.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub tenant: String,
    pub entities: usize,
    pub owners: usize,
    pub environment: String,
    pub secret_version: String,
    pub developer_token: String,
    pub bot_token: String,
}

impl Fixture {
    pub fn entity_name(&self, i: usize) -> String {
        format!("tenants/{}/entities/component/default/svc-{i}", self.tenant)
    }
}

fn component(i: usize, owners: usize) -> String {
    let owner = i % owners;
    let system = i % 500;
    let kind = ["service", "website", "library"][i % 3];
    let lifecycle = ["production", "experimental"][i % 2];
    let depends = if i > 0 {
        // A pseudo-random earlier component, so relations spread over the catalog.
        format!(
            "[\"component:svc-{}\"]",
            (i.wrapping_mul(2_654_435_761) >> 16) % i
        )
    } else {
        "[]".to_owned()
    };
    format!(
        "---\napiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: svc-{i}\n  description: Service {i} of the load catalog\n  labels:\n    tier: \"{}\"\n  tags: [load]\n  links:\n    - url: https://runbooks.example.com/svc-{i}\n      type: runbook\nspec:\n  type: {kind}\n  lifecycle: {lifecycle}\n  owner: group:team-{owner}\n  system: sys-{system}\n  dependsOn: {depends}\n",
        i % 3 + 1
    )
}

/// Seeds a new tenant `tenant` with `entities` Components and everything else the scenarios use.
/// Prints progress to stderr.
pub async fn seed(
    channel: Channel,
    admin: &str,
    tenant: &str,
    entities: usize,
) -> anyhow::Result<Fixture> {
    let entities = entities.max(DEPLOYED_COMPONENTS);
    let owners = entities.div_ceil(ENTITIES_PER_OWNER);
    let parent = format!("tenants/{tenant}");
    let mut iam = iam::iam_service_client::IamServiceClient::new(channel.clone());
    iam.create_tenant(req(
        admin,
        iam::CreateTenantRequest {
            tenant_id: tenant.into(),
            ..Default::default()
        },
    ))
    .await
    .context("CreateTenant")?;

    let mut catalog = cat::catalog_service_client::CatalogServiceClient::new(channel.clone());
    let started = Instant::now();
    for start in (0..entities).step_by(IMPORT_BATCH) {
        let content: String = (start..(start + IMPORT_BATCH).min(entities))
            .map(|i| component(i, owners))
            .collect();
        catalog
            .import_entities(req(
                admin,
                cat::ImportEntitiesRequest {
                    parent: parent.clone(),
                    sources: vec![cat::ImportSource {
                        path: format!("load/{start}.yaml"),
                        content,
                    }],
                    ..Default::default()
                },
            ))
            .await
            .context("ImportEntities")?;
    }
    eprintln!(
        "  seeded {entities} entities in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    env::environment_service_client::EnvironmentServiceClient::new(channel.clone())
        .create_environment(req(
            admin,
            env::CreateEnvironmentRequest {
                parent: parent.clone(),
                environment_id: "dev".into(),
                environment: Some(env::Environment {
                    r#type: env::EnvironmentType::Development as i32,
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .context("CreateEnvironment")?;

    let mut secrets = sec::secret_service_client::SecretServiceClient::new(channel.clone());
    let secret = secrets
        .create_secret(req(
            admin,
            sec::CreateSecretRequest {
                parent: parent.clone(),
                secret_id: "db-password".into(),
                secret: Some(sec::Secret::default()),
                ..Default::default()
            },
        ))
        .await
        .context("CreateSecret")?
        .into_inner();
    secrets
        .add_secret_version(req(
            admin,
            sec::AddSecretVersionRequest {
                parent: secret.name.clone(),
                payload: Some(sec::SecretPayload {
                    data: uuid::Uuid::new_v4().to_string().into_bytes(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .context("AddSecretVersion")?;

    let developer_token =
        service_account(&mut iam, admin, tenant, "portal-user", "developer").await?;
    let bot_token = service_account(&mut iam, admin, tenant, "secrets-bot", "secret-admin").await?;
    Ok(Fixture {
        tenant: tenant.into(),
        entities,
        owners,
        environment: format!("{parent}/environments/dev"),
        secret_version: format!("{}/versions/latest", secret.name),
        developer_token,
        bot_token,
    })
}

/// Creates service account `id` bound to built-in `role` on the tenant and returns a token of it.
async fn service_account(
    iam: &mut iam::iam_service_client::IamServiceClient<Channel>,
    admin: &str,
    tenant: &str,
    id: &str,
    role: &str,
) -> anyhow::Result<String> {
    let account = iam
        .create_service_account(req(
            admin,
            iam::CreateServiceAccountRequest {
                parent: format!("tenants/{tenant}"),
                service_account_id: id.into(),
                service_account: Some(iam::ServiceAccount::default()),
                ..Default::default()
            },
        ))
        .await
        .context("CreateServiceAccount")?
        .into_inner();
    iam.create_role_binding(req(
        admin,
        iam::CreateRoleBindingRequest {
            parent: format!("tenants/{tenant}"),
            role_binding_id: id.into(),
            role_binding: Some(iam::RoleBinding {
                principal: account.principal.clone(),
                role: format!("tenants/{tenant}/roles/{role}"),
                ..Default::default()
            }),
            ..Default::default()
        },
    ))
    .await
    .context("CreateRoleBinding")?;
    Ok(iam
        .issue_service_account_token(req(
            admin,
            iam::IssueServiceAccountTokenRequest {
                parent: account.name,
                ..Default::default()
            },
        ))
        .await
        .context("IssueServiceAccountToken")?
        .into_inner()
        .access_token)
}
