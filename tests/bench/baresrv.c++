// baresrv: the bare limit of `make bench-peers`. One libuv loop, wslay in
// server mode, no service hop: it answers the bench's JSON envelope itself,
// as linkd + its service do together, with nothing else (no auth, no limits,
// no tables sized in advance, no UTF-8 checks).
//   {"type":"echo","data":D,"id":K}           -> {"id":K,"data":D}
//   {"type":"join","data":{"room":R},"id":K}  -> joins R, {"id":K,"data":{"joined":R}}
//   {"type":"fanout","data":{"room":R,...}}   -> {"type":"fanout","data":...} to every member of R
//                                                but the sender (one frame built once, written
//                                                from it to each member in join order in one
//                                                loop turn, as linkd does)
//   GET /health, GET /bench/hello (HTTP/1.1 keep-alive), anything else 404
// Replies to one read are written with one write per connection.
// Usage: baresrv PORT [WS_PATH]   (prints "listening PORT" when ready)
#include <uv.h>
#include <wslay/wslay.h>
#include <mbedtls/sha1.h>
#include <mbedtls/base64.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace {

uv_loop_t* loop;
std::string ws_path = "/ws/bench";

struct Conn {
  uv_tcp_t tcp;
  wslay_event_context_ptr ws = nullptr;
  std::string in;           // bytes not yet consumed (HTTP)
  const uint8_t* rptr = nullptr;
  size_t rlen = 0;
  std::string out;          // bytes to write at the end of this turn
  std::vector<std::string> rooms;
  bool closing = false;
};

std::unordered_map<std::string, std::vector<Conn*>> rooms;

struct WriteReq { uv_write_t req; std::string data; };

void close_conn(Conn* c);

void flush(Conn* c) {
  if (c->closing || c->out.empty()) return;
  uv_stream_t* s = reinterpret_cast<uv_stream_t*>(&c->tcp);
  if (uv_stream_get_write_queue_size(s) == 0) {
    uv_buf_t b = uv_buf_init(c->out.data(), c->out.size());
    int r = uv_try_write(s, &b, 1);
    if (r == (int)c->out.size()) { c->out.clear(); return; }
    if (r > 0) c->out.erase(0, r);
    else if (r != UV_EAGAIN) { close_conn(c); return; }
  }
  WriteReq* w = new WriteReq;
  w->data.swap(c->out);
  uv_buf_t b = uv_buf_init(w->data.data(), w->data.size());
  if (uv_write(&w->req, s, &b, 1, [](uv_write_t* r, int) { delete reinterpret_cast<WriteReq*>(r); }) < 0) delete w;
}

void on_closed(uv_handle_t* h) {
  Conn* c = static_cast<Conn*>(h->data);
  if (c->ws) wslay_event_context_free(c->ws);
  delete c;
}

void close_conn(Conn* c) {
  if (c->closing) return;
  c->closing = true;
  for (auto& r : c->rooms) {
    auto it = rooms.find(r);
    if (it == rooms.end()) continue;
    auto& v = it->second;
    for (size_t i = 0; i < v.size(); ++i)
      if (v[i] == c) { v.erase(v.begin() + i); break; }
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp), on_closed);
}

// ---- a tiny JSON scanner: the extent of one value ---------------------------
const char* skip_ws(const char* p, const char* e) { while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) ++p; return p; }
const char* skip_string(const char* p, const char* e) {  // p at the opening quote
  for (++p; p < e; ++p) {
    if (*p == '\\') { ++p; continue; }
    if (*p == '"') return p + 1;
  }
  return nullptr;
}
const char* skip_value(const char* p, const char* e) {
  p = skip_ws(p, e);
  if (p >= e) return nullptr;
  if (*p == '"') return skip_string(p, e);
  if (*p == '{' || *p == '[') {
    int depth = 0;
    for (; p < e; ++p) {
      if (*p == '"') { p = skip_string(p, e); if (!p) return nullptr; --p; continue; }
      if (*p == '{' || *p == '[') ++depth;
      else if (*p == '}' || *p == ']') { if (--depth == 0) return p + 1; }
    }
    return nullptr;
  }
  while (p < e && *p != ',' && *p != '}' && *p != ']' && *p != ' ') ++p;
  return p;
}
// The top-level members of an object: calls f(key, value) for each.
template <class F> bool members(std::string_view j, F f) {
  const char* p = j.data(); const char* e = p + j.size();
  p = skip_ws(p, e);
  if (p >= e || *p != '{') return false;
  ++p;
  for (;;) {
    p = skip_ws(p, e);
    if (p < e && *p == '}') return true;
    if (p >= e || *p != '"') return false;
    const char* ks = p + 1; const char* ke = skip_string(p, e);
    if (!ke) return false;
    p = skip_ws(ke, e);
    if (p >= e || *p != ':') return false;
    const char* vs = skip_ws(p + 1, e); const char* ve = skip_value(vs, e);
    if (!ve) return false;
    f(std::string_view(ks, ke - 1 - ks), std::string_view(vs, ve - vs));
    p = skip_ws(ve, e);
    if (p < e && *p == ',') { ++p; continue; }
    return p < e && *p == '}';
  }
}

void queue_text(Conn* c, const std::string& s) {
  wslay_event_msg m{WSLAY_TEXT_FRAME, reinterpret_cast<const uint8_t*>(s.data()), s.size()};
  wslay_event_queue_msg(c->ws, &m);
}

// one unmasked server text frame
std::string frame(std::string_view payload) {
  std::string f;
  f.push_back((char)0x81);
  size_t n = payload.size();
  if (n < 126) f.push_back((char)n);
  else if (n < 65536) { f.push_back((char)126); f.push_back((char)(n >> 8)); f.push_back((char)n); }
  else { f.push_back((char)127); for (int i = 7; i >= 0; --i) f.push_back((char)(n >> (8 * i))); }
  f.append(payload);
  return f;
}

void on_message(Conn* c, std::string_view msg) {
  std::string_view type, data = "null", id;
  bool has_id = false;
  if (!members(msg, [&](std::string_view k, std::string_view v) {
        if (k == "type") type = v;
        else if (k == "data") data = v;
        else if (k == "id") { id = v; has_id = true; }
      }) || type.size() < 2) {
    queue_text(c, "{\"type\":\"error\",\"data\":{\"type\":\"INVALID_MESSAGE\",\"message\":\"not JSON\"}}");
    return;
  }
  type = type.substr(1, type.size() - 2);
  std::string reply(data);
  if (type == "join" || type == "fanout") {
    std::string room;
    members(data, [&](std::string_view k, std::string_view v) { if (k == "room" && v.size() >= 2 && v[0] == '"') room = v.substr(1, v.size() - 2); });
    if (type == "join" && !room.empty()) {
      rooms[room].push_back(c);
      c->rooms.push_back(room);
      reply = "{\"joined\":\"" + room + "\"}";
    } else if (type == "fanout") {
      auto it = rooms.find(room);
      if (it != rooms.end()) {
        std::string f = frame("{\"type\":\"fanout\",\"data\":" + std::string(data) + "}");
        for (Conn* m : it->second) {
          if (m == c || m->closing) continue;
          uv_stream_t* st = reinterpret_cast<uv_stream_t*>(&m->tcp);
          if (m->out.empty() && uv_stream_get_write_queue_size(st) == 0) {   // straight from the shared frame
            uv_buf_t b = uv_buf_init(f.data(), f.size());
            int r = uv_try_write(st, &b, 1);
            if (r == (int)f.size()) continue;
            if (r < 0 && r != UV_EAGAIN) { close_conn(m); continue; }
            m->out.append(f, r > 0 ? (size_t)r : 0, std::string::npos);
          } else {
            m->out += f;
          }
          flush(m);
        }
      }
      reply = "null";
    }
  }
  if (has_id && id != "null") queue_text(c, "{\"id\":" + std::string(id) + ",\"data\":" + reply + "}");
}

ssize_t ws_recv(wslay_event_context_ptr ctx, uint8_t* buf, size_t len, int, void* ud) {
  Conn* c = static_cast<Conn*>(ud);
  if (c->rlen == 0) { wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK); return -1; }
  size_t n = std::min(len, c->rlen);
  memcpy(buf, c->rptr, n);
  c->rptr += n; c->rlen -= n;
  return (ssize_t)n;
}
ssize_t ws_send(wslay_event_context_ptr, const uint8_t* data, size_t len, int, void* ud) {
  static_cast<Conn*>(ud)->out.append(reinterpret_cast<const char*>(data), len);
  return (ssize_t)len;
}
void ws_on_msg(wslay_event_context_ptr, const wslay_event_on_msg_recv_arg* a, void* ud) {
  if (a->opcode == WSLAY_TEXT_FRAME) on_message(static_cast<Conn*>(ud), std::string_view(reinterpret_cast<const char*>(a->msg), a->msg_length));
}
const wslay_event_callbacks callbacks = {ws_recv, ws_send, nullptr, nullptr, nullptr, nullptr, ws_on_msg};

void feed_ws(Conn* c, const uint8_t* p, size_t n) {
  c->rptr = p; c->rlen = n;
  if (wslay_event_recv(c->ws) != 0) { close_conn(c); return; }
  wslay_event_send(c->ws);
  flush(c);
  if (!wslay_event_want_read(c->ws) && !wslay_event_want_write(c->ws)) close_conn(c);
}

std::string header(std::string_view head, std::string_view name) {  // name in lower case
  size_t p = 0;
  while ((p = head.find("\r\n", p)) != std::string_view::npos) {
    p += 2;
    if (head.size() - p < name.size() + 1) break;
    bool eq = true;
    for (size_t i = 0; i < name.size() && eq; ++i) eq = (char)tolower((unsigned char)head[p + i]) == name[i];
    if (eq && head[p + name.size()] == ':') {
      size_t v = p + name.size() + 1, e = head.find("\r\n", v);
      while (v < e && head[v] == ' ') ++v;
      return std::string(head.substr(v, e - v));
    }
  }
  return {};
}

void on_http(Conn* c) {
  for (;;) {
    size_t e = c->in.find("\r\n\r\n");
    if (e == std::string::npos) { if (c->in.size() > 16384) close_conn(c); return; }
    std::string_view head(c->in.data(), e + 2);
    size_t sp1 = head.find(' '), sp2 = head.find(' ', sp1 + 1);
    std::string_view method = head.substr(0, sp1), path = head.substr(sp1 + 1, sp2 - sp1 - 1);
    if (path == ws_path && !header(head, "sec-websocket-key").empty()) {
      std::string key = header(head, "sec-websocket-key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
      unsigned char sha[20], acc[32]; size_t olen = 0;
      mbedtls_sha1_ret(reinterpret_cast<const unsigned char*>(key.data()), key.size(), sha);
      mbedtls_base64_encode(acc, sizeof acc, &olen, sha, 20);
      c->out += "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ";
      c->out.append(reinterpret_cast<char*>(acc), olen);
      c->out += "\r\n\r\n";
      std::string rest = c->in.substr(e + 4);
      c->in.clear(); c->in.shrink_to_fit();
      wslay_event_context_server_init(&c->ws, &callbacks, c);
      if (!rest.empty()) feed_ws(c, reinterpret_cast<const uint8_t*>(rest.data()), rest.size());
      else flush(c);
      return;
    }
    const char* body; const char* ct = "application/json";
    int status = 200;
    if (method == "GET" && path == "/health") body = "{\"status\":\"healthy\",\"version\":\"bare\"}";
    else if (method == "GET" && path == "/bench/hello") { body = "hello\n"; ct = "text/plain"; }
    else { status = 404; body = "{\"error\":{\"type\":\"NOT_FOUND\",\"message\":\"no route\"}}"; }
    char buf[256];
    int l = snprintf(buf, sizeof buf, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n\r\n%s", status,
                     status == 200 ? "OK" : "Not Found", ct, strlen(body), body);
    c->out.append(buf, l);
    c->in.erase(0, e + 4);   // bodies are not expected
  }
}

char readbuf[256 * 1024];
void on_read(uv_stream_t* s, ssize_t n, const uv_buf_t*) {
  Conn* c = static_cast<Conn*>(s->data);
  if (n < 0) { close_conn(c); return; }
  if (n == 0) return;
  if (c->ws) { feed_ws(c, reinterpret_cast<const uint8_t*>(readbuf), (size_t)n); return; }
  c->in.append(readbuf, n);
  on_http(c);
  flush(c);
}

void on_conn(uv_stream_t* server, int status) {
  if (status < 0) return;
  Conn* c = new Conn;
  uv_tcp_init(loop, &c->tcp);
  c->tcp.data = c;
  if (uv_accept(server, reinterpret_cast<uv_stream_t*>(&c->tcp)) != 0) { close_conn(c); return; }
  uv_tcp_nodelay(&c->tcp, 1);
  uv_read_start(reinterpret_cast<uv_stream_t*>(&c->tcp), [](uv_handle_t*, size_t, uv_buf_t* b) { *b = uv_buf_init(readbuf, sizeof readbuf); }, on_read);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) { fprintf(stderr, "usage: baresrv PORT [WS_PATH]\n"); return 1; }
  int port = atoi(argv[1]);
  if (argc > 2) ws_path = argv[2];
  signal(SIGPIPE, SIG_IGN);
  loop = uv_default_loop();
  uv_tcp_t server;
  uv_tcp_init(loop, &server);
  sockaddr_in a{};
  uv_ip4_addr("127.0.0.1", port, &a);
  if (uv_tcp_bind(&server, reinterpret_cast<sockaddr*>(&a), 0) || uv_listen(reinterpret_cast<uv_stream_t*>(&server), 4096, on_conn)) {
    fprintf(stderr, "baresrv: cannot listen on %d\n", port);
    return 1;
  }
  printf("listening %d\n", port);
  fflush(stdout);
  uv_signal_t st;
  uv_signal_init(loop, &st);
  uv_signal_start(&st, [](uv_signal_t*, int) { _exit(0); }, SIGTERM);
  uv_run(loop, UV_RUN_DEFAULT);
  return 0;
}
