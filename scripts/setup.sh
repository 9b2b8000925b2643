#!/usr/bin/env bash
# Set up fedq on a fresh Debian machine. Idempotent: a second run only checks.
#   bash scripts/setup.sh           fedq with Keras and plots (enough for `fedq simulate`)
#   bash scripts/setup.sh --dev     also the test/lint tools, Fashion-MNIST and a running RabbitMQ
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
dev=false
[[ "${1:-}" == "--dev" ]] && dev=true
python=${PYTHON:-python3}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

apt_install() {
    local missing=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    ((${#missing[@]})) || return 0
    say "apt-get install ${missing[*]}"
    local sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
        || { $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}"; }
}

if $dev; then
    apt_install dataset-fashion-mnist
    command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
    if ! rabbitmqctl -q status >/dev/null 2>&1; then
        say "starting RabbitMQ"
        rabbitmq-server -detached
    fi
    # await_startup fails at once while the node is not yet reachable: retry for 2 minutes.
    for _ in $(seq 120); do
        rabbitmqctl -q await_startup >/dev/null 2>&1 && break
        sleep 1
    done
    rabbitmqctl -q await_startup
    rabbitmq-plugins -q enable rabbitmq_management >/dev/null
    extras=".[keras,dev]"
else
    extras=".[keras,plot]"
fi

say "pip install -e '$extras'"
"$python" -m pip install -q -e "$extras" --config-settings editable_mode=strict
