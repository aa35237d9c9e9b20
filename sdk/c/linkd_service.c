/* linkd_service.c — the C service library for Linkd (see linkd_service.h).
 *
 * Contents
 *   1. Types and the service struct
 *   2. Utilities: clock, logging, growable buffers, varints
 *   3. Output: frames encoded straight into the output buffer, flushing
 *   4. The link: connect, register, reconnect with backoff, stop
 *   5. Input: splitting the byte stream into frames, skipping bad ones
 *   6. Decoding: every string copied into a per-frame arena, NUL-terminated
 *   7. Dispatch: registration answers, HTTP, WebSocket events and messages
 *   8. Answers and commands
 *   9. Driving: linkd_process / linkd_run / linkd_fd
 *  10. Helpers: query strings and a little JSON
 *
 * One epoll descriptor holds everything the service waits for: the socket to
 * linkd, a timerfd (reconnect backoff and command timeouts) and an eventfd
 * (linkd_stop). So a program's own loop watches one stable descriptor for
 * reading, whatever the link is doing.
 */
#define _GNU_SOURCE
#include "linkd_service.h"

#include <pb_decode.h>
#include <pb_encode.h>
#include "linkd.pb.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/un.h>

/* ============================================================ 1. Types */

enum {
  TAG_REGISTER = 1, TAG_REGISTER_RESULT = 2, TAG_HTTP_REQUEST = 3, TAG_HTTP_RESPONSE = 4, TAG_ERROR = 5,
  TAG_CLOSE = 6, TAG_ROOMS_QUERY = 7, TAG_ROOMS_RESULT = 8, TAG_HEARTBEAT = 9, TAG_COMMAND_RESULT = 10,
  TAG_WS_EVENT = 20, TAG_WS_INBOUND = 21, TAG_WS_OUTBOUND = 22, TAG_WS_ROOM_OP = 23, TAG_WS_RESPONSE = 24
};

/* epoll data: which source is ready */
enum { SRC_SOCK = 1, SRC_TIMER = 2, SRC_WAKE = 3 };

typedef enum {
  ST_IDLE,         /* not started */
  ST_RETRY,        /* waiting for the reconnect timer */
  ST_REGISTERING,  /* connected, RegisterService sent, no answer yet */
  ST_READY,        /* registered */
  ST_STOPPED,      /* linkd_stop() done */
  ST_REFUSED       /* the first registration was refused */
} link_state;

/* Until linkd has answered the registration it sends only small frames. */
#define PRE_REGISTER_MAX_FRAME (1024u * 1024u)
#define DEFAULT_MAX_FRAME (4u * 1024u * 1024u)
#define MIN_MAX_FRAME 1024u
#define READ_CHUNK 16384u
#define READS_PER_PROCESS 16       /* bounded work per wakeup */
#define MAX_FRAME_PARAMS 256        /* per request: linkd's patterns have a few */
#define MAX_FRAME_HEADERS 4096      /* per request: linkd's header block is 16 KiB by default */
#define MAX_FRAME_ROOMS 65536       /* per connection event or rooms answer */
#define MAX_ROUTE_ROLES 16
#define MAX_ROUTE_CORS 8

typedef struct route {
  char method[16];
  char path[256];
  int auth;
  char **roles;                    /* NULL-terminated, owned */
  char **cors;                     /* NULL-terminated, owned */
  linkd_http_cb cb;
  void *arg;
} route;

typedef struct handler {
  char *type;                      /* owned */
  int auth;
  char **roles;                    /* NULL-terminated, owned */
  linkd_message_cb cb;
  void *arg;
} handler;

/* A command whose answer someone waits for (on_result or a rooms callback). */
typedef struct pending {
  int64_t id;                      /* 0: answered (a hole in the FIFO) */
  uint64_t deadline;               /* monotonic ms */
  linkd_rooms_cb rooms_cb;         /* NULL: a command for on_result */
  void *arg;
} pending;

/* Lists of one frame (params, headers, rooms): a frame with more than max
 * entries does not decode (a linkd never sends that many; a runaway one
 * would make them several times the frame's size). */
typedef struct pairvec {
  linkd_pair *v;
  size_t n, cap, max;
} pairvec;

typedef struct strvec {
  const char **v;
  size_t n, cap, max;
} strvec;

struct linkd_service {
  /* --- configuration (copied) */
  char name[64], version[32], ns[64], instance[64];
  char *socket_path;
  char ws_path[256];
  linkd_WebSocketConfig ws;        /* what is registered (enabled, limits, flags) */
  uint32_t max_frame;              /* declared: the largest frame read once registered */
  unsigned rc_initial, rc_max;     /* reconnect backoff, ms */
  unsigned cmd_timeout;            /* ms */
  size_t max_output;               /* bytes */
  void *arg;
  linkd_conn_cb on_connect, on_disconnect, on_existing, on_resume;
  linkd_message_cb on_message;
  linkd_result_cb on_result;
  linkd_link_cb on_link;
  linkd_log_cb log;
  int log_level;

  route *routes;                   /* linkd_route(), in order */
  size_t nroutes;
  handler *handlers;               /* linkd_ws_on() */
  size_t nhandlers;

  /* --- descriptors */
  int epfd;                        /* what linkd_fd() returns */
  int tfd;                         /* timerfd: retry_at / the oldest pending deadline */
  int efd;                         /* eventfd written by linkd_stop() */
  int sock;                        /* the link, -1 when down */
  uint32_t sock_events;            /* epoll interest registered for sock */

  /* --- link state */
  link_state state;
  volatile sig_atomic_t stop_req;  /* set by linkd_stop() */
  int in_process;                  /* inside linkd_process(): commands queue, the end flushes */
  const char *drop;                /* set while dispatching: close the link after this frame */
  int ever_registered;
  int refused;                     /* the last registration answer was a refusal */
  unsigned delay;                  /* next backoff, ms */
  uint64_t retry_at;               /* ST_RETRY: monotonic ms */
  int last_connect_errno;          /* said once per cause while linkd is away */
  char linkd_version[32];
  uint32_t linkd_max_frame;        /* RegisterResult.max_frame_bytes: what linkd accepts */
  int64_t seq;                     /* op / query ids */
  uint64_t rng;                    /* backoff jitter */

  /* --- input: in[0..in_len) holds unparsed bytes */
  uint8_t *in;
  size_t in_len, in_cap;
  uint64_t skip_left;              /* bytes of an oversize frame still to discard */
  uint32_t limit;                  /* largest frame read now (PRE_REGISTER or max_frame) */

  /* --- per-frame decoding scratch (reset for every frame) */
  char *arena;                     /* strings copied out of the frame, NUL-terminated */
  size_t arena_len, arena_cap;
  pairvec params, headers;
  strvec rooms;
  const char *roles[16];           /* linkd_user.roles of the frame */
  union {
    linkd_WebSocketInbound in;
    linkd_HttpRequest rq;
    linkd_WebSocketConnectionEvent ev;
    linkd_CommandResult cr;
    linkd_RoomsResult rr;
    linkd_RegisterResult reg;
    linkd_ErrorResponse er;
    linkd_Heartbeat hb;
  } *dec;                          /* heap: ~2 KiB, kept off the stack */
  linkd_HttpRoute *route_scratch;  /* encoding routes (4.4 KiB) */

  /* --- the message or request being handled (auto-answer when not answered) */
  const void *cur;                 /* linkd_message* or linkd_http_request* */
  int cur_answered;                /* answered or deferred */

  /* --- output: out[out_off..out_len) waits to be written */
  uint8_t *out;
  size_t out_off, out_len, out_cap;

  pending *pend;                   /* FIFO in deadline order; pend[pend_head..pend_len) */
  size_t pend_head, pend_len, pend_cap;

  linkd_stats st;
};

/* ============================================================ 2. Utilities */

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static const char *level_name(int level) {
  return level >= LINKD_LOG_ERROR ? "error" : level >= LINKD_LOG_WARN ? "warn" : level >= LINKD_LOG_INFO ? "info" : "debug";
}

static int level_from_env(void) {
  const char *e = getenv("LINKD_SDK_LOG");
  if (!e || !*e) return LINKD_LOG_INFO;
  if (!strcmp(e, "debug")) return LINKD_LOG_DEBUG;
  if (!strcmp(e, "warn")) return LINKD_LOG_WARN;
  if (!strcmp(e, "error")) return LINKD_LOG_ERROR;
  if (!strcmp(e, "silent")) return LINKD_LOG_SILENT;
  return LINKD_LOG_INFO;
}

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void logf_(const linkd_service *s, int level, const char *fmt, ...) {
  int min = s ? s->log_level : LINKD_LOG_INFO;
  if (level < min) return;
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (s && s->log) {
    s->log(level, msg, s->arg);
    return;
  }
  /* one line per event, like the TypeScript SDK: time level [name] message */
  char ts[32] = "";
  struct timespec now;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &now);
  if (gmtime_r(&now.tv_sec, &tm)) strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
  fprintf(stderr, "%s.%03ldZ %s [%s] %s\n", ts, now.tv_nsec / 1000000L, level_name(level),
          s && s->name[0] ? s->name : "linkd-sdk", msg);
}
#define LOG_DEBUG(s, ...) logf_(s, LINKD_LOG_DEBUG, __VA_ARGS__)
#define LOG_INFO(s, ...) logf_(s, LINKD_LOG_INFO, __VA_ARGS__)
#define LOG_WARN(s, ...) logf_(s, LINKD_LOG_WARN, __VA_ARGS__)
#define LOG_ERROR(s, ...) logf_(s, LINKD_LOG_ERROR, __VA_ARGS__)

/* Copies src into a fixed nanopb field; -EINVAL if it does not fit (never cut an id). */
static int put_str(char *dst, size_t cap, const char *src) {
  size_t n = src ? strlen(src) : 0;
  if (n >= cap) return -EINVAL;
  memcpy(dst, src ? src : "", n);
  dst[n] = 0;
  return 0;
}

/* Copies a message into a fixed field, cut at a UTF-8 boundary if needed. */
static void put_text(char *dst, size_t cap, const char *src) {
  size_t n = src ? strlen(src) : 0;
  if (n >= cap) {
    n = cap - 1;
    while (n > 0 && ((unsigned char)src[n] & 0xc0) == 0x80) n--;
  }
  if (n) memcpy(dst, src, n);
  dst[n] = 0;
}

static char *xstrdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = malloc(n);
  if (p) memcpy(p, s, n);
  return p;
}

static void strlist_free(char **l) {
  if (!l) return;
  for (char **p = l; *p; p++) free(*p);
  free(l);
}

/* A NULL-terminated copy of a NULL-terminated list (NULL for an empty one).
 * Sets *bad when an entry is too long or there are more than max. */
static char **strlist_dup(const char *const *l, size_t max, size_t maxlen, int *bad) {
  size_t n = 0;
  if (!l) return NULL;
  while (l[n]) {
    if (strlen(l[n]) >= maxlen || l[n][0] == 0) *bad = 1;
    n++;
  }
  if (n > max) *bad = 1;
  if (*bad || n == 0) return NULL;
  char **c = calloc(n + 1, sizeof *c);
  if (!c) { *bad = 1; return NULL; }
  for (size_t i = 0; i < n; i++) {
    if (!(c[i] = xstrdup(l[i]))) { strlist_free(c); *bad = 1; return NULL; }
  }
  return c;
}

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return 0;
  size_t c = *cap ? *cap : 16;
  while (c < need) {
    if (c > SIZE_MAX / 2 / elem) return -ENOMEM;
    c *= 2;
  }
  void *q = realloc(*p, c * elem);
  if (!q) return -ENOMEM;
  *p = q;
  *cap = c;
  return 0;
}

static size_t varint_size(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) { v >>= 7; n++; }
  return n;
}

static size_t varint_put(uint8_t *p, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) { p[n++] = (uint8_t)(v | 0x80); v >>= 7; }
  p[n++] = (uint8_t)v;
  return n;
}

/* A frame's length prefix: 1 and *len, *hl when complete, 0 when more bytes
 * are needed, -1 when it is no valid length (over 32 bits or 5 bytes long:
 * no frame boundary can be found after that). */
static int varint_peek(const uint8_t *p, size_t n, uint64_t *len, size_t *hl) {
  uint64_t v = 0;
  for (size_t k = 0; k < 5; k++) {
    if (k >= n) return 0;
    v |= (uint64_t)(p[k] & 0x7f) << (7 * k);
    if (!(p[k] & 0x80)) {
      if (v > UINT32_MAX) return -1;
      *len = v;
      *hl = k + 1;
      return 1;
    }
  }
  return -1;
}

/* ============================================================ 3. Output */

static void timer_arm(linkd_service *s);
static void link_down(linkd_service *s, const char *why);

static void sock_interest(linkd_service *s) {
  if (s->sock < 0) return;
  uint32_t want = EPOLLIN | (s->out_off < s->out_len ? EPOLLOUT : 0);
  if (want == s->sock_events) return;
  struct epoll_event ev = {0};
  ev.events = want;
  ev.data.u32 = SRC_SOCK;
  if (epoll_ctl(s->epfd, EPOLL_CTL_MOD, s->sock, &ev) == 0) s->sock_events = want;
}

/* Writes what is queued; 0, or a negative errno when the link is broken. */
static int flush_out(linkd_service *s) {
  while (s->sock >= 0 && s->out_off < s->out_len) {
    ssize_t n = send(s->sock, s->out + s->out_off, s->out_len - s->out_off, MSG_NOSIGNAL);
    if (n > 0) {
      s->out_off += (size_t)n;
      s->st.bytes_out += (uint64_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    return n < 0 ? -errno : -EPIPE;
  }
  if (s->out_off == s->out_len) {
    s->out_off = s->out_len = 0;
    if (s->out_cap > 256 * 1024) {   /* a burst is over: give the memory back */
      free(s->out);
      s->out = NULL;
      s->out_cap = 0;
    }
  } else if (s->out_off > s->out_cap / 2) {
    memmove(s->out, s->out + s->out_off, s->out_len - s->out_off);
    s->out_len -= s->out_off;
    s->out_off = 0;
  }
  sock_interest(s);
  return 0;
}

/* Outside linkd_process() a command is written at once; inside, the end of
 * linkd_process() writes everything the callbacks queued in one go. */
static void flush_maybe(linkd_service *s) {
  if (s->in_process) return;
  int r = flush_out(s);
  if (r < 0) link_down(s, strerror(-r));
}

/* Appends one frame: varint(len) ServiceMessage{tag: msg}. Checks linkd's
 * frame limit and the output cap. */
static int frame_put(linkd_service *s, uint32_t tag, const pb_msgdesc_t *fields, const void *msg) {
  size_t sub = 0;
  if (!pb_get_encoded_size(&sub, fields, msg)) return -EINVAL;
  size_t inner = varint_size((uint64_t)tag << 3 | 2) + varint_size(sub) + sub;
  size_t total = varint_size(inner) + inner;
  if (s->linkd_max_frame && inner > s->linkd_max_frame) return -EMSGSIZE;
  if (inner > UINT32_MAX) return -EMSGSIZE;
  if (s->out_len - s->out_off + total > s->max_output) return -ENOBUFS;
  if (grow((void **)&s->out, &s->out_cap, s->out_len + total, 1) < 0) return -ENOMEM;
  uint8_t *p = s->out + s->out_len;
  size_t k = varint_put(p, inner);
  k += varint_put(p + k, (uint64_t)tag << 3 | 2);
  k += varint_put(p + k, sub);
  pb_ostream_t os = pb_ostream_from_buffer(p + k, sub);
  if (!pb_encode(&os, fields, msg) || os.bytes_written != sub) {
    LOG_ERROR(s, "cannot encode frame %u: %s", tag, PB_GET_ERROR(&os));
    return -EINVAL;
  }
  s->out_len += total;
  s->st.frames_out++;
  return 0;
}

/* encoders for callback fields */
typedef struct bytes_arg { const void *p; size_t n; } bytes_arg;

static bool enc_bytes(pb_ostream_t *st, const pb_field_t *f, void *const *arg) {
  const bytes_arg *b = (const bytes_arg *)*arg;
  return pb_encode_tag_for_field(st, f) && pb_encode_string(st, (const pb_byte_t *)b->p, b->n);
}

static bool enc_strlist(pb_ostream_t *st, const pb_field_t *f, void *const *arg) {
  const char *const *l = (const char *const *)*arg;
  for (; l && *l; l++) {
    if (!**l) continue;
    if (!pb_encode_tag_for_field(st, f) || !pb_encode_string(st, (const pb_byte_t *)*l, strlen(*l))) return false;
  }
  return true;
}

typedef struct headers_arg { const linkd_pair *h; size_t n; } headers_arg;

/* Header{name, value}, written field by field (values may be longer than
 * the generated struct holds). */
static bool enc_headers(pb_ostream_t *st, const pb_field_t *f, void *const *arg) {
  const headers_arg *a = (const headers_arg *)*arg;
  for (size_t i = 0; i < a->n; i++) {
    const char *n = a->h[i].name ? a->h[i].name : "", *v = a->h[i].value ? a->h[i].value : "";
    size_t nl = strlen(n), vl = strlen(v);
    size_t size = 1 + varint_size(nl) + nl + 1 + varint_size(vl) + vl;
    if (!pb_encode_tag_for_field(st, f) || !pb_encode_varint(st, size) ||
        !pb_encode_tag(st, PB_WT_STRING, 1) || !pb_encode_string(st, (const pb_byte_t *)n, nl) ||
        !pb_encode_tag(st, PB_WT_STRING, 2) || !pb_encode_string(st, (const pb_byte_t *)v, vl))
      return false;
  }
  return true;
}

static void fill_route(linkd_HttpRoute *r, const route *rt) {
  memset(r, 0, sizeof *r);
  memcpy(r->method, rt->method, sizeof r->method);
  memcpy(r->path, rt->path, sizeof r->path);
  r->auth = rt->auth != 0;
  for (char **p = rt->roles; p && *p && r->roles_count < MAX_ROUTE_ROLES; p++)
    put_text(r->roles[r->roles_count++], sizeof r->roles[0], *p);
  for (char **p = rt->cors; p && *p && r->cors_origins_count < MAX_ROUTE_CORS; p++)
    put_text(r->cors_origins[r->cors_origins_count++], sizeof r->cors_origins[0], *p);
}

static bool enc_routes(pb_ostream_t *st, const pb_field_t *f, void *const *arg) {
  linkd_service *s = (linkd_service *)*arg;
  for (size_t i = 0; i < s->nroutes; i++) {
    fill_route(s->route_scratch, &s->routes[i]);
    if (!pb_encode_tag_for_field(st, f) || !pb_encode_submessage(st, linkd_HttpRoute_fields, s->route_scratch))
      return false;
  }
  return true;
}

/* ============================================================ 4. The link */

static void pending_fail_all(linkd_service *s, const char *type, const char *message, int code);

static void set_state(linkd_service *s, link_state st) { s->state = st; }

/* Waits delay ±25 % before the next attempt; the delay doubles up to rc_max. */
static void schedule_retry(linkd_service *s) {
  unsigned d = s->delay;
  s->rng ^= s->rng << 13;   /* xorshift: the program's rand() is left alone */
  s->rng ^= s->rng >> 7;
  s->rng ^= s->rng << 17;
  unsigned jitter = (unsigned)(s->rng % (d / 2 + 1));
  s->retry_at = now_ms() + (d - d / 4) + jitter;
  s->delay = d * 2 > s->rc_max ? s->rc_max : d * 2;
  set_state(s, ST_RETRY);
  timer_arm(s);
}

static void sock_close(linkd_service *s) {
  if (s->sock < 0) return;
  close(s->sock);   /* leaves the epoll set with it */
  s->sock = -1;
  s->sock_events = 0;
  s->in_len = s->out_len = s->out_off = 0;
  s->skip_left = 0;
  if (s->in_cap > 256 * 1024) { free(s->in); s->in = NULL; s->in_cap = 0; }
  if (s->out_cap > 256 * 1024) { free(s->out); s->out = NULL; s->out_cap = 0; }
}

/* The one teardown of a link: close, fail what waited on it, tell the
 * program, reconnect later (unless stopping or refused). */
static void link_down(linkd_service *s, const char *why) {
  int was_ready = s->state == ST_READY;
  int stopping = s->stop_req || s->state == ST_STOPPED || s->state == ST_REFUSED;
  sock_close(s);
  if (!stopping) {
    if (was_ready) LOG_WARN(s, "link to linkd closed (%s); reconnecting", why);
    else LOG_DEBUG(s, "link to linkd closed before registration (%s)", why);
    schedule_retry(s);
  }
  pending_fail_all(s, "SERVICE_UNAVAILABLE", "link to linkd lost", 503);
  if (was_ready && s->on_link) s->on_link(s, LINKD_LINK_DOWN, why, s->arg);
}

static int send_register(linkd_service *s) {
  linkd_RegisterService m;
  memset(&m, 0, sizeof m);
  memcpy(m.name, s->name, sizeof m.name);
  memcpy(m.version, s->version, sizeof m.version);
  memcpy(m.namespace_name, s->ns, sizeof m.namespace_name);
  memcpy(m.instance_id, s->instance, sizeof m.instance_id);
  m.routes.funcs.encode = enc_routes;
  m.routes.arg = s;
  m.has_websocket = true;
  m.websocket = s->ws;
  m.max_inbound_frame_bytes = s->max_frame;
  return frame_put(s, TAG_REGISTER, linkd_RegisterService_fields, &m);
}

static void link_connect(linkd_service *s) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    LOG_ERROR(s, "socket: %s", strerror(errno));
    schedule_retry(s);
    return;
  }
  struct sockaddr_un a;
  memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  memcpy(a.sun_path, s->socket_path, strlen(s->socket_path));   /* length checked in new() */
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
    int e = errno;
    close(fd);
    /* linkd away: say each cause once, then retry quietly */
    if (e != s->last_connect_errno) {
      if (e == ENOENT || e == ECONNREFUSED) LOG_INFO(s, "waiting for linkd's socket at %s (%s)", s->socket_path, strerror(e));
      else LOG_WARN(s, "cannot connect to linkd's socket at %s: %s; retrying", s->socket_path, strerror(e));
      s->last_connect_errno = e;
    } else {
      LOG_DEBUG(s, "linkd not reachable: %s", strerror(e));
    }
    schedule_retry(s);
    return;
  }
  if (s->last_connect_errno) LOG_INFO(s, "connected to linkd at %s", s->socket_path);
  else LOG_DEBUG(s, "connected to linkd at %s", s->socket_path);
  s->last_connect_errno = 0;
  s->sock = fd;
  struct epoll_event ev = {0};
  ev.events = EPOLLIN;
  ev.data.u32 = SRC_SOCK;
  if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
    LOG_ERROR(s, "epoll_ctl: %s", strerror(errno));
    close(fd);
    s->sock = -1;
    schedule_retry(s);
    return;
  }
  s->sock_events = EPOLLIN;
  s->limit = s->max_frame < PRE_REGISTER_MAX_FRAME ? s->max_frame : PRE_REGISTER_MAX_FRAME;
  s->linkd_max_frame = 0;
  set_state(s, ST_REGISTERING);
  int r = send_register(s);
  if (r < 0) {
    LOG_ERROR(s, "cannot encode the registration: %s", strerror(-r));
    link_down(s, "registration not encodable");
    return;
  }
  flush_maybe(s);
}

/* ============================================================ 5. Input */

static void frame_handle(linkd_service *s, const uint8_t *p, size_t n);

/* Splits in[0..in_len) into frames and handles the whole ones. Returns the
 * bytes still needed for the partial frame at the front (0 if unknown). */
static size_t consume(linkd_service *s) {
  size_t off = 0, need = 0;
  while (off < s->in_len && !s->drop && s->sock >= 0) {
    if (s->skip_left) {
      size_t k = s->in_len - off < s->skip_left ? s->in_len - off : (size_t)s->skip_left;
      off += k;
      s->skip_left -= k;
      continue;
    }
    uint64_t len;
    size_t hl;
    int r = varint_peek(s->in + off, s->in_len - off, &len, &hl);
    if (r == 0) break;
    if (r < 0) {
      /* no frame boundary can be found after a broken prefix: only this drops the link */
      LOG_WARN(s, "bad frame length from linkd: dropping the link");
      s->st.frames_skipped++;
      s->drop = "bad frame length";
      break;
    }
    if (len > s->limit) {
      /* linkd never sends more than declared: a bug or another peer. The
       * frame's work is lost, not the link's: its bytes are discarded as
       * they arrive. */
      LOG_WARN(s, "frame of %llu bytes from linkd is over the %u-byte limit: skipped",
               (unsigned long long)len, s->limit);
      s->st.frames_skipped++;
      off += hl;
      s->skip_left = len;
      continue;
    }
    if (s->in_len - off - hl < len) {
      need = hl + (size_t)len;
      break;
    }
    frame_handle(s, s->in + off + hl, (size_t)len);
    off += hl + (size_t)len;
  }
  if (s->sock < 0) return 0;   /* (sock_close emptied the buffer) */
  if (off) {
    memmove(s->in, s->in + off, s->in_len - off);
    s->in_len -= off;
  }
  return need;
}

static void link_read(linkd_service *s) {
  size_t need = 0;
  for (int round = 0; round < READS_PER_PROCESS && s->sock >= 0; round++) {
    size_t want = s->in_len + READ_CHUNK;
    if (need > want) want = need;
    if (grow((void **)&s->in, &s->in_cap, want, 1) < 0) {
      link_down(s, "out of memory for a frame");
      return;
    }
    ssize_t n = read(s->sock, s->in + s->in_len, s->in_cap - s->in_len);
    if (n == 0) { link_down(s, "linkd closed the link"); return; }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      link_down(s, strerror(errno));
      return;
    }
    s->st.bytes_in += (uint64_t)n;
    s->in_len += (size_t)n;
    need = consume(s);
    if (s->drop) {
      const char *why = s->drop;
      s->drop = NULL;
      link_down(s, why);
      return;
    }
    if (s->state == ST_STOPPED || s->stop_req) return;
  }
  if (s->sock >= 0 && s->in_len == 0 && s->in_cap > 256 * 1024) {
    free(s->in);
    s->in = NULL;
    s->in_cap = 0;
  }
}

/* ============================================================ 6. Decoding */

/* Every string of a frame is copied into the arena and NUL-terminated. The
 * arena is sized before decoding (2 × frame + 64: copied bytes never exceed
 * the frame, and every field costs at least two bytes of it, one NUL each),
 * so pointers into it stay valid for the whole frame. */
static char *arena_take(linkd_service *s, size_t n) {
  if (s->arena_cap - s->arena_len < n) return NULL;
  char *p = s->arena + s->arena_len;
  s->arena_len += n;
  return p;
}

typedef struct str_slot {
  linkd_service *s;
  const char **out;
  size_t *len;
} str_slot;

/* A string or bytes field: copied (never a pointer into nanopb's stream: a
 * scalar wire type hands callbacks a buffer on nanopb's own stack). */
static bool dec_str(pb_istream_t *st, const pb_field_t *f, void **arg) {
  (void)f;
  str_slot *sl = (str_slot *)*arg;
  size_t n = st->bytes_left;
  char *p = arena_take(sl->s, n + 1);
  if (!p || !pb_read(st, (pb_byte_t *)p, n)) return false;
  p[n] = 0;
  *sl->out = p;
  if (sl->len) *sl->len = n;
  return true;
}

typedef struct vec_slot {
  linkd_service *s;
  void *vec;                       /* pairvec* or strvec* */
} vec_slot;

static bool dec_strlist(pb_istream_t *st, const pb_field_t *f, void **arg) {
  (void)f;
  vec_slot *sl = (vec_slot *)*arg;
  strvec *v = (strvec *)sl->vec;
  size_t n = st->bytes_left;
  char *p = arena_take(sl->s, n + 1);
  if (!p || !pb_read(st, (pb_byte_t *)p, n)) return false;
  p[n] = 0;
  if (v->n >= v->max || grow((void **)&v->v, &v->cap, v->n + 1, sizeof *v->v) < 0) return false;
  v->v[v->n++] = p;
  return true;
}

/* Header / Param: {1: name, 2: value}, read field by field. */
static bool dec_pair(pb_istream_t *st, const pb_field_t *f, void **arg) {
  (void)f;
  vec_slot *sl = (vec_slot *)*arg;
  pairvec *v = (pairvec *)sl->vec;
  const char *kv[3] = {"", "", ""};
  while (st->bytes_left) {
    pb_wire_type_t wt;
    uint32_t tag;
    bool eof;
    if (!pb_decode_tag(st, &wt, &tag, &eof)) return false;
    if (wt != PB_WT_STRING || (tag != 1 && tag != 2)) {
      if (!pb_skip_field(st, wt)) return false;
      continue;
    }
    pb_istream_t sub;
    if (!pb_make_string_substream(st, &sub)) return false;
    size_t n = sub.bytes_left;
    char *p = arena_take(sl->s, n + 1);
    if (!p || !pb_read(&sub, (pb_byte_t *)p, n)) return false;
    p[n] = 0;
    kv[tag] = p;
    if (!pb_close_string_substream(st, &sub)) return false;
  }
  if (v->n >= v->max || grow((void **)&v->v, &v->cap, v->n + 1, sizeof *v->v) < 0) return false;
  v->v[v->n].name = kv[1];
  v->v[v->n].value = kv[2];
  v->n++;
  return true;
}

static void vec_trim(void **v, size_t *cap, size_t keep) {
  if (*cap <= keep) return;
  free(*v);   /* after an unusually long list: back to nothing, grown again on demand */
  *v = NULL;
  *cap = 0;
}

static int frame_scratch(linkd_service *s, size_t n) {
  s->arena_len = 0;
  s->params.n = s->headers.n = s->rooms.n = 0;
  vec_trim((void **)&s->params.v, &s->params.cap, 64);
  vec_trim((void **)&s->headers.v, &s->headers.cap, 256);
  vec_trim((void **)&s->rooms.v, &s->rooms.cap, 1024);
  size_t need = 2 * n + 64;
  if (s->arena_cap < need || (s->arena_cap > 512 * 1024 && need < 64 * 1024)) {
    char *a = realloc(s->arena, need < 4096 ? 4096 : need);
    if (!a) return -ENOMEM;
    s->arena = a;
    s->arena_cap = need < 4096 ? 4096 : need;
  }
  return 0;
}

static void user_from(linkd_service *s, linkd_user *u, const linkd_UserContext *c) {
  size_t n = c->roles_count <= 16 ? c->roles_count : 16;
  for (size_t i = 0; i < n; i++) s->roles[i] = c->roles[i];
  u->user_id = c->user_id;
  u->username = c->username;
  u->tenant_id = c->tenant_id;
  u->roles = s->roles;
  u->roles_count = n;
  u->authenticated = c->authenticated;
  u->client_cert_cn = c->client_cert_cn;
  u->client_cert_sha256 = c->client_cert_sha256;
}

/* ============================================================ 7. Dispatch */

static int pending_take(linkd_service *s, int64_t id, pending *out);
static int reply_frame(linkd_service *s, const char *conn, const char *corr, const char *json, size_t len,
                       const linkd_ErrorResponse *err);
static int http_answer(linkd_service *s, uint64_t id, unsigned status, const linkd_pair *h, size_t nh,
                       const void *body, size_t len);

static const char *const NO_ROLES[] = {NULL};

static int has_any_role(const linkd_user *u, char **roles) {
  if (!roles || !*roles) return 1;
  for (char **r = roles; *r; r++)
    if (linkd_user_has_role(u, *r)) return 1;
  return 0;
}

static void roles_text(char *out, size_t cap, char **roles) {
  size_t k = 0;
  out[0] = 0;
  for (char **r = roles; r && *r && k + 1 < cap; r++) {
    int w = snprintf(out + k, cap - k, "%s%s", k ? ", " : "", *r);
    if (w < 0) break;
    k += (size_t)w;
  }
}

static bool on_register_result(linkd_service *s, const uint8_t *p, size_t n) {
  linkd_RegisterResult *r = &s->dec->reg;
  pb_istream_t st = pb_istream_from_buffer(p, n);
  if (!pb_decode(&st, linkd_RegisterResult_fields, r)) return false;
  if (s->state != ST_REGISTERING) {
    LOG_DEBUG(s, "registration answer out of turn ignored");
    return true;
  }
  if (!r->ok) {
    const char *why = r->reason[0] ? r->reason : "registration refused";
    LOG_ERROR(s, "linkd refused the registration: %s", why);
    s->refused = 1;
    if (!s->ever_registered) {
      /* a configuration problem: stop, and let linkd_run() fail */
      set_state(s, ST_REFUSED);
    }
    if (s->on_link) s->on_link(s, LINKD_LINK_REFUSED, why, s->arg);
    s->drop = "registration refused";
    return true;
  }
  if (s->ever_registered) s->st.reconnects++;
  s->ever_registered = 1;
  s->refused = 0;
  s->delay = s->rc_initial;
  memcpy(s->linkd_version, r->linkd_version, sizeof s->linkd_version);
  s->linkd_max_frame = r->max_frame_bytes;
  s->limit = s->max_frame;   /* what we declared is what linkd may send from now on */
  set_state(s, ST_READY);
  LOG_INFO(s, "registered with linkd %s at %s", s->linkd_version, s->socket_path);
  if (s->on_link) s->on_link(s, LINKD_LINK_REGISTERED, s->linkd_version, s->arg);
  return true;
}

static bool on_heartbeat(linkd_service *s, const uint8_t *p, size_t n) {
  linkd_Heartbeat *h = &s->dec->hb;
  pb_istream_t st = pb_istream_from_buffer(p, n);
  if (!pb_decode(&st, linkd_Heartbeat_fields, h)) return false;
  if (h->reply) return true;
  linkd_Heartbeat r;
  memset(&r, 0, sizeof r);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  r.timestamp_ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
  r.reply = true;
  frame_put(s, TAG_HEARTBEAT, linkd_Heartbeat_fields, &r);
  return true;
}

static bool on_error_frame(linkd_service *s, const uint8_t *p, size_t n) {
  linkd_ErrorResponse *e = &s->dec->er;
  pb_istream_t st = pb_istream_from_buffer(p, n);
  if (!pb_decode(&st, linkd_ErrorResponse_fields, e)) return false;
  LOG_WARN(s, "linkd refused a frame: %s (%d): %s", e->type, (int)e->code, e->message);
  return true;
}

static bool on_command_result(linkd_service *s, const uint8_t *p, size_t n) {
  linkd_CommandResult *c = &s->dec->cr;
  pb_istream_t st = pb_istream_from_buffer(p, n);
  if (!pb_decode(&st, linkd_CommandResult_fields, c)) return false;
  pending pd;
  int waited = c->op_id <= INT64_MAX && pending_take(s, (int64_t)c->op_id, &pd) == 0;
  linkd_result res;
  memset(&res, 0, sizeof res);
  res.op_id = (int64_t)c->op_id;
  res.ok = c->ok;
  res.delivered = c->delivered;
  res.code = c->has_error ? (int)c->error.code : 0;
  res.type = c->has_error ? c->error.type : "";
  res.message = c->has_error ? c->error.message : "";
  if (!c->ok && !res.type[0]) res.type = "COMMAND_FAILED";
  if (waited && s->on_result) {
    s->on_result(s, &res, s->arg);
  } else if (!c->ok) {
    LOG_WARN(s, "command %llu failed: %s (%d): %s", (unsigned long long)c->op_id, res.type, res.code, res.message);
  }
  return true;
}

static bool on_rooms_result(linkd_service *s, const uint8_t *p, size_t n) {
  linkd_RoomsResult *r = &s->dec->rr;
  vec_slot rooms = {s, &s->rooms};
  memset(r, 0, sizeof *r);
  r->rooms.funcs.decode = dec_strlist;
  r->rooms.arg = &rooms;
  pb_istream_t st = pb_istream_from_buffer(p, n);
  if (!pb_decode(&st, linkd_RoomsResult_fields, r)) return false;
  pending pd;
  if (r->query_id > INT64_MAX || pending_take(s, (int64_t)r->query_id, &pd) < 0 || !pd.rooms_cb) {
    LOG_DEBUG(s, "rooms answer %llu without a question ignored", (unsigned long long)r->query_id);
    return true;
  }
  int ok = !r->has_error;
  pd.rooms_cb(s, (int64_t)r->query_id, ok, ok && s->rooms.n ? s->rooms.v : NO_ROLES, ok ? s->rooms.n : 0, pd.arg);
  return true;
}

static bool on_ws_event(linkd_service *s, const uint8_t *p, size_t n) {
  linkd_WebSocketConnectionEvent *e = &s->dec->ev;
  vec_slot rooms = {s, &s->rooms};
  memset(e, 0, sizeof *e);
  e->rooms.funcs.decode = dec_strlist;
  e->rooms.arg = &rooms;
  pb_istream_t st = pb_istream_from_buffer(p, n);
  if (!pb_decode(&st, linkd_WebSocketConnectionEvent_fields, e)) return false;
  if (!e->connection_id[0]) return true;
  if ((int)e->event_type < 0 || (int)e->event_type > 3) {
    LOG_DEBUG(s, "connection event of unknown type %d ignored", (int)e->event_type);
    return true;
  }
  linkd_conn c;
  memset(&c, 0, sizeof c);
  c.event = (linkd_conn_event)e->event_type;
  c.id = e->connection_id;
  c.path = e->path;
  c.remote_address = e->remote_address;
  user_from(s, &c.user, &e->user);
  c.rooms = s->rooms.n ? s->rooms.v : NO_ROLES;
  c.rooms_count = s->rooms.n;
  c.connected_at_ms = e->connected_at_ms;
  c.close_code = e->close_code;
  c.previous_id = e->previous_connection_id;
  linkd_conn_cb cb = c.event == LINKD_CONNECTED      ? s->on_connect
                     : c.event == LINKD_DISCONNECTED ? s->on_disconnect
                     : c.event == LINKD_EXISTING     ? s->on_existing
                                                     : s->on_resume;
  if (cb) cb(s, &c, s->arg);
  return true;
}

static const handler *handler_find(const linkd_service *s, const char *type) {
  for (size_t i = 0; i < s->nhandlers; i++)
    if (!strcmp(s->handlers[i].type, type)) return &s->handlers[i];
  return NULL;
}

static void error_fill(linkd_ErrorResponse *e, int code, const char *type, const char *message) {
  memset(e, 0, sizeof *e);
  e->code = code;
  put_text(e->type, sizeof e->type, type && *type ? type : "ERROR");
  put_text(e->message, sizeof e->message, message ? message : "");
}

static bool on_ws_inbound(linkd_service *s, const uint8_t *p, size_t n) {
  linkd_WebSocketInbound *in = &s->dec->in;
  const char *data = NULL;
  size_t data_len = 0;
  str_slot payload = {s, &data, &data_len};
  memset(in, 0, sizeof *in);
  in->payload.funcs.decode = dec_str;
  in->payload.arg = &payload;
  pb_istream_t st = pb_istream_from_buffer(p, n);
  if (!pb_decode(&st, linkd_WebSocketInbound_fields, in)) return false;
  if (!in->connection_id[0]) return true;
  linkd_message m;
  memset(&m, 0, sizeof m);
  m.conn_id = in->connection_id;
  m.type = in->message_type;
  m.id = in->correlation_id;
  m.binary = in->binary;
  if (data && data_len) {
    m.data = data;
    m.data_len = data_len;
  } else if (s->ws.raw) {
    m.data = "";
  } else {
    m.data = "null";   /* linkd sends an absent "data" as null or as nothing */
    m.data_len = 4;
  }
  user_from(s, &m.user, &in->user);   /* zeroed by pb_decode when absent */

  const handler *h = s->ws.raw ? NULL : handler_find(s, m.type);
  linkd_ErrorResponse err;
  int refuse = 0;
  s->cur = &m;
  s->cur_answered = 0;
  if (h && (h->auth || (h->roles && *h->roles)) && !m.user.authenticated) {
    error_fill(&err, 401, "UNAUTHORIZED", "Authentication required");
    refuse = 1;
  } else if (h && !has_any_role(&m.user, h->roles)) {
    char roles[256], msg[320];
    roles_text(roles, sizeof roles, h->roles);
    snprintf(msg, sizeof msg, "one of the roles %s is required", roles);
    error_fill(&err, 403, "FORBIDDEN", msg);
    refuse = 1;
  } else if (h) {
    h->cb(s, &m, h->arg);
  } else if (s->on_message) {
    s->on_message(s, &m, s->arg);
  } else {
    char msg[200];
    snprintf(msg, sizeof msg, "no handler for message type \"%.120s\"", m.type);
    error_fill(&err, 404, "NOT_FOUND", msg);
    refuse = 1;
  }
  if (refuse) reply_frame(s, m.conn_id, m.id, NULL, 0, &err);
  else if (!s->cur_answered) reply_frame(s, m.conn_id, m.id, NULL, 0, NULL);   /* data null, as a TS handler returning undefined */
  s->cur = NULL;
  return true;
}

static const route *route_find(const linkd_service *s, const char *method, const char *pattern) {
  for (size_t i = 0; i < s->nroutes; i++)
    if (!strcmp(s->routes[i].method, method) && !strcmp(s->routes[i].path, pattern)) return &s->routes[i];
  for (size_t i = 0; i < s->nroutes; i++)
    if (!strcmp(s->routes[i].method, "*") && !strcmp(s->routes[i].path, pattern)) return &s->routes[i];
  return NULL;
}

static int http_error_answer(linkd_service *s, uint64_t id, unsigned status, const char *type, const char *message) {
  char body[900], t[80], m[700];
  linkd_json_quote(t, sizeof t, type);
  linkd_json_quote(m, sizeof m, message);
  int k = snprintf(body, sizeof body, "{\"error\":{\"type\":%s,\"message\":%s}}", t, m);
  static const linkd_pair ct[] = {{"content-type", "application/json"}};
  return http_answer(s, id, status, ct, 1, body, k > 0 ? (size_t)k : 0);
}

static bool on_http_request(linkd_service *s, const uint8_t *p, size_t n) {
  linkd_HttpRequest *rq = &s->dec->rq;
  linkd_http_request r;
  memset(&r, 0, sizeof r);
  str_slot path = {s, &r.path, NULL}, query = {s, &r.query, NULL}, body = {s, &r.body, &r.body_len};
  vec_slot params = {s, &s->params}, headers = {s, &s->headers};
  memset(rq, 0, sizeof *rq);
  rq->path.funcs.decode = dec_str;
  rq->path.arg = &path;
  rq->query.funcs.decode = dec_str;
  rq->query.arg = &query;
  rq->body.funcs.decode = dec_str;
  rq->body.arg = &body;
  rq->params.funcs.decode = dec_pair;
  rq->params.arg = &params;
  rq->headers.funcs.decode = dec_pair;
  rq->headers.arg = &headers;
  pb_istream_t st = pb_istream_from_buffer(p, n);
  if (!pb_decode(&st, linkd_HttpRequest_fields, rq)) return false;
  r.id = rq->request_id;
  r.method = rq->method;
  r.route = rq->route;
  r.remote_address = rq->remote_address;
  if (!r.path) r.path = "";
  if (!r.query) r.query = "";
  if (!r.body) r.body = "";
  r.params = s->params.v;
  r.params_count = s->params.n;
  r.headers = s->headers.v;
  r.headers_count = s->headers.n;
  user_from(s, &r.user, &rq->user);

  const route *rt = route_find(s, r.method, r.route);
  s->cur = &r;
  s->cur_answered = 0;
  if (!rt) {
    char msg[400];
    snprintf(msg, sizeof msg, "no action for %s %.300s", r.method, r.route[0] ? r.route : r.path);
    http_error_answer(s, r.id, 404, "NOT_FOUND", msg);
  } else if ((rt->auth || (rt->roles && *rt->roles)) && !r.user.authenticated) {
    http_error_answer(s, r.id, 401, "UNAUTHORIZED", "Authentication required");
  } else if (!has_any_role(&r.user, rt->roles)) {
    char roles[256], msg[320];
    roles_text(roles, sizeof roles, rt->roles);
    snprintf(msg, sizeof msg, "one of the roles %s is required", roles);
    http_error_answer(s, r.id, 403, "FORBIDDEN", msg);
  } else {
    rt->cb(s, &r, rt->arg);
    if (!s->cur_answered) {
      static const linkd_pair ct[] = {{"content-type", "application/json"}};
      http_answer(s, r.id, 200, ct, 1, "null", 4);
    }
  }
  s->cur = NULL;
  return true;
}

/* One frame: walks the ServiceMessage's members (normally exactly one). A
 * member that does not decode skips the rest of the frame; the link stays. */
static void frame_handle(linkd_service *s, const uint8_t *p, size_t n) {
  s->st.frames_in++;
  if (frame_scratch(s, n) < 0) {
    LOG_ERROR(s, "out of memory for a frame of %zu bytes: skipped", n);
    s->st.frames_skipped++;
    return;
  }
  pb_istream_t st = pb_istream_from_buffer(p, n);
  while (st.bytes_left && !s->drop) {
    pb_wire_type_t wt;
    uint32_t tag;
    bool eof;
    const char *bad = NULL;
    if (!pb_decode_tag(&st, &wt, &tag, &eof)) bad = "no field tag";
    else if (wt != PB_WT_STRING) {
      if (!pb_skip_field(&st, wt)) bad = "bad field";
      else continue;
    }
    uint32_t len = 0;
    if (!bad && (!pb_decode_varint32(&st, &len) || len > st.bytes_left)) bad = "bad member length";
    if (!bad) {
      const uint8_t *sub = p + (n - st.bytes_left);
      bool ok = true;
      if (s->state != ST_READY && tag != TAG_REGISTER_RESULT && tag != TAG_ERROR && tag != TAG_HEARTBEAT) {
        LOG_DEBUG(s, "frame member %u before registration ignored", tag);
      } else {
        switch (tag) {
          case TAG_REGISTER_RESULT: ok = on_register_result(s, sub, len); break;
          case TAG_HTTP_REQUEST: ok = on_http_request(s, sub, len); break;
          case TAG_ERROR: ok = on_error_frame(s, sub, len); break;
          case TAG_ROOMS_RESULT: ok = on_rooms_result(s, sub, len); break;
          case TAG_HEARTBEAT: ok = on_heartbeat(s, sub, len); break;
          case TAG_COMMAND_RESULT: ok = on_command_result(s, sub, len); break;
          case TAG_WS_EVENT: ok = on_ws_event(s, sub, len); break;
          case TAG_WS_INBOUND: ok = on_ws_inbound(s, sub, len); break;
          default: LOG_DEBUG(s, "frame member %u ignored", tag); break;
        }
      }
      if (!ok) {
        char why[96];
        snprintf(why, sizeof why, "member %u does not decode", tag);
        LOG_WARN(s, "undecodable frame from linkd (%zu bytes) skipped: %s", n, why);
        s->st.frames_skipped++;
        return;
      }
      if (!pb_read(&st, NULL, len)) bad = "bad member length";
    }
    if (bad) {
      LOG_WARN(s, "undecodable frame from linkd (%zu bytes) skipped: %s", n, bad);
      s->st.frames_skipped++;
      return;
    }
  }
}

/* ============================================================ 8. Answers and commands */

static int64_t next_id(linkd_service *s) {
  if (s->seq == INT64_MAX) s->seq = 0;
  return ++s->seq;
}

static int pending_add(linkd_service *s, int64_t id, linkd_rooms_cb cb, void *arg) {
  if (s->pend_head > 64 && s->pend_head * 2 > s->pend_len) {
    memmove(s->pend, s->pend + s->pend_head, (s->pend_len - s->pend_head) * sizeof *s->pend);
    s->pend_len -= s->pend_head;
    s->pend_head = 0;
  }
  if (grow((void **)&s->pend, &s->pend_cap, s->pend_len + 1, sizeof *s->pend) < 0) return -ENOMEM;
  pending *p = &s->pend[s->pend_len++];
  p->id = id;
  p->deadline = now_ms() + s->cmd_timeout;
  p->rooms_cb = cb;
  p->arg = arg;
  if (s->pend_len - s->pend_head == 1) timer_arm(s);
  return 0;
}

/* Removes an entry into *out; 0 if it was there. Answers come in order, so
 * the search almost always stops at the head. */
static int pending_take(linkd_service *s, int64_t id, pending *out) {
  if (id <= 0) return -1;
  for (size_t i = s->pend_head; i < s->pend_len; i++) {
    if (s->pend[i].id != id) continue;
    *out = s->pend[i];
    s->pend[i].id = 0;
    while (s->pend_head < s->pend_len && s->pend[s->pend_head].id == 0) s->pend_head++;
    if (s->pend_head == s->pend_len) s->pend_head = s->pend_len = 0;
    return 0;
  }
  return -1;
}

static void pending_fire(linkd_service *s, const pending *p, const char *type, const char *message, int code) {
  if (p->rooms_cb) {
    p->rooms_cb(s, p->id, 0, NULL, 0, p->arg);
  } else if (s->on_result) {
    linkd_result r;
    memset(&r, 0, sizeof r);
    r.op_id = p->id;
    r.code = code;
    r.type = type;
    r.message = message;
    s->on_result(s, &r, s->arg);
  }
}

static void pending_fail_all(linkd_service *s, const char *type, const char *message, int code) {
  while (s->pend_head < s->pend_len) {
    pending p = s->pend[s->pend_head++];
    if (p.id) pending_fire(s, &p, type, message, code);
  }
  s->pend_head = s->pend_len = 0;
}

static void pending_expire(linkd_service *s, uint64_t now) {
  while (s->pend_head < s->pend_len) {
    pending *h = &s->pend[s->pend_head];
    if (h->id && h->deadline > now) break;
    pending p = *h;
    s->pend_head++;
    if (p.id) pending_fire(s, &p, "TIMEOUT", "no answer from linkd in time", 504);
  }
  if (s->pend_head == s->pend_len) s->pend_head = s->pend_len = 0;
}

static int ready(const linkd_service *s) { return s->state == ST_READY && s->sock >= 0; }

/* Sends a command frame with a fresh op id; returns the id or -errno. */
static int64_t command(linkd_service *s, uint32_t tag, const pb_msgdesc_t *fields, void *msg, uint64_t *op_field,
                       linkd_rooms_cb rooms_cb, void *arg) {
  if (!ready(s)) return -ENOTCONN;
  int64_t id = next_id(s);
  *op_field = (uint64_t)id;
  int r = frame_put(s, tag, fields, msg);
  if (r < 0) return r;
  if (s->on_result || rooms_cb) {
    if (pending_add(s, id, rooms_cb, arg) < 0) LOG_WARN(s, "out of memory: the answer to %lld is not awaited", (long long)id);
  }
  flush_maybe(s);
  return id;
}

static void mark_answered(linkd_service *s, const void *what) {
  if (what && s->cur == what) s->cur_answered = 1;
}

static int reply_frame(linkd_service *s, const char *conn, const char *corr, const char *json, size_t len,
                       const linkd_ErrorResponse *err) {
  if (!ready(s)) return -ENOTCONN;
  if (!corr || !*corr) return 0;   /* no id: the client expects nothing */
  linkd_WebSocketResponse m;
  memset(&m, 0, sizeof m);
  if (put_str(m.connection_id, sizeof m.connection_id, conn) < 0 ||
      put_str(m.correlation_id, sizeof m.correlation_id, corr) < 0)
    return -EINVAL;
  bytes_arg b = {json, len};
  if (err) {
    m.has_error = true;
    m.error = *err;
  } else {
    m.data.funcs.encode = enc_bytes;
    m.data.arg = &b;
  }
  int r = frame_put(s, TAG_WS_RESPONSE, linkd_WebSocketResponse_fields, &m);
  if (r == -EMSGSIZE && !err) {
    /* the client would otherwise wait for linkd's TIMEOUT: an error fits */
    LOG_ERROR(s, "reply of %zu bytes is over linkd's frame limit: an error is sent instead", len);
    linkd_ErrorResponse e;
    error_fill(&e, 500, "RESPONSE_TOO_LARGE", "the reply is too large");
    reply_frame(s, conn, corr, NULL, 0, &e);
    return -EMSGSIZE;
  }
  if (r == 0) flush_maybe(s);
  return r;
}

int linkd_reply(linkd_service *s, const linkd_message *msg, const char *json) {
  if (!s || !msg) return -EINVAL;
  mark_answered(s, msg);
  return reply_frame(s, msg->conn_id, msg->id, json, json ? strlen(json) : 0, NULL);
}

int linkd_reply_error(linkd_service *s, const linkd_message *msg, int code, const char *type, const char *message) {
  if (!s || !msg) return -EINVAL;
  mark_answered(s, msg);
  linkd_ErrorResponse e;
  error_fill(&e, code, type, message);
  return reply_frame(s, msg->conn_id, msg->id, NULL, 0, &e);
}

void linkd_defer(linkd_service *s, const linkd_message *msg) {
  if (s) mark_answered(s, msg);
}

int linkd_reply_to(linkd_service *s, const char *conn_id, const char *msg_id, const char *json) {
  if (!s) return -EINVAL;
  return reply_frame(s, conn_id, msg_id, json, json ? strlen(json) : 0, NULL);
}

int linkd_reply_error_to(linkd_service *s, const char *conn_id, const char *msg_id, int code, const char *type,
                         const char *message) {
  if (!s) return -EINVAL;
  linkd_ErrorResponse e;
  error_fill(&e, code, type, message);
  return reply_frame(s, conn_id, msg_id, NULL, 0, &e);
}

static int http_answer(linkd_service *s, uint64_t id, unsigned status, const linkd_pair *h, size_t nh,
                       const void *body, size_t len) {
  if (!ready(s)) return -ENOTCONN;
  linkd_HttpResponse m;
  memset(&m, 0, sizeof m);
  m.request_id = id;
  m.status = status ? status : 200;
  headers_arg ha = {h, nh};
  bytes_arg b = {body, len};
  m.headers.funcs.encode = enc_headers;
  m.headers.arg = &ha;
  m.body.funcs.encode = enc_bytes;
  m.body.arg = &b;
  int r = frame_put(s, TAG_HTTP_RESPONSE, linkd_HttpResponse_fields, &m);
  if (r == -EMSGSIZE) {
    LOG_ERROR(s, "HTTP response of %zu bytes is over linkd's frame limit: answered 500", len);
    http_error_answer(s, id, 500, "RESPONSE_TOO_LARGE", "the response is too large");
    return -EMSGSIZE;
  }
  if (r == 0) flush_maybe(s);
  return r;
}

int linkd_respond_id(linkd_service *s, uint64_t request_id, unsigned status, const linkd_pair *headers,
                     size_t headers_count, const void *body, size_t len) {
  if (!s || (len && !body) || (headers_count && !headers) || status > 999) return -EINVAL;
  return http_answer(s, request_id, status, headers, headers_count, body, len);
}

int linkd_respond(linkd_service *s, const linkd_http_request *req, unsigned status, const char *content_type,
                  const void *body, size_t len) {
  if (!s || !req) return -EINVAL;
  mark_answered(s, req);
  linkd_pair ct = {"content-type", content_type};
  return linkd_respond_id(s, req->id, status, &ct, content_type ? 1 : 0, body, len);
}

int linkd_respond_json(linkd_service *s, const linkd_http_request *req, unsigned status, const char *json) {
  if (!json) json = "null";
  return linkd_respond(s, req, status, "application/json", json, strlen(json));
}

int linkd_respond_error(linkd_service *s, const linkd_http_request *req, unsigned status, const char *type,
                        const char *message) {
  if (!s || !req) return -EINVAL;
  mark_answered(s, req);
  return http_error_answer(s, req->id, status, type ? type : "ERROR", message ? message : "");
}

void linkd_http_defer(linkd_service *s, const linkd_http_request *req) {
  if (s) mark_answered(s, req);
}

static int64_t outbound(linkd_service *s, const char *conn, const char *room, int all, const char *event,
                        const void *payload, size_t len, int binary, const char *const *except) {
  if (!s) return -EINVAL;
  linkd_WebSocketOutbound m;
  memset(&m, 0, sizeof m);
  if (conn && (!*conn || put_str(m.connection_id, sizeof m.connection_id, conn) < 0)) return -EINVAL;
  if (room && (!*room || put_str(m.room, sizeof m.room, room) < 0)) return -EINVAL;
  m.broadcast_all = all != 0;
  if (event && put_str(m.event, sizeof m.event, event) < 0) return -EINVAL;
  if (!s->ws.raw && (!event || !*event)) return -EINVAL;
  bytes_arg b = {payload, len};
  m.payload.funcs.encode = enc_bytes;
  m.payload.arg = &b;
  m.except_connections.funcs.encode = enc_strlist;
  m.except_connections.arg = (void *)except;
  m.binary = binary != 0;
  return command(s, TAG_WS_OUTBOUND, linkd_WebSocketOutbound_fields, &m, &m.op_id, NULL, NULL);
}

int64_t linkd_send(linkd_service *s, const char *conn_id, const char *event, const char *json) {
  if (!conn_id) return -EINVAL;
  return outbound(s, conn_id, NULL, 0, event, json, json ? strlen(json) : 0, 0, NULL);
}

int64_t linkd_to_room(linkd_service *s, const char *room, const char *event, const char *json,
                      const char *const *except) {
  if (!room) return -EINVAL;
  return outbound(s, NULL, room, 0, event, json, json ? strlen(json) : 0, 0, except);
}

int64_t linkd_to_all(linkd_service *s, const char *event, const char *json, const char *const *except) {
  return outbound(s, NULL, NULL, 1, event, json, json ? strlen(json) : 0, 0, except);
}

int64_t linkd_send_raw(linkd_service *s, const char *conn_id, const void *data, size_t len, int binary) {
  if (!conn_id || (len && !data)) return -EINVAL;
  return outbound(s, conn_id, NULL, 0, NULL, data, len, binary, NULL);
}

int64_t linkd_to_room_raw(linkd_service *s, const char *room, const void *data, size_t len, int binary,
                          const char *const *except) {
  if (!room || (len && !data)) return -EINVAL;
  return outbound(s, NULL, room, 0, NULL, data, len, binary, except);
}

static int64_t room_op(linkd_service *s, const char *conn_id, const char *room, int leave) {
  if (!s || !conn_id || !room || !*room) return -EINVAL;
  linkd_WebSocketRoomOperation m;
  memset(&m, 0, sizeof m);
  if (put_str(m.connection_id, sizeof m.connection_id, conn_id) < 0 || put_str(m.room, sizeof m.room, room) < 0)
    return -EINVAL;
  m.operation = leave ? linkd_WebSocketRoomOperation_OperationType_LEAVE : linkd_WebSocketRoomOperation_OperationType_JOIN;
  return command(s, TAG_WS_ROOM_OP, linkd_WebSocketRoomOperation_fields, &m, &m.op_id, NULL, NULL);
}

int64_t linkd_join(linkd_service *s, const char *conn_id, const char *room) { return room_op(s, conn_id, room, 0); }
int64_t linkd_leave(linkd_service *s, const char *conn_id, const char *room) { return room_op(s, conn_id, room, 1); }

int64_t linkd_disconnect(linkd_service *s, const char *conn_id, unsigned code, const char *reason) {
  if (!s || !conn_id || code > 4999) return -EINVAL;
  linkd_CloseConnection m;
  memset(&m, 0, sizeof m);
  if (put_str(m.connection_id, sizeof m.connection_id, conn_id) < 0) return -EINVAL;
  m.code = code ? code : 1000;
  put_text(m.reason, sizeof m.reason, reason);
  return command(s, TAG_CLOSE, linkd_CloseConnection_fields, &m, &m.op_id, NULL, NULL);
}

int64_t linkd_rooms(linkd_service *s, const char *conn_id, linkd_rooms_cb cb, void *arg) {
  if (!s || !conn_id || !cb) return -EINVAL;
  linkd_RoomsQuery m;
  memset(&m, 0, sizeof m);
  if (put_str(m.connection_id, sizeof m.connection_id, conn_id) < 0) return -EINVAL;
  return command(s, TAG_ROOMS_QUERY, linkd_RoomsQuery_fields, &m, &m.query_id, cb, arg);
}

/* ============================================================ 9. Driving */

static void timer_arm(linkd_service *s) {
  uint64_t at = 0;
  if (s->state == ST_RETRY) at = s->retry_at;
  for (size_t i = s->pend_head; i < s->pend_len; i++) {
    if (!s->pend[i].id) continue;
    if (!at || s->pend[i].deadline < at) at = s->pend[i].deadline;
    break;   /* FIFO: the first live entry is the oldest */
  }
  struct itimerspec its;
  memset(&its, 0, sizeof its);
  if (at) {
    its.it_value.tv_sec = (time_t)(at / 1000);
    its.it_value.tv_nsec = (long)(at % 1000) * 1000000L;
    if (!its.it_value.tv_sec && !its.it_value.tv_nsec) its.it_value.tv_nsec = 1;
  }
  timerfd_settime(s->tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

static int add_fd(int ep, int fd, uint32_t src) {
  struct epoll_event ev = {0};
  ev.events = EPOLLIN;
  ev.data.u32 = src;
  return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

linkd_service *linkd_service_new(const linkd_config *cfg) {
  if (!cfg) return NULL;
  linkd_service *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->epfd = s->tfd = s->efd = s->sock = -1;
  s->log = cfg->log;
  s->arg = cfg->arg;
  s->log_level = cfg->log_level ? cfg->log_level : level_from_env();
  const char *bad = NULL;
  if (!cfg->name || !cfg->name[0] || put_str(s->name, sizeof s->name, cfg->name) < 0) bad = "name is required (1-63 bytes)";
  else if (put_str(s->version, sizeof s->version, cfg->version) < 0) bad = "version is over 31 bytes";
  else if (put_str(s->ns, sizeof s->ns, cfg->namespace_name) < 0) bad = "namespace_name is over 63 bytes";
  else if (put_str(s->instance, sizeof s->instance, cfg->instance_id) < 0) bad = "instance_id is over 63 bytes";
  else if (cfg->websocket.path && cfg->websocket.path[0] &&
           (cfg->websocket.path[0] != '/' || put_str(s->ws_path, sizeof s->ws_path, cfg->websocket.path) < 0))
    bad = "websocket.path must start with '/' and be under 256 bytes";
  else if (cfg->max_frame_bytes && cfg->max_frame_bytes < MIN_MAX_FRAME) bad = "max_frame_bytes must be 0 or at least 1024";
  if (!bad) {
    const char *path = cfg->socket_path;
    if (!path || !*path) path = getenv("LINKD_SOCKET");
    if (!path || !*path) path = geteuid() == 0 ? "/run/linkd/linkd.sock" : "./run/linkd.sock";
    if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) bad = "socket path is too long for a Unix socket";
    else if (!(s->socket_path = xstrdup(path))) bad = "out of memory";
  }
  if (bad) {
    LOG_ERROR(s, "linkd_service_new: %s", bad);
    free(s->socket_path);
    free(s);
    return NULL;
  }
  memset(&s->ws, 0, sizeof s->ws);
  if (s->ws_path[0]) {
    s->ws.enabled = true;
    memcpy(s->ws.path, s->ws_path, sizeof s->ws.path);
    s->ws.heartbeat_interval_ms = cfg->websocket.heartbeat_interval_ms;
    s->ws.max_connections_per_user = cfg->websocket.max_connections_per_user;
    s->ws.max_message_size_bytes = cfg->websocket.max_message_size_bytes;
    s->ws.compression = cfg->websocket.compression != 0;
    s->ws.auth_required = cfg->websocket.auth_required != 0;
    s->ws.raw = cfg->websocket.raw != 0;
    if (cfg->websocket.recovery_window_ms) {
      s->ws.has_recovery = true;
      s->ws.recovery.window_ms = cfg->websocket.recovery_window_ms;
      s->ws.recovery.history = cfg->websocket.recovery_history;
    }
  }
  s->max_frame = cfg->max_frame_bytes ? cfg->max_frame_bytes : DEFAULT_MAX_FRAME;
  s->rc_initial = cfg->reconnect_initial_ms ? cfg->reconnect_initial_ms : 100;
  s->rc_max = cfg->reconnect_max_ms ? cfg->reconnect_max_ms : 5000;
  if (s->rc_max < s->rc_initial) s->rc_max = s->rc_initial;
  s->cmd_timeout = cfg->command_timeout_ms ? cfg->command_timeout_ms : 10000;
  s->max_output = cfg->max_output_bytes ? cfg->max_output_bytes : 8u * 1024u * 1024u;
  s->on_connect = cfg->on_connect;
  s->on_disconnect = cfg->on_disconnect;
  s->on_existing = cfg->on_existing;
  s->on_resume = cfg->on_resume;
  s->on_message = cfg->on_message;
  s->on_result = cfg->on_result;
  s->on_link = cfg->on_link;
  s->delay = s->rc_initial;
  s->limit = PRE_REGISTER_MAX_FRAME;
  s->params.max = MAX_FRAME_PARAMS;
  s->headers.max = MAX_FRAME_HEADERS;
  s->rooms.max = MAX_FRAME_ROOMS;
  s->dec = malloc(sizeof *s->dec);
  s->route_scratch = malloc(sizeof *s->route_scratch);
  s->epfd = epoll_create1(EPOLL_CLOEXEC);
  s->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (!s->dec || !s->route_scratch || s->epfd < 0 || s->tfd < 0 || s->efd < 0 ||
      add_fd(s->epfd, s->tfd, SRC_TIMER) < 0 || add_fd(s->epfd, s->efd, SRC_WAKE) < 0) {
    LOG_ERROR(s, "linkd_service_new: %s", strerror(errno ? errno : ENOMEM));
    linkd_service_free(s);
    return NULL;
  }
  s->rng = (now_ms() << 16) ^ (uint64_t)getpid() ^ (uint64_t)(uintptr_t)s ^ 0x9e3779b97f4a7c15ull;
  return s;
}

void linkd_service_free(linkd_service *s) {
  if (!s) return;
  if (s->in_process) {
    LOG_ERROR(s, "linkd_service_free called from a callback: ignored");
    return;
  }
  if (s->sock >= 0) {
    flush_out(s);
    sock_close(s);
  }
  /* whoever still waits is told, with the service still whole */
  s->state = ST_STOPPED;
  pending_fail_all(s, "SERVICE_UNAVAILABLE", "service stopped", 503);
  for (size_t i = 0; i < s->nroutes; i++) {
    strlist_free(s->routes[i].roles);
    strlist_free(s->routes[i].cors);
  }
  for (size_t i = 0; i < s->nhandlers; i++) {
    free(s->handlers[i].type);
    strlist_free(s->handlers[i].roles);
  }
  free(s->routes);
  free(s->handlers);
  if (s->epfd >= 0) close(s->epfd);
  if (s->tfd >= 0) close(s->tfd);
  if (s->efd >= 0) close(s->efd);
  free(s->in);
  free(s->out);
  free(s->arena);
  free(s->params.v);
  free(s->headers.v);
  free(s->rooms.v);
  free(s->pend);
  free(s->dec);
  free(s->route_scratch);
  free(s->socket_path);
  free(s);
}

int linkd_route(linkd_service *s, const char *method, const char *path, const linkd_route_opts *opts,
                linkd_http_cb cb, void *arg) {
  if (!s || !path || path[0] != '/' || !cb) return -EINVAL;
  route r;
  memset(&r, 0, sizeof r);
  const char *m = method && *method ? method : "GET";
  if (put_str(r.method, sizeof r.method, m) < 0 || put_str(r.path, sizeof r.path, path) < 0) return -EINVAL;
  for (char *c = r.method; *c; c++) *c = (char)toupper((unsigned char)*c);
  for (size_t i = 0; i < s->nroutes; i++)
    if (!strcmp(s->routes[i].method, r.method) && !strcmp(s->routes[i].path, r.path)) return -EEXIST;
  int bad = 0;
  r.auth = opts && opts->auth;
  r.roles = strlist_dup(opts ? opts->roles : NULL, MAX_ROUTE_ROLES, 64, &bad);
  r.cors = strlist_dup(opts ? opts->cors : NULL, MAX_ROUTE_CORS, 256, &bad);
  r.cb = cb;
  r.arg = arg;
  size_t cap = s->nroutes;
  if (bad || grow((void **)&s->routes, &cap, s->nroutes + 1, sizeof *s->routes) < 0) {
    strlist_free(r.roles);
    strlist_free(r.cors);
    return bad ? -EINVAL : -ENOMEM;
  }
  s->routes[s->nroutes++] = r;
  if (s->state == ST_READY) LOG_WARN(s, "route %s %s added after registration: it takes effect at the next reconnect", r.method, r.path);
  return 0;
}

int linkd_ws_on(linkd_service *s, const char *type, const linkd_handler_opts *opts, linkd_message_cb cb, void *arg) {
  if (!s || !type || !*type || strlen(type) >= 128 || !cb) return -EINVAL;
  if (handler_find(s, type)) return -EEXIST;
  handler h;
  memset(&h, 0, sizeof h);
  int bad = 0;
  h.auth = opts && opts->auth;
  h.roles = strlist_dup(opts ? opts->roles : NULL, 64, 64, &bad);
  h.type = xstrdup(type);
  h.cb = cb;
  h.arg = arg;
  size_t cap = s->nhandlers;
  if (bad || !h.type || grow((void **)&s->handlers, &cap, s->nhandlers + 1, sizeof *s->handlers) < 0) {
    free(h.type);
    strlist_free(h.roles);
    return bad ? -EINVAL : -ENOMEM;
  }
  s->handlers[s->nhandlers++] = h;
  return 0;
}

int linkd_start(linkd_service *s) {
  if (!s) return -EINVAL;
  if (s->in_process) return -EBUSY;
  if (s->state != ST_IDLE && s->state != ST_STOPPED && s->state != ST_REFUSED) return 0;
  s->stop_req = 0;
  uint64_t v;
  while (read(s->efd, &v, sizeof v) > 0) {}
  s->delay = s->rc_initial;
  s->retry_at = now_ms();
  set_state(s, ST_RETRY);   /* the first attempt is due at once */
  timer_arm(s);
  return 0;
}

void linkd_stop(linkd_service *s) {
  if (!s) return;
  s->stop_req = 1;
  uint64_t one = 1;
  ssize_t w = write(s->efd, &one, sizeof one);   /* async-signal-safe */
  (void)w;
}

static void do_stop(linkd_service *s) {
  if (s->sock >= 0) {
    flush_out(s);   /* best effort: whatever the kernel takes now */
    shutdown(s->sock, SHUT_RDWR);
  }
  int was_ready = s->state == ST_READY;
  set_state(s, ST_STOPPED);
  sock_close(s);
  timer_arm(s);
  pending_fail_all(s, "SERVICE_UNAVAILABLE", "service stopped", 503);
  LOG_INFO(s, "stopped");
  if (was_ready && s->on_link) s->on_link(s, LINKD_LINK_DOWN, "stopped", s->arg);
}

static int finished(const linkd_service *s) {
  if (s->state == ST_STOPPED) return 1;
  if (s->state == ST_REFUSED) return -EPERM;
  return 0;
}

int linkd_process(linkd_service *s) {
  if (!s) return -EINVAL;
  if (s->in_process) return -EBUSY;
  s->in_process = 1;
  struct epoll_event ev[4];
  int n = epoll_wait(s->epfd, ev, 4, 0);
  for (int i = 0; i < n; i++) {
    switch (ev[i].data.u32) {
      case SRC_WAKE: {
        uint64_t v;
        while (read(s->efd, &v, sizeof v) > 0) {}
        break;
      }
      case SRC_TIMER: {
        uint64_t v;
        while (read(s->tfd, &v, sizeof v) > 0) {}
        break;
      }
      case SRC_SOCK:
        if (s->sock < 0) break;
        if (ev[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) link_read(s);
        break;
    }
  }
  if (s->stop_req && s->state != ST_STOPPED) {
    s->in_process = 0;
    do_stop(s);
    return 1;
  }
  if (s->state == ST_IDLE) {   /* not started: nothing to do (the descriptors were drained) */
    s->in_process = 0;
    return 0;
  }
  uint64_t now = now_ms();
  if (s->state == ST_RETRY && now >= s->retry_at) link_connect(s);
  pending_expire(s, now);
  if (s->sock >= 0) {
    int r = flush_out(s);
    if (r < 0) link_down(s, strerror(-r));
  }
  timer_arm(s);
  s->in_process = 0;
  return finished(s);
}

int linkd_run(linkd_service *s) {
  if (!s) return -EINVAL;
  int r = linkd_start(s);
  if (r < 0) return r;
  for (;;) {
    r = linkd_process(s);
    if (r) break;
    struct epoll_event ev;
    if (epoll_wait(s->epfd, &ev, 1, -1) < 0 && errno != EINTR) return -errno;
  }
  return r == 1 ? 0 : r;
}

int linkd_fd(const linkd_service *s) { return s ? s->epfd : -1; }
int linkd_registered(const linkd_service *s) { return s && s->state == ST_READY; }
const char *linkd_linkd_version(const linkd_service *s) { return s ? s->linkd_version : ""; }

void linkd_get_stats(const linkd_service *s, linkd_stats *out) {
  if (!s || !out) return;
  *out = s->st;
  out->output_queued = s->out_len - s->out_off;
}

/* ============================================================ 10. Helpers */

int linkd_user_has_role(const linkd_user *u, const char *role) {
  if (!u || !role) return 0;
  for (size_t i = 0; i < u->roles_count; i++)
    if (u->roles[i] && !strcmp(u->roles[i], role)) return 1;
  return 0;
}

const char *linkd_http_param(const linkd_http_request *req, const char *name) {
  if (!req || !name) return NULL;
  for (size_t i = 0; i < req->params_count; i++)
    if (!strcmp(req->params[i].name, name)) return req->params[i].value;
  return NULL;
}

const char *linkd_http_header(const linkd_http_request *req, const char *name) {
  if (!req || !name) return NULL;
  for (size_t i = 0; i < req->headers_count; i++)
    if (!strcasecmp(req->headers[i].name, name)) return req->headers[i].value;
  return NULL;
}

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Percent-decodes [p, e) into out; -1 if it does not fit. */
static int pct_decode(const char *p, const char *e, char *out, size_t cap) {
  size_t k = 0;
  while (p < e) {
    int c = (unsigned char)*p++;
    if (c == '+') c = ' ';
    else if (c == '%' && e - p >= 2 && hexval(p[0]) >= 0 && hexval(p[1]) >= 0) {
      c = hexval(p[0]) * 16 + hexval(p[1]);
      p += 2;
    }
    if (k + 1 >= cap) return -1;
    out[k++] = (char)c;
  }
  if (!cap) return -1;
  out[k] = 0;
  return (int)k;
}

int linkd_query_get(const char *query, const char *name, char *out, size_t cap) {
  if (!query || !name || !out) return -1;
  char key[256];
  const char *p = query;
  while (*p) {
    const char *amp = strchr(p, '&'), *end = amp ? amp : p + strlen(p);
    const char *eq = memchr(p, '=', (size_t)(end - p));
    const char *kend = eq ? eq : end;
    if (pct_decode(p, kend, key, sizeof key) >= 0 && !strcmp(key, name))
      return pct_decode(eq ? eq + 1 : end, end, out, cap);
    p = amp ? amp + 1 : end;
  }
  return -1;
}

size_t linkd_json_quote(char *out, size_t cap, const char *s) {
  size_t k = 0;
#define PUT(ch) do { if (k + 1 < cap) out[k] = (ch); k++; } while (0)
  PUT('"');
  for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
    unsigned c = *p;
    if (c == '"' || c == '\\') { PUT('\\'); PUT((char)c); }
    else if (c == '\n') { PUT('\\'); PUT('n'); }
    else if (c == '\r') { PUT('\\'); PUT('r'); }
    else if (c == '\t') { PUT('\\'); PUT('t'); }
    else if (c < 0x20 || c == 0x7f) {
      static const char hx[] = "0123456789abcdef";
      PUT('\\'); PUT('u'); PUT('0'); PUT('0'); PUT(hx[c >> 4]); PUT(hx[c & 15]);
    } else PUT((char)c);
  }
  PUT('"');
#undef PUT
  if (cap) out[k < cap ? k : cap - 1] = 0;
  return k;
}

/* A tiny JSON scanner: enough to find a top-level member of an object. */
typedef struct jscan { const char *p, *e; } jscan;

static void js_ws(jscan *j) {
  while (j->p < j->e && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

/* Skips a string (j->p at its quote); 0 on success. */
static int js_string(jscan *j) {
  if (j->p >= j->e || *j->p != '"') return -1;
  for (j->p++; j->p < j->e; j->p++) {
    if (*j->p == '\\') { j->p++; continue; }
    if (*j->p == '"') { j->p++; return 0; }
  }
  return -1;
}

/* Skips any value; nesting is bounded by the text. */
static int js_value(jscan *j, int depth) {
  js_ws(j);
  if (j->p >= j->e || depth > 64) return -1;
  char c = *j->p;
  if (c == '"') return js_string(j);
  if (c == '{' || c == '[') {
    char close = c == '{' ? '}' : ']';
    j->p++;
    js_ws(j);
    if (j->p < j->e && *j->p == close) { j->p++; return 0; }
    for (;;) {
      if (c == '{') {
        js_ws(j);
        if (js_string(j) < 0) return -1;
        js_ws(j);
        if (j->p >= j->e || *j->p != ':') return -1;
        j->p++;
      }
      if (js_value(j, depth + 1) < 0) return -1;
      js_ws(j);
      if (j->p >= j->e) return -1;
      if (*j->p == ',') { j->p++; continue; }
      if (*j->p == close) { j->p++; return 0; }
      return -1;
    }
  }
  while (j->p < j->e && !strchr(",}] \t\r\n", *j->p)) j->p++;   /* number, true, false, null */
  return 0;
}

/* Points j at the value of top-level member key; 0 if found. */
static int js_find(const char *json, size_t len, const char *key, jscan *j) {
  if (!json || !key) return -1;
  j->p = json;
  j->e = json + len;
  js_ws(j);
  if (j->p >= j->e || *j->p != '{') return -1;
  j->p++;
  size_t kl = strlen(key);
  for (;;) {
    js_ws(j);
    if (j->p < j->e && *j->p == '}') return -1;
    const char *ks = j->p;
    if (js_string(j) < 0) return -1;
    int match = (size_t)(j->p - ks) == kl + 2 && !memcmp(ks + 1, key, kl);
    js_ws(j);
    if (j->p >= j->e || *j->p != ':') return -1;
    j->p++;
    js_ws(j);
    if (match) return 0;
    if (js_value(j, 0) < 0) return -1;
    js_ws(j);
    if (j->p >= j->e || *j->p != ',') return -1;
    j->p++;
  }
}

int linkd_json_number(const char *json, size_t len, const char *key, double *out) {
  jscan j;
  if (js_find(json, len, key, &j) < 0 || j.p >= j.e) return -1;
  char buf[64];
  size_t n = 0;
  while (j.p + n < j.e && n < sizeof buf - 1 && strchr("0123456789+-.eE", j.p[n])) n++;
  if (!n || n == sizeof buf - 1) return -1;
  memcpy(buf, j.p, n);
  buf[n] = 0;
  char *end;
  double v = strtod(buf, &end);
  if (*end) return -1;
  if (out) *out = v;
  return 0;
}

int linkd_json_bool(const char *json, size_t len, const char *key, int *out) {
  jscan j;
  if (js_find(json, len, key, &j) < 0) return -1;
  if (j.e - j.p >= 4 && !memcmp(j.p, "true", 4)) { if (out) *out = 1; return 0; }
  if (j.e - j.p >= 5 && !memcmp(j.p, "false", 5)) { if (out) *out = 0; return 0; }
  return -1;
}

static size_t utf8_put(char *o, unsigned cp) {
  if (cp < 0x80) { o[0] = (char)cp; return 1; }
  if (cp < 0x800) { o[0] = (char)(0xc0 | cp >> 6); o[1] = (char)(0x80 | (cp & 63)); return 2; }
  if (cp < 0x10000) {
    o[0] = (char)(0xe0 | cp >> 12); o[1] = (char)(0x80 | ((cp >> 6) & 63)); o[2] = (char)(0x80 | (cp & 63));
    return 3;
  }
  o[0] = (char)(0xf0 | cp >> 18); o[1] = (char)(0x80 | ((cp >> 12) & 63));
  o[2] = (char)(0x80 | ((cp >> 6) & 63)); o[3] = (char)(0x80 | (cp & 63));
  return 4;
}

static int hex4(const char *p, const char *e, unsigned *v) {
  if (e - p < 4) return -1;
  *v = 0;
  for (int i = 0; i < 4; i++) {
    int h = hexval(p[i]);
    if (h < 0) return -1;
    *v = *v * 16 + (unsigned)h;
  }
  return 0;
}

int linkd_json_string(const char *json, size_t len, const char *key, char *out, size_t cap) {
  jscan j;
  if (!out || !cap || js_find(json, len, key, &j) < 0 || j.p >= j.e || *j.p != '"') return -1;
  size_t k = 0;
  for (const char *p = j.p + 1; p < j.e; p++) {
    char tmp[4];
    size_t n = 1;
    if (*p == '"') { out[k] = 0; return 0; }
    if (*p != '\\') tmp[0] = *p;
    else {
      if (++p >= j.e) return -1;
      switch (*p) {
        case 'n': tmp[0] = '\n'; break;
        case 't': tmp[0] = '\t'; break;
        case 'r': tmp[0] = '\r'; break;
        case 'b': tmp[0] = '\b'; break;
        case 'f': tmp[0] = '\f'; break;
        case 'u': {
          unsigned cp, lo;
          if (hex4(p + 1, j.e, &cp) < 0) return -1;
          p += 4;
          if (cp >= 0xd800 && cp < 0xdc00 && j.e - p >= 7 && p[1] == '\\' && p[2] == 'u' &&
              hex4(p + 3, j.e, &lo) == 0 && lo >= 0xdc00 && lo < 0xe000) {
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            p += 6;
          }
          n = utf8_put(tmp, cp);
          break;
        }
        default: tmp[0] = *p; break;   /* \" \\ \/ */
      }
    }
    if (k + n >= cap) return -1;
    memcpy(out + k, tmp, n);
    k += n;
  }
  return -1;
}
