#!/usr/bin/env bash
# Install what socktrace needs (idempotent, see scripts/install.sh), then run
# it with the arguments given: sudo ./socktrace.sh --format text
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
"$here/scripts/install.sh"
exec "$here/.venv/bin/socktrace" "$@"
