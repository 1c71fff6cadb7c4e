// Socket.IO churn with the official socket.io-client: CLIENTS clients,
// CONCURRENCY at a time, in turn websocket-only, polling-only and with the
// default transports (polling, then the upgrade to WebSocket, waited for).
// Each connects, joins a workout, sends a frame and waits for its
// frame_processed, leaves (session_ended) and disconnects cleanly.
//
// usage: node socketio_churn.mjs URL CLIENTS CONCURRENCY
//
// Prints one JSON line, {"clients": n, "by_mode": {...}}, and exits once
// every client's last request (a polling client's close packet, a
// WebSocket's close handshake) is done: when Node exits, the edge has been
// told about every disconnection. Exits non-zero on any error or timeout.
import { io } from "socket.io-client";

const [url, clientsArg, concurrencyArg] = process.argv.slice(2);
const CLIENTS = Number(clientsArg);
const CONCURRENCY = Number(concurrencyArg);
const WAIT_MS = 20000;
const MODES = {
  websocket: { transports: ["websocket"] },
  polling: { transports: ["polling"] },
  default: {},
};
const NAMES = Object.keys(MODES);

function fail(message) {
  console.error(message);
  process.exit(1);
}
setTimeout(() => fail("timed out"), 10 * WAIT_MS).unref();

function within(promise, what) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${WAIT_MS} ms`)), WAIT_MS);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

function reply(socket, event, what, matches = () => true) {
  return within(
    new Promise((resolve, reject) => {
      const listener = (data) => {
        if (matches(data)) {
          socket.off(event, listener);
          resolve(data);
        }
      };
      socket.on(event, listener);
      socket.once("error", (error) => reject(new Error(`${what}: error ${JSON.stringify(error)}`)));
      socket.once("disconnect", (reason) => reject(new Error(`${what}: disconnected (${reason})`)));
    }),
    what,
  );
}

async function churn(i) {
  const mode = NAMES[i % NAMES.length];
  const workoutId = `churn-${i % 8}`;
  const socket = io(url, { ...MODES[mode], reconnection: false, forceNew: true });
  await within(
    new Promise((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("connect_error", (error) => reject(new Error(`client ${i} (${mode}): connect_error ${error.message}`)));
    }),
    `client ${i} (${mode}) connects`,
  );
  if (mode === "default" && socket.io.engine.transport.name !== "websocket") {
    await within(
      new Promise((resolve) => socket.io.engine.once("upgrade", resolve)),
      `client ${i} upgrades to websocket`,
    );
  }
  const who = `client ${i} (${mode}, sid ${socket.id}, ${workoutId})`;
  const joined = reply(socket, "session_joined", `${who}: session_joined`);
  socket.emit("join_session", { workout_id: workoutId });
  await joined;
  const timestamp = 1000 + i;
  const processed = reply(socket, "frame_processed", `${who}: frame_processed`, (data) => data.timestamp === timestamp);
  socket.emit("pressure_frame", { workout_id: workoutId, matrix: [[1, 2], [3, i]], nodes: [], timestamp });
  await processed;
  const ended = reply(socket, "session_ended", `${who}: session_ended`);
  socket.emit("leave_session", { workout_id: workoutId });
  await ended;
  const transport = socket.io.engine.transport.name;
  socket.close();
  return `${mode}/${transport}`;
}

const byMode = {};
let next = 0;
async function worker() {
  while (next < CLIENTS) {
    const i = next++;
    const key = await churn(i);
    byMode[key] = (byMode[key] ?? 0) + 1;
  }
}
try {
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
} catch (error) {
  fail(error.message);
}
console.log(JSON.stringify({ clients: CLIENTS, by_mode: byMode }));
