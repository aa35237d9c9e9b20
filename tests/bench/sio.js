// The Socket.IO peer of `make bench-peers`: Socket.IO 4.8 (npm socket.io) on
// Node's http server, websocket transport only (no long-polling, no
// per-message deflate), doing the bench's work with Socket.IO's own means:
//   "echo" with an ack         -> ack(data)
//   "join" {room} with an ack  -> socket.join(room), ack({joined: room})
//   "fanout" {room, seq, ...}  -> socket.to(room).emit("fanout", data)   (the room except the sender)
//   GET /bench/hello -> "hello\n", GET /health -> {"status":"healthy"}   (the same http server)
// The load tool speaks Engine.IO/Socket.IO framing to it (loadws --proto socketio).
// Usage: node sio.js PORT   (prints "listening PORT" when ready)
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const port = Number(process.argv[2] || 3901);

const server = http.createServer((req, res) => {
  if (req.url.startsWith('/socket.io/')) return;   // Socket.IO's own handler answers these
  if (req.method === 'GET' && req.url === '/health') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"status":"healthy","version":"socket.io"}');
  } else if (req.method === 'GET' && req.url === '/bench/hello') {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('hello\n');
  } else {
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end('{"error":{"type":"NOT_FOUND","message":"no route"}}');
  }
});
server.keepAliveTimeout = 60000;

const io = new Server(server, {
  transports: ['websocket'],
  perMessageDeflate: false,
  httpCompression: false,
  serveClient: false,
  maxHttpBufferSize: 64 * 1024,
});

io.on('connection', (socket) => {
  socket.on('echo', (data, ack) => { if (typeof ack === 'function') ack(data); });
  socket.on('join', (data, ack) => {
    const room = data && data.room;
    if (typeof room === 'string') socket.join(room);
    if (typeof ack === 'function') ack({ joined: room });
  });
  socket.on('fanout', (data, ack) => {
    if (data && typeof data.room === 'string') socket.to(data.room).emit('fanout', data);
    if (typeof ack === 'function') ack(null);
  });
});

server.listen(port, '127.0.0.1', () => console.log('listening ' + port));
const stop = () => { process.exit(0); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
