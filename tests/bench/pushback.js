// The backend behind Pushpin in `make bench-peers`: one Node http server
// doing the bench's work with Pushpin's own means.
//   WebSocket-over-HTTP (Pushpin route flag over_http; each batch of client
//   messages arrives as a POST of application/websocket-events):
//     OPEN                                  -> OPEN, with the GRIP extension (message-prefix "")
//     TEXT {"type":"echo","data":D,"id":K}  -> TEXT {"id":K,"data":D}
//     TEXT {"type":"join","data":{"room":R},"id":K}
//                                           -> TEXT c:{"type":"subscribe","channel":R}, TEXT {"id":K,"data":{"joined":R}}
//     TEXT {"type":"fanout","data":{"room":R,...}}
//                                           -> one POST to Pushpin's publish API: ws-message
//                                              {"type":"fanout","data":...} on channel R (every subscriber)
//     CLOSE                                 -> CLOSE
//   GET /bench/hello -> "hello\n" (through Pushpin's HTTP proxy), GET /health
// Usage: node pushback.js PORT PUBLISH_URL   (prints "listening PORT" when ready)
'use strict';
const http = require('http');

const port = Number(process.argv[2] || 3902);
const publishUrl = new URL(process.argv[3] || 'http://127.0.0.1:5561/publish/');
const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });

function parseEvents(buf) {
  const out = [];
  let i = 0;
  while (i < buf.length) {
    const eol = buf.indexOf('\r\n', i);
    if (eol < 0) break;
    const line = buf.toString('latin1', i, eol);
    i = eol + 2;
    const sp = line.indexOf(' ');
    const type = sp < 0 ? line : line.slice(0, sp);
    let content = null;
    if (sp >= 0) {
      const len = parseInt(line.slice(sp + 1), 16);
      content = buf.subarray(i, i + len);
      i += len + 2;
    }
    out.push({ type, content });
  }
  return out;
}

function textEvent(s) {
  const b = Buffer.from(s, 'utf8');
  return 'TEXT ' + b.length.toString(16) + '\r\n' + s + '\r\n';
}

function publish(channel, content) {
  const body = JSON.stringify({ items: [{ channel, formats: { 'ws-message': { content } } }] });
  const req = http.request(publishUrl, { method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
    res.resume();
    if (res.statusCode !== 200) console.error('publish: HTTP ' + res.statusCode);
  });
  req.on('error', (e) => console.error('publish: ' + e.message));
  req.end(body);
}

function onEvents(req, res, body) {
  let out = '';
  let open = false;
  for (const ev of parseEvents(body)) {
    if (ev.type === 'OPEN') { open = true; out += 'OPEN\r\n'; continue; }
    if (ev.type === 'CLOSE') { out += 'CLOSE' + (ev.content ? ' ' + ev.content.length.toString(16) + '\r\n' + ev.content.toString('latin1') : '') + '\r\n'; continue; }
    if (ev.type !== 'TEXT') continue;
    let m;
    try { m = JSON.parse(ev.content.toString('utf8')); } catch { out += textEvent('{"type":"error","data":{"type":"INVALID_MESSAGE","message":"not JSON"}}'); continue; }
    if (!m || typeof m.type !== 'string') continue;
    const data = m.data === undefined ? null : m.data;
    let reply = data;
    if (m.type === 'join' && data && typeof data.room === 'string') {
      out += textEvent('c:' + JSON.stringify({ type: 'subscribe', channel: data.room }));
      reply = { joined: data.room };
    } else if (m.type === 'fanout') {
      if (data && typeof data.room === 'string') publish(data.room, JSON.stringify({ type: 'fanout', data }));
      reply = null;
    }
    if (m.id !== undefined && m.id !== null) out += textEvent(JSON.stringify({ id: m.id, data: reply }));
  }
  const headers = { 'content-type': 'application/websocket-events' };
  if (open) headers['sec-websocket-extensions'] = 'grip; message-prefix=""';
  res.writeHead(200, headers);
  res.end(out);
}

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && (req.headers['content-type'] || '').startsWith('application/websocket-events')) {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => onEvents(req, res, chunks.length === 1 ? chunks[0] : Buffer.concat(chunks)));
    return;
  }
  if (req.method === 'GET' && req.url === '/bench/hello') {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('hello\n');
  } else if (req.method === 'GET' && req.url === '/health') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"status":"healthy","version":"pushpin-backend"}');
  } else {
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end('{"error":{"type":"NOT_FOUND","message":"no route"}}');
  }
});
server.keepAliveTimeout = 60000;
server.listen(port, '127.0.0.1', 4096, () => console.log('listening ' + port));
const stop = () => { process.exit(0); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
