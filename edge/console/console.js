// Switchboard's console: the cluster as a page. It uses only the edge's
// public REST and WebSocket routes and its admin routes (README.md,
// edge/WEBSOCKET.md):
//
//   /api/admin/ws?token=       a cluster snapshot every second (overview,
//                              sessions, connections)
//   /ws/ui                     the live UI hub (events; alert changes)
//   /ws/pressure               a workout room, joined as a watcher
//   DELETE /sessions/{id}      terminate a session or connection
//   POST /api/events/broadcast[/action|/overlay|/telemetry]
//   GET /api/workouts/{id}, GET /api/workouts/{id}/frames
//   POST /api/alerts, GET /api/alerts/{user_id}
//
// No library, no build step: a module the edge serves from its binary.

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

/** How much history the charts keep: five minutes of snapshots. */
const HISTORY_POINTS = 300;
/** How much of each session's step count the sparkline shows. */
const SPARK_POINTS = 60;
/** How many hub messages the events page keeps. */
const EVENTS_KEPT = 300;

const console_ = {
  token: null,
  feed: null,
  ui: null,
  snapshot: null,
  /** Cluster totals per snapshot, for the charts. */
  history: [],
  /** Last snapshot's counters per edge, for rates. */
  lastEdges: new Map(),
  /** Recent step counts per session: [{t, steps}]. */
  steps: new Map(),
  events: [],
  page: "overview",
};
// For tests and curious operators: what the page holds.
window.switchboardConsole = console_;

// ---------- small helpers ----------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const short = (id) => (id ? String(id).slice(0, 8) : "—");

function duration(seconds) {
  if (!Number.isFinite(seconds)) return "—";
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
  const hours = Math.floor(seconds / 3600);
  if (hours < 48) return `${hours} h ${Math.floor((seconds % 3600) / 60)} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

function number(value, digits = 0) {
  if (!Number.isFinite(value)) return "—";
  return value.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function bytes(value) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${number(value, unit ? 1 : 0)} ${units[unit]}`;
}

function wsUrl(path, query = {}) {
  const url = new URL(path, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  for (const [name, value] of Object.entries(query)) url.searchParams.set(name, value);
  return url.toString();
}

/** A REST call with the admin token; resolves to {status, body}. */
async function api(method, path, body) {
  const headers = { authorization: `Bearer ${console_.token}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = text;
  }
  return { status: response.status, ok: response.ok, body: parsed };
}

function replaceRows(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function statusClass(word) {
  if (["serving", "connected", "in-process", "live"].includes(word)) return "ok";
  if (["not_serving", "partly_serving", "draining"].includes(word)) return "warn";
  return "bad";
}

// ---------- sign-in and the admin feed ----------

function showLogin(message) {
  $("#login").hidden = false;
  $("#pages").hidden = true;
  $("#logout").hidden = true;
  $("#login-error").textContent = message ?? "";
  $("#token").focus();
}

function signIn(token) {
  console_.token = token.trim();
  sessionStorage.setItem("switchboard-console-token", console_.token);
  $("#login").hidden = true;
  $("#pages").hidden = false;
  $("#logout").hidden = false;
  openFeed();
  openUi();
}

function signOut() {
  sessionStorage.removeItem("switchboard-console-token");
  console_.token = null;
  for (const socket of [console_.feed, console_.ui, workout.socket]) socket?.close(1000, "signed out");
  console_.feed = console_.ui = workout.socket = null;
  setFeed("closed", "not connected");
  showLogin();
}

function setFeed(state, text) {
  document.body.dataset.feed = state;
  $("#feed-status").textContent = text;
}

let feedRetry = 0;

function openFeed() {
  const socket = new WebSocket(wsUrl("/api/admin/ws", { token: console_.token }));
  console_.feed = socket;
  setFeed("connecting", "connecting…");
  socket.onmessage = (message) => {
    const data = JSON.parse(message.data);
    if (data.type !== "cluster") return;
    feedRetry = 0;
    setFeed("live", `live via edge ${short(data.edge_id)}`);
    onSnapshot(data);
  };
  socket.onclose = (close) => {
    if (console_.feed !== socket) return;
    if (close.code === 1008) {
      // Refused: the token is not an admin's (or expired).
      console_.feed = null;
      console_.ui?.close(1000, "signed out");
      sessionStorage.removeItem("switchboard-console-token");
      setFeed("refused", "refused");
      showLogin(`The edge refused this token: ${close.reason || "not an admin's"}.`);
      return;
    }
    // The edge went away (drain, restart): try again, backing off.
    feedRetry = Math.min(feedRetry + 1, 5);
    setFeed("reconnecting", `reconnecting (closed ${close.code})…`);
    setTimeout(() => console_.feed === socket && openFeed(), 500 * 2 ** feedRetry);
  };
}

// ---------- the snapshot ----------

function onSnapshot(snapshot) {
  const previous = console_.snapshot;
  console_.snapshot = snapshot;
  recordHistory(snapshot, previous);
  recordSteps(snapshot);
  renderOverview(snapshot);
  renderSessions(snapshot);
  renderConnections(snapshot);
  watchAlertUsers(snapshot);
}

/** Cluster totals and rates: rates from each edge's own counters, so an
 * edge joining or leaving does not show as a spike. */
function recordHistory(snapshot) {
  const t = snapshot.timestamp;
  let inRate = 0, outRate = 0, dropRate = 0, errorRate = 0, sockets = 0;
  const seen = new Map();
  for (const edge of snapshot.edges) {
    const before = console_.lastEdges.get(edge.edge_id);
    const rates = { in: 0, out: 0, drops: 0, errors: 0 };
    if (before && t > before.t) {
      const dt = t - before.t;
      rates.in = Math.max(0, edge.messages_in - before.messages_in) / dt;
      rates.out = Math.max(0, edge.messages_out - before.messages_out) / dt;
      rates.drops = Math.max(0, edge.drops - before.drops) / dt;
      rates.errors = Math.max(0, edge.errors - before.errors) / dt;
    } else if (before) {
      Object.assign(rates, before.rates);
    }
    seen.set(edge.edge_id, { t, messages_in: edge.messages_in, messages_out: edge.messages_out, drops: edge.drops, errors: edge.errors, rates });
    inRate += rates.in;
    outRate += rates.out;
    dropRate += rates.drops;
    errorRate += rates.errors;
    sockets += Object.entries(edge.connections).reduce((sum, [name, count]) => sum + (name === "console" ? 0 : count), 0);
  }
  console_.lastEdges = seen;
  console_.history.push({ t, in: inRate, out: outRate, drops: dropRate, errors: errorRate, sockets, sessions: snapshot.sessions_total });
  if (console_.history.length > HISTORY_POINTS) console_.history.shift();
}

function recordSteps(snapshot) {
  const live = new Set();
  for (const session of snapshot.sessions) {
    if (session.kind !== "realtime") continue;
    live.add(session.session_id);
    const points = console_.steps.get(session.session_id) ?? [];
    points.push({ t: snapshot.timestamp, steps: session.total_steps });
    if (points.length > SPARK_POINTS) points.shift();
    console_.steps.set(session.session_id, points);
  }
  for (const id of console_.steps.keys()) if (!live.has(id)) console_.steps.delete(id);
}

function card(label, value, tone) {
  return el("div", { class: "card" }, el("div", { class: `value ${tone ?? ""}` }, value), el("div", { class: "label" }, label));
}

function renderOverview(snapshot) {
  const last = console_.history.at(-1);
  const draining = snapshot.edges.filter((edge) => edge.draining).length;
  const unhealthy = Object.values(snapshot.services).filter((word) => statusClass(word) !== "ok").length;
  $("#summary").replaceChildren(
    card("edges", `${snapshot.edges.length}${draining ? ` (${draining} draining)` : ""}`, draining ? "warn" : ""),
    card("registry sessions", number(snapshot.sessions_total)),
    card("open sockets", number(last.sockets)),
    card("messages in / s", number(last.in, 1)),
    card("messages out / s", number(last.out, 1)),
    card("drops (total)", number(snapshot.edges.reduce((sum, edge) => sum + edge.drops, 0)), last.drops > 0 ? "warn" : ""),
    card("errors (total)", number(snapshot.edges.reduce((sum, edge) => sum + edge.errors, 0)), last.errors > 0 ? "warn" : ""),
    card("services", unhealthy ? `${unhealthy} not healthy` : "all healthy", unhealthy ? "bad" : "ok"),
  );

  const endpoints = ["realtime", "alerts", "pressure", "ui", "statistics", "console"];
  replaceRows(
    $("#edges tbody"),
    snapshot.edges.map((edge) => {
      const rates = console_.lastEdges.get(edge.edge_id)?.rates ?? {};
      return el(
        "tr",
        { dataset: { edgeId: edge.edge_id } },
        el("td", { class: "mono", title: edge.edge_id }, short(edge.edge_id), edge.edge_id === snapshot.edge_id ? " (this one)" : ""),
        el("td", { class: "mono" }, edge.address || "—"),
        el("td", {}, duration(edge.uptime_seconds)),
        el("td", { class: edge.draining ? "warn" : "ok" }, edge.draining ? "draining" : "serving"),
        endpoints.map((name) => el("td", { class: "num" }, number(edge.connections[name] ?? 0))),
        el("td", { class: "num" }, number(rates.in ?? 0, 1)),
        el("td", { class: "num" }, number(rates.out ?? 0, 1)),
        el("td", { class: `num ${edge.drops ? "warn" : ""}` }, number(edge.drops)),
        el("td", { class: `num ${edge.errors ? "warn" : ""}` }, number(edge.errors)),
      );
    }),
  );

  $("#services-from").textContent = `as edge ${short(snapshot.edge_id)} reaches them`;
  $("#services").replaceChildren(
    ...Object.entries(snapshot.services).map(([name, word]) =>
      el("li", {}, el("span", { class: `badge ${statusClass(word)}`, dataset: { service: name } }, `${name}: ${word}`)),
    ),
  );
  $("#problems").textContent = snapshot.problems.join("; ");

  const bus = snapshot.bus;
  $("#bus").replaceChildren(
    el("span", { class: `badge ${bus.connected ? "ok" : "bad"}` }, bus.mode === "nats" ? (bus.connected ? "connected" : "disconnected") : "in-process bus (single instance)"),
    bus.server ? ` server ${bus.server.name} (nats-server ${bus.server.version}) at ${bus.server.address}` : "",
  );
  replaceRows(
    $("#streams tbody"),
    bus.streams.map((stream) =>
      el(
        "tr",
        {},
        el("td", { class: "mono" }, stream.name),
        el("td", { class: "num" }, number(stream.messages)),
        el("td", { class: "num" }, bytes(stream.bytes)),
        el("td", { class: "num" }, number(stream.consumers)),
        el("td", { class: "num" }, number(stream.replicas)),
      ),
    ),
  );
  drawCharts();
}

// ---------- charts: drawn on a canvas, labelled where the lines end ----------

function drawCharts() {
  const history = console_.history;
  chart($("#chart-messages"), history, [
    { label: "in", key: "in", color: "#2f6fdb" },
    { label: "out", key: "out", color: "#d9480f" },
  ]);
  chart($("#chart-connections"), history, [
    { label: "sockets", key: "sockets", color: "#1f8a4c" },
    { label: "sessions", key: "sessions", color: "#7048e8" },
  ]);
  chart($("#chart-problems"), history, [
    { label: "drops", key: "drops", color: "#b26b00" },
    { label: "errors", key: "errors", color: "#c4302b" },
  ]);
}

function chart(canvas, points, series) {
  if (canvas.offsetParent === null) return; // not on screen
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
  if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const left = 44, right = 84, top = 8, bottom = 20;
  const plotWidth = width - left - right, plotHeight = height - top - bottom;
  const max = niceMax(Math.max(1, ...points.flatMap((point) => series.map((s) => point[s.key]))));
  const newest = points.at(-1)?.t ?? 0;
  // Seconds shown: what there is, at least a minute, at most the history.
  const span = Math.min(HISTORY_POINTS, Math.max(60, Math.ceil((newest - (points[0]?.t ?? newest)) / 60) * 60));
  const x = (t) => left + plotWidth * (1 - (newest - t) / span);
  const y = (value) => top + plotHeight * (1 - value / max);

  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#667085";
  g.strokeStyle = "#e3e7ee";
  g.lineWidth = 1;
  for (const fraction of [0, 0.5, 1]) {
    const value = max * fraction;
    g.beginPath();
    g.moveTo(left, y(value) + 0.5);
    g.lineTo(left + plotWidth, y(value) + 0.5);
    g.stroke();
    g.textAlign = "right";
    g.textBaseline = "middle";
    g.fillText(number(value, value < 10 && value % 1 ? 1 : 0), left - 6, y(value));
  }
  g.textAlign = "center";
  g.textBaseline = "top";
  const step = span / (span <= 60 ? 4 : span / 60);
  for (let ago = span; ago >= 0; ago -= step) {
    const label = ago === 0 ? "now" : span <= 60 ? `-${ago} s` : `-${ago / 60} min`;
    g.fillText(label, x(newest - ago), top + plotHeight + 4);
  }
  for (const s of series) {
    g.strokeStyle = s.color;
    g.lineWidth = 2;
    g.beginPath();
    points.forEach((point, i) => (i ? g.lineTo : g.moveTo).call(g, x(point.t), y(point[s.key])));
    g.stroke();
  }
  // Labels at the lines' ends, nudged apart: no legend to look up.
  const ends = series
    .filter(() => points.length)
    .map((s) => ({ s, value: points.at(-1)[s.key], at: y(points.at(-1)[s.key]) }))
    .sort((a, b) => a.at - b.at);
  for (let i = 1; i < ends.length; i++) ends[i].at = Math.max(ends[i].at, ends[i - 1].at + 13);
  const overflow = (ends.at(-1)?.at ?? 0) - (top + plotHeight);
  if (overflow > 0) for (const end of ends) end.at -= overflow;
  g.textAlign = "left";
  g.textBaseline = "middle";
  for (const end of ends) {
    g.fillStyle = end.s.color;
    g.fillText(`${end.s.label} ${number(end.value, end.value % 1 ? 1 : 0)}`, left + plotWidth + 6, end.at);
  }
}

function niceMax(value) {
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function sparkline(points) {
  const width = 120, height = 22;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  if (points.length > 1) {
    const first = points[0].steps, last = points.at(-1).steps;
    const range = Math.max(1, last - first);
    // The last minute, right-aligned: a session a few seconds old draws
    // a short line at the right.
    const newest = points.at(-1).t;
    const x = (t) => Math.max(0, width - ((newest - t) / SPARK_POINTS) * width);
    const path = points
      .map((point, i) => `${i ? "L" : "M"}${x(point.t).toFixed(1)},${(height - 2 - ((point.steps - first) / range) * (height - 4)).toFixed(1)}`)
      .join(" ");
    const line = document.createElementNS("http://www.w3.org/2000/svg", "path");
    line.setAttribute("d", path);
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", "#2f6fdb");
    line.setAttribute("stroke-width", "1.5");
    svg.append(line);
  }
  return svg;
}

// ---------- sessions and connections ----------

async function terminate(sessionId, button) {
  button.disabled = true;
  button.textContent = "ending…";
  const { status, body } = await api("DELETE", `/sessions/${encodeURIComponent(sessionId)}`);
  button.textContent = status === 200 ? "ended" : `failed (${status}${body?.detail ? `: ${body.detail}` : ""})`;
}

async function disconnectHubClient(edgeId, connectionId, button) {
  button.disabled = true;
  button.textContent = "disconnecting…";
  const path = `/api/admin/edges/${encodeURIComponent(edgeId)}/connections/${encodeURIComponent(connectionId)}`;
  const { status, body } = await api("DELETE", path);
  button.textContent = status === 202 ? "disconnected" : `failed (${status}${body?.detail ? `: ${body.detail}` : ""})`;
}

function endButton(session, label) {
  return el("button", {
    class: "danger terminate",
    type: "button",
    title: `DELETE /sessions/${session.session_id}`,
    onclick: (event) => terminate(session.session_id, event.currentTarget),
  }, label);
}

function renderSessions(snapshot) {
  const sessions = snapshot.sessions.filter((session) => session.kind === "realtime");
  $("#sessions-count").textContent = `${sessions.length} open${snapshot.sessions_total > snapshot.sessions.length ? ` (first ${snapshot.sessions.length} of ${snapshot.sessions_total} registry sessions shown)` : ""}`;
  replaceRows(
    $("#sessions tbody"),
    sessions.map((session) => {
      const points = console_.steps.get(session.session_id) ?? [];
      const minuteAgo = points.find((point) => point.t >= snapshot.timestamp - 60) ?? points[0];
      return el(
        "tr",
        { dataset: { sessionId: session.session_id } },
        el("td", { class: "mono", title: session.session_id }, short(session.session_id)),
        el("td", {}, session.user_id || "—"),
        el("td", { class: "mono", title: session.edge_id }, short(session.edge_id)),
        el("td", {}, duration(session.duration)),
        el("td", { class: "num steps" }, String(session.total_steps)),
        el("td", {}, sparkline(points), ` +${minuteAgo ? session.total_steps - minuteAgo.steps : 0}`),
        el("td", { class: "num" }, number(session.total_requests)),
        el("td", { class: session.idle_seconds > 30 ? "warn" : "" }, duration(session.idle_seconds)),
        el("td", {}, endButton(session, "Terminate")),
      );
    }),
  );
}

function renderConnections(snapshot) {
  const alerts = snapshot.sessions.filter((session) => session.kind === "alerts");
  replaceRows(
    $("#alerts-connections tbody"),
    alerts.map((session) =>
      el(
        "tr",
        { dataset: { sessionId: session.session_id } },
        el("td", {}, session.user_id),
        el("td", { class: "mono", title: session.session_id }, short(session.session_id)),
        el("td", { class: "mono", title: session.edge_id }, short(session.edge_id)),
        el("td", {}, duration(session.duration)),
        el("td", { class: session.idle_seconds > 45 ? "bad" : session.idle_seconds > 30 ? "warn" : "" }, duration(session.idle_seconds)),
        el("td", {}, endButton(session, "Disconnect")),
      ),
    ),
  );
  const statistics = snapshot.sessions.filter((session) => session.kind === "statistics");
  const byUser = new Map();
  for (const session of statistics) byUser.set(session.user_id, [...(byUser.get(session.user_id) ?? []), session]);
  replaceRows(
    $("#statistics-connections tbody"),
    [...byUser.entries()].flatMap(([user, sessions]) =>
      sessions.map((session, i) =>
        el(
          "tr",
          { dataset: { sessionId: session.session_id } },
          el("td", {}, i ? "" : user),
          el("td", { class: "num" }, i ? "" : String(sessions.length)),
          el("td", { class: "mono", title: session.session_id }, short(session.session_id)),
          el("td", { class: "mono", title: session.edge_id }, short(session.edge_id)),
          el("td", {}, duration(session.duration)),
          el("td", {}, duration(session.idle_seconds)),
          el("td", {}, endButton(session, "Disconnect")),
        ),
      ),
    ),
  );
  replaceRows(
    $("#hub-clients tbody"),
    snapshot.edges.map((edge) =>
      el(
        "tr",
        {},
        el("td", { class: "mono", title: edge.edge_id }, `${short(edge.edge_id)} ${edge.address}`),
        ["ui", "pressure", "statistics", "console"].map((name) => el("td", { class: "num" }, number(edge.connections[name] ?? 0))),
      ),
    ),
  );
  replaceRows(
    $("#ui-clients tbody"),
    snapshot.edges.flatMap((edge) =>
      (edge.hub_clients ?? []).map((client) =>
        el(
          "tr",
          { dataset: { connectionId: client.connection_id } },
          el("td", { class: "mono", title: client.connection_id }, short(client.connection_id)),
          el("td", {}, `/ws/${client.endpoint}`),
          el("td", { class: "mono", title: edge.edge_id }, `${short(edge.edge_id)} ${edge.address}`),
          el("td", {}, duration(client.connected_seconds)),
          el("td", {}, el("button", {
            class: "danger disconnect",
            type: "button",
            title: `DELETE /api/admin/edges/${edge.edge_id}/connections/${client.connection_id}`,
            onclick: (event) => disconnectHubClient(edge.edge_id, client.connection_id, event.currentTarget),
          }, "Disconnect")),
        ),
      ),
    ),
  );
}

// ---------- events: the live /ws/ui hub and the composer ----------

const SYSTEM_EVENTS = new Set([
  "session_opened", "session_closed", "session_terminated", "session_timed_out", "step_detected",
  "frame_processed", "alert_raised", "alert_acked", "system_events_suppressed",
]);

function category(message) {
  if (message.type === "event") return SYSTEM_EVENTS.has(message.event_type) ? "system" : "event";
  if (message.type === "overlay" || message.type === "telemetry") return message.type;
  return "other";
}

function openUi() {
  const socket = new WebSocket(wsUrl("/ws/ui"));
  console_.ui = socket;
  $("#ui-status").textContent = "connecting…";
  socket.onopen = () => ($("#ui-status").textContent = "connected");
  socket.onmessage = (message) => {
    const data = JSON.parse(message.data);
    console_.events.unshift({ at: new Date(), data });
    if (console_.events.length > EVENTS_KEPT) console_.events.pop();
    renderEvents();
    if (data.type === "event" && (data.event_type === "alert_raised" || data.event_type === "alert_acked")) {
      refreshPending(data.data?.user_id);
    }
  };
  socket.onclose = () => {
    if (console_.ui !== socket) return;
    $("#ui-status").textContent = "reconnecting…";
    setTimeout(() => console_.ui === socket && console_.token && openUi(), 1000);
  };
}

function renderEvents() {
  const wanted = new Set($$("#event-filters input[type=checkbox]:checked").map((box) => box.value));
  const needle = $("#event-search").value.trim().toLowerCase();
  const shown = console_.events.filter(({ data }) => wanted.has(category(data)) && (!needle || JSON.stringify(data).toLowerCase().includes(needle)));
  $("#events").replaceChildren(
    ...shown.map(({ at, data }) => {
      const name = data.event_type ?? data.overlay_type ?? "";
      const { type, event_type, overlay_type, offset, epoch, ...rest } = data;
      return el(
        "li",
        { dataset: { type: data.type, name } },
        el("span", { class: "time" }, at.toLocaleTimeString()),
        el("span", { class: "kind" }, type, name ? el("br") : null, name),
        el("span", { class: "body" }, JSON.stringify(rest.data ?? rest)),
      );
    }),
  );
}

const COMPOSE = {
  event: { path: "/api/events/broadcast", name: "event_type", data: "data" },
  action: { path: "/api/events/broadcast/action", name: "action", data: "metadata" },
  overlay: { path: "/api/events/broadcast/overlay", name: "overlay_type", data: "data" },
  telemetry: { path: "/api/events/broadcast/telemetry", name: null, data: "data" },
};

function composeKindChanged() {
  const kind = COMPOSE[$("#compose-kind").value];
  $("#compose-name-label").hidden = !kind.name;
  if (kind.name) $("#compose-name-label").firstChild.textContent = `${kind.name} `;
  $("#compose-confidence-label").hidden = $("#compose-kind").value !== "action";
  $("#compose-data-label").textContent = kind.data;
}

async function compose(event) {
  event.preventDefault();
  const kindName = $("#compose-kind").value;
  const kind = COMPOSE[kindName];
  const result = $("#compose-result");
  let data;
  try {
    data = JSON.parse($("#compose-data").value || "{}");
  } catch (error) {
    result.className = "error";
    result.textContent = `The ${kind.data} is not JSON: ${error.message}`;
    return;
  }
  const body = { [kind.data]: data };
  if (kind.name) body[kind.name] = $("#compose-name").value.trim();
  if (kindName === "action") body.confidence = Number($("#compose-confidence").value);
  const { status, body: answer } = await api("POST", kind.path, body);
  result.className = status === 202 ? "ok" : "error";
  result.textContent = status === 202 ? `sent (${status})` : `refused: ${status} ${answer?.detail ?? ""}`;
  result.dataset.status = status;
}

// ---------- workouts: a room's frames as a heatmap ----------

const workout = {
  id: null,
  socket: null,
  /** Stored frames by sequence, as the log returns them. */
  frames: new Map(),
  latest: 0,
  shown: 0,
  loading: null,
};
window.switchboardConsole.workout = workout;

function watchWorkout(event) {
  event.preventDefault();
  const id = $("#workout-id").value.trim();
  if (!id) return;
  workout.socket?.close(1000, "watching another workout");
  Object.assign(workout, { id, frames: new Map(), latest: 0, shown: 0, socket: null });
  $("#workout-view").hidden = false;
  $("#workout-status").textContent = "joining…";
  const socket = new WebSocket(wsUrl("/ws/pressure"));
  workout.socket = socket;
  socket.onopen = () => socket.send(JSON.stringify({ action: "join_session", workout_id: id }));
  socket.onmessage = (message) => {
    const data = JSON.parse(message.data);
    if (data.workout_id !== workout.id) return;
    if (data.type === "session_joined") {
      $("#workout-status").textContent = `watching ${id} (joined as a watcher over /ws/pressure)`;
      if (data.offset) frameArrived(data.offset);
      refreshSummary();
    } else if (data.type === "frame_processed") {
      frameArrived(data.sequence);
    } else if (data.type === "error") {
      $("#workout-status").textContent = `error: ${data.message}`;
    }
  };
  socket.onclose = () => {
    if (workout.socket === socket) $("#workout-status").textContent = `no longer watching ${id} (the socket closed)`;
  };
}

function frameArrived(sequence) {
  workout.latest = Math.max(workout.latest, sequence);
  const slider = $("#frame-slider");
  slider.max = workout.latest;
  if ($("#follow-live").checked) {
    slider.value = workout.latest;
    showFrame(workout.latest);
  }
  refreshSummary();
}

/** The stored frame `sequence`, from the log (cached). */
async function storedFrame(sequence) {
  if (workout.frames.has(sequence)) return workout.frames.get(sequence);
  const id = workout.id;
  const { status, body } = await api("GET", `/api/workouts/${encodeURIComponent(id)}/frames?after=${sequence - 1}&limit=1`);
  if (status !== 200 || workout.id !== id) return null;
  const frame = body.frames.find((candidate) => candidate.sequence === sequence) ?? null;
  if (frame) workout.frames.set(sequence, frame);
  return frame;
}

async function showFrame(sequence) {
  workout.wanted = sequence;
  if (workout.loading) return; // the loop below picks up the newest wish
  workout.loading = (async () => {
    while (workout.wanted !== workout.shown) {
      const wanted = workout.wanted;
      const frame = await storedFrame(wanted);
      if (!frame) break;
      drawHeatmap(frame);
      workout.shown = wanted;
    }
  })();
  try {
    await workout.loading;
  } finally {
    workout.loading = null;
  }
}

async function refreshSummary() {
  if (!workout.id) return;
  const { status, body } = await api("GET", `/api/workouts/${encodeURIComponent(workout.id)}`);
  const rows = status === 200
    ? [
        ["frames stored", number(body.frame_count)],
        ["duration", duration(body.duration_seconds)],
        ["mean total pressure", number(body.aggregate.mean_total_pressure, 1)],
        ["max peak pressure", number(body.aggregate.max_peak_pressure, 1)],
        ["mean contact area", `${number(100 * body.aggregate.mean_contact_area_ratio, 1)} %`],
      ]
    : [["frames stored", status === 404 ? "none yet" : `error ${status}`]];
  replaceRows($("#workout-summary tbody"), rows.map(([name, value]) => el("tr", {}, el("th", {}, name), el("td", {}, value))));
}

/** Pressure to colour: dark blue (none) through teal and yellow to red. */
function heat(fraction) {
  const stops = [
    [0, [240, 244, 250]], [0.001, [49, 54, 149]], [0.35, [33, 145, 140]], [0.7, [253, 231, 37]], [1, [215, 48, 39]],
  ];
  for (let i = 1; i < stops.length; i++) {
    const [at, to] = stops[i];
    if (fraction <= at) {
      const [from, start] = stops[i - 1];
      const k = (fraction - from) / (at - from || 1);
      return `rgb(${start.map((c, j) => Math.round(c + (to[j] - c) * k)).join(",")})`;
    }
  }
  return "rgb(215,48,39)";
}

function drawHeatmap(frame) {
  const canvas = $("#heatmap");
  const g = canvas.getContext("2d");
  const matrix = frame.matrix;
  const rows = matrix.length, columns = matrix[0]?.length ?? 0;
  g.clearRect(0, 0, canvas.width, canvas.height);
  const stats = frame.stats;
  const peak = Math.max(stats.peak_pressure || 0, 1e-9);
  const cell = Math.min(canvas.width / Math.max(columns, 1), canvas.height / Math.max(rows, 1));
  const offsetX = (canvas.width - cell * columns) / 2, offsetY = (canvas.height - cell * rows) / 2;
  g.font = `${Math.max(9, Math.min(14, cell / 3))}px system-ui, sans-serif`;
  g.textAlign = "center";
  g.textBaseline = "middle";
  matrix.forEach((row, r) =>
    row.forEach((value, c) => {
      g.fillStyle = heat(value / peak);
      g.fillRect(offsetX + c * cell, offsetY + r * cell, cell - 1, cell - 1);
      if (cell >= 28) {
        g.fillStyle = value / peak > 0.55 ? "#1d2330" : value > 0 ? "#ffffff" : "#98a2b3";
        g.fillText(number(value, value % 1 ? 1 : 0), offsetX + (c + 0.5) * cell, offsetY + (r + 0.5) * cell);
      }
    }),
  );
  if (rows && columns) {
    g.strokeStyle = "#1d2330";
    g.lineWidth = 3;
    g.strokeRect(offsetX + stats.peak_column * cell + 1.5, offsetY + stats.peak_row * cell + 1.5, cell - 4, cell - 4);
  }
  if (stats.center_of_pressure) {
    const { row, column } = stats.center_of_pressure;
    g.fillStyle = "#ffffff";
    g.strokeStyle = "#1d2330";
    g.lineWidth = 2;
    g.beginPath();
    g.arc(offsetX + (column + 0.5) * cell, offsetY + (row + 0.5) * cell, Math.max(5, cell / 6), 0, 2 * Math.PI);
    g.fill();
    g.stroke();
  }
  canvas.dataset.sequence = frame.sequence;
  $("#frame-title").textContent = `Frame ${frame.sequence} of ${workout.latest}`;
  $("#frame-label").textContent = `frame ${frame.sequence} · ${new Date(frame.received_at * 1000).toLocaleTimeString()} · front row at the top, left at the left; outlined: peak; dot: centre of pressure`;
  const percent = (share) => (share === null || share === undefined ? "—" : `${number(100 * share, 1)} %`);
  const rowsShown = [
    ["size", `${stats.rows} × ${stats.columns}`],
    ["total pressure", number(stats.total_pressure, 1)],
    ["mean pressure", number(stats.mean_pressure, 2)],
    ["peak", `${number(stats.peak_pressure, 1)} at row ${stats.peak_row}, column ${stats.peak_column}`],
    ["contact", `${stats.contact_cells} cells (${percent(stats.contact_area_ratio)})`],
    ["left / right", stats.left_right_balance === null ? "—" : `${percent(stats.left_right_balance)} / ${percent(1 - stats.left_right_balance)}`],
    ["front / back", stats.front_back_balance === null ? "—" : `${percent(stats.front_back_balance)} / ${percent(1 - stats.front_back_balance)}`],
    ["user", frame.user_id || "—"],
  ];
  replaceRows($("#frame-stats tbody"), rowsShown.map(([name, value]) => el("tr", {}, el("th", {}, name), el("td", { dataset: { stat: name } }, value))));
}

// ---------- alerts ----------

const alertUsers = new Set();

function watchAlertUsers(snapshot) {
  for (const session of snapshot.sessions) {
    if (session.kind === "alerts" && !alertUsers.has(session.user_id)) {
      alertUsers.add(session.user_id);
      refreshPending(session.user_id);
    }
  }
}

async function refreshPending(user) {
  if (!user || !console_.token) return;
  alertUsers.add(user);
  const { status, body } = await api("GET", `/api/alerts/${encodeURIComponent(user)}`);
  let box = $$("#pending .pending-user").find((node) => node.dataset.user === user);
  if (!box) {
    box = el("div", { class: "pending-user", dataset: { user } });
    $("#pending").append(box);
  }
  if (status !== 200) {
    box.replaceChildren(el("h3", {}, user), el("p", { class: "error" }, `GET /api/alerts/${user}: ${status} ${body?.detail ?? ""}`));
    return;
  }
  box.dataset.pending = body.pending;
  box.replaceChildren(
    el("h3", {}, `${user}: ${body.pending} pending`),
    body.alerts.length
      ? el(
          "table",
          {},
          el("thead", {}, el("tr", {}, el("th", {}, "raised"), el("th", {}, "type"), el("th", {}, "severity"), el("th", {}, "source"), el("th", {}, "alert"))),
          el(
            "tbody",
            {},
            body.alerts.map((alert) =>
              el(
                "tr",
                { dataset: { alertId: alert.alert_id } },
                el("td", {}, new Date(alert.raised_at * 1000).toLocaleTimeString()),
                el("td", {}, alert.anomaly_type),
                el("td", { class: alert.severity === "critical" ? "bad" : alert.severity === "warning" ? "warn" : "" }, alert.severity),
                el("td", {}, alert.source),
                el("td", { class: "mono", title: alert.alert_id }, short(alert.alert_id)),
              ),
            ),
          ),
        )
      : el("p", { class: "hint" }, "nothing pending"),
  );
}

async function raiseAlert(event) {
  event.preventDefault();
  const user = $("#alert-user").value.trim();
  const { status, body } = await api("POST", "/api/alerts", {
    user_id: user,
    anomaly_type: $("#alert-type").value.trim() || "test",
    severity: $("#alert-severity").value,
    source: "console",
  });
  const result = $("#alert-result");
  result.className = status === 201 ? "ok" : "error";
  result.textContent = status === 201 ? `raised ${short(body.alert_id)} for ${user}` : `refused: ${status} ${body?.detail ?? ""}`;
  refreshPending(user);
}

// ---------- pages ----------

function showPage(name) {
  console_.page = name;
  for (const button of $$("#tabs button")) button.classList.toggle("active", button.dataset.page === name);
  for (const page of $$(".page")) page.hidden = page.id !== `page-${name}`;
  history.replaceState(null, "", `#${name}`);
  if (name === "overview") drawCharts();
}

function start() {
  for (const button of $$("#tabs button")) button.addEventListener("click", () => showPage(button.dataset.page));
  $("#login").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("#token").value);
  });
  $("#logout").addEventListener("click", signOut);
  $("#event-filters").addEventListener("input", renderEvents);
  $("#event-clear").addEventListener("click", () => {
    console_.events = [];
    renderEvents();
  });
  $("#compose-kind").addEventListener("change", composeKindChanged);
  $("#composer").addEventListener("submit", compose);
  $("#workout-form").addEventListener("submit", watchWorkout);
  $("#frame-slider").addEventListener("input", (event) => {
    $("#follow-live").checked = Number(event.target.value) === workout.latest;
    showFrame(Number(event.target.value));
  });
  $("#alert-form").addEventListener("submit", raiseAlert);
  $("#pending-form").addEventListener("submit", (event) => {
    event.preventDefault();
    refreshPending($("#pending-user").value.trim());
  });
  window.addEventListener("resize", drawCharts);
  composeKindChanged();

  const page = location.hash.slice(1);
  showPage($(`#page-${page}`) ? page : "overview");
  // A token in the URL is taken, then removed from the address bar (and
  // so from the history and any screenshot of it).
  const params = new URLSearchParams(location.search);
  const token = params.get("token") ?? sessionStorage.getItem("switchboard-console-token");
  if (params.has("token")) {
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", `${location.pathname}${rest ? `?${rest}` : ""}${location.hash}`);
  }
  if (token) signIn(token);
  else showLogin();
}

start();
