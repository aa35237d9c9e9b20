// libFuzzer harness: JWT verification (jwt_verify) and the key file reader.
//
// The fixture makes four key pairs once, from a fixed seed (the same keys
// in every run, so the committed seeds stay valid): RSA and P-256 keys #1
// are given to linkd as a PEM file, RSA and P-256 keys #2 as a JWKS file,
// both read by linkd's keys_load; the HS256 secret is "fuzz-secret". The
// harness signs for the fuzzer where a signature cannot be guessed, so the
// claims parser is reached with every algorithm.
//
// Input: byte 0 % 8 is the mode, the rest its text:
//   0, 1  a token, verbatim
//   2     [header 0xff] claims: HS256-signed by the harness
//   3, 4  [header 0xff] claims: RS256-signed with key #1 (PEM), #2 (JWKS)
//   5, 6  [header 0xff] claims: ES256-signed with key #1 (PEM), #2 (JWKS)
//   7     a --jwt-keys file (PEM blocks or a JWKS document) for keys_load
// Without a header, {"alg":ALG,"typ":"JWT"} is used. A verified token's
// claims are expanded as a request would (user_expand, roles, tally key).

#include "fuzz_common.h"

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/pk.h>
#include <sys/mman.h>

namespace {

mbedtls_ctr_drbg_context drbg;
mbedtls_pk_context priv[4];   // RSA #1, EC #1, RSA #2, EC #2

int fixed_entropy(void*, unsigned char* out, size_t n) {
  for (size_t i = 0; i < n; i++) out[i] = (unsigned char)(i * 131 + 7);
  return 0;
}

// Writes text to an anonymous file; returns a path that opens it.
const char* memfile(const char* name, const void* p, size_t n) {
  static char path[4][64];
  static int k;
  int fd = memfd_create(name, 0);
  if (fd < 0 || write(fd, p, n) != (ssize_t)n) fz::die("memfd");
  char* out = path[k++ & 3];
  snprintf(out, 64, "/proc/self/fd/%d", fd);
  return out;
}

std::string jwk(const mbedtls_pk_context* pk) {
  if (mbedtls_pk_get_type(pk) == MBEDTLS_PK_RSA) {
    const mbedtls_rsa_context* rsa = mbedtls_pk_rsa(*pk);
    unsigned char n[512], e[4];
    size_t nl = mbedtls_rsa_get_len(rsa);
    if (mbedtls_rsa_export_raw(rsa, n, nl, nullptr, 0, nullptr, 0, nullptr, 0, e, sizeof e)) fz::die("rsa export");
    size_t z = 0;
    while (z < 3 && !e[z]) z++;
    return "{\"kty\":\"RSA\",\"use\":\"sig\",\"kid\":\"r2\",\"n\":\"" + fz::b64url(n, nl) + "\",\"e\":\"" + fz::b64url(e + z, 4 - z) + "\"}";
  }
  const mbedtls_ecp_keypair* kp = mbedtls_pk_ec(*pk);
  unsigned char x[32], y[32];
  mbedtls_mpi_write_binary(&kp->Q.X, x, 32);
  mbedtls_mpi_write_binary(&kp->Q.Y, y, 32);
  return "{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"e2\",\"x\":\"" + fz::b64url(x, 32) + "\",\"y\":\"" + fz::b64url(y, 32) + "\"}";
}

void fixture() {
  fz::config_defaults();
  mbedtls_ctr_drbg_init(&drbg);
  if (mbedtls_ctr_drbg_seed(&drbg, fixed_entropy, nullptr, (const unsigned char*)"linkd-fuzz", 10)) fz::die("drbg");
  for (int i = 0; i < 4; i++) {
    mbedtls_pk_init(&priv[i]);
    bool rsa = i % 2 == 0;
    if (mbedtls_pk_setup(&priv[i], mbedtls_pk_info_from_type(rsa ? MBEDTLS_PK_RSA : MBEDTLS_PK_ECKEY))) fz::die("pk setup");
    int r = rsa ? mbedtls_rsa_gen_key(mbedtls_pk_rsa(priv[i]), mbedtls_ctr_drbg_random, &drbg, 2048, 65537)
                : mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(priv[i]), mbedtls_ctr_drbg_random, &drbg);
    if (r) fz::die("key generation");
  }
  std::string pem;
  for (int i = 0; i < 2; i++) {
    unsigned char buf[2048];
    if (mbedtls_pk_write_pubkey_pem(&priv[i], buf, sizeof buf)) fz::die("pem");
    pem += "# key " + std::to_string(i + 1) + "\n" + (const char*)buf;
  }
  std::string jwks = "{\"keys\":[" + jwk(&priv[2]) + ",{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"}," + jwk(&priv[3]) + "]}";
  char err[512];
  snprintf(cfg.jwt_keys, sizeof cfg.jwt_keys, "%s", memfile("keys.pem", pem.data(), pem.size()));
  if (!keys_load(&keys, err, sizeof err)) fz::die(err);
  snprintf(cfg.jwt_keys, sizeof cfg.jwt_keys, "%s", memfile("keys.jwks", jwks.data(), jwks.size()));
  if (!keys_load(&keys, err, sizeof err)) fz::die(err);
  if (keys.n != 4) fz::die("the fixture's keys did not all load");
}

std::string sign(int mode, const std::string& header, const std::string& claims) {
  std::string signing = fz::b64url(header.data(), header.size()) + "." + fz::b64url(claims.data(), claims.size());
  if (mode == 2) {
    unsigned char mac[32];
    mbedtls_md_hmac(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), (const unsigned char*)cfg.jwt_secret, strlen(cfg.jwt_secret),
                    (const unsigned char*)signing.data(), signing.size(), mac);
    return signing + "." + fz::b64url(mac, 32);
  }
  unsigned char hash[32];
  mbedtls_sha256_ret((const unsigned char*)signing.data(), signing.size(), hash, 0);
  mbedtls_pk_context* pk = &priv[mode == 3 ? 0 : mode == 4 ? 2 : mode == 5 ? 1 : 3];
  if (mode <= 4) {
    unsigned char sig[512];
    mbedtls_rsa_context* rsa = mbedtls_pk_rsa(*pk);
    if (mbedtls_rsa_pkcs1_sign(rsa, mbedtls_ctr_drbg_random, &drbg, MBEDTLS_RSA_PRIVATE, MBEDTLS_MD_SHA256, 32, hash, sig)) fz::die("rsa sign");
    return signing + "." + fz::b64url(sig, mbedtls_rsa_get_len(rsa));
  }
  mbedtls_ecp_keypair* kp = mbedtls_pk_ec(*pk);
  mbedtls_mpi r, s;
  mbedtls_mpi_init(&r);
  mbedtls_mpi_init(&s);
  unsigned char sig[64];
  if (mbedtls_ecdsa_sign_det_ext(&kp->grp, &r, &s, &kp->d, hash, 32, MBEDTLS_MD_SHA256, mbedtls_ctr_drbg_random, &drbg) ||
      mbedtls_mpi_write_binary(&r, sig, 32) || mbedtls_mpi_write_binary(&s, sig + 32, 32)) fz::die("ecdsa sign");
  mbedtls_mpi_free(&r);
  mbedtls_mpi_free(&s);
  return signing + "." + fz::b64url(sig, 64);
}

void verify(const std::string& tok) {
  const char* why = nullptr;
  UserBlob* u = jwt_verify(tok.data(), tok.size(), &why);
  if (fz::trace) fprintf(stderr, "token %s: %s\n", u ? "verified" : "refused", u ? u->data : why ? why : "(no reason)");
  if (!u) {
    if (!why) fz::die("jwt_verify refused a token without saying why");
    return;
  }
  linkd_UserContext uc;
  user_expand(u, nullptr, &uc);
  (void)user_has_role(u, "admin");
  char key[160];
  size_t n = tally_key_user(1, u->data, key);
  if (n > sizeof key) fz::die("tally key overflow");
  free(u);
}

// keys_load on the fuzzer's file into a table of its own, as a reload
// (SIGHUP) does; keys_free must leave nothing behind (LeakSanitizer).
void load_keys(const uint8_t* p, size_t n) {
  static int fd = memfd_create("fuzz-keys", 0);
  if (fd < 0 || ftruncate(fd, 0) || pwrite(fd, p, n, 0) != (ssize_t)n) fz::die("memfd");
  char saved[sizeof cfg.jwt_keys];
  memcpy(saved, cfg.jwt_keys, sizeof saved);
  snprintf(cfg.jwt_keys, sizeof cfg.jwt_keys, "/proc/self/fd/%d", fd);
  Keys* fresh = (Keys*)calloc(1, sizeof(Keys));
  char err[512];
  (void)keys_load(fresh, err, sizeof err);
  memcpy(cfg.jwt_keys, saved, sizeof saved);
  keys_free(fresh);
  free(fresh);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bool once = (fixture(), true);
  (void)once;
  if (size < 1) return 0;
  int mode = data[0] % 8;
  std::string rest((const char*)data + 1, size - 1);
  if (mode <= 1) { verify(rest); return 0; }
  if (mode == 7) { load_keys(data + 1, size - 1); return 0; }
  static const char* algs[] = {"", "", "HS256", "RS256", "RS256", "ES256", "ES256"};
  std::string header = std::string("{\"alg\":\"") + algs[mode] + "\",\"typ\":\"JWT\"}", claims = rest;
  size_t cut = rest.find('\xff');
  if (cut != std::string::npos) { header = rest.substr(0, cut); claims = rest.substr(cut + 1); }
  verify(sign(mode, header, claims));
  return 0;
}
