/**
 * The platform API from TypeScript, over gRPC-Web: the same calls from a browser portal (through
 * `@connectrpc/connect-web`) and from Node.js (through `@connectrpc/connect-node`).
 *
 * The messages and service descriptions are generated from `proto/` by Protobuf-ES
 * (`scripts/generate-sdks`, configured by `buf.gen.yaml`); this module adds a client per service
 * with the bearer token and a fresh `x-request-id` on every call, paging through List methods,
 * and waiting on a deployment.
 *
 * ```ts
 * import { connectWeb } from "@platform/sdk";
 * const platform = connectWeb("https://platform.example.com", token);
 * for await (const entity of listAll((r) => platform.catalog.listEntities(r),
 *                                    { parent: "tenants/acme" }, (page) => page.entities)) {
 *   console.log(entity.metadata?.name);
 * }
 * ```
 */

import { type Client, type Interceptor, type Transport, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { AuditService } from "./gen/platform/audit/v1/audit_pb.js";
import { CatalogService } from "./gen/platform/catalog/v1/catalog_pb.js";
import { type Deployment, DeploymentState } from "./gen/platform/deployments/v1/resources_pb.js";
import { DeploymentService } from "./gen/platform/deployments/v1/service_pb.js";
import { EnvironmentService } from "./gen/platform/environments/v1/service_pb.js";
import { IamService } from "./gen/platform/iam/v1/iam_pb.js";
import { InsightsService } from "./gen/platform/insights/v1/insights_pb.js";
import { SecretService } from "./gen/platform/secrets/v1/secrets_pb.js";

export * as audit from "./gen/platform/audit/v1/audit_pb.js";
export * as catalog from "./gen/platform/catalog/v1/catalog_pb.js";
export * as catalogResources from "./gen/platform/catalog/v1/resources_pb.js";
export * as deployments from "./gen/platform/deployments/v1/service_pb.js";
export * as deploymentResources from "./gen/platform/deployments/v1/resources_pb.js";
export * as environments from "./gen/platform/environments/v1/service_pb.js";
export * as environmentResources from "./gen/platform/environments/v1/resources_pb.js";
export * as iam from "./gen/platform/iam/v1/iam_pb.js";
export * as insights from "./gen/platform/insights/v1/insights_pb.js";
export * as insightResources from "./gen/platform/insights/v1/resources_pb.js";
export * as secrets from "./gen/platform/secrets/v1/secrets_pb.js";

/** One client per service of the platform API. */
export interface Platform {
  audit: Client<typeof AuditService>;
  catalog: Client<typeof CatalogService>;
  deployments: Client<typeof DeploymentService>;
  environments: Client<typeof EnvironmentService>;
  iam: Client<typeof IamService>;
  insights: Client<typeof InsightsService>;
  secrets: Client<typeof SecretService>;
}

/** A random UUID (version 4), from the platform's Web Crypto (browsers and Node.js 19+). */
function requestId(): string {
  return globalThis.crypto.randomUUID();
}

/**
 * Sends `Authorization: Bearer <token>` (when there is a token) and an `x-request-id` (unless the
 * caller set one) with every call.
 */
export function credentials(token?: string): Interceptor {
  return (next) => async (req) => {
    if (token && !req.header.has("authorization")) {
      req.header.set("authorization", `Bearer ${token}`);
    }
    if (!req.header.has("x-request-id")) {
      req.header.set("x-request-id", requestId());
    }
    return await next(req);
  };
}

/** The service clients over `transport` (which must carry {@link credentials}). */
export function platformClients(transport: Transport): Platform {
  return {
    audit: createClient(AuditService, transport),
    catalog: createClient(CatalogService, transport),
    deployments: createClient(DeploymentService, transport),
    environments: createClient(EnvironmentService, transport),
    iam: createClient(IamService, transport),
    insights: createClient(InsightsService, transport),
    secrets: createClient(SecretService, transport),
  };
}

/** A browser connection: gRPC-Web to `baseUrl` (the platformd address) with `token`. */
export function connectWeb(baseUrl: string, token?: string): Platform {
  return platformClients(
    createGrpcWebTransport({ baseUrl, interceptors: [credentials(token)] }),
  );
}

/**
 * Every item of a List method, fetching the next page when the previous one is used up:
 * `method` makes the call, `items` picks the page's list.
 *
 * ```ts
 * for await (const d of listAll((r) => platform.deployments.listDeployments(r),
 *                               { parent: "tenants/acme" }, (page) => page.deployments)) { ... }
 * ```
 */
export async function* listAll<Req extends object, Res extends { nextPageToken: string }, Item>(
  method: (request: Req & { pageToken: string }) => Promise<Res>,
  request: Req,
  items: (page: Res) => readonly Item[],
): AsyncGenerator<Item> {
  let pageToken = "";
  for (;;) {
    const page = await method({ ...request, pageToken });
    yield* items(page);
    if (!page.nextPageToken) {
      return;
    }
    pageToken = page.nextPageToken;
  }
}

const FINISHED = new Set([
  DeploymentState.SUCCEEDED,
  DeploymentState.FAILED,
  DeploymentState.CANCELLED,
]);

/** Whether a deployment has finished (SUCCEEDED, FAILED or CANCELLED). */
export function isFinished(deployment: Deployment): boolean {
  return FINISHED.has(deployment.state);
}

/** Polls the deployment until it has finished; rejects after `timeoutMs`. */
export async function waitForDeployment(
  platform: Platform,
  name: string,
  timeoutMs = 600_000,
): Promise<Deployment> {
  const deadline = Date.now() + timeoutMs;
  let delay = 100;
  for (;;) {
    const deployment = await platform.deployments.getDeployment({ name });
    if (isFinished(deployment)) {
      return deployment;
    }
    if (Date.now() + delay > deadline) {
      throw new Error(`${name} did not finish within ${timeoutMs} ms`);
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 2000);
  }
}
