// Socket.IO clients (the official socket.io-client, default options but the
// transports) through a reverse proxy, each from its own source address
// (127.0.0.2, 127.0.0.3, … all reach loopback on Linux), so that a proxy
// hashing the client's address spreads them over its edges.
//
// usage: node polling_through_proxy.mjs URL WORKOUT_ID polling|default ADDR[,ADDR…]
//
// Every client connects (or fails to: then its connect_errors are recorded,
// up to 3, with the HTTP status and body that caused each), joins the
// workout, sends one frame and waits until it has heard every client's
// frame_processed (the room spans the edges). Then one JSON line on stdout,
// {"clients": [...]}; the script waits for a line (or EOF) on stdin, so the
// caller can look at the edges while every client is connected, then each
// client leaves and disconnects, and a second line {"left": n} follows.
// Exits non-zero on a timeout or an unexpected error.
import http from "node:http";
import readline from "node:readline";
import { io } from "socket.io-client";

const [url, workoutId, mode, addressList] = process.argv.slice(2);
const addresses = addressList.split(",");
const WAIT_MS = 20000;
const ERRORS_RECORDED = 3;

function fail(message) {
  console.error(message);
  process.exit(1);
}
setTimeout(() => fail("timed out"), 6 * WAIT_MS).unref();

function within(promise, what) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${WAIT_MS} ms`)), WAIT_MS);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

function until(check, what) {
  return within(
    new Promise((resolve) => {
      const poll = () => (check() ? resolve() : setTimeout(poll, 10));
      poll();
    }),
    what,
  );
}

// A client whose every connection (HTTP requests of polling, and the
// WebSocket) leaves from `address`. engine.io-client hands `agent` to its
// XMLHttpRequest (xmlhttprequest-ssl) for polling and to `ws` for the
// WebSocket, and `localAddress` to `ws` as well.
function client(address) {
  const options = { agent: new http.Agent({ localAddress: address }), localAddress: address };
  if (mode === "polling") {
    options.transports = ["polling"];
  } else if (mode !== "default") {
    fail(`unknown mode ${mode}`);
  }
  const socket = io(url, options);
  const state = { address, socket, connected: false, errors: [], frames: [], upgraded: false };
  socket.on("connect", () => {
    state.connected = true;
  });
  socket.on("connect_error", (error) => {
    // A TransportError: description is the HTTP status, context the request.
    const context = error.context;
    state.errors.push({
      message: error.message,
      description: typeof error.description === "number" ? error.description : String(error.description ?? ""),
      body: typeof context?.responseText === "string" ? context.responseText : null,
    });
    console.error(`connect_error from ${address}: ${error.message} (${error.description})`);
  });
  socket.on("disconnect", (reason) => console.error(`disconnect from ${address}: ${reason}`));
  socket.io.on("open", () => {
    socket.io.engine.on("upgrade", () => {
      state.upgraded = true;
    });
  });
  socket.on("frame_processed", (data) => state.frames.push(data));
  return state;
}

const clients = addresses.map(client);
await until(
  () => clients.every((c) => c.connected || c.errors.length >= ERRORS_RECORDED),
  "every client connected or failed",
);

const report = (c) => ({
  address: c.address,
  connected: c.connected,
  errors: c.errors,
  transport: c.connected ? c.socket.io.engine.transport.name : null,
  upgraded: c.upgraded,
  joined: c.joined ?? null,
  // Each frame's position in the workout's stored log (1, 2, …; under
  // concurrent senders frame_count may repeat, sequence does not).
  sequences: c.frames.map((frame) => frame.sequence),
});

if (clients.every((c) => c.connected)) {
  if (mode === "default") {
    await until(() => clients.every((c) => c.upgraded), "every client upgraded to websocket");
  }
  await within(
    Promise.all(
      clients.map(
        (c) =>
          new Promise((resolve) => {
            c.socket.once("session_joined", (data) => {
              c.joined = data;
              resolve();
            });
            c.socket.emit("join_session", { workout_id: workoutId });
          }),
      ),
    ),
    "every client joined",
  );
  clients.forEach((c, i) =>
    c.socket.emit("pressure_frame", {
      workout_id: workoutId,
      matrix: [[i + 1, 0], [0, 0]],
      nodes: [],
      timestamp: 1000 + i,
    }),
  );
  await until(
    () => clients.every((c) => c.frames.length >= clients.length),
    "every client heard every frame",
  );
}
console.log(JSON.stringify({ clients: clients.map(report) }));

// The caller looks at the edges now; a line (or EOF) on stdin says go on.
const lines = readline.createInterface({ input: process.stdin });
await within(
  new Promise((resolve) => {
    lines.once("line", resolve);
    lines.once("close", resolve);
  }),
  "the go-ahead on stdin",
);
lines.close();

let left = 0;
if (clients.every((c) => c.connected)) {
  await within(
    Promise.all(
      clients.map(
        (c) =>
          new Promise((resolve) => {
            c.socket.once("session_ended", () => {
              left += 1;
              resolve();
            });
            c.socket.emit("leave_session", { workout_id: workoutId });
          }),
      ),
    ),
    "every client left",
  );
}
// Close cleanly and let Node exit once the last request (a polling
// client's close packet) is done.
clients.forEach((c) => c.socket.close());
console.log(JSON.stringify({ left }));
