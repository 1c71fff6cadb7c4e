// The browser side of tests/browser.rs: Debian's headless Chromium, driven
// by playwright-core, loading the pages in ./pages from small static HTTP
// servers whose origins differ from the edge's.
//
// It starts two page servers on ports the OS picks ("listed" and "foreign":
// two origins, so a test can put one on the edge's allow-list and not the
// other), launches Chromium, prints
//
//   {"ready": {"origins": {"listed": "http://127.0.0.1:P1", "foreign": "http://127.0.0.1:P2"}}}
//
// and then answers one JSON command per stdin line with one JSON line on
// stdout (nothing else is written to stdout; diagnostics go to stderr):
//
//   {"id": 1, "cmd": "open", "origin": "listed", "page": "realtime.html", "query": {...}}
//       -> {"id": 1, "ok": true, "handle": "p1"}
//   {"id": 2, "cmd": "wait", "handle": "p1", "until": "<JS expression>", "timeout_ms": 20000}
//       -> {"id": 2, "ok": true, "snapshot": {...}}   (or ok: false, error, snapshot)
//   {"id": 3, "cmd": "snapshot", "handle": "p1"}
//   {"id": 4, "cmd": "close", "handle": "p1"}
//
// A snapshot is what the test asserts on: the page's own `window.report`,
// its console messages and uncaught errors, and what the browser saw on the
// network with other origins than the page's (see recordNetwork).
//
// The browser is never downloaded: playwright-core drives the Chromium at
// $CHROMIUM (default /usr/bin/chromium). Stdin closing ends everything.

import { createServer } from "node:http";
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { CHROMIUM, CHROMIUM_ARGS, serve } from "../line_protocol.mjs";

const here = dirname(fileURLToPath(import.meta.url));

function log(...parts) {
  console.error("[driver]", ...parts);
}

// The files a page server serves: the pages, and socket.io-client's browser
// bundle from node_modules, as a front end's build would ship it.
const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8" };
const files = new Map();
for (const name of readdirSync(join(here, "pages"))) {
  const type = TYPES[name.slice(name.lastIndexOf("."))];
  if (type) files.set(`/${name}`, { type, body: readFileSync(join(here, "pages", name)) });
}
files.set("/socket.io.min.js", {
  type: TYPES[".js"],
  body: readFileSync(join(here, "..", "node_modules", "socket.io-client", "dist", "socket.io.min.js")),
});

function pageServer() {
  const server = createServer((request, response) => {
    const file = files.get(new URL(request.url, "http://page").pathname);
    if (request.url === "/favicon.ico") {
      response.writeHead(204).end();
      return;
    }
    if (!file) {
      response.writeHead(404, { "content-type": "text/plain" }).end("not found");
      return;
    }
    response.writeHead(200, { "content-type": file.type, "cache-control": "no-store" }).end(file.body);
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => resolve({ server, origin: `http://127.0.0.1:${server.address().port}` }));
  });
}

const servers = { listed: await pageServer(), foreign: await pageServer() };
const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
log(`chromium ${browser.version()}`);

const pages = new Map();
let opened = 0;

// What the browser itself saw on the wire (Chrome DevTools Protocol): the
// status and headers of every response from another origin than the page's,
// preflights included, even those CORS then hid from the page, and why a
// request failed (a CORS error names its reason).
async function recordNetwork(context, page, elsewhere, network) {
  const cdp = await context.newCDPSession(page);
  const requests = new Map();
  const entry = (requestId) => requests.get(requestId);
  cdp.on("Network.requestWillBeSent", ({ requestId, request, type }) => {
    if (!elsewhere(request.url)) return;
    const found = { method: request.method, url: request.url, type };
    requests.set(requestId, found);
    network.push(found);
  });
  cdp.on("Network.responseReceivedExtraInfo", ({ requestId, statusCode, headers }) => {
    const found = entry(requestId);
    if (!found) return;
    found.status = statusCode;
    found.headers = Object.fromEntries(Object.entries(headers).map(([name, value]) => [name.toLowerCase(), value]));
  });
  cdp.on("Network.responseReceived", ({ requestId, response }) => {
    const found = entry(requestId);
    if (!found || found.status !== undefined) return;
    found.status = response.status;
    found.headers = Object.fromEntries(Object.entries(response.headers).map(([name, value]) => [name.toLowerCase(), value]));
  });
  const body = async (requestId, found) => {
    if (found.status >= 400) {
      found.body = await cdp
        .send("Network.getResponseBody", { requestId })
        .then(({ body }) => body)
        .catch((error) => `<unreadable: ${error.message}>`);
    }
  };
  cdp.on("Network.loadingFinished", ({ requestId }) => {
    const found = entry(requestId);
    if (found) body(requestId, found);
  });
  cdp.on("Network.loadingFailed", ({ requestId, errorText, corsErrorStatus }) => {
    const found = entry(requestId);
    if (!found) return;
    found.failure = errorText;
    if (corsErrorStatus) found.cors_error = corsErrorStatus.corsError;
    body(requestId, found);
  });
  cdp.on("Network.webSocketCreated", ({ requestId, url }) => {
    if (!elsewhere(url)) return;
    const found = { method: "WEBSOCKET", url, type: "WebSocket" };
    requests.set(requestId, found);
    network.push(found);
  });
  cdp.on("Network.webSocketHandshakeResponseReceived", ({ requestId, response }) => {
    const found = entry(requestId);
    if (found) found.status = response.status;
  });
  await cdp.send("Network.enable");
}

async function open({ origin, page: name, query }) {
  const server = servers[origin];
  if (!server) throw new Error(`unknown origin ${origin}`);
  const context = await browser.newContext();
  const page = await context.newPage();
  const handle = `p${++opened}`;
  const seen = { console: [], errors: [], network: [] };
  const elsewhere = (url) => !url.startsWith(`${server.origin}/`);
  page.on("console", (message) => {
    seen.console.push({ type: message.type(), text: message.text() });
    log(`${handle} console.${message.type()}: ${message.text()}`);
  });
  page.on("pageerror", (error) => {
    seen.errors.push(String(error));
    log(`${handle} page error: ${error}`);
  });
  await recordNetwork(context, page, elsewhere, seen.network);
  const url = `${server.origin}/${name}?${new URLSearchParams(query ?? {})}`;
  log(`${handle} open ${url}`);
  const response = await page.goto(url);
  if (!response || response.status() !== 200) throw new Error(`${url}: HTTP ${response?.status()}`);
  pages.set(handle, { context, page, seen });
  return { handle };
}

async function snapshot(handle) {
  const { page, seen } = entry(handle);
  const report = await page.evaluate(() => window.report ?? null).catch((error) => `<unreadable: ${error.message}>`);
  return { report, ...seen };
}

function entry(handle) {
  const found = pages.get(handle);
  if (!found) throw new Error(`no page ${handle}`);
  return found;
}

async function wait({ handle, until, timeout_ms }) {
  const { page } = entry(handle);
  try {
    await page.waitForFunction(until, null, { timeout: timeout_ms ?? 20000, polling: 50 });
  } catch (error) {
    return { ok: false, error: `${until}: ${error.message.split("\n")[0]}`, snapshot: await snapshot(handle) };
  }
  return { snapshot: await snapshot(handle) };
}

async function close({ handle }) {
  const { context } = entry(handle);
  pages.delete(handle);
  await context.close();
  return {};
}

const commands = {
  open,
  wait,
  snapshot: async ({ handle }) => ({ snapshot: await snapshot(handle) }),
  close,
};

serve({
  ready: { origins: { listed: servers.listed.origin, foreign: servers.foreign.origin } },
  commands,
  failed: (_command, error) => ({ error: String(error?.stack ?? error) }),
  close: async () => {
    await browser.close();
    for (const { server } of Object.values(servers)) server.close();
  },
});
