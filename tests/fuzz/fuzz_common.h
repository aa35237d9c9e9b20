// Shared fixture of linkd's libFuzzer harnesses (tests/fuzz/*.cc).
//
// A harness includes linkd.c++ itself (LINKD_NO_MAIN leaves main out), so
// what is fuzzed is the daemon's own code, not a copy. The fixture runs
// linkd's real listeners (listen_tcp on 127.84.70.1:0, listen_unix on a socket
// in /tmp): clients and services are real sockets that linkd accepts with its
// own callbacks and reads with its own read callbacks, driven by
// uv_run(UV_RUN_NOWAIT). Every input gets fresh tables (tables_init ..
// tables_free), so no input sees another's state and a crash reproduces
// from its one file.
//
// At the end of every input everything is closed and linkd's bookkeeping is
// checked the way main checks it at shutdown (every slot free, every count
// zero): a leak in the tables aborts like a crash.

#ifndef LINKD_NO_MAIN
#define LINKD_NO_MAIN
#endif
#ifndef LINKD_FUZZ
#define LINKD_FUZZ
#endif
#include "../../linkd.c++"

#include <arpa/inet.h>
#include <sanitizer/common_interface_defs.h>
#include <netinet/in.h>
#include <poll.h>
#include <string>
#include <vector>

namespace {
namespace fz {

// A broken fixture or table left dirty: abort (a crash for libFuzzer). The
// message goes through the sanitizers' report channel too, which
// -close_fd_mask=2 (linkd's log lines dropped) leaves open.
[[noreturn]] void die(const char* what) {
  char msg[300];
  snprintf(msg, sizeof msg, "fuzz fixture: %s (http %u, ws %u, slots used %u)", what, g.http_count, g.ws_count, g.conn_hw);
  fprintf(stderr, "%s\n", msg);
  __sanitizer_report_error_summary(msg);
  abort();
}

// Our end of a socket whose other end linkd holds.
struct Peer {
  int fd = -1;
  std::string in;         // bytes read and not yet parsed (service links)
  size_t got = 0;         // bytes read in all
};

std::vector<Peer> clients, services;
int port;                 // linkd's client listener
char sock_path[96];       // linkd's service socket
bool progress;            // set when bytes moved during the current settle round
bool read_clients = true; // false: clients do not read (linkd's output backs up)
uint64_t skew;            // ms the harness's clock is ahead of the loop's (later, time_passes)

// Called for each whole frame linkd sends a service (the member's tag and
// its bytes); a harness sets it to answer requests.
void (*on_service_frame)(size_t svc, uint32_t tag, const uint8_t* p, size_t n);

void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

// --- linkd, once per process -------------------------------------------------

// Small tables: every input builds and frees them.
void config_defaults() {
  cfg.log_level = 3;                  // every LOG's arguments are formatted
  cfg.max_connections = 16;
  cfg.max_http_connections = 8;
  cfg.max_rooms = 32;
  cfg.max_memberships = 48;
  cfg.max_services = 4;
  cfg.max_message_size = 8192;
  cfg.max_header_size = 4096;
  cfg.max_body_size = 8192;
  cfg.max_frame_size = 65536;
  cfg.max_outbound = 16384;
  snprintf(cfg.jwt_secret, sizeof cfg.jwt_secret, "fuzz-secret");
  snprintf(cfg.allowed_origins, sizeof cfg.allowed_origins, "https://app.example, http://localhost:3000");
}

void unlink_socket() { unlink(sock_path); }

// Listeners and loop handles live for the whole process.
void init() {
  signal(SIGPIPE, SIG_IGN);
  // An address of the loopback net nobody else uses: other processes on
  // this machine (tests that probe ports) never reach this listener.
  snprintf(cfg.listen, sizeof cfg.listen, "127.84.70.1:0");
  snprintf(sock_path, sizeof sock_path, "/tmp/linkd-fuzz.%d.sock", (int)getpid());
  snprintf(cfg.socket_path, sizeof cfg.socket_path, "%s", sock_path);
  g.loop = uv_default_loop();
  http_settings_init();
  if (listen_tcp(cfg.listen, &g.listener, &g.listening) || listen_unix()) die("cannot listen");
  atexit(unlink_socket);
  sockaddr_storage ss;
  int len = sizeof ss;
  uv_tcp_getsockname(&g.listener, (sockaddr*)&ss, &len);
  port = ntohs(((sockaddr_in*)&ss)->sin_port);
  uv_timer_init(g.loop, &g.pend_timer);
  uv_timer_init(g.loop, &g.tick);
  uv_check_init(g.loop, &g.flush);
  uv_check_start(&g.flush, backends_flush_cb);
}

// --- moving bytes --------------------------------------------------------------

// Reads what linkd wrote to a peer: services keep it for parsing, clients'
// bytes are counted and dropped (unless keep).
// FUZZ_TRACE=1 in the environment prints them (to see what an input does).
bool trace = getenv("FUZZ_TRACE") != nullptr;

void trace_bytes(const char* who, const char* p, size_t n) {
  fprintf(stderr, "%s %zu bytes: ", who, n);
  for (size_t i = 0; i < n && i < 600; i++)
    if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\\') fputc(p[i], stderr);
    else fprintf(stderr, "\\x%02x", (unsigned char)p[i]);
  fputs(n > 600 ? "...\n" : "\n", stderr);
}

void drain(Peer& p, bool keep) {
  char buf[65536];
  for (;;) {
    ssize_t r = read(p.fd, buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return;
    if (trace) trace_bytes(keep ? "<- to service" : "<- to client", buf, (size_t)r);
    progress = true;
    p.got += (size_t)r;
    if (keep) p.in.append(buf, (size_t)r);
  }
}

uint64_t read_varint(const uint8_t* p, size_t n, size_t* k) {
  uint64_t v = 0;
  for (*k = 0; *k < n && *k < 10; (*k)++) {
    v |= (uint64_t)(p[*k] & 0x7f) << (7 * *k);
    if (!(p[*k] & 0x80)) { (*k)++; return v; }
  }
  *k = 0;   // incomplete
  return 0;
}

// Hands every whole frame linkd sent service s to on_service_frame.
void service_frames(size_t s) {
  Peer& p = services[s];
  size_t off = 0;
  for (;;) {
    const uint8_t* b = (const uint8_t*)p.in.data() + off;
    size_t n = p.in.size() - off, k;
    uint64_t len = read_varint(b, n, &k);
    if (!k || n - k < len) break;
    const uint8_t* f = b + k;
    size_t k2, k3;
    uint64_t key = read_varint(f, (size_t)len, &k2);
    uint64_t sub = k2 ? read_varint(f + k2, (size_t)len - k2, &k3) : 0;
    if (!k2 || !k3 || (key & 7) != 2 || k2 + k3 + sub != len) die("linkd sent a malformed service frame");
    if (on_service_frame) on_service_frame(s, (uint32_t)(key >> 3), f + k2 + k3, (size_t)sub);
    off += k + (size_t)len;
  }
  p.in.erase(0, off);
}

void drain_all() {
  if (read_clients)
    for (Peer& c : clients) drain(c, false);
  for (size_t s = 0; s < services.size(); s++) {
    drain(services[s], true);
    service_frames(s);
  }
}

// Writes what the socket takes now (it is non-blocking); returns that.
size_t send_bytes(int fd, const void* p, size_t n) {
  if (trace) trace_bytes("->", (const char*)p, n);
  size_t done = 0;
  while (done < n) {
    ssize_t r = write(fd, (const char*)p + done, n - done);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    done += (size_t)r;
  }
  if (done) progress = true;
  return done;
}

void spin(int rounds = 2) {
  for (int i = 0; i < rounds; i++) {
    uv_run(g.loop, UV_RUN_NOWAIT);
    drain_all();
  }
}

// Runs the loop until nothing moves for two rounds (bounded).
void settle(int max_rounds = 64) {
  int idle = 0;
  for (int i = 0; i < max_rounds && idle < 2; i++) {
    progress = false;
    spin(1);
    idle = progress ? 0 : idle + 1;
  }
}

// --- clients and services ------------------------------------------------------

// Runs the loop until done() (an accept): at once as a rule, but a loaded
// machine may finish a loopback handshake later (softirq deferred), so
// it waits up to 2 s before the caller gives up.
template <class Done>
void wait_until(Done done) {
  for (int i = 0; i < 2000 && !done(); i++) {
    uv_run(g.loop, UV_RUN_NOWAIT);
    if (!done() && i >= 20) usleep(1000);
  }
}

// Connects the (then non-blocking) socket fd, or dies saying why.
// libFuzzer's timers interrupt system calls (EINTR), so the connect is
// non-blocking and awaited with poll; other processes on this machine may
// use up the loopback's ephemeral ports for a while (connection churn
// tests): it waits for one, up to 10 s.
void connect_to(int fd, const sockaddr* a, socklen_t n, const char* what) {
  char why[120];
  if (fd < 0) { snprintf(why, sizeof why, "%s: socket: %s", what, strerror(errno)); die(why); }
  set_nonblock(fd);
  int r = -1, err = 0;
  for (int i = 0; i < 1000; i++) {
    r = connect(fd, a, n);
    if (r == 0 || (errno != EADDRNOTAVAIL && errno != EAGAIN)) break;
    usleep(10000);
  }
  if (r && (errno == EINPROGRESS || errno == EINTR)) {
    pollfd p{fd, POLLOUT, 0};
    for (int i = 0; i < 100 && poll(&p, 1, 100) <= 0; i++) {}
    socklen_t el = sizeof err;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
    r = (p.revents & POLLOUT) && !err ? 0 : -1;
    if (!err && r) err = ETIMEDOUT;
  } else if (r) {
    err = errno;
  }
  if (r) { snprintf(why, sizeof why, "%s: %s", what, strerror(err)); die(why); }
}

uint32_t conns_in_use() {
  uint32_t n = 0;
  for (uint32_t i = 0; i < g.conn_hw; i++) n += g.conns[i].state != CState::Free;
  return n;
}

// A TCP client accepted by tcp_connection_cb. Closed with RST at the end of
// the input (SO_LINGER 0), so no port waits in TIME_WAIT. small: small
// socket buffers both ways, so that what the client does not read backs up
// in linkd's write queue (the outbound cap) after a few KiB.
size_t client_open(bool small = false, bool may_refuse = false) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(0x7f544601);   // 127.84.70.1, as in init
  int sz = 4096;
  if (small) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
  connect_to(fd, (sockaddr*)&a, sizeof a, "client connect");
  linger lg{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  // linkd's connection for this client: the one whose peer port is ours
  sockaddr_in self{};
  socklen_t sl = sizeof self;
  getsockname(fd, (sockaddr*)&self, &sl);
  uint16_t me = ntohs(self.sin_port);
  auto mine = [&]() -> Conn* {
    for (uint32_t i = 0; i < g.conn_hw; i++)
      if (g.conns[i].state == CState::Http && g.conns[i].family == 4 && g.conns[i].port == me) return &g.conns[i];
    return nullptr;
  };
  if (may_refuse) settle();   // a full table answers 503 and closes
  else wait_until([&] { return mine() != nullptr; });
  Conn* lc = mine();
  if (!lc && !may_refuse) die("client not accepted");
  if (lc && small) uv_send_buffer_size((uv_handle_t*)&lc->tcp, &sz);
  clients.push_back(Peer{fd, {}, 0});
  return clients.size() - 1;
}

// A masked client frame (mask key 0: the payload reads as it is).
std::string ws_frame_masked(uint8_t opcode, const std::string& payload) {
  std::string f;
  f.push_back((char)(0x80 | opcode));
  size_t n = payload.size();
  if (n < 126) f.push_back((char)(0x80 | n));
  else { f.push_back((char)(0x80 | 126)); f.push_back((char)(n >> 8)); f.push_back((char)n); }
  f.append(4, '\0');
  return f + payload;
}

// A client upgraded on `path` (token: Authorization: Bearer, if any).
size_t ws_client_open(const char* path, const std::string& token, bool deflate, bool small = false) {
  size_t c = client_open(small);
  std::string req = std::string("GET ") + path + " HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
  if (!token.empty()) req += "Authorization: Bearer " + token + "\r\n";
  if (deflate) req += "Sec-WebSocket-Extensions: permessage-deflate\r\n";
  req += "\r\n";
  send_bytes(clients[c].fd, req.data(), req.size());
  settle();
  return c;
}

// A service link accepted by svc_connection_cb.
size_t service_open() {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  snprintf(a.sun_path, sizeof a.sun_path, "%s", sock_path);
  connect_to(fd, (sockaddr*)&a, sizeof a, "service connect");
  uint32_t before = backends_open();
  wait_until([&] { return backends_open() != before; });
  if (backends_open() == before) die("service link not accepted");
  services.push_back(Peer{fd, {}, 0});
  return services.size() - 1;
}

void put_varint(std::string& s, uint64_t v) {
  while (v >= 0x80) { s.push_back((char)(v | 0x80)); v >>= 7; }
  s.push_back((char)v);
}

// One delimited ServiceMessage whose member `tag` is msg (nanopb).
std::string frame(uint32_t tag, const pb_msgdesc_t* fields, const void* msg) {
  size_t sub;
  if (!pb_get_encoded_size(&sub, fields, msg)) die("cannot size a frame");
  std::string body(sub, '\0');
  pb_ostream_t os = pb_ostream_from_buffer((pb_byte_t*)body.data(), sub);
  if (!pb_encode(&os, fields, msg)) die("cannot encode a frame");
  std::string inner;
  put_varint(inner, (uint64_t)tag << 3 | 2);
  put_varint(inner, sub);
  inner += body;
  std::string out;
  put_varint(out, inner.size());
  return out + inner;
}

void service_send(size_t s, const std::string& f) { send_bytes(services[s].fd, f.data(), f.size()); }

// --- registration ---------------------------------------------------------------

struct RouteSpec {
  const char* method;
  const char* path;
  bool auth;
  const char* role;       // null: none
  const char* cors;       // null: none
};

bool enc_route_list(pb_ostream_t* s, const pb_field_t* f, void* const* arg) noexcept {
  for (const RouteSpec* r = (const RouteSpec*)*arg; r && r->method; r++) {
    linkd_HttpRoute h = {};
    snprintf(h.method, sizeof h.method, "%s", r->method);
    snprintf(h.path, sizeof h.path, "%s", r->path);
    h.auth = r->auth;
    if (r->role) { snprintf(h.roles[0], sizeof h.roles[0], "%s", r->role); h.roles_count = 1; }
    if (r->cors) { snprintf(h.cors_origins[0], sizeof h.cors_origins[0], "%s", r->cors); h.cors_origins_count = 1; }
    if (!pb_encode_tag_for_field(s, f) || !pb_encode_submessage(s, linkd_HttpRoute_fields, &h)) return false;
  }
  return true;
}

struct WsSpec {
  const char* path;       // null: no WebSocket
  bool compression, auth, raw;
  uint32_t max_msg;
  uint32_t recovery_ms = 0;      // connection recovery window (0: none)
  uint32_t recovery_history = 0; // room pushes kept for the replay
};

// Opens a link, registers `name` on it and waits for the answer. max_in:
// the largest frame the service says it reads (0: linkd's limit).
size_t service_register(const char* name, const RouteSpec* routes, WsSpec ws, uint32_t max_in = 0) {
  size_t s = service_open();
  linkd_RegisterService m = {};
  snprintf(m.name, sizeof m.name, "%s", name);
  m.max_inbound_frame_bytes = max_in;
  snprintf(m.version, sizeof m.version, "1.0");
  m.routes.funcs.encode = enc_route_list;
  m.routes.arg = (void*)routes;
  if (ws.path) {
    m.has_websocket = true;
    m.websocket.enabled = true;
    snprintf(m.websocket.path, sizeof m.websocket.path, "%s", ws.path);
    m.websocket.compression = ws.compression;
    m.websocket.auth_required = ws.auth;
    m.websocket.raw = ws.raw;
    m.websocket.max_message_size_bytes = ws.max_msg;
    if (ws.recovery_ms) {
      m.websocket.has_recovery = true;
      m.websocket.recovery.window_ms = ws.recovery_ms;
      m.websocket.recovery.history = ws.recovery_history;
    }
  }
  service_send(s, frame(TAG_REGISTER, linkd_RegisterService_fields, &m));
  settle();
  return s;
}

// --- tokens ---------------------------------------------------------------------

std::string b64url(const void* p, size_t n) {
  std::string out(4 * ((n + 2) / 3) + 1, '\0');
  size_t olen = 0;
  mbedtls_base64_encode((unsigned char*)out.data(), out.size(), &olen, (const unsigned char*)p, n);
  out.resize(olen);
  std::string r;
  for (char ch : out) if (ch != '=') r.push_back(ch == '+' ? '-' : ch == '/' ? '_' : ch);
  return r;
}

// An HS256 token with these claims, signed with cfg.jwt_secret.
std::string hs256(const std::string& header, const std::string& claims) {
  std::string signing = b64url(header.data(), header.size()) + "." + b64url(claims.data(), claims.size());
  unsigned char mac[32];
  mbedtls_md_hmac(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), (const unsigned char*)cfg.jwt_secret, strlen(cfg.jwt_secret),
                  (const unsigned char*)signing.data(), signing.size(), mac);
  return signing + "." + b64url(mac, 32);
}

std::string user_token(const char* sub, const char* role) {
  char claims[256];
  snprintf(claims, sizeof claims, "{\"sub\":\"%s\",\"preferred_username\":\"%s\",\"roles\":[\"%s\"],\"exp\":4102444800}", sub, sub, role);
  return hs256("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", claims);
}

// --- shutdown -------------------------------------------------------------------

// SIGTERM, then the shutdown deadline, as tick_cb would run them; the
// listeners shutdown_begin closed are opened again for the next input.
void stop_linkd() {
  if (g.shutting_down) return;
  shutdown_begin("fuzz");
  uv_timer_stop(&g.tick);   // the harness drives the steps itself
  settle();
  shutdown_tell_services();
  settle();
}

void restart_listeners() {
  if (!g.shutting_down) return;
  g.shutting_down = g.services_told = false;
  if (uv_is_closing((uv_handle_t*)&g.listener) || uv_is_closing((uv_handle_t*)&g.svc_listener)) settle();
  if (listen_tcp(cfg.listen, &g.listener, &g.listening) || listen_unix()) die("cannot listen again");
  sockaddr_storage ss;
  int len = sizeof ss;
  uv_tcp_getsockname(&g.listener, (sockaddr*)&ss, &len);
  port = ntohs(((sockaddr_in*)&ss)->sin_port);
}


// --- per input ------------------------------------------------------------------

void begin() {
  tables_init();
  g.nroutes = 0;
  g.req_seq = 0;          // request ids and connection ids repeat from input to input
  g.conn_gen = 0;
  g.except_serial = 0;
  skew = 0;
  memset(g.http_status, 0, sizeof g.http_status);
  g.http_bytes_in = g.http_bytes_out = 0;
  g.ws_msgs_in = g.ws_msgs_out = g.ws_bytes_in = g.ws_bytes_out = g.ws_drops = 0;
  g.ws_accepted = g.svc_frames_in = g.svc_frames_out = g.svc_errors = 0;
  progress = false;
}

// The 1 s tick as if `ms` more had passed since the last call in this
// input (the clock linkd's housekeeping is given runs ahead of the loop's).
void later(uint64_t ms) {
  skew += ms;
  housekeeping(now_ms() + skew);
  settle();
}

// What housekeeping and the pending timer would do later: time runs on by
// `ms`, every reply still owed expires.
void time_passes(uint64_t ms) {
  skew += ms;
  housekeeping(now_ms() + skew);
  settle();
  for (int i = 0; i < 64 && g.pend_head != NIL; i++) { pend_expire(g.pend_head, true); settle(); }
}

bool all_free() {
  for (uint32_t i = 0; i < g.conn_hw; i++) if (g.conns[i].state != CState::Free) return false;
  for (uint32_t i = 0; i < g.nbackends; i++) if (g.backends[i].state != BState::Free) return false;
  return true;
}

// Closes everything (clients with RST first, then services, then whatever
// linkd still holds), checks the tables are empty and frees them.
void end() {
  restart_listeners();
  for (Peer& c : clients) close(c.fd);
  clients.clear();
  spin(2);
  for (Peer& s : services) close(s.fd);
  services.clear();
  spin(2);
  for (int i = 0; i < 100 && !all_free(); i++) {
    for (uint32_t k = 0; k < g.conn_hw; k++) conn_close(&g.conns[k], "fuzz: end of input");
    for (uint32_t k = 0; k < g.nbackends; k++) backend_close(&g.backends[k], "fuzz: end of input");
    uv_run(g.loop, UV_RUN_NOWAIT);
  }
  if (!all_free()) die("connection or service slots not freed after close");
  backends_flush_cb(nullptr);
  uv_timer_stop(&g.pend_timer);
  char why[200];
  if (g.ws_count || g.http_count || g.room_count || g.member_count || g.pend_count || g.pend_head != NIL || g.ghost_count || g.linger_count) {
    snprintf(why, sizeof why, "state left: ws %u http %u rooms %u memberships %u pending %u ghosts %u lingering %u", g.ws_count, g.http_count,
             g.room_count, g.member_count, g.pend_count, g.ghost_count, g.linger_count);
    die(why);
  }
  for (uint32_t i = 0; i < g.tally_hw; i++)
    if (g.tallies[i].count) die("a per-IP/per-user tally is left");
  tables_free();
}

}  // namespace fz
}  // namespace
