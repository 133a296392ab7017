#!/usr/bin/env bash
# The GPU check in one command (docs/gpu.md): bench/gpu_check.sh [OUT_DIR] [--device cuda|cpu] [--quick]
# Installs the carried wheels in .whl/ (if any) into /tmp/site, puts the checkout's packages on
# PYTHONPATH, then runs bench/gpu_check.py, which writes OUT_DIR/report.json, report.md and logs/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
if [ -x "$root/.venv/bin/python" ] && [ -z "${PYTHON:-}" ]; then python="$root/.venv/bin/python"; fi
paths="$root/service:$root/client"
if compgen -G "$root/.whl/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$root"/.whl/*.whl
  paths="$paths:/tmp/site"
fi
export PYTHONPATH="$paths${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
cd "$root"
exec "$python" bench/gpu_check.py "$@"
