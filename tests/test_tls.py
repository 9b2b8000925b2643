"""TLS against a RabbitMQ node of the test's own whose only AMQP listener the tests use is
TLS, on certificates the test makes with openssl: fedq verifies the broker's certificate
(amqps:// with ?cafile=), a participant logs in with its client certificate (EXTERNAL)
and its updates pass --verify-identity, and a wrong CA is one clear line, no traceback."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedq.coordinator.ledger import UpdateLedger
from tests.helpers import read_report, run_fedq, start_fedq
from tests.rabbit_node import free_ports, rabbit_node

pytestmark = [pytest.mark.broker, pytest.mark.processes]

PARTICIPANT = "p0"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(name: str, cwd: Path) -> None:
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=cwd,
    )  # fmt: skip


def make_signed(name: str, cn: str, extensions: str, ca: str, cwd: Path) -> None:
    """``name``.pem and .key: a certificate for ``cn`` signed by ``ca``."""
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=cwd,
    )  # fmt: skip
    (cwd / f"{name}.ext").write_text(extensions)
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
        cwd=cwd,
    )  # fmt: skip


@dataclass
class TlsNode:
    port: int
    certs: Path

    def url(self, user: str = "guest:guest", **query: str) -> str:
        params = {"cafile": str(self.certs / "ca.pem")} | query
        joined = "&".join(f"{k}={v}" for k, v in params.items())
        return f"amqps://{user}@localhost:{self.port}/?{joined}"


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsNode]:
    certs = tmp_path_factory.mktemp("certs")
    make_ca("ca", certs)
    make_ca("other-ca", certs)
    server = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    make_signed("server", "localhost", server, "ca", certs)
    make_signed(PARTICIPANT, PARTICIPANT, "extendedKeyUsage=clientAuth\n", "ca", certs)
    tcp, tls = free_ports(2)
    config = f"""
listeners.tcp.default = 127.0.0.1:{tcp}
listeners.ssl.default = 127.0.0.1:{tls}
ssl_options.cacertfile = {certs / "ca.pem"}
ssl_options.certfile = {certs / "server.pem"}
ssl_options.keyfile = {certs / "server.key"}
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
auth_mechanisms.1 = PLAIN
auth_mechanisms.2 = AMQPLAIN
auth_mechanisms.3 = EXTERNAL
ssl_cert_login_from = common_name
loopback_users = none
disk_free_limit.absolute = 50MB
"""
    base = tmp_path_factory.mktemp("tls-node")
    plugins = "[rabbitmq_auth_mechanism_ssl].\n"
    with rabbit_node(base, config, amqp_port=tcp, plugins=plugins, label="tls") as node:
        # The participant's broker user: no password, it logs in with its certificate.
        node.rabbitmqctl("add_user", PARTICIPANT, "unused")
        node.rabbitmqctl("clear_password", PARTICIPANT)
        node.rabbitmqctl("set_permissions", "-p", "/", PARTICIPANT, ".*", ".*", ".*")
        yield TlsNode(tls, certs)


def test_a_federation_runs_over_tls_verifying_the_broker(tls_node, tmp_path, federation):
    report = tmp_path / "report.json"
    result = run_fedq(
        "simulate", "--app", "fedq.apps.synthetic:app", "--participants", "2", "--rounds", "2",
        "--federation", federation, "--state-dir", str(tmp_path), "--report", str(report),
        "--broker", tls_node.url(),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert read_report(report)["rounds_completed"] == 2


def test_a_participant_logs_in_with_its_client_certificate(tls_node, tmp_path, federation):
    """EXTERNAL: no password anywhere; the broker takes the user from the certificate's CN
    and stamps it on the participant's updates, which --verify-identity checks."""
    certs = tls_node.certs
    participant_url = tls_node.url(
        PARTICIPANT, auth="external",
        certfile=str(certs / f"{PARTICIPANT}.pem"), keyfile=str(certs / f"{PARTICIPANT}.key"),
    )  # fmt: skip
    app = ["--federation", federation, "--app", "fedq.apps.synthetic:app"]
    coordinator = start_fedq(
        "coordinator", *app, "--participants", "1", "--rounds", "2", "--verify-identity",
        "--state-dir", str(tmp_path), "--linger", "0", "--broker", tls_node.url(),
        log=tmp_path / "coordinator.log",
    )  # fmt: skip
    participant = start_fedq(
        "participant", *app, "--id", PARTICIPANT, "--broker", participant_url,
        log=tmp_path / "participant.log",
    )  # fmt: skip
    try:
        assert coordinator.wait(timeout=120) == 0, (tmp_path / "coordinator.log").read_text()
        assert participant.wait(timeout=60) == 0, (tmp_path / "participant.log").read_text()
    finally:
        for process in (coordinator, participant):
            if process.poll() is None:
                process.kill()
    ledger = UpdateLedger(tmp_path / federation / "ledger.sqlite")
    try:
        assert [u.participant for v in (1, 2) for u in ledger.updates_of(v)] == [PARTICIPANT] * 2
        assert ledger.rejection_counts() == {}
    finally:
        ledger.close()


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"cafile": "other-ca.pem"}, "certificate did not verify"),
        ({"cafile": "missing.pem"}, "no such file"),
    ],
)
def test_a_wrong_ca_is_one_clear_line(tls_node, change, says):
    url = tls_node.url(**{k: str(tls_node.certs / v) for k, v in change.items()})
    result = run_fedq(
        "participant", "--federation", "f", "--app", "fedq.apps.synthetic:app", "--id", "p0",
        "--broker", url, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("fedq:")]
    assert len(errors) == 1 and says in errors[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
