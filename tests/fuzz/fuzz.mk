# libFuzzer harnesses (tests/fuzz/*.cc), built with clang, ASan and UBSan.
# Included from the Makefile. Each harness #includes linkd.c++ itself
# (LINKD_NO_MAIN), so it fuzzes the daemon's own code.
#   make fuzz                  build every harness, run each for FUZZ_SECONDS
#   make fuzz FUZZ_SECONDS=600 FUZZ_ONLY=http
#   make fuzz-build            build only
#   make fuzz-replay-build     -O0 builds that tests/t_fuzz_replay.sh replays the corpora with
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

# The same harnesses at -O0 for tests/t_fuzz_replay.sh (make test): the
# same sanitizers, a third of the compile time, and each corpus is run once.
FUZZ_REPLAY_BINS := $(addprefix $(FUZZ_DIR)/replay/,$(FUZZ_NAMES))
.PHONY: fuzz-replay-build
fuzz-replay-build: $(FUZZ_REPLAY_BINS)
$(FUZZ_REPLAY_BINS): $(FUZZ_DIR)/replay/%: tests/fuzz/%.cc tests/fuzz/fuzz_common.h linkd.c++ $(BUILD)/linkd.pb.h $(FUZZ_OBJS)
	@mkdir -p $(FUZZ_DIR)/replay
	$(FUZZ_CXX) -std=c++20 $(subst -O1,-O0,$(FUZZ_SAN)) -fsanitize=fuzzer $(WARN) -Wno-unused-function -DLINKD_NO_MAIN -DLINKD_FUZZ $(DEFS) $(INCLUDES) \
	  $< $(FUZZ_OBJS) $(LIBS) -o $@

# Line coverage of what the corpora reach (clang source-based coverage):
#   make fuzz-cov            report for every harness in build/fuzz/cov/NAME.txt
# It replays tests/fuzz/corpus/NAME and build/fuzz/corpus/NAME (what
# `make fuzz` grew) through a coverage build of each harness.
FUZZ_COV_BINS := $(addprefix $(FUZZ_DIR)/cov/,$(FUZZ_NAMES))
.PHONY: fuzz-cov
fuzz-cov: $(FUZZ_COV_BINS)
	@for n in $(FUZZ_ONLY); do \
	  rm -f $(FUZZ_DIR)/cov/$$n.profraw; mkdir -p $(FUZZ_DIR)/corpus/$$n; \
	  LLVM_PROFILE_FILE=$(FUZZ_DIR)/cov/$$n.profraw $(FUZZ_DIR)/cov/$$n -runs=0 -close_fd_mask=2 \
	    tests/fuzz/corpus/$$n $(FUZZ_DIR)/corpus/$$n >/dev/null 2>&1; \
	  llvm-profdata merge -sparse $(FUZZ_DIR)/cov/$$n.profraw -o $(FUZZ_DIR)/cov/$$n.profdata && \
	  llvm-cov show $(FUZZ_DIR)/cov/$$n -instr-profile=$(FUZZ_DIR)/cov/$$n.profdata linkd.c++ >$(FUZZ_DIR)/cov/$$n.txt && \
	  echo "fuzz-cov $$n: $$(llvm-cov report $(FUZZ_DIR)/cov/$$n -instr-profile=$(FUZZ_DIR)/cov/$$n.profdata linkd.c++ | tail -n 1 | awk '{print "lines " $$(NF-3) " covered (" $$(NF-4) " missed of " $$(NF-5) "), functions " $$(NF-6)}')"; \
	done

$(FUZZ_COV_BINS): $(FUZZ_DIR)/cov/%: tests/fuzz/%.cc tests/fuzz/fuzz_common.h linkd.c++ $(BUILD)/linkd.pb.h $(BUILD)/linkd.pb.o $(LLHTTP_OBJS)
	@mkdir -p $(FUZZ_DIR)/cov
	$(FUZZ_CXX) -std=c++20 -O1 -g -fsanitize=fuzzer -fprofile-instr-generate -fcoverage-mapping -Wno-unused-function \
	  -DLINKD_NO_MAIN -DLINKD_FUZZ $(DEFS) $(INCLUDES) $< $(BUILD)/linkd.pb.o $(LLHTTP_OBJS) $(LIBS) -o $@

# The C service library's side of a link (sdk/c): tests/fuzz/sdk_c.c includes
# sdk/c/linkd_service.c itself (as the harnesses above include linkd.c++) and
# is C, so it has its own rule; seeds from tests/fuzz/gen_sdk_c_corpus.py.
# tests/t_sdk_c_fuzz.sh replays tests/fuzz/corpus/sdk_c in make test.
FUZZ_NAMES += sdk_c
FUZZ_SDKC  := $(FUZZ_DIR)/sdk_c
fuzz-build: $(FUZZ_SDKC)
fuzz: $(if $(filter sdk_c,$(FUZZ_ONLY)),$(FUZZ_SDKC))
$(FUZZ_SDKC): tests/fuzz/sdk_c.c sdk/c/linkd_service.c sdk/c/linkd_service.h $(BUILD)/linkd.pb.h $(FUZZ_DIR)/obj/linkd.pb.o
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer -std=c99 $(WARN) -Isdk/c -I$(BUILD) $< $(FUZZ_DIR)/obj/linkd.pb.o -l:libprotobuf-nanopb.a -o $@
# fuzz-cov: its coverage is of sdk/c/linkd_service.c
fuzz-cov: $(FUZZ_DIR)/cov/sdk_c
$(FUZZ_DIR)/cov/sdk_c: tests/fuzz/sdk_c.c sdk/c/linkd_service.c sdk/c/linkd_service.h $(BUILD)/linkd.pb.o
	@mkdir -p $(FUZZ_DIR)/cov
	$(FUZZ_CC) -O1 -g -fsanitize=fuzzer -fprofile-instr-generate -fcoverage-mapping -std=c99 -Isdk/c -I$(BUILD) \
	  $< $(BUILD)/linkd.pb.o -l:libprotobuf-nanopb.a -o $@
