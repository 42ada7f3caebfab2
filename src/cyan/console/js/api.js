// The API as the console uses it: the same accounts, tokens and rules as any client (docs/api.md).
// The token lives in sessionStorage: it goes when the tab closes, and signing out revokes it on the server.

const KEY = "cyan.session";
// What the console asks for at sign-in; the server caps it and says when it ends (expires_at).
const LIFETIME = 12 * 3600;

export class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.error_description || body.error)) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

export const session = {
  get() {
    try {
      const value = JSON.parse(sessionStorage.getItem(KEY) || "null");
      if (value && value.expires_at && Date.parse(value.expires_at) <= Date.now()) {
        this.clear("Your session expired. Sign in again.");
        return null;
      }
      return value;
    } catch {
      return null;
    }
  },
  set(value) {
    sessionStorage.setItem(KEY, JSON.stringify(value));
  },
  clear(reason) {
    sessionStorage.removeItem(KEY);
    window.dispatchEvent(new CustomEvent("cyan:signed-out", { detail: reason || "" }));
  },
};

function form(values) {
  const body = new URLSearchParams();
  for (const [name, value] of Object.entries(values)) body.set(name, String(value));
  return body;
}

export async function signIn(username, password) {
  const response = await fetch("/oauth/token", {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: form({ grant_type: "password", username, password, client_id: "cyan-console", expires_in: LIFETIME }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, body);
  const token = body.access_token;
  const user = await call("GET", "/v1/user", { token });
  session.set({ token, username: user.username, role: user.role, expires_at: body.expires_at || null });
  return session.get();
}

export async function signOut() {
  const current = session.get();
  if (current) {
    // Revoked on the server, not just forgotten here.
    await call("DELETE", "/v1/access_tokens/current", { token: current.token }).catch(() => {});
  }
  session.clear("Signed out.");
}

export async function call(method, path, { json, body, query, token, signal } = {}) {
  const current = token ? { token } : session.get();
  if (!current) throw new ApiError(401, { error: "Not signed in" });
  const headers = { Authorization: `Bearer ${current.token}` };
  let payload = body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(json);
  }
  let url = path;
  if (query) {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(query)) {
      if (value !== undefined && value !== null && value !== "") params.set(name, String(value));
    }
    const text = params.toString();
    if (text) url += (url.includes("?") ? "&" : "?") + text;
  }
  const response = await fetch(url, { method, headers, body: payload, signal });
  if (response.status === 401 && !token) {
    session.clear("Your session ended (expired or revoked). Sign in again.");
  }
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json().catch(() => null) : await response.blob();
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export const get = (path, query, options = {}) => call("GET", path, { ...options, query });
export const post = (path, json) => call("POST", path, { json });

// A server-sent event stream read with fetch, so the token travels in the Authorization header (EventSource
// cannot send one, and a token in the URL lands in logs). Reconnects with a growing pause until stopped.
export function stream(path, onEvent, onState = () => {}) {
  const control = new AbortController();
  let pause = 500;
  (async () => {
    while (!control.signal.aborted) {
      const current = session.get();
      if (!current) return;
      try {
        const response = await fetch(path, {
          headers: { Authorization: `Bearer ${current.token}`, Accept: "text/event-stream" },
          signal: control.signal,
          cache: "no-store",
        });
        if (response.status === 401) {
          session.clear("Your session ended (expired or revoked). Sign in again.");
          return;
        }
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        onState("live");
        pause = 500;
        await readEvents(response.body, onEvent);
      } catch (error) {
        if (control.signal.aborted) return;
      }
      onState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, pause));
      pause = Math.min(pause * 2, 10000);
    }
  })();
  return () => control.abort();
}

async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue; // a comment: the server's keep-alive
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") name = text;
        else if (field === "data") data.push(text);
      }
      if (!data.length) continue;
      let parsed;
      try {
        parsed = JSON.parse(data.join("\n"));
      } catch {
        parsed = { data: data.join("\n") };
      }
      onEvent({ name, ...parsed });
    }
  }
}
