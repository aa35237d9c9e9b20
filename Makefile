# Linkd build. `make` builds ./linkd natively from Debian's packages;
# `make run` starts it with the example service; `make test` runs every test.
# Missing build or test dependencies are installed on first use (`make deps`).

CXX      ?= g++
CC       ?= gcc
BUILD    := build
VERSION  := 0.1.0
CXXFLAGS ?= -O2 -g
CFLAGS   ?= -O2 -g
WARN     := -Wall -Wextra
CXXLEAN  := -fno-exceptions -fno-rtti -fno-asynchronous-unwind-tables
LEANLINK := -static-libstdc++ -static-libgcc -Wl,--as-needed -Wl,--gc-sections
PROTOC_NANOPB := protoc --plugin=protoc-gen-nanopb=/usr/bin/protoc-gen-nanopb

LLHTTP_SRC := /usr/share/llhttp
LLHTTP_INC := /usr/share/include/llhttp
INCLUDES := -I$(BUILD) -I$(LLHTTP_INC)
# CLUSTER=0 builds without cluster support (no libnats headers): --nats-url is then refused.
# CLUSTER=1 needs libnats-dev to build; libnats itself is loaded at run time, only with --nats-url.
CLUSTER  ?= 1
DEFS     := -DLINKD_VERSION='"$(VERSION)"' $(if $(filter 1,$(CLUSTER)),-DLINKD_CLUSTER)
LIBS     := -luv -lwslay -lmbedtls -lmbedx509 -lmbedcrypto -l:libprotobuf-nanopb.a -lz

# Debian packages the build and the tests need (make deps installs them).
DEBS := g++ make libuv1-dev libwslay-dev nanopb libnanopb-dev protobuf-compiler \
        python3-protobuf node-llhttp libmbedtls-dev libjsmn-dev zlib1g-dev \
        python3 python3-websocket python3-websockets python3-cryptography curl wrk valgrind nodejs \
        chromium clang libclang-rt-14-dev libnats-dev nats-server openssl

LLHTTP_OBJS := $(BUILD)/llhttp.o $(BUILD)/llhttp_api.o $(BUILD)/llhttp_http.o

.PHONY: all deps run test bench clean unit asan
all: linkd

# A stamp: present once every package in DEBS is installed.
$(BUILD)/.deps:
	@mkdir -p $(BUILD)
	@if dpkg-query -W -f='$${Status}\n' $(DEBS) 2>/dev/null | grep -qv 'install ok installed' || \
	    [ $$(dpkg-query -W -f='$${Status}\n' $(DEBS) 2>/dev/null | wc -l) -ne $(words $(DEBS)) ]; then \
	  $(MAKE) --no-print-directory deps; fi
	@touch $@

deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBS)
	@mkdir -p $(BUILD) && touch $(BUILD)/.deps

$(BUILD)/linkd.pb.c $(BUILD)/linkd.pb.h: proto/linkd.proto proto/linkd.options | $(BUILD)/.deps
	@mkdir -p $(BUILD)
	$(PROTOC_NANOPB) -Iproto --nanopb_opt=-f$(CURDIR)/proto/linkd.options --nanopb_out=$(BUILD) proto/linkd.proto

$(BUILD)/linkd_pb2.py: proto/linkd.proto | $(BUILD)/.deps
	protoc -Iproto --python_out=$(BUILD) proto/linkd.proto

$(BUILD)/llhttp.o: | $(BUILD)/.deps
	$(CC) $(CFLAGS) -I$(LLHTTP_INC) -Wno-unused-parameter -c $(LLHTTP_SRC)/llhttp.c -o $@
$(BUILD)/llhttp_api.o: | $(BUILD)/.deps
	$(CC) $(CFLAGS) -I$(LLHTTP_INC) -Wno-unused-parameter -c $(LLHTTP_SRC)/api.c -o $@
$(BUILD)/llhttp_http.o: | $(BUILD)/.deps
	$(CC) $(CFLAGS) -I$(LLHTTP_INC) -Wno-unused-parameter -c $(LLHTTP_SRC)/http.c -o $@

$(BUILD)/linkd.pb.o: $(BUILD)/linkd.pb.c
	$(CC) $(CFLAGS) -I$(BUILD) -c $< -o $@

# The admin console's page, gzip'ed into a C array linkd.c++ includes.
$(BUILD)/admin_page.h: admin/index.html
	@mkdir -p $(BUILD)
	gzip -9 -n -c $< > $(BUILD)/admin_page.gz
	@{ echo '// generated from admin/index.html (gzip -9) by the Makefile'; \
	   echo 'const unsigned char admin_page_gz[] = {'; od -An -v -tu1 $(BUILD)/admin_page.gz | sed 's/[0-9][0-9]*/&,/g'; echo '};'; \
	   echo "constexpr size_t admin_page_gz_len = $$(stat -c %s $(BUILD)/admin_page.gz);"; } > $@

linkd: linkd.c++ Makefile $(BUILD)/linkd.pb.h $(BUILD)/linkd.pb.o $(LLHTTP_OBJS) $(BUILD)/admin_page.h
	$(CXX) -std=c++20 $(CXXFLAGS) $(CXXLEAN) $(WARN) $(DEFS) $(INCLUDES) linkd.c++ $(BUILD)/linkd.pb.o $(LLHTTP_OBJS) $(LEANLINK) $(LIBS) -o $@

# linkd built with AddressSanitizer and UBSan: `make test SAN=1` runs the
# whole suite against it.
ASAN := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer
$(BUILD)/asan/%.o: $(LLHTTP_SRC)/%.c | $(BUILD)/.deps
	@mkdir -p $(BUILD)/asan
	$(CC) $(ASAN) -I$(LLHTTP_INC) -Wno-unused-parameter -c $< -o $@
$(BUILD)/asan/linkd.pb.o: $(BUILD)/linkd.pb.c
	@mkdir -p $(BUILD)/asan
	$(CC) $(ASAN) -I$(BUILD) -c $< -o $@
linkd-asan: linkd.c++ Makefile $(BUILD)/admin_page.h $(BUILD)/linkd.pb.h $(BUILD)/asan/linkd.pb.o $(BUILD)/asan/llhttp.o $(BUILD)/asan/api.o $(BUILD)/asan/http.o
	$(CXX) -std=c++20 $(ASAN) $(WARN) $(DEFS) $(INCLUDES) linkd.c++ $(BUILD)/asan/linkd.pb.o \
	  $(BUILD)/asan/llhttp.o $(BUILD)/asan/api.o $(BUILD)/asan/http.o $(LIBS) -o $@

# Tests: linkd's self-test, then every tests/t_*.sh against a running linkd.
# SAN=1: against linkd-asan; ARCH=aarch64|armhf: against the static cross
# build under qemu (cross/cross.mk sets TEST_LINKD_CMD); VALGRIND=1: under valgrind.
TEST_BIN := $(if $(ARCH),cross,$(if $(SAN),linkd-asan,linkd))
TEST_LINKD_CMD ?= $(if $(SAN),$(CURDIR)/linkd-asan,$(if $(VALGRIND),valgrind -q --error-exitcode=99 --leak-check=full $(CURDIR)/linkd,$(CURDIR)/linkd))
test: $(TEST_BIN) $(BUILD)/linkd_pb2.py
	@UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  LINKD_CMD="$(TEST_LINKD_CMD)" tests/run.sh

# The gateway with the example chat service (examples/run.sh prints the URL).
run: linkd
	@examples/run.sh

bench: linkd
	@tests/bench/run.sh

clean:
	rm -rf $(BUILD) linkd linkd-asan linkd-aarch64 linkd-armhf

-include packaging/deb.mk
-include cross/cross.mk
-include tests/fuzz/fuzz.mk
-include sdk/c/sdk_c.mk
-include tests/bench/peers.mk
-include tests/bench/cluster.mk
