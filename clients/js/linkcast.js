// linkcast.js — the linkcast client for browsers and Node >= 20: one plain ES module, no build
// step, no runtime dependencies. The hub serves this file at GET /linkcast.js.
//
// What it owns: one connection at a time to a Link, found through the hub's
// GET /v1/locate?room=R (Links best first), and each room's position — its epoch (a 16-hex-digit
// string) and the last seq delivered. Data flow: locate → WebSocket (token from getToken() in
// ?token=) → {"op":"join","room","since","epoch"} per room → server messages go through one
// handler (#onText) that dedupes by seq per room, turns a hole or a server `gap` into a "gap"
// event and a `reset` (new epoch) into a "reset" event, and emits the rest. When the socket
// drops, the client waits a jittered backoff (or the server's retry hint), locates again,
// reconnects and rejoins every room with its position, so the application sees each room's
// messages once, in order, with every hole told. It mirrors the Rust client (src/client/session.rs);
// docs/protocol.md "Client libraries" is the reference.
//
// Close codes: 4000–4099 end the session (kicked, banned, token revoked: no reconnect);
// 4100–4199, and 1001 whose reason carries `retry_after_ms=N`, reconnect after N ms plus up to a
// fifth of jitter; 1003/1009 and 1008 (other than "token expired", which reconnects with a fresh
// getToken()) end the session; anything else reconnects after the backoff. A locate refused with
// 401/403 (a bad token, a room the token does not allow) ends the session too.
//
// Publishes carry an id (the hub's idempotency key): a publish refused with 503 + retry_after_ms,
// or in flight when the connection dropped, is sent again with the same id, so the hub sequences
// it once; its Promise resolves with the server's ack {seq, epoch, id} or rejects with a
// LinkcastError.

const AUTO_ROOM_ALL = "all";
const MAX_RETRIES = 10;

/** An error of the server (code = its HTTP-like code; 0 = no answer) or of the client. */
export class LinkcastError extends Error {
  constructor(code, reason, extra = {}) {
    super(code ? `${reason} (${code})` : reason);
    this.name = "LinkcastError";
    this.code = code;
    this.reason = reason;
    Object.assign(this, extra);
  }
}

/** `retry_after_ms=N` in a close reason, as a number, or null. */
export function retryHint(reason) {
  const m = /retry_after_ms=(\d+)/.exec(reason || "");
  return m ? Number(m[1]) : null;
}

/** What a close code means: "final" (do not reconnect), "hint" (after the server's delay) or "backoff". */
export function closeKind(code, reason) {
  if (code >= 4000 && code <= 4099) return "final";
  if (code >= 4100 && code <= 4199) return "hint";
  if (code === 1001 && retryHint(reason) !== null) return "hint";
  if (code === 1003 || code === 1009) return "final";
  if (code === 1008 && !/token expired/.test(reason || "")) return "final";
  return "backoff";
}

/** The `exp` claim of a JWT (seconds), or null. The signature is the server's business. */
function tokenExp(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = part + "=".repeat((4 - (part.length % 4)) % 4);
    const json = typeof atob === "function" ? atob(padded) : Buffer.from(padded, "base64").toString("binary");
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? exp : null;
  } catch (_) {
    return null;
  }
}

function randomId() {
  const words = new Uint32Array(2);
  globalThis.crypto.getRandomValues(words);
  return Array.from(words, (n) => n.toString(36)).join("");
}

function isAutoRoom(room) {
  return room === AUTO_ROOM_ALL || (typeof room === "string" && room.startsWith("user:"));
}

const OPEN = 1;

export class LinkcastClient {
  /**
   * @param {object} options see linkcast.d.ts (ClientOptions).
   */
  constructor(options = {}) {
    const base = options.url ?? globalThis.location?.origin;
    if (!base && !options.wsUrl) throw new TypeError("linkcast: options.url (the hub's base URL) is required outside a browser");
    this.options = {
      url: base,
      wsUrl: options.wsUrl ?? null,
      room: options.room ?? null,
      getToken: options.getToken ?? null,
      WebSocket: options.WebSocket ?? globalThis.WebSocket,
      fetch: options.fetch ?? globalThis.fetch?.bind(globalThis),
      initialBackoffMs: options.initialBackoffMs ?? 100,
      maxBackoffMs: options.maxBackoffMs ?? 30000,
      overloadMinMs: options.overloadMinMs ?? 1000,
      stableAfterMs: options.stableAfterMs ?? 10000,
      connectTimeoutMs: options.connectTimeoutMs ?? 5000,
      pingIntervalMs: options.pingIntervalMs ?? 25000,
      maxQueuedPublishes: options.maxQueuedPublishes ?? 1024,
      maxRetries: options.maxRetries ?? MAX_RETRIES,
      publishResendMs: options.publishResendMs ?? 240000,
      autoRooms: options.autoRooms ?? true,
      random: options.random ?? Math.random,
    };
    if (typeof this.options.WebSocket !== "function") {
      throw new TypeError("linkcast: no WebSocket constructor (pass options.WebSocket, e.g. the `ws` package in Node)");
    }
    /** "idle" | "connecting" | "connected" | "reconnecting" | "closed" */
    this.state = "idle";
    /** The live WebSocket, or null. */
    this.socket = null;
    /** The Link serving this connection ({id, ws}), or null. */
    this.link = null;
    this.attempt = 0;
    this.token = null;
    this.stats = { duplicates: 0, lost: 0, gaps: 0, resets: 0, retries: 0, connects: 0, disconnects: 0 };
    this.closeInfo = null;
    this._rooms = new Map(); // room → {epoch, last, retries, presence, auto, timer}
    this._pending = new Map(); // publish id → {room, text, resolve, reject, retries, firstSent, sentOn, timer}
    this._queue = []; // publish ids waiting for a connection, in order
    this._listeners = new Map();
    this._timers = { reconnect: null, ping: null, refresh: null };
    this._idPrefix = randomId() + "-";
    this._nextId = 1;
    this._connectedAt = 0;
    this._lastHeard = 0;
    this._lastErrorHint = null;
    this._generation = 0; // bumps per connect attempt: stale callbacks compare it
    this._connectWaiters = [];
  }

  // ---- events ----

  /** Subscribes `fn` to `type`; returns a function that unsubscribes it. */
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) {
    this._listeners.get(type)?.delete(fn);
  }

  _emit(type, value) {
    for (const fn of [...(this._listeners.get(type) ?? [])]) {
      try {
        fn(value);
      } catch (e) {
        // A listener's bug must not break the protocol state machine.
        queueMicrotask(() => { throw e; });
      }
    }
  }

  _setState(state, detail = {}) {
    this.state = state;
    this._emit("state", { state, ...detail });
  }

  // ---- the application's intents ----

  /**
   * Starts the session; resolves once a socket to a Link is open (rooms are being joined),
   * rejects if the session ends first (bad token, kicked, close()).
   */
  connect() {
    const done = new Promise((resolve, reject) => {
      if (this.state === "connected") return resolve();
      if (this.state === "closed") return reject(this.closeInfo?.error ?? new LinkcastError(0, "client closed"));
      this._connectWaiters.push({ resolve, reject });
    });
    if (this.state === "idle") this._connect();
    return done;
  }

  /**
   * Enters `room` (now if connected, else at the next connect). `since`/`epoch`: a position
   * kept from earlier (the messages after it are replayed first); without them the join is live
   * only. `presence`: also get member joined/left events.
   */
  join(room, { since = null, epoch = null, presence = false } = {}) {
    if (this.state === "closed") throw new LinkcastError(0, "client closed");
    const existing = this._rooms.get(room);
    if (existing && !existing.auto) return;
    const state = { epoch: epoch ?? null, last: since ?? null, retries: 0, presence: !!presence, auto: false, timer: null };
    if (existing) { state.epoch = existing.epoch; state.last = existing.last; }
    this._rooms.set(room, state);
    if (this.state === "connected") this._sendJoin(room);
  }

  /** Leaves `room` and forgets its position. */
  leave(room) {
    const state = this._rooms.get(room);
    if (!state) return;
    clearTimeout(state.timer);
    this._rooms.delete(room);
    if (this.state === "connected") this._send({ op: "leave", room });
  }

  /** The position in `room`: {epoch, seq} (null fields until known), or null if not in it. */
  position(room) {
    const state = this._rooms.get(room);
    return state ? { epoch: state.epoch, seq: state.last } : null;
  }

  /** The rooms the client is in (auto rooms `all` and `user:*` once they spoke). */
  rooms() {
    return [...this._rooms.keys()];
  }

  /**
   * Publishes `data` (any JSON) to `room`. Resolves with the server's ack {room, seq, epoch, id};
   * rejects with a LinkcastError (the server's refusal, or the session's end). `id` (optional)
   * is the idempotency key; by default unique to this client.
   */
  publish(room, data, { id } = {}) {
    if (this.state === "closed") return Promise.reject(new LinkcastError(0, "client closed"));
    if (this._queue.length >= this.options.maxQueuedPublishes) {
      return Promise.reject(new LinkcastError(0, `publish queue full (${this._queue.length} waiting)`));
    }
    const key = id ?? this._idPrefix + this._nextId++;
    if (this._pending.has(key)) return Promise.reject(new LinkcastError(0, "a publish with this id is in flight"));
    return new Promise((resolve, reject) => {
      const text = JSON.stringify({ op: "publish", room, data, id: key });
      this._pending.set(key, { room, text, resolve, reject, retries: 0, firstSent: 0, sentOn: null, timer: null });
      this._queue.push(key);
      this._flushPublishes();
    });
  }

  /** Sends an application ping now (the client also pings on its own while quiet). */
  ping() {
    this._send({ op: "ping" });
  }

  /** Asks getToken() for a fresh token and hands it to the Link (`refresh`); the next connect uses it too. */
  async refresh() {
    if (!this.options.getToken) return;
    const token = await this.options.getToken();
    if (this.state === "closed") return;
    this.token = token;
    if (this.state === "connected") this._send({ op: "refresh", token });
    this._scheduleRefresh();
  }

  /** Ends the session: closes the socket (1000), no reconnect; pending publishes reject. */
  close(reason = "bye") {
    this._finish({ code: 1000, reason, final: true, byClient: true });
  }

  // ---- connection ----

  async _connect() {
    clearTimeout(this._timers.reconnect);
    if (this.state === "closed") return;
    const generation = ++this._generation;
    this._setState(this.attempt ? "reconnecting" : "connecting", { attempt: this.attempt });
    let links;
    try {
      if (this.options.getToken) this.token = await this.options.getToken();
      if (generation !== this._generation) return;
      links = this.options.wsUrl ? [{ id: null, ws: this.options.wsUrl }] : await this._locate();
    } catch (e) {
      if (generation !== this._generation) return;
      if (e instanceof LinkcastError && (e.code === 401 || e.code === 403)) {
        return this._finish({ code: e.code, reason: e.reason, final: true, error: e });
      }
      return this._retry({ code: e.code ?? 0, reason: e.message, overload: e.code === 503 || e.code === 429, retryAfterMs: e.retryAfterMs });
    }
    if (generation !== this._generation) return;
    for (const link of links) {
      const ws = await this._open(link.ws);
      if (generation !== this._generation) { ws?.close?.(1000, "bye"); return; }
      if (ws?.refused === 401 || ws?.refused === 403) {
        const error = new LinkcastError(ws.refused, `the Link refused the connection (HTTP ${ws.refused})`);
        return this._finish({ code: ws.refused, reason: error.reason, final: true, error });
      }
      if (ws && !ws.refused) return this._connected(ws, link);
    }
    this._retry({ code: 0, reason: "no Link reachable" });
  }

  async _locate() {
    const room = this.options.room ?? [...this._rooms.keys()].find((r) => !isAutoRoom(r));
    if (!room) throw new LinkcastError(0, "nothing to locate: join a room first or pass options.room");
    const url = new URL("/v1/locate", this.options.url);
    url.searchParams.set("room", room);
    const headers = this.token ? { Authorization: "Bearer " + this.token } : {};
    let res;
    try {
      res = await this.options.fetch(url.toString(), { headers });
    } catch (e) {
      throw new LinkcastError(0, "locate failed: " + (e?.message ?? e));
    }
    const body = await res.json().catch(() => ({}));
    if (!res.ok) {
      const after = Number(res.headers.get("retry-after"));
      throw new LinkcastError(res.status, body.reason || `locate failed: HTTP ${res.status}`, {
        retryAfterMs: Number.isFinite(after) && after > 0 ? after * 1000 : undefined,
      });
    }
    if (!Array.isArray(body.links) || body.links.length === 0) throw new LinkcastError(503, "no Links available");
    return body.links;
  }

  /** Resolves with an open socket, or null (refused, timed out). */
  _open(url) {
    return new Promise((resolve) => {
      let ws;
      try {
        ws = new this.options.WebSocket(this.token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(this.token) : url);
      } catch (_) {
        return resolve(null);
      }
      const timer = setTimeout(() => { cleanup(); try { ws.close(); } catch (_) {} resolve(null); }, this.options.connectTimeoutMs);
      // onerror stays a no-op: Node's `ws` throws an 'error' nobody listens to (closing a
      // socket still connecting emits one).
      const cleanup = () => { clearTimeout(timer); ws.onopen = ws.onclose = null; ws.onerror = () => {}; };
      ws.onopen = () => { cleanup(); resolve(ws); };
      // A refused upgrade: Node's `ws` says "Unexpected server response: 401"; a browser says
      // nothing (locate, which checks the same token at the hub, catches it there).
      ws.onerror = (event) => {
        cleanup();
        try { ws.close(); } catch (_) {}
        const status = /server response: (\d{3})/.exec(event?.message ?? "");
        resolve(status ? { refused: Number(status[1]) } : null);
      };
      ws.onclose = () => { cleanup(); resolve(null); };
    });
  }

  _connected(ws, link) {
    this.socket = ws;
    this.link = link;
    this._connectedAt = Date.now();
    this._lastHeard = Date.now();
    this._lastErrorHint = null;
    this.stats.connects += 1;
    ws.onmessage = (event) => { if (this.socket === ws) this._onText(event.data); };
    ws.onclose = (event) => { if (this.socket === ws) this._onClose(event.code, event.reason); };
    ws.onerror = () => {};
    this._setState("connected", { attempt: this.attempt, link });
    this._emit("connected", { attempt: this.attempt, link });
    for (const waiter of this._connectWaiters.splice(0)) waiter.resolve();
    // The Link joins `all` and `user:{sub}` live by itself; they are rejoined only to resume.
    for (const [room, state] of this._rooms) if (!state.auto || state.last !== null) this._sendJoin(room);
    // Publishes in flight on the previous socket are sent again with their id (the hub dedupes).
    const now = Date.now();
    for (const [id, p] of this._pending) {
      if (p.sentOn === null || p.sentOn === ws) continue;
      if (now - p.firstSent > this.options.publishResendMs) {
        this._rejectPublish(id, new LinkcastError(0, "connection lost before the ack; the publish may or may not have happened", { room: p.room, id }));
      } else if (!this._queue.includes(id)) {
        p.sentOn = null;
        this._queue.unshift(id);
      }
    }
    this._flushPublishes();
    this._startPing(ws);
    this._scheduleRefresh();
  }

  _onClose(code, reason) {
    this.socket = null;
    this.link = null;
    this.stats.disconnects += 1;
    clearInterval(this._timers.ping);
    for (const state of this._rooms.values()) { clearTimeout(state.timer); state.timer = null; }
    for (const p of this._pending.values()) { clearTimeout(p.timer); p.timer = null; }
    const kind = closeKind(code, reason);
    if (kind === "final") {
      const error = new LinkcastError(code, reason || `closed by the server (${code})`);
      return this._finish({ code, reason, final: true, error });
    }
    if (Date.now() - this._connectedAt >= this.options.stableAfterMs) this.attempt = 0;
    const hint = kind === "hint" ? retryHint(reason) ?? this._lastErrorHint : null;
    this._retry({ code, reason, hintMs: hint, overload: code === 1012 || code === 1013 });
  }

  /** Schedules the next connect: the server's hint plus up to a fifth, else equal-jitter backoff. */
  _retry(cause) {
    if (this.state === "closed") return;
    this.attempt += 1;
    let delay;
    if (cause.hintMs != null) {
      delay = cause.hintMs + this.options.random() * (cause.hintMs / 5);
    } else {
      const base = Math.min(this.options.maxBackoffMs, this.options.initialBackoffMs * 2 ** Math.min(this.attempt - 1, 20));
      delay = base / 2 + this.options.random() * (base / 2);
      if (cause.overload) delay = Math.max(delay, this.options.overloadMinMs);
      if (cause.retryAfterMs) delay = Math.max(delay, cause.retryAfterMs);
    }
    this._setState("reconnecting", { attempt: this.attempt, delay, cause });
    this._emit("reconnecting", { attempt: this.attempt, delay, cause });
    this._timers.reconnect = setTimeout(() => this._connect(), delay);
  }

  _finish(info) {
    if (this.state === "closed") return;
    this._generation += 1;
    this.closeInfo = info;
    clearTimeout(this._timers.reconnect);
    clearInterval(this._timers.ping);
    clearTimeout(this._timers.refresh);
    for (const state of this._rooms.values()) clearTimeout(state.timer);
    const ws = this.socket;
    this.socket = null;
    this.link = null;
    if (ws && ws.readyState === OPEN) {
      try { ws.close(1000, info.reason ?? "bye"); } catch (_) {}
    }
    const error = info.error ?? new LinkcastError(0, "client closed");
    for (const id of [...this._pending.keys()]) this._rejectPublish(id, error);
    this._queue = [];
    this._setState("closed", info);
    this._emit("closed", info);
    for (const waiter of this._connectWaiters.splice(0)) waiter.reject(error);
  }

  _startPing(ws) {
    clearInterval(this._timers.ping);
    const every = this.options.pingIntervalMs;
    if (!(every > 0)) return;
    this._timers.ping = setInterval(() => {
      if (this.socket !== ws) return;
      // Nothing heard for two periods (not even the last pong): the path is dead.
      if (Date.now() - this._lastHeard > 2 * every) {
        try { ws.close(); } catch (_) {}
        this._onClose(1006, "keepalive timeout");
        return;
      }
      this._send({ op: "ping" });
    }, every);
  }

  _scheduleRefresh() {
    clearTimeout(this._timers.refresh);
    if (!this.options.getToken || !this.token) return;
    const exp = tokenExp(this.token);
    if (exp === null) return;
    const left = exp * 1000 - Date.now();
    const delay = Math.max(1000, left - Math.min(60000, left / 4));
    this._timers.refresh = setTimeout(() => { this.refresh().catch((e) => this._emit("error", e)); }, delay);
  }

  // ---- sending ----

  _send(op) {
    const ws = this.socket;
    if (!ws || ws.readyState !== OPEN) return false;
    ws.send(typeof op === "string" ? op : JSON.stringify(op));
    return true;
  }

  _sendJoin(room) {
    const state = this._rooms.get(room);
    if (!state) return;
    const join = { op: "join", room };
    if (state.last !== null) join.since = state.last;
    if (state.epoch !== null) join.epoch = state.epoch;
    if (state.presence) join.presence = true;
    this._send(join);
  }

  _flushPublishes() {
    if (this.state !== "connected" || !this.socket) return;
    while (this._queue.length) {
      const id = this._queue.shift();
      const p = this._pending.get(id);
      if (!p) continue;
      if (!p.firstSent) p.firstSent = Date.now();
      p.sentOn = this.socket;
      this._send(p.text);
    }
  }

  _rejectPublish(id, error) {
    const p = this._pending.get(id);
    if (!p) return;
    clearTimeout(p.timer);
    this._pending.delete(id);
    p.reject(error);
  }

  // ---- server messages ----

  /** One server message (a text frame). Public for tests and custom transports. */
  handleServerText(text) {
    this._onText(text);
  }

  _onText(text) {
    this._lastHeard = Date.now();
    let m;
    try { m = JSON.parse(text); } catch (_) { return; }
    if (!m || typeof m !== "object") return;
    if (m.op === undefined && typeof m.seq === "number") return this._onMessage(m);
    switch (m.op) {
      case "joined": return this._onJoined(m);
      case "reset": return this._onReset(m);
      case "gap": return this._onGap(m);
      case "published": return this._onPublished(m);
      case "error": return this._onError(m);
      case "left": return this._emit("left", { room: m.room });
      case "pong": return;
      case "refreshed": return this._emit("refreshed", { exp: m.exp });
      case "presence":
        return this._emit("presence", { room: m.room, members: m.members, events: m.events !== false });
      case "member_joined":
      case "member_left":
        return this._emit("member", { room: m.room, user: m.user, joined: m.op === "member_joined" });
      case "removed": {
        const state = this._rooms.get(m.room);
        if (state) { clearTimeout(state.timer); this._rooms.delete(m.room); }
        return this._emit("removed", { room: m.room, reason: m.reason ?? "" });
      }
      default:
        return;
    }
  }

  /** The room's state; the Link's own rooms (`all`, `user:*`) are tracked from their first word. */
  _roomFor(room) {
    let state = this._rooms.get(room);
    if (!state && this.options.autoRooms && isAutoRoom(room)) {
      state = { epoch: null, last: null, retries: 0, presence: false, auto: true, timer: null };
      this._rooms.set(room, state);
    }
    return state;
  }

  _onMessage(m) {
    const state = this._roomFor(m.room);
    if (!state) return;
    if (state.last !== null && m.seq <= state.last) {
      this.stats.duplicates += 1;
      return;
    }
    if (state.last !== null && m.seq > state.last + 1) {
      this._noteGap(m.room, state.last + 1, m.seq - 1, m.seq);
    }
    state.last = m.seq;
    this._emit("message", { room: m.room, seq: m.seq, from: m.from, ts: m.ts, data: m.data });
  }

  _onJoined(m) {
    const state = this._roomFor(m.room);
    if (!state) return;
    state.retries = 0;
    // A join answer of another epoch without a `reset` first: the room was reset under us.
    // Its messages from seq 1 that do not follow arrive as a gap (a hole before the next one).
    if (state.epoch !== null && state.epoch !== m.epoch) {
      state.epoch = m.epoch;
      state.last = 0;
      this._noteReset(m.room, m.epoch, m.last_seq);
    }
    state.epoch = m.epoch;
    if (state.last === null) state.last = m.last_seq;
    if (state.last > m.last_seq) {
      // The server's history ends before what we saw (it forgot messages): a reset, not dupes.
      state.last = m.last_seq;
      this._noteReset(m.room, m.epoch, m.last_seq);
    }
    this._emit("joined", { room: m.room, epoch: m.epoch, lastSeq: m.last_seq });
  }

  _onReset(m) {
    const state = this._roomFor(m.room);
    if (!state) return;
    // Already on that epoch (a second answer for one loss): nothing more to forget.
    if (state.epoch === m.epoch && state.last !== null && state.last <= m.last_seq) return;
    state.epoch = m.epoch;
    state.last = 0;
    this._noteReset(m.room, m.epoch, m.last_seq);
  }

  _onGap(m) {
    const state = this._roomFor(m.room);
    if (!state) return;
    const position = m.resume_from - 1;
    if (state.last === null || state.last < position) state.last = position;
    this._noteGap(m.room, m.first_lost, m.last_lost, m.resume_from);
  }

  _noteGap(room, firstLost, lastLost, resumeFrom) {
    this.stats.gaps += 1;
    this.stats.lost += Math.max(0, lastLost - firstLost + 1);
    this._emit("gap", { room, firstLost, lastLost, resumeFrom });
  }

  _noteReset(room, epoch, lastSeq) {
    this.stats.resets += 1;
    this._emit("reset", { room, epoch, lastSeq });
  }

  _onPublished(m) {
    const p = this._pending.get(m.id);
    if (!p) return;
    clearTimeout(p.timer);
    this._pending.delete(m.id);
    const ack = { room: m.room, seq: m.seq, epoch: m.epoch, id: m.id };
    p.resolve(ack);
    this._emit("published", ack);
  }

  /**
   * A refusal. 503 with retry_after_ms (the Link lost its hub) is retried after that delay, at
   * most maxRetries times: a publish with the same text and id, a join with the position kept;
   * a join refused with 429 + hint (join rate) likewise. Anything else rejects the publish, or
   * takes the room out (except 409 already joined) with an "error" event.
   */
  _onError(m) {
    if (typeof m.retry_after_ms === "number") this._lastErrorHint = m.retry_after_ms;
    const delay = Math.max(1, m.retry_after_ms ?? 0);
    const retryable = typeof m.retry_after_ms === "number" && (m.code === 503 || (m.code === 429 && m.id === undefined));
    const ws = this.socket;
    const error = new LinkcastError(m.code, m.reason, { room: m.room, id: m.id, retryAfterMs: m.retry_after_ms });
    if (m.id !== undefined && m.id !== null) {
      const p = this._pending.get(m.id);
      if (p && retryable && m.code === 503 && p.retries < this.options.maxRetries) {
        p.retries += 1;
        this.stats.retries += 1;
        clearTimeout(p.timer);
        p.timer = setTimeout(() => {
          p.timer = null;
          if (this.socket === ws && this._pending.get(m.id) === p) this._send(p.text);
        }, delay);
        return;
      }
      if (p) {
        this._rejectPublish(m.id, error);
        return;
      }
    } else if (m.room !== undefined) {
      const state = this._rooms.get(m.room);
      if (state && retryable && state.retries < this.options.maxRetries) {
        state.retries += 1;
        this.stats.retries += 1;
        clearTimeout(state.timer);
        state.timer = setTimeout(() => {
          state.timer = null;
          if (this.socket === ws && this._rooms.get(m.room) === state) this._sendJoin(m.room);
        }, delay);
        this._emit("retrying", { room: m.room, delay, error });
        return;
      }
      if (state && m.code !== 409 && !(m.code === 403 && /read-only/.test(m.reason ?? ""))) {
        clearTimeout(state.timer);
        this._rooms.delete(m.room);
      }
    }
    this._emit("error", error);
  }
}

/** Shorthand: `new LinkcastClient(options)`. */
export function createClient(options) {
  return new LinkcastClient(options);
}

export default LinkcastClient;
