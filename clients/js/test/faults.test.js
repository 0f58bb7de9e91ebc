// linkcast.js across real server-side faults, driven through the Rust test's control URL:
// the Link process is killed and started again (the client's socket dies: it re-locates,
// reconnects and rejoins with since/epoch), the outage outruns the hub's history (a `gap`), and
// the hub restarts without a store (the room's history is lost: a `reset`). Run in this order
// (one file: node runs a file's tests one after the other).
import { test } from "node:test";
import assert from "node:assert/strict";
import { client, control, env, httpPublish, range, record, uniqueRoom } from "./helpers.js";

test("resumes across a Link restart: every message once, in order, a queued publish acked", async () => {
  const room = uniqueRoom("resume");
  const c = client("resumer");
  const r = record(c);
  c.join(room);
  await c.connect();
  await r.until(() => r.of("joined", room).length, "joined");
  for (const n of range(1, 3)) await httpPublish(room, { n });
  await r.until(() => r.seqs(room).length === 3, "live messages");

  await control("link/stop");
  await r.until(() => r.of("reconnecting").length, "the client saw its socket die");
  for (const n of range(4, 8)) await httpPublish(room, { n });
  // Published while disconnected: waits for the next connection, then is acknowledged once.
  const queued = c.publish(room, { n: "queued" });
  await control("link/start");
  const ack = await queued;
  assert.equal(ack.seq, 9, "sequenced once, after what the hub had");
  const sentinel = await httpPublish(room, { n: "sentinel" });
  await r.until(() => r.seqs(room).includes(sentinel.seq), "caught up to the sentinel");
  assert.deepEqual(r.seqs(room), range(1, 10), "nothing lost, nothing twice");
  assert.deepEqual(r.of("message", room).map((m) => m.data.n), [1, 2, 3, 4, 5, 6, 7, 8, "queued", "sentinel"]);
  assert.equal(r.of("gap", room).length, 0, "no gap: the hub still held the outage");
  assert.equal(r.of("reset", room).length, 0);
  assert.ok(c.stats.connects >= 2, "it reconnected");
  c.close();
});

test("an outage longer than the history window is a gap event, then the rest in order", async () => {
  const room = uniqueRoom("gap");
  const c = client("gapper");
  const r = record(c);
  c.join(room);
  await c.connect();
  await r.until(() => r.of("joined", room).length, "joined");
  for (const n of range(1, 2)) await httpPublish(room, { n });
  await r.until(() => r.seqs(room).length === 2, "live messages");

  await control("link/stop");
  const last = 2 + env.history + 10;
  for (const n of range(3, last)) await httpPublish(room, { n });
  await control("link/start");
  await r.until(() => r.seqs(room).includes(last), "caught up");
  const gaps = r.of("gap", room);
  assert.equal(gaps.length, 1, `one gap: ${JSON.stringify(gaps)}`);
  const [gap] = gaps;
  assert.equal(gap.firstLost, 3, "lost from right after the last seen");
  assert.equal(gap.resumeFrom, gap.lastLost + 1);
  assert.ok(last - gap.lastLost <= env.history, "only what history no longer held is lost");
  assert.deepEqual(r.seqs(room), [1, 2, ...range(gap.resumeFrom, last)], "the rest in order, once");
  const gapAt = r.log.indexOf(gap);
  const firstAfter = r.log.findIndex((e) => e.type === "message" && e.room === room && e.seq === gap.resumeFrom);
  assert.ok(gapAt < firstAfter, "the gap comes before the messages after it");
  assert.deepEqual(c.position(room).seq, last);
  c.close();
});

test("a hub restart without a store resets the room: reset event, then the new epoch from seq 1", async () => {
  const room = uniqueRoom("reset");
  const c = client("resetter");
  const r = record(c);
  c.join(room);
  await c.connect();
  await r.until(() => r.of("joined", room).length, "joined");
  const { epoch: before } = await httpPublish(room, { n: 1 });
  await httpPublish(room, { n: 2 });
  await r.until(() => r.seqs(room).length === 2, "live messages");
  assert.deepEqual(c.position(room), { epoch: before, seq: 2 });

  await control("hub/restart");
  const reset = await r.until(() => r.of("reset", room)[0], "reset after the hub lost the room");
  assert.notEqual(reset.epoch, before, "a new epoch");
  const after = await httpPublish(room, { n: "new epoch" });
  assert.equal(after.seq, 1);
  assert.equal(after.epoch, reset.epoch);
  await r.until(() => r.seqs(room).length === 3, "the new epoch's seq 1");
  assert.deepEqual(r.seqs(room), [1, 2, 1], "seq 1 of the new epoch is new, not a duplicate");
  assert.deepEqual(c.position(room), { epoch: reset.epoch, seq: 1 });
  c.close();
});
