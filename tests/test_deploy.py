"""deploy/: the files are checked as far as this machine can run them.

No Docker engine and no Kubernetes cluster run here. The compose file is validated against
the Compose Specification's JSON schema, the manifests with kubernetes-validate (and the
RabbitmqCluster against the operator's CRD schema), and every ``fedq`` command in them is
parsed by fedq's own CLI. The broker part is real: a RabbitMQ node of the test's own boots
with deploy/rabbitmq's config, plugins and rendered definitions, a federation runs on it
with one broker user per participant, and the permissions are tried from the outside.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import httpx
import jsonschema
import kubernetes_validate
import numpy as np
import pytest
import typer
import yaml
import yarl

from fedq import broker_users as render
from fedq.apps.synthetic import SyntheticApp
from fedq.cli import app as fedq_app
from fedq.messages.amqp import AmqpTransport
from fedq.messages.codec import encode_message
from fedq.messages.schema import MESSAGE_TYPES, UpdateMeta
from fedq.messages.topology import UPDATE_KEY, Topology
from fedq.messages.transport import TransportError
from tests.helpers import FEDQ, drain, read_report, run_fedq, start_fedq, until_async
from tests.rabbit_node import RabbitNode, free_ports, rabbit_node

pytestmark = [pytest.mark.broker, pytest.mark.processes]

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))
CRD = DEPLOY / "schema" / "rabbitmq.com_rabbitmqclusters.yaml"
#: The oldest Kubernetes the manifests claim, and the newest kubernetes-validate knows.
K8S_VERSIONS = ["1.28", kubernetes_validate.utils.latest_version()]
FEDERATION = "demo"
#: A value for a ${VAR} or $(VAR) that a deployment fills from a secret.
SAMPLE_SECRET = "s3cret"


TEMPLATE = json.loads((DEPLOY / "rabbitmq" / "definitions.json").read_text())
VHOST = TEMPLATE["vhosts"][0]["name"]
USERS = {u["name"] for u in TEMPLATE["users"]}


def without_passwords() -> dict[str, str]:
    """This environment less any FEDQ_PASSWORD_*: render_definitions.py generates them all."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FEDQ_PASSWORD_")}


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# ------------------------------------------------------------------ the compose file
def test_the_compose_file_follows_the_compose_specification():
    schema = json.loads((DEPLOY / "schema" / "compose-spec.json").read_text())
    jsonschema.validators.validator_for(schema).check_schema(schema)
    jsonschema.validate(yaml.safe_load(COMPOSE.read_text()), schema)


def test_the_compose_schema_refuses_a_misspelt_key():
    """The validation above is not vacuous: a typo in a service is an error."""
    schema = json.loads((DEPLOY / "schema" / "compose-spec.json").read_text())
    compose = yaml.safe_load(COMPOSE.read_text())
    compose["services"]["coordinator"]["comand"] = compose["services"]["coordinator"].pop("command")
    with pytest.raises(jsonschema.ValidationError, match="comand"):
        jsonschema.validate(compose, schema)


def test_the_compose_file_mounts_files_that_exist():
    """Every bind-mounted file is in deploy/, except what render_definitions.py writes."""
    compose = yaml.safe_load(COMPOSE.read_text())
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and not source.startswith("./secrets/"):
                assert (DEPLOY / source).is_file(), f"{name}: {source}"
        if "build" in service:
            context = DEPLOY / service["build"]["context"]
            assert (context / service["build"]["dockerfile"]).resolve() == DOCKERFILE


# ------------------------------------------------------------------ Kubernetes
def strict(schema: Any) -> Any:
    """An OpenAPI schema of a CRD that refuses unknown fields, as ``kubectl apply
    --validate=strict`` does (the API server would silently prune them)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def rabbitmq_cluster_schema() -> dict[str, Any]:
    """The openAPIV3Schema of RabbitmqCluster v1beta1, from the operator's CRD (vendored)."""
    [crd] = yaml_documents(CRD)
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    schema = strict(version["schema"]["openAPIV3Schema"])
    assert isinstance(schema, dict)
    schema["properties"]["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}, "labels": {"type": "object"}},
        "additionalProperties": False,
    }
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    return schema


def validate_manifest(doc: dict[str, Any], version: str) -> None:
    """Built-in kinds by kubernetes-validate, strictly; the RabbitmqCluster by its CRD."""
    if doc["kind"] == "RabbitmqCluster":
        assert doc["apiVersion"] == "rabbitmq.com/v1beta1"
        jsonschema.Draft7Validator(rabbitmq_cluster_schema()).validate(doc)
    else:
        kubernetes_validate.validate(doc, version, strict=True)


MANIFESTS = [
    pytest.param(doc, id=f"{path.name}:{doc['kind']}/{doc['metadata']['name']}")
    for path in K8S
    for doc in yaml_documents(path)
]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("doc", MANIFESTS)
def test_the_kubernetes_manifest_validates(doc, version):
    validate_manifest(doc, version)


def test_the_manifests_hold_what_the_deployment_needs():
    kinds = {(d["kind"], d["metadata"]["name"]) for p in K8S for d in yaml_documents(p)}
    assert {
        ("RabbitmqCluster", "fedq-rabbitmq"),
        ("StatefulSet", "fedq-coordinator"),
        ("Service", "fedq-coordinator"),
        ("Deployment", "fedq-dashboard"),
        ("Service", "fedq-dashboard"),
        ("ConfigMap", "fedq"),
    } <= kinds
    assert {name for kind, name in kinds if kind == "Deployment"} >= {
        f"fedq-participant-p{i}" for i in range(4)
    }
    coordinator = next(
        d for d in yaml_documents(DEPLOY / "k8s" / "coordinator.yaml") if d["kind"] == "StatefulSet"
    )
    [claim] = coordinator["spec"]["volumeClaimTemplates"]
    [mount] = coordinator["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert mount["name"] == claim["metadata"]["name"] and mount["mountPath"] == "/var/lib/fedq"


@pytest.mark.parametrize(
    ("kind", "mistake"),
    [
        ("Deployment", lambda d: d["spec"].update(replica=1)),
        ("StatefulSet", lambda d: d["spec"]["template"]["spec"]["containers"][0].update(arg=[])),
        ("RabbitmqCluster", lambda d: d["spec"].update(replica=3)),
        ("RabbitmqCluster", lambda d: d["spec"]["rabbitmq"].update(additionalConfig=7)),
    ],
)
def test_kubernetes_validation_refuses_a_mistake(kind, mistake):
    """The validation above is not vacuous: each kind refuses a misspelt field."""
    doc = next(d for p in K8S for d in yaml_documents(p) if d["kind"] == kind)
    mistake(doc)
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(doc, K8S_VERSIONS[-1])


def conf_settings(text: str) -> dict[str, str]:
    """``key = value`` lines of a rabbitmq.conf (sysctl format), comments left out."""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line.split("#")[0])
    return {k.strip(): v.split("#")[0].strip() for k, v in pairs}


def test_the_rabbitmq_cluster_takes_the_settings_of_rabbitmq_conf():
    [cluster] = yaml_documents(DEPLOY / "k8s" / "rabbitmq.yaml")
    extra = conf_settings(cluster["spec"]["rabbitmq"]["additionalConfig"])
    conf = conf_settings((DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text())
    assert extra == {k: v for k, v in conf.items() if k in extra}
    # Everything but the listeners, which the operator sets itself.
    assert set(conf) - set(extra) == {
        "listeners.tcp.default",
        "management.tcp.port",
        "prometheus.tcp.port",
    }


# ------------------------------------------------------------------ definitions
def test_the_committed_definitions_are_the_rendered_template():
    """deploy/rabbitmq/definitions.json is never edited by hand: it is the script's output."""
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "render_definitions.py"), "--template"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout) == TEMPLATE
    assert {u["password_hash"] for u in TEMPLATE["users"]} == {""}  # no login until rendered


def test_the_dead_letter_policy_keeps_evidence_with_the_coordinators_own_bounds():
    """The rendered policy on fedq.F.rejected says what a coordinator with its defaults
    declares (RabbitMQ applies the lower of each bound, and the queue's overflow): the
    same limits, and reject-publish, never drop-head, which lets a flood push out the
    first evidence."""
    [policy] = TEMPLATE["policies"]
    declared = Topology(FEDERATION).rejected_arguments()
    assert policy["pattern"] == f"^{re.escape(Topology(FEDERATION).rejected)}$"
    assert policy["definition"] == {name.removeprefix("x-"): v for name, v in declared.items()}
    assert policy["definition"]["overflow"] == "reject-publish"


def test_render_definitions_keeps_the_passwords_it_generates(tmp_path):
    out, env = tmp_path / "definitions.json", tmp_path / "secrets" / "fedq.env"
    script = [sys.executable, str(DEPLOY / "render_definitions.py"), "--participants", "a,b"]
    refused = subprocess.run(script, capture_output=True, text=True, env=without_passwords())
    assert refused.returncode == 2 and "--env-out" in refused.stderr
    files = ["--out", str(out), "--env-out", str(env)]
    subprocess.run([*script, *files], check=True, env=without_passwords())
    assert env.stat().st_mode & 0o777 == 0o600
    passwords = dict(line.split("=", 1) for line in env.read_text().splitlines())
    assert set(passwords) == {render.env_name(u) for u in ["admin", "coordinator", "dashboard"]} | {
        "FEDQ_PASSWORD_A",
        "FEDQ_PASSWORD_B",
    }
    hashes = {u["name"]: u["password_hash"] for u in json.loads(out.read_text())["users"]}
    for user, stored in hashes.items():
        salt = base64.b64decode(stored)[:4]
        assert render.password_hash(passwords[render.env_name(user)], salt) == stored
        assert passwords[render.env_name(user)] not in out.read_text()


def test_fedq_deploy_users_writes_what_the_script_writes_and_prints_no_password(tmp_path):
    """`fedq deploy users` (installed fedq) and deploy/render_definitions.py (a checkout)
    are one implementation: the same definitions for the same passwords."""
    env = without_passwords() | {render.env_name(u): f"pw-{u}" for u in render.users(["p0"])}
    by_cli, by_script = tmp_path / "cli.json", tmp_path / "script.json"
    command = [*FEDQ, "deploy", "users", "--federation", "F", "--participants", "1"]
    shown = subprocess.run(
        [*command, "--out", str(by_cli)], capture_output=True, text=True, env=env, check=True
    )
    script = [sys.executable, str(DEPLOY / "render_definitions.py"), "--federation", "F"]
    subprocess.run([*script, "--participants", "1", "--out", str(by_script)], env=env, check=True)

    def without_hashes(path: Path) -> dict[str, Any]:
        """The definitions, each salted hash checked against its password and left out."""
        found = json.loads(path.read_text())
        for user in found["users"]:
            stored = user.pop("password_hash")
            salt = base64.b64decode(stored)[:4]
            assert render.password_hash(f"pw-{user['name']}", salt) == stored
        return found

    assert without_hashes(by_cli) == without_hashes(by_script)
    assert "pw-" not in shown.stdout + shown.stderr


@pytest.mark.parametrize(
    ("user", "kind", "name", "allowed"),
    [
        ("p0", "configure", "fedq.demo.model.p0", True),
        ("p0", "configure", "fedq.demo.model.p01", False),
        ("p0", "configure", "fedq.demo.updates", False),
        ("p0", "configure", "fedq.demo.models", False),  # configure would let it delete them
        ("p0", "configure", "fedq.demo.control", False),
        ("p0", "read", "fedq.demo.model.p1", False),
        ("p0", "read", "fedq.demo.updates", False),
        ("p0", "read", "fedq.demo.rejected", False),
        ("p0", "write", "fedq.demo.updates", True),
        ("p0", "write", "fedq.demo.models", False),
        ("p0", "write", "amq.default", False),
        ("coordinator", "write", "amq.default", True),
        ("coordinator", "read", "fedq.other.updates", False),
        ("dashboard", "read", "fedq.demo.updates", False),
    ],
)
def test_a_permission_regex_matches_only_its_names(user, kind, name, allowed):
    [perm] = [p for p in TEMPLATE["permissions"] if p["user"] == user]
    assert bool(re.search(perm[kind], name)) is allowed


# ------------------------------------------------------------------ fedq commands
@dataclass
class FedqCommand:
    where: str
    args: list[str]
    env: dict[str, str]


def compose_value(text: str) -> str:
    """Compose's interpolation: ${VAR:-default} is the default, anything else a secret."""

    def value(m: re.Match[str]) -> str:
        return m.group(3) if m.group(2) == "-" else SAMPLE_SECRET

    return re.sub(r"\$\{([A-Za-z0-9_]+)(?::?([-?])([^}]*))?\}", value, text)


def compose_commands() -> list[FedqCommand]:
    compose = yaml.safe_load(COMPOSE.read_text())
    out = []
    for name, service in compose["services"].items():
        if not service.get("image", "").startswith("fedq:"):
            continue
        command = service["command"]
        args = shlex.split(command) if isinstance(command, str) else list(command)
        entrypoint = service.get("entrypoint", dockerfile_instruction("ENTRYPOINT"))
        assert entrypoint == ["fedq"], name
        env = {k: compose_value(str(v)) for k, v in service.get("environment", {}).items()}
        out.append(FedqCommand(f"compose:{name}", [compose_value(a) for a in args], env))
    return out


def kubernetes_commands() -> list[FedqCommand]:
    config = {
        d["metadata"]["name"]: d["data"]
        for p in K8S
        for d in yaml_documents(p)
        if d["kind"] == "ConfigMap"
    }
    out = []
    for path in K8S:
        for doc in yaml_documents(path):
            template = doc.get("spec", {}).get("template", {}).get("spec", {})
            for container in template.get("containers", []):
                if not container["image"].startswith("fedq:"):
                    continue
                env: dict[str, str] = {}
                for source in container.get("envFrom", []):
                    env |= config[source["configMapRef"]["name"]]
                for var in container.get("env", []):
                    # $(VAR) expands to a variable defined before it, as the kubelet does.
                    env[var["name"]] = (
                        k8s_value(var["value"], env) if "value" in var else SAMPLE_SECRET
                    )
                command = container.get("command", dockerfile_instruction("ENTRYPOINT"))
                assert command == ["fedq"], path.name
                args = [k8s_value(a, env) for a in container["args"]]
                where = f"k8s:{path.name}:{doc['metadata']['name']}"
                out.append(FedqCommand(where, args, env))
    return out


def k8s_value(text: str, env: dict[str, str]) -> str:
    def value(m: re.Match[str]) -> str:
        assert m.group(1) in env, f"$({m.group(1)}) is not defined before it is used"
        return env[m.group(1)]

    return re.sub(r"\$\(([A-Za-z0-9_]+)\)", value, text)


def dockerfile_instruction(keyword: str) -> list[str] | None:
    """The exec form (JSON) of a Dockerfile instruction, or None if there is none."""
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith(keyword + " "):
            value = json.loads(line[len(keyword) + 1 :])
            assert isinstance(value, list)
            return value
    return None


def dockerfile_commands() -> list[FedqCommand]:
    cmd = dockerfile_instruction("CMD")
    return [] if cmd is None else [FedqCommand("Dockerfile:CMD", cmd, {})]


def readme_commands() -> list[FedqCommand]:
    """``fedq ...`` lines in deploy/README.md's code blocks (PASSWORD and such are values)."""
    text = (DEPLOY / "README.md").read_text().replace("\\\n", " ")
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [
        FedqCommand(f"README:{i}", shlex.split(line)[1:], {})
        for i, line in enumerate(lines)
        if line.startswith("fedq ")
    ]


COMMANDS = compose_commands() + kubernetes_commands() + dockerfile_commands() + readme_commands()


def fedq_command(name: str) -> Any:
    group = typer.main.get_command(fedq_app)
    return group.commands.get(name)  # type: ignore[attr-defined]


def parse_fedq(args: list[str]) -> dict[str, Any]:
    """Parse ``fedq ARGS`` as the CLI would, without running it: an unknown command or flag,
    a missing required one or a value of the wrong type raises click's UsageError."""
    command = typer.main.get_command(fedq_app)
    ctx, rest = command.make_context("fedq", list(args)), list(args)
    while hasattr(command, "resolve_command"):  # a group: fedq, fedq broker
        name, sub, rest = command.resolve_command(ctx, rest)
        assert sub is not None and name is not None
        command, ctx = sub, sub.make_context(name, rest, parent=ctx)
    return dict(ctx.params)


def test_every_fedq_role_is_deployed():
    where = {(c.where.split(":")[0], c.args[0]) for c in COMMANDS}
    for place in ("compose", "k8s"):
        assert {(place, r) for r in ("coordinator", "participant", "dashboard")} <= where
    assert ("README", "teardown") in where


@pytest.mark.parametrize("command", [pytest.param(c, id=c.where) for c in COMMANDS])
def test_the_fedq_command_parses(command):
    params = parse_fedq(command.args)
    if "app_spec" in params:  # importable (not imported: that would load TensorFlow)
        assert importlib.util.find_spec(params["app_spec"].partition(":")[0]) is not None


@pytest.mark.parametrize(
    "command", [pytest.param(c, id=c.where) for c in COMMANDS if "FEDQ_BROKER_URL" in c.env]
)
def test_the_command_logs_in_as_the_broker_user_of_its_role(command):
    """A participant's broker user is its id (--verify-identity refuses anything else), and
    every URL names a user and the vhost of the definitions."""
    url = yarl.URL(command.env["FEDQ_BROKER_URL"])
    AmqpTransport(str(url))  # a URL fedq accepts
    assert url.path == f"/{VHOST}" and url.user in USERS
    assert url.host == broker_host(command.where.split(":")[0])
    if command.args[0] == "participant":
        ids = command.args[command.args.index("--id") + 1]
        assert url.user == ids
    else:
        assert url.user == command.args[0]


def broker_host(place: str) -> str:
    """RabbitMQ's name: the compose service, or the Service the operator makes."""
    if place == "compose":
        services = yaml.safe_load(COMPOSE.read_text())["services"]
        [name] = [n for n, s in services.items() if s["image"].startswith("rabbitmq:")]
        return str(name)
    [cluster] = yaml_documents(DEPLOY / "k8s" / "rabbitmq.yaml")
    return str(cluster["metadata"]["name"])


def test_every_password_a_deployment_reads_is_one_render_definitions_writes():
    written = {render.env_name(u) for u in USERS}
    compose_vars = set(re.findall(r"\$\{(FEDQ_PASSWORD_[A-Z0-9_]+)", COMPOSE.read_text()))
    keys = {
        var["valueFrom"]["secretKeyRef"]["key"]
        for c in [d for p in K8S for d in yaml_documents(p)]
        for container in c.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
        for var in container.get("env", [])
        if "secretKeyRef" in var.get("valueFrom", {})
    }
    assert compose_vars and keys
    assert compose_vars <= written and keys <= written


def test_the_image_holds_every_part_of_the_package():
    """The Dockerfile copies each folder pyproject.toml maps into fedq, and the
    .dockerignore beside it lets them through."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = {Path(d).parts[0] for d in pyproject["tool"]["setuptools"]["package-dir"].values()}
    copied = {
        word.rstrip("/")
        for line in DOCKERFILE.read_text().splitlines()
        if line.startswith("COPY ")
        for word in line.split()[1:-1]
    }
    assert folders | {"pyproject.toml", "README.md"} <= copied
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert {f"!{f}/" for f in folders} <= set(ignore)
    assert pyproject["project"]["scripts"]["fedq"] == "fedq.cli:main"
    assert dockerfile_instruction("ENTRYPOINT") == ["fedq"]


# ------------------------------------------------------------------ a real node
def node_config(deploy_conf: str, overrides: dict[str, str]) -> str:
    """deploy/rabbitmq/rabbitmq.conf with some values changed: each must be there."""
    lines = deploy_conf.splitlines()
    for key, value in overrides.items():
        at = [i for i, line in enumerate(lines) if line.split("=")[0].strip() == key]
        assert len(at) == 1, f"{key} is not set in deploy/rabbitmq/rabbitmq.conf"
        lines[at[0]] = f"{key} = {value}"
    return "\n".join(lines) + "\n"


@dataclass
class DeployNode:
    node: RabbitNode
    management_port: int
    prometheus_port: int
    passwords: dict[str, str]

    @property
    def amqp_port(self) -> int:
        return self.node.amqp_port

    def url(self, user: str) -> str:
        return f"amqp://{user}:{self.passwords[user]}@127.0.0.1:{self.amqp_port}/{VHOST}"

    def rabbitmqctl(self, *args: str) -> str:
        return self.node.rabbitmqctl(*args)


@pytest.fixture(scope="module")
def deploy_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeployNode]:
    """A RabbitMQ node of this test's own (never the shared one on 5672), booted with
    deploy/rabbitmq's config and plugins and the definitions render_definitions.py makes."""
    base = tmp_path_factory.mktemp("rabbitmq")
    script = [sys.executable, str(DEPLOY / "render_definitions.py"), "--participants", "4"]
    files = ["--out", str(base / "definitions.json"), "--env-out", str(base / "fedq.env")]
    subprocess.run(
        [*script, "--federation", FEDERATION, *files], check=True, env=without_passwords()
    )
    by_var = dict(line.split("=", 1) for line in (base / "fedq.env").read_text().splitlines())
    passwords = {u: by_var[render.env_name(u)] for u in USERS}

    amqp, management, prometheus = free_ports(3)
    conf = node_config(
        (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text(),
        {
            "listeners.tcp.default": f"127.0.0.1:{amqp}",
            "management.tcp.port": str(management),
            "prometheus.tcp.port": str(prometheus),
            "load_definitions": str(base / "definitions.json"),
            "disk_free_limit.absolute": "50MB",  # a test machine's disk, not a broker's
        },
    )
    conf += "management.tcp.ip = 127.0.0.1\nprometheus.tcp.ip = 127.0.0.1\n"
    plugins = (DEPLOY / "rabbitmq" / "enabled_plugins").read_text()
    with rabbit_node(base / "node", conf, amqp_port=amqp, plugins=plugins, label="deploy") as node:
        yield DeployNode(node, management, prometheus, passwords)


def test_the_node_has_the_deploy_users_and_no_guest(deploy_node):
    users = json.loads(deploy_node.rabbitmqctl("list_users", "--formatter", "json"))
    assert {u["user"] for u in users} == USERS  # no guest: definitions replace the default
    policies = json.loads(
        deploy_node.rabbitmqctl("list_policies", "-p", VHOST, "--formatter", "json")
    )
    assert [p["name"] for p in policies] == [f"fedq-{FEDERATION}-rejected"]


def test_a_federation_runs_on_the_deploy_definitions_and_a_forged_update_is_refused(
    deploy_node, tmp_path
):
    """Coordinator and participants as processes, each logged in as its own broker user;
    p1 first sends an update in p0's name, which --verify-identity refuses as forged (and
    the coordinator may copy it to the dead-letter queue: it writes to the default
    exchange). The dashboard's user watches the control exchange meanwhile."""
    app = ["--federation", FEDERATION, "--app", "fedq.apps.synthetic:app"]
    report = tmp_path / "report.json"
    shape = ["--participants", "2", "--rounds", "2", "--verify-identity", "--linger", "10"]
    files = ["--state-dir", str(tmp_path), "--report", str(report)]
    coordinator = start_fedq(
        "coordinator",
        *[*app, *shape, *files, "--broker", deploy_node.url("coordinator")],
        log=tmp_path / "coordinator.log",
    )
    participants: list[subprocess.Popen[bytes]] = []
    watcher = f"fedq-dashboard.{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(forge_update_once_routable(deploy_node.url("p1"), claims="p0"))
        asyncio.run(watch_control(deploy_node.url("dashboard"), watcher))
        participants = [
            start_fedq(
                "participant",
                *app,
                *["--id", f"p{i}", "--partition", f"{i}/2"],
                *["--broker", deploy_node.url(f"p{i}")],
                log=tmp_path / f"p{i}.log",
            )
            for i in range(2)
        ]
        assert coordinator.wait(timeout=60) == 0, (tmp_path / "coordinator.log").read_text()
        for i, p in enumerate(participants):
            assert p.wait(timeout=30) == 0, (tmp_path / f"p{i}.log").read_text()
        data = read_report(report)
        assert data["rounds_completed"] == 2 and data["updates_incorporated"] == 4
        assert data["rejected_by_reason"] == {"forged": 1}
        [dead] = asyncio.run(drain(deploy_node.url("coordinator"), Topology(FEDERATION).rejected))
        assert str(dead.headers["x-fedq-reason"]).startswith("forged")
        seen = asyncio.run(drain(deploy_node.url("dashboard"), watcher))
        types = {d.type for d in seen}
        assert {MESSAGE_TYPES["join"], MESSAGE_TYPES["federation.done"]} <= types
        written = [path.read_text() for path in [report, *tmp_path.glob("*.log")]]
        for user, password in deploy_node.passwords.items():  # logs and report: redacted
            assert not any(password in text for text in written), user
    finally:
        for p in (coordinator, *participants):
            if p.poll() is None:
                p.kill()
                p.wait()


async def forge_update_once_routable(url: str, claims: str) -> None:
    """Publish an update claiming to be from ``claims`` as soon as the coordinator has
    declared and bound the updates queue."""
    meta = UpdateMeta(
        federation=FEDERATION, participant=claims, round=1, base_version=0, num_examples=100
    )
    body = encode_message(
        meta, {k: np.ones_like(v) for k, v in SyntheticApp().initial_weights().items()}
    )
    async with AmqpTransport(url) as transport:

        async def published() -> bool:
            try:
                await transport.publish(
                    Topology(FEDERATION).updates,
                    UPDATE_KEY,
                    body,
                    message_id=meta.update_id,
                    type=MESSAGE_TYPES["update"],
                    mandatory=True,
                )
            except TransportError:  # no exchange, or no queue bound, yet
                return False
            return True

        await until_async(published, what="the forged update routed to the updates queue")


async def watch_control(url: str, queue: str) -> None:
    """What the dashboard does, with its user's permissions: its own queue, bound with # to
    fedq.F.control. Not exclusive, as the dashboard's is, but expiring: the test drains it
    afterwards, on another connection."""
    async with AmqpTransport(url) as transport:
        await transport.declare_queue(
            queue, durable=False, arguments={"x-expires": 60_000, "x-max-length": 100_000}
        )
        await transport.bind(queue, Topology(FEDERATION).control, "#")


async def refusal(
    url: str, attempt: Callable[[aio_pika.abc.AbstractChannel], Awaitable[Any]]
) -> str | None:
    """The broker's ACCESS_REFUSED for ``attempt``, or None if it was allowed."""
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        try:
            await attempt(channel)
        except aiormq.exceptions.ChannelAccessRefused as exc:
            return str(exc)
    return None


async def declare_topology(url: str) -> None:
    async with AmqpTransport(url) as transport:
        await Topology(FEDERATION).declare_core(transport)


def consume(queue: str) -> Callable[[aio_pika.abc.AbstractChannel], Awaitable[Any]]:
    async def ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        pass

    async def attempt(channel: aio_pika.abc.AbstractChannel) -> None:
        await (await channel.get_queue(queue, ensure=False)).consume(ignore)

    return attempt


def publish(exchange: str, key: str) -> Callable[[aio_pika.abc.AbstractChannel], Awaitable[Any]]:
    async def attempt(channel: aio_pika.abc.AbstractChannel) -> None:
        target = (
            channel.default_exchange
            if exchange == ""
            else await channel.get_exchange(exchange, ensure=False)
        )
        await target.publish(aio_pika.Message(b"{}"), routing_key=key)

    return attempt


@pytest.mark.parametrize(
    "queue",
    ["fedq.demo.updates", "fedq.demo.rejected", "fedq.demo.coordinator", "fedq.demo.model.p0"],
)
def test_a_participant_reads_no_queue_but_its_own(deploy_node, queue):
    asyncio.run(declare_topology(deploy_node.url("coordinator")))
    refused = asyncio.run(refusal(deploy_node.url("p1"), consume(queue)))
    assert refused is not None and "ACCESS_REFUSED" in refused and queue in refused


@pytest.mark.parametrize(
    ("exchange", "key"),
    [
        ("fedq.demo.models", ""),  # a model of its own making
        ("fedq.demo.control", "federation.done"),  # the end of the federation
        ("fedq.demo.control", "round.open"),
        ("fedq.demo.control", "heartbeat.p0"),  # another participant's liveness
        ("", "fedq.demo.updates"),  # around the exchange, through the default one
    ],
)
def test_a_participant_cannot_speak_for_the_coordinator_or_another_participant(
    deploy_node, exchange, key
):
    asyncio.run(declare_topology(deploy_node.url("coordinator")))
    refused = asyncio.run(refusal(deploy_node.url("p1"), publish(exchange, key)))
    assert refused is not None and "ACCESS_REFUSED" in refused


def test_the_dashboard_user_sees_queue_depths_and_prometheus_serves_metrics(deploy_node):
    asyncio.run(declare_topology(deploy_node.url("coordinator")))
    api = f"http://127.0.0.1:{deploy_node.management_port}/api/queues/{VHOST}"
    queues = httpx.get(api, auth=("dashboard", deploy_node.passwords["dashboard"]), timeout=10)
    assert queues.status_code == 200, queues.text
    assert {"fedq.demo.updates", "fedq.demo.rejected"} <= {q["name"] for q in queues.json()}
    assert httpx.get(api, auth=("p0", deploy_node.passwords["p0"]), timeout=10).status_code == 401
    metrics = httpx.get(f"http://127.0.0.1:{deploy_node.prometheus_port}/metrics", timeout=10)
    assert metrics.status_code == 200 and "rabbitmq_queues" in metrics.text


def test_the_admin_user_tears_the_federation_down(deploy_node):
    """deploy/README.md's teardown, as admin: it reads the management API, then deletes."""
    asyncio.run(declare_topology(deploy_node.url("coordinator")))
    auth = ("admin", deploy_node.passwords["admin"])
    management = f"http://127.0.0.1:{deploy_node.management_port}"
    result = run_fedq(
        "teardown",
        *["--federation", FEDERATION, "--broker", deploy_node.url("admin")],
        # Its own port here; with no --management-url it is the broker's host, port 15672.
        *["--management-url", f"http://admin:{auth[1]}@127.0.0.1:{deploy_node.management_port}"],
    )
    assert result.returncode == 0, result.stdout + result.stderr
    queues = httpx.get(f"{management}/api/queues/{VHOST}", auth=auth, timeout=10).json()
    assert not [q["name"] for q in queues if q["name"].startswith(f"fedq.{FEDERATION}.")]
