"""streaming.config: flags derived from a config dataclass, and back (the real services' CLIs are checked in
test_k8s_manifests.py and test_worker_warmup.py)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from streaming.cli import service_parser
from streaming.config import (
    JS_DOMAIN_ENV,
    JS_DOMAIN_FLAG,
    NATS_FLAG,
    NATS_URL_ENV,
    add_config_arguments,
    argv_from_config,
    config_from_args,
    env_from_config,
    flag,
)


@dataclass
class Inner:
    directory: Path = field(metadata=flag("enables the inner part", name="inner-dir"))
    size: int = field(default=3, metadata=flag("a size"))
    unflagged: int = 7


def _ident() -> str:
    return "made"


@dataclass
class Outer:
    nats_url: str = field(default="nats://default:4222", metadata=NATS_FLAG)
    js_domain: str | None = field(default=None, metadata=JS_DOMAIN_FLAG)
    ratio: float = field(default=0.5, metadata=flag("a ratio (50% is half)"))
    warm: bool = field(default=True, metadata=flag("warm up"))
    hosts: tuple[str, ...] = field(default_factory=tuple, metadata=flag("a host (repeatable)", name="host"))
    ident: str = field(default_factory=_ident, metadata=flag("an id"))
    mode: str = field(default="a", metadata=flag("a mode", choices=("a", "b")))
    secret: str = field(default="", metadata=flag("not in --help", hidden=True))
    inner: Inner | None = field(default=None, metadata=flag("inner", group="the inner part"))
    quality: int = 90


def _parse(argv: list[str]) -> tuple[argparse.ArgumentParser, Outer]:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Outer)
    return parser, config_from_args(Outer, parser.parse_args(argv))


def test_defaults_come_from_the_dataclass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NATS_URL_ENV, raising=False)
    monkeypatch.delenv(JS_DOMAIN_ENV, raising=False)
    _, config = _parse([])
    assert config == Outer()


def test_every_kind_of_flag() -> None:
    argv = ["--nats", "nats://x:1", "--ratio", "2", "--no-warm", "--host", "a", "--host", "b", "--ident", "i"]
    argv += ["--mode", "b", "--secret", "s", "--inner-dir", "/tmp/d", "--size", "5"]
    _, config = _parse(argv)
    assert config == Outer(
        nats_url="nats://x:1",
        ratio=2.0,
        warm=False,
        hosts=("a", "b"),
        ident="i",
        mode="b",
        secret="s",
        inner=Inner(Path("/tmp/d"), size=5),
    )
    with pytest.raises(SystemExit):
        _parse(["--mode", "c"])


def test_an_optional_nested_config_is_off_without_its_required_flag() -> None:
    assert _parse(["--size", "5"])[1].inner is None


def test_environment_replaces_the_default_and_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NATS_URL_ENV, "nats://env:1")
    monkeypatch.setenv(JS_DOMAIN_ENV, "")  # empty: not set
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Outer)
    args = parser.parse_args([])
    assert config_from_args(Outer, args) == Outer(nats_url="nats://env:1")
    assert config_from_args(Outer, args, nats_url="nats://o:2", quality=50) == Outer(nats_url="nats://o:2", quality=50)
    monkeypatch.setenv(JS_DOMAIN_ENV, "hub")
    assert _parse([])[1].js_domain == "hub"


def test_help_shows_defaults_env_and_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NATS_URL_ENV, raising=False)
    monkeypatch.setenv("COLUMNS", "200")  # no line wrapping
    text = service_parser("prog", "description", Outer).format_help()
    assert f"NATS URL (default: nats://default:4222; env {NATS_URL_ENV})" in text
    assert "a ratio (50% is half) (default: 0.5)" in text
    assert "the inner part:" in text and "--inner-dir" in text and "--log-level" in text
    assert "--secret" not in text and "unflagged" not in text and "--quality" not in text


def _even(text: str) -> int:
    value = int(text)
    if value % 2:
        raise ValueError(f"must be even, got {value}")
    return value


@dataclass
class Link:
    delay_ms: float = field(default=0.0, metadata=flag("delay", name="link-delay-ms"))
    loss: float = field(default=0.0, metadata=flag("loss", name="link-loss"))


@dataclass
class Typed:
    render: Literal["warp", "affine"] = field(default="warp", metadata=flag("how"))
    size: tuple[int, int] = field(default=(2, 2), metadata=flag("WxH", parse=lambda t: tuple(map(int, t.split("x")))))
    side: int = field(default=4, metadata=flag("an even side", parse=_even))
    link: Link | None = field(default=None, metadata=flag("link", group="the link"))
    ident: str = field(default_factory=_ident, metadata=flag("an id"))


def _parse_typed(argv: list[str]) -> Typed:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Typed)
    return config_from_args(Typed, parser.parse_args(argv))


def test_literal_types_give_choices_and_parse_makes_the_value() -> None:
    assert _parse_typed([]) == Typed()
    assert _parse_typed(["--render", "affine", "--size", "6x4", "--side", "8"]) == Typed(
        render="affine", size=(6, 4), side=8
    )
    with pytest.raises(SystemExit):
        _parse_typed(["--render", "blur"])


def test_a_value_error_of_parse_is_a_usage_error_with_its_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        _parse_typed(["--side", "3"])
    assert exited.value.code == 2 and "argument --side: must be even, got 3" in capsys.readouterr().err


def test_an_optional_nested_config_without_required_flags_is_on_when_a_flag_leaves_its_default() -> None:
    assert _parse_typed([]).link is None
    assert _parse_typed(["--link-loss", "0"]).link is None  # given, but the default: still off
    assert _parse_typed(["--link-delay-ms", "40"]).link == Link(delay_ms=40.0)


def test_an_empty_value_of_a_factory_default_is_the_factory_value() -> None:
    assert _parse_typed(["--ident", ""]).ident == "made"
    assert _parse_typed(["--ident", "w1"]).ident == "w1"


def test_an_empty_worker_id_is_the_default_host_pid_id() -> None:
    from edge_worker.__main__ import build_parser, config_from_args

    config = config_from_args(build_parser().parse_args(["--worker-id", ""]))
    assert config.worker_id and config.worker_id.endswith(f"-{os.getpid()}")


def test_argv_from_config_gives_back_the_values_they_were_parsed_from() -> None:
    argv = ["--nats", "nats://x:1", "--ratio", "2", "--no-warm", "--host", "a", "--host", "b", "--mode", "b"]
    _, config = _parse(argv)
    flags = argv_from_config(config)
    assert flags == ["--ratio", "2.0", "--no-warm", "--host", "a", "--host", "b", "--ident", "made", "--mode", "b"]
    assert env_from_config(config, {NATS_URL_ENV: "nats://other:1", JS_DOMAIN_ENV: "d", "HOME": "/h"}) == {
        NATS_URL_ENV: "nats://x:1",  # a secret: in the environment, never in argv
        "HOME": "/h",
    }
