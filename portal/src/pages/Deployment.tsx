// One deployment, kept live by the WatchDeployment server stream (state snapshots and log lines),
// with Cancel, Rollback and Promote.

import { type ReactNode, useEffect, useRef, useState } from "react";
import { type deploymentResources, isFinished } from "@platform/sdk";

import {
  entityHref,
  formatTime,
  isAbort,
  lastSegment,
  navigate,
  refToEntityName,
  useAsync,
  usePermissions,
  useSession,
} from "../api";
import { ActionButton, ErrorBox, Loading } from "../components/Feedback";
import { stateName } from "./Deployments";

type Deployment = deploymentResources.Deployment;
type LogLine = deploymentResources.LogLine;

const CANCEL = "deployments.deployments.cancel";
const CREATE = "deployments.deployments.create";

/** The deployment and its log as the stream delivers them; the stream stops on unmount. */
function useWatchedDeployment(name: string) {
  const { api } = useSession();
  const [deployment, setDeployment] = useState<Deployment>();
  const [lines, setLines] = useState<LogLine[]>([]);
  const [error, setError] = useState<unknown>();
  const [streaming, setStreaming] = useState(false);

  useEffect(() => {
    const controller = new AbortController();
    const { signal } = controller;
    let last = 0n;
    setLines([]);
    setError(undefined);
    const run = async () => {
      // The server ends the stream once a finished deployment's log is complete; after an
      // UNAVAILABLE (server restart) it is resumed from the last line received, a few times.
      for (let retries = 0; retries < 5 && !signal.aborted; retries++) {
        setStreaming(true);
        try {
          for await (const ev of api.deployments.watchDeployment({ name, afterSequence: last }, { signal })) {
            if (ev.event.case === "deployment") {
              setDeployment(ev.event.value);
            } else if (ev.event.case === "logLine") {
              const line = ev.event.value;
              if (line.sequence > last) {
                last = line.sequence;
                setLines((prev) => [...prev, line]);
              }
            }
          }
          return;
        } catch (e) {
          if (isAbort(e, signal)) return;
          setError(e);
          // Still show what can be shown when the stream is refused.
          api.deployments.getDeployment({ name }, { signal }).then(setDeployment, () => undefined);
          await new Promise((r) => setTimeout(r, 1000 * (retries + 1)));
        } finally {
          if (!signal.aborted) setStreaming(false);
        }
      }
    };
    void run();
    return () => controller.abort();
  }, [api, name]);

  return { deployment, setDeployment, lines, error, streaming };
}

export function Deployment({ id }: { id: string }) {
  const { api, tenant } = useSession();
  const name = `tenants/${tenant}/deployments/${id}`;
  const { deployment: d, setDeployment, lines, error, streaming } = useWatchedDeployment(name);
  const perms = usePermissions(name, [CANCEL, CREATE]);
  const env = useAsync(
    async (signal) => (d?.environment ? api.environments.getEnvironment({ name: d.environment }, { signal }) : undefined),
    [api, d?.environment],
  );
  const [busy, setBusy] = useState(false);
  const [actionError, setActionError] = useState<unknown>();
  const logRef = useRef<HTMLPreElement>(null);

  // Follow the log's end as lines arrive.
  useEffect(() => {
    const el = logRef.current;
    if (el) el.scrollTop = el.scrollHeight;
  }, [lines.length]);

  const act = async (call: () => Promise<Deployment>, follow: boolean) => {
    setBusy(true);
    setActionError(undefined);
    try {
      const result = await call();
      if (follow) navigate(`#/deployment/${encodeURIComponent(lastSegment(result.name))}`);
      else setDeployment(result);
    } catch (e) {
      setActionError(e);
    } finally {
      setBusy(false);
    }
  };

  if (!d) {
    return (
      <section data-testid="deployment-page">
        <h1>Deployment {id}</h1>
        {error ? <ErrorBox error={error} /> : <Loading what="deployment" />}
      </section>
    );
  }

  const cancelDenied = perms.denied(CANCEL);
  const createDenied = perms.denied(CREATE);
  const promotesTo = env.data?.promotesTo ?? "";
  const fields: [string, ReactNode][] = [
    ["Component", <a href={entityHref(refToEntityName(tenant, d.component))}>{d.component}</a>],
    ["Version", d.version],
    ["Environment", lastSegment(d.environment)],
    ["Commit", d.commitSha ? `${d.commitSha}${d.commitTime ? ` (${formatTime(d.commitTime)})` : ""}` : ""],
    ["Requested by", d.requestedBy?.displayName || d.requestedBy?.principal],
    ["Reason", d.reason],
    ["State message", d.stateMessage],
    ["Created", formatTime(d.createTime)],
    ["Started", formatTime(d.startTime)],
    ["Ended", formatTime(d.endTime)],
    ["Result", d.result ? [d.result.message, d.result.exitCode !== undefined ? `exit ${d.result.exitCode}` : "", d.result.timedOut ? "timed out" : ""].filter(Boolean).join(", ") : ""],
    ["Cancellation", d.cancellation ? `requested by ${d.cancellation.requestedBy?.principal ?? ""} at ${formatTime(d.cancellation.requestTime)}${d.cancellation.reason ? `: ${d.cancellation.reason}` : ""}` : ""],
    ["Rollback of", d.rollbackOf ? <a href={`#/deployment/${encodeURIComponent(lastSegment(d.rollbackOf))}`}>{lastSegment(d.rollbackOf)}</a> : ""],
    ["Promoted from", d.promotedFrom ? <a href={`#/deployment/${encodeURIComponent(lastSegment(d.promotedFrom))}`}>{lastSegment(d.promotedFrom)}</a> : ""],
    ["Attempts", `${d.attemptCount}${d.interruptedAttemptCount ? ` (${d.interruptedAttemptCount} interrupted)` : ""}`],
  ];

  return (
    <section data-testid="deployment-page" data-name={d.name}>
      <p className="crumbs">
        <a href="#/deployments">Deployments</a> / {id}
      </p>
      <h1>
        {d.component} {d.version} → {lastSegment(d.environment)}{" "}
        <span data-testid="deployment-state" className={`state state-${stateName(d.state).toLowerCase()}`}>
          {stateName(d.state)}
        </span>
      </h1>
      <div className="actions">
        <ActionButton
          testId="deployment-cancel"
          busy={busy}
          denied={cancelDenied}
          hint={isFinished(d) ? "Already finished" : "Cancel this deployment"}
          onClick={() => void act(() => api.deployments.cancelDeployment({ name, requestId: crypto.randomUUID() }), false)}
        >
          Cancel
        </ActionButton>
        <ActionButton
          testId="deployment-rollback"
          busy={busy}
          denied={createDenied}
          hint="Redeploy the version that last succeeded before this one"
          onClick={() => void act(() => api.deployments.rollbackDeployment({ name, requestId: crypto.randomUUID() }), true)}
        >
          Roll back
        </ActionButton>
        {promotesTo ? (
          <ActionButton
            testId="deployment-promote"
            busy={busy}
            denied={createDenied}
            hint={`Deploy this version to ${lastSegment(promotesTo)}`}
            onClick={() => void act(() => api.deployments.promoteDeployment({ name, requestId: crypto.randomUUID() }), true)}
          >
            Promote to {lastSegment(promotesTo)}
          </ActionButton>
        ) : null}
        {streaming ? <span className="live" data-testid="deployment-live">● live</span> : null}
      </div>
      <ErrorBox error={actionError} />
      <ErrorBox error={error} />
      <table className="fields" data-testid="deployment-fields">
        <tbody>
          {fields.map(([k, v]) => (
            <tr key={k}>
              <th>{k}</th>
              <td>{v}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {d.attempts.length ? (
        <>
          <h2>Attempts</h2>
          <table data-testid="deployment-attempts">
            <thead>
              <tr>
                <th>#</th>
                <th>Started</th>
                <th>Ended</th>
                <th>Worker</th>
                <th>Note</th>
              </tr>
            </thead>
            <tbody>
              {d.attempts.map((a) => (
                <tr key={a.number}>
                  <td>{a.number}</td>
                  <td>{formatTime(a.startTime)}</td>
                  <td>{formatTime(a.endTime)}</td>
                  <td>{a.worker}</td>
                  <td>{[a.interrupted ? "interrupted" : "", a.handedBack ? "handed back" : ""].filter(Boolean).join(", ")}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      ) : null}
      {d.stateHistory.length ? (
        <>
          <h2>History</h2>
          <ol className="history">
            {d.stateHistory.map((t, i) => (
              <li key={i}>
                {formatTime(t.time)} — {stateName(t.state)}
                {t.message ? `: ${t.message}` : ""}
              </li>
            ))}
          </ol>
        </>
      ) : null}
      <h2>Log</h2>
      <pre className="log" data-testid="deployment-log" ref={logRef}>
        {lines.map((l) => l.text).join("\n")}
      </pre>
    </section>
  );
}
