// The benchmarks' peer: a plain Node.js server on the npm `ws` package that
// does what Linkd + the bench service do, with the same client envelope:
//   {"type":"echo","data":D,"id":K}           -> {"id":K,"data":D}
//   {"type":"join","data":{"room":R},"id":K}  -> joins room R, {"id":K,"data":{"joined":R}}
//   {"type":"fanout","data":{"room":R,...}}   -> {"type":"fanout","data":...} to every member of R
//   GET /health -> {"status":"healthy"}, GET /bench/hello -> "hello\n"
// Usage: node peer.js PORT [PATH] [--tls CERT KEY]   (prints "listening PORT" when ready)
// --tls: https:// and wss:// (Node's https module: OpenSSL, session tickets on
// by default) instead of http:// and ws://, with the same handlers.
'use strict';
const fs = require('fs');
const http = require('http');
const https = require('https');
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 3900);
const wsPath = process.argv[3] || '/ws/bench';
const tlsAt = process.argv.indexOf('--tls');
const tlsOpts = tlsAt > 0 ? { cert: fs.readFileSync(process.argv[tlsAt + 1]), key: fs.readFileSync(process.argv[tlsAt + 2]) } : null;

const handler = (req, res) => {
  if (req.method === 'GET' && req.url === '/health') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"status":"healthy","version":"peer"}');
  } else if (req.method === 'GET' && req.url === '/bench/hello') {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('hello\n');
  } else {
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end('{"error":{"type":"NOT_FOUND","message":"no route"}}');
  }
};
const server = tlsOpts ? https.createServer(tlsOpts, handler) : http.createServer(handler);
server.keepAliveTimeout = 60000;
server.on('tlsClientError', () => {});   // resets by the handshake benchmark

const wss = new WebSocketServer({ server, path: wsPath, perMessageDeflate: false, maxPayload: 64 * 1024 });
const rooms = new Map(); // room -> Set<ws>

wss.on('connection', (ws) => {
  ws.rooms = new Set();
  ws.on('message', (buf, isBinary) => {
    if (isBinary) return;
    let m;
    try { m = JSON.parse(buf.toString()); } catch {
      ws.send('{"type":"error","data":{"type":"INVALID_MESSAGE","message":"not JSON"}}');
      return;
    }
    if (!m || typeof m.type !== 'string') return;
    const id = m.id;
    const data = m.data === undefined ? null : m.data;
    let reply = data;
    if (m.type === 'join') {
      const r = data && data.room;
      if (typeof r === 'string') {
        let set = rooms.get(r);
        if (!set) rooms.set(r, (set = new Set()));
        set.add(ws);
        ws.rooms.add(r);
        reply = { joined: r };
      }
    } else if (m.type === 'fanout') {
      const set = data && rooms.get(data.room);
      if (set) {
        const text = JSON.stringify({ type: 'fanout', data });
        for (const c of set) c.send(text);
      }
      reply = null;
    }
    if (id !== undefined && id !== null) ws.send(JSON.stringify({ id, data: reply }));
  });
  ws.on('close', () => {
    for (const r of ws.rooms) {
      const set = rooms.get(r);
      if (set) { set.delete(ws); if (set.size === 0) rooms.delete(r); }
    }
  });
  ws.on('error', () => {});
});

server.listen(port, '127.0.0.1', () => console.log('listening ' + port));
const stop = () => { process.exit(0); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
