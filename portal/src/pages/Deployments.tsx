// Deployments: the newest-first list with filters, and the deploy form (also on Component pages).

import { type FormEvent, useEffect, useState } from "react";
import { deploymentResources } from "@platform/sdk";

import { entityHref, formatTime, lastSegment, navigate, refToEntityName, useDebounced, usePagedList, usePermissions, useSession } from "../api";
import { ErrorBox, PagedFooter } from "../components/Feedback";
import { envTypeName, useEnvironments } from "./Environments";

type Deployment = deploymentResources.Deployment;
const { DeploymentState } = deploymentResources;

const CREATE = "deployments.deployments.create";
const STATES = ["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"];

/** `DeploymentState.SUCCEEDED` -> `SUCCEEDED` (the generated enum already drops the prefix). */
export function stateName(state: deploymentResources.DeploymentState): string {
  return DeploymentState[state] ?? String(state);
}

export function DeployForm({ component: initialComponent = "" }: { component?: string }) {
  const { api, tenant } = useSession();
  const envs = useEnvironments();
  const perms = usePermissions(`tenants/${tenant}`, [CREATE]);
  const [component, setComponent] = useState(initialComponent);
  const [version, setVersion] = useState("");
  const [environment, setEnvironment] = useState("");
  const [reason, setReason] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>();

  const usable = (envs.data ?? []).filter((e) => !e.deleteTime);
  // Default to the first environment once they are known.
  const firstUsable = usable[0]?.name ?? "";
  useEffect(() => {
    if (!environment && firstUsable) setEnvironment(firstUsable);
  }, [environment, firstUsable]);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(undefined);
    try {
      const created = await api.deployments.createDeployment({
        parent: `tenants/${tenant}`,
        deployment: { component: component.trim(), version: version.trim(), environment, reason: reason.trim() },
        requestId: crypto.randomUUID(), // fresh per submit: a retry of the same click is not deduplicated
      });
      navigate(`#/deployment/${encodeURIComponent(lastSegment(created.name))}`);
    } catch (err) {
      setError(err);
      setBusy(false);
    }
  };

  const denied = perms.denied(CREATE);
  return (
    <form className="deploy-form" data-testid="deploy-form" onSubmit={submit}>
      <h2>Deploy</h2>
      <label>
        Component
        <input
          data-testid="deploy-component"
          value={component}
          onChange={(e) => setComponent(e.target.value)}
          placeholder="component:default/payments"
          required
        />
      </label>
      <label>
        Version
        <input data-testid="deploy-version" value={version} onChange={(e) => setVersion(e.target.value)} placeholder="1.2.3" required />
      </label>
      <label>
        Environment
        <select data-testid="deploy-environment" value={environment} onChange={(e) => setEnvironment(e.target.value)} required>
          {usable.length === 0 ? <option value="">{envs.loading ? "loading…" : "no environments"}</option> : null}
          {usable.map((env) => (
            <option key={env.name} value={env.name}>
              {lastSegment(env.name)} ({envTypeName(env).toLowerCase()}){env.lock ? " — locked" : ""}
            </option>
          ))}
        </select>
      </label>
      <label>
        Reason
        <input data-testid="deploy-reason" value={reason} onChange={(e) => setReason(e.target.value)} placeholder="optional" />
      </label>
      <button type="submit" data-testid="deploy-submit" disabled={busy || denied !== undefined} title={denied ?? "Create the deployment"}>
        {busy ? "Deploying…" : "Deploy"}
      </button>
      <ErrorBox error={error ?? envs.error} />
    </form>
  );
}

export function Deployments() {
  const { api, tenant } = useSession();
  const envs = useEnvironments();
  const [componentInput, setComponentInput] = useState("");
  const component = useDebounced(componentInput.trim(), 400);
  const [environment, setEnvironment] = useState("");
  const [state, setState] = useState("");

  const filter = [
    component ? `component = "${component.replace(/"/g, "")}"` : "",
    environment ? `environment = "${environment}"` : "",
    state ? `state = "${state}"` : "",
  ]
    .filter(Boolean)
    .join(" AND ");

  const list = usePagedList<Deployment>(
    (pageToken, signal) =>
      api.deployments
        .listDeployments(
          { parent: `tenants/${tenant}`, filter, orderBy: "create_time desc", pageSize: 50, pageToken },
          { signal },
        )
        .then((r) => ({ items: r.deployments, nextPageToken: r.nextPageToken })),
    [api, tenant, filter],
  );
  const { items, error } = list;

  return (
    <section>
      <h1>Deployments</h1>
      <DeployForm />
      <h2>History</h2>
      <div className="toolbar">
        <input
          data-testid="deployments-filter-component"
          placeholder="component, e.g. payments"
          value={componentInput}
          onChange={(e) => setComponentInput(e.target.value)}
        />
        <select data-testid="deployments-filter-environment" value={environment} onChange={(e) => setEnvironment(e.target.value)}>
          <option value="">All environments</option>
          {(envs.data ?? []).map((env) => (
            <option key={env.name} value={env.name}>
              {lastSegment(env.name)}
            </option>
          ))}
        </select>
        <select data-testid="deployments-filter-state" value={state} onChange={(e) => setState(e.target.value)}>
          <option value="">All states</option>
          {STATES.map((s) => (
            <option key={s} value={s}>
              {s}
            </option>
          ))}
        </select>
        <button type="button" onClick={() => list.fetch("")}>
          Refresh
        </button>
      </div>
      <ErrorBox error={error} />
      <table data-testid="deployments-table">
        <thead>
          <tr>
            <th>Deployment</th>
            <th>Component</th>
            <th>Version</th>
            <th>Environment</th>
            <th>State</th>
            <th>Requested by</th>
            <th>Created</th>
          </tr>
        </thead>
        <tbody>
          {items.map((d) => {
            const id = lastSegment(d.name);
            return (
              <tr key={d.name} data-testid="deployment-row">
                <td>
                  <a href={`#/deployment/${encodeURIComponent(id)}`}>{id}</a>
                </td>
                <td>
                  <a href={entityHref(refToEntityName(tenant, d.component))}>{d.component}</a>
                </td>
                <td>{d.version}</td>
                <td>{lastSegment(d.environment)}</td>
                <td>
                  <span className={`state state-${stateName(d.state).toLowerCase()}`}>{stateName(d.state)}</span>
                </td>
                <td>{d.requestedBy?.displayName || d.requestedBy?.principal}</td>
                <td>{formatTime(d.createTime)}</td>
              </tr>
            );
          })}
        </tbody>
      </table>
      <PagedFooter list={list} what="deployments" />
    </section>
  );
}
