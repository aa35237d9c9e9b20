// clusterfan: the cluster bench's client (make bench-cluster). Plain sockets
// and epoll; the WebSocket client side by hand (server frames are unmasked;
// ours are masked with a fixed key, which a server must accept).
//
//   clusterfan --ports P1[,P2...] -n N [-r R] [--room R] fanout
//       N connections, connection i to port P[i % count] on 127.0.0.1 (so
//       connection 0, the trigger, is on the first port); each joins the room
//       ({"type":"join",...}, benchsvc on that node answers after the join);
//       then per round the trigger sends {"type":"fanout","data":{"room":R,
//       "seq":S}} and the time until every member got that seq is measured,
//       with the time the last member of each port got it.
//   clusterfan --trigger PT --members PM -m M -k K [--room R] rate
//       M connections to port PM join the room; one connection to port PT
//       (not a member) sends K fanout triggers back to back; the time from the
//       first send until every member has all K pushes gives pushes/s (and
//       deliveries/s = pushes/s x M). PT = PM: all on one node; PT != PM:
//       every push crosses from the trigger's node to the members' node.
//
// Prints "RESULT key=value ..." lines. Bounded: every wait has a timeout.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

std::string path = "/ws/bench", room = "bench";
std::vector<int> ports;
int n = 10000, rounds = 5, m_members = 10, k_pushes = 10000, trig_port = 0, memb_port = 0;

double now_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

[[noreturn]] void die(const char* what) {
  fprintf(stderr, "clusterfan: %s: %s\n", what, strerror(errno));
  exit(3);
}

struct Conn {
  int fd = -1;
  int port_ix = 0;
  std::string rb;         // bytes read, not yet a whole frame
  int joined = 0;         // join replies seen
  int seen = 0;           // fanout round seen last (fanout), pushes counted (rate)
};
std::vector<Conn> conns;
int ep = -1;

// One masked text frame (mask key 0: the payload goes as it is).
std::string frame(const std::string& text) {
  std::string f;
  f.push_back((char)0x81);
  size_t l = text.size();
  if (l < 126) f.push_back((char)(0x80 | l));
  else { f.push_back((char)(0x80 | 126)); f.push_back((char)(l >> 8)); f.push_back((char)(l & 0xff)); }
  f.append(4, '\0');
  f += text;
  return f;
}

void send_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t w = send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EAGAIN || errno == EINTR) {
        pollfd p{fd, POLLOUT, 0};
        poll(&p, 1, 1000);
        continue;
      }
      die("send");
    }
    off += (size_t)w;
  }
}

// Opens count connections to port (a batch of handshakes in flight at a time).
void open_conns(int port, int port_ix, int count) {
  const int batch = 200;
  for (int done = 0; done < count; done += batch) {
    int b = std::min(batch, count - done);
    size_t first = conns.size();
    for (int i = 0; i < b; i++) {
      Conn c;
      c.port_ix = port_ix;
      c.fd = socket(AF_INET, SOCK_STREAM, 0);
      if (c.fd < 0) die("socket");
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons((uint16_t)port);
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (connect(c.fd, (sockaddr*)&a, sizeof a) < 0) die("connect");
      int one = 1;
      setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      char req[512];
      snprintf(req, sizeof req,
               "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", path.c_str(), port);
      send_all(c.fd, req);
      conns.push_back(std::move(c));
    }
    for (size_t i = first; i < conns.size(); i++) {
      Conn& c = conns[i];
      timeval tv{10, 0};
      setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      std::string h;
      char buf[4096];
      while (h.find("\r\n\r\n") == std::string::npos) {
        ssize_t r = recv(c.fd, buf, sizeof buf, 0);
        if (r <= 0) die("handshake");
        h.append(buf, (size_t)r);
      }
      if (h.compare(0, 12, "HTTP/1.1 101") != 0) {
        fprintf(stderr, "clusterfan: handshake refused: %.80s\n", h.c_str());
        exit(3);
      }
      c.rb = h.substr(h.find("\r\n\r\n") + 4);
      fcntl(c.fd, F_SETFL, fcntl(c.fd, F_GETFL) | O_NONBLOCK);
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u32 = (uint32_t)i;
      epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &ev);
    }
  }
}

// Whole text frames of c's buffer, to fn(conn, text, len).
template <class F>
void frames(Conn& c, F fn) {
  size_t off = 0;
  for (;;) {
    if (c.rb.size() - off < 2) break;
    const uint8_t* p = (const uint8_t*)c.rb.data() + off;
    size_t avail = c.rb.size() - off, hl = 2;
    uint64_t l = p[1] & 0x7f;
    if (l == 126) { if (avail < 4) break; l = (uint64_t)p[2] << 8 | p[3]; hl = 4; }
    else if (l == 127) { if (avail < 10) break; l = 0; for (int i = 0; i < 8; i++) l = l << 8 | p[2 + i]; hl = 10; }
    if (avail < hl + l) break;
    if ((p[0] & 0x0f) == 1) fn(c, (const char*)p + hl, (size_t)l);
    else if ((p[0] & 0x0f) == 8) { fprintf(stderr, "clusterfan: a connection was closed by the server\n"); exit(3); }
    off += hl + l;
  }
  c.rb.erase(0, off);
}

// Reads whatever is ready (waiting up to ms) and hands every frame to fn.
template <class F>
void pump(int ms, F fn) {
  static epoll_event evs[512];
  int k = epoll_wait(ep, evs, 512, ms);
  char buf[65536];
  for (int i = 0; i < k; i++) {
    Conn& c = conns[evs[i].data.u32];
    for (;;) {
      ssize_t r = recv(c.fd, buf, sizeof buf, 0);
      if (r > 0) { c.rb.append(buf, (size_t)r); continue; }
      if (r == 0) { fprintf(stderr, "clusterfan: a connection ended\n"); exit(3); }
      if (errno == EAGAIN || errno == EINTR) break;
      die("recv");
    }
    frames(c, fn);
  }
}

bool has(const char* s, size_t l, const char* what) { return memmem(s, l, what, strlen(what)) != nullptr; }

long seq_of(const char* s, size_t l) {
  const char* p = (const char*)memmem(s, l, "\"seq\":", 6);
  return p ? strtol(p + 6, nullptr, 10) : -1;
}

// Every connection from `from` on joins the room; false if not all answered in 30 s.
bool join_all(size_t from) {
  std::string j = frame("{\"type\":\"join\",\"data\":{\"room\":\"" + room + "\"},\"id\":\"j\"}");
  for (size_t i = from; i < conns.size(); i++) send_all(conns[i].fd, j);
  size_t want = conns.size() - from, got = 0;
  double end = now_ms() + 30000;
  while (got < want && now_ms() < end)
    pump(100, [&](Conn& c, const char* s, size_t l) {
      if (has(s, l, "\"joined\"")) { c.joined++; got++; }
    });
  printf("RESULT joined=%zu of=%zu\n", got, want);
  return got == want;
}

int fanout() {
  for (size_t p = 0; p < ports.size(); p++) {
    int cnt = n / (int)ports.size() + ((int)p < n % (int)ports.size() ? 1 : 0);
    // interleave: connection i on port i % count (built port by port, then the
    // trigger is the first connection of the first port)
    open_conns(ports[p], (int)p, cnt);
  }
  double t_open = now_ms();
  if (!join_all(0)) return 3;
  std::vector<double> total, first;
  std::vector<std::vector<double>> per(ports.size()), per_first(ports.size());
  std::vector<int> members(ports.size());
  for (Conn& c : conns) members[c.port_ix]++;
  for (int r = 1; r <= rounds; r++) {
    usleep(300000);
    std::string t = frame("{\"type\":\"fanout\",\"data\":{\"room\":\"" + room + "\",\"seq\":" + std::to_string(r) + "}}");
    size_t got = 0;
    std::vector<double> last(ports.size(), 0), firstp(ports.size(), -1);
    std::vector<int> left = members;
    double t0 = now_ms(), tf = 0, end = t0 + 10000;
    send_all(conns[0].fd, t);
    while (got < conns.size() && now_ms() < end)
      pump(100, [&](Conn& c, const char* s, size_t l) {
        if (!has(s, l, "\"type\":\"fanout\"") || seq_of(s, l) != r || c.seen == r) return;
        c.seen = r;
        double t1 = now_ms();
        if (!got) tf = t1;
        if (firstp[c.port_ix] < 0) firstp[c.port_ix] = t1 - t0;
        got++;
        if (--left[c.port_ix] == 0) last[c.port_ix] = t1 - t0;
      });
    total.push_back(got < conns.size() ? -1 : now_ms() - t0);   // a round not complete has no time
    first.push_back(tf ? tf - t0 : -1);
    for (size_t p = 0; p < ports.size(); p++) {
      per[p].push_back(left[p] ? -1 : last[p]);
      per_first[p].push_back(firstp[p]);
    }
    fprintf(stderr, "clusterfan: round %d: %zu/%zu members in %.1f ms\n", r, got, conns.size(), total.back());
    printf("ROUND %d total_ms=%.2f first_ms=%.2f", r, total.back(), first.back());
    for (size_t p = 0; p < ports.size(); p++) printf(" port%zu_first_ms=%.2f port%zu_last_ms=%.2f", p, firstp[p], p, per[p].back());
    printf("\n");
    if (got < conns.size()) printf("RESULT incomplete_round=%d got=%zu\n", r, got);
  }
  auto median = [](std::vector<double> v) { std::sort(v.begin(), v.end()); return v.empty() ? 0.0 : v[v.size() / 2]; };
  std::string each;
  for (size_t i = 0; i < total.size(); i++) each += (i ? "," : "") + std::to_string((int)(total[i] * 10) / 10.0).substr(0, 6);
  printf("RESULT members=%zu rounds=%d median_ms=%.1f first_ms=%.2f each=%s\n", conns.size(), rounds, median(total),
         median(first), each.c_str());
  for (size_t p = 0; p < ports.size(); p++)
    printf("RESULT port%zu_members=%d port%zu_first_ms=%.2f port%zu_last_ms=%.1f\n", p, members[p], p, median(per_first[p]), p,
           median(per[p]));
  (void)t_open;
  return 0;
}

int rate() {
  open_conns(memb_port, 0, m_members);
  if (!join_all(0)) return 3;
  open_conns(trig_port, 1, 1);
  size_t trig = conns.size() - 1;
  usleep(300000);
  std::string all;
  all.reserve((size_t)k_pushes * 90);
  for (int k = 1; k <= k_pushes; k++)
    all += frame("{\"type\":\"fanout\",\"data\":{\"room\":\"" + room + "\",\"seq\":" + std::to_string(k) + "}}");
  long want = (long)k_pushes * m_members, got = 0;
  double t0 = now_ms(), end = t0 + 60000, t_sent = 0;
  // the triggers go out while the members read (non-blocking, in slices)
  size_t off = 0;
  int fd = conns[trig].fd;
  while ((got < want || off < all.size()) && now_ms() < end) {
    if (off < all.size()) {
      ssize_t w = send(fd, all.data() + off, std::min<size_t>(all.size() - off, 65536), MSG_NOSIGNAL);
      if (w > 0) off += (size_t)w;
      else if (errno != EAGAIN && errno != EINTR) die("send");
      if (off == all.size()) t_sent = now_ms();
    }
    pump(off < all.size() ? 0 : 100, [&](Conn& c, const char* s, size_t l) {
      if (&c - conns.data() == (long)trig || !has(s, l, "\"type\":\"fanout\"")) return;
      c.seen++;
      got++;
    });
  }
  double dt = now_ms() - t0;
  int full = 0;
  for (size_t i = 0; i < trig; i++) full += conns[i].seen == k_pushes;
  printf("RESULT members=%d pushes=%d delivered=%ld of=%ld members_with_all=%d ms=%.1f pushes_per_s=%.0f deliveries_per_s=%.0f\n",
         m_members, k_pushes, got, want, full, dt, k_pushes / (dt / 1000), got / (dt / 1000));
  (void)t_sent;
  return got == want ? 0 : 3;
}

void usage() {
  fprintf(stderr, "usage: clusterfan --ports P1[,P2..] -n N [-r R] [--room R] [--path P] fanout\n"
                  "       clusterfan --trigger PT --members PM [-m M] [-k K] [--room R] [--path P] rate\n");
  exit(1);
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto next = [&]() -> const char* { if (i + 1 >= argc) usage(); return argv[++i]; };
    if (a == "--ports") { std::string s = next(); for (char* t = strtok(s.data(), ","); t; t = strtok(nullptr, ",")) ports.push_back(atoi(t)); }
    else if (a == "-n") n = atoi(next());
    else if (a == "-r") rounds = atoi(next());
    else if (a == "-m") m_members = atoi(next());
    else if (a == "-k") k_pushes = atoi(next());
    else if (a == "--trigger") trig_port = atoi(next());
    else if (a == "--members") memb_port = atoi(next());
    else if (a == "--room") room = next();
    else if (a == "--path") path = next();
    else if (a == "fanout" || a == "rate") mode = a;
    else usage();
  }
  rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
  ep = epoll_create1(0);
  conns.reserve((size_t)std::max(n, m_members) + 2);
  setvbuf(stdout, nullptr, _IOLBF, 0);
  if (mode == "fanout" && !ports.empty() && n > 0 && rounds > 0) return fanout();
  if (mode == "rate" && trig_port && memb_port && m_members > 0 && k_pushes > 0) return rate();
  usage();
}
