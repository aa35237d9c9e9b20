/* svc_c: a test service on the C library (sdk/c), driven by linkd_run().
 * tests/t_sdk_c.sh starts it against a real linkd and talks to it over
 * HTTP and WebSocket. It prints one line per event on stdout:
 *   REGISTERED <linkd version> | DOWN <why> | REFUSED <why>
 *   CONNECT|DISCONNECT|EXISTING|RESUMED {"id":..,"user":..,"rooms":[..],"code":N} (RESUMED after RESUMED_FROM <previous id>)
 *   RESULT <op> <ok> <type> <delivered>
 *
 *   svc_c [--socket PATH] [--name NAME] [--path /ws/c] [--prefix /c] [--max-frame N] [--recovery MS]
 *
 * HTTP (under --prefix, default /c):
 *   GET  /hello/:name   {"name","x" (query),"agent" (header),"method","path","route","user"}
 *   POST /echo          the body back, with the request's content type
 *   GET  /admin         roles admin: {"admin":true}
 *   GET  /nothing       the handler answers nothing: 200 null
 *   GET  /error         409 {"error":{"type":"CONFLICT",...}}
 *   GET  /big?n=N       N bytes of text/plain
 *   *    /any           {"method": ...}
 * WebSocket messages (data is JSON):
 *   echo, whoami, join {room}, leave {room}, say {room,text,except_self}, all {text,except_self},
 *   dm {to,text}, rooms (deferred until linkd answers), admin (roles admin), authed (auth),
 *   fail, silent (no answer: data null), kick, big {n}
 */
#define _GNU_SOURCE
#include "linkd_service.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static linkd_service *svc;
static char prefix[64] = "/c";

static void on_term(int sig) {
  (void)sig;
  linkd_stop(svc);
}

/* ---- a small string builder */
typedef struct sb { char *p; size_t n, cap; } sb;
static void sb_put(sb *b, const char *s, size_t n) {
  if (b->n + n + 1 > b->cap) {
    size_t c = b->cap ? b->cap : 256;
    while (c < b->n + n + 1) c *= 2;
    char *q = realloc(b->p, c);
    if (!q) abort();
    b->p = q;
    b->cap = c;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = 0;
}
static void sb_str(sb *b, const char *s) { sb_put(b, s, strlen(s)); }
static void sb_q(sb *b, const char *s) {
  size_t need = linkd_json_quote(NULL, 0, s) + 1;
  char *t = malloc(need);
  if (!t) abort();
  linkd_json_quote(t, need, s);
  sb_str(b, t);
  free(t);
}
static void sb_user(sb *b, const linkd_user *u) {
  sb_str(b, "{\"id\":");
  sb_q(b, u->user_id);
  sb_str(b, ",\"name\":");
  sb_q(b, u->username);
  sb_str(b, ",\"tenant\":");
  sb_q(b, u->tenant_id);
  sb_str(b, u->authenticated ? ",\"authenticated\":true" : ",\"authenticated\":false");
  sb_str(b, ",\"roles\":[");
  for (size_t i = 0; i < u->roles_count; i++) {
    if (i) sb_str(b, ",");
    sb_q(b, u->roles[i]);
  }
  sb_str(b, "]}");
}

/* ---- link and connection events */
static void on_link(linkd_service *s, linkd_link_event ev, const char *detail, void *arg) {
  (void)s; (void)arg;
  printf("%s %s\n", ev == LINKD_LINK_REGISTERED ? "REGISTERED" : ev == LINKD_LINK_DOWN ? "DOWN" : "REFUSED", detail);
}

static void conn_line(const char *kind, const linkd_conn *c) {
  sb b = {0};
  sb_str(&b, "{\"id\":");
  sb_q(&b, c->id);
  sb_str(&b, ",\"path\":");
  sb_q(&b, c->path);
  sb_str(&b, ",\"remote\":");
  sb_q(&b, c->remote_address);
  sb_str(&b, ",\"user\":");
  sb_user(&b, &c->user);
  sb_str(&b, ",\"rooms\":[");
  for (size_t i = 0; i < c->rooms_count; i++) {
    if (i) sb_str(&b, ",");
    sb_q(&b, c->rooms[i]);
  }
  char tail[64];
  snprintf(tail, sizeof tail, "],\"code\":%u,\"at\":%llu}", c->close_code, (unsigned long long)c->connected_at_ms);
  sb_str(&b, tail);
  printf("%s %s\n", kind, b.p);
  free(b.p);
}
static void on_connect(linkd_service *s, const linkd_conn *c, void *arg) { (void)s; (void)arg; conn_line("CONNECT", c); }
static void on_disconnect(linkd_service *s, const linkd_conn *c, void *arg) { (void)s; (void)arg; conn_line("DISCONNECT", c); }
static void on_existing(linkd_service *s, const linkd_conn *c, void *arg) { (void)s; (void)arg; conn_line("EXISTING", c); }
static void on_resume(linkd_service *s, const linkd_conn *c, void *arg) {
  (void)s; (void)arg;
  printf("RESUMED_FROM %s\n", c->previous_id);
  conn_line("RESUMED", c);
}

static void on_result(linkd_service *s, const linkd_result *r, void *arg) {
  (void)s; (void)arg;
  printf("RESULT %lld %d %s %u\n", (long long)r->op_id, r->ok, r->ok ? "-" : r->type, r->delivered);
}

/* ---- HTTP */
static void h_hello(linkd_service *s, const linkd_http_request *r, void *arg) {
  (void)arg;
  char x[256] = "";
  if (linkd_query_get(r->query, "x", x, sizeof x) < 0) x[0] = 0;
  const char *agent = linkd_http_header(r, "user-agent");
  sb b = {0};
  sb_str(&b, "{\"name\":");
  sb_q(&b, linkd_http_param(r, "name") ? linkd_http_param(r, "name") : "");
  sb_str(&b, ",\"x\":");
  sb_q(&b, x);
  sb_str(&b, ",\"agent\":");
  sb_q(&b, agent ? agent : "");
  sb_str(&b, ",\"method\":");
  sb_q(&b, r->method);
  sb_str(&b, ",\"path\":");
  sb_q(&b, r->path);
  sb_str(&b, ",\"route\":");
  sb_q(&b, r->route);
  sb_str(&b, ",\"user\":");
  sb_user(&b, &r->user);
  sb_str(&b, "}");
  linkd_respond_json(s, r, 200, b.p);
  free(b.p);
}

static void h_echo(linkd_service *s, const linkd_http_request *r, void *arg) {
  (void)arg;
  const char *ct = linkd_http_header(r, "content-type");
  linkd_pair h[2] = {{"content-type", ct ? ct : "application/octet-stream"}, {"x-body-bytes", NULL}};
  char n[32];
  snprintf(n, sizeof n, "%zu", r->body_len);
  h[1].value = n;
  linkd_http_defer(s, r);   /* answered with the id form, to use it */
  linkd_respond_id(s, r->id, 200, h, 2, r->body, r->body_len);
}

static void h_admin(linkd_service *s, const linkd_http_request *r, void *arg) {
  (void)arg;
  linkd_respond_json(s, r, 200, "{\"admin\":true}");
}

static void h_nothing(linkd_service *s, const linkd_http_request *r, void *arg) { (void)s; (void)r; (void)arg; }

static void h_error(linkd_service *s, const linkd_http_request *r, void *arg) {
  (void)arg;
  linkd_respond_error(s, r, 409, "CONFLICT", "already \"there\"");
}

static void h_big(linkd_service *s, const linkd_http_request *r, void *arg) {
  (void)arg;
  char n[32];
  long len = linkd_query_get(r->query, "n", n, sizeof n) > 0 ? atol(n) : 0;
  if (len < 0 || len > 64L * 1024 * 1024) len = 0;
  char *body = malloc((size_t)len + 1);
  if (!body) abort();
  memset(body, 'b', (size_t)len);
  int rc = linkd_respond(s, r, 200, "text/plain", body, (size_t)len);
  if (rc < 0) printf("BIG_RESPOND %d\n", rc);
  free(body);
}

static void h_any(linkd_service *s, const linkd_http_request *r, void *arg) {
  (void)arg;
  char out[128];
  snprintf(out, sizeof out, "{\"method\":\"%s\"}", r->method);
  linkd_respond_json(s, r, 201, out);
}

/* ---- WebSocket */
static void m_echo(linkd_service *s, const linkd_message *m, void *arg) {
  (void)arg;
  linkd_reply(s, m, m->data);
}

static void m_whoami(linkd_service *s, const linkd_message *m, void *arg) {
  (void)arg;
  sb b = {0};
  sb_str(&b, "{\"conn\":");
  sb_q(&b, m->conn_id);
  sb_str(&b, ",\"user\":");
  sb_user(&b, &m->user);
  sb_str(&b, "}");
  linkd_reply(s, m, b.p);
  free(b.p);
}

static void reply_op(linkd_service *s, const linkd_message *m, const char *what, int64_t op) {
  char out[160];
  if (op < 0) {
    snprintf(out, sizeof out, "%s failed: %s", what, strerror((int)-op));
    linkd_reply_error(s, m, 400, "COMMAND_REFUSED", out);
    return;
  }
  snprintf(out, sizeof out, "{\"%s\":true,\"op\":%lld}", what, (long long)op);
  linkd_reply(s, m, out);
}

static void m_join(linkd_service *s, const linkd_message *m, void *arg) {
  char room[200] = "";
  linkd_json_string(m->data, m->data_len, "room", room, sizeof room);
  reply_op(s, m, arg ? "left" : "joined", arg ? linkd_leave(s, m->conn_id, room) : linkd_join(s, m->conn_id, room));
}

static void m_say(linkd_service *s, const linkd_message *m, void *arg) {
  char room[200] = "", text[1024] = "";
  int except_self = 0;
  linkd_json_string(m->data, m->data_len, "room", room, sizeof room);
  linkd_json_string(m->data, m->data_len, "text", text, sizeof text);
  linkd_json_bool(m->data, m->data_len, "except_self", &except_self);
  sb b = {0};
  sb_str(&b, "{\"from\":");
  sb_q(&b, m->conn_id);
  sb_str(&b, ",\"text\":");
  sb_q(&b, text);
  sb_str(&b, "}");
  const char *except[] = {m->conn_id, NULL};
  int64_t op = arg ? linkd_to_all(s, "everyone", b.p, except_self ? except : NULL)
                   : linkd_to_room(s, room, "said", b.p, except_self ? except : NULL);
  free(b.p);
  reply_op(s, m, "sent", op);
}

static void m_dm(linkd_service *s, const linkd_message *m, void *arg) {
  (void)arg;
  char to[64] = "", text[512] = "";
  linkd_json_string(m->data, m->data_len, "to", to, sizeof to);
  linkd_json_string(m->data, m->data_len, "text", text, sizeof text);
  char q[600], out[700];
  linkd_json_quote(q, sizeof q, text);
  snprintf(out, sizeof out, "{\"text\":%s}", q);
  reply_op(s, m, "sent", linkd_send(s, to, "dm", out));
}

/* rooms: answered later, when linkd's RoomsResult comes back */
typedef struct ask { char conn[64], id[160]; } ask;
static void rooms_answer(linkd_service *s, int64_t q, int ok, const char *const *rooms, size_t n, void *arg) {
  (void)q;
  ask *a = arg;
  sb b = {0};
  sb_str(&b, ok ? "{\"ok\":true,\"rooms\":[" : "{\"ok\":false,\"rooms\":[");
  for (size_t i = 0; i < n; i++) {
    if (i) sb_str(&b, ",");
    sb_q(&b, rooms[i]);
  }
  sb_str(&b, "]}");
  linkd_reply_to(s, a->conn, a->id, b.p);
  free(b.p);
  free(a);
}
static void m_rooms(linkd_service *s, const linkd_message *m, void *arg) {
  (void)arg;
  ask *a = calloc(1, sizeof *a);
  if (!a) abort();
  snprintf(a->conn, sizeof a->conn, "%s", m->conn_id);
  snprintf(a->id, sizeof a->id, "%s", m->id);
  linkd_defer(s, m);
  if (linkd_rooms(s, m->conn_id, rooms_answer, a) < 0) {
    linkd_reply_error_to(s, a->conn, a->id, 503, "SERVICE_UNAVAILABLE", "not connected");
    free(a);
  }
}

static void m_admin(linkd_service *s, const linkd_message *m, void *arg) {
  (void)arg;
  linkd_reply(s, m, "{\"admin\":true}");
}

static void m_fail(linkd_service *s, const linkd_message *m, void *arg) {
  (void)arg;
  linkd_reply_error(s, m, 422, "VALIDATION_ERROR", "bad thing");
}

static void m_silent(linkd_service *s, const linkd_message *m, void *arg) { (void)s; (void)m; (void)arg; }

static void m_kick(linkd_service *s, const linkd_message *m, void *arg) {
  (void)arg;
  reply_op(s, m, "kicked", linkd_disconnect(s, m->conn_id, 4001, "kicked"));
}

static void m_big(linkd_service *s, const linkd_message *m, void *arg) {
  (void)arg;
  double n = 0;
  linkd_json_number(m->data, m->data_len, "n", &n);
  if (n < 0 || n > 64.0 * 1024 * 1024) n = 0;
  size_t len = (size_t)n;
  char *out = malloc(len + 3);
  if (!out) abort();
  out[0] = '"';
  memset(out + 1, 'x', len);
  out[len + 1] = '"';
  out[len + 2] = 0;
  int rc = linkd_reply(s, m, out);
  if (rc < 0) printf("BIG_REPLY %d\n", rc);
  free(out);
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  linkd_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.name = "csvc";
  cfg.version = "1.0.0";
  cfg.websocket.path = "/ws/c";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--socket")) cfg.socket_path = argv[i + 1];
    else if (!strcmp(argv[i], "--name")) cfg.name = argv[i + 1];
    else if (!strcmp(argv[i], "--path")) cfg.websocket.path = argv[i + 1];
    else if (!strcmp(argv[i], "--prefix")) snprintf(prefix, sizeof prefix, "%s", argv[i + 1]);
    else if (!strcmp(argv[i], "--max-frame")) cfg.max_frame_bytes = (uint32_t)strtoul(argv[i + 1], NULL, 10);
    else if (!strcmp(argv[i], "--recovery")) {
      cfg.websocket.recovery_window_ms = (unsigned)strtoul(argv[i + 1], NULL, 10);
      cfg.websocket.recovery_history = 100;
    }
    else { fprintf(stderr, "svc_c: unknown option %s\n", argv[i]); return 2; }
  }
  cfg.on_connect = on_connect;
  cfg.on_disconnect = on_disconnect;
  cfg.on_existing = on_existing;
  cfg.on_resume = on_resume;
  cfg.on_result = on_result;
  cfg.on_link = on_link;
  cfg.reconnect_max_ms = 1000;
  svc = linkd_service_new(&cfg);
  if (!svc) return 2;

  static const char *const admin[] = {"admin", NULL};
  linkd_route_opts admin_only = {0, admin, NULL};
  char p[128];
#define ROUTE(m, path, opts, cb) (snprintf(p, sizeof p, "%s%s", prefix, path), linkd_route(svc, m, p, opts, cb, NULL))
  ROUTE("GET", "/hello/:name", NULL, h_hello);
  ROUTE("POST", "/echo", NULL, h_echo);
  ROUTE("GET", "/admin", &admin_only, h_admin);
  ROUTE("GET", "/nothing", NULL, h_nothing);
  ROUTE("GET", "/error", NULL, h_error);
  ROUTE("GET", "/big", NULL, h_big);
  ROUTE("*", "/any", NULL, h_any);
  linkd_handler_opts admin_h = {0, admin};
  linkd_handler_opts authed = {1, NULL};
  static int leave = 1, all = 1;
  linkd_ws_on(svc, "echo", NULL, m_echo, NULL);
  linkd_ws_on(svc, "whoami", NULL, m_whoami, NULL);
  linkd_ws_on(svc, "join", NULL, m_join, NULL);
  linkd_ws_on(svc, "leave", NULL, m_join, &leave);
  linkd_ws_on(svc, "say", NULL, m_say, NULL);
  linkd_ws_on(svc, "all", NULL, m_say, &all);
  linkd_ws_on(svc, "dm", NULL, m_dm, NULL);
  linkd_ws_on(svc, "rooms", NULL, m_rooms, NULL);
  linkd_ws_on(svc, "admin", &admin_h, m_admin, NULL);
  linkd_ws_on(svc, "authed", &authed, m_admin, NULL);
  linkd_ws_on(svc, "fail", NULL, m_fail, NULL);
  linkd_ws_on(svc, "silent", NULL, m_silent, NULL);
  linkd_ws_on(svc, "kick", NULL, m_kick, NULL);
  linkd_ws_on(svc, "big", NULL, m_big, NULL);

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_term;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  int rc = linkd_run(svc);
  linkd_stats st;
  linkd_get_stats(svc, &st);
  printf("EXIT %d frames_in=%llu frames_out=%llu skipped=%llu reconnects=%llu\n", rc,
         (unsigned long long)st.frames_in, (unsigned long long)st.frames_out,
         (unsigned long long)st.frames_skipped, (unsigned long long)st.reconnects);
  linkd_service_free(svc);
  return rc < 0 ? 1 : 0;
}
