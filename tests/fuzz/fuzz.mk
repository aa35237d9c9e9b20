# libFuzzer harnesses (tests/fuzz/*.cc), built with clang, ASan and UBSan.
# Included from the Makefile. Each harness #includes linkd.c++ itself
# (LINKD_NO_MAIN), so it fuzzes the daemon's own code.
#   make fuzz                  build every harness, run each for FUZZ_SECONDS
#   make fuzz FUZZ_SECONDS=600 FUZZ_ONLY=http
#   make fuzz-build            build only (tests/t_fuzz_replay.sh replays the corpora)
# Crashes are kept under build/fuzz/crashes/NAME/; the corpus each run grows
# is build/fuzz/corpus/NAME/ (seeded from tests/fuzz/corpus/NAME/, which
# holds the small committed seeds).

FUZZ_SECONDS ?= 60
FUZZ_NAMES   := http ws service jwt config
FUZZ_ONLY    ?= $(FUZZ_NAMES)
FUZZ_DIR     := $(BUILD)/fuzz
FUZZ_CC      := clang
FUZZ_CXX     := clang++
FUZZ_SAN     := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_OBJS    := $(FUZZ_DIR)/obj/llhttp.o $(FUZZ_DIR)/obj/api.o $(FUZZ_DIR)/obj/http.o $(FUZZ_DIR)/obj/linkd.pb.o
FUZZ_BINS    := $(addprefix $(FUZZ_DIR)/,$(FUZZ_NAMES))

.PHONY: fuzz fuzz-build
fuzz-build: $(FUZZ_BINS)

fuzz: $(addprefix $(FUZZ_DIR)/,$(FUZZ_ONLY))
	@tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_ONLY)

$(FUZZ_DIR)/obj/%.o: $(LLHTTP_SRC)/%.c | $(BUILD)/.deps
	@mkdir -p $(FUZZ_DIR)/obj
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer-no-link -I$(LLHTTP_INC) -Wno-unused-parameter -c $< -o $@

$(FUZZ_DIR)/obj/linkd.pb.o: $(BUILD)/linkd.pb.c $(BUILD)/linkd.pb.h
	@mkdir -p $(FUZZ_DIR)/obj
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer-no-link -I$(BUILD) -c $< -o $@

$(FUZZ_BINS): $(FUZZ_DIR)/%: tests/fuzz/%.cc tests/fuzz/fuzz_common.h linkd.c++ $(BUILD)/linkd.pb.h $(FUZZ_OBJS)
	$(FUZZ_CXX) -std=c++20 $(FUZZ_SAN) -fsanitize=fuzzer $(WARN) -Wno-unused-function -DLINKD_NO_MAIN -DLINKD_FUZZ $(DEFS) $(INCLUDES) \
	  $< $(FUZZ_OBJS) $(LIBS) -o $@
