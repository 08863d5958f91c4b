"""Every service config survives the trip through its own command line: ``config_from_args(C, parse(argv))``
is the config again when ``argv = argv_from_config(config)`` and the environment is ``env_from_config``'s (the
launchers of deploy.launch rely on it). Values come from hypothesis, per field type."""

from __future__ import annotations

import argparse
import dataclasses
import os
import string
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from aggregator.service import AggregatorConfig
from deploy.demo import DemoOptions
from deploy.launch import ServiceProcess
from deploy.nats_setup import SetupConfig
from edge_worker.model.serving import MAX_WORK_SIZE, MIN_WORK_SIZE, parse_work_size
from edge_worker.service import WorkerConfig
from mobile_sim.client import PhoneConfig, parse_size, parse_smoothing_weight, parse_style_path
from streaming.cli import ServiceOptions
from streaming.config import (
    _flagged_fields,
    _literal_choices,
    _unwrap_optional,
    add_config_arguments,
    argv_from_config,
    config_from_args,
    env_from_config,
)
from streaming.gateway.server import GatewayConfig

SERVICE_CONFIGS = (WorkerConfig, GatewayConfig, AggregatorConfig, PhoneConfig, ServiceOptions, DemoOptions, SetupConfig)
WORDS = st.text(string.ascii_letters + string.digits + "._:/@", min_size=1, max_size=12)
"""Flag values as a person types them (argparse takes a leading ``-`` for an option)."""
BY_PARSER: dict[Callable[[str], Any], st.SearchStrategy[Any]] = {
    parse_work_size: st.one_of(st.just("auto"), st.just(0), st.integers(MIN_WORK_SIZE, MAX_WORK_SIZE)),
    parse_size: st.tuples(st.integers(1, 2000), st.integers(1, 2000)).map(lambda s: (2 * s[0], 2 * s[1])),
    parse_smoothing_weight: st.floats(0.0, 0.99),
    parse_style_path: st.none(),  # must name an image that decodes: the bundled default (None) is one
}


def _values(hint: Any, f: dataclasses.Field[Any], choices: Any, parse: Any) -> st.SearchStrategy[Any]:
    inner, optional = _unwrap_optional(hint)
    if parse is not None:
        base = BY_PARSER[parse]
    elif dataclasses.is_dataclass(inner):
        base = config_values(typing.cast(type, inner))
    elif choices is not None or _literal_choices(inner) is not None:
        base = st.sampled_from(list(choices or _literal_choices(inner)))
    elif inner is bool:
        base = st.booleans()
    elif inner is int:
        base = st.integers(0, 10_000)
    elif inner is float:
        base = st.floats(0.0, 1e6, allow_nan=False)
    elif inner is Path:
        base = WORDS.map(Path)
    elif typing.get_origin(inner) is tuple:
        base = st.lists(WORDS, max_size=3).map(tuple)
    else:
        assert inner is str, f"{f.name}: {hint}"
        base = WORDS
    return st.one_of(st.none(), base) if optional else base


def config_values(cls: type) -> st.SearchStrategy[Any]:
    """Configs of ``cls`` with any value in every flag field (the others at their defaults); invalid ones (a
    ``__post_init__`` check) are skipped."""
    fields = {f.name: _values(hint, f, spec.choices, spec.parse) for f, spec, hint in _flagged_fields(cls)}

    def build(values: dict[str, Any]) -> Any:
        try:
            return cls(**values)
        except ValueError:
            assume(False)

    return st.fixed_dictionaries(fields).map(build)


def _round_trip(config: Any) -> Any:
    cls = type(config)
    with mock.patch.dict(os.environ, env_from_config(config, os.environ), clear=True):
        parser = argparse.ArgumentParser()
        add_config_arguments(parser, cls)
        return config_from_args(cls, parser.parse_args(argv_from_config(config)))


@pytest.mark.slow
@pytest.mark.parametrize("cls", SERVICE_CONFIGS, ids=lambda c: c.__name__)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(data=st.data())
def test_every_service_config_survives_its_command_line(cls: type, data: st.DataObject) -> None:
    config = data.draw(config_values(cls))
    # An optional nested config with every field at its default is the same as none (streaming.config's rule).
    assume(not any(_all_defaults(getattr(config, f.name)) for f, _, _ in _flagged_fields(cls)))
    assert _round_trip(config) == config


def _all_defaults(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and all(
        f.default is not dataclasses.MISSING and getattr(value, f.name) == f.default for f in dataclasses.fields(value)
    )


def test_a_secret_never_reaches_argv() -> None:
    process = ServiceProcess(WorkerConfig(nats_url="nats://worker:hunter2@127.0.0.1:4222", region="eu"))
    assert "hunter2" not in " ".join(process.command)
    assert process.env["MVS_NATS_URL"] == "nats://worker:hunter2@127.0.0.1:4222"
    assert process.command[1:3] == ["-m", "edge_worker"] and "--region" in process.command
