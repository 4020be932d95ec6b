// Shared error and loading indicators, so every page reports problems the same way.

import type { ReactNode } from "react";
import { type PagedList, formatError } from "../api";

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

/** The end of a paged table: loading, "No <what> match.", or a button for the next page. */
export function PagedFooter<T>({ list, what }: { list: PagedList<T>; what: string }) {
  if (list.loading) return <Loading what={what} />;
  if (!list.error && list.items.length === 0) return <p className="muted">No {what} match.</p>;
  if (!list.next) return null;
  return (
    <button type="button" onClick={() => list.fetch(list.next)}>
      Load more
    </button>
  );
}

/**
 * A button for an action the caller may be refused: disabled while an action runs or when the
 * server said the caller lacks its permission, titled with that reason, else with `hint`.
 */
export function ActionButton(props: {
  testId: string;
  busy: boolean;
  denied: string | undefined;
  hint: string;
  onClick: () => void;
  children: ReactNode;
}) {
  return (
    <button
      type="button"
      data-testid={props.testId}
      disabled={props.busy || props.denied !== undefined}
      title={props.denied ?? props.hint}
      onClick={props.onClick}
    >
      {props.children}
    </button>
  );
}
