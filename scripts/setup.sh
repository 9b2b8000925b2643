#!/usr/bin/env bash
# Set up fedq on a fresh Debian machine, in a virtual environment: nothing is installed into
# a system interpreter (Debian's refuses it, PEP 668). Idempotent: a second run only checks.
#   bash scripts/setup.sh           fedq with Keras and plots (enough for `fedq simulate`)
#   bash scripts/setup.sh --dev     also the test/lint tools, PyTorch (CPU), JAX, MLflow's
#                                   client, the ONNX exporters and runtime, Fashion-MNIST and
#                                   a running RabbitMQ
# PYTHON picks the interpreter the environment is made from (default: python3 on PATH);
# FEDQ_VENV where it lives (default: .venv in the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
dev=false
dev_extras=".[keras,plot,dev,torch,jax,mlflow,onnx]"
[[ "${1:-}" == "--dev" ]] && dev=true
python=${PYTHON:-python3}
venv=${FEDQ_VENV:-.venv}

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

command -v "$python" >/dev/null || { echo "setup: no interpreter '$python'; set PYTHON" >&2; exit 2; }

if [[ ! -x "$venv/bin/python" ]]; then
    # Debian ships venv and ensurepip apart from the interpreter (python3.X-venv).
    if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        version=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        apt_install "python$version-venv"
    fi
    say "creating the virtual environment $venv with $("$python" -c 'import sys; print(sys.executable)')"
    "$python" -m venv "$venv"
fi
vpython=$(cd "$venv/bin" && pwd)/python
# pip's cache too stays in the environment: set-up writes nothing outside it (and apt's).
export PIP_CACHE_DIR=${PIP_CACHE_DIR:-$(dirname "$(dirname "$vpython")")/.cache/pip}

if $dev; then
    apt_install dataset-fashion-mnist chromium  # chromium: the dashboard's browser test
    # openssl: the TLS tests make certificates; iproute2 (ip, tc): the partition test
    apt_install openssl iproute2
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
    extras=$dev_extras
else
    extras=".[keras,plot]"
fi

# The torch extra's CPU build: PyPI's Linux torch wheel pulls gigabytes of CUDA. The CPU
# wheels carry a +cpu local version, which PyPI never has: asking for it exactly takes a CPU
# wheel pip already finds (its find-links, a local index), else PyTorch's CPU index; it
# never falls back to a CUDA build. The extra's own `torch>=2.2` is then satisfied.
torch_cpu=${FEDQ_TORCH:-torch==2.13.0+cpu}
install_cpu_torch() {
    "$vpython" -c "import torch, sys; sys.exit(not torch.__version__.endswith('+cpu'))" \
        >/dev/null 2>&1 && return 0
    say "pip install $torch_cpu (the CPU build)"
    "$vpython" -m pip install -q "$torch_cpu" 2>/dev/null \
        || "$vpython" -m pip install -q "$torch_cpu" \
            --extra-index-url https://download.pytorch.org/whl/cpu
}

# pip resolves TensorFlow's whole tree even when nothing changed: remember what was
# installed and only check it next time. The strict editable install links each module, so
# a new module also needs a reinstall: the digest covers pyproject.toml and the module
# names. The dev set includes the plain one.
stamp="$venv/.fedq-installed"
digest=$({ cat pyproject.toml; find src coordinator participant messages -name '*.py' | sort; } \
    | sha256sum | cut -d' ' -f1)
digest="$digest $(pwd)"
if ! grep -qxF -e "$extras $digest" -e "$dev_extras $digest" "$stamp" 2>/dev/null \
    || ! "$vpython" -c 'import fedq.cli' >/dev/null 2>&1; then
    say "pip install -e '$extras' into $venv"
    "$vpython" -m pip install -q --upgrade pip
    if $dev; then install_cpu_torch; fi
    "$vpython" -m pip install -q -e "$extras" --config-settings editable_mode=strict
    echo "$extras $digest" >>"$stamp"
fi
