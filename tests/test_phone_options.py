"""The phone's interpolation options reach PhoneConfig and the phone's parts."""

import argparse

import pytest

from mobile_sim.__main__ import add_phone_arguments, phone_config_from_args
from mobile_sim.client import Phone, PhoneConfig
from mobile_sim.keyframes import AdaptivePolicy, FixedIntervalPolicy


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
