// Sign-in: a bearer token pasted by the user (or handed over in `#token=...`, see App).

import { type FormEvent, useState } from "react";

import { ErrorBox } from "../components/Feedback";

export function SignIn({ onSignIn, error }: { onSignIn: (token: string) => void; error: unknown }) {
  const [token, setToken] = useState("");
  const submit = (e: FormEvent) => {
    e.preventDefault();
    if (token.trim()) onSignIn(token.trim());
  };
  return (
    <main className="signin">
      <h1>Platform portal</h1>
      <form onSubmit={submit}>
        <label>
          Bearer token
          <input
            data-testid="token-input"
            type="password"
            autoComplete="off"
            value={token}
            onChange={(e) => setToken(e.target.value)}
            placeholder="paste an access token"
            autoFocus
          />
        </label>
        <button type="submit" data-testid="sign-in" disabled={!token.trim()}>
          Sign in
        </button>
      </form>
      <ErrorBox error={error} />
    </main>
  );
}
