// libFuzzer harness: the config file parser.
//
// The input is a config file's contents; linkd's config_parse reads it as
// `linkd --config FILE` would (config_load_file: comments, key = value,
// quotes, unknown keys; setting_apply: numbers with units, ranges, levels,
// policies, string lengths; then the cross-setting checks). A bad file makes
// config_die print its message and exit 2 in the daemon: under LINKD_FUZZ
// its hook brings control back here instead (longjmp), which is not a
// crash. Settings are reset to their defaults after every input.

#ifndef LINKD_NO_MAIN
#define LINKD_NO_MAIN
#endif
#ifndef LINKD_FUZZ
#define LINKD_FUZZ
#endif
#include <csetjmp>
#include <cstdio>
#include <sys/mman.h>

// config_load_file's FILE is abandoned when config_die jumps out of it:
// track the open one so the harness can close it (no leak reports).
static FILE* fuzz_open_file;
static FILE* fuzz_fopen(const char* path, const char* mode) { return fuzz_open_file = fopen(path, mode); }
static int fuzz_fclose(FILE* f) {
  if (f == fuzz_open_file) fuzz_open_file = nullptr;
  return fclose(f);
}
#define fopen fuzz_fopen
#define fclose fuzz_fclose
#include "../../linkd.c++"
#undef fopen
#undef fclose

namespace {

jmp_buf died;
int died_count;

void back_to_harness() { longjmp(died, 1); }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static int fd = memfd_create("linkd-fuzz.conf", 0);
  static char path[64];
  if (fd < 0) abort();
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  if (ftruncate(fd, 0) || pwrite(fd, data, size, 0) != (ssize_t)size) abort();
  config_die_hook = back_to_harness;
  char arg0[] = "linkd", arg1[] = "--config";
  char* argv[] = {arg0, arg1, path, nullptr};
  if (setjmp(died) == 0) config_parse(3, argv);
  else died_count++;
  if (fuzz_open_file) { fuzz_fclose(fuzz_open_file); }
  cfg = Config{};
  return 0;
}
