"""A user's mistakes end in one line that says what to do, never a traceback."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from fedq.apps.synthetic import SyntheticApp
from fedq.cli import app as fedq_app
from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint
from fedq.options import SETTINGS_ATTR
from fedq.participant.app import AppError, Partition, TrainConfig, train_on
from fedq.simulation import simulation_name
from tests.broken_app import InPlaceApp
from tests.conftest import BROKER_URL
from tests.helpers import FEDQ, fedq_env, run_fedq

pytestmark = [pytest.mark.broker, pytest.mark.processes, pytest.mark.keras]


def discovered() -> tuple[list[list[str]], list[list[str]]]:
    """(every group's path, every command's path) of ``fedq``, from its typer app: a new
    command is covered by the tests below without being listed anywhere."""
    groups: list[list[str]] = []
    commands: list[list[str]] = []
    todo: list[tuple[list[str], Any]] = [([], typer.main.get_command(fedq_app))]
    while todo:
        path, command = todo.pop(0)
        if hasattr(command, "commands"):  # a group (typer carries its own click)
            groups.append(path)
            todo += [([*path, name], sub) for name, sub in command.commands.items()]
        else:
            commands.append(path)
    return groups, commands


GROUPS, COMMANDS = discovered()


def command_at(path: list[str]) -> Any:
    command: Any = typer.main.get_command(fedq_app)
    for name in path:
        command = command.commands[name]
    return command


def named(path: list[str]) -> str:
    return " ".join(path) or "fedq"


def one_line_error(result) -> str:
    """The error is one line, the last thing printed, and there is no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("fedq:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    return errors[0]


def test_errors_before_the_run_are_all_that_is_printed(tmp_path):
    result = run_fedq("simulate", "--app", "nope:app", "--state-dir", str(tmp_path))
    one_line_error(result)
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("app", "says"),
    [
        ("fedq.apps.nope:app", "cannot import 'fedq.apps.nope'"),
        ("fedq.apps.dense:nope", "has no attribute 'nope'"),
        ("fedq.apps.dense", "must look like package.module:attr"),
        ("fedq.apps.dense:build_model", "not an app"),
    ],
)
def test_a_wrong_app_path_is_one_clear_line(tmp_path, app, says):
    result = run_fedq("simulate", "--app", app, "--state-dir", str(tmp_path))
    assert says in one_line_error(result)


def test_an_unreachable_broker_is_one_line_saying_what_to_do():
    result = run_fedq("broker", "check", "--broker", "amqp://guest:guest@127.0.0.1:1/")
    line = one_line_error(result)
    assert "cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:1/" in line
    assert "rabbitmq-server -detached" in line


@pytest.mark.parametrize(
    ("url", "says", "never"),
    [
        # The broker answers, then will not open the vhost: not "start it".
        (
            "amqp://guest:guest@127.0.0.1:5672/no-such-vhost",
            "would not open the vhost 'no-such-vhost'",
            "rabbitmq-server -detached",
        ),
        (
            "amqp://guest:guest@no-such-host.invalid:5672/",
            "cannot resolve the host 'no-such-host.invalid'",
            "rabbitmq-server -detached",
        ),
    ],
)
def test_a_broker_error_points_at_its_cause(url, says, never):
    line = one_line_error(run_fedq("broker", "check", "--broker", url))
    assert says in line and never not in line


def test_a_wrong_password_is_reported_without_echoing_it():
    result = run_fedq("broker", "check", "--broker", "amqp://guest:hunter2@127.0.0.1:5672/")
    line = one_line_error(result)
    assert "refused the login" in line and "hunter2" not in line


def test_a_bad_url_is_one_line():
    line = one_line_error(run_fedq("broker", "check", "--broker", "http://example"))
    assert "bad broker URL" in line


def test_broker_check_passes_on_the_real_broker():
    result = run_fedq("broker", "check", "--broker", BROKER_URL)
    assert result.returncode == 0 and "reachable" in result.stderr


def test_an_impossible_quorum_is_one_line(tmp_path):
    result = run_fedq(
        "simulate", "--participants", "3", "--quorum", "4", "--state-dir", str(tmp_path)
    )
    assert "--quorum (4) <= --participants (3)" in one_line_error(result)


def test_history_of_a_missing_state_dir_is_one_line(tmp_path):
    assert "no ledger under" in one_line_error(run_fedq("history", "--state-dir", str(tmp_path)))


def test_every_command_has_help():
    for command in COMMANDS:
        result = run_fedq(*command, "--help")
        assert result.returncode == 0 and "Usage" in result.stdout


def test_simulate_then_history_shows_the_rounds(tmp_path):
    run = run_fedq(
        "simulate",
        "--app",
        "fedq.apps.synthetic:app",
        "--participants",
        "2",
        "--rounds",
        "2",
        "--federation",
        "hist",
        "--state-dir",
        str(tmp_path),
    )
    assert run.returncode == 0, run.stderr
    for where in (tmp_path, tmp_path / "hist"):  # the state dir or the federation's folder
        table = run_fedq("history", "--state-dir", str(where))
        assert table.returncode == 0, table.stderr
        assert "federation hist" in table.stdout and "p0, p1" in table.stdout
    plotted = run_fedq("history", "--state-dir", str(tmp_path), "--plot", str(tmp_path / "h.png"))
    assert plotted.returncode == 0, plotted.stderr
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    as_json = json.loads(run_fedq("history", "--state-dir", str(tmp_path), "--json").stdout)
    assert [r["version"] for r in as_json["rounds"]] == [1, 2]
    assert as_json["rounds"][0]["participants"] == ["p0", "p1"]


def simulate_briefly(app: str, state_dir) -> subprocess.CompletedProcess[str]:
    """`fedq simulate` of one round with two participants of ``app``."""
    rounds = ["--participants", "2", "--rounds", "1", "--state-dir", str(state_dir)]
    return run_fedq("simulate", "--app", app, *rounds)


def test_missing_fashion_mnist_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDQ_FMNIST_DIR", str(tmp_path))
    result = simulate_briefly("fedq.apps.fmnist:app", tmp_path)
    assert "apt-get install dataset-fashion-mnist" in one_line_error(result)


def test_an_app_that_fails_to_train_is_one_line_naming_the_error(tmp_path):
    line = one_line_error(simulate_briefly("tests.broken_app:app", tmp_path))
    assert "the app failed to train on model v0: ValueError: labels have 3 classes" in line


def test_an_app_that_returns_the_arrays_it_trained_in_place_is_refused_in_one_line(tmp_path):
    line = one_line_error(simulate_briefly("tests.broken_app:in_place", tmp_path))
    shared = "share memory with the weights it was given (t0, t1, t2 and 1 more)"
    assert f"train returned arrays that {shared}: the delta would be all zeros" in line


@pytest.mark.parametrize("view", [False, True], ids=["the arrays", "views of them"])
async def test_train_on_refuses_arrays_that_share_memory_with_those_given(view):
    given = {"w": np.zeros(10, np.float32)}
    with pytest.raises(AppError, match=r"share memory .* \(w\): the delta would be all zeros"):
        await train_on(InPlaceApp(params=10, view=view), given, Partition(), TrainConfig())
    fresh = await train_on(SyntheticApp(params=10), given, Partition(), TrainConfig())
    assert not np.shares_memory(fresh.weights["w"], given["w"])


@pytest.mark.parametrize("command", GROUPS + COMMANDS, ids=named)
def test_every_help_text_renders_whole_sentences(command):
    """Rich markup once swallowed "[default: N]" and left "a round ."; nothing may be lost."""
    result = subprocess.run(
        [*FEDQ, *command, "--help"],
        capture_output=True,
        text=True,
        env={**fedq_env(), "COLUMNS": "300", "NO_COLOR": "1"},
        check=True,
    )
    text = result.stdout
    assert "Usage:" in text
    # " ." is a sentence whose end was swallowed, or an empty one; "..." is an ellipsis.
    stray = [line.strip() for line in text.splitlines() if re.search(r"\s\.(?!\.\.)", line)]
    assert not stray


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (
            ["-n", "4", "--quorum", "9"],
            "need 1 <= --min-quorum (9) <= --quorum (9) <= --participants (4)",
        ),
        (["--aggregator", "geomedian"], "aggregator 'geomedian': choose one of clipped_mean, krum"),
        (["-n", "4", "--aggregator", "krum"], "krum"),
        (
            ["--aggregator-option", "trim_fraction"],
            "--aggregator-option 'trim_fraction': expected KEY=VALUE",
        ),
        (["--aggregator", "median", "--aggregator-option", "clip_norm=1"], "clip_norm"),
        (["--mode", "sync", "--quorum", "2"], "sync mode takes every participant"),
        (["--round-timeout", "0"], "--round-timeout: Input should be greater than 0"),
        (["--config", "/nonexistent/fedq.toml"], "--config /nonexistent/fedq.toml: cannot read it"),
        (["--dp-clip", "1", "--aggregator", "median"], "--dp-clip replaces the aggregator"),
    ],
)
def test_a_bad_coordinator_setting_is_one_line_naming_it(tmp_path, flags, says):
    result = run_fedq(
        "simulate", "--app", "fedq.apps.synthetic:app", *flags, "--state-dir", str(tmp_path)
    )
    assert says in one_line_error(result)


def test_settings_come_from_a_config_file_and_flags_win(tmp_path):
    config = tmp_path / "fedq.toml"
    config.write_text(
        'mode = "async"\nquorum = 2\nparticipants = 3\nrounds = 9\nserver-optimizer = "fedavgm"\n'
        "[optimizer_options]\nmomentum = 0.5\n"
    )
    report = tmp_path / "report.json"
    result = run_fedq(
        "simulate", "--app", "fedq.apps.synthetic:app", "--config", str(config),
        "--rounds", "2", "--state-dir", str(tmp_path), "--report", str(report),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["mode"] == "async" and data["model_version"] == 2
    assert all(row["n_updates"] == 2 and row["round"] is None for row in data["history"])


def test_an_unknown_config_file_setting_is_named(tmp_path):
    config = tmp_path / "fedq.toml"
    config.write_text("quorom = 2\n")
    result = run_fedq("simulate", "--app", "fedq.apps.synthetic:app", "--config", str(config))
    assert "--config: unknown setting 'quorom'" in one_line_error(result)


def test_a_ledger_of_another_schema_is_one_line_for_history(tmp_path):
    import sqlite3

    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    db.execute("CREATE TABLE versions (version INTEGER PRIMARY KEY)")
    db.commit()
    db.close()
    line = one_line_error(run_fedq("history", "--state-dir", str(tmp_path)))
    assert "use a new --state-dir" in line


def test_a_users_own_aggregator_plugs_in_by_its_path(tmp_path):
    report = tmp_path / "report.json"
    result = run_fedq(
        "simulate", "--app", "fedq.apps.synthetic:app", "-n", "3", "--rounds", "1",
        "--aggregator", "tests.user_strategy:LargestUpdate", "--aggregator-option", "factor=2",
        "--state-dir", str(tmp_path), "--report", str(report), "--federation", "mine",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    model = load_checkpoint(checkpoint_path(tmp_path / "mine" / "models", 1))
    for tensor in model.values():  # p2 has the most examples: its delta alone, doubled
        np.testing.assert_allclose(tensor, 2 * SyntheticApp.delta_value(2))


def test_version_and_short_help():
    version = run_fedq("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"fedq {metadata.version('fedq')}"
    for command in ([], ["simulate"], ["broker", "check"], ["deploy", "users"]):
        short, long = run_fedq(*command, "-h"), run_fedq(*command, "--help")
        assert short.returncode == 0 and short.stdout == long.stdout, command


@pytest.mark.parametrize("command", COMMANDS, ids=named)
def test_help_names_no_python_types(command):
    """Help reads TEXT, INTEGER, FLOAT, PATH, a list as TEXT ..., a flag with no type:
    never ``<bool>``, ``<list[str]>`` or another Python type name."""
    shown = run_fedq(*command, "--help").stdout
    assert not re.search(r"<(bool|str|int|float|path|list\[[^>]*\])>", shown), shown


def help_of(path: list[str], columns: int) -> str:
    """``fedq PATH --help`` as a terminal ``columns`` wide shows it (no colour)."""
    result = subprocess.run(
        [*FEDQ, *path, "--help"],
        capture_output=True,
        text=True,
        env={**fedq_env(), "COLUMNS": str(columns), "NO_COLOR": "1"},
        check=True,
    )
    return result.stdout


#: A default written in another form than ``[default: X]``.
OTHER_FORMS = re.compile(r"\(default\b|\bdefaults? (to|is)\b|\bdefault:|\bby default\b", re.I)


@pytest.mark.parametrize("command", COMMANDS, ids=named)
def test_help_shows_every_default_one_way(command):
    """``[default: X]`` and nothing else: no "(default 5)" or "defaults to" in a sentence,
    no default that says nothing (None, an empty list) or names this machine's paths."""
    text = (
        CliRunner()
        .invoke(fedq_app, [*command, "--help"], env={"COLUMNS": "1000", "NO_COLOR": "1"})
        .output
    )
    shown = re.findall(r"\[default: ([^\]]*)\]", text)
    assert shown, text  # every command has an option with a default
    rest = re.sub(r"\[default: [^\]]*\]", "", text)
    assert not OTHER_FORMS.search(rest), OTHER_FORMS.search(rest)
    for value in shown:
        assert value.strip() not in ("", "None", "[]", "{}", "()", "False"), value
        assert not value.startswith(("/", "~")) and os.getcwd() not in value, value
        assert str(Path.home()) not in value, value


@pytest.mark.parametrize("command", COMMANDS, ids=named)
def test_a_command_description_is_whole_paragraphs(command):
    """On a terminal wide enough, each paragraph of a command's description is one line:
    never a sentence broken where its docstring's source line ended."""
    text = (
        CliRunner()
        .invoke(fedq_app, [*command, "--help"], env={"COLUMNS": "1000", "NO_COLOR": "1"})
        .output
    )
    description = text.split("Usage:")[1].split("╭")[0].strip().split("\n", 1)[1]
    for paragraph in re.split(r"\n\s*\n", description.strip()):
        assert len(paragraph.strip().splitlines()) == 1, paragraph


@pytest.mark.parametrize("group", GROUPS, ids=named)
def test_each_command_summary_is_a_whole_sentence_on_one_line_of_80_columns(group):
    """The command list of ``fedq --help`` (and of each group's) shows each command's
    summary whole, on one line of the default 80-column terminal: never cut at "..." nor
    wrapped mid-sentence onto a line of its own."""
    text = help_of(group, 80)
    panel = text.split("─ Commands ")[1].split("╰")[0].splitlines()[1:]
    rows = [line[2:-2].rstrip() for line in panel]
    assert all(len(line) <= 80 for line in text.splitlines())
    assert all(not row.startswith(" ") for row in rows), rows  # a continued summary
    summaries = dict(row.split(None, 1) for row in rows)
    expected = command_at(group).commands
    assert list(summaries) == list(expected)
    for name, sub in expected.items():
        whole = sub.short_help or inspect.cleandoc(sub.help or "").split("\n\n")[0]
        assert summaries[name] == " ".join(whole.split()), name
        assert summaries[name].endswith(".") and not summaries[name].endswith("..."), name


@pytest.mark.parametrize("source", ["env", "config"])
@pytest.mark.parametrize("command", COMMANDS, ids=named)
def test_every_option_reaches_the_command_from_its_variable_and_a_config_file(
    command, source, tmp_path
):
    """Each option of every command, given only by its ``FEDQ_*`` variable (or only by a
    ``--config`` file), is what the command gets (tests/settings_probe.py runs it once per
    option and stops it there); an option outside the settings models has neither."""
    found = command_at(command)
    fields = getattr(found.callback, SETTINGS_ATTR, {})
    options = {p.name for p in found.params if p.param_type_name == "option"}
    assert options - {"config_file"} == set(fields), named(command)
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "tests.settings_probe", *command, source],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**fedq_env(), "PYTHONPATH": str(root)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    verdicts = json.loads(result.stdout.splitlines()[-1])
    assert len(verdicts) == len(fields)
    missed = {flag: verdict for flag, verdict in verdicts.items() if verdict != "reached"}
    assert not missed, missed


def test_a_config_file_may_be_named_by_fedq_config(tmp_path):
    config = tmp_path / "fedq.toml"
    config.write_text(f'state-dir = "{tmp_path / "elsewhere"}"\n')
    result = subprocess.run(
        [*FEDQ, "history"], capture_output=True, text=True, timeout=120,
        env={**fedq_env(), "FEDQ_CONFIG": str(config)},
    )  # fmt: skip
    assert f"no ledger under {tmp_path / 'elsewhere'}" in one_line_error(result)


def test_a_flag_wins_over_its_variable_which_wins_over_the_config_file(tmp_path):
    config = tmp_path / "fedq.toml"
    config.write_text(f'state-dir = "{tmp_path / "from-file"}"\n')
    env = {**fedq_env(), "FEDQ_CONFIG": str(config)}

    def history(*args: str, **more: str) -> str:
        run = subprocess.run(
            [*FEDQ, "history", *args], capture_output=True, text=True, timeout=120,
            env={**env, **more},
        )  # fmt: skip
        return one_line_error(run)

    assert "from-file" in history()
    assert "from-env" in history(FEDQ_STATE_DIR=str(tmp_path / "from-env"))
    flag = ["--state-dir", str(tmp_path / "from-flag")]
    assert "from-flag" in history(*flag, FEDQ_STATE_DIR=str(tmp_path / "from-env"))


def test_a_simulation_named_by_its_time_gets_a_random_part_too():
    """Two `fedq simulate` runs started in the same second on one broker must not share a
    federation: the first to finish would tear down the other's queues (CI caught a JAX
    run losing its model queue so)."""
    names = {simulation_name() for _ in range(50)}
    assert len(names) > 1, names  # the same second, yet not one name
    assert all(re.fullmatch(r"sim-\d{8}-\d{6}-[0-9a-f]{4}", name) for name in names), names
