#!/usr/bin/env bash
# socktrace's eBPF tests under other kernels: each kernel boots with
# virtme-ng over this host's own file system (read-only, with writable
# overlays) in software emulation, and runs pytest from this checkout.
#
# Usage (root):
#   scripts/kernel-matrix.sh [--install-only] [KERNEL...]
#     KERNEL  6.1   Debian 12's default kernel (linux-image-amd64)
#             6.12  Debian 12's 6.12 update (bookworm-security)
#             5.10  Debian 11's kernel (adds a pinned bullseye apt source)
#             or an exact release, e.g. 6.1.0-57-amd64
#             (default: 6.1)
#   Environment:
#     MATRIX_TESTS    pytest arguments (default: tests/test_kernel.py)
#     MATRIX_OUT      where logs and the summary go (default: a new /tmp dir)
#     MATRIX_TIMEOUT  seconds per kernel, boot included (default: 1800)
#     MATRIX_MEMORY, MATRIX_CPUS   guest size (default: 3G, 2)
#     MATRIX_TIME_SCALE  the tests' waits, times this (default: 10; emulation
#                     is slow: compiling and verifying the BPF program takes
#                     20-40 s on 6.1 and over 60 s on 6.12)
#
# Everything it needs is installed idempotently first: qemu-system-x86 and
# busybox-static (Debian), virtme-ng (PyPI, into .venv), and per kernel its
# image (linux-image-<release>-unsigned) and its own headers
# (linux-headers-<release>, so /lib/modules/<release>/build is right in the
# guest).  The guest has no network: nothing is installed inside it.
#
# Exit status: 0 when every kernel's tests passed, 1 otherwise (a kernel
# that could not be installed or booted counts as a failure).  One summary
# line per kernel: release, result, pytest's last line, minutes taken.
# See docs/kernels.md for the results.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
say() { echo "kernel-matrix: $*" >&2; }

install_only=
kernels=()
for a in "$@"; do
    case $a in
        --install-only) install_only=1 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) say "unknown option $a"; exit 2 ;;
        *) kernels+=("$a") ;;
    esac
done
[ ${#kernels[@]} -gt 0 ] || kernels=(6.1)

if [ "$(id -u)" != 0 ]; then
    say "run as root (apt-get, and the guest runs the tests as root)"
    exit 1
fi

# --- host packages -------------------------------------------------------------
"$here/scripts/install.sh" test

apt_updated=
apt_update() {
    if [ -z "$apt_updated" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        apt_updated=1
    fi
}
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }
apt_install() {
    local want=() p
    for p in "$@"; do installed "$p" || want+=("$p"); done
    [ ${#want[@]} -gt 0 ] || return 0
    apt_update
    say "apt-get install ${want[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}" >&2
}

apt_install qemu-system-x86 busybox-static
VNG_VERSION=1.42
if ! "$here/.venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('virtme-ng') != '$VNG_VERSION')" 2>/dev/null; then
    say "pip install virtme-ng==$VNG_VERSION"
    "$here/.venv/bin/python" -m pip install -q --disable-pip-version-check "virtme-ng==$VNG_VERSION" >&2
fi

# Debian 11's archive for 5.10, pinned so that it never replaces a package
# (priority 1: only what exists nowhere else, such as gcc-10 for its headers).
add_bullseye() {
    local src=/etc/apt/sources.list.d/socktrace-bullseye.sources
    local pin=/etc/apt/preferences.d/socktrace-bullseye
    if [ ! -f "$src" ] || [ ! -f "$pin" ]; then
        say "adding Debian 11 (bullseye) as a pinned apt source: $src"
        cat > "$pin" <<'EOF'
# socktrace scripts/kernel-matrix.sh: Debian 11 packages never replace installed ones
Package: *
Pin: release n=bullseye
Pin-Priority: 1
EOF
        cat > "$src" <<'EOF'
# Debian 11's archive, for its 5.10 kernel only (socktrace scripts/kernel-matrix.sh);
# pinned in /etc/apt/preferences.d/socktrace-bullseye so that it upgrades nothing.
Types: deb
URIs: http://deb.debian.org/debian
Suites: bullseye
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        apt_updated=
    fi
    apt_update
}

# The newest "<release>-unsigned" image whose release starts with $1
# (plain amd64 flavour: no cloud, rt).
newest_release() {
    apt-cache pkgnames "linux-image-$1" | sed -n 's/^linux-image-\(.*-amd64\)-unsigned$/\1/p' |
        grep -v -e cloud -e '-rt-' | sort -V | tail -n 1
}

# KERNEL argument -> release (installs the apt source it needs)
resolve() {
    local rel=
    case $1 in
        6.1)
            apt_update
            rel=$(apt-cache depends linux-image-amd64 2>/dev/null |
                  sed -n 's/.*Depends: linux-image-\(6\.1\.[^ ]*-amd64\)$/\1/p' | head -n 1)
            [ -n "$rel" ] || rel=$(newest_release 6.1.) ;;
        6.12) apt_update; rel=$(newest_release 6.12.) ;;
        5.10) add_bullseye; rel=$(newest_release 5.10.) ;;
        *) rel=$1 ;;
    esac
    echo "$rel"
}

install_kernel() {
    local rel=$1
    if [ -f "/boot/vmlinuz-$rel" ] && [ -e "/lib/modules/$rel/build/Makefile" ]; then
        return 0
    fi
    apt_update
    apt_install "linux-image-$rel-unsigned" "linux-headers-$rel"
    [ -f "/boot/vmlinuz-$rel" ] && [ -e "/lib/modules/$rel/build/Makefile" ]
}

releases=()
for k in "${kernels[@]}"; do
    rel=$(resolve "$k")
    if [ -z "$rel" ]; then
        say "$k: no such kernel in the configured apt sources"
        releases+=("?$k")
    elif ! install_kernel "$rel"; then
        say "$k: installing linux-image-$rel-unsigned and linux-headers-$rel failed"
        releases+=("?$rel")
    else
        releases+=("$rel")
    fi
done
if [ -n "$install_only" ]; then
    for r in "${releases[@]}"; do [ "${r#\?}" = "$r" ] || exit 1; done
    exit 0
fi

# --- one guest per kernel ------------------------------------------------------
out=${MATRIX_OUT:-$(mktemp -d /tmp/socktrace-matrix.XXXXXX)}
mkdir -p "$out"
tests=${MATRIX_TESTS:-tests/test_kernel.py}
limit=${MATRIX_TIMEOUT:-1800}
export PATH="$here/.venv/bin:$PATH"     # vng runs virtme-run from PATH

# virtme-ng passes --overlay-rwdir on through a command line of its own and
# splits a path with spaces there: such a checkout goes to the guest under a
# bind mount without them (the same files, the host's root is the guest's).
src=$here
case "$here" in
    *[[:space:]]*)
        src=$(mktemp -d /tmp/socktrace-src.XXXXXX)
        mount --bind "$here" "$src"
        trap 'umount "$src" 2>/dev/null; rmdir "$src" 2>/dev/null' EXIT
        ;;
esac

# What runs in the guest: the suite as CI runs it, eBPF required.  The
# checkout is an overlay there (writable, changes dropped), so it may live
# anywhere, in a 0700 directory too; results go to $out (shared).
cat > "$out/guest.sh" <<EOF
#!/bin/sh
out=\$1
[ -d /sys/kernel/tracing/events ] || mount -t tracefs nodev /sys/kernel/tracing
ip link set lo up 2>/dev/null
cd '$src' || exit 1
echo "guest: \$(uname -r), \$(nproc) CPUs, \$(awk '/MemTotal/ {print \$2 " kB"}' /proc/meminfo)"
SOCKTRACE_REQUIRE_BPF=1 SOCKTRACE_TEST_TIME_SCALE=${MATRIX_TIME_SCALE:-10} PYTHONDONTWRITEBYTECODE=1 \\
    .venv/bin/python -m pytest -p no:cacheprovider -rs $tests > "\$out/pytest.log" 2>&1
echo \$? > "\$out/rc"
EOF
chmod 755 "$out/guest.sh"

summary=$out/summary.txt
: > "$summary"
failed=0
for rel in "${releases[@]}"; do
    if [ "${rel#\?}" != "$rel" ]; then
        echo "${rel#\?} NOT-INSTALLED" | tee -a "$summary"
        failed=1
        continue
    fi
    dir=$out/$rel
    mkdir -p "$dir"
    rm -f "$dir/rc" "$dir/pytest.log"
    say "$rel: booting (software emulation), running $tests"
    start=$(date +%s)
    set +e
    timeout --kill-after=30 "$limit" vng --disable-kvm -r "/boot/vmlinuz-$rel" \
        --memory "${MATRIX_MEMORY:-3G}" --cpus "${MATRIX_CPUS:-2}" \
        --overlay-rwdir "$src" --rwdir "$out" \
        -- "$out/guest.sh" "$dir" > "$dir/console.log" 2>&1
    vrc=$?
    set -e
    took=$(( $(date +%s) - start ))
    last=$(grep -E '^(=+ .* =+|[0-9]+ (passed|failed).*)$' "$dir/pytest.log" 2>/dev/null | tail -n 1 | tr -d '=' | sed 's/^ *//; s/ *$//')
    if [ -f "$dir/rc" ] && [ "$(cat "$dir/rc")" = 0 ]; then
        result=PASS
    else
        failed=1
        if [ -f "$dir/rc" ]; then result="FAIL(pytest $(cat "$dir/rc"))"
        elif [ $vrc = 124 ] || [ $vrc = 137 ]; then result="TIMEOUT(${limit}s)"
        else result="NO-RESULT(vng $vrc, see $dir/console.log)"; fi
    fi
    printf '%s %s [%s] %dm%02ds\n' "$rel" "$result" "${last:-no pytest summary}" \
        $((took / 60)) $((took % 60)) | tee -a "$summary"
    if [ "$result" != PASS ] && [ -f "$dir/pytest.log" ]; then
        tail -n 60 "$dir/pytest.log" >&2
    fi
done
say "logs in $out"
exit $failed
