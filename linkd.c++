// linkd — a small gateway daemon for edge Linux devices.
//
// Clients speak HTTP/1.1 and WebSocket on a TCP port; backend services speak
// varint-delimited protobuf (proto/linkd.proto) on a Unix socket. Linkd routes
// HTTP requests and WebSocket messages to services and carries out what the
// services ask: replies, pushes to one connection, to a room or to everyone,
// room joins and leaves, closes.
//
// One libuv loop, llhttp for HTTP, wslay for WebSocket framing, nanopb for
// service frames, fixed-capacity tables allocated at start-up.
//
// CONTENTS
//   1. Config      settings: flags, LINKD_* environment, config file
//   2. Utilities   logging, byte buffers, shared frames, JSON escaping
//   3. Types       the tables' records and the single global state `g`
//   4. Tables      connection slots, rooms, memberships, tallies, pending replies
//   5. Output      writing to clients: shared frames, backpressure, deflate
//   6. TLS         mbedTLS on the loop, record buffers pooled while idle
//   7. Routes      the HTTP route table (method + pattern, static beats :param)
//   8. Auth        JWT verification (HS256, RS256, ES256, JWKS), claims
//   9. Services    the Unix-socket link: frames, registration, dispatch
//  10. HTTP        llhttp parsing, forwarding, local endpoints, CORS
//  11. Recovery    room histories, dropped connections kept, resume tokens
//  12. WebSocket   upgrade, wslay contexts bound on demand, envelopes
//  13. Pushes      to a connection, a room or everyone (encoded once, shared)
//  14. Cluster     rooms, pushes and connection sends across nodes over NATS
//  15. Admin       the console: embedded page, JSON API, rate samples, actions
//  16. Lifecycle   timers, heartbeats, watchdog, reload, shutdown, metrics, accept, listen
//  17. Self-test   unit tests of the tables, routes, JSON and JWT checks
//  18. main

#include <uv.h>
#ifdef LINKD_CLUSTER
#include <dlfcn.h>
#include <nats/nats.h>   // declarations only: libnats is loaded with --nats-url (cluster_load)
#endif
#include <llhttp.h>
#include <wslay/wslay.h>
#include <pb_encode.h>
#include <pb_decode.h>
#include <zlib.h>
#include "linkd.pb.h"
#include <mbedtls/sha1.h>
#include <mbedtls/base64.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/md.h>
#include <mbedtls/pk.h>
#include <mbedtls/rsa.h>
#include <mbedtls/sha256.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/oid.h>
#include <mbedtls/platform.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_internal.h>
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/x509_crt.h>
#define JSMN_STATIC
#define JSMN_STRICT
#include <jsmn.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <csetjmp>
#include <csignal>
#include <cctype>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string_view>
#include <fcntl.h>
#include <malloc.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef LINKD_VERSION
#define LINKD_VERSION "dev"
#endif

namespace {

// ============================================================================
// 1. Config
// Every setting has one name in three spellings: flag --max-connections, env
// LINKD_MAX_CONNECTIONS, file key max_connections. Precedence: flag > env >
// file > default. A bad value is reported with the setting's name (and
// file:line) and the process exits 2 before anything listens.
// ============================================================================

enum class Kind : uint8_t { Int, Size, Duration, Str, Level, Policy };

constexpr uint32_t FRAME_META = 16 * 1024;   // room in a service frame around a WebSocket message: ids, user context

// service_allow lines of the config file: which local users may register
// which service names (checked against the peer's SO_PEERCRED).
struct Allow {
  char pattern[64];       // exact name, or "prefix*"
  bool by_gid;            // id is a gid (else a uid)
  uint32_t id;
};
constexpr int MAX_ALLOW = 64;

struct Config {
  char listen[128] = "0.0.0.0:3000";
  char socket_path[256] = "";          // default depends on uid, see config_finish
  char socket_mode[8] = "0660";
  char config[256] = "";
  char allowed_origins[1024] = "";     // comma list; empty: no CORS, any Origin may upgrade
  char jwt_secret[256] = "";
  char jwt_keys[256] = "";
  char tls_listen[128] = "";           // empty: no TLS listener
  char tls_cert[256] = "";
  char tls_key[256] = "";
  char tls_client_ca[256] = "";        // set: client certificates required and verified
  char admin_listen[128] = "";         // empty: no admin console
  char admin_role[64] = "admin";       // the JWT role the console requires
  char nats_url[1024] = "";            // comma list of NATS servers; empty: no cluster
  char node_id[64] = "";               // this node's name in the cluster (default: the host name)
  char nats_creds[256] = "";
  char nats_tls_ca[256] = "";
  int64_t log_level = 2;               // 0 error, 1 warn, 2 info, 3 debug
  int64_t max_connections = 10000;     // WebSocket connections
  int64_t max_http_connections = 1024; // plain HTTP connections
  int64_t max_http_connections_per_ip = 256; // plain HTTP connections per remote address (0: no cap)
  int64_t max_rooms = 10000;
  int64_t max_memberships = 100000;
  int64_t max_services = 64;           // service links (instances)
  int64_t max_message_size = 64 * 1024;
  int64_t max_header_size = 16 * 1024;
  int64_t max_body_size = 1024 * 1024;
  int64_t max_frame_size = 0;          // 0: 4 MiB, or more to carry the largest body/message (config_parse)
  int64_t http_timeout = 30000;        // ms
  int64_t handler_timeout = 10000;     // ms
  int64_t heartbeat_interval = 30000;  // ms
  int64_t max_connections_per_user = 5;
  int64_t max_connections_per_ip = 0;  // 0: no cap
  int64_t rate_limit = 100;            // messages per second per connection
  int64_t rate_burst = 200;
  int64_t max_outbound = 1024 * 1024;  // queued bytes per connection
  int64_t outbound_policy = 0;         // 0 close (1008), 1 drop
  int64_t shutdown_timeout = 10000;    // ms
  int64_t register_timeout = 10000;    // ms: a service link must register within this
  int64_t history_memory = 16 << 20;   // bytes of room pushes kept for recovery, all rooms together
  Allow allow[MAX_ALLOW];              // service_allow entries (config file only)
  int nallow = 0;                      // 0: any process that can open the socket may register any name
};
Config cfg;

struct Setting {
  const char* name;   // flag spelling without the dashes
  Kind kind;
  void* field;
  int64_t min, max;   // for numbers; for strings max is the buffer size
  const char* help;
};

#define SETTING_STR(n, f, h) {n, Kind::Str, cfg.f, 0, sizeof cfg.f, h}
const Setting settings[] = {
  SETTING_STR("listen", listen, "client address host:port"),
  SETTING_STR("socket", socket_path, "service socket path"),
  SETTING_STR("socket-mode", socket_mode, "service socket permissions (octal)"),
  SETTING_STR("config", config, "config file (key = value lines)"),
  {"log-level", Kind::Level, &cfg.log_level, 0, 3, "error, warn, info or debug"},
  {"max-connections", Kind::Int, &cfg.max_connections, 1, 1000000, "WebSocket connection table size"},
  {"max-http-connections", Kind::Int, &cfg.max_http_connections, 1, 100000, "concurrent plain HTTP connections"},
  {"max-http-connections-per-ip", Kind::Int, &cfg.max_http_connections_per_ip, 0, 100000, "plain HTTP connections per remote address (0: no cap)"},
  {"max-rooms", Kind::Int, &cfg.max_rooms, 1, 10000000, "room table size"},
  {"max-memberships", Kind::Int, &cfg.max_memberships, 1, 100000000, "membership table size"},
  {"max-services", Kind::Int, &cfg.max_services, 1, 4096, "service links (instances)"},
  {"max-message-size", Kind::Size, &cfg.max_message_size, 16, 64 << 20, "largest WebSocket message"},
  {"max-header-size", Kind::Size, &cfg.max_header_size, 256, 1 << 20, "request line + headers (431 beyond)"},
  {"max-body-size", Kind::Size, &cfg.max_body_size, 0, 64 << 20, "request body (413 beyond)"},
  {"max-frame-size", Kind::Size, &cfg.max_frame_size, 1024, 256 << 20, "largest service frame, both ways (default: 4m, or 64k more than max-body-size/max-message-size)"},
  {"http-timeout", Kind::Duration, &cfg.http_timeout, 1, 3600000, "service answer to an HTTP request (504 beyond)"},
  {"handler-timeout", Kind::Duration, &cfg.handler_timeout, 1, 3600000, "service reply to a WebSocket message with id"},
  {"heartbeat-interval", Kind::Duration, &cfg.heartbeat_interval, 100, 3600000, "WebSocket ping interval (closed after 2 missed)"},
  {"max-connections-per-user", Kind::Int, &cfg.max_connections_per_user, 0, 1000000, "WebSocket connections per user id (0: no cap)"},
  {"max-connections-per-ip", Kind::Int, &cfg.max_connections_per_ip, 0, 1000000, "WebSocket connections per remote address (0: no cap)"},
  {"rate-limit", Kind::Int, &cfg.rate_limit, 0, 1000000, "messages per second per connection (0: no limit)"},
  {"rate-burst", Kind::Int, &cfg.rate_burst, 1, 1000000, "token bucket size"},
  {"max-outbound", Kind::Size, &cfg.max_outbound, 1024, 1 << 30, "queued bytes per connection before the policy applies"},
  {"outbound-policy", Kind::Policy, &cfg.outbound_policy, 0, 1, "close (1008) or drop"},
  SETTING_STR("allowed-origins", allowed_origins, "comma-separated allowed Origins (CORS, upgrades)"),
  SETTING_STR("jwt-secret", jwt_secret, "HS256 secret"),
  SETTING_STR("jwt-keys", jwt_keys, "PEM/JWKS file of RS256/ES256 public keys"),
  SETTING_STR("tls-listen", tls_listen, "TLS client address host:port (https://, wss://); empty: off"),
  SETTING_STR("tls-cert", tls_cert, "PEM certificate (chain) for --tls-listen"),
  SETTING_STR("tls-key", tls_key, "PEM private key of --tls-cert (must not be readable by others)"),
  SETTING_STR("tls-client-ca", tls_client_ca, "PEM CA certificate(s): require and verify client certificates"),
  SETTING_STR("admin-listen", admin_listen, "admin console address host:port (loopback only without JWT); empty: off"),
  SETTING_STR("admin-role", admin_role, "JWT role the admin console requires"),
#ifdef LINKD_CLUSTER
#define CLUSTER_HELP "cluster: "
#else
#define CLUSTER_HELP "cluster (not in this build): "
#endif
  SETTING_STR("nats-url", nats_url, CLUSTER_HELP "NATS servers (comma list, nats://host:4222); empty: this node alone"),
  SETTING_STR("node-id", node_id, CLUSTER_HELP "this node's name ([A-Za-z0-9_-], at most 48); default: the host name"),
  SETTING_STR("nats-creds", nats_creds, CLUSTER_HELP "NATS credentials file (JWT + nkey seed)"),
  SETTING_STR("nats-tls-ca", nats_tls_ca, CLUSTER_HELP "CA for a TLS connection to NATS"),
  {"shutdown-timeout", Kind::Duration, &cfg.shutdown_timeout, 0, 3600000, "time to finish in-flight work on SIGTERM"},
  {"register-timeout", Kind::Duration, &cfg.register_timeout, 100, 3600000, "a service link that has not registered by then is closed"},
  {"history-memory", Kind::Size, &cfg.history_memory, 0, 1 << 30, "room pushes kept for connection recovery, all rooms together"},
};
#undef SETTING_STR

constexpr size_t NSETTINGS = sizeof settings / sizeof settings[0];
char setting_from[NSETTINGS][80];   // where a value came from ("flag --x", "LINKD_X", "file:line"); empty: default

const Setting* setting_find(const char* name, size_t n) {
  for (const Setting& s : settings) {
    // file and env spellings use '_' where the flag has '-'
    size_t i = 0;
    for (; i < n && s.name[i]; i++) {
      char a = name[i] == '_' ? '-' : (char)(name[i] | 0x20);
      if (a != s.name[i]) break;
    }
    if (i == n && s.name[i] == 0) return &s;
  }
  return nullptr;
}

// Parses a number with an optional unit suffix. Durations: ms, s, m (bare =
// ms). Sizes: k, m, g (KiB...; bare = bytes). Returns false on junk.
bool parse_number(const char* v, Kind kind, int64_t* out) {
  char* end;
  errno = 0;
  long long n = strtoll(v, &end, 10);
  if (end == v || errno || n < 0) return false;
  int64_t mul = 1;
  if (kind == Kind::Duration) {
    if (!strcmp(end, "ms") || !*end) mul = 1;
    else if (!strcmp(end, "s")) mul = 1000;
    else if (!strcmp(end, "m")) mul = 60000;
    else return false;
  } else if (kind == Kind::Size) {
    if (!*end) mul = 1;
    else if (!strcasecmp(end, "k") || !strcasecmp(end, "kb")) mul = 1024;
    else if (!strcasecmp(end, "m") || !strcasecmp(end, "mb")) mul = 1024 * 1024;
    else if (!strcasecmp(end, "g") || !strcasecmp(end, "gb")) mul = 1024 * 1024 * 1024;
    else return false;
  } else if (*end) {
    return false;
  }
  if (n > INT64_MAX / mul) return false;
  *out = n * mul;
  return true;
}

// Sets one setting from text; on error writes a message into err.
bool setting_apply(const Setting* s, const char* v, char* err, size_t errn) {
  if (s->kind == Kind::Str) {
    if (strlen(v) >= (size_t)s->max) {
      snprintf(err, errn, "%s: value too long (max %" PRId64 " bytes)", s->name, s->max - 1);
      return false;
    }
    snprintf((char*)s->field, (size_t)s->max, "%s", v);
    return true;
  }
  int64_t n;
  if (s->kind == Kind::Level) {
    static const char* levels[] = {"error", "warn", "info", "debug"};
    for (n = 0; n < 4; n++) if (!strcmp(v, levels[n])) break;
    if (n == 4) { snprintf(err, errn, "%s: '%s' is not one of error, warn, info, debug", s->name, v); return false; }
  } else if (s->kind == Kind::Policy) {
    if (!strcmp(v, "close")) n = 0;
    else if (!strcmp(v, "drop")) n = 1;
    else { snprintf(err, errn, "%s: '%s' is not close or drop", s->name, v); return false; }
  } else if (!parse_number(v, s->kind, &n)) {
    snprintf(err, errn, "%s: '%s' is not a valid %s", s->name, v,
             s->kind == Kind::Duration ? "duration (e.g. 500ms, 30s, 2m)" :
             s->kind == Kind::Size ? "size (e.g. 4096, 64k, 1m)" : "whole number");
    return false;
  } else if (n < s->min || n > s->max) {
    snprintf(err, errn, "%s: %s is out of range (%" PRId64 "..%" PRId64 ")", s->name, v, s->min, s->max);
    return false;
  }
  *(int64_t*)s->field = n;
  return true;
}

// A reload (SIGHUP) parses the settings again without exiting on a bad
// value: config_die then keeps the message and jumps back to config_reparse.
jmp_buf* config_trap;
char config_trap_why[512];
FILE* config_file;      // open while config_load_file reads it (closed after a jump)

[[noreturn]] void config_die(const char* msg) {
  if (config_trap) {
    snprintf(config_trap_why, sizeof config_trap_why, "%s", msg);
    longjmp(*config_trap, 1);
  }
  fprintf(stderr, "linkd: bad configuration: %s\n", msg);
  exit(2);
}

// A user or group id by number or by name, from /etc/passwd or /etc/group
// (read directly: a static binary has no NSS). -1 if unknown.
int64_t id_lookup(const char* v, bool group) {
  char* end;
  long n = strtol(v, &end, 10);
  if (*v && !*end && n >= 0 && n <= 0x7fffffff) return n;
  FILE* f = fopen(group ? "/etc/group" : "/etc/passwd", "r");
  if (!f) return -1;
  char line[1024];
  int64_t id = -1;
  size_t vn = strlen(v);
  while (id < 0 && fgets(line, sizeof line, f)) {
    char* c1 = strchr(line, ':');
    char* c2 = c1 ? strchr(c1 + 1, ':') : nullptr;   // name:password:id:...
    if (c2 && (size_t)(c1 - line) == vn && !memcmp(line, v, vn)) id = strtol(c2 + 1, nullptr, 10);
  }
  fclose(f);
  return id;
}

// service_allow = <name or prefix*> <who>[,<who>...] where who is uid:N,
// gid:N, user:NAME or group:NAME. Repeatable; one entry per who.
bool allow_parse(char* v, char* err, size_t errn) {
  char* sp = v + strcspn(v, " \t");
  if (!*sp) { snprintf(err, errn, "service_allow: expected '<name or prefix*> <uid:N|gid:N|user:NAME|group:NAME>[,...]'"); return false; }
  *sp++ = 0;
  size_t pn = strlen(v);
  char* star = strchr(v, '*');
  if (!pn || pn >= sizeof cfg.allow[0].pattern || (star && star != v + pn - 1)) {
    snprintf(err, errn, "service_allow: '%s' is not a service name or prefix* (1-63 bytes)", v);
    return false;
  }
  for (char* who = strtok(sp, ", \t"); who; who = strtok(nullptr, ", \t")) {
    char* colon = strchr(who, ':');
    bool gid = colon && (!strncmp(who, "gid:", 4) || !strncmp(who, "group:", 6));
    bool uid = colon && (!strncmp(who, "uid:", 4) || !strncmp(who, "user:", 5));
    int64_t id = colon ? id_lookup(colon + 1, gid) : -1;
    if ((!gid && !uid) || id < 0) { snprintf(err, errn, "service_allow: '%s' is not uid:N, gid:N or a known user:NAME / group:NAME", who); return false; }
    if (cfg.nallow == MAX_ALLOW) { snprintf(err, errn, "service_allow: more than %d entries", MAX_ALLOW); return false; }
    Allow* a = &cfg.allow[cfg.nallow++];
    snprintf(a->pattern, sizeof a->pattern, "%s", v);
    a->by_gid = gid;
    a->id = (uint32_t)id;
  }
  return true;
}

// key = value lines; '#' starts a comment. Unknown keys are refused.
void config_load_file(const char* path) {
  FILE* f = config_file = fopen(path, "r");
  char err[512];
  if (!f) {
    snprintf(err, sizeof err, "config: cannot open %s: %s", path, strerror(errno));
    config_die(err);
  }
  char line[2048];
  int lineno = 0;
  while (fgets(line, sizeof line, f)) {
    lineno++;
    char* p = line;
    if (char* hash = strchr(p, '#')) *hash = 0;
    while (*p == ' ' || *p == '\t') p++;
    size_t n = strlen(p);
    while (n && (p[n - 1] == '\n' || p[n - 1] == '\r' || p[n - 1] == ' ' || p[n - 1] == '\t')) p[--n] = 0;
    if (!n) continue;
    char* eq = strchr(p, '=');
    if (!eq) { snprintf(err, sizeof err, "%s:%d: expected 'key = value'", path, lineno); config_die(err); }
    char* k_end = eq;
    while (k_end > p && (k_end[-1] == ' ' || k_end[-1] == '\t')) k_end--;
    char* v = eq + 1;
    while (*v == ' ' || *v == '\t') v++;
    size_t vn = strlen(v);
    if (vn >= 2 && v[0] == '"' && v[vn - 1] == '"') { v[vn - 1] = 0; v++; }
    char e2[400];
    if ((size_t)(k_end - p) == 13 && !memcmp(p, "service_allow", 13)) {
      if (!allow_parse(v, e2, sizeof e2)) { snprintf(err, sizeof err, "%s:%d: %s", path, lineno, e2); config_die(err); }
      continue;
    }
    const Setting* s = setting_find(p, (size_t)(k_end - p));
    if (!s || !strcmp(s->name, "config")) {
      snprintf(err, sizeof err, "%s:%d: unknown setting '%.*s'", path, lineno, (int)(k_end - p), p);
      config_die(err);
    }
    snprintf(setting_from[s - settings], sizeof setting_from[0], "%.60s:%d", path, lineno);
    if (!setting_apply(s, v, e2, sizeof e2)) {
      snprintf(err, sizeof err, "%s:%d: %s", path, lineno, e2);
      config_die(err);
    }
  }
  fclose(f);
  config_file = nullptr;
}

// A setting's current value as it would be written (64k, 30s, info, ...).
void setting_format(const Setting& s, char* out, size_t n) {
  int64_t v = s.kind == Kind::Str ? 0 : *(const int64_t*)s.field;
  switch (s.kind) {
    case Kind::Str: snprintf(out, n, "%s", *(const char*)s.field ? (const char*)s.field : "(none)"); break;
    case Kind::Level: snprintf(out, n, "%s", (const char*[]){"error", "warn", "info", "debug"}[v]); break;
    case Kind::Policy: snprintf(out, n, "%s", v ? "drop" : "close"); break;
    case Kind::Size:
      if (v && v % (1 << 20) == 0) snprintf(out, n, "%" PRId64 "m", v >> 20);
      else if (v && v % 1024 == 0) snprintf(out, n, "%" PRId64 "k", v >> 10);
      else snprintf(out, n, "%" PRId64, v);
      break;
    case Kind::Duration:
      if (v && v % 60000 == 0) snprintf(out, n, "%" PRId64 "m", v / 60000);
      else if (v && v % 1000 == 0) snprintf(out, n, "%" PRId64 "s", v / 1000);
      else snprintf(out, n, "%" PRId64 "ms", v);
      break;
    case Kind::Int: snprintf(out, n, "%" PRId64, v); break;
  }
}

void config_usage() {
  printf("linkd %s — HTTP/WebSocket gateway for backend services on a Unix socket\n\n"
         "usage: linkd [--setting value]... [--check-config] [--self-test] [--help]\n\n"
         "Each setting is also LINKD_<NAME> in the environment and name = value in the\n"
         "config file (dashes as underscores). Precedence: flag > env > file > default.\n"
         "Sizes take k/m/g suffixes (KiB...), durations ms/s/m.\n\n",
         LINKD_VERSION);
  for (const Setting& s : settings) {
    char def[300];
    setting_format(s, def, sizeof def);
    if (s.field == cfg.socket_path) snprintf(def, sizeof def, "/run/linkd/linkd.sock as root, else ./run/linkd.sock");
    if (s.field == &cfg.max_frame_size) snprintf(def, sizeof def, "auto");
    printf("  --%-28s %s\n  %-30s (default: %s)\n", s.name, s.help, "", def);
  }
  printf("  --%-28s %s\n  --%-28s %s\n  --%-28s %s\n  --%-28s %s\n", "check-config", "validate the settings and exit",
         "self-test", "run the unit tests and exit", "version", "print the version and exit", "help", "this text");
}

struct CliMode { bool check = false, self_test = false; };

// "'<value>' (from <source>)" for messages about a setting's value.
const char* setting_origin(const void* field, char* out, size_t n) {
  for (size_t i = 0; i < NSETTINGS; i++) {
    if (settings[i].field != field) continue;
    char v[300];
    setting_format(settings[i], v, sizeof v);
    snprintf(out, n, "'%s' (%s%s)", v, *setting_from[i] ? "from " : "", *setting_from[i] ? setting_from[i] : "default");
    return out;
  }
  return "";
}

[[noreturn]] __attribute__((format(printf, 1, 2)))
void config_dief(const char* fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  config_die(msg);
}

// host:port with a numeric port, or [v6]:port.
void config_check_listen(const char* field, const char* name) {
  const char* v = (const char*)field;
  char where[400];
  setting_origin(field, where, sizeof where);
  const char* colon = strrchr(v, ':');
  if (!colon || colon == v || !colon[1])
    config_dief("%s: %s is not host:port (e.g. 0.0.0.0:3000 for every address, 127.0.0.1:3000 for this machine only)", name, where);
  char* end;
  long port = strtol(colon + 1, &end, 10);
  if (*end || port < 0 || port > 65535) config_dief("%s: %s has a bad port (0-65535)", name, where);
}

// A node id names NATS subjects (linkd.n.<id>) and ends connection ids:
// 1-48 letters, digits, '_' and '-' (also checked on what other nodes send).
constexpr size_t NODE_ID_MAX = 48;
bool node_id_ok(const char* id) {
  size_t n = 0;
  for (; id[n]; n++)
    if (!isalnum((unsigned char)id[n]) && id[n] != '_' && id[n] != '-') return false;
  return n >= 1 && n <= NODE_ID_MAX;
}

CliMode config_parse(int argc, char** argv) {
  const char* flag_val[NSETTINGS] = {};
  CliMode mode;
  char err[512];
  for (int i = 1; i < argc; i++) {
    const char* a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) { config_usage(); exit(0); }
    if (!strcmp(a, "--version")) { printf("linkd %s\n", LINKD_VERSION); exit(0); }
    if (!strcmp(a, "--check-config")) { mode.check = true; continue; }
    if (!strcmp(a, "--self-test")) { mode.self_test = true; continue; }
    if (strncmp(a, "--", 2)) config_dief("unexpected argument '%s' (settings are --name value; see --help)", a);
    const char* name = a + 2;
    const char* eq = strchr(name, '=');
    size_t n = eq ? (size_t)(eq - name) : strlen(name);
    const Setting* s = setting_find(name, n);
    if (!s || memchr(name, '_', n)) config_dief("unknown flag '%s' (see --help)", a);
    const char* v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : nullptr);
    // "--listen --socket x": the next flag is not a value
    if (!eq && v && !strncmp(v, "--", 2) && strlen(v) > 2) config_dief("--%s: missing value (next is the flag %s)", s->name, v);
    if (!v) config_dief("--%s: missing value", s->name);
    flag_val[s - settings] = v;
  }
  const char* env_val[NSETTINGS] = {};
  char env_key[NSETTINGS][64];
  for (size_t i = 0; i < NSETTINGS; i++) {
    char* key = env_key[i];
    size_t k = (size_t)snprintf(key, 64, "LINKD_");
    for (const char* p = settings[i].name; *p && k < 63; p++) key[k++] = *p == '-' ? '_' : (char)(*p & ~0x20);
    key[k] = 0;
    env_val[i] = getenv(key);
  }
  // The config file's path itself follows the same precedence.
  size_t ci = (size_t)(setting_find("config", 6) - settings);
  const char* file = flag_val[ci] ? flag_val[ci] : env_val[ci];
  if (!file && access("/etc/linkd/linkd.conf", R_OK) == 0) file = "/etc/linkd/linkd.conf";
  if (file) {
    snprintf(cfg.config, sizeof cfg.config, "%s", file);
    config_load_file(file);  // flags and env are applied after it, so they win
  }
  for (size_t i = 0; i < NSETTINGS; i++) {
    const char* v = flag_val[i] ? flag_val[i] : env_val[i];
    if (!v || i == ci) continue;
    char e2[400];
    if (flag_val[i]) snprintf(setting_from[i], sizeof setting_from[i], "flag --%s", settings[i].name);
    else snprintf(setting_from[i], sizeof setting_from[i], "environment %s", env_key[i]);
    if (!setting_apply(&settings[i], v, e2, sizeof e2)) {
      snprintf(err, sizeof err, "%s (from %s)", e2, setting_from[i]);
      config_die(err);
    }
  }
  // Cross-setting checks.
  char* end;
  char w1[400], w2[400];
  long mode_bits = strtol(cfg.socket_mode, &end, 8);
  if (*end || end == cfg.socket_mode || mode_bits < 0 || mode_bits > 0777)
    config_dief("socket-mode: %s is not an octal mode like 0660", setting_origin(cfg.socket_mode, w1, sizeof w1));
  if (!*cfg.socket_path) snprintf(cfg.socket_path, sizeof cfg.socket_path, "%s", getuid() == 0 ? "/run/linkd/linkd.sock" : "./run/linkd.sock");
  if (strlen(cfg.socket_path) >= sizeof(((sockaddr_un*)0)->sun_path))
    config_dief("socket: %s is too long for a Unix socket path (%zu bytes at most)", setting_origin(cfg.socket_path, w1, sizeof w1),
                sizeof(((sockaddr_un*)0)->sun_path) - 1);
  config_check_listen(cfg.listen, "listen");
  if (*cfg.nats_url) {
#ifndef LINKD_CLUSTER
    config_dief("nats-url: %s, but this linkd was built without cluster support (see README: Cluster)", setting_origin(cfg.nats_url, w1, sizeof w1));
#endif
    if (!*cfg.node_id) {   // the host name, made a node id: its dots would split NATS subjects
      if (gethostname(cfg.node_id, sizeof cfg.node_id - 1)) snprintf(cfg.node_id, sizeof cfg.node_id, "linkd");
      cfg.node_id[NODE_ID_MAX] = 0;
      for (char* p = cfg.node_id; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-') *p = '_';
      if (!*cfg.node_id) snprintf(cfg.node_id, sizeof cfg.node_id, "linkd");
    }
  }
  if (*cfg.node_id && !node_id_ok(cfg.node_id))
    config_dief("node-id: %s must be 1-48 letters, digits, '_' and '-'", setting_origin(cfg.node_id, w1, sizeof w1));
  if (*cfg.admin_listen) {
    config_check_listen(cfg.admin_listen, "admin-listen");
    // Without a JWT to check, the console must not be reachable from the
    // network: only a loopback address will do.
    const char* h = cfg.admin_listen;
    bool loopback = !strncmp(h, "127.", 4) || !strncmp(h, "[::1]:", 6) || !strncmp(h, "::1:", 4);
    if (!*cfg.jwt_secret && !*cfg.jwt_keys && !loopback)
      config_dief("admin-listen: %s is not a loopback address and no JWT is configured (jwt-secret or jwt-keys): the console would be open to "
                  "anyone who can reach it. Use 127.0.0.1:PORT (and an SSH tunnel), or configure JWT and give the console's users the '%s' role",
                  setting_origin(cfg.admin_listen, w1, sizeof w1), cfg.admin_role);
  }
  if (*cfg.tls_listen) {
    config_check_listen(cfg.tls_listen, "tls-listen");
    if (!*cfg.tls_cert || !*cfg.tls_key) config_dief("tls-listen: %s needs tls-cert and tls-key", setting_origin(cfg.tls_listen, w1, sizeof w1));
  }
  // A service frame carries a whole request body and its headers (64k of
  // room for those), or a WebSocket message and its ids and user context.
  int64_t need = std::max<int64_t>(cfg.max_body_size + 65536, cfg.max_message_size + FRAME_META);
  if (!cfg.max_frame_size) cfg.max_frame_size = std::max<int64_t>(4 << 20, need);
  else if (cfg.max_frame_size < need)
    config_dief("max-frame-size: %s must exceed max-body-size %s by 64k and max-message-size %s by 16k (a frame carries a whole body or message)",
                setting_origin(&cfg.max_frame_size, w1, sizeof w1), setting_origin(&cfg.max_body_size, w2, sizeof w2),
                setting_origin(&cfg.max_message_size, err, sizeof err));
  if (*cfg.jwt_keys && access(cfg.jwt_keys, R_OK))
    config_dief("jwt-keys: %s is not readable: %s", setting_origin(cfg.jwt_keys, w1, sizeof w1), strerror(errno));
  return mode;
}

// Parses flags, environment and file again into cfg (SIGHUP). On a bad
// value cfg is left as it was and why says what was wrong.
bool config_reparse(int argc, char** argv, char* why, size_t n) {
  static Config saved;    // static: not clobbered by the longjmp
  static char saved_from[NSETTINGS][80];
  saved = cfg;
  memcpy(saved_from, setting_from, sizeof saved_from);
  jmp_buf trap;
  if (setjmp(trap)) {
    config_trap = nullptr;
    if (config_file) { fclose(config_file); config_file = nullptr; }
    cfg = saved;
    memcpy(setting_from, saved_from, sizeof saved_from);
    snprintf(why, n, "%s", config_trap_why);
    return false;
  }
  config_trap = &trap;
  cfg = Config{};
  memset(setting_from, 0, sizeof setting_from);
  config_parse(argc, argv);
  config_trap = nullptr;
  return true;
}

// ============================================================================
// 2. Utilities
// Logging (one line per event to stderr, journald priority prefixes when
// started by systemd), growable byte buffers, reference-counted frames that
// many connections write from, JSON string escaping.
// ============================================================================

bool log_journal = false;   // JOURNAL_STREAM set: prefix lines with <N>

#define LOG(level, ...) do { if ((level) <= cfg.log_level) log_line(level, __VA_ARGS__); } while (0)
#define LOG_ERROR(...) LOG(0, __VA_ARGS__)
#define LOG_WARN(...) LOG(1, __VA_ARGS__)
#define LOG_INFO(...) LOG(2, __VA_ARGS__)
#define LOG_DEBUG(...) LOG(3, __VA_ARGS__)

__attribute__((format(printf, 2, 3)))
void log_line(int level, const char* fmt, ...) {
  static const char* names[] = {"error", "warn", "info", "debug"};
  static const int prio[] = {3, 4, 6, 7};
  char line[1024];
  int n = log_journal ? snprintf(line, sizeof line, "<%d>", prio[level])
                      : snprintf(line, sizeof line, "linkd %s: ", names[level]);
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
  va_end(ap);
  size_t len = (size_t)n + (m < 0 ? 0 : std::min((size_t)m, sizeof line - (size_t)n - 2));
  line[len++] = '\n';
  (void)!write(2, line, len);
}

uint64_t now_ms() { return uv_now(uv_default_loop()); }

uint64_t wall_ms() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

// Bytes someone else owns (a view).
struct Slice { const char* p; size_t n; };

// A growable byte buffer. Owner frees with buf_free.
struct Buf {
  char* p = nullptr;
  size_t len = 0, cap = 0;
};

void buf_reserve(Buf* b, size_t extra) {
  if (b->len + extra <= b->cap) return;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + extra) cap *= 2;
  char* p = (char*)realloc(b->p, cap);
  if (!p) { LOG_ERROR("out of memory (%zu bytes)", cap); abort(); }
  b->p = p;
  b->cap = cap;
}
void buf_put(Buf* b, const void* d, size_t n) {
  if (!n) return;   // an empty slice may have a null pointer, which memcpy must not get even for 0 bytes
  buf_reserve(b, n);
  memcpy(b->p + b->len, d, n);
  b->len += n;
}
void buf_puts(Buf* b, const char* s) { buf_put(b, s, strlen(s)); }
__attribute__((format(printf, 2, 3)))
void buf_printf(Buf* b, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(nullptr, 0, fmt, ap);
  va_end(ap);
  buf_reserve(b, (size_t)n + 1);
  va_start(ap, fmt);
  vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}
void buf_consume(Buf* b, size_t n) {
  memmove(b->p, b->p + n, b->len - n);
  b->len -= n;
}
void buf_free(Buf* b) { free(b->p); *b = Buf{}; }

// Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF):
// the length of the character at s[0], or 0 if it is not valid there.
size_t utf8_char(const uint8_t* s, size_t n) {
  uint8_t c = s[0];
  if (c < 0x80) return 1;
  size_t len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 ? 2 : 0;
  if (!len || c > 0xf4 || len > n) return 0;
  for (size_t k = 1; k < len; k++) if ((s[k] & 0xc0) != 0x80) return 0;
  if (c == 0xe0 && s[1] < 0xa0) return 0;               // overlong
  if (c == 0xed && s[1] >= 0xa0) return 0;              // surrogate
  if (c == 0xf0 && s[1] < 0x90) return 0;               // overlong
  if (c == 0xf4 && s[1] >= 0x90) return 0;              // past U+10FFFF
  return len;
}

bool utf8_valid(const uint8_t* s, size_t n) {
  for (size_t i = 0, k; i < n; i += k)
    if (!(k = utf8_char(s + i, n - i))) return false;
  return true;
}

// JSON string body (no quotes) with the escapes RFC 8259 requires. Bytes
// that are not UTF-8 (a service's error text, say) become U+FFFD, so what
// linkd builds is always valid JSON in valid UTF-8.
void buf_json_escape(Buf* b, const char* s, size_t n) {
  buf_reserve(b, n + 2);
  for (size_t i = 0; i < n;) {
    unsigned char ch = (unsigned char)s[i];
    size_t k = utf8_char((const uint8_t*)s + i, n - i);
    if (!k) { buf_puts(b, "\\ufffd"); i++; continue; }
    if (ch == '"' || ch == '\\') { char e[2] = {'\\', (char)ch}; buf_put(b, e, 2); }
    else if (ch < 0x20) buf_printf(b, "\\u%04x", ch);
    else buf_put(b, s + i, k);
    i += k;
  }
}

// A frame written to many connections: built once, freed when the last
// write that uses it completes. Writers hold one reference each.
struct Shared {
  uint32_t refs;
  uint32_t len;
  char data[];
};

Shared* shared_new(size_t len) {
  Shared* s = (Shared*)malloc(sizeof(Shared) + len);
  if (!s) { LOG_ERROR("out of memory"); abort(); }
  s->refs = 1;
  s->len = (uint32_t)len;
  return s;
}
void shared_unref(Shared* s) { if (s && --s->refs == 0) free(s); }

// Fixed-size arrays that cost no resident memory until touched: mmap'ed
// anonymous pages are only backed when first written.
template <class T>
T* table_alloc(size_t n) {
  void* p = mmap(nullptr, sizeof(T) * n + 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) { fprintf(stderr, "linkd: cannot reserve %zu table entries\n", n); exit(1); }
  return (T*)p;
}
template <class T>
void table_release(T* t, size_t n) { if (t) munmap(t, sizeof(T) * n + 1); }

// A close code an endpoint may send (RFC 6455 7.4: 1004-1006 and 1015 are
// never on the wire; 1000-4999 otherwise).
bool close_code_ok(int64_t code) {
  return code >= 1000 && code <= 4999 && code != 1004 && code != 1005 && code != 1006 && code != 1015;
}

uint32_t hash_str(const char* s, size_t n, uint32_t seed = 2166136261u) {
  uint32_t h = seed;
  for (size_t i = 0; i < n; i++) { h ^= (unsigned char)s[i]; h *= 16777619u; }
  return h;
}

int hex_digit(char d) {
  return d >= '0' && d <= '9' ? d - '0' : d >= 'a' && d <= 'f' ? d - 'a' + 10 : d >= 'A' && d <= 'F' ? d - 'A' + 10 : -1;
}

bool str_ieq(const char* a, size_t an, const char* b) {
  size_t bn = strlen(b);
  return an == bn && strncasecmp(a, b, an) == 0;
}

// Skips the JSON value at token i; returns the index after it.
int json_skip(const jsmntok_t* t, int n, int i) {
  int end = t[i].end;
  for (i++; i < n && t[i].start < end; i++) {}
  return i;
}

// One JSON value (RFC 8259) with nothing but white space around it:
// strict numbers, literals and escapes, no raw control characters in
// strings, UTF-8 throughout, nesting at most MAX_JSON_DEPTH (so no
// recursive parser downstream, a service's or a browser's, is handed a
// stack bomb through linkd). No tokens and no recursion: a value of any
// size is checked completely in fixed memory.
constexpr int MAX_JSON_DEPTH = 128;

bool json_valid(const char* s, size_t n) {
  if (!utf8_valid((const uint8_t*)s, n)) return false;
  const char* p = s;
  const char* end = s + n;
  char open[MAX_JSON_DEPTH];   // '{' or '[' for each container we are in
  int depth = 0;
  auto ws = [&] { while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++; };
  auto digits = [&] { const char* q = p; while (p < end && *p >= '0' && *p <= '9') p++; return p > q; };
  auto string = [&] {          // at '"': past the closing quote, or false
    for (p++; p < end; p++) {
      unsigned char ch = (unsigned char)*p;
      if (ch == '"') { p++; return true; }
      if (ch < 0x20) return false;
      if (ch != '\\') continue;
      if (++p == end) return false;
      if (*p == 'u') {
        if (end - p < 5) return false;
        for (int k = 1; k <= 4; k++) if (hex_digit(p[k]) < 0) return false;
        p += 4;
      } else if (!strchr("\"\\/bfnrt", *p) || !*p) {
        return false;
      }
    }
    return false;
  };
  auto key = [&] { ws(); if (p == end || *p != '"' || !string()) return false; ws(); return p < end && *p++ == ':'; };
  for (;;) {
    ws();                       // a value is expected here
    if (p == end) return false;
    if (*p == '{' || *p == '[') {
      if (depth == MAX_JSON_DEPTH) return false;
      char o = *p++;
      open[depth++] = o;
      ws();
      if (p < end && *p == (o == '{' ? '}' : ']')) { p++; depth--; }
      else if (o == '[' || key()) continue;
      else return false;
    } else if (*p == '"') {
      if (!string()) return false;
    } else if (end - p >= 4 && (!memcmp(p, "true", 4) || !memcmp(p, "null", 4))) {
      p += 4;
    } else if (end - p >= 5 && !memcmp(p, "false", 5)) {
      p += 5;
    } else {                    // -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
      if (*p == '-') p++;
      if (p < end && *p == '0') p++;
      else if (p == end || *p < '1' || *p > '9' || !digits()) return false;
      if (p < end && *p == '.' && (++p, !digits())) return false;
      if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (!digits()) return false;
      }
    }
    for (;;) {                  // after a value: ',', a close, or the end
      ws();
      if (!depth) return p == end;
      if (p == end) return false;
      char close = open[depth - 1] == '{' ? '}' : ']';
      if (*p == close) { p++; depth--; continue; }
      if (*p++ != ',') return false;
      if (open[depth - 1] == '{' && !key()) return false;
      break;
    }
  }
}

// True if the comma-separated header value has the token (case-insensitive).
bool header_has_token(const char* v, size_t n, const char* tok) {
  size_t tn = strlen(tok);
  size_t i = 0;
  while (i < n) {
    while (i < n && (v[i] == ' ' || v[i] == ',' || v[i] == '\t')) i++;
    size_t s = i;
    while (i < n && v[i] != ',') i++;
    size_t e = i;
    while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t')) e--;
    if (e - s == tn && !strncasecmp(v + s, tok, tn)) return true;
  }
  return false;
}

// ============================================================================
// 3. Types
// One record type per table. Records refer to each other by 32-bit index
// (NIL = none); a connection is named to services by "slot.generation", and
// the generation is checked on every command so a stale id never reaches a
// newer connection in the same slot. All tables live in `g`.
// ============================================================================

constexpr uint32_t NIL = UINT32_MAX;
constexpr uint32_t MAX_EXCEPT_REMOTE = 64;   // except ids of other nodes passed on with one push
constexpr uint16_t NIL16 = UINT16_MAX;
constexpr int MAX_HEADERS = 100;        // more headers than this: 431
constexpr size_t READ_BUF = 64 * 1024;  // one loop-wide read buffer
constexpr int MAX_REG_ROUTES = 256;    // routes in one registration
constexpr int CTX_POOL = 32;            // idle wslay contexts kept for reuse
constexpr uint64_t WS_CLOSE_GRACE_MS = 3000;  // wait for the peer's close frame
constexpr uint64_t HTTP_IDLE_MS = 60000;      // keep-alive connection idle limit
constexpr uint64_t HTTP_HEAD_MS = 30000;      // whole request must arrive within
constexpr uint64_t HTTP_QUIET_MS = 2000;      // a new connection silent this long counts as idle (eviction)
constexpr uint64_t SERVICE_TELL_MS = 2000;    // at stop, a backed-up service's time to read its notice
constexpr size_t HTTP_OUT_CAP = 256 * 1024;   // unread answers queued before pipelined parsing pauses
constexpr uint64_t LINGER_MS = 2000;          // a finished connection's time to send its FIN
constexpr uint32_t MAX_LINGER = 256;          // lingering connections at most (beyond: closed at once)
constexpr uint32_t CLOSING_SLACK = MAX_LINGER + 64;  // slots for connections lingering or closing

// Linger: done (answered, or the close handshake is over), the write side
// shut down after the last bytes, input read and dropped until the peer's
// FIN or a deadline, so that unread input does not make the kernel reset
// the connection and lose what was sent last (an error answer, a close frame).
// Ghost: a dropped WebSocket connection on a path with recovery, kept
// (its rooms, its user) until its client comes back or the window ends.
enum class CState : uint8_t { Free, Http, Ws, Linger, Closed, Ghost };

struct HdrRef { uint32_t name_off, name_len, val_off, val_len; };  // into Http::head

// Per-connection HTTP state, allocated at accept and freed at upgrade or
// close: a WebSocket connection does not carry it.
struct Http {
  llhttp_t parser;
  Buf in;                 // bytes received and not yet parsed (owner: this)
  Buf head;               // url, then header names and values (owner: this)
  Buf body;               // request body (owner: this)
  HdrRef hdrs[MAX_HEADERS];
  uint16_t nhdrs;
  uint32_t url_len;       // url is head[0, url_len)
  bool in_value;          // llhttp: the last header callback was a value
  bool headers_done;      // past the header block: header callbacks now are chunked trailers
  uint32_t trailer_len;   // bytes of trailers seen (dropped, but counted against --max-header-size)
  bool complete;          // a whole request is parsed, not yet answered
  bool pumping;           // inside http_pump: answers do not re-enter it
  bool eof;               // the client half-closed: answer what is buffered, then close
  bool blocked;           // answers not read by the client pile up: parsing paused
  bool send_continue;     // Expect: 100-continue accepted: write "100 Continue" after this parse
  bool served;            // at least one request answered (an idle connection is then keep-alive)
  uint8_t hscan;          // http_scan_head: 0 before the request line, 1 in a line, 2 line start, 3 CR at line start, 4 head done
  uint32_t scanned;       // bytes of `in` http_scan_head has looked at
  int refuse;             // status decided while parsing (413, 431, 505, 417, ...), else 0 (400)
  const char* bad;        // why a callback refused the request
  const char* refuse_hdrs;// extra headers for that answer (WWW-Authenticate), or null
  uint32_t route;         // route of the current request (CORS), NIL if none
  uint32_t pending;       // Pending entry while a service owes the answer
  uint32_t req_seq;       // high half of that request's id (g.req_seq when sent)
  uint64_t since;         // loop ms: request start or last answer (idle timer)
};

struct Conn {
  uv_tcp_t tcp;           // tcp.data points back here
  uint32_t gen;           // bumped when the slot is freed
  uint32_t next_free;     // free list link
  CState state;
  uint8_t missed;         // heartbeats sent without any frame received since
  bool frame_open;        // wslay: a frame header was seen, its end not yet
  bool msg_open;          // wslay: a fragmented message is in progress
  bool ws_closing;        // close frame queued: ignore further messages
  bool read_paused;       // WebSocket: reading stopped while the output is over --max-outbound
  bool fresh;             // WebSocket: no message yet (linkd.resume is taken only as the first)
  bool ghost;             // recovery: becomes a Ghost when its socket is closed
  bool resumed_away;      // recovery: its client came back on another connection (no ghost)
  bool admin;             // accepted on --admin-listen: only the console's page and API
  bool counted_ws;        // counted in g.ws_count and the tallies
  bool deflate;           // permessage-deflate negotiated (no context takeover either way)
  uint16_t group;         // service (by name) whose WebSocket path this is on
  uint16_t backend;       // instance this connection is bound to, or NIL16
  uint16_t nrooms;        // memberships of this connection
  uint16_t close_code;    // for the DISCONNECTED event
  uint16_t msg_frames;    // frames of the client message in progress (capped: ws_frames_max)
  uint32_t rooms;         // head of this connection's membership list
  uint32_t pend;          // head of this connection's pending replies
  uint32_t except_mark;   // broadcast serial that skips this connection
  uint32_t close_queue;   // bytes still queued at the last close-deadline check
  uint64_t ws_fed;        // bytes handed to wslay
  uint64_t ws_framed;     // bytes of frames whose header wslay has parsed
  wslay_event_context_ptr ws;  // bound only while mid-frame/closing/output queued
  Http* http;             // while HTTP (owner: this)
  struct UserBlob* user;  // verified claims; null: anonymous (owner: this)
  struct Tls* tls;        // a connection on --tls-listen (owner: this), else null
  uint64_t connected_ms;  // wall clock, for services
  uint64_t close_deadline;// loop ms: hard close if the peer does not answer
  double tokens;          // rate limiter bucket
  uint64_t tokens_at;     // loop ms of the last refill
  uint8_t addr[16];       // remote address (IPv4 in the first 4 bytes)
  uint16_t port;          // remote port
  uint8_t family;         // 4 or 6
  uint64_t next_ping;     // loop ms of the next heartbeat ping
};

enum class BState : uint8_t { Free, Open, Ready, Closed };

// One service instance: a link on the Unix socket.
struct Backend {
  uv_pipe_t pipe;         // pipe.data points back here
  uint32_t gen;
  uint32_t next_free;
  BState state;
  uint16_t group;         // NIL16 until registered
  char instance_id[64];
  Buf in;                 // partial frame carried between reads (owner: this)
  const char* close_why;  // set: close once the write queue drains
  Buf out;                // frames not yet written this loop iteration (owner: this)
  bool dirty;             // listed in g.dirty
  uint32_t max_out;       // largest frame the service reads (RegisterService.max_inbound_frame_bytes)
  uint64_t opened;        // loop ms of accept: a link must register within --register-timeout
  uint32_t uid, gid, pid; // the peer process (SO_PEERCRED at accept); uid UINT32_MAX if unknown
};

// A service by name: owns routes and a WebSocket path, and outlives its
// instances so that restarts keep the path and the connections on it.
struct Group {
  bool used;
  char name[64];
  char version[32];
  char ws_path[256];      // empty: no WebSocket
  bool ws_raw;
  bool ws_auth;
  bool ws_compress;       // offer permessage-deflate to clients
  uint32_t ws_heartbeat_ms;  // ping interval the service asked for (0: --heartbeat-interval)
  uint32_t ws_max_msg;    // bytes
  uint32_t ws_max_per_user;  // per-user cap the service asked for (0: --max-connections-per-user)
  uint32_t rec_window_ms; // recovery: a dropped connection's rooms are kept this long (0: no recovery)
  uint16_t rec_history;   // recovery: pushes kept per room for the replay
  uint16_t live;          // instances registered and open
  uint32_t rr;            // round-robin cursor
};

struct Seg { uint16_t off, len; bool param; };
constexpr int MAX_SEGS = 32;

struct Route {
  uint16_t group;
  linkd_HttpRoute def;    // as registered (method, pattern, auth, roles, cors)
  uint8_t nseg;
  Seg seg[MAX_SEGS];      // pattern split at '/'
};

// A room push kept for the replay to a client that comes back (recovery).
struct HistEntry {
  Shared* frame;          // the plain frame every member got (one reference)
  uint64_t serial;        // order among all pushes (the replay merges rooms by it)
};

struct Room {
  uint32_t head, tail;    // first (oldest) and last membership of the room list, NIL if empty
  uint32_t count;
  uint32_t seq;           // recovery: the last push's sequence number in this room
  HistEntry* hist;        // recovery: ring of the last pushes (owner: this), or null
  void* sub;              // cluster: this room's NATS subscription while it has members here
  uint16_t hist_head, hist_count, hist_cap;   // oldest entry, entries, ring size
  uint32_t hash;
  uint32_t next_free;
  uint16_t group;
  uint8_t name_len;
  bool used;
  char name[128];
};

// A connection in a room: on two intrusive lists, the room's and the
// connection's, so broadcast is O(members) and disconnect O(rooms of conn).
struct Member {
  uint32_t room, conn;
  uint32_t join_seq;      // the room's seq when the connection joined (recovery)
  uint32_t rnext, rprev;  // room's list (rnext doubles as free-list link)
  uint32_t cnext, cprev;  // connection's list
};

// How many WebSocket connections share a key: a remote address (per-IP
// cap) or a service + user id (per-user cap). Freed when the count is 0.
struct Tally {
  uint32_t hash;
  uint32_t count;         // 0: free (next_free links the free list)
  uint32_t next_free;
  uint8_t len;
  char key[135];          // 'i' family addr[16] | 'u' group[2] user_id
};

enum class PKind : uint8_t { Free, Http, Ws };

// Cluster: what a question to other nodes is about (section 14).
enum class AskKind : uint8_t { Free, Push, Rooms, Close, Count };

// A reply a service owes. Deadlines are "start + fixed timeout", so one FIFO
// (prev/next) is ordered by deadline and a single timer serves all of them.
struct Pending {
  uint32_t prev, next;    // deadline FIFO; next doubles as free-list link
  uint32_t cnext;         // connection's pending list (WebSocket replies)
  uint32_t slot, gen;     // the connection
  uint16_t backend;       // instance asked
  PKind kind;
  bool id_quoted;         // the client's id was a JSON string
  uint64_t deadline;      // loop ms
  uint16_t id_len;
  char id[128];           // correlation id as the client wrote it
};

// An open-addressing hash index over a table (section 4).
struct Index {
  uint32_t* slot;
  uint32_t mask;          // capacity - 1 (a power of two, >= 2 x entries)
};

struct Global {
  uv_loop_t* loop;
  uv_tcp_t listener;
  uv_tcp_t tls_listener;
  bool tls_listening;
  uv_tcp_t admin_listener;
  bool admin_listening;
  uv_pipe_t svc_listener;
  uv_timer_t tick;        // 1 s housekeeping: heartbeats, idle HTTP, close deadlines
  uv_timer_t pend_timer;  // the head of the pending FIFO
  uv_timer_t watchdog;    // systemd WATCHDOG=1
  uv_check_t flush;       // after each poll: write what services were sent (backend_flush)
  uint16_t* dirty; uint32_t ndirty;  // backends with frames in their out buffer
  uv_signal_t sigterm, sigint, sighup;
  int argc; char** argv;  // kept for a reload (SIGHUP) to parse the flags again
  bool listening, svc_listening;
  bool shutting_down;
  uint64_t shutdown_deadline;
  uint64_t trim_at;       // loop ms of the next tables_trim
  bool services_told;     // SHUTDOWN notices queued; links close as they drain
  uint64_t services_deadline;

  Conn* conns; uint32_t nconns, conn_free, conn_hw;  // hw: slots ever used (lowered by tables_trim)
  uint32_t conn_gen;      // the last generation handed out
  uint32_t ws_count, http_count, linger_count;
  Backend* backends; uint32_t nbackends, backend_free;
  Group* groups; uint32_t ngroups;
  Route* routes; uint32_t nroutes, max_routes;
  Room* rooms; uint32_t nrooms, room_free, room_count, room_hw;
  Index room_index;   // (service, name) -> room
  Index member_index; // (connection, room) -> membership
  Tally* tallies; uint32_t ntallies, tally_free, tally_hw, tally_count;
  Index tally_index;  // key -> tally
  Member* members; uint32_t nmembers, member_free, member_count, member_hw;
  Pending* pend; uint32_t npend, pend_free, pend_head, pend_tail, pend_count, pend_hw;
  jsmntok_t* toks; uint32_t ntoks;
  Route* reg_routes; uint32_t reg_nroutes; bool reg_overflow;  // staging for one registration

  wslay_event_context_ptr ctx_pool[CTX_POOL]; int nctx_pool;
  Conn* cur;              // connection whose wslay callbacks are running
  Conn* recv_conn;        // inside wslay_event_recv for this connection: no nested sends
  wslay_event_context_ptr ctx_doomed;  // freed when wslay_event_recv returns
  z_stream deflater, inflater;   // permessage-deflate, reset per message
  bool deflater_ok, inflater_ok; // initialised on first use
  Buf zbuf;               // inflated message / deflated payload (owner: g)
  Buf pathdec;            // the percent-decoded segments of the last route_match (owner: g)
  Buf wsout;              // control frames wslay writes during one ws_flush (owner: g)
  const char* rd; size_t rdlen;  // bytes wslay may read now
  uint32_t except_serial;
  Slice except_remote[MAX_EXCEPT_REMOTE + 1]; uint32_t nexcept_remote;   // cluster: the except ids of other nodes in the push being handled (null-ended)
  uint32_t req_seq;       // HTTP request ids: slot | seq << 32
  uint64_t epoch;         // recovery: random per process (a restart makes every token stale)
  unsigned char token_key[32];   // recovery: signs the session tokens
  uint64_t history_bytes, push_serial;   // recovery: bytes held by room histories; pushes so far
  uint32_t ghost_count;   // recovery: dropped connections waiting for their clients
  uint64_t resumed, resume_failed;
  char readbuf[READ_BUF];

  // metrics
  uint64_t http_status[600];
  uint64_t http_bytes_in, http_bytes_out;
  uint64_t ws_msgs_in, ws_msgs_out, ws_bytes_in, ws_bytes_out, ws_drops;
  uint64_t ws_accepted, svc_frames_in, svc_frames_out, svc_errors;
  uint64_t reg_refused, reg_refused_identity, reloads, reloads_failed;
};
Global g;

// ============================================================================
// 4. Tables
// Fixed capacity, reserved at start-up with mmap so that untouched entries
// cost no resident memory; free lists make alloc/free O(1); hash indexes
// (rooms, memberships, tallies) make lookups O(1).
// ============================================================================

// --- hash indexes ------------------------------------------------------------
// Open addressing with linear probing and backward-shift deletion (no
// tombstones). A slot holds value + 1, so the zero pages mmap gives are an
// empty index that costs no resident memory until entries land in it.

void index_init(Index* x, uint32_t entries) {
  uint32_t cap = 16;
  while (cap < entries * 2) cap *= 2;
  x->mask = cap - 1;
  x->slot = table_alloc<uint32_t>(cap);
}

void index_release(Index* x) { table_release(x->slot, (size_t)x->mask + 1); }

// First value in h's probe chain for which is(v) holds, or NIL.
template <class Is>
uint32_t index_find(const Index* x, uint32_t h, Is is) {
  for (uint32_t i = h & x->mask; x->slot[i]; i = (i + 1) & x->mask)
    if (is(x->slot[i] - 1)) return x->slot[i] - 1;
  return NIL;
}

void index_insert(Index* x, uint32_t h, uint32_t v) {
  uint32_t i = h & x->mask;
  while (x->slot[i]) i = (i + 1) & x->mask;
  x->slot[i] = v + 1;
}

// hash_of(v) gives the hash each stored value was inserted with.
template <class HashOf>
void index_remove(Index* x, uint32_t h, uint32_t v, HashOf hash_of) {
  uint32_t i = h & x->mask;
  while (x->slot[i] != v + 1) i = (i + 1) & x->mask;
  for (uint32_t j = i;;) {
    j = (j + 1) & x->mask;
    if (!x->slot[j]) break;
    uint32_t home = hash_of(x->slot[j] - 1) & x->mask;
    // move the entry at j into the hole at i unless its home lies in (i, j]
    bool between = i <= j ? (home > i && home <= j) : (home > i || home <= j);
    if (!between) { x->slot[i] = x->slot[j]; i = j; }
  }
  x->slot[i] = 0;
}

void tables_init() {
  // WebSocket slots twice over: the second half holds dropped connections
  // kept for recovery (ghosts), so that a reconnect storm finds room. It is
  // only reserved: untouched slots cost no resident memory.
  g.nconns = (uint32_t)(cfg.max_connections * 2 + cfg.max_http_connections) + CLOSING_SLACK;
  g.conns = table_alloc<Conn>(g.nconns);
  g.conn_free = NIL;
  g.conn_hw = 0;
  g.nbackends = (uint32_t)cfg.max_services;
  g.backends = table_alloc<Backend>(g.nbackends);
  g.backend_free = NIL;
  for (uint32_t i = g.nbackends; i-- > 0;) { g.backends[i].next_free = g.backend_free; g.backend_free = i; }
  g.dirty = table_alloc<uint16_t>(g.nbackends);
  g.ndirty = 0;
  g.ngroups = (uint32_t)cfg.max_services;
  g.groups = table_alloc<Group>(g.ngroups);
  g.max_routes = 1024;
  g.routes = table_alloc<Route>(g.max_routes);
  g.reg_routes = table_alloc<Route>(MAX_REG_ROUTES);
  g.nrooms = (uint32_t)cfg.max_rooms;
  g.rooms = table_alloc<Room>(g.nrooms);
  g.room_free = NIL;
  g.room_count = g.room_hw = 0;
  index_init(&g.room_index, g.nrooms);
  g.nmembers = (uint32_t)cfg.max_memberships;
  g.members = table_alloc<Member>(g.nmembers);
  index_init(&g.member_index, g.nmembers);
  g.ntallies = (uint32_t)cfg.max_connections * 2 + (uint32_t)cfg.max_http_connections;   // WebSocket: address and user; HTTP: address
  g.tallies = table_alloc<Tally>(g.ntallies);
  g.tally_free = NIL;
  g.tally_hw = 0;
  index_init(&g.tally_index, g.ntallies);
  g.member_free = NIL;
  g.member_count = g.member_hw = 0;
  g.npend = (uint32_t)(cfg.max_connections * 4 + cfg.max_http_connections);
  g.pend = table_alloc<Pending>(g.npend);
  g.pend_free = NIL;
  g.pend_head = g.pend_tail = NIL;
  g.pend_count = g.pend_hw = 0;
  g.ntoks = (uint32_t)(cfg.max_message_size / 2 + 8);
  g.toks = table_alloc<jsmntok_t>(g.ntoks);
}

void tables_free() {
  table_release(g.conns, g.nconns);
  table_release(g.backends, g.nbackends);
  table_release(g.dirty, g.nbackends);
  table_release(g.groups, g.ngroups);
  table_release(g.routes, g.max_routes);
  table_release(g.reg_routes, MAX_REG_ROUTES);
  table_release(g.rooms, g.nrooms);
  index_release(&g.room_index);
  index_release(&g.member_index);
  index_release(&g.tally_index);
  table_release(g.tallies, g.ntallies);
  table_release(g.members, g.nmembers);
  table_release(g.pend, g.npend);
  table_release(g.toks, g.ntoks);
  for (int i = 0; i < g.nctx_pool; i++) wslay_event_context_free(g.ctx_pool[i]);
  g.nctx_pool = 0;
  if (g.deflater_ok) deflateEnd(&g.deflater);
  if (g.inflater_ok) inflateEnd(&g.inflater);
  g.deflater_ok = g.inflater_ok = false;
  buf_free(&g.zbuf);
  buf_free(&g.pathdec);
  buf_free(&g.wsout);
}

// --- connection slots ---------------------------------------------------
// Slots are handed out from the free list first, then from the high-water
// mark, so a small load touches only the first pages of the table.

Conn* conn_alloc() {
  uint32_t i;
  if (g.conn_free != NIL) { i = g.conn_free; g.conn_free = g.conns[i].next_free; }
  else if (g.conn_hw < g.nconns) i = g.conn_hw++;
  else return nullptr;
  Conn* c = &g.conns[i];
  memset((void*)c, 0, sizeof *c);
  // One counter for every slot, not one per slot: a slot whose page was
  // given back (tables_trim) reads as generation 0 again, and must still
  // never give a stale id a match.
  if (++g.conn_gen == 0) g.conn_gen = 1;
  c->gen = g.conn_gen;
  c->state = CState::Http;
  c->group = NIL16;
  c->backend = NIL16;
  c->rooms = NIL;
  c->pend = NIL;
  c->tcp.data = c;
  return c;
}

void conn_free_slot(Conn* c) {
  uint32_t i = (uint32_t)(c - g.conns);
  c->state = CState::Free;
  c->gen++;
  c->next_free = g.conn_free;
  g.conn_free = i;
}

uint32_t conn_index(const Conn* c) { return (uint32_t)(c - g.conns); }

// "slot.gen" → live WebSocket connection, or null.
Conn* conn_lookup(const char* id) {
  char* end;
  unsigned long slot = strtoul(id, &end, 10);
  if (end == id || *end != '.') return nullptr;
  const char* gs = end + 1;
  unsigned long gen = strtoul(gs, &end, 10);
  if (end == gs) return nullptr;
  if (*end == '@' && *cfg.nats_url && !strcmp(end + 1, cfg.node_id)) end += strlen(end);   // this node's
  if (*end) return nullptr;
  if (slot >= g.conn_hw) return nullptr;
  Conn* c = &g.conns[slot];
  if (c->gen != gen || c->state != CState::Ws) return nullptr;
  return c;
}

const char* node_id() { return cfg.node_id; }

// "slot.gen@node": the node part of a connection id, or null.
const char* conn_id_node(const char* id) {
  const char* at = strchr(id, '@');
  return at ? at + 1 : nullptr;
}

// True when the id names a connection of another node.
bool conn_id_remote(const char* id) {
  const char* n = conn_id_node(id);
  return n && strcmp(n, node_id());
}

// "slot.gen", and "@node" in cluster mode: ids name their node.
int conn_id(const Conn* c, char* out, size_t n) {
  return *cfg.nats_url ? snprintf(out, n, "%u.%u@%s", conn_index(c), c->gen, cfg.node_id) : snprintf(out, n, "%u.%u", conn_index(c), c->gen);
}

// --- rooms -----------------------------------------------------------------
// Keyed by (service, name) in g.room_index.

// The name alone: the same on every node, so that a cluster node's room
// subject (section 14) is this hash and rooms sharing a subject share a
// probe chain.
uint32_t room_hash(const char* name, size_t n) { return hash_str(name, n); }

uint32_t room_find(uint16_t group, const char* name, size_t n) {
  uint32_t h = room_hash(name, n);
  return index_find(&g.room_index, h, [&](uint32_t r) {
    const Room* room = &g.rooms[r];
    return room->hash == h && room->group == group && room->name_len == n && !memcmp(room->name, name, n);
  });
}

void cluster_room_interest(uint32_t r, bool on);   // section 14: subscribe while members are here

// Finds or creates; NIL when the table is full or the name is too long.
uint32_t room_get(uint16_t group, const char* name, size_t n) {
  if (n == 0 || n >= sizeof(Room::name)) return NIL;
  uint32_t r = room_find(group, name, n);
  if (r != NIL) return r;
  if (g.room_free != NIL) { r = g.room_free; g.room_free = g.rooms[r].next_free; }
  else if (g.room_hw < g.nrooms) r = g.room_hw++;
  else return NIL;
  Room* room = &g.rooms[r];
  room->used = true;
  room->group = group;
  room->hash = room_hash(name, n);
  room->name_len = (uint8_t)n;
  memcpy(room->name, name, n);
  room->name[n] = 0;
  room->head = room->tail = NIL;
  room->count = 0;
  room->seq = 0;
  room->hist = nullptr;
  room->hist_head = room->hist_count = room->hist_cap = 0;
  room->sub = nullptr;
  index_insert(&g.room_index, room->hash, r);
  g.room_count++;
  cluster_room_interest(r, true);
  return r;
}

void hist_clear(Room* room);   // section 11

void room_free(uint32_t r) {
  Room* room = &g.rooms[r];
  hist_clear(room);
  cluster_room_interest(r, false);
  index_remove(&g.room_index, room->hash, r, [](uint32_t x) { return g.rooms[x].hash; });
  room->used = false;
  room->next_free = g.room_free;
  g.room_free = r;
  g.room_count--;
}

// --- memberships -------------------------------------------------------------
// Keyed by (connection slot, room) in g.member_index, so join and leave are
// O(1); each membership is also on its room's and its connection's lists.

uint32_t member_hash(uint32_t conn, uint32_t room) { return (conn * 0x9e3779b1u) ^ (room * 0x85ebca6bu) ^ (room >> 7); }

uint32_t member_find(const Conn* c, uint32_t room) {
  uint32_t ci = conn_index(c);
  return index_find(&g.member_index, member_hash(ci, room), [&](uint32_t m) { return g.members[m].conn == ci && g.members[m].room == room; });
}

enum class JoinResult { Ok, Already, RoomsFull, MembersFull, BadName };

JoinResult room_join(Conn* c, const char* name, size_t n) {
  if (n == 0 || n >= sizeof(Room::name)) return JoinResult::BadName;
  uint32_t r = room_find(c->group, name, n);
  if (r != NIL && member_find(c, r) != NIL) return JoinResult::Already;
  if (g.member_free == NIL && g.member_count >= g.nmembers) return JoinResult::MembersFull;
  if (r == NIL && (r = room_get(c->group, name, n)) == NIL) return JoinResult::RoomsFull;
  uint32_t m;
  if (g.member_free != NIL) { m = g.member_free; g.member_free = g.members[m].rnext; }
  else m = g.member_hw++;
  Member* mb = &g.members[m];
  Room* room = &g.rooms[r];
  mb->room = r;
  mb->conn = conn_index(c);
  mb->join_seq = room->seq;
  index_insert(&g.member_index, member_hash(mb->conn, r), m);
  // appended: a push reaches members in the order they joined (which is
  // also the order a client that opened them reads them in)
  mb->rnext = NIL;
  mb->rprev = room->tail;
  if (room->tail != NIL) g.members[room->tail].rnext = m; else room->head = m;
  room->tail = m;
  room->count++;
  mb->cprev = NIL;
  mb->cnext = c->rooms;
  if (c->rooms != NIL) g.members[c->rooms].cprev = m;
  c->rooms = m;
  c->nrooms++;
  g.member_count++;
  return JoinResult::Ok;
}

void member_remove(uint32_t m) {
  Member* mb = &g.members[m];
  index_remove(&g.member_index, member_hash(mb->conn, mb->room), m,
               [](uint32_t x) { return member_hash(g.members[x].conn, g.members[x].room); });
  Room* room = &g.rooms[mb->room];
  Conn* c = &g.conns[mb->conn];
  if (mb->rprev != NIL) g.members[mb->rprev].rnext = mb->rnext; else room->head = mb->rnext;
  if (mb->rnext != NIL) g.members[mb->rnext].rprev = mb->rprev; else room->tail = mb->rprev;
  if (mb->cprev != NIL) g.members[mb->cprev].cnext = mb->cnext; else c->rooms = mb->cnext;
  if (mb->cnext != NIL) g.members[mb->cnext].cprev = mb->cprev;
  c->nrooms--;
  if (--room->count == 0) room_free(mb->room);
  mb->room = mb->conn = NIL;   // a broadcast walking the room sees it is gone
  mb->rnext = g.member_free;
  g.member_free = m;
  g.member_count--;
}

// Moves every membership of `from` to `to` in place (recovery: a client
// back on a new connection takes its rooms over). No allocation: it cannot
// fail for want of room in the tables.
void member_move_all(Conn* from, Conn* to) {
  uint32_t ti = conn_index(to);
  while (from->rooms != NIL) {
    uint32_t m = from->rooms;
    Member* mb = &g.members[m];
    index_remove(&g.member_index, member_hash(mb->conn, mb->room), m,
                 [](uint32_t x) { return member_hash(g.members[x].conn, g.members[x].room); });
    from->rooms = mb->cnext;
    if (mb->cnext != NIL) g.members[mb->cnext].cprev = NIL;
    from->nrooms--;
    mb->conn = ti;
    index_insert(&g.member_index, member_hash(ti, mb->room), m);
    mb->cprev = NIL;
    mb->cnext = to->rooms;
    if (to->rooms != NIL) g.members[to->rooms].cprev = m;
    to->rooms = m;
    to->nrooms++;
  }
}

bool room_leave(Conn* c, const char* name, size_t n) {
  uint32_t r = room_find(c->group, name, n);
  if (r == NIL) return false;
  uint32_t m = member_find(c, r);
  if (m == NIL) return false;
  member_remove(m);
  return true;
}

void conn_leave_all(Conn* c) {
  while (c->rooms != NIL) member_remove(c->rooms);
}

// --- tallies (per-IP and per-user caps) -------------------------------------

size_t tally_key_ip(const Conn* c, char* key) {
  key[0] = 'i';
  key[1] = (char)c->family;
  memcpy(key + 2, c->addr, 16);
  return 18;
}

size_t tally_key_user(uint16_t group, const char* user_id, char* key) {
  size_t n = std::min(strlen(user_id), (size_t)128);
  key[0] = 'u';
  memcpy(key + 1, &group, 2);
  memcpy(key + 3, user_id, n);
  return n + 3;
}

uint32_t tally_find(const char* key, size_t n) {
  uint32_t h = hash_str(key, n);
  return index_find(&g.tally_index, h, [&](uint32_t t) { return g.tallies[t].hash == h && g.tallies[t].len == n && !memcmp(g.tallies[t].key, key, n); });
}

uint32_t tally_count(const char* key, size_t n) {
  uint32_t t = tally_find(key, n);
  return t == NIL ? 0 : g.tallies[t].count;
}

void tally_add(const char* key, size_t n) {
  uint32_t t = tally_find(key, n);
  if (t == NIL) {
    if (g.tally_free != NIL) { t = g.tally_free; g.tally_free = g.tallies[t].next_free; }
    else if (g.tally_hw < g.ntallies) t = g.tally_hw++;
    else return;   // cannot happen: two keys per connection at most
    Tally* e = &g.tallies[t];
    e->hash = hash_str(key, n);
    e->len = (uint8_t)n;
    memcpy(e->key, key, n);
    e->count = 0;
    index_insert(&g.tally_index, e->hash, t);
    g.tally_count++;
  }
  g.tallies[t].count++;
}

void tally_sub(const char* key, size_t n) {
  uint32_t t = tally_find(key, n);
  if (t == NIL || --g.tallies[t].count) return;
  index_remove(&g.tally_index, g.tallies[t].hash, t, [](uint32_t x) { return g.tallies[x].hash; });
  g.tally_count--;
  g.tallies[t].next_free = g.tally_free;
  g.tally_free = t;
}


// --- pending replies ------------------------------------------------------------

uint32_t pend_alloc(Conn* c, PKind kind, uint16_t backend, uint64_t timeout_ms) {
  uint32_t p;
  if (g.pend_free != NIL) { p = g.pend_free; g.pend_free = g.pend[p].next; }
  else if (g.pend_hw < g.npend) p = g.pend_hw++;
  else return NIL;
  Pending* e = &g.pend[p];
  e->kind = kind;
  e->slot = conn_index(c);
  e->gen = c->gen;
  e->backend = backend;
  e->deadline = now_ms() + timeout_ms;
  e->id_len = 0;
  e->cnext = NIL;
  // append to the FIFO; deadlines of one kind grow monotonically, and the
  // two kinds' timeouts differ, so insert from the tail backwards
  e->next = NIL;
  e->prev = g.pend_tail;
  uint32_t after = g.pend_tail;
  while (after != NIL && g.pend[after].deadline > e->deadline) after = g.pend[after].prev;
  e->prev = after;
  e->next = after == NIL ? g.pend_head : g.pend[after].next;
  if (e->next != NIL) g.pend[e->next].prev = p; else g.pend_tail = p;
  if (after != NIL) g.pend[after].next = p; else g.pend_head = p;
  g.pend_count++;
  return p;
}

void pend_free(uint32_t p) {
  Pending* e = &g.pend[p];
  if (e->prev != NIL) g.pend[e->prev].next = e->next; else g.pend_head = e->next;
  if (e->next != NIL) g.pend[e->next].prev = e->prev; else g.pend_tail = e->prev;
  e->kind = PKind::Free;
  e->next = g.pend_free;
  g.pend_free = p;
  g.pend_count--;
}

// Unlinks a WebSocket pending entry from its connection's list and frees it.
void pend_release_ws(Conn* c, uint32_t p) {
  uint32_t* link = &c->pend;
  while (*link != NIL && *link != p) link = &g.pend[*link].cnext;
  if (*link == p) *link = g.pend[p].cnext;
  pend_free(p);
}

void pend_arm();

// --- giving memory back ------------------------------------------------------
// After a burst (10k connections come and gone) the tables' touched pages,
// the pools and the freed heap would stay resident. Every TRIM_MS the free
// tail of each table above its highest entry in use goes back to the kernel
// (madvise: the pages read as zeros again, like untouched ones), an empty
// hash index likewise, the pools shrink and the heap is trimmed.

constexpr uint64_t TRIM_MS = 2000;

void mem_release(void* from, void* to) {
  uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  uintptr_t a = ((uintptr_t)from + page - 1) & ~(page - 1), b = (uintptr_t)to & ~(page - 1);
  if (b > a) madvise((void*)a, b - a, MADV_DONTNEED);
}

// Lowers *hw to just above the highest entry in use, gives the pages above
// back, and rebuilds the free list (lowest slots first) below the new mark.
template <class T, class Used, class Link>
void table_trim(T* t, uint32_t* hw, uint32_t* free_head, Used used, Link link) {
  uint32_t top = *hw;
  while (top && !used(top - 1)) top--;
  if ((size_t)(*hw - top) * sizeof(T) < 64 * 1024 && top) return;   // not worth a rebuild
  mem_release(&t[top], &t[*hw]);
  *hw = top;
  *free_head = NIL;
  for (uint32_t i = top; i-- > 0;)
    if (!used(i)) { link(i) = *free_head; *free_head = i; }
}

void tables_trim() {
  table_trim(g.conns, &g.conn_hw, &g.conn_free, [](uint32_t i) { return g.conns[i].state != CState::Free; },
             [](uint32_t i) -> uint32_t& { return g.conns[i].next_free; });
  table_trim(g.rooms, &g.room_hw, &g.room_free, [](uint32_t i) { return g.rooms[i].used; },
             [](uint32_t i) -> uint32_t& { return g.rooms[i].next_free; });
  table_trim(g.members, &g.member_hw, &g.member_free, [](uint32_t i) { return g.members[i].room != NIL; },
             [](uint32_t i) -> uint32_t& { return g.members[i].rnext; });
  table_trim(g.pend, &g.pend_hw, &g.pend_free, [](uint32_t i) { return g.pend[i].kind != PKind::Free; },
             [](uint32_t i) -> uint32_t& { return g.pend[i].next; });
  table_trim(g.tallies, &g.tally_hw, &g.tally_free, [](uint32_t i) { return g.tallies[i].count != 0; },
             [](uint32_t i) -> uint32_t& { return g.tallies[i].next_free; });
  if (!g.room_count) mem_release(g.room_index.slot, g.room_index.slot + g.room_index.mask + 1);
  if (!g.member_count) mem_release(g.member_index.slot, g.member_index.slot + g.member_index.mask + 1);
  if (!g.tally_count) mem_release(g.tally_index.slot, g.tally_index.slot + g.tally_index.mask + 1);
  while (g.nctx_pool > 4) wslay_event_context_free(g.ctx_pool[--g.nctx_pool]);
  if (g.zbuf.cap > 64 * 1024) buf_free(&g.zbuf);
  malloc_trim(0);
}

// ============================================================================
// 5. Output
// Every write goes through stream_send: uv_try_write first (most writes
// finish at once on a healthy socket and need no request), and only the
// rest is queued with a uv_write request that holds a reference to the
// shared bytes. A broadcast frame is one Shared written to every member
// (OutMsg: plain and permessage-deflate variants, each built once).
// Connections close through one path: conn_close (idempotent); the slot
// returns to the free list only in conn_closed_cb.
// ============================================================================

struct WriteReq {
  uv_write_t req;
  Shared* s;              // one reference, dropped in write_done_cb
};

void conn_close(Conn* c, const char* why);
void backend_close(Backend* b, const char* why);
void http_pump(Conn* c);
void alloc_cb(uv_handle_t*, size_t, uv_buf_t* buf) noexcept;
void conn_read_cb(uv_stream_t* st, ssize_t n, const uv_buf_t* buf) noexcept;

void write_done_cb(uv_write_t* req, int status) noexcept {
  WriteReq* w = (WriteReq*)req;
  shared_unref(w->s);
  uv_stream_t* stream = req->handle;
  free(w);
  if (stream->type == UV_TCP) {
    Conn* c = (Conn*)stream->data;
    if (c->state == CState::Closed || c->state == CState::Free) return;
    if (status < 0) { conn_close(c, uv_strerror(status)); return; }
    if (c->state == CState::Http && c->http && c->http->blocked && stream->write_queue_size <= HTTP_OUT_CAP / 2) {
      c->http->blocked = false;
      http_pump(c);
    } else if (c->state == CState::Ws && c->read_paused && stream->write_queue_size <= (size_t)cfg.max_outbound / 2) {
      c->read_paused = false;
      uv_read_start(stream, alloc_cb, conn_read_cb);
    }
  } else {
    Backend* b = (Backend*)stream->data;
    if (b->state == BState::Closed || b->state == BState::Free) return;
    if (status < 0) backend_close(b, uv_strerror(status));
    else if (b->close_why && stream->write_queue_size == 0) backend_close(b, b->close_why);
  }
}

// Writes s (or its tail from off). Returns 0, or a negative libuv error.
int stream_send(uv_stream_t* stream, Shared* s, size_t off = 0) {
  uv_buf_t b = uv_buf_init(s->data + off, (unsigned)(s->len - off));
  int r = uv_try_write(stream, &b, 1);
  if (r == (int)b.len) return 0;
  if (r < 0 && r != UV_EAGAIN) return r;
  if (r > 0) b = uv_buf_init(b.base + r, b.len - (unsigned)r);
  WriteReq* w = (WriteReq*)malloc(sizeof *w);
  if (!w) return UV_ENOMEM;
  w->s = s;
  s->refs++;
  int e = uv_write(&w->req, stream, &b, 1, write_done_cb);
  if (e) { shared_unref(s); free(w); return e; }
  return 0;
}

int stream_send_bytes(uv_stream_t* st, const char* p, size_t n);
int tls_write(Conn* c, const char* p, size_t n);   // section 6

// Every byte to a client goes through here: as it is, or encrypted first on
// a TLS connection. s: the same bytes as a shared frame (queued without a
// copy). 0, or a negative libuv error.
int conn_write(Conn* c, const char* p, size_t n, Shared* s = nullptr) {
  if (c->tls) return tls_write(c, p, n);
  uv_stream_t* st = (uv_stream_t*)&c->tcp;
  return s ? stream_send(st, s) : stream_send_bytes(st, p, n);
}

// Sends to a client; applies the outbound cap to WebSocket connections.
// Returns false if the bytes were not queued (dropped or connection gone).
bool ws_close(Conn* c, uint16_t code, const char* reason);

bool conn_send(Conn* c, Shared* s) {
  if (c->state != CState::Http && c->state != CState::Ws) return false;
  uv_stream_t* st = (uv_stream_t*)&c->tcp;
  if (c->state == CState::Ws && st->write_queue_size + s->len > (size_t)cfg.max_outbound) {
    g.ws_drops++;
    if (cfg.outbound_policy == 0 && !c->ws_closing) ws_close(c, 1008, "slow consumer");
    return false;
  }
  int r = conn_write(c, s->data, s->len, s);
  if (r) { conn_close(c, uv_strerror(r)); return false; }
  return true;
}

// Writes bytes the caller owns: straight from them when the socket takes
// them all (the usual case); only what it does not take is copied and
// queued. Returns 0 or a negative libuv error.
int stream_send_bytes(uv_stream_t* st, const char* p, size_t n) {
  size_t done = 0;
  if (st->write_queue_size == 0) {   // with a queue, try_write refuses anyway
    uv_buf_t b = uv_buf_init((char*)p, (unsigned)n);
    int r = uv_try_write(st, &b, 1);
    if (r == (int)n) return 0;
    if (r < 0 && r != UV_EAGAIN) return r;
    if (r > 0) done = (size_t)r;
  }
  Shared* rest = shared_new(n - done);
  memcpy(rest->data, p + done, n - done);
  int r = stream_send(st, rest);
  shared_unref(rest);
  return r;
}

void conn_send_bytes(Conn* c, const char* p, size_t n) {
  if (c->state != CState::Http && c->state != CState::Ws) return;
  if (int r = conn_write(c, p, n)) conn_close(c, uv_strerror(r));
}

void conn_closed_cb(uv_handle_t* h) noexcept {
  Conn* c = (Conn*)h->data;
  if (c->ghost) { c->state = CState::Ghost; g.ghost_count++; }   // rooms kept for the client to come back
  else conn_free_slot(c);
}

void ws_detach(Conn* c);  // section 12: tell the service, leave rooms
void http_free(Conn* c);  // section 10
void tls_free(Conn* c);   // section 6
void tls_close_notify(Conn* c);

// What a connection holds besides its socket: its service is told, its
// rooms left, its Http record and claims freed. Once, at linger or close.
void conn_release(Conn* c) {
  if (c->state == CState::Ws) ws_detach(c);
  if (c->http) http_free(c);
  tls_free(c);
  if (!c->ghost) { free(c->user); c->user = nullptr; }
}

void ghost_free(Conn* c);   // section 11

void conn_close(Conn* c, const char* why) {
  if (c->state == CState::Ghost) { ghost_free(c); return; }
  if (c->state == CState::Closed || c->state == CState::Free) return;
  LOG_DEBUG("conn %u closed: %s", conn_index(c), why);
  if (c->state == CState::Linger) g.linger_count--;
  else conn_release(c);
  c->state = CState::Closed;
  uv_close((uv_handle_t*)&c->tcp, conn_closed_cb);
}

void linger_shutdown_cb(uv_shutdown_t* req, int status) noexcept {
  Conn* c = (Conn*)req->handle->data;
  free(req);
  if (status < 0 && c->state == CState::Linger) conn_close(c, uv_strerror(status));
}

void linger_read_cb(uv_stream_t* st, ssize_t n, const uv_buf_t*) noexcept {
  if (n < 0) conn_close((Conn*)st->data, "closed after lingering");
}

// The connection is done (HTTP "Connection: close", an error answer, the
// WebSocket close handshake): FIN after what is queued, then input is
// read and dropped until the peer closes too or LINGER_MS pass.
void conn_close_after_flush(Conn* c) {
  if (c->state != CState::Http && c->state != CState::Ws) return;
  tls_close_notify(c);
  if (c->state != CState::Http && c->state != CState::Ws) return;
  if (g.linger_count >= MAX_LINGER) { conn_close(c, "done (no linger slot)"); return; }
  uv_shutdown_t* req = (uv_shutdown_t*)malloc(sizeof *req);
  if (!req || uv_shutdown(req, (uv_stream_t*)&c->tcp, linger_shutdown_cb)) { free(req); conn_close(c, "done"); return; }
  conn_release(c);
  c->state = CState::Linger;
  g.linger_count++;
  c->close_deadline = now_ms() + LINGER_MS;
  uv_read_start((uv_stream_t*)&c->tcp, alloc_cb, linger_read_cb);
}

// WebSocket frame header for a server frame (never masked). Returns length.
size_t ws_frame_header(uint8_t* h, uint8_t opcode, size_t len) {
  h[0] = (uint8_t)(0x80 | opcode);
  if (len < 126) { h[1] = (uint8_t)len; return 2; }
  if (len < 65536) { h[1] = 126; h[2] = (uint8_t)(len >> 8); h[3] = (uint8_t)len; return 4; }
  h[1] = 127;
  for (int i = 0; i < 8; i++) h[2 + i] = (uint8_t)(len >> (56 - 8 * i));
  return 10;
}

// One complete frame in a Shared, ready for every recipient.
Shared* ws_frame(uint8_t opcode, const char* a, size_t an, const char* b = nullptr, size_t bn = 0) {
  uint8_t h[10];
  size_t hn = ws_frame_header(h, opcode, an + bn);
  Shared* s = shared_new(hn + an + bn);
  memcpy(s->data, h, hn);
  if (an) memcpy(s->data + hn, a, an);
  if (bn) memcpy(s->data + hn + an, b, bn);
  return s;
}

// --- permessage-deflate (RFC 7692) -----------------------------------------
// Negotiated with no context takeover in both directions, so one deflate and
// one inflate stream serve every connection (reset per message), and a
// compressed broadcast frame is built once and shared like a plain one.

constexpr size_t DEFLATE_MIN = 64;   // smaller payloads go out uncompressed

// Compresses a payload into g.zbuf (without the 00 00 ff ff tail).
bool ws_deflate(const char* p, size_t n) {
  if (!g.deflater_ok) {
    if (deflateInit2(&g.deflater, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK) return false;
    g.deflater_ok = true;
  }
  deflateReset(&g.deflater);
  g.zbuf.len = 0;
  buf_reserve(&g.zbuf, deflateBound(&g.deflater, (uLong)n) + 16);
  g.deflater.next_in = (Bytef*)p;
  g.deflater.avail_in = (uInt)n;
  g.deflater.next_out = (Bytef*)g.zbuf.p;
  g.deflater.avail_out = (uInt)g.zbuf.cap;
  if (deflate(&g.deflater, Z_SYNC_FLUSH) != Z_OK || g.deflater.avail_in) return false;
  g.zbuf.len = g.zbuf.cap - g.deflater.avail_out;
  if (g.zbuf.len >= 4) g.zbuf.len -= 4;   // RFC 7692 §7.2.1: drop the empty stored block's tail
  return true;
}

// Inflates a compressed message into g.zbuf. 0, 1009 (over limit) or 1007.
int ws_inflate(const uint8_t* p, size_t n, size_t limit) {
  if (!g.inflater_ok) {
    if (inflateInit2(&g.inflater, -15) != Z_OK) return 1011;
    g.inflater_ok = true;
  }
  inflateReset(&g.inflater);
  static const uint8_t tail[4] = {0, 0, 0xff, 0xff};
  g.zbuf.len = 0;
  for (int part = 0; part < 2; part++) {
    g.inflater.next_in = (Bytef*)(part ? tail : p);
    g.inflater.avail_in = (uInt)(part ? 4 : n);
    while (g.inflater.avail_in) {
      buf_reserve(&g.zbuf, 16 * 1024);
      g.inflater.next_out = (Bytef*)g.zbuf.p + g.zbuf.len;
      g.inflater.avail_out = (uInt)(g.zbuf.cap - g.zbuf.len);
      int r = inflate(&g.inflater, Z_SYNC_FLUSH);
      g.zbuf.len = g.zbuf.cap - g.inflater.avail_out;
      if (g.zbuf.len > limit) return 1009;
      if (r == Z_STREAM_END) break;
      if (r != Z_OK && r != Z_BUF_ERROR) return 1007;
      if (r == Z_BUF_ERROR && g.inflater.avail_out) return 1007;
    }
  }
  return 0;
}

// One message for one or many connections: the plain frame and, for
// connections with permessage-deflate, the compressed one, each built at
// its first recipient and shared by the rest.
struct OutMsg {
  uint8_t opcode;
  const char* p;          // payload (owner: caller, alive until outmsg_free)
  size_t n;
  Shared* plain;
  Shared* z;
  bool z_failed;
};

void outmsg_free(OutMsg* m) {
  shared_unref(m->plain);
  shared_unref(m->z);
  m->plain = m->z = nullptr;
}

Shared* outmsg_frame(OutMsg* m, bool deflate) {
  if (deflate && m->n >= DEFLATE_MIN && !m->z_failed) {
    if (!m->z) {
      if (ws_deflate(m->p, m->n)) m->z = ws_frame((uint8_t)(m->opcode | 0x40), g.zbuf.p, g.zbuf.len);   // RSV1: compressed
      else m->z_failed = true;
    }
    if (m->z) return m->z;
  }
  if (!m->plain) m->plain = ws_frame(m->opcode, m->p, m->n);
  return m->plain;
}

// Sends one text/binary message to a WebSocket connection.
bool ws_send_msg(Conn* c, OutMsg* m) {
  if (c->state != CState::Ws || c->ws_closing) return false;
  if (!conn_send(c, outmsg_frame(m, c->deflate))) return false;
  g.ws_msgs_out++;
  g.ws_bytes_out += m->n;
  return true;
}

void ws_send_text(Conn* c, const char* p, size_t n) {
  OutMsg m{1, p, n, nullptr, nullptr, false};
  ws_send_msg(c, &m);
  outmsg_free(&m);
}

// {"id":..,"error":{"type":..,"message":..,"code":..}} (id omitted if none)
void ws_send_error(Conn* c, const char* id, size_t id_len, bool id_quoted, const char* type, const char* msg, int code) {
  Buf b;
  buf_puts(&b, "{");
  if (id && id_len) {
    buf_puts(&b, "\"id\":");
    if (id_quoted) buf_puts(&b, "\"");
    buf_put(&b, id, id_len);
    if (id_quoted) buf_puts(&b, "\"");
    buf_puts(&b, ",");
  }
  buf_puts(&b, "\"error\":{\"type\":\"");
  buf_puts(&b, type);
  buf_puts(&b, "\",\"message\":\"");
  buf_json_escape(&b, msg, strlen(msg));
  buf_printf(&b, "\",\"code\":%d}}", code);
  ws_send_text(c, b.p, b.len);
  buf_free(&b);
}

// Answers a pending WebSocket reply with an error. The entry is freed
// before the write: a failed write closes the connection, and closing frees
// whatever the connection still has pending.
void pend_fail_ws(Conn* c, uint32_t p, const char* type, const char* msg, int code) {
  const Pending* e = &g.pend[p];
  char id[sizeof e->id];
  uint16_t id_len = e->id_len;
  bool quoted = e->id_quoted;
  memcpy(id, e->id, id_len);
  pend_release_ws(c, p);
  ws_send_error(c, id, id_len, quoted, type, msg, code);
}

// ============================================================================
// 6. TLS
// https:// and wss:// on --tls-listen, with mbedTLS on linkd's own loop:
// ciphertext read from the socket is handed to mbedTLS from memory, and
// what mbedTLS writes goes out through the same write path as plain bytes
// (conn_write), so HTTP, WebSocket, limits and metrics are the same on both
// ports. TLS 1.2, ECDHE with AES-GCM or ChaCha20-Poly1305 only, ALPN
// http/1.1, session tickets. An idle connection holds no record buffers:
// its ~33 KiB of mbedTLS input and output buffers go back to a pool when
// no record is half read or written (tls_park) and are borrowed again when
// bytes arrive or must be sent (tls_unpark); what stays is the session and
// its keys, about 2 KiB.
// ============================================================================

#if defined(MBEDTLS_SSL_VARIABLE_BUFFER_LENGTH)
#error "tls_park assumes fixed-size mbedTLS record buffers"
#endif

constexpr uint64_t TLS_HANDSHAKE_MS = 10000;  // a handshake must finish within this
constexpr int TLS_POOL = 32;                  // idle record buffers kept for reuse, per direction
constexpr uint64_t TLS_RECORD_MS = 10000;     // a record once begun must arrive whole within this

// The certificate, key and client CA in force. A reload (SIGHUP) makes a
// new one; connections keep the one they started with until they close.
struct TlsConf {
  mbedtls_ssl_config conf;
  mbedtls_x509_crt cert, ca;
  mbedtls_pk_context key;
  uint32_t refs;          // connections using it, + 1 while it is the current one
  unsigned char digest[32];   // SHA-256 of the three files' contents: a reload that changes none keeps the tickets
};

// A TLS connection's state; Conn::tls while it lives (owner: the Conn).
struct Tls {
  mbedtls_ssl_context ssl;
  TlsConf* conf;
  bool parked[2];         // [0] input, [1] output record buffer given back to the pool
  bool handshaken;
  bool resumed;           // the handshake resumed a session (ticket)
  bool broken;            // a fatal alert was sent or received: no close_notify
  unsigned char ctr[2][8];        // while parked: the in and out record sequence numbers
  ptrdiff_t off[2][6];            // while parked: the record pointers, as offsets into their buffers
  uint64_t partial_since; // loop ms when a record began arriving and is not whole yet (0: none)
  char* peer;             // verified client certificate: "CN\0sha256-hex" (owner: this), or null
};

struct TlsState {
  TlsConf* current;       // null: no TLS listener
  mbedtls_entropy_context entropy;
  mbedtls_ctr_drbg_context drbg;
  mbedtls_ssl_ticket_context tickets;   // shared by every TlsConf: tickets survive a reload
  bool rng_ok;
  unsigned char* pool[2][TLS_POOL]; int npool[2];   // idle input / output record buffers
  uint32_t held[2];       // buffers borrowed by connections now (in, out)
  const unsigned char* rd; size_t rdlen;        // ciphertext mbedTLS may read now
  unsigned char plain[16 * 1024];               // one decrypted record
  uint32_t count;         // open TLS connections
  uint64_t handshakes, resumed, failures;
};
TlsState tls;

const int tls_ciphersuites[] = {
  MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
  MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
  MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, 0};
const mbedtls_ecp_group_id tls_curves[] = {MBEDTLS_ECP_DP_CURVE25519, MBEDTLS_ECP_DP_SECP256R1, MBEDTLS_ECP_DP_SECP384R1, MBEDTLS_ECP_DP_NONE};
const char* tls_alpn[] = {"http/1.1", nullptr};

// The record pointers mbedTLS keeps into its input and output buffers.
unsigned char* mbedtls_ssl_context::* const tls_ptrs[2][6] = {
  {&mbedtls_ssl_context::in_ctr, &mbedtls_ssl_context::in_hdr, &mbedtls_ssl_context::in_len, &mbedtls_ssl_context::in_iv,
   &mbedtls_ssl_context::in_msg,
#if defined(MBEDTLS_SSL_DTLS_CONNECTION_ID)
   &mbedtls_ssl_context::in_cid},
#else
   &mbedtls_ssl_context::in_msg},
#endif
  {&mbedtls_ssl_context::out_ctr, &mbedtls_ssl_context::out_hdr, &mbedtls_ssl_context::out_len, &mbedtls_ssl_context::out_iv,
   &mbedtls_ssl_context::out_msg,
#if defined(MBEDTLS_SSL_DTLS_CONNECTION_ID)
   &mbedtls_ssl_context::out_cid},
#else
   &mbedtls_ssl_context::out_msg},
#endif
};

void tls_conf_unref(TlsConf* tc) {
  if (!tc || --tc->refs) return;
  mbedtls_ssl_config_free(&tc->conf);
  mbedtls_x509_crt_free(&tc->cert);
  mbedtls_x509_crt_free(&tc->ca);
  mbedtls_pk_free(&tc->key);
  free(tc);
}

bool tls_rng_init(char* err, size_t errn) {
  if (tls.rng_ok) return true;
  mbedtls_entropy_init(&tls.entropy);
  mbedtls_ctr_drbg_init(&tls.drbg);
  mbedtls_ssl_ticket_init(&tls.tickets);
  static const unsigned char who[] = "linkd tls";
  if (mbedtls_ctr_drbg_seed(&tls.drbg, mbedtls_entropy_func, &tls.entropy, who, sizeof who - 1) ||
      mbedtls_ssl_ticket_setup(&tls.tickets, mbedtls_ctr_drbg_random, &tls.drbg, MBEDTLS_CIPHER_AES_256_GCM, 86400)) {
    snprintf(err, errn, "tls: cannot seed the random generator");
    return false;
  }
  tls.rng_ok = true;
  return true;
}

// A certificate file's problem, in words: unreadable, not PEM, expired.
bool tls_load_certs(mbedtls_x509_crt* crt, const char* name, const char* path, char* err, size_t errn) {
  if (access(path, R_OK)) { snprintf(err, errn, "%s: cannot read %s: %s", name, path, strerror(errno)); return false; }
  int r = mbedtls_x509_crt_parse_file(crt, path);
  if (r) { snprintf(err, errn, "%s: %s holds no valid PEM certificate (mbedtls -0x%04x)", name, path, (unsigned)-r); return false; }
  for (const mbedtls_x509_crt* c = crt; c; c = c->next) {
    const mbedtls_x509_time& t = mbedtls_x509_time_is_past(&c->valid_to) ? c->valid_to : c->valid_from;
    if (mbedtls_x509_time_is_past(&c->valid_to) || mbedtls_x509_time_is_future(&c->valid_from)) {
      snprintf(err, errn, "%s: a certificate in %s %s %04d-%02d-%02d", name, path,
               mbedtls_x509_time_is_past(&c->valid_to) ? "expired on" : "is not valid before", t.year, t.mon, t.day);
      return false;
    }
  }
  return true;
}

// SHA-256 over the contents of the certificate, key and client CA files.
void tls_files_digest(unsigned char out[32]) {
  mbedtls_sha256_context h;
  mbedtls_sha256_init(&h);
  mbedtls_sha256_starts_ret(&h, 0);
  for (const char* path : {cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca}) {
    FILE* f = *path ? fopen(path, "rb") : nullptr;
    unsigned char buf[4096];
    for (size_t n; f && (n = fread(buf, 1, sizeof buf, f)) > 0;) mbedtls_sha256_update_ret(&h, buf, n);
    if (f) fclose(f);
    mbedtls_sha256_update_ret(&h, (const unsigned char*)"\0", 1);   // file boundary
  }
  mbedtls_sha256_finish_ret(&h, out);
  mbedtls_sha256_free(&h);
}

// Loads --tls-cert, --tls-key and --tls-client-ca into a new TlsConf; null
// with err set when one of them is wrong (unreadable, expired, a key that
// does not match the certificate, a key file others may read).
TlsConf* tls_conf_load(char* err, size_t errn) {
  if (!*cfg.tls_cert || !*cfg.tls_key) { snprintf(err, errn, "tls-listen needs tls-cert and tls-key"); return nullptr; }
  if (!tls_rng_init(err, errn)) return nullptr;
  TlsConf* tc = (TlsConf*)calloc(1, sizeof(TlsConf));
  if (!tc) { snprintf(err, errn, "tls: out of memory"); return nullptr; }
  tc->refs = 1;
  mbedtls_ssl_config_init(&tc->conf);
  mbedtls_x509_crt_init(&tc->cert);
  mbedtls_x509_crt_init(&tc->ca);
  mbedtls_pk_init(&tc->key);
  struct stat st;
  int r;
  if (!tls_load_certs(&tc->cert, "tls-cert", cfg.tls_cert, err, errn)) goto fail;
  if (stat(cfg.tls_key, &st) || access(cfg.tls_key, R_OK)) { snprintf(err, errn, "tls-key: cannot read %s: %s", cfg.tls_key, strerror(errno)); goto fail; }
  if (st.st_mode & 0007) {
    snprintf(err, errn, "tls-key: %s may be read by every user (mode %04o): chmod o-rwx it (or use systemd's LoadCredential=)", cfg.tls_key,
             (unsigned)(st.st_mode & 07777));
    goto fail;
  }
  if ((r = mbedtls_pk_parse_keyfile(&tc->key, cfg.tls_key, nullptr))) {
    snprintf(err, errn, "tls-key: %s holds no valid unencrypted PEM private key (mbedtls -0x%04x)", cfg.tls_key, (unsigned)-r);
    goto fail;
  }
  if (mbedtls_pk_check_pair(&tc->cert.pk, &tc->key)) { snprintf(err, errn, "tls-key: %s does not match the certificate in %s", cfg.tls_key, cfg.tls_cert); goto fail; }
  if (*cfg.tls_client_ca && !tls_load_certs(&tc->ca, "tls-client-ca", cfg.tls_client_ca, err, errn)) goto fail;
  if (mbedtls_ssl_config_defaults(&tc->conf, MBEDTLS_SSL_IS_SERVER, MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT)) {
    snprintf(err, errn, "tls: cannot set up a configuration");
    goto fail;
  }
  mbedtls_ssl_conf_min_version(&tc->conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);   // TLS 1.2
  mbedtls_ssl_conf_max_version(&tc->conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
  mbedtls_ssl_conf_ciphersuites(&tc->conf, tls_ciphersuites);
  mbedtls_ssl_conf_curves(&tc->conf, tls_curves);
  mbedtls_ssl_conf_rng(&tc->conf, mbedtls_ctr_drbg_random, &tls.drbg);
  mbedtls_ssl_conf_alpn_protocols(&tc->conf, tls_alpn);
  mbedtls_ssl_conf_session_tickets_cb(&tc->conf, mbedtls_ssl_ticket_write, mbedtls_ssl_ticket_parse, &tls.tickets);
#if defined(MBEDTLS_SSL_RENEGOTIATION)
  mbedtls_ssl_conf_renegotiation(&tc->conf, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
#endif
  if (mbedtls_ssl_conf_own_cert(&tc->conf, &tc->cert, &tc->key)) { snprintf(err, errn, "tls: the certificate's key type is not usable"); goto fail; }
  tls_files_digest(tc->digest);
  if (*cfg.tls_client_ca) {
    mbedtls_ssl_conf_ca_chain(&tc->conf, &tc->ca, nullptr);
    mbedtls_ssl_conf_authmode(&tc->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
  } else {
    mbedtls_ssl_conf_authmode(&tc->conf, MBEDTLS_SSL_VERIFY_NONE);
  }
  return tc;
fail:
  tls_conf_unref(tc);
  return nullptr;
}

// A direction (0 input, 1 output) of a connection is idle when nothing is
// half read (a record partly arrived, plaintext not yet taken) or half
// written in its buffer: after the handshake, between records, or before
// the handshake starts.
bool tls_idle(const Tls* t, int d) {
  const mbedtls_ssl_context* s = &t->ssl;
  if (s->state != MBEDTLS_SSL_HANDSHAKE_OVER && s->state != MBEDTLS_SSL_HELLO_REQUEST) return false;
  return d ? !s->out_left : !s->in_left && !s->in_offt && !mbedtls_ssl_check_pending(s);
}

// Gives each idle direction's record buffer back to the pool. Keeps what
// mbedTLS stores there itself: the record sequence number, and where its
// record pointers point. A client stalled in the middle of a record holds
// its input buffer only (and for TLS_RECORD_MS at most: housekeeping).
void tls_park(Tls* t) {
  mbedtls_ssl_context* s = &t->ssl;
  for (int d = 0; d < 2; d++) {
    if (t->parked[d] || !tls_idle(t, d)) continue;
    unsigned char*& buf = d ? s->out_buf : s->in_buf;
    memcpy(t->ctr[d], s->*tls_ptrs[d][0], 8);
    for (int k = 0; k < 6; k++) t->off[d][k] = s->*tls_ptrs[d][k] - buf;
    if (tls.npool[d] < TLS_POOL) tls.pool[d][tls.npool[d]++] = buf;
    else free(buf);
    buf = nullptr;
    for (int k = 0; k < 6; k++) s->*tls_ptrs[d][k] = nullptr;   // a use while parked faults at once, never in another's buffer
    t->parked[d] = true;
    tls.held[d]--;
  }
  t->partial_since = t->parked[0] ? 0 : t->partial_since ? t->partial_since : now_ms();
}

// Borrows both buffers back before any mbedTLS call on the connection.
bool tls_unpark(Tls* t) {
  mbedtls_ssl_context* s = &t->ssl;
  for (int d = 0; d < 2; d++) {
    if (!t->parked[d]) continue;
    unsigned char* buf = tls.npool[d] ? tls.pool[d][--tls.npool[d]] : (unsigned char*)calloc(1, d ? MBEDTLS_SSL_OUT_BUFFER_LEN : MBEDTLS_SSL_IN_BUFFER_LEN);
    if (!buf) return false;
    (d ? s->out_buf : s->in_buf) = buf;
    for (int k = 0; k < 6; k++) s->*tls_ptrs[d][k] = buf + t->off[d][k];
    memcpy(s->*tls_ptrs[d][0], t->ctr[d], 8);
    t->parked[d] = false;
    tls.held[d]++;
  }
  return true;
}

int tls_bio_send(void* ctx, const unsigned char* p, size_t n) {
  Conn* c = (Conn*)ctx;
  return stream_send_bytes((uv_stream_t*)&c->tcp, (const char*)p, n) ? MBEDTLS_ERR_NET_SEND_FAILED : (int)n;
}

int tls_bio_recv(void*, unsigned char* p, size_t n) {
  if (!tls.rdlen) return MBEDTLS_ERR_SSL_WANT_READ;
  n = std::min(n, tls.rdlen);
  memcpy(p, tls.rd, n);
  tls.rd += n;
  tls.rdlen -= n;
  return (int)n;
}

// A connection accepted on the TLS listener. False when out of memory.
bool tls_new(Conn* c) {
  Tls* t = (Tls*)calloc(1, sizeof(Tls));
  if (!t) return false;
  mbedtls_ssl_init(&t->ssl);
  if (mbedtls_ssl_setup(&t->ssl, &tls.current->conf)) { mbedtls_ssl_free(&t->ssl); free(t); return false; }
  t->conf = tls.current;
  t->conf->refs++;
  mbedtls_ssl_set_bio(&t->ssl, c, tls_bio_send, tls_bio_recv, nullptr);
  c->tls = t;
  tls.count++;
  tls.held[0]++;
  tls.held[1]++;
  tls_park(t);   // nothing to hold until the client speaks
  return true;
}

void tls_free(Conn* c) {
  Tls* t = c->tls;
  if (!t) return;
  for (int d = 0; d < 2; d++) if (!t->parked[d]) tls.held[d]--;   // a parked one's pointer is null: mbedtls_ssl_free skips it
  mbedtls_ssl_free(&t->ssl);
  tls_conf_unref(t->conf);
  free(t->peer);
  free(t);
  c->tls = nullptr;
  tls.count--;
}

// A verified client certificate's subject CN and SHA-256 fingerprint, kept
// for the services (UserContext); the certificate itself is then dropped.
void tls_keep_peer(Tls* t) {
  mbedtls_ssl_session* ses = t->ssl.session;
  const mbedtls_x509_crt* crt = ses ? ses->peer_cert : nullptr;
  if (!crt) return;
  char cn[128] = "";
  for (const mbedtls_x509_name* n = &crt->subject; n; n = n->next)
    if (n->oid.p && !MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &n->oid)) snprintf(cn, sizeof cn, "%.*s", (int)n->val.len, n->val.p);
  unsigned char sha[32];
  mbedtls_sha256_ret(crt->raw.p, crt->raw.len, sha, 0);
  size_t cl = strlen(cn);
  t->peer = (char*)malloc(cl + 1 + 65);
  if (t->peer) {
    memcpy(t->peer, cn, cl + 1);
    for (int i = 0; i < 32; i++) snprintf(t->peer + cl + 1 + 2 * i, 3, "%02x", sha[i]);
  }
  mbedtls_x509_crt_free(ses->peer_cert);   // 1-2 KiB a connection would keep for nothing
  mbedtls_free(ses->peer_cert);
  ses->peer_cert = nullptr;
}

void conn_input(Conn* c, const char* p, size_t n);   // section 16: plaintext for HTTP or WebSocket (null: the end)
void conn_refuse(uv_stream_t* st, unsigned status, const char* type, const char* msg);

// Ciphertext read from a TLS connection: the handshake, then every record
// decrypted and handed on as plaintext.
void tls_input(Conn* c, const char* p, size_t n) {
  Tls* t = c->tls;
  if (!t->handshaken && t->ssl.state == MBEDTLS_SSL_HELLO_REQUEST && t->parked[0] && n && (unsigned char)p[0] != 0x16) {
    // Not a TLS handshake record: most likely plain HTTP on the TLS port.
    conn_refuse((uv_stream_t*)&c->tcp, 400, "BAD_REQUEST", "this port speaks TLS (https://)");
    tls.failures++;
    conn_close(c, "plain text on the TLS port");
    return;
  }
  if (!tls_unpark(t)) { conn_close(c, "out of memory for TLS buffers"); return; }
  tls.rd = (const unsigned char*)p;
  tls.rdlen = n;
  while (!t->handshaken) {
    if (t->ssl.handshake && t->ssl.handshake->resume) t->resumed = true;
    int r = mbedtls_ssl_handshake_step(&t->ssl);
    if (r == MBEDTLS_ERR_SSL_WANT_READ || r == MBEDTLS_ERR_SSL_WANT_WRITE) { tls.rdlen = 0; tls_park(t); return; }
    if (r) {
      char e[96];
      mbedtls_strerror(r, e, sizeof e);
      LOG_DEBUG("conn %u: TLS handshake failed: %s", conn_index(c), e);
      tls.failures++;
      tls.rdlen = 0;
      t->broken = true;
      conn_close_after_flush(c);   // the alert mbedTLS queued goes out first
      return;
    }
    if (t->ssl.state == MBEDTLS_SSL_HANDSHAKE_OVER) {
      t->handshaken = true;
      tls.handshakes++;
      tls.resumed += t->resumed;
      tls_keep_peer(t);
    }
  }
  for (;;) {
    int r = mbedtls_ssl_read(&t->ssl, tls.plain, sizeof tls.plain);
    if (r > 0) {
      const unsigned char* rd = tls.rd;   // conn_input may write (and so call mbedTLS) on this connection
      size_t rdlen = tls.rdlen;
      conn_input(c, (const char*)tls.plain, (size_t)r);
      if (c->tls != t || (c->state != CState::Http && c->state != CState::Ws)) { tls.rdlen = 0; return; }
      // An answer written meanwhile may have parked the buffers, while more
      // records of this read are still to come.
      if (!tls_unpark(t)) { conn_close(c, "out of memory for TLS buffers"); return; }
      tls.rd = rd;
      tls.rdlen = rdlen;
      continue;
    }
    tls.rdlen = 0;
    if (r == MBEDTLS_ERR_SSL_WANT_READ) break;
    if (r == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) {   // answered with ours (RFC 5246 §7.2.1), then the end of input
      mbedtls_ssl_close_notify(&t->ssl);
      t->broken = true;                            // (sent: not again at the close)
      conn_input(c, nullptr, 0);
      return;
    }
    char e[96];
    mbedtls_strerror(r, e, sizeof e);
    LOG_DEBUG("conn %u: TLS record refused: %s", conn_index(c), e);
    tls.failures++;
    t->broken = true;
    conn_close_after_flush(c);   // with the alert mbedTLS sent
    return;
  }
  tls_park(t);
}

// Plaintext to a TLS connection: encrypted into records that go out through
// tls_bio_send. 0, or a negative libuv-style error.
int tls_write(Conn* c, const char* p, size_t n) {
  Tls* t = c->tls;
  if (!t->handshaken) return UV_ENOTCONN;
  if (!tls_unpark(t)) return UV_ENOMEM;
  for (size_t done = 0; done < n;) {
    int r = mbedtls_ssl_write(&t->ssl, (const unsigned char*)p + done, n - done);
    if (r <= 0) return UV_EIO;
    done += (size_t)r;
  }
  tls_park(t);
  return 0;
}

// The TLS close alert, before the socket's write side is shut.
void tls_close_notify(Conn* c) {
  Tls* t = c->tls;
  if (t && t->handshaken && !t->broken && tls_unpark(t)) mbedtls_ssl_close_notify(&t->ssl);
}

const char* tls_peer(const Tls* t) { return t->peer; }

// New ticket keys: every session ticket issued so far stops resuming.
void tls_tickets_rotate() {
  mbedtls_ssl_ticket_free(&tls.tickets);
  mbedtls_ssl_ticket_init(&tls.tickets);
  if (mbedtls_ssl_ticket_setup(&tls.tickets, mbedtls_ctr_drbg_random, &tls.drbg, MBEDTLS_CIPHER_AES_256_GCM, 86400))
    LOG_ERROR("tls: new session-ticket keys could not be made: resumption fails until a restart");
}

// The pool shrinks back when a burst is over (tables_trim's tick).
void tls_trim() {
  for (int d = 0; d < 2; d++)
    while (tls.npool[d] > 4) free(tls.pool[d][--tls.npool[d]]);
}

void tls_release() {
  for (int d = 0; d < 2; d++) {
    for (int i = 0; i < tls.npool[d]; i++) free(tls.pool[d][i]);
    tls.npool[d] = 0;
  }
  tls_conf_unref(tls.current);
  tls.current = nullptr;
  if (tls.rng_ok) {
    mbedtls_ssl_ticket_free(&tls.tickets);
    mbedtls_ctr_drbg_free(&tls.drbg);
    mbedtls_entropy_free(&tls.entropy);
    tls.rng_ok = false;
  }
}

// ============================================================================
// 7. Routes
// Method + path pattern ("/users/:id/posts"). Among the routes matching a
// path, the one whose first differing segment is static wins ("/users/stats"
// beats "/users/:id"); an exact method beats "*". Two routes with the same
// method and shape (static texts and :param positions) conflict; a service's
// own re-registration of a route is not a conflict.
// ============================================================================

// Splits a path at '/' into segments; a trailing '/' is ignored. Returns
// the count, or -1 when there are too many or an empty segment ("//").
int path_split(const char* p, size_t n, Slice* out, int max) {
  if (n == 0 || p[0] != '/') return -1;
  if (n > 1 && p[n - 1] == '/') n--;
  int k = 0;
  size_t i = 1;
  while (i < n) {
    size_t s = i;
    while (i < n && p[i] != '/') i++;
    if (i == s) return -1;
    if (k == max) return -1;
    out[k++] = Slice{p + s, i - s};
    i++;
  }
  return k;
}

// Compiles def into r; false with a reason when the pattern is malformed.
bool route_compile(Route* r, const char** why) {
  const char* p = r->def.path;
  Slice segs[MAX_SEGS];
  int n = path_split(p, strlen(p), segs, MAX_SEGS);
  if (n < 0) { *why = "path pattern must start with '/' and have no empty segments (at most 32)"; return false; }
  r->nseg = (uint8_t)n;
  for (int i = 0; i < n; i++) {
    bool param = segs[i].p[0] == ':';
    if (param && segs[i].n < 2) { *why = "a :param segment needs a name"; return false; }
    if (memchr(segs[i].p, '%', segs[i].n)) { *why = "write the pattern decoded (request paths are percent-decoded before matching)"; return false; }
    r->seg[i] = Seg{(uint16_t)(segs[i].p - p), (uint16_t)segs[i].n, param};
  }
  const char* m = r->def.method;
  if (!*m) { *why = "route method is empty"; return false; }
  for (const char* q = m; *q; q++)
    if (!((*q >= 'A' && *q <= 'Z') || *q == '*')) { *why = "route method must be upper-case (GET, POST, ...) or *"; return false; }
  return true;
}

bool route_same_shape(const Route* a, const Route* b) {
  if (a->nseg != b->nseg || strcmp(a->def.method, b->def.method)) return false;
  for (int i = 0; i < a->nseg; i++) {
    const Seg& x = a->seg[i];
    const Seg& y = b->seg[i];
    if (x.param != y.param) return false;
    if (!x.param && (x.len != y.len || memcmp(a->def.path + x.off, b->def.path + y.off, x.len))) return false;
  }
  return true;
}

// Can one request match both? Same number of segments, a :param on either
// side or the same text at each position, and methods that meet ("*"
// meets any). Within a service, the more specific route wins; across
// services an overlap would let one take the other's requests (and skip
// its auth), so it is refused.
bool route_overlap(const Route* a, const Route* b) {
  if (a->nseg != b->nseg) return false;
  if (strcmp(a->def.method, b->def.method) && strcmp(a->def.method, "*") && strcmp(b->def.method, "*")) return false;
  for (int i = 0; i < a->nseg; i++) {
    const Seg& x = a->seg[i];
    const Seg& y = b->seg[i];
    if (!x.param && !y.param && (x.len != y.len || memcmp(a->def.path + x.off, b->def.path + y.off, x.len))) return false;
  }
  return true;
}

// NIL if no conflict, else the index of another service's route r overlaps.
uint32_t route_conflict(const Route* r, uint16_t group) {
  for (uint32_t i = 0; i < g.nroutes; i++)
    if (g.routes[i].group != group && route_overlap(&g.routes[i], r)) return i;
  return NIL;
}

bool route_exists(const Route* r, uint16_t group) {
  for (uint32_t i = 0; i < g.nroutes; i++)
    if (g.routes[i].group == group && route_same_shape(&g.routes[i], r)) return true;
  return false;
}

struct Match {
  uint32_t route;
  int nparams;
  Slice name[MAX_SEGS], value[MAX_SEGS];
};

// -1 if a is more specific than b, 1 if less, 0 same.
int route_cmp(const Route* a, const Route* b) {
  for (int i = 0; i < a->nseg && i < b->nseg; i++)
    if (a->seg[i].param != b->seg[i].param) return a->seg[i].param ? 1 : -1;
  bool aw = !strcmp(a->def.method, "*"), bw = !strcmp(b->def.method, "*");
  return aw == bw ? 0 : (aw ? 1 : -1);
}

// Percent-decodes one path segment (RFC 3986 §2.1) into out, which has
// room for in.n bytes; a %2F stays inside its segment. -1 for a malformed
// escape or %00.
int pct_decode(Slice in, char* out) {
  size_t o = 0;
  for (size_t i = 0; i < in.n; i++) {
    char ch = in.p[i];
    if (ch == '%') {
      if (i + 2 >= in.n) return -1;
      int a = hex_digit(in.p[i + 1]), b = hex_digit(in.p[i + 2]);
      if (a < 0 || b < 0 || (a | b) == 0) return -1;
      ch = (char)(a * 16 + b);
      i += 2;
    }
    out[o++] = ch;
  }
  return (int)o;
}

// Matches a request path: its segments are percent-decoded first (into
// g.pathdec; the Match's values point there until the next call), so
// "/a%20b" is the segment "a b". *bad: a malformed escape, %00 or a
// segment that is not UTF-8 once decoded (the caller answers 400).
bool route_match(const char* method, const char* path, size_t path_len, Match* m, bool* bad = nullptr) {
  if (bad) *bad = false;
  Slice segs[MAX_SEGS];
  int n = path_split(path, path_len, segs, MAX_SEGS);
  if (n < 0) return false;
  g.pathdec.len = 0;
  buf_reserve(&g.pathdec, path_len);   // no reallocation below: segments point into it
  for (int k = 0; k < n; k++) {
    char* out = g.pathdec.p + g.pathdec.len;
    int d = memchr(segs[k].p, '%', segs[k].n) ? pct_decode(segs[k], out) : -2;
    if (d == -2) { memcpy(out, segs[k].p, segs[k].n); d = (int)segs[k].n; }
    if (d < 0 || !utf8_valid((const uint8_t*)out, (size_t)d)) { if (bad) *bad = true; return false; }
    segs[k] = Slice{out, (size_t)d};
    g.pathdec.len += (size_t)d;
  }
  uint32_t best = NIL;
  for (uint32_t i = 0; i < g.nroutes; i++) {
    const Route* r = &g.routes[i];
    if (r->nseg != n) continue;
    if (strcmp(r->def.method, method) && strcmp(r->def.method, "*")) continue;
    int k = 0;
    for (; k < n; k++) {
      const Seg& s = r->seg[k];
      if (!s.param && (s.len != segs[k].n || memcmp(r->def.path + s.off, segs[k].p, s.len))) break;
    }
    if (k < n) continue;
    if (best == NIL || route_cmp(r, &g.routes[best]) < 0) best = i;
  }
  if (best == NIL) return false;
  const Route* r = &g.routes[best];
  m->route = best;
  m->nparams = 0;
  for (int k = 0; k < n; k++)
    if (r->seg[k].param) {
      m->name[m->nparams] = Slice{r->def.path + r->seg[k].off + 1, (size_t)r->seg[k].len - 1};
      m->value[m->nparams++] = segs[k];
    }
  return true;
}

// ============================================================================
// 8. Auth
// JWT from "Authorization: Bearer" or ?token=. HS256 with --jwt-secret;
// RS256/ES256 with the public keys (PEM blocks) in --jwt-keys. "none" and
// any other algorithm are refused; exp and nbf are checked. The claims a
// connection keeps are packed into one small allocation (UserBlob) and
// expanded into the protocol's UserContext only while a frame is encoded.
// ============================================================================

struct UserBlob {
  uint8_t nroles;
  uint16_t len;
  char data[];            // user_id\0username\0tenant\0role\0role\0...
};

// Public keys from --jwt-keys, with what a JWKS entry says of each
// (kid, alg); PEM keys have neither and serve any token of their type.
constexpr int MAX_KEYS = 32;

struct Keys {
  mbedtls_pk_context pk[MAX_KEYS];
  char kid[MAX_KEYS][64];
  char alg[MAX_KEYS][8];  // RS256 / ES256, or empty: by the key's type
  int n;
};
Keys keys;

// base64url (no padding) → bytes. Returns length or -1.
int b64url_decode(const char* s, size_t n, unsigned char* out, size_t outn) {
  char tmp[8200];   // a whole token (jwt_verify takes up to 8192 bytes)
  if (n + 4 > sizeof tmp) return -1;
  for (size_t i = 0; i < n; i++) tmp[i] = s[i] == '-' ? '+' : s[i] == '_' ? '/' : s[i];
  size_t m = n;
  while (m % 4) tmp[m++] = '=';
  size_t olen;
  if (mbedtls_base64_decode(out, outn, &olen, (const unsigned char*)tmp, m)) return -1;
  return (int)olen;
}

// The text of a JSON string token with its escapes decoded (\n, \u00e9,
// surrogate pairs) into at most `room` bytes of UTF-8. Returns the bytes
// written; JSON_BAD for a malformed escape or an escaped NUL (refused:
// claims are packed NUL-separated); JSON_LONG when it does not fit (a
// claim cut short could merge two identities, so it is refused whole).
constexpr size_t JSON_BAD = SIZE_MAX, JSON_LONG = SIZE_MAX - 1;

size_t json_unescape(Slice s, char* out, size_t room) {
  size_t o = 0;
  auto hex4 = [&](size_t i) -> long {   // exactly four hex digits, else -1
    if (i + 4 > s.n) return -1;
    long v = 0;
    for (size_t k = i; k < i + 4; k++) {
      int x = hex_digit(s.p[k]);
      if (x < 0) return -1;
      v = v * 16 + x;
    }
    return v;
  };
  for (size_t i = 0; i < s.n;) {
    char ch = s.p[i++];
    uint32_t cp = (unsigned char)ch;
    if (ch == '\\' && i < s.n) {
      char e = s.p[i++];
      switch (e) {
        case 'n': cp = '\n'; break;
        case 't': cp = '\t'; break;
        case 'r': cp = '\r'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'u': {
          long v = hex4(i);
          if (v <= 0) return JSON_BAD;   // malformed, or \u0000
          i += 4;
          cp = (uint32_t)v;
          if (cp >= 0xd800 && cp < 0xdc00 && i + 6 <= s.n && s.p[i] == '\\' && s.p[i + 1] == 'u') {
            long lo = hex4(i + 2);
            if (lo >= 0xdc00 && lo < 0xe000) { cp = 0x10000 + ((cp - 0xd800) << 10) + (uint32_t)(lo - 0xdc00); i += 6; }
          }
          if (cp >= 0xd800 && cp < 0xe000) cp = 0xfffd;   // a lone surrogate is not UTF-8
          break;
        }
        default: cp = (unsigned char)e; break;      // \" \\ \/
      }
      char u[4];
      size_t n = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
      if (n == 1) u[0] = (char)cp;
      else if (n == 2) { u[0] = (char)(0xc0 | cp >> 6); u[1] = (char)(0x80 | (cp & 0x3f)); }
      else if (n == 3) { u[0] = (char)(0xe0 | cp >> 12); u[1] = (char)(0x80 | ((cp >> 6) & 0x3f)); u[2] = (char)(0x80 | (cp & 0x3f)); }
      else { u[0] = (char)(0xf0 | cp >> 18); u[1] = (char)(0x80 | ((cp >> 12) & 0x3f)); u[2] = (char)(0x80 | ((cp >> 6) & 0x3f)); u[3] = (char)(0x80 | (cp & 0x3f)); }
      if (o + n > room) return JSON_LONG;
      memcpy(out + o, u, n);
      o += n;
      continue;
    }
    if (o + 1 > room) return JSON_LONG;
    out[o++] = ch;
  }
  return o;
}

bool tok_eq(const char* js, const jsmntok_t& t, const char* s) {
  size_t n = strlen(s);
  return t.type == JSMN_STRING && (size_t)(t.end - t.start) == n && !memcmp(js + t.start, s, n);
}

Slice tok_slice(const char* js, const jsmntok_t& t) { return Slice{js + t.start, (size_t)(t.end - t.start)}; }

// One JWK (RFC 7517): {"kty":"RSA","n","e"} or {"kty":"EC","crv":"P-256",
// "x","y"}, with optional kid, alg and use, at token i of js. A key meant
// for something else ("use" other than "sig", another kty or curve) is
// skipped with a warning; a malformed one fails with *why.
bool jwk_load(Keys* K, const char* js, const jsmntok_t* t, int k, int i, const char** why) {
  Slice kty{}, n{}, e{}, crv{}, x{}, y{}, kid{}, alg{}, use{};
  for (int j = i + 1, f = 0; f < t[i].size && j + 1 < k; f++, j = json_skip(t, k, j + 1)) {
    if (t[j + 1].type != JSMN_STRING) continue;
    Slice v = tok_slice(js, t[j + 1]);
    Slice* dst = tok_eq(js, t[j], "kty") ? &kty : tok_eq(js, t[j], "n") ? &n : tok_eq(js, t[j], "e") ? &e : tok_eq(js, t[j], "crv") ? &crv
               : tok_eq(js, t[j], "x") ? &x : tok_eq(js, t[j], "y") ? &y : tok_eq(js, t[j], "kid") ? &kid : tok_eq(js, t[j], "alg") ? &alg
               : tok_eq(js, t[j], "use") ? &use : nullptr;
    if (dst) *dst = v;
  }
  auto is = [](Slice s, const char* lit) { return s.n == strlen(lit) && !memcmp(s.p, lit, s.n); };
  if (use.p && !is(use, "sig")) { LOG_WARN("jwt-keys: key '%.*s' is for \"%.*s\", not signatures: skipped", (int)kid.n, kid.p, (int)use.n, use.p); return true; }
  bool rsa = is(kty, "RSA"), ec = is(kty, "EC") && is(crv, "P-256");
  if (!rsa && !ec) { LOG_WARN("jwt-keys: key '%.*s' (kty %.*s) is not RSA or EC P-256: skipped", (int)kid.n, kid.p, (int)kty.n, kty.p); return true; }
  if (alg.p && !is(alg, rsa ? "RS256" : "ES256")) { LOG_WARN("jwt-keys: key '%.*s' has alg %.*s, which linkd does not verify: skipped", (int)kid.n, kid.p, (int)alg.n, alg.p); return true; }
  if (kid.n >= sizeof K->kid[0]) { *why = "kid longer than 63 bytes"; return false; }
  if (K->n == MAX_KEYS) { *why = "more than 32 usable keys"; return false; }
  static unsigned char nb[1024], eb[16], xb[66], yb[66];
  mbedtls_pk_context* pk = &K->pk[K->n];
  mbedtls_pk_init(pk);
  bool ok;
  if (rsa) {
    int nl = b64url_decode(n.p, n.n, nb, sizeof nb), el = b64url_decode(e.p, e.n, eb, sizeof eb);
    ok = nl > 0 && el > 0 && !mbedtls_pk_setup(pk, mbedtls_pk_info_from_type(MBEDTLS_PK_RSA));
    mbedtls_rsa_context* r = ok ? mbedtls_pk_rsa(*pk) : nullptr;
    ok = ok && !mbedtls_rsa_import_raw(r, nb, (size_t)nl, nullptr, 0, nullptr, 0, nullptr, 0, eb, (size_t)el) && !mbedtls_rsa_complete(r) &&
         mbedtls_rsa_get_len(r) >= 256;   // RSA under 2048 bits is refused
  } else {
    int xl = b64url_decode(x.p, x.n, xb, sizeof xb), yl = b64url_decode(y.p, y.n, yb, sizeof yb);
    ok = xl == 32 && yl == 32 && !mbedtls_pk_setup(pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
    mbedtls_ecp_keypair* kp = ok ? mbedtls_pk_ec(*pk) : nullptr;
    ok = ok && !mbedtls_ecp_group_load(&kp->grp, MBEDTLS_ECP_DP_SECP256R1) && !mbedtls_mpi_read_binary(&kp->Q.X, xb, 32) &&
         !mbedtls_mpi_read_binary(&kp->Q.Y, yb, 32) && !mbedtls_mpi_lset(&kp->Q.Z, 1) && !mbedtls_ecp_check_pubkey(&kp->grp, &kp->Q);
  }
  if (!ok) { mbedtls_pk_free(pk); *why = rsa ? "RSA key does not load (n, e; 2048 bits at least)" : "EC key does not load (x, y on P-256)"; return false; }
  snprintf(K->kid[K->n], sizeof K->kid[0], "%.*s", (int)kid.n, kid.p);
  snprintf(K->alg[K->n], sizeof K->alg[0], "%s", rsa ? "RS256" : "ES256");
  K->n++;
  return true;
}

// --jwt-keys: PEM "BEGIN PUBLIC KEY" blocks, or a JWKS document {"keys":[...]}.
bool keys_load(Keys* K, char* err, size_t errn) {
  if (!*cfg.jwt_keys) return true;
  FILE* f = fopen(cfg.jwt_keys, "r");
  if (!f) { snprintf(err, errn, "jwt-keys: cannot open %s: %s", cfg.jwt_keys, strerror(errno)); return false; }
  static char text[256 * 1024];
  size_t n = fread(text, 1, sizeof text - 1, f);
  bool more = fgetc(f) != EOF;
  fclose(f);
  if (more) { snprintf(err, errn, "jwt-keys: %s is over %zu KiB", cfg.jwt_keys, sizeof text / 1024); return false; }
  text[n] = 0;
  const char* p0 = text;
  while (*p0 == ' ' || *p0 == '\n' || *p0 == '\r' || *p0 == '\t') p0++;
  if (*p0 == '{') {
    static jsmntok_t t[8192];
    jsmn_parser jp;
    jsmn_init(&jp);
    int k = json_valid(text, n) ? jsmn_parse(&jp, text, n, t, 8192) : -1;
    if (k < 1 || t[0].type != JSMN_OBJECT) { snprintf(err, errn, "jwt-keys: %s is not a JWKS document (JSON object with \"keys\")", cfg.jwt_keys); return false; }
    bool has_keys = false;
    for (int i = 1; i + 1 < k; i = json_skip(t, k, i + 1)) {
      if (!tok_eq(text, t[i], "keys") || t[i + 1].type != JSMN_ARRAY) continue;
      has_keys = true;
      for (int j = i + 2, m = 0; m < t[i + 1].size && j < k; m++, j = json_skip(t, k, j)) {
        const char* why = "not a JSON object";
        if (t[j].type != JSMN_OBJECT || !jwk_load(K, text, t, k, j, &why)) { snprintf(err, errn, "jwt-keys: key %d in %s: %s", m + 1, cfg.jwt_keys, why); return false; }
      }
    }
    if (!has_keys) { snprintf(err, errn, "jwt-keys: %s has no \"keys\" array", cfg.jwt_keys); return false; }
  } else {
    const char* begin = "-----BEGIN PUBLIC KEY-----";
    const char* end = "-----END PUBLIC KEY-----";
    for (char* p = strstr(text, begin); p; p = strstr(p, begin)) {
      char* e = strstr(p, end);
      if (!e) break;
      if (K->n == MAX_KEYS) { snprintf(err, errn, "jwt-keys: more than %d keys in %s", MAX_KEYS, cfg.jwt_keys); return false; }
      e += strlen(end);
      char saved = *e;
      *e = 0;
      mbedtls_pk_init(&K->pk[K->n]);
      int r = mbedtls_pk_parse_public_key(&K->pk[K->n], (const unsigned char*)p, (size_t)(e - p) + 1);
      *e = saved;
      if (r) { mbedtls_pk_free(&K->pk[K->n]); snprintf(err, errn, "jwt-keys: key %d in %s does not parse (mbedtls -0x%04x)", K->n + 1, cfg.jwt_keys, -r); return false; }
      K->kid[K->n][0] = K->alg[K->n][0] = 0;
      K->n++;
      p = e;
    }
  }
  if (!K->n) { snprintf(err, errn, "jwt-keys: no usable RS256/ES256 public key in %s", cfg.jwt_keys); return false; }
  return true;
}

void keys_free(Keys* K) {
  for (int i = 0; i < K->n; i++) mbedtls_pk_free(&K->pk[i]);
  K->n = 0;
}

// kid: the token's "kid", or empty. A token naming a kid is checked against
// that key only.
bool sig_verify(const char* alg, const char* kid, const unsigned char* signed_part, size_t sn, const unsigned char* sig, int sl) {
  if (!strcmp(alg, "HS256")) {
    if (!*cfg.jwt_secret) return false;
    unsigned char mac[32];
    mbedtls_md_hmac(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), (const unsigned char*)cfg.jwt_secret, strlen(cfg.jwt_secret),
                    signed_part, sn, mac);
    unsigned diff = sl != 32;
    for (int i = 0; i < 32 && i < sl; i++) diff |= (unsigned)(mac[i] ^ sig[i]);   // constant time
    return diff == 0;
  }
  unsigned char hash[32];
  mbedtls_sha256_ret(signed_part, sn, hash, 0);
  for (int k = 0; k < keys.n; k++) {
    if (*kid && strcmp(kid, keys.kid[k])) continue;
    if (*keys.alg[k] && strcmp(alg, keys.alg[k])) continue;
    mbedtls_pk_type_t t = mbedtls_pk_get_type(&keys.pk[k]);
    if (!strcmp(alg, "RS256") && t == MBEDTLS_PK_RSA) {
      if (mbedtls_pk_verify(&keys.pk[k], MBEDTLS_MD_SHA256, hash, 32, sig, (size_t)sl) == 0) return true;
    } else if (!strcmp(alg, "ES256") && (t == MBEDTLS_PK_ECKEY || t == MBEDTLS_PK_ECDSA) && sl == 64) {
      // JWS carries r||s raw (RFC 7518 §3.4), not DER
      mbedtls_ecp_keypair* kp = mbedtls_pk_ec(keys.pk[k]);
      mbedtls_mpi r, s;
      mbedtls_mpi_init(&r);
      mbedtls_mpi_init(&s);
      bool ok = kp->grp.id == MBEDTLS_ECP_DP_SECP256R1 && !mbedtls_mpi_read_binary(&r, sig, 32) && !mbedtls_mpi_read_binary(&s, sig + 32, 32) &&
                mbedtls_ecdsa_verify(&kp->grp, hash, 32, &kp->Q, &r, &s) == 0;
      mbedtls_mpi_free(&r);
      mbedtls_mpi_free(&s);
      if (ok) return true;
    }
  }
  return false;
}

// The members of a JSON object (token 0) this code reads, each at most once:
// a repeated member is ambiguous (which one did the issuer mean?) and refused.
struct Members {
  const char* const* names;
  int n;
  int at[8];              // token index of each name's value, or -1
};

bool members_find(const char* js, const jsmntok_t* t, int k, Members* m) {
  for (int q = 0; q < m->n; q++) m->at[q] = -1;
  for (int i = 1; i + 1 < k; i = json_skip(t, k, i + 1))
    for (int q = 0; q < m->n; q++)
      if (tok_eq(js, t[i], m->names[q])) {
        if (m->at[q] >= 0) return false;
        m->at[q] = i + 1;
      }
  return true;
}

// Verifies a token and packs its claims. Null with *why set when invalid.
UserBlob* jwt_verify(const char* tok, size_t n, const char** why) {
  const char* d1 = (const char*)memchr(tok, '.', n);
  const char* d2 = d1 ? (const char*)memchr(d1 + 1, '.', n - (size_t)(d1 + 1 - tok)) : nullptr;
  if (!d2 || n > 8192) { *why = "token is not a JWT"; return nullptr; }
  static unsigned char head[1024], body[6144], sig[1024];
  int hl = b64url_decode(tok, (size_t)(d1 - tok), head, sizeof head - 1);
  int bl = b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), body, sizeof body - 1);
  int sl = b64url_decode(d2 + 1, n - (size_t)(d2 + 1 - tok), sig, sizeof sig);
  if (hl < 0 || bl < 0 || sl < 0) { *why = "token is not base64url"; return nullptr; }
  jsmntok_t t[128];
  jsmn_parser jp;
  jsmn_init(&jp);
  int k = json_valid((const char*)head, (size_t)hl) ? jsmn_parse(&jp, (const char*)head, (size_t)hl, t, 128) : -1;
  static const char* const head_names[] = {"alg", "kid", "crit"};
  Members hm{head_names, 3, {}};
  if (k < 1 || t[0].type != JSMN_OBJECT || !members_find((const char*)head, t, k, &hm)) { *why = "token header is not a JSON object"; return nullptr; }
  if (hm.at[2] >= 0) { *why = "token has critical extensions linkd does not know"; return nullptr; }   // RFC 7515 §4.1.11
  char alg[16] = "", kid[64] = "";
  if (hm.at[0] >= 0 && t[hm.at[0]].type == JSMN_STRING)
    snprintf(alg, sizeof alg, "%.*s", t[hm.at[0]].end - t[hm.at[0]].start, head + t[hm.at[0]].start);
  if (strcmp(alg, "HS256") && strcmp(alg, "RS256") && strcmp(alg, "ES256")) { *why = "token algorithm refused"; return nullptr; }
  if (hm.at[1] >= 0) {
    const jsmntok_t& kt = t[hm.at[1]];
    if (kt.type != JSMN_STRING || kt.end - kt.start >= (int)sizeof kid) { *why = "token kid is not a short string"; return nullptr; }
    snprintf(kid, sizeof kid, "%.*s", kt.end - kt.start, head + kt.start);
  }
  if (!sig_verify(alg, kid, (const unsigned char*)tok, (size_t)(d2 - tok), sig, sl)) { *why = "token signature invalid"; return nullptr; }
  const char* js = (const char*)body;
  jsmn_init(&jp);
  k = json_valid(js, (size_t)bl) ? jsmn_parse(&jp, js, (size_t)bl, t, 128) : -1;
  static const char* const claim_names[] = {"exp", "nbf", "sub", "preferred_username", "username", "tenant_id", "roles"};
  Members cm{claim_names, 7, {}};
  if (k < 1 || t[0].type != JSMN_OBJECT) { *why = "token claims are not one JSON object in UTF-8"; return nullptr; }
  if (!members_find(js, t, k, &cm)) { *why = "token repeats a claim"; return nullptr; }
  double now = (double)wall_ms() / 1000.0;
  for (int q = 0; q < 2; q++) {
    if (cm.at[q] < 0) continue;
    const jsmntok_t& v = t[cm.at[q]];
    char c0 = js[v.start];
    if (v.type != JSMN_PRIMITIVE || (c0 != '-' && (c0 < '0' || c0 > '9'))) { *why = "token exp/nbf is not a number"; return nullptr; }
    double at = strtod(js + v.start, nullptr);   // a JSON number (json_valid); stops at the ',' or '}' after it
    if (q == 0 && now >= at) { *why = "token expired"; return nullptr; }
    if (q == 1 && now < at) { *why = "token not valid yet"; return nullptr; }
  }
  auto str_claim = [&](int q) { return cm.at[q] >= 0 && t[cm.at[q]].type == JSMN_STRING ? tok_slice(js, t[cm.at[q]]) : Slice{}; };
  for (int q = 2; q < 6; q++)
    if (cm.at[q] >= 0 && t[cm.at[q]].type != JSMN_STRING) { *why = "token sub/username/tenant_id is not a string"; return nullptr; }
  Slice sub = str_claim(2), name = str_claim(3).p ? str_claim(3) : str_claim(4), tenant = str_claim(5);
  if (!sub.p || !sub.n) { *why = "token has no sub"; return nullptr; }
  int roles_at = cm.at[6];
  if (roles_at >= 0 && t[roles_at].type != JSMN_ARRAY) { *why = "token roles is not an array"; return nullptr; }
  if (roles_at >= 0 && t[roles_at].size > 16) { *why = "token has more than 16 roles"; return nullptr; }
  // Packed as user_id\0username\0tenant\0role\0...; each must fit the
  // protocol's UserContext (127 bytes, roles 63) whole.
  char packed[3 * 128 + 16 * 64];
  size_t len = 0;
  uint8_t nroles = 0;
  const char* bad = nullptr;
  auto put = [&](Slice v, size_t max, const char* what) {
    size_t w = json_unescape(v, packed + len, max - 1);
    if (w == JSON_BAD) { bad = "token claims have a malformed or NUL escape"; w = 0; }
    else if (w == JSON_LONG) { bad = what; w = 0; }
    len += w;
    packed[len++] = 0;
  };
  put(sub, 128, "token sub is over 127 bytes");
  put(name, 128, "token username is over 127 bytes");
  put(tenant, 128, "token tenant_id is over 127 bytes");
  if (roles_at >= 0)
    for (int i = roles_at + 1, r = 0; r < t[roles_at].size && i < k; r++, i = json_skip(t, k, i)) {
      if (t[i].type != JSMN_STRING) { *why = "token roles must be strings"; return nullptr; }
      put(tok_slice(js, t[i]), 64, "token has a role over 63 bytes");
      nroles++;
    }
  if (bad) { *why = bad; return nullptr; }
  UserBlob* u = (UserBlob*)malloc(sizeof(UserBlob) + len);
  if (!u) { *why = "out of memory"; return nullptr; }
  u->nroles = nroles;
  u->len = (uint16_t)len;
  memcpy(u->data, packed, len);
  return u;
}

// The user context of a request or connection: the token's claims, and a
// verified TLS client certificate's CN and fingerprint.
void user_expand(const UserBlob* u, const Conn* c, linkd_UserContext* out) {
  *out = linkd_UserContext{};
  if (const char* peer = c && c->tls ? tls_peer(c->tls) : nullptr) {
    snprintf(out->client_cert_cn, sizeof out->client_cert_cn, "%s", peer);
    snprintf(out->client_cert_sha256, sizeof out->client_cert_sha256, "%s", peer + strlen(peer) + 1);
  }
  if (!u) return;
  const char* p = u->data;
  snprintf(out->user_id, sizeof out->user_id, "%s", p);
  p += strlen(p) + 1;
  snprintf(out->username, sizeof out->username, "%s", p);
  p += strlen(p) + 1;
  snprintf(out->tenant_id, sizeof out->tenant_id, "%s", p);
  p += strlen(p) + 1;
  for (int i = 0; i < u->nroles && i < 16; i++, p += strlen(p) + 1) snprintf(out->roles[i], sizeof out->roles[i], "%s", p);
  out->roles_count = (pb_size_t)std::min<int>(u->nroles, 16);
  out->authenticated = true;
}

bool user_has_role(const UserBlob* u, const char* role) {
  const char* p = u->data;
  for (int i = 0; i < 3; i++) p += strlen(p) + 1;
  for (int i = 0; i < u->nroles; i++, p += strlen(p) + 1) if (!strcmp(p, role)) return true;
  return false;
}

// The token of a request: Authorization: Bearer, else ?token= in the query.
Slice token_of(Slice authz, Slice query) {
  if (authz.p && authz.n > 7 && !strncasecmp(authz.p, "Bearer ", 7)) return Slice{authz.p + 7, authz.n - 7};
  for (size_t i = 0; i < query.n;) {
    size_t s = i;
    while (i < query.n && query.p[i] != '&') i++;
    if (i - s > 6 && !memcmp(query.p + s, "token=", 6)) return Slice{query.p + s + 6, i - s - 6};
    i++;
  }
  return Slice{nullptr, 0};
}

// ============================================================================
// 9. Services
// Each service instance holds one link on the Unix socket. Frames are a
// varint length + one ServiceMessage; linkd reads the oneof's tag itself and
// decodes only the member present, so no frame-sized struct is ever built.
// Large fields (bodies, payloads, lists) are nanopb callbacks that point into
// the receive buffer or write straight from linkd's own buffers (zero copy).
// A frame over --max-frame-size or one that does not decode closes that
// link only, with a logged reason.
// ============================================================================

enum Tag : uint32_t {
  TAG_REGISTER = 1, TAG_REGISTER_RESULT = 2, TAG_HTTP_REQUEST = 3, TAG_HTTP_RESPONSE = 4,
  TAG_ERROR = 5, TAG_CLOSE = 6, TAG_ROOMS_QUERY = 7, TAG_ROOMS_RESULT = 8, TAG_HEARTBEAT = 9,
  TAG_COMMAND_RESULT = 10, TAG_ROOM_COUNT_QUERY = 11, TAG_ROOM_COUNT_RESULT = 12, TAG_WS_EVENT = 20, TAG_WS_INBOUND = 21, TAG_WS_OUTBOUND = 22,
  TAG_WS_ROOM_OP = 23, TAG_WS_RESPONSE = 24,
};

size_t varint_size(uint64_t v) { size_t n = 1; while (v >= 0x80) { v >>= 7; n++; } return n; }

// --- encoding (linkd → service) ------------------------------------------------

bool enc_slice(pb_ostream_t* s, const pb_field_t* f, void* const* arg) noexcept {
  const Slice* sl = (const Slice*)*arg;
  if (!sl || !sl->p) return true;
  return pb_encode_tag_for_field(s, f) && pb_encode_string(s, (const pb_byte_t*)sl->p, sl->n);
}

// A {name=1, value=2} submessage (Header, Param) written without a struct.
bool enc_pair(pb_ostream_t* s, uint32_t tag, Slice a, Slice b) {
  size_t inner = 1 + varint_size(a.n) + a.n + 1 + varint_size(b.n) + b.n;
  return pb_encode_tag(s, PB_WT_STRING, tag) && pb_encode_varint(s, inner) &&
         pb_encode_tag(s, PB_WT_STRING, 1) && pb_encode_string(s, (const pb_byte_t*)a.p, a.n) &&
         pb_encode_tag(s, PB_WT_STRING, 2) && pb_encode_string(s, (const pb_byte_t*)b.p, b.n);
}

bool enc_headers(pb_ostream_t* s, const pb_field_t* f, void* const* arg) noexcept {
  const Http* h = (const Http*)*arg;
  for (int i = 0; i < h->nhdrs; i++) {
    const HdrRef& r = h->hdrs[i];
    if (!enc_pair(s, f->tag, Slice{h->head.p + r.name_off, r.name_len}, Slice{h->head.p + r.val_off, r.val_len})) return false;
  }
  return true;
}

bool enc_params(pb_ostream_t* s, const pb_field_t* f, void* const* arg) noexcept {
  const Match* m = (const Match*)*arg;
  for (int i = 0; i < m->nparams; i++)
    if (!enc_pair(s, f->tag, m->name[i], m->value[i])) return false;
  return true;
}

bool enc_rooms(pb_ostream_t* s, const pb_field_t* f, void* const* arg) noexcept {
  const Conn* c = (const Conn*)*arg;
  for (uint32_t m = c->rooms; m != NIL; m = g.members[m].cnext) {
    const Room* r = &g.rooms[g.members[m].room];
    if (!pb_encode_tag_for_field(s, f) || !pb_encode_string(s, (const pb_byte_t*)r->name, r->name_len)) return false;
  }
  return true;
}

uint16_t backend_index(const Backend* b) { return (uint16_t)(b - g.backends); }

// Frames to a service are encoded straight into b->out and written once per
// loop iteration (backend_flush, from the check handle), so a burst of
// client messages costs the service link one write, not one per message.
void backend_flush(Backend* b) {
  b->dirty = false;
  if (!b->out.len || (b->state != BState::Ready && b->state != BState::Open)) { b->out.len = 0; return; }
  int r = stream_send_bytes((uv_stream_t*)&b->pipe, b->out.p, b->out.len);
  b->out.len = 0;
  if (b->out.cap > 1024 * 1024) buf_free(&b->out);   // a one-off burst does not keep its memory
  if (r) backend_close(b, uv_strerror(r));
}

void backends_flush_cb(uv_check_t*) noexcept {
  for (uint32_t i = 0; i < g.ndirty; i++) backend_flush(&g.backends[g.dirty[i]]);
  g.ndirty = 0;
}

// Appends one delimited ServiceMessage whose oneof member `tag` is msg.
// Gone: the link is gone or too far behind (the caller answers 503);
// TooBig: the frame is over what the service said it reads (413 / 1009).
// past_cap: queue it anyway (the SHUTDOWN notice).
enum class Sent { Ok, Gone, TooBig };

Sent backend_send_msg(Backend* b, uint32_t tag, const pb_msgdesc_t* fields, const void* msg, bool past_cap = false) {
  if (b->state != BState::Ready && b->state != BState::Open) return Sent::Gone;
  if (!past_cap && b->pipe.write_queue_size + b->out.len > (size_t)cfg.max_frame_size * 4) {
    LOG_WARN("service link %u is %zu bytes behind: refusing more", backend_index(b), b->pipe.write_queue_size + b->out.len);
    return Sent::Gone;
  }
  size_t sub;
  if (!pb_get_encoded_size(&sub, fields, msg)) { LOG_ERROR("cannot size frame %u", tag); return Sent::Gone; }
  size_t inner = varint_size(tag << 3 | 2) + varint_size(sub) + sub;
  if (inner > b->max_out) {
    LOG_WARN("frame %u of %zu bytes is over what service link %u reads (%u): not sent", tag, inner, backend_index(b), b->max_out);
    return Sent::TooBig;
  }
  buf_reserve(&b->out, 32 + sub);
  pb_ostream_t os = pb_ostream_from_buffer((pb_byte_t*)b->out.p + b->out.len, 32 + sub);
  if (!pb_encode_varint(&os, inner) || !pb_encode_tag(&os, PB_WT_STRING, tag) || !pb_encode_varint(&os, sub) || !pb_encode(&os, fields, msg)) {
    LOG_ERROR("cannot encode frame %u: %s", tag, PB_GET_ERROR(&os));
    return Sent::Gone;
  }
  b->out.len += os.bytes_written;
  if (!b->dirty) { b->dirty = true; g.dirty[g.ndirty++] = backend_index(b); }
  g.svc_frames_out++;
  return Sent::Ok;
}

void conn_remote(const Conn* c, char* out, size_t n) {
  char ip[64] = "?";
  if (c->family == 4) inet_ntop(AF_INET, c->addr, ip, sizeof ip);
  else if (c->family == 6) inet_ntop(AF_INET6, c->addr, ip, sizeof ip);
  snprintf(out, n, c->family == 6 ? "[%s]:%u" : "%s:%u", ip, c->port);
}

void command_result(Backend* b, uint64_t op_id, const char* type, const char* msg, int code, uint32_t delivered = 0) {
  if (!op_id) return;
  linkd_CommandResult r = {};
  r.op_id = op_id;
  r.ok = type == nullptr;
  r.delivered = delivered;
  if (type) {
    r.has_error = true;
    r.error.code = code;
    snprintf(r.error.type, sizeof r.error.type, "%s", type);
    snprintf(r.error.message, sizeof r.error.message, "%s", msg);
  }
  backend_send_msg(b, TAG_COMMAND_RESULT, linkd_CommandResult_fields, &r);
}

void send_conn_event(Backend* b, Conn* c, linkd_WebSocketConnectionEvent_EventType type, const char* previous = nullptr) {
  const Group* gr = &g.groups[c->group];
  linkd_WebSocketConnectionEvent e = {};
  conn_id(c, e.connection_id, sizeof e.connection_id);
  if (previous) snprintf(e.previous_connection_id, sizeof e.previous_connection_id, "%s", previous);
  snprintf(e.service_name, sizeof e.service_name, "%s", gr->name);
  snprintf(e.path, sizeof e.path, "%s", gr->ws_path);
  e.has_user = true;
  user_expand(c->user, c, &e.user);
  conn_remote(c, e.remote_address, sizeof e.remote_address);
  e.event_type = type;
  e.connected_at_ms = c->connected_ms;
  e.close_code = c->close_code;
  e.rooms.funcs.encode = enc_rooms;
  e.rooms.arg = c;
  backend_send_msg(b, TAG_WS_EVENT, linkd_WebSocketConnectionEvent_fields, &e);
}

// Its clients' ping interval: the service's choice, else the setting (which
// a reload may change).
uint64_t group_heartbeat(const Group* gr) { return gr->ws_heartbeat_ms ? gr->ws_heartbeat_ms : (uint64_t)cfg.heartbeat_interval; }

// Picks a live instance of the group, round robin; NIL16 if none.
uint16_t group_pick(uint16_t gi) {
  Group* gr = &g.groups[gi];
  if (!gr->live) return NIL16;
  for (uint32_t k = 0; k < g.nbackends; k++) {
    uint32_t i = (gr->rr + k) % g.nbackends;
    if (g.backends[i].state == BState::Ready && g.backends[i].group == gi) {
      gr->rr = i + 1;
      return (uint16_t)i;
    }
  }
  return NIL16;
}

// The instance serving a WebSocket connection: its own while that lives,
// else another live one of the service (told of the connection first).
Backend* conn_backend(Conn* c) {
  if (c->backend != NIL16 && g.backends[c->backend].state == BState::Ready) return &g.backends[c->backend];
  uint16_t bi = group_pick(c->group);
  c->backend = bi;
  if (bi == NIL16) return nullptr;
  send_conn_event(&g.backends[bi], c, linkd_WebSocketConnectionEvent_EventType_EXISTING);
  return &g.backends[bi];
}

// --- decoding (service → linkd) ------------------------------------------------

// The frame backend_frame is decoding. A slice must lie in it: nanopb
// hands a callback field sent with a scalar wire type (varint, fixed32,
// fixed64) over in a 10-byte buffer on its own stack, gone once the
// callback returns; such a field is refused (the frame does not decode).
Slice frame_in;

bool dec_slice(pb_istream_t* s, const pb_field_t*, void** arg) noexcept {
  Slice* sl = (Slice*)*arg;
  sl->p = (const char*)s->state;   // buffer stream: state is the read position
  sl->n = s->bytes_left;
  uintptr_t at = (uintptr_t)sl->p, lo = (uintptr_t)frame_in.p;
  if (at < lo || at - lo > frame_in.n || sl->n > frame_in.n - (at - lo)) return false;
  return pb_read(s, nullptr, s->bytes_left);
}

bool dec_route(pb_istream_t* s, const pb_field_t*, void**) noexcept {
  if (g.reg_nroutes >= (uint32_t)MAX_REG_ROUTES) { g.reg_overflow = true; return pb_read(s, nullptr, s->bytes_left); }
  Route* r = &g.reg_routes[g.reg_nroutes];
  memset((void*)r, 0, sizeof *r);
  if (!pb_decode(s, linkd_HttpRoute_fields, &r->def)) return false;
  g.reg_nroutes++;
  return true;
}

// RFC 9110 §5.6.2 token characters (header names, methods).
bool is_tchar(unsigned char ch) { return isalnum(ch) || (ch && strchr("!#$%&'*+-.^_`|~", ch)); }

bool header_name_ok(Slice n) {
  if (n.n == 0 || n.n > 256) return false;
  for (size_t i = 0; i < n.n; i++) if (!is_tchar((unsigned char)n.p[i])) return false;
  return true;
}

// field-value (RFC 9110 §5.5): visible characters, SP, HTAB, obs-text.
bool header_value_ok(Slice v) {
  if (v.n > 8192) return false;
  for (size_t i = 0; i < v.n; i++) {
    unsigned char ch = (unsigned char)v.p[i];
    if ((ch < 0x20 && ch != '\t') || ch == 0x7f) return false;
  }
  return true;
}

// Response headers from a service, appended as "Name: value\r\n". Headers
// linkd owns (framing, connection) are dropped. A header that is not valid
// HTTP marks the answer bad (502 for that request; the link stays), so the
// Header message is read field by field, with no size limit to fail on.
struct RespHeaders {
  Buf out;
  const char* bad;        // set: why this answer cannot be sent
};

bool dec_resp_header(pb_istream_t* s, const pb_field_t*, void** arg) noexcept {
  RespHeaders* rh = (RespHeaders*)*arg;
  Slice f[3] = {};        // [1] name, [2] value
  while (s->bytes_left) {
    pb_wire_type_t wt;
    uint32_t tag;
    bool eof;
    if (!pb_decode_tag(s, &wt, &tag, &eof)) return false;
    if (wt != PB_WT_STRING || (tag != 1 && tag != 2)) { if (!pb_skip_field(s, wt)) return false; continue; }
    pb_istream_t sub;
    if (!pb_make_string_substream(s, &sub)) return false;
    f[tag] = Slice{(const char*)sub.state, sub.bytes_left};   // buffer stream: state is the read position
    if (!pb_read(&sub, nullptr, sub.bytes_left) || !pb_close_string_substream(s, &sub)) return false;
  }
  if (!header_name_ok(f[1]) || !header_value_ok(f[2])) { rh->bad = "service sent an invalid response header"; return true; }
  static const char* owned[] = {"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer", "proxy-connection"};
  for (const char* o : owned) if (str_ieq(f[1].p, f[1].n, o)) return true;
  buf_put(&rh->out, f[1].p, f[1].n);
  buf_puts(&rh->out, ": ");
  buf_put(&rh->out, f[2].p, f[2].n);
  buf_puts(&rh->out, "\r\n");
  return true;
}

// A push's except list starts empty: a fresh serial for the marks, and no
// ids of other nodes' connections (before decoding the push, or for a push
// that has no list).
void except_begin() {
  g.except_serial++;
  g.nexcept_remote = 0;
  g.except_remote[0] = Slice{nullptr, 0};
}

// except_connections: every id named is marked with the current serial;
// the ids of other nodes' connections are kept for them (g.except_remote).
bool dec_except(pb_istream_t* s, const pb_field_t* f, void**) noexcept {
  char id[96];
  size_t n = s->bytes_left;
  if (n >= sizeof id) return pb_read(s, nullptr, n);   // cannot be one of ours
  Slice at;                                             // the id's bytes in the frame, alive while it is handled
  void* arg = &at;
  if (!dec_slice(s, f, &arg)) return false;             // (refuses bytes outside the frame)
  memcpy(id, at.p, n);
  id[n] = 0;
  if (conn_id_remote(id)) {
    if (g.nexcept_remote < MAX_EXCEPT_REMOTE) g.except_remote[g.nexcept_remote++] = at;
    g.except_remote[g.nexcept_remote] = Slice{nullptr, 0};
  } else if (Conn* c = conn_lookup(id)) {
    c->except_mark = g.except_serial;
  }
  return true;
}

// Handlers in later sections.
void http_service_answer(Conn* c, uint32_t status, Buf* headers, Slice body);
void http_error(Conn* c, unsigned status, const char* msg, const char* headers = "", bool close = false);
void ws_service_reply(Conn* c, const char* corr, const linkd_WebSocketResponse* m, Slice data);
void ws_outbound(Backend* b, const linkd_WebSocketOutbound* m, Slice payload);
void pend_expire(uint32_t p, bool timeout);

// Service names are also NATS subject parts (section 14): dots separate
// parts, and no part is empty.
bool valid_name(const char* s) {
  if (!*s || *s == '.') return false;
  for (; *s; s++) {
    if (*s == '.' && (s[1] == '.' || !s[1])) return false;
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '.' || *s == '_' || *s == '-')) return false;
  }
  return true;
}

bool reserved_path(const char* p) { return !strcmp(p, "/health") || !strcmp(p, "/metrics"); }

// A service with no instance and no connection is forgotten (its routes
// go) when its slot is needed for a new name. NIL16 if none is idle.
void cluster_group_interest(uint16_t gi, bool on);   // section 14

uint16_t group_reclaim() {
  for (uint32_t i = 0; i < g.ngroups; i++) {
    Group* gr = &g.groups[i];
    if (!gr->used || gr->live) continue;
    bool has_conns = false;
    for (uint32_t k = 0; k < g.conn_hw && !has_conns; k++)
      has_conns = (g.conns[k].state == CState::Ws || g.conns[k].state == CState::Ghost) && g.conns[k].group == i;
    if (has_conns) continue;
    uint32_t kept = 0;
    for (uint32_t r = 0; r < g.nroutes; r++)
      if (g.routes[r].group != i) g.routes[kept++] = g.routes[r];
    g.nroutes = kept;
    LOG_INFO("service '%s' forgotten (no instance, no connection) to make room", gr->name);
    cluster_group_interest((uint16_t)i, false);
    gr->used = false;
    return (uint16_t)i;
  }
  return NIL16;
}

// May the process on this link register this name? Yes without a
// service_allow list; with one, only a uid or gid listed for the name (or
// a prefix* of it).
bool allow_ok(const Backend* b, const char* name) {
  if (!cfg.nallow) return true;
  for (int i = 0; i < cfg.nallow; i++) {
    const Allow* a = &cfg.allow[i];
    size_t pn = strlen(a->pattern);
    bool match = a->pattern[pn - 1] == '*' ? !strncmp(name, a->pattern, pn - 1) : !strcmp(name, a->pattern);
    if (match && (a->by_gid ? b->gid : b->uid) == a->id) return true;
  }
  return false;
}

// Checks a registration against the tables; null if acceptable, else why.
const char* register_check(const Backend* b, const linkd_RegisterService* m, uint16_t* gi_out, char* why, size_t whyn) {
  if (!valid_name(m->name)) return "service name must be 1-63 characters of [A-Za-z0-9._-], dots only between parts";
  if (!allow_ok(b, m->name)) {
    g.reg_refused_identity++;
    snprintf(why, whyn, "uid %u gid %u may not register '%s' (service_allow)", b->uid, b->gid, m->name);
    return why;
  }
  if (g.reg_overflow) { snprintf(why, whyn, "too many routes (at most %d)", MAX_REG_ROUTES); return why; }
  uint16_t gi = NIL16, free_gi = NIL16;
  for (uint32_t i = 0; i < g.ngroups; i++) {
    if (g.groups[i].used && !strcmp(g.groups[i].name, m->name)) { gi = (uint16_t)i; break; }
    if (!g.groups[i].used && free_gi == NIL16) free_gi = (uint16_t)i;
  }
  if (gi == NIL16 && free_gi == NIL16) free_gi = group_reclaim();
  if (gi == NIL16 && free_gi == NIL16) return "service table full (--max-services)";
  uint16_t self = gi != NIL16 ? gi : free_gi;
  uint32_t fresh = 0;
  for (uint32_t i = 0; i < g.reg_nroutes; i++) {
    Route* r = &g.reg_routes[i];
    const char* bad;
    if (!route_compile(r, &bad)) { snprintf(why, whyn, "route %s %s: %s", r->def.method, r->def.path, bad); return why; }
    if (reserved_path(r->def.path)) { snprintf(why, whyn, "route %s %s: path is linkd's own", r->def.method, r->def.path); return why; }
    uint32_t other = route_conflict(r, self);
    if (other != NIL) {
      snprintf(why, whyn, "route %s %s conflicts with %s %s of service %s", r->def.method, r->def.path,
               g.routes[other].def.method, g.routes[other].def.path, g.groups[g.routes[other].group].name);
      return why;
    }
    for (uint32_t j = 0; j < i; j++)
      if (route_same_shape(&g.reg_routes[j], r) && strcmp(g.reg_routes[j].def.path, r->def.path)) {
        snprintf(why, whyn, "routes %s %s and %s conflict (same shape)", r->def.method, g.reg_routes[j].def.path, r->def.path);
        return why;
      }
    if (!route_exists(r, self)) fresh++;
  }
  if (g.nroutes + fresh > g.max_routes) return "route table full";
  if (m->has_websocket && m->websocket.enabled) {
    const char* p = m->websocket.path;
    if (p[0] != '/' || strpbrk(p, "?# ")) return "websocket path must start with '/' and have no query";
    if (reserved_path(p)) return "websocket path is linkd's own";
    for (uint32_t i = 0; i < g.ngroups; i++)
      if (g.groups[i].used && i != self && !strcmp(g.groups[i].ws_path, p)) {
        snprintf(why, whyn, "websocket path %s belongs to service %s", p, g.groups[i].name);
        return why;
      }
    Match mm;
    if (route_match("GET", p, strlen(p), &mm) && g.routes[mm.route].group != self) {
      snprintf(why, whyn, "websocket path %s is an HTTP route of service %s", p, g.groups[g.routes[mm.route].group].name);
      return why;
    }
  }
  if (gi != NIL16) {
    const Group* gr = &g.groups[gi];
    const char* want = (m->has_websocket && m->websocket.enabled) ? m->websocket.path : "";
    if (gr->live && strcmp(gr->ws_path, want)) {
      snprintf(why, whyn, "instances of %s must share one WebSocket path (%s)", gr->name, *gr->ws_path ? gr->ws_path : "none");
      return why;
    }
  }
  *gi_out = self;
  return nullptr;
}

void backend_close_after_flush(Backend* b, const char* why);

void on_register(Backend* b, pb_istream_t* s) {
  linkd_RegisterService m = {};
  g.reg_nroutes = 0;
  g.reg_overflow = false;
  m.routes.funcs.decode = dec_route;
  if (!pb_decode(s, linkd_RegisterService_fields, &m)) { backend_close(b, "RegisterService does not decode"); return; }
  linkd_RegisterResult res = {};
  snprintf(res.linkd_version, sizeof res.linkd_version, "%s", LINKD_VERSION);
  uint32_t want = m.max_inbound_frame_bytes;
  b->max_out = want && want < (uint64_t)cfg.max_frame_size ? want : (uint32_t)cfg.max_frame_size;
  res.max_frame_bytes = (uint32_t)cfg.max_frame_size;
  uint16_t gi = NIL16;
  char why[1024];
  const char* bad = b->state != BState::Open ? "already registered on this link" : register_check(b, &m, &gi, why, sizeof why);
  if (bad) {
    g.reg_refused++;
    LOG_WARN("service '%s' (uid %u gid %u pid %u) refused: %s", m.name, b->uid, b->gid, b->pid, bad);
    snprintf(res.reason, sizeof res.reason, "%.255s", bad);
    backend_send_msg(b, TAG_REGISTER_RESULT, linkd_RegisterResult_fields, &res);
    backend_close_after_flush(b, "registration refused");
    return;
  }
  Group* gr = &g.groups[gi];
  if (!gr->used) {
    memset((void*)gr, 0, sizeof *gr);
    gr->used = true;
    snprintf(gr->name, sizeof gr->name, "%s", m.name);
  }
  snprintf(gr->version, sizeof gr->version, "%s", m.version);
  if (m.has_websocket && m.websocket.enabled) {
    snprintf(gr->ws_path, sizeof gr->ws_path, "%s", m.websocket.path);
    gr->ws_raw = m.websocket.raw;
    gr->ws_auth = m.websocket.auth_required;
    gr->ws_compress = m.websocket.compression;
    // A service may choose its clients' ping interval, down to the 1 s tick.
    uint32_t hb = m.websocket.heartbeat_interval_ms;
    gr->ws_heartbeat_ms = hb ? std::max<uint32_t>(hb, 1000) : 0;
    uint32_t mx = m.websocket.max_message_size_bytes;
    gr->ws_max_msg = (uint32_t)(mx && mx < cfg.max_message_size ? mx : cfg.max_message_size);
    // A message must fit the frames this instance reads, with room for
    // the ids and user context around it.
    gr->ws_max_msg = std::min(gr->ws_max_msg, b->max_out > FRAME_META + 16 ? b->max_out - FRAME_META : 16);
    gr->ws_max_per_user = m.websocket.max_connections_per_user;
    // Recovery, when asked for: window and history bounded, so that what a
    // service asks cannot make linkd keep more than a few minutes or pushes.
    bool rec = m.websocket.has_recovery && m.websocket.recovery.window_ms && m.websocket.recovery.history && !gr->ws_raw;
    gr->rec_window_ms = rec ? std::min<uint32_t>(m.websocket.recovery.window_ms, 600000) : 0;
    gr->rec_history = rec ? (uint16_t)std::min<uint32_t>(m.websocket.recovery.history, 1024) : 0;
  } else {
    gr->ws_path[0] = 0;
    gr->rec_window_ms = 0;
    gr->rec_history = 0;
  }
  for (uint32_t i = 0; i < g.reg_nroutes; i++) {
    Route* r = &g.reg_routes[i];
    if (route_exists(r, gi)) continue;
    r->group = gi;
    g.routes[g.nroutes++] = *r;
  }
  b->group = gi;
  b->state = BState::Ready;
  if (*gr->ws_path) cluster_group_interest(gi, true);   // its pushes from other nodes
  if (m.instance_id[0]) snprintf(b->instance_id, sizeof b->instance_id, "%s", m.instance_id);
  else snprintf(b->instance_id, sizeof b->instance_id, "%.40s-%u.%u", m.name, backend_index(b), b->gen);
  gr->live++;
  res.ok = true;
  backend_send_msg(b, TAG_REGISTER_RESULT, linkd_RegisterResult_fields, &res);
  LOG_INFO("service '%s' %s instance '%s' registered (%u routes, websocket %s%s; uid %u gid %u pid %u)", gr->name, gr->version,
           b->instance_id, g.reg_nroutes, *gr->ws_path ? gr->ws_path : "none", gr->ws_raw ? " raw" : "", b->uid, b->gid, b->pid);
  // Connections on the path whose instance is gone come to this one.
  if (*gr->ws_path)
    for (uint32_t i = 0; i < g.conn_hw; i++) {
      Conn* c = &g.conns[i];
      if (c->state != CState::Ws || c->group != gi) continue;
      if (c->backend != NIL16 && g.backends[c->backend].state == BState::Ready) continue;
      c->backend = backend_index(b);
      send_conn_event(b, c, linkd_WebSocketConnectionEvent_EventType_EXISTING);
    }
}

void on_http_response(Backend* b, pb_istream_t* s) {
  linkd_HttpResponse m = {};
  RespHeaders headers{};
  Slice body{};
  m.headers.funcs.decode = dec_resp_header;
  m.headers.arg = &headers;
  m.body.funcs.decode = dec_slice;
  m.body.arg = &body;
  if (!pb_decode(s, linkd_HttpResponse_fields, &m)) {
    buf_free(&headers.out);
    backend_close(b, "HttpResponse does not decode");
    return;
  }
  uint32_t slot = (uint32_t)m.request_id, seq = (uint32_t)(m.request_id >> 32);
  Conn* c = slot < g.conn_hw ? &g.conns[slot] : nullptr;
  if (!c || c->state != CState::Http || !c->http || c->http->pending == NIL || c->http->req_seq != seq ||
      g.pend[c->http->pending].backend != backend_index(b)) {
    LOG_DEBUG("late or unknown HTTP response %" PRIu64 " dropped", m.request_id);
  } else if (headers.bad) {
    LOG_WARN("service '%s': %s; client told 502", g.groups[b->group].name, headers.bad);
    http_error(c, 502, headers.bad);
  } else {
    uint32_t status = m.status ? m.status : 200;
    if (status < 100 || status > 599) status = 502;
    http_service_answer(c, status, &headers.out, body);
  }
  buf_free(&headers.out);
}

void on_ws_response(Backend* b, pb_istream_t* s) {
  linkd_WebSocketResponse m = {};
  Slice data{};
  m.data.funcs.decode = dec_slice;
  m.data.arg = &data;
  if (!pb_decode(s, linkd_WebSocketResponse_fields, &m)) { backend_close(b, "WebSocketResponse does not decode"); return; }
  Conn* c = conn_lookup(m.connection_id);
  if (c && c->group == b->group) ws_service_reply(c, m.correlation_id, &m, data);
}

// Section 14 (cluster mode): a command for another node's connection goes
// to that node; false when it is not alive (the command gets NOT_FOUND).
bool cluster_ask_node(Backend* b, const char* conn_id, AskKind kind, uint64_t reply_id, linkd_ClusterRequest* rq);
bool cluster_ask_count(Backend* b, const char* room, uint64_t query_id, uint64_t timeout_ms, uint32_t local);
int nodes_alive();   // section 14: other nodes heard from lately (0 alone)

// A RoomCountResult: members on the nodes that answered (this one among
// them), and how many nodes this one believes alive.
void room_count_result(Backend* b, uint64_t query_id, uint32_t members, uint32_t nodes) {
  linkd_RoomCountResult r = {};
  r.query_id = query_id;
  r.members = members;
  r.nodes = nodes;
  r.nodes_known = (uint32_t)nodes_alive() + 1;
  backend_send_msg(b, TAG_ROOM_COUNT_RESULT, linkd_RoomCountResult_fields, &r);
}

void remote_not_found(Backend* b, uint64_t op_id) {
  command_result(b, op_id, "NOT_FOUND", "no such connection (its node is not in the cluster now)", 404);
}

void on_ws_outbound(Backend* b, pb_istream_t* s) {
  linkd_WebSocketOutbound m = {};
  Slice payload{};
  m.payload.funcs.decode = dec_slice;
  m.payload.arg = &payload;
  m.except_connections.funcs.decode = dec_except;
  except_begin();
  if (!pb_decode(s, linkd_WebSocketOutbound_fields, &m)) { backend_close(b, "WebSocketOutbound does not decode"); return; }
  if (m.connection_id[0] && conn_id_remote(m.connection_id)) {
    linkd_ClusterRequest rq = {};
    rq.has_push = true;
    rq.push = m;
    rq.push.payload.funcs.encode = enc_slice;
    rq.push.payload.arg = &payload;
    rq.push.except_connections.funcs.encode = nullptr;
    if (!cluster_ask_node(b, m.connection_id, AskKind::Push, m.op_id, &rq)) remote_not_found(b, m.op_id);
    return;
  }
  ws_outbound(b, &m, payload);
}

void on_room_op(Backend* b, pb_istream_t* s) {
  linkd_WebSocketRoomOperation m = {};
  if (!pb_decode(s, linkd_WebSocketRoomOperation_fields, &m)) { backend_close(b, "WebSocketRoomOperation does not decode"); return; }
  if (conn_id_remote(m.connection_id)) {   // rooms are decided by the service where the connection is
    command_result(b, m.op_id, "NOT_FOUND", "the connection is on another node: its rooms are for the service there to change", 404);
    return;
  }
  Conn* c = conn_lookup(m.connection_id);
  if (!c || c->group != b->group) { command_result(b, m.op_id, "NOT_FOUND", "no such connection", 404); return; }
  size_t n = strlen(m.room);
  // proto3 enums are open: nanopb stores whatever number was sent, and
  // reading one outside the enum's range as the enum type is undefined.
  int32_t op;
  static_assert(sizeof op == sizeof m.operation, "nanopb stores enums as int");
  memcpy(&op, &m.operation, sizeof op);
  if (op != linkd_WebSocketRoomOperation_OperationType_JOIN && op != linkd_WebSocketRoomOperation_OperationType_LEAVE) {
    command_result(b, m.op_id, "BAD_MESSAGE", "unknown room operation", 400);
    return;
  }
  if (op == linkd_WebSocketRoomOperation_OperationType_LEAVE) {
    room_leave(c, m.room, n);
    command_result(b, m.op_id, nullptr, nullptr, 0);
    return;
  }
  switch (room_join(c, m.room, n)) {
    case JoinResult::Ok:
    case JoinResult::Already: command_result(b, m.op_id, nullptr, nullptr, 0); break;
    case JoinResult::RoomsFull:
      LOG_WARN("room table full (--max-rooms %" PRId64 "): join of '%s' refused", cfg.max_rooms, m.room);
      command_result(b, m.op_id, "ROOMS_FULL", "room table full", 503); break;
    case JoinResult::MembersFull:
      LOG_WARN("membership table full (--max-memberships %" PRId64 "): join refused", cfg.max_memberships);
      command_result(b, m.op_id, "MEMBERSHIPS_FULL", "membership table full", 503); break;
    case JoinResult::BadName: command_result(b, m.op_id, "BAD_ROOM", "room name must be 1-127 bytes", 400); break;
  }
}

void on_rooms_query(Backend* b, pb_istream_t* s) {
  linkd_RoomsQuery m = {};
  if (!pb_decode(s, linkd_RoomsQuery_fields, &m)) { backend_close(b, "RoomsQuery does not decode"); return; }
  if (conn_id_remote(m.connection_id)) {
    linkd_ClusterRequest rq = {};
    rq.has_rooms = true;
    rq.rooms = m;
    if (cluster_ask_node(b, m.connection_id, AskKind::Rooms, m.query_id, &rq)) return;   // answered when its node answers
  }
  linkd_RoomsResult r = {};
  r.query_id = m.query_id;
  Conn* c = conn_lookup(m.connection_id);
  if (c && c->group == b->group) {
    r.rooms.funcs.encode = enc_rooms;
    r.rooms.arg = c;
  } else {
    r.has_error = true;
    r.error.code = 404;
    snprintf(r.error.type, sizeof r.error.type, "NOT_FOUND");
    snprintf(r.error.message, sizeof r.error.message, "no such connection");
  }
  backend_send_msg(b, TAG_ROOMS_RESULT, linkd_RoomsResult_fields, &r);
}

void on_close_command(Backend* b, pb_istream_t* s) {
  linkd_CloseConnection m = {};
  if (!pb_decode(s, linkd_CloseConnection_fields, &m)) { backend_close(b, "CloseConnection does not decode"); return; }
  if (conn_id_remote(m.connection_id)) {
    linkd_ClusterRequest rq = {};
    rq.has_close = true;
    rq.close = m;
    if (!cluster_ask_node(b, m.connection_id, AskKind::Close, m.op_id, &rq)) remote_not_found(b, m.op_id);
    return;
  }
  Conn* c = conn_lookup(m.connection_id);
  if (!c || c->group != b->group) { command_result(b, m.op_id, "NOT_FOUND", "no such connection", 404); return; }
  uint32_t code = m.code ? m.code : 1000;
  if (!close_code_ok(code)) {
    command_result(b, m.op_id, "BAD_CODE", "close code not allowed on the wire", 400);
    return;
  }
  ws_close(c, (uint16_t)code, m.reason);
  command_result(b, m.op_id, nullptr, nullptr, 0);
}

// Members of a room: here, and in cluster mode on every node (answered
// when they have, or at the query's timeout).
void on_room_count(Backend* b, pb_istream_t* s) {
  linkd_RoomCountQuery m = {};
  if (!pb_decode(s, linkd_RoomCountQuery_fields, &m)) { backend_close(b, "RoomCountQuery does not decode"); return; }
  uint32_t r = room_find(b->group, m.room, strlen(m.room));
  uint32_t local = r == NIL ? 0 : g.rooms[r].count;
  uint64_t timeout = m.timeout_ms ? std::min<uint32_t>(m.timeout_ms, 5000) : 500;
  if (!cluster_ask_count(b, m.room, m.query_id, timeout, local)) room_count_result(b, m.query_id, local, 1);
}

void on_heartbeat(Backend* b, pb_istream_t* s) {
  linkd_Heartbeat m = {};
  if (!pb_decode(s, linkd_Heartbeat_fields, &m)) { backend_close(b, "Heartbeat does not decode"); return; }
  if (m.reply) return;
  linkd_Heartbeat r = {};
  r.timestamp_ms = wall_ms();
  r.reply = true;
  backend_send_msg(b, TAG_HEARTBEAT, linkd_Heartbeat_fields, &r);
}

// Decodes one frame: walks the ServiceMessage's fields and handles each
// member present (normally exactly one).
void backend_frame(Backend* b, const uint8_t* p, size_t n) {
  g.svc_frames_in++;
  frame_in = Slice{(const char*)p, n};
  pb_istream_t s = pb_istream_from_buffer(p, n);
  while (s.bytes_left && b->state != BState::Closed && !b->close_why) {
    pb_wire_type_t wt;
    uint32_t tag;
    bool eof;
    if (!pb_decode_tag(&s, &wt, &tag, &eof)) { backend_close(b, "frame does not decode"); return; }
    if (wt != PB_WT_STRING) {
      if (!pb_skip_field(&s, wt)) { backend_close(b, "frame does not decode"); return; }
      continue;
    }
    pb_istream_t sub;
    if (!pb_make_string_substream(&s, &sub)) { backend_close(b, "frame does not decode (bad length)"); return; }
    if (tag != TAG_REGISTER && b->state != BState::Ready) {
      pb_close_string_substream(&s, &sub);
      backend_close(b, "first frame must be RegisterService");
      return;
    }
    switch (tag) {
      case TAG_REGISTER: on_register(b, &sub); break;
      case TAG_HTTP_RESPONSE: on_http_response(b, &sub); break;
      case TAG_WS_RESPONSE: on_ws_response(b, &sub); break;
      case TAG_WS_OUTBOUND: on_ws_outbound(b, &sub); break;
      case TAG_WS_ROOM_OP: on_room_op(b, &sub); break;
      case TAG_ROOMS_QUERY: on_rooms_query(b, &sub); break;
      case TAG_CLOSE: on_close_command(b, &sub); break;
      case TAG_HEARTBEAT: on_heartbeat(b, &sub); break;
      case TAG_ROOM_COUNT_QUERY: on_room_count(b, &sub); break;
      default: LOG_DEBUG("service frame member %u ignored", tag); break;
    }
    if (b->state == BState::Free) return;
    if (!pb_close_string_substream(&s, &sub)) { backend_close(b, "frame does not decode"); return; }
  }
}

// Splits the byte stream into frames. Whole frames in the read buffer are
// decoded in place; only a partial frame is copied into b->in.
void backend_consume(Backend* b, const uint8_t* p, size_t n) {
  size_t off = 0;
  while (off < n && (b->state == BState::Open || b->state == BState::Ready) && !b->close_why) {
    uint64_t len = 0;
    size_t k = 0;
    int shift = 0;
    for (;;) {
      if (off + k >= n) { buf_put(&b->in, p + off, n - off); return; }   // varint incomplete
      uint8_t byte = p[off + k++];
      len |= (uint64_t)(byte & 0x7f) << shift;
      if (!(byte & 0x80)) break;
      shift += 7;
      if (shift > 63) { backend_close(b, "bad frame length"); return; }
    }
    if (len > (uint64_t)cfg.max_frame_size) {
      char why[96];
      snprintf(why, sizeof why, "frame of %" PRIu64 " bytes is over --max-frame-size", len);
      backend_close(b, why);
      return;
    }
    if (off + k + len > n) { buf_put(&b->in, p + off, n - off); return; }
    backend_frame(b, p + off + k, (size_t)len);
    off += k + (size_t)len;
  }
}

// True when p holds a whole frame, or a header backend_consume must refuse.
bool frame_ready(const uint8_t* p, size_t n) {
  uint64_t len = 0;
  for (size_t k = 0; k < n && k < 10; k++) {
    len |= (uint64_t)(p[k] & 0x7f) << (7 * k);
    if (!(p[k] & 0x80)) return len > (uint64_t)cfg.max_frame_size || n >= k + 1 + len;
  }
  return n >= 10;
}

void backend_read_cb(uv_stream_t* st, ssize_t nread, const uv_buf_t* buf) noexcept {
  Backend* b = (Backend*)st->data;
  (void)buf;
  if (nread == 0) return;
  if (nread < 0) { backend_close(b, nread == UV_EOF ? "link closed by the service" : uv_strerror((int)nread)); return; }
  if (b->in.len == 0) { backend_consume(b, (const uint8_t*)g.readbuf, (size_t)nread); return; }
  // A frame was split across reads: gather it in b->in (no re-copying while
  // it is incomplete), then consume from the joined copy.
  buf_put(&b->in, g.readbuf, (size_t)nread);
  if (!frame_ready((const uint8_t*)b->in.p, b->in.len)) return;
  Buf joined = b->in;
  b->in = Buf{};
  backend_consume(b, (const uint8_t*)joined.p, joined.len);
  buf_free(&joined);
}

void alloc_cb(uv_handle_t*, size_t, uv_buf_t* buf) noexcept {
  *buf = uv_buf_init(g.readbuf, sizeof g.readbuf);
}

void backend_closed_cb(uv_handle_t* h) noexcept {
  Backend* b = (Backend*)h->data;
  b->state = BState::Free;
  b->gen++;
  b->next_free = g.backend_free;
  g.backend_free = backend_index(b);
}

void backend_close(Backend* b, const char* why) {
  if (b->state == BState::Closed || b->state == BState::Free) return;
  uint16_t bi = backend_index(b);
  bool was_ready = b->state == BState::Ready;
  if (was_ready) {
    LOG_WARN("service '%s' instance '%s' gone: %s", g.groups[b->group].name, b->instance_id, why);
    g.groups[b->group].live--;
  } else {
    LOG_WARN("service link %u closed: %s", bi, why);
  }
  g.svc_errors += strcmp(why, "link closed by the service") != 0;
  b->state = BState::Closed;
  // What this instance owed is answered now: 503 / SERVICE_UNAVAILABLE.
  // By table index, not along the FIFO: answering may close a connection,
  // which frees (and a new request may reuse) other entries.
  for (uint32_t p = 0; p < g.pend_hw; p++)
    if (g.pend[p].kind != PKind::Free && g.pend[p].backend == bi) pend_expire(p, false);
  // Its WebSocket connections wait for the next instance (conn_backend).
  for (uint32_t i = 0; i < g.conn_hw; i++)
    if (g.conns[i].state == CState::Ws && g.conns[i].backend == bi) g.conns[i].backend = NIL16;
  if (b->out.len) {   // best effort for what was encoded this iteration (e.g. the SHUTDOWN notice)
    uv_buf_t ub = uv_buf_init(b->out.p, (unsigned)b->out.len);
    uv_try_write((uv_stream_t*)&b->pipe, &ub, 1);
  }
  buf_free(&b->out);
  buf_free(&b->in);
  uv_close((uv_handle_t*)&b->pipe, backend_closed_cb);
}

// Stops reading and closes once what was queued (e.g. a refusal) is out.
void backend_close_after_flush(Backend* b, const char* why) {
  uv_read_stop((uv_stream_t*)&b->pipe);
  backend_flush(b);
  if (b->state == BState::Closed) return;
  if (b->pipe.write_queue_size == 0) backend_close(b, why);
  else b->close_why = why;
}

void svc_connection_cb(uv_stream_t* server, int status) noexcept {
  if (status < 0) { LOG_WARN("service accept: %s", uv_strerror(status)); return; }
  if (g.backend_free == NIL) {
    uv_pipe_t* tmp = (uv_pipe_t*)malloc(sizeof *tmp);
    uv_pipe_init(g.loop, tmp, 0);
    if (uv_accept(server, (uv_stream_t*)tmp) == 0) LOG_WARN("service link refused: --max-services reached");
    uv_close((uv_handle_t*)tmp, [](uv_handle_t* h) noexcept { free(h); });
    return;
  }
  uint32_t i = g.backend_free;
  Backend* b = &g.backends[i];
  g.backend_free = b->next_free;
  uint32_t gen = b->gen;
  memset((void*)b, 0, sizeof *b);
  b->gen = gen;
  b->group = NIL16;
  b->state = BState::Open;
  b->max_out = (uint32_t)cfg.max_frame_size;
  b->opened = now_ms();
  uv_pipe_init(g.loop, &b->pipe, 0);
  b->pipe.data = b;
  if (uv_accept(server, (uv_stream_t*)&b->pipe)) { backend_close(b, "accept failed"); return; }
  // Who is on the other end, from the kernel: the allow-list and the logs
  // name the process by it, whatever the service says of itself.
  b->uid = b->gid = b->pid = UINT32_MAX;
  uv_os_fd_t fd;
  ucred cred{};
  socklen_t cl = sizeof cred;
  if (uv_fileno((uv_handle_t*)&b->pipe, &fd) == 0 && getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0) {
    b->uid = cred.uid;
    b->gid = cred.gid;
    b->pid = (uint32_t)cred.pid;
  }
  uv_read_start((uv_stream_t*)&b->pipe, alloc_cb, backend_read_cb);
  LOG_DEBUG("service link %u opened", i);
}

// ============================================================================
// 10. HTTP
// llhttp parses requests into the connection's Http record. One request at a
// time per connection: on_message_complete pauses the parser, so pipelined
// requests wait in Http::in and are answered strictly in order. A request
// goes to linkd's own endpoints (/health, /metrics), to the WebSocket
// upgrade, or to a route's service with a request id "slot | seq << 32"
// (seq counts requests, so a late answer never meets a newer request).
// ============================================================================

llhttp_settings_t http_settings;

Slice http_header(const Http* h, const char* name) {
  for (int i = 0; i < h->nhdrs; i++)
    if (str_ieq(h->head.p + h->hdrs[i].name_off, h->hdrs[i].name_len, name))
      return Slice{h->head.p + h->hdrs[i].val_off, h->hdrs[i].val_len};
  return Slice{nullptr, 0};
}

Slice http_path(const Http* h) {
  const char* q = (const char*)memchr(h->head.p, '?', h->url_len);
  return Slice{h->head.p, q ? (size_t)(q - h->head.p) : h->url_len};
}

Slice http_query(const Http* h) {
  const char* q = (const char*)memchr(h->head.p, '?', h->url_len);
  if (!q) return Slice{"", 0};
  return Slice{q + 1, h->url_len - (size_t)(q + 1 - h->head.p)};
}

Http* parser_http(llhttp_t* p) { return ((Conn*)p->data)->http; }

int on_message_begin(llhttp_t* p) noexcept {
  Http* h = parser_http(p);
  h->head.len = 0;
  h->body.len = 0;
  h->nhdrs = 0;
  h->url_len = 0;
  h->in_value = false;
  h->headers_done = false;
  h->trailer_len = 0;
  h->refuse = 0;
  h->refuse_hdrs = nullptr;
  h->route = NIL;
  h->bad = nullptr;
  h->since = now_ms();
  return 0;
}

bool head_room(Http* h, size_t n) {
  if (h->head.len + n > (size_t)cfg.max_header_size) { h->refuse = 431; return false; }
  return true;
}

int on_url(llhttp_t* p, const char* at, size_t n) noexcept {
  Http* h = parser_http(p);
  if (!head_room(h, n)) return -1;
  buf_put(&h->head, at, n);
  h->url_len += (uint32_t)n;
  return 0;
}

// Chunked trailers arrive through the header callbacks after the body.
// They never become request headers (an Authorization or an Upgrade there
// must not count): dropped, but their size is bounded like the head's.
int trailer_skip(Http* h, size_t n) {
  h->trailer_len += (uint32_t)std::min<size_t>(n, UINT32_MAX / 2);
  if (h->trailer_len > (size_t)cfg.max_header_size) { h->refuse = 431; return -1; }
  return 0;
}

int on_header_field(llhttp_t* p, const char* at, size_t n) noexcept {
  Http* h = parser_http(p);
  if (h->headers_done) return trailer_skip(h, n);
  if (!head_room(h, n)) return -1;
  if (h->nhdrs == 0 || h->in_value) {
    if (h->nhdrs == MAX_HEADERS) { h->refuse = 431; return -1; }
    h->hdrs[h->nhdrs++] = HdrRef{(uint32_t)h->head.len, 0, 0, 0};
    h->in_value = false;
  }
  // RFC 9110 token characters only ("Host : x" must be refused, §5.1).
  for (size_t i = 0; i < n; i++)
    if (!is_tchar((unsigned char)at[i])) { h->bad = "invalid character in a header name"; return -1; }
  buf_put(&h->head, at, n);
  h->hdrs[h->nhdrs - 1].name_len += (uint32_t)n;
  return 0;
}

int on_header_value(llhttp_t* p, const char* at, size_t n) noexcept {
  Http* h = parser_http(p);
  if (h->headers_done) return trailer_skip(h, n);
  if (!head_room(h, n)) return -1;
  HdrRef& r = h->hdrs[h->nhdrs - 1];
  if (!h->in_value) { r.val_off = (uint32_t)h->head.len; h->in_value = true; }
  buf_put(&h->head, at, n);
  r.val_len += (uint32_t)n;
  return 0;
}

// Where a request would go and whether it may: the route, the verified
// user, the instance. status 0: forward it; else the answer to give.
struct RouteCheck {
  unsigned status;
  const char* why;
  const char* hdrs;       // extra answer headers (WWW-Authenticate)
  Match m;
  UserBlob* user;         // owner: the caller (free)
  uint16_t backend;
};

void http_route_check(Conn* c, RouteCheck* rc) {
  Http* h = c->http;
  *rc = RouteCheck{};
  rc->hdrs = "";
  const char* method = llhttp_method_name((llhttp_method_t)h->parser.method);
  Slice path = http_path(h);
  bool bad;
  if (!route_match(method, path.p, path.n, &rc->m, &bad)) {
    *rc = bad ? RouteCheck{400, "bad percent-escape in the path (or not UTF-8 once decoded)", "", {}, nullptr, 0}
              : RouteCheck{404, "no route for this path and method", "", {}, nullptr, 0};
    return;
  }
  h->route = rc->m.route;
  // Services get the target and headers as protobuf strings, which must be
  // UTF-8: anything else is refused here rather than breaking the link.
  if (!utf8_valid((const uint8_t*)h->head.p, h->head.len)) { rc->status = 400; rc->why = "request target and headers must be UTF-8"; return; }
  const Route* r = &g.routes[rc->m.route];
  const char* why = "a valid token is required";
  Slice tok = token_of(http_header(h, "authorization"), http_query(h));
  UserBlob* user = tok.p ? jwt_verify(tok.p, tok.n, &why) : nullptr;
  bool authz_ok = !r->def.roles_count;
  for (pb_size_t i = 0; user && i < r->def.roles_count && !authz_ok; i++) authz_ok = user_has_role(user, r->def.roles[i]);
  if ((r->def.auth || r->def.roles_count) && !user) { rc->status = 401; rc->why = why; rc->hdrs = "WWW-Authenticate: Bearer\r\n"; return; }
  if (!authz_ok) { free(user); rc->status = 403; rc->why = "the token lacks a role this route requires"; return; }
  rc->backend = group_pick(r->group);
  if (rc->backend == NIL16) { free(user); rc->status = 503; rc->why = "service is not running"; return; }
  rc->user = user;
}

uint16_t group_by_ws_path(Slice path);

// RFC 9112 framing rules llhttp leaves to us: HTTP/1.0 or 1.1 only, one
// Host (exactly one in 1.1), Transfer-Encoding exactly "chunked", header
// values without control characters (obs-fold is refused, RFC 9112 §5.2),
// and Expect: 100-continue answered before the body is sent.
int on_headers_complete(llhttp_t* p) noexcept {
  Http* h = parser_http(p);
  h->headers_done = true;
  if (p->http_major != 1 || p->http_minor > 1) { h->refuse = 505; h->bad = "only HTTP/1.0 and HTTP/1.1 are served"; return -1; }
  int hosts = 0, tes = 0, expects = 0;
  Slice te{}, expect{};
  for (int i = 0; i < h->nhdrs; i++) {
    const HdrRef& r = h->hdrs[i];
    Slice name{h->head.p + r.name_off, r.name_len}, val{h->head.p + r.val_off, r.val_len};
    for (size_t k = 0; k < val.n; k++) {
      unsigned char ch = (unsigned char)val.p[k];
      if ((ch < 0x20 && ch != '\t') || ch == 0x7f) { h->bad = "control character in a header value (obsolete line folding is refused)"; return -1; }
    }
    if (str_ieq(name.p, name.n, "host")) hosts++;
    else if (str_ieq(name.p, name.n, "transfer-encoding")) { tes++; te = val; }
    else if (str_ieq(name.p, name.n, "expect")) { expects++; expect = val; }
  }
  if (p->http_minor == 1 ? hosts != 1 : hosts > 1) { h->bad = "an HTTP/1.1 request needs exactly one Host header"; return -1; }
  while (te.n && (te.p[te.n - 1] == ' ' || te.p[te.n - 1] == '\t')) te.n--;
  while (te.n && (*te.p == ' ' || *te.p == '\t')) { te.p++; te.n--; }
  if (tes && (tes > 1 || !str_ieq(te.p, te.n, "chunked"))) { h->bad = "Transfer-Encoding must be exactly 'chunked'"; return -1; }
  if ((p->flags & F_CONTENT_LENGTH) && p->content_length > (uint64_t)cfg.max_body_size) { h->refuse = 413; return -1; }
  if (expects) {
    if (expects > 1 || !str_ieq(expect.p, expect.n, "100-continue")) { h->refuse = 417; h->bad = "only Expect: 100-continue is understood"; return -1; }
    bool body = tes || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0);
    if (body && p->http_minor == 1) {
      // Tell the client now whether its body is wanted: 100 when the request
      // will be forwarded, else the final answer at once.
      Conn* c = (Conn*)p->data;
      Slice path = http_path(h);
      bool own = group_by_ws_path(path) != NIL16 || (path.n == 7 && !memcmp(path.p, "/health", 7)) || (path.n == 8 && !memcmp(path.p, "/metrics", 8));
      RouteCheck rc{};
      if (!own) http_route_check(c, &rc);
      free(rc.user);
      if (rc.status) { h->refuse = (int)rc.status; h->bad = rc.why; h->refuse_hdrs = rc.hdrs; return -1; }
      h->send_continue = true;   // written by http_pump once llhttp returns
    }
  }
  return 0;
}

int on_body(llhttp_t* p, const char* at, size_t n) noexcept {
  Http* h = parser_http(p);
  if (h->body.len + n > (size_t)cfg.max_body_size) { h->refuse = 413; return -1; }
  buf_put(&h->body, at, n);
  return 0;
}

int on_message_complete(llhttp_t* p) noexcept {
  Http* h = parser_http(p);
  h->complete = true;
  return HPE_PAUSED;
}

void http_settings_init() {
  llhttp_settings_init(&http_settings);
  http_settings.on_message_begin = on_message_begin;
  http_settings.on_url = on_url;
  http_settings.on_header_field = on_header_field;
  http_settings.on_header_value = on_header_value;
  http_settings.on_headers_complete = on_headers_complete;
  http_settings.on_body = on_body;
  http_settings.on_message_complete = on_message_complete;
}

const char* status_text(unsigned s) {
  switch (s) {
    case 101: return "Switching Protocols"; case 200: return "OK"; case 201: return "Created";
    case 202: return "Accepted"; case 204: return "No Content"; case 301: return "Moved Permanently";
    case 302: return "Found"; case 304: return "Not Modified"; case 400: return "Bad Request";
    case 401: return "Unauthorized"; case 403: return "Forbidden"; case 404: return "Not Found";
    case 405: return "Method Not Allowed"; case 408: return "Request Timeout"; case 409: return "Conflict";
    case 410: return "Gone"; case 413: return "Payload Too Large"; case 417: return "Expectation Failed";
    case 422: return "Unprocessable Entity"; case 426: return "Upgrade Required"; case 505: return "HTTP Version Not Supported";
    case 429: return "Too Many Requests"; case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error"; case 502: return "Bad Gateway"; case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout"; default: return s < 300 ? "OK" : s < 400 ? "Redirect" : s < 500 ? "Client Error" : "Server Error";
  }
}

const char* status_type(unsigned s) {
  switch (s) {
    case 400: return "BAD_REQUEST"; case 401: return "UNAUTHORIZED"; case 403: return "FORBIDDEN";
    case 404: return "NOT_FOUND"; case 405: return "METHOD_NOT_ALLOWED"; case 408: return "REQUEST_TIMEOUT";
    case 413: return "PAYLOAD_TOO_LARGE"; case 417: return "EXPECTATION_FAILED"; case 505: return "HTTP_VERSION_NOT_SUPPORTED";
    case 426: return "UPGRADE_REQUIRED"; case 429: return "TOO_MANY_REQUESTS"; case 431: return "HEADERS_TOO_LARGE";
    case 502: return "BAD_GATEWAY"; case 503: return "SERVICE_UNAVAILABLE"; case 504: return "GATEWAY_TIMEOUT";
    default: return "ERROR";
  }
}

// Is this Origin allowed, globally or for the route? By name (the answer
// echoes it, with credentials), or only through "*" (the answer is "*",
// without credentials: RFC 6454 / Fetch forbid credentials with "*").
enum class Cors { No, Named, Any };

Cors origin_allowed(Slice origin, const Route* r) {
  Cors best = Cors::No;
  auto scan = [&](const char* list) {
    size_t n = strlen(list), i = 0;
    while (i < n) {
      while (i < n && (list[i] == ',' || list[i] == ' ')) i++;
      size_t s = i;
      while (i < n && list[i] != ',') i++;
      size_t e = i;
      while (e > s && list[e - 1] == ' ') e--;
      if (e - s == 1 && list[s] == '*') { if (best == Cors::No) best = Cors::Any; }
      else if (e - s == origin.n && !memcmp(list + s, origin.p, origin.n)) best = Cors::Named;
    }
  };
  if (!origin.p) return Cors::No;
  scan(cfg.allowed_origins);
  if (r)
    for (pb_size_t i = 0; i < r->def.cors_origins_count; i++) scan(r->def.cors_origins[i]);
  return best;
}

// CORS headers for an allowed Origin, for the request's route (h->route).
void cors_headers(Buf* out, const Http* h) {
  Slice origin = http_header(h, "origin");
  if (!origin.p) return;
  Cors how = origin_allowed(origin, h->route != NIL ? &g.routes[h->route] : nullptr);
  if (how == Cors::Any) buf_puts(out, "Access-Control-Allow-Origin: *\r\n");
  if (how != Cors::Named) return;
  buf_puts(out, "Access-Control-Allow-Origin: ");
  buf_put(out, origin.p, origin.n);
  buf_puts(out, "\r\nAccess-Control-Allow-Credentials: true\r\nVary: Origin\r\n");
}

void http_pump(Conn* c);
bool ws_try_upgrade(Conn* c);
void admin_dispatch(Conn* c, const char* method, Slice path);   // section 15
void conn_read_cb(uv_stream_t* st, ssize_t n, const uv_buf_t* buf) noexcept;
void metrics_write(Buf* b);

// The answer to the current request: writes it, then goes on with the next
// pipelined request (or closes, for Connection: close / errors).
void http_respond(Conn* c, unsigned status, const char* headers, size_t headers_len, const char* body, size_t body_len,
                  bool force_close = false) {
  Http* h = c->http;
  if (!h) return;
  bool keep = !force_close && !g.shutting_down && llhttp_should_keep_alive(&h->parser);
  if (h->pending != NIL) { pend_free(h->pending); h->pending = NIL; }
  Buf out;
  // 204 and 304 carry no body (RFC 9110 §6.4.1) and, from linkd, no
  // Content-Length (a 304's would have to be the 200's length).
  bool bodiless = status == 204 || status == 304;
  if (bodiless) body_len = 0;
  buf_printf(&out, "HTTP/1.1 %u %s\r\n", status, status_text(status));
  if (!bodiless) buf_printf(&out, "Content-Length: %zu\r\n", body_len);
  buf_printf(&out, "Connection: %s\r\n", keep ? "keep-alive" : "close");
  cors_headers(&out, h);
  if (headers_len) buf_put(&out, headers, headers_len);
  buf_puts(&out, "\r\n");
  if (h->parser.method != HTTP_HEAD && body_len) buf_put(&out, body, body_len);
  g.http_status[status < 600 ? status : 599]++;
  g.http_bytes_out += out.len;
  conn_send_bytes(c, out.p, out.len);
  buf_free(&out);
  if (c->state != CState::Http) return;
  h->complete = false;
  h->served = true;
  h->since = now_ms();
  // The request is done: an idle keep-alive connection holds no head, and
  // no big body buffer.
  h->head.len = h->body.len = 0;
  h->nhdrs = 0;
  h->url_len = 0;
  if (h->body.cap > 16 * 1024) buf_free(&h->body);
  if (h->head.cap > 16 * 1024) buf_free(&h->head);
  if (!keep) { conn_close_after_flush(c); return; }
  // A request that asked for another protocol (h2c, ...) was answered as
  // plain HTTP: the connection goes on as HTTP/1.1.
  if (llhttp_get_errno(&h->parser) == HPE_PAUSED_UPGRADE) llhttp_resume_after_upgrade(&h->parser);
  else llhttp_resume(&h->parser);
  if (!h->pumping) http_pump(c);
}

void http_error(Conn* c, unsigned status, const char* msg, const char* headers, bool close) {
  Buf b;
  buf_printf(&b, "{\"error\":{\"type\":\"%s\",\"message\":\"", status_type(status));
  buf_json_escape(&b, msg, strlen(msg));
  buf_puts(&b, "\"}}");
  Buf hd;
  buf_puts(&hd, "Content-Type: application/json\r\n");
  buf_puts(&hd, headers);
  http_respond(c, status, hd.p, hd.len, b.p, b.len, close);
  buf_free(&b);
  buf_free(&hd);
}

void http_service_answer(Conn* c, uint32_t status, Buf* headers, Slice body) {
  // 1xx would tell the client another answer follows (101: a protocol
  // switch linkd never made): not something a service may send.
  if (status < 200) { http_error(c, 502, "service answered with an informational status"); return; }
  http_respond(c, status, headers->p, headers->len, body.p, body.n);
}

// Preflight: OPTIONS with Origin and Access-Control-Request-Method.
void http_preflight(Conn* c, Slice path) {
  Http* h = c->http;
  Slice want = http_header(h, "access-control-request-method");
  char meth[16];
  snprintf(meth, sizeof meth, "%.*s", (int)want.n, want.p);
  Match m;
  bool bad;
  if (!route_match(meth, path.p, path.n, &m, &bad)) { http_error(c, bad ? 400 : 404, bad ? "bad percent-escape in the path" : "no route for this path and method"); return; }
  h->route = m.route;   // the answer's CORS headers are the route's
  if (origin_allowed(http_header(h, "origin"), &g.routes[m.route]) == Cors::No) { http_error(c, 403, "origin not allowed"); return; }
  Buf hd;
  buf_printf(&hd, "Access-Control-Allow-Methods: %s\r\nAccess-Control-Max-Age: 600\r\n", meth);
  Slice rh = http_header(h, "access-control-request-headers");
  if (rh.p) { buf_puts(&hd, "Access-Control-Allow-Headers: "); buf_put(&hd, rh.p, rh.n); buf_puts(&hd, "\r\n"); }
  http_respond(c, 204, hd.p, hd.len, nullptr, 0);
  buf_free(&hd);
}

Sent send_http_request(Backend* b, Conn* c, const Match* m, uint64_t req_id, const UserBlob* user) {
  Http* h = c->http;
  linkd_HttpRequest r = {};
  r.request_id = req_id;
  snprintf(r.method, sizeof r.method, "%s", llhttp_method_name((llhttp_method_t)h->parser.method));
  Slice path = http_path(h), query = http_query(h), body{h->body.p ? h->body.p : "", h->body.len};
  r.path.funcs.encode = enc_slice;
  r.path.arg = &path;
  r.query.funcs.encode = enc_slice;
  r.query.arg = &query;
  r.body.funcs.encode = enc_slice;
  r.body.arg = &body;
  r.headers.funcs.encode = enc_headers;
  r.headers.arg = h;
  r.params.funcs.encode = enc_params;
  r.params.arg = (void*)m;
  r.has_user = true;
  user_expand(user, c, &r.user);
  conn_remote(c, r.remote_address, sizeof r.remote_address);
  snprintf(r.route, sizeof r.route, "%s", g.routes[m->route].def.path);
  return backend_send_msg(b, TAG_HTTP_REQUEST, linkd_HttpRequest_fields, &r);
}

bool cluster_connected();   // section 14

// linkd's own endpoints; true if the request was one of them.
bool http_local(Conn* c, const char* method, Slice path) {
  bool health = path.n == 7 && !memcmp(path.p, "/health", 7), metrics = path.n == 8 && !memcmp(path.p, "/metrics", 8);
  if (!health && !metrics) return false;
  bool get = !strcmp(method, "GET"), head = !strcmp(method, "HEAD");
  if (!get && !(head && health)) {
    http_error(c, 405, "method not allowed here", health ? "Allow: GET, HEAD\r\n" : "Allow: GET\r\n");
    return true;
  }
  Buf b;
  if (health) {
    buf_printf(&b, "{\"status\":\"%s\",\"version\":\"%s\"", g.shutting_down ? "stopping" : "healthy", LINKD_VERSION);
    if (*cfg.nats_url) buf_printf(&b, ",\"node\":\"%s\",\"cluster\":\"%s\"", cfg.node_id, cluster_connected() ? "connected" : "disconnected");
    buf_puts(&b, "}");
  }
  else metrics_write(&b);
  const char* hd = health ? "Content-Type: application/json\r\nCache-Control: no-store\r\n"
                          : "Content-Type: text/plain; version=0.0.4\r\nCache-Control: no-store\r\n";
  http_respond(c, 200, hd, strlen(hd), b.p, b.len);
  buf_free(&b);
  return true;
}

void http_dispatch(Conn* c) {
  Http* h = c->http;
  g.http_bytes_in += h->head.len + h->body.len;
  const char* method = llhttp_method_name((llhttp_method_t)h->parser.method);
  Slice path = http_path(h);
  if (path.n == 0 || path.p[0] != '/') { http_error(c, 400, "request target must be an absolute path", "", true); return; }
  if (c->admin) { admin_dispatch(c, method, path); return; }
  if (ws_try_upgrade(c)) return;
  if (http_local(c, method, path)) return;
  if (!strcmp(method, "OPTIONS") && http_header(h, "origin").p && http_header(h, "access-control-request-method").p) {
    http_preflight(c, path);
    return;
  }
  RouteCheck rc;
  http_route_check(c, &rc);
  if (rc.status) { http_error(c, rc.status, rc.why, rc.hdrs); return; }
  uint32_t p = pend_alloc(c, PKind::Http, rc.backend, (uint64_t)cfg.http_timeout);
  if (p == NIL) { free(rc.user); http_error(c, 503, "too many requests in flight"); return; }
  h->pending = p;
  pend_arm();
  h->req_seq = ++g.req_seq;   // a late answer to an earlier request on this slot never matches
  uint64_t req_id = (uint64_t)conn_index(c) | (uint64_t)h->req_seq << 32;
  Sent sent = send_http_request(&g.backends[rc.backend], c, &rc.m, req_id, rc.user);
  free(rc.user);
  if (sent == Sent::TooBig) { http_error(c, 413, "request too large for the service"); return; }
  if (sent != Sent::Ok) { http_error(c, 503, "service link is not accepting requests"); return; }
  uv_read_stop((uv_stream_t*)&c->tcp);   // resumed when the answer is written
}

// obs-fold (a header line starting with SP or HTAB, RFC 9112 §5.2) is
// refused: llhttp 8 joins such lines silently, which would let
// "Transfer-Encoding:\r\n chunked" through. The raw head of each request is
// scanned before llhttp sees it (never its body). False on a fold.
bool http_scan_head(Http* h) {
  for (; h->scanned < h->in.len && h->hscan != 4; h->scanned++) {
    char ch = h->in.p[h->scanned];
    switch (h->hscan) {
      case 0: if (ch != '\r' && ch != '\n') h->hscan = 1; break;   // llhttp skips CRLFs between requests
      case 1: if (ch == '\n') h->hscan = 2; break;
      case 2:
        if (ch == ' ' || ch == '\t') return false;
        h->hscan = ch == '\r' ? 3 : ch == '\n' ? 4 : 1;
        break;
      case 3: h->hscan = ch == '\n' ? 4 : 1; break;
    }
  }
  return true;
}

// Parses what is buffered; dispatches whole requests one at a time.
void http_pump(Conn* c) {
  Http* h = c->http;
  h->pumping = true;
  while (c->state == CState::Http && h == c->http && !h->complete && h->in.len) {
    if (c->tcp.write_queue_size > HTTP_OUT_CAP) { h->blocked = true; break; }   // resumed by write_done_cb
    if (!http_scan_head(h)) {
      h->in.len = 0;
      h->complete = true;
      h->pumping = false;
      http_error(c, 400, "obsolete line folding in the header block", "", true);
      return;
    }
    llhttp_errno_t e = llhttp_execute(&h->parser, h->in.p, h->in.len);
    size_t used = h->in.len;
    if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) used = (size_t)(llhttp_get_error_pos(&h->parser) - h->in.p);
    else if (e != HPE_OK) {
      unsigned status = h->refuse ? (unsigned)h->refuse : 400;
      const char* why = status == 431 ? "request headers too large" : status == 413 ? "request body too large"
                      : h->bad ? h->bad : llhttp_get_error_reason(&h->parser);
      h->in.len = 0;
      h->complete = true;   // the error answers this request
      g.http_bytes_in += h->head.len;
      h->pumping = false;
      http_error(c, status, why ? why : "malformed request", h->refuse_hdrs ? h->refuse_hdrs : "", true);
      return;
    }
    buf_consume(&h->in, used);
    h->scanned = h->complete ? 0 : h->scanned > used ? h->scanned - (uint32_t)used : 0;
    if (h->complete) h->hscan = 0;   // the next request's head is scanned from its start
    if (h->send_continue) {
      h->send_continue = false;
      static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
      if (!h->complete) conn_send_bytes(c, cont, sizeof cont - 1);   // the body is all here already: no need
      if (c->state != CState::Http) return;
    }
    if (h->complete) http_dispatch(c);
    else if (e != HPE_OK) { h->pumping = false; http_error(c, 400, "malformed request", "", true); return; }   // paused without a request: never spin
  }
  if (c->state == CState::Http && c->http == h) {
    h->pumping = false;
    if (h->eof && !h->complete) { conn_close_after_flush(c); return; }
  }
  if (c->state == CState::Http && c->http && !c->http->complete) {
    if (c->http->blocked) uv_read_stop((uv_stream_t*)&c->tcp);
    else uv_read_start((uv_stream_t*)&c->tcp, alloc_cb, conn_read_cb);
  }
}

// ============================================================================
// 11. Recovery
// On a path whose service asked for it, a client that drops comes back
// within the window with the token linkd gave it at connect
// ("linkd.session"), and gets its rooms back and every room push it
// missed, in order. Room pushes there carry "room" and a per-room "seq";
// each room keeps its last pushes (the frames already built, one reference
// each, under --history-memory); the dropped connection's slot stays as a
// Ghost holding its rooms and user until the window ends. Tokens name the
// slot and generation, signed with a key that dies with the process.
// ============================================================================

void hist_clear(Room* room) {
  for (uint16_t i = 0; i < room->hist_count; i++) {
    HistEntry* e = &room->hist[(room->hist_head + i) % room->hist_cap];
    g.history_bytes -= e->frame->len;
    shared_unref(e->frame);
  }
  free(room->hist);
  room->hist = nullptr;
  room->hist_head = room->hist_count = room->hist_cap = 0;
}

void hist_drop_oldest(Room* room) {
  HistEntry* e = &room->hist[room->hist_head];
  g.history_bytes -= e->frame->len;
  shared_unref(e->frame);
  room->hist_head = (uint16_t)((room->hist_head + 1) % room->hist_cap);
  room->hist_count--;
}

// Keeps the push numbered room->seq. Over --history-memory the room's own
// oldest pushes go first; a push that still does not fit is not kept, and
// the room's history starts again after it (a client whose gap reaches
// back to it cannot recover, and is told so).
void hist_push(Room* room, uint16_t cap, Shared* frame, uint64_t serial) {
  if (!room->hist) {
    room->hist = (HistEntry*)calloc(cap, sizeof(HistEntry));
    if (!room->hist) return;
    room->hist_cap = cap;
  }
  if (room->hist_count == room->hist_cap) hist_drop_oldest(room);
  while (room->hist_count && g.history_bytes + frame->len > (uint64_t)cfg.history_memory) hist_drop_oldest(room);
  if (g.history_bytes + frame->len > (uint64_t)cfg.history_memory) return;   // hist_count is 0: the history restarts
  HistEntry* e = &room->hist[(room->hist_head + room->hist_count) % room->hist_cap];
  e->frame = frame;
  e->serial = serial;
  frame->refs++;
  g.history_bytes += frame->len;
  room->hist_count++;
}

// The oldest seq a room can still replay (room->seq + 1 when it has none).
uint32_t hist_oldest(const Room* room) { return room->seq - room->hist_count + 1; }

void ghost_free(Conn* c) {
  conn_leave_all(c);
  free(c->user);
  c->user = nullptr;
  c->ghost = false;
  if (c->state == CState::Ghost) { g.ghost_count--; conn_free_slot(c); }
}

// The table is full: the ghost closest to its end makes room for a live
// connection (its client, if it comes back, is told recovered:false).
bool ghost_evict() {
  Conn* victim = nullptr;
  for (uint32_t i = 0; i < g.conn_hw; i++)
    if (g.conns[i].state == CState::Ghost && (!victim || g.conns[i].close_deadline < victim->close_deadline)) victim = &g.conns[i];
  if (victim) ghost_free(victim);
  return victim != nullptr;
}

// epoch(8) slot(4) gen(4), then 16 bytes of HMAC-SHA256: base64url, 43 chars.
constexpr size_t TOKEN_RAW = 32;

void token_mac(const unsigned char* body, unsigned char* mac16) {
  unsigned char mac[32];
  mbedtls_md_hmac(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), g.token_key, sizeof g.token_key, body, 16, mac);
  memcpy(mac16, mac, 16);
}

// Tells a client on a recovery path how to come back: {"type":"linkd.session",
// "data":{"token","epoch","windowMs","history"}}, its first message.
void session_send(Conn* c) {
  const Group* gr = &g.groups[c->group];
  unsigned char raw[TOKEN_RAW];
  uint32_t slot = conn_index(c);
  memcpy(raw, &g.epoch, 8);
  memcpy(raw + 8, &slot, 4);
  memcpy(raw + 12, &c->gen, 4);
  token_mac(raw, raw + 16);
  unsigned char b64[64];
  size_t bn = 0;
  mbedtls_base64_encode(b64, sizeof b64, &bn, raw, TOKEN_RAW);
  for (size_t i = 0; i < bn; i++) b64[i] = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : b64[i];
  while (bn && b64[bn - 1] == '=') bn--;
  char msg[256];
  int n = snprintf(msg, sizeof msg, "{\"type\":\"linkd.session\",\"data\":{\"token\":\"%.*s\",\"epoch\":\"%016" PRIx64 "\",\"windowMs\":%u,\"history\":%u}}",
                   (int)bn, b64, g.epoch, gr->rec_window_ms, gr->rec_history);
  ws_send_text(c, msg, (size_t)n);
}

void recovered_send(Conn* c, bool ok, uint32_t missed, const char* reason) {
  Buf b;
  if (ok) buf_printf(&b, "{\"type\":\"linkd.recovered\",\"data\":{\"recovered\":true,\"missed\":%u}}", missed);
  else {
    buf_puts(&b, "{\"type\":\"linkd.recovered\",\"data\":{\"recovered\":false,\"reason\":\"");
    buf_json_escape(&b, reason, strlen(reason));
    buf_puts(&b, "\"}}");
  }
  ws_send_text(c, b.p, b.len);
  buf_free(&b);
  (ok ? g.resumed : g.resume_failed)++;
}

// The dropped connection a token names, if it is still kept for this
// client: same epoch, a valid signature, a ghost of the same service.
Conn* resume_target(Conn* c, Slice tok, const char** why) {
  unsigned char raw[48], mac[16];
  char tmp[64];
  size_t rn = 0;
  if (tok.n < 40 || tok.n > 44) { *why = "the token is malformed"; return nullptr; }
  for (size_t i = 0; i < tok.n; i++) tmp[i] = tok.p[i] == '-' ? '+' : tok.p[i] == '_' ? '/' : tok.p[i];
  size_t tn = tok.n;
  while (tn % 4) tmp[tn++] = '=';
  if (mbedtls_base64_decode(raw, sizeof raw, &rn, (const unsigned char*)tmp, tn) || rn != TOKEN_RAW) { *why = "the token is malformed"; return nullptr; }
  uint64_t epoch;
  uint32_t slot, gen;
  memcpy(&epoch, raw, 8);
  memcpy(&slot, raw + 8, 4);
  memcpy(&gen, raw + 12, 4);
  if (epoch != g.epoch) { *why = "linkd restarted since (a new epoch)"; return nullptr; }
  token_mac(raw, mac);
  unsigned diff = 0;
  for (int i = 0; i < 16; i++) diff |= mac[i] ^ raw[16 + i];   // constant time
  if (diff) { *why = "the token is forged"; return nullptr; }
  Conn* old = slot < g.conn_hw ? &g.conns[slot] : nullptr;
  if (!old || old == c || old->gen != gen || old->group != c->group || (old->state != CState::Ghost && old->state != CState::Ws && !old->ghost)) {
    *why = "nothing to resume: the window passed, or it was resumed already";
    return nullptr;
  }
  // A token is a bearer secret, but a connection that had a user comes
  // back only as that user.
  if (old->user && (!c->user || strcmp(old->user->data, c->user->data))) { *why = "the token is another user's"; return nullptr; }
  return old;
}

// {"type":"linkd.resume","data":{"token":"...","rooms":{"room":lastSeq,...}}}
// as a client's first message on a recovery path.
void resume(Conn* c, const char* js, const jsmntok_t* t, int n, int data_at) {
  Slice tok{};
  int rooms_at = -1;
  if (data_at >= 0 && t[data_at].type == JSMN_OBJECT)
    for (int i = data_at + 1, k = 0; k < t[data_at].size && i + 1 < n; k++, i = json_skip(t, n, i + 1)) {
      if (tok_eq(js, t[i], "token") && t[i + 1].type == JSMN_STRING) tok = tok_slice(js, t[i + 1]);
      else if (tok_eq(js, t[i], "rooms") && t[i + 1].type == JSMN_OBJECT) rooms_at = i + 1;
    }
  const char* why = "a linkd.resume needs data.token";
  Conn* old = !c->fresh ? (why = "linkd.resume must be the first message", nullptr) : tok.p ? resume_target(c, tok, &why) : nullptr;
  if (!old) { LOG_DEBUG("conn %u: resume refused: %s", conn_index(c), why); recovered_send(c, false, 0, why); return; }
  // What the client has seen of each room: its last seq, or the room's
  // seq when the old connection joined (it never saw what came before).
  auto since_of = [&](uint32_t m) -> uint32_t {
    const Room* room = &g.rooms[g.members[m].room];
    uint32_t since = g.members[m].join_seq;
    for (int i = rooms_at + 1, k = 0; rooms_at >= 0 && k < t[rooms_at].size && i + 1 < n; k++, i = json_skip(t, n, i + 1))
      if ((size_t)(t[i].end - t[i].start) == room->name_len && !memcmp(js + t[i].start, room->name, room->name_len) && t[i + 1].type == JSMN_PRIMITIVE) {
        double v = strtod(js + t[i + 1].start, nullptr);
        if (v > since && v <= room->seq) since = (uint32_t)v;
      }
    return since;
  };
  uint32_t missed = 0;
  for (uint32_t m = old->rooms; m != NIL; m = g.members[m].cnext) {
    const Room* room = &g.rooms[g.members[m].room];
    uint32_t since = since_of(m);
    if (since + 1 < hist_oldest(room)) {
      recovered_send(c, false, 0, "missed pushes are older than the room's history");
      ghost_free(old);   // it can never be recovered now
      return;
    }
    missed += room->seq - since;
  }
  // The replay, merged across rooms in push order.
  HistEntry* replay = missed ? (HistEntry*)malloc(missed * sizeof(HistEntry)) : nullptr;
  if (missed && !replay) { recovered_send(c, false, 0, "out of memory"); return; }
  uint32_t k = 0;
  for (uint32_t m = old->rooms; m != NIL; m = g.members[m].cnext) {
    const Room* room = &g.rooms[g.members[m].room];
    uint32_t since = since_of(m);
    for (uint16_t i = 0; i < room->hist_count; i++)
      if (hist_oldest(room) + i > since) replay[k++] = room->hist[(room->hist_head + i) % room->hist_cap];
  }
  std::sort(replay, replay + k, [](const HistEntry& a, const HistEntry& b) { return a.serial < b.serial; });
  // The rooms move to the new connection; the old one is gone for good.
  char old_id[96];
  conn_id(old, old_id, sizeof old_id);
  member_move_all(old, c);
  if (old->state == CState::Ws) { old->resumed_away = true; conn_close(old, "resumed on another connection"); }
  else ghost_free(old);
  for (uint32_t i = 0; i < k; i++) {
    replay[i].frame->refs++;   // conn_send may queue it
    if (conn_send(c, replay[i].frame)) { g.ws_msgs_out++; g.ws_bytes_out += replay[i].frame->len; }
    shared_unref(replay[i].frame);
  }
  free(replay);
  if (c->state != CState::Ws) return;
  Backend* b = conn_backend(c);
  if (b) send_conn_event(b, c, linkd_WebSocketConnectionEvent_EventType_RESUMED, old_id);
  recovered_send(c, true, k, nullptr);
}

// ============================================================================
// 12. WebSocket
// After the RFC 6455 handshake a connection drops its Http record. wslay
// parses frames (fragmentation, ping/pong, close handshake, UTF-8 checks,
// the size limit), but a wslay context (~8.7 KiB) is bound to a connection
// only while it is mid-frame, closing, or has control frames to send; an
// idle connection gives its context back to a small pool. Data frames linkd
// sends are built by ws_frame (header + payload, once per message) and
// written directly, so a broadcast is never copied per recipient.
// ============================================================================

ssize_t on_ws_recv(wslay_event_context_ptr ctx, uint8_t* buf, size_t len, int, void*) noexcept {
  if (g.rdlen == 0 || g.cur->state != CState::Ws) { wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK); return -1; }
  size_t n = std::min(len, g.rdlen);
  memcpy(buf, g.rd, n);
  g.rd += n;
  g.rdlen -= n;
  g.cur->ws_fed += n;
  return (ssize_t)n;
}

// What wslay writes (pongs, close frames) is gathered in g.wsout and
// written once per ws_flush: a burst of pings costs one write, not one
// queued request per pong, and counts against --max-outbound like data.
ssize_t on_ws_send(wslay_event_context_ptr ctx, const uint8_t* data, size_t len, int, void*) noexcept {
  if (g.cur->state != CState::Ws) { wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE); return -1; }
  buf_put(&g.wsout, data, len);
  return (ssize_t)len;
}

// Fragments one message may have: wslay keeps a chunk per fragment, so a
// message of many tiny fragments costs far more than its bytes. At least
// 512 bytes per fragment on average, or 64 fragments, whichever is more.
// Below UINT16_MAX: Conn::msg_frames counts up to one past the cap, and a
// cap of 65535 let it wrap to 0 (no cap at all from 32 MiB messages on).
uint32_t ws_frames_max(const Conn* c) { return std::min<uint32_t>(65534, std::max<uint32_t>(64, g.groups[c->group].ws_max_msg / 512)); }

void on_ws_frame_start(wslay_event_context_ptr ctx, const wslay_event_on_frame_recv_start_arg* a, void*) noexcept {
  Conn* c = g.cur;
  uint64_t n = a->payload_length;
  c->ws_framed += 2 + 4 + (n < 126 ? 0 : n < 65536 ? 2 : 8) + n;   // client frames are masked
  c->frame_open = true;
  if (a->opcode == WSLAY_TEXT_FRAME || a->opcode == WSLAY_BINARY_FRAME || a->opcode == WSLAY_CONTINUATION_FRAME)
    c->msg_open = !a->fin;
  if (a->opcode == WSLAY_TEXT_FRAME || a->opcode == WSLAY_BINARY_FRAME) c->msg_frames = 1;
  else if (a->opcode == WSLAY_CONTINUATION_FRAME && ++c->msg_frames > ws_frames_max(c)) {
    wslay_event_shutdown_read(ctx);   // wslay stops parsing (and buffering) this input at once
    ws_close(c, 1009, "message in too many fragments");
  }
}

void on_ws_frame_end(wslay_event_context_ptr, void*) noexcept { g.cur->frame_open = false; }

void ws_message(Conn* c, int opcode, const char* msg, size_t len);

void on_ws_msg(wslay_event_context_ptr, const wslay_event_on_msg_recv_arg* a, void*) noexcept {
  Conn* c = g.cur;
  if (a->opcode == WSLAY_CONNECTION_CLOSE) { c->close_code = a->status_code ? a->status_code : 1005; return; }
  if (a->opcode != WSLAY_TEXT_FRAME && a->opcode != WSLAY_BINARY_FRAME) return;
  if (!(a->rsv & WSLAY_RSV1_BIT)) { ws_message(c, a->opcode, (const char*)a->msg, a->msg_length); return; }
  // Compressed: wslay checked neither UTF-8 nor the inflated size.
  int r = ws_inflate(a->msg, a->msg_length, g.groups[c->group].ws_max_msg);
  if (r == 0 && a->opcode == WSLAY_TEXT_FRAME && !utf8_valid((const uint8_t*)g.zbuf.p, g.zbuf.len)) r = 1007;
  if (r) { ws_close(c, (uint16_t)r, r == 1009 ? "message too big" : "invalid compressed data"); return; }
  ws_message(c, a->opcode, g.zbuf.p, g.zbuf.len);
}

const wslay_event_callbacks ws_callbacks = {on_ws_recv, on_ws_send, nullptr, on_ws_frame_start, nullptr, on_ws_frame_end, on_ws_msg};

bool ws_bind(Conn* c) {
  wslay_event_context_ptr ctx;
  if (g.nctx_pool) ctx = g.ctx_pool[--g.nctx_pool];
  else if (wslay_event_context_server_init(&ctx, &ws_callbacks, nullptr)) return false;
  wslay_event_config_set_max_recv_msg_length(ctx, g.groups[c->group].ws_max_msg);
  wslay_event_config_set_allowed_rsv_bits(ctx, c->deflate ? WSLAY_RSV1_BIT : WSLAY_RSV_NONE);   // pooled contexts carry the last setting
  c->ws = ctx;
  return true;
}

// Only a context in its clean between-messages state goes back to the pool.
void ws_unbind(Conn* c) {
  if (g.nctx_pool < CTX_POOL) g.ctx_pool[g.nctx_pool++] = c->ws;
  else wslay_event_context_free(c->ws);
  c->ws = nullptr;
}

// Sends what wslay queued; closes when the close handshake is over; gives
// the context back when the connection is idle between messages.
// wslay's callbacks find their connection in g.cur; work on another
// connection from inside a callback must put it back.
struct CurScope {
  Conn* saved;
  explicit CurScope(Conn* c) : saved(g.cur) { g.cur = c; }
  ~CurScope() { g.cur = saved; }
};

void ws_flush(Conn* c) {
  if (!c->ws || c->state != CState::Ws) return;
  if (g.recv_conn == c) return;   // ws_feed flushes once wslay_event_recv returns
  CurScope scope(c);
  g.wsout.len = 0;
  if (wslay_event_want_write(c->ws) && wslay_event_send(c->ws)) { conn_close(c, "write failed"); return; }
  if (c->state != CState::Ws) return;
  if (g.wsout.len) {
    int r = conn_write(c, g.wsout.p, g.wsout.len);
    if (g.wsout.cap > 64 * 1024) buf_free(&g.wsout);
    if (r) { conn_close(c, uv_strerror(r)); return; }
  }
  if (!wslay_event_want_read(c->ws) && !wslay_event_want_write(c->ws)) { conn_close_after_flush(c); return; }
  if (wslay_event_get_close_sent(c->ws) || wslay_event_get_close_received(c->ws)) {
    c->ws_closing = true;
    if (!c->close_deadline) c->close_deadline = now_ms() + WS_CLOSE_GRACE_MS;
    return;
  }
  if (!c->frame_open && !c->msg_open && c->ws_fed == c->ws_framed && !wslay_event_want_write(c->ws)) ws_unbind(c);
}

void ws_feed(Conn* c, const char* p, size_t n) {
  if (!n) return;
  if (!c->ws && !ws_bind(c)) { conn_close(c, "out of memory for a WebSocket context"); return; }
  int r;
  {
    CurScope scope(c);
    g.rd = p;
    g.rdlen = n;
    g.recv_conn = c;
    r = wslay_event_recv(c->ws);
    g.recv_conn = nullptr;
    g.rdlen = 0;
  }
  if (g.ctx_doomed) { wslay_event_context_free(g.ctx_doomed); g.ctx_doomed = nullptr; }
  if (c->state != CState::Ws) return;
  if (r) { conn_close(c, "WebSocket read failed"); return; }
  ws_flush(c);
}

// Starts the close handshake (code, reason); hard close after a grace time.
bool ws_close(Conn* c, uint16_t code, const char* reason) {
  if (c->state != CState::Ws) return false;
  if (c->ws_closing) return true;
  if (!c->ws && !ws_bind(c)) { conn_close(c, "out of memory"); return false; }
  c->ws_closing = true;
  c->close_code = code;
  CurScope scope(c);
  size_t n = reason ? std::min(strlen(reason), (size_t)123) : 0;
  wslay_event_queue_close(c->ws, code, (const uint8_t*)reason, n);
  ws_flush(c);
  if (c->state == CState::Ws && !c->close_deadline) c->close_deadline = now_ms() + WS_CLOSE_GRACE_MS;
  c->close_queue = UINT32_MAX;
  return true;
}

// A WebSocket connection's address and user, counted while it is open.
void conn_tally(const Conn* c, bool add) {
  char key[160];
  size_t n = tally_key_ip(c, key);
  add ? tally_add(key, n) : tally_sub(key, n);
  if (c->user) {
    n = tally_key_user(c->group, c->user->data, key);
    add ? tally_add(key, n) : tally_sub(key, n);
  }
}

// Called from conn_close: tell the service (rooms still listed), then free
// everything the connection held.
void ws_detach(Conn* c) {
  if (c->counted_ws) { g.ws_count--; conn_tally(c, false); c->counted_ws = false; }
  while (c->pend != NIL) pend_release_ws(c, c->pend);
  if (c->backend != NIL16 && g.backends[c->backend].state == BState::Ready)
    send_conn_event(&g.backends[c->backend], c, linkd_WebSocketConnectionEvent_EventType_DISCONNECTED);
  // On a path with recovery the rooms (and the user, to check who comes
  // back) stay with the slot, which becomes a Ghost once its socket is closed.
  // A close handshake means the client or the service meant it: no ghost.
  if (g.groups[c->group].rec_window_ms && !g.shutting_down && !c->resumed_away && (c->close_code == 0 || c->close_code == 1006) &&
      g.ghost_count < (uint32_t)cfg.max_connections) {
    c->ghost = true;
    c->close_deadline = now_ms() + g.groups[c->group].rec_window_ms;
  } else {
    conn_leave_all(c);
  }
  if (c->ws) {
    // Closed from inside one of its own wslay callbacks: wslay_event_recv
    // still uses the context, so ws_feed frees it once that returns.
    if (g.recv_conn == c) g.ctx_doomed = c->ws;
    else wslay_event_context_free(c->ws);
    c->ws = nullptr;
  }
}

bool rate_take(Conn* c) {
  if (cfg.rate_limit <= 0) return true;
  uint64_t now = now_ms();
  c->tokens = std::min((double)cfg.rate_burst, c->tokens + (double)(now - c->tokens_at) * (double)cfg.rate_limit / 1000.0);
  c->tokens_at = now;
  if (c->tokens < 1.0) return false;
  c->tokens -= 1.0;
  return true;
}

Sent send_inbound(Backend* b, Conn* c, Slice type, Slice payload, Slice corr, bool binary) {
  linkd_WebSocketInbound m = {};
  conn_id(c, m.connection_id, sizeof m.connection_id);
  snprintf(m.service_name, sizeof m.service_name, "%s", g.groups[c->group].name);
  snprintf(m.message_type, sizeof m.message_type, "%.*s", (int)type.n, type.p);
  snprintf(m.correlation_id, sizeof m.correlation_id, "%.*s", (int)corr.n, corr.p);
  m.payload.funcs.encode = enc_slice;
  m.payload.arg = &payload;
  m.has_user = true;
  user_expand(c->user, c, &m.user);
  m.binary = binary;
  return backend_send_msg(b, TAG_WS_INBOUND, linkd_WebSocketInbound_fields, &m);
}

constexpr uint16_t MAX_PENDING_PER_CONN = 256;

// One whole client message: the envelope is checked and forwarded to the
// connection's service instance; replies are tracked when it has an id.
void ws_message(Conn* c, int opcode, const char* msg, size_t len) {
  if (c->ws_closing || c->state != CState::Ws) return;
  g.ws_msgs_in++;
  g.ws_bytes_in += len;
  const Group* gr = &g.groups[c->group];
  if (gr->ws_raw) {
    if (!rate_take(c)) { g.ws_drops++; return; }
    Backend* b = conn_backend(c);
    Sent r = b ? send_inbound(b, c, Slice{"", 0}, Slice{msg, len}, Slice{"", 0}, opcode == WSLAY_BINARY_FRAME) : Sent::Gone;
    if (r == Sent::TooBig) ws_close(c, 1009, "message too big for the service");
    else if (r != Sent::Ok) g.ws_drops++;
    return;
  }
  if (opcode == WSLAY_BINARY_FRAME) { ws_send_error(c, nullptr, 0, false, "INVALID_MESSAGE", "binary frames are not accepted on this path", 400); return; }
  // The whole message is checked first; jsmn then finds the fields (a
  // valid message never has more tokens than g.toks holds: see tables_init).
  if (!json_valid(msg, len)) { ws_send_error(c, nullptr, 0, false, "INVALID_MESSAGE", "message is not valid JSON", 400); return; }
  jsmn_parser jp;
  jsmn_init(&jp);
  int n = jsmn_parse(&jp, msg, len, g.toks, g.ntoks);
  const jsmntok_t* t = g.toks;
  if (n < 1 || t[0].type != JSMN_OBJECT) { ws_send_error(c, nullptr, 0, false, "INVALID_MESSAGE", "message is not a JSON object", 400); return; }
  Slice type{}, id{}, data{"null", 4};
  bool id_quoted = false, type_ok = false;
  int data_at = -1;
  for (int i = 1, k = 0; k < t[0].size; k++) {
    if (i + 1 >= n) { ws_send_error(c, nullptr, 0, false, "INVALID_MESSAGE", "message is not a JSON object", 400); return; }
    const jsmntok_t& key = t[i];
    const jsmntok_t& val = t[i + 1];
    Slice ks{msg + key.start, (size_t)(key.end - key.start)};
    if (ks.n == 4 && !memcmp(ks.p, "type", 4)) {
      type_ok = val.type == JSMN_STRING && val.end > val.start && val.end - val.start < 128;
      type = Slice{msg + val.start, (size_t)(val.end - val.start)};
    } else if (ks.n == 2 && !memcmp(ks.p, "id", 2) && (val.type == JSMN_STRING || val.type == JSMN_PRIMITIVE) && val.end - val.start < 128) {
      id = Slice{msg + val.start, (size_t)(val.end - val.start)};
      id_quoted = val.type == JSMN_STRING;
      if (!id_quoted && (id.n == 4 && !memcmp(id.p, "null", 4))) id = Slice{};
    } else if (ks.n == 4 && !memcmp(ks.p, "data", 4)) {
      int s0 = val.type == JSMN_STRING ? val.start - 1 : val.start;
      int e0 = val.type == JSMN_STRING ? val.end + 1 : val.end;
      data = Slice{msg + s0, (size_t)(e0 - s0)};
      data_at = i + 1;
    }
    i = json_skip(t, n, i + 1);
  }
  if (!type_ok) { ws_send_error(c, id.p, id.n, id_quoted, "INVALID_MESSAGE", "message needs a string \"type\" (1-127 bytes)", 400); return; }
  if (gr->rec_window_ms && type.n == 12 && !memcmp(type.p, "linkd.resume", 12)) { resume(c, msg, t, n, data_at); c->fresh = false; return; }
  c->fresh = false;
  if (!rate_take(c)) { g.ws_drops++; ws_send_error(c, id.p, id.n, id_quoted, "RATE_LIMITED", "too many messages", 429); return; }
  Backend* b = conn_backend(c);
  if (!b) { ws_send_error(c, id.p, id.n, id_quoted, "SERVICE_UNAVAILABLE", "service is not running", 503); return; }
  uint32_t p = NIL;
  if (id.n) {
    uint16_t outstanding = 0;
    for (uint32_t q = c->pend; q != NIL && outstanding < MAX_PENDING_PER_CONN; q = g.pend[q].cnext) outstanding++;
    if (outstanding >= MAX_PENDING_PER_CONN || (p = pend_alloc(c, PKind::Ws, backend_index(b), (uint64_t)cfg.handler_timeout)) == NIL) {
      ws_send_error(c, id.p, id.n, id_quoted, "RATE_LIMITED", "too many messages awaiting replies", 429);
      return;
    }
    Pending* e = &g.pend[p];
    e->id_len = (uint16_t)id.n;
    e->id_quoted = id_quoted;
    memcpy(e->id, id.p, id.n);
    e->cnext = c->pend;
    c->pend = p;
    pend_arm();
  }
  Sent r = send_inbound(b, c, type, data, id, false);
  if (r != Sent::Ok && p != NIL) pend_release_ws(c, p);
  if (r == Sent::TooBig) ws_close(c, 1009, "message too big for the service");
  else if (r != Sent::Ok) ws_send_error(c, id.p, id.n, id_quoted, "SERVICE_UNAVAILABLE", "service is not accepting messages", 503);
}

// The service's reply to a message with an id.
void ws_service_reply(Conn* c, const char* corr, const linkd_WebSocketResponse* m, Slice data) {
  size_t cn = strlen(corr);
  uint32_t p = c->pend;
  while (p != NIL && !(g.pend[p].id_len == cn && !memcmp(g.pend[p].id, corr, cn))) p = g.pend[p].cnext;
  if (p == NIL) { LOG_DEBUG("reply for unknown or expired id '%s' dropped", corr); return; }
  Pending* e = &g.pend[p];
  Buf b;
  buf_puts(&b, "{\"id\":");
  if (e->id_quoted) buf_puts(&b, "\"");
  buf_put(&b, e->id, e->id_len);
  if (e->id_quoted) buf_puts(&b, "\"");
  if (m->has_error) {
    buf_puts(&b, ",\"error\":{\"type\":\"");
    buf_json_escape(&b, m->error.type[0] ? m->error.type : "ERROR", strlen(m->error.type[0] ? m->error.type : "ERROR"));
    buf_puts(&b, "\",\"message\":\"");
    buf_json_escape(&b, m->error.message, strlen(m->error.message));
    buf_printf(&b, "\",\"code\":%d", m->error.code ? m->error.code : 500);
    if (m->error.details[0] && json_valid(m->error.details, strlen(m->error.details))) {
      buf_puts(&b, ",\"details\":");
      buf_puts(&b, m->error.details);
    }
    buf_puts(&b, "}}");
  } else if (data.n && !json_valid(data.p, data.n)) {
    LOG_WARN("service '%s' replied with invalid JSON; client told BAD_GATEWAY", g.groups[c->group].name);
    pend_fail_ws(c, p, "BAD_GATEWAY", "service replied with invalid JSON", 502);
    buf_free(&b);
    return;
  } else {
    buf_puts(&b, ",\"data\":");
    if (data.n) buf_put(&b, data.p, data.n); else buf_puts(&b, "null");
    buf_puts(&b, "}");
  }
  pend_release_ws(c, p);
  ws_send_text(c, b.p, b.len);
  buf_free(&b);
}

// RFC 6455 §4.2.2: base64(SHA-1(key + GUID)).
void ws_accept_key(Slice key, char out[32]) {
  static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  mbedtls_sha1_context sha;
  unsigned char digest[20];
  mbedtls_sha1_init(&sha);
  mbedtls_sha1_starts_ret(&sha);
  mbedtls_sha1_update_ret(&sha, (const unsigned char*)key.p, key.n);
  mbedtls_sha1_update_ret(&sha, (const unsigned char*)guid, sizeof guid - 1);
  mbedtls_sha1_finish_ret(&sha, digest);
  mbedtls_sha1_free(&sha);
  size_t olen = 0;
  mbedtls_base64_encode((unsigned char*)out, 32, &olen, digest, sizeof digest);
  out[olen] = 0;
}

// RFC 7692 §5.1: an offer with a parameter we do not know is declined, and
// server_max_window_bits too (our window is 15 bits, shared by everyone).
bool deflate_params_ok(std::string_view params) {
  while (!params.empty()) {
    params.remove_prefix(1);   // the ';'
    size_t next = params.find(';');
    std::string_view p = params.substr(0, next);
    params = next == std::string_view::npos ? std::string_view() : params.substr(next);
    while (!p.empty() && p.front() == ' ') p.remove_prefix(1);
    std::string_view key = p.substr(0, p.find('='));
    while (!key.empty() && key.back() == ' ') key.remove_suffix(1);
    if (key != "client_max_window_bits" && key != "client_no_context_takeover" && key != "server_no_context_takeover") return false;
  }
  return true;
}

// Does any Sec-WebSocket-Extensions offer permessage-deflate in a form we
// can take?
bool deflate_offered(const Http* h) {
  for (int i = 0; i < h->nhdrs; i++) {
    if (!str_ieq(h->head.p + h->hdrs[i].name_off, h->hdrs[i].name_len, "sec-websocket-extensions")) continue;
    const char* v = h->head.p + h->hdrs[i].val_off;
    size_t n = h->hdrs[i].val_len, k = 0;
    while (k < n) {                       // offers are comma-separated
      size_t s = k;
      while (k < n && v[k] != ',') k++;
      std::string_view offer(v + s, k - s);
      k++;
      size_t semi = offer.find(';');
      std::string_view name = offer.substr(0, semi);
      while (!name.empty() && name.front() == ' ') name.remove_prefix(1);
      while (!name.empty() && name.back() == ' ') name.remove_suffix(1);
      if (name == "permessage-deflate" && deflate_params_ok(offer.substr(semi == std::string_view::npos ? offer.size() : semi))) return true;
    }
  }
  return false;
}

uint16_t group_by_ws_path(Slice path) {
  for (uint32_t i = 0; i < g.ngroups; i++)
    if (g.groups[i].used && g.groups[i].ws_path[0] && strlen(g.groups[i].ws_path) == path.n && !memcmp(g.groups[i].ws_path, path.p, path.n))
      return (uint16_t)i;
  return NIL16;
}

// RFC 6455 §4.2.1 checks, then Origin, token (claims kept in c->user) and
// the caps. Answers a refusal itself and returns false.
bool ws_handshake_ok(Conn* c, uint16_t gi, bool wants) {
  Http* h = c->http;
  if (h->parser.method != HTTP_GET) { http_error(c, 400, "a WebSocket handshake is a GET request", "", true); return false; }
  if (!wants) { http_error(c, 426, "this path needs a WebSocket upgrade", "Upgrade: websocket\r\n"); return false; }
  Slice conn_hdr = http_header(h, "connection");
  if (!conn_hdr.p || !header_has_token(conn_hdr.p, conn_hdr.n, "upgrade")) { http_error(c, 400, "Connection header must include Upgrade", "", true); return false; }
  Slice ver = http_header(h, "sec-websocket-version");
  if (!ver.p || ver.n != 2 || memcmp(ver.p, "13", 2)) { http_error(c, 426, "only WebSocket version 13 is supported", "Sec-WebSocket-Version: 13\r\n", true); return false; }
  Slice key = http_header(h, "sec-websocket-key");
  unsigned char raw[32];
  size_t rawn = 0;
  if (!key.p || key.n != 24 || mbedtls_base64_decode(raw, sizeof raw, &rawn, (const unsigned char*)key.p, key.n) || rawn != 16) {
    http_error(c, 400, "Sec-WebSocket-Key must be 16 bytes in base64", "", true);
    return false;
  }
  Slice origin = http_header(h, "origin");
  if (*cfg.allowed_origins && origin.p && origin_allowed(origin, nullptr) == Cors::No) { http_error(c, 403, "origin not allowed", "", true); return false; }
  const Group* gr = &g.groups[gi];
  const char* why = "this WebSocket path needs a valid token";
  Slice tok = token_of(http_header(h, "authorization"), http_query(h));
  UserBlob* user = tok.p ? jwt_verify(tok.p, tok.n, &why) : nullptr;
  if (tok.p && !user) LOG_DEBUG("upgrade with an invalid token (%s)", why);
  c->user = user;   // freed by conn_close from here on, whatever happens
  if (gr->ws_auth && !user) { http_error(c, 401, why, "WWW-Authenticate: Bearer\r\n", true); return false; }
  char tkey[160];
  uint64_t per_user = gr->ws_max_per_user ? gr->ws_max_per_user : (uint64_t)cfg.max_connections_per_user;   // settings may change on reload
  if (user && per_user && tally_count(tkey, tally_key_user(gi, user->data, tkey)) >= per_user) {
    http_error(c, 429, "too many connections for this user", "", true);
    return false;
  }
  if (g.ws_count >= (uint32_t)cfg.max_connections) { http_error(c, 503, "connection table full", "", true); return false; }
  if (cfg.max_connections_per_ip > 0 && tally_count(tkey, tally_key_ip(c, tkey)) >= (uint64_t)cfg.max_connections_per_ip) {
    http_error(c, 429, "too many connections from this address", "", true);
    return false;
  }
  return true;
}

// Switches the connection to WebSocket: answers 101, drops the Http
// record, tells the service, and feeds wslay what came after the request.
void ws_accept(Conn* c, uint16_t gi) {
  Http* h = c->http;
  const Group* gr = &g.groups[gi];
  char accept[32];
  ws_accept_key(http_header(h, "sec-websocket-key"), accept);
  bool deflate = gr->ws_compress && deflate_offered(h);
  char resp[320];
  int rn = snprintf(resp, sizeof resp, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s\r\n",
                    accept, deflate ? "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n" : "");
  g.http_status[101]++;
  Buf rest = h->in;   // bytes after the request are frames
  h->in = Buf{};
  http_free(c);
  c->state = CState::Ws;
  c->counted_ws = true;
  g.ws_count++;
  g.ws_accepted++;
  c->group = gi;
  conn_tally(c, true);   // after c->group: the user key includes the service
  c->deflate = deflate;
  c->connected_ms = wall_ms();
  c->tokens = (double)cfg.rate_burst;
  c->tokens_at = now_ms();
  // The first ping comes after 1/2 to 1 interval, spread over connections
  // (golden-ratio steps): clients that connected together (a restart, a
  // bench) are not all pinged, and their pongs read, in the same tick.
  uint64_t hb = group_heartbeat(gr);
  c->next_ping = now_ms() + hb - hb * (((uint32_t)g.ws_accepted * 0x9E3779B9u) >> 24) / 512;
  conn_send_bytes(c, resp, (size_t)rn);
  if (c->state != CState::Ws) { buf_free(&rest); return; }
  uint16_t bi = group_pick(gi);
  c->backend = bi;
  if (bi != NIL16) send_conn_event(&g.backends[bi], c, linkd_WebSocketConnectionEvent_EventType_CONNECTED);
  c->fresh = true;
  if (gr->rec_window_ms) session_send(c);
  if (c->state != CState::Ws) { buf_free(&rest); return; }
  uv_read_start((uv_stream_t*)&c->tcp, alloc_cb, conn_read_cb);
  ws_feed(c, rest.p, rest.len);
  buf_free(&rest);
}

// Takes the request if it is a WebSocket upgrade or aims at a WebSocket
// path: upgrades it or answers the error. False: not ours, go on.
bool ws_try_upgrade(Conn* c) {
  Http* h = c->http;
  Slice up = http_header(h, "upgrade");
  bool wants = up.p && header_has_token(up.p, up.n, "websocket");
  uint16_t gi = group_by_ws_path(http_path(h));
  if (gi == NIL16) {
    if (wants) { http_error(c, 404, "no WebSocket service on this path", "", true); return true; }
    return false;
  }
  if (ws_handshake_ok(c, gi, wants)) ws_accept(c, gi);
  return true;
}

// ============================================================================
// 13. Pushes
// What a service sends its WebSocket clients: to one connection, a room
// (membership lists from section 4) or everyone on its path. A push is
// built once (the JSON envelope and the frame header), then the same bytes are
// written to each recipient; except_connections were marked with the
// current serial while the frame was decoded, so skipping them is O(1).
// ============================================================================

// What became of a push: type null when it went out (delivered: to how
// many connections it was queued), else the error for the CommandResult.
struct PushOutcome {
  const char* type;
  const char* msg;
  int code;
  uint32_t delivered;
};

// A push of service gi (a service's WebSocketOutbound, or the admin
// console's): to one connection, a room or everyone on the path, minus the
// connections marked with the current except serial.
void cluster_push_out(uint16_t gi, const linkd_WebSocketOutbound* m, Slice payload, const Slice* except);   // section 14

// publish: a push made here (not one another node passed on) to a room or
// everyone also goes to the other nodes.
PushOutcome push_send(uint16_t gi, const linkd_WebSocketOutbound* m, Slice payload, bool publish = true) {
  const Group* gr = &g.groups[gi];
  Buf e;                  // the envelope; frames are built from it on first use
  OutMsg msg{1, payload.p, payload.n, nullptr, nullptr, false};
  PushOutcome out{nullptr, nullptr, 0, 0};
  if (gr->ws_raw) {
    msg.opcode = m->binary ? 2 : 1;
    if (!m->binary && !utf8_valid((const uint8_t*)payload.p, payload.n))   // a client would close with 1007
      return PushOutcome{"BAD_MESSAGE", "a text frame must be UTF-8 (send it as binary)", 400, 0};
  } else {
    size_t en = strlen(m->event);
    if (!en || !utf8_valid((const uint8_t*)m->event, en)) return PushOutcome{"BAD_MESSAGE", "event (envelope type) must be 1-127 bytes of UTF-8", 400, 0};
    if (payload.n && !json_valid(payload.p, payload.n)) {
      LOG_WARN("service '%s' pushed invalid JSON for '%s': dropped", gr->name, m->event);
      return PushOutcome{"BAD_MESSAGE", "payload is not valid JSON", 400, 0};
    }
    buf_puts(&e, "{\"type\":\"");
    buf_json_escape(&e, m->event, en);
    buf_puts(&e, "\",\"data\":");
    if (payload.n) buf_put(&e, payload.p, payload.n); else buf_puts(&e, "null");
    buf_puts(&e, "}");
    msg.p = e.p;
    msg.n = e.len;
  }
  uint32_t serial = g.except_serial;
  if (m->connection_id[0]) {
    Conn* c = conn_lookup(m->connection_id);
    if (!c || c->group != gi) out = PushOutcome{"NOT_FOUND", "no such connection", 404, 0};
    else if (c->except_mark != serial) {
      bool closing = c->ws_closing;
      if (ws_send_msg(c, &msg)) out.delivered = 1;
      else out = PushOutcome{"NOT_DELIVERED", closing ? "connection is closing" : "connection over its outbound cap", 410, 0};
    }
  } else if (m->room[0]) {
    size_t rn = strlen(m->room);
    uint32_t r = room_find(gi, m->room, rn);
    if (publish) cluster_push_out(gi, m, payload, g.except_remote);
    if (r != NIL && gr->rec_window_ms) {
      // Recovery: the envelope names the room and its next seq, and the
      // plain frame is kept in the room's history for clients that drop.
      Room* room = &g.rooms[r];
      room->seq++;
      e.len = e.len ? e.len - 1 : 0;   // reopen the envelope's object
      buf_puts(&e, ",\"room\":\"");
      buf_json_escape(&e, m->room, rn);
      buf_printf(&e, "\",\"seq\":%u}", room->seq);
      msg.p = e.p;
      msg.n = e.len;
      hist_push(room, gr->rec_history, outmsg_frame(&msg, false), ++g.push_serial);
    }
    // Each member written to is marked like an excepted one. A failed write
    // can close other connections too (through a service link that breaks):
    // if the saved next member went away, start again from the room's head,
    // and the marks skip who already has the message.
    for (uint32_t i = r == NIL ? NIL : g.rooms[r].head; i != NIL;) {
      uint32_t next = g.members[i].rnext;
      Conn* c = &g.conns[g.members[i].conn];
      if (c->except_mark != serial) { c->except_mark = serial; out.delivered += ws_send_msg(c, &msg); }
      if (next != NIL && g.members[next].room != r) {
        r = room_find(gi, m->room, rn);
        next = r == NIL ? NIL : g.rooms[r].head;
      }
      i = next;
    }
  } else if (m->broadcast_all) {
    if (publish) cluster_push_out(gi, m, payload, g.except_remote);
    for (uint32_t i = 0; i < g.conn_hw; i++) {
      Conn* c = &g.conns[i];
      if (c->state == CState::Ws && c->group == gi && c->except_mark != serial) out.delivered += ws_send_msg(c, &msg);
    }
  } else {
    out = PushOutcome{"BAD_MESSAGE", "no target: set connection_id, room or broadcast_all", 400, 0};
  }
  outmsg_free(&msg);
  buf_free(&e);
  return out;
}

void ws_outbound(Backend* b, const linkd_WebSocketOutbound* m, Slice payload) {
  PushOutcome o = push_send(b->group, m, payload);
  command_result(b, m->op_id, o.type, o.msg, o.code, o.delivered);
}

// ============================================================================
// 14. Cluster
// With --nats-url, nodes share rooms, pushes and connection sends over NATS
// (libnats, its socket I/O on its own two threads). Each node keeps
// its own connections and service instances; it subscribes to a room's
// subject only while it has local members, to a path's subjects while the
// service has the path here, and to its own inbox. A push is published once
// (on the room's or the path's subject) and each node delivers it to its
// local members with the except list applied; NATS never echoes a node's
// own messages back (no-echo), so nobody gets a push twice. Connection ids
// name their node ("slot.gen@node"): commands for another node's
// connection are asked of that node, which answers within CLUSTER_ASK_MS.
// NATS' threads only queue what arrives and count what happens to the link;
// everything else (decoding, delivery, logging) runs on the loop.
// ============================================================================

constexpr uint64_t CLUSTER_HELLO_MS = 1000;   // liveness beacon on linkd.hb
constexpr uint64_t CLUSTER_DEAD_MS = 3500;    // a node silent this long is gone
constexpr uint64_t CLUSTER_ASK_MS = 2000;     // another node answers a request within this
constexpr int MAX_NODES = 64;
constexpr int MAX_ASKS = 1024;
constexpr uint32_t CLUSTER_INBOX_MSGS = 1u << 16;      // what may wait for the loop, in messages
constexpr size_t CLUSTER_INBOX_BYTES = 64u << 20;      // and in payload bytes

#ifdef LINKD_CLUSTER

// libnats (and the OpenSSL it pulls in, ~2 MiB of RSS) is loaded only when
// --nats-url asks for a cluster: a node alone never maps it. Every libnats
// call goes through nats_api, filled from the library by cluster_load.
#define NATS_API(X) X(natsConnection_Close) X(natsConnection_Connect) X(natsConnection_Destroy) \
  X(natsConnection_Publish) X(natsConnection_Status) X(natsConnection_Subscribe) X(natsMsg_Destroy) X(natsMsg_GetData) \
  X(natsMsg_GetDataLength) X(natsMsg_GetSubject) X(natsOptions_Create) X(natsOptions_Destroy) \
  X(natsOptions_LoadCATrustedCertificates) X(natsOptions_SetDisconnectedCB) X(natsOptions_SetMaxReconnect) \
  X(natsOptions_SetName) X(natsOptions_SetNoEcho) X(natsOptions_SetReconnectBufSize) X(natsOptions_SetReconnectWait) \
  X(natsOptions_SetReconnectedCB) X(natsOptions_SetRetryOnFailedConnect) X(natsOptions_SetSecure) \
  X(natsOptions_SetServers) X(natsOptions_SetUserCredentialsFromFiles) X(natsOptions_UseGlobalMessageDelivery) \
  X(natsStatus_GetText) X(natsSubscription_Destroy) X(natsSubscription_SetOnCompleteCB) \
  X(natsSubscription_Unsubscribe) X(nats_CloseAndWait) X(nats_GetLastError) \
  X(nats_SetMessageDeliveryPoolSize)
struct NatsApi {
#define NATS_FN(f) decltype(&::f) f;
  NATS_API(NATS_FN)
#undef NATS_FN
} nats_api;

bool cluster_load(char* err, size_t errn) {
  static void* lib;
  if (lib) return true;
  void* h = dlopen("libnats.so.3.4", RTLD_NOW | RTLD_LOCAL);
  if (!h) h = dlopen("libnats.so", RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    snprintf(err, errn, "nats-url: cluster support needs libnats 3.4 (Debian: apt install libnats3.4): %s", dlerror());
    return false;
  }
#define NATS_FN(f) \
  if (!(nats_api.f = (decltype(nats_api.f))dlsym(h, #f))) { snprintf(err, errn, "nats-url: libnats has no %s: %s", #f, dlerror()); dlclose(h); return false; }
  NATS_API(NATS_FN)
#undef NATS_FN
  lib = h;
  return true;
}

// A question to other nodes that a local service waits on.
struct Ask {
  AskKind kind;
  uint16_t backend;       // who asked, checked with its generation
  uint32_t backend_gen;
  uint64_t req;           // request id on the wire: slot | serial << 16
  uint64_t reply_id;      // op_id or query_id to answer the service with
  uint64_t deadline;      // loop ms
  uint32_t count, nodes;  // Count: members and answering nodes so far
};

struct Node {
  char id[64];
  uint64_t seen;          // loop ms of its last hello (0: slot free)
  bool gone;              // silent past CLUSTER_DEAD_MS (logged once)
};

struct ClusterState {
  bool on;
  natsOptions* opts;
  natsConnection* nc;
  uv_async_t wake;        // NATS' threads queued messages
  uv_timer_t timer;       // hellos, node expiry, asks past their deadline
  uv_mutex_t lock;        // guards the inbox
  natsMsg** inbox; uint32_t nin, cap;   // arrived, waiting for the loop (owner: this)
  size_t inbox_bytes;     // their payloads, capped at CLUSTER_INBOX_BYTES
  natsSubscription* sub_node;   // linkd.n.<node>
  natsSubscription* sub_hello;  // linkd.hb
  natsSubscription* sub_query;  // linkd.q: room counts (every node answers, with or without the service)
  natsSubscription** sub_path;  // [group]: linkd.a.<svc>
  Ask asks[MAX_ASKS];
  uint64_t ask_serial;
  Node nodes[MAX_NODES];
  std::atomic<uint32_t> connects, disconnects, reconnects;   // counted on NATS' threads, logged by the timer
  std::atomic<uint32_t> subs_made, subs_done;   // subscriptions made / let go by libnats' delivery thread
  std::atomic<uint64_t> shed;                   // arrived while the loop was far behind (NATS' thread)
  uint64_t published, received, dropped;        // loop only (dropped: not published)
  uint64_t twin_logged;                         // loop ms: a message with this node's own id was logged
  uint32_t subs;
  bool closing;           // (under lock) the loop is stopping: what arrives is dropped
} cluster;

// Subjects: linkd.r.<service>.<room_hash> (the room's name travels in the
// message: a node drops a push for a room it does not have; rooms whose
// hashes collide share one subscription, held by one of them, so a push
// never arrives twice), linkd.a.<service>
// (everyone on a path), linkd.q (room counts), linkd.n.<node>
// (one node), linkd.hb (hellos).
void subject_room(char* out, size_t n, uint16_t gi, const char* room, size_t rn) {
  snprintf(out, n, "linkd.r.%s.%08x", g.groups[gi].name, room_hash(room, rn));
}

void cluster_on_msg(natsConnection*, natsSubscription*, natsMsg* msg, void*) noexcept {
  uv_mutex_lock(&cluster.lock);
  if (cluster.closing) {
    uv_mutex_unlock(&cluster.lock);
    nats_api.natsMsg_Destroy(msg);
    return;
  }
  size_t bytes = (size_t)nats_api.natsMsg_GetDataLength(msg);
  bool fits = cluster.nin < CLUSTER_INBOX_MSGS && cluster.inbox_bytes + bytes <= CLUSTER_INBOX_BYTES;
  if (fits && cluster.nin == cluster.cap) {
    uint32_t cap = cluster.cap ? cluster.cap * 2 : 256;
    natsMsg** p = (natsMsg**)realloc(cluster.inbox, cap * sizeof *p);
    if (p) { cluster.inbox = p; cluster.cap = cap; }
    else fits = false;
  }
  if (!fits) {   // the loop is far behind: shed (counted)
    cluster.shed++;
    uv_mutex_unlock(&cluster.lock);
    nats_api.natsMsg_Destroy(msg);
    return;
  }
  cluster.inbox[cluster.nin++] = msg;
  cluster.inbox_bytes += bytes;
  uv_mutex_unlock(&cluster.lock);
  uv_async_send(&cluster.wake);
}

void cluster_on_connected(natsConnection*, void*) noexcept { cluster.connects++; }   // a first connect retried in the background
void cluster_on_disconnected(natsConnection*, void*) noexcept { cluster.disconnects++; }
void cluster_on_reconnected(natsConnection*, void*) noexcept { cluster.reconnects++; }

// libnats has closed a subscription and will not call cluster_on_msg for it again.
void cluster_on_sub_done(void*) noexcept { cluster.subs_done++; }

natsSubscription* cluster_sub(const char* subject) {
  natsSubscription* sub = nullptr;
  if (nats_api.natsConnection_Subscribe(&sub, cluster.nc, subject, cluster_on_msg, nullptr) != NATS_OK) {
    LOG_WARN("cluster: cannot subscribe to %s: %s", subject, nats_api.nats_GetLastError(nullptr));
    return nullptr;
  }
  nats_api.natsSubscription_SetOnCompleteCB(sub, cluster_on_sub_done, nullptr);
  cluster.subs_made++;
  cluster.subs++;
  return sub;
}

void cluster_unsub(natsSubscription** sub) {
  if (!*sub) return;
  nats_api.natsSubscription_Unsubscribe(*sub);
  nats_api.natsSubscription_Destroy(*sub);
  *sub = nullptr;
  cluster.subs--;
}

// Encodes and publishes; while NATS is down the client buffers a little,
// then refuses: counted as dropped, local delivery goes on.
void cluster_publish(const char* subject, linkd_ClusterMessage* m) {
  snprintf(m->origin, sizeof m->origin, "%s", node_id());
  size_t n;
  if (!pb_get_encoded_size(&n, linkd_ClusterMessage_fields, m)) return;
  static Buf out;
  out.len = 0;
  buf_reserve(&out, n);
  pb_ostream_t os = pb_ostream_from_buffer((pb_byte_t*)out.p, n);
  if (!pb_encode(&os, linkd_ClusterMessage_fields, m)) { LOG_ERROR("cluster: cannot encode: %s", PB_GET_ERROR(&os)); return; }
  if (nats_api.natsConnection_Publish(cluster.nc, subject, out.p, (int)os.bytes_written) == NATS_OK) cluster.published++;
  else cluster.dropped++;
  if (out.cap > 1 << 20) buf_free(&out);
}

// Bytes already encoded as the field (tags included), written as they are.
bool enc_raw_field(pb_ostream_t* s, const pb_field_t*, void* const* arg) noexcept {
  const Slice* raw = (const Slice*)*arg;
  return !raw->n || pb_write(s, (const pb_byte_t*)raw->p, raw->n);
}

bool enc_strings(pb_ostream_t* s, const pb_field_t* f, void* const* arg) noexcept {
  const Slice* list = (const Slice*)*arg;   // ends with a null p
  for (; list && list->p; list++)
    if (!pb_encode_tag_for_field(s, f) || !pb_encode_string(s, (const pb_byte_t*)list->p, list->n)) return false;
  return true;
}

// --- interest -----------------------------------------------------------------

// A room of the same service on the same subject as room r, other than r
// (with the subscription if sub), or NIL.
uint32_t room_subject_twin(uint32_t r, bool sub) {
  const Room* room = &g.rooms[r];
  return index_find(&g.room_index, room->hash, [&](uint32_t x) {
    return x != r && g.rooms[x].hash == room->hash && g.rooms[x].group == room->group && (!sub || g.rooms[x].sub);
  });
}

// Called as room r is made (on) and freed (off). One subscription per
// subject: a room whose subject is already held shares it, and a room that
// goes hands its subscription to a twin that stays.
void cluster_room_interest(uint32_t r, bool on) {
  if (!cluster.on) return;
  Room* room = &g.rooms[r];
  if (on) {
    if (room_subject_twin(r, true) != NIL) return;
    char subj[128];
    subject_room(subj, sizeof subj, room->group, room->name, room->name_len);
    room->sub = cluster_sub(subj);
  } else if (room->sub) {
    uint32_t twin = room_subject_twin(r, false);
    if (twin != NIL) { g.rooms[twin].sub = room->sub; room->sub = nullptr; }
    else cluster_unsub((natsSubscription**)&room->sub);
  }
}

void cluster_group_interest(uint16_t gi, bool on) {
  if (!cluster.on) return;
  natsSubscription** a = &cluster.sub_path[gi];
  if (on && !*a) {
    char subj[96];
    snprintf(subj, sizeof subj, "linkd.a.%s", g.groups[gi].name);
    *a = cluster_sub(subj);
  } else if (!on) {
    cluster_unsub(a);
  }
}

// --- out: pushes and questions --------------------------------------------------

// A local service's push to a room or everyone, for the other nodes'
// members (push_send delivered it here). except: the ids as the service sent them.
void cluster_push_out(uint16_t gi, const linkd_WebSocketOutbound* m, Slice payload, const Slice* except) {
  if (!cluster.on) return;
  linkd_ClusterMessage cm = {};
  cm.has_push = true;
  snprintf(cm.push.service, sizeof cm.push.service, "%s", g.groups[gi].name);
  cm.push.has_push = true;
  cm.push.push = *m;
  cm.push.push.op_id = 0;
  cm.push.push.payload.funcs.encode = enc_slice;
  cm.push.push.payload.arg = &payload;
  cm.push.push.except_connections.funcs.encode = enc_strings;
  cm.push.push.except_connections.arg = (void*)except;
  char subj[128];
  if (m->room[0]) subject_room(subj, sizeof subj, gi, m->room, strlen(m->room));
  else snprintf(subj, sizeof subj, "linkd.a.%s", g.groups[gi].name);
  cluster_publish(subj, &cm);
}

Ask* ask_new(AskKind kind, const Backend* b, uint64_t reply_id, uint64_t timeout_ms) {
  for (int i = 0; i < MAX_ASKS; i++) {
    Ask* a = &cluster.asks[i];
    if (a->kind != AskKind::Free) continue;
    *a = Ask{kind, backend_index(b), b->gen, (uint64_t)i | ++cluster.ask_serial << 16, reply_id, now_ms() + timeout_ms, 0, 1};
    return a;
  }
  return nullptr;
}

int nodes_alive() {
  int n = 0;
  for (const Node& nd : cluster.nodes) n += nd.seen && now_ms() - nd.seen < CLUSTER_DEAD_MS;
  return n;
}

bool node_alive(const char* id) {
  for (const Node& nd : cluster.nodes)
    if (nd.seen && !strcmp(nd.id, id)) return now_ms() - nd.seen < CLUSTER_DEAD_MS;
  return false;
}

// A local service asks about another node's connection (rq.service and one
// of push/rooms/close set by the caller). False when that node is not
// alive: the caller answers NOT_FOUND at once. With every ask slot taken,
// the service is answered CLUSTER_BUSY here.
bool cluster_ask_node(Backend* b, const char* conn_id, AskKind kind, uint64_t reply_id, linkd_ClusterRequest* rq) {
  const char* node = conn_id_node(conn_id);
  if (!cluster.on || !node || !node_alive(node)) return false;
  bool answer = reply_id || kind != AskKind::Push;   // a push without op_id expects nothing back
  Ask* a = answer ? ask_new(kind, b, reply_id, CLUSTER_ASK_MS) : nullptr;
  if (answer && !a) {
    static const char msg[] = "too many questions to other nodes in flight: try again";
    if (kind != AskKind::Rooms) {
      command_result(b, reply_id, "CLUSTER_BUSY", msg, 503);
    } else {
      linkd_RoomsResult r = {};
      r.query_id = reply_id;
      r.has_error = true;
      r.error.code = 503;
      snprintf(r.error.type, sizeof r.error.type, "CLUSTER_BUSY");
      snprintf(r.error.message, sizeof r.error.message, "%s", msg);
      backend_send_msg(b, TAG_ROOMS_RESULT, linkd_RoomsResult_fields, &r);
    }
    return true;
  }
  linkd_ClusterMessage cm = {};
  cm.has_request = true;
  cm.request = *rq;
  cm.request.request_id = a ? a->req : 0;
  snprintf(cm.request.service, sizeof cm.request.service, "%s", g.groups[b->group].name);
  char subj[96];
  snprintf(subj, sizeof subj, "linkd.n.%s", node);
  cluster_publish(subj, &cm);
  return true;
}

// Members of a room on every node: asked on linkd.q, which every node
// answers (0 without the service), so the answer is complete once every
// live node has; this node's own count is in from the start.
bool cluster_ask_count(Backend* b, const char* room, uint64_t query_id, uint64_t timeout_ms, uint32_t local) {
  if (!cluster.on || !nodes_alive()) return false;   // no other node to wait for: this node's count at once
  Ask* a = ask_new(AskKind::Count, b, query_id, timeout_ms);
  if (!a) return false;   // every ask slot taken: this node's count alone (nodes_known says what it leaves out)
  a->count = local;
  linkd_ClusterMessage cm = {};
  cm.has_request = true;
  cm.request.request_id = a->req;
  snprintf(cm.request.service, sizeof cm.request.service, "%s", g.groups[b->group].name);
  snprintf(cm.request.room_count, sizeof cm.request.room_count, "%s", room);
  cluster_publish("linkd.q", &cm);
  return true;
}


// An ask ends: answered, or out of time.
void ask_finish(Ask* a, const linkd_ClusterAnswer* ans, Slice rooms_raw) {
  Backend* b = &g.backends[a->backend];
  bool live = b->gen == a->backend_gen && b->state == BState::Ready;
  if (live) switch (a->kind) {
    case AskKind::Push:
    case AskKind::Close:
      if (!ans) command_result(b, a->reply_id, "NOT_FOUND", "the connection's node did not answer", 404);
      else if (ans->ok) command_result(b, a->reply_id, nullptr, nullptr, 0, ans->count);
      else command_result(b, a->reply_id, ans->error.type, ans->error.message, ans->error.code);
      break;
    case AskKind::Rooms: {
      linkd_RoomsResult r = {};
      r.query_id = a->reply_id;
      if (ans && ans->ok) {
        r.rooms.funcs.encode = enc_raw_field;
        r.rooms.arg = &rooms_raw;
      } else {
        r.has_error = true;
        r.error.code = 404;
        snprintf(r.error.type, sizeof r.error.type, "NOT_FOUND");
        snprintf(r.error.message, sizeof r.error.message, "%s", ans ? ans->error.message : "the connection's node did not answer");
      }
      backend_send_msg(b, TAG_ROOMS_RESULT, linkd_RoomsResult_fields, &r);
      break;
    }
    case AskKind::Count: room_count_result(b, a->reply_id, a->count, a->nodes); break;
    case AskKind::Free: break;
  }
  a->kind = AskKind::Free;
}

// --- in -----------------------------------------------------------------------

struct InPush {           // what the decode callbacks collect
  Slice payload;
  Slice rooms_raw;        // ClusterAnswer.rooms: the repeated field's encoded bytes
};

// The rooms list of an answer, kept as its encoded bytes to pass on as is.
bool dec_rooms_raw(pb_istream_t* s, const pb_field_t* f, void** arg) noexcept {
  InPush* in = (InPush*)*arg;
  static Buf raw;
  if (!in->rooms_raw.p) raw.len = 0;
  size_t n = s->bytes_left;
  uint8_t hdr[16];
  pb_ostream_t os = pb_ostream_from_buffer(hdr, sizeof hdr);
  pb_encode_tag(&os, PB_WT_STRING, 2);   // RoomsResult.rooms
  pb_encode_varint(&os, n);
  buf_put(&raw, hdr, os.bytes_written);
  buf_reserve(&raw, n);
  if (!pb_read(s, (pb_byte_t*)raw.p + raw.len, n)) return false;
  raw.len += n;
  in->rooms_raw = Slice{raw.p, raw.len};
  (void)f;
  return true;
}

uint16_t group_by_name(const char* name);

// A request from another node about one of ours (or a room count).
void cluster_answer_request(const char* origin, const linkd_ClusterRequest* rq, Slice payload) {
  linkd_ClusterMessage cm = {};
  cm.has_answer = true;
  linkd_ClusterAnswer* ans = &cm.answer;
  ans->request_id = rq->request_id;
  uint16_t gi = group_by_name(rq->service);
  auto fail = [&](const char* type, const char* msg, int code) {
    ans->has_error = true;
    ans->error.code = code;
    snprintf(ans->error.type, sizeof ans->error.type, "%s", type);
    snprintf(ans->error.message, sizeof ans->error.message, "%s", msg);
  };
  Slice names[512];   // the rooms answer: up to 511 names, null-terminated list
  int nn = 0;
  if (rq->room_count[0]) {
    uint32_t r = gi == NIL16 ? NIL : room_find(gi, rq->room_count, strlen(rq->room_count));
    ans->ok = true;
    ans->count = r == NIL ? 0 : g.rooms[r].count;
  } else {
    const char* id = rq->has_push ? rq->push.connection_id : rq->has_rooms ? rq->rooms.connection_id : rq->close.connection_id;
    Conn* c = conn_lookup(id);
    if (!c || gi == NIL16 || c->group != gi) fail("NOT_FOUND", "no such connection", 404);
    else if (rq->has_push) {
      except_begin();
      PushOutcome o = push_send(gi, &rq->push, payload, false);
      if (o.type) fail(o.type, o.msg, o.code);
      else { ans->ok = true; ans->count = o.delivered; }
    } else if (rq->has_rooms) {
      for (uint32_t m = c->rooms; m != NIL && nn < 511; m = g.members[m].cnext) names[nn++] = Slice{g.rooms[g.members[m].room].name, g.rooms[g.members[m].room].name_len};
      ans->ok = true;
    } else {
      uint32_t code = rq->close.code ? rq->close.code : 1000;
      if (!close_code_ok(code)) fail("BAD_CODE", "close code not allowed on the wire", 400);
      else { ws_close(c, (uint16_t)code, rq->close.reason); ans->ok = true; }
    }
  }
  names[nn] = Slice{nullptr, 0};
  ans->rooms.funcs.encode = enc_strings;
  ans->rooms.arg = names;
  if (!rq->request_id) return;
  char subj[96];
  snprintf(subj, sizeof subj, "linkd.n.%s", origin);
  cluster_publish(subj, &cm);
}

void cluster_hello_from(const char* id) {
  Node* free_slot = nullptr;
  for (Node& nd : cluster.nodes) {
    if (nd.seen && !strcmp(nd.id, id)) {
      if (nd.gone) LOG_INFO("cluster: node '%s' is back", id);
      nd.seen = now_ms();
      nd.gone = false;
      return;
    }
    if (!free_slot && (!nd.seen || now_ms() - nd.seen >= CLUSTER_DEAD_MS * 4)) free_slot = &nd;
  }
  if (!free_slot) return;
  snprintf(free_slot->id, sizeof free_slot->id, "%s", id);
  free_slot->seen = now_ms();
  free_slot->gone = false;
  LOG_INFO("cluster: node '%s' is here", id);
}

void cluster_handle(natsMsg* msg) {
  const char* subj = nats_api.natsMsg_GetSubject(msg);
  frame_in = Slice{nats_api.natsMsg_GetData(msg), (size_t)nats_api.natsMsg_GetDataLength(msg)};   // slices point into the message (alive until it is destroyed)
  pb_istream_t is = pb_istream_from_buffer((const pb_byte_t*)frame_in.p, frame_in.n);
  static linkd_ClusterMessage cm;
  cm = linkd_ClusterMessage{};
  InPush in{};
  cm.push.push.payload.funcs.decode = dec_slice;
  cm.push.push.payload.arg = &in.payload;
  cm.push.push.except_connections.funcs.decode = dec_except;
  cm.request.push.payload.funcs.decode = dec_slice;
  cm.request.push.payload.arg = &in.payload;
  cm.answer.rooms.funcs.decode = dec_rooms_raw;
  cm.answer.rooms.arg = &in;
  except_begin();   // marks made while decoding this push's except list
  if (!pb_decode(&is, linkd_ClusterMessage_fields, &cm)) { LOG_WARN("cluster: a message on %s does not decode: %s", subj, PB_GET_ERROR(&is)); return; }
  cluster.received++;
  if (!node_id_ok(cm.origin)) { cluster.dropped++; return; }   // it would name a subject we publish on
  if (!strcmp(cm.origin, node_id())) {   // no-echo: another node runs with this node's id
    if (!cluster.twin_logged || now_ms() - cluster.twin_logged > 60000) {
      cluster.twin_logged = now_ms();
      LOG_ERROR("cluster: another node uses this node's id '%s' (--node-id must differ per node): its messages are ignored", node_id());
    }
    return;
  }
  if (cm.hello) { cluster_hello_from(cm.origin); return; }
  if (cm.has_push) {
    uint16_t gi = group_by_name(cm.push.service);
    if (gi == NIL16) return;
    if (cm.push.push.room[0] && room_find(gi, cm.push.push.room, strlen(cm.push.push.room)) == NIL) return;   // a hash neighbour's room
    push_send(gi, &cm.push.push, in.payload, false);   // marks of its except list were made while decoding
  } else if (cm.has_request) {
    cluster_answer_request(cm.origin, &cm.request, in.payload);
  } else if (cm.has_answer) {
    uint32_t i = (uint32_t)(cm.answer.request_id & 0xffff);
    if (i >= MAX_ASKS || cluster.asks[i].kind == AskKind::Free || cluster.asks[i].req != cm.answer.request_id) return;   // late
    Ask* a = &cluster.asks[i];
    if (a->kind == AskKind::Count) {
      a->count += cm.answer.count;
      if (++a->nodes >= (uint32_t)nodes_alive() + 1) ask_finish(a, &cm.answer, in.rooms_raw);   // everyone answered
    } else {
      ask_finish(a, &cm.answer, in.rooms_raw);
    }
  }
}

// What has arrived, one batch per wake: messages that arrive meanwhile wake
// the loop again after its other work (NATS' threads send the wake).
void cluster_wake_cb(uv_async_t*) noexcept {
  uv_mutex_lock(&cluster.lock);
  uint32_t n = cluster.nin;
  natsMsg** batch = cluster.inbox;
  cluster.inbox = nullptr;
  cluster.nin = cluster.cap = 0;
  cluster.inbox_bytes = 0;
  uv_mutex_unlock(&cluster.lock);
  for (uint32_t i = 0; i < n; i++) {
    cluster_handle(batch[i]);
    nats_api.natsMsg_Destroy(batch[i]);
  }
  free(batch);
}

void cluster_timer_cb(uv_timer_t*) noexcept {
  uint64_t now = now_ms();
  static uint64_t next_hello;
  if (now >= next_hello) {
    next_hello = now + CLUSTER_HELLO_MS;
    linkd_ClusterMessage cm = {};
    cm.hello = true;
    cluster_publish("linkd.hb", &cm);
  }
  for (Ask& a : cluster.asks)
    if (a.kind != AskKind::Free && now >= a.deadline) ask_finish(&a, nullptr, Slice{});
  for (Node& nd : cluster.nodes)
    if (nd.seen && !nd.gone && now - nd.seen >= CLUSTER_DEAD_MS) {
      nd.gone = true;
      LOG_WARN("cluster: node '%s' silent for %" PRIu64 " ms: gone (its connections are not found until it is back)", nd.id, now - nd.seen);
    }
  // what NATS' threads counted, told on the loop
  static uint32_t connects, disconnects, reconnects;
  if (cluster.connects != connects) { connects = cluster.connects; LOG_INFO("cluster: connected to NATS"); }
  if (cluster.disconnects != disconnects) { disconnects = cluster.disconnects; LOG_WARN("cluster: NATS connection lost: this node works alone, pushes for other nodes are buffered (1 MiB) then dropped"); }
  if (cluster.reconnects != reconnects) { reconnects = cluster.reconnects; LOG_INFO("cluster: NATS connection back"); }
}

// --nats-url: connects (retrying in the background if NATS is not up yet:
// the node works alone meanwhile) and subscribes to its inbox and hellos.
bool cluster_open(char* err, size_t errn) {
  char urls[1024];
  snprintf(urls, sizeof urls, "%s", cfg.nats_url);
  const char* list[16];
  int n = 0;
  for (char* tok = strtok(urls, ","); tok && n < 16; tok = strtok(nullptr, ",")) list[n++] = tok;
  natsOptions* o = nullptr;
  natsStatus st = nats_api.natsOptions_Create(&o);
  if (st == NATS_OK) st = nats_api.natsOptions_SetServers(o, list, n);
  if (st == NATS_OK) st = nats_api.natsOptions_SetName(o, node_id());
  if (st == NATS_OK) st = nats_api.natsOptions_SetNoEcho(o, true);
  // One delivery thread for every subscription (libnats' default is a thread
  // per subscription: one per room with members here), which also keeps one
  // order across a publisher's room and path subjects.
  if (st == NATS_OK) st = nats_api.nats_SetMessageDeliveryPoolSize(1);
  if (st == NATS_OK) st = nats_api.natsOptions_UseGlobalMessageDelivery(o, true);
  if (st == NATS_OK) st = nats_api.natsOptions_SetMaxReconnect(o, -1);
  if (st == NATS_OK) st = nats_api.natsOptions_SetReconnectWait(o, 500);
  if (st == NATS_OK) st = nats_api.natsOptions_SetReconnectBufSize(o, 1 << 20);
  // with a callback, a first connect that fails is retried in the background
  // (without one, Connect would retry inside the call, for ever)
  if (st == NATS_OK) st = nats_api.natsOptions_SetRetryOnFailedConnect(o, true, cluster_on_connected, nullptr);
  if (st == NATS_OK) st = nats_api.natsOptions_SetDisconnectedCB(o, cluster_on_disconnected, nullptr);
  if (st == NATS_OK) st = nats_api.natsOptions_SetReconnectedCB(o, cluster_on_reconnected, nullptr);
  if (st == NATS_OK && *cfg.nats_creds) st = nats_api.natsOptions_SetUserCredentialsFromFiles(o, cfg.nats_creds, nullptr);
  if (st == NATS_OK && *cfg.nats_tls_ca) {
    st = nats_api.natsOptions_SetSecure(o, true);
    if (st == NATS_OK) st = nats_api.natsOptions_LoadCATrustedCertificates(o, cfg.nats_tls_ca);
  }
  if (st != NATS_OK) { snprintf(err, errn, "nats: %s", nats_api.nats_GetLastError(nullptr)); nats_api.natsOptions_Destroy(o); return false; }
  cluster.opts = o;
  uv_mutex_init(&cluster.lock);
  uv_async_init(g.loop, &cluster.wake, cluster_wake_cb);
  uv_timer_init(g.loop, &cluster.timer);
  uv_timer_start(&cluster.timer, cluster_timer_cb, 100, 100);
  cluster.sub_path = (natsSubscription**)calloc(g.ngroups, sizeof(natsSubscription*));
  st = nats_api.natsConnection_Connect(&cluster.nc, o);
  if (st != NATS_OK && st != NATS_NOT_YET_CONNECTED) { snprintf(err, errn, "nats: cannot connect to %.300s: %s", cfg.nats_url, nats_api.natsStatus_GetText(st)); return false; }
  if (st == NATS_NOT_YET_CONNECTED) LOG_WARN("cluster: NATS at %s not reachable yet: this node works alone until it is", cfg.nats_url);
  else LOG_INFO("cluster: connected to NATS at %s as node '%s'", cfg.nats_url, node_id());
  cluster.on = true;
  char subj[96];
  snprintf(subj, sizeof subj, "linkd.n.%s", node_id());
  cluster.sub_node = cluster_sub(subj);
  cluster.sub_hello = cluster_sub("linkd.hb");
  cluster.sub_query = cluster_sub("linkd.q");
  return true;
}

bool cluster_start(char* err, size_t errn) {
  if (!*cfg.nats_url) return true;
  // libnats makes its threads here, and they keep this mask: a SIGHUP never
  // goes to one of them (where the default action would kill), only to the
  // loop's thread, which holds it off while its handle closes at the stop.
  sigset_t hup, old;
  sigemptyset(&hup);
  sigaddset(&hup, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &hup, &old);
  bool ok = cluster_open(err, errn);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return ok;
}

// At the stop: subscriptions go with the connection; the loop's handles are closed.
bool cluster_connected() { return cluster.on && nats_api.natsConnection_Status(cluster.nc) == NATS_CONN_STATUS_CONNECTED; }

void cluster_stop() {
  if (!cluster.on) return;
  cluster.on = false;
  uv_mutex_lock(&cluster.lock);
  cluster.closing = true;   // libnats' threads no longer wake the loop (its handle is closing)
  uv_mutex_unlock(&cluster.lock);
  nats_api.natsConnection_Close(cluster.nc);
  uv_close((uv_handle_t*)&cluster.wake, nullptr);
  uv_close((uv_handle_t*)&cluster.timer, nullptr);
}

void cluster_release() {
  if (!cluster.opts) return;
  for (uint32_t r = 0; r < g.room_hw; r++) if (g.rooms[r].sub) { nats_api.natsSubscription_Destroy((natsSubscription*)g.rooms[r].sub); g.rooms[r].sub = nullptr; }
  for (uint32_t i = 0; i < g.ngroups; i++) if (cluster.sub_path[i]) nats_api.natsSubscription_Destroy(cluster.sub_path[i]);
  for (natsSubscription* sub : {cluster.sub_node, cluster.sub_hello, cluster.sub_query})
    if (sub) nats_api.natsSubscription_Destroy(sub);
  nats_api.natsConnection_Destroy(cluster.nc);
  // Until the delivery thread has let go of every subscription (it may still
  // be in cluster_on_msg, and holds their close messages until then).
  for (int i = 0; i < 2000 && cluster.subs_done < cluster.subs_made; i++) uv_sleep(1);
  nats_api.natsOptions_Destroy(cluster.opts);
  free(cluster.sub_path);
  for (uint32_t i = 0; i < cluster.nin; i++) nats_api.natsMsg_Destroy(cluster.inbox[i]);
  free(cluster.inbox);
  uv_mutex_destroy(&cluster.lock);
  nats_api.nats_CloseAndWait(2000);
  cluster.opts = nullptr;
}

#else   // built without cluster support: --nats-url is refused by config_parse

struct ClusterState { bool on; uint64_t published, received, dropped, shed; uint32_t subs, disconnects, reconnects; } cluster;
bool cluster_ask_node(Backend*, const char*, AskKind, uint64_t, linkd_ClusterRequest*) { return false; }
bool cluster_ask_count(Backend*, const char*, uint64_t, uint64_t, uint32_t) { return false; }
void cluster_room_interest(uint32_t, bool) {}
void cluster_group_interest(uint16_t, bool) {}
void cluster_push_out(uint16_t, const linkd_WebSocketOutbound*, Slice, const Slice*) {}
int nodes_alive() { return 0; }
bool cluster_connected() { return false; }
bool cluster_load(char*, size_t) { return true; }
bool cluster_start(char*, size_t) { return true; }
void cluster_stop() {}
void cluster_release() {}

#endif

// ============================================================================
// 15. Admin console
// --admin-listen serves one page, built into the binary (gzip), and the
// small JSON API it polls once a second: services and instances,
// connections, users, rooms, rates (a ring of one-second samples), HTTP
// statuses, memory, limits; and two actions, a test push and a disconnect,
// each logged. Access needs a JWT with --admin-role, or, when no JWT is
// configured, a loopback address (config_parse refuses anything else).
// ============================================================================

#if __has_include("admin_page.h")
#include "admin_page.h"       // admin_page_gz[]: admin/index.html, gzip -9 (the Makefile makes it)
#else
const unsigned char admin_page_gz[] = {0};
constexpr size_t admin_page_gz_len = 0;
#endif

constexpr int SAMPLES = 300;  // five minutes of one-second samples

struct Sample { uint32_t msgs_in, msgs_out, drops, http; };

struct AdminState {
  Sample ring[SAMPLES];
  int head, count;            // head: the next slot written
  uint64_t last[4];           // the counters at the last sample
  uint64_t second;            // loop ms of the last sample
  uint64_t started;           // loop ms at start
} admin;

uint64_t http_total() {
  uint64_t n = 0;
  for (unsigned s = 100; s < 600; s++) n += g.http_status[s];
  return n;
}

// One sample a second, from the housekeeping tick: what each counter did
// since the last one.
void admin_sample(uint64_t now) {
  if (now - admin.second < 1000) return;
  uint64_t cur[4] = {g.ws_msgs_in, g.ws_msgs_out, g.ws_drops, http_total()};
  Sample* s = &admin.ring[admin.head];   // the counters start at 0 with linkd: the first sample counts from the start
  s->msgs_in = (uint32_t)(cur[0] - admin.last[0]);
  s->msgs_out = (uint32_t)(cur[1] - admin.last[1]);
  s->drops = (uint32_t)(cur[2] - admin.last[2]);
  s->http = (uint32_t)(cur[3] - admin.last[3]);
  admin.head = (admin.head + 1) % SAMPLES;
  if (admin.count < SAMPLES) admin.count++;
  memcpy(admin.last, cur, sizeof cur);
  admin.second = now;
}

uint64_t rss_kib() {
  long pages = 0, resident = 0;
  FILE* f = fopen("/proc/self/statm", "r");
  if (f) { if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0; fclose(f); }
  return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE) / 1024;
}

void json_str(Buf* b, const char* s, size_t n) {
  buf_puts(b, "\"");
  buf_json_escape(b, s, n);
  buf_puts(b, "\"");
}
void json_str(Buf* b, const char* s) { json_str(b, s, strlen(s)); }

void admin_services(Buf* b) {
  buf_puts(b, "\"services\":[");
  bool first = true;
  for (uint32_t gi = 0; gi < g.ngroups; gi++) {
    const Group* gr = &g.groups[gi];
    if (!gr->used) continue;
    uint32_t conns = 0;
    for (uint32_t i = 0; i < g.conn_hw; i++) conns += g.conns[i].state == CState::Ws && g.conns[i].group == gi;
    buf_printf(b, "%s{\"name\":", first ? "" : ",");
    first = false;
    json_str(b, gr->name);
    buf_puts(b, ",\"version\":");
    json_str(b, gr->version);
    buf_puts(b, ",\"wsPath\":");
    json_str(b, gr->ws_path);
    buf_printf(b, ",\"raw\":%s,\"recovery\":%s,\"connections\":%u,\"routes\":[", gr->ws_raw ? "true" : "false", gr->rec_window_ms ? "true" : "false", conns);
    bool rf = true;
    for (uint32_t r = 0; r < g.nroutes; r++) {
      const Route* rt = &g.routes[r];
      if (rt->group != gi) continue;
      buf_printf(b, "%s{\"method\":", rf ? "" : ",");
      rf = false;
      json_str(b, rt->def.method);
      buf_puts(b, ",\"path\":");
      json_str(b, rt->def.path);
      buf_printf(b, ",\"auth\":%s,\"roles\":[", rt->def.auth || rt->def.roles_count ? "true" : "false");
      for (pb_size_t k = 0; k < rt->def.roles_count; k++) { if (k) buf_puts(b, ","); json_str(b, rt->def.roles[k]); }
      buf_puts(b, "]}");
    }
    buf_puts(b, "],\"instances\":[");
    bool bf = true;
    for (uint32_t i = 0; i < g.nbackends; i++) {
      const Backend* be = &g.backends[i];
      if (be->state != BState::Ready || be->group != gi) continue;
      buf_printf(b, "%s{\"id\":", bf ? "" : ",");
      bf = false;
      json_str(b, be->instance_id);
      buf_printf(b, ",\"state\":\"ready\",\"uid\":%u,\"gid\":%u,\"pid\":%u,\"queueBytes\":%zu}", be->uid, be->gid, be->pid,
                 be->pipe.write_queue_size + be->out.len);
    }
    buf_printf(b, "],\"live\":%u}", gr->live);
  }
  buf_puts(b, "]");
}

// The largest few of a table, by a count: rooms by members, users by connections.
template <class Count>
int admin_top(uint32_t n, int want, uint32_t* out, Count count) {
  int k = 0;
  for (uint32_t i = 0; i < n; i++) {
    uint32_t c = count(i);
    if (!c) continue;
    int pos = k < want ? k++ : want;
    if (pos == want && c <= count(out[want - 1])) continue;
    if (pos == want) pos = want - 1;
    while (pos > 0 && count(out[pos - 1]) < c) { out[pos] = out[pos - 1]; pos--; }
    out[pos] = i;
  }
  return k;
}

void admin_state(Buf* b, uint64_t now) {
  uint32_t instances = 0, services = 0;
  for (uint32_t i = 0; i < g.nbackends; i++) instances += g.backends[i].state == BState::Ready;
  for (uint32_t i = 0; i < g.ngroups; i++) services += g.groups[i].used && g.groups[i].live;
  buf_printf(b, "{\"version\":\"%s\",\"uptimeS\":%" PRIu64 ",\"rssKiB\":%" PRIu64 ",", LINKD_VERSION, (now - admin.started) / 1000, rss_kib());
  buf_printf(b, "\"limits\":{\"maxConnections\":%" PRId64 ",\"maxHttpConnections\":%" PRId64 ",\"maxRooms\":%" PRId64 ",\"maxMemberships\":%" PRId64
                ",\"maxServices\":%" PRId64 ",\"maxMessageSize\":%" PRId64 ",\"maxOutbound\":%" PRId64 ",\"rateLimit\":%" PRId64 ",\"maxConnectionsPerUser\":%" PRId64
                ",\"historyMemory\":%" PRId64 "},",
             cfg.max_connections, cfg.max_http_connections, cfg.max_rooms, cfg.max_memberships, cfg.max_services, cfg.max_message_size,
             cfg.max_outbound, cfg.rate_limit, cfg.max_connections_per_user, cfg.history_memory);
  buf_printf(b, "\"counts\":{\"ws\":%u,\"http\":%u,\"tls\":%u,\"ghosts\":%u,\"rooms\":%u,\"memberships\":%u,\"pending\":%u,\"services\":%u,\"instances\":%u},",
             g.ws_count, g.http_count, tls.count, g.ghost_count, g.room_count, g.member_count, g.pend_count, services, instances);
  buf_printf(b, "\"totals\":{\"msgsIn\":%" PRIu64 ",\"msgsOut\":%" PRIu64 ",\"drops\":%" PRIu64 ",\"wsAccepted\":%" PRIu64 ",\"httpRequests\":%" PRIu64
                ",\"historyBytes\":%" PRIu64 "},",
             g.ws_msgs_in, g.ws_msgs_out, g.ws_drops, g.ws_accepted, http_total(), g.history_bytes);
  buf_puts(b, "\"http\":{");
  bool first = true;
  for (unsigned st = 100; st < 600; st++)
    if (g.http_status[st]) { buf_printf(b, "%s\"%u\":%" PRIu64, first ? "" : ",", st, g.http_status[st]); first = false; }
  buf_puts(b, "},");
  admin_services(b);
  uint32_t top[20];
  int k = admin_top(g.room_hw, 20, top, [](uint32_t r) { return g.rooms[r].used ? g.rooms[r].count : 0u; });
  buf_puts(b, ",\"rooms\":[");
  for (int i = 0; i < k; i++) {
    const Room* r = &g.rooms[top[i]];
    buf_printf(b, "%s{\"service\":", i ? "," : "");
    json_str(b, g.groups[r->group].name);
    buf_puts(b, ",\"room\":");
    json_str(b, r->name, r->name_len);
    buf_printf(b, ",\"members\":%u,\"seq\":%u}", r->count, r->seq);
  }
  k = admin_top(g.tally_hw, 10, top, [](uint32_t t) { return g.tallies[t].key[0] == 'u' ? g.tallies[t].count : 0u; });
  buf_puts(b, "],\"users\":[");
  for (int i = 0; i < k; i++) {
    const Tally* t = &g.tallies[top[i]];
    uint16_t gi;
    memcpy(&gi, t->key + 1, 2);
    buf_printf(b, "%s{\"service\":", i ? "," : "");
    json_str(b, gi < g.ngroups ? g.groups[gi].name : "?");
    buf_puts(b, ",\"user\":");
    json_str(b, t->key + 3, t->len - 3u);
    buf_printf(b, ",\"connections\":%u}", t->count);
  }
  // The newest connections, newest first (the console's disconnect action
  // needs ids): slots are reused lowest first, so by connection time.
  k = 0;
  for (uint32_t i = 0; i < g.conn_hw; i++) {
    if (g.conns[i].state != CState::Ws) continue;
    uint64_t t = g.conns[i].connected_ms;
    int pos = k < 20 ? k++ : 20;
    if (pos == 20 && t <= g.conns[top[19]].connected_ms) continue;
    if (pos == 20) pos = 19;
    while (pos > 0 && g.conns[top[pos - 1]].connected_ms < t) { top[pos] = top[pos - 1]; pos--; }
    top[pos] = i;
  }
  buf_puts(b, "],\"connections\":[");
  for (int i = 0; i < k; i++) {
    const Conn* c = &g.conns[top[i]];
    char id[96], remote[80];
    conn_id(c, id, sizeof id);
    conn_remote(c, remote, sizeof remote);
    buf_printf(b, "%s{\"id\":\"%s\",\"service\":", i ? "," : "", id);
    json_str(b, g.groups[c->group].name);
    buf_puts(b, ",\"user\":");
    json_str(b, c->user ? c->user->data : "");
    buf_puts(b, ",\"remote\":");
    json_str(b, remote);
    buf_printf(b, ",\"rooms\":%u,\"connectedAt\":%" PRIu64 ",\"tls\":%s}", c->nrooms, c->connected_ms, c->tls ? "true" : "false");
  }
  buf_puts(b, "],\"series\":{\"intervalS\":1");
  static const char* names[] = {"msgsIn", "msgsOut", "drops", "http"};
  for (int f = 0; f < 4; f++) {
    buf_printf(b, ",\"%s\":[", names[f]);
    for (int i = 0; i < admin.count; i++) {
      const Sample* s = &admin.ring[(admin.head - admin.count + i + SAMPLES) % SAMPLES];
      uint32_t v = f == 0 ? s->msgs_in : f == 1 ? s->msgs_out : f == 2 ? s->drops : s->http;
      buf_printf(b, "%s%u", i ? "," : "", v);
    }
    buf_puts(b, "]");
  }
  buf_puts(b, "}}");
}

// The members of a small JSON object body, for the actions. Strings are
// unescaped into fixed buffers; one that does not fit refuses the request
// (a cut room name or event would reach the wrong room or type).
struct AdminBody {
  char service[64], room[128], connection[96], event[128], reason[124];
  bool has[5];            // service, room, connection, event, reason given
  Slice data;             // raw JSON
  bool all;
  int64_t code;
  const char* bad;        // why the body is refused
};

bool admin_body(const Http* h, AdminBody* ab) {
  *ab = AdminBody{};
  ab->bad = "the body must be a JSON object";
  const char* js = h->body.p;
  size_t n = h->body.len;
  if (!js || !json_valid(js, n)) return false;
  jsmn_parser jp;
  jsmn_init(&jp);
  int k = jsmn_parse(&jp, js, n, g.toks, g.ntoks);
  const jsmntok_t* t = g.toks;
  if (k < 1 || t[0].type != JSMN_OBJECT) return false;
  static const char* const names[] = {"service", "room", "connection", "event", "reason"};
  char* dst[] = {ab->service, ab->room, ab->connection, ab->event, ab->reason};
  size_t room[] = {sizeof ab->service, sizeof ab->room, sizeof ab->connection, sizeof ab->event, sizeof ab->reason};
  for (int i = 1; i + 1 < k; i = json_skip(t, k, i + 1)) {
    const jsmntok_t& v = t[i + 1];
    Slice val = tok_slice(js, v);
    if (tok_eq(js, t[i], "data")) { ab->data = v.type == JSMN_STRING ? Slice{js + v.start - 1, val.n + 2} : val; continue; }
    if (tok_eq(js, t[i], "all")) { ab->all = val.n == 4 && !memcmp(val.p, "true", 4); continue; }
    if (tok_eq(js, t[i], "code") && v.type == JSMN_PRIMITIVE) { ab->code = strtoll(val.p, nullptr, 10); continue; }
    for (int f = 0; f < 5; f++) {
      if (!tok_eq(js, t[i], names[f])) continue;
      size_t w = v.type == JSMN_STRING ? json_unescape(val, dst[f], room[f] - 1) : JSON_BAD;
      if (w == JSON_BAD || w == JSON_LONG) {
        static char why[96];
        snprintf(why, sizeof why, "\"%s\" must be a string of at most %zu bytes", names[f], room[f] - 1);
        ab->bad = why;
        return false;
      }
      dst[f][w] = 0;
      ab->has[f] = true;
    }
  }
  return true;
}

uint16_t group_by_name(const char* name) {
  for (uint32_t i = 0; i < g.ngroups; i++)
    if (g.groups[i].used && !strcmp(g.groups[i].name, name)) return (uint16_t)i;
  return NIL16;
}

void admin_json(Conn* c, unsigned status, Buf* body) {
  const char* hd = "Content-Type: application/json\r\nCache-Control: no-store\r\n";
  http_respond(c, status, hd, strlen(hd), body->p, body->len);
}

void admin_push(Conn* c, const char* who) {
  static AdminBody ab;   // static: a few hundred bytes of buffers
  if (!admin_body(c->http, &ab)) { http_error(c, 400, ab.bad); return; }
  uint16_t gi = group_by_name(ab.service);
  if (gi == NIL16 || !g.groups[gi].ws_path[0]) { http_error(c, 404, "no such service with a WebSocket path"); return; }
  linkd_WebSocketOutbound m = {};
  snprintf(m.event, sizeof m.event, "%s", ab.has[3] ? ab.event : "admin.test");
  if (ab.has[2]) snprintf(m.connection_id, sizeof m.connection_id, "%s", ab.connection);
  else if (ab.has[1]) snprintf(m.room, sizeof m.room, "%s", ab.room);
  else m.broadcast_all = ab.all;
  except_begin();   // no connection is excepted
  PushOutcome o = push_send(gi, &m, ab.data.p ? ab.data : Slice{"null", 4});
  LOG_INFO("admin (%s): push '%s' to %s '%s' of service '%s': %s, delivered to %u", who, m.event, m.connection_id[0] ? "connection" : m.room[0] ? "room" : "everyone",
           m.connection_id[0] ? m.connection_id : m.room, g.groups[gi].name, o.type ? o.type : "ok", o.delivered);
  if (o.type) { http_error(c, (unsigned)o.code, o.msg); return; }
  Buf b;
  buf_printf(&b, "{\"ok\":true,\"delivered\":%u}", o.delivered);
  admin_json(c, 200, &b);
  buf_free(&b);
}

void admin_disconnect(Conn* c, const char* who) {
  static AdminBody ab;
  if (!admin_body(c->http, &ab)) { http_error(c, 400, ab.bad); return; }
  const char* id = ab.connection;
  Conn* target = conn_lookup(id);
  if (!target) { LOG_INFO("admin (%s): disconnect %s: no such connection", who, id); http_error(c, 404, "no such connection"); return; }
  int64_t code = ab.code ? ab.code : 4000;
  if (!close_code_ok(code)) { http_error(c, 400, "close code not allowed on the wire"); return; }
  const char* reason = ab.has[4] ? ab.reason : "closed by the administrator";
  LOG_INFO("admin (%s): disconnect %s with %" PRId64 " (%s)", who, id, code, reason);
  ws_close(target, (uint16_t)code, reason);
  Buf b;
  buf_puts(&b, "{\"ok\":true}");
  admin_json(c, 200, &b);
  buf_free(&b);
}

// Who may use the API: the holder of a JWT with --admin-role; without any
// JWT configured, whoever reaches the loopback listener. Null if refused
// (the answer is sent).
const char* admin_who(Conn* c, char* who, size_t n) {
  char remote[80];
  conn_remote(c, remote, sizeof remote);
  if (!*cfg.jwt_secret && !keys.n) { snprintf(who, n, "loopback %s", remote); return who; }
  const char* why = "the console needs a token with the admin role (Authorization: Bearer)";
  Slice tok = token_of(http_header(c->http, "authorization"), Slice{nullptr, 0});
  UserBlob* u = tok.p ? jwt_verify(tok.p, tok.n, &why) : nullptr;
  if (!u) { LOG_WARN("admin: refused %s: %s", remote, why); http_error(c, 401, why, "WWW-Authenticate: Bearer\r\n"); return nullptr; }
  bool ok = user_has_role(u, cfg.admin_role);
  snprintf(who, n, "user '%s' from %s", u->data, remote);
  free(u);
  if (!ok) { LOG_WARN("admin: refused %s: no '%s' role", who, cfg.admin_role); http_error(c, 403, "the token lacks the admin role"); return nullptr; }
  return who;
}

void admin_dispatch(Conn* c, const char* method, Slice path) {
  auto is = [&](const char* p) { return path.n == strlen(p) && !memcmp(path.p, p, path.n); };
  bool get = !strcmp(method, "GET") || !strcmp(method, "HEAD"), post = !strcmp(method, "POST");
  if (is("/") || is("/index.html")) {
    if (!get) { http_error(c, 405, "method not allowed here", "Allow: GET, HEAD\r\n"); return; }
    if (!admin_page_gz_len) { http_error(c, 404, "this linkd was built without the console page"); return; }
    // The page holds no data (the API does): it needs no token. CSP: nothing from elsewhere.
    const char* hd = "Content-Type: text/html; charset=utf-8\r\nContent-Encoding: gzip\r\nCache-Control: no-store\r\n"
                     "Content-Security-Policy: default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:\r\n"
                     "X-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\n";
    http_respond(c, 200, hd, strlen(hd), (const char*)admin_page_gz, admin_page_gz_len);
    return;
  }
  bool state = is("/api/state"), push = is("/api/push"), disc = is("/api/disconnect");
  if (!state && !push && !disc) { http_error(c, 404, "no such page or API"); return; }
  if (state ? !get : !post) { http_error(c, 405, "method not allowed here", state ? "Allow: GET\r\n" : "Allow: POST\r\n"); return; }
  char who[256];
  if (!admin_who(c, who, sizeof who)) return;
  if (push) { admin_push(c, who); return; }
  if (disc) { admin_disconnect(c, who); return; }
  Buf b;
  admin_state(&b, now_ms());
  admin_json(c, 200, &b);
  buf_free(&b);
}

// ============================================================================
// 16. Lifecycle
// Timers: one for all pending replies (the FIFO head), a 1 s housekeeping
// tick (heartbeats, idle HTTP connections, stalled close handshakes,
// shutdown progress), the systemd watchdog. Then signals and shutdown,
// /metrics, accepting and reading client connections, and the listeners.
// ============================================================================

void pend_expire(uint32_t p, bool timeout) {
  Pending* e = &g.pend[p];
  Conn* c = &g.conns[e->slot];
  bool live = c->gen == e->gen;
  if (e->kind == PKind::Http) {
    if (live && c->state == CState::Http && c->http && c->http->pending == p) {
      http_error(c, timeout ? 504 : 503, timeout ? "service did not answer in time" : "service went away");   // frees p
      return;
    }
    pend_free(p);
    return;
  }
  if (!live || c->state != CState::Ws) { pend_free(p); return; }
  pend_fail_ws(c, p, timeout ? "TIMEOUT" : "SERVICE_UNAVAILABLE", timeout ? "service did not reply in time" : "service went away",
               timeout ? 504 : 503);
}

void pend_timer_cb(uv_timer_t*) noexcept {
  uint64_t now = now_ms();
  while (g.pend_head != NIL && g.pend[g.pend_head].deadline <= now) pend_expire(g.pend_head, true);
  pend_arm();
}

void pend_arm() {
  if (g.pend_head == NIL) { uv_timer_stop(&g.pend_timer); return; }
  uint64_t now = now_ms(), d = g.pend[g.pend_head].deadline;
  uv_timer_start(&g.pend_timer, pend_timer_cb, d > now ? d - now : 0, 0);
}

void notify(const char* msg) {
  const char* path = getenv("NOTIFY_SOCKET");
  if (!path || !*path) return;
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  size_t n = strlen(path);
  if (n >= sizeof sa.sun_path) return;
  memcpy(sa.sun_path, path, n);
  if (path[0] == '@') sa.sun_path[0] = 0;   // abstract namespace
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (sockaddr*)&sa, (socklen_t)(offsetof(sockaddr_un, sun_path) + n)) < 0)
    LOG_WARN("sd_notify to %s: %s", path, strerror(errno));
  close(fd);
}

void housekeeping(uint64_t now) {
  static Shared* ping = ws_frame(9, nullptr, 0);   // one ping frame for everyone, never freed
  for (uint32_t i = 0; i < g.conn_hw; i++) {
    Conn* c = &g.conns[i];
    if ((c->state == CState::Http || c->state == CState::Ws) && c->tls && c->tls->partial_since && now - c->tls->partial_since > TLS_RECORD_MS) {
      tls.failures++;   // a record begun and never finished holds 16 KiB: a slow-record attack
      conn_close(c, "TLS record not finished in time");
      continue;
    }
    if (c->state == CState::Ws) {
      if (c->close_deadline) {
        // A peer still draining what was queued before our close frame gets
        // more time as long as the queue shrinks; a stuck one is cut off.
        size_t q = c->tcp.write_queue_size;
        if (now >= c->close_deadline && q && q < c->close_queue) c->close_deadline = now + 1000;
        else if (now >= c->close_deadline) conn_close(c, "close handshake timed out");
        c->close_queue = (uint32_t)std::min<size_t>(q, UINT32_MAX);
        continue;
      }
      if (now < c->next_ping) continue;
      if (c->missed >= 2) { conn_close(c, "missed two heartbeats"); continue; }
      c->missed++;
      c->next_ping = now + group_heartbeat(&g.groups[c->group]);
      if (int r = conn_write(c, ping->data, ping->len, ping)) conn_close(c, uv_strerror(r));
    } else if (c->state == CState::Linger) {
      if (now >= c->close_deadline) conn_close(c, "linger deadline");
    } else if (c->state == CState::Ghost) {
      if (now >= c->close_deadline) ghost_free(c);
    } else if (c->state == CState::Http && c->tls && !c->tls->handshaken) {
      if (now - c->http->since > TLS_HANDSHAKE_MS) { tls.failures++; conn_close(c, "TLS handshake not finished in time"); }

    } else if (c->state == CState::Http && c->http && !c->http->complete) {
      Http* h = c->http;
      bool partial = h->in.len || llhttp_get_errno(&h->parser) != HPE_OK || h->head.len;
      if (partial && now - h->since > HTTP_HEAD_MS) http_error(c, 408, "request not received in time", "", true);
      else if (!partial && now - h->since > HTTP_IDLE_MS) conn_close(c, "idle");
    }
  }
  if (now >= g.trim_at) {
    g.trim_at = now + TRIM_MS;
    tables_trim();
    tls_trim();
  }
  // A link that never registers would hold its slot (--max-services) forever.
  for (uint32_t i = 0; i < g.nbackends; i++) {
    Backend* b = &g.backends[i];
    if (b->state == BState::Open && !b->close_why && now - b->opened > (uint64_t)cfg.register_timeout)
      backend_close(b, "no RegisterService within --register-timeout");
  }
}

void shutdown_tell_services();
uint32_t backends_open();
void shutdown_finish();
void bound_name(const uv_tcp_t* handle, char* out, size_t n);

void tick_cb(uv_timer_t*) noexcept {
  uint64_t now = now_ms();
  housekeeping(now);
  admin_sample(now);
  if (g.shutting_down && !g.services_told && ((g.ws_count == 0 && g.http_count == 0) || now >= g.shutdown_deadline))
    shutdown_tell_services();
  if (g.services_told && (backends_open() == 0 || now >= g.services_deadline)) shutdown_finish();
}

void watchdog_cb(uv_timer_t*) noexcept { notify("WATCHDOG=1"); }

void shutdown_begin(const char* why) {
  if (g.shutting_down) return;
  g.shutting_down = true;
  LOG_INFO("shutting down (%s): %u WebSocket and %u HTTP connections to finish", why, g.ws_count, g.http_count);
  notify("STOPPING=1\nSTATUS=stopping");
  g.shutdown_deadline = now_ms() + (uint64_t)cfg.shutdown_timeout;
  if (g.listening) { uv_close((uv_handle_t*)&g.listener, nullptr); g.listening = false; }
  if (g.tls_listening) { uv_close((uv_handle_t*)&g.tls_listener, nullptr); g.tls_listening = false; }
  if (g.admin_listening) { uv_close((uv_handle_t*)&g.admin_listener, nullptr); g.admin_listening = false; }
  if (g.svc_listening) { uv_close((uv_handle_t*)&g.svc_listener, nullptr); g.svc_listening = false; unlink(cfg.socket_path); }
  static const char bye[] = "{\"type\":\"server.shutdown\"}";
  for (uint32_t i = 0; i < g.conn_hw; i++) {
    Conn* c = &g.conns[i];
    if (c->state == CState::Ws) {
      ws_send_text(c, bye, sizeof bye - 1);
      ws_close(c, 1001, "server shutting down");
    } else if (c->state == CState::Http && c->http && !c->http->complete && !c->http->in.len) {
      conn_close(c, "shutting down");
    }
  }
  uv_timer_start(&g.tick, tick_cb, 20, 20);
}

// Everything clients had is done (or the deadline passed): close the rest,
// tell the services, and let the loop run out.
// Clients are done (or out of time): close what is left of them, then give
// each service its SHUTDOWN notice behind whatever it has not read yet, and
// close its link once that is written (or SERVICE_TELL_MS later).
void shutdown_tell_services() {
  g.services_told = true;
  g.services_deadline = now_ms() + SERVICE_TELL_MS;
  for (uint32_t i = 0; i < g.conn_hw; i++) conn_close(&g.conns[i], "shutdown deadline");
  for (uint32_t i = 0; i < g.nbackends; i++) {
    Backend* b = &g.backends[i];
    if (b->state != BState::Ready && b->state != BState::Open) continue;
    linkd_ErrorResponse e = {};
    e.code = 503;
    snprintf(e.type, sizeof e.type, "SHUTDOWN");
    snprintf(e.message, sizeof e.message, "linkd is stopping");
    backend_send_msg(b, TAG_ERROR, linkd_ErrorResponse_fields, &e, true);
    backend_close_after_flush(b, "linkd is stopping");
  }
}

uint32_t backends_open() {
  uint32_t n = 0;
  for (uint32_t i = 0; i < g.nbackends; i++) n += g.backends[i].state == BState::Ready || g.backends[i].state == BState::Open;
  return n;
}

// Everything is told: close the last links and handles; the loop runs out.
void cluster_stop();   // section 14

void shutdown_finish() {
  cluster_stop();
  for (uint32_t i = 0; i < g.nbackends; i++) backend_close(&g.backends[i], "linkd is stopping");
  uv_close((uv_handle_t*)&g.tick, nullptr);
  uv_close((uv_handle_t*)&g.pend_timer, nullptr);
  uv_close((uv_handle_t*)&g.watchdog, nullptr);
  uv_close((uv_handle_t*)&g.flush, nullptr);
  uv_close((uv_handle_t*)&g.sigterm, nullptr);
  uv_close((uv_handle_t*)&g.sigint, nullptr);
  // Closing the handle restores the default action (which would kill): SIGHUP
  // stays blocked until it is ignored, and one that came in between is dropped.
  sigset_t hup, old;
  sigemptyset(&hup);
  sigaddset(&hup, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &hup, &old);
  uv_close((uv_handle_t*)&g.sighup, nullptr);
  signal(SIGHUP, SIG_IGN);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

void signal_cb(uv_signal_t*, int signum) noexcept { shutdown_begin(signum == SIGTERM ? "SIGTERM" : "SIGINT"); }

uint64_t tick_ms() { return std::min<uint64_t>(1000, (uint64_t)cfg.heartbeat_interval / 2); }

// SIGHUP: the settings again from the environment and the config file
// (flags still win). What can change live takes effect now: JWT secret and
// keys, Origins, log level, rates, caps, heartbeat, timeouts, the
// service_allow list (instances it no longer allows are closed). What
// cannot (addresses, table and size limits) is named in one log line and
// keeps its value until a restart. A bad value changes nothing.
const char* const restart_only[] = {"listen", "tls-listen", "admin-listen", "socket", "socket-mode", "max-connections", "max-http-connections", "max-rooms",
                                    "max-memberships", "max-services", "max-message-size", "max-body-size", "max-frame-size",
                                    "nats-url", "node-id", "nats-creds", "nats-tls-ca"};

void reload() {
  if (g.shutting_down) { LOG_INFO("SIGHUP while stopping: ignored"); return; }
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  char msg[512];
  snprintf(msg, sizeof msg, "RELOADING=1\nMONOTONIC_USEC=%llu", (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000);
  notify(msg);
  static Config old;      // static: Config is a few KiB
  old = cfg;
  char why[1024];
  Keys* fresh = (Keys*)calloc(1, sizeof(Keys));
  bool ok = fresh && config_reparse(g.argc, g.argv, why, sizeof why);
  if (ok && !keys_load(fresh, why, sizeof why)) { ok = false; cfg = old; }
  // New connections get the new certificate, key and client CA; live ones
  // keep theirs. The TLS listener itself cannot come or go live.
  TlsConf* tc = nullptr;
  if (ok && tls.current && *cfg.tls_listen && !(tc = tls_conf_load(why, sizeof why))) { ok = false; cfg = old; }
  if (!ok) {
    if (fresh) { keys_free(fresh); free(fresh); }
    g.reloads_failed++;
    LOG_WARN("reload refused, nothing changed: %s", fresh ? why : "out of memory");
    notify("READY=1\nSTATUS=reload refused: see the log");
    return;
  }
  Buf kept;
  for (const char* name : restart_only) {
    const Setting* st = setting_find(name, strlen(name));
    size_t off = (size_t)((const char*)st->field - (const char*)&cfg);
    size_t size = st->kind == Kind::Str ? (size_t)st->max : sizeof(int64_t);
    if (!memcmp((const char*)&old + off, st->field, size)) continue;
    memcpy(st->field, (const char*)&old + off, size);
    if (!*setting_from[st - settings]) continue;   // a default derived from others (max-frame-size): not the file's doing
    buf_printf(&kept, "%s%s", kept.len ? ", " : "", name);
  }
  if (kept.len) LOG_WARN("reload: %.*s changed but only take effect at a restart: kept as they were", (int)kept.len, kept.p);
  buf_free(&kept);
  keys_free(&keys);
  keys = *fresh;
  free(fresh);
  if (tc) {
    // A session from before must not skip a new client CA (or resume under
    // another key type): new ticket keys, when the files changed at all.
    if (memcmp(tc->digest, tls.current->digest, sizeof tc->digest)) tls_tickets_rotate();
    tls_conf_unref(tls.current);
    tls.current = tc;
  }
  // (restarted only when its period changes: reloads in a row must not keep putting the tick off)
  if (!g.shutting_down && uv_timer_get_repeat(&g.tick) != tick_ms()) uv_timer_start(&g.tick, tick_cb, tick_ms(), tick_ms());
  for (uint32_t i = 0; i < g.nbackends; i++) {
    Backend* b = &g.backends[i];
    if (b->state == BState::Ready && !allow_ok(b, g.groups[b->group].name)) backend_close(b, "no longer allowed by service_allow");
  }
  g.reloads++;
  LOG_INFO("reloaded the settings (%s%s)", *cfg.config ? "config " : "environment", cfg.config);
  char plain[80];
  bound_name(&g.listener, plain, sizeof plain);
  snprintf(msg, sizeof msg, "READY=1\nSTATUS=listening on %s, services on %s (reloaded)", plain, cfg.socket_path);
  notify(msg);
}

void sighup_cb(uv_signal_t*, int) noexcept { reload(); }

void metrics_write(Buf* b) {
  buf_puts(b, "# HELP linkd_http_requests_total HTTP requests answered, by status.\n# TYPE linkd_http_requests_total counter\n");
  for (unsigned s = 100; s < 600; s++)
    if (g.http_status[s]) buf_printf(b, "linkd_http_requests_total{status=\"%u\"} %" PRIu64 "\n", s, g.http_status[s]);
  uint32_t links = 0;
  for (uint32_t i = 0; i < g.nbackends; i++) links += g.backends[i].state == BState::Ready;
  uint32_t services = 0;
  for (uint32_t i = 0; i < g.ngroups; i++) services += g.groups[i].used && g.groups[i].live;
  uint32_t bound = 0;
  for (uint32_t i = 0; i < g.conn_hw; i++) bound += g.conns[i].state == CState::Ws && g.conns[i].ws;
  struct { const char* name; const char* type; const char* help; uint64_t v; } rows[] = {
    {"linkd_http_bytes_in_total", "counter", "HTTP request bytes (head and body) received.", g.http_bytes_in},
    {"linkd_http_bytes_out_total", "counter", "HTTP response bytes sent.", g.http_bytes_out},
    {"linkd_http_connections", "gauge", "Open plain HTTP connections.", g.http_count},
    {"linkd_services", "gauge", "Services with at least one registered instance.", services},
    {"linkd_service_instances", "gauge", "Registered service instances (links).", links},
    {"linkd_service_frames_in_total", "counter", "Frames received from services.", g.svc_frames_in},
    {"linkd_service_frames_out_total", "counter", "Frames sent to services.", g.svc_frames_out},
    {"linkd_service_link_errors_total", "counter", "Service links closed for a bad frame or an error.", g.svc_errors},
    {"linkd_service_registrations_refused_total", "counter", "Registrations refused (any reason).", g.reg_refused},
    {"linkd_service_registrations_refused_identity_total", "counter", "Registrations refused by service_allow (the peer's uid/gid).", g.reg_refused_identity},
    {"linkd_reloads_total", "counter", "SIGHUP reloads applied.", g.reloads},
    {"linkd_cluster_nodes", "gauge", "Other nodes heard from in the last few seconds (cluster mode).", (uint64_t)nodes_alive()},
    {"linkd_cluster_published_total", "counter", "Messages published to NATS (pushes, requests, answers, hellos).", cluster.published},
    {"linkd_cluster_received_total", "counter", "Messages received from NATS.", cluster.received},
    {"linkd_cluster_dropped_total", "counter", "Cluster messages lost: not published while NATS was unreachable, shed, or refused (a sender id that is not a node id).", cluster.dropped + cluster.shed},
    {"linkd_cluster_reconnects_total", "counter", "Reconnections to NATS.", (uint64_t)cluster.reconnects},
    {"linkd_cluster_disconnects_total", "counter", "Losses of the NATS connection.", (uint64_t)cluster.disconnects},
    {"linkd_cluster_subscriptions", "gauge", "NATS subscriptions held (rooms with members here, one per subject; paths; inbox, hellos, room counts).", cluster.subs},
    {"linkd_ws_ghosts", "gauge", "Dropped connections kept for their clients to resume (recovery).", g.ghost_count},
    {"linkd_history_bytes", "gauge", "Bytes of room pushes kept for recovery (--history-memory).", g.history_bytes},
    {"linkd_ws_resumed_total", "counter", "Clients that came back and recovered their rooms and missed pushes.", g.resumed},
    {"linkd_ws_resume_failed_total", "counter", "Resume attempts answered recovered:false.", g.resume_failed},
    {"linkd_tls_connections", "gauge", "Open connections on the TLS listener.", tls.count},
    {"linkd_tls_handshakes_total", "counter", "TLS handshakes completed.", tls.handshakes},
    {"linkd_tls_resumed_total", "counter", "TLS handshakes that resumed a session (ticket).", tls.resumed},
    {"linkd_tls_failures_total", "counter", "TLS connections that failed or timed out in the handshake, or spoke plain text.", tls.failures},
    {"linkd_tls_buffers_pooled", "gauge", "Idle TLS record buffers kept for reuse.", (uint64_t)(tls.npool[0] + tls.npool[1])},
    {"linkd_tls_buffers_held", "gauge", "TLS record buffers connections hold now (a record half read or written).", (uint64_t)(tls.held[0] + tls.held[1])},
    {"linkd_reloads_failed_total", "counter", "SIGHUP reloads refused (a bad value: nothing changed).", g.reloads_failed},
    {"linkd_ws_connections", "gauge", "Open WebSocket connections.", g.ws_count},
    {"linkd_ws_accepted_total", "counter", "WebSocket upgrades accepted.", g.ws_accepted},
    {"linkd_ws_contexts_bound", "gauge", "WebSocket connections holding a wslay context now.", bound},
    {"linkd_rooms", "gauge", "Rooms with at least one member.", g.room_count},
    {"linkd_memberships", "gauge", "Connection-in-room memberships.", g.member_count},
    {"linkd_pending_replies", "gauge", "Replies owed by services (HTTP and WebSocket).", g.pend_count},
    {"linkd_ws_messages_in_total", "counter", "WebSocket messages received from clients.", g.ws_msgs_in},
    {"linkd_ws_messages_out_total", "counter", "WebSocket messages sent to clients.", g.ws_msgs_out},
    {"linkd_ws_bytes_in_total", "counter", "WebSocket payload bytes received.", g.ws_bytes_in},
    {"linkd_ws_bytes_out_total", "counter", "WebSocket payload bytes sent.", g.ws_bytes_out},
    {"linkd_ws_drops_total", "counter", "Messages dropped (slow consumer, rate limit, no service).", g.ws_drops},
  };
  for (auto& r : rows) buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %" PRIu64 "\n", r.name, r.help, r.name, r.type, r.name, r.v);
}

// --- client connections: accept and read ------------------------------------------

// Plaintext from a client (decrypted already on a TLS connection); null:
// the client has finished sending.
void conn_input(Conn* c, const char* p, size_t n) {
  uv_stream_t* st = (uv_stream_t*)&c->tcp;
  if (!p) {
    if (c->state == CState::Http && c->http && (c->http->complete || c->http->in.len)) {
      c->http->eof = true;      // half-closed: answer what was sent, then close
      uv_read_stop(st);
      return;
    }
    conn_close(c, "peer closed");
    return;
  }
  if (c->state == CState::Http) {
    buf_put(&c->http->in, p, n);
    if (c->http->complete) uv_read_stop(st);
    else http_pump(c);
  } else if (c->state == CState::Ws) {
    c->missed = 0;
    ws_feed(c, p, n);
    // Output not read by the client is over its cap (pongs to a ping
    // flood, replies): stop reading until it drains (write_done_cb).
    if (c->state == CState::Ws && c->tcp.write_queue_size > (size_t)cfg.max_outbound) {
      c->read_paused = true;
      uv_read_stop(st);
    }
  }
}

void conn_read_cb(uv_stream_t* st, ssize_t n, const uv_buf_t*) noexcept {
  Conn* c = (Conn*)st->data;
  if (n == 0) return;
  if (n == UV_EOF) conn_input(c, nullptr, 0);
  else if (n < 0) conn_close(c, uv_strerror((int)n));
  else if (c->tls) tls_input(c, g.readbuf, (size_t)n);
  else conn_input(c, g.readbuf, (size_t)n);
}

// An address's key for the per-address HTTP cap: IPv4, or an IPv6 /64
// (one host usually holds a whole /64, so it counts as one address).
size_t tally_key_http(const Conn* c, char* key) {
  key[0] = 'h';
  key[1] = (char)c->family;
  memset(key + 2, 0, 16);
  memcpy(key + 2, c->addr, c->family == 6 ? 8 : 4);
  return 18;
}

// Plain HTTP connections and their per-address tally, held from accept to
// upgrade or close.
void http_free(Conn* c) {
  Http* h = c->http;
  if (h->pending != NIL) pend_free(h->pending);
  buf_free(&h->in);
  buf_free(&h->head);
  buf_free(&h->body);
  free(h);
  c->http = nullptr;
  g.http_count--;
  char key[20];
  tally_sub(key, tally_key_http(c, key));
}

// When the HTTP table (or an address's share of it) is full, the
// connection idle the longest makes room: a keep-alive one between
// requests, or one that has sent nothing for HTTP_QUIET_MS (a client that
// connected a moment ago is about to send its request: not idle yet).
// Holding idle connections must not lock everyone out.
bool http_evict_idle(const Conn* like) {
  Conn* victim = nullptr;
  uint64_t now = now_ms();
  for (uint32_t i = 0; i < g.conn_hw; i++) {
    Conn* c = &g.conns[i];
    if (c->state != CState::Http || !c->http || c == like) continue;
    const Http* h = c->http;
    if (h->complete || h->in.len || h->head.len || h->pending != NIL || c->tcp.write_queue_size) continue;
    if (!h->served && now - h->since < HTTP_QUIET_MS) continue;
    if (like && (c->family != like->family || memcmp(c->addr, like->addr, like->family == 6 ? 8 : 4))) continue;
    if (!victim || h->since < victim->http->since) victim = c;
  }
  if (!victim) return false;
  conn_close(victim, "idle, evicted for a new connection");
  return true;
}

void conn_peer(Conn* c) {
  sockaddr_storage ss;
  int len = sizeof ss;
  if (uv_tcp_getpeername(&c->tcp, (sockaddr*)&ss, &len)) return;
  if (ss.ss_family == AF_INET) {
    sockaddr_in* a = (sockaddr_in*)&ss;
    memcpy(c->addr, &a->sin_addr, 4);
    c->port = ntohs(a->sin_port);
    c->family = 4;
  } else if (ss.ss_family == AF_INET6) {
    sockaddr_in6* a = (sockaddr_in6*)&ss;
    memcpy(c->addr, &a->sin6_addr, 16);
    c->port = ntohs(a->sin6_port);
    c->family = 6;
  }
}

// A refusal written straight to a socket linkd will not serve.
void conn_refuse(uv_stream_t* st, unsigned status, const char* type, const char* msg) {
  char out[320];
  char body[160];
  int bn = snprintf(body, sizeof body, "{\"error\":{\"type\":\"%s\",\"message\":\"%s\"}}", type, msg);
  int n = snprintf(out, sizeof out, "HTTP/1.1 %u %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
                   status, status_text(status), bn, body);
  uv_buf_t b = uv_buf_init(out, (unsigned)n);
  uv_try_write(st, &b, 1);
  g.http_status[status]++;
}

void tcp_connection_cb(uv_stream_t* server, int status) noexcept {
  if (status < 0) { LOG_WARN("accept: %s", uv_strerror(status)); return; }
  bool secure = server == (uv_stream_t*)&g.tls_listener, admin = server == (uv_stream_t*)&g.admin_listener;
  Conn* c = conn_alloc();
  if (!c && ghost_evict()) c = conn_alloc();
  if (!c) {
    // No slot at all (every one is open or closing): accept, say 503, close
    // (on the TLS port there is no way to say it before a handshake).
    uv_tcp_t* tmp = (uv_tcp_t*)malloc(sizeof *tmp);
    uv_tcp_init(g.loop, tmp);
    if (uv_accept(server, (uv_stream_t*)tmp) == 0 && !secure) conn_refuse((uv_stream_t*)tmp, 503, "SERVICE_UNAVAILABLE", "too many open connections");
    uv_close((uv_handle_t*)tmp, [](uv_handle_t* h) noexcept { free(h); });
    return;
  }
  uv_tcp_init(g.loop, &c->tcp);
  c->tcp.data = c;
  c->state = CState::Closed;   // until it is counted below: a failure here only closes the socket
  if (uv_accept(server, (uv_stream_t*)&c->tcp)) { uv_close((uv_handle_t*)&c->tcp, conn_closed_cb); return; }
  conn_peer(c);
  char key[20];
  size_t kn = tally_key_http(c, key);
  const char* full = nullptr;
  if (g.http_count >= (uint32_t)cfg.max_http_connections && !http_evict_idle(nullptr)) full = "too many open connections";
  else if (cfg.max_http_connections_per_ip > 0 && tally_count(key, kn) >= (uint64_t)cfg.max_http_connections_per_ip && !http_evict_idle(c))
    full = "too many open connections from this address";
  Http* h = full ? nullptr : (Http*)calloc(1, sizeof(Http));
  if (!h) {
    if (!secure)
      conn_refuse((uv_stream_t*)&c->tcp, full && strstr(full, "address") ? 429 : 503, full && strstr(full, "address") ? "TOO_MANY_REQUESTS" : "SERVICE_UNAVAILABLE",
                  full ? full : "out of memory");
    uv_close((uv_handle_t*)&c->tcp, conn_closed_cb);
    return;
  }
  c->state = CState::Http;
  c->admin = admin;
  c->http = h;
  g.http_count++;
  tally_add(key, kn);
  llhttp_init(&h->parser, HTTP_REQUEST, &http_settings);
  h->parser.data = c;
  h->pending = NIL;
  h->route = NIL;
  h->since = now_ms();
  uv_tcp_nodelay(&c->tcp, 1);
  if (secure && !tls_new(c)) { conn_close(c, "out of memory for TLS"); return; }
  uv_read_start((uv_stream_t*)&c->tcp, alloc_cb, conn_read_cb);
}

// --- listeners ---------------------------------------------------------------------

// --listen, or --tls-listen into g.tls_listener.
int listen_tcp(const char* addr, uv_tcp_t* handle, bool* listening) {
  char host[128];
  snprintf(host, sizeof host, "%s", addr);
  char* colon = strrchr(host, ':');
  *colon = 0;
  int port = atoi(colon + 1);
  char* h = host;
  if (*h == '[') { h++; h[strlen(h) - 1] = 0; }
  sockaddr_storage ss;
  if (uv_ip4_addr(h, port, (sockaddr_in*)&ss) && uv_ip6_addr(h, port, (sockaddr_in6*)&ss)) {
    LOG_ERROR("listen: '%s' is not an IP address", h);
    return UV_EINVAL;
  }
  uv_tcp_init(g.loop, handle);
  *listening = true;
  int r = uv_tcp_bind(handle, (sockaddr*)&ss, 0);
  if (!r) r = uv_listen((uv_stream_t*)handle, 1024, tcp_connection_cb);
  if (r) LOG_ERROR("listen on %s: %s", addr, uv_strerror(r));
  return r;
}

// The address a listener is bound to, as "host:port" ("[v6]:port").
void bound_name(const uv_tcp_t* handle, char* out, size_t n) {
  sockaddr_storage ss;
  int len = sizeof ss;
  char ip[INET6_ADDRSTRLEN] = "?";
  if (uv_tcp_getsockname(handle, (sockaddr*)&ss, &len)) { snprintf(out, n, "?"); return; }
  uv_ip_name((sockaddr*)&ss, ip, sizeof ip);
  int port = ntohs(ss.ss_family == AF_INET6 ? ((sockaddr_in6*)&ss)->sin6_port : ((sockaddr_in*)&ss)->sin_port);
  snprintf(out, n, ss.ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d", ip, port);
}

// The service socket: a stale file left by a dead linkd is replaced; a
// socket another process still answers on is never taken over.
int listen_unix() {
  char dir[256];
  snprintf(dir, sizeof dir, "%s", cfg.socket_path);
  if (char* slash = strrchr(dir, '/')) {
    *slash = 0;
    // mkdir -p: each prefix in turn
    for (char* p = dir + 1;; p++) {
      if (*p != '/' && *p) continue;
      char saved = *p;
      *p = 0;
      if (mkdir(dir, 0755) && errno != EEXIST) { LOG_ERROR("socket: cannot create %s: %s", dir, strerror(errno)); return UV_EACCES; }
      *p = saved;
      if (!saved) break;
    }
  }
  struct stat st;
  if (lstat(cfg.socket_path, &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) { LOG_ERROR("socket: %s exists and is not a socket; not touching it", cfg.socket_path); return UV_EEXIST; }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, cfg.socket_path, strlen(cfg.socket_path) + 1);   // length checked by config_parse
    int r = connect(fd, (sockaddr*)&sa, sizeof sa);
    close(fd);
    if (r == 0) { LOG_ERROR("socket: %s is in use by another running linkd", cfg.socket_path); return UV_EADDRINUSE; }
    LOG_INFO("socket: replacing stale %s", cfg.socket_path);
    unlink(cfg.socket_path);
  }
  uv_pipe_init(g.loop, &g.svc_listener, 0);
  g.svc_listening = true;
  int r = uv_pipe_bind(&g.svc_listener, cfg.socket_path);
  if (!r) r = chmod(cfg.socket_path, (mode_t)strtol(cfg.socket_mode, nullptr, 8)) ? uv_translate_sys_error(errno) : 0;
  if (!r) r = uv_listen((uv_stream_t*)&g.svc_listener, 128, svc_connection_cb);
  if (r) LOG_ERROR("socket %s: %s", cfg.socket_path, uv_strerror(r));
  return r;
}

// ============================================================================
// 17. Self-test
// `linkd --self-test` runs these unit tests of the tables and the route
// matcher in-process (no sockets) and prints PASS:/FAIL: lines.
// ============================================================================

int st_pass, st_fail;

void st_check(bool ok, const char* name) {
  printf("%s: self-test %s\n", ok ? "PASS" : "FAIL", name);
  (ok ? st_pass : st_fail)++;
}

Conn* st_conn(uint16_t group) {
  Conn* c = conn_alloc();
  c->state = CState::Ws;
  c->group = group;
  return c;
}

void st_route(const char* method, const char* path, uint16_t group) {
  Route r{};
  snprintf(r.def.method, sizeof r.def.method, "%s", method);
  snprintf(r.def.path, sizeof r.def.path, "%s", path);
  const char* why;
  if (!route_compile(&r, &why)) return;
  r.group = group;
  g.routes[g.nroutes++] = r;
}

void self_test_tables() {
  // connection slots: generation guards stale ids
  Conn* a = st_conn(0);
  char id[96];
  conn_id(a, id, sizeof id);
  st_check(conn_lookup(id) == a, "conn lookup by id");
  conn_free_slot(a);
  st_check(conn_lookup(id) == nullptr, "stale id after free");
  Conn* b = conn_alloc();
  st_check(b == a && conn_lookup(id) == nullptr, "slot reused with a new generation");
  conn_free_slot(b);

  // the sketch's join/leave test
  Conn* c1 = st_conn(0);
  Conn* c2 = st_conn(0);
  room_join(c1, "room-a", 6);
  room_join(c2, "room-a", 6);
  uint32_t r = room_find(0, "room-a", 6);
  st_check(r != NIL && g.rooms[r].count == 2, "two members after two joins");
  st_check(room_join(c1, "room-a", 6) == JoinResult::Already && g.rooms[r].count == 2, "second join is idempotent");
  room_leave(c1, "room-a", 6);
  st_check(g.rooms[r].count == 1 && c1->nrooms == 0 && c2->nrooms == 1, "one member after a leave");
  room_leave(c2, "room-a", 6);
  st_check(room_find(0, "room-a", 6) == NIL && g.room_count == 0, "empty room freed");
  st_check(room_find(1, "room-a", 6) == NIL, "rooms are per service");

  // disconnect leaves every room
  for (int i = 0; i < 10; i++) { char n[8]; int k = snprintf(n, sizeof n, "r%d", i); room_join(c1, n, (size_t)k); room_join(c2, n, (size_t)k); }
  conn_leave_all(c1);
  st_check(c1->nrooms == 0 && c1->rooms == NIL && g.member_count == 10 && g.room_count == 10, "leave all keeps others' rooms");
  conn_leave_all(c2);
  st_check(g.member_count == 0 && g.room_count == 0, "no membership left behind");

  // capacity: full tables refuse, never crash
  JoinResult last = JoinResult::Ok;
  uint32_t joined = 0;
  for (uint32_t i = 0; i < g.nrooms + 5; i++) {
    char n[16];
    int k = snprintf(n, sizeof n, "cap%u", i);
    last = room_join(c1, n, (size_t)k);
    if (last != JoinResult::Ok) break;
    joined++;
  }
  st_check(last == JoinResult::RoomsFull && joined == g.nrooms, "room table full refuses the join");
  for (uint32_t i = 0; i < g.nrooms; i += 2) { char n[16]; int k = snprintf(n, sizeof n, "cap%u", i); room_leave(c1, n, (size_t)k); }
  bool all = true;
  for (uint32_t i = 1; i < g.nrooms; i += 2) { char n[16]; int k = snprintf(n, sizeof n, "cap%u", i); all &= room_find(0, n, (size_t)k) != NIL; }
  st_check(all, "hash index finds every room after deletions");
  conn_leave_all(c1);
  st_check(g.room_count == 0 && g.member_count == 0, "tables empty again");
  conn_free_slot(c1);
  conn_free_slot(c2);

  // membership index: find every live (connection, room), none of the gone
  Conn* mc[6];
  for (int i = 0; i < 6; i++) mc[i] = st_conn(0);
  for (int i = 0; i < 6; i++)
    for (int k = 0; k < 9; k++) { char n[8]; int l = snprintf(n, sizeof n, "m%d", k); room_join(mc[i], n, (size_t)l); }
  for (int i = 0; i < 6; i++)
    for (int k = (i & 1); k < 9; k += 2) { char n[8]; int l = snprintf(n, sizeof n, "m%d", k); room_leave(mc[i], n, (size_t)l); }
  bool idx_ok = g.member_count == 27;
  for (int i = 0; i < 6; i++)
    for (int k = 0; k < 9; k++) {
      char n[8];
      int l = snprintf(n, sizeof n, "m%d", k);
      uint32_t r = room_find(0, n, (size_t)l);
      bool want = (k & 1) != (i & 1);
      idx_ok &= r != NIL && (member_find(mc[i], r) != NIL) == want;
    }
  st_check(idx_ok, "membership index after interleaved joins and leaves");
  for (int i = 0; i < 6; i++) { conn_leave_all(mc[i]); conn_free_slot(mc[i]); }
  st_check(g.member_count == 0 && g.room_count == 0, "membership index empty again");

  // tallies (per-IP and per-user caps)
  char k1[160], k2[160];
  size_t n1 = tally_key_user(1, "ann", k1), n2 = tally_key_user(2, "ann", k2);
  tally_add(k1, n1);
  tally_add(k1, n1);
  tally_add(k2, n2);
  bool tl = tally_count(k1, n1) == 2 && tally_count(k2, n2) == 1;
  tally_sub(k1, n1);
  tally_sub(k2, n2);
  tl = tl && tally_count(k1, n1) == 1 && tally_count(k2, n2) == 0;
  tally_sub(k1, n1);
  st_check(tl && tally_count(k1, n1) == 0 && g.tally_free != NIL, "tallies count per key and free at zero");

  // membership table full
  uint32_t conns_needed = g.nmembers + 1;
  Conn* cs[64];
  uint32_t ncs = 0;
  JoinResult mr = JoinResult::Ok;
  for (uint32_t i = 0; i < conns_needed && ncs < 64; i++) {
    cs[ncs] = st_conn(0);
    mr = room_join(cs[ncs++], "big", 3);
    if (mr != JoinResult::Ok) break;
  }
  st_check(mr == JoinResult::MembersFull, "membership table full refuses the join");
  for (uint32_t i = 0; i < ncs; i++) { conn_leave_all(cs[i]); conn_free_slot(cs[i]); }
  st_check(g.member_count == 0 && g.room_count == 0, "memberships freed");
}

void self_test_routes() {
  g.nroutes = 0;
  st_route("GET", "/users/:id", 0);
  st_route("GET", "/users/stats", 0);
  st_route("GET", "/users/:id/posts/:post", 1);
  st_route("*", "/any", 1);
  st_route("POST", "/any", 0);
  Match m;
  st_check(route_match("GET", "/users/stats", 12, &m) && !strcmp(g.routes[m.route].def.path, "/users/stats"), "static segment beats :param");
  st_check(route_match("GET", "/users/42", 9, &m) && m.nparams == 1 && m.value[0].n == 2 && !memcmp(m.value[0].p, "42", 2) &&
           m.name[0].n == 2 && !memcmp(m.name[0].p, "id", 2), ":param captured");
  st_check(route_match("GET", "/users/42/", 10, &m) && m.nparams == 1, "trailing slash ignored");
  st_check(route_match("GET", "/users/7/posts/9", 16, &m) && m.nparams == 2 && g.routes[m.route].group == 1, "two params");
  st_check(!route_match("POST", "/users/42", 9, &m), "method must match");
  st_check(route_match("DELETE", "/any", 4, &m) && !strcmp(g.routes[m.route].def.method, "*"), "* matches any method");
  st_check(route_match("POST", "/any", 4, &m) && !strcmp(g.routes[m.route].def.method, "POST"), "exact method beats *");
  st_check(!route_match("GET", "/users", 6, &m) && !route_match("GET", "//users", 7, &m), "no match for other shapes");
  Route r{};
  snprintf(r.def.method, sizeof r.def.method, "GET");
  snprintf(r.def.path, sizeof r.def.path, "/users/:uid");
  const char* why;
  st_check(route_compile(&r, &why) && route_conflict(&r, 1) != NIL, "same shape, other service: conflict");
  st_check(route_conflict(&r, 0) == NIL && route_exists(&r, 0), "same shape, same service: re-registration");
  snprintf(r.def.path, sizeof r.def.path, "users");
  st_check(!route_compile(&r, &why), "pattern without leading / refused");
  snprintf(r.def.path, sizeof r.def.path, "/a/:/b");
  st_check(!route_compile(&r, &why), "nameless :param refused");
  g.nroutes = 0;
}

void self_test_misc() {
  int64_t v;
  st_check(parse_number("30s", Kind::Duration, &v) && v == 30000, "duration 30s");
  st_check(parse_number("250", Kind::Duration, &v) && v == 250, "bare duration is ms");
  st_check(parse_number("64k", Kind::Size, &v) && v == 65536, "size 64k");
  st_check(!parse_number("12x", Kind::Size, &v) && !parse_number("-1", Kind::Int, &v) && !parse_number("", Kind::Int, &v), "junk numbers refused");
  Buf b;
  buf_json_escape(&b, "a\"b\\c\n\x01", 7);
  st_check(b.len == 19 && !memcmp(b.p, "a\\\"b\\\\c\\u000a\\u0001", 19), "JSON escaping");
  buf_free(&b);
  uint8_t h[10];
  st_check(ws_frame_header(h, 1, 5) == 2 && h[0] == 0x81 && h[1] == 5, "frame header, short");
  st_check(ws_frame_header(h, 1, 300) == 4 && h[1] == 126 && h[2] == 1 && h[3] == 44, "frame header, 16-bit length");
  st_check(ws_frame_header(h, 2, 70000) == 10 && h[1] == 127 && h[7] == 1, "frame header, 64-bit length");
  char acc[32];
  ws_accept_key(Slice{"dGhlIHNhbXBsZSBub25jZQ==", 24}, acc);
  st_check(!strcmp(acc, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "RFC 6455 accept key example");
  st_check(json_valid("{\"a\":[1,2]}", 11) && !json_valid("{\"a\":", 5) && !json_valid("nope", 4), "JSON validity");
  {
    char deep[600];
    for (int i = 0; i < 300; i++) { deep[i] = '['; deep[599 - i] = ']'; }
    st_check(json_valid(deep, 256) == false && json_valid(deep + 172, 256) && !json_valid(deep, 600), "JSON nesting capped at 128");
  }
  st_check(json_valid(" null ", 6) && json_valid("-1.5e3", 6) && json_valid("\"s\"", 3) && !json_valid("{\"a\":tru}", 10) &&
           !json_valid("[1] x", 5) && !json_valid("", 0), "JSON validity: primitives and trailing data");
  st_check(utf8_valid((const uint8_t*)"h\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 10) && !utf8_valid((const uint8_t*)"\xc0\xaf", 2) &&
           !utf8_valid((const uint8_t*)"\xed\xa0\x80", 3) && !utf8_valid((const uint8_t*)"\xf4\x90\x80\x80", 4) && !utf8_valid((const uint8_t*)"\xe2\x82", 2),
           "UTF-8 validation (overlong, surrogate, past U+10FFFF, truncated)");
  {
    char text[2000];
    for (size_t i = 0; i < sizeof text; i++) text[i] = (char)('a' + i % 7);
    bool ok = ws_deflate(text, sizeof text) && g.zbuf.len < sizeof text / 4;
    Buf z;
    buf_put(&z, g.zbuf.p, g.zbuf.len);
    ok = ok && ws_inflate((const uint8_t*)z.p, z.len, 4096) == 0 && g.zbuf.len == sizeof text && !memcmp(g.zbuf.p, text, sizeof text);
    st_check(ok, "permessage-deflate round trip");
    st_check(ws_inflate((const uint8_t*)z.p, z.len, 1000) == 1009, "inflated size over the limit: 1009");
    st_check(ws_inflate((const uint8_t*)"\xff\xff\xff", 3, 1000) == 1007, "garbage compressed data: 1007");
    buf_free(&z);
  }
  // pending FIFO stays ordered by deadline
  Conn* c = st_conn(0);
  uint32_t p1 = pend_alloc(c, PKind::Ws, 0, 500);
  uint32_t p2 = pend_alloc(c, PKind::Ws, 0, 100);
  uint32_t p3 = pend_alloc(c, PKind::Http, 0, 300);
  st_check(g.pend_head == p2 && g.pend[p2].next == p3 && g.pend[p3].next == p1 && g.pend_tail == p1, "pending FIFO ordered by deadline");
  pend_free(p3);
  pend_free(p2);
  pend_free(p1);
  st_check(g.pend_head == NIL && g.pend_count == 0, "pending FIFO empty");
  conn_free_slot(c);
}

void self_test_jwt() {
  snprintf(cfg.jwt_secret, sizeof cfg.jwt_secret, "secret");
  // {"alg":"HS256","typ":"JWT"} . {"sub":"u1","preferred_username":"ann","roles":["admin","dev"],"tenant_id":"t9"}
  const char* good = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1MSIsInByZWZlcnJlZF91c2VybmFtZSI6ImFubiIsInJvbGVzIjpbImFkbWluIiwiZGV2Il0sInRlbmFudF9pZCI6InQ5In0.";
  unsigned char mac[32];
  const char* dot = strrchr(good, '.');
  mbedtls_md_hmac(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), (const unsigned char*)"secret", 6, (const unsigned char*)good, (size_t)(dot - good), mac);
  unsigned char b64[64];
  size_t bl;
  mbedtls_base64_encode(b64, sizeof b64, &bl, mac, 32);
  char tok[512];
  size_t tn = (size_t)snprintf(tok, sizeof tok, "%s", good);
  for (size_t i = 0; i < bl && b64[i] != '='; i++) tok[tn++] = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : (char)b64[i];
  tok[tn] = 0;
  const char* why = nullptr;
  UserBlob* u = jwt_verify(tok, tn, &why);
  linkd_UserContext uc;
  user_expand(u, nullptr, &uc);
  st_check(u && !strcmp(uc.user_id, "u1") && !strcmp(uc.username, "ann") && !strcmp(uc.tenant_id, "t9") && uc.roles_count == 2 &&
           user_has_role(u, "dev") && !user_has_role(u, "root"), "HS256 token verified, claims packed");
  free(u);
  tok[tn - 2] = tok[tn - 2] == 'A' ? 'B' : 'A';
  st_check(!jwt_verify(tok, tn, &why) && !strcmp(why, "token signature invalid"), "tampered token refused");
  // {"alg":"none"} . {"sub":"u1"} .
  char uname[16];
  size_t un = json_unescape(Slice{"Jos\\u00e9 \\ud83d\\ude00\\n", 24}, uname, sizeof uname);
  st_check(un == 11 && !memcmp(uname, "Jos\xc3\xa9 \xf0\x9f\x98\x80\n", 11), "JSON string escapes decoded (\\u00e9, surrogate pair, \\n)");
  st_check(json_unescape(Slice{"a\\u0000b", 8}, uname, sizeof uname) == SIZE_MAX &&
           json_unescape(Slice{"\\u+041", 6}, uname, sizeof uname) == SIZE_MAX, "escaped NUL and malformed \\u refused");
  st_check(json_unescape(Slice{"ab\\u00e9", 8}, uname, 3) == JSON_LONG && json_unescape(Slice{"ab\\u00e9", 8}, uname, 4) == 4,
           "a claim that does not fit is refused whole, never cut");
  const char* none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1MSJ9.";
  st_check(!jwt_verify(none, strlen(none), &why) && !strcmp(why, "token algorithm refused"), "alg none refused");
  cfg.jwt_secret[0] = 0;
}

// llhttp through linkd's callbacks: two pipelined requests, fed whole and
// split at every offset, must give the same url, headers, body and pause
// points (one request per pause, the next one left unparsed).
void self_test_http() {
  http_settings_init();
  static const char req[] = "POST /a/b?x=1 HTTP/1.1\r\nHost: h\r\nX-Long-Name: v1\r\nContent-Length: 3\r\n\r\nabc"
                            "GET /next HTTP/1.1\r\nHost: h\r\n\r\n";
  const size_t n = sizeof req - 1;
  bool all_ok = true;
  for (size_t split = 0; split < n; split++) {
    Conn* c = st_conn(0);
    c->state = CState::Http;
    Http* h = (Http*)calloc(1, sizeof(Http));
    c->http = h;
    llhttp_init(&h->parser, HTTP_REQUEST, &http_settings);
    h->parser.data = c;
    size_t fed = 0, parts[2] = {split, n - split};
    bool paused = false;
    for (size_t part : parts) {
      if (paused || !part) continue;
      llhttp_errno_t e = llhttp_execute(&h->parser, req + fed, part);
      if (e == HPE_PAUSED) { paused = true; fed = (size_t)(llhttp_get_error_pos(&h->parser) - req); }
      else fed += part;
      if (e != HPE_OK && e != HPE_PAUSED) break;
    }
    Slice host = http_header(h, "host"), xl = http_header(h, "x-long-name");
    bool ok = paused && h->complete && fed == n - 31 && h->url_len == 8 && !memcmp(h->head.p, "/a/b?x=1", 8) && h->nhdrs == 3 &&
              host.n == 1 && *host.p == 'h' && xl.n == 2 && !memcmp(xl.p, "v1", 2) && h->body.len == 3 && !memcmp(h->body.p, "abc", 3) &&
              http_query(h).n == 3 && http_path(h).n == 4;
    if (!ok) { all_ok = false; printf("# split at %zu: paused %d fed %zu url %u hdrs %u body %zu\n", split, paused, fed, h->url_len, h->nhdrs, h->body.len); }
    buf_free(&h->in);
    buf_free(&h->head);
    buf_free(&h->body);
    free(h);
    c->http = nullptr;
    conn_free_slot(c);
    if (!ok) break;
  }
  st_check(all_ok, "llhttp trace: request split at every offset, pause after the first of two pipelined");
}

// The hardening pieces (issue 8) and recovery's history ring.
void self_test_hardening() {
  // strict JSON, checked whole whatever its size
  const char* good[] = {"0", "-0.5e+3", "\"a\\u00e9\\n\"", "[[],{}]", " {\"a\":[1,true,null,\"x\"]} ", "1E5"};
  const char* bad[] = {"01", "1.", ".5", "+1", "nan", "0x10", "-", "\"\\x\"", "\"\\u12g4\"", "[1,]", "{\"a\"}", "{1:2}", "[1] [2]",
                       "\"a\x01\"", "tru", "{\"a\":1,}", "\"\xc3\x28\""};
  bool ok = true;
  for (const char* j : good) ok &= json_valid(j, strlen(j));
  for (const char* j : bad) if (json_valid(j, strlen(j))) { ok = false; printf("# accepted: %s\n", j); }
  Buf big;
  buf_puts(&big, "[");
  for (int i = 0; i < 200000; i++) buf_puts(&big, "0,");
  buf_puts(&big, "0],\"type\":\"admin\"");
  ok &= !json_valid(big.p, big.len);        // more tokens than any pool, bad past them: still refused
  big.len -= 15;
  ok &= json_valid(big.p, big.len);
  buf_free(&big);
  st_check(ok, "strict JSON: numbers, escapes, literals, trailing data, any size");
  Buf e;
  buf_json_escape(&e, "a\xff" "b\xc3\xa9", 5);
  st_check(e.len == 10 && !memcmp(e.p, "a\\ufffdb\xc3\xa9", 10), "JSON escaping replaces bytes that are not UTF-8");
  buf_free(&e);

  // percent-decoding of path segments
  char out[16];
  st_check(pct_decode(Slice{"a%20b", 5}, out) == 3 && !memcmp(out, "a b", 3) && pct_decode(Slice{"a%2Fb", 5}, out) == 3 && out[1] == '/' &&
           pct_decode(Slice{"%zz", 3}, out) < 0 && pct_decode(Slice{"%4", 2}, out) < 0 && pct_decode(Slice{"%00", 3}, out) < 0,
           "percent-decoding: %20, %2F kept in its segment, bad escapes and %00 refused");

  // routes of two services that could match one request overlap
  auto route = [](const char* m, const char* p) { Route r{}; snprintf(r.def.method, sizeof r.def.method, "%s", m);
                                                   snprintf(r.def.path, sizeof r.def.path, "%s", p); const char* w; route_compile(&r, &w); return r; };
  Route a1 = route("GET", "/users/:id"), b1 = route("GET", "/users/me"), a2 = route("*", "/api/:x"), b2 = route("POST", "/api/v1"),
        c1 = route("GET", "/users/:id/posts"), d1 = route("PUT", "/users/me");
  st_check(route_overlap(&a1, &b1) && route_overlap(&a2, &b2) && !route_overlap(&a1, &c1) && !route_overlap(&a1, &d1),
           "route overlap: :param vs static, * vs a method; other lengths and methods do not");

  // obs-fold is found in the raw head, never in a body
  auto folded = [](const char* raw) {
    Http h{};
    buf_puts(&h.in, raw);
    bool r = !http_scan_head(&h);
    buf_free(&h.in);
    return r;
  };
  st_check(folded("GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n") && folded("GET / HTTP/1.1\r\nA:\r\n\tb\r\n\r\n") &&
           !folded("POST / HTTP/1.1\r\nA: b\r\n\r\n body\n starts\r\n") && !folded("\r\n\r\nGET / HTTP/1.1\r\nA: b\r\n\r\n"),
           "obs-fold found in the head only");

  // a room's history keeps its last pushes, oldest dropped first
  Room room{};
  size_t held = g.history_bytes;
  for (int i = 1; i <= 5; i++) {
    Shared* f = shared_new(10);
    room.seq = (uint32_t)i;
    hist_push(&room, 3, f, (uint64_t)i);
    shared_unref(f);
  }
  st_check(room.hist_count == 3 && hist_oldest(&room) == 3 && room.hist[room.hist_head].serial == 3 && g.history_bytes == held + 30,
           "room history: a ring of the last pushes");
  hist_clear(&room);
  st_check(g.history_bytes == held && !room.hist, "room history freed with its references");
}

int self_test() {
  cfg.max_connections = 100;
  cfg.max_http_connections = 10;
  cfg.max_rooms = 50;
  cfg.max_memberships = 60;
  g.loop = uv_default_loop();
  tables_init();
  self_test_tables();
  self_test_routes();
  self_test_misc();
  self_test_jwt();
  self_test_http();
  self_test_hardening();
  tables_free();
  printf("self-test: %d passed, %d failed\n", st_pass, st_fail);
  return st_fail ? 1 : 0;
}

}  // namespace

// ============================================================================
// 18. main
// LINKD_NO_MAIN leaves main out, so a harness (tests/fuzz/) can #include
// this file and drive its sections directly: the same code, not a copy.
// ============================================================================

#ifndef LINKD_NO_MAIN
int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  signal(SIGHUP, SIG_IGN);   // until the loop's handler is installed: a reload must never kill
  g.argc = argc;
  g.argv = argv;
  CliMode mode = config_parse(argc, argv);
  if (mode.self_test) return self_test();
  char kerr[1024];
  if (!keys_load(&keys, kerr, sizeof kerr)) config_die(kerr);
  if (*cfg.tls_listen && !(tls.current = tls_conf_load(kerr, sizeof kerr))) config_die(kerr);
  if (*cfg.nats_url && !cluster_load(kerr, sizeof kerr)) config_die(kerr);
  if (mode.check) {
    if (*cfg.config) printf("linkd: configuration ok (%s)\n", cfg.config);
    else printf("linkd: configuration ok\n");
    return 0;
  }
  log_journal = getenv("JOURNAL_STREAM") != nullptr;
  g.loop = uv_default_loop();
  tables_init();
  http_settings_init();
  admin.started = admin.second = now_ms();
  // Recovery tokens die with the process: a fresh epoch and signing key.
  // Connection ids start from a random generation, so that an id a service
  // (or another node) kept from before a restart names nobody now.
  if (uv_random(nullptr, nullptr, &g.epoch, sizeof g.epoch, 0, nullptr) || uv_random(nullptr, nullptr, g.token_key, sizeof g.token_key, 0, nullptr) ||
      uv_random(nullptr, nullptr, &g.conn_gen, sizeof g.conn_gen, 0, nullptr)) {
    LOG_ERROR("no random bytes from the kernel");
    return 1;
  }
  if (listen_tcp(cfg.listen, &g.listener, &g.listening) || (*cfg.tls_listen && listen_tcp(cfg.tls_listen, &g.tls_listener, &g.tls_listening)) ||
      (*cfg.admin_listen && listen_tcp(cfg.admin_listen, &g.admin_listener, &g.admin_listening)) || listen_unix())
    return 1;
  if (!cluster_start(kerr, sizeof kerr)) { LOG_ERROR("%s", kerr); return 1; }
  uv_timer_init(g.loop, &g.tick);
  uv_timer_init(g.loop, &g.pend_timer);
  uv_timer_init(g.loop, &g.watchdog);
  uv_check_init(g.loop, &g.flush);
  uv_check_start(&g.flush, backends_flush_cb);
  uv_timer_start(&g.tick, tick_cb, tick_ms(), tick_ms());
  uv_signal_init(g.loop, &g.sigterm);
  uv_signal_init(g.loop, &g.sigint);
  uv_signal_start(&g.sigterm, signal_cb, SIGTERM);
  uv_signal_start(&g.sigint, signal_cb, SIGINT);
  uv_signal_init(g.loop, &g.sighup);
  uv_signal_start(&g.sighup, sighup_cb, SIGHUP);   // a reload, never the default (which would kill linkd)
  const char* wd = getenv("WATCHDOG_USEC");
  const char* wd_pid = getenv("WATCHDOG_PID");
  if (wd && (!wd_pid || atol(wd_pid) == (long)getpid())) {
    uint64_t usec = strtoull(wd, nullptr, 10);
    if (usec >= 2000) uv_timer_start(&g.watchdog, watchdog_cb, usec / 2000, usec / 2000);
  }
  char plain[80], secure[80] = "";   // the bound addresses: a port given as 0 is named as the kernel chose it
  bound_name(&g.listener, plain, sizeof plain);
  if (*cfg.tls_listen) bound_name(&g.tls_listener, secure, sizeof secure);
  LOG_INFO("linkd %s listening on %s%s%s, services on %s", LINKD_VERSION, plain, *cfg.tls_listen ? " and TLS on " : "", secure,
           cfg.socket_path);
  char status[512];
  snprintf(status, sizeof status, "READY=1\nSTATUS=listening on %s, services on %s", plain, cfg.socket_path);
  notify(status);
  uv_run(g.loop, UV_RUN_DEFAULT);
  // Every table must be empty now: anything left is a leak in linkd's
  // bookkeeping, reported and turned into a failing exit status.
  bool clean = uv_loop_close(g.loop) == 0 && g.ws_count == 0 && g.http_count == 0 && g.room_count == 0 &&
               g.member_count == 0 && g.pend_count == 0 && g.ghost_count == 0 && g.history_bytes == 0;
  for (uint32_t i = 0; i < g.conn_hw; i++) clean &= g.conns[i].state == CState::Free;
  for (uint32_t i = 0; i < g.nbackends; i++) clean &= g.backends[i].state == BState::Free;
  if (!clean)
    LOG_ERROR("stopped with state left: ws %u http %u rooms %u memberships %u pending %u", g.ws_count, g.http_count,
              g.room_count, g.member_count, g.pend_count);
  cluster_release();
  tables_free();
  keys_free(&keys);
  tls_release();
  LOG_INFO("stopped");
  return clean ? 0 : 70;
}
#endif  // LINKD_NO_MAIN
