// A workout-room member that survives its edge's drain with the official
// socket.io-client: it joins on edge A, the test drains A (the socket is
// disconnected), a sender on edge B goes on sending frames, and the member
// reconnects to B with the last position it saw, then gets exactly the
// frames it missed, in order, then `resumed`, then live ones.
//
// usage: node room_resume.mjs URL_A URL_B WORKOUT_ID TRANSPORT FORM
//   TRANSPORT: websocket | polling (the member's; the sender uses websocket)
//   FORM: auth (the handshake's auth carries the position) | join (the
//         join_session payload does)
//
// Protocol with the test: prints `drain` on a line when edge A should be
// drained, then one JSON line with what the member saw. Exits non-zero on
// any timeout or error.
import { io } from "socket.io-client";

const [urlA, urlB, workoutId, transport, form] = process.argv.slice(2);
const WAIT_MS = 20000;
const BEFORE = 5; // frames the member sees on edge A
const WHILE_AWAY = 10; // frames sent while it is disconnected
const DURING = 10; // frames sent while it resumes (live across the seam)

function fail(message) {
  console.error(message);
  process.exit(1);
}
setTimeout(() => fail("timed out"), 6 * WAIT_MS).unref();

function until(condition, what) {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + WAIT_MS;
    const check = () => {
      if (condition()) resolve();
      else if (Date.now() > deadline) reject(new Error(`timed out waiting for ${what}`));
      else setTimeout(check, 5);
    };
    check();
  });
}

function connect(url, options) {
  const socket = io(url, { timeout: WAIT_MS, ...options });
  socket.on("connect_error", (error) => console.error(`connect_error ${url}: ${error.message}`));
  return until(() => socket.connected, `connect to ${url}`).then(() => socket);
}

// Everything the member hears, in order, across both of its sockets.
const heard = [];
let last = null; // {epoch, offset}: the last position seen
function listen(socket, phase) {
  for (const event of ["session_joined", "frame_processed", "resumed", "error"]) {
    socket.on(event, (data) => {
      heard.push({ phase, event, data });
      if (event === "frame_processed") last = { epoch: data.epoch, offset: data.offset };
    });
  }
}
const frames = (phase) => heard.filter((h) => h.phase === phase && h.event === "frame_processed");

// The sender, on edge B, waits for each frame's reply before the next.
const sender = await connect(urlB, { transports: ["websocket"] });
const replies = [];
sender.on("frame_processed", (data) => replies.push(data));
sender.emit("join_session", { workout_id: workoutId });
let sent = 0;
async function send(count) {
  for (let i = 0; i < count; i++) {
    sent += 1;
    const matrix = [[sent, 0], [0, 1]];
    sender.emit("pressure_frame", { workout_id: workoutId, matrix, nodes: [], timestamp: 1000 + sent });
    const want = sent;
    await until(() => replies.length >= want, `the sender's reply to frame ${want}`);
  }
}

// The member joins on edge A and sees the first frames live.
const first = await connect(urlA, { transports: [transport], reconnection: false });
listen(first, "a");
first.emit("join_session", { workout_id: workoutId });
await until(() => heard.some((h) => h.event === "session_joined"), "session_joined on A");
await send(BEFORE);
await until(() => frames("a").length >= BEFORE, "the first frames on A");
const firstTransport = first.io.engine.transport.name;

// Edge A drains: the member is disconnected by the server.
let reason = null;
first.on("disconnect", (why) => (reason = why));
console.log("drain");
await until(() => reason !== null, "the disconnect from A");
first.close();

// Frames go on while it is away.
await send(WHILE_AWAY);

// It comes back on edge B with its last position, while frames keep coming.
const position = { epoch: last.epoch, offset: last.offset };
const options = { transports: [transport], reconnection: false };
if (form === "auth") options.auth = position;
const second = await connect(urlB, options);
listen(second, "b");
const join = form === "auth" ? { workout_id: workoutId } : { workout_id: workoutId, ...position };
const live = send(DURING);
second.emit("join_session", join);
await live;
const total = sent;
await until(
  () => frames("b").some((h) => h.data.offset === total) && heard.some((h) => h.event === "resumed"),
  `frame ${total} on B`,
);

// A malformed position in the handshake is the first join's error; the
// socket stays up and the next join works.
const bad = await connect(urlB, { transports: [transport], reconnection: false, auth: { epoch: 5, offset: -1 } });
const badHeard = [];
bad.on("error", (data) => badHeard.push({ event: "error", data }));
bad.on("session_joined", (data) => badHeard.push({ event: "session_joined", data }));
bad.emit("join_session", { workout_id: workoutId });
await until(() => badHeard.length >= 1, "the bad position's error");
bad.emit("join_session", { workout_id: workoutId });
await until(() => badHeard.length >= 2, "the second join");

console.log(
  JSON.stringify({
    reason,
    position,
    total,
    transports: [firstTransport, second.io.engine.transport.name],
    heard: heard.map(({ phase, event, data }) => ({ phase, event, data })),
    bad: badHeard,
  }),
);
for (const socket of [sender, second, bad]) socket.close();
process.exit(0);
