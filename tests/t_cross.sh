#!/usr/bin/env bash
# Edge deployment: the example config (cross/linkd.conf) and --check-config, config
# errors with file:line, the systemd unit, `make install` layout, and the binary under
# test (static + stripped + size target for a cross build, size target for native).
. "$(dirname "$0")/lib.sh"

CONF=$ROOT/cross/linkd.conf
UNIT=$ROOT/cross/linkd.service

# cc NAME WANT_RC [args...] : runs linkd --check-config, output in $T_TMP/cc.out
cc_run() {
  timeout $((10 * T_SLOW)) "${LINKD[@]}" "$@" --check-config >"$T_TMP/cc.out" 2>&1
  echo $?
}
cc_out() { tr '\n' ' ' <"$T_TMP/cc.out" | cut -c1-300; }

# ---------------------------------------------------------------- example config
rc=$(cc_run --config "$CONF")
if [ "$rc" = 0 ]; then pass "--check-config accepts cross/linkd.conf"
else fail "--check-config accepts cross/linkd.conf" "exit $rc: $(cc_out)"; fi

# --check-config must not start anything: nothing listens on the port it names
PORT=$(free_port)
printf 'listen = 127.0.0.1:%s\nsocket = %s\n' "$PORT" "$T_TMP/cc.sock" >"$T_TMP/ok.conf"
rc=$(cc_run --config "$T_TMP/ok.conf")
expect_eq "--check-config on a valid file: exit 0" "$rc" 0
if [ ! -e "$T_TMP/cc.sock" ]; then pass "--check-config creates no service socket"
else fail "--check-config creates no service socket" "$T_TMP/cc.sock exists"; fi

# Every setting of README's table (but --config) is documented in the example config.
missing=""
for k in $(grep -oE '^\| `--[a-z0-9-]+' "$ROOT/README.md" | sed 's/^| `--//' | tr - _); do
  [ "$k" = config ] && continue
  grep -qE "^#? ?$k = " "$CONF" || missing="$missing $k"
done
expect_eq "cross/linkd.conf documents every README setting" "${missing:-none}" none

# ---------------------------------------------------------------- errors with file:line
# bad_conf NAME KEY-REGEX LINE CONTENT : exit 2, message naming FILE:LINE and the key
bad_conf() {
  local name=$1 re=$2 line=$3 content=$4 f=$T_TMP/bad$RANDOM.conf
  printf '%b' "$content" >"$f"
  local rc; rc=$(cc_run --config "$f")
  if [ "$rc" = 2 ] && grep -qF -- "$(basename "$f"):$line" "$T_TMP/cc.out" && grep -qiE -- "$re" "$T_TMP/cc.out"; then
    pass "$name"
  else
    fail "$name" "exit $rc (want 2 with '$(basename "$f"):$line' and /$re/): $(cc_out)"
  fi
}
bad_conf "unknown key: exit 2 with file:line" 'no_such_key' 3 \
  '# a comment\n\nno_such_key = 1\nmax_rooms = 10\n'
bad_conf "bad value: exit 2 with file:line naming the key" 'max[-_]connections' 4 \
  '# linkd\nlisten = 127.0.0.1:3000\n   # indented comment\nmax_connections = lots\n'
bad_conf "bad duration: exit 2 with file:line" 'http[-_]timeout' 2 \
  'log_level = debug\nhttp_timeout = 5 fortnights\n'
bad_conf "bad enum: exit 2 with file:line" 'outbound[-_]policy' 1 \
  'outbound_policy = sometimes\n'
bad_conf "line without '=': exit 2 with file:line" '' 2 \
  'max_rooms = 10\nthis line has no equals sign\n'

# Whitespace and comments are tolerated
printf '\n  # comment\n\tmax_rooms=12\nmax_services   =   3   \n\n' >"$T_TMP/ws.conf"
rc=$(cc_run --config "$T_TMP/ws.conf")
if [ "$rc" = 0 ]; then pass "--check-config: blank lines, indentation, no spaces around '='"
else fail "--check-config: blank lines, indentation, no spaces around '='" "exit $rc: $(cc_out)"; fi

# A bad flag with a good file is refused too, naming the flag.
rc=$(cc_run --config "$CONF" --max-rooms nope)
if [ "$rc" = 2 ] && grep -qiE 'max[-_]rooms' "$T_TMP/cc.out"; then pass "--check-config: bad flag over a good file: exit 2"
else fail "--check-config: bad flag over a good file: exit 2" "exit $rc: $(cc_out)"; fi

# ---------------------------------------------------------------- systemd unit
for d in 'Type=notify' 'NotifyAccess=main' 'WatchdogSec=' 'RuntimeDirectory=linkd' \
         'NoNewPrivileges=yes' 'ProtectSystem=strict' 'PrivateTmp=yes' 'ProtectHome=yes' \
         'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6' 'ExecStart=.*--config /etc/linkd/linkd.conf'; do
  if grep -qE "^$d" "$UNIT"; then pass "unit: $d"; else fail "unit: $d" "missing from cross/linkd.service"; fi
done
if grep -qE '^(DynamicUser=yes|User=linkd)' "$UNIT"; then pass "unit: dedicated user"
else fail "unit: dedicated user" "no DynamicUser=yes / User=linkd"; fi
if command -v systemd-analyze >/dev/null; then
  sed "s|@BINDIR@|$T_TMP/bin|" "$UNIT" >"$T_TMP/linkd.service"
  mkdir -p "$T_TMP/bin" && cp /bin/true "$T_TMP/bin/linkd"
  if o=$(timeout 30 systemd-analyze verify "$T_TMP/linkd.service" 2>&1); then pass "unit: systemd-analyze verify"
  else fail "unit: systemd-analyze verify" "$(echo "$o" | tail -n 3 | tr '\n' ' ' | cut -c1-300)"; fi
fi

# ---------------------------------------------------------------- make install
# ARCH (and the rest of the make command line) reaches us through MAKEFLAGS under make test.
DEST=$T_TMP/root
B="${LINKD[${#LINKD[@]}-1]}"
BIN=$(basename "$B")   # linkd, linkd-aarch64, linkd-armhf (or another build: then no install/size checks)
ARCHARG=()
[ "$BIN" != linkd ] && ARCHARG=(ARCH="${BIN#linkd-}")
if [ -f "$ROOT/$BIN" ] && [ "$B" -ef "$ROOT/$BIN" ] && [[ $BIN =~ ^linkd(-aarch64|-armhf|-x86_64)?$ ]]; then
  # -o: never rebuild the binary here, install what was tested
  if o=$(cd "$ROOT" && timeout 60 make --no-print-directory -o "$BIN" install DESTDIR="$DEST" PREFIX=/usr/local "${ARCHARG[@]}" 2>&1); then
    pass "make install DESTDIR=… PREFIX=/usr/local"
  else
    fail "make install DESTDIR=… PREFIX=/usr/local" "$(echo "$o" | tail -n 3 | tr '\n' ' ' | cut -c1-300)"
  fi
  for f in usr/local/bin/linkd lib/systemd/system/linkd.service etc/linkd/linkd.conf; do
    if [ -f "$DEST/$f" ]; then pass "install: /$f"; else fail "install: /$f" "missing under DESTDIR"; fi
  done
  [ -x "$DEST/usr/local/bin/linkd" ] && cmp -s "$DEST/usr/local/bin/linkd" "$ROOT/$BIN" \
    && pass "install: the tested binary ($BIN), executable" || fail "install: the tested binary ($BIN), executable" "differs or not executable"
  expect_match "install: unit runs /usr/local/bin/linkd" "$(grep '^ExecStart=' "$DEST/lib/systemd/system/linkd.service" 2>/dev/null)" \
    '^ExecStart=/usr/local/bin/linkd --config /etc/linkd/linkd.conf'
  # the installed binary accepts the installed config
  INST=("${LINKD[@]}")
  INST[${#INST[@]}-1]=$DEST/usr/local/bin/linkd
  timeout $((10 * T_SLOW)) "${INST[@]}" --config "$DEST/etc/linkd/linkd.conf" --check-config >"$T_TMP/cc.out" 2>&1
  rc=$?
  if [ "$rc" = 0 ]; then pass "installed linkd --check-config on installed linkd.conf"
  else fail "installed linkd --check-config on installed linkd.conf" "exit $rc: $(cc_out)"; fi
  # a second install keeps an edited config
  echo "max_rooms = 77" >>"$DEST/etc/linkd/linkd.conf"
  (cd "$ROOT" && timeout 60 make --no-print-directory -o "$BIN" install DESTDIR="$DEST" PREFIX=/usr/local "${ARCHARG[@]}" >/dev/null 2>&1)
  if grep -q '^max_rooms = 77' "$DEST/etc/linkd/linkd.conf"; then pass "re-install keeps an edited /etc/linkd/linkd.conf"
  else fail "re-install keeps an edited /etc/linkd/linkd.conf" "overwritten"; fi
fi

# ---------------------------------------------------------------- the binary under test
if [ -f "$B" ]; then
  machine=$(readelf -h "$B" 2>/dev/null | sed -n 's/^ *Machine: *//p')
  case "$BIN" in
  linkd-aarch64|linkd-armhf|linkd-x86_64)
    case "$BIN" in linkd-aarch64) want=AArch64; max=1258291 ;;  # 1.2 MiB
                   linkd-armhf)   want=ARM;     max=819200 ;;   # 800 KiB
                   linkd-x86_64)  want='Advanced Micro Devices X86-64'; max= ;;  # no target
    esac
    expect_eq "$BIN: ELF machine" "$machine" "$want"
    # static: no program interpreter and no dynamic section; stripped: no symbol table
    if readelf -lS "$B" | grep -qE 'INTERP|[.]dynamic'; then fail "$BIN: statically linked" "has INTERP/.dynamic"
    else pass "$BIN: statically linked"; fi
    if readelf -S "$B" | grep -q '[.]symtab'; then fail "$BIN: stripped" "has .symtab"
    else pass "$BIN: stripped"; fi
    size=$(stat -c %s "$B")
    if [ -z "$max" ]; then :
    elif [ "$size" -le "$max" ]; then pass "$BIN: $size bytes <= $max"
    else fail "$BIN: size" "$size bytes > $max"; fi
    ;;
  linkd)
    if ! strip -o "$T_TMP/linkd.stripped" "$B" 2>/dev/null; then fail "native linkd stripped: size" "strip failed"
    # (300 KiB until TLS, recovery, the admin console and the cluster code added
    # ~70 KiB of linkd's own code; mbedTLS and libnats stay shared libraries here)
    elif size=$(stat -c %s "$T_TMP/linkd.stripped"); [ "$size" -le 409600 ]; then pass "native linkd stripped: $size bytes <= 400 KiB"
    else fail "native linkd stripped: size" "$size bytes > 409600 (400 KiB)"; fi
    ;;
  esac
fi
exit 0
