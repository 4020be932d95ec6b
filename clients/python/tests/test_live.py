"""The Python SDK against a live platformd: the calls a new user makes (a tenant, a Backstage
catalog, an environment, a deployment waited on), pagination over several pages, errors as gRPC
codes, credentials and request ids on every call, and the example bot's report."""

from __future__ import annotations

import uuid

import grpc
import pytest

import ownerless_report
from platform_sdk import Client, audit, catalog, deployments, environments, iam

CATALOG = """\
apiVersion: backstage.io/v1alpha1
kind: Group
metadata:
  name: team-a
spec:
  type: team
  children: []
---
apiVersion: backstage.io/v1alpha1
kind: Component
metadata:
  name: payments
spec:
  type: service
  lifecycle: production
  owner: team-a
---
apiVersion: backstage.io/v1alpha1
kind: Component
metadata:
  name: billing
spec:
  type: service
  lifecycle: production
  owner: team-a
---
apiVersion: backstage.io/v1alpha1
kind: Component
metadata:
  name: legacy
spec:
  type: service
  lifecycle: deprecated
  owner: ghost-team
"""


@pytest.fixture(scope="module")
def tenant(server):
    """A tenant with the catalog above imported."""
    name = f"py-{uuid.uuid4().hex[:8]}"
    with Client(server.addr, server.token) as client:
        client.iam.CreateTenant(iam.CreateTenantRequest(tenant_id=name))
        result = client.catalog.ImportEntities(
            catalog.ImportEntitiesRequest(
                parent=f"tenants/{name}",
                sources=[catalog.ImportSource(path="catalog-info.yaml", content=CATALOG)],
            )
        )
        assert result.failed_count == 0, result
        assert result.created_count == 4
    return name


def test_list_pages_through_every_entity(server, tenant):
    with Client(server.addr, server.token) as client:
        request = catalog.ListEntitiesRequest(
            parent=f"tenants/{tenant}", filter='kind = "Component"', page_size=1
        )
        names = [e.metadata.name for e in client.list(client.catalog.ListEntities, request)]
        assert sorted(names) == ["billing", "legacy", "payments"]
        # The caller's request is left as it was.
        assert request.page_token == ""


def test_deploy_and_wait(server, tenant):
    with Client(server.addr, server.token) as client:
        client.environments.CreateEnvironment(
            environments.CreateEnvironmentRequest(
                parent=f"tenants/{tenant}",
                environment_id="dev",
                environment=environments.Environment(
                    type=environments.ENVIRONMENT_TYPE_DEVELOPMENT,
                    driver=environments.Driver(noop=environments.NoopDriver()),
                ),
            )
        )
        created = client.retry(
            client.deployments.CreateDeployment,
            deployments.CreateDeploymentRequest(
                parent=f"tenants/{tenant}",
                deployment=deployments.Deployment(
                    component="payments",
                    version="1.0.0",
                    environment=f"tenants/{tenant}/environments/dev",
                ),
                request_id=str(uuid.uuid4()),
            ),
        )
        done = client.wait_for_deployment(created.name, timeout=60)
        assert done.state == deployments.DEPLOYMENT_STATE_SUCCEEDED
        assert done.component == "component:default/payments"


def test_errors_are_grpc_codes(server, tenant):
    with Client(server.addr, server.token) as client:
        with pytest.raises(grpc.RpcError) as missing:
            client.catalog.GetEntity(
                catalog.GetEntityRequest(name=f"tenants/{tenant}/entities/component/default/ghost")
            )
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as bad:
            client.iam.CreateTenant(iam.CreateTenantRequest(tenant_id="Not A Name"))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with Client(server.addr) as anonymous:
        with pytest.raises(grpc.RpcError) as denied:
            anonymous.catalog.ListEntities(catalog.ListEntitiesRequest(parent=f"tenants/{tenant}"))
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_every_call_carries_a_request_id(server, tenant):
    with Client(server.addr, server.token) as client:
        mine = str(uuid.uuid4())
        client.iam.CreateRoleBinding(
            iam.CreateRoleBindingRequest(
                parent=f"tenants/{tenant}",
                role_binding_id="vic",
                role_binding=iam.RoleBinding(
                    principal="user:vic", role=f"tenants/{tenant}/roles/viewer"
                ),
            ),
            metadata=[("x-request-id", mine)],
        )
        events = list(
            client.list(
                client.audit.ListAuditEvents,
                audit.ListAuditEventsRequest(parent=f"tenants/{tenant}", page_size=50),
            )
        )
        ids = [e.request_id for e in events]
        assert mine in ids, "a request id the caller set is kept"
        assert all(ids), "the SDK gave every other call one"
        assert len(set(ids)) == len(ids), "a fresh one each time"


def test_the_bot_reports_components_without_a_known_owner(server, tenant):
    with Client(server.addr, server.token) as client:
        text = ownerless_report.report(client, tenant)
    assert "| component:default/legacy | owner group:default/ghost-team is not in the catalog |" in text
    assert "payments" not in text and "billing" not in text
