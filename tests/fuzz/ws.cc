// libFuzzer harness: frames on an upgraded WebSocket connection.
//
// A client upgrades through linkd's own handshake (GET with the RFC 6455
// headers and a token), then the input is written to it as frames: wslay
// (bound on demand from linkd's context pool) parses them through linkd's
// callbacks; control frames, fragmentation, close handshakes, the message
// size limit (1009), UTF-8 (1007), permessage-deflate (RSV1, inflate and its
// limit), envelope parsing (JSON object, type, id, data, trailing bytes,
// nesting), rate limiting, replies tracked per id, raw paths.
//
// Input: byte 0 chooses the setting:
//   bits 0-2  chunk size: whole (with the handshake, in one write), 1, 2,
//             3, 7, 16, 64, 512 bytes per write
//   bit 3     the client offers permessage-deflate
//   bit 4     the raw path (/raw: frames forwarded as they are, token in
//             ?token=) instead of the envelope path (/ws)
//   bit 5     the service replies to each message with an id (echoing its
//             data; an error when the id has an odd length)
//   bit 6     the service link goes away at the end
//   bit 7     the service pushes to everyone and to the connection
// Byte 1:
//   bit 0     linkd stops after the input (shutdown_begin, the deadline)
//   bit 1     16 s pass after every write (heartbeat pings; two missed
//             without a frame from the client close the connection)
// The rest: bytes written after the handshake (client frames are masked).

#include "fuzz_common.h"

namespace {

uint8_t opts;

// The payload of what linkd sent (linkd's own dec_slice only takes bytes
// of a frame it is decoding itself).
bool dec_payload(pb_istream_t* s, const pb_field_t*, void** arg) noexcept {
  std::string* out = (std::string*)*arg;
  out->assign((const char*)s->state, s->bytes_left);
  return pb_read(s, nullptr, s->bytes_left);
}

// The fixture's service: replies to messages with an id.
void reply(size_t svc, uint32_t tag, const uint8_t* p, size_t n) {
  if (tag != TAG_WS_INBOUND || !(opts & 0x20)) return;
  linkd_WebSocketInbound in = {};
  std::string data;
  in.payload.funcs.decode = dec_payload;
  in.payload.arg = &data;
  pb_istream_t is = pb_istream_from_buffer(p, n);
  if (!pb_decode(&is, linkd_WebSocketInbound_fields, &in)) fz::die("linkd sent a WebSocketInbound that does not decode");
  if (!in.correlation_id[0]) return;
  linkd_WebSocketResponse r = {};
  snprintf(r.connection_id, sizeof r.connection_id, "%s", in.connection_id);
  snprintf(r.correlation_id, sizeof r.correlation_id, "%s", in.correlation_id);
  Slice d{data.data(), data.size()};
  if (strlen(in.correlation_id) % 2) {
    r.has_error = true;
    r.error.code = 403;
    snprintf(r.error.type, sizeof r.error.type, "FORBIDDEN");
    snprintf(r.error.message, sizeof r.error.message, "no \"%.20s\"", in.message_type);
    snprintf(r.error.details, sizeof r.error.details, "%.*s", (int)std::min<size_t>(d.n, 200), d.p);
  } else {
    r.data.funcs.encode = enc_slice;
    r.data.arg = &d;
  }
  fz::service_send(svc, fz::frame(TAG_WS_RESPONSE, linkd_WebSocketResponse_fields, &r));
}

void push(size_t svc, bool raw) {
  static const char json[] = "{\"text\":\"hello hello hello hello hello hello hello hello hello hello hello\",\"n\":[1,2,3,4,5,6,7,8]}";
  Slice payload{json, sizeof json - 1};
  linkd_WebSocketOutbound m = {};
  m.broadcast_all = true;
  snprintf(m.event, sizeof m.event, "chat.message");
  m.payload.funcs.encode = enc_slice;
  m.payload.arg = &payload;
  m.binary = raw;
  m.op_id = 7;
  fz::service_send(svc, fz::frame(TAG_WS_OUTBOUND, linkd_WebSocketOutbound_fields, &m));
  m = linkd_WebSocketOutbound{};
  snprintf(m.connection_id, sizeof m.connection_id, "0.1");   // the client: first slot, first generation
  snprintf(m.event, sizeof m.event, "chat.direct");
  m.payload.funcs.encode = enc_slice;
  m.payload.arg = &payload;
  fz::service_send(svc, fz::frame(TAG_WS_OUTBOUND, linkd_WebSocketOutbound_fields, &m));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bool once = (fz::config_defaults(), fz::init(), true);
  (void)once;
  if (size < 2) return 0;
  opts = data[0];
  uint8_t opts2 = data[1];
  data += 2;
  size -= 2;
  fz::begin();
  fz::on_service_frame = reply;
  bool raw = opts & 0x10;
  size_t chat = fz::service_register("chat", nullptr, {"/ws", true, false, false, 4096}, 16384 + 3000);   // frames up to 16 KiB + 3000: messages up to 3000
  size_t dev = fz::service_register("dev", nullptr, {"/raw", true, true, true, 2048});
  size_t svc = raw ? dev : chat;
  size_t c = fz::client_open();
  std::string tok = fz::user_token("u1", "user");
  std::string req = raw ? "GET /raw?token=" + tok + " HTTP/1.1\r\n" : "GET /ws HTTP/1.1\r\nAuthorization: Bearer " + tok + "\r\n";
  req += "Host: fuzz\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
  if (opts & 8) req += "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
  req += "\r\n";
  static const size_t chunks[] = {0, 1, 2, 3, 7, 16, 64, 512};
  size_t step = chunks[opts & 7];
  size_t off = 0;
  if (!step) {
    req.append((const char*)data, size);
    off = size;
  }
  fz::send_bytes(fz::clients[c].fd, req.data(), req.size());
  fz::settle();
  while (off < size) {
    size_t n = std::min(step, size - off);
    size_t w = fz::send_bytes(fz::clients[c].fd, data + off, n);
    fz::settle();
    if (opts2 & 2) fz::later(16000);
    if (w < n) break;
    off += n;
  }
  if (opts & 0x80) { push(svc, raw); fz::settle(); }
  if (opts & 0x40) { close(fz::services[svc].fd); fz::services[svc].fd = -1; fz::settle(); }
  if (opts2 & 1) fz::stop_linkd();
  fz::time_passes(10 * 60 * 1000);
  fz::end();
  return 0;
}
