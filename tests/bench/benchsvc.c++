// benchsvc: the backend service Linkd's benchmarks run against. It connects
// to linkd's Unix socket, registers "bench" with the WebSocket path
// (default /ws/bench) and the HTTP route GET /bench/hello, then:
//   ws "echo"   -> WebSocketResponse with the same data
//   ws "join"   -> WebSocketRoomOperation JOIN {"room":R}, then a response {"joined":R}
//   ws "fanout" -> one WebSocketOutbound to room R except the sender (event "fanout", the same data)
//   GET /bench/hello -> 200 "hello\n"
//   Heartbeat   -> Heartbeat reply=true
// Frames are varint-delimited ServiceMessage (proto/linkd.proto). Only the
// inner message is decoded with nanopb (the outer oneof is read by hand), so
// decoding a frame does not initialise the whole ServiceMessage struct.
// I/O is blocking and batched: every frame of one read() is answered, then
// the answers go out in one write().
//
// Usage: benchsvc SOCKET_PATH [WS_PATH [RECOVERY_WINDOW_MS:HISTORY]]   (prints "registered" when ready)
#include <pb_decode.h>
#include <pb_encode.h>
// RegisterService has a field named "namespace", a C++ keyword: rename it
// for this translation unit only (the descriptors are compiled as C).
#define namespace namespace_
#include "linkd.pb.h"
#undef namespace

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

namespace {

std::string out;  // answers of the current batch
unsigned long long n_inbound = 0, n_http = 0, n_errors = 0;

void copy_str(char* dst, size_t cap, const char* src) {
  size_t n = strnlen(src, cap - 1);
  memcpy(dst, src, n);
  dst[n] = 0;
}

// ---- encoding --------------------------------------------------------------
void put_varint(std::string& s, uint64_t v) {
  while (v >= 0x80) { s.push_back((char)(v | 0x80)); v >>= 7; }
  s.push_back((char)v);
}

bool out_write(pb_ostream_t* stream, const pb_byte_t* buf, size_t count) {
  static_cast<std::string*>(stream->state)->append(reinterpret_cast<const char*>(buf), count);
  return true;
}

// Appends one frame: varint(len) + ServiceMessage{field: msg}.
bool emit(uint32_t field, const pb_msgdesc_t* fields, const void* msg) {
  size_t sub = 0;
  if (!pb_get_encoded_size(&sub, fields, msg)) return false;
  std::string head;
  put_varint(head, (uint64_t)field << 3 | 2);
  put_varint(head, sub);
  put_varint(out, head.size() + sub);
  out += head;
  size_t before = out.size();
  pb_ostream_t os = {out_write, &out, SIZE_MAX, 0, nullptr};
  if (!pb_encode(&os, fields, msg)) { out.resize(before); return false; }
  return true;
}

bool enc_bytes(pb_ostream_t* s, const pb_field_t* f, void* const* arg) {
  auto* v = static_cast<const std::string_view*>(*arg);
  return pb_encode_tag_for_field(s, f) && pb_encode_string(s, reinterpret_cast<const pb_byte_t*>(v->data()), v->size());
}

// One string (arg: a NUL-terminated C string), e.g. the one except_connections entry.
bool enc_cstr(pb_ostream_t* s, const pb_field_t* f, void* const* arg) {
  const char* v = static_cast<const char*>(*arg);
  return pb_encode_tag_for_field(s, f) && pb_encode_string(s, reinterpret_cast<const pb_byte_t*>(v), strlen(v));
}

bool enc_routes(pb_ostream_t* s, const pb_field_t* f, void* const*) {
  linkd_HttpRoute r = linkd_HttpRoute_init_zero;
  strcpy(r.method, "GET");
  strcpy(r.path, "/bench/hello");
  return pb_encode_tag_for_field(s, f) && pb_encode_submessage(s, linkd_HttpRoute_fields, &r);
}

bool enc_header(pb_ostream_t* s, const pb_field_t* f, void* const*) {
  linkd_Header h = linkd_Header_init_zero;
  strcpy(h.name, "Content-Type");
  strcpy(h.value, "text/plain");
  return pb_encode_tag_for_field(s, f) && pb_encode_submessage(s, linkd_Header_fields, &h);
}

// ---- decoding --------------------------------------------------------------
struct Payload { const char* p = nullptr; size_t n = 0; };

bool dec_bytes(pb_istream_t* s, const pb_field_t*, void** arg) {
  // buffer streams keep the read position in state: point into the frame
  auto* pl = static_cast<Payload*>(*arg);
  pl->p = static_cast<const char*>(s->state);
  pl->n = s->bytes_left;
  return pb_read(s, nullptr, s->bytes_left);
}

// The string value of "key" in a small JSON object ({"room":"x",...}).
std::string json_str(std::string_view j, std::string_view key) {
  std::string k = "\"" + std::string(key) + "\"";
  size_t p = j.find(k);
  if (p == std::string_view::npos) return {};
  p = j.find(':', p + k.size());
  if (p == std::string_view::npos) return {};
  p = j.find('"', p);
  if (p == std::string_view::npos) return {};
  size_t e = j.find('"', p + 1);
  if (e == std::string_view::npos) return {};
  return std::string(j.substr(p + 1, e - p - 1));
}

void respond(const char* conn, const char* corr, std::string_view data) {
  if (!corr[0]) return;
  static linkd_WebSocketResponse r;
  memset(&r, 0, sizeof r);
  copy_str(r.connection_id, sizeof r.connection_id, conn);
  copy_str(r.correlation_id, sizeof r.correlation_id, corr);
  r.data.funcs.encode = enc_bytes;
  r.data.arg = &data;
  emit(24, linkd_WebSocketResponse_fields, &r);
}

void on_inbound(const uint8_t* p, size_t n) {
  static linkd_WebSocketInbound in;
  Payload pl;
  memset(&in, 0, sizeof in);
  in.payload.funcs.decode = dec_bytes;
  in.payload.arg = &pl;
  pb_istream_t is = pb_istream_from_buffer(p, n);
  if (!pb_decode_ex(&is, linkd_WebSocketInbound_fields, &in, PB_DECODE_NOINIT)) {
    fprintf(stderr, "benchsvc: bad WebSocketInbound: %s\n", PB_GET_ERROR(&is));
    return;
  }
  ++n_inbound;
  std::string_view data(pl.p ? pl.p : "null", pl.p ? pl.n : 4);
  const char* t = in.message_type;
  if (strcmp(t, "echo") == 0) {
    respond(in.connection_id, in.correlation_id, data);
  } else if (strcmp(t, "join") == 0) {
    std::string room = json_str(data, "room");
    if (room.empty() || room.size() >= sizeof(linkd_WebSocketRoomOperation{}.room)) {
      respond(in.connection_id, in.correlation_id, "{\"error\":\"no room\"}");
      return;
    }
    linkd_WebSocketRoomOperation op = linkd_WebSocketRoomOperation_init_zero;
    copy_str(op.connection_id, sizeof op.connection_id, in.connection_id);
    strcpy(op.room, room.c_str());
    op.operation = linkd_WebSocketRoomOperation_OperationType_JOIN;
    emit(23, linkd_WebSocketRoomOperation_fields, &op);
    std::string r = "{\"joined\":\"" + room + "\"}";
    respond(in.connection_id, in.correlation_id, r);
  } else if (strcmp(t, "fanout") == 0) {
    std::string room = json_str(data, "room");
    static linkd_WebSocketOutbound ob;
    memset(&ob, 0, sizeof ob);
    copy_str(ob.room, sizeof ob.room, room.c_str());
    strcpy(ob.event, "fanout");
    ob.payload.funcs.encode = enc_bytes;
    ob.payload.arg = &data;
    ob.except_connections.funcs.encode = enc_cstr;   // the room but the sender, as the other targets do
    ob.except_connections.arg = in.connection_id;
    emit(22, linkd_WebSocketOutbound_fields, &ob);
    respond(in.connection_id, in.correlation_id, "null");
  } else {
    respond(in.connection_id, in.correlation_id, "null");
  }
}

void on_http(const uint8_t* p, size_t n) {
  static linkd_HttpRequest rq;
  memset(&rq, 0, sizeof rq);  // callbacks left empty: path, headers, body are skipped
  pb_istream_t is = pb_istream_from_buffer(p, n);
  if (!pb_decode_ex(&is, linkd_HttpRequest_fields, &rq, PB_DECODE_NOINIT)) {
    fprintf(stderr, "benchsvc: bad HttpRequest: %s\n", PB_GET_ERROR(&is));
    return;
  }
  ++n_http;
  linkd_HttpResponse rs = linkd_HttpResponse_init_zero;
  rs.request_id = rq.request_id;
  rs.status = 200;
  std::string_view body = "hello\n";
  rs.body.funcs.encode = enc_bytes;
  rs.body.arg = &body;
  rs.headers.funcs.encode = enc_header;
  emit(4, linkd_HttpResponse_fields, &rs);
}

void on_heartbeat(const uint8_t* p, size_t n) {
  linkd_Heartbeat hb = linkd_Heartbeat_init_zero;
  pb_istream_t is = pb_istream_from_buffer(p, n);
  if (!pb_decode(&is, linkd_Heartbeat_fields, &hb) || hb.reply) return;
  hb.reply = true;
  emit(9, linkd_Heartbeat_fields, &hb);
}

bool registered = false;

void on_register_result(const uint8_t* p, size_t n) {
  linkd_RegisterResult rr = linkd_RegisterResult_init_zero;
  pb_istream_t is = pb_istream_from_buffer(p, n);
  if (!pb_decode(&is, linkd_RegisterResult_fields, &rr)) { fprintf(stderr, "benchsvc: bad RegisterResult\n"); exit(1); }
  if (!rr.ok) { fprintf(stderr, "benchsvc: registration refused: %s\n", rr.reason); exit(1); }
  registered = true;
  printf("registered linkd=%s max_frame=%u\n", rr.linkd_version, rr.max_frame_bytes);
  fflush(stdout);
}

void on_error_like(uint32_t field, const uint8_t* p, size_t n) {
  if (++n_errors > 20) return;  // keep the log short
  if (field == 5) {
    linkd_ErrorResponse e = linkd_ErrorResponse_init_zero;
    pb_istream_t is = pb_istream_from_buffer(p, n);
    if (pb_decode(&is, linkd_ErrorResponse_fields, &e)) fprintf(stderr, "benchsvc: linkd error %d %s: %s\n", e.code, e.type, e.message);
  } else {
    linkd_CommandResult c = linkd_CommandResult_init_zero;
    pb_istream_t is = pb_istream_from_buffer(p, n);
    if (pb_decode(&is, linkd_CommandResult_fields, &c) && !c.ok)
      fprintf(stderr, "benchsvc: command %llu failed: %s %s\n", (unsigned long long)c.op_id, c.error.type, c.error.message);
  }
}

// One ServiceMessage: read the oneof's tag by hand, decode only the member.
void on_frame(const uint8_t* p, size_t n) {
  pb_istream_t is = pb_istream_from_buffer(p, n);
  while (is.bytes_left) {
    uint32_t tag;
    pb_wire_type_t wt;
    bool eof;
    if (!pb_decode_tag(&is, &wt, &tag, &eof)) return;
    if (wt != PB_WT_STRING) { pb_skip_field(&is, wt); continue; }
    uint32_t len;
    if (!pb_decode_varint32(&is, &len) || len > is.bytes_left) return;
    const uint8_t* sub = static_cast<const uint8_t*>(is.state);
    switch (tag) {
      case 21: on_inbound(sub, len); break;
      case 3: on_http(sub, len); break;
      case 9: on_heartbeat(sub, len); break;
      case 2: on_register_result(sub, len); break;
      case 5: case 10: on_error_like(tag, sub, len); break;
      default: break;  // connection events, rooms results: not needed here
    }
    pb_read(&is, nullptr, len);
  }
}

void write_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t w = write(fd, s.data() + off, s.size() - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      perror("benchsvc: write");
      exit(1);
    }
    off += (size_t)w;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) { fprintf(stderr, "usage: benchsvc SOCKET_PATH [WS_PATH [RECOVERY_WINDOW_MS:HISTORY]]\n"); return 1; }
  const char* sock = argv[1];
  const char* wspath = argc > 2 ? argv[2] : "/ws/bench";
  unsigned rec_window = 0, rec_history = 0;   // connection recovery on the path (issue 10's bench rows)
  if (argc > 3 && sscanf(argv[3], "%u:%u", &rec_window, &rec_history) != 2) { fprintf(stderr, "benchsvc: recovery is WINDOW_MS:HISTORY\n"); return 1; }
  signal(SIGPIPE, SIG_IGN);

  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  copy_str(sa.sun_path, sizeof sa.sun_path, sock);
  // linkd may still be starting: retry for up to 10 s
  int tries = 0;
  while (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    if (++tries > 200) { perror("benchsvc: connect"); return 1; }
    timespec ts{0, 50 * 1000 * 1000};
    nanosleep(&ts, nullptr);
  }

  static linkd_RegisterService reg;  // zero-initialised
  strcpy(reg.name, "bench");
  strcpy(reg.version, "1.0.0");
  snprintf(reg.instance_id, sizeof reg.instance_id, "bench-%d", (int)getpid());
  reg.routes.funcs.encode = enc_routes;
  reg.has_websocket = true;
  reg.websocket.enabled = true;
  copy_str(reg.websocket.path, sizeof reg.websocket.path, wspath);
  if (rec_window) {
    reg.websocket.has_recovery = true;
    reg.websocket.recovery.window_ms = rec_window;
    reg.websocket.recovery.history = rec_history;
  }
  emit(1, linkd_RegisterService_fields, &reg);
  write_all(fd, out);
  out.clear();

  std::vector<uint8_t> buf(1 << 20);
  size_t have = 0;
  for (;;) {
    if (have == buf.size()) buf.resize(buf.size() * 2);
    ssize_t r = read(fd, buf.data() + have, buf.size() - have);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    have += (size_t)r;
    size_t off = 0;
    for (;;) {
      // varint length
      uint64_t len = 0;
      size_t i = off;
      int shift = 0;
      bool complete = false;
      while (i < have && shift < 64) {
        uint8_t b = buf[i++];
        len |= (uint64_t)(b & 0x7f) << shift;
        shift += 7;
        if (!(b & 0x80)) { complete = true; break; }
      }
      if (!complete || have - i < len) {
        if (complete && len + 16 > buf.size()) buf.resize(len + 16);
        break;
      }
      on_frame(buf.data() + i, len);
      off = i + len;
    }
    if (off) { memmove(buf.data(), buf.data() + off, have - off); have -= off; }
    if (!out.empty()) { write_all(fd, out); out.clear(); }
  }
  fprintf(stderr, "benchsvc: link closed (inbound=%llu http=%llu errors=%llu)\n", n_inbound, n_http, n_errors);
  return 0;
}
