// ws-subscribers.js — the neutral subscriber client of scripts/compare-peers: the same Node `ws`
// client (not linkcast's own load generator) measures linkcast and uWebSockets.js.
//
// What it owns: N subscriber sockets spread over W worker processes, one publisher in the main
// process, and the report. Data flow: the main process (linkcast) locates the room
// (GET /v1/locate?room=R) and hands the Link's ws URL to the workers, which open N sockets and
// send {"op":"join","room":R} on each (a join refused with retry_after_ms is sent again); once
// every socket is in, the main process publishes RATE msg/s for DURATION s — to linkcast over
// HTTP (POST /v1/rooms/R/messages, keep-alive, 4 connections), to uWebSockets.js over one
// WebSocket whose text is what a linkcast client receives for the same publish:
// {"room":R,"seq":N,"from":"api","ts":MICROS,"data":{"t":MICROS,"p":"xxx…"}} (uws-broadcast.js
// relays it verbatim to every other socket). Every socket counts the room messages it receives
// until DURATION + GRACE s (or until all arrived) and records publish → receive latency from `t`
// (CLOCK_MONOTONIC microseconds, shared by all processes on the machine). Server CPU is read from
// /proc/PID/stat (utime + stime, every thread) at the first publish and at the end.
//
// Usage: node ws-subscribers.js --target linkcast --http http://127.0.0.1:17070 \
//          | --target uws --ws ws://127.0.0.1:9001/
//        [-n 2000] [-r 100] [-d 10] [--size 130] [--grace 3] [--workers 2] [--room bench]
//        [--server-pid PID] [--label NAME] [--json FILE] [--http-conns 4]
// Prints one line and writes the JSON report (label, subs, rate, offered, delivered,
// delivered_pct, server_cpu_s, deliveries_per_cpu_s, p50_ms, p99_ms, max_ms).
// `node ws-subscribers.js --table A.json B.json…` prints reports as a markdown table, with
// deliveries per server CPU-second as a ratio to the uws report among them.
'use strict';
const { fork } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const WebSocket = require('ws');

const nowMicros = () => Number(process.hrtime.bigint() / 1000n);
/** Latency histogram: 50 µs buckets up to 30 s, the rest in the last one. */
const BUCKET_US = 50;
const BUCKETS = 600000;

function parseArgs(argv) {
  const a = { target: 'linkcast', n: 2000, r: 100, d: 10, size: 130, grace: 3, workers: 2, room: 'bench', label: '', 'http-conns': 4 };
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i].replace(/^-+/, ''), v = argv[i + 1];
    if (v === undefined) throw new Error(`missing value for ${argv[i]}`);
    const key = { 'server-pid': 'pid', json: 'json', http: 'http', ws: 'ws' }[k] || k;
    a[key] = ['n', 'r', 'd', 'size', 'grace', 'workers', 'pid', 'http-conns'].includes(key) ? Number(v) : v;
  }
  if (!(a.n > 0 && a.r > 0 && a.d > 0)) throw new Error('-n, -r and -d must be positive');
  a.label = a.label || a.target;
  return a;
}

// ---------------------------------------------------------------- worker: subscriber sockets

function worker() {
  let sockets = [], hist = new Uint32Array(BUCKETS), delivered = 0, measuring = false;
  function onText(data) {
    if (!measuring) return;
    // Room messages only (linkcast also sends joined/presence); the stamp without a JSON parse.
    const s = typeof data === 'string' ? data : data.toString('latin1');
    if (!s.startsWith('{"room"')) return;
    const at = s.indexOf('"data":{"t":');
    if (at < 0) return;
    const t = parseInt(s.slice(at + 12, at + 32), 10);
    delivered++;
    const b = Math.floor((nowMicros() - t) / BUCKET_US);
    hist[b < 0 ? 0 : b >= BUCKETS ? BUCKETS - 1 : b]++;
  }
  function open(url, room, isLinkcast) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { perMessageDeflate: false });
      ws.on('error', reject);
      ws.on('open', () => {
        if (!isLinkcast) return resolve(ws);
        ws.send(JSON.stringify({ op: 'join', room }));
      });
      ws.on('message', (data) => {
        if (measuring) return onText(data);
        const s = data.toString();
        if (!isLinkcast || !s.startsWith('{"op"')) return onText(data);
        const m = JSON.parse(s);
        if (m.op === 'joined' && m.room === room) resolve(ws);
        else if (m.op === 'error' && m.room === room) {
          if (m.retry_after_ms) setTimeout(() => ws.send(JSON.stringify({ op: 'join', room })), m.retry_after_ms);
          else reject(new Error(`join refused: ${s}`));
        }
      });
    });
  }
  process.on('message', async (msg) => {
    if (msg.cmd === 'connect') {
      try {
        for (let i = 0; i < msg.count; i += 100) {
          const batch = [];
          for (let j = i; j < Math.min(msg.count, i + 100); j++) batch.push(open(msg.url, msg.room, msg.linkcast));
          sockets.push(...(await Promise.all(batch)));
        }
        process.send({ cmd: 'connected' });
      } catch (e) {
        process.send({ cmd: 'failed', error: String(e) });
      }
    } else if (msg.cmd === 'start') {
      measuring = true;
      process.send({ cmd: 'started' });
    } else if (msg.cmd === 'count') {
      process.send({ cmd: 'count', delivered });
    } else if (msg.cmd === 'stop') {
      measuring = false;
      process.send({ cmd: 'done', delivered, hist: Array.from(hist) }, () => {
        for (const ws of sockets) ws.terminate();
        process.exit(0);
      });
    }
  });
}

// ---------------------------------------------------------------- main: publisher and report

function request(agent, method, url, body) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, agent, headers: body ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } : {} }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (text += c));
      res.on('end', () => (res.statusCode === 200 ? resolve(text) : reject(new Error(`${method} ${url}: ${res.statusCode} ${text}`))));
    });
    req.on('error', reject);
    req.end(body);
  });
}

function cpuSeconds(pid) {
  if (!pid) return NaN;
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // utime + stime (fields 14, 15), clock ticks
}

function percentile(hist, total, q) {
  let want = Math.ceil(total * q), seen = 0;
  for (let b = 0; b < hist.length; b++) {
    seen += hist[b];
    if (seen >= want && want > 0) return ((b + 0.5) * BUCKET_US) / 1000;
  }
  return NaN;
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const linkcast = a.target === 'linkcast';
  // Keep-alive connections the linkcast publisher uses (--http-conns, default 4): a publish waits
  // in this agent for a free one, and its stamp was taken before, so that wait counts as latency.
  const agent = new http.Agent({ keepAlive: true, maxSockets: a['http-conns'] });
  let url = a.ws;
  if (linkcast) {
    const located = JSON.parse(await request(agent, 'GET', `${a.http}/v1/locate?room=${a.room}`));
    url = located.links[0].ws;
  }
  const workers = [];
  const per = Math.ceil(a.n / a.workers);
  for (let w = 0; w < a.workers; w++) {
    const count = Math.min(per, a.n - w * per);
    if (count <= 0) break;
    const child = fork(__filename, ['--worker'], { stdio: 'inherit' });
    workers.push(new Promise((resolve, reject) => {
      child.once('message', (m) => (m.cmd === 'connected' ? resolve(child) : reject(new Error(m.error))));
      child.send({ cmd: 'connect', count, url, room: a.room, linkcast });
    }));
  }
  const children = await Promise.all(workers);
  const ask = (cmd, answer) => Promise.all(children.map((c) => new Promise((res) => {
    const on = (m) => { if (m.cmd === answer) { c.off('message', on); res(m); } };
    c.on('message', on);
    c.send({ cmd });
  })));

  let publisher = null;
  if (!linkcast) {
    publisher = new WebSocket(url, { perMessageDeflate: false });
    await new Promise((res, rej) => { publisher.on('open', res); publisher.on('error', rej); });
  }
  await ask('start', 'started');
  const total = Math.round(a.r * a.d);
  const payload = (t) => {
    const head = `{"t":${t},"p":"`;
    // Padded so the text a subscriber receives is about --size bytes (the envelope is ~70).
    return head + 'x'.repeat(Math.max(0, a.size - 70 - head.length - 2)) + '"}';
  };
  let sent = 0, failed = 0, inflight = 0;
  const cpu0 = cpuSeconds(a.pid);
  const t0 = nowMicros();
  await new Promise((resolve) => {
    const tick = () => {
      const due = Math.min(total, Math.floor(((nowMicros() - t0) / 1e6) * a.r) + 1);
      while (sent < due) {
        const t = nowMicros();
        const data = payload(t);
        sent++;
        if (linkcast) {
          inflight++;
          request(agent, 'POST', `${a.http}/v1/rooms/${a.room}/messages`, data)
            .catch(() => failed++)
            .finally(() => inflight--);
        } else {
          publisher.send(`{"room":"${a.room}","seq":${sent},"from":"api","ts":${t},"data":${data}}`);
        }
      }
      if (sent >= total) resolve();
      else setTimeout(tick, Math.max(0, Math.min(5, 1000 / a.r)));
    };
    tick();
  });
  const offered = (sent - failed) * a.n;
  const deadline = t0 + (a.d + a.grace) * 1e6;
  for (;;) {
    await new Promise((r) => setTimeout(r, 100));
    const got = (await ask('count', 'count')).reduce((s, m) => s + m.delivered, 0);
    if ((inflight === 0 && got >= (sent - failed) * a.n) || nowMicros() >= deadline) break;
  }
  const cpu1 = cpuSeconds(a.pid);
  const wall = (nowMicros() - t0) / 1e6;
  const done = await ask('stop', 'done');
  if (publisher) publisher.terminate();
  agent.destroy();
  const hist = new Float64Array(BUCKETS);
  let delivered = 0;
  for (const m of done) {
    delivered += m.delivered;
    for (let b = 0; b < BUCKETS; b++) hist[b] += m.hist[b];
  }
  const cpu = cpu1 - cpu0;
  const report = {
    label: a.label, target: a.target, subs: a.n, rate: a.r, duration_s: a.d, size: a.size,
    published: sent - failed, publish_failed: failed, offered, delivered,
    delivered_pct: offered ? (100 * delivered) / offered : 0,
    wall_s: wall, server_cpu_s: cpu, deliveries_per_cpu_s: cpu > 0 ? delivered / cpu : NaN,
    p50_ms: percentile(hist, delivered, 0.5), p99_ms: percentile(hist, delivered, 0.99),
    max_ms: percentile(hist, delivered, 1.0),
  };
  console.log(`${report.label}: ${delivered}/${offered} delivered (${report.delivered_pct.toFixed(1)} %), ` +
    `server CPU ${cpu.toFixed(2)} s, ${Math.round(report.deliveries_per_cpu_s)} deliveries/CPU-s, ` +
    `p50 ${report.p50_ms.toFixed(2)} ms, p99 ${report.p99_ms.toFixed(2)} ms, max ${report.max_ms.toFixed(1)} ms`);
  if (a.json) fs.writeFileSync(a.json, JSON.stringify(report, null, 2) + '\n');
  process.exit(0);
}

/** `--table FILE...`: the reports as one markdown table, ratios to the uws row of the same point. */
function table(files) {
  const rows = files.map((f) => JSON.parse(fs.readFileSync(f, 'utf8')));
  const uws = rows.find((r) => r.target === 'uws');
  console.log('| server | delivered | deliveries/s | server CPU s | deliveries per CPU-s | × uws | p50 ms | p99 ms | max ms |');
  console.log('|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    const ratio = uws && uws.deliveries_per_cpu_s > 0 ? (r.deliveries_per_cpu_s / uws.deliveries_per_cpu_s).toFixed(2) : '-';
    console.log(`| ${r.label} | ${r.delivered_pct.toFixed(1)} % | ${Math.round(r.delivered / r.wall_s)} | ${r.server_cpu_s.toFixed(2)} | ` +
      `${Math.round(r.deliveries_per_cpu_s)} | ${ratio} | ${r.p50_ms.toFixed(1)} | ${r.p99_ms.toFixed(1)} | ${r.max_ms.toFixed(1)} |`);
  }
}

if (process.argv[2] === '--worker') worker();
else if (process.argv[2] === '--table') table(process.argv.slice(3));
else main().catch((e) => { console.error(String(e && e.stack || e)); process.exit(1); });
