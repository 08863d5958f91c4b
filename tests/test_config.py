"""streaming.config: flags derived from a config dataclass, and back (the real services' CLIs are checked in
test_k8s_manifests.py and test_worker_warmup.py)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from streaming.cli import service_parser
from streaming.config import (
    JS_DOMAIN_ENV,
    JS_DOMAIN_FLAG,
    NATS_FLAG,
    NATS_URL_ENV,
    add_config_arguments,
    config_from_args,
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
