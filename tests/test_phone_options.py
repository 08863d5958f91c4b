"""The phone's interpolation options reach PhoneConfig and the phone's parts."""

import argparse
from pathlib import Path

import pytest

from mobile_sim.__main__ import add_phone_arguments, phone_config_from_args
from mobile_sim.client import Phone, PhoneConfig
from mobile_sim.keyframes import AdaptivePolicy, FixedIntervalPolicy
from mobile_sim.link_shim import LinkProfile


def parse(*argv: str) -> PhoneConfig:
    parser = argparse.ArgumentParser()
    add_phone_arguments(parser, out_default=None)
    return phone_config_from_args(parser.parse_args(argv))


def test_defaults_are_fixed_interval_dis_live_with_occlusion_fill() -> None:
    config = parse()
    assert (config.key_policy, config.flow, config.mode, config.fill_occlusions) == (
        "fixed",
        "dis-ultrafast",
        "live",
        True,
    )
    assert isinstance(Phone(config).policy, FixedIntervalPolicy)


def test_flags_reach_the_config_and_the_policy() -> None:
    config = parse(
        "--key-policy", "adaptive", "--min-key-interval", "3", "--max-key-interval", "12",
        "--flow", "lk", "--mode", "buffered", "--no-occlusion-fill",
    )  # fmt: skip
    assert (config.key_policy, config.flow, config.mode, config.fill_occlusions) == (
        "adaptive",
        "lk",
        "buffered",
        False,
    )
    policy = Phone(config).policy
    assert isinstance(policy, AdaptivePolicy)
    assert (policy.min_interval, policy.max_interval) == (3, 12)


def test_temporal_smoothing_reaches_the_config() -> None:
    assert parse().temporal_smoothing == 0.0
    assert parse("--temporal-smoothing", "0.5").temporal_smoothing == 0.5


@pytest.mark.parametrize(
    "argv",
    [
        ["--key-policy", "often"],
        ["--flow", "magic"],
        ["--mode", "later"],
        ["--temporal-smoothing", "1.5"],
        ["--temporal-smoothing", "-0.1"],
        ["--temporal-smoothing", "lots"],
    ],
)
def test_unknown_choices_are_rejected(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse(*argv)


def test_size_link_and_log_level_keep_their_defaults_and_parse() -> None:
    parser = argparse.ArgumentParser()
    add_phone_arguments(parser, out_default=None)
    args = parser.parse_args([])
    assert args.log_level == "warning"
    config = phone_config_from_args(args)
    assert (config.size, config.render, config.link) == ((640, 360), "warp", None)
    config = parse("--size", "320x180", "--render", "affine-flow", "--link-delay-ms", "40", "--link-kbps", "2000")
    assert (config.size, config.render) == ((320, 180), "affine-flow")
    assert config.link == LinkProfile(delay_ms=40.0, kbps=2000.0, loss=0.0)
    assert parse("--link-loss", "0").link is None


@pytest.mark.parametrize("argv", [["--size", "640by360"], ["--size", "641x360"], ["--render", "blur"]])
def test_bad_values_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse(*argv)


def test_an_undecodable_style_is_a_one_line_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    style = tmp_path / "style.jpg"
    style.write_bytes(b"not an image")
    for path in (style, tmp_path / "missing.jpg"):
        with pytest.raises(SystemExit) as exited:
            parse("--style", str(path))
        err = capsys.readouterr().err
        assert exited.value.code == 2 and "argument --style: " in err and "Traceback" not in err
