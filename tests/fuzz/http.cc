// libFuzzer harness: bytes on a client connection (the HTTP request path).
//
// Reaches llhttp through linkd's callbacks (url, header names checked as
// tokens, values, body, size limits 413/431), pipelining and its pauses,
// routing to registered routes (static beats :param, * methods, params),
// auth (HS256 tokens in Authorization or ?token=, auth and roles), CORS
// (global and per-route origins, preflights), /health, /metrics, error
// answers, the WebSocket upgrade decision (wrong method, version, key,
// Origin, token) and what follows an upgrade, and the service's answers
// (each forwarded request is answered by the fixture's service, or left
// to time out).
//
// Input: byte 0 chooses how the rest is delivered and answered:
//   bits 0-2  chunk size: whole, 1, 2, 3, 7, 16, 64, 512 bytes per write
//   bit 3     half-close (shutdown SHUT_WR) after the last byte
//   bit 4     leave forwarded requests unanswered (they time out: 504)
//   bits 5-6  the answer: 200 with headers and a body, 204, a 1xx, a
//             header with CR/LF
//   bit 7     the service link goes away after the first forwarded request
// Byte 1:
//   bit 0     7 idle keep-alive connections (one request answered on each)
//             hold the rest of the HTTP table; after the input one more
//             client connects and asks for /health
//   bit 1     linkd stops after the input (shutdown_begin, the deadline)
//   bit 2     16 s pass after every write (housekeeping: 408 for a request
//             still incomplete, heartbeats after an upgrade)
//   bit 3     the client reads nothing until the end (small socket buffers)
//             and answers carry 32 KiB: unread answers pile up and parsing
//             of pipelined requests pauses (HTTP_OUT_CAP), then resumes
// The rest: bytes written to the connection.

#include "fuzz_common.h"

namespace {

const fz::RouteSpec api_routes[] = {
  {"GET", "/items/:id", false, nullptr, nullptr},
  {"POST", "/items", true, nullptr, nullptr},
  {"GET", "/admin/:x", false, "admin", nullptr},
  {"*", "/any/:a/:b", false, nullptr, nullptr},
  {"GET", "/users/stats", false, nullptr, nullptr},
  {"GET", "/users/:id", false, nullptr, "https://route.example"},
  {"PUT", "/files/:name", false, nullptr, "*"},
  {nullptr, nullptr, false, nullptr, nullptr},
};
const fz::RouteSpec raw_routes[] = {
  {"GET", "/raw-info", false, nullptr, nullptr},
  {nullptr, nullptr, false, nullptr, nullptr},
};
const fz::RouteSpec gone_routes[] = {
  {"GET", "/gone", false, nullptr, nullptr},
  {nullptr, nullptr, false, nullptr, nullptr},
};

uint8_t opts, opts2;
int answered;
std::string big_body;     // the 32 KiB answer (byte 1 bit 3)

bool enc_answer_headers(pb_ostream_t* s, const pb_field_t* f, void* const*) noexcept {
  if (!enc_pair(s, f->tag, Slice{"Content-Type", 12}, Slice{"application/json", 16})) return false;
  if (!enc_pair(s, f->tag, Slice{"Content-Length", 14}, Slice{"999", 3})) return false;   // linkd's own: dropped
  if (((opts >> 5) & 3) == 3 && !enc_pair(s, f->tag, Slice{"X-Bad", 5}, Slice{"a\r\nInjected: 1", 14})) return false;
  return true;
}

// The fixture's service: answers every HttpRequest it is sent.
void answer(size_t svc, uint32_t tag, const uint8_t* p, size_t n) {
  if (tag != TAG_HTTP_REQUEST) return;
  linkd_HttpRequest req = {};
  pb_istream_t is = pb_istream_from_buffer(p, n);
  if (!pb_decode(&is, linkd_HttpRequest_fields, &req)) fz::die("linkd sent an HttpRequest that does not decode");
  if (opts & 0x80 && answered == 0) { answered++; close(fz::services[svc].fd); fz::services[svc].fd = -1; return; }
  if (opts & 0x10) return;
  answered++;
  static const uint32_t statuses[] = {200, 204, 101, 200};
  linkd_HttpResponse r = {};
  r.request_id = req.request_id;
  r.status = statuses[(opts >> 5) & 3];
  if (big_body.empty()) big_body = "\"" + std::string(32 * 1024 - 2, 'x') + "\"";
  Slice body = opts2 & 8 ? Slice{big_body.data(), big_body.size()} : Slice{"{\"ok\":true}", 11};
  r.body.funcs.encode = enc_slice;
  r.body.arg = &body;
  r.headers.funcs.encode = enc_answer_headers;
  fz::service_send(svc, fz::frame(TAG_HTTP_RESPONSE, linkd_HttpResponse_fields, &r));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bool once = (fz::config_defaults(), fz::init(), true);
  (void)once;
  if (size < 2) return 0;
  opts = data[0];
  opts2 = data[1];
  answered = 0;
  data += 2;
  size -= 2;
  fz::begin();
  fz::on_service_frame = answer;
  fz::service_register("api", api_routes, {"/ws", true, false, false, 4096}, 6000);   // bodies over ~6000 bytes: 413
  fz::service_register("raw", raw_routes, {"/raw", false, true, true, 0});
  size_t gone = fz::service_register("gone", gone_routes, {nullptr, false, false, false, 0});
  close(fz::services[gone].fd);   // its route answers 503 from now on
  fz::services[gone].fd = -1;
  fz::settle();
  static const char health[] = "GET /health HTTP/1.1\r\nHost: fuzz\r\n\r\n";
  if (opts2 & 1)
    for (int i = 0; i < 7; i++) fz::send_bytes(fz::clients[fz::client_open()].fd, health, sizeof health - 1);
  bool slow = opts2 & 8;
  size_t c = fz::client_open(slow);
  fz::read_clients = !slow;
  static const size_t chunks[] = {0, 1, 2, 3, 7, 16, 64, 512};
  size_t step = chunks[opts & 7] ? chunks[opts & 7] : size;
  for (size_t off = 0; off < size;) {
    size_t n = std::min(step, size - off);
    size_t w = fz::send_bytes(fz::clients[c].fd, data + off, n);
    fz::settle();
    if (opts2 & 4) fz::later(16000);
    if (w < n) break;   // linkd stopped reading and the socket is full
    off += n;
  }
  if (opts & 8) shutdown(fz::clients[c].fd, SHUT_WR);
  fz::settle();
  fz::read_clients = true;
  fz::settle();
  if (opts2 & 1) fz::send_bytes(fz::clients[fz::client_open(false, true)].fd, health, sizeof health - 1);
  if (opts2 & 2) fz::stop_linkd();
  fz::settle();
  fz::time_passes(10 * 60 * 1000);
  fz::end();
  return 0;
}
