// One catalog entity: its fields, links, relations, dependency graph, per-environment status and,
// for a Component, the deploy form.

import type { ReactNode } from "react";
import { catalog, catalogResources, insightResources } from "@platform/sdk";

import { entityHref, formatTime, lastSegment, useAsync, useSession } from "../api";
import { ErrorBox, Loading } from "../components/Feedback";
import { Graph, type GraphNode } from "../components/Graph";
import { specSummary } from "./Catalog";
import { DeployForm } from "./Deployments";

type Entity = catalogResources.Entity;
const { DeploymentOutcome, InFlightState, DependencyDirection } = insightResources;

/** `component:default/payments`, the reference the deploy form and the graph use. */
function entityRef(e: Entity): string {
  return `${e.kind.toLowerCase()}:${e.metadata?.namespace || "default"}/${e.metadata?.name ?? lastSegment(e.name)}`;
}

export function Entity({ name }: { name: string }) {
  const { api } = useSession();
  const entity = useAsync((signal) => api.catalog.getEntity({ name, view: catalog.EntityView.FULL }, { signal }), [api, name]);
  if (entity.error) return <ErrorBox error={entity.error} />;
  if (!entity.data) return <Loading what="entity" />;
  const e = entity.data;
  const kind = e.kind.toLowerCase();
  return (
    <section data-testid="entity-page">
      <p className="crumbs">
        <a href="#/catalog">Catalog</a> / {e.kind}
      </p>
      <h1>{e.metadata?.title || e.metadata?.name}</h1>
      <EntityFields entity={e} />
      <EntityRelations entity={e} />
      <h2>Dependencies</h2>
      {["component", "resource", "system"].includes(kind) ? (
        <DependencyGraph entity={e} />
      ) : (
        <p className="muted">Dependency graphs start from Components, Resources and Systems.</p>
      )}
      <h2>Status by environment</h2>
      {kind === "component" ? <ServiceStatus entity={e} /> : <p className="muted">Deployment status applies to Components.</p>}
      {kind === "component" ? <DeployForm component={entityRef(e)} /> : null}
    </section>
  );
}

function KeyValues({ map, testId }: { map: Record<string, string>; testId: string }) {
  const entries = Object.entries(map);
  if (!entries.length) return <span className="muted">none</span>;
  return (
    <ul className="kv" data-testid={testId}>
      {entries.map(([k, v]) => (
        <li key={k}>
          <code>{k}</code>: {v}
        </li>
      ))}
    </ul>
  );
}

function EntityFields({ entity: e }: { entity: Entity }) {
  const m = e.metadata;
  const s = specSummary(e);
  // Owner and system are references; link them when the relation says the target exists.
  const linkFor = (ref: string) => {
    const r = e.relations.find((rel) => rel.targetRef === ref || rel.targetRef.endsWith(`/${ref}`) || rel.targetRef.endsWith(`:${ref}`));
    return r?.targetName ? <a href={entityHref(r.targetName)}>{ref}</a> : ref;
  };
  const rows: [string, ReactNode][] = [
    ["Kind", e.kind],
    ["Name", m?.name],
    ["Namespace", m?.namespace || "default"],
    ["Title", m?.title],
    ["Description", m?.description],
    ["Owner", s.owner ? linkFor(s.owner) : ""],
    ["System", s.system ? linkFor(s.system) : ""],
    ["Lifecycle", s.lifecycle],
    ["Type", s.type],
    ["Tags", m?.tags.length ? m.tags.map((t) => <span key={t} className="tag">{t}</span>) : <span className="muted">none</span>],
    ["Labels", <KeyValues map={m?.labels ?? {}} testId="entity-labels" />],
    ["Annotations", <KeyValues map={m?.annotations ?? {}} testId="entity-annotations" />],
    [
      "Links",
      m?.links.length ? (
        <ul data-testid="entity-links">
          {m.links.map((l) => (
            <li key={l.url}>
              <a href={l.url} target="_blank" rel="noreferrer noopener">
                {l.title || l.url}
              </a>
              {l.type ? <span className="muted"> ({l.type})</span> : null}
            </li>
          ))}
        </ul>
      ) : (
        <span className="muted">none</span>
      ),
    ],
    ["Resource name", <code>{e.name}</code>],
    ["Updated", formatTime(e.updateTime)],
  ];
  return (
    <table className="fields" data-testid="entity-fields">
      <tbody>
        {rows.map(([k, v]) => (
          <tr key={k}>
            <th>{k}</th>
            <td data-field={k.toLowerCase()}>{v}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function EntityRelations({ entity: e }: { entity: Entity }) {
  if (!e.relations.length) return null;
  return (
    <>
      <h2>Relations</h2>
      <table data-testid="entity-relations">
        <tbody>
          {e.relations.map((r) => (
            <tr key={`${r.typeName}-${r.targetRef}`}>
              <td>{r.typeName || catalogResources.RelationType[r.type]}</td>
              <td>→</td>
              <td>
                {r.targetResolved && r.targetName ? (
                  <a href={entityHref(r.targetName)}>{r.targetRef}</a>
                ) : (
                  <span className="muted" title="not in the catalog">
                    {r.targetRef}
                  </span>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </>
  );
}

function DependencyGraph({ entity: e }: { entity: Entity }) {
  const { api, tenant } = useSession();
  const graph = useAsync(
    (signal) =>
      api.insights.getDependencyGraph(
        { parent: `tenants/${tenant}`, roots: [e.name], direction: DependencyDirection.BOTH, maxDepth: 3, maxNodes: 200 },
        { signal },
      ),
    [api, tenant, e.name],
  );
  if (graph.error) return <ErrorBox error={graph.error} />;
  if (!graph.data) return <Loading what="dependency graph" />;
  const self = entityRef(e);
  const nodes: GraphNode[] = graph.data.nodes.map((n) => ({
    id: n.ref,
    label: n.title || n.ref.slice(n.ref.indexOf(":") + 1).replace(/^default\//, ""),
    sublabel: [n.kind, n.type].filter(Boolean).join(" · ") || undefined,
    href: n.entity && n.ref !== self ? entityHref(n.entity) : undefined,
    highlight: n.ref === self || n.entity === e.name,
    dangling: !n.resolved,
  }));
  // The server always includes the root; guard anyway so the entity itself is always drawn.
  if (!nodes.some((n) => n.highlight)) nodes.push({ id: self, label: e.metadata?.name ?? self, highlight: true });
  const roots = graph.data.roots.length ? graph.data.roots : [self];
  return (
    <div className="graph-wrap">
      <Graph
        testId="entity-graph"
        nodes={nodes}
        edges={graph.data.edges.map((ed) => ({ from: ed.fromRef, to: ed.toRef }))}
        roots={roots.includes(self) ? roots : [self, ...roots]}
      />
      {graph.data.truncated ? <p className="muted">Graph truncated.</p> : null}
    </div>
  );
}

function ServiceStatus({ entity: e }: { entity: Entity }) {
  const { api, tenant } = useSession();
  const status = useAsync(
    (signal) => api.insights.getServiceStatus({ parent: `tenants/${tenant}`, component: e.name }, { signal }),
    [api, tenant, e.name],
  );
  if (status.error) return <ErrorBox error={status.error} />;
  if (!status.data) return <Loading what="status" />;
  return (
    <table data-testid="entity-status">
      <thead>
        <tr>
          <th>Environment</th>
          <th>Current version</th>
          <th>Since</th>
          <th>Deployed by</th>
          <th>In flight</th>
          <th>Last outcome</th>
        </tr>
      </thead>
      <tbody>
        {status.data.environments.map((s) => (
          <tr key={s.environment} data-testid="entity-status-row">
            <td>
              {s.environmentDisplayName || lastSegment(s.environment)}
              {s.production ? <span className="tag">prod</span> : null}
              {s.locked ? <span className="tag">locked</span> : null}
            </td>
            <td>
              {s.current ? (
                <a href={`#/deployment/${encodeURIComponent(lastSegment(s.current.deployment))}`}>{s.current.version}</a>
              ) : (
                <span className="muted">not deployed</span>
              )}
              {s.current?.rollback ? <span className="tag">rollback</span> : null}
            </td>
            <td>{formatTime(s.current?.since)}</td>
            <td>{s.current?.deployedByDisplayName || s.current?.deployedBy}</td>
            <td>
              {s.inFlight.map((f) => (
                <div key={f.deployment}>
                  <a href={`#/deployment/${encodeURIComponent(lastSegment(f.deployment))}`}>{f.version}</a>{" "}
                  {InFlightState[f.state]}
                </div>
              ))}
            </td>
            <td>
              {s.lastDeployment ? (
                <a href={`#/deployment/${encodeURIComponent(lastSegment(s.lastDeployment))}`}>{DeploymentOutcome[s.lastOutcome]}</a>
              ) : (
                ""
              )}
              {s.lastEndTime ? <div className="muted">{formatTime(s.lastEndTime)}</div> : null}
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
