# Helpers for the Node-based tests (sourced by tests/t_sdk.sh and tests/t_browser.sh
# after tests/lib.sh): install npm dependencies when missing or stale, build the SDK.

# better-sqlite3 compiles its addon with node-gyp: use Debian's Node.js headers
# (package nodejs, /usr/include/node) instead of a download.
[ -f /usr/include/node/node.h ] && export npm_config_nodedir=${npm_config_nodedir:-/usr}

# npm_ready DIR... : `npm ci` in each DIR whose node_modules is missing or older
# than its package-lock.json. Prints a FAIL line and returns 1 on failure.
npm_ready() {
  local d
  for d in "$@"; do
    if [ ! -f "$d/node_modules/.package-lock.json" ] || [ "$d/package-lock.json" -nt "$d/node_modules/.package-lock.json" ]; then
      log "npm ci in ${d#$ROOT/}"
      if ! (cd "$d" && timeout 300 npm ci --no-audit --no-fund --loglevel=error) >"$T_TMP/npm.log" 2>&1; then
        fail "npm dependencies install in ${d#$ROOT/}" "$(tail -n 3 "$T_TMP/npm.log" | tr '\n' ' ' | cut -c1-300)"
        return 1
      fi
    fi
  done
}

# ts_build DIR : `npm run build` when dist/ is missing or older than a source file.
ts_build() {
  local d=$1
  if [ ! -d "$d/dist" ] || [ -n "$(find "$d/src" "$d/package.json" "$ROOT/proto/linkd.proto" -newer "$d/dist" -print -quit 2>/dev/null)" ]; then
    log "building ${d#$ROOT/}"
    if ! (cd "$d" && rm -rf dist && timeout 300 npm run --silent build) >"$T_TMP/build.log" 2>&1; then
      fail "build ${d#$ROOT/}" "$(tail -n 5 "$T_TMP/build.log" | tr '\n' ' ' | cut -c1-300)"
      return 1
    fi
  fi
}

# node_ready : node and npm present (the Makefile's deps install them).
node_ready() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    fail "node and npm installed" "node/npm not found (make deps installs Debian's nodejs and npm)"
    return 1
  fi
}

# linkd_built : the linkd binary the tests run exists.
linkd_built() {
  if [ -z "${LINKD_CMD:-}" ] && [ ! -x "$ROOT/linkd" ]; then
    fail "linkd built" "$ROOT/linkd not found (run make)"
    return 1
  fi
}
