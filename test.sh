#!/usr/bin/env bash
# Install what the tests need (idempotent), then run the whole suite:
# sudo ./test.sh   (extra arguments go to pytest)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
"$here/scripts/install.sh" test
cd "$here"
exec .venv/bin/python -m pytest "$@"
