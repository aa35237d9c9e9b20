#!/usr/bin/env bash
# Debian packages (packaging/, make deb ARCH=amd64|arm64|armhf). Builds all
# three; checks their control fields (amd64 Depends against the libraries the
# binary really loads; none for the static ARM ones), contents, conffiles and
# scripts. Then the amd64 package in a scratch root with
# `dpkg --root --force-script-chrootless` (the scripts run here with
# DPKG_ROOT set and must act inside it): install (group linkd, unit enabled,
# nothing started), upgrade with an edited conffile, an administrator's
# disable kept, remove (only the conffile left), purge (nothing left), the
# group made by groupadd where systemd-sysusers fails. Then, in a throw-away
# overlay of this machine's / (a private mount namespace) where "systemd
# runs" (a systemctl that logs what it is asked), install starts the unit,
# upgrade restarts it, remove stops it. The host is checked untouched.
. "$(dirname "$0")/lib.sh"
cd "$ROOT" || exit 1

VER=$(sed -n 's/^VERSION *:= *//p' Makefile)
OUT=$T_TMP/debs
# The packages of the binaries at hand (make test built them, and the three
# packages, first): packaging/build-deb.sh is what `make deb` runs. A binary
# that is missing is built by `make deb ARCH=...` (ARCH/SAN/VALGRIND of an
# outer make test reach us through MAKEFLAGS: not wanted here).
declare -A BINOF=([amd64]=linkd [arm64]=linkd-aarch64 [armhf]=linkd-armhf)
for a in amd64 arm64 armhf; do
  if [ -x "${BINOF[$a]}" ]; then
    packaging/build-deb.sh $a "${BINOF[$a]}" "$VER" "$OUT" >"$T_TMP/build-$a.log" 2>&1
  else
    timeout -k 5 250 env -u MAKEFLAGS -u MAKELEVEL make -s deb ARCH=$a >"$T_TMP/build-$a.log" 2>&1 &&
      mkdir -p "$OUT" && cp "build/deb/linkd_${VER}_$a.deb" "$OUT/"
  fi || fail "linkd_${VER}_$a.deb builds" "$(grep -E 'error|Error|build-deb' "$T_TMP/build-$a.log" | tail -n 3 | tr '\n' ' ' | cut -c1-300)"
done
# make deb ARCH=arm64 maps the Debian name to the cross build and packages it
expect_match "make deb ARCH=arm64 packages linkd-aarch64 (dry run)" "$(env -u MAKEFLAGS -u MAKELEVEL make -n deb ARCH=arm64 2>&1 | tr '\n' ' ')" \
  'linkd-aarch64 ARCH=aarch64 .*build-deb.sh arm64 linkd-aarch64 '"$VER"' build/deb'

# ---------------------------------------------------------------- the packages
declare -A MACH=([amd64]='Advanced Micro Devices X86-64' [arm64]=AArch64 [armhf]=ARM)
for a in amd64 arm64 armhf; do
  deb=$OUT/linkd_${VER}_$a.deb
  if [ ! -f "$deb" ]; then fail "linkd_${VER}_$a.deb built" "missing"; continue; fi
  f() { dpkg-deb -f "$deb" "$1"; }
  expect_eq "$a: Package, Version, Architecture" "$(f Package) $(f Version) $(f Architecture)" "linkd $VER $a"
  expect_match "$a: Maintainer, Section, Description" "$(f Maintainer)|$(f Section)|$(f Description)" '^.+ <.+@.+>\|net\|.+gateway'
  expect_eq "$a: conffiles" "$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)" /etc/linkd/linkd.conf
  list=$(dpkg-deb -c "$deb" | awk '{print $1, $2, $6}')
  for want in '-rwxr-xr-x root/root ./usr/bin/linkd' '-rw-r--r-- root/root ./lib/systemd/system/linkd.service' \
              '-rw-r--r-- root/root ./etc/linkd/linkd.conf' '-rw-r--r-- root/root ./usr/lib/sysusers.d/linkd.conf' \
              '-rw-r--r-- root/root ./usr/share/doc/linkd/copyright'; do
    grep -qxF -- "$want" <<<"$list" || fail "$a: contents" "no '$want'"
  done
  pass "$a: contents (binary, unit, conffile, sysusers.d, copyright; root-owned, modes)"
  X=$T_TMP/x-$a
  mkdir -p "$X" && dpkg-deb -x "$deb" "$X" && dpkg-deb -e "$deb" "$X/DEBIAN"
  expect_eq "$a: binary for $a, stripped" "$(readelf -h "$X/usr/bin/linkd" | sed -n 's/^ *Machine: *//p') $(readelf -S "$X/usr/bin/linkd" | grep -c '[.]symtab')" "${MACH[$a]} 0"
  expect_match "$a: the unit runs /usr/bin/linkd with the conffile" "$(grep '^ExecStart=' "$X/lib/systemd/system/linkd.service")" \
    '^ExecStart=/usr/bin/linkd --config /etc/linkd/linkd.conf$'
  expect_eq "$a: the conffile is cross/linkd.conf" "$(md5sum <"$X/etc/linkd/linkd.conf")" "$(md5sum <cross/linkd.conf)"
  expect_eq "$a: sysusers.d makes the group linkd" "$(grep -v '^#' "$X/usr/lib/sysusers.d/linkd.conf")" 'g linkd - -'
  ok=1
  for s in postinst prerm postrm; do [ -x "$X/DEBIAN/$s" ] && sh -n "$X/DEBIAN/$s" || ok=0; done
  [ $ok = 1 ] && pass "$a: maintainer scripts present, executable, valid sh" || fail "$a: maintainer scripts" "missing or not valid sh"
  (cd "$X" && md5sum --quiet -c DEBIAN/md5sums >/dev/null 2>&1) && pass "$a: md5sums match" || fail "$a: md5sums" "do not match"
  if [ "$a" = amd64 ]; then
    # Depends: every library the binary itself links (NEEDED) belongs to a
    # package named there (what those load in turn, e.g. libnats' OpenSSL,
    # their own packages depend on)
    dep=$(f Depends)
    missing=""
    needed=$(readelf -d "$X/usr/bin/linkd" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
    for lib in $(ldd "$X/usr/bin/linkd" | awk -v n=" $(echo $needed) " '$3 ~ /^\// && index(n, " " $1 " ") {print $3}'); do
      pkg=$(dpkg -S "$(readlink -f "$lib")" 2>/dev/null | head -n1 | cut -d: -f1)
      [ -z "$pkg" ] && pkg=$(dpkg -S "$lib" 2>/dev/null | head -n1 | cut -d: -f1)
      [[ ", $dep," == *", $pkg "* || ", $dep," == *", $pkg,"* ]] || missing="$missing $lib($pkg)"
    done
    expect_eq "amd64: Depends (dpkg-shlibdeps) covers every library the binary links" "${missing:-none}" none
    expect_match "amd64: Depends names libc6, libuv1, libwslay1, libmbedcrypto7, zlib1g with versions" "$dep" \
      'libc6 \(>= [0-9.]+\).*libmbedcrypto7 \(>= .*libuv1 \(>= .*libwslay1 \(>= .*zlib1g \(>= '
    # libnats is loaded only with --nats-url (dlopen): suggested, not a dependency
    expect_eq "amd64: Suggests libnats3.4 (loaded only for a cluster), Depends does not name it" \
      "$(f Suggests) $([[ $dep == *libnats* ]] && echo in-depends || echo ok)" "libnats3.4 ok"
  else
    expect_eq "$a: static binary, no Depends" "$(readelf -l "$X/usr/bin/linkd" | grep -c INTERP) '$(f Depends)'" "0 ''"
  fi
done

# ---------------------------------------------------------------- the amd64 package in a scratch root
DEB1=$OUT/linkd_${VER}_amd64.deb
[ -f "$DEB1" ] || exit 0
# a second version, from the same binary: the upgrade
packaging/build-deb.sh amd64 "$T_TMP/x-amd64/usr/bin/linkd" "$VER+t2" "$T_TMP/v2" >/dev/null 2>"$T_TMP/v2.err" ||
  fail "a second version builds" "$(tail -n 2 "$T_TMP/v2.err")"
DEB2=$T_TMP/v2/linkd_${VER}+t2_amd64.deb

# systemctl here must never be asked anything: chrootless scripts start nothing
STUB=$T_TMP/stubbin
mkdir -p "$STUB"
printf '#!/bin/sh\necho "$*" >>%s\nexit 0\n' "$T_TMP/systemctl.calls" >"$STUB/systemctl"
chmod +x "$STUB/systemctl"
: >"$T_TMP/systemctl.calls"

host_state() {   # what the host must still have after the test
  md5sum /etc/group /etc/gshadow 2>/dev/null
  ls -la /etc/systemd/system/multi-user.target.wants/linkd.service /usr/bin/linkd /etc/linkd 2>&1 | sed 's/ [A-Z][a-z][a-z] .*\// /'
  dpkg-query -W -f '${Status}' linkd 2>&1
}
HOST0=$(host_state)

R=$T_TMP/root
mkroot() {   # an empty root, as base-passwd and dpkg leave one, plus linkd's Depends as installed here
  mkdir -p "$R/etc" "$R/var/lib/dpkg/info" "$R/var/lib/dpkg/updates" "$R/var/lib/dpkg/triggers" "$R/var/log"
  printf 'root:x:0:\nadm:x:4:\n' >"$R/etc/group"
  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$R/etc/passwd"
  printf 'root:*::\nadm:*::\n' >"$R/etc/gshadow"
  printf 'root:*:19000:0:99999:7:::\n' >"$R/etc/shadow"
  chmod 640 "$R/etc/shadow" "$R/etc/gshadow"
  : >"$R/var/lib/dpkg/available"
  # the status entries of the packages Depends names, taken from this machine's database
  dpkg-query -s $(dpkg-deb -f "$DEB1" Depends | tr ',' '\n' | sed 's/(.*//; s/|.*//; s/ //g') >"$R/var/lib/dpkg/status" 2>/dev/null
}
DPKG=(env PATH="$STUB:$PATH" dpkg --root="$R" --force-script-chrootless --force-confdef --force-confold)
status() { dpkg-query --admindir="$R/var/lib/dpkg" -W -f '${db:Status-Abbrev}${Version}' linkd 2>/dev/null; }
# files of the root that are not dpkg's database/log nor the shadow tools' backups and locks
rootfiles() {
  (cd "$R" && find . -mindepth 1 \( -type f -o -type l \) | sed 's|^\./||' |
    grep -vE '^(var/lib/dpkg/|var/log/|etc/(group|gshadow|passwd|shadow)-$|etc/\.pwd\.lock$|etc/(group|gshadow|passwd|shadow)$)' | LC_ALL=C sort)
}
WANTS=etc/systemd/system/multi-user.target.wants/linkd.service

mkroot
BASE=$(rootfiles)
"${DPKG[@]}" -i "$DEB1" >"$T_TMP/dpkg.1" 2>&1
expect_eq "dpkg --root -i: installed" "$(status)" "ii $VER"
inst=""
for p in usr/bin/linkd lib/systemd/system/linkd.service etc/linkd/linkd.conf usr/lib/sysusers.d/linkd.conf; do
  [ -f "$R/$p" ] || inst="$inst $p"
done
expect_eq "install: files in place" "${inst:-all}" all
expect_match "install: the system group linkd in the root's /etc/group (systemd-sysusers or groupadd)" "$(grep '^linkd:' "$R/etc/group")" '^linkd:x:[0-9]+:$'
expect_eq "install: the unit enabled (multi-user.target.wants link)" "$(readlink "$R/$WANTS")" /lib/systemd/system/linkd.service
expect_eq "install: nothing started or reloaded in a root (DPKG_ROOT)" "$(cat "$T_TMP/systemctl.calls")" ""
"$R/usr/bin/linkd" --config "$R/etc/linkd/linkd.conf" --check-config >"$T_TMP/cc.out" 2>&1 &&
  pass "install: the installed linkd accepts the installed conffile" || fail "install: installed linkd --check-config" "$(tail -n 2 "$T_TMP/cc.out")"

echo "max_rooms = 77" >>"$R/etc/linkd/linkd.conf"
"${DPKG[@]}" -i "$DEB2" >"$T_TMP/dpkg.2" 2>&1
expect_eq "upgrade: the new version installed" "$(status)" "ii $VER+t2"
expect_eq "upgrade: the edited conffile kept" "$(tail -n 1 "$R/etc/linkd/linkd.conf")" "max_rooms = 77"
expect_eq "upgrade: one group linkd, the unit still enabled" "$(grep -c '^linkd:' "$R/etc/group") $(readlink "$R/$WANTS")" "1 /lib/systemd/system/linkd.service"
rm -f "$R/$WANTS"   # an administrator's `systemctl disable linkd`
"${DPKG[@]}" -i "$DEB2" >"$T_TMP/dpkg.3" 2>&1
if [ "$(status)" = "ii $VER+t2" ] && [ ! -e "$R/$WANTS" ]; then pass "reinstall: an administrator's disable is kept"
else fail "reinstall: an administrator's disable is kept" "status '$(status)', link: $(ls -l "$R/$WANTS" 2>&1)"; fi
expect_eq "upgrade and reinstall: still nothing started in a root" "$(cat "$T_TMP/systemctl.calls")" ""

"${DPKG[@]}" -r linkd >"$T_TMP/dpkg.4" 2>&1
expect_eq "remove: status config-files" "$(status)" "rc $VER+t2"
expect_eq "remove: nothing left but the conffile" "$(comm -13 <(printf '%s' "$BASE${BASE:+$'\n'}") <(rootfiles) | tr '\n' ' ')" "etc/linkd/linkd.conf "
expect_eq "remove: the group stays" "$(grep -c '^linkd:' "$R/etc/group")" 1

"${DPKG[@]}" -P linkd >"$T_TMP/dpkg.5" 2>&1
expect_eq "purge: not installed" "$(status)" ""
expect_eq "purge: nothing left (files, links, enable state, /etc/linkd)" "$(rootfiles | tr '\n' ' ')$(ls -d "$R/etc/linkd" 2>/dev/null)" "$(printf '%s' "$BASE" | tr '\n' ' ')"
expect_eq "purge: the group linkd is gone" "$(grep -c '^linkd:' "$R/etc/group")" 0

# where systemd-sysusers is missing or fails: groupadd
printf '#!/bin/sh\nexit 1\n' >"$STUB/systemd-sysusers"
chmod +x "$STUB/systemd-sysusers"
"${DPKG[@]}" -i "$DEB1" >"$T_TMP/dpkg.6" 2>&1
expect_match "install without a working systemd-sysusers: groupadd makes the group; enabled again after a purge" \
  "$(status) $(grep '^linkd:' "$R/etc/group") $(readlink "$R/$WANTS")" "^ii $VER linkd:x:[0-9]+: /lib/systemd/system/linkd.service$"
rm -f "$STUB/systemd-sysusers"
"${DPKG[@]}" -P linkd >"$T_TMP/dpkg.7" 2>&1
expect_eq "the host is untouched (its group files, units, binaries, dpkg database)" "$(host_state)" "$HOST0"

# ---------------------------------------------------------------- where systemd runs
# A private mount namespace: an overlay of / (writes go to a tmpfs), a /run
# with run/systemd/system, a systemctl that logs and keeps a running state,
# no policy-rc.d. dpkg -i / -r run chrooted in it. Nothing reaches the host.
if ! command -v unshare >/dev/null || ! grep -qw overlay /proc/filesystems 2>/dev/null && ! modprobe -n overlay 2>/dev/null; then
  log "no unshare/overlayfs here: the start/restart/stop checks are skipped"
  exit 0
fi
OV=$T_TMP/ov
mkdir -p "$OV"
cp "$DEB1" "$DEB2" "$T_TMP/"
cat >"$T_TMP/systemctl.stub" <<'EOF'
#!/bin/sh
# systemctl as the maintainer scripts see it: logs the call, keeps a running
# state, and enables as the default preset ("enable *") does
echo "$*" >>/var/log/stub-systemctl.log
W=/etc/systemd/system/multi-user.target.wants
for a in "$@"; do
  case $a in
    preset|enable) mkdir -p $W; ln -sf /lib/systemd/system/linkd.service $W/linkd.service; exit 0 ;;
    disable) rm -f $W/linkd.service; exit 0 ;;
    is-enabled) if [ -L /etc/systemd/system/multi-user.target.wants/linkd.service ]; then echo enabled; exit 0; fi; echo disabled; exit 1 ;;
    is-active) [ -f /run/stub-linkd.active ] && exit 0; exit 3 ;;
    start|restart) : >/run/stub-linkd.active; exit 0 ;;
    stop) rm -f /run/stub-linkd.active; exit 0 ;;
  esac
done
exit 0
EOF
cat >"$T_TMP/in-overlay.sh" <<EOF
set -e
mount -t tmpfs tmpfs "$OV"
mkdir -p "$OV/u" "$OV/w" "$OV/m"
mount -t overlay overlay -o lowerdir=/,upperdir="$OV/u",workdir="$OV/w" "$OV/m"
mount -t proc proc "$OV/m/proc"
mount --rbind /dev "$OV/m/dev"
mount -t tmpfs tmpfs "$OV/m/run"
mount -t tmpfs tmpfs "$OV/m/tmp"
mkdir -p "$OV/m/run/systemd/system"
install -m 0755 "$T_TMP/systemctl.stub" "$OV/m/usr/bin/systemctl"
rm -f "$OV/m/usr/sbin/policy-rc.d"
cp "$T_TMP/$(basename "$DEB1")" "$T_TMP/$(basename "$DEB2")" "$OV/m/tmp/"
run() { echo "== \$*" >>"$OV/m/var/log/stub-systemctl.log"; chroot "$OV/m" env PATH=/usr/sbin:/usr/bin:/sbin:/bin "\$@" >>"$T_TMP/ov.dpkg" 2>&1; }
: >"$OV/m/var/log/stub-systemctl.log"
run dpkg -i "/tmp/$(basename "$DEB1")"
run dpkg -i "/tmp/$(basename "$DEB2")"
run dpkg -r linkd
run dpkg -P linkd
cp "$OV/m/var/log/stub-systemctl.log" "$T_TMP/ov.log"
EOF
if timeout -k 5 120 unshare -m bash "$T_TMP/in-overlay.sh" >"$T_TMP/ov.out" 2>&1; then
  L=$(cat "$T_TMP/ov.log")
  seg() { awk -v h="== $1" '/^== /{on = index($0, h) == 1} on && !/^== /' <<<"$L" | tr '\n' ';'; }
  expect_match "systemd running: install reloads, then starts the enabled unit" "$(seg "dpkg -i /tmp/linkd_${VER}_amd64")" \
    'daemon-reload;.*is-enabled -- linkd.service;.*start linkd.service;$'
  expect_match "systemd running: upgrade restarts it (not stopped first)" "$(seg "dpkg -i /tmp/linkd_${VER}+t2")" \
    '^--system daemon-reload;.*restart linkd.service;$'
  expect_match "systemd running: remove stops it, then reloads" "$(seg "dpkg -r linkd")" '^stop linkd.service;(--system )?daemon-reload;.*$'
  expect_match "systemd running: purge only reloads" "$(seg "dpkg -P linkd")" '^--system daemon-reload;$'
else
  fail "the overlay of / (unshare -m, overlayfs) for the systemd checks" "$(tail -n 3 "$T_TMP/ov.out" | tr '\n' ' ' | cut -c1-300)"
fi
expect_eq "after the overlay checks the host is still untouched" "$(host_state)" "$HOST0"
exit 0
