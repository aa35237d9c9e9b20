// libFuzzer harness: bytes on a service link (the service-frame path).
//
// Against a populated table — service "chat" registered on link A (a
// WebSocket path and an HTTP route), service "other" (a raw WebSocket path)
// on link B, four WebSocket clients in rooms, one HTTP request and two
// WebSocket messages awaiting the service's answer — the input is written
// to a service link: varint framing (split across reads, over the limit),
// nanopb decoding of every member, and dispatch: register (again, or first
// on a fresh link: conflicts, reclaim, EXISTING events), HttpResponse
// (headers, status, bodies), WebSocketResponse (data, errors), pushes to a
// connection, a room or everyone (except_connections, deflate, the
// outbound cap), room joins and leaves, close, rooms query, heartbeat.
//
// Ids in the table (the same for every input, tables are fresh; the
// fixture checks them, and tests/fuzz/gen_corpus.py writes them):
//   connections "0.1" (chat, user u1, deflate, rooms lobby and a),
//   "1.2" (chat, user u2, lobby), "2.3" (chat, anonymous, room b);
//   chat has recovery (room pushes carry a seq and are kept for replay),
//   "3.4" (other, raw, lobby of other), HTTP request id 4294967300
//   (slot 4, sequence 1, GET /items/7), pending WebSocket replies "m1"
//   on 0.1 and 42 on 1.2.
//
// Input: bytes 0 and 1 choose the setting:
//   byte 0 bit 0     write to a fresh link (not registered yet) instead of link A
//          bits 1-3  chunk size: whole, 1, 2, 3, 7, 16, 64, 512 bytes per write
//          bit 4     link A goes away after the input
//          bit 5     clients do not read (small socket buffers: the outbound cap)
//          bit 6     --outbound-policy drop instead of close
//          bit 7     connection 0.1 drops before the input (a ghost: chat has
//                    recovery, so its rooms are kept for it for 60 s)
//   byte 1 bit 0     linkd stops after the input (SIGTERM: shutdown_begin, then
//                    the deadline: shutdown_tell_services)
//          bit 1     the shutdown begins halfway through the input
// The rest: bytes written to the link.

#include "fuzz_common.h"

namespace {

const fz::RouteSpec chat_routes[] = {
  {"GET", "/items/:id", false, nullptr, nullptr},
  {"POST", "/rooms/:room/messages", true, nullptr, nullptr},
  {nullptr, nullptr, false, nullptr, nullptr},
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bool once = (fz::config_defaults(), fz::init(), true);
  (void)once;
  if (size < 2) return 0;
  uint8_t opts = data[0], opts2 = data[1];
  data += 2;
  size -= 2;
  cfg.outbound_policy = (opts & 0x40) ? 1 : 0;
  fz::begin();
  fz::on_service_frame = nullptr;
  fz::read_clients = true;
  // chat keeps a dropped connection's rooms for 60 s and 16 pushes per room
  size_t a = fz::service_register("chat", chat_routes, {"/ws", true, false, false, 4096, 60000, 16});
  fz::service_register("other", nullptr, {"/other", false, false, true, 0});
  bool small = opts & 0x20;
  size_t c0 = fz::ws_client_open("/ws", fz::user_token("u1", "admin"), true, small);
  size_t c1 = fz::ws_client_open("/ws", fz::user_token("u2", "user"), false, small);
  fz::ws_client_open("/ws", "", false, small);
  fz::ws_client_open("/other", "", false, small);
  size_t h = fz::client_open(small);
  static const char get[] = "GET /items/7 HTTP/1.1\r\nHost: fuzz\r\n\r\n";
  fz::send_bytes(fz::clients[h].fd, get, sizeof get - 1);
  std::string m1 = fz::ws_frame_masked(1, "{\"type\":\"chat.send\",\"id\":\"m1\",\"data\":{\"text\":\"hi\"}}");
  std::string m2 = fz::ws_frame_masked(1, "{\"type\":\"chat.send\",\"id\":42}");
  fz::send_bytes(fz::clients[c0].fd, m1.data(), m1.size());
  fz::send_bytes(fz::clients[c1].fd, m2.data(), m2.size());
  fz::settle();
  static const char* const ids[] = {"0.1", "1.2", "2.3", "3.4"};
  for (uint32_t i = 0; i < 4; i++) {
    char id[32];
    conn_id(&g.conns[i], id, sizeof id);
    if (g.conns[i].state != CState::Ws || strcmp(id, ids[i])) fz::die("connection ids changed: update service.cc and gen_corpus.py");
  }
  if (g.conns[4].state != CState::Http || !g.conns[4].http || g.conns[4].http->pending == NIL || g.conns[4].http->req_seq != 1)
    fz::die("the pending HTTP request changed: update service.cc and gen_corpus.py");
  static const struct { uint32_t slot; const char* room; } joins[] = {{0, "lobby"}, {0, "a"}, {1, "lobby"}, {2, "b"}, {3, "lobby"}};
  for (auto& j : joins)
    if (g.conns[j.slot].state == CState::Ws) room_join(&g.conns[j.slot], j.room, strlen(j.room));
  if (opts & 0x80) { close(fz::clients[c0].fd); fz::clients[c0].fd = -1; fz::settle(); }
  fz::read_clients = !small;
  size_t target = (opts & 1) ? fz::service_open() : a;
  static const size_t chunks[] = {0, 1, 2, 3, 7, 16, 64, 512};
  size_t step = chunks[(opts >> 1) & 7] ? chunks[(opts >> 1) & 7] : size;
  for (size_t off = 0; off < size;) {
    if ((opts2 & 2) && off >= size / 2) fz::stop_linkd();
    size_t n = std::min(step, size - off);
    size_t w = fz::send_bytes(fz::services[target].fd, data + off, n);
    fz::settle();
    if (w < n) break;
    off += n;
  }
  if (opts & 0x10) { close(fz::services[a].fd); fz::services[a].fd = -1; fz::settle(); }
  fz::read_clients = true;
  fz::settle();
  if (opts2 & 1) fz::stop_linkd();
  fz::time_passes(10 * 60 * 1000);
  fz::end();
  cfg.outbound_policy = 0;
  return 0;
}
