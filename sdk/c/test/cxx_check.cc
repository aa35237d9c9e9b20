// The C library from C++: the header compiles as C++ (-pedantic) and links.
// Prints one line; tests/t_sdk_c.sh runs it.
#include "linkd_service.h"

#include <cstdio>
#include <cstring>
#include <string>

namespace {
struct Counter { int hits = 0; };

void on_hello(linkd_service* s, const linkd_http_request* r, void* arg) {
  static_cast<Counter*>(arg)->hits++;
  std::string body = std::string("{\"hello\":\"") + (linkd_http_param(r, "name") ? linkd_http_param(r, "name") : "") + "\"}";
  linkd_respond_json(s, r, 200, body.c_str());
}
}  // namespace

int main() {
  Counter c;
  linkd_config cfg{};
  cfg.name = "cxx";
  cfg.socket_path = "/nonexistent/linkd.sock";
  cfg.websocket.path = "/ws/cxx";
  cfg.log_level = LINKD_LOG_SILENT;
  linkd_service* s = linkd_service_new(&cfg);
  if (!s) { std::puts("FAIL: cxx_check: linkd_service_new"); return 1; }
  int r = linkd_route(s, "GET", "/cxx/:name", nullptr, on_hello, &c);
  double n = 0;
  const char* j = "{\"a\":{\"b\":[1,2]},\"n\":42}";
  int jr = linkd_json_number(j, std::strlen(j), "n", &n);
  int64_t op = linkd_send(s, "1.1", "x", "{}");   // not registered: -ENOTCONN
  linkd_service_free(s);
  bool ok = r == 0 && jr == 0 && n == 42 && op < 0;
  std::printf("%s: cxx_check: header and library usable from C++ (route %d, json %d/%g, send before registration %lld)\n",
              ok ? "PASS" : "FAIL", r, jr, n, static_cast<long long>(op));
  return ok ? 0 : 1;
}
