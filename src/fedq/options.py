"""The coordinator's flags, made from :class:`~fedq.coordinator.config.CoordinatorConfig`.

Every field of the config is a flag of each command that runs a coordinator (``--field-
name``, its description as help), so an option is declared once, in the config. Values
come from the flags a user gave, then a TOML file (``--config``), then the config's
defaults; a mistake is one line naming the flag.
"""

from __future__ import annotations

import enum
import functools
import inspect
import json
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from fedq.coordinator.config import CoordinatorConfig

F = TypeVar("F", bound=Callable[..., Any])

#: The parameter of a decorated command that receives the flags the user gave.
OPTIONS = "coordinator_options"


class OptionsError(ValueError):
    """A flag or config-file value the coordinator cannot take; one line."""


def _extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def flag_of(name: str) -> str:
    """The long flag of config field ``name``."""
    flag = _extra(CoordinatorConfig.model_fields[name]).get("flag")
    return (
        flag if isinstance(flag, str) and flag.startswith("--") else "--" + name.replace("_", "-")
    )


def cli_fields() -> dict[str, FieldInfo]:
    return {
        name: info
        for name, info in CoordinatorConfig.model_fields.items()
        if _extra(info).get("cli", True)
    }


def _option(name: str, info: FieldInfo, default_shown: Any) -> Any:
    """The annotation of one field's flag: its type and its typer.Option. The default is
    always None, meaning "not given", so a config file can fill it."""
    kind: Any = info.annotation
    optional = typing.get_origin(kind) in (typing.Union, types.UnionType)
    if optional:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    names = [flag_of(name)]
    short = _extra(info).get("flag")
    if isinstance(short, str) and not short.startswith("--"):
        names.append(short)
    help_text = info.description or ""
    if default_shown not in (None, {}, "") and not help_text.endswith(")"):
        help_text += f" (default: {default_shown})"
    if typing.get_origin(kind) is Literal:  # typer shows an Enum's values as the choices
        kind = enum.StrEnum(name, {str(a): str(a) for a in typing.get_args(kind)})  # type: ignore[misc,no-redef]
    elif typing.get_origin(kind) is dict:
        kind = list[str]
        help_text += " Repeat for several."
    elif kind is bool:
        names = [f"{names[0]}/--no-{names[0][2:]}"]
    option = typer.Option(*names, help=help_text, show_default=False)
    return Annotated[typing.Optional[kind], option]  # noqa: UP045 - kind is a runtime value


def with_coordinator_options(command: F) -> F:
    """Give ``command`` a flag per config field (and ``--config FILE``); it receives the
    flags the user gave as a dict in its ``coordinator_options`` parameter."""
    hints = typing.get_type_hints(command, include_extras=True)
    own = [
        p.replace(annotation=hints[p.name])
        for p in inspect.signature(command).parameters.values()
        if p.name != OPTIONS
    ]
    generated = []
    for name, info in cli_fields().items():
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        annotation = _option(name, info, default)
        generated.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
            )
        )
    config_file = inspect.Parameter(
        "config_file",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            Path | None,
            typer.Option(
                "--config",
                help="A TOML file of these settings (flag names with _ or -); flags win.",
                show_default=False,
            ),
        ],
    )
    taken = {p.name for p in own}
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
    params += [p for p in (*generated, config_file) if p.name not in taken]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        given = {p.name: kwargs.pop(p.name) for p in generated if p.name not in taken}
        given = {
            k: v.value if isinstance(v, enum.Enum) else v for k, v in given.items() if v is not None
        }
        for name, value in list(given.items()):
            if typing.get_origin(cli_fields()[name].annotation) is dict:
                given[name] = parse_pairs(flag_of(name), value)
        file = kwargs.pop("config_file", None)
        return command(**kwargs, **{OPTIONS: {**read_config_file(file), **given}})

    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    del wrapper.__wrapped__  # typer must see the new signature, not the original's
    return typing.cast(F, wrapper)


def parse_pairs(flag: str, pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings into a dict; values are JSON when they parse (numbers, true)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise OptionsError(f"{flag} {pair!r}: expected KEY=VALUE, e.g. trim_fraction=0.2")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def read_config_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise OptionsError(f"--config {path}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise OptionsError(f"--config {path}: not valid TOML ({exc})") from None
    return {key.replace("-", "_"): value for key, value in data.items()}


def build_config(values: Mapping[str, Any]) -> CoordinatorConfig:
    """The config from merged values, or OptionsError naming the flag that is wrong."""
    try:
        return CoordinatorConfig.model_validate(dict(values))
    except ValidationError as exc:
        error = exc.errors()[0]
        message = str(error["msg"]).removeprefix("Value error, ")
        if not error["loc"]:
            raise OptionsError(message) from None
        field = str(error["loc"][0])
        where = flag_of(field) if field in CoordinatorConfig.model_fields else f"{field!r}"
        if error["type"] == "missing":
            raise OptionsError(f"{where} is required (a flag or a --config entry)") from None
        if error["type"] == "extra_forbidden":
            raise OptionsError(f"--config: unknown setting {field!r}") from None
        raise OptionsError(f"{where}: {message}") from None
