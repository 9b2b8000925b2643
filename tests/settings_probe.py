"""Whether each option of one ``fedq`` command reaches the command when given only by its
``FEDQ_*`` variable, or only by a ``--config`` file: ``python -m tests.settings_probe
COMMAND... {env,config}`` prints ``{option: verdict}`` as JSON, ``"reached"`` for each one
that did.

The command runs once per option, in this process's working directory, with the option
set to a value of its type and every other required setting given by its flag. It
*reached* the command when the command builds the settings model that declares it and
the value given is the one in it; the run is stopped there, before anything happens.
A command that never builds that model (it ignores the option), or builds it without the
value, runs on until it does something (stopped before any broker or file is touched by
:func:`fedq.cli.running.run`) and is reported with what it did instead.
"""

from __future__ import annotations

import enum
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any

import click
import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from typer.testing import CliRunner

import fedq.cli
from fedq.options import SETTINGS_ATTR, Given, _flag_type, _is_pairs, flag_of

#: A valid value for a setting every run needs (by field name), when it is not the one probed.
BASELINE = {
    "app_spec": "fedq.apps.synthetic:app",
    "participants": "2",
    "rounds": "1",
    "participant_id": "p",
    "federation": "probe",
    "out": "probe-out.json",
    "state_dir": "probe-state",
}


class Reached(Exception):
    """The command built the option's model with the value given."""


class Stopped(Exception):
    """The command got as far as running something, without building the option's model."""


def command_of(path: list[str]) -> click.Command:
    command: Any = typer.main.get_command(fedq.cli.app)
    for name in path:
        command = command.commands[name]
    return typing.cast(click.Command, command)


def sample(info: FieldInfo) -> tuple[str, Any, Any]:
    """(the variable's text, the config file's value, what the command must be given)."""
    kind = _flag_type(info.annotation)
    if _is_pairs(info):
        return "k=1 j=x", {"k": 1, "j": "x"}, {"k": 1, "j": "x"}
    if typing.get_origin(kind) is list:  # paths are separated as in PATH, other values by spaces
        separator = os.pathsep if typing.get_args(kind)[0] is Path else " "
        return f"a{separator}b", ["a", "b"], ["a", "b"]
    if kind is bool:
        return "true", True, True
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        last = list(kind)[-1].value
        return last, last, last
    if kind is int:
        return "3", 3, 3
    if kind is float:
        return "0.5", 0.5, 0.5
    return "probe-value", "probe-value", "probe-value"


def plain(value: Any) -> Any:
    """``value`` with paths as text, to compare a flag's Path with a file's string."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def probe(path: list[str], name: str, owner: type[BaseModel], source: str) -> str:
    fields: dict[str, type[BaseModel]] = getattr(command_of(path).callback, SETTINGS_ATTR)
    env_text, file_value, _ = sample(owner.model_fields[name])
    args = list(path)
    for other, model in fields.items():
        info = model.model_fields[other]
        if other != name and (info.is_required() or other == "app_spec"):
            args += [flag_of(model, other), BASELINE.get(other, "x")]
    env: dict[str, str] = {}
    if source == "env":
        param = next(p for p in command_of(path).params if p.name == name)
        env[str(param.envvar)] = env_text
    else:
        config = Path("probe.toml")
        key = name.replace("_", "-")
        if isinstance(file_value, dict):
            config.write_text(
                f"[{key}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in file_value.items())
            )
        else:
            config.write_text(f"{key} = {json.dumps(file_value)}\n")
        args += ["--config", str(config)]
    result = CliRunner().invoke(fedq.cli.app, args, env=env)
    if isinstance(result.exception, Reached):
        return "reached"
    return f"not reached: {result.exception!r} {result.output.strip()[-300:]}"


def main() -> None:
    *path, source = sys.argv[1:]
    fields: dict[str, type[BaseModel]] = getattr(command_of(path).callback, SETTINGS_ATTR)
    target: dict[str, Any] = {}
    build = Given.build

    def watched(self: Given, model: type[Any], defaults: Any = None, **fixed: Any) -> Any:
        name = target["name"]
        if model is fields[name] and name in self.values:
            if plain(self.values[name]) == plain(target["expected"]):
                raise Reached
            raise Stopped(f"built with {self.values[name]!r}")
        return build(self, model, defaults, **fixed)

    def stop(coroutine: Any) -> None:
        coroutine.close()
        raise Stopped("ran without building the option's model")

    Given.build = watched  # type: ignore[method-assign]
    for module in list(sys.modules.values()):
        if (module.__name__ or "").startswith("fedq.cli") and hasattr(module, "run"):
            module.run = stop  # type: ignore[attr-defined]
    verdicts = {}
    for name, owner in fields.items():
        target.update(name=name, expected=sample(owner.model_fields[name])[2])
        verdicts[flag_of(owner, name)] = probe(path, name, owner, source)
    print(json.dumps(verdicts))


if __name__ == "__main__":
    main()
