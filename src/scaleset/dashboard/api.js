// Calls to scaleset's ARM API with the user's bearer token. Errors come back in ARM's envelope
// ({"error": {"code", "message", "target"}}) and are raised as ApiError so the page can show them.

export const API_VERSION = "2026-04-01";
const TERMINAL = new Set(["Succeeded", "Failed", "Canceled"]);

export class ApiError extends Error {
  constructor(status, code, message, target, what) {
    super(message);
    this.status = status;
    this.code = code;
    this.target = target || null;
    this.what = what;
  }

  describe() {
    const where = this.target ? ` (${this.target})` : "";
    return `${this.code}: ${this.message}${where}`;
  }
}

function withApiVersion(url) {
  const parsed = new URL(url, window.location.origin);
  if (!parsed.searchParams.has("api-version")) parsed.searchParams.set("api-version", API_VERSION);
  return parsed.pathname + parsed.search;
}

const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class Api {
  constructor(token, subscription) {
    this.token = token;
    this.subscription = subscription;
  }

  get base() {
    return `/subscriptions/${encodeURIComponent(this.subscription)}`;
  }

  setPath(group, name) {
    return (
      `${this.base}/resourceGroups/${encodeURIComponent(group)}/providers/Microsoft.Compute/` +
      `virtualMachineScaleSets/${encodeURIComponent(name)}`
    );
  }

  async call(method, url, body) {
    const what = `${method} ${new URL(url, window.location.origin).pathname}`;
    const init = { method, headers: { Authorization: `Bearer ${this.token}` }, cache: "no-store" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(withApiVersion(url), init);
    } catch (error) {
      throw new ApiError(0, "NetworkError", `The server did not answer (${error.message}).`, null, what);
    }
    const text = await response.text();
    let json = null;
    if (text) {
      try {
        json = JSON.parse(text);
      } catch {
        json = null;
      }
    }
    if (!response.ok) {
      const error = (json && json.error) || {};
      throw new ApiError(
        response.status,
        error.code || `Http${response.status}`,
        error.message || text || response.statusText,
        error.target,
        what,
      );
    }
    return { status: response.status, headers: response.headers, json };
  }

  async get(url) {
    return (await this.call("GET", url)).json;
  }

  // Every page of an ARM list: follows nextLink (same origin) until there is none.
  async list(url) {
    const items = [];
    let next = url;
    while (next) {
      const page = await this.get(next);
      items.push(...((page && page.value) || []));
      next = page && page.nextLink ? page.nextLink : null;
    }
    return items;
  }

  // Follows a long-running operation to its end: Azure-AsyncOperation first, else Location.
  // Resolves with the final operation body; rejects with ApiError when the operation failed.
  async follow(started, what) {
    const headers = started.headers;
    const asyncUrl = headers.get("Azure-AsyncOperation");
    const location = headers.get("Location");
    if (started.status !== 202 && !asyncUrl) return started.json;
    for (;;) {
      const delay = Math.min(Number(headers.get("Retry-After") || 1), 5) * 1000;
      await wait(delay);
      if (asyncUrl) {
        const operation = await this.get(asyncUrl);
        if (operation && TERMINAL.has(operation.status)) {
          if (operation.status === "Succeeded") return operation;
          const error = operation.error || {};
          throw new ApiError(200, error.code || operation.status, error.message || "", error.target, what);
        }
      } else if (location) {
        const polled = await this.call("GET", location);
        if (polled.status !== 202) return polled.json;
      } else {
        return started.json;
      }
    }
  }
}
