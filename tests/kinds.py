"""What each test needs, as markers, so a contributor can run the pure tests in seconds.

``pytest -m pure`` runs every test that needs neither the broker, nor a process of its
own, nor a framework's training; ``-m "not keras"`` leaves out the slow trainers. A test
(or its module, with ``pytestmark``) says what it needs with one of :data:`NEEDS`; one
that says nothing is *pure*, and that claim is checked while it runs rather than trusted:
a pure test that opens a network connection or starts a process fails, naming the marker
it lacks. So a label cannot drift from what the test does, in any run, CI's included.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

#: The markers that take a test out of the pure set, with what each one means.
NEEDS: dict[str, str] = {
    "broker": "talks to a RabbitMQ broker (the shared one or a node of the test's own)",
    "processes": "starts processes (fedq commands, rabbitmq nodes, tools)",
    "keras": "trains real models (Keras, PyTorch or JAX): slow",
}
PURE = "pure"


def configure(config: pytest.Config) -> None:
    """Register the markers, so ``--strict-markers`` and ``pytest --markers`` know them."""
    for name, meaning in NEEDS.items():
        config.addinivalue_line("markers", f"{name}: {meaning}")
    config.addinivalue_line(
        "markers", f"{PURE}: needs none of {', '.join(NEEDS)} (given to every other test)"
    )


def mark_pure(items: list[pytest.Item]) -> None:
    """Give ``pure`` to every collected test that declares none of :data:`NEEDS`."""
    for item in items:
        if not any(item.get_closest_marker(name) for name in NEEDS):
            item.add_marker(PURE)


def _refuse(what: str, marker: str) -> Callable[..., Any]:
    def refused(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError(
            f"a test without markers is pure, yet this one {what}: "
            f"mark it (or its module) with pytest.mark.{marker}"
        )

    return refused


@pytest.fixture(autouse=True)
def pure_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Hold a pure test to its claim: no network connection, no process of its own."""
    if request.node.get_closest_marker(PURE) is None:
        yield
        return
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    refuse_network = _refuse("opened a network connection", "broker")

    def connect(sock: socket.socket, address: Any) -> None:
        if sock.family == socket.AF_UNIX:
            return real_connect(sock, address)
        refuse_network()

    def connect_ex(sock: socket.socket, address: Any) -> int:
        if sock.family == socket.AF_UNIX:
            return real_connect_ex(sock, address)
        refuse_network()
        return 1

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(
        subprocess.Popen, "_execute_child", _refuse("started a process", "processes")
    )
    monkeypatch.setattr(os, "fork", _refuse("forked a process", "processes"))
    yield
