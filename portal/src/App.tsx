// Layout, hash routing and the session (token, caller, tenant).

import { type ReactNode, useEffect, useMemo, useState } from "react";
import type { iam } from "@platform/sdk";

import { type Platform, SessionContext, createApi, lastSegment } from "./api";
import { Loading } from "./components/Feedback";
import { Audit } from "./pages/Audit";
import { Catalog } from "./pages/Catalog";
import { Deployment } from "./pages/Deployment";
import { Deployments } from "./pages/Deployments";
import { Entity } from "./pages/Entity";
import { Environments } from "./pages/Environments";
import { Insights } from "./pages/Insights";
import { SignIn } from "./pages/SignIn";

const TOKEN_KEY = "platform.token";
const TENANT_KEY = "platform.tenant";

/** A token handed over in `#token=...` wins; it is dropped from the URL so it is not bookmarked. */
function takeFragmentToken(): string | null {
  const params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
  const token = params.get("token");
  if (!token) return null;
  sessionStorage.setItem(TOKEN_KEY, token);
  history.replaceState(null, "", window.location.pathname + window.location.search);
  return token;
}

type Route =
  | { page: "catalog" }
  | { page: "entity"; name: string }
  | { page: "environments" }
  | { page: "deployments" }
  | { page: "deployment"; id: string }
  | { page: "insights" }
  | { page: "audit" };

function parseRoute(hash: string): Route {
  const [, page = "", ...rest] = hash.replace(/^#/, "").split("/");
  const arg = decodeURIComponent(rest.join("/"));
  switch (page) {
    case "entity":
      return arg ? { page, name: arg } : { page: "catalog" };
    case "deployment":
      return arg ? { page, id: arg } : { page: "deployments" };
    case "environments":
    case "deployments":
    case "insights":
    case "audit":
      return { page };
    default:
      return { page: "catalog" };
  }
}

function useRoute(): Route {
  const [hash, setHash] = useState(window.location.hash);
  useEffect(() => {
    const onChange = () => setHash(window.location.hash);
    window.addEventListener("hashchange", onChange);
    return () => window.removeEventListener("hashchange", onChange);
  }, []);
  return parseRoute(hash);
}

export function App() {
  const [token, setToken] = useState<string | null>(
    () => takeFragmentToken() ?? sessionStorage.getItem(TOKEN_KEY),
  );
  const [caller, setCaller] = useState<iam.GetCallerResponse>();
  const [authError, setAuthError] = useState<unknown>();
  const api = useMemo(() => (token ? createApi(token) : undefined), [token]);

  // A `#token=` link opened in a tab already showing the portal is a same-document navigation.
  useEffect(() => {
    const onHash = () => {
      const t = takeFragmentToken();
      if (t) {
        setAuthError(undefined);
        setToken(t);
      }
    };
    window.addEventListener("hashchange", onHash);
    return () => window.removeEventListener("hashchange", onHash);
  }, []);

  useEffect(() => {
    if (!api) return;
    let current = true;
    setCaller(undefined);
    api.iam.getCaller({}).then(
      (c) => current && setCaller(c),
      (e: unknown) => {
        if (!current) return;
        // A token the server refuses is forgotten, and the sign-in form shows why.
        setAuthError(e);
        sessionStorage.removeItem(TOKEN_KEY);
        setToken(null);
      },
    );
    return () => {
      current = false;
    };
  }, [api]);

  const signIn = (t: string) => {
    setAuthError(undefined);
    sessionStorage.setItem(TOKEN_KEY, t);
    setToken(t);
  };
  const signOut = () => {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(TENANT_KEY);
    setCaller(undefined);
    setToken(null);
  };

  if (!token || !api) return <SignIn onSignIn={signIn} error={authError} />;
  if (!caller) return <Loading what="your identity" />;
  return <Shell api={api} caller={caller} onSignOut={signOut} />;
}

/** Tenants to offer: the caller's own, plus every tenant for a platform admin. */
function useTenantChoices(api: Platform, caller: iam.GetCallerResponse): string[] {
  const own = caller.tenants.map((t) => lastSegment(t.tenant));
  const [all, setAll] = useState<string[]>([]);
  useEffect(() => {
    if (!caller.platformAdmin) return;
    let current = true;
    api.iam
      .listTenants({ pageSize: 1000 })
      .then((r) => current && setAll(r.tenants.map((t) => lastSegment(t.name))))
      .catch(() => undefined); // optional convenience; typing a tenant id still works
    return () => {
      current = false;
    };
  }, [api, caller.platformAdmin]);
  return [...new Set([...own, ...all])].sort();
}

function Shell({ api, caller, onSignOut }: { api: Platform; caller: iam.GetCallerResponse; onSignOut: () => void }) {
  const route = useRoute();
  const choices = useTenantChoices(api, caller);
  const [tenant, setTenantState] = useState<string>(
    () => sessionStorage.getItem(TENANT_KEY) ?? (caller.tenants[0] ? lastSegment(caller.tenants[0].tenant) : ""),
  );
  const [typed, setTyped] = useState(tenant);
  const setTenant = (t: string) => {
    const id = t.trim().replace(/^tenants\//, "");
    setTenantState(id);
    setTyped(id);
    if (id) sessionStorage.setItem(TENANT_KEY, id);
    else sessionStorage.removeItem(TENANT_KEY);
  };
  // Typing a tenant id applies it after a pause (or at once with Enter or on leaving the field).
  useEffect(() => {
    if (typed.trim() === tenant) return;
    const timer = setTimeout(() => setTenant(typed), 600);
    return () => clearTimeout(timer);
  }, [typed, tenant]);

  // Nothing chosen yet (first visit, platform admin without bindings): take the first tenant offered.
  const [autoPicked, setAutoPicked] = useState(false);
  useEffect(() => {
    if (autoPicked || !choices.length) return;
    setAutoPicked(true);
    if (!tenant) setTenant(choices[0]);
  }, [autoPicked, tenant, choices.join(",")]);

  const session = useMemo(() => ({ api, caller, tenant }), [api, caller, tenant]);
  const options = tenant && !choices.includes(tenant) ? [tenant, ...choices] : choices;

  return (
    <SessionContext.Provider value={session}>
      <header className="top">
        <span className="brand">platform</span>
        <nav>
          <NavLink to="catalog" active={route.page === "catalog" || route.page === "entity"}>Catalog</NavLink>
          <NavLink to="environments" active={route.page === "environments"}>Environments</NavLink>
          <NavLink to="deployments" active={route.page === "deployments" || route.page === "deployment"}>
            Deployments
          </NavLink>
          <NavLink to="insights" active={route.page === "insights"}>Insights</NavLink>
          <NavLink to="audit" active={route.page === "audit"}>Audit</NavLink>
        </nav>
        <span className="spacer" />
        <label className="tenant">
          Tenant{" "}
          <select data-testid="tenant-select" value={tenant} onChange={(e) => setTenant(e.target.value)}>
            <option value="">{options.length ? "— choose —" : "— none —"}</option>
            {options.map((t) => (
              <option key={t} value={t}>
                {caller.tenants.find((c) => lastSegment(c.tenant) === t)?.displayName || t}
              </option>
            ))}
          </select>
        </label>
        <input
          data-testid="tenant-input"
          className="tenant-input"
          placeholder="tenant id"
          value={typed}
          onChange={(e) => setTyped(e.target.value)}
          onKeyDown={(e) => e.key === "Enter" && setTenant(typed)}
          onBlur={() => typed.trim() !== tenant && setTenant(typed)}
        />
        <span className="whoami" data-testid="whoami">
          {caller.principal}
        </span>
        {caller.platformAdmin ? <span className="tag" title="holds roles/platform-admin">admin</span> : null}
        <button type="button" data-testid="sign-out" onClick={onSignOut}>
          Sign out
        </button>
      </header>
      <main>{tenant ? <Page key={tenant} route={route} /> : <p>Choose a tenant to start.</p>}</main>
    </SessionContext.Provider>
  );
}

function NavLink({ to, active, children }: { to: string; active: boolean; children: ReactNode }) {
  return (
    <a href={`#/${to}`} data-testid={`nav-${to}`} className={active ? "active" : undefined}>
      {children}
    </a>
  );
}

function Page({ route }: { route: Route }) {
  switch (route.page) {
    case "catalog":
      return <Catalog />;
    case "entity":
      return <Entity key={route.name} name={route.name} />;
    case "environments":
      return <Environments />;
    case "deployments":
      return <Deployments />;
    case "deployment":
      return <Deployment key={route.id} id={route.id} />;
    case "insights":
      return <Insights />;
    case "audit":
      return <Audit />;
  }
}
