# shellcheck shell=bash
# What ./dev and the peer build scripts (tests/peers/*.sh) share: messages,
# root, Debian packages, and the peer build cache. Sourced, never run; the
# sourcing script sets ME (its name in failure messages) and may set
# SAY_PREFIX (what starts a progress message; "==> " by default).

say() { printf '%s%s\n' "${SAY_PREFIX-==> }" "$*" >&2; }
# One line naming what is missing and how to fix it, then exit 1.
die() { printf '%s: %s\n' "${ME:-dev}" "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"
    else return 126
    fi
}

# Install the Debian packages that are missing; stop with one line if that
# cannot be done (no root, no registry). apt's own output goes to a log.
apt_install() {
    local missing=() pkg log=${TMPDIR:-/tmp}/sipstatus-apt.log
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing Debian packages: ${missing[*]}"
    local rc=0
    as_root true || die "installing ${missing[*]} needs root: run ./dev as root, or install sudo and allow this user to use it without a password"
    as_root apt-get -o DPkg::Lock::Timeout=900 update -qq >"$log" 2>&1 || rc=$?
    if [ $rc -ne 0 ] || grep -q '^\(W\|E\): Failed to fetch' "$log"; then
        die "apt-get update could not reach the Debian registry ($(grep -m1 '^[EW]:' "$log" || echo "exit $rc")): check the network and /etc/apt/sources.list*; log: $log"
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq \
        --no-install-recommends "${missing[@]}" >>"$log" 2>&1 ||
        die "apt-get could not install ${missing[*]} ($(grep -m1 '^E:' "$log" || echo "see the log")): log: $log"
}

# -- the peer builds (tests/peers/README.md) ----------------------------------

# Where the peers' source tarballs are, and where their builds are cached.
SOURCES=${SIPSTATUS_PEER_SOURCES:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/../shared/peers}
CACHE=${SIPSTATUS_PEER_CACHE:-/var/cache/sipstatus/peers}

# The tarball a peer is built from; without it, one line and exit 0 (the
# tier's tests skip with the same reason).
peer_source() {
    local file=$1 tier=$2
    if [ ! -r "$file" ]; then
        say "no $file (set SIPSTATUS_PEER_SOURCES): the $tier tier will not run"
        exit 0
    fi
}

# Print PREFIX and succeed when a finished build of BINARY is there
# (.complete marks a finished build).
peer_built() {
    local prefix=$1 binary=$2
    [ -x "$prefix/$binary" ] && [ -e "$prefix/.complete" ] && echo "$prefix"
}

# One build of PREFIX at a time per machine: a second caller waits here
# (holding fd 9 until it exits), then finds the first one's build.
peer_lock() {
    local prefix=$1
    [ -d "$CACHE" ] || mkdir -p "$CACHE" 2>/dev/null || as_root mkdir -p "$CACHE" ||
        die "cannot create $CACHE (set SIPSTATUS_PEER_CACHE, or run as root)"
    [ -w "$CACHE" ] || as_root chown "$(id -u):$(id -g)" "$CACHE" ||
        die "cannot write to $CACHE (set SIPSTATUS_PEER_CACHE, or run as root)"
    exec 9>"$prefix.lock"
    flock 9
}
