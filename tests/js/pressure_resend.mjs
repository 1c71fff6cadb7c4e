// A pressure client that resends after a reconnect, with the official
// socket.io-client: it sends FRAMES frames with a `message_id` each through
// the first edge, disconnects, connects to the second edge, joins again and
// sends its last RESENT frames again, unchanged. Prints one JSON line with
// the replies (`frame_processed`) to both rounds; exits non-zero on any
// timeout or error.
//
// usage: node pressure_resend.mjs URL_A URL_B WORKOUT_ID FRAMES RESENT
import { io } from "socket.io-client";

const [urlA, urlB, workoutId, framesArg, resentArg] = process.argv.slice(2);
const frames = Number(framesArg);
const resent = Number(resentArg);
const WAIT_MS = 20000;

function fail(message) {
  console.error(message);
  process.exit(1);
}
setTimeout(() => fail("timed out"), 6 * WAIT_MS).unref();

function once(socket, event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${WAIT_MS} ms`)), WAIT_MS);
    socket.once(event, (data) => {
      clearTimeout(timer);
      resolve(data);
    });
  });
}

async function joined(url) {
  const socket = io(url, {
    transports: ["websocket"],
    reconnection: false,
    timeout: WAIT_MS,
  });
  socket.on("connect_error", (error) => console.error(`connect_error ${url}: ${error.message}`));
  socket.on("error", (error) => fail(`error from ${url}: ${JSON.stringify(error)}`));
  await once(socket, "connect");
  const reply = once(socket, "session_joined");
  socket.emit("join_session", { workout_id: workoutId });
  await reply;
  return socket;
}

// Frame i presses one cell with value i, so every frame has its own stats.
function frame(i) {
  const matrix = [
    [0, 0, 0],
    [0, 0, 0],
  ];
  matrix[i % 2][i % 3] = i;
  return { workout_id: workoutId, matrix, nodes: [{ id: i }], timestamp: 1000 + i, message_id: `sio-${i}` };
}

async function send(socket, i) {
  const reply = once(socket, "frame_processed");
  socket.emit("pressure_frame", frame(i));
  return reply;
}

const first = await joined(urlA);
const original = [];
for (let i = 1; i <= frames; i++) {
  original.push(await send(first, i));
}
first.disconnect();

const second = await joined(urlB);
const again = [];
for (let i = frames - resent + 1; i <= frames; i++) {
  again.push(await send(second, i));
}
second.disconnect();

console.log(JSON.stringify({ original, again }));
process.exit(0);
