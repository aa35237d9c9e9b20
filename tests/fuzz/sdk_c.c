/* libFuzzer harness: the C service library's side of a link (sdk/c).
 *
 * The input is what "linkd" writes on the service socket. It includes
 * sdk/c/linkd_service.c itself, attaches one end of a socketpair as the
 * link of a service with HTTP routes (one with roles), WebSocket handlers
 * (one with roles) and every callback set, writes the input to the other
 * end in chunks and runs linkd_process() between them: the varint framing
 * (split, oversize frames skipped as they arrive, broken prefixes), nanopb
 * decoding of every member into the per-frame arena, dispatch, and the
 * answers the handlers send (replies, HTTP responses, pushes with except
 * lists, joins, rooms queries). Every string handed to a callback is read
 * in full, so a pointer past the arena or frame shows up under ASan.
 *
 * Input: byte 0 chooses the setting:
 *   bit 0     the link starts registered (a RegisterResult ok is fed first,
 *             with linkd's frame limit 64 KiB) instead of waiting for one
 *   bit 1     max_frame_bytes 1024 (oversize frames are common) instead of 64 KiB
 *   bit 2     a raw WebSocket path (every message to the catch-all)
 *   bits 3-4  chunk size: whole, 1, 7, 300 bytes per write
 *   bit 5     handlers defer: answers go out after the frame, with the *_to forms
 *   bit 6     linkd_stop() halfway through the input
 *   bit 7     the service's peer end is closed after the input (link down)
 * The rest: bytes from linkd.
 */
#include "../../sdk/c/linkd_service.c"

#include <stdint.h>
#include <stdio.h>

static volatile size_t sink;   /* reads the strings handed over */
static void touch(const char *s) {
  if (s) sink += strlen(s);
}
static void touch_user(const linkd_user *u) {
  touch(u->user_id);
  touch(u->username);
  touch(u->tenant_id);
  for (size_t i = 0; i < u->roles_count; i++) touch(u->roles[i]);
}

static int defer_mode;
static char deferred_conn[64], deferred_id[160];
static uint64_t deferred_req;
static int have_deferred_msg, have_deferred_req;

static void h_http(linkd_service *s, const linkd_http_request *r, void *arg) {
  (void)arg;
  touch(r->method); touch(r->path); touch(r->route); touch(r->query); touch(r->remote_address);
  for (size_t i = 0; i < r->params_count; i++) { touch(r->params[i].name); touch(r->params[i].value); }
  for (size_t i = 0; i < r->headers_count; i++) { touch(r->headers[i].name); touch(r->headers[i].value); }
  if (r->body_len) sink += (unsigned char)r->body[r->body_len - 1] + (unsigned char)r->body[r->body_len];
  touch_user(&r->user);
  touch(linkd_http_header(r, "content-type"));
  char q[64];
  linkd_query_get(r->query, "a", q, sizeof q);
  if (defer_mode) {
    linkd_http_defer(s, r);
    deferred_req = r->id;
    have_deferred_req = 1;
    return;
  }
  linkd_pair h[1] = {{"x-path", r->path}};
  linkd_respond_id(s, r->id, 200, h, 1, r->body, r->body_len);
}

static void h_msg(linkd_service *s, const linkd_message *m, void *arg) {
  (void)arg;
  touch(m->conn_id); touch(m->type); touch(m->id);
  sink += m->data_len ? (unsigned char)m->data[m->data_len - 1] + (unsigned char)m->data[m->data_len] : 0;
  touch_user(&m->user);
  double d;
  char room[128];
  linkd_json_number(m->data, m->data_len, "n", &d);
  if (linkd_json_string(m->data, m->data_len, "room", room, sizeof room) == 0) {
    linkd_join(s, m->conn_id, room);
    const char *except[] = {m->conn_id, "1.1", NULL};
    linkd_to_room(s, room, "said", m->data_len && !s->ws.raw ? m->data : NULL, except);
  }
  if (defer_mode) {
    linkd_defer(s, m);
    snprintf(deferred_conn, sizeof deferred_conn, "%s", m->conn_id);
    snprintf(deferred_id, sizeof deferred_id, "%s", m->id);
    have_deferred_msg = 1;
    linkd_rooms(s, m->conn_id, NULL, NULL);   /* refused: no callback */
    return;
  }
  linkd_reply(s, m, m->data);
}

static void h_rooms(linkd_service *s, int64_t q, int ok, const char *const *rooms, size_t n, void *arg) {
  (void)s; (void)q; (void)ok; (void)arg;
  for (size_t i = 0; i < n; i++) touch(rooms[i]);
}

static void h_conn(linkd_service *s, const linkd_conn *c, void *arg) {
  (void)arg;
  touch(c->id); touch(c->path); touch(c->remote_address);
  touch_user(&c->user);
  for (size_t i = 0; i < c->rooms_count; i++) touch(c->rooms[i]);
  if (c->event == LINKD_CONNECTED) {
    linkd_join(s, c->id, "lobby");
    linkd_rooms(s, c->id, h_rooms, NULL);
  }
}

static void h_result(linkd_service *s, const linkd_result *r, void *arg) {
  (void)s; (void)arg;
  touch(r->type); touch(r->message);
}

static void h_link(linkd_service *s, linkd_link_event ev, const char *detail, void *arg) {
  (void)s; (void)ev; (void)arg;
  touch(detail);
}

/* varint(len) ServiceMessage{2: RegisterResult{ok, max_frame_bytes}} */
static size_t register_ok(uint8_t *out) {
  linkd_RegisterResult r;
  memset(&r, 0, sizeof r);
  r.ok = true;
  r.max_frame_bytes = 65536;
  strcpy(r.linkd_version, "fuzz");
  uint8_t sub[128];
  pb_ostream_t os = pb_ostream_from_buffer(sub, sizeof sub);
  pb_encode(&os, linkd_RegisterResult_fields, &r);
  size_t k = 0;
  k += varint_put(out + k, 2 + os.bytes_written);
  out[k++] = 0x12;
  out[k++] = (uint8_t)os.bytes_written;
  memcpy(out + k, sub, os.bytes_written);
  return k + os.bytes_written;
}

static void drain(int fd) {
  uint8_t buf[65536];
  while (read(fd, buf, sizeof buf) > 0) {}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int once;
  if (!once) {
    signal(SIGPIPE, SIG_IGN);   /* writes to a link the service closed */
    once = 1;
  }
  if (size < 1) return 0;
  uint8_t opts = data[0];
  data++;
  size--;
  static const size_t chunks[] = {0, 1, 7, 300};
  size_t chunk = chunks[(opts >> 3) & 3];
  defer_mode = (opts & 0x20) != 0;
  have_deferred_msg = have_deferred_req = 0;

  linkd_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.name = "fuzz";
  cfg.socket_path = "/nonexistent/fuzz.sock";   /* a reconnect fails quietly */
  cfg.websocket.path = "/ws";
  cfg.websocket.raw = (opts & 4) != 0;
  cfg.max_frame_bytes = (opts & 2) ? 1024 : 65536;
  cfg.log_level = getenv("FUZZ_LOG") ? LINKD_LOG_DEBUG : LINKD_LOG_SILENT;
  cfg.on_connect = cfg.on_disconnect = cfg.on_existing = h_conn;
  cfg.on_message = h_msg;
  cfg.on_result = h_result;
  cfg.on_link = h_link;
  cfg.command_timeout_ms = 50;
  linkd_service *s = linkd_service_new(&cfg);
  if (!s) return 0;
  static const char *const admin[] = {"admin", NULL};
  linkd_route_opts ro = {1, admin, NULL};
  linkd_handler_opts ho = {0, admin};
  linkd_route(s, "GET", "/items/:id", NULL, h_http, NULL);
  linkd_route(s, "*", "/any", NULL, h_http, NULL);
  linkd_route(s, "POST", "/admin", &ro, h_http, NULL);
  linkd_ws_on(s, "echo", NULL, h_msg, NULL);
  linkd_ws_on(s, "admin.do", &ho, h_msg, NULL);

  /* attach one end of a socketpair as the link, as link_connect() would */
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) {
    linkd_service_free(s);
    return 0;
  }
  int big = 1 << 20;
  setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  s->sock = sv[0];
  struct epoll_event ev = {0};
  ev.events = EPOLLIN;
  ev.data.u32 = SRC_SOCK;
  epoll_ctl(s->epfd, EPOLL_CTL_ADD, sv[0], &ev);
  s->sock_events = EPOLLIN;
  s->limit = s->max_frame < PRE_REGISTER_MAX_FRAME ? s->max_frame : PRE_REGISTER_MAX_FRAME;
  set_state(s, ST_REGISTERING);
  send_register(s);
  linkd_process(s);
  drain(sv[1]);
  if (opts & 1) {
    uint8_t reg[160];
    size_t n = register_ok(reg);
    if (write(sv[1], reg, n) != (ssize_t)n) abort();
    linkd_process(s);
  }

  size_t off = 0, half = size / 2;
  int stopped = 0;
  while (off < size) {
    size_t n = chunk ? chunk : size - off;
    if (n > size - off) n = size - off;
    ssize_t w = write(sv[1], data + off, n);
    if (w > 0) off += (size_t)w;
    else if (s->sock < 0) break;   /* the link went down: the rest has nowhere to go */
    linkd_process(s);
    drain(sv[1]);
    if (have_deferred_msg) {
      linkd_reply_to(s, deferred_conn, deferred_id, "{\"later\":true}");
      linkd_reply_error_to(s, deferred_conn, deferred_id, 409, "CONFLICT", "twice");
      have_deferred_msg = 0;
    }
    if (have_deferred_req) {
      linkd_respond_id(s, deferred_req, 204, NULL, 0, NULL, 0);
      have_deferred_req = 0;
    }
    if ((opts & 0x40) && !stopped && off >= half) {
      linkd_stop(s);
      stopped = 1;
    }
    if (w <= 0 && s->sock >= 0) {   /* the service's buffer is full: let it read */
      linkd_process(s);
      drain(sv[1]);
    }
  }
  for (int i = 0; i < 4; i++) {
    linkd_process(s);
    drain(sv[1]);
  }
  if (opts & 0x80) {
    close(sv[1]);
    sv[1] = -1;
    linkd_process(s);
  }
  linkd_stats st;
  linkd_get_stats(s, &st);
  sink += st.frames_in;
  linkd_service_free(s);   /* closes sv[0] if still attached */
  if (sv[1] >= 0) close(sv[1]);
  return 0;
}
