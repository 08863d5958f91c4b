"""A service's config is a dataclass; its command-line flags are derived from it, so a setting is written once.

A field becomes a flag when its metadata comes from :func:`flag`::

    @dataclass
    class AggregatorConfig:
        nats_url: str = field(default=DEFAULT_NATS_URL, metadata=NATS_FLAG)  # --nats, env MVS_NATS_URL
        round_timeout_s: float = field(
            default=DEFAULT_ROUND_TIMEOUT_S, metadata=flag("close a round when this old (s)", name="round-timeout")
        )
        crash_after: str = field(default="", metadata=flag("fault injection", choices=CRASH_POINTS, hidden=True))
        durable: str = DURABLE  # no metadata: not a flag, always the default

    parser = argparse.ArgumentParser(prog="mvs aggregator")
    add_config_arguments(parser, AggregatorConfig)  # --nats, --round-timeout, --crash-after
    config = config_from_args(AggregatorConfig, parser.parse_args(argv))

(``streaming.cli.service_parser`` does the first two lines and adds ``--log-level``.)

Derivation rules:

- flag ``--field-name`` (or ``--{name}``); its argparse ``dest`` is the flag name with ``_`` for ``-``
  (``--nats`` lands in ``args.nats``), the type is the annotation's: ``int``, ``float``, ``str``, ``Path``
  or ``X | None`` of one of them;
- ``Literal["a", "b"]`` (or an alias of one) gives ``choices`` ("a", "b");
- ``parse=fn`` replaces the type: ``fn(text)`` makes the value (``--size 640x360`` -> (640, 360)), and a
  ``ValueError`` it raises is a usage error (exit status 2) with its message, so a check on the value (a range,
  a file that must decode) sits next to the field;
- ``bool`` gives ``--field`` / ``--no-field``; ``tuple[str, ...]`` a repeatable flag;
- ``env="MVS_..."``: the variable, when set, replaces the field's default;
- a field without a default is a required flag; one whose default comes from a ``default_factory``
  defaults to "not given", and :func:`config_from_args` leaves it to the factory, also when it is given as an
  empty string (``--worker-id ""`` is the default id, not an empty one);
- a field typed as a dataclass (or ``X | None`` of one) whose metadata is ``flag(..., group=TITLE)`` puts the
  nested config's flags in an argument group. An optional nested config (``X | None``) is built only when it is
  asked for: if it has required flags, when they are all given (``--federated-dir`` turns on a worker's
  federated learning); if it has none, when one of its flags has a value other than its default (``--link-loss
  0.01`` turns on the phone's emulated link; ``--link-loss 0`` alone leaves it None). Otherwise it is None.

This module is the shared layer: it imports no process package.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

NATS_URL_ENV = "MVS_NATS_URL"
"""Environment variable with the NATS URL every service connects to (when ``--nats`` is not given)."""
REGION_ENV = "MVS_REGION"
"""Environment variable with the edge region of a gateway or worker (when ``--region`` is not given)."""
NATS_CA_ENV = "MVS_NATS_CA"
"""Environment variable with the CA file a service verifies its NATS server's TLS certificate against."""
JS_DOMAIN_ENV = "MVS_JS_DOMAIN"
"""Environment variable with the JetStream domain of the stores (when ``--js-domain`` is not given)."""

_FLAG_KEY = "mvs.flag"
"""Key of a :class:`Flag` in a dataclass field's metadata."""

ConfigT = TypeVar("ConfigT")


@dataclasses.dataclass(frozen=True)
class Flag:
    """How a config field appears on the command line (see :func:`flag`)."""

    help: str
    name: str | None = None
    env: str | None = None
    choices: Sequence[str] | None = None
    metavar: str | None = None
    hidden: bool = False
    group: str | None = None
    parse: Callable[[str], Any] | None = None
    show: Callable[[Any], str] | None = None
    secret: bool = False


def flag(
    help: str,
    *,
    name: str | None = None,
    env: str | None = None,
    choices: Sequence[str] | None = None,
    metavar: str | None = None,
    hidden: bool = False,
    group: str | None = None,
    parse: Callable[[str], Any] | None = None,
    show: Callable[[Any], str] | None = None,
    secret: bool = False,
) -> dict[str, Any]:
    """Field metadata that makes a config field a command-line flag: ``field(default=X, metadata=flag("..."))``.

    ``name``: the flag without ``--`` (default: the field name with ``-`` for ``_``); ``env``: an environment
    variable whose value, when set, is the default; ``hidden``: accepted but left out of ``--help``;
    ``group``: on a nested config field, the title of the argument group of its flags; ``parse``: turns the
    flag's text into the field's value (instead of the annotation's type), raising ``ValueError`` with a message
    for a person when the text is not acceptable; ``show``: the inverse of ``parse`` (default ``str``), used by
    :func:`argv_from_config`; ``secret``: the value may hold a password, so a launcher passes it in the environment
    variable ``env`` (required), never in argv."""
    if secret and env is None:
        raise ValueError("a secret flag needs an environment variable")
    return {_FLAG_KEY: Flag(help, name, env, choices, metavar, hidden, group, parse, show, secret)}


NATS_FLAG = flag("NATS URL", name="nats", env=NATS_URL_ENV, secret=True)
"""Metadata of every config's ``nats_url`` field: ``--nats``, env MVS_NATS_URL (a secret: it may hold a password)."""
NATS_CA_FLAG = flag("CA file to verify the NATS server's TLS certificate (with a tls:// URL)", env=NATS_CA_ENV)
"""Metadata of every config's ``nats_ca`` field: ``--nats-ca``, env MVS_NATS_CA."""
REGION_FLAG = flag("region", env=REGION_ENV)
"""Metadata of every config's ``region`` field: ``--region``, env MVS_REGION."""
NATS_RECONNECT_FLAG = flag("seconds between NATS reconnect attempts (a service retries forever)")
"""Metadata of every service config's ``nats_reconnect_wait_s`` field (streaming.nats_connect states the rule)."""
JS_DOMAIN_FLAG = flag("JetStream domain of the stores (set when connected to a leaf node)", env=JS_DOMAIN_ENV)
"""Metadata of every config's ``js_domain`` field: ``--js-domain``, env MVS_JS_DOMAIN."""


def _flag_of(f: dataclasses.Field[Any]) -> Flag | None:
    found = f.metadata.get(_FLAG_KEY)
    return found if isinstance(found, Flag) else None


def _flag_name(f: dataclasses.Field[Any], spec: Flag) -> str:
    return spec.name or f.name.replace("_", "-")


def _dest(f: dataclasses.Field[Any], spec: Flag) -> str:
    return _flag_name(f, spec).replace("-", "_")


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """(X, True) for ``X | None``, else (hint, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def _has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _is_str_tuple(hint: Any) -> bool:
    return typing.get_origin(hint) is tuple and typing.get_args(hint) == (str, ...)


def _literal_choices(hint: Any) -> tuple[Any, ...] | None:
    """The values of a ``Literal[...]`` annotation, or None for any other."""
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` as an argparse ``type``: its ``ValueError`` becomes a usage error that shows its message (argparse
    itself would print only "invalid <function name> value")."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _flagged_fields(cls: type) -> list[tuple[dataclasses.Field[Any], Flag, Any]]:
    """(field, flag, resolved annotation) of every field of ``cls`` that is a flag."""
    hints = typing.get_type_hints(cls)
    return [(f, spec, hints[f.name]) for f in dataclasses.fields(cls) if (spec := _flag_of(f)) is not None]


def _help(spec: Flag, default: Any) -> str:
    if spec.hidden:
        return argparse.SUPPRESS
    notes = []
    if default is not None and default != [] and default != "":
        notes.append("default: %(default)s")
    if spec.env:
        notes.append(f"env {spec.env}")
    text = spec.help.replace("%", "%%")
    return f"{text} ({'; '.join(notes)})" if notes else text


def add_config_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    exclude: Collection[str] = (),
    required: bool = True,
) -> None:
    """Add a flag for every field of the dataclass ``cls`` that carries :func:`flag` metadata (rules in the module
    docstring), in field order; fields named in ``exclude`` are left out. ``required=False`` (used for an optional
    nested config) makes no flag required."""
    for f, spec, hint in _flagged_fields(cls):
        if f.name in exclude:
            continue
        inner, optional = _unwrap_optional(hint)
        if dataclasses.is_dataclass(inner):
            if not isinstance(parser, argparse.ArgumentParser):
                raise TypeError(f"{cls.__name__}.{f.name}: nested configs nest one level only")
            group = parser.add_argument_group(spec.group or spec.help)
            add_config_arguments(group, typing.cast(type, inner), required=required and not optional)
            continue
        options: dict[str, Any] = {"dest": _dest(f, spec)}
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        else:  # from a default_factory (left to the factory) or required
            default = None
            if f.default_factory is dataclasses.MISSING and required:
                options["required"] = True
        if spec.env:
            from_env = os.environ.get(spec.env)
            if from_env is not None and (from_env or not optional):  # an empty variable means None, not ""
                default = from_env
        literal = _literal_choices(inner)
        if spec.parse is not None:
            options["type"] = _argparse_type(spec.parse)
        elif inner is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif _is_str_tuple(inner):
            options["action"] = "append"
            default = [default] if isinstance(default, str) else list(default or ())
        elif inner in (int, float, Path):
            options["type"] = inner
        elif literal is not None:
            options["choices"] = literal
            if not all(isinstance(v, str) for v in literal):
                options["type"] = type(literal[0])
        elif inner is not str:
            raise TypeError(f"{cls.__name__}.{f.name}: no flag type for {hint!r}")
        if spec.choices is not None:
            options["choices"] = spec.choices
        if spec.metavar is not None:
            options["metavar"] = spec.metavar
        parser.add_argument(f"--{_flag_name(f, spec)}", default=default, help=_help(spec, default), **options)


def config_from_args(cls: type[ConfigT], args: argparse.Namespace, **overrides: Any) -> ConfigT:
    """Build the dataclass ``cls`` from flags added by :func:`add_config_arguments`; ``overrides`` (by field name)
    win over the flags. A flag left at None (not given, no default) leaves the field to its dataclass default."""
    return typing.cast(ConfigT, _build(typing.cast(type, cls), args, overrides, optional=False))


def _build(cls: type, args: argparse.Namespace, overrides: Mapping[str, Any], optional: bool) -> Any:
    """``cls`` from the flags; with ``optional`` (a nested ``X | None``), None unless it is asked for (rules in
    the module docstring)."""
    values: dict[str, Any] = {}
    asked = False
    for f, spec, hint in _flagged_fields(cls):
        if f.name in overrides:
            continue
        inner, inner_optional = _unwrap_optional(hint)
        if dataclasses.is_dataclass(inner):
            values[f.name] = _build(typing.cast(type, inner), args, {}, optional=inner_optional)
            continue
        value = getattr(args, _dest(f, spec), None)
        if value == "" and f.default_factory is not dataclasses.MISSING:
            value = None  # given empty: the factory's value, as if not given
        if value is None:
            if not _has_default(f) and optional:
                return None  # an optional nested config without one of its required flags: off
            continue
        values[f.name] = tuple(value) if _is_str_tuple(inner) else value
        asked = asked or f.default is dataclasses.MISSING or values[f.name] != f.default
    if optional and not asked:
        return None  # an optional nested config whose flags are all at their defaults: off
    return cls(**values, **overrides)


def argv_from_config(config: Any) -> list[str]:
    """The flags that build ``config`` again: the inverse of :func:`config_from_args`, so that
    ``config_from_args(C, parser.parse_args(argv_from_config(c)))`` is ``c`` when the parser sees
    :func:`env_from_config`'s environment. A field is given when its value is not its default (always, when it has
    a ``default_factory``: a worker id made from the host and pid differs in a child); a nested config's flags
    follow its field; secret fields never appear (they travel in the environment)."""
    argv: list[str] = []
    for f, spec, hint in _flagged_fields(type(config)):
        value = getattr(config, f.name)
        inner, _ = _unwrap_optional(hint)
        if dataclasses.is_dataclass(inner):
            if value is not None:
                argv += argv_from_config(value)
            continue
        if spec.secret or value is None or (f.default is not dataclasses.MISSING and value == f.default):
            continue
        flag_name = _flag_name(f, spec)
        if inner is bool:
            argv.append(f"--{flag_name}" if value else f"--no-{flag_name}")
        elif _is_str_tuple(inner):
            for item in value:
                argv += [f"--{flag_name}", item]
        else:
            argv += [f"--{flag_name}", spec.show(value) if spec.show is not None else str(value)]
    return argv


def env_from_config(config: Any, base: Mapping[str, str]) -> dict[str, str]:
    """The environment of a child process that runs ``config`` (with :func:`argv_from_config`): ``base`` without
    the variables any flag of the config reads (so that only argv sets them), plus the secret fields' values."""
    env = {name: value for name, value in base.items() if name not in _env_names(type(config))}
    env.update(_secrets(config))
    return env


def _env_names(cls: type) -> set[str]:
    names: set[str] = set()
    for _, spec, hint in _flagged_fields(cls):
        inner, _ = _unwrap_optional(hint)
        if dataclasses.is_dataclass(inner):
            names |= _env_names(typing.cast(type, inner))
        elif spec.env is not None:
            names.add(spec.env)
    return names


def _secrets(config: Any) -> dict[str, str]:
    found: dict[str, str] = {}
    for f, spec, hint in _flagged_fields(type(config)):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(_unwrap_optional(hint)[0]):
            found |= _secrets(value) if value is not None else {}
        elif spec.secret and spec.env is not None and value is not None:
            found[spec.env] = str(value)
    return found
