#!/bin/sh
# build-deb.sh DEBARCH BINARY VERSION OUTDIR : OUTDIR/linkd_VERSION_DEBARCH.deb
# with Debian's own dpkg-deb (packaging/deb.mk calls it: make deb ARCH=...).
#
# Contents: /usr/bin/linkd (BINARY, stripped), /lib/systemd/system/linkd.service
# (cross/linkd.service with /usr/bin), /etc/linkd/linkd.conf (cross/linkd.conf,
# a conffile), /usr/lib/sysusers.d/linkd.conf (the group linkd), the copyright
# file, and the maintainer scripts of packaging/debian. Depends: none for a
# static binary (the ARM packages); for a dynamic one (amd64), what
# dpkg-shlibdeps computes from the libraries it links.
# Timestamps come from SOURCE_DATE_EPOCH (default: the last commit), so the
# same inputs give the same .deb.
set -eu
[ $# -eq 4 ] || { echo "usage: $0 DEBARCH BINARY VERSION OUTDIR" >&2; exit 2; }
ARCH=$1 BIN=$2 VERSION=$3 OUT=$4
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
case $ARCH in
  amd64) MACHINE='Advanced Micro Devices X86-64' ;;
  arm64) MACHINE=AArch64 ;;
  armhf) MACHINE=ARM ;;
  *) echo "build-deb.sh: unknown Debian architecture $ARCH (amd64, arm64, armhf)" >&2; exit 2 ;;
esac
[ -f "$BIN" ] || { echo "build-deb.sh: $BIN not found" >&2; exit 1; }
got=$(readelf -h "$BIN" | sed -n 's/^ *Machine: *//p')
[ "$got" = "$MACHINE" ] || { echo "build-deb.sh: $BIN is for '$got', not $ARCH" >&2; exit 1; }
: "${SOURCE_DATE_EPOCH:=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)}"
export SOURCE_DATE_EPOCH

mkdir -p "$OUT"
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/linkd-deb.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
P=$STAGE/pkg
install -d "$P/DEBIAN" "$P/usr/bin" "$P/lib/systemd/system" "$P/etc/linkd" "$P/usr/lib/sysusers.d" "$P/usr/share/doc/linkd"
install -m 0755 "$BIN" "$P/usr/bin/linkd"
if readelf -S "$P/usr/bin/linkd" | grep -q '[.]symtab'; then
  strip --strip-unneeded --remove-section=.comment --remove-section=.note "$P/usr/bin/linkd" 2>/dev/null ||
    objcopy --strip-unneeded "$P/usr/bin/linkd"
fi
sed 's|@BINDIR@|/usr/bin|g' "$ROOT/cross/linkd.service" >"$P/lib/systemd/system/linkd.service"
install -m 0644 "$ROOT/cross/linkd.conf" "$P/etc/linkd/linkd.conf"
install -m 0644 "$HERE/sysusers.conf" "$P/usr/lib/sysusers.d/linkd.conf"
install -m 0644 "$HERE/debian/copyright" "$P/usr/share/doc/linkd/copyright"
printf 'linkd (%s) unstable; urgency=medium\n\n  * Built from the Linkd repository (commit %s).\n\n -- Linkd maintainers <linkd@localhost>  %s\n' \
  "$VERSION" "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  "$(date -u -R -d "@$SOURCE_DATE_EPOCH")" | gzip -9n >"$P/usr/share/doc/linkd/changelog.Debian.gz"
chmod 0644 "$P/lib/systemd/system/linkd.service" "$P/usr/share/doc/linkd/changelog.Debian.gz"
for s in postinst prerm postrm; do install -m 0755 "$HERE/debian/$s" "$P/DEBIAN/$s"; done
echo /etc/linkd/linkd.conf >"$P/DEBIAN/conffiles"

# Depends: a static binary needs nothing; a dynamic one what it links.
DEPENDS=
SUGGESTS=
if readelf -l "$P/usr/bin/linkd" | grep -q INTERP; then
  mkdir -p "$STAGE/src/debian"
  printf 'Source: linkd\n\nPackage: linkd\nArchitecture: any\n' >"$STAGE/src/debian/control"
  DEPENDS=$(cd "$STAGE/src" && dpkg-shlibdeps -O -e"$P/usr/bin/linkd" 2>"$STAGE/shlibdeps.err" | sed -n 's/^shlibs:Depends=//p') || true
  [ -n "$DEPENDS" ] || { echo "build-deb.sh: dpkg-shlibdeps failed: $(cat "$STAGE/shlibdeps.err")" >&2; exit 1; }
  # libnats is loaded (dlopen) only with --nats-url: suggested, not depended on
  grep -q 'libnats.so.3.4' "$P/usr/bin/linkd" && SUGGESTS="libnats3.4"
fi

(cd "$P" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort | xargs md5sum) >"$P/DEBIAN/md5sums"
SIZE=$(du -sk --exclude=DEBIAN "$P" | cut -f1)
{
  echo "Package: linkd"
  echo "Version: $VERSION"
  echo "Architecture: $ARCH"
  echo "Maintainer: Linkd maintainers <linkd@localhost>"
  echo "Installed-Size: $SIZE"
  [ -z "$DEPENDS" ] || echo "Depends: $DEPENDS"
  [ -z "$SUGGESTS" ] || echo "Suggests: $SUGGESTS"
  echo "Section: net"
  echo "Priority: optional"
  echo "Description: small HTTP/WebSocket gateway for edge Linux devices"
  echo " Clients speak HTTP/1.1 and WebSocket to linkd; backend services on the same"
  echo " device connect to its Unix socket (/run/linkd/linkd.sock, group linkd) and"
  echo " exchange varint-delimited protobuf frames with it: routes, WebSocket paths,"
  echo " rooms, pushes. One event loop, fixed-size tables, a few MiB of memory."
  echo " ."
  echo " The systemd unit runs it as a dynamic user under Type=notify with a"
  echo " watchdog; settings are in /etc/linkd/linkd.conf."
} >"$P/DEBIAN/control"
chmod 0644 "$P/DEBIAN/control" "$P/DEBIAN/conffiles" "$P/DEBIAN/md5sums"
find "$P" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
DEB=$OUT/linkd_${VERSION}_$ARCH.deb
dpkg-deb --root-owner-group -Zxz --build "$P" "$DEB" >/dev/null
echo "$DEB: $(stat -c %s "$DEB") bytes${DEPENDS:+ (Depends: $DEPENDS)}"
