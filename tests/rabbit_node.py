"""RabbitMQ nodes of a test's own, never the shared one on 5672: their own node name,
ports, directories, config and Erlang cookie, stopped at the end. Tests that need a
broker configured differently (deploy definitions, TLS listeners, a short
consumer_timeout) or that stop, partition or cluster brokers boot one of these."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

#: Every node a test boots is named so, and only such nodes are ever stopped.
PREFIX = "fedq-test-"


def rabbitmq_tool(name: str) -> str | None:
    """The script itself: Debian's /usr/sbin wrappers switch to the rabbitmq user, who
    could not read the test's files."""
    debian = Path("/usr/lib/rabbitmq/bin") / name
    return str(debian) if debian.exists() else shutil.which(name)


def free_ports(n: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


@dataclass
class RabbitNode:
    name: str
    #: Its AMQP port (TCP or TLS, whichever its config listens on).
    amqp_port: int
    base: Path
    env: dict[str, str]
    ctl: str
    process: subprocess.Popen[bytes]
    server: str = ""

    def kill(self) -> None:
        """SIGKILL the node (its own process group: this node only), as a crash would."""
        assert self.name.startswith(PREFIX)  # never the shared node
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def reboot(self) -> None:
        """Crash the node (SIGKILL, as :meth:`kill`) and boot it again with the same
        environment and directories: its mnesia is kept, so durable queues and persistent
        messages come back, as after a host's power cut. Returns once it has started."""
        self.kill()
        self.process = _boot(self.server, self.env, self.base)
        self.await_startup()

    def restart_app(self) -> None:
        """Stop and start the RabbitMQ application, the Erlang node left running: the
        graceful restart an operator does (every client connection is closed with
        CONNECTION_FORCED, durable queues and persistent messages are kept)."""
        self.rabbitmqctl("stop_app")
        self.start_app()

    def start_app(self) -> None:
        """Start the RabbitMQ application after a ``stop_app``; returns once it accepts
        clients."""
        self.rabbitmqctl("start_app")
        self.await_startup()

    def await_startup(self, within: float = 90) -> None:
        """Return once the node accepts clients; fail with its output if it exited or did
        not start ``within`` seconds."""
        deadline = time.monotonic() + within
        while True:
            started = subprocess.run(
                [self.ctl, "-q", "-n", self.name, "await_startup", "--timeout", "20"],
                env=self.env,
                capture_output=True,
                timeout=60,
            )
            if started.returncode == 0:
                return
            output = (self.base / "server.out").read_text(errors="replace")
            assert self.process.poll() is None, output
            assert time.monotonic() < deadline, output
            time.sleep(0.5)

    def rabbitmqctl(self, *args: str) -> str:
        result = subprocess.run(
            [self.ctl, "-q", "-n", self.name, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout


def _boot(server: str, env: dict[str, str], base: Path) -> subprocess.Popen[bytes]:
    """rabbitmq-server in a session of its own (so killing its group kills this node
    only), its output appended to ``base``/server.out."""
    with (base / "server.out").open("ab") as log:
        return subprocess.Popen(
            [server], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


@contextlib.contextmanager
def rabbit_node(
    base: Path,
    config: str,
    *,
    amqp_port: int,
    plugins: str = "[].\n",
    advanced: str | None = None,
    label: str = "node",
    cookie: str | None = None,
) -> Iterator[RabbitNode]:
    """Boot a node in ``base`` with ``config`` (rabbitmq.conf text, which must listen on
    ``amqp_port``), ``plugins`` (an enabled_plugins file's text) and ``advanced`` (an
    advanced.config's Erlang terms, for settings rabbitmq.conf lacks); stop it after.
    Nodes that are to form a cluster share their Erlang ``cookie``."""
    server, ctl = rabbitmq_tool("rabbitmq-server"), rabbitmq_tool("rabbitmqctl")
    if server is None or ctl is None:
        pytest.skip("rabbitmq-server is not installed")
    home = base / "home"
    home.mkdir(parents=True)
    cookie_file = home / ".erlang.cookie"
    cookie_file.write_text(cookie or secrets.token_hex(16))
    cookie_file.chmod(0o400)
    (base / "conf.d").mkdir()
    (base / "rabbitmq-env.conf").write_text("")
    (base / "enabled_plugins").write_text(plugins)
    (base / "rabbitmq.conf").write_text(config)
    if advanced is not None:
        (base / "advanced.config").write_text(advanced)
    [dist] = free_ports(1)
    name = f"{PREFIX}{label}-{uuid.uuid4().hex[:8]}@localhost"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
    env |= {
        "HOME": str(home),
        "RABBITMQ_NODENAME": name,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(amqp_port),
        "RABBITMQ_DIST_PORT": str(dist),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "RABBITMQ_CONFIG_FILES": str(base / "conf.d"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
        "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        "ERL_EPMD_ADDRESS": "127.0.0.1",
    }
    node = RabbitNode(name, amqp_port, base, env, ctl, _boot(server, env, base), server)
    try:
        node.await_startup()
        yield node
    finally:
        assert name.startswith(PREFIX)  # never the shared node
        if node.process.poll() is None:
            subprocess.run(
                [ctl, "-q", "-n", name, "stop"], env=env, capture_output=True, timeout=60
            )
        try:
            node.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(node.process.pid, signal.SIGKILL)  # its own session: this node only
            node.process.wait()
