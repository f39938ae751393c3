#!/usr/bin/env bash
# Set up ./.venv on a fresh machine (idempotent): the CPU build of torch first, then vla with extras.
#   bash scripts/bootstrap.sh               # sim,text,dev (what the tests need)
#   bash scripts/bootstrap.sh sim           # only what the demo pipeline needs
# Re-running is cheap: nothing is installed while pyproject.toml is unchanged and the extras asked for
# are already there. pip's output goes to .venv/install.log and is printed only when an install fails.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-sim,text,dev}
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.vla-install-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
have_hash=$(sed -n 1p "$stamp" 2>/dev/null || true)
have_extras=$(sed -n 2p "$stamp" 2>/dev/null || true)
missing=$(comm -23 <(tr , '\n' <<<"$extras" | sort -u) <(tr , '\n' <<<"$have_extras" | sort -u))
if [ "$have_hash" != "$want" ] || [ -n "$missing" ]; then
  [ "$have_hash" = "$want" ] && extras=$(printf '%s\n' "$have_extras" "$extras" | tr , '\n' | sed '/^$/d' | sort -u | paste -sd,)
  echo "setting up .venv (torch CPU build, vla[$extras]; a few minutes on a fresh machine)..." >&2
  log=.venv/install.log
  : >"$log"
  pip() { .venv/bin/python -m pip "$@" >>"$log" 2>&1 || { cat "$log" >&2; echo "error: pip $* failed (log: $log)" >&2; exit 1; }; }
  pip install --upgrade pip
  # torch==2.13.0 explicitly: any other spec pulls the CUDA build (several GB).
  .venv/bin/python -c "import torch" 2>/dev/null || pip install torch==2.13.0
  pip install -e ".[$extras]"
  printf '%s\n%s\n' "$want" "$extras" >"$stamp"
fi
