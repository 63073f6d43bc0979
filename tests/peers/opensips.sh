#!/usr/bin/env bash
# Build OpenSIPS 3.6.8 from its upstream source tarball for the real-OpenSIPS
# test tier (tests/peers/README.md has the contract).
#
#   tests/peers/opensips.sh build   build or reuse the cached build; print the prefix
#
# Only the modules the example configs in packaging/examples/opensips load are
# built, plus httpd and mi_http for the sidecar's MI. The build is cached in
# $SIPSTATUS_PEER_CACHE/opensips-<sha256 of the tarball>.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VERSION=3.6.8
SOURCES=${SIPSTATUS_PEER_SOURCES:-$ROOT/../shared/peers}
CACHE=${SIPSTATUS_PEER_CACHE:-/var/cache/sipstatus/peers}
TARBALL=$SOURCES/opensips-$VERSION.tar.xz

# What packaging/examples/opensips/*/opensips.cfg load, and the MI over HTTP
# (their proto_udp is part of the core in 3.6: net/proto_udp).
MODULES="cachedb_local db_text dialog dispatcher json load_balancer maxfwd
mi_script rr sipmsgops sl tm httpd mi_http"
DEBS=(build-essential bison flex libssl-dev libjson-c-dev libmicrohttpd-dev
      pkg-config xz-utils)

work=""  # the build folder, removed on exit

say() { printf 'opensips.sh: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else say "need root for: $*"; return 1
    fi
}

install_debs() {
    local missing=() pkg
    for pkg in "${DEBS[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing build dependencies: ${missing[*]}"
    as_root apt-get -o DPkg::Lock::Timeout=900 update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 \
        install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

build() {
    if [ ! -f "$TARBALL" ]; then
        say "no $TARBALL (set SIPSTATUS_PEER_SOURCES): the real-OpenSIPS tier will not run"
        exit 0
    fi
    local sha prefix
    sha=$(sha256sum "$TARBALL" | cut -d' ' -f1)
    prefix=$CACHE/opensips-$sha
    if [ -x "$prefix/sbin/opensips" ] && [ -f "$prefix/.complete" ]; then
        echo "$prefix"
        return 0
    fi
    install_debs
    as_root mkdir -p "$CACHE"
    [ -w "$CACHE" ] || as_root chown "$(id -u):$(id -g)" "$CACHE"
    # One build at a time: a second caller waits, then finds the first's result.
    exec 9>"$CACHE/opensips-$sha.lock"
    flock 9
    if [ -x "$prefix/sbin/opensips" ] && [ -f "$prefix/.complete" ]; then
        echo "$prefix"
        return 0
    fi
    work=$(mktemp -d "$CACHE/.opensips-build.XXXXXX")
    trap 'rm -rf "${work:-}"' EXIT
    say "building OpenSIPS $VERSION in $work (a few minutes)"
    tar -xJf "$TARBALL" -C "$work"
    local src
    src=$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -n1)
    local mods
    mods=$(echo $MODULES)
    local jobs
    jobs=$(nproc 2>/dev/null || echo 2)
    rm -rf "$prefix"
    (
        cd "$src"
        make -j"$jobs" app >"$work/build.log" 2>&1 &&
        make -j"$jobs" module="$mods" modules >>"$work/build.log" 2>&1 &&
        make module="$mods" install prefix="$prefix" >>"$work/build.log" 2>&1
    ) || { tail -n 40 "$work/build.log" >&2; say "build failed (log above)"; exit 1; }
    # OpenSIPS compiles its prefix in (module and config paths), so it is
    # installed in place; .complete marks a finished build.
    touch "$prefix/.complete"
    echo "$prefix"
}

case "${1:-}" in
    build) build ;;
    *) echo "usage: $0 build" >&2; exit 2 ;;
esac
