// tlsmem: what mbedTLS keeps for one idle TLS connection on linkd's side.
//
// Runs N in-memory TLS 1.2 handshakes between an mbedTLS client and an
// mbedTLS server set up as linkd sets its own (ECDHE-ECDSA with AES-128-GCM,
// X25519, session tickets, ALPN http/1.1), then "parks" every server context
// the way linkd's tls_park does (the two record buffers given back), frees the
// clients, and reports:
//   - sizeof of the structures involved;
//   - each heap block an idle server connection still owns (malloc_usable_size);
//   - the heap in use per connection (mallinfo2: what N parked contexts hold,
//     divided by N), for full handshakes and for resumed ones (ticket).
//
//   g++ -O2 -std=c++20 tests/bench/tlsmem.c++ -o build/bench/tlsmem -lmbedtls -lmbedx509 -lmbedcrypto
//   build/bench/tlsmem CERT.pem KEY.pem [N]
//
// Native build only (Debian's mbedTLS 2.28: fixed 16 KiB record buffers,
// MBEDTLS_SSL_KEEP_PEER_CERTIFICATE). Prints "key=value" lines.
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/gcm.h>
#include <mbedtls/chachapoly.h>
#include <mbedtls/aes.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_internal.h>
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/x509_crt.h>

#include <malloc.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

// One direction of an in-memory pipe.
struct Pipe { std::string buf; };

int pipe_send(void* p, const unsigned char* b, size_t n) { static_cast<Pipe*>(p)->buf.append((const char*)b, n); return (int)n; }
int pipe_recv(void* p, unsigned char* b, size_t n) {
  Pipe* q = static_cast<Pipe*>(p);
  if (q->buf.empty()) return MBEDTLS_ERR_SSL_WANT_READ;
  n = std::min(n, q->buf.size());
  memcpy(b, q->buf.data(), n);
  q->buf.erase(0, n);
  return (int)n;
}

struct Both { Pipe c2s, s2c; };
int cli_send(void* p, const unsigned char* b, size_t n) { return pipe_send(&static_cast<Both*>(p)->c2s, b, n); }
int cli_recv(void* p, unsigned char* b, size_t n) { return pipe_recv(&static_cast<Both*>(p)->s2c, b, n); }
int srv_send(void* p, const unsigned char* b, size_t n) { return pipe_send(&static_cast<Both*>(p)->s2c, b, n); }
int srv_recv(void* p, unsigned char* b, size_t n) { return pipe_recv(&static_cast<Both*>(p)->c2s, b, n); }

mbedtls_entropy_context entropy;
mbedtls_ctr_drbg_context drbg;
mbedtls_ssl_config scf, ccf;
mbedtls_x509_crt cert;
mbedtls_pk_context key;
mbedtls_ssl_ticket_context tickets;

const int suites[] = {MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, 0};
const mbedtls_ecp_group_id curves[] = {MBEDTLS_ECP_DP_CURVE25519, MBEDTLS_ECP_DP_SECP256R1, MBEDTLS_ECP_DP_NONE};
const char* alpn[] = {"http/1.1", nullptr};

size_t heap_in_use() { return mallinfo2().uordblks; }
size_t usable(const void* p) { return p ? malloc_usable_size(const_cast<void*>(p)) : 0; }

// One handshake; the server context stays (parked), the client goes.
// session: offered by the client when not null; saved into *keep when asked.
bool handshake(mbedtls_ssl_context* s, const mbedtls_ssl_session* offer, mbedtls_ssl_session* keep) {
  Both* io = new Both;
  mbedtls_ssl_context c;
  mbedtls_ssl_init(&c);
  mbedtls_ssl_init(s);
  if (mbedtls_ssl_setup(s, &scf) || mbedtls_ssl_setup(&c, &ccf) || mbedtls_ssl_set_hostname(&c, "localhost")) return false;
  if (offer && mbedtls_ssl_set_session(&c, offer)) return false;
  mbedtls_ssl_set_bio(&c, io, cli_send, cli_recv, nullptr);
  mbedtls_ssl_set_bio(s, io, srv_send, srv_recv, nullptr);
  for (int round = 0; round < 100 && (c.state != MBEDTLS_SSL_HANDSHAKE_OVER || s->state != MBEDTLS_SSL_HANDSHAKE_OVER); round++) {
    int r = mbedtls_ssl_handshake(&c);
    if (r && r != MBEDTLS_ERR_SSL_WANT_READ && r != MBEDTLS_ERR_SSL_WANT_WRITE) { fprintf(stderr, "client: -0x%04x\n", -r); return false; }
    r = mbedtls_ssl_handshake(s);
    if (r && r != MBEDTLS_ERR_SSL_WANT_READ && r != MBEDTLS_ERR_SSL_WANT_WRITE) { fprintf(stderr, "server: -0x%04x\n", -r); return false; }
  }
  if (keep) mbedtls_ssl_get_session(&c, keep);
  mbedtls_ssl_free(&c);
  delete io;
  mbedtls_ssl_set_bio(s, nullptr, nullptr, nullptr, nullptr);
  // park, as linkd's tls_park: the record buffers go back to a pool
  free(s->in_buf);
  free(s->out_buf);
  s->in_buf = s->out_buf = nullptr;
  return s->state == MBEDTLS_SSL_HANDSHAKE_OVER;
}

void describe(const char* tag, const mbedtls_ssl_context* s) {
  const mbedtls_ssl_transform* t = s->transform;
  // AES-GCM: the cipher context is a mbedtls_gcm_context, which holds its own
  // cipher context for the AES key schedule
  auto inner = [](const mbedtls_cipher_context_t& cc) -> const void* {
    return cc.cipher_info && cc.cipher_info->mode == MBEDTLS_MODE_GCM && cc.cipher_ctx
             ? static_cast<const mbedtls_gcm_context*>(cc.cipher_ctx)->cipher_ctx.cipher_ctx : nullptr;
  };
  const void* blocks[] = {s->session, t, t ? t->cipher_ctx_enc.cipher_ctx : nullptr, t ? inner(t->cipher_ctx_enc) : nullptr,
                          t ? t->cipher_ctx_dec.cipher_ctx : nullptr, t ? inner(t->cipher_ctx_dec) : nullptr,
                          s->session ? s->session->peer_cert : nullptr, s->session ? s->session->ticket : nullptr, s->hostname};
  const char* names[] = {"session", "transform", "gcm_enc", "aes_enc", "gcm_dec", "aes_dec", "peer_cert", "ticket", "hostname"};
  size_t total = 0;
  printf("%s_blocks", tag);
  for (size_t i = 0; i < sizeof blocks / sizeof blocks[0]; i++) {
    printf(" %s=%zu", names[i], usable(blocks[i]));
    if (blocks[i]) total += usable(blocks[i]) + 8;   // + glibc's 8-byte chunk header
  }
  printf(" handshake=%s\n%s_blocks_total=%zu (with malloc headers)\n", s->handshake ? "kept" : "freed", tag, total);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) { fprintf(stderr, "usage: tlsmem CERT KEY [N]\n"); return 1; }
  int n = argc > 3 ? atoi(argv[3]) : 1000;
  mbedtls_entropy_init(&entropy);
  mbedtls_ctr_drbg_init(&drbg);
  mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy, nullptr, 0);
  mbedtls_x509_crt_init(&cert);
  mbedtls_pk_init(&key);
  mbedtls_ssl_ticket_init(&tickets);
  if (mbedtls_x509_crt_parse_file(&cert, argv[1]) || mbedtls_pk_parse_keyfile(&key, argv[2], nullptr)) { fprintf(stderr, "cannot load cert/key\n"); return 1; }
  mbedtls_ssl_ticket_setup(&tickets, mbedtls_ctr_drbg_random, &drbg, MBEDTLS_CIPHER_AES_256_GCM, 86400);
  for (mbedtls_ssl_config* cf : {&scf, &ccf}) {
    mbedtls_ssl_config_init(cf);
    mbedtls_ssl_config_defaults(cf, cf == &scf ? MBEDTLS_SSL_IS_SERVER : MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT);
    mbedtls_ssl_conf_min_version(cf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_max_version(cf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_ciphersuites(cf, suites);
    mbedtls_ssl_conf_curves(cf, curves);
    mbedtls_ssl_conf_rng(cf, mbedtls_ctr_drbg_random, &drbg);
    mbedtls_ssl_conf_alpn_protocols(cf, alpn);
    mbedtls_ssl_conf_authmode(cf, MBEDTLS_SSL_VERIFY_NONE);
  }
  mbedtls_ssl_conf_own_cert(&scf, &cert, &key);
  mbedtls_ssl_conf_session_tickets_cb(&scf, mbedtls_ssl_ticket_write, mbedtls_ssl_ticket_parse, &tickets);

  printf("sizeof mbedtls_ssl_context=%zu mbedtls_ssl_session=%zu mbedtls_ssl_transform=%zu mbedtls_ssl_handshake_params=%zu\n",
         sizeof(mbedtls_ssl_context), sizeof(mbedtls_ssl_session), sizeof(mbedtls_ssl_transform), sizeof(mbedtls_ssl_handshake_params));
  printf("sizeof mbedtls_cipher_context_t=%zu mbedtls_gcm_context=%zu mbedtls_aes_context=%zu mbedtls_chachapoly_context=%zu\n",
         sizeof(mbedtls_cipher_context_t), sizeof(mbedtls_gcm_context), sizeof(mbedtls_aes_context), sizeof(mbedtls_chachapoly_context));
  printf("record_buffers in=%d out=%d\n", (int)MBEDTLS_SSL_IN_BUFFER_LEN, (int)MBEDTLS_SSL_OUT_BUFFER_LEN);

  // warm up whatever mbedTLS allocates once (ECP tables, the ticket keys)
  mbedtls_ssl_session saved;
  mbedtls_ssl_session_init(&saved);
  std::vector<mbedtls_ssl_context> warm(1);
  if (!handshake(&warm[0], nullptr, &saved)) { fprintf(stderr, "handshake failed\n"); return 1; }
  std::vector<mbedtls_ssl_context> warm2(1);
  handshake(&warm2[0], &saved, nullptr);

  for (int resumed = 0; resumed < 2; resumed++) {
    const char* tag = resumed ? "resumed" : "full";
    std::vector<mbedtls_ssl_context>* v = new std::vector<mbedtls_ssl_context>(n);   // the contexts themselves: not counted below
    size_t h0 = heap_in_use();
    int ok = 0;
    for (int i = 0; i < n; i++) ok += handshake(&(*v)[i], resumed ? &saved : nullptr, nullptr);
    size_t h1 = heap_in_use();
    printf("%s_handshakes=%d heap_per_connection=%.0f (besides the mbedtls_ssl_context itself)\n", tag, ok, (double)(h1 - h0) / n);
    describe(tag, &(*v)[0]);
    for (auto& s : *v) mbedtls_ssl_free(&s);
    delete v;
  }
  return 0;
}
