// The REST client: relative URLs (the page's <base> carries any prefix), the JWT from
// sessionStorage in the Authorization header, errors in the API's {detail, code} shape.

const TOKEN_KEY = "minidevin.token";

export class ApiError extends Error {
  constructor(status, detail, code) {
    super(detail);
    this.status = status;
    this.code = code;
  }
}

export const auth = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set token(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  },
};

/** Called with an ApiError of status 401 (the token expired or was revoked). */
export let onUnauthorized = () => {};
export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

function url(path) {
  return new URL(path, document.baseURI).toString();
}

async function raw(method, path, body) {
  const headers = {};
  if (auth.token) headers.Authorization = `Bearer ${auth.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url(path), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, `The server cannot be reached (${err.message}).`, "NETWORK");
  }
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    let code = "HTTP_" + response.status;
    try {
      const data = await response.json();
      detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
      code = data.code || code;
    } catch {
      /* not JSON: keep the status line */
    }
    const error = new ApiError(response.status, detail, code);
    if (response.status === 401 && auth.token) onUnauthorized(error);
    throw error;
  }
  return response;
}

/** A JSON request: the parsed body, or null for an empty one. */
export async function api(method, path, body) {
  const response = await raw(method, path, body);
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

/** A download: the body as text (for a diff). */
export async function text(path) {
  return (await raw("GET", path)).text();
}

/** Save a file fetched with the Authorization header (a blob URL, then a click). */
export async function download(path, name) {
  const blob = await (await raw("GET", path)).blob();
  const href = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = href;
  link.download = name;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(href), 10000);
}

/** The WebSocket URL of a task's stream after `after` (absolute, ws: or wss:). */
export function streamUrl(taskId, after) {
  const address = new URL(
    `ws/tasks/${encodeURIComponent(taskId)}?token=${encodeURIComponent(auth.token || "")}` +
      `&after=${after}`,
    document.baseURI,
  );
  address.protocol = address.protocol === "https:" ? "wss:" : "ws:";
  return address.toString();
}
