#!/usr/bin/env bash
# Everything socktrace needs on a Debian/Ubuntu host, installed idempotently:
# bcc from the distribution, kernel headers where bcc looks for them, a
# mounted tracefs, and a virtual environment at .venv with the project in it.
# Usage: scripts/install.sh [test]   ("test" adds the test dependencies)
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=${1:-}
kver=$(uname -r)
say() { echo "install: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    echo "install: run as root (apt-get, kernel headers, tracefs)" >&2
    exit 1
fi

# --- distribution packages -------------------------------------------------
pkgs=(python3-bpfcc bpfcc-tools python3-venv python3-pip python3-dev iproute2 gcc libc6-dev)
# tests/test_pipelines.py: a shipper (rsyslog), logrotate, and systemd-nspawn to run the unit;
# tests/test_top.py: tmux, a real terminal for socktrace top
if [ "$want_test" = test ]; then pkgs+=(rsyslog logrotate systemd-container tmux jq); fi
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
apt_updated=
apt_install() {
    if [ -z "$apt_updated" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}
if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    apt_install "${missing[@]}"
fi

# --- kernel headers --------------------------------------------------------
# bcc compiles at load time against /lib/modules/$(uname -r)/build.  Use the
# running kernel's own headers when the distribution has them; otherwise its
# generic ones (fine for tracepoint programs: socktrace reads no struct
# through headers, see bpf/socktrace.bpf.c), linked where bcc looks.
if [ ! -e "/lib/modules/$kver/build/Makefile" ]; then
    if apt-cache show "linux-headers-$kver" >/dev/null 2>&1 ||
       { [ -z "$apt_updated" ] && DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 && apt_updated=1 &&
         apt-cache show "linux-headers-$kver" >/dev/null 2>&1; }; then
        say "apt-get install linux-headers-$kver"
        apt_install "linux-headers-$kver"
    fi
fi
if [ ! -e "/lib/modules/$kver/build/Makefile" ]; then
    arch=$(dpkg --print-architecture)
    generic=linux-headers-$arch
    apt-cache show "$generic" >/dev/null 2>&1 || generic=linux-headers-generic
    if ! dpkg-query -W -f='${Status}' "$generic" 2>/dev/null | grep -q "ok installed"; then
        say "no headers package for $kver; apt-get install $generic"
        apt_install "$generic"
    fi
    build=$(ls -d /usr/src/linux-headers-*-"$arch" /usr/src/linux-headers-*-generic 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$build" ] || { echo "install: no kernel headers found under /usr/src" >&2; exit 1; }
    common=${build%-"$arch"}-common
    [ -d "$common" ] || common=${build%-generic}
    [ -d "$common" ] || common=$build
    say "linking $build as the headers of $kver"
    mkdir -p "/lib/modules/$kver"
    ln -sfn "$build" "/lib/modules/$kver/build"
    ln -sfn "$common" "/lib/modules/$kver/source"
fi

# --- tracefs -----------------------------------------------------------------
if [ ! -d /sys/kernel/tracing/events ]; then
    say "mounting tracefs"
    mount -t tracefs nodev /sys/kernel/tracing
fi

# --- virtual environment -----------------------------------------------------
# From Debian's python3 (where python3-bpfcc installs bcc), seeing its
# site-packages for bcc, with psutil/orjson pip-installed inside.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import bcc" 2>/dev/null; then
    say "creating .venv"
    rm -rf .venv
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
extra=
[ "$want_test" = test ] && extra="[test]"
stamp=.venv/.socktrace-installed$extra
# again when the build inputs changed (setup.py compiles tracer/_fmt.c, _diag.c)
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] ||
   [ tracer/_fmt.c -nt "$stamp" ] || [ tracer/_diag.c -nt "$stamp" ] ||
   [ bpf/socktrace.h -nt "$stamp" ]; then
    say "pip install -e .$extra"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".$extra" >&2
    touch "$stamp"
fi

# --- the command -------------------------------------------------------------
# pip's console script starts Python with site's start-up work (every .pth
# file, the editable install's import hook: 40-80 ms, more than ss takes for
# 10k sockets); this one starts it with -S and lets only the trace load site
# (tracer/launch.py).  Paths are quoted: the checkout may contain spaces.
root=$(pwd)
purelib=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
launcher=.venv/bin/socktrace
want=$(printf '#!/bin/sh\n# written by scripts/install.sh: see tracer/launch.py\nexec %q -S -c %q %q %q "$@"\n' \
    "$root/.venv/bin/python" \
    'import sys; sys.path[0:0] = [sys.argv.pop(1), sys.argv.pop(1)]; from tracer.launch import main; sys.exit(main())' \
    "$root" "$purelib")
if [ "$(cat "$launcher" 2>/dev/null)" != "$want" ]; then
    printf '%s\n' "$want" > "$launcher.tmp"
    chmod 755 "$launcher.tmp"
    mv -f "$launcher.tmp" "$launcher"
fi
