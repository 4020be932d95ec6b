// The portal in a real browser: Debian's headless Chromium driven by playwright-core, against a
// live platformd (the debug binary, with this portal embedded) on a fresh SQLite data dir, seeded
// through the TypeScript SDK. A new user signs in with the bootstrap token, finds a component,
// deploys it and watches the live log reach SUCCEEDED, sees the DORA chart and the audit trail;
// a viewer sees the buttons they may not press disabled. Screenshots of each page go to
// portal/test-artifacts/.

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { createGrpcWebTransport } from "@connectrpc/connect-node";
import { type Browser, type Page, chromium } from "playwright-core";

import {
  type Platform,
  credentials,
  environmentResources,
  platformClients,
  waitForDeployment,
} from "../../clients/typescript/src/index.ts";
import { type Platformd, startPlatformd } from "../../clients/typescript/test/platformd.ts";

const here = dirname(fileURLToPath(import.meta.url));
const artifacts = join(here, "..", "test-artifacts");
const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";

let server: Platformd;
let baseUrl: string;
let adminToken: string;
let viewerToken: string;
let browser: Browser;

function connect(token: string): Platform {
  return platformClients(
    createGrpcWebTransport({ baseUrl, httpVersion: "1.1", interceptors: [credentials(token)] }),
  );
}

const CATALOG = `apiVersion: backstage.io/v1alpha1
kind: Component
metadata:
  name: payments
  description: Takes the money.
  links:
    - url: https://runbooks.example.com/payments
      title: Runbook
spec:
  type: service
  lifecycle: production
  owner: team-a
  system: shop
  dependsOn: [component:checkout]
---
apiVersion: backstage.io/v1alpha1
kind: Component
metadata:
  name: checkout
spec:
  type: service
  lifecycle: production
  owner: team-a
  system: shop
---
apiVersion: backstage.io/v1alpha1
kind: Group
metadata:
  name: team-a
spec:
  type: team
  children: []
---
apiVersion: backstage.io/v1alpha1
kind: System
metadata:
  name: shop
spec:
  owner: team-a
`;

/** A script that logs a few lines over two seconds, so the page sees them arrive live. */
const DEPLOY_SCRIPT =
  'echo "deploying $PLATFORM_COMPONENT $PLATFORM_VERSION"; sleep 1; echo "rolling out"; sleep 1; echo "all replicas ready"';

before(async () => {
  mkdirSync(artifacts, { recursive: true });
  server = await startPlatformd();
  baseUrl = server.baseUrl;
  adminToken = server.token;

  // Seed: a tenant, a catalog, environments, a deployment history, and a viewer.
  const admin = connect(adminToken);
  await admin.iam.createTenant({ tenantId: "acme" });
  const imported = await admin.catalog.importEntities({
    parent: "tenants/acme",
    sources: [{ path: "catalog-info.yaml", content: CATALOG }],
  });
  assert.equal(imported.failedCount, 0);
  const command = (deploy: string) => ({
    driver: {
      case: "command" as const,
      value: { deploy: { program: "/bin/sh", args: ["-c", deploy] } },
    },
  });
  await admin.environments.createEnvironment({
    parent: "tenants/acme",
    environmentId: "staging",
    environment: {
      type: environmentResources.EnvironmentType.STAGING,
      driver: command("echo staged"),
    },
  });
  await admin.environments.createEnvironment({
    parent: "tenants/acme",
    environmentId: "dev",
    environment: {
      type: environmentResources.EnvironmentType.DEVELOPMENT,
      driver: command(DEPLOY_SCRIPT),
      promotesTo: "tenants/acme/environments/staging",
    },
  });
  // A production history for the DORA dashboard (which counts production environments).
  await admin.environments.createEnvironment({
    parent: "tenants/acme",
    environmentId: "prod",
    environment: {
      type: environmentResources.EnvironmentType.PRODUCTION,
      driver: command("echo released"),
    },
  });
  for (const version of ["1.0.0", "1.1.0", "1.2.0"]) {
    const created = await admin.deployments.createDeployment({
      parent: "tenants/acme",
      deployment: {
        component: "checkout",
        version,
        environment: "tenants/acme/environments/prod",
      },
      requestId: globalThis.crypto.randomUUID(),
    });
    await waitForDeployment(admin, created.name, 60_000);
  }
  // A scorecard: payments (described, owned) reaches gold; checkout (no description) bronze.
  await admin.insights.createScorecard({
    parent: "tenants/acme",
    scorecardId: "basics",
    scorecard: {
      displayName: "Basics",
      entityFilter: 'kind = "Component"',
      levels: [{ id: "bronze" }, { id: "gold" }],
      rules: [
        { id: "owned", level: "bronze", check: { case: "hasOwner", value: {} } },
        {
          id: "described",
          level: "gold",
          check: { case: "hasDescription", value: { minLength: 5 } },
        },
      ],
    },
  });
  await admin.iam.createServiceAccount({
    parent: "tenants/acme",
    serviceAccountId: "viewer-bot",
    serviceAccount: {},
  });
  await admin.iam.createRoleBinding({
    parent: "tenants/acme",
    roleBindingId: "viewer-bot",
    roleBinding: {
      principal: "serviceAccount:tenants/acme/serviceAccounts/viewer-bot",
      role: "tenants/acme/roles/viewer",
    },
  });
  const issued = await admin.iam.issueServiceAccountToken({
    parent: "tenants/acme/serviceAccounts/viewer-bot",
  });
  viewerToken = issued.accessToken;

  browser = await chromium.launch({
    executablePath: chromiumPath,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
});

after(async () => {
  await browser?.close();
  server?.stop();
});

/** A fresh page that fails the test on any uncaught page error. */
async function newPage(): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on("pageerror", (error) => {
    throw new Error(`uncaught error in the page: ${error.message}`);
  });
  return page;
}

async function shot(page: Page, name: string) {
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
}

test("a new user signs in, finds a component, deploys it and watches it succeed", async () => {
  const page = await newPage();
  await page.goto(baseUrl);
  await shot(page, "01-sign-in");
  await page.getByTestId("token-input").fill(adminToken);
  await page.getByTestId("sign-in").click();
  await page.getByTestId("whoami").filter({ hasText: "bootstrap-admin" }).waitFor();
  // The platform admin holds no tenant binding: the tenant is typed.
  const tenantInput = page.getByTestId("tenant-input");
  if (await tenantInput.isVisible()) {
    await tenantInput.fill("acme");
    await tenantInput.press("Enter");
  } else {
    await page.getByTestId("tenant-select").selectOption("acme");
  }

  await page.getByTestId("nav-catalog").click();
  await page.getByTestId("catalog-search").fill("payments");
  const row = page.getByTestId("entity-row").filter({ hasText: "payments" });
  await row.first().waitFor();
  // The search narrows the list (it is debounced: the full list may show first).
  await page
    .getByTestId("entity-row")
    .filter({ hasText: "checkout" })
    .first()
    .waitFor({ state: "detached" });
  await shot(page, "02-catalog");
  await row.first().getByRole("link", { name: "payments" }).click();
  const entity = page.getByTestId("entity-page");
  await entity.waitFor();
  await entity.getByText("Takes the money.").waitFor();
  // The dependency graph is a picture holding both services.
  const graph = page.getByTestId("entity-graph");
  await graph.getByTestId("graph-node").filter({ hasText: "checkout" }).first().waitFor();
  assert.ok((await graph.getByTestId("graph-edge").count()) >= 1, "the dependency is drawn");
  await page.getByTestId("entity-status").waitFor();
  await shot(page, "03-entity");

  await page.getByTestId("deploy-version").fill("2.0.0");
  await page.getByTestId("deploy-environment").selectOption("tenants/acme/environments/dev");
  await page.getByTestId("deploy-submit").click();
  await page.getByTestId("deployment-page").waitFor();
  // The live log streams in over gRPC-Web and the state reaches SUCCEEDED.
  await page
    .getByTestId("deployment-state")
    .filter({ hasText: "SUCCEEDED" })
    .waitFor({ timeout: 60_000 });
  const log = await page.getByTestId("deployment-log").innerText();
  assert.match(log, /deploying component:default\/payments 2\.0\.0/);
  assert.match(log, /all replicas ready/);
  await shot(page, "04-deployment");

  // Promote goes to staging: a new deployment page.
  await page.getByTestId("deployment-promote").click();
  await page
    .getByTestId("deployment-state")
    .filter({ hasText: "SUCCEEDED" })
    .waitFor({ timeout: 60_000 });
  await page.getByTestId("deployment-page").getByText("staging").first().waitFor();

  await page.getByTestId("nav-environments").click();
  await page.getByTestId("environment-row").filter({ hasText: "dev" }).first().waitFor();
  await shot(page, "05-environments");

  await page.getByTestId("nav-insights").click();
  const chart = page.getByTestId("dora-chart");
  await chart.waitFor();
  // Three successful production deployments this week: a bar with a height.
  await page.waitForFunction(() =>
    Array.from(document.querySelectorAll('[data-testid="dora-chart"] rect')).some(
      (r) => Number(r.getAttribute("height") ?? 0) > 0,
    ),
  );
  await page.getByTestId("scorecards").waitFor();
  await page.getByTestId("scorecard-evaluation-row").filter({ hasText: "payments" }).waitFor();
  assert.match(
    await page.getByTestId("scorecard-evaluation-row").filter({ hasText: "payments" }).innerText(),
    /gold/i,
  );
  await shot(page, "06-insights");

  await page.getByTestId("nav-audit").click();
  await page.getByTestId("audit-row").first().waitFor();
  await page.getByTestId("audit-chain-status").filter({ hasText: /verified/i }).waitFor();
  await shot(page, "07-audit");

  // A server error is shown readably, and the page goes on working.
  await page.getByTestId("audit-filter").fill("no such field = 1");
  await page.getByTestId("audit-filter").press("Enter");
  await page.getByTestId("error").filter({ hasText: "INVALID_ARGUMENT" }).first().waitFor();
  await shot(page, "08-error");
  await page.context().close();
});

test("a viewer sees what they may not do disabled", async () => {
  const page = await newPage();
  // Signed in through the fragment `platformctl portal` prints.
  await page.goto(`${baseUrl}/#token=${viewerToken}&tenant=acme`);
  await page.getByTestId("whoami").filter({ hasText: "viewer-bot" }).waitFor();
  assert.ok(!page.url().includes(viewerToken), "the token left the address bar");

  await page.getByTestId("nav-deployments").click();
  const submit = page.getByTestId("deploy-submit");
  await submit.waitFor();
  await page.waitForFunction(
    () => (document.querySelector('[data-testid="deploy-submit"]') as HTMLButtonElement)?.disabled,
  );
  assert.equal(await submit.isDisabled(), true, "a viewer cannot deploy");
  await shot(page, "09-viewer-deployments");

  await page.getByTestId("nav-environments").click();
  const lock = page.getByTestId("environment-lock").first();
  await lock.waitFor();
  await page.waitForFunction(
    () =>
      (document.querySelector('[data-testid="environment-lock"]') as HTMLButtonElement)?.disabled,
  );
  assert.equal(await lock.isDisabled(), true, "a viewer cannot lock an environment");
  await shot(page, "10-viewer-environments");
  await page.context().close();
});
