"""Settings come from flags, then ``FEDQ_*`` environment variables, then a ``--config``
TOML file, then the defaults, for the coordinator's and the participant's alike; a bad
value is one line naming the flag (and the variable it came from)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import BaseModel
from typer.testing import CliRunner

from fedq.cli import app as fedq_app
from fedq.coordinator.config import CoordinatorConfig
from fedq.experiments.settings import Emulation
from fedq.options import Given, OptionsError, with_settings
from fedq.participant.app import TrainConfig
from fedq.participant.config import ParticipantConfig
from tests.helpers import FEDQ, fedq_env

pytestmark = [pytest.mark.broker, pytest.mark.processes]

COORDINATOR = (CoordinatorConfig,)
PARTICIPANT = (ParticipantConfig, TrainConfig, Emulation)


def given(
    models: tuple[type[BaseModel], ...], args: list[str], env: dict[str, str] | None = None
) -> Given:
    """What a command taking ``models`` receives, run with ``args`` in ``env``."""
    found: list[Given] = []

    @with_settings(*models)
    def command(given: Given) -> None:
        found.append(given)

    cli = typer.Typer()
    cli.command()(command)
    result = CliRunner().invoke(cli, args, env=env)
    if result.exception is not None:
        raise result.exception
    assert result.exit_code == 0, result.output
    return found[0]


def coordinator(args: list[str], env: dict[str, str] | None = None) -> CoordinatorConfig:
    return given(COORDINATOR, args, env).build(
        CoordinatorConfig, {"participants": 4}, federation="f", state_dir=Path("s")
    )


def participant(args: list[str], env: dict[str, str] | None = None) -> ParticipantConfig:
    return given(PARTICIPANT, args, env).build(ParticipantConfig, federation="f")


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "fedq.toml"
    path.write_text('rounds = 9\nround-timeout = 7.0\nupdate_codec = "fp16"\nepochs = 3\n')
    return path


def test_the_coordinators_settings_flags_over_environment_over_file_over_defaults(config_file):
    assert coordinator(["--rounds", "1"]).round_timeout == 120.0  # the default
    file = ["--config", str(config_file)]
    from_file = given(COORDINATOR + PARTICIPANT, file).build(
        CoordinatorConfig, federation="f", state_dir=Path("s"), participants=4
    )
    assert (from_file.rounds, from_file.round_timeout) == (9, 7.0)
    env = {"FEDQ_ROUNDS": "5"}
    both = given(COORDINATOR + PARTICIPANT, file, env).build(
        CoordinatorConfig, federation="f", state_dir=Path("s"), participants=4
    )
    assert (both.rounds, both.round_timeout) == (5, 7.0)
    assert coordinator(["--rounds", "2"], env).rounds == 2


def test_the_participants_settings_flags_over_environment_over_file_over_defaults(config_file):
    assert participant(["--id", "p"]).update_codec == "raw"  # the default
    file = ["--id", "p", "--config", str(config_file)]
    settings = given(COORDINATOR + PARTICIPANT, file)
    assert settings.build(ParticipantConfig, federation="f").update_codec == "fp16"
    assert settings.build(TrainConfig).epochs == 3
    env = {"FEDQ_UPDATE_CODEC": "int8", "FEDQ_EPOCHS": "4", "FEDQ_PARTICIPANT_ID": "q"}
    settings = given(COORDINATOR + PARTICIPANT, file[2:], env)
    config = settings.build(ParticipantConfig, federation="f")
    assert (config.participant_id, config.update_codec) == ("q", "int8")
    assert settings.build(TrainConfig).epochs == 4
    flags = ["--codec", "topk", "--epochs", "5", *file]
    settings = given(COORDINATOR + PARTICIPANT, flags, env)
    assert settings.build(ParticipantConfig, federation="f").update_codec == "topk"
    assert settings.build(TrainConfig).epochs == 5


@pytest.mark.parametrize(
    ("build", "env", "says"),
    [
        (coordinator, {"FEDQ_ROUND_TIMEOUT": "0"}, "FEDQ_ROUND_TIMEOUT (--round-timeout): Input"),
        (participant, {"FEDQ_PARTITION_SHARE": "5/4"}, "FEDQ_PARTITION_SHARE (--partition): '5/4'"),
        (participant, {"FEDQ_UPDATE_CODEC": "zip"}, "FEDQ_UPDATE_CODEC (--codec): unknown codec"),
    ],
)
def test_a_bad_environment_variable_is_named_with_its_flag(build, env, says):
    args = ["--rounds", "1"] if build is coordinator else ["--id", "p"]
    with pytest.raises(OptionsError) as raised:
        build(args, env)
    assert str(raised.value).startswith(says)


def test_a_missing_setting_says_every_way_to_give_it():
    with pytest.raises(OptionsError, match=r"--id is required \(a flag, FEDQ_PARTICIPANT_ID or"):
        participant([])


#: Variables fedq or its tests read for something else than a command's setting.
TAKEN = {
    "FEDQ_LOG_LEVEL", "FEDQ_SYNTHETIC_PARAMS", "FEDQ_FMNIST_DIR",
    "FEDQ_FAILPOINT", "FEDQ_MALLOC_TUNING", "FEDQ_ARTIFACTS", "FEDQ_SKIP_SETUP", "FEDQ_VENV",
}  # fmt: skip


#: Variables two flags give, being one setting: the participant's --codec is simulate's
#: --update-codec (what the participants send).
ONE_SETTING = {"FEDQ_UPDATE_CODEC": {"--codec", "--update-codec"}}


def test_no_generated_variable_takes_a_name_fedq_uses_for_something_else():
    """FEDQ_BROKER_URL, FEDQ_STATE_DIR and FEDQ_PARTITION keep the meaning they had (the
    broker's URL, the state dir, the partition scheme); no other generated variable is one
    fedq already reads, and each is one flag's, whichever command takes it."""
    meaning: dict[str, set[str]] = {}
    for name, command in _commands():
        for param in command.params:
            for env in [param.envvar] if isinstance(param.envvar, str) else param.envvar or []:
                meaning.setdefault(env, set()).add(param.opts[0])
                assert env not in TAKEN, f"fedq {name} {param.opts[0]}"
                assert not env.startswith(("FEDQ_PASSWORD_", "FEDQ_TEST_")), env
    assert meaning["FEDQ_BROKER_URL"] == {"--broker"}
    assert meaning["FEDQ_STATE_DIR"] == {"--state-dir"}
    assert meaning["FEDQ_PARTITION"] == {"--partition-scheme"}
    for env, flags in ONE_SETTING.items():
        assert meaning.pop(env) == flags
    assert all(len(flags) == 1 for flags in meaning.values()), meaning


def _commands() -> list[tuple[str, Any]]:
    group = typer.main.get_command(fedq_app)
    found = []
    todo = [("", group)]
    while todo:
        prefix, command = todo.pop()
        for name, sub in getattr(command, "commands", {}).items():
            todo.append((f"{prefix} {name}".strip(), sub))
        if not hasattr(command, "commands"):
            found.append((prefix, command))
    return found


def test_simulate_takes_its_settings_from_the_environment_over_its_config_file(tmp_path):
    config = tmp_path / "fedq.toml"
    config.write_text("participants = 2\nrounds = 9\n")
    report = tmp_path / "report.json"
    result = subprocess.run(
        [*FEDQ, "simulate", "--app", "fedq.apps.synthetic:app", "--config", str(config),
         "--state-dir", str(tmp_path), "--report", str(report)],
        capture_output=True, text=True, timeout=300,
        env=fedq_env() | {"FEDQ_ROUNDS": "2", "FEDQ_EPOCHS": "2"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["model_version"] == 2
    assert data["history"][0]["participants"] == ["p0", "p1"]


def test_help_lists_every_choice_of_every_registry():
    """Aggregators, server optimizers, codecs, modes and partition schemes are listed from
    their registries, so a new one is in --help without editing a help text."""
    from fedq.coordinator.config import MODES_HELP
    from fedq.coordinator.modes import MODES
    from fedq.coordinator.strategies import AGGREGATORS, OPTIMIZERS
    from fedq.messages.codecs import CODECS
    from fedq.participant.scheme import SCHEMES

    assert set(MODES_HELP) == set(MODES)
    runner = CliRunner()
    for command in (["simulate"], ["participant"]):
        text = runner.invoke(fedq_app, [*command, "--help"], env={"COLUMNS": "1000"}).output
        assert all(codec in text for codec in CODECS)
        assert all(spec in text for spec, _ in SCHEMES.values())
    text = runner.invoke(fedq_app, ["simulate", "--help"], env={"COLUMNS": "1000"}).output
    assert all(f"{mode}:" in text for mode in MODES)
    assert all(name in text for name in [*AGGREGATORS, *OPTIMIZERS])
    assert "exponent=0.5 (sparse_mean)" in text


def test_a_config_file_key_is_the_settings_name_or_its_flags(tmp_path):
    """``id`` or ``participant_id``, ``codec`` or ``update_codec``: a user writes the flag
    the help shows; the setting's own name works too."""
    config = tmp_path / "fedq.toml"
    config.write_text('id = "px"\ncodec = "fp16"\ndelay = 2.5\n')
    settings = given(PARTICIPANT, ["--federation", "f", "--config", str(config)])
    built = settings.build(ParticipantConfig)
    assert (built.participant_id, built.update_codec) == ("px", "fp16")
    assert settings.build(Emulation).delay_seconds == 2.5
    config.write_text('participant_id = "py"\nupdate-codec = "int8"\n')
    built = given(PARTICIPANT, ["--federation", "f", "--config", str(config)]).build(
        ParticipantConfig
    )
    assert (built.participant_id, built.update_codec) == ("py", "int8")
