// Shared error and loading indicators, so every page reports problems the same way.

import { formatError } from "../api";

export function ErrorBox({ error }: { error: unknown }) {
  if (error === undefined || error === null) return null;
  const text = typeof error === "string" ? error : formatError(error);
  return (
    <div className="error" role="alert" data-testid="error">
      {text}
    </div>
  );
}

export function Loading({ what }: { what?: string }) {
  return <div className="loading" data-testid="loading">Loading{what ? ` ${what}` : ""}…</div>;
}
