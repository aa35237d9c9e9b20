# Cross builds, install and the systemd unit (included by the top Makefile).
#
#   make cross ARCH=aarch64      -> ./linkd-aarch64   (static, stripped)
#   make cross ARCH=armhf        -> ./linkd-armhf
#   make cross                   -> both
#   make cross ARCH=x86_64       -> ./linkd-x86_64    (the same static build for the host)
#   make test ARCH=aarch64       -> the whole suite against ./linkd-aarch64 under qemu-aarch64-static
#   make install DESTDIR=/tmp/root PREFIX=/usr/local [ARCH=aarch64]
#   make cross-sizes             -> stripped sizes of ./linkd and the static builds
#   cross/measure.sh             -> the same, plus idle RSS
#
# Every dependency (libuv, wslay, mbedTLS, nanopb, zlib, llhttp) is compiled from the
# Debian sources that third_party/fetch.sh fetches and verifies, with the cross compiler,
# into build/cross-$(ARCH)/. All variables here are prefixed CROSS_ (plus TEST_LINKD_CMD,
# which the top Makefile hands to tests/run.sh as LINKD_CMD).

CROSS_ARCHES   := aarch64 armhf
CROSS_DEBS     := g++-aarch64-linux-gnu g++-arm-linux-gnueabihf qemu-user-static dpkg-dev \
                  nanopb protobuf-compiler libjsmn-dev
CROSS_TP       := third_party
CROSS_FETCHED  := cross-fetch
CROSS_VERSION  := $(if $(VERSION),$(VERSION),0.1.0)

CROSS_TRIPLE_aarch64 := aarch64-linux-gnu
CROSS_TRIPLE_armhf   := arm-linux-gnueabihf
# The same static build for the host (x86_64 boxes; measures a static linkd without qemu).
CROSS_TRIPLE_x86_64  := x86_64-linux-gnu
CROSS_QEMU_aarch64   := qemu-aarch64-static
CROSS_QEMU_armhf     := qemu-arm-static
# Per-architecture code generation: armhf in Thumb-2 (Debian's default, said explicitly).
CROSS_MFLAGS_aarch64 :=
CROSS_MFLAGS_armhf   := -mthumb
CROSS_MFLAGS_x86_64  :=

# Installation layout.
PREFIX         ?= /usr/local
DESTDIR        ?=
CROSS_UNITDIR  := /lib/systemd/system
CROSS_CONFDIR  := /etc/linkd

.PHONY: cross cross-fetch cross-deps cross-clean cross-sizes install uninstall

ifeq ($(ARCH),)
# ---------------------------------------------------------------- no ARCH: both
cross:
	@for a in $(CROSS_ARCHES); do $(MAKE) --no-print-directory cross ARCH=$$a || exit 1; done
CROSS_INSTALL_BIN := linkd
install: linkd
else
# ---------------------------------------------------------------- one ARCH
CROSS_TRIPLE := $(CROSS_TRIPLE_$(ARCH))
ifeq ($(CROSS_TRIPLE),)
$(error ARCH=$(ARCH): cross builds know ARCH=aarch64, ARCH=armhf (and ARCH=x86_64, static native))
endif
CROSS_CC    := $(CROSS_TRIPLE)-gcc
CROSS_CXX   := $(CROSS_TRIPLE)-g++
CROSS_AR    := $(CROSS_TRIPLE)-gcc-ar
CROSS_DIR   := $(BUILD)/cross-$(ARCH)
CROSS_BIN   := linkd-$(ARCH)
CROSS_INSTALL_BIN := $(CROSS_BIN)
# The test harness starts linkd through the emulator (binfmt is not mounted here).
TEST_LINKD_CMD := $(strip $(CROSS_QEMU_$(ARCH)) $(CURDIR)/$(CROSS_BIN))

# Size: -Os, one section per function/object so the linker drops what linkd never
# calls, link-time optimisation across linkd and its libraries, no unwind tables
# (nothing throws), no .comment/build-id notes.
CROSS_OPT      := -Os -flto=auto -ffunction-sections -fdata-sections -fno-ident $(CROSS_MFLAGS_$(ARCH))
CROSS_CFLAGS   := $(CROSS_OPT) -fno-asynchronous-unwind-tables -fno-unwind-tables
# linkd.c++ uses neither exceptions nor RTTI (the native build says the same).
CROSS_CXXFLAGS := $(CROSS_OPT) -fno-exceptions -fno-rtti -fno-asynchronous-unwind-tables
CROSS_LDFLAGS  := -static -s -Wl,--gc-sections -Wl,--build-id=none -Wl,-O1 -Wl,--hash-style=gnu

# Rebuild everything when the compiler flags change: $(CROSS_DIR)/.flags holds them
# and is rewritten (so newer than every object) only when they differ.
CROSS_FLAGSIG := $(CROSS_CC) $(CROSS_CFLAGS) / $(CROSS_CXXFLAGS) / $(CROSS_LDFLAGS) / mbedtls config $(shell cksum < cross/mbedtls_config.h)
ifneq ($(CROSS_FLAGSIG),$(shell cat $(CROSS_DIR)/.flags 2>/dev/null))
$(shell mkdir -p $(CROSS_DIR) && echo '$(CROSS_FLAGSIG)' > $(CROSS_DIR)/.flags)
endif

# ---- libuv 1.44.2 (the Linux source list of its CMakeLists.txt)
CROSS_UV_SRC := $(addprefix src/,fs-poll.c idna.c inet.c random.c strscpy.c strtok.c threadpool.c \
    timer.c uv-common.c uv-data-getter-setters.c version.c) \
  $(addprefix src/unix/,async.c core.c dl.c fs.c getaddrinfo.c getnameinfo.c loop-watcher.c \
    loop.c pipe.c poll.c process.c random-devurandom.c signal.c stream.c tcp.c thread.c tty.c \
    udp.c linux-core.c linux-inotify.c linux-syscalls.c procfs-exepath.c random-getrandom.c \
    random-sysctl-linux.c epoll.c proctitle.c)
CROSS_UV_FLAGS := -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -D_LARGEFILE_SOURCE \
  -I$(CROSS_TP)/libuv/include -I$(CROSS_TP)/libuv/src -I$(CROSS_TP)/libuv/src/unix \
  -fno-strict-aliasing -w
# ---- wslay 1.1.1 (aria2's deps/wslay)
CROSS_WSLAY_SRC := $(addprefix lib/,wslay_event.c wslay_frame.c wslay_net.c wslay_queue.c)
CROSS_WSLAY_FLAGS := -DHAVE_ARPA_INET_H -DHAVE_NETINET_IN_H -I$(CROSS_TP)/wslay/lib/includes -I$(CROSS_TP)/wslay/lib -w
# ---- mbedTLS 2.28 (OBJS_CRYPTO, OBJS_X509 and OBJS_TLS of its library/Makefile in one
#      archive, upstream config.h; the linker keeps only what linkd calls)
CROSS_MBED_SRC := $(addprefix library/,$(addsuffix .c,aes aesni arc4 aria asn1parse asn1write \
    base64 bignum blowfish camellia ccm chacha20 chachapoly cipher cipher_wrap cmac constant_time \
    ctr_drbg des dhm ecdh ecdsa ecjpake ecp ecp_curves entropy entropy_poll error gcm havege hkdf \
    hmac_drbg md md2 md4 md5 memory_buffer_alloc mps_reader mps_trace nist_kw oid padlock pem pk \
    pk_wrap pkcs12 pkcs5 pkparse pkwrite platform platform_util poly1305 psa_crypto psa_crypto_aead \
    psa_crypto_cipher psa_crypto_client psa_crypto_driver_wrappers psa_crypto_ecp psa_crypto_hash \
    psa_crypto_mac psa_crypto_rsa psa_crypto_se psa_crypto_slot_management psa_crypto_storage \
    psa_its_file ripemd160 rsa rsa_internal sha1 sha256 sha512 threading timing version \
    version_features xtea \
    certs pkcs11 x509 x509_create x509_crl x509_crt x509_csr x509write_crt x509write_csr \
    debug net_sockets ssl_cache ssl_ciphersuites ssl_cli ssl_cookie ssl_msg ssl_srv ssl_ticket \
    ssl_tls ssl_tls13_keys))
CROSS_MBED_CONFIG := -DMBEDTLS_CONFIG_FILE='"$(CURDIR)/cross/mbedtls_config.h"'
CROSS_MBED_FLAGS := -D_FILE_OFFSET_BITS=64 $(CROSS_MBED_CONFIG) -I$(CROSS_TP)/mbedtls/include -I$(CROSS_TP)/mbedtls/library -w
# ---- nanopb 0.4.7 (default options, like Debian's libprotobuf-nanopb)
CROSS_PB_SRC := pb_common.c pb_decode.c pb_encode.c
CROSS_PB_FLAGS := -I$(CROSS_TP)/nanopb
# ---- zlib 1.2.13 (no gz* file API)
CROSS_Z_SRC := adler32.c compress.c crc32.c deflate.c infback.c inffast.c inflate.c inftrees.c \
    trees.c uncompr.c zutil.c
CROSS_Z_FLAGS := -DHAVE_UNISTD_H -DHAVE_STDARG_H -I$(CROSS_TP)/zlib -w
# ---- llhttp 8.1.0 (generated C sources from node-llhttp)
CROSS_LLHTTP_SRC := src/llhttp.c src/api.c src/http.c
CROSS_LLHTTP_FLAGS := -I$(CROSS_TP)/llhttp/include -Wno-unused-parameter

CROSS_LIBS := uv wslay mbedcrypto nanopb z llhttp
CROSS_LIBFILES := $(foreach l,$(CROSS_LIBS),$(CROSS_DIR)/lib$(l).a)

# One object list and one archive per library. Sources exist only after the fetch,
# so every source has the fetch stamp as an order-only prerequisite.
define CROSS_LIB_template
# $(1)=archive name  $(2)=tree under third_party  $(3)=sources  $(4)=flags
CROSS_OBJS_$(1) = $$(addprefix $(CROSS_DIR)/$(1)/,$$(patsubst %.c,%.o,$(3)))
$(CROSS_DIR)/$(1)/%.o: $(CROSS_TP)/$(2)/%.c $(CROSS_DIR)/.flags | $(CROSS_FETCHED) $(CROSS_DIR)/.deps
	@mkdir -p $$(@D)
	$$(CROSS_CC) -std=gnu11 $$(CROSS_CFLAGS) $(4) -c $$< -o $$@
# (sources appear with the fetch; they are never intermediate files make may delete)
$(CROSS_TP)/$(2)/%.c: | $(CROSS_FETCHED) ;
.PRECIOUS: $(CROSS_TP)/$(2)/%.c
$(CROSS_DIR)/lib$(1).a: $$(CROSS_OBJS_$(1))
	@rm -f $$@
	@echo "$$(CROSS_AR) rcs $$@ ($$(words $$^) objects)"; $$(CROSS_AR) rcs $$@ $$^
endef
$(eval $(call CROSS_LIB_template,uv,libuv,$(CROSS_UV_SRC),$(CROSS_UV_FLAGS)))
$(eval $(call CROSS_LIB_template,wslay,wslay,$(CROSS_WSLAY_SRC),$(CROSS_WSLAY_FLAGS)))
$(eval $(call CROSS_LIB_template,mbedcrypto,mbedtls,$(CROSS_MBED_SRC),$(CROSS_MBED_FLAGS)))
$(eval $(call CROSS_LIB_template,nanopb,nanopb,$(CROSS_PB_SRC),$(CROSS_PB_FLAGS)))
$(eval $(call CROSS_LIB_template,z,zlib,$(CROSS_Z_SRC),$(CROSS_Z_FLAGS)))
$(eval $(call CROSS_LIB_template,llhttp,llhttp,$(CROSS_LLHTTP_SRC),$(CROSS_LLHTTP_FLAGS)))

# Header-only jsmn (from libjsmn-dev) copied beside the generated code, so the cross
# compiler never searches the host's /usr/include.
$(CROSS_DIR)/include/jsmn.h: | $(CROSS_DIR)/.deps
	@mkdir -p $(@D)
	cp /usr/include/jsmn.h $@

$(CROSS_DIR)/linkd.pb.c $(CROSS_DIR)/linkd.pb.h &: proto/linkd.proto proto/linkd.options | $(CROSS_DIR)/.deps
	@mkdir -p $(CROSS_DIR)
	protoc --plugin=protoc-gen-nanopb=/usr/bin/protoc-gen-nanopb -Iproto \
	  --nanopb_opt=-f$(CURDIR)/proto/linkd.options --nanopb_out=$(CROSS_DIR) proto/linkd.proto

$(CROSS_DIR)/linkd.pb.o: $(CROSS_DIR)/linkd.pb.c $(CROSS_DIR)/libnanopb.a $(CROSS_DIR)/.flags
	$(CROSS_CC) -std=gnu11 $(CROSS_CFLAGS) $(CROSS_PB_FLAGS) -I$(CROSS_DIR) -c $< -o $@

CROSS_INCLUDES := -I$(CROSS_DIR) -I$(CROSS_DIR)/include -I$(CROSS_TP)/llhttp/include \
  -I$(CROSS_TP)/libuv/include -I$(CROSS_TP)/wslay/lib/includes -I$(CROSS_TP)/mbedtls/include \
  -I$(CROSS_TP)/nanopb -I$(CROSS_TP)/zlib

$(CROSS_DIR)/admin_page.h: $(BUILD)/admin_page.h
	@mkdir -p $(@D)
	cp $< $@

$(CROSS_BIN): linkd.c++ $(CROSS_DIR)/.flags $(CROSS_DIR)/linkd.pb.h $(CROSS_DIR)/linkd.pb.o $(CROSS_DIR)/include/jsmn.h $(CROSS_DIR)/admin_page.h $(CROSS_LIBFILES)
	$(CROSS_CXX) -std=c++20 $(CROSS_CXXFLAGS) -Wall -Wextra -DLINKD_VERSION='"$(CROSS_VERSION)"' $(CROSS_MBED_CONFIG) $(CROSS_INCLUDES) \
	  linkd.c++ $(CROSS_DIR)/linkd.pb.o $(CROSS_LDFLAGS) -L$(CROSS_DIR) \
	  -Wl,--start-group $(addprefix -l,$(CROSS_LIBS)) -Wl,--end-group -pthread -o $@
	@echo "$@: $$(stat -c %s $@) bytes, static, stripped ($$(readelf -h $@ | sed -n 's/^ *Machine: *//p'))"

cross: $(CROSS_BIN)
# Cluster support (--nats-url) needs the NATS C client compiled from source, and
# Debian's nats.c source package (3.4.1-1, the libnats-dev version) is not served
# by this machine's archive (404; like wslay's and llhttp's): the static builds
# are made without it, and such a linkd refuses --nats-url with exit 2 ("built
# without cluster support"). Asking for it explicitly fails here, saying why.
ifeq ($(origin CLUSTER)$(CLUSTER),command line1)
$(CROSS_BIN): cross-no-cluster
endif
.PHONY: cross-no-cluster
cross-no-cluster:
	@echo "make cross CLUSTER=1: the static builds have no cluster support: they need nats.c built from Debian's" >&2; \
	 echo "source package nats.c 3.4.1-1, which this machine's archive does not serve (see README, Cluster)." >&2; \
	 echo "Build without CLUSTER=1 (static, no --nats-url), or use the native build (make) for cluster nodes." >&2; exit 2
# The fetch needs dpkg-source (dpkg-dev): install the packages first.
cross-fetch: | $(CROSS_DIR)/.deps
# make test ARCH=...: the suite runs against the cross binary (the top Makefile passes
# TEST_LINKD_CMD to tests/run.sh as LINKD_CMD).
test: cross
endif

# ---------------------------------------------------------------- common
# Cross compilers, the emulator and dpkg-source (for the fetch), installed once.
$(BUILD)/cross-%/.deps:
	@mkdir -p $(@D)
	@if [ $$(dpkg-query -W -f='$${Status}\n' $(CROSS_DEBS) 2>/dev/null | grep -c 'install ok installed') -ne $(words $(CROSS_DEBS)) ]; then \
	  $(MAKE) --no-print-directory cross-deps; fi
	@touch $@

cross-deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CROSS_DEBS)

# Idempotent and quick when everything is present, so it runs on every cross build.
cross-fetch:
	@$(CROSS_TP)/fetch.sh

cross-sizes:
	@for f in linkd linkd-x86_64 linkd-aarch64 linkd-armhf; do \
	  [ -f $$f ] || continue; s=$$f; \
	  if [ $$f = linkd ]; then strip -o $(BUILD)/linkd.stripped linkd && s=$(BUILD)/linkd.stripped; fi; \
	  k=static; readelf -l $$f | grep -q INTERP && k=dynamic; \
	  printf '%-14s %8d bytes  %7.1f KiB  %s\n' $$f $$(stat -c %s $$s) $$(awk "BEGIN{print $$(stat -c %s $$s)/1024}") $$k; \
	done

cross-clean:
	rm -rf $(BUILD)/cross-* linkd-aarch64 linkd-armhf linkd-x86_64

# make install DESTDIR=... PREFIX=/usr/local [ARCH=aarch64|armhf]
install: $(CROSS_INSTALL_BIN)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(CROSS_UNITDIR) $(DESTDIR)$(CROSS_CONFDIR)
	install -m 0755 $(CROSS_INSTALL_BIN) $(DESTDIR)$(PREFIX)/bin/linkd
	sed 's|@BINDIR@|$(PREFIX)/bin|g' cross/linkd.service > $(DESTDIR)$(CROSS_UNITDIR)/linkd.service
	chmod 0644 $(DESTDIR)$(CROSS_UNITDIR)/linkd.service
	@if [ -e $(DESTDIR)$(CROSS_CONFDIR)/linkd.conf ]; then \
	  echo "keeping existing $(DESTDIR)$(CROSS_CONFDIR)/linkd.conf"; \
	else install -m 0644 cross/linkd.conf $(DESTDIR)$(CROSS_CONFDIR)/linkd.conf; fi

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/linkd $(DESTDIR)$(CROSS_UNITDIR)/linkd.service
