"""Flags, ``FEDQ_*`` environment variables and ``--config`` keys, made from settings models.

A settings model is a pydantic model whose fields are a command's options (the
coordinator's :class:`~fedq.coordinator.config.CoordinatorConfig`, the participant's
:class:`~fedq.participant.config.ParticipantConfig`, the training settings, ...). Each
field not marked ``cli=False`` is, for every command decorated with :func:`with_settings`:

- a flag, ``--field-name`` (or the ``flag`` its metadata names), its description as help;
- an environment variable, ``FEDQ_FIELD_NAME`` (or the ``env`` its metadata names);
- a key of the TOML file given with ``--config`` (``field_name`` or ``field-name``), which
  may also set the fields that are not flags.

Its help shows its default one way, ``[default: X]``: the command's default, else the
model's, else the phrase its metadata names as ``shown_default`` (``the app's``), never a
default that says nothing (None, an empty list); a description names no default itself.

So an option is declared once, in its model. A value comes from the flag, else the
environment variable, else the file, else the command's default, else the model's
default; a mistake is one line naming the flag (and the variable it came from).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import json
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound=BaseModel)

#: The parameter of a decorated command that receives what the user gave.
GIVEN = "given"
#: The prefix of every generated environment variable.
ENV_PREFIX = "FEDQ_"
#: Types a flag takes as they are; any other (a share, a scheme) is text the model parses.
_FLAG_TYPES = (str, int, float, bool, Path)
#: The variable that names a ``--config`` file when the flag does not.
CONFIG_ENV = "FEDQ_CONFIG"
#: The attribute of a decorated command that maps each flag's field to its model.
SETTINGS_ATTR = "__fedq_settings__"
#: The metadata key of a default that is not a value (``the app's``), shown as it is.
SHOWN_DEFAULT = "shown_default"


class OptionsError(ValueError):
    """A flag, environment variable or config-file value a command cannot take; one line."""


def _extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def flag_of(model: type[BaseModel], name: str) -> str:
    """The long flag of ``model``'s field ``name``."""
    flag = _extra(model.model_fields[name]).get("flag")
    if isinstance(flag, str) and flag.startswith("--"):
        return flag.split("/")[0]
    return "--" + name.replace("_", "-")


def env_of(model: type[BaseModel], name: str) -> str:
    """The environment variable of ``model``'s field ``name``."""
    env = _extra(model.model_fields[name]).get("env")
    return env if isinstance(env, str) else ENV_PREFIX + name.upper()


def cli_fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    return {
        name: info for name, info in model.model_fields.items() if _extra(info).get("cli", True)
    }


def _flag_type(annotation: Any) -> Any:
    """The type typer parses a field's flag into (None: not given)."""
    kind = annotation
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if typing.get_origin(kind) is Literal:  # typer shows an Enum's values as the choices
        values = {str(a): str(a) for a in typing.get_args(kind)}
        return enum.StrEnum("Choice", values)
    if typing.get_origin(kind) is dict:
        return list[str]
    if typing.get_origin(kind) is list:
        item = typing.get_args(kind)[0]
        return list[item] if item in _FLAG_TYPES else list[str]  # type: ignore[valid-type]
    return kind if kind in _FLAG_TYPES else str


def _is_pairs(info: FieldInfo) -> bool:
    """Whether a field's repeated flag gives ``KEY=VALUE`` pairs (a dict), not a list."""
    kind = info.annotation
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    return typing.get_origin(kind) is dict


def shown_default(info: FieldInfo, given: Any = None) -> str | None:
    """The default a field's help shows: the command's ``given`` one, else the phrase its
    metadata names, else the model's, as a user would type it; None when there is none
    worth showing (None, an empty list or text, a flag that is off)."""
    phrase = _extra(info).get(SHOWN_DEFAULT)
    if given is None and isinstance(phrase, str):
        return phrase
    value = given
    if value is None and not info.is_required():
        value = info.get_default(call_default_factory=True)
    if value is None or value is False or value in ({}, [], ""):
        return None
    if value is True:
        return "true"
    return str(value.value if isinstance(value, enum.Enum) else value)


def _option(model: type[BaseModel], name: str, info: FieldInfo, default: Any = None) -> Any:
    """The annotation of one field's flag: its type and its typer.Option. The option's
    default is always None, meaning "not given", so the environment or a config file can
    fill it; the help shows the real one (``default``: the command's) as ``[default: X]``."""
    given_flag = _extra(info).get("flag")
    names = [flag_of(model, name)]
    if isinstance(given_flag, str) and not given_flag.startswith("--"):
        names.append(given_flag)
    kind = _flag_type(info.annotation)
    help_text = info.description or ""
    shown = shown_default(info, default)
    if typing.get_origin(kind) is list:
        help_text += " Repeat for several."
    elif kind is bool and given_flag is None:
        names = [f"{names[0]}/--no-{names[0][2:]}"]
    elif isinstance(given_flag, str) and "/" in given_flag:
        names = [given_flag]
    if kind is bool and _extra(info).get(SHOWN_DEFAULT) is None:  # typer's form: the flag on
        on, _, off = names[0].partition("/")
        shown = on[2:] if shown == "true" else off[2:] or None
    if shown is not None:  # escaped: rich markup would swallow a bare [default: X]
        help_text += " \\[default: " + shown.replace("[", "\\[") + "]"
    option = typer.Option(*names, help=help_text, envvar=env_of(model, name), show_default=False)
    return Annotated[typing.Optional[kind], option]  # noqa: UP045 - kind is a runtime value


@dataclass(frozen=True)
class Given:
    """What a command was given for its settings models: every value by field name (from
    a flag, else ``FEDQ_*``, else the ``--config`` file), and where each came from."""

    values: dict[str, Any] = field(default_factory=dict)
    #: field name -> how an error names it: ``--flag`` or ``FEDQ_X (--flag)``.
    origins: dict[str, str] = field(default_factory=dict)
    #: The command's own defaults (below everything given, above the models' defaults).
    defaults: dict[str, Any] = field(default_factory=dict)

    def of(self, model: type[BaseModel]) -> dict[str, Any]:
        """The values given for ``model``'s fields."""
        return {k: v for k, v in self.values.items() if k in model.model_fields}

    def build(self, model: type[M], defaults: Mapping[str, Any] | None = None, **fixed: Any) -> M:
        """``model`` from ``fixed`` (what the command sets), the values given, then
        ``defaults`` and the command's (:func:`with_settings`), then its own; OptionsError
        naming the flag."""
        commands = {k: v for k, v in self.defaults.items() if k in model.model_fields}
        try:
            return model.model_validate({**commands, **(defaults or {}), **self.of(model), **fixed})
        except ValidationError as exc:
            raise OptionsError(self._describe(model, exc)) from None

    def _describe(self, model: type[BaseModel], exc: ValidationError) -> str:
        error = exc.errors()[0]
        message = str(error["msg"]).removeprefix("Value error, ")
        if not error["loc"]:
            return message
        name = str(error["loc"][0])
        if name not in model.model_fields:
            return f"--config: unknown setting {name!r}"
        where = self.origins.get(name, flag_of(model, name))
        if error["type"] == "missing":
            return f"{where} is required (a flag, {env_of(model, name)} or a --config entry)"
        return f"{where}: {message}"


def with_settings(
    *models: type[BaseModel], defaults: Mapping[str, Any] | None = None
) -> Callable[[F], F]:
    """Give a command a flag per field of each of ``models`` (and ``--config FILE``); it
    receives what the user gave as a :class:`Given` in its ``given`` parameter.
    ``defaults``: the command's own, over the models' (shown in its help)."""
    own_defaults = dict(defaults or {})
    fields = {name: model for model in models for name in cli_fields(model)}
    assert len(fields) == sum(len(cli_fields(m)) for m in models), "a field in two models"

    def decorate(command: F) -> F:
        hints = typing.get_type_hints(command, include_extras=True)
        own = [
            p.replace(annotation=hints[p.name], kind=inspect.Parameter.KEYWORD_ONLY)
            for p in inspect.signature(command).parameters.values()
            if p.name != GIVEN
        ]
        assert not {p.name for p in own} & fields.keys(), "a parameter is also a setting"
        generated = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=_option(model, name, model.model_fields[name], own_defaults.get(name)),
            )
            for name, model in fields.items()
        ]
        extra = [_config_file_parameter(), _context_parameter()]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            context: typer.Context = kwargs.pop("typer_context")
            given = _gather(models, fields, context, kwargs, kwargs.pop("config_file"))
            given = dataclasses.replace(given, defaults=own_defaults)
            return command(**kwargs, **{GIVEN: given})

        params = [*own, *generated, *extra]
        setattr(wrapper, SETTINGS_ATTR, dict(fields))
        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__  # typer must see the new signature, not the original's
        return typing.cast(F, wrapper)

    return decorate


def _config_file_parameter() -> inspect.Parameter:
    return inspect.Parameter(
        "config_file",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            Path | None,
            typer.Option(
                "--config",
                help="A TOML file of these settings (flag names with _ or -); flags and "
                "FEDQ_* variables win.",
                envvar=CONFIG_ENV,
                show_default=False,
            ),
        ],
    )


def _context_parameter() -> inspect.Parameter:
    return inspect.Parameter(
        "typer_context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context
    )


def _gather(
    models: tuple[type[BaseModel], ...],
    fields: dict[str, type[BaseModel]],
    context: typer.Context,
    kwargs: dict[str, Any],
    config_file: Path | None,
) -> Given:
    """The values of ``fields`` the user gave, popped from ``kwargs``; the file's below."""
    known = {name for model in models for name in model.model_fields}
    flags = {flag_of(model, name)[2:].replace("-", "_"): name for name, model in fields.items()}
    values = read_config_file(config_file, known, flags)
    origins: dict[str, str] = {}
    for name, model in fields.items():
        value = kwargs.pop(name)
        source = context.get_parameter_source(name)
        if value is None or (source is not None and source.name == "DEFAULT"):
            continue
        flag = flag_of(model, name)
        if source is not None and source.name == "ENVIRONMENT":
            origins[name] = f"{env_of(model, name)} ({flag})"
        value = value.value if isinstance(value, enum.Enum) else value
        if _is_pairs(model.model_fields[name]):
            value = parse_pairs(origins.get(name, flag), value)
        elif isinstance(value, tuple):
            value = list(value)
        values[name] = value
    return Given(values, origins)


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


def read_config_file(
    path: Path | None, known: set[str], flags: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The settings in the TOML file ``path`` by field name, or by the name of its flag
    (``flags``: the flag's name with ``_`` -> the field's, e.g. ``id`` -> ``participant_id``);
    one of none of ``known`` is an error naming it."""
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise OptionsError(f"--config {path}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise OptionsError(f"--config {path}: not valid TOML ({exc})") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        values[name if name in known else (flags or {}).get(name, name)] = value
    for key in values:
        if key not in known:
            raise OptionsError(f"--config: unknown setting {key!r}")
    return values
