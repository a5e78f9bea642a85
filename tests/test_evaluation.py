"""Evaluation protocols, aggregation and the markdown reports."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ice_tf import metrics
from ice_tf.experiment import evaluation


def _constant_model(outputs_by_value):
    """A model whose outputs are a fixed function of the first pixel (for exact checks)."""
    inputs = keras.Input((1,))
    return keras.Model(inputs, keras.layers.Lambda(outputs_by_value)(inputs))


def test_evaluate_model_full_protocol_matches_metrics_on_the_scores():
    rng = np.random.default_rng(0)
    model = _constant_model(lambda x: tf.concat([x, -x], axis=-1))  # max logit = |x|
    x_in = rng.normal(3, 1, (200, 1)).astype("float32")
    labels = (x_in[:, 0] < 0).astype("int64")  # class 1 when -x is larger
    x_out = rng.normal(0, 1, (120, 1)).astype("float32")
    in_ds = tf.data.Dataset.from_tensor_slices((x_in, labels)).batch(64)
    out_ds = tf.data.Dataset.from_tensor_slices((x_out, -np.ones(120, "int64"))).batch(64)
    results, raw = evaluation.evaluate_model(
        model, in_ds, {"noise": out_ds}, score="max_logit", protocol="full", verbose=0,
        return_scores=True,
    )
    expected = metrics.ood_metrics(np.abs(x_in[:, 0]), np.abs(x_out[:, 0]))
    for key, value in expected.items():
        assert results["sets"]["noise"][key]["mean"] == pytest.approx(value, rel=1e-6)
        assert results["mean"][key]["mean"] == pytest.approx(value, rel=1e-6)
    assert results["accuracy"] == 1.0 and results["num_in"] == 200
    np.testing.assert_allclose(raw["noise"], np.abs(x_out[:, 0]), rtol=1e-6)


def test_oe_protocol_draws_a_fifth_of_the_in_distribution_size():
    rng = np.random.default_rng(1)
    scores_in, scores_out = rng.normal(1, 1, 500), rng.normal(0, 1, 5000)
    per_set, mean = evaluation.ood_results(scores_in, {"a": scores_out, "b": scores_out + 1}, "oe")
    assert per_set["a"]["num_ood"] == 100
    assert per_set["a"]["auroc"]["std"] > 0
    assert mean["auroc"]["mean"] == pytest.approx(
        (per_set["a"]["auroc"]["mean"] + per_set["b"]["auroc"]["mean"]) / 2
    )
    with pytest.raises(ValueError, match="full, oe"):
        evaluation.ood_results(scores_in, {"a": scores_out}, "openood")


def _fake_results(auroc, accuracy):
    value = {"mean": auroc, "std": 0.0}
    sets = {"far": {k: value for k in metrics.METRIC_KEYS}, "near": {k: value for k in metrics.METRIC_KEYS}}
    return {"score": "msp", "protocol": "full", "accuracy": accuracy, "num_in": 10,
            "sets": sets, "mean": {k: value for k in metrics.METRIC_KEYS}}


def test_aggregate_runs_and_comparison_table():
    runs = [_fake_results(0.8, 0.9), _fake_results(0.9, 0.8)]
    aggregated = evaluation.aggregate_runs(runs)
    assert aggregated["mean"]["auroc"] == {"mean": pytest.approx(0.85), "std": pytest.approx(0.05)}
    assert aggregated["accuracy_std"] == pytest.approx(0.05)
    table = evaluation.comparison_markdown(
        {"ice": aggregated, "oe": evaluation.aggregate_runs([_fake_results(0.7, 0.9)])},
        groups={"near": ["near"], "far": ["far"]},
    )
    assert "| Method | AUROC (near) | AUPR-In (near) | FPR95 (near) | AUROC (far)" in table
    assert "| ice | 85.00 ± 5.00 |" in table
    assert "| oe | 70.00 |" in table
    report = evaluation.results_markdown(runs[0], title="x")
    assert "| **mean** | **80.00** |" in report


def test_a_group_of_sets_gets_the_spread_over_runs_of_its_mean():
    def run(near, far):
        result = _fake_results(0.0, 0.9)
        result["sets"]["near"] = {k: {"mean": near, "std": 0.1} for k in metrics.METRIC_KEYS}
        result["sets"]["far"] = {k: {"mean": far, "std": 0.1} for k in metrics.METRIC_KEYS}
        return result

    # Per set the runs differ by 0.2, but each run's mean over both sets is 0.5.
    aggregated = evaluation.aggregate_runs([run(0.4, 0.6), run(0.6, 0.4)])
    assert aggregated["sets"]["near"]["auroc"] == {"mean": pytest.approx(0.5), "std": pytest.approx(0.1)}
    table = evaluation.comparison_markdown({"m": aggregated}, groups={"both": ["near", "far"]})
    assert "| m | 50.00 |" in table  # std 0 over runs: no "±"


def _detector_setup():
    from ice_tf import models

    rng = np.random.default_rng(2)
    backbone = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model = models.OODModel(backbone, keras.layers.Dense(2))
    x_in = rng.normal(1, 1, (60, 4)).astype("float32")
    labels = rng.integers(0, 2, 60).astype("int64")
    x_out = rng.normal(-1, 2, (50, 4)).astype("float32")
    in_ds = tf.data.Dataset.from_tensor_slices((x_in, labels)).batch(16)
    out_ds = tf.data.Dataset.from_tensor_slices((x_out, -np.ones(50, "int64"))).batch(16)
    return model, x_in, labels, x_out, in_ds, {"noise": out_ds}


def test_evaluate_model_with_detectors_matches_metrics_on_their_scores():
    from ice_tf import detectors

    model, x_in, labels, x_out, in_ds, ood = _detector_setup()
    mahalanobis = detectors.Mahalanobis(epsilon=0.01).fit(model, in_ds, verbose=0)
    odin = detectors.ODIN(temperature=10.0, epsilon=0.01, std=0.5)
    for detector in (odin, mahalanobis):
        results, raw = evaluation.evaluate_model(
            model, in_ds, ood, score=detector, protocol="full", verbose=0, return_scores=True)
        expected_in = detector.score(model, x_in)[0].numpy()
        expected_out = detector.score(model, x_out)[0].numpy()
        np.testing.assert_allclose(raw["in"], expected_in, rtol=1e-6)
        for key, value in metrics.ood_metrics(expected_in, expected_out).items():
            assert results["mean"][key]["mean"] == pytest.approx(value, rel=1e-6)
        assert results["score"] == detector.name and results["detector_options"]["epsilon"] == 0.01
        assert results["accuracy"] == pytest.approx(metrics.accuracy(labels, model(x_in).numpy()))
    # A wrapped output score gives exactly what its name gives.
    by_name = evaluation.evaluate_model(model, in_ds, ood, score="energy", protocol="full", verbose=0)
    wrapped = evaluation.evaluate_model(
        model, in_ds, ood, score=detectors.get("energy"), protocol="full", verbose=0)
    assert wrapped == by_name
    # The name "odin" gives ODIN with its defaults (T = 1000, ε = 0.0014, std 1).
    named = evaluation.evaluate_model(model, in_ds, ood, score="odin", protocol="full", verbose=0)
    default = evaluation.evaluate_model(
        model, in_ds, ood, score=detectors.ODIN(), protocol="full", verbose=0)
    assert named == default


def test_evaluate_model_rejects_unfitted_detectors_and_unknown_names():
    model, _, _, _, in_ds, ood = _detector_setup()
    with pytest.raises(ValueError, match="must be fitted first"):
        evaluation.evaluate_model(model, in_ds, ood, score="mahalanobis", verbose=0)
    with pytest.raises(ValueError, match="energy, gen, ice, knn, mahalanobis, max_logit, msp, odin"):
        evaluation.evaluate_model(model, in_ds, ood, score="odn", verbose=0)
