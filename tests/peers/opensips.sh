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

ME=opensips.sh
SAY_PREFIX="$ME: "
# shellcheck source=tests/peers/lib.sh
. "$(dirname "$0")/lib.sh"

VERSION=3.6.8
TARBALL=$SOURCES/opensips-$VERSION.tar.xz

# What packaging/examples/opensips/*/opensips.cfg load, and the MI over HTTP
# (their proto_udp is part of the core in 3.6: net/proto_udp).
MODULES="cachedb_local db_text dialog dispatcher json load_balancer maxfwd
mi_script rr sipmsgops sl tm httpd mi_http"
DEBS=(build-essential bison flex libssl-dev libjson-c-dev libmicrohttpd-dev
      pkg-config xz-utils)

work=""  # the build folder, removed on exit

build() {
    peer_source "$TARBALL" real-OpenSIPS
    local sha prefix
    sha=$(sha256sum "$TARBALL" | cut -d' ' -f1)
    prefix=$CACHE/opensips-$sha
    peer_built "$prefix" sbin/opensips && return 0
    apt_install "${DEBS[@]}"
    peer_lock "$prefix"
    peer_built "$prefix" sbin/opensips && return 0
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
