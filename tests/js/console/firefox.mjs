// The browser side of tests/console.rs in Firefox: Debian's firefox-esr,
// headless, driven over WebDriver BiDi (the W3C protocol Firefox speaks
// itself), with the same line protocol as driver.mjs (Chromium):
//
//   {"id", "cmd": "open", "url", "width", "height"}   -> {"id", "ok", "handle"}
//   {"id", "cmd": "wait", "handle", "until": "<JS expression>", "timeout_ms"}
//   {"id", "cmd": "eval", "handle", "expression"}     -> {"id", "ok", "value"}
//   {"id", "cmd": "click" | "fill" | "select", "handle", "selector", "value"}
//   {"id", "cmd": "screenshot", "handle", "path"}
//   {"id", "cmd": "close", "handle"}
//
// Why not playwright-core: its Firefox is a patched build it would
// download, and its BiDi mode needs commands this ESR does not have yet.
// BiDi itself is enough here: navigate, evaluate, capture a screenshot.
// Clicks, fills and selections are done by the page's own DOM events, as
// a user's would arrive, once the element exists (waited for, bounded).

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import WebSocket from "ws";
import { serve } from "../line_protocol.mjs";

const FIREFOX = process.env.FIREFOX || "/usr/bin/firefox-esr";
const LAUNCH_TIMEOUT_MS = 60000;

function log(...parts) {
  console.error("[firefox-driver]", ...parts);
}

const profile = mkdtempSync(join(tmpdir(), "switchboard-firefox-"));
const firefox = spawn(
  FIREFOX,
  ["--headless", "--no-remote", "--remote-debugging-port", "0", "--profile", profile],
  { stdio: ["ignore", "ignore", "pipe"] },
);
const endpoint = await new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error("firefox did not start WebDriver BiDi in time")), LAUNCH_TIMEOUT_MS);
  createInterface({ input: firefox.stderr }).on("line", (line) => {
    const found = line.match(/WebDriver BiDi listening on (ws:\/\/\S+)/);
    if (found) {
      clearTimeout(timer);
      resolve(found[1]);
    }
  });
  firefox.on("exit", (code) => reject(new Error(`firefox exited (${code}) before it listened`)));
});

const socket = new WebSocket(`${endpoint}/session`);
await new Promise((resolve, reject) => {
  socket.once("open", resolve);
  socket.once("error", reject);
});
let nextCommand = 0;
const waiting = new Map();
const pages = new Map();
socket.on("message", (data) => {
  const message = JSON.parse(data.toString());
  if (message.id !== undefined && waiting.has(message.id)) {
    const { resolve, reject } = waiting.get(message.id);
    waiting.delete(message.id);
    if (message.type === "error") reject(new Error(`${message.error}: ${message.message}`));
    else resolve(message.result);
  } else if (message.method === "log.entryAdded") {
    const entry = message.params;
    const page = [...pages.values()].find((found) => found.context === entry.source?.context);
    const text = `${entry.level}: ${entry.text}`;
    log(`console ${text}`);
    if (page) (entry.level === "error" ? page.said.errors : page.said.console).push(text);
  }
});

function bidi(method, params) {
  const id = ++nextCommand;
  socket.send(JSON.stringify({ id, method, params }));
  return new Promise((resolve, reject) => waiting.set(id, { resolve, reject }));
}

const session = await bidi("session.new", { capabilities: { alwaysMatch: { acceptInsecureCerts: true } } });
await bidi("session.subscribe", { events: ["log.entryAdded"] });
let opened = 0;

function entry(handle) {
  const found = pages.get(handle);
  if (!found) throw new Error(`no page ${handle}`);
  return found;
}

/** The value of JavaScript in the page (an expression, or statements whose
 * last one gives it, as Playwright takes them), as JSON. */
async function evaluate(handle, expression) {
  const source = `(async () => JSON.stringify(await (0, eval)(${JSON.stringify(expression)})))()`;
  const result = await bidi("script.evaluate", {
    expression: source,
    target: { context: entry(handle).context },
    awaitPromise: true,
  });
  if (result.type === "exception") {
    throw new Error(result.exceptionDetails?.text ?? "exception in the page");
  }
  const text = result.result?.value;
  return text === undefined ? undefined : JSON.parse(text);
}

async function waitFor(handle, until, timeoutMs) {
  const deadline = Date.now() + (timeoutMs ?? 20000);
  for (;;) {
    let value = false;
    try {
      value = await evaluate(handle, `(${until})`);
    } catch (error) {
      if (Date.now() > deadline) throw error;
    }
    if (value) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${until}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Waits for `selector` to be there, then runs `action(element)` in the page. */
async function onElement(handle, selector, action) {
  const found = `document.querySelector(${JSON.stringify(selector)})`;
  await waitFor(handle, `${found} !== null && !${found}.disabled && ${found}.getClientRects().length > 0`, 20000);
  return evaluate(handle, `((element) => { ${action}; return true; })(${found})`);
}

async function seen(handle) {
  const { said } = entry(handle);
  const text = await evaluate(handle, "document.body?.innerText ?? ''").catch((error) => `<unreadable: ${error.message}>`);
  return { ...said, text: String(text).slice(0, 6000) };
}

const commands = {
  async open({ url, width, height }) {
    const status = (await fetch(url)).status;
    if (status !== 200) throw new Error(`HTTP ${status}`);
    const { context } = await bidi("browsingContext.create", { type: "tab" });
    await bidi("browsingContext.setViewport", { context, viewport: { width: width ?? 1366, height: height ?? 860 } });
    const handle = `p${++opened}`;
    pages.set(handle, { context, said: { console: [], errors: [] } });
    log(`${handle} open ${url.replace(/token=[^&#]+/, "token=…")}`);
    await bidi("browsingContext.navigate", { context, url, wait: "complete" });
    return { handle };
  },
  async wait({ handle, until, timeout_ms }) {
    await waitFor(handle, until, timeout_ms);
    return {};
  },
  async eval({ handle, expression }) {
    return { value: await evaluate(handle, expression) };
  },
  async click({ handle, selector }) {
    await onElement(handle, selector, "element.click()");
    return {};
  },
  async fill({ handle, selector, value }) {
    const set = `element.focus(); element.value = ${JSON.stringify(value)}; \
      element.dispatchEvent(new Event('input', { bubbles: true })); \
      element.dispatchEvent(new Event('change', { bubbles: true }))`;
    await onElement(handle, selector, set);
    return {};
  },
  async select({ handle, selector, value }) {
    const set = `element.value = ${JSON.stringify(value)}; \
      element.dispatchEvent(new Event('input', { bubbles: true })); \
      element.dispatchEvent(new Event('change', { bubbles: true }))`;
    await onElement(handle, selector, set);
    return {};
  },
  async screenshot({ handle, path }) {
    const { data } = await bidi("browsingContext.captureScreenshot", { context: entry(handle).context, origin: "document" });
    writeFileSync(path, Buffer.from(data, "base64"));
    return {};
  },
  async close({ handle }) {
    const { context } = entry(handle);
    pages.delete(handle);
    await bidi("browsingContext.close", { context });
    return {};
  },
};

function shutDown() {
  // SIGKILL: a browser asked politely may outlive its driver; its content
  // processes end with it.
  firefox.kill("SIGKILL");
  try {
    rmSync(profile, { recursive: true, force: true });
  } catch {}
}

// The test harness ends the driver with SIGTERM: the browser goes too.
process.on("SIGTERM", () => {
  shutDown();
  process.exit(0);
});

serve({
  ready: { firefox: `${session.capabilities.browserName} ${session.capabilities.browserVersion}` },
  commands,
  failed: async (command, error) => ({
    error: String(error?.message ?? error).split("\n")[0],
    page: command?.handle && pages.has(command.handle) ? await seen(command.handle).catch(() => null) : null,
  }),
  close: async () => {
    await bidi("session.end", {}).catch(() => {});
    socket.close();
    shutDown();
  },
});
process.on("exit", shutDown);
