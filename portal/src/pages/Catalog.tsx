// The catalog: free-text search (ListEntities `query`) and a kind filter, one page at a time.

import { useState } from "react";
import type { catalogResources } from "@platform/sdk";

import { entityHref, useDebounced, usePagedList, useSession } from "../api";
import { ErrorBox, PagedFooter } from "../components/Feedback";

type Entity = catalogResources.Entity;

const KINDS = ["Component", "API", "Resource", "System", "Domain", "Group", "User", "Location"];

export interface SpecSummary {
  type: string;
  lifecycle: string;
  owner: string;
  system: string;
}

/** The spec fields shared by several kinds, whichever kind the entity is. */
export function specSummary(entity: Entity): SpecSummary {
  const s: SpecSummary = { type: "", lifecycle: "", owner: "", system: "" };
  const spec = entity.spec;
  switch (spec.case) {
    case "componentSpec":
    case "apiSpec":
      return { ...s, type: spec.value.type, lifecycle: spec.value.lifecycle, owner: spec.value.owner, system: spec.value.system };
    case "resourceSpec":
      return { ...s, type: spec.value.type, owner: spec.value.owner, system: spec.value.system };
    case "systemSpec":
    case "domainSpec":
      return { ...s, type: spec.value.type, owner: spec.value.owner };
    case "groupSpec":
    case "locationSpec":
      return { ...s, type: spec.value.type };
    default:
      return s;
  }
}

/** `payments`, or `ns/payments` outside the default namespace. */
export function displayName(entity: Entity): string {
  const m = entity.metadata;
  if (!m) return entity.name;
  return m.namespace && m.namespace !== "default" ? `${m.namespace}/${m.name}` : m.name;
}

export function Catalog() {
  const { api, tenant } = useSession();
  const [search, setSearch] = useState("");
  const [kind, setKind] = useState("");
  const query = useDebounced(search.trim(), 300);
  const filter = kind ? `kind = "${kind}"` : "";
  const list = usePagedList<Entity>(
    (pageToken, signal) =>
      api.catalog
        .listEntities({ parent: `tenants/${tenant}`, query, filter, pageSize: 50, pageToken }, { signal })
        .then((r) => ({ items: r.entities, nextPageToken: r.nextPageToken, totalSize: r.totalSize })),
    [api, tenant, query, filter],
  );
  const { items: entities, totalSize: total, error } = list;

  return (
    <section>
      <h1>Catalog</h1>
      <div className="toolbar">
        <input
          data-testid="catalog-search"
          type="search"
          placeholder="Search name, title, description"
          value={search}
          onChange={(e) => setSearch(e.target.value)}
        />
        <select data-testid="catalog-kind" value={kind} onChange={(e) => setKind(e.target.value)}>
          <option value="">All kinds</option>
          {KINDS.map((k) => (
            <option key={k} value={k}>
              {k}
            </option>
          ))}
        </select>
        <span className="muted" data-testid="catalog-total">
          {total} entit{total === 1 ? "y" : "ies"}
        </span>
      </div>
      <ErrorBox error={error} />
      <table data-testid="catalog-table">
        <thead>
          <tr>
            <th>Kind</th>
            <th>Name</th>
            <th>Owner</th>
            <th>Lifecycle</th>
            <th>Description</th>
          </tr>
        </thead>
        <tbody>
          {entities.map((e) => {
            const s = specSummary(e);
            return (
              <tr key={e.name} data-testid="entity-row">
                <td>{e.kind}</td>
                <td>
                  <a href={entityHref(e.name)}>{displayName(e)}</a>
                  {e.metadata?.title ? <span className="muted"> {e.metadata.title}</span> : null}
                </td>
                <td>{s.owner}</td>
                <td>{s.lifecycle}</td>
                <td className="muted">{e.metadata?.description}</td>
              </tr>
            );
          })}
        </tbody>
      </table>
      <PagedFooter list={list} what="entities" />
    </section>
  );
}
