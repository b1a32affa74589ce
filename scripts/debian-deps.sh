#!/usr/bin/env bash
# The Debian packages sipedge needs to build and to run its test suite: the one list.
#
# Usage: scripts/debian-deps.sh            install what is missing (root), or print it and fail
#        scripts/debian-deps.sh --check    print what is missing; exit 1 if anything is
#        scripts/debian-deps.sh --list     print the whole list
# Environment: PYTHON (default python3), the interpreter the venv is built from.
set -euo pipefail

# Building the C extension media._srtp: a C toolchain and OpenSSL's headers.
BUILD_PACKAGES=(build-essential libssl-dev)

# Real peers and tools the test suite drives.  Later issues add theirs here as their
# tests need them: baresip-core, kamailio, rtpengine-daemon, chromium, chromium-driver,
# stunnel4, tshark, redis-server (see shared/peers/README.md for how each is used).
# redis-server: tests/test_state_redis.py and tests/test_e2e_shared_state.py start their own
# (own PID, free loopback port, no persistence); the package's system service is not used.
TEST_PACKAGES=(sip-tester openssl stunnel4 baresip-core tshark chromium chromium-driver systemd redis-server)

# Only for `make bench` (DEPS_BENCH=1): the reference proxy the benchmarks compare against,
# and the media relay it drives in `bench_proxy.py --media` (Kamailio's rtpengine module ->
# rtpengine-daemon).  The bench starts its own rtpengine (own PID, --config-file=none,
# userspace only, 127.0.0.1, ports 40000-44999).  The package's system service would use
# /etc/rtpengine/rtpengine.conf: ports 30000-40000, sipedge's dev range, so
# bench_after_install stops and disables it when this script has just installed it.
BENCH_PACKAGES=(kamailio kamailio-tls-modules rtpengine-daemon)

bench_after_install() {
    local pkg
    for pkg in "$@"; do
        if [ "$pkg" = rtpengine-daemon ]; then
            if [ -d /run/systemd/system ]; then
                systemctl disable --now rtpengine-daemon.service >&2 || true
            else
                # Not booted with systemd: nothing started (no init to ask); keep it so.
                systemctl disable rtpengine-daemon.service >/dev/null 2>&1 || true
                update-rc.d rtpengine-daemon disable >/dev/null 2>&1 || true
            fi
            echo "debian-deps: rtpengine-daemon's system service disabled (the bench runs its own)" >&2
        fi
    done
}

PYTHON=${PYTHON:-python3}

python_packages() {
    # Python.h and venv support come with the interpreter for pyenv or a source build;
    # Debian's own python3 needs python3-dev and python3-venv for them.
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        echo python3 python3-dev python3-venv
        return
    fi
    if ! "$PYTHON" - <<'EOF' 2>/dev/null; then
import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
EOF
        echo python3-dev
    fi
    if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
        echo python3-venv
    fi
}

all_packages() {
    printf '%s\n' "${BUILD_PACKAGES[@]}" "${TEST_PACKAGES[@]}"
    if [ "${DEPS_BENCH:-0}" = 1 ]; then printf '%s\n' "${BENCH_PACKAGES[@]}"; fi
    python_packages | tr ' ' '\n'
}

missing_packages() {
    local pkg status
    for pkg in $(all_packages); do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
        if [ "$status" != "installed" ]; then
            echo "$pkg"
        fi
    done
}

mode=${1:-install}
case "$mode" in
    --list)
        all_packages
        exit 0
        ;;
    --check | install) ;;
    *)
        echo "usage: $0 [--check|--list]" >&2
        exit 2
        ;;
esac

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "debian-deps: not a Debian system; make sure the equivalents of these are installed:" >&2
    all_packages | sed 's/^/  /' >&2
    exit 0
fi

mapfile -t missing < <(missing_packages)
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$mode" = "--check" ]; then
    printf '%s\n' "${missing[@]}"
    exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "debian-deps: missing Debian packages: ${missing[*]}" >&2
    echo "debian-deps: install them as root:" >&2
    echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

echo "debian-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
bench_after_install "${missing[@]}"
