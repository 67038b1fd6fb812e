#!/usr/bin/env bash
# The main job on a fresh clone: set up, then train, evolve, benchmark,
# report and export on ../shared/datasets/imagenette (resumes if interrupted).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/squishednets run "$@"
