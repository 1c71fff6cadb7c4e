// What every page shares: where the edge is (the page's query string), and
// the report the test reads back (`window.report`). The pages themselves are
// the seeds' front-end code; this file only makes them observable.

export const params = new URLSearchParams(location.search);

/** The edge, e.g. `http://127.0.0.1:8000` (another origin than the page's). */
export const EDGE = params.get("edge");
/** The same edge for WebSockets: `ws://127.0.0.1:8000`. */
export const WS_EDGE = EDGE.replace(/^http/, "ws");

/** A number parameter, with a default. */
export function numberParam(name, fallback) {
  const value = params.get(name);
  return value === null ? fallback : Number(value);
}

export const report = (window.report = {
  done: false,
  failure: null,
  received: [],
  sent: [],
  fetches: [],
  log: [],
});

/** Notes something that happened, with the time since the page loaded (ms). */
export function note(kind, detail = {}) {
  report.log.push({ kind, at: Math.round(performance.now()), ...detail });
}

/** Runs a page's flow; `report.done` when it ends, `report.failure` if it threw. */
export async function run(flow) {
  try {
    await flow();
  } catch (error) {
    report.failure = String(error?.stack ?? error);
    console.error(`flow failed: ${report.failure}`);
  } finally {
    report.done = true;
  }
}

/** Resolves once `condition()` is truthy (with its value); rejects after `ms`. */
export function until(condition, what, ms = 15000) {
  return new Promise((resolve, reject) => {
    const deadline = performance.now() + ms;
    const check = () => {
      const value = condition();
      if (value) return resolve(value);
      if (performance.now() > deadline) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(check, 20);
    };
    check();
  });
}

/**
 * `fetch(EDGE + path)` as a front end calls it, recorded in
 * `report.fetches`: the status and JSON body, or the error the browser
 * raised (a CORS refusal is a `TypeError: Failed to fetch`).
 */
export async function fetchJson(method, path, init = {}) {
  const entry = { method, path };
  report.fetches.push(entry);
  try {
    const response = await fetch(`${EDGE}${path}`, { method, ...init });
    entry.status = response.status;
    const text = await response.text();
    try {
      entry.body = JSON.parse(text);
    } catch {
      entry.body = text;
    }
  } catch (error) {
    entry.error = `${error.name}: ${error.message}`;
  }
  return entry;
}

/** `promise`, or a rejection after `ms`. */
export function within(promise, what, ms = 15000) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
