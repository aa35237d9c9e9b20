/* linkd_service.h — Linkd services in C (C99; usable from C++).
 *
 * A service is a process on the same machine as linkd. It connects to
 * linkd's Unix socket, registers a name, its HTTP routes and its WebSocket
 * path, then answers what linkd forwards: HTTP requests, WebSocket
 * connections and messages. Frames are varint-delimited protobuf
 * ServiceMessages (proto/linkd.proto), encoded with nanopb; this library is
 * one .c file on nanopb and the generated linkd.pb.c, nothing else.
 *
 *   linkd_config cfg = {0};
 *   cfg.name = "hello";
 *   cfg.websocket.path = "/ws/hello";
 *   linkd_service *s = linkd_service_new(&cfg);
 *   linkd_route(s, "GET", "/hello/:who", NULL, on_hello, NULL);
 *   linkd_ws_on(s, "echo", NULL, on_echo, NULL);
 *   return linkd_run(s) < 0;     // or: poll linkd_fd(s), call linkd_process(s)
 *
 * Threads: a service is driven from one thread; only linkd_stop() may be
 * called from another thread or a signal handler.
 * Lifetimes: every pointer handed to a callback (requests, messages,
 * connection events, their strings) is valid until the callback returns.
 * Copy what you keep. The library copies what you give it.
 * Errors: functions return 0 (commands: a positive id) on success and a
 * negative errno value on failure (-ENOTCONN while not registered,
 * -EMSGSIZE over linkd's frame limit, -EINVAL for a bad argument,
 * -ENOBUFS when the output queue is over its cap, -ENOMEM).
 * Linux only (epoll, timerfd).
 */
#ifndef LINKD_SERVICE_H
#define LINKD_SERVICE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LINKD_SDK_VERSION "0.1.0"

typedef struct linkd_service linkd_service;

/* ---- what linkd hands over ------------------------------------------------ */

/* Who sent a request or owns a connection, from the JWT linkd verified. */
typedef struct linkd_user {
  const char *user_id;              /* JWT "sub"; "" when not authenticated */
  const char *username;             /* "preferred_username" or "username" */
  const char *tenant_id;
  const char *const *roles;         /* roles_count strings */
  size_t roles_count;
  int authenticated;                /* 0: no (valid) token was presented */
  const char *client_cert_cn;       /* TLS with a client CA: the verified certificate's subject CN, else "" */
  const char *client_cert_sha256;   /* ... and its SHA-256 (lower-case hex of the DER), else "" */
} linkd_user;

typedef struct linkd_pair {
  const char *name;
  const char *value;
} linkd_pair;

/* One HTTP request routed to this service. Strings are NUL-terminated. */
typedef struct linkd_http_request {
  uint64_t id;                      /* answer with linkd_respond*() */
  const char *method;               /* "GET", ... */
  const char *path;                 /* raw path, without the query */
  const char *route;                /* the pattern that matched: "/users/:id" */
  const char *query;                /* raw query string without '?', or "" */
  const linkd_pair *params;         /* :param values, percent-decoded by linkd */
  size_t params_count;
  const linkd_pair *headers;        /* every request header, as sent */
  size_t headers_count;
  const char *body;                 /* body_len bytes, then a NUL */
  size_t body_len;
  const char *remote_address;       /* "ip:port" */
  linkd_user user;
} linkd_http_request;

/* One WebSocket client message. */
typedef struct linkd_message {
  const char *conn_id;              /* the connection: "slot.generation" */
  const char *type;                 /* envelope "type" ("" on raw paths) */
  const char *data;                 /* envelope "data" as JSON text ("null" if absent); raw paths: the frame */
  size_t data_len;                  /* data is NUL-terminated as well */
  const char *id;                   /* envelope "id"; "" means no reply is expected */
  int binary;                       /* raw paths: the frame was binary */
  linkd_user user;
} linkd_message;

/* A connection opened (CONNECTED), closed (DISCONNECTED), reported after a
 * (re-)registration (EXISTING), or, on a path with recovery, a client that
 * came back within the window on a new connection and took over its dropped
 * one (RESUMED: id is the new connection, previous_id the dropped one,
 * already reported DISCONNECTED; rooms are the rooms it got back). */
typedef enum linkd_conn_event {
  LINKD_CONNECTED = 0, LINKD_DISCONNECTED = 1, LINKD_EXISTING = 2, LINKD_RESUMED = 3
} linkd_conn_event;
typedef struct linkd_conn {
  linkd_conn_event event;
  const char *id;
  const char *path;
  const char *remote_address;
  linkd_user user;
  const char *const *rooms;         /* EXISTING: its rooms; DISCONNECTED: the rooms it was in */
  size_t rooms_count;
  uint64_t connected_at_ms;         /* Unix time */
  unsigned close_code;              /* DISCONNECTED: the close code, when known */
  const char *previous_id;          /* RESUMED: the dropped connection it took over, else "" */
} linkd_conn;

/* The outcome of a command (linkd's CommandResult), or a local failure:
 * SERVICE_UNAVAILABLE when the link went down first, TIMEOUT after
 * command_timeout_ms. */
typedef struct linkd_result {
  int64_t op_id;                    /* what the command returned */
  int ok;
  unsigned delivered;               /* pushes: connections the message was queued to */
  int code;                         /* !ok: HTTP-like status (404, 410, 503, ...) */
  const char *type;                 /* !ok: "NOT_FOUND", "NOT_DELIVERED", ... ("" when ok) */
  const char *message;
} linkd_result;

typedef enum linkd_link_event {
  LINKD_LINK_REGISTERED = 1,        /* linkd accepted the registration (again, after a reconnect) */
  LINKD_LINK_DOWN = 2,              /* the link went away; the library reconnects with backoff */
  LINKD_LINK_REFUSED = 3            /* linkd refused the registration; detail says why */
} linkd_link_event;

enum { LINKD_LOG_DEBUG = 10, LINKD_LOG_INFO = 20, LINKD_LOG_WARN = 30, LINKD_LOG_ERROR = 40, LINKD_LOG_SILENT = 100 };

typedef void (*linkd_http_cb)(linkd_service *s, const linkd_http_request *req, void *arg);
typedef void (*linkd_message_cb)(linkd_service *s, const linkd_message *msg, void *arg);
typedef void (*linkd_conn_cb)(linkd_service *s, const linkd_conn *conn, void *arg);
typedef void (*linkd_result_cb)(linkd_service *s, const linkd_result *res, void *arg);
typedef void (*linkd_link_cb)(linkd_service *s, linkd_link_event ev, const char *detail, void *arg);
/* rooms: ok=0 with rooms_count 0 when the connection is unknown or the query failed */
typedef void (*linkd_rooms_cb)(linkd_service *s, int64_t query_id, int ok, const char *const *rooms,
                               size_t rooms_count, void *arg);
typedef void (*linkd_log_cb)(int level, const char *line, void *arg);

/* ---- the service -------------------------------------------------------- */

typedef struct linkd_config {
  const char *name;                 /* required: 1-63 bytes */
  const char *version;              /* optional */
  const char *namespace_name;       /* optional */
  const char *instance_id;          /* optional: unique per process (linkd makes one) */
  const char *socket_path;          /* NULL: $LINKD_SOCKET, else /run/linkd/linkd.sock as root, else ./run/linkd.sock */
  struct {
    const char *path;               /* NULL or "": no WebSocket path */
    unsigned heartbeat_interval_ms; /* 0: linkd's defaults, for this and the next two */
    unsigned max_connections_per_user;
    unsigned max_message_size_bytes;
    int compression;                /* permessage-deflate wanted */
    int auth_required;              /* upgrade refused (401) without a valid token */
    int raw;                        /* no JSON envelope: frames forwarded as they are */
    unsigned recovery_window_ms;    /* connection recovery: how long a dropped client's rooms are
                                       kept for it (0: no recovery; linkd caps it at 10 min) */
    unsigned recovery_history;      /* room pushes kept per room for the replay (linkd caps it at 1024) */
  } websocket;
  uint32_t max_frame_bytes;         /* largest frame this service reads (0: 4 MiB), declared to
                                       linkd, which never sends more (bigger requests get 413,
                                       bigger messages close 1009); a bigger frame is skipped */
  unsigned reconnect_initial_ms;    /* first reconnect delay (0: 100), doubled up to */
  unsigned reconnect_max_ms;        /* (0: 5000) */
  unsigned command_timeout_ms;      /* on_result/rooms answers expected within (0: 10000) */
  size_t max_output_bytes;          /* queued output cap (0: 8 MiB); over it commands get -ENOBUFS */
  void *arg;                        /* handed to the callbacks below */
  linkd_conn_cb on_connect;         /* CONNECTED */
  linkd_conn_cb on_disconnect;      /* DISCONNECTED (rooms: where it was) */
  linkd_conn_cb on_existing;        /* EXISTING, after a re-registration */
  linkd_conn_cb on_resume;          /* RESUMED (paths with recovery) */
  linkd_message_cb on_message;      /* messages whose type has no linkd_ws_on() handler (all, on raw paths) */
  linkd_result_cb on_result;        /* command outcomes; NULL: failures are logged at warn */
  linkd_link_cb on_link;            /* registered / down / refused */
  linkd_log_cb log;                 /* NULL: one line per event to stderr */
  int log_level;                    /* 0: $LINKD_SDK_LOG (debug|info|warn|error|silent), else info */
} linkd_config;

/* A service, not connected yet. NULL (and a log line) on a bad config. */
linkd_service *linkd_service_new(const linkd_config *cfg);
/* Closes the link and frees everything. Not from inside a callback. */
void linkd_service_free(linkd_service *s);

/* HTTP routes and WebSocket handlers: register before starting (later
 * routes reach linkd at the next reconnect). Lists are NULL-terminated. */
typedef struct linkd_route_opts {
  int auth;                         /* valid token required: 401 (linkd checks it) */
  const char *const *roles;         /* one of these roles required: 403 */
  const char *const *cors;          /* allowed Origins for this route */
} linkd_route_opts;
/* method: "GET", "POST", ... or "*" (NULL: GET); path: "/users/:id" */
int linkd_route(linkd_service *s, const char *method, const char *path, const linkd_route_opts *opts,
                linkd_http_cb cb, void *arg);

typedef struct linkd_handler_opts {
  int auth;                         /* authenticated connection required: UNAUTHORIZED */
  const char *const *roles;         /* one of these roles required: FORBIDDEN */
} linkd_handler_opts;
/* A handler for one message type. A message whose type has no handler goes
 * to cfg.on_message, else gets the error reply NOT_FOUND. */
int linkd_ws_on(linkd_service *s, const char *type, const linkd_handler_opts *opts, linkd_message_cb cb,
                void *arg);

/* ---- driving it ------------------------------------------------------------
 * Either linkd_run(), which blocks until linkd_stop(), or linkd_fd() +
 * linkd_process() inside your own loop. */

/* Blocks: connects, registers, dispatches, reconnects. Returns 0 after
 * linkd_stop(), -EPERM when linkd refused the first registration, or another
 * negative errno on a local failure. */
int linkd_run(linkd_service *s);
/* Starts connecting (non-blocking). linkd_run() calls it. */
int linkd_start(linkd_service *s);
/* One descriptor for the whole service, stable from linkd_service_new() to
 * linkd_service_free(): poll it for reading (POLLIN / EPOLLIN / UV_READABLE)
 * and call linkd_process() when it is readable. Socket, reconnect timer and
 * command timeouts are all behind it. */
int linkd_fd(const linkd_service *s);
/* Does whatever is ready, never blocks. Returns 0 while the service runs,
 * 1 once it stopped after linkd_stop(), -EPERM when linkd refused the first
 * registration. */
int linkd_process(linkd_service *s);
/* Asks the service to stop: the link is closed at the next linkd_process()
 * and linkd_run() returns 0. Async-signal-safe. */
void linkd_stop(linkd_service *s);
/* 1 while registered with linkd. */
int linkd_registered(const linkd_service *s);
/* linkd's version from the registration answer ("" before). */
const char *linkd_linkd_version(const linkd_service *s);
/* Counters (since linkd_service_new). */
typedef struct linkd_stats {
  uint64_t frames_in, frames_out, bytes_in, bytes_out;
  uint64_t frames_skipped;          /* undecodable or over max_frame_bytes */
  uint64_t reconnects;              /* registrations after the first */
  size_t output_queued;             /* bytes waiting to be written */
} linkd_stats;
void linkd_get_stats(const linkd_service *s, linkd_stats *out);

/* ---- answers ------------------------------------------------------------
 * A handler answers before it returns, or calls linkd_defer()/linkd_http_defer()
 * and answers later with the *_to / linkd_respond_id forms. A message with an
 * id that got no answer is answered with data null when its handler returns;
 * a request with no answer gets 200 and the JSON body null (as a TypeScript
 * handler returning undefined). */

/* json: JSON text (NULL: null). Raw paths: any text. */
int linkd_reply(linkd_service *s, const linkd_message *msg, const char *json);
int linkd_reply_error(linkd_service *s, const linkd_message *msg, int code, const char *type, const char *message);
void linkd_defer(linkd_service *s, const linkd_message *msg);
int linkd_reply_to(linkd_service *s, const char *conn_id, const char *msg_id, const char *json);
int linkd_reply_error_to(linkd_service *s, const char *conn_id, const char *msg_id, int code, const char *type,
                         const char *message);

/* content_type NULL: no Content-Type header. */
int linkd_respond(linkd_service *s, const linkd_http_request *req, unsigned status, const char *content_type,
                  const void *body, size_t len);
/* application/json */
int linkd_respond_json(linkd_service *s, const linkd_http_request *req, unsigned status, const char *json);
/* {"error":{"type":...,"message":...}} with status */
int linkd_respond_error(linkd_service *s, const linkd_http_request *req, unsigned status, const char *type,
                        const char *message);
void linkd_http_defer(linkd_service *s, const linkd_http_request *req);
int linkd_respond_id(linkd_service *s, uint64_t request_id, unsigned status, const linkd_pair *headers,
                     size_t headers_count, const void *body, size_t len);

/* ---- commands -------------------------------------------------------------
 * Each returns a positive op id (its outcome goes to cfg.on_result) or a
 * negative errno. except: NULL-terminated connection ids left out. */

/* {"type":event,"data":json} to one connection, a room, or every connection on the path */
int64_t linkd_send(linkd_service *s, const char *conn_id, const char *event, const char *json);
int64_t linkd_to_room(linkd_service *s, const char *room, const char *event, const char *json,
                      const char *const *except);
int64_t linkd_to_all(linkd_service *s, const char *event, const char *json, const char *const *except);
/* raw paths: the frame as it is */
int64_t linkd_send_raw(linkd_service *s, const char *conn_id, const void *data, size_t len, int binary);
int64_t linkd_to_room_raw(linkd_service *s, const char *room, const void *data, size_t len, int binary,
                          const char *const *except);
int64_t linkd_join(linkd_service *s, const char *conn_id, const char *room);
int64_t linkd_leave(linkd_service *s, const char *conn_id, const char *room);
/* code 0: 1000 */
int64_t linkd_disconnect(linkd_service *s, const char *conn_id, unsigned code, const char *reason);
/* Asks linkd which rooms a connection is in; cb gets the answer. */
int64_t linkd_rooms(linkd_service *s, const char *conn_id, linkd_rooms_cb cb, void *arg);

/* ---- small helpers ---------------------------------------------------------- */

/* 1 if the user has this role */
int linkd_user_has_role(const linkd_user *u, const char *role);
/* A route param or a header (name compared case-insensitively), or NULL. */
const char *linkd_http_param(const linkd_http_request *req, const char *name);
const char *linkd_http_header(const linkd_http_request *req, const char *name);
/* A query parameter, percent-decoded ('+' is a space) into out (NUL-terminated).
 * Returns its length, or -1 if absent or longer than cap-1. */
int linkd_query_get(const char *query, const char *name, char *out, size_t cap);
/* A JSON string, quoted and escaped, into out (like snprintf: returns the
 * length it needs, writes at most cap-1 bytes and a NUL). */
size_t linkd_json_quote(char *out, size_t cap, const char *s);
/* The value of a top-level member of a JSON object: 0 on success, -1 when
 * absent, not of that type, or (strings) longer than cap-1 bytes. */
int linkd_json_number(const char *json, size_t len, const char *key, double *out);
int linkd_json_string(const char *json, size_t len, const char *key, char *out, size_t cap);
int linkd_json_bool(const char *json, size_t len, const char *key, int *out);

#ifdef __cplusplus
}
#endif
#endif /* LINKD_SERVICE_H */
