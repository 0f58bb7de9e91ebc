// Shared by the Node tests (not a test file itself): the server under test, tokens, a client
// factory and an event recorder with bounded waits. The Rust test tests/it/js_client.rs starts
// a real hub + Link (processes of the binary) and runs `node --test` with these variables:
//   LINKCAST_HTTP        the hub's base URL (http://127.0.0.1:PORT)
//   LINKCAST_JWT_SECRET  the cluster's auth.jwt_secret (the tests sign their own tokens)
//   LINKCAST_API_KEY     a publish + read API key (HTTP publishes "from the backend")
//   LINKCAST_CONTROL     the test's control URL: POST /link/stop, /link/start, /hub/restart
//   LINKCAST_HISTORY     the hub's history_messages (the gap test outruns it)
import { createHmac } from "node:crypto";
import WebSocket from "ws";
import { LinkcastClient } from "../linkcast.js";

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run these tests through \`cargo test --test it js_client\` (tests/it/js_client.rs starts the server)`);
  return value;
}

export const env = {
  get http() { return required("LINKCAST_HTTP"); },
  get secret() { return required("LINKCAST_JWT_SECRET"); },
  get apiKey() { return required("LINKCAST_API_KEY"); },
  get control() { return required("LINKCAST_CONTROL"); },
  get history() { return Number(required("LINKCAST_HISTORY")); },
};

let counter = 0;
/** A room name no other test uses. */
export function uniqueRoom(what) {
  return `js-${what}-${process.pid}-${Date.now()}-${++counter}`;
}

const b64 = (value) => Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");

/** An HS256 JWT for `sub` (every room), valid for `ttlSecs`, signed with `secret`. */
export function token(sub, { secret = env.secret, ttlSecs = 3600, rooms = ["*"] } = {}) {
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + ttlSecs, rooms })}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

/** A client of `sub` against the hub under test (short backoff: the tests restart nodes). */
export function client(sub, options = {}) {
  return new LinkcastClient({
    url: env.http,
    WebSocket,
    getToken: () => token(sub),
    initialBackoffMs: 50,
    maxBackoffMs: 500,
    ...options,
  });
}

/** Records a client's events in order; `until` waits (bounded) for a condition on them. */
export function record(c) {
  const log = [];
  for (const type of ["message", "gap", "reset", "joined", "presence", "member", "published", "error", "reconnecting", "connected", "closed", "refreshed"]) {
    c.on(type, (value) => log.push({ type, ...value }));
  }
  return {
    log,
    of(type, room) {
      return log.filter((e) => e.type === type && (room === undefined || e.room === room));
    },
    seqs(room) {
      return this.of("message", room).map((m) => m.seq);
    },
    async until(predicate, what, withinMs = 20000) {
      const deadline = Date.now() + withinMs;
      for (;;) {
        const found = predicate(log);
        if (found) return found;
        if (Date.now() > deadline) {
          throw new Error(`${what}: not within ${withinMs} ms; events: ${JSON.stringify(log.slice(-30))}`);
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    },
  };
}

/** POST a message to `room` through the hub's HTTP API (as the backend); returns {seq, epoch}. */
export async function httpPublish(room, data) {
  const res = await fetch(`${env.http}/v1/rooms/${encodeURIComponent(room)}/messages`, {
    method: "POST",
    headers: { authorization: `Bearer ${env.apiKey}`, "content-type": "application/json" },
    body: JSON.stringify(data),
  });
  const body = await res.json();
  if (res.status !== 200) throw new Error(`publish to ${room}: HTTP ${res.status} ${JSON.stringify(body)}`);
  return body;
}

/** Asks the Rust test to act on the nodes (stop/start the Link, restart the hub); resolves when done. */
export async function control(action) {
  const res = await fetch(`${env.control}/${action}`, { method: "POST" });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`control ${action}: HTTP ${res.status} ${text}`);
}

export const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
