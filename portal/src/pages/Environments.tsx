// Environments: type, state, lock and preview expiry, with Lock/Unlock guarded by TestPermissions.

import { useState } from "react";
import { environmentResources, listAll } from "@platform/sdk";

import { type Async, formatTime, lastSegment, useAsync, usePermissions, useSession } from "../api";
import { ActionButton, ErrorBox, Loading } from "../components/Feedback";

type Environment = environmentResources.Environment;
const { EnvironmentType, EnvironmentState } = environmentResources;

const LOCK = "environments.environments.lock";
const UNLOCK = "environments.environments.unlock";

/** Every environment of the tenant (all pages). */
export function useEnvironments(): Async<Environment[]> {
  const { api, tenant } = useSession();
  return useAsync(async (signal) => {
    const all: Environment[] = [];
    for await (const env of listAll(
      (r) => api.environments.listEnvironments(r, { signal }),
      { parent: `tenants/${tenant}`, pageSize: 200 },
      (page) => page.environments,
    )) {
      all.push(env);
    }
    return all;
  }, [api, tenant]);
}

export function envTypeName(env: Environment): string {
  return EnvironmentType[env.type] ?? String(env.type);
}

export function Environments() {
  const envs = useEnvironments();
  return (
    <section>
      <h1>Environments</h1>
      <ErrorBox error={envs.error} />
      {envs.loading && !envs.data ? <Loading what="environments" /> : null}
      {envs.data ? (
        <table data-testid="environments-table">
          <thead>
            <tr>
              <th>Name</th>
              <th>Type</th>
              <th>State</th>
              <th>Lock</th>
              <th>Preview expiry</th>
              <th>Promotes to</th>
              <th>Actions</th>
            </tr>
          </thead>
          <tbody>
            {envs.data.map((env) => (
              <EnvironmentRow key={env.name} env={env} onChanged={envs.reload} />
            ))}
          </tbody>
        </table>
      ) : null}
      {envs.data?.length === 0 ? <p className="muted">No environments in this tenant.</p> : null}
    </section>
  );
}

function EnvironmentRow({ env, onChanged }: { env: Environment; onChanged: () => void }) {
  const { api } = useSession();
  const [reason, setReason] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>();
  const perms = usePermissions(env.name, [LOCK, UNLOCK]);
  const lock = env.lock;

  const act = async (call: () => Promise<Environment>) => {
    setBusy(true);
    setError(undefined);
    try {
      await call();
      setReason("");
      onChanged(); // the list reloads, keeping the old rows on screen until it arrives
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  const onLock = () => {
    if (!reason.trim()) {
      setError("Enter a reason to lock the environment.");
      return;
    }
    void act(() => api.environments.lockEnvironment({ name: env.name, reason: reason.trim(), requestId: crypto.randomUUID() }));
  };
  const onUnlock = () => void act(() => api.environments.unlockEnvironment({ name: env.name, requestId: crypto.randomUUID() }));

  const lockDenied = perms.denied(LOCK);
  const unlockDenied = perms.denied(UNLOCK);
  const expiry = env.expiration.case === "expireTime" ? formatTime(env.expiration.value) : "";

  return (
    <tr data-testid="environment-row" data-name={env.name} data-locked={lock ? "true" : "false"}>
      <td>
        <strong>{lastSegment(env.name)}</strong>
        {env.displayName ? <div className="muted">{env.displayName}</div> : null}
      </td>
      <td>{envTypeName(env)}</td>
      <td title={env.stateMessage}>{EnvironmentState[env.state]}</td>
      <td data-testid="environment-lock-info">
        {lock ? (
          <>
            🔒 {lock.reason}
            <div className="muted">
              by {lock.lockedBy?.displayName || lock.lockedBy?.principal} at {formatTime(lock.lockTime)}
            </div>
          </>
        ) : (
          <span className="muted">unlocked</span>
        )}
      </td>
      <td>{expiry}</td>
      <td>{env.promotesTo ? lastSegment(env.promotesTo) : ""}</td>
      <td className="actions">
        <input
          data-testid="lock-reason"
          placeholder="lock reason"
          value={reason}
          onChange={(e) => setReason(e.target.value)}
          disabled={busy}
        />
        <ActionButton
          testId="environment-lock"
          busy={busy}
          denied={lockDenied}
          hint="Lock this environment (deployments are refused while locked)"
          onClick={onLock}
        >
          Lock
        </ActionButton>
        <ActionButton
          testId="environment-unlock"
          busy={busy}
          denied={unlockDenied}
          hint="Unlock this environment"
          onClick={onUnlock}
        >
          Unlock
        </ActionButton>
        <ErrorBox error={error} />
      </td>
    </tr>
  );
}
