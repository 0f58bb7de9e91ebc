// linkcast.js's rules without a server: close-code ranges and retry hints, the jittered delays
// they lead to, and a publish refused with 503 sent again with the same text and id — driven
// through a scripted stand-in WebSocket (no network).
import { test } from "node:test";
import assert from "node:assert/strict";
import { LinkcastClient, closeKind, retryHint } from "../linkcast.js";

test("close codes: 4000–4099 final, 4100–4199 and 1001 with a hint after the hint, others backoff", () => {
  assert.equal(closeKind(4000, "kicked"), "final");
  assert.equal(closeKind(4099, ""), "final");
  assert.equal(closeKind(4100, "slow consumer; retry_after_ms=1000"), "hint");
  assert.equal(closeKind(4199, ""), "hint");
  assert.equal(closeKind(1001, "link draining; retry_after_ms=250"), "hint");
  assert.equal(closeKind(1001, "server shutting down"), "backoff");
  assert.equal(closeKind(1006, ""), "backoff");
  assert.equal(closeKind(1008, "token expired"), "backoff", "a fresh getToken() may help");
  assert.equal(closeKind(1008, "bad token signature"), "final");
  assert.equal(retryHint("slow consumer; retry_after_ms=1000"), 1000);
  assert.equal(retryHint("bye"), null);
});

/** A WebSocket stand-in: opens at once, records what is sent, closes when told. */
function fakeSockets() {
  const made = [];
  class FakeSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      made.push(this);
      queueMicrotask(() => { this.readyState = 1; this.onopen?.({}); });
    }
    send(text) { this.sent.push(text); }
    close() { this.serverClose(1005, ""); }
    serverClose(code, reason) {
      if (this.readyState === 3) return;
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
    receive(value) { this.onmessage?.({ data: JSON.stringify(value) }); }
  }
  return { made, FakeSocket };
}

const tick = () => new Promise((r) => setTimeout(r, 0));

function fakeClient(FakeSocket, random = () => 0.5) {
  return new LinkcastClient({ wsUrl: "ws://link.invalid/ws", WebSocket: FakeSocket, random, pingIntervalMs: 0, initialBackoffMs: 100 });
}

test("a 41xx close reconnects after the hint plus up to a fifth; a 1001 hint likewise; 4000 ends it", async () => {
  const { made, FakeSocket } = fakeSockets();
  const c = fakeClient(FakeSocket, () => 1);
  const delays = [];
  c.on("reconnecting", (r) => { delays.push(r.delay); });
  c.join("room");
  await c.connect();
  assert.deepEqual(JSON.parse(made[0].sent[0]), { op: "join", room: "room" }, "first join is live only");
  made[0].receive({ op: "joined", room: "room", epoch: "00000000000000aa", last_seq: 4 });
  made[0].serverClose(4100, "slow consumer; retry_after_ms=1000");
  assert.equal(delays.at(-1), 1200, "1000 ms + at most a fifth (random = 1)");
  assert.equal(c.state, "reconnecting");
  c._connect(); // skip the wait
  await tick(); await tick();
  assert.equal(made.length, 2);
  assert.deepEqual(JSON.parse(made[1].sent[0]), { op: "join", room: "room", since: 4, epoch: "00000000000000aa" }, "rejoin with the position");
  made[1].serverClose(1001, "link draining; retry_after_ms=300");
  assert.equal(delays.at(-1), 360);
  c._connect();
  await tick(); await tick();
  const closed = new Promise((r) => c.on("closed", r));
  made[2].serverClose(4000, "spamming");
  const info = await closed;
  assert.equal(info.code, 4000);
  assert.equal(info.reason, "spamming");
  assert.equal(c.state, "closed");
  assert.equal(delays.length, 2, "no reconnect after 4000");
  await assert.rejects(c.publish("room", 1), /client closed/);
});

test("other closes back off with equal jitter, doubling per attempt", async () => {
  const { made, FakeSocket } = fakeSockets();
  const c = fakeClient(FakeSocket, () => 0);
  const delays = [];
  c.on("reconnecting", (r) => delays.push(r.delay));
  c.join("room");
  await c.connect();
  made[0].serverClose(1006, "");
  c._connect(); await tick(); await tick();
  made[1].serverClose(1011, "internal error");
  assert.deepEqual(delays, [50, 100], "half of 100·2^(attempt-1), the random half 0");
  c.close();
});

test("a publish refused with 503 + retry_after_ms is sent again, same text and id, and resolves with the ack", async () => {
  const { made, FakeSocket } = fakeSockets();
  const c = fakeClient(FakeSocket);
  c.join("room");
  await c.connect();
  const acked = c.publish("room", { text: "hi" });
  const first = made[0].sent.at(-1);
  const { id } = JSON.parse(first);
  made[0].receive({ op: "error", code: 503, reason: "hub unavailable", room: "room", id, retry_after_ms: 5 });
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(made[0].sent.at(-1), first, "the same text, so the same id");
  made[0].receive({ op: "published", room: "room", seq: 7, epoch: "00000000000000aa", id });
  assert.deepEqual(await acked, { room: "room", seq: 7, epoch: "00000000000000aa", id });
  const refused = c.publish("room", 1);
  const second = JSON.parse(made[0].sent.at(-1)).id;
  made[0].receive({ op: "error", code: 413, reason: "too large", room: "room", id: second });
  await assert.rejects(refused, (e) => e.code === 413 && e.reason === "too large");
  c.close();
});

test("dedupe, holes and resets: each seq once, a hole is a gap, a reset restarts the position", async () => {
  const { made, FakeSocket } = fakeSockets();
  const c = fakeClient(FakeSocket);
  const seen = [];
  for (const type of ["message", "gap", "reset"]) c.on(type, (v) => seen.push([type, v.seq ?? v.firstLost ?? v.epoch]));
  c.join("room", { since: 2, epoch: "00000000000000aa" });
  await c.connect();
  const msg = (seq) => ({ room: "room", seq, from: "u", ts: 1, data: seq });
  made[0].receive(msg(2)); // already seen
  made[0].receive(msg(3));
  made[0].receive(msg(3)); // twice
  made[0].receive(msg(6)); // 4 and 5 missing
  made[0].receive({ op: "reset", room: "room", epoch: "00000000000000bb", last_seq: 0 });
  made[0].receive(msg(1));
  assert.deepEqual(seen, [["message", 3], ["gap", 4], ["message", 6], ["reset", "00000000000000bb"], ["message", 1]]);
  assert.deepEqual(c.position("room"), { epoch: "00000000000000bb", seq: 1 });
  assert.equal(c.stats.duplicates, 2);
  c.close();
});
