#!/usr/bin/env bash
# Fetch the pinned third-party sources (third_party/versions) from Debian's archive and
# verify them against third_party/SHA256SUMS.
#
#   third_party/fetch.sh            fetch whatever is missing (idempotent)
#   third_party/fetch.sh --verify   only check the downloaded files' checksums
#
# Source packages come through a private apt configuration whose deb-src entries are
# derived at run time from this machine's own /etc/apt/sources.list.d/debian.sources
# (no archive host name is written into the repository). Binary packages (node-llhttp,
# which carries llhttp's generated C sources) come through the same configuration.
#
# Result (all git-ignored):
#   third_party/libuv/  nanopb/  mbedtls/  zlib/   unpacked Debian source trees (patches applied)
#   third_party/wslay/                             aria2's deps/wslay (wslay 1.1.1) + generated wslayver.h
#   third_party/llhttp/{include,src}/              llhttp.h and llhttp.c, api.c, http.c
#   third_party/src/                               downloads, private apt state
set -euo pipefail

TP=$(cd "$(dirname "$0")" && pwd)
DL=$TP/src/dl
APTDIR=$TP/src/apt
SUMS=$TP/SHA256SUMS
SOURCES=${LINKD_APT_SOURCES:-/etc/apt/sources.list.d/debian.sources}

log() { printf 'fetch: %s\n' "$*" >&2; }
die() { printf 'fetch: error: %s\n' "$*" >&2; exit 1; }

mkdir -p "$DL" "$APTDIR"
# One fetch at a time (parallel `make cross` runs share the tree).
exec 9>"$TP/src/.lock"
flock 9

APT_OPTS=()
apt_init() {
    [ ${#APT_OPTS[@]} -gt 0 ] && return 0
    [ -r "$SOURCES" ] || die "$SOURCES not readable: cannot derive a deb-src list"
    mkdir -p "$APTDIR/sources.list.d" "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial"
    # Same entries as the machine's, for both binary and source indexes.
    sed -E 's/^Types:.*/Types: deb deb-src/' "$SOURCES" > "$APTDIR/sources.list.d/linkd-fetch.sources.new"
    if ! cmp -s "$APTDIR/sources.list.d/linkd-fetch.sources.new" "$APTDIR/sources.list.d/linkd-fetch.sources" 2>/dev/null; then
        mv "$APTDIR/sources.list.d/linkd-fetch.sources.new" "$APTDIR/sources.list.d/linkd-fetch.sources"
        rm -f "$APTDIR/.updated"
    else
        rm -f "$APTDIR/sources.list.d/linkd-fetch.sources.new"
    fi
    APT_OPTS=(-q -o Dir::Etc::sourcelist=/dev/null
              -o Dir::Etc::sourceparts="$APTDIR/sources.list.d"
              -o Dir::State::Lists="$APTDIR/lists"
              -o Dir::Cache="$APTDIR/cache"
              -o APT::Sandbox::User=root)
    if [ ! -e "$APTDIR/.updated" ]; then
        log "apt-get update (private deb/deb-src configuration)"
        apt-get "${APT_OPTS[@]}" update >"$APTDIR/update.log" 2>&1 || { cat "$APTDIR/update.log" >&2; die "apt-get update failed"; }
        touch "$APTDIR/.updated"
    fi
}

# Files of one package listed in SHA256SUMS.
files_of() { awk -v p="$1_" 'substr($2,1,length(p))==p {print $2}' "$SUMS"; }

verify() { # package
    local f n=0
    for f in $(files_of "$1"); do
        n=$((n+1))
        [ -f "$DL/$f" ] || return 1
    done
    [ $n -gt 0 ] || die "no checksums for $1 in SHA256SUMS"
    (cd "$DL" && awk -v p="$1_" 'substr($2,1,length(p))==p' "$SUMS" | sha256sum -c --quiet --strict -) >&2
}

download() { # kind package version
    local kind=$1 pkg=$2 ver=$3
    if verify "$pkg" 2>/dev/null; then return 0; fi
    apt_init
    log "downloading $pkg=$ver"
    if [ "$kind" = src ]; then
        (cd "$DL" && apt-get "${APT_OPTS[@]}" source --download-only "$pkg=$ver") >"$APTDIR/get.log" 2>&1 \
            || { cat "$APTDIR/get.log" >&2; die "apt-get source $pkg=$ver failed (is that version still in the archive?)"; }
    else
        (cd "$DL" && apt-get "${APT_OPTS[@]}" download "$pkg=$ver") >"$APTDIR/get.log" 2>&1 \
            || { cat "$APTDIR/get.log" >&2; die "apt-get download $pkg=$ver failed"; }
        # apt-get download names the file with the URL-encoded epoch/colon; normalise.
        for f in "$DL"/"$pkg"_*%3a*; do [ -e "$f" ] && mv "$f" "${f//%3a/:}"; done
    fi
    verify "$pkg" || die "checksum mismatch for $pkg (see above); refusing to use it"
}

unpack_src() { # package version destdir  -> unpacked tree in destdir
    local pkg=$1 ver=${2#*:} dest=$3
    command -v dpkg-source >/dev/null || die "dpkg-source missing (apt-get install dpkg-dev)"
    rm -rf "$dest"
    # Checksums were verified above; --no-check skips the (unavailable) signature check.
    (cd "$TP/src" && dpkg-source -q --no-check -x "$DL/${pkg}_${ver}.dsc" "$dest") >/dev/null
}

fetch_one() { # kind dir package version
    local kind=$1 dir=$2 pkg=$3 ver=$4 stamp="$TP/$2/.fetched" tmp
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pkg $ver" ]; then
        return 0
    fi
    download "$kind" "$pkg" "$ver"
    tmp="$TP/src/tmp-$dir"
    rm -rf "$tmp" "$TP/$dir"
    case "$dir" in
    wslay)
        unpack_src "$pkg" "$ver" "$tmp"
        [ -d "$tmp/deps/wslay/lib" ] || die "$pkg has no deps/wslay"
        local wv
        wv=$(sed -n 's/^AC_INIT(\[wslay\], *\[\([^]]*\)\].*/\1/p' "$tmp/deps/wslay/configure.ac")
        [ "$wv" = 1.1.1 ] || die "aria2's deps/wslay is wslay '$wv', expected 1.1.1"
        mv "$tmp/deps/wslay" "$TP/$dir"
        sed "s/@PACKAGE_VERSION@/$wv/" "$TP/$dir/lib/includes/wslay/wslayver.h.in" \
            > "$TP/$dir/lib/includes/wslay/wslayver.h"
        rm -rf "$tmp"
        ;;
    llhttp)
        mkdir -p "$tmp"
        dpkg-deb -x "$DL/${pkg}_${ver#*:}_all.deb" "$tmp" 2>/dev/null \
            || dpkg-deb -x "$(ls "$DL/${pkg}"_*_all.deb | head -1)" "$tmp"
        mkdir -p "$TP/$dir/include" "$TP/$dir/src"
        cp "$tmp/usr/share/include/llhttp/llhttp.h" "$TP/$dir/include/"
        cp "$tmp/usr/share/llhttp/llhttp.c" "$tmp/usr/share/llhttp/api.c" "$tmp/usr/share/llhttp/http.c" "$TP/$dir/src/"
        grep -q '#define LLHTTP_VERSION_MAJOR 8' "$TP/$dir/include/llhttp.h" \
            && grep -q '#define LLHTTP_VERSION_MINOR 1' "$TP/$dir/include/llhttp.h" \
            || die "node-llhttp does not carry llhttp 8.1"
        rm -rf "$tmp"
        ;;
    *)
        unpack_src "$pkg" "$ver" "$tmp"
        mv "$tmp" "$TP/$dir"
        ;;
    esac
    echo "$pkg $ver" > "$stamp"
    log "$dir: $pkg $ver ready in third_party/$dir"
}

if [ "${1:-}" = --verify ]; then
    rc=0
    while read -r kind dir pkg ver _; do
        case "$kind" in ''|\#*) continue;; esac
        if verify "$pkg"; then echo "ok: $pkg $ver"; else echo "BAD or missing: $pkg $ver"; rc=1; fi
    done < "$TP/versions"
    exit $rc
fi

while read -r kind dir pkg ver _; do
    case "$kind" in ''|\#*) continue;; esac
    case "$kind" in src|deb) ;; *) die "versions: unknown kind '$kind'";; esac
    fetch_one "$kind" "$dir" "$pkg" "$ver"
done < "$TP/versions"
