// Client creation, the session context every page reads, error formatting and small data hooks.

import { type DependencyList, createContext, useCallback, useContext, useEffect, useState } from "react";
import { type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { type Platform, connectWeb, iam } from "@platform/sdk";

export type { Platform };

/** The gRPC-Web clients for the portal's own origin (platformd serves the portal and the API). */
export function createApi(token: string): Platform {
  return connectWeb(window.location.origin, token);
}

export interface Session {
  api: Platform;
  caller: iam.GetCallerResponse;
  /** The chosen tenant id, e.g. `acme`. */
  tenant: string;
}

export const SessionContext = createContext<Session | null>(null);

export function useSession(): Session {
  const session = useContext(SessionContext);
  if (!session) throw new Error("useSession outside a signed-in session");
  return session;
}

/** `PermissionDenied` -> `PERMISSION_DENIED`, the gRPC spelling users see in docs and logs. */
function codeName(code: Code): string {
  return (Code[code] ?? "UNKNOWN").replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** A readable message for anything thrown: `CODE: message` for RPC errors. */
export function formatError(error: unknown): string {
  const e = ConnectError.from(error);
  return `${codeName(e.code)}: ${e.rawMessage || "(no message)"}`;
}

/** Aborting a stream or fetch on unmount is not an error worth showing. */
export function isAbort(error: unknown, signal?: AbortSignal): boolean {
  return signal?.aborted === true || ConnectError.from(error).code === Code.Canceled;
}

export interface Async<T> {
  data: T | undefined;
  error: unknown;
  loading: boolean;
  reload: () => void;
}

/**
 * Runs `load` when `deps` change (and on `reload`); results of superseded runs are dropped so a
 * slow response never overwrites a newer one.
 */
export function useAsync<T>(load: (signal: AbortSignal) => Promise<T>, deps: DependencyList): Async<T> {
  const [state, setState] = useState<{ data?: T; error?: unknown; loading: boolean }>({ loading: true });
  const [generation, setGeneration] = useState(0);
  useEffect(() => {
    const controller = new AbortController();
    setState((s) => ({ data: s.data, loading: true }));
    load(controller.signal).then(
      (data) => !controller.signal.aborted && setState({ data, loading: false }),
      (error: unknown) => !controller.signal.aborted && setState({ error, loading: false }),
    );
    return () => controller.abort();
    // `load` is a fresh closure every render; `deps` says when it means something new.
  }, [...deps, generation]);
  const reload = useCallback(() => setGeneration((g) => g + 1), []);
  return { data: state.data, error: state.error, loading: state.loading, reload };
}

/** One page of a List method, in the shape every List response has. */
export interface Page<T> {
  items: T[];
  nextPageToken: string;
  totalSize?: number;
}

export interface PagedList<T> {
  items: T[];
  totalSize: number;
  next: string;
  loading: boolean;
  error: unknown;
  /** Loads the page after the last one shown (`next`), or from the start with "". */
  fetch: (pageToken: string) => void;
}

/**
 * A List method's items, first page when `deps` change and further pages on `fetch(next)`;
 * results of a superseded query are dropped.
 */
export function usePagedList<T>(
  list: (pageToken: string, signal: AbortSignal) => Promise<Page<T>>,
  deps: DependencyList,
): PagedList<T> {
  const [items, setItems] = useState<T[]>([]);
  const [totalSize, setTotalSize] = useState(0);
  const [next, setNext] = useState("");
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<unknown>();
  const [query, setQuery] = useState<AbortController>();

  const fetchPage = (pageToken: string, controller: AbortController) => {
    setLoading(true);
    setError(undefined);
    list(pageToken, controller.signal).then(
      (page) => {
        if (controller.signal.aborted) return;
        setItems((prev) => (pageToken ? [...prev, ...page.items] : page.items));
        setTotalSize(page.totalSize ?? 0);
        setNext(page.nextPageToken);
        setLoading(false);
      },
      (e: unknown) => {
        if (controller.signal.aborted) return;
        setError(e);
        setLoading(false);
      },
    );
  };

  useEffect(() => {
    const controller = new AbortController();
    setQuery(controller);
    setItems([]);
    fetchPage("", controller);
    return () => controller.abort();
    // `list` is a fresh closure every render; `deps` says when it means a new query.
  }, deps);

  const fetch = (pageToken: string) => {
    if (query) fetchPage(pageToken, query);
  };
  return { items, totalSize, next, loading, error, fetch };
}

/** A value that follows `value` after it has been stable for `ms` (for search boxes). */
export function useDebounced<T>(value: T, ms: number): T {
  const [debounced, setDebounced] = useState(value);
  useEffect(() => {
    const timer = setTimeout(() => setDebounced(value), ms);
    return () => clearTimeout(timer);
  }, [value, ms]);
  return debounced;
}

export interface Permissions {
  /** Undefined while the check is in flight. */
  granted: ReadonlySet<string> | undefined;
  /** Why an action needing `permission` is disabled, or undefined when it is allowed. */
  denied: (permission: string) => string | undefined;
}

/** IamService.TestPermissions for `permissions` on `resource` (no resource: nothing checked yet). */
export function usePermissions(resource: string | undefined, permissions: readonly string[]): Permissions {
  const { api } = useSession();
  const key = permissions.join(",");
  const { data, error } = useAsync(
    async () =>
      resource
        ? new Set((await api.iam.testPermissions({ resource, permissions: [...permissions] })).permissions)
        : undefined,
    [api, resource, key],
  );
  const denied = (permission: string): string | undefined => {
    if (error) return `Cannot check permission ${permission}: ${formatError(error)}`;
    if (!data) return `Checking permission ${permission}…`;
    return data.has(permission) ? undefined : `Missing permission ${permission} on ${resource}`;
  };
  return { granted: data, denied };
}

export function formatTime(ts: Timestamp | undefined): string {
  if (!ts) return "";
  return timestampDate(ts).toLocaleString();
}

export function tsMillis(ts: Timestamp | undefined): number {
  return ts ? timestampDate(ts).getTime() : 0;
}

/** The last segment of a resource name (`tenants/acme/deployments/x` -> `x`). */
export function lastSegment(name: string): string {
  return name.slice(name.lastIndexOf("/") + 1);
}

/** `component:default/payments` -> `tenants/acme/entities/component/default/payments`. */
export function refToEntityName(tenant: string, ref: string): string {
  const colon = ref.indexOf(":");
  const kind = colon >= 0 ? ref.slice(0, colon) : "component";
  const rest = colon >= 0 ? ref.slice(colon + 1) : ref;
  const [namespace, name] = rest.includes("/") ? rest.split("/", 2) : ["default", rest];
  return `tenants/${tenant}/entities/${kind.toLowerCase()}/${namespace}/${name}`;
}

export function entityHref(name: string): string {
  return `#/entity/${encodeURIComponent(name)}`;
}

export function navigate(hash: string): void {
  window.location.hash = hash;
}
