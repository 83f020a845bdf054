// The /v1 API with the console session: the cookie goes by itself (same origin), every
// method but GET/HEAD carries the session's CSRF token. A lost session raises "session-lost".
export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message || code);
    this.status = status;
    this.code = code;
    this.details = details || {};
  }
}

export const session = { operator: null, csrf: null, expiresAt: null };

export function hasRole(...roles) {
  const mine = (session.operator && session.operator.roles) || [];
  return roles.some((r) => mine.includes(r));
}

export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET" && method !== "HEAD" && session.csrf) headers["X-CSRF-Token"] = session.csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch (err) {
    throw new ApiError(0, "NETWORK", String(err));
  }
  const text = await resp.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!resp.ok) {
    const e = (data && data.error) || {};
    const err = new ApiError(resp.status, e.code || `HTTP_${resp.status}`, e.message, e.details);
    if (resp.status === 429) err.details = { ...err.details, retry_after: resp.headers.get("Retry-After") };
    if (resp.status === 401 && session.operator && !path.startsWith("/v1/operator-sessions")) {
      window.dispatchEvent(new CustomEvent("session-lost", { detail: err.code }));
    }
    throw err;
  }
  return data;
}

export function setSession(body) {
  session.operator = body ? body.operator : null;
  session.csrf = body ? body.csrf_token : null;
  session.expiresAt = body ? body.expires_at : null;
}

export async function loadSession() {
  try {
    setSession(await api("GET", "/v1/operator-sessions/current"));
  } catch (err) {
    setSession(null);
    if (err.status !== 401) throw err;
    return err.code;
  }
  return null;
}

export async function login(loginName, password) {
  setSession(await api("POST", "/v1/operator-sessions", { login: loginName, password }));
}

export async function logout() {
  try {
    await api("DELETE", "/v1/operator-sessions/current");
  } finally {
    setSession(null);
  }
}
