"""The benchmark's deep-feature metrics and CIEDE2000 against the papers' closed forms, and the judge network's
ImageNet weights in use."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import rgb2lab

from bench.deep_metrics import deep_features, feature_content_distance, gram_matrices, gram_style_distance
from bench.efficientnet_lite import load_efficientnet_lite2
from bench.held_out import short_side
from edge_worker.quality import ciede2000
from edge_worker.training import bundled_photo
from tests import oracles

SHARMA_PAIRS = [
    # Sharma, Wu, Dalal (2005) Table 1: pairs 1, 7, 17, 25, 33, 34 and their ΔE00
    ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
    ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
    ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((90.8027, -2.0831, 1.4410), (91.1528, -1.6435, 0.0447), 1.4441),
    ((90.9257, -0.5406, -0.9208), (88.6381, -0.8985, -0.7239), 1.5381),
]
IMAGENET_CATS = {281, 282, 283, 284, 285}
"""tabby, tiger cat, Persian, Siamese, Egyptian cat."""
IMAGENET_ESPRESSO = 967


def test_the_ciede2000_oracle_reproduces_sharmas_test_data() -> None:
    lab1, lab2, expected = (np.array(x, dtype=np.float64) for x in zip(*SHARMA_PAIRS, strict=True))
    assert oracles.ciede2000(lab1, lab2) == pytest.approx(expected, abs=1e-4)


def test_ciede2000_of_images_is_the_mean_of_the_closed_form() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (16, 12, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    assert ciede2000(a, b) == pytest.approx(oracles.ciede2000(rgb2lab(a), rgb2lab(b)).mean(), rel=1e-6)
    assert ciede2000(a, a) == 0.0
    with pytest.raises(ValueError, match="shape"):
        ciede2000(a, b[:8])


def test_gram_style_distance_is_gatys_loss() -> None:
    rng = np.random.default_rng(1)
    shapes = [(4, 6, 5), (8, 3, 3)]
    f = [rng.normal(size=s) for s in shapes]
    p = [rng.normal(size=s) * 1.5 + 0.3 for s in shapes]
    assert gram_style_distance(gram_matrices(f), gram_matrices(p)) == pytest.approx(oracles.gatys_style_loss(f, p))
    assert gram_style_distance(gram_matrices(f), gram_matrices(f)) == 0.0


def test_gram_matrices_do_not_depend_on_where_features_are() -> None:
    """Style is position-free: a feature map and a spatial shuffle of it have one Gram matrix."""
    f = np.random.default_rng(2).normal(size=(5, 4, 6))
    shuffled = f.reshape(5, -1)[:, np.random.default_rng(3).permutation(24)].reshape(5, 4, 6)
    np.testing.assert_allclose(gram_matrices([f])[0], gram_matrices([shuffled])[0], atol=1e-12)


def test_feature_content_distance_is_half_the_mean_squared_difference() -> None:
    f, p = np.zeros((2, 3, 3)), np.full((2, 3, 3), 2.0)
    assert feature_content_distance(f, p) == 2.0
    with pytest.raises(ValueError, match="shape"):
        feature_content_distance(f, p[:, :2])


@pytest.mark.slow
def test_the_judge_network_has_its_imagenet_weights() -> None:
    """Random weights would not name the cat or the espresso."""
    net = load_efficientnet_lite2()
    photos = np.stack([short_side(bundled_photo(n), 260)[:260, :260] for n in ("chelsea.png", "coffee.png")])
    with torch.inference_mode():
        probs = net(net.normalise(photos)).softmax(1)
    top = probs.argmax(1).tolist()
    assert top[0] in IMAGENET_CATS and top[1] == IMAGENET_ESPRESSO, top
    assert probs[1, IMAGENET_ESPRESSO] > 0.5


def test_the_deep_distances_see_style_and_content() -> None:
    """A recoloured photo is closer to its own style than to another photo's, and keeps its content."""
    cat, coffee = bundled_photo("chelsea.png"), bundled_photo("coffee.png")
    tinted = np.clip(cat.astype(int) * (1.15, 0.95, 0.8), 0, 255).astype(np.uint8)
    f_cat, f_tinted, f_coffee = deep_features(cat), deep_features(tinted), deep_features(coffee)
    assert gram_style_distance(f_tinted.grams, f_cat.grams) < gram_style_distance(f_coffee.grams, f_cat.grams) / 5
    assert feature_content_distance(f_tinted.content, f_cat.content) > 0
    assert gram_style_distance(f_cat.grams, f_cat.grams) == 0.0
