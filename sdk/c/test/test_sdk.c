/* Unit tests of the C library against a scripted fake linkd: a Unix socket
 * this program listens on, speaking the real frame format (nanopb and the
 * generated linkd.pb.h). Single-threaded: every wait pumps linkd_process().
 * Prints one "PASS: t_sdk_c: unit: ..." / "FAIL: ..." line per check and
 * exits 1 if any failed. tests/t_sdk_c.sh runs it plain, under ASan+UBSan
 * and under valgrind.
 *
 *   test_sdk DIR     (DIR: a scratch directory for the sockets)
 */
#define _GNU_SOURCE
#include "linkd_service.h"

#include <pb_decode.h>
#include <pb_encode.h>
#include "linkd.pb.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static int failed, passed;
#define CHECK(name, cond, ...)                                                    \
  do {                                                                            \
    if (cond) { printf("PASS: t_sdk_c: unit: %s\n", name); passed++; }           \
    else { printf("FAIL: t_sdk_c: unit: %s — ", name); printf(__VA_ARGS__); printf("\n"); failed++; } \
  } while (0)

static uint64_t ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u;
}

/* ------------------------------------------------------------ the fake linkd */
typedef struct fake {
  int lfd, cfd;
  uint8_t in[1 << 20];
  size_t len;
} fake;

static fake F;
static linkd_service *S;
static const uint8_t *got;     /* the member of the last frame fake_next() read */
static size_t got_len;
static size_t consumed;        /* bytes of F.in that frame took */

static void pump(int wait_ms) {
  struct pollfd p[2] = {{linkd_fd(S), POLLIN, 0}, {F.cfd >= 0 ? F.cfd : F.lfd, POLLIN, 0}};
  poll(p, 2, wait_ms);
  linkd_process(S);
}

static int fake_listen(const char *path) {
  unlink(path);
  F.lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  F.cfd = -1;
  struct sockaddr_un a = {0};
  a.sun_family = AF_UNIX;
  snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
  if (bind(F.lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(F.lfd, 4) < 0) return -1;
  return 0;
}

static int fake_accept(int timeout) {
  uint64_t end = ms() + (uint64_t)timeout;
  while (ms() < end) {
    struct pollfd p = {F.lfd, POLLIN, 0};
    if (poll(&p, 1, 0) == 1) {
      F.cfd = accept(F.lfd, NULL, NULL);
      F.len = 0;
      consumed = 0;
      return F.cfd >= 0 ? 0 : -1;
    }
    pump(10);
  }
  return -1;
}

static void fake_drop(void) {
  if (F.cfd >= 0) close(F.cfd);
  F.cfd = -1;
  F.len = 0;
  consumed = 0;
}

static void fake_send(const void *p, size_t n) {
  const uint8_t *b = p;
  while (n) {
    ssize_t w = write(F.cfd, b, n);
    if (w < 0 && errno == EAGAIN) { pump(1); continue; }
    if (w <= 0) return;
    b += w;
    n -= (size_t)w;
  }
}

/* varint(len) ServiceMessage{tag: msg} into out; returns its size */
static size_t frame_enc(uint8_t *out, size_t cap, uint32_t tag, const pb_msgdesc_t *fields, const void *msg) {
  size_t sub = 0;
  pb_get_encoded_size(&sub, fields, msg);
  pb_ostream_t os = pb_ostream_from_buffer(out, cap);
  size_t inner = 0;
  { uint8_t t[16]; pb_ostream_t c = pb_ostream_from_buffer(t, sizeof t);
    pb_encode_tag(&c, PB_WT_STRING, tag); pb_encode_varint(&c, sub); inner = c.bytes_written + sub; }
  pb_encode_varint(&os, inner);
  pb_encode_tag(&os, PB_WT_STRING, tag);
  pb_encode_varint(&os, sub);
  pb_encode(&os, fields, msg);
  return os.bytes_written;
}

static void fake_frame(uint32_t tag, const pb_msgdesc_t *fields, const void *msg) {
  static uint8_t buf[1 << 20];
  fake_send(buf, frame_enc(buf, sizeof buf, tag, fields, msg));
}

/* Reads the next frame from the service: its member tag and bytes (in F.in
 * until the next call). Returns the member tag, 0 on timeout, -1 on EOF. */
static int fake_next(int timeout) {
  if (consumed) {
    memmove(F.in, F.in + consumed, F.len - consumed);
    F.len -= consumed;
    consumed = 0;
  }
  uint64_t end = ms() + (uint64_t)timeout;
  for (;;) {
    /* a whole frame buffered? */
    uint64_t len = 0;
    size_t k = 0;
    int shift = 0, have = 0;
    while (k < F.len) {
      len |= (uint64_t)(F.in[k] & 0x7f) << shift;
      shift += 7;
      if (!(F.in[k++] & 0x80)) { have = 1; break; }
    }
    if (have && F.len >= k + len) {
      pb_istream_t st = pb_istream_from_buffer(F.in + k, (size_t)len);
      pb_wire_type_t wt;
      uint32_t tag;
      bool eof;
      uint32_t sub;
      consumed = k + (size_t)len;
      if (!pb_decode_tag(&st, &wt, &tag, &eof) || !pb_decode_varint32(&st, &sub)) return -2;
      got = F.in + k + ((size_t)len - st.bytes_left);
      got_len = sub;
      return (int)tag;
    }
    if (ms() >= end) return 0;
    pump(5);
    struct pollfd p = {F.cfd, POLLIN, 0};
    if (poll(&p, 1, 5) == 1) {
      ssize_t n = read(F.cfd, F.in + F.len, sizeof F.in - F.len);
      if (n == 0) return -1;
      if (n > 0) F.len += (size_t)n;
    }
  }
}

/* The next frame with this member tag (others are skipped); 1 if found. */
static int fake_expect(int tag, int timeout) {
  uint64_t end = ms() + (uint64_t)timeout;
  while (ms() < end) {
    int t = fake_next((int)(end - ms()) + 1);
    if (t == tag) return 1;
    if (t <= 0) return 0;
  }
  return 0;
}

/* capture of bytes fields when decoding what the service sent */
typedef struct cap { char buf[65536]; size_t n; int count; char list[8][64]; } cap;
static bool dec_cap(pb_istream_t *st, const pb_field_t *f, void **arg) {
  (void)f;
  cap *c = *arg;
  size_t n = st->bytes_left;
  if (c->count < 8 && n < 64) {
    pb_byte_t tmp[64];
    if (!pb_read(st, tmp, n)) return false;
    memcpy(c->list[c->count], tmp, n);
    c->list[c->count][n] = 0;
    memcpy(c->buf, tmp, n);
    c->n = n;
  } else {
    c->n = n < sizeof c->buf ? n : sizeof c->buf - 1;
    if (!pb_read(st, (pb_byte_t *)c->buf, c->n)) return false;
    if (!pb_read(st, NULL, st->bytes_left)) return false;
  }
  c->buf[c->n] = 0;
  c->count++;
  return true;
}

static void send_register_ok(uint32_t max_frame) {
  linkd_RegisterResult r = linkd_RegisterResult_init_zero;
  r.ok = true;
  strcpy(r.linkd_version, "9.9.9-fake");
  r.max_frame_bytes = max_frame;
  fake_frame(2, linkd_RegisterResult_fields, &r);
}

static void wait_registered(int timeout) {
  uint64_t end = ms() + (uint64_t)timeout;
  while (!linkd_registered(S) && ms() < end) pump(5);
}

static void pump_for(int t) {
  uint64_t end = ms() + (uint64_t)t;
  while (ms() < end) pump(5);
}

/* ------------------------------------------------------------ the service under test */
static int n_http, n_msg, n_admin, n_connect, n_disconnect, n_existing, n_resumed;
static char last_previous[64];
static int link_events[4];
static char last_detail[256];
static linkd_result last_result;
static char last_result_type[64];
static int n_results;
static char last_conn_rooms[256];
static char last_user[256];
static int rooms_ok = -1;
static char rooms_seen[256];

static void on_link(linkd_service *s, linkd_link_event ev, const char *d, void *arg) {
  (void)s; (void)arg;
  link_events[ev]++;
  snprintf(last_detail, sizeof last_detail, "%s", d);
}
static void on_conn(linkd_service *s, const linkd_conn *c, void *arg) {
  (void)s; (void)arg;
  if (c->event == LINKD_CONNECTED) n_connect++;
  if (c->event == LINKD_DISCONNECTED) n_disconnect++;
  if (c->event == LINKD_EXISTING) n_existing++;
  if (c->event == LINKD_RESUMED) {
    n_resumed++;
    snprintf(last_previous, sizeof last_previous, "%s", c->previous_id);
  }
  last_conn_rooms[0] = 0;
  for (size_t i = 0; i < c->rooms_count; i++) {
    strcat(last_conn_rooms, c->rooms[i]);
    strcat(last_conn_rooms, ";");
  }
  snprintf(last_user, sizeof last_user, "%s/%s/%zu/%d/%s", c->user.user_id, c->user.username, c->user.roles_count,
           c->user.authenticated, c->user.client_cert_cn);
}
static void on_result(linkd_service *s, const linkd_result *r, void *arg) {
  (void)s; (void)arg;
  last_result = *r;
  snprintf(last_result_type, sizeof last_result_type, "%s", r->type);
  n_results++;
}
static void h_hello(linkd_service *s, const linkd_http_request *r, void *arg) {
  (void)arg;
  n_http++;
  char out[512];
  snprintf(out, sizeof out, "{\"name\":\"%s\",\"hdr\":\"%s\",\"body\":%zu,\"q\":\"%s\"}", linkd_http_param(r, "name"),
           linkd_http_header(r, "X-Test") ? linkd_http_header(r, "X-Test") : "", r->body_len, r->query);
  linkd_respond_json(s, r, 201, out);
}
static void h_silent(linkd_service *s, const linkd_http_request *r, void *arg) { (void)s; (void)r; (void)arg; n_http++; }
static void m_echo(linkd_service *s, const linkd_message *m, void *arg) {
  (void)arg;
  n_msg++;
  linkd_reply(s, m, m->data);
}
static void m_admin(linkd_service *s, const linkd_message *m, void *arg) {
  (void)s; (void)m; (void)arg;
  n_admin++;
}
static void rooms_cb(linkd_service *s, int64_t q, int ok, const char *const *rooms, size_t n, void *arg) {
  (void)s; (void)q; (void)arg;
  rooms_ok = ok;
  rooms_seen[0] = 0;
  for (size_t i = 0; i < n; i++) {
    strcat(rooms_seen, rooms[i]);
    strcat(rooms_seen, ";");
  }
}

/* ------------------------------------------------------------ frames the fake sends */
typedef struct payload_arg { const void *p; size_t n; } payload_arg;
static bool enc_payload(pb_ostream_t *st, const pb_field_t *f, void *const *arg);
typedef struct routes_arg { int n; linkd_HttpRoute r[4]; } routes_arg;
static bool dec_route(pb_istream_t *st, const pb_field_t *f, void **arg);
static bool enc_rooms(pb_ostream_t *st, const pb_field_t *f, void *const *arg);
static bool enc_req_fields(pb_ostream_t *st, const pb_field_t *f, void *const *arg);
static bool enc_many_params(pb_ostream_t *st, const pb_field_t *f, void *const *arg);
static void send_inbound(const char *conn, const char *type, const char *data, const char *corr, const char *role) {
  linkd_WebSocketInbound m = linkd_WebSocketInbound_init_zero;
  strcpy(m.connection_id, conn);
  strcpy(m.message_type, type);
  strcpy(m.correlation_id, corr);
  payload_arg b = {data, strlen(data)};
  m.payload.funcs.encode = enc_payload;
  m.payload.arg = &b;
  if (role) {
    m.has_user = true;
    strcpy(m.user.user_id, "u1");
    strcpy(m.user.username, "alice");
    m.user.roles_count = 1;
    strcpy(m.user.roles[0], role);
    m.user.authenticated = true;
  }
  fake_frame(21, linkd_WebSocketInbound_fields, &m);
}
static bool enc_payload(pb_ostream_t *st, const pb_field_t *f, void *const *arg) {
  const payload_arg *b = *arg;
  if (!b->n) return true;
  return pb_encode_tag_for_field(st, f) && pb_encode_string(st, b->p, b->n);
}

/* Decodes the WebSocketResponse just read: data into c, error into e. */
static int read_response(linkd_WebSocketResponse *r, cap *c) {
  memset(r, 0, sizeof *r);
  memset(c, 0, sizeof *c);
  r->data.funcs.decode = dec_cap;
  r->data.arg = c;
  pb_istream_t st = pb_istream_from_buffer(got, got_len);
  return pb_decode(&st, linkd_WebSocketResponse_fields, r);
}

/* ------------------------------------------------------------ tests */
static void test_helpers(void) {
  char out[64];
  double d = 0;
  int b = -1;
  const char *j = "{\"s\":\"a\\\"b\\u00e9\\ud83d\\ude00\",\"n\":-1.5e2,\"o\":{\"n\":7,\"arr\":[1,{\"x\":\"}\"}]},\"t\":true,\"z\":null}";
  CHECK("json_string with escapes, \\u and a surrogate pair",
        linkd_json_string(j, strlen(j), "s", out, sizeof out) == 0 && !strcmp(out, "a\"b\xc3\xa9\xf0\x9f\x98\x80"), "got '%s'", out);
  CHECK("json_number at the top level (nested members skipped)",
        linkd_json_number(j, strlen(j), "n", &d) == 0 && d == -150.0, "got %g", d);
  CHECK("json_bool", linkd_json_bool(j, strlen(j), "t", &b) == 0 && b == 1, "got %d", b);
  CHECK("json: absent, wrong type, not an object",
        linkd_json_number(j, strlen(j), "q", &d) < 0 && linkd_json_number(j, strlen(j), "s", &d) < 0 &&
            linkd_json_string("[1]", 3, "s", out, sizeof out) < 0 && linkd_json_string(j, 10, "n", out, sizeof out) < 0,
        "a lookup that should fail succeeded");
  CHECK("json_string too long for the buffer fails", linkd_json_string(j, strlen(j), "s", out, 3) < 0, "succeeded");
  size_t need = linkd_json_quote(out, sizeof out, "a\"\\\n\x01z");
  CHECK("json_quote escapes", need == strlen("\"a\\\"\\\\\\n\\u0001z\"") && !strcmp(out, "\"a\\\"\\\\\\n\\u0001z\""), "got %s", out);
  CHECK("json_quote reports the size it needs when cut", linkd_json_quote(out, 4, "abcdef") == 8 && !strcmp(out, "\"ab"), "got %s", out);
  CHECK("query_get decodes %XX and +",
        linkd_query_get("a=1&since=12%3A00+x&b", "since", out, sizeof out) == 7 && !strcmp(out, "12:00 x"), "got %s", out);
  CHECK("query_get: a name without a value, absent, too long",
        linkd_query_get("a=1&b", "b", out, sizeof out) == 0 && linkd_query_get("a=1", "c", out, sizeof out) < 0 &&
            linkd_query_get("a=123456", "a", out, 4) < 0,
        "unexpected result");
}

static void test_config(void) {
  linkd_config c;
  memset(&c, 0, sizeof c);
  c.log_level = LINKD_LOG_SILENT;
  CHECK("new: no name refused", linkd_service_new(&c) == NULL, "accepted");
  c.name = "x";
  c.websocket.path = "no-slash";
  CHECK("new: a WebSocket path without / refused", linkd_service_new(&c) == NULL, "accepted");
  c.websocket.path = "/ws";
  c.max_frame_bytes = 100;
  CHECK("new: max_frame_bytes under 1024 refused", linkd_service_new(&c) == NULL, "accepted");
  c.max_frame_bytes = 0;
  char longp[200];
  memset(longp, 'p', sizeof longp - 1);
  longp[sizeof longp - 1] = 0;
  c.socket_path = longp;
  CHECK("new: a socket path too long for sun_path refused", linkd_service_new(&c) == NULL, "accepted");
  c.socket_path = "/nonexistent/x.sock";
  linkd_service *s = linkd_service_new(&c);
  const char *roles17[18];
  for (int i = 0; i < 17; i++) roles17[i] = "r";
  roles17[17] = NULL;
  linkd_route_opts o = {0, roles17, NULL};
  CHECK("route: bad arguments refused",
        s && linkd_route(s, "GET", "nope", NULL, h_hello, NULL) == -EINVAL && linkd_route(s, "GET", "/a", &o, h_hello, NULL) == -EINVAL &&
            linkd_route(s, "GET", "/a", NULL, h_hello, NULL) == 0 && linkd_route(s, "get", "/a", NULL, h_hello, NULL) == -EEXIST,
        "unexpected result");
  CHECK("commands before registration: -ENOTCONN",
        s && linkd_send(s, "1.1", "x", NULL) == -ENOTCONN && linkd_join(s, "1.1", "r") == -ENOTCONN, "unexpected result");
  linkd_stop(s);
  int rc = linkd_process(s);
  struct pollfd p = {linkd_fd(s), POLLIN, 0};
  CHECK("linkd_stop() before linkd_start(): process() returns 1 and the descriptor is quiet (no busy loop)",
        rc == 1 && poll(&p, 1, 0) == 0, "rc %d, readable %d", rc, p.revents);
  linkd_service_free(s);
}

/* linkd_run() blocks while linkd is away; a signal handler's linkd_stop() ends it. */
static linkd_service *alarm_svc;
static void on_alarm(int sig) { (void)sig; linkd_stop(alarm_svc); }
static void test_run_stop(const char *dir) {
  linkd_config c;
  memset(&c, 0, sizeof c);
  char path[300];
  snprintf(path, sizeof path, "%s/absent.sock", dir);
  c.name = "runner";
  c.socket_path = path;
  c.log_level = LINKD_LOG_SILENT;
  alarm_svc = linkd_service_new(&c);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm;
  sigaction(SIGALRM, &sa, NULL);
  struct itimerval it = {{0, 0}, {0, 300000}};
  setitimer(ITIMER_REAL, &it, NULL);
  uint64_t t0 = ms();
  int rc = linkd_run(alarm_svc);
  uint64_t took = ms() - t0;
  CHECK("run() retries while linkd is away and returns 0 on linkd_stop() from a signal handler",
        rc == 0 && took >= 250 && took < 3000, "rc %d after %llu ms", rc, (unsigned long long)took);
  linkd_service_free(alarm_svc);
}

static void test_refused(const char *dir) {
  char path[300];
  snprintf(path, sizeof path, "%s/refuse.sock", dir);
  fake_listen(path);
  linkd_config c;
  memset(&c, 0, sizeof c);
  c.name = "refused";
  c.socket_path = path;
  c.log_level = LINKD_LOG_SILENT;
  c.on_link = on_link;
  S = linkd_service_new(&c);
  linkd_start(S);
  fake_accept(2000);
  int t = fake_expect(1, 2000);
  linkd_RegisterResult r = linkd_RegisterResult_init_zero;
  strcpy(r.reason, "path /ws owned by another service");
  fake_frame(2, linkd_RegisterResult_fields, &r);
  int rc = 0;
  uint64_t end = ms() + 2000;
  while (!rc && ms() < end) {
    pump(5);
    rc = linkd_process(S);
  }
  CHECK("a first registration refused: process() returns -EPERM, on_link REFUSED with the reason",
        t && rc == -EPERM && link_events[LINKD_LINK_REFUSED] == 1 && strstr(last_detail, "owned by another"),
        "rc %d refused %d detail '%s'", rc, link_events[LINKD_LINK_REFUSED], last_detail);
  linkd_service_free(S);
  fake_drop();
  close(F.lfd);
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  signal(SIGPIPE, SIG_IGN);
  const char *dir = argc > 1 ? argv[1] : "/tmp";
  char path[300];
  snprintf(path, sizeof path, "%s/fake.sock", dir);

  test_helpers();
  test_config();
  test_run_stop(dir);
  test_refused(dir);

  /* ---- a service against the fake linkd */
  fake_listen(path);
  linkd_config c;
  memset(&c, 0, sizeof c);
  c.name = "unit";
  c.version = "1.2.3";
  c.socket_path = path;
  c.websocket.path = "/ws/unit";
  c.websocket.max_message_size_bytes = 1000;
  c.websocket.recovery_window_ms = 30000;
  c.websocket.recovery_history = 50;
  c.max_frame_bytes = 8192;
  c.reconnect_initial_ms = 20;
  c.reconnect_max_ms = 50;
  c.command_timeout_ms = 300;
  c.log_level = getenv("UNIT_LOG") ? LINKD_LOG_DEBUG : LINKD_LOG_SILENT;
  c.on_link = on_link;
  c.on_connect = on_conn;
  c.on_disconnect = on_conn;
  c.on_existing = on_conn;
  c.on_resume = on_conn;
  c.on_result = on_result;
  S = linkd_service_new(&c);
  static const char *const admin[] = {"admin", NULL};
  static const char *const cors[] = {"https://a.example", NULL};
  linkd_route_opts ro = {1, admin, cors};
  linkd_handler_opts ho = {0, admin};
  linkd_route(S, "GET", "/u/:name", NULL, h_hello, NULL);
  linkd_route(S, "*", "/silent", NULL, h_silent, NULL);
  linkd_route(S, "POST", "/adm", &ro, h_hello, NULL);
  linkd_ws_on(S, "echo", NULL, m_echo, NULL);
  linkd_ws_on(S, "admin.do", &ho, m_admin, NULL);
  int fd_before = linkd_fd(S);
  linkd_start(S);

  CHECK("connects to linkd's socket", fake_accept(2000) == 0, "no connection");
  /* the registration */
  int t = fake_next(2000);
  linkd_RegisterService reg;
  memset(&reg, 0, sizeof reg);
  static routes_arg routes;
  reg.routes.funcs.decode = dec_route;
  reg.routes.arg = &routes;
  pb_istream_t st = pb_istream_from_buffer(got, got_len);
  int ok = t == 1 && pb_decode(&st, linkd_RegisterService_fields, &reg);
  CHECK("first frame is RegisterService: name, version, WebSocket path and limits",
        ok && !strcmp(reg.name, "unit") && !strcmp(reg.version, "1.2.3") && reg.has_websocket && reg.websocket.enabled &&
            !strcmp(reg.websocket.path, "/ws/unit") && reg.websocket.max_message_size_bytes == 1000,
        "tag %d name '%s'", t, reg.name);
  CHECK("RegisterService declares max_inbound_frame_bytes", ok && reg.max_inbound_frame_bytes == 8192, "got %u",
        reg.max_inbound_frame_bytes);
  CHECK("RegisterService asks for connection recovery (window, history)",
        ok && reg.websocket.has_recovery && reg.websocket.recovery.window_ms == 30000 && reg.websocket.recovery.history == 50,
        "recovery %d %u %u", reg.websocket.has_recovery, reg.websocket.recovery.window_ms, reg.websocket.recovery.history);
  CHECK("RegisterService lists the routes with method, auth, roles, CORS",
        routes.n == 3 && !strcmp(routes.r[0].method, "GET") && !strcmp(routes.r[0].path, "/u/:name") &&
            !strcmp(routes.r[1].method, "*") && routes.r[2].auth && routes.r[2].roles_count == 1 &&
            !strcmp(routes.r[2].roles[0], "admin") && routes.r[2].cors_origins_count == 1,
        "%d routes", routes.n);
  send_register_ok(4096);
  wait_registered(2000);
  CHECK("registered: on_link REGISTERED, linkd's version kept",
        linkd_registered(S) && link_events[LINKD_LINK_REGISTERED] == 1 && !strcmp(linkd_linkd_version(S), "9.9.9-fake"),
        "registered %d", linkd_registered(S));
  CHECK("linkd_fd() is stable", linkd_fd(S) == fd_before && fd_before >= 0, "fd changed");

  /* HTTP */
  {
    linkd_HttpRequest rq = linkd_HttpRequest_init_zero;
    rq.request_id = 77;
    strcpy(rq.method, "GET");
    strcpy(rq.route, "/u/:name");
    /* path, params, headers, body through raw encoders */
    rq.path.funcs.encode = enc_req_fields; rq.path.arg = (void *)"S/u/bob";
    rq.query.funcs.encode = enc_req_fields; rq.query.arg = (void *)"Sa=1";
    rq.params.funcs.encode = enc_req_fields; rq.params.arg = (void *)"Pname=bob";
    rq.headers.funcs.encode = enc_req_fields; rq.headers.arg = (void *)"PX-Test=yes";
    rq.body.funcs.encode = enc_req_fields; rq.body.arg = (void *)"Shello";
    fake_frame(3, linkd_HttpRequest_fields, &rq);
    int found = fake_expect(4, 2000);
    linkd_HttpResponse rs;
    memset(&rs, 0, sizeof rs);
    cap body, hdrs;
    memset(&body, 0, sizeof body);
    memset(&hdrs, 0, sizeof hdrs);
    rs.body.funcs.decode = dec_cap;
    rs.body.arg = &body;
    rs.headers.funcs.decode = dec_cap;
    rs.headers.arg = &hdrs;
    st = pb_istream_from_buffer(got, got_len);
    ok = found && pb_decode(&st, linkd_HttpResponse_fields, &rs);
    CHECK("HTTP request reaches its route; params, headers (any case), query, body; the response",
          ok && rs.request_id == 77 && rs.status == 201 && !strcmp(body.buf, "{\"name\":\"bob\",\"hdr\":\"yes\",\"body\":5,\"q\":\"a=1\"}") &&
              hdrs.count == 1 && strstr(hdrs.list[0], "application/json"),
          "status %u body '%s'", rs.status, body.buf);

    /* a handler that answers nothing: 200 null (any method via "*") */
    strcpy(rq.method, "DELETE");
    strcpy(rq.route, "/silent");
    rq.request_id = 78;
    fake_frame(3, linkd_HttpRequest_fields, &rq);
    found = fake_expect(4, 2000);
    memset(&body, 0, sizeof body);
    st = pb_istream_from_buffer(got, got_len);
    ok = found && pb_decode(&st, linkd_HttpResponse_fields, &rs);
    CHECK("a handler that answers nothing: 200 null; method * matches DELETE", ok && rs.request_id == 78 && rs.status == 200 && !strcmp(body.buf, "null"),
          "status %u body '%s'", rs.status, body.buf);

    /* unknown route, role required */
    strcpy(rq.route, "/nope");
    rq.request_id = 79;
    fake_frame(3, linkd_HttpRequest_fields, &rq);
    found = fake_expect(4, 2000);
    memset(&body, 0, sizeof body);
    st = pb_istream_from_buffer(got, got_len);
    ok = found && pb_decode(&st, linkd_HttpResponse_fields, &rs);
    CHECK("HTTP request for no route: 404 NOT_FOUND body", ok && rs.status == 404 && strstr(body.buf, "\"NOT_FOUND\""),
          "status %u body '%s'", rs.status, body.buf);
    strcpy(rq.method, "POST");
    strcpy(rq.route, "/adm");
    rq.request_id = 80;
    rq.has_user = true;
    rq.user.authenticated = true;
    strcpy(rq.user.user_id, "u2");
    fake_frame(3, linkd_HttpRequest_fields, &rq);
    found = fake_expect(4, 2000);
    memset(&body, 0, sizeof body);
    st = pb_istream_from_buffer(got, got_len);
    ok = found && pb_decode(&st, linkd_HttpResponse_fields, &rs);
    CHECK("HTTP route with roles, user without them: 403 FORBIDDEN", ok && rs.status == 403 && strstr(body.buf, "FORBIDDEN") && n_http == 2,
          "status %u body '%s' handlers %d", rs.status, body.buf, n_http);
    /* more params than any route has (300 > 256): the frame does not decode, the next one does */
    linkd_stats s0, s1;
    linkd_get_stats(S, &s0);
    strcpy(rq.method, "GET");
    strcpy(rq.route, "/u/:name");
    rq.request_id = 81;
    rq.params.funcs.encode = enc_many_params;
    fake_frame(3, linkd_HttpRequest_fields, &rq);
    rq.params.funcs.encode = enc_req_fields;
    rq.request_id = 82;
    fake_frame(3, linkd_HttpRequest_fields, &rq);
    found = fake_expect(4, 2000);
    st = pb_istream_from_buffer(got, got_len);
    ok = found && pb_decode(&st, linkd_HttpResponse_fields, &rs);
    linkd_get_stats(S, &s1);
    CHECK("a request with 300 params is skipped (lists are bounded), the next one answered",
          ok && rs.request_id == 82 && s1.frames_skipped == s0.frames_skipped + 1, "request %llu, skipped %llu",
          (unsigned long long)rs.request_id, (unsigned long long)(s1.frames_skipped - s0.frames_skipped));
  }

  /* WebSocket messages */
  {
    linkd_WebSocketResponse r;
    cap data;
    send_inbound("3.1", "echo", "{\"a\":[1,2]}", "m1", NULL);
    int found = fake_expect(24, 2000);
    ok = found && read_response(&r, &data);
    CHECK("message to its handler; reply carries the connection and correlation ids",
          ok && !strcmp(r.connection_id, "3.1") && !strcmp(r.correlation_id, "m1") && !r.has_error && !strcmp(data.buf, "{\"a\":[1,2]}"),
          "conn '%s' corr '%s' data '%s'", r.connection_id, r.correlation_id, data.buf);
    send_inbound("3.1", "echo", "", "m2", NULL);
    found = fake_expect(24, 2000);
    ok = found && read_response(&r, &data);
    CHECK("absent data arrives as null", ok && !strcmp(data.buf, "null"), "data '%s'", data.buf);
    send_inbound("3.1", "admin.do", "{}", "m3", "user");
    found = fake_expect(24, 2000);
    ok = found && read_response(&r, &data);
    CHECK("handler with roles, user without them: FORBIDDEN 403, handler not run",
          ok && r.has_error && !strcmp(r.error.type, "FORBIDDEN") && r.error.code == 403 && n_admin == 0,
          "error %d '%s' runs %d", r.has_error, r.error.type, n_admin);
    send_inbound("3.1", "admin.do", "{}", "m4", "admin");
    found = fake_expect(24, 2000);
    ok = found && read_response(&r, &data);
    CHECK("handler with roles, user with one: runs; no answer given means data null",
          ok && !r.has_error && !strcmp(data.buf, "") && n_admin == 1 && !strcmp(r.correlation_id, "m4"),
          "error %d data '%s' runs %d", r.has_error, data.buf, n_admin);
    send_inbound("3.1", "what.ever", "1", "m5", NULL);
    found = fake_expect(24, 2000);
    ok = found && read_response(&r, &data);
    CHECK("message type without a handler and no catch-all: NOT_FOUND", ok && r.has_error && !strcmp(r.error.type, "NOT_FOUND"),
          "error %d '%s'", r.has_error, r.error.type);
    send_inbound("3.1", "echo", "1", "", NULL);
    send_inbound("3.1", "echo", "2", "m6", NULL);
    found = fake_expect(24, 2000);
    ok = found && read_response(&r, &data);
    CHECK("a message without an id gets no reply", ok && !strcmp(r.correlation_id, "m6") && n_msg == 4, "corr '%s' msgs %d",
          r.correlation_id, n_msg);
  }

  /* connection events */
  {
    linkd_WebSocketConnectionEvent e = linkd_WebSocketConnectionEvent_init_zero;
    strcpy(e.connection_id, "4.2");
    strcpy(e.path, "/ws/unit");
    e.has_user = true;
    strcpy(e.user.user_id, "u9");
    strcpy(e.user.username, "zed");
    e.user.roles_count = 2;
    strcpy(e.user.roles[0], "a");
    strcpy(e.user.roles[1], "b");
    e.user.authenticated = true;
    strcpy(e.user.client_cert_cn, "device-7");
    fake_frame(20, linkd_WebSocketConnectionEvent_fields, &e);
    e.event_type = linkd_WebSocketConnectionEvent_EventType_DISCONNECTED;
    e.rooms.funcs.encode = enc_rooms;
    fake_frame(20, linkd_WebSocketConnectionEvent_fields, &e);
    pump_for(100);
    CHECK("connection events: CONNECTED with the user (client certificate CN too), DISCONNECTED with its rooms",
          n_connect == 1 && n_disconnect == 1 && !strcmp(last_conn_rooms, "lobby;kitchen;") && !strcmp(last_user, "u9/zed/2/1/device-7"),
          "connect %d disconnect %d rooms '%s' user '%s'", n_connect, n_disconnect, last_conn_rooms, last_user);
    e.event_type = linkd_WebSocketConnectionEvent_EventType_RESUMED;
    strcpy(e.connection_id, "4.9");
    strcpy(e.previous_connection_id, "4.2");
    fake_frame(20, linkd_WebSocketConnectionEvent_fields, &e);
    pump_for(50);
    CHECK("RESUMED: on_resume with the new id, the previous one and the rooms given back",
          n_resumed == 1 && !strcmp(last_previous, "4.2") && !strcmp(last_conn_rooms, "lobby;kitchen;"),
          "resumed %d previous '%s' rooms '%s'", n_resumed, last_previous, last_conn_rooms);
  }

  /* commands and their results */
  {
    const char *except[] = {"1.1", "2.2", "3.3", NULL};
    int64_t op = linkd_to_room(S, "lobby", "news", "{\"n\":1}", except);
    int found = fake_expect(22, 2000);
    linkd_WebSocketOutbound ob;
    memset(&ob, 0, sizeof ob);
    cap pl, ex;
    memset(&pl, 0, sizeof pl);
    memset(&ex, 0, sizeof ex);
    ob.payload.funcs.decode = dec_cap;
    ob.payload.arg = &pl;
    ob.except_connections.funcs.decode = dec_cap;
    ob.except_connections.arg = &ex;
    st = pb_istream_from_buffer(got, got_len);
    ok = found && pb_decode(&st, linkd_WebSocketOutbound_fields, &ob);
    CHECK("to_room: room, event, payload and the whole except list, with an op id",
          ok && op > 0 && ob.op_id == (uint64_t)op && !strcmp(ob.room, "lobby") && !strcmp(ob.event, "news") &&
              !strcmp(pl.buf, "{\"n\":1}") && ex.count == 3 && !strcmp(ex.list[2], "3.3"),
          "op %lld/%llu room '%s' except %d", (long long)op, (unsigned long long)ob.op_id, ob.room, ex.count);
    linkd_CommandResult cr = linkd_CommandResult_init_zero;
    cr.op_id = (uint64_t)op;
    cr.ok = true;
    cr.delivered = 7;
    fake_frame(10, linkd_CommandResult_fields, &cr);
    pump_for(50);
    CHECK("on_result: ok with the delivered count", n_results == 1 && last_result.op_id == op && last_result.ok && last_result.delivered == 7,
          "results %d ok %d delivered %u", n_results, last_result.ok, last_result.delivered);
    int64_t op2 = linkd_send(S, "9.9", "x", NULL);
    fake_expect(22, 2000);
    cr.op_id = (uint64_t)op2;
    cr.ok = false;
    cr.has_error = true;
    cr.error.code = 410;
    strcpy(cr.error.type, "NOT_DELIVERED");
    fake_frame(10, linkd_CommandResult_fields, &cr);
    pump_for(50);
    CHECK("on_result: a failure with linkd's error", n_results == 2 && !last_result.ok && !strcmp(last_result_type, "NOT_DELIVERED") && last_result.code == 410,
          "results %d type '%s'", n_results, last_result_type);
    int64_t op3 = linkd_join(S, "5.5", "r");
    fake_expect(23, 2000);
    uint64_t t0 = ms();
    while (n_results < 3 && ms() - t0 < 2000) pump(10);
    CHECK("on_result: TIMEOUT when linkd never answers (command_timeout_ms)",
          n_results == 3 && last_result.op_id == op3 && !strcmp(last_result_type, "TIMEOUT") && ms() - t0 >= 200,
          "results %d type '%s' after %llu ms", n_results, last_result_type, (unsigned long long)(ms() - t0));
    char big[5000];
    memset(big, '1', sizeof big - 1);
    big[sizeof big - 1] = 0;
    CHECK("a command over linkd's frame limit: -EMSGSIZE", linkd_send(S, "1.1", "x", big) == -EMSGSIZE, "not refused");
    char longid[120];   /* connection ids are at most 95 bytes (proto: 96) */
    memset(longid, '7', sizeof longid - 1);
    longid[sizeof longid - 1] = 0;
    CHECK("ids and rooms that do not fit the protocol: -EINVAL",
          linkd_send(S, longid, "x", NULL) == -EINVAL && linkd_join(S, "1.1", "") == -EINVAL && linkd_to_room(S, "r", "", "1", NULL) == -EINVAL,
          "not refused");
    /* a reply over the limit becomes an error reply */
    send_inbound("3.1", "echo", big + 4000 - 3500, "m7", NULL);
    int foundr = fake_expect(24, 2000);
    linkd_WebSocketResponse r;
    cap data;
    ok = foundr && read_response(&r, &data);
    CHECK("a reply over linkd's frame limit is sent as RESPONSE_TOO_LARGE", ok && r.has_error && !strcmp(r.error.type, "RESPONSE_TOO_LARGE"),
          "error %d '%s'", r.has_error, r.error.type);
    /* rooms query */
    int64_t q = linkd_rooms(S, "3.1", rooms_cb, NULL);
    fake_expect(7, 2000);
    linkd_RoomsResult rr = linkd_RoomsResult_init_zero;
    rr.query_id = (uint64_t)q;
    rr.rooms.funcs.encode = enc_rooms;
    fake_frame(8, linkd_RoomsResult_fields, &rr);
    pump_for(50);
    CHECK("rooms(): the callback gets linkd's list", rooms_ok == 1 && !strcmp(rooms_seen, "lobby;kitchen;"), "ok %d rooms '%s'", rooms_ok, rooms_seen);
    /* heartbeat */
    linkd_Heartbeat hb = linkd_Heartbeat_init_zero;
    hb.timestamp_ms = 1;
    fake_frame(9, linkd_Heartbeat_fields, &hb);
    found = fake_expect(9, 2000);
    linkd_Heartbeat hr = linkd_Heartbeat_init_zero;
    st = pb_istream_from_buffer(got, got_len);
    CHECK("a heartbeat is answered with reply=true", found && pb_decode(&st, linkd_Heartbeat_fields, &hr) && hr.reply, "no answer");
  }

  /* bad frames: skipped and logged, the link stays */
  {
    linkd_stats s0, s1;
    linkd_get_stats(S, &s0);
    static const uint8_t garbage[] = {5, 0xaa, 0x01, 0x03, 0xff, 0xff};   /* member 21 whose length runs past the frame */
    fake_send(garbage, sizeof garbage);
    static const uint8_t badinner[] = {6, 0xaa, 0x01, 0x03, 0x0a, 0x09, 'x'}; /* member 21: a string longer than its bytes */
    fake_send(badinner, sizeof badinner);
    static const uint8_t badtag[] = {2, 0x00, 0x00};                         /* field number 0 */
    fake_send(badtag, sizeof badtag);
    /* wire type mismatch: connection_id (a string) sent as fixed32 */
    static const uint8_t fixed[] = {9, 0xaa, 0x01, 0x06, 0x20, 0x96, 0x01, 0x0d, 0x01, 0x02, 0x03};
    fake_send(fixed, 10);
    /* payload (bytes) sent as a varint: handed over, copied (2 bytes) */
    static const uint8_t scalar[] = {21, 0xaa, 0x01, 0x12, 0x20, 0x96, 0x01, 0x0a, 0x03, '3', '.', '1', 0x2a, 0x02, 's', '1',
                                    0x1a, 0x04, 'e', 'c', 'h', 'o'};
    fake_send(scalar, sizeof scalar);
    int f1 = fake_expect(24, 2000);
    linkd_WebSocketResponse r0;
    cap d0;
    ok = f1 && read_response(&r0, &d0);
    CHECK("a bytes field sent with a scalar wire type is copied, never read past", ok && !strcmp(r0.correlation_id, "s1") && d0.n == 2,
          "corr '%s' n %zu", r0.correlation_id, d0.n);
    send_inbound("3.1", "echo", "\"after\"", "m8", NULL);
    int found = fake_expect(24, 2000);
    linkd_WebSocketResponse r;
    cap data;
    ok = found && read_response(&r, &data);
    linkd_get_stats(S, &s1);
    CHECK("undecodable frames are skipped, counted, and the next frame is handled",
          ok && !strcmp(data.buf, "\"after\"") && s1.frames_skipped - s0.frames_skipped >= 3 && linkd_registered(S),
          "skipped %llu data '%s'", (unsigned long long)(s1.frames_skipped - s0.frames_skipped), data.buf);
    /* oversize: 20000 bytes (limit 8192), sent in pieces, then a good frame */
    static uint8_t over[20003] = {0xa0, 0x9c, 0x01};   /* varint 20000 */
    memset(over + 3, 0x55, 20000);
    linkd_get_stats(S, &s0);
    for (size_t off = 0; off < sizeof over; off += 3001) {
      size_t n = sizeof over - off < 3001 ? sizeof over - off : 3001;
      fake_send(over + off, n);
      pump(2);
    }
    send_inbound("3.1", "echo", "\"after2\"", "m9", NULL);
    found = fake_expect(24, 2000);
    ok = found && read_response(&r, &data);
    linkd_get_stats(S, &s1);
    CHECK("a frame over max_frame_bytes is skipped as it arrives; the link stays",
          ok && !strcmp(data.buf, "\"after2\"") && s1.frames_skipped - s0.frames_skipped == 1 && linkd_registered(S),
          "skipped %llu data '%s'", (unsigned long long)(s1.frames_skipped - s0.frames_skipped), data.buf);
    /* a frame split into single bytes */
    static uint8_t one[256];
    linkd_WebSocketInbound m = linkd_WebSocketInbound_init_zero;
    strcpy(m.connection_id, "3.1");
    strcpy(m.message_type, "echo");
    strcpy(m.correlation_id, "m10");
    size_t n = frame_enc(one, sizeof one, 21, linkd_WebSocketInbound_fields, &m);
    for (size_t i = 0; i < n; i++) {
      fake_send(one + i, 1);
      pump(1);
    }
    found = fake_expect(24, 2000);
    ok = found && read_response(&r, &data);
    CHECK("a frame arriving one byte at a time", ok && !strcmp(r.correlation_id, "m10"), "corr '%s'", r.correlation_id);
    /* unknown members and an empty frame are ignored */
    static const uint8_t unknown[] = {4, 0xfa, 0x01, 0x01, 0x00, 0};
    fake_send(unknown, sizeof unknown);
    send_inbound("3.1", "echo", "3", "m11", NULL);
    found = fake_expect(24, 2000);
    ok = found && read_response(&r, &data);
    CHECK("unknown members and empty frames are ignored", ok && !strcmp(r.correlation_id, "m11"), "corr '%s'", r.correlation_id);
  }

  /* linkd restarts: DOWN, pending commands fail, reconnect, register again, EXISTING */
  {
    int n0 = n_results;
    linkd_join(S, "1.1", "r");
    fake_expect(23, 2000);
    fake_drop();
    uint64_t t0 = ms();
    while (link_events[LINKD_LINK_DOWN] == 0 && ms() - t0 < 2000) pump(5);
    CHECK("link lost: on_link DOWN, the pending command fails SERVICE_UNAVAILABLE",
          link_events[LINKD_LINK_DOWN] == 1 && n_results == n0 + 1 && !strcmp(last_result_type, "SERVICE_UNAVAILABLE") && !linkd_registered(S),
          "down %d results %d type '%s'", link_events[LINKD_LINK_DOWN], n_results - n0, last_result_type);
    CHECK("reconnects (backoff) and registers again", fake_accept(3000) == 0 && fake_expect(1, 2000), "no new registration");
    send_register_ok(65536);
    linkd_WebSocketConnectionEvent e = linkd_WebSocketConnectionEvent_init_zero;
    strcpy(e.connection_id, "4.3");
    e.event_type = linkd_WebSocketConnectionEvent_EventType_EXISTING;
    fake_frame(20, linkd_WebSocketConnectionEvent_fields, &e);
    wait_registered(2000);
    pump_for(50);
    linkd_stats s1;
    linkd_get_stats(S, &s1);
    CHECK("registered again: on_link REGISTERED, EXISTING events, reconnects counted",
          linkd_registered(S) && link_events[LINKD_LINK_REGISTERED] == 2 && n_existing == 1 && s1.reconnects == 1,
          "registered %d events %d existing %d", linkd_registered(S), link_events[LINKD_LINK_REGISTERED], n_existing);
    /* a broken length prefix: no boundary can be found, the link is dropped and comes back */
    static const uint8_t broken[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    fake_send(broken, sizeof broken);
    t0 = ms();
    while (link_events[LINKD_LINK_DOWN] < 2 && ms() - t0 < 2000) pump(5);
    fake_drop();
    int back = fake_accept(3000) == 0 && fake_expect(1, 2000);
    send_register_ok(65536);
    wait_registered(2000);
    CHECK("a broken length prefix drops the link, which reconnects", link_events[LINKD_LINK_DOWN] == 2 && back && linkd_registered(S),
          "down %d back %d", link_events[LINKD_LINK_DOWN], back);
  }

  /* stop */
  linkd_stop(S);
  int rc = linkd_process(S);
  int eof = fake_next(1000);
  CHECK("linkd_stop(): process() returns 1 and the link is closed", rc == 1 && eof == -1 && !linkd_registered(S), "rc %d eof %d", rc, eof);
  linkd_service_free(S);
  fake_drop();
  close(F.lfd);
  unlink(path);
  printf("# unit: %d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}

/* ---- encoders/decoders used above */
static bool dec_route(pb_istream_t *st, const pb_field_t *f, void **arg) {
  (void)f;
  routes_arg *rs = *arg;
  if (rs->n >= 4) return pb_read(st, NULL, st->bytes_left);
  return pb_decode(st, linkd_HttpRoute_fields, &rs->r[rs->n++]);
}

static bool enc_rooms(pb_ostream_t *st, const pb_field_t *f, void *const *arg) {
  (void)arg;
  return pb_encode_tag_for_field(st, f) && pb_encode_string(st, (const pb_byte_t *)"lobby", 5) &&
         pb_encode_tag_for_field(st, f) && pb_encode_string(st, (const pb_byte_t *)"kitchen", 7);
}

/* "Stext": a string field; "Pname=value": a Param/Header submessage */
static bool enc_req_fields(pb_ostream_t *st, const pb_field_t *f, void *const *arg) {
  const char *spec = *arg;
  if (!pb_encode_tag_for_field(st, f)) return false;
  if (spec[0] == 'S') return pb_encode_string(st, (const pb_byte_t *)spec + 1, strlen(spec + 1));
  const char *eq = strchr(spec, '=');
  size_t nl = (size_t)(eq - spec - 1), vl = strlen(eq + 1);
  uint8_t tmp[256];
  pb_ostream_t o = pb_ostream_from_buffer(tmp, sizeof tmp);
  pb_encode_tag(&o, PB_WT_STRING, 1);
  pb_encode_string(&o, (const pb_byte_t *)spec + 1, nl);
  pb_encode_tag(&o, PB_WT_STRING, 2);
  pb_encode_string(&o, (const pb_byte_t *)eq + 1, vl);
  return pb_encode_string(st, tmp, o.bytes_written);
}

static bool enc_many_params(pb_ostream_t *st, const pb_field_t *f, void *const *arg) {
  (void)arg;
  for (int i = 0; i < 300; i++)
    if (!pb_encode_tag_for_field(st, f) || !pb_encode_string(st, (const pb_byte_t *)"", 0)) return false;
  return true;
}
