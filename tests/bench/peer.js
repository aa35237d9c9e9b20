// The benchmarks' peer: a plain Node.js server on the npm `ws` package that
// does what Linkd + the bench service do, with the same client envelope:
//   {"type":"echo","data":D,"id":K}           -> {"id":K,"data":D}
//   {"type":"join","data":{"room":R},"id":K}  -> joins room R, {"id":K,"data":{"joined":R}}
//   {"type":"fanout","data":{"room":R,...}}   -> {"type":"fanout","data":...} to every member of R
//   GET /health -> {"status":"healthy"}, GET /bench/hello -> "hello\n"
// Usage: node peer.js PORT [PATH]   (prints "listening PORT" when ready)
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 3900);
const wsPath = process.argv[3] || '/ws/bench';

const server = http.createServer((req, res) => {
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
});
server.keepAliveTimeout = 60000;

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
