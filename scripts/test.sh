#!/usr/bin/env bash
# The test suite on a fresh machine: set-up (idempotent), then pytest; arguments go to pytest.
#   bash scripts/test.sh            # the default, fast suite (< 10 min on 2 cores)
#   bash scripts/test.sh -m slow    # the long end-to-end runs
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export MUJOCO_GL=${MUJOCO_GL:-egl}
# The environment's console scripts (vla, lerobot-doctor) are what the tests run as subprocesses.
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest "$@"
