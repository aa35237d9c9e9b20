// libFuzzer harness: the config file parser.
//
// The input is a config file's contents; linkd reads it as `linkd --config
// FILE` would, through config_reparse, the path a reload (SIGHUP) takes:
// config_parse, config_load_file (comments, key = value, quotes, unknown
// keys), setting_apply (numbers with units, ranges, levels, policies, ids,
// string lengths), then the cross-setting checks. A bad file makes
// config_die jump back to config_reparse (which closes the file and puts
// the settings back) instead of exiting 2: not a crash. Settings are reset
// to their defaults after every input.

#ifndef LINKD_NO_MAIN
#define LINKD_NO_MAIN
#endif
#ifndef LINKD_FUZZ
#define LINKD_FUZZ
#endif
#include "../../linkd.c++"

#include <sys/mman.h>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static int fd = memfd_create("linkd-fuzz.conf", 0);
  static char path[64];
  if (fd < 0) abort();
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  if (ftruncate(fd, 0) || pwrite(fd, data, size, 0) != (ssize_t)size) abort();
  char arg0[] = "linkd", arg1[] = "--config";
  char* argv[] = {arg0, arg1, path, nullptr};
  char why[1024];
  if (!config_reparse(3, argv, why, sizeof why) && !*why) abort();   // refused without saying why
  cfg = Config{};
  return 0;
}
