// The TypeScript SDK against a live platformd over gRPC-Web (HTTP/1.1, as a browser sends it):
// the calls a new user makes — a tenant, a Backstage catalog, an environment, a deployment waited
// on — paging, errors as Connect codes, and the credentials on every call.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Code, ConnectError } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-node";

import {
  type Platform,
  credentials,
  deploymentResources,
  environmentResources,
  listAll,
  platformClients,
  waitForDeployment,
} from "../src/index.js";
import { type Platformd, startPlatformd } from "./platformd.js";

let server: Platformd;
let baseUrl: string;
let token: string;

function connect(withToken?: string): Platform {
  return platformClients(
    createGrpcWebTransport({
      baseUrl,
      httpVersion: "1.1",
      interceptors: [credentials(withToken)],
    }),
  );
}

before(async () => {
  server = await startPlatformd();
  baseUrl = server.baseUrl;
  token = server.token;
});

after(() => server?.stop());

const CATALOG = `apiVersion: backstage.io/v1alpha1
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
kind: Group
metadata:
  name: team-a
spec:
  type: team
  children: []
`;

test("a new user's calls over gRPC-Web", async () => {
  const platform = connect(token);
  const caller = await platform.iam.getCaller({});
  assert.equal(caller.platformAdmin, true);

  await platform.iam.createTenant({ tenantId: "acme" });
  const imported = await platform.catalog.importEntities({
    parent: "tenants/acme",
    sources: [{ path: "catalog-info.yaml", content: CATALOG }],
  });
  assert.equal(imported.failedCount, 0);
  assert.equal(imported.createdCount, 3);

  // Pages of one: every Component, once.
  const names: string[] = [];
  for await (const entity of listAll(
    (r) => platform.catalog.listEntities(r),
    { parent: "tenants/acme", filter: 'kind = "Component"', pageSize: 1 },
    (page) => page.entities,
  )) {
    names.push(entity.metadata?.name ?? "");
  }
  assert.deepEqual(names.sort(), ["billing", "payments"]);

  await platform.environments.createEnvironment({
    parent: "tenants/acme",
    environmentId: "dev",
    environment: {
      type: environmentResources.EnvironmentType.DEVELOPMENT,
      driver: { driver: { case: "noop", value: {} } },
    },
  });
  const created = await platform.deployments.createDeployment({
    parent: "tenants/acme",
    deployment: {
      component: "payments",
      version: "1.0.0",
      environment: "tenants/acme/environments/dev",
    },
    requestId: globalThis.crypto.randomUUID(),
  });
  const done = await waitForDeployment(platform, created.name, 60_000);
  assert.equal(done.state, deploymentResources.DeploymentState.SUCCEEDED);
  assert.equal(done.component, "component:default/payments");

  // The watch stream over gRPC-Web: the first event is a snapshot of the deployment.
  for await (const event of platform.deployments.watchDeployment({ name: created.name })) {
    assert.equal(event.event.case, "deployment");
    break;
  }
});

test("errors arrive as Connect codes", async () => {
  const platform = connect(token);
  await assert.rejects(
    platform.catalog.getEntity({ name: "tenants/acme/entities/component/default/ghost" }),
    (e: unknown) => e instanceof ConnectError && e.code === Code.NotFound,
  );
  await assert.rejects(
    platform.iam.createTenant({ tenantId: "Not A Name" }),
    (e: unknown) => e instanceof ConnectError && e.code === Code.InvalidArgument,
  );
  await assert.rejects(
    connect().catalog.listEntities({ parent: "tenants/acme" }),
    (e: unknown) => e instanceof ConnectError && e.code === Code.Unauthenticated,
  );
  // HTTP/1.1 keep-alive: the next call reuses the connection of the refused one, which the
  // server must have left usable (it reads the refused request's body before answering).
  const caller = await platform.iam.getCaller({});
  assert.equal(caller.platformAdmin, true);
});

test("every call carries a request id", async () => {
  const platform = connect(token);
  const mine = globalThis.crypto.randomUUID();
  await platform.iam.createRoleBinding(
    {
      parent: "tenants/acme",
      roleBindingId: "vic",
      roleBinding: { principal: "user:vic", role: "tenants/acme/roles/viewer" },
    },
    { headers: { "x-request-id": mine } },
  );
  const ids: string[] = [];
  for await (const e of listAll(
    (r) => platform.audit.listAuditEvents(r),
    { parent: "tenants/acme", pageSize: 100 },
    (page) => page.auditEvents,
  )) {
    ids.push(e.requestId);
  }
  assert.ok(ids.includes(mine), "a request id the caller set is kept");
  assert.ok(ids.every((id) => id.length > 0));
});
