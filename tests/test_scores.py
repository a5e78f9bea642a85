"""Scores: higher means more in-distribution."""

import numpy as np
import pytest

from ice_tf import scores


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_scores_match_numpy():
    rng = np.random.default_rng(0)
    outputs = rng.normal(0, 5, (50, 10))
    top = outputs.max(-1)
    expected = {
        "msp": _softmax(outputs).max(-1),
        "max_logit": top,
        "energy": top + np.log(np.exp(outputs - top[:, None]).sum(-1)),
        "ice": top,
    }
    largest = -np.sort(-_softmax(outputs), axis=-1)  # GEN: every class, K = 10 < M = 100
    expected["gen"] = -(largest ** 0.1 * (1 - largest) ** 0.1).sum(-1)
    assert scores.names() == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(scores.get(name)(outputs).numpy(), value, rtol=1e-5)


def test_confidence_is_exp_max_h_for_the_gaussian_head_and_msp_otherwise():
    h = -np.abs(np.random.default_rng(1).normal(0, 3, (20, 4)))
    confidence = scores.confidence(h, gaussian_head=True).numpy()
    np.testing.assert_allclose(confidence, np.exp(h.max(-1)), rtol=1e-6)
    assert np.all((confidence > 0) & (confidence <= 1))
    np.testing.assert_allclose(
        scores.confidence(h, gaussian_head=False).numpy(), _softmax(h).max(-1), rtol=1e-6
    )


def test_far_inputs_keep_distinct_ice_scores():
    h = np.array([[-200.0, -300.0], [-400.0, -500.0]])  # exp(max h) underflows to 0 for both
    assert scores.get("ice")(h).numpy()[0] > scores.get("ice")(h).numpy()[1]


def test_unknown_score_lists_valid_names():
    with pytest.raises(ValueError, match="energy, gen, ice, max_logit, msp"):
        scores.get("odin_typo")
    assert scores.default_score_name(True) == "ice" and scores.default_score_name(False) == "msp"
