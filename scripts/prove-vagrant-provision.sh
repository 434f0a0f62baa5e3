#!/usr/bin/env bash
# Prove vagrant/provision.sh in a fresh Debian 12 root, without a VM:
#   debootstrap bookworm (minbase: less than the debian/bookworm64 box has)
#   into a temporary directory; copy the repository in as the Vagrantfile's
#   rsync synced folder does (same filter: .git/ and what .gitignore lists
#   excluded, so no .venv or build output from this host); then, in a
#   private mount namespace (every mount dies with it), bind /dev and /sys
#   (tracefs included), mount a fresh /proc, chroot and run
#   vagrant/provision.sh as `vagrant up` would.
#   Then check, inside the chroot: the venv, `socktrace --version`,
#   `socktrace stat` and `socktrace ports`, the demos on PATH, a demo hunted
#   with `socktrace stat`, an eBPF trace (--backend bpf: the chroot has
#   Debian 12's generic headers linked for this host's kernel, as install.sh
#   does), and a second provision.sh run (idempotent).
# The chroot shares this host's kernel, network namespace and sockets: it
# proves the installation, not a VM's boot.
# Not part of the test suite: it downloads ~300 MB and takes minutes.
# Usage: sudo scripts/prove-vagrant-provision.sh [--keep]   (root needed)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
keep=${1:-}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
[ "$(id -u)" = 0 ] || { echo "prove: run as root (debootstrap, chroot, mounts)" >&2; exit 1; }
say() { printf 'prove: [%4ss] %s\n' "$SECONDS" "$*" >&2; }

for tool in debootstrap rsync unshare; do
    command -v "$tool" >/dev/null || { say "apt-get install $tool"; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >&2; }
done

root=$(mktemp -d /var/tmp/socktrace-prove.XXXXXX)
cleanup() {
    if [ "$keep" = --keep ]; then say "kept $root"; else rm -rf --one-file-system "$root"; fi
}
trap cleanup EXIT

say "debootstrap --variant=minbase bookworm $root ($mirror)"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.debootstrap.log" 2>&1 ||
    { tail -20 "$root.debootstrap.log" >&2; exit 1; }
rm -f "$root.debootstrap.log"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# This host reaches PyPI through a TLS-intercepting proxy whose CA only its
# own bundle holds (its pip is told so: PIP_CERT or pip.conf's cert).  Hand
# the same bundle to pip in the chroot; a VM with direct access needs none.
pip_cert=${PIP_CERT:-$(sed -n 's/^cert *= *//p' /etc/pip.conf 2>/dev/null | head -n 1)}
if [ -n "$pip_cert" ] && [ -f "$pip_cert" ]; then
    say "pip in the chroot trusts this host's CA bundle ($pip_cert), as this host's pip does"
    cp "$pip_cert" "$root/etc/host-ca-bundle.crt"
    export CHROOT_PIP_CERT=/etc/host-ca-bundle.crt
fi
# no daemons started by package scripts inside a chroot
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"

say "synced folder: rsync $repo -> /socktrace (the Vagrantfile's filter)"
mkdir -p "$root/socktrace"
rsync -a --delete --filter=':- .gitignore' --exclude=.git/ --exclude=.vagrant/ "$repo/" "$root/socktrace/"

# Everything below runs in its own mount namespace: the binds vanish with it.
export root
rc=0
unshare --mount --propagation private bash -euo pipefail <<'INNER' || rc=$?
mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"
mount -t proc proc "$root/proc"
in_root() {
    chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 TERM=dumb SOCKTRACE_SRC=/socktrace \
        ${CHROOT_PIP_CERT:+PIP_CERT=$CHROOT_PIP_CERT} "$@"
}
failed=0
check() {   # check WHAT SCRIPT: run it in the chroot, say PASS/FAIL
    local what=$1 out
    if out=$(in_root bash -c "$2" 2>&1); then
        printf 'prove: PASS %s\n' "$what" >&2
        printf '%s\n' "$out" | sed -n '1,14s/^/    /p' >&2
    else
        printf 'prove: FAIL %s\n' "$what" >&2
        printf '%s\n' "$out" | tail -n 20 | sed 's/^/    /' >&2
        failed=1
    fi
}
t=$SECONDS
printf 'prove: [%4ss] chroot: /socktrace/vagrant/provision.sh\n' "$SECONDS" >&2
if ! in_root /socktrace/vagrant/provision.sh; then
    echo "prove: FAIL provision.sh exited non-zero" >&2
    exit 1
fi
printf 'prove: PASS provision.sh (%d s)\n' $((SECONDS - t)) >&2
check "os" 'grep PRETTY_NAME /etc/os-release; python3 --version; uname -r; readlink /lib/modules/$(uname -r)/build'
check "venv with bcc" 'test -x /socktrace/.venv/bin/python && /socktrace/.venv/bin/python -c "import bcc, tracer; print(\"bcc from\", bcc.__file__)"'
check "socktrace --version (on PATH)" 'command -v socktrace && socktrace --version'
check "socktrace stat" 'socktrace stat --no-owners | head -6'
check "socktrace ports" 'socktrace ports | head -4'
check "demos on PATH" 'for d in leaky-server leaky-pool tw-churn slow-acceptor; do command -v $d; $d --help >/dev/null; done'
check "leaky-server hunted with socktrace stat" '
    leaky-server --port 7091 --clients 3 --interval 0.1 --duration 15 >/tmp/ls.out &
    sleep 2
    socktrace stat --state close-wait | sed -n "/^CLOSE_WAIT [0-9]/,/per process/p" | tee /tmp/stat.out
    kill %1; wait %1 || true
    grep -q "leaky-server/" /tmp/stat.out'
check "eBPF trace in the chroot (socktrace --backend bpf: a loopback listen and connect)" '
    socktrace --backend bpf --format text --lport 7092 >/tmp/bpf.out 2>/tmp/bpf.err &
    for i in $(seq 120); do
        python3 -c "import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"127.0.0.1\", 7092)); s.listen(); socket.create_connection((\"127.0.0.1\", 7092)).close()"
        grep -q LISTEN /tmp/bpf.out && break
        kill -0 %1 2>/dev/null || break
        sleep 0.5
    done
    kill -INT %1 2>/dev/null; wait %1 || true
    head -4 /tmp/bpf.out; tail -3 /tmp/bpf.err; grep -q LISTEN /tmp/bpf.out'
t=$SECONDS
check "provision.sh again (idempotent)" '/socktrace/vagrant/provision.sh 2>&1 | tail -3'
printf 'prove: second run took %d s\n' $((SECONDS - t)) >&2
exit $failed
INNER
say "done: $([ $rc = 0 ] && echo 'every check passed' || echo "some checks FAILED (status $rc)")"
exit $rc
