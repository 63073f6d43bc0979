#!/usr/bin/env bash
# Build Asterisk 22 LTS from its exact upstream tarball for the `asterisk`
# test tier (contract: tests/peers/README.md).
#
#   tests/peers/asterisk.sh build   build or reuse the cached build; print the prefix
#   tests/peers/asterisk.sh prefix  print the cached prefix if it is built (exit 1 if not)
#
# Sources come from $SIPSTATUS_PEER_SOURCES (default ../shared/peers beside
# the checkout): asterisk-22.10.1.tar.xz and the pjproject tarball Asterisk's
# bundled build expects (no download is attempted). The build lands in
# $SIPSTATUS_PEER_CACHE/asterisk-<sha256 of the Asterisk tarball and of this
# script's build recipe>, installed with --prefix set to that directory, so a
# later run on the same machine reuses it.
set -euo pipefail

ME=asterisk.sh
SAY_PREFIX="$ME: "
# shellcheck source=tests/peers/lib.sh
. "$(dirname "$0")/lib.sh"

VERSION=22.10.1
TARBALL=$SOURCES/asterisk-$VERSION.tar.xz
PJPROJECT=$SOURCES/pjproject-2.17.tar.bz2

BUILD_DEBS=(build-essential libedit-dev libjansson-dev libncurses-dev libssl-dev
            libxml2-dev uuid-dev libsqlite3-dev bzip2 patch file xz-utils)

# Modules the tier needs; everything else is disabled (sounds included, or
# `make install` tries to download them).
MODULES=(chan_pjsip
         res_pjsip res_pjsip_session res_pjsip_sdp_rtp res_pjsip_authenticator_digest
         res_pjsip_endpoint_identifier_ip res_pjsip_endpoint_identifier_user
         res_pjsip_outbound_authenticator_digest res_pjsip_outbound_registration
         res_pjsip_registrar res_pjsip_logger res_pjsip_caller_id res_pjsip_rfc3326
         res_pjsip_dtmf_info res_pjsip_nat res_pjsip_diversion res_pjsip_header_funcs
         res_pjsip_dialog_info_body_generator res_pjsip_pubsub res_pjsip_exten_state
         res_pjsip_pidf_body_generator res_pjsip_xpidf_body_generator
         res_pjsip_mwi res_pjsip_mwi_body_generator res_pjsip_notify res_pjsip_refer
         res_pjsip_transport_management res_pjsip_config_wizard res_pjsip_acl
         res_pjsip_send_to_voicemail res_pjsip_sips_contact res_pjsip_path
         res_pjsip_messaging res_pjsip_one_touch_record_info res_pjsip_empty_info
         res_pjsip_rfc3329 res_pjsip_geolocation res_geolocation
         res_pjproject res_rtp_asterisk res_sorcery_config res_sorcery_memory
         res_sorcery_memory_cache res_sorcery_astdb res_sorcery_realtime
         res_timing_timerfd res_musiconhold res_http_websocket res_stasis
         pbx_config app_dial app_echo app_playback app_confbridge app_stack
         app_verbose app_hangup app_senddtmf app_exec app_originate app_mixmonitor
         bridge_simple bridge_softmix bridge_native_rtp bridge_holding
         bridge_builtin_features bridge_builtin_interval_features
         codec_ulaw codec_alaw format_wav format_pcm format_sln
         func_callerid func_channel func_global func_strings func_logic func_math
         func_cut func_rand func_uri func_groupcount func_pjsip_endpoint
         func_pjsip_contact func_pjsip_aor func_db func_env func_shell)
# Bump when the recipe changes so an old cache is not reused.
RECIPE=3

prefix_dir() {
    local sum
    sum=$( { sha256sum "$TARBALL" | cut -d' ' -f1; echo "recipe $RECIPE ${MODULES[*]}"; } \
           | sha256sum | cut -d' ' -f1)
    echo "$CACHE/asterisk-$sum"
}

build() {
    peer_source "$TARBALL" asterisk
    peer_source "$PJPROJECT" asterisk
    local prefix
    prefix=$(prefix_dir)
    peer_built "$prefix" sbin/asterisk && return 0
    peer_lock "$prefix"
    peer_built "$prefix" sbin/asterisk && return 0
    apt_install "${BUILD_DEBS[@]}"
    local work
    work=$(mktemp -d "$CACHE/asterisk-build.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    local started=$SECONDS
    say "building Asterisk $VERSION into $prefix (a few minutes on 2 cores)"
    mkdir "$work/externals"
    cp "$PJPROJECT" "$work/externals/"
    tar -C "$work" -xJf "$TARBALL"
    local src
    src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'asterisk*' | head -n1)
    local without=()
    local lib
    for lib in srtp dahdi pri ss7 gtk2 x11 sdl postgres unixodbc radius spandsp tds \
               ldap lua speex speexdsp ogg vorbis portaudio iksemel neon neon29 sqlite \
               asound jack gsm libcurl; do
        without+=("--without-$lib")
    done
    (
        cd "$src"
        ./configure --prefix="$prefix" --with-pjproject-bundled \
            --with-externals-cache="$work/externals" \
            --without-libjwt-bundled --without-jansson-bundled "${without[@]}" \
            >"$work/configure.log" 2>&1 || { tail -n 40 "$work/configure.log" >&2; exit 1; }
        make menuselect.makeopts >"$work/menuselect.log" 2>&1
        local cat
        # Every category except compiler flags and per-module build options.
        for cat in $(grep -o '^MENUSELECT_[A-Z_]*' menuselect.makeopts | sort -u \
                     | grep -v -e '^MENUSELECT_CFLAGS$' -e '^MENUSELECT_OPTS_' \
                           -e '^MENUSELECT_DEPSFAILED$' -e '^MENUSELECT_BUILD_DEPS$'); do
            menuselect/menuselect --disable-category "$cat" menuselect.makeopts \
                >>"$work/menuselect.log" 2>&1 || true
        done
        local mod
        for mod in "${MODULES[@]}"; do
            menuselect/menuselect --enable "$mod" menuselect.makeopts \
                >>"$work/menuselect.log" 2>&1 || say "menuselect: no module $mod (skipped)"
        done
        make -j"$(nproc)" >"$work/make.log" 2>&1 || { tail -n 60 "$work/make.log" >&2; exit 1; }
        make install DESTDIR="$work/stage" >"$work/install.log" 2>&1 \
            || { tail -n 40 "$work/install.log" >&2; exit 1; }
    )
    rm -rf "$prefix"
    mv "$work/stage$prefix" "$prefix"
    touch "$prefix/.complete"
    say "built Asterisk $VERSION in $((SECONDS - started)) s"
    echo "$prefix"
}

case "${1:-}" in
    build) build ;;
    prefix)
        p=$(prefix_dir)
        [ -e "$p/.complete" ] && { echo "$p"; exit 0; }
        exit 1
        ;;
    *)
        sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
