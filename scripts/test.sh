#!/usr/bin/env bash
# Set up everything the tests need (the virtual environment with the dev tools, RabbitMQ
# running, Fashion-MNIST) and run them inside it. Extra arguments go to pytest, e.g.
#   bash scripts/test.sh -k codec
# The tests run side by side in FEDQ_TEST_WORKERS pytest-xdist workers (default 3; 0 runs
# them in this one process): most of their time is waiting on processes, brokers and
# timeouts, not CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ "${FEDQ_SKIP_SETUP:-0}" == 1 ]] || bash scripts/setup.sh --dev
workers=${FEDQ_TEST_WORKERS:-3}
parallel=()
[[ "$workers" == 0 ]] || parallel=(-n "$workers" --dist worksteal)
status=0
"${FEDQ_VENV:-.venv}/bin/python" -m pytest "${parallel[@]}" "$@" || status=$?
if [[ $status -eq 5 ]]; then
    echo "fedq: pytest collected no tests; that is a failure here (check the -k/-m filter)" >&2
    exit 1
fi
exit $status
