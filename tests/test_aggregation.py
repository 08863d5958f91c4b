"""Aggregation rules against hand computations, update validation reason by reason, the tensor wire format."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from aggregator.strategies import (
    CoordinateMedian,
    FedAvg,
    ServerLearningRate,
    TrimmedMean,
    Update,
    apply_delta,
    make_strategy,
)
from aggregator.validation import Reason, RejectedUpdate, Rules, validate_ref, validate_update
from streaming.protocol import DeltaRef, ProtocolError, delta_object_prefix, fl_delta_subject
from streaming.tensors import decode_tensors, encode_tensors


def _update(worker: str, samples: int, a: list[float], b: float, base: int = 3, dtype: str = "float32") -> Update:
    delta = {"layer.weight": np.array(a, dtype=dtype).reshape(2, 2), "layer.bias": np.array([b], dtype=dtype)}
    return Update(worker, base, samples, delta)


UPDATES = [
    _update("w1", 10, [1, 2, 3, 4], 0.5),
    _update("w2", 30, [5, 6, 7, 8], -0.5),
    _update("w3", 60, [0, 0, 0, 100], 1.0),
]


def test_fedavg_is_the_sample_weighted_mean() -> None:
    out = FedAvg().aggregate(UPDATES)
    # By hand: (10*[1,2,3,4] + 30*[5,6,7,8] + 60*[0,0,0,100]) / 100
    assert np.allclose(out["layer.weight"], np.array([[1.6, 2.0], [2.4, 62.8]]))
    assert np.allclose(out["layer.bias"], [(10 * 0.5 - 30 * 0.5 + 60 * 1.0) / 100])
    assert out["layer.weight"].dtype == np.float32


def test_server_learning_rate_scales_the_average() -> None:
    out = make_strategy("fedavg", server_lr=2.0).aggregate(UPDATES)
    # By hand: 2 * (10*[1,2,3,4] + 30*[5,6,7,8] + 60*[0,0,0,100]) / 100, and 2 * 0.5 for the bias
    assert np.allclose(out["layer.weight"], np.array([[3.2, 4.0], [4.8, 125.6]]))
    assert np.allclose(out["layer.bias"], [1.0])
    assert out["layer.weight"].dtype == np.float32
    assert make_strategy("fedavg", server_lr=2.0).name == "fedavg@server-lr-2"
    assert isinstance(make_strategy("fedavg"), FedAvg)
    with pytest.raises(ValueError):
        ServerLearningRate(FedAvg(), 0.0)


def test_median_and_trimmed_mean_resist_an_outlier() -> None:
    median = CoordinateMedian().aggregate(UPDATES)
    assert np.allclose(median["layer.weight"], [[1, 2], [3, 8]])
    five = [*UPDATES, _update("w4", 1, [2, 2, 2, 2], 0.0), _update("w5", 1, [3, 3, 3, 3], 0.0)]
    trimmed = TrimmedMean(0.2).aggregate(five)  # drops 1 low and 1 high per coordinate
    # Last coordinate: values 4, 8, 100, 2, 3 -> sorted 2, 3, 4, 8, 100 -> mean(3, 4, 8)
    assert trimmed["layer.weight"][1, 1] == pytest.approx(5.0)
    assert trimmed["layer.weight"][0, 0] == pytest.approx((1 + 2 + 3) / 3)


def test_apply_delta_and_strategy_names() -> None:
    weights = {"layer.weight": np.ones((2, 2), np.float32), "layer.bias": np.zeros(1, np.float32)}
    out = apply_delta(weights, FedAvg().aggregate(UPDATES[:1]))
    assert np.allclose(out["layer.weight"], [[2, 3], [4, 5]]) and out["layer.bias"][0] == pytest.approx(0.5)
    assert make_strategy("median").name == "median"
    with pytest.raises(ValueError):
        make_strategy("mean-of-vibes")
    with pytest.raises(ValueError):
        FedAvg().aggregate([])
    with pytest.raises(ValueError):
        TrimmedMean(0.5)


REFERENCE = {"layer.weight": np.full((2, 2), 5000.0, np.float32), "layer.bias": np.zeros(1, np.float32)}
"""Current weights of norm 10,000: the relative bound (25 %) lies above the absolute one (1,000)."""


def _reason(update: Update, current: int = 3, seen: set[tuple[str, int]] | None = None) -> str:
    with pytest.raises(RejectedUpdate) as info:
        validate_update(update, REFERENCE, current, seen or set(), Rules())
    return info.value.reason


def test_each_rejection_reason() -> None:
    good = _update("w1", 5, [0.1, 0.2, 0.3, 0.4], 0.1, dtype="float16")
    validate_update(good, REFERENCE, 3, set(), Rules())  # accepted as is
    nan = _update("w1", 5, [0.1, float("nan"), 0.3, 0.4], 0.1)
    inf = _update("w1", 5, [0.1, float("inf"), 0.3, 0.4], 0.1)
    assert _reason(nan) == Reason.NON_FINITE and _reason(inf) == Reason.NON_FINITE
    extra = Update("w1", 3, 5, {**good.delta, "other": np.zeros(1, np.float32)})
    assert _reason(extra) == Reason.KEYS
    missing = Update("w1", 3, 5, {"layer.weight": good.delta["layer.weight"]})
    assert _reason(missing) == Reason.KEYS
    wrong_shape = Update("w1", 3, 5, {**good.delta, "layer.bias": np.zeros(2, np.float32)})
    assert _reason(wrong_shape) == Reason.SHAPE
    assert _reason(_update("w1", 5, [1, 2, 3, 4], 0, dtype="float64")) == Reason.DTYPE
    assert _reason(_update("w1", 5, [1, 2, 3, 4], 0, base=1)) == Reason.STALE
    assert _reason(_update("w1", 5, [1, 2, 3, 4], 0, base=4)) == Reason.FUTURE
    assert _reason(_update("w1", 5, [2e3, 0, 0, 0], 0)) == Reason.NORM
    validate_update(_update("w1", 5, [1e3, 0, 0, 0], 0), REFERENCE, 3, set(), Rules())  # at the bound: kept
    assert _reason(good, seen={("w1", 3)}) == Reason.DUPLICATE
    assert _reason(_update("w1", 0, [1, 2, 3, 4], 0)) == Reason.SAMPLES
    validate_update(_update("w1", 5, [1, 2, 3, 4], 0, base=2), REFERENCE, 3, set(), Rules(max_staleness=1))


def test_poisoned_deltas_are_refused_by_norm_relative_to_the_model() -> None:
    """The whole model sent as a delta (it would double every weight), and norm 999 (under the absolute bound 1000)
    on a small model."""
    whole_model = Update("w1", 3, 5, {name: value.astype(np.float16) for name, value in REFERENCE.items()})
    with pytest.raises(RejectedUpdate) as whole:
        validate_update(whole_model, REFERENCE, 3, set(), Rules(max_norm=float("inf")))
    assert whole.value.reason == Reason.RELATIVE_NORM  # 100 % of the model's norm, whatever the absolute bound
    small = {"layer.weight": np.ones((2, 2), np.float32), "layer.bias": np.zeros(1, np.float32)}  # norm 2
    norm_999 = _update("w1", 5, [999, 0, 0, 0], 0)
    with pytest.raises(RejectedUpdate) as info:
        validate_update(norm_999, small, 3, set(), Rules())
    assert info.value.reason == Reason.RELATIVE_NORM and "500 x" in str(info.value)
    validate_update(_update("w1", 5, [0.25, 0.25, 0.25, 0.25], 0), small, 3, set(), Rules())  # 25 %: at the bound
    validate_update(norm_999, small, 3, set(), Rules(max_relative_norm=1e3))  # configurable


def _ref(worker: str = "eu-1", samples: int = 64, region: str = "eu", name: str | None = None) -> DeltaRef:
    object_name = name if name is not None else delta_object_prefix(region, worker) + "v3-abcd"
    return DeltaRef(worker_id=worker, region=region, base_version=3, samples=samples, object_name=object_name)


def _ref_reason(
    ref: DeltaRef, subject: str = fl_delta_subject("eu", "eu-1"), age_s: float = 0.0, rules: Rules | None = None
) -> str:
    with pytest.raises(RejectedUpdate) as info:
        validate_ref(ref, subject, age_s, rules or Rules())
    return info.value.reason


def test_a_ref_must_name_its_own_object_and_a_possible_sample_count() -> None:
    validate_ref(_ref(), fl_delta_subject("eu", "eu-1"), 0.0, Rules())
    # Ownership: the subject (NATS permissions: only worker eu-1 of eu publishes it) fixes the region and the worker,
    # the name must be that worker's.
    assert _ref_reason(_ref(region="us")) == Reason.OWNER  # eu's worker claiming to be us
    assert _ref_reason(_ref(worker="eu-2", name=delta_object_prefix("eu", "eu-2") + "v3-abcd")) == Reason.OWNER
    assert _ref_reason(_ref(worker="eu.2")) == Reason.OWNER  # not a subject token: rejected, not a crash
    assert _ref_reason(_ref(name="global/v3")) == Reason.OWNER
    assert _ref_reason(_ref(name=delta_object_prefix("eu", "eu-2") + "v3-abcd")) == Reason.OWNER  # another worker's
    assert _ref_reason(_ref(name=delta_object_prefix("eu", "eu-1") + "x/../../global")) == Reason.OWNER
    # Samples: 10^12 is refused at any age; the rate bound: burst 256 + 50/s.
    assert _ref_reason(_ref(samples=10**12), age_s=1e9) == Reason.SAMPLES
    assert _ref_reason(_ref(samples=0)) == Reason.SAMPLES
    assert _ref_reason(_ref(samples=257)) == Reason.SAMPLES  # just published: the burst only
    validate_ref(_ref(samples=256), fl_delta_subject("eu", "eu-1"), 0.0, Rules())
    validate_ref(_ref(samples=756), fl_delta_subject("eu", "eu-1"), 10.0, Rules())  # 256 + 50 x 10 s
    assert _ref_reason(_ref(samples=757), age_s=10.0) == Reason.SAMPLES
    assert _ref_reason(_ref(samples=10_001), age_s=1e6) == Reason.SAMPLES  # the per-update cap
    validate_ref(_ref(samples=10**6), fl_delta_subject("eu", "eu-1"), 0.0, Rules(max_samples=10**6, sample_burst=10**6))


def test_tensor_blobs_round_trip_and_refuse_garbage() -> None:
    tensors = {
        "a": np.arange(6, dtype=np.float16).reshape(2, 3),
        "b": np.array([True, False]),
        "scalar": np.array(2.5, np.float32),
        "strided": np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2],
    }
    for compress in (True, False):
        out = decode_tensors(encode_tensors(tensors, compress=compress))
        assert set(out) == set(tensors) and out["a"].dtype == np.float16
        for name, value in tensors.items():
            assert out[name].shape == value.shape and np.array_equal(out[name], value), name
    smooth = {"w": np.zeros((256, 256), np.float16)}
    assert len(encode_tensors(smooth)) < len(encode_tensors(smooth, compress=False)) / 10
    assert encode_tensors(tensors) == encode_tensors(dict(reversed(tensors.items())))
    with pytest.raises(ProtocolError):
        decode_tensors(b"\x00garbage")
    with pytest.raises(ProtocolError):
        decode_tensors(msgpack.packb({"format": "mvs-tensors/1", "zlib": b"not zlib"}))
    with pytest.raises(ValueError):
        encode_tensors({"x": np.array(["text"])})


def test_rejections_say_what_was_wrong_and_one_sample_is_enough() -> None:
    """The reason's text names the offending values (it is logged for whoever debugs an edge)."""
    validate_update(_update("w1", 1, [0.1, 0.2, 0.3, 0.4], 0.1), REFERENCE, 3, set(), Rules())  # one sample: kept

    def text(update: Update, seen: set[tuple[str, int]] | None = None) -> str:
        with pytest.raises(RejectedUpdate) as info:
            validate_update(update, REFERENCE, 3, seen or set(), Rules())
        return str(info.value)

    good = _update("w1", 5, [0.1, 0.2, 0.3, 0.4], 0.1)
    assert "w1" in text(good, seen={("w1", 3)}) and "v3" in text(good, seen={("w1", 3)})
    assert "v4" in text(_update("w1", 5, [1, 2, 3, 4], 0, base=4))
    assert "v1" in text(_update("w1", 5, [1, 2, 3, 4], 0, base=1))
    assert "-2" in text(_update("w1", -2, [1, 2, 3, 4], 0))
    assert "other" in text(Update("w1", 3, 5, {**good.delta, "other": np.zeros(1, np.float32)}))
    assert "layer.bias" in text(Update("w1", 3, 5, {**good.delta, "layer.bias": np.zeros(2, np.float32)}))
    assert "float64" in text(_update("w1", 5, [1, 2, 3, 4], 0, dtype="float64"))
    assert "layer.weight" in text(_update("w1", 5, [float("nan"), 0, 0, 0], 0))
    assert "norm" in text(_update("w1", 5, [2e3, 0, 0, 0], 0))
