"""A fedq process calls BLAS with one thread (runtime/blas_threads.py), unless its user
chose a number: OpenBLAS's spinning threads took half the coordinator's CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.processes

#: fedq's entry point as the ``fedq`` command runs it, then the BLAS threads it left.
PROBE = """
import json, sys
from threadpoolctl import threadpool_info
from fedq.cli import main
sys.argv = ["fedq", "--version"]
try:
    main()
except SystemExit:
    pass
print(json.dumps([i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]))
"""


def blas_threads_after_fedq(env: dict[str, str]) -> list[int]:
    run = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.splitlines()[-1])


def test_the_fedq_command_leaves_one_blas_thread() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    assert blas_threads_after_fedq(env) == [1]


def test_a_users_choice_of_blas_threads_is_kept() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    assert blas_threads_after_fedq(env | {"OPENBLAS_NUM_THREADS": "2"}) == [2]
