// Drives seed 001's flow with the official socket.io-client against two
// Switchboard edges sharing a workout room: one client per edge (websocket
// transport on the first, HTTP long-polling on the second). Prints one JSON
// line with what each client saw; exits non-zero on any timeout or error.
//
// usage: node pressure_flow.mjs URL_A URL_B WORKOUT_ID FRAMES
import { io } from "socket.io-client";

const [urlA, urlB, workoutId, framesArg] = process.argv.slice(2);
const frames = Number(framesArg ?? 5);
const WAIT_MS = 20000;

function fail(message) {
  console.error(message);
  process.exit(1);
}
setTimeout(() => fail("timed out"), 4 * WAIT_MS).unref();

function once(socket, event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${WAIT_MS} ms`)), WAIT_MS);
    socket.once(event, (data) => {
      clearTimeout(timer);
      resolve(data);
    });
  });
}

// Like the seed's front end, retry a failed connection (a few times); say
// why each attempt failed, so a failure shows its cause.
function connect(url, transports) {
  const socket = io(url, {
    transports,
    reconnectionAttempts: 5,
    reconnectionDelay: 200,
    timeout: WAIT_MS,
  });
  socket.on("connect_error", (error) => console.error(`connect_error ${url}: ${error.message}`));
  return once(socket, "connect").then(() => socket);
}

const sender = await connect(urlA, ["websocket"]);
const watcher = await connect(urlB, ["polling"]);
const seen = { sender: [], watcher: [] };
sender.on("frame_processed", (data) => seen.sender.push(data));
watcher.on("frame_processed", (data) => seen.watcher.push(data));

const joined = await Promise.all(
  [sender, watcher].map((socket) => {
    const reply = once(socket, "session_joined");
    socket.emit("join_session", { workout_id: workoutId });
    return reply;
  }),
);

// Frame i has a single pressed cell of value i at (i % 2, i % 3).
for (let i = 1; i <= frames; i++) {
  const matrix = [
    [0, 0, 0],
    [0, 0, 0],
  ];
  matrix[i % 2][i % 3] = i;
  const processed = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`frame ${i} not processed`)), WAIT_MS);
    const check = () => {
      if (seen.sender.length >= i && seen.watcher.length >= i) {
        clearTimeout(timer);
        resolve();
      } else {
        setTimeout(check, 10);
      }
    };
    check();
  });
  sender.emit("pressure_frame", { workout_id: workoutId, matrix, nodes: [{ id: i }], timestamp: 1000 + i });
  await processed;
}

const error = once(sender, "error");
sender.emit("pressure_frame", { workout_id: "not-joined", matrix: [[1]], timestamp: 1 });
const errorPayload = await error;

const ended = once(sender, "session_ended");
sender.emit("leave_session", { workout_id: workoutId });
const endedPayload = await ended;

console.log(
  JSON.stringify({
    joined,
    transports: [sender.io.engine.transport.name, watcher.io.engine.transport.name],
    sender: seen.sender,
    watcher: seen.watcher,
    error: errorPayload,
    ended: endedPayload,
  }),
);
sender.close();
watcher.close();
process.exit(0);
