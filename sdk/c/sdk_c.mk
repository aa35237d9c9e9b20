# The C service library (sdk/c) and the sensors example (examples/sensors),
# included by the top Makefile.
#
#   make sdk-c        build/sdk_c/liblinkd_service.a, its unit tests and test service
#                     (plain and ASan+UBSan), a C++ compile check
#   make sensors      build/sensors/linkd-sensors (and its ASan build)
#   make run-sensors  linkd + the sensors service; open the URL it prints
#   make cross ARCH=aarch64|armhf   also builds, static and stripped:
#                     build/cross-ARCH/liblinkd_service.a and build/cross-ARCH/linkd-sensors
#
# The library is one .c file on nanopb and the generated linkd.pb.c: natively
# Debian's libprotobuf-nanopb.a, in cross builds the nanopb cross.mk builds.

SDKC_DIR    := $(BUILD)/sdk_c
SDKC_SRC    := sdk/c/linkd_service.c
SDKC_HDR    := sdk/c/linkd_service.h
SDKC_CFLAGS := -std=c99 -O2 -g -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Isdk/c -I$(BUILD)
SDKC_ASAN   := -std=c99 -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all -Wall -Wextra -Isdk/c -I$(BUILD)
SDKC_PBLIB  := -l:libprotobuf-nanopb.a
SENSORS_DIR := $(BUILD)/sensors
SENSORS_SRC := examples/sensors/sensors.c
SENSORS_WEB := examples/sensors/web/index.html examples/sensors/web/app.js

SDKC_BINS := $(SDKC_DIR)/liblinkd_service.a $(SDKC_DIR)/test_sdk $(SDKC_DIR)/test_sdk_asan \
             $(SDKC_DIR)/svc_c $(SDKC_DIR)/svc_c_asan $(SDKC_DIR)/cxx_check
SENSORS_BINS := $(SENSORS_DIR)/linkd-sensors $(SENSORS_DIR)/linkd-sensors-asan

.PHONY: sdk-c sensors run-sensors
sdk-c: $(SDKC_BINS)
sensors: $(SENSORS_BINS)
# make test runs tests/t_sdk_c*.sh and t_sensors*.sh: build what they run first
test: $(SDKC_BINS) $(if $(wildcard $(SENSORS_SRC)),$(SENSORS_BINS))

$(SDKC_DIR)/linkd_service.o: $(SDKC_SRC) $(SDKC_HDR) $(BUILD)/linkd.pb.h
	@mkdir -p $(@D)
	$(CC) $(SDKC_CFLAGS) -c $< -o $@
$(SDKC_DIR)/linkd_service_asan.o: $(SDKC_SRC) $(SDKC_HDR) $(BUILD)/linkd.pb.h
	@mkdir -p $(@D)
	$(CC) $(SDKC_ASAN) -c $< -o $@

# the library: linkd_service.o + linkd.pb.o (link nanopb with it)
$(SDKC_DIR)/liblinkd_service.a: $(SDKC_DIR)/linkd_service.o $(BUILD)/linkd.pb.o
	@rm -f $@
	ar rcs $@ $^

$(SDKC_DIR)/test_sdk: sdk/c/test/test_sdk.c $(SDKC_DIR)/liblinkd_service.a
	$(CC) $(SDKC_CFLAGS) $< $(SDKC_DIR)/liblinkd_service.a $(SDKC_PBLIB) -o $@
$(SDKC_DIR)/test_sdk_asan: sdk/c/test/test_sdk.c $(SDKC_DIR)/linkd_service_asan.o $(BUILD)/asan/linkd.pb.o
	$(CC) $(SDKC_ASAN) $< $(SDKC_DIR)/linkd_service_asan.o $(BUILD)/asan/linkd.pb.o $(SDKC_PBLIB) -o $@
$(SDKC_DIR)/svc_c: sdk/c/test/svc_c.c $(SDKC_DIR)/liblinkd_service.a
	$(CC) $(SDKC_CFLAGS) $< $(SDKC_DIR)/liblinkd_service.a $(SDKC_PBLIB) -o $@
$(SDKC_DIR)/svc_c_asan: sdk/c/test/svc_c.c $(SDKC_DIR)/linkd_service_asan.o $(BUILD)/asan/linkd.pb.o
	$(CC) $(SDKC_ASAN) $< $(SDKC_DIR)/linkd_service_asan.o $(BUILD)/asan/linkd.pb.o $(SDKC_PBLIB) -o $@
# usable from C++: the header compiles as C++ and links against the C library
$(SDKC_DIR)/cxx_check: sdk/c/test/cxx_check.cc $(SDKC_HDR) $(SDKC_DIR)/liblinkd_service.a
	$(CXX) -std=c++17 -O1 -Wall -Wextra -pedantic -Isdk/c $< $(SDKC_DIR)/liblinkd_service.a $(SDKC_PBLIB) -o $@

$(SENSORS_DIR)/linkd-sensors: $(SENSORS_SRC) $(SENSORS_WEB) examples/sensors/embed.sh $(SDKC_DIR)/liblinkd_service.a
	@mkdir -p $(@D)
	examples/sensors/embed.sh $(SENSORS_DIR)/web.h $(SENSORS_WEB)
	$(CC) $(SDKC_CFLAGS) -I$(SENSORS_DIR) $< $(SDKC_DIR)/liblinkd_service.a $(SDKC_PBLIB) -lm -o $@
$(SENSORS_DIR)/linkd-sensors-asan: $(SENSORS_SRC) $(SENSORS_WEB) examples/sensors/embed.sh $(SDKC_DIR)/linkd_service_asan.o $(BUILD)/asan/linkd.pb.o
	@mkdir -p $(@D)
	examples/sensors/embed.sh $(SENSORS_DIR)/web.h $(SENSORS_WEB)
	$(CC) $(SDKC_ASAN) -I$(SENSORS_DIR) $< $(SDKC_DIR)/linkd_service_asan.o $(BUILD)/asan/linkd.pb.o $(SDKC_PBLIB) -lm -o $@

run-sensors: linkd $(SENSORS_DIR)/linkd-sensors
	@examples/sensors/run.sh

# ---- cross builds (cross/cross.mk defines CROSS_* when ARCH is set)
ifneq ($(CROSS_TRIPLE),)
SDKC_XDIR := $(CROSS_DIR)/sdk_c
$(SDKC_XDIR)/linkd_service.o: $(SDKC_SRC) $(SDKC_HDR) $(CROSS_DIR)/linkd.pb.h $(CROSS_DIR)/.flags
	@mkdir -p $(@D)
	$(CROSS_CC) -std=c99 $(CROSS_CFLAGS) -Wall -Wextra $(CROSS_PB_FLAGS) -I$(CROSS_DIR) -Isdk/c -c $< -o $@
$(CROSS_DIR)/liblinkd_service.a: $(SDKC_XDIR)/linkd_service.o $(CROSS_DIR)/linkd.pb.o
	@rm -f $@
	$(CROSS_AR) rcs $@ $^
$(CROSS_DIR)/linkd-sensors: $(SENSORS_SRC) $(SENSORS_WEB) examples/sensors/embed.sh $(CROSS_DIR)/liblinkd_service.a $(CROSS_DIR)/libnanopb.a
	examples/sensors/embed.sh $(SDKC_XDIR)/web.h $(SENSORS_WEB)
	$(CROSS_CC) -std=c99 $(CROSS_CFLAGS) -Wall -Wextra -Isdk/c -I$(SDKC_XDIR) $< $(CROSS_LDFLAGS) \
	  -L$(CROSS_DIR) -llinkd_service -lnanopb -lm -o $@
	@echo "$@: $$(stat -c %s $@) bytes, static, stripped"
cross: $(CROSS_DIR)/liblinkd_service.a $(if $(wildcard $(SENSORS_SRC)),$(CROSS_DIR)/linkd-sensors)
endif
