// What every browser driver under tests/js shares with its Rust side
// (tests/support/driver.rs): Debian's Chromium and how to launch it, and
// the line protocol — a `{"ready": ...}` line, then one JSON answer on
// stdout per JSON command on stdin (`{"id", "cmd", ...}` ->
// `{"id", "ok", ...}`), one command at a time, in order; stdin closing
// ends the driver.

import { createInterface } from "node:readline";

export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  // Without these Chromium phones home, and on a closed network those
  // connections are refused (and logged) for the whole run.
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

function reply(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

/**
 * Says `ready`, then runs each command line by `commands[cmd](command)`,
 * answering `{id, ok: true, ...result}`, or `{id, ok: false, ...await
 * failed(command, error)}` when it throws; when stdin closes, `close()`
 * and exit.
 */
export function serve({ ready, commands, failed, close }) {
  reply({ ready });
  let queue = Promise.resolve();
  const input = createInterface({ input: process.stdin });
  input.on("line", (line) => {
    queue = queue.then(async () => {
      let command;
      try {
        command = JSON.parse(line);
        const run = commands[command.cmd];
        if (!run) throw new Error(`unknown command ${command.cmd}`);
        reply({ id: command.id, ok: true, ...(await run(command)) });
      } catch (error) {
        reply({ id: command?.id ?? null, ok: false, ...(await failed(command, error)) });
      }
    });
  });
  input.on("close", () => {
    queue.then(async () => {
      await close();
      process.exit(0);
    });
  });
}
