// The tenant's audit log: an AIP-160 filter, a live tail (WatchAuditEvents) and the hash chain's
// verification (VerifyAuditChain).

import { useEffect, useState } from "react";
import { Code, ConnectError } from "@connectrpc/connect";
import { audit } from "@platform/sdk";

import { formatTime, isAbort, useAsync, useSession } from "../api";
import { ErrorBox, Loading } from "../components/Feedback";

type AuditEvent = audit.AuditEvent;

function codeLabel(code: number): string {
  return code === 0 ? "OK" : (Code[code] ?? String(code)).replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** Newest first, without duplicates (a live event may also arrive in a reloaded page). */
function merge(newer: AuditEvent[], older: AuditEvent[]): AuditEvent[] {
  const seen = new Set<bigint>();
  return [...newer, ...older]
    .filter((e) => !seen.has(e.sequence) && (seen.add(e.sequence), true))
    .sort((a, b) => (a.sequence < b.sequence ? 1 : a.sequence > b.sequence ? -1 : 0));
}

export function Audit() {
  const { api, tenant } = useSession();
  const parent = `tenants/${tenant}`;
  const [input, setInput] = useState("");
  const [filter, setFilter] = useState("");
  const [live, setLive] = useState(false);
  const [events, setEvents] = useState<AuditEvent[]>([]);
  const [next, setNext] = useState("");
  const [liveError, setLiveError] = useState<unknown>();
  const [moreError, setMoreError] = useState<unknown>();

  // Apply the typed filter after a pause; Enter applies it at once.
  useEffect(() => {
    const timer = setTimeout(() => setFilter(input.trim()), 600);
    return () => clearTimeout(timer);
  }, [input]);

  const page = useAsync(
    (signal) => api.audit.listAuditEvents({ parent, filter, pageSize: 100 }, { signal }),
    [api, parent, filter],
  );
  useEffect(() => {
    setEvents(page.data?.auditEvents ?? []);
    setNext(page.data?.nextPageToken ?? "");
  }, [page.data]);

  const chain = useAsync((signal) => api.audit.verifyAuditChain({ tenant: parent }, { signal }), [api, parent]);

  // The live tail starts after the newest event listed, so nothing is missed or repeated.
  const loaded = page.data !== undefined && !page.loading;
  const head = page.data?.auditEvents[0]?.sequence ?? 0n;
  useEffect(() => {
    if (!live || !loaded) return;
    const controller = new AbortController();
    const { signal } = controller;
    setLiveError(undefined);
    const tail = async () => {
      try {
        for await (const res of api.audit.watchAuditEvents({ parent, filter, afterSequence: head }, { signal })) {
          if (res.kind.case === "auditEvent") {
            const e = res.kind.value;
            setEvents((prev) => merge([e], prev));
          }
        }
      } catch (e) {
        if (isAbort(e, signal)) return;
        if (ConnectError.from(e).code !== Code.Unimplemented) {
          setLiveError(e);
          return;
        }
        // A server without the stream: poll the newest page every 2 s instead.
        while (!signal.aborted) {
          try {
            const r = await api.audit.listAuditEvents({ parent, filter, pageSize: 100 }, { signal });
            setEvents((prev) => merge(r.auditEvents, prev));
          } catch (err) {
            if (isAbort(err, signal)) return;
            setLiveError(err);
          }
          await new Promise((r) => setTimeout(r, 2000));
        }
      }
    };
    void tail();
    return () => controller.abort();
  }, [api, parent, filter, live, loaded, head]);

  const loadMore = () => {
    setMoreError(undefined);
    api.audit.listAuditEvents({ parent, filter, pageSize: 100, pageToken: next }).then(
      (r) => {
        setEvents((prev) => merge(prev, r.auditEvents));
        setNext(r.nextPageToken);
      },
      setMoreError,
    );
  };

  const c = chain.data;
  return (
    <section>
      <h1>Audit</h1>
      <p className="chain">
        Chain:{" "}
        <span data-testid="audit-chain-status" className={c ? (c.ok ? "ok" : "broken") : undefined}>
          {chain.error
            ? "verification failed"
            : !c
              ? "verifying…"
              : c.ok
                ? `verified: ${c.verifiedCount} records (head ${c.headSequence})`
                : `broken at sequence ${c.brokenLink?.sequence ?? "?"}: ${
                    c.brokenLink ? audit.BrokenLinkReason[c.brokenLink.reason] : "unknown"
                  }${c.brokenLink?.detail ? ` — ${c.brokenLink.detail}` : ""} (${c.verifiedCount} verified)`}
        </span>{" "}
        <button type="button" onClick={chain.reload} disabled={chain.loading}>
          Verify again
        </button>
      </p>
      <ErrorBox error={chain.error} />
      <div className="toolbar">
        <input
          data-testid="audit-filter"
          className="wide"
          placeholder='filter, e.g. outcome = "DENIED" AND permission = "deployments.*"'
          value={input}
          onChange={(e) => setInput(e.target.value)}
          onKeyDown={(e) => e.key === "Enter" && setFilter(input.trim())}
        />
        <label>
          <input data-testid="audit-live" type="checkbox" checked={live} onChange={(e) => setLive(e.target.checked)} /> Live
        </label>
        {live && loaded && !liveError ? <span className="live">● live</span> : null}
      </div>
      <ErrorBox error={page.error} />
      <ErrorBox error={liveError} />
      <table data-testid="audit-table">
        <thead>
          <tr>
            <th>#</th>
            <th>Time</th>
            <th>Actor</th>
            <th>Method / permission</th>
            <th>Resource</th>
            <th>Outcome</th>
            <th>Code</th>
            <th>Request id</th>
          </tr>
        </thead>
        <tbody>
          {events.map((e) => (
            <tr key={String(e.sequence)} data-testid="audit-row" data-sequence={String(e.sequence)}>
              <td>{String(e.sequence)}</td>
              <td>{formatTime(e.eventTime)}</td>
              <td>{e.actor}</td>
              <td>
                <div>{e.method.slice(e.method.lastIndexOf("/") + 1) || e.method}</div>
                <div className="muted">{e.permission}</div>
              </td>
              <td>{e.resource}</td>
              <td className={`outcome-${audit.Outcome[e.outcome]?.toLowerCase()}`}>{audit.Outcome[e.outcome]}</td>
              <td>{codeLabel(e.grpcCode)}</td>
              <td>
                <code>{e.requestId}</code>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {page.loading ? <Loading what="audit events" /> : null}
      {!page.loading && !page.error && events.length === 0 ? <p className="muted">No events match.</p> : null}
      <ErrorBox error={moreError} />
      {next && !page.loading ? (
        <button type="button" onClick={loadMore}>
          Load more
        </button>
      ) : null}
    </section>
  );
}
