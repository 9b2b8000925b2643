#!/usr/bin/env bash
# Set up fedq (a virtual environment in .venv, or FEDQ_VENV) and run a federation: the seed
# example, 4 participants, 5 rounds, on the embedded broker. Extra arguments go to
# `fedq simulate`, e.g.
#   bash scripts/demo.sh --broker amqp://guest:guest@127.0.0.1:5672/
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${FEDQ_VENV:-.venv}/bin/python" -m fedq.cli simulate --app fedq.apps.dense:app \
    --participants 4 --rounds 5 --report fedq-state/demo-report.json "$@"
