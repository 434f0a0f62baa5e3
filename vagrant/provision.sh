#!/usr/bin/env bash
# Provision the leak lab (run by `vagrant up` as root, and by
# scripts/prove-vagrant-provision.sh in a fresh Debian root):
#   - socktrace from the synced folder, through the same idempotent installer
#     ./socktrace.sh and ./test.sh call (scripts/install.sh): bcc, kernel
#     headers, tracefs, .venv;
#   - jq and pgrep for the walkthrough (vagrant/README.md);
#   - socktrace and the four leaking demos (vagrant/demos/) on PATH.
# Idempotent: a second run changes nothing.
set -euo pipefail
src=${SOCKTRACE_SRC:-/socktrace}
say() { echo "provision: $*" >&2; }

[ "$(id -u)" = 0 ] || { echo "provision: run as root" >&2; exit 1; }
[ -x "$src/scripts/install.sh" ] || { echo "provision: no socktrace checkout at $src (SOCKTRACE_SRC)" >&2; exit 1; }

"$src/scripts/install.sh"

missing=()
for p in jq procps; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

ln -sfn "$src/.venv/bin/socktrace" /usr/local/bin/socktrace
for demo in leaky-server leaky-pool tw-churn slow-acceptor; do
    ln -sfn "$src/vagrant/demos/$demo" "/usr/local/bin/$demo"
done
say "socktrace $("$src/.venv/bin/socktrace" --version 2>&1 | awk '{print $NF}'); demos: leaky-server leaky-pool tw-churn slow-acceptor (vagrant/README.md)"
