// The browser side of tests/console.rs: Debian's headless Chromium, driven
// by playwright-core, on the console an edge serves (`/console`). Unlike
// tests/js/browser/driver.mjs it serves no pages: the console is the edge's.
//
// It launches Chromium, prints {"ready": {"chromium": "<version>"}} and then
// answers one JSON command per stdin line with one JSON line on stdout:
//
//   {"id", "cmd": "open", "url", "width", "height"}   -> {"id", "ok", "handle"}
//   {"id", "cmd": "wait", "handle", "until": "<JS expression>", "timeout_ms"}
//   {"id", "cmd": "eval", "handle", "expression"}     -> {"id", "ok", "value"}
//   {"id", "cmd": "click", "handle", "selector"}
//   {"id", "cmd": "fill", "handle", "selector", "value"}
//   {"id", "cmd": "select", "handle", "selector", "value"}
//   {"id", "cmd": "screenshot", "handle", "path"}
//   {"id", "cmd": "close", "handle"}
//
// A failed command answers ok: false with the error and what the page
// said (console messages, uncaught errors, its visible text), so a test
// failure shows why. The browser is never downloaded: playwright-core
// drives the Chromium at $CHROMIUM (default /usr/bin/chromium). Stdin
// closing ends everything.

import { chromium } from "playwright-core";
import { CHROMIUM, CHROMIUM_ARGS, serve } from "../line_protocol.mjs";


function log(...parts) {
  console.error("[console-driver]", ...parts);
}

const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
const pages = new Map();
let opened = 0;

function entry(handle) {
  const found = pages.get(handle);
  if (!found) throw new Error(`no page ${handle}`);
  return found;
}

async function seen(handle) {
  const { page, said } = entry(handle);
  const text = await page.evaluate(() => document.body?.innerText ?? "").catch((error) => `<unreadable: ${error.message}>`);
  return { ...said, text: text.slice(0, 6000) };
}

async function open({ url, width, height }) {
  const context = await browser.newContext({ viewport: { width: width ?? 1366, height: height ?? 860 } });
  const page = await context.newPage();
  const handle = `p${++opened}`;
  const said = { console: [], errors: [] };
  page.on("console", (message) => {
    said.console.push(`${message.type()}: ${message.text()}`);
    log(`${handle} console.${message.type()}: ${message.text()}`);
  });
  page.on("pageerror", (error) => {
    said.errors.push(String(error));
    log(`${handle} page error: ${error}`);
  });
  log(`${handle} open ${url.replace(/token=[^&#]+/, "token=…")}`);
  const response = await page.goto(url);
  if (!response || response.status() !== 200) throw new Error(`HTTP ${response?.status()}`);
  pages.set(handle, { context, page, said });
  return { handle };
}

const commands = {
  open,
  async wait({ handle, until, timeout_ms }) {
    await entry(handle).page.waitForFunction(until, null, { timeout: timeout_ms ?? 20000, polling: 50 });
    return {};
  },
  async eval({ handle, expression }) {
    return { value: await entry(handle).page.evaluate(expression) };
  },
  async click({ handle, selector }) {
    await entry(handle).page.click(selector, { timeout: 20000 });
    return {};
  },
  async fill({ handle, selector, value }) {
    await entry(handle).page.fill(selector, value, { timeout: 20000 });
    return {};
  },
  async select({ handle, selector, value }) {
    await entry(handle).page.selectOption(selector, value, { timeout: 20000 });
    return {};
  },
  async screenshot({ handle, path }) {
    await entry(handle).page.screenshot({ path, fullPage: true });
    return {};
  },
  async close({ handle }) {
    const { context } = entry(handle);
    pages.delete(handle);
    await context.close();
    return {};
  },
};

serve({
  ready: { chromium: browser.version() },
  commands,
  failed: async (command, error) => ({
    error: String(error?.message ?? error).split("\n")[0],
    page: command?.handle && pages.has(command.handle) ? await seen(command.handle) : null,
  }),
  close: () => browser.close(),
});
