#!/usr/bin/env bash
# Set up everything the tests need (the virtual environment with the dev tools, RabbitMQ
# running, Fashion-MNIST) and run them inside it. Extra arguments go to pytest, e.g.
#   bash scripts/test.sh -k codec
set -euo pipefail
cd "$(dirname "$0")/.."
[[ "${FEDQ_SKIP_SETUP:-0}" == 1 ]] || bash scripts/setup.sh --dev
status=0
"${FEDQ_VENV:-.venv}/bin/python" -m pytest "$@" || status=$?
if [[ $status -eq 5 ]]; then
    echo "fedq: pytest collected no tests; that is a failure here (check the -k/-m filter)" >&2
    exit 1
fi
exit $status
