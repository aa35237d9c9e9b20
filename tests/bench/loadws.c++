// loadws: a WebSocket load generator for Linkd's benchmarks (and any server
// speaking the same JSON envelope). One libuv loop, wslay in client mode.
//
//   loadws --url ws://127.0.0.1:PORT/path [options] idle|echo|fanout|churn
//   loadws --url wss://127.0.0.1:PORT/path [options] idle|echo|fanout|churn|handshake
//
// idle    open N connections (ramping, at most --concurrency handshakes in
//         flight), report how long it took, hold them (--hold seconds, or
//         until SIGUSR1/SIGTERM), then exit.
// echo    M connections; each keeps D messages in flight
//         {"type":"echo","data":{"n":K,"p":"..."},"id":"K"} and awaits
//         {"id":"K","data":...}. Reports msgs/s and p50/p99/max latency over
//         the measured window (after a warm-up).
// fanout  N connections join one room ({"type":"join","data":{"room":R},
//         "id":"j"}, awaiting its reply); then, per round, connection 0 sends
//         {"type":"fanout","data":{"room":R,"seq":S}} and the time from that
//         send until the last member received {"type":"fanout",...,"seq":S}
//         is measured. Reports every round and the median.
// churn   N slots; each one, over and over for -t seconds: opens a
//         connection, sends {"type":"echo","data":{"n":K},"id":"K"}, awaits
//         the reply (with --churn-rooms R: {"type":"join","data":{"room":
//         "churnK"}} to one of R rooms instead, which benchsvc answers after
//         the join), holds the connection for a random time up to
//         --churn-hold seconds (so that many are open at once), and closes,
//         in turn with a close handshake (1000), by dropping the TCP
//         connection (FIN) and by a reset (RST); then opens again. At most --concurrency handshakes in flight. Once the time is
//         up no slot opens again; when every connection is closed it reports
//         how many were opened, exchanged and closed each way, and failures.
//
// handshake  (wss:// only) -c M connections at a time, for -t seconds after
//         --warmup: connect, complete the TLS handshake, reset the connection
//         (no TIME_WAIT left behind), again. Reports full TLS handshakes/s;
//         with --resume every connection after the first offers the session
//         (ticket) of the first one, and resumed ones are counted apart.
//
// wss:// runs every mode over TLS 1.2 with mbedTLS on the same libuv loop:
// ciphertext read from the socket is handed to mbedTLS from memory and what
// it writes goes out through the same write path (as linkd does). The
// client offers ECDHE (X25519, P-256) with AES-128-GCM, so that every server
// is measured with the same suite; --ca FILE verifies the server's
// certificate (name: --sni, default localhost), else it is not verified.
//
// --proto socketio: speak Engine.IO 4 / Socket.IO 5 framing instead of the
// JSON envelope (for a Socket.IO server with the websocket transport only;
// the URL is then ws://HOST:PORT/socket.io/?EIO=4&transport=websocket). A
// connection counts as open once the namespace answered "40" to our "40";
// pings "2" are answered "3". The same work in that framing:
//   echo   42K["echo",{"n":K,"p":"..."}]      -> ack 43K[{...}]
//   join   421["join",{"room":R}]             -> ack 431[{"joined":R}]
//   fanout 42["fanout",{"room":R,"seq":S,...}] -> every member gets 42["fanout",{...}]
// (idle, echo and fanout modes only.)
// --join-inflight K (fanout): at most K joins awaiting their reply.
// --joined FILE (fanout): once joined, write FILE and wait for SIGUSR1;
// then --round-at MS,MS,... puts round k at the k-th offset, so that
// several loadws against several servers, signalled at
// once, take turns round by round and share the same background load. The
// RESULT lines add first_median_ms / first_each: until the first member
// had the push (the trigger's way through the server and its service).
// --except-sender (fanout): the trigger connection is not counted as a
// member (for servers that push to the room except the sender); a copy it
// gets anyway is ignored.
//
// --done FILE: once the results are printed, write FILE and keep the
// connections open until SIGUSR1/SIGTERM (30 s at most).
// --ready FILE: once every connection is open (or failed), write
// "connected=X failed=Y" to FILE and wait for SIGUSR1 (or --hold seconds)
// before going on; lets a script read the server's memory at N idle
// connections.
//
// Results are printed as "key=value" lines prefixed with "RESULT ".
// The tool never fails on a time; it exits 1 only on bad usage, 3 when
// nothing could be measured (no connection opened).
#include <uv.h>
#include <wslay/wslay.h>
#include <mbedtls/sha1.h>
#include <mbedtls/base64.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_internal.h>   // ssl->handshake->resume: was this handshake a resumption
#include <mbedtls/x509_crt.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

namespace {

// ---- options ---------------------------------------------------------------
struct Options {
  std::string host = "127.0.0.1";
  int port = 3000;
  std::string path = "/";
  std::string mode;
  int n = 10000;            // idle / fanout connections
  int m = 50;               // echo connections
  int depth = 8;            // echo pipelining depth per connection
  double seconds = 10;      // echo measured window
  double warmup = 1;        // echo warm-up
  int rounds = 5;           // fanout rounds
  int size = 64;            // echo / fanout pad bytes
  int concurrency = 200;    // handshakes in flight
  int src_ips = 1;          // 127.0.0.1 .. 127.0.0.K as source addresses
  double hold = -1;         // idle: seconds to hold (-1: until a signal)
  double churn_hold = 0;    // churn: hold each connection up to this long after its exchange
  int churn_rooms = 0;      // churn: join one of this many rooms instead of an echo
  double timeout = 120;     // overall bound
  std::string room = "bench";
  std::string ready_file;
  std::string done_file;
  bool quiet = false;
  bool tls = false;         // wss://
  bool resume = false;      // handshake: offer the first connection's session
  std::string ca_file;      // verify the server with these CAs (else no verification)
  std::string sni = "localhost";
  bool socketio = false;    // --proto socketio
  bool except_sender = false;  // fanout: the trigger is not a member
  int join_inflight = 0;    // fanout: at most this many joins awaiting their reply (0: all at once)
  std::string joined_file;  // fanout: once joined, write it and wait for SIGUSR1 before the rounds
  std::vector<double> round_at_ms;  // fanout: round k starts this long after the start (else 300 ms after the last)
} opt;

uv_loop_t* loop;
uint64_t now_ns() { return uv_hrtime(); }
double ms(uint64_t ns) { return ns / 1e6; }

// ---- connections -----------------------------------------------------------
enum State { CONNECTING, HANDSHAKE, OPEN, CLOSED };

struct Conn {
  uv_tcp_t tcp;
  uv_connect_t creq;
  wslay_event_context_ptr ws = nullptr;
  State state = CONNECTING;
  int idx = 0;
  char accept[32] = {0};    // expected Sec-WebSocket-Accept
  std::string hs;           // handshake response bytes so far
  const uint8_t* rptr = nullptr;  // the chunk wslay is reading from
  size_t rlen = 0;
  std::string out;          // bytes wslay produced, not yet handed to libuv
  bool tcp_inited = false;
  // echo
  uint64_t next_n = 0;
  std::deque<std::pair<uint64_t, uint64_t>> inflight;  // (n, send time)
  // fanout
  bool joined = false;
  int seen_round = 0;
  // wss
  mbedtls_ssl_context* ssl = nullptr;   // the TLS session (owner: this), or null for ws://
  bool tls_up = false;      // TLS handshake finished
  bool tls_resumed = false; // ... by resuming a session
  const uint8_t* trd = nullptr;  // ciphertext mbedTLS may read now
  size_t trdlen = 0;
  // churn
  int slot = -1;
  bool closing = false;     // we asked for the close (or dropped the connection)
  uint64_t hold_until = 0;  // exchanged; close at this time
  // socketio
  bool sio_wait = false;    // WebSocket up, Socket.IO namespace not yet connected
};

std::vector<Conn*> conns;
std::vector<Conn*> churn_slot;     // churn: the connection a slot has now (or nullptr)
int started = 0, pending = 0, opened = 0, failed = 0, closed_after_open = 0;
uint64_t t_connect_start = 0, t_connect_end = 0;
std::string first_error;

enum Phase { P_CONNECT, P_READY_WAIT, P_RUN, P_DONE } phase = P_CONNECT;

uv_timer_t ramp_timer, run_timer, deadline_timer;
uv_signal_t sig_usr1, sig_term, sig_int;

// echo
bool echo_sending = false, echo_measuring = false;
uint64_t echo_t0 = 0, echo_t1 = 0, echo_replies = 0, echo_errors = 0, echo_sent = 0;
std::vector<uint32_t> lat_us;
std::string pad;

// fanout
int fan_round = 0, fan_got = 0, fan_joined = 0, fan_members = 0;
Conn* fan_trig = nullptr;
uint64_t fan_t0 = 0;
std::vector<double> fan_ms;
std::vector<int> fan_recv;
std::vector<double> fan_first_ms;   // per round: until the first member had it (the hop), the rest is the write loop; -1: none
uint64_t fan_t_first = 0;
uint64_t fan_sched_t0 = 0;          // --round-at: when the schedule started (round k at t0 + its offset)

void start_phase_run();
void finish();
void flush(Conn* c);
void churn_end(Conn* c, const char* why);
void churn_on_open(Conn* c);
void churn_on_msg(Conn* c, const char* s, size_t n);
void sio_connected(Conn* c);

void note_error(const char* what) {
  if (first_error.empty()) first_error = what;
}

// ---- TLS client (wss://) ----------------------------------------------------
struct TlsClient {
  mbedtls_entropy_context entropy;
  mbedtls_ctr_drbg_context drbg;
  mbedtls_ssl_config conf;
  mbedtls_x509_crt ca;
  mbedtls_ssl_session saved;      // --resume: the session every later connection offers
  bool have_saved = false;
  uint64_t full = 0, resumed = 0, failed = 0;   // handshakes finished / failed
  std::string suite;              // the suite the first handshake got
} tlsc;

const int tls_suites[] = {MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, 0};
const mbedtls_ecp_group_id tls_curves[] = {MBEDTLS_ECP_DP_CURVE25519, MBEDTLS_ECP_DP_SECP256R1, MBEDTLS_ECP_DP_NONE};

bool tls_init() {
  mbedtls_entropy_init(&tlsc.entropy);
  mbedtls_ctr_drbg_init(&tlsc.drbg);
  mbedtls_ssl_config_init(&tlsc.conf);
  mbedtls_x509_crt_init(&tlsc.ca);
  mbedtls_ssl_session_init(&tlsc.saved);
  if (mbedtls_ctr_drbg_seed(&tlsc.drbg, mbedtls_entropy_func, &tlsc.entropy, nullptr, 0) ||
      mbedtls_ssl_config_defaults(&tlsc.conf, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT))
    return false;
  mbedtls_ssl_conf_rng(&tlsc.conf, mbedtls_ctr_drbg_random, &tlsc.drbg);
  mbedtls_ssl_conf_min_version(&tlsc.conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
  mbedtls_ssl_conf_ciphersuites(&tlsc.conf, tls_suites);
  mbedtls_ssl_conf_curves(&tlsc.conf, tls_curves);
  mbedtls_ssl_conf_session_tickets(&tlsc.conf, MBEDTLS_SSL_SESSION_TICKETS_ENABLED);
  if (!opt.ca_file.empty()) {
    if (mbedtls_x509_crt_parse_file(&tlsc.ca, opt.ca_file.c_str())) { fprintf(stderr, "loadws: cannot load %s\n", opt.ca_file.c_str()); return false; }
    mbedtls_ssl_conf_ca_chain(&tlsc.conf, &tlsc.ca, nullptr);
    mbedtls_ssl_conf_authmode(&tlsc.conf, MBEDTLS_SSL_VERIFY_REQUIRED);
  } else {
    mbedtls_ssl_conf_authmode(&tlsc.conf, MBEDTLS_SSL_VERIFY_NONE);
  }
  return true;
}

void raw_write(Conn* c, std::string&& data);
void conn_fail(Conn* c, const char* why);
void on_plain(Conn* c, const uint8_t* p, size_t n);
void send_upgrade(Conn* c);
void hs_done(Conn* c);

int tls_bio_send(void* ud, const unsigned char* p, size_t n) {
  raw_write(static_cast<Conn*>(ud), std::string(reinterpret_cast<const char*>(p), n));
  return (int)n;
}

int tls_bio_recv(void* ud, unsigned char* p, size_t n) {
  Conn* c = static_cast<Conn*>(ud);
  if (c->trdlen == 0) return MBEDTLS_ERR_SSL_WANT_READ;
  n = std::min(n, c->trdlen);
  memcpy(p, c->trd, n);
  c->trd += n;
  c->trdlen -= n;
  return (int)n;
}

void tls_fail(Conn* c, const char* what, int r) {
  char e[128];
  mbedtls_strerror(r, e, sizeof e);
  conn_fail(c, (std::string(what) + ": " + e).c_str());
}

// A connection is up: set up its TLS session and send the ClientHello.
bool tls_begin(Conn* c) {
  c->ssl = new mbedtls_ssl_context;
  mbedtls_ssl_init(c->ssl);
  int r = mbedtls_ssl_setup(c->ssl, &tlsc.conf);
  if (!r) r = mbedtls_ssl_set_hostname(c->ssl, opt.sni.c_str());
  if (!r && opt.resume && tlsc.have_saved) r = mbedtls_ssl_set_session(c->ssl, &tlsc.saved);
  if (r) { tls_fail(c, "TLS setup", r); return false; }
  mbedtls_ssl_set_bio(c->ssl, c, tls_bio_send, tls_bio_recv, nullptr);
  return true;
}

void tls_free(Conn* c) {
  if (!c->ssl) return;
  mbedtls_ssl_free(c->ssl);
  delete c->ssl;
  c->ssl = nullptr;
}

// Drives the handshake with what has arrived; on its end, the WebSocket
// upgrade (or, in handshake mode, the count and the reset).
void tls_handshake(Conn* c) {
  while (c->ssl->state != MBEDTLS_SSL_HANDSHAKE_OVER) {
    if (c->ssl->handshake && c->ssl->handshake->resume) c->tls_resumed = true;
    int r = mbedtls_ssl_handshake_step(c->ssl);
    if (r == MBEDTLS_ERR_SSL_WANT_READ || r == MBEDTLS_ERR_SSL_WANT_WRITE) return;
    if (r) { ++tlsc.failed; tls_fail(c, "TLS handshake", r); return; }
  }
  c->tls_up = true;
  if (c->tls_resumed) ++tlsc.resumed;
  else ++tlsc.full;
  if (tlsc.suite.empty()) tlsc.suite = mbedtls_ssl_get_ciphersuite(c->ssl);
  if (opt.resume && !tlsc.have_saved && mbedtls_ssl_get_session(c->ssl, &tlsc.saved) == 0) tlsc.have_saved = true;
  if (opt.mode == "handshake") { hs_done(c); return; }
  send_upgrade(c);
}

// Ciphertext from the socket: the handshake, then every record's plaintext.
void tls_feed(Conn* c, const uint8_t* p, size_t n) {
  static unsigned char plain[16 * 1024];
  c->trd = p;
  c->trdlen = n;
  if (!c->tls_up) {
    tls_handshake(c);
    if (!c->tls_up || c->state == CLOSED) { c->trdlen = 0; return; }
  }
  for (;;) {
    int r = mbedtls_ssl_read(c->ssl, plain, sizeof plain);
    if (r > 0) {
      on_plain(c, plain, (size_t)r);
      if (c->state == CLOSED) break;
      continue;
    }
    if (r == MBEDTLS_ERR_SSL_WANT_READ) break;
    if (r == 0 || r == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) conn_fail(c, "connection closed by server (close_notify)");
    else tls_fail(c, "TLS record", r);
    break;
  }
  c->trdlen = 0;
}

// Plaintext to the server: encrypted into records on wss://.
void conn_write(Conn* c, std::string&& data) {
  if (!c->ssl) { raw_write(c, std::move(data)); return; }
  for (size_t done = 0; done < data.size();) {
    int r = mbedtls_ssl_write(c->ssl, reinterpret_cast<const unsigned char*>(data.data()) + done, data.size() - done);
    if (r <= 0) { tls_fail(c, "TLS write", r); return; }
    done += (size_t)r;
  }
}

// ---- wslay callbacks -------------------------------------------------------
ssize_t ws_recv(wslay_event_context_ptr ctx, uint8_t* buf, size_t len, int, void* ud) {
  Conn* c = static_cast<Conn*>(ud);
  if (c->rlen == 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  size_t n = std::min(len, c->rlen);
  memcpy(buf, c->rptr, n);
  c->rptr += n;
  c->rlen -= n;
  return (ssize_t)n;
}

ssize_t ws_send(wslay_event_context_ptr, const uint8_t* data, size_t len, int, void* ud) {
  Conn* c = static_cast<Conn*>(ud);
  c->out.append(reinterpret_cast<const char*>(data), len);
  return (ssize_t)len;
}

uint64_t rng_state = 0x9e3779b97f4a7c15ull;
uint64_t rng() {  // xorshift64*
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 2685821657736338717ull;
}

int ws_genmask(wslay_event_context_ptr, uint8_t* buf, size_t len, void*) {
  for (size_t i = 0; i < len; i += 8) {
    uint64_t r = rng();
    memcpy(buf + i, &r, std::min<size_t>(8, len - i));
  }
  return 0;
}

void queue_text(Conn* c, const std::string& s) {
  wslay_event_msg m{WSLAY_TEXT_FRAME, reinterpret_cast<const uint8_t*>(s.data()), s.size()};
  wslay_event_queue_msg(c->ws, &m);
}

// Finds "key": in a JSON text and returns a pointer just after the colon.
const char* find_key(const char* s, size_t n, const char* key) {
  size_t kl = strlen(key);
  const char* end = s + n;
  for (const char* p = s; p + kl <= end; ++p) {
    p = static_cast<const char*>(memchr(p, key[0], end - p));
    if (!p || p + kl > end) return nullptr;
    if (memcmp(p, key, kl) == 0) return p + kl;
  }
  return nullptr;
}

uint64_t parse_uint(const char* p, const char* end) {
  while (p < end && (*p == ' ' || *p == '"')) ++p;
  uint64_t v = 0;
  while (p < end && *p >= '0' && *p <= '9') v = v * 10 + (*p++ - '0');
  return v;
}

void echo_send_one(Conn* c) {
  uint64_t n = ++c->next_n;
  char head[96];
  int hl = opt.socketio ? snprintf(head, sizeof head, "42%" PRIu64 "[\"echo\",{\"n\":%" PRIu64 ",\"p\":\"", n, n)
                        : snprintf(head, sizeof head, "{\"type\":\"echo\",\"data\":{\"n\":%" PRIu64 ",\"p\":\"", n);
  std::string s;
  s.reserve(hl + pad.size() + 40);
  s.append(head, hl);
  s += pad;
  char tail[48];
  int tl = opt.socketio ? snprintf(tail, sizeof tail, "\"}]")
                        : snprintf(tail, sizeof tail, "\"},\"id\":\"%" PRIu64 "\"}", n);
  s.append(tail, tl);
  c->inflight.emplace_back(n, now_ns());
  ++echo_sent;
  queue_text(c, s);
}

void fan_done_round();

// fanout: sends the joins, at most --join-inflight awaiting their reply;
// called again as replies come. Returns how many were sent now.
size_t join_next = 0;
int join_sent = 0, join_answered = 0;
int join_more() {
  std::string j = opt.socketio ? "421[\"join\",{\"room\":\"" + opt.room + "\"}]"
                               : "{\"type\":\"join\",\"data\":{\"room\":\"" + opt.room + "\"},\"id\":\"j\"}";
  int sent = 0;
  for (; join_next < conns.size(); ++join_next) {
    if (opt.join_inflight > 0 && join_sent - join_answered >= opt.join_inflight) break;
    Conn* c = conns[join_next];
    if (c->state != OPEN) continue;
    queue_text(c, j);
    flush(c);
    ++sent;
    ++join_sent;
  }
  return sent;
}

void ws_on_msg(wslay_event_context_ptr, const wslay_event_on_msg_recv_arg* arg, void* ud) {
  Conn* c = static_cast<Conn*>(ud);
  if (arg->opcode != WSLAY_TEXT_FRAME) return;
  const char* s = reinterpret_cast<const char*>(arg->msg);
  size_t n = arg->msg_length;
  const char* end = s + n;
  // Socket.IO: Engine.IO packets first; acks and events are read below
  bool sio_ack = false, sio_event = false;
  uint64_t sio_id = 0;
  if (opt.socketio) {
    if (n == 0) return;
    if (s[0] == '2') { queue_text(c, "3"); return; }           // ping -> pong
    if (s[0] == '0') { queue_text(c, "40"); return; }          // open -> connect the namespace
    if (s[0] != '4' || n < 2) return;
    if (s[1] == '0' && c->sio_wait) { sio_connected(c); return; }
    if (s[1] == '4') { note_error(std::string(s, std::min<size_t>(n, 200)).c_str()); return; }   // connect error
    if (s[1] == '3') { sio_ack = true; sio_id = parse_uint(s + 2, end); }
    else if (s[1] == '2') sio_event = true;
    else return;
  }
  if (opt.mode == "churn") {
    churn_on_msg(c, s, n);
  } else if (opt.mode == "echo") {
    const char* idp = opt.socketio ? (sio_ack ? s + 2 : nullptr) : find_key(s, n, "\"id\":");
    if (!idp) return;
    uint64_t id = opt.socketio ? sio_id : parse_uint(idp, end);
    uint64_t t = now_ns();
    bool is_error = !opt.socketio && find_key(s, n, "\"error\":") != nullptr;
    // replies come in order on one connection; search in case they do not
    for (auto it = c->inflight.begin(); it != c->inflight.end(); ++it) {
      if (it->first == id) {
        uint64_t sent = it->second;
        c->inflight.erase(it);
        if (is_error) {
          ++echo_errors;
          if (echo_errors == 1) note_error(std::string(s, std::min<size_t>(n, 200)).c_str());
        } else if (echo_measuring && sent >= echo_t0) {
          ++echo_replies;
          lat_us.push_back((uint32_t)std::min<uint64_t>((t - sent) / 1000, UINT32_MAX));
        }
        break;
      }
    }
    if (echo_sending) echo_send_one(c);
    else if (!echo_sending && phase == P_RUN) {
      bool all_idle = true;
      for (Conn* k : conns)
        if (k->state == OPEN && !k->inflight.empty()) { all_idle = false; break; }
      if (all_idle) finish();
    }
  } else if (opt.mode == "fanout") {
    const char* tp = opt.socketio ? (sio_event ? find_key(s, n, "[\"fanout\",") : nullptr) : find_key(s, n, "\"type\":\"fanout\"");
    if (tp) {
      if (opt.except_sender && c == fan_trig) return;
      const char* sp = find_key(s, n, "\"seq\":");
      int seq = sp ? (int)parse_uint(sp, end) : -1;
      if (seq == fan_round && c->seen_round != seq) {
        c->seen_round = seq;
        if (fan_got == 0) fan_t_first = now_ns();
        if (++fan_got == fan_members) fan_done_round();
      }
      return;
    }
    if (!c->joined && (opt.socketio ? sio_ack && sio_id == 1 : find_key(s, n, "\"id\":\"j\"") != nullptr)) {
      c->joined = true;
      if (find_key(s, n, "\"error\"")) {
        note_error(std::string(s, std::min<size_t>(n, 200)).c_str());
        c->joined = false;
      } else {
        ++fan_joined;
      }
      ++join_answered;
      if (opt.join_inflight > 0) join_more();
      if (join_answered == opened - closed_after_open) start_phase_run();
    }
  }
}

const wslay_event_callbacks callbacks = {ws_recv, ws_send, ws_genmask, nullptr, nullptr, nullptr, ws_on_msg};

// ---- libuv plumbing --------------------------------------------------------
struct WriteReq {
  uv_write_t req;
  std::string data;
};

void on_write(uv_write_t* req, int status) {
  WriteReq* w = reinterpret_cast<WriteReq*>(req);
  if (status < 0 && status != UV_ECANCELED) note_error(uv_strerror(status));
  delete w;
}

void raw_write(Conn* c, std::string&& data) {
  uv_buf_t b = uv_buf_init(data.data(), data.size());
  // Only try a direct write when nothing is queued, to keep the byte order.
  if (uv_stream_get_write_queue_size(reinterpret_cast<uv_stream_t*>(&c->tcp)) == 0) {
    int r = uv_try_write(reinterpret_cast<uv_stream_t*>(&c->tcp), &b, 1);
    if (r == (int)data.size()) return;
    if (r > 0) data.erase(0, r);
    else if (r != UV_EAGAIN) { note_error(uv_strerror(r)); return; }
  }
  WriteReq* w = new WriteReq;
  w->data = std::move(data);
  uv_buf_t b2 = uv_buf_init(w->data.data(), w->data.size());
  int r = uv_write(&w->req, reinterpret_cast<uv_stream_t*>(&c->tcp), &b2, 1, on_write);
  if (r < 0) { note_error(uv_strerror(r)); delete w; }
}

void flush(Conn* c) {
  if (c->state != OPEN) return;
  wslay_event_send(c->ws);
  if (!c->out.empty()) {
    std::string d;
    d.swap(c->out);
    conn_write(c, std::move(d));
  }
}

void ramp();

void hs_end(Conn* c, const char* why);

void conn_fail(Conn* c, const char* why) {
  if (opt.mode == "churn") { churn_end(c, why); return; }
  if (opt.mode == "handshake") { hs_end(c, why); return; }
  bool was_open = c->state == OPEN && !c->sio_wait;
  if (c->state == CLOSED) return;
  if (!was_open) { --pending; ++failed; note_error(why); }
  else { ++closed_after_open; if (phase != P_DONE) note_error(why); }
  c->state = CLOSED;
  if (c->tcp_inited && !uv_is_closing(reinterpret_cast<uv_handle_t*>(&c->tcp)))
    uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp), nullptr);
  if (!was_open) ramp();
  else if (opt.mode == "echo" && phase == P_RUN) {
    // a lost connection's in-flight messages will not come back
    c->inflight.clear();
  }
}

char readbuf[256 * 1024];
void on_alloc(uv_handle_t*, size_t, uv_buf_t* b) { *b = uv_buf_init(readbuf, sizeof readbuf); }

void feed_ws(Conn* c, const uint8_t* p, size_t n) {
  c->rptr = p;
  c->rlen = n;
  if (wslay_event_recv(c->ws) != 0) { conn_fail(c, "websocket protocol error"); return; }
  flush(c);
  if (c->state == OPEN && !wslay_event_want_read(c->ws) && !wslay_event_want_write(c->ws)) conn_fail(c, "websocket closed by server");
}

void handshake_done(Conn* c);

void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* b) {
  Conn* c = static_cast<Conn*>(s->data);
  if (nread < 0) {
    conn_fail(c, nread == UV_EOF ? "connection closed by server" : uv_strerror((int)nread));
    return;
  }
  if (nread == 0) return;
  const uint8_t* p = reinterpret_cast<const uint8_t*>(b->base);
  if (c->ssl) tls_feed(c, p, (size_t)nread);
  else on_plain(c, p, (size_t)nread);
}

// Bytes from the server (decrypted on wss://): the upgrade answer, then frames.
void on_plain(Conn* c, const uint8_t* p, size_t nread) {
  if (c->state == HANDSHAKE) {
    size_t old = c->hs.size();
    c->hs.append(reinterpret_cast<const char*>(p), nread);
    size_t e = c->hs.find("\r\n\r\n");
    if (e == std::string::npos) {
      if (c->hs.size() > 16384) conn_fail(c, "handshake response too large");
      return;
    }
    // status line and the accept header
    if (c->hs.compare(0, 12, "HTTP/1.1 101") != 0) {
      std::string line = c->hs.substr(0, c->hs.find("\r\n"));
      conn_fail(c, ("upgrade refused: " + line).c_str());
      return;
    }
    std::string head = c->hs.substr(0, e);
    for (auto& ch : head) ch = (char)tolower((unsigned char)ch);
    size_t a = head.find("\r\nsec-websocket-accept:");
    bool ok = false;
    if (a != std::string::npos) {
      size_t v = a + 23;
      while (v < e && c->hs[v] == ' ') ++v;
      size_t ve = c->hs.find("\r\n", v);
      ok = c->hs.compare(v, ve - v, c->accept) == 0;
    }
    if (!ok) { conn_fail(c, "bad Sec-WebSocket-Accept"); return; }
    size_t consumed = e + 4 - old;   // bytes of this chunk that were handshake
    c->hs.clear();
    c->hs.shrink_to_fit();
    handshake_done(c);
    if (c->state == OPEN && (size_t)nread > consumed) feed_ws(c, p + consumed, nread - consumed);
    return;
  }
  if (c->state == OPEN) feed_ws(c, p, nread);
}

void make_key(Conn* c, char* key_out /* 25 bytes */) {
  uint8_t raw[16];
  for (int i = 0; i < 16; i += 8) { uint64_t r = rng(); memcpy(raw + i, &r, 8); }
  size_t olen = 0;
  mbedtls_base64_encode(reinterpret_cast<unsigned char*>(key_out), 25, &olen, raw, 16);
  key_out[olen] = 0;
  std::string cat = std::string(key_out) + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  unsigned char sha[20];
  mbedtls_sha1_ret(reinterpret_cast<const unsigned char*>(cat.data()), cat.size(), sha);
  mbedtls_base64_encode(reinterpret_cast<unsigned char*>(c->accept), sizeof c->accept, &olen, sha, 20);
  c->accept[olen] = 0;
}

void on_connect(uv_connect_t* req, int status) {
  Conn* c = static_cast<Conn*>(req->data);
  if (status < 0) { conn_fail(c, uv_strerror(status)); return; }
  uv_tcp_nodelay(&c->tcp, 1);
  c->state = HANDSHAKE;
  uv_read_start(reinterpret_cast<uv_stream_t*>(&c->tcp), on_alloc, on_read);
  if (!opt.tls) { send_upgrade(c); return; }
  if (tls_begin(c)) tls_handshake(c);
}

void send_upgrade(Conn* c) {
  char key[32];
  make_key(c, key);
  char req_text[512];
  int l = snprintf(req_text, sizeof req_text,
                   "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                   opt.path.c_str(), opt.host.c_str(), opt.port, key);
  conn_write(c, std::string(req_text, l));
}

void start_conn(int idx) {
  Conn* c = new Conn;
  c->idx = idx;
  if (opt.mode == "churn") { c->slot = idx % opt.n; churn_slot[c->slot] = c; }   // churn: none is kept
  else if (opt.mode != "handshake") conns.push_back(c);
  ++pending;
  ++started;
  int r = uv_tcp_init_ex(loop, &c->tcp, AF_INET);
  if (r < 0 && opt.mode == "churn") { churn_end(c, uv_strerror(r)); return; }
  if (r < 0) { --pending; ++failed; c->state = CLOSED; note_error(uv_strerror(r)); return; }
  c->tcp_inited = true;
  c->tcp.data = c;
  c->creq.data = c;
  if (opt.src_ips > 1) {
    uv_os_fd_t fd;
    uv_fileno(reinterpret_cast<uv_handle_t*>(&c->tcp), &fd);
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    sockaddr_in src{};
    src.sin_family = AF_INET;
    src.sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)(idx % opt.src_ips));
    r = uv_tcp_bind(&c->tcp, reinterpret_cast<sockaddr*>(&src), 0);
    if (r < 0) { conn_fail(c, uv_strerror(r)); return; }
  }
  sockaddr_in dst{};
  uv_ip4_addr(opt.host.c_str(), opt.port, &dst);
  r = uv_tcp_connect(&c->creq, &c->tcp, reinterpret_cast<sockaddr*>(&dst), on_connect);
  if (r < 0) conn_fail(c, uv_strerror(r));
}

int target_conns() { return opt.mode == "echo" ? opt.m : opt.n; }

// ---- churn -------------------------------------------------------------------
uint64_t churn_end_ns = 0;         // no slot opens again after this
uint64_t churn_exchanged = 0, churn_clean = 0, churn_fin = 0, churn_rst = 0, churn_server_closed = 0;
uint64_t churn_failed = 0, churn_seq = 0, churn_err_replies = 0;
int churn_live = 0;                // Conn objects not yet freed
int churn_open = 0, churn_max_open = 0;   // open connections now / at most
std::deque<int> churn_queue;       // slots waiting to open again
uv_timer_t churn_timer;

void churn_close(Conn* c);

void churn_report();

void churn_pump() {
  if (phase != P_RUN) return;
  uint64_t now = now_ns();
  if (opt.churn_hold > 0)
    for (Conn* c : churn_slot)
      if (c && c->hold_until && now >= c->hold_until && c->state == OPEN && !c->closing) { churn_close(c); flush(c); }
  while (!churn_queue.empty() && pending < opt.concurrency && now < churn_end_ns) {
    int slot = churn_queue.front();
    churn_queue.pop_front();
    ++churn_live;
    start_conn(slot);
  }
  if (now >= churn_end_ns) churn_queue.clear();
  if (churn_live == 0 && churn_queue.empty()) churn_report();
}

void churn_freed(uv_handle_t* h) {
  Conn* c = static_cast<Conn*>(h->data);
  if (c->ws) wslay_event_context_free(c->ws);
  tls_free(c);
  int slot = c->slot;
  if (churn_slot[slot] == c) churn_slot[slot] = nullptr;
  delete c;
  --churn_live;
  churn_queue.push_back(slot);
  churn_pump();
}

// A churn connection ends (asked for, or not): count it, free it, reopen its slot.
void churn_end(Conn* c, const char* why) {
  if (c->state == CLOSED) return;
  if (c->state != OPEN) { --pending; ++failed; ++churn_failed; note_error(why); }
  else if (!c->closing) { ++churn_server_closed; note_error(why); }
  if (c->state == OPEN) --churn_open;
  c->state = CLOSED;
  if (!c->tcp_inited) { churn_freed(reinterpret_cast<uv_handle_t*>(&c->tcp)); return; }
  c->tcp.data = c;
  if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&c->tcp))) uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp), churn_freed);
}

void churn_on_open(Conn* c) {
  char msg[96];
  uint64_t k = ++churn_seq;
  churn_max_open = std::max(churn_max_open, ++churn_open);
  int l = opt.churn_rooms > 0
    ? snprintf(msg, sizeof msg, "{\"type\":\"join\",\"data\":{\"room\":\"churn%d\"},\"id\":\"%" PRIu64 "\"}",
               (int)(k % (uint64_t)opt.churn_rooms), k)
    : snprintf(msg, sizeof msg, "{\"type\":\"echo\",\"data\":{\"n\":%" PRIu64 "},\"id\":\"%" PRIu64 "\"}", k, k);
  c->next_n = k;
  queue_text(c, std::string(msg, l));
  flush(c);
}

void churn_on_msg(Conn* c, const char* s, size_t n) {
  if (c->closing) return;
  const char* idp = find_key(s, n, "\"id\":");
  if (!idp || parse_uint(idp, s + n) != c->next_n) return;
  if (find_key(s, n, "\"error\":")) { ++churn_err_replies; note_error(std::string(s, std::min<size_t>(n, 200)).c_str()); }
  else ++churn_exchanged;
  if (c->hold_until) return;
  if (opt.churn_hold > 0) {
    c->hold_until = now_ns() + 1 + (uint64_t)(opt.churn_hold * 1e9 * (double)(rng() % 1000001) / 1e6);
    return;
  }
  churn_close(c);
}

void churn_close(Conn* c) {
  c->closing = true;
  switch (c->next_n % 3) {
    case 0:   // close handshake: ends when the server's close frame (or EOF) comes
      ++churn_clean;
      wslay_event_queue_close(c->ws, 1000, nullptr, 0);
      break;
    case 1:   // FIN without a close frame
      ++churn_fin;
      uv_read_stop(reinterpret_cast<uv_stream_t*>(&c->tcp));
      churn_end(c, "fin");
      break;
    default: {  // RST
      ++churn_rst;
      uv_os_fd_t fd;
      if (uv_fileno(reinterpret_cast<uv_handle_t*>(&c->tcp), &fd) == 0) {
        linger lg{1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
      }
      uv_read_stop(reinterpret_cast<uv_stream_t*>(&c->tcp));
      churn_end(c, "rst");
    }
  }
}

void churn_start() {
  churn_end_ns = now_ns() + (uint64_t)(opt.seconds * 1e9);
  churn_slot.assign(opt.n, nullptr);
  for (int i = 0; i < opt.n; ++i) churn_queue.push_back(i);
  uv_timer_init(loop, &churn_timer);
  uv_timer_start(&churn_timer, [](uv_timer_t*) { churn_pump(); }, 0, 5);
  if (!opt.quiet) fprintf(stderr, "loadws: churning %d slots for %.0f s\n", opt.n, opt.seconds);
}

void churn_report() {
  uv_timer_stop(&churn_timer);
  finish();
}

// live: connections still open when the report is printed (0 unless --timeout cut the run short)
void churn_print() {
  double secs = (now_ns() - t_connect_start) / 1e9;
  printf("RESULT churn_slots=%d seconds=%.2f opened=%d failed=%" PRIu64 " exchanged=%" PRIu64 " error_replies=%" PRIu64
         " closed_clean=%" PRIu64 " closed_fin=%" PRIu64 " closed_rst=%" PRIu64 " closed_by_server=%" PRIu64
         " live=%d max_open=%d opened_per_s=%.0f\n",
         opt.n, secs, opened, churn_failed, churn_exchanged, churn_err_replies, churn_clean, churn_fin, churn_rst,
         churn_server_closed, churn_live, churn_max_open, secs > 0 ? opened / secs : 0.0);
}

// ---- handshake (wss://) -------------------------------------------------------
uint64_t hs_t0 = 0, hs_t1 = 0;     // the measured window
uint64_t hs_counted = 0, hs_counted_resumed = 0;
int hs_live = 0;                   // Conn objects not yet freed
int hs_next = 0;
uv_timer_t hs_timer;

void hs_pump();

void hs_freed(uv_handle_t* h) {
  Conn* c = static_cast<Conn*>(h->data);
  tls_free(c);
  if (c->ws) wslay_event_context_free(c->ws);
  delete c;
  --hs_live;
  hs_pump();
}

// The connection is done with (handshake finished, or failed): reset it, so
// neither side keeps a TIME_WAIT, and start another one.
void hs_close(Conn* c) {
  c->state = CLOSED;
  uv_os_fd_t fd;
  if (c->tcp_inited && uv_fileno(reinterpret_cast<uv_handle_t*>(&c->tcp), &fd) == 0) {
    linger lg{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  }
  if (!c->tcp_inited) { hs_freed(reinterpret_cast<uv_handle_t*>(&c->tcp)); return; }
  c->tcp.data = c;
  if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&c->tcp))) uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp), hs_freed);
}

void hs_done(Conn* c) {
  uint64_t t = now_ns();
  if (t >= hs_t0 && t < hs_t1) {
    ++hs_counted;
    if (c->tls_resumed) ++hs_counted_resumed;
  }
  --pending;
  ++opened;
  hs_close(c);
}

void hs_end(Conn* c, const char* why) {
  if (c->state == CLOSED) return;
  --pending;
  ++failed;
  note_error(why);
  hs_close(c);
}

// Keeps --concurrency connections handshaking until the window ends; with
// --resume, one full handshake first (its session is what the rest offer).
void hs_pump() {
  if (phase != P_RUN) return;
  uint64_t t = now_ns();
  if (t >= hs_t1) {
    if (hs_live == 0) finish();
    return;
  }
  if (failed > 1000 && opened == 0) { note_error("no handshake succeeds"); finish(); return; }
  int want = (opt.resume && !tlsc.have_saved) ? 1 : opt.m;
  while (hs_live < want) { ++hs_live; start_conn(hs_next++); }
}

void hs_start() {
  uint64_t t = now_ns();
  hs_t0 = t + (uint64_t)(opt.warmup * 1e9);
  hs_t1 = hs_t0 + (uint64_t)(opt.seconds * 1e9);
  uv_timer_init(loop, &hs_timer);
  uv_timer_start(&hs_timer, [](uv_timer_t*) { hs_pump(); }, 10, 10);   // also ends the run when the window closes
  if (!opt.quiet) fprintf(stderr, "loadws: TLS handshakes, %d at a time, %.0f s%s\n", opt.m, opt.seconds, opt.resume ? ", resuming" : "");
  hs_pump();
}

void all_connected() {
  t_connect_end = now_ns();
  uv_timer_stop(&ramp_timer);
  printf("RESULT connected=%d failed=%d connect_s=%.2f\n", opened, failed,
         (t_connect_end - t_connect_start) / 1e9);
  if (failed && !opt.quiet) fprintf(stderr, "loadws: %d connections failed; first error: %s\n", failed, first_error.c_str());
  fflush(stdout);
  if (opened == 0) { fprintf(stderr, "loadws: no connection opened\n"); exit(3); }
  if (!opt.ready_file.empty()) {
    FILE* f = fopen(opt.ready_file.c_str(), "w");
    if (f) { fprintf(f, "connected=%d failed=%d\n", opened, failed); fclose(f); }
    phase = P_READY_WAIT;
    if (opt.hold >= 0) uv_timer_start(&run_timer, [](uv_timer_t*) { start_phase_run(); }, (uint64_t)(opt.hold * 1000), 0);
    return;  // SIGUSR1 goes on
  }
  if (opt.mode == "idle") {
    phase = P_READY_WAIT;
    if (opt.hold >= 0) uv_timer_start(&run_timer, [](uv_timer_t*) { finish(); }, (uint64_t)(opt.hold * 1000), 0);
    return;
  }
  start_phase_run();
}

void ramp() {
  if (opt.mode == "handshake" && phase == P_CONNECT) {   // no ramp: connections come and go
    uv_timer_stop(&ramp_timer);
    t_connect_start = now_ns();
    start_phase_run();
    return;
  }
  if (opt.mode == "churn" && phase == P_CONNECT) {   // no ramp: the slots open as they churn
    uv_timer_stop(&ramp_timer);
    t_connect_start = now_ns();
    start_phase_run();
    return;
  }
  if (phase != P_CONNECT) return;
  int target = target_conns();
  // a bounded batch per call keeps the loop responsive; the timer continues it
  int batch = 0;
  while (started < target && pending < opt.concurrency && batch < 100) { start_conn(started); ++batch; }
  if (started == target && pending == 0) all_connected();
}

void handshake_done(Conn* c) {
  if (wslay_event_context_client_init(&c->ws, &callbacks, c) != 0) { conn_fail(c, "wslay init"); return; }
  c->state = OPEN;
  if (opt.socketio) { c->sio_wait = true; return; }   // open once the namespace answers "40"
  --pending;
  ++opened;
  if (opt.mode == "churn") { churn_on_open(c); churn_pump(); return; }
  ramp();
}

// Socket.IO: the namespace answered our "40": the connection is open.
void sio_connected(Conn* c) {
  c->sio_wait = false;
  --pending;
  ++opened;
  ramp();
}

// ---- phases ----------------------------------------------------------------
void echo_stop_sending(uv_timer_t*) {
  echo_t1 = now_ns();
  echo_measuring = false;
  echo_sending = false;
  // drain: wait up to 3 s for the in-flight replies
  uv_timer_start(&run_timer, [](uv_timer_t*) { finish(); }, 3000, 0);
  bool all_idle = true;
  for (Conn* k : conns)
    if (k->state == OPEN && !k->inflight.empty()) { all_idle = false; break; }
  if (all_idle) finish();
}

void fan_start_round() {
  ++fan_round;
  fan_got = 0;
  fan_members = 0;
  Conn* trig = nullptr;
  for (Conn* c : conns)
    if (c->state == OPEN) { trig = c; break; }
  fan_trig = trig;
  for (Conn* c : conns)
    if (c->state == OPEN && c->joined && !(opt.except_sender && c == trig)) ++fan_members;
  if (!trig || fan_members == 0) { finish(); return; }
  char msg[256];
  if (opt.socketio)
    snprintf(msg, sizeof msg, "42[\"fanout\",{\"room\":\"%s\",\"seq\":%d,\"p\":\"%.*s\"}]",
             opt.room.c_str(), fan_round, std::min(opt.size, 64), pad.c_str());
  else
    snprintf(msg, sizeof msg, "{\"type\":\"fanout\",\"data\":{\"room\":\"%s\",\"seq\":%d,\"p\":\"%.*s\"}}",
             opt.room.c_str(), fan_round, std::min(opt.size, 64), pad.c_str());
  fan_t0 = now_ns();
  queue_text(trig, msg);
  flush(trig);
  // a round that does not complete in 10 s is reported as it is
  uv_timer_start(&run_timer, [](uv_timer_t*) { fan_done_round(); }, 10000, 0);
}

void fan_done_round() {
  uint64_t t = now_ns();
  uv_timer_stop(&run_timer);
  double d = ms(t - fan_t0);
  fan_ms.push_back(d);
  fan_recv.push_back(fan_got);
  fan_first_ms.push_back(fan_got ? ms(fan_t_first - fan_t0) : -1);   // -1: nobody had it
  if (!opt.quiet) fprintf(stderr, "loadws: fanout round %d: %d/%d members in %.1f ms\n", fan_round, fan_got, fan_members, d);
  if (fan_round >= opt.rounds) { finish(); return; }
  uint64_t pause = 300;   // a short pause between rounds lets the previous one settle
  if (!opt.round_at_ms.empty() && (size_t)fan_round < opt.round_at_ms.size()) {
    uint64_t next = fan_sched_t0 + (uint64_t)(opt.round_at_ms[fan_round] * 1e6);
    pause = next > t ? (next - t) / 1000000 : 0;
  }
  uv_timer_start(&run_timer, [](uv_timer_t*) { fan_start_round(); }, pause, 0);
}

void start_phase_run() {
  if (phase == P_RUN || phase == P_DONE) return;
  uv_timer_stop(&run_timer);
  phase = P_RUN;
  if (opt.mode == "idle") { finish(); return; }
  if (opt.mode == "churn") { churn_start(); return; }
  if (opt.mode == "handshake") { hs_start(); return; }
  if (opt.mode == "echo") {
    echo_sending = true;
    for (Conn* c : conns) {
      if (c->state != OPEN) continue;
      for (int i = 0; i < opt.depth; ++i) echo_send_one(c);
      flush(c);
    }
    // warm-up, then the measured window
    uv_timer_start(&run_timer, [](uv_timer_t*) {
      echo_t0 = now_ns();
      echo_measuring = true;
      uv_timer_start(&run_timer, echo_stop_sending, (uint64_t)(opt.seconds * 1000), 0);
    }, (uint64_t)(opt.warmup * 1000), 0);
    return;
  }
  if (opt.mode == "fanout") {
    static int stage = 0;   // 0: joins not sent, 1: sent, 2: joined, waiting for SIGUSR1 (--joined)
    if (stage == 0) {
      // first: every connection joins the room; start_phase_run is called
      // again when the last join reply arrives
      phase = P_READY_WAIT;
      stage = 1;
      join_next = 0;
      if (join_more() == 0) finish();
      // bounded: go on with whoever joined after 30 s
      uv_timer_start(&run_timer, [](uv_timer_t*) { start_phase_run(); }, 30000, 0);
      return;
    }
    if (stage == 1) {
      uv_timer_stop(&run_timer);
      printf("RESULT joined=%d\n", fan_joined);
      fflush(stdout);
      if (!opt.joined_file.empty()) {
        FILE* f = fopen(opt.joined_file.c_str(), "w");
        if (f) { fprintf(f, "joined=%d\n", fan_joined); fclose(f); }
        stage = 2;
        phase = P_READY_WAIT;   // SIGUSR1 starts the rounds
        return;
      }
    }
    stage = 3;
    if (!opt.round_at_ms.empty()) {   // an explicit schedule: offsets from now
      fan_sched_t0 = now_ns();
      uv_timer_start(&run_timer, [](uv_timer_t*) { fan_start_round(); }, (uint64_t)opt.round_at_ms[0], 0);
      return;
    }
    fan_start_round();
  }
}

void finish() {
  if (phase == P_DONE) return;
  phase = P_DONE;
  if (opt.mode == "echo") {
    double secs = (echo_t1 ? echo_t1 : now_ns()) - echo_t0;
    secs /= 1e9;
    std::sort(lat_us.begin(), lat_us.end());
    auto pct = [&](double q) -> double {
      if (lat_us.empty()) return 0;
      size_t i = std::min(lat_us.size() - 1, (size_t)(q * lat_us.size()));
      return lat_us[i] / 1000.0;
    };
    printf("RESULT echo_conns=%d depth=%d seconds=%.2f replies=%" PRIu64 " errors=%" PRIu64 " msgs_per_s=%.0f p50_ms=%.3f p99_ms=%.3f max_ms=%.3f\n",
           opened - closed_after_open, opt.depth, secs, echo_replies, echo_errors,
           secs > 0 ? echo_replies / secs : 0.0, pct(0.50), pct(0.99),
           lat_us.empty() ? 0.0 : lat_us.back() / 1000.0);
  } else if (opt.mode == "churn") {
    churn_print();
  } else if (opt.mode == "handshake") {
    double secs = (std::min(now_ns(), hs_t1) - hs_t0) / 1e9;
    printf("RESULT handshake_conc=%d seconds=%.2f handshakes=%" PRIu64 " resumed=%" PRIu64 " handshakes_per_s=%.0f failed=%d suite=%s\n",
           opt.m, secs, hs_counted, hs_counted_resumed, secs > 0 ? hs_counted / secs : 0.0, failed, tlsc.suite.c_str());
  } else if (opt.mode == "fanout") {
    std::vector<double> s = fan_ms;
    std::sort(s.begin(), s.end());
    std::string all;
    for (size_t i = 0; i < fan_ms.size(); ++i) {
      char b[64];
      snprintf(b, sizeof b, "%s%.1f/%d", i ? "," : "", fan_ms[i], fan_recv[i]);
      all += b;
    }
    printf("RESULT fanout_members=%d rounds=%zu median_ms=%.1f min_ms=%.1f max_ms=%.1f each=%s\n",
           fan_members, fan_ms.size(), s.empty() ? 0.0 : s[s.size() / 2], s.empty() ? 0.0 : s.front(),
           s.empty() ? 0.0 : s.back(), all.c_str());
    // until the first member had it, per round, and its median (the trigger's way to the first write)
    std::vector<double> f;   // rounds in which somebody had it
    for (double x : fan_first_ms) if (x >= 0) f.push_back(x);
    std::sort(f.begin(), f.end());
    std::string fl;
    for (size_t i = 0; i < fan_first_ms.size(); ++i) {
      char b[32];
      snprintf(b, sizeof b, "%s%.2f", i ? "," : "", fan_first_ms[i]);
      fl += b;
    }
    printf("RESULT first_median_ms=%.2f first_each=%s\n", f.empty() ? 0.0 : f[f.size() / 2], fl.c_str());
  }
  if (closed_after_open) printf("RESULT closed_by_server=%d\n", closed_after_open);
  if (opt.tls && opt.mode != "handshake")
    printf("RESULT tls_full=%" PRIu64 " tls_resumed=%" PRIu64 " tls_failed=%" PRIu64 " suite=%s\n", tlsc.full, tlsc.resumed, tlsc.failed,
           tlsc.suite.c_str());
  if (!first_error.empty()) printf("RESULT first_error=\"%s\"\n", first_error.c_str());
  fflush(stdout);
  fflush(stderr);
  if (!opt.done_file.empty()) {
    // keep the connections open until SIGUSR1/SIGTERM (at most 30 s more),
    // so a script can read the server's memory after the traffic
    FILE* f = fopen(opt.done_file.c_str(), "w");
    if (f) { fputs("done\n", f); fclose(f); }
    uv_timer_stop(&run_timer);
    uv_timer_stop(&ramp_timer);
    uv_timer_start(&deadline_timer, [](uv_timer_t*) { _exit(0); }, 30000, 0);
    return;
  }
  // the kernel closes every socket; no need to walk 10k handles
  _exit(0);
}

void usage() {
  fprintf(stderr,
          "usage: loadws --url ws[s]://HOST:PORT/PATH [options] idle|echo|fanout|churn|handshake\n"
          "  -n N             connections for idle/fanout, slots for churn (10000)\n"
          "  -c M             connections for echo (50)\n"
          "  -d D             echo messages in flight per connection (8)\n"
          "  -t SEC           echo measured window (10), after --warmup SEC (1); churn: how long\n"
          "  -r R             fanout rounds (5)\n"
          "  --size B         pad bytes in each message (64)\n"
          "  --room NAME      room for fanout (bench)\n"
          "  --concurrency K  handshakes in flight while ramping (200)\n"
          "  --src-ips K      spread connections over 127.0.0.1..127.0.0.K\n"
          "  --ready FILE     when connected, write FILE and wait for SIGUSR1 (or --hold)\n"
          "  --done FILE      when finished, write FILE and keep the connections until SIGUSR1 (30 s at most)\n"
          "  --hold SEC       idle: hold this long (default: until SIGUSR1/SIGTERM)\n"
          "  --churn-hold SEC churn: keep each connection open up to SEC (random) after its exchange (0)\n"
          "  --churn-rooms R  churn: the exchange is a join to one of R rooms (benchsvc's \"join\")\n"
          "  --timeout SEC    overall bound (120)\n"
          "  -q               fewer messages on stderr\n"
          "  --proto socketio speak Engine.IO 4 / Socket.IO framing (idle, echo, fanout; URL .../socket.io/?EIO=4&transport=websocket)\n"
          "  --except-sender  fanout: the trigger connection is not a member (server pushes to the room except the sender)\n"
          "  --join-inflight K fanout: at most K joins awaiting their reply (default: all at once)\n"
          "  --joined FILE    fanout: once joined, write FILE and wait for SIGUSR1 before the rounds\n"
          "  --round-at MS,MS,... fanout: round k starts at the k-th offset (a schedule of its own per loadws:\n"
          "                   several loadws signalled at once take turns, their rounds do not overlap)\n"
          "wss:// (TLS 1.2, mbedTLS):\n"
          "  handshake        TLS handshakes per second, -c at a time, for -t SEC (after --warmup)\n"
          "  --resume         handshake: resume the first connection's session (ticket)\n"
          "  --ca FILE        verify the server's certificate against these CAs (name: --sni, localhost)\n"
          "  --sni NAME       server name sent and verified (localhost)\n");
  exit(1);
}

bool parse_url(const std::string& u) {
  opt.tls = u.rfind("wss://", 0) == 0;
  if (u.rfind("ws://", 0) != 0 && !opt.tls) return false;
  std::string rest = u.substr(opt.tls ? 6 : 5);
  size_t slash = rest.find('/');
  std::string hp = rest.substr(0, slash);
  opt.path = slash == std::string::npos ? "/" : rest.substr(slash);
  size_t colon = hp.rfind(':');
  if (colon == std::string::npos) { opt.host = hp; opt.port = opt.tls ? 443 : 80; }
  else { opt.host = hp.substr(0, colon); opt.port = atoi(hp.c_str() + colon + 1); }
  if (opt.host == "localhost") opt.host = "127.0.0.1";
  return opt.port > 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string url;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> const char* { if (i + 1 >= argc) usage(); return argv[++i]; };
    if (a == "--url") url = next();
    else if (a == "-n") opt.n = atoi(next());
    else if (a == "-c") opt.m = atoi(next());
    else if (a == "-d") opt.depth = atoi(next());
    else if (a == "-t") opt.seconds = atof(next());
    else if (a == "--warmup") opt.warmup = atof(next());
    else if (a == "-r") opt.rounds = atoi(next());
    else if (a == "--size") opt.size = atoi(next());
    else if (a == "--room") opt.room = next();
    else if (a == "--concurrency") opt.concurrency = atoi(next());
    else if (a == "--src-ips") opt.src_ips = atoi(next());
    else if (a == "--ready") opt.ready_file = next();
    else if (a == "--done") opt.done_file = next();
    else if (a == "--hold") opt.hold = atof(next());
    else if (a == "--churn-hold") opt.churn_hold = atof(next());
    else if (a == "--churn-rooms") opt.churn_rooms = atoi(next());
    else if (a == "--timeout") opt.timeout = atof(next());
    else if (a == "-q") opt.quiet = true;
    else if (a == "--resume") opt.resume = true;
    else if (a == "--ca") opt.ca_file = next();
    else if (a == "--sni") opt.sni = next();
    else if (a == "--proto") { std::string p = next(); if (p == "socketio") opt.socketio = true; else if (p != "envelope") usage(); }
    else if (a == "--except-sender") opt.except_sender = true;
    else if (a == "--join-inflight") opt.join_inflight = atoi(next());
    else if (a == "--joined") opt.joined_file = next();
    else if (a == "--round-at") {
      std::string l = next();
      for (size_t p = 0; p < l.size();) {
        size_t e = l.find(',', p);
        if (e == std::string::npos) e = l.size();
        opt.round_at_ms.push_back(atof(l.substr(p, e - p).c_str()));
        p = e + 1;
      }
    }
    else if (a == "idle" || a == "echo" || a == "fanout" || a == "churn" || a == "handshake") opt.mode = a;
    else usage();
  }
  if (opt.mode.empty() || !parse_url(url) || opt.n < 1 || opt.m < 1 || opt.depth < 1 || opt.concurrency < 1 ||
      opt.src_ips < 1 || opt.src_ips > 254 || (opt.mode == "handshake" && !opt.tls) ||
      (opt.socketio && opt.mode != "idle" && opt.mode != "echo" && opt.mode != "fanout"))
    usage();
  if (opt.tls && !tls_init()) { fprintf(stderr, "loadws: TLS set-up failed\n"); return 1; }
  pad.assign(opt.size, 'x');
  rng_state ^= (uint64_t)getpid() << 17 ^ uv_hrtime();

  // as many descriptors as allowed
  rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if ((rlim_t)target_conns() + 32 > rl.rlim_cur)
      fprintf(stderr, "loadws: warning: ulimit -n %llu is below %d connections\n",
              (unsigned long long)rl.rlim_cur, target_conns());
  }
  signal(SIGPIPE, SIG_IGN);

  loop = uv_default_loop();
  conns.reserve(target_conns());
  uv_timer_init(loop, &ramp_timer);
  uv_timer_init(loop, &run_timer);
  uv_timer_init(loop, &deadline_timer);
  uv_signal_init(loop, &sig_usr1);
  uv_signal_init(loop, &sig_term);
  uv_signal_init(loop, &sig_int);
  uv_signal_start(&sig_usr1, [](uv_signal_t*, int) {
    if (phase == P_DONE) _exit(0);
    if (phase == P_READY_WAIT) {
      if (opt.mode == "idle") finish();
      else start_phase_run();
    }
  }, SIGUSR1);
  uv_signal_start(&sig_term, [](uv_signal_t*, int) { if (phase == P_DONE) _exit(0); finish(); }, SIGTERM);
  uv_signal_start(&sig_int, [](uv_signal_t*, int) { if (phase == P_DONE) _exit(0); finish(); }, SIGINT);
  uv_timer_start(&deadline_timer, [](uv_timer_t*) {
    fprintf(stderr, "loadws: overall timeout reached\n");
    note_error("overall timeout");
    if (phase == P_CONNECT) all_connected();
    finish();
  }, (uint64_t)(opt.timeout * 1000), 0);

  t_connect_start = now_ns();
  uv_timer_start(&ramp_timer, [](uv_timer_t*) { ramp(); }, 0, 5);
  uv_run(loop, UV_RUN_DEFAULT);
  opt.done_file.clear();
  finish();
  return 0;
}
