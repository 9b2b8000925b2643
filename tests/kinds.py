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
import threading
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


def _unmarked_pure(what: str, marker: str) -> str:
    return (
        f"a test without markers is pure, yet this one {what}: "
        f"mark it (or its module) with pytest.mark.{marker}"
    )


def _refuse(what: str, marker: str) -> Callable[..., Any]:
    def refused(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError(_unmarked_pure(what, marker))

    return refused


#: The broker's ports (AMQP, AMQPS, management): a test that connects to one talks to it.
BROKER_PORTS = frozenset({5672, 5671, 15672})
#: Why a test fails that connects where its markers say it does not.
PURE_CONNECTED = _unmarked_pure("opened a network connection", "broker")
UNMARKED_BROKER = (
    "this test connected to the broker without its marker: "
    "mark it (or its module) with pytest.mark.broker"
)


def _to_broker(address: Any) -> bool:
    return isinstance(address, tuple) and len(address) >= 2 and address[1] in BROKER_PORTS


@pytest.fixture(autouse=True)
def pure_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Hold a test to its markers: a pure one opens no network connection and starts no
    process; any other without ``broker`` opens no connection to the broker's ports (the
    broker marker is what the hygiene watch and ``-m "not broker"`` go by).

    A connection is refused as a broker that is down would refuse it, so the client fails
    the way it knows (an AssertionError raised inside aio-pika's reconnect loop hangs the
    test instead), and the test is then failed at its teardown, naming the marker it
    lacks, whatever the client made of the refusal."""
    if request.node.get_closest_marker("broker") is not None:
        yield
        return
    pure = request.node.get_closest_marker(PURE) is not None
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    refused: list[str] = []

    def allowed(sock: socket.socket, address: Any) -> bool:
        return sock.family == socket.AF_UNIX or not (pure or _to_broker(address))

    def refuse(address: Any) -> None:
        # Where, and from which thread: a thread a test before this one left running (a
        # client retrying) is caught here too, and its name says whose it is.
        seen = f" ({address!r}, from thread {threading.current_thread().name!r})"
        refused.append((PURE_CONNECTED if pure else UNMARKED_BROKER) + seen)
        raise ConnectionRefusedError(refused[-1])

    def connect(sock: socket.socket, address: Any) -> None:
        if allowed(sock, address):
            return real_connect(sock, address)
        refuse(address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        if allowed(sock, address):
            return real_connect_ex(sock, address)
        refuse(address)
        return 1

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    if pure:
        monkeypatch.setattr(
            subprocess.Popen, "_execute_child", _refuse("started a process", "processes")
        )
        monkeypatch.setattr(os, "fork", _refuse("forked a process", "processes"))
    yield
    if refused:
        pytest.fail(refused[0], pytrace=False)
