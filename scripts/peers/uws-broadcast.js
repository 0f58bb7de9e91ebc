// uWebSockets.js broadcast server for scripts/compare-peers: every socket joins topic "room" on
// open; each message a socket sends is published verbatim to every other socket (ws.publish
// skips the sender). Usage: node uws-broadcast.js PORT
const uWS = require('@trufflesuite/uws-js-unofficial');
const port = Number(process.argv[2] || 9001);
uWS.App().ws('/*', {
  compression: uWS.DISABLED, maxPayloadLength: 64 * 1024, maxBackpressure: 64 * 1024 * 1024, idleTimeout: 120,
  open: (ws) => ws.subscribe('room'),
  message: (ws, message, isBinary) => ws.publish('room', message, isBinary),
}).listen('127.0.0.1', port, (ok) => { if (!ok) { console.error('listen failed'); process.exit(1); } console.log('uws listening', port); });
