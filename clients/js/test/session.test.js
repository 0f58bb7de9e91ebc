// linkcast.js against a running hub + Link, without faults: publish acks (and idempotency),
// a bad token ends the session with a clear error and no reconnect loop, a stale epoch gets a
// `reset`, presence counts and member events, refresh. helpers.js says where the server comes from.
import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { LinkcastClient, LinkcastError } from "../linkcast.js";
import { client, env, httpPublish, range, record, token, uniqueRoom } from "./helpers.js";

const EPOCH = /^[0-9a-f]{16}$/;

test("publishes resolve with the server's ack; a repeated id gets the first ack; a refusal rejects", async () => {
  const room = uniqueRoom("acks");
  const c = client("ack-user");
  const r = record(c);
  c.join(room);
  await c.connect();
  await r.until((log) => log.some((e) => e.type === "joined" && e.room === room), "joined");
  const acks = await Promise.all(range(1, 3).map((n) => c.publish(room, { n })));
  assert.deepEqual(acks.map((a) => a.seq).sort((a, b) => a - b), [1, 2, 3], "three seqs");
  for (const ack of acks) {
    assert.match(ack.epoch, EPOCH, "the epoch is 16 hex digits, a string");
    assert.equal(ack.room, room);
    assert.equal(typeof ack.id, "string");
  }
  await r.until(() => r.seqs(room).length === 3, "own messages delivered");
  assert.deepEqual(r.seqs(room), [1, 2, 3]);
  assert.deepEqual(r.of("message", room).map((m) => m.data.n).sort(), [1, 2, 3]);
  assert.equal(r.of("message", room)[0].from, "ack-user");

  // The id is the hub's idempotency key: the same id again is acknowledged, not sequenced again.
  const first = await c.publish(room, { n: "once" }, { id: "fixed-id" });
  const again = await c.publish(room, { n: "once" }, { id: "fixed-id" });
  assert.equal(first.seq, 4);
  assert.deepEqual(again, first, "a repeated id gets the first publish's ack");
  const sentinel = await httpPublish(room, { n: "sentinel" });
  assert.equal(sentinel.seq, 5, "the repeat was not sequenced");
  await r.until(() => r.seqs(room).includes(5), "sentinel delivered");
  assert.deepEqual(r.seqs(room), [1, 2, 3, 4, 5]);

  // A refusal rejects the promise with the server's code and reason.
  await assert.rejects(c.publish("all", { n: "nope" }), (e) => e instanceof LinkcastError && e.code === 403 && /read-only/.test(e.reason));
  c.close();
});

test("a bad token ends the session with the server's reason and no reconnect", async () => {
  let calls = 0;
  const c = client("mallory", { getToken: () => { calls += 1; return token("mallory", { secret: "not-the-secret" }); } });
  const r = record(c);
  c.join(uniqueRoom("bad-token"));
  await assert.rejects(c.connect(), (e) => e instanceof LinkcastError && e.code === 401 && e.reason === "bad token signature");
  assert.equal(c.state, "closed");
  assert.equal(calls, 1, "getToken asked once: no second attempt");
  assert.equal(r.of("reconnecting").length, 0, "no reconnect scheduled");
  assert.equal(r.of("closed").length, 1);
  assert.equal(c.stats.connects, 0);

  // Straight to the Link (no locate): the refused upgrade (HTTP 401) ends it too.
  const locate = await fetch(`${env.http}/v1/locate?room=direct`, { headers: { authorization: `Bearer ${env.apiKey}` } });
  const [link] = (await locate.json()).links;
  const direct = new LinkcastClient({ wsUrl: link.ws, WebSocket, getToken: () => token("mallory", { secret: "not-the-secret" }) });
  direct.join("direct");
  await assert.rejects(direct.connect(), (e) => e instanceof LinkcastError && e.code === 401);
  assert.equal(direct.state, "closed");
});

test("a join at a position of another epoch gets a reset, then the room from seq 1", async () => {
  const room = uniqueRoom("stale-epoch");
  const { epoch } = await httpPublish(room, { n: 1 });
  await httpPublish(room, { n: 2 });
  const c = client("reset-user");
  const r = record(c);
  c.join(room, { since: 7, epoch: "0123456789abcdef" });
  await c.connect();
  await r.until(() => r.seqs(room).length === 2, "the new epoch's messages");
  const [reset] = r.of("reset", room);
  assert.ok(reset, "a reset event");
  assert.equal(reset.epoch, epoch);
  assert.deepEqual(r.seqs(room), [1, 2], "seq 1 and 2 of the new epoch, not dropped as seen");
  assert.ok(r.log.indexOf(reset) < r.log.findIndex((e) => e.type === "message"), "reset before the messages");
  assert.deepEqual(c.position(room), { epoch, seq: 2 });
  c.close();
});

test("presence counts and member events; refresh hands the Link a fresh token", async () => {
  const room = uniqueRoom("presence");
  const a = client("pat");
  const ra = record(a);
  a.join(room, { presence: true });
  await a.connect();
  await ra.until(() => ra.of("joined", room).length, "pat joined");
  const b = client("quinn");
  b.join(room);
  await b.connect();
  await ra.until(() => ra.of("member", room).some((m) => m.user === "quinn" && m.joined), "pat sees quinn join");
  await ra.until(() => ra.of("presence", room).some((p) => p.members === 2), "pat sees two members");
  b.close();
  await ra.until(() => ra.of("member", room).some((m) => m.user === "quinn" && !m.joined), "pat sees quinn leave");
  await ra.until(() => ra.of("presence", room).at(-1)?.members === 1, "the count drops to one");

  await a.refresh();
  const refreshed = await ra.until(() => ra.of("refreshed")[0], "refreshed");
  assert.ok(refreshed.exp > Date.now() / 1000, "the new expiry is in the future");
  a.close();
});
