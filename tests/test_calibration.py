"""Calibration metrics (ECE, MCE, Brier, reliability bins), test mixtures and the script."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import load_script, tiny_backbone

from ice_tf import calibration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "calibration.py")


def _reference(confidence, is_in, num_bins):
    """Brute-force float64 loops over samples and bins (bin k: k/M <= c < (k+1)/M, last closed)."""
    count = np.zeros(num_bins)
    sum_conf = np.zeros(num_bins)
    sum_in = np.zeros(num_bins)
    for c, y in zip(map(float, confidence), map(float, is_in)):
        for k in range(num_bins):
            low, high = k / num_bins, (k + 1) / num_bins
            if low <= c < high or (k == num_bins - 1 and low <= c <= 1.0):
                count[k] += 1
                sum_conf[k] += c
                sum_in[k] += y
                break
    ece, mce = 0.0, 0.0
    for k in range(num_bins):
        if count[k]:
            gap = abs(sum_in[k] / count[k] - sum_conf[k] / count[k])
            ece += count[k] / len(confidence) * gap
            mce = max(mce, gap)
    brier = sum((float(c) - float(y)) ** 2 for c, y in zip(confidence, is_in)) / len(confidence)
    return ece, mce, brier, count, sum_in


# ---------------------------------------------------------------- metrics
def test_hand_worked_example_with_values_on_the_edges():
    # 4 bins [0, .25) [.25, .5) [.5, .75) [.75, 1]; 0.5 and 0.75 sit on edges (go up),
    # 0 goes to the first bin and 1 to the (closed) last one.
    confidence = [0.0, 0.2, 0.3, 0.5, 0.6, 1.0, 0.75]
    is_in = [0, 0, 1, 1, 0, 1, 1]
    bins = calibration.reliability_bins(confidence, is_in, num_bins=4)
    np.testing.assert_array_equal(bins.edges, [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(bins.count, [2, 1, 2, 2])
    np.testing.assert_array_equal(bins.count_in, [0, 1, 1, 2])
    np.testing.assert_allclose(bins.mean_confidence, [0.1, 0.3, 0.55, 0.875])
    np.testing.assert_allclose(bins.frequency, [0.0, 1.0, 0.5, 1.0])
    # gaps .1, .7, .05, .125 with weights 2, 1, 2, 2 of 7
    assert calibration.expected_calibration_error(confidence, is_in, 4) == pytest.approx(1.25 / 7)
    assert calibration.maximum_calibration_error(confidence, is_in, 4) == pytest.approx(0.7)
    brier = (0 + 0.04 + 0.49 + 0.25 + 0.36 + 0 + 0.0625) / 7
    assert calibration.brier_score(confidence, is_in) == pytest.approx(brier)
    metrics = calibration.calibration_metrics(confidence, is_in, 4)
    assert metrics["ece"] == pytest.approx(1.25 / 7) and metrics["mce"] == pytest.approx(0.7)
    assert (metrics["num_in"], metrics["num_out"], metrics["num_samples"]) == (4, 3, 7)
    assert metrics["mean_confidence_in"] == pytest.approx((0.3 + 0.5 + 1.0 + 0.75) / 4)
    assert metrics["mean_confidence_out"] == pytest.approx(0.8 / 3)


@pytest.mark.parametrize("num_bins", [1, 7, 10, 15])
def test_matches_a_brute_force_float64_loop_on_random_data(num_bins):
    rng = np.random.default_rng(num_bins)
    confidence = rng.uniform(0, 1, 400) ** 2
    # Values exactly on every edge, and at 0 and 1.
    confidence[:num_bins + 1] = np.arange(num_bins + 1) / num_bins
    is_in = rng.integers(0, 2, 400)
    ece, mce, brier, count, count_in = _reference(confidence, is_in, num_bins)
    bins = calibration.reliability_bins(confidence, is_in, num_bins)
    np.testing.assert_array_equal(bins.count, count)
    np.testing.assert_array_equal(bins.count_in, count_in)
    assert calibration.expected_calibration_error(confidence, is_in, num_bins) == pytest.approx(
        ece, rel=1e-12, abs=1e-15)
    assert calibration.maximum_calibration_error(confidence, is_in, num_bins) == pytest.approx(
        mce, rel=1e-12)
    assert calibration.brier_score(confidence, is_in) == pytest.approx(brier, rel=1e-12)


def test_bin_index_puts_edges_in_the_upper_bin_and_one_in_the_last():
    edges = np.arange(16) / 15
    np.testing.assert_array_equal(calibration.bin_edges(15), edges)
    index = calibration.bin_index(edges, 15)
    np.testing.assert_array_equal(index, [*range(15), 14])
    below = np.nextafter(edges[1:], 0.0)
    np.testing.assert_array_equal(calibration.bin_index(below, 15), range(15))


def test_perfectly_calibrated_sample_has_ece_near_zero():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0, 1, 200_000)
    is_in = rng.uniform(0, 1, confidence.size) < confidence
    assert calibration.expected_calibration_error(confidence, is_in) < 0.01
    # Brier of a calibrated uniform confidence: E[c(1-c)] = 1/6.
    assert calibration.brier_score(confidence, is_in) == pytest.approx(1 / 6, abs=0.005)
    shifted = np.clip(confidence + 0.2, 0, 1)  # overconfident: ECE grows
    assert calibration.expected_calibration_error(shifted, is_in) > 0.1


@pytest.mark.parametrize("constant", [0.0, 0.8, 1.0])
def test_constant_confidence_gives_the_distance_to_the_base_rate(constant):
    is_in = np.r_[np.ones(30), np.zeros(70)]
    confidence = np.full(100, constant)
    assert calibration.expected_calibration_error(confidence, is_in) == pytest.approx(abs(constant - 0.3))
    assert calibration.maximum_calibration_error(confidence, is_in) == pytest.approx(abs(constant - 0.3))
    expected_brier = 0.3 * (1 - constant) ** 2 + 0.7 * constant ** 2
    assert calibration.brier_score(confidence, is_in) == pytest.approx(expected_brier)
    bins = calibration.reliability_bins(confidence, is_in)
    assert bins.count.sum() == 100 and np.count_nonzero(bins.count) == 1
    assert np.isnan(bins.frequency).sum() == 14
    as_dict = bins.to_dict()
    assert as_dict["frequency"].count(None) == 14 and json.dumps(as_dict)


@pytest.mark.parametrize("confidence, is_in, message", [
    ([[0.5]], [1], "1-D"),
    ([0.5, 0.5], [1], "same length"),
    ([], [], "empty"),
    ([0.5, np.nan], [1, 0], "NaN"),
    ([0.5, 1.01], [1, 0], r"\[0, 1\]"),
    ([-0.1, 0.5], [1, 0], r"\[0, 1\]"),
    ([0.5, 0.5], [1, 2], "only 0"),
    ([0.5, 0.5], [1, 0.5], "only 0"),
    (["a", "b"], [1, 0], "numeric"),
])
def test_bad_inputs_raise(confidence, is_in, message):
    with pytest.raises(ValueError, match=message):
        calibration.expected_calibration_error(confidence, is_in)
    with pytest.raises(ValueError, match=message):
        calibration.brier_score(confidence, is_in)


@pytest.mark.parametrize("num_bins", [0, -3, 2.5, True, "15"])
def test_bad_num_bins_raise(num_bins):
    with pytest.raises(ValueError, match="num_bins must be a positive integer"):
        calibration.reliability_bins([0.5], [1], num_bins=num_bins)


def test_booleans_are_accepted_as_labels():
    value = calibration.expected_calibration_error([0.9, 0.2], np.array([True, False]), 10)
    assert value == pytest.approx(0.15)


# ---------------------------------------------------------------- mixture
def test_mixture_uses_all_in_distribution_and_spreads_ood_evenly():
    sizes = {"a": 500, "b": 30, "c": 200}
    in_idx, out_idx = calibration.mixture_indices(100, sizes, ood_fraction=0.5, seed=3)
    np.testing.assert_array_equal(in_idx, np.arange(100))
    # 100 OOD: b can give only 30, a and c share the other 70.
    assert {k: len(v) for k, v in out_idx.items()} == {"a": 35, "b": 30, "c": 35}
    for label, indices in out_idx.items():
        assert len(np.unique(indices)) == len(indices) and indices.max() < sizes[label]
        assert np.all(np.diff(indices) > 0)
    again = calibration.mixture_indices(100, sizes, ood_fraction=0.5, seed=3)[1]
    other = calibration.mixture_indices(100, sizes, ood_fraction=0.5, seed=4)[1]
    assert all(np.array_equal(again[k], out_idx[k]) for k in sizes)
    assert not np.array_equal(other["a"], out_idx["a"])
    _, fifth = calibration.mixture_indices(100, sizes, ood_fraction=0.2, seed=0)
    assert {k: len(v) for k, v in fifth.items()} == {"a": 9, "b": 8, "c": 8}


def test_mixture_subsamples_in_distribution_when_ood_is_short():
    in_idx, out_idx = calibration.mixture_indices(100, {"a": 20}, ood_fraction=0.5, seed=0)
    assert len(in_idx) == 20 and len(out_idx["a"]) == 20
    assert len(np.unique(in_idx)) == 20 and in_idx.max() < 100
    in_idx, out_idx = calibration.mixture_indices(100, {"a": 20}, ood_fraction=0.8, seed=0)
    assert (len(in_idx), len(out_idx["a"])) == (5, 20)


def test_mixture_values_and_labels():
    confidence_in = np.linspace(0.5, 1.0, 10)
    outs = {"x": np.linspace(0.0, 0.1, 50), "y": np.full(3, 0.3)}
    confidence, is_in = calibration.mixture(confidence_in, outs, ood_fraction=0.5, seed=1)
    in_idx, out_idx = calibration.mixture_indices(10, {"x": 50, "y": 3}, 0.5, 1)
    expected = np.concatenate([confidence_in[in_idx], outs["x"][out_idx["x"]], outs["y"][out_idx["y"]]])
    np.testing.assert_array_equal(confidence, expected)
    np.testing.assert_array_equal(is_in, [1] * 10 + [0] * 10)


@pytest.mark.parametrize("num_in, sizes, fraction, message", [
    (10, {"a": 5}, 0.0, "strictly between"),
    (10, {"a": 5}, 1.0, "strictly between"),
    (10, {}, 0.5, "non-empty mapping"),
    (0, {"a": 5}, 0.5, "at least one"),
    (10, {"a": 0}, 0.5, "at least one"),
])
def test_mixture_rejects_bad_arguments(num_in, sizes, fraction, message):
    with pytest.raises(ValueError, match=message):
        calibration.mixture_indices(num_in, sizes, ood_fraction=fraction)


# ----------------------------------------------------------------- script
def _tiny_run(folder, loss):
    import keras

    from ice_tf import layers, models
    from ice_tf.experiment.config import ExperimentConfig

    config = ExperimentConfig(
        loss=loss, backbone="small_cnn", eval_limit=40, eval_batch_size=20, epochs=1,
        ood_datasets=("gaussian", "mnist=embedded_mnist"), output_dir=str(folder),
    )
    head = layers.make_head(config.head_kind, 10)
    if config.head_kind == "gaussian":
        head.confidence_temperature = 2.5  # as a run saves the one it fitted
    model = models.OODModel(tiny_backbone((28, 28, 1)), head)
    os.makedirs(folder)
    model.save(os.path.join(folder, "model.keras"))
    with open(os.path.join(folder, "config.json"), "w") as stream:
        stream.write(config.to_json())
    keras.backend.clear_session()


def _confidences_of_run(folder, temperature=1.0):
    """float64 numpy reference of the in-distribution confidences of a run folder."""
    import keras

    import ice_tf.models  # noqa: F401  (registers the custom classes)
    from ice_tf import experiment
    from ice_tf.experiment.config import ExperimentConfig

    config = ExperimentConfig.from_dict(json.loads((folder / "config.json").read_text()))
    model = keras.models.load_model(folder / "model.keras", compile=False)
    in_ds, _ = experiment.make_eval_data(config)
    outputs = np.concatenate([model.predict_on_batch(x) for x, _ in in_ds]).astype(np.float64)
    if model.gaussian_head:
        return np.exp(outputs.max(axis=1) / temperature)
    shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).max(axis=1)


def test_script_writes_table_json_and_reliability_diagram(tmp_path):
    from matplotlib import pyplot as plt

    for method in ("ce", "ice"):
        _tiny_run(tmp_path / method / "seed1", method)
    completed = subprocess.run(
        [sys.executable, SCRIPT, f"--runs_dir={tmp_path}", "--methods=ce,ice", "--num_bins=10"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    png = tmp_path / "calibration.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = plt.imread(png)
    assert image.ndim == 3 and image.shape[1] > image.shape[0] > 100
    table = (tmp_path / "calibration.md").read_text()
    assert "| Method | Confidence | ECE | MCE | Brier |" in table and "ECE mnist" in table
    assert "| ce | max softmax |" in table and "| ice | exp(max h) |" in table
    assert "| ice, T=2.5 | exp(max h / T), T fitted on validation data |" in table
    assert table in completed.stdout
    results = json.loads((tmp_path / "calibration.json").read_text())
    assert results["ood_fraction"] == 0.5 and results["num_bins"] == 10
    for method in ("ce", "ice"):
        result = results["methods"][method]
        assert (result["num_in"], result["num_out"]) == (40, 40)
        assert result["num_out_by_set"] == {"gaussian": 20, "mnist": 20}
        assert set(result["sets"]) == {"gaussian", "mnist"}
        assert result["sets"]["mnist"]["num_in"] == result["sets"]["mnist"]["num_out"] == 40
        # ECE recomputed from the written bins.
        bins = result["bins"]
        filled = [k for k, n in enumerate(bins["count"]) if n]
        ece = sum(bins["count"][k] * abs(bins["frequency"][k] - bins["mean_confidence"][k])
                  for k in filled) / 80
        assert result["ece"] == pytest.approx(ece, rel=1e-9)
        assert 0 <= result["brier"] <= 1 and sum(bins["count"]) == 80
        # The confidence is the model's own: exp(max h) or max softmax on the run's eval data.
        confidence_in = _confidences_of_run(tmp_path / method / "seed1")
        assert result["mean_confidence_in"] == pytest.approx(confidence_in.mean(), rel=1e-5)
    calibrated = results["methods"]["ice, T=2.5"]
    confidence_in = _confidences_of_run(tmp_path / "ice" / "seed1", temperature=2.5)
    assert calibrated["mean_confidence_in"] == pytest.approx(confidence_in.mean(), rel=1e-5)
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")]


def test_script_over_seeds_averages_each_row(tmp_path):
    for seed in (1, 2):
        for method in ("ce", "ice"):
            _tiny_run(tmp_path / method / f"seed{seed}", method)
    completed = subprocess.run(
        [sys.executable, SCRIPT, f"--runs_dir={tmp_path}", "--methods=ce,ice", "--seeds=1,2"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / "calibration.json").read_text())
    assert results["seeds"] == [1, 2] and list(results["methods"]) == ["ce", "ice", "ice, T fitted"]
    for row in results["methods"].values():
        assert [r["run"][-5:] for r in row["per_seed"]] == ["seed1", "seed2"]
        for key in ("ece", "mce", "brier", "mean_confidence_in", "mean_confidence_out"):
            values = [r[key] for r in row["per_seed"]]
            assert row[key] == pytest.approx(np.mean(values))
            assert row["std"][key] == pytest.approx(np.std(values))
        mnist = [r["sets"]["mnist"]["ece"] for r in row["per_seed"]]
        assert row["sets"]["mnist"]["ece"] == pytest.approx(np.mean(mnist))
    # Each seed's row is that seed's own model.
    confidence_in = _confidences_of_run(tmp_path / "ce" / "seed2")
    assert results["methods"]["ce"]["per_seed"][1]["mean_confidence_in"] == pytest.approx(
        confidence_in.mean(), rel=1e-5)
    table = (tmp_path / "calibration.md").read_text()
    ce = results["methods"]["ce"]
    assert f"| ce | max softmax | {100 * ce['ece']:.2f} ± {100 * ce['std']['ece']:.2f} |" in table
    assert "| ice, T fitted | exp(max h / T), T = 2.50 ± 0.00 fitted on validation data |" in table
    assert "Mean ± std (population) over seeds 1, 2." in table
    with_run = subprocess.run(
        [sys.executable, SCRIPT, f"--run=ce:{tmp_path / 'ce' / 'seed1'}", "--seeds=1,2",
         f"--output={tmp_path / 'x.png'}"], capture_output=True, text=True, cwd=REPO, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert with_run.returncode != 0 and "several --seeds need --runs_dir" in with_run.stderr


def test_script_names_the_command_that_creates_missing_runs(tmp_path):
    from absl import app

    script = load_script("calibration.py")
    with pytest.raises(app.UsageError, match=r"ice-tf demo"):
        script.run_folders(str(tmp_path), ["ce", "ice"], 1, [])
    with pytest.raises(app.UsageError, match="--output_dir="):
        script.run_folders(str(tmp_path), ["ce"], 1, [])
    with pytest.raises(app.UsageError, match="use label:folder"):
        script.run_folders(None, [], 1, ["no-colon"])
    with pytest.raises(app.UsageError, match="--runs_dir"):
        script.run_folders(None, [], 1, [])


def test_exported_from_the_package():
    import ice_tf

    assert ice_tf.calibration is calibration and "calibration" in dir(ice_tf)


# ------------------------------------------------------- the temperature of exp(max h / T)
def test_fit_temperature_minimises_the_balanced_log_loss():
    rng = np.random.default_rng(0)
    max_h_in = -rng.gamma(2.0, 1.5, 400)      # in-distribution: max h near 0
    max_h_out = -rng.gamma(3.0, 6.0, 300)     # outliers: far below
    temperature = calibration.fit_temperature(max_h_in, max_h_out)

    def loss(t):  # float64 reference, written out
        c_in = np.exp(max_h_in / t)
        c_out = np.exp(max_h_out / t)
        return -0.5 * (np.mean(np.log(c_in)) + np.mean(np.log(1.0 - c_out)))

    grid = np.exp(np.linspace(np.log(1e-2), np.log(1e2), 20001))
    best = grid[np.argmin([loss(t) for t in grid])]
    assert temperature == pytest.approx(best, rel=2e-3)
    assert loss(temperature) <= loss(1.0)
    confidence = calibration.temperature_confidence(max_h_in, temperature)
    assert np.all((confidence > 0) & (confidence <= 1))
    # The order, so every ranking metric, is the same at any T.
    np.testing.assert_array_equal(np.argsort(confidence), np.argsort(np.exp(max_h_in)))


def test_fit_temperature_edges_stay_finite():
    t = calibration.fit_temperature(np.zeros(5), np.zeros(5))  # h = 0 everywhere
    assert np.isfinite(t) and t > 0
    t = calibration.fit_temperature(np.array([-1e-9]), np.array([-1e6]))
    assert np.isfinite(t) and t > 0
    with pytest.raises(ValueError, match="finite"):
        calibration.fit_temperature(np.array([np.nan]), np.array([-1.0]))
    with pytest.raises(ValueError, match="> 0"):
        calibration.temperature_confidence(np.array([-1.0]), 0.0)


def test_the_exported_confidence_uses_the_heads_temperature(tmp_path):
    import keras
    import tensorflow as tf
    from ice_tf import export, layers, models

    model = models.OODModel(tiny_backbone(), layers.make_head("gaussian", 3))
    model.head.confidence_temperature = 4.0
    model.save(tmp_path / "m.keras")
    model = keras.models.load_model(tmp_path / "m.keras")
    assert model.head.confidence_temperature == 4.0
    images = np.random.default_rng(0).normal(size=(5, 6, 6, 1)).astype("float32")
    served = export.serving_outputs(model, tf.constant(images))
    expected = np.exp(np.max(model.predict(images, verbose=0), axis=-1) / 4.0)
    np.testing.assert_allclose(served["confidence"].numpy(), expected, rtol=1e-5)


# --------------------------------------------------- Platt's σ(a max h + b)
def test_fit_platt_equals_a_balanced_logistic_regression():
    """float64 reference: sklearn's unpenalised logistic regression of is_in on max h with
    balanced class weights minimises the same balanced log loss."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    max_h_in = -rng.gamma(2.0, 1.5, 400)
    max_h_out = -rng.gamma(3.0, 6.0, 300)
    slope, offset = calibration.fit_platt(max_h_in, max_h_out)
    x = np.concatenate([max_h_in, max_h_out])[:, None]
    y = np.r_[np.ones(400), np.zeros(300)]
    reference = LogisticRegression(C=np.inf, class_weight="balanced", tol=1e-12,
                                   max_iter=10_000).fit(x, y)
    assert slope == pytest.approx(reference.coef_[0, 0], rel=1e-4)
    assert offset == pytest.approx(reference.intercept_[0], rel=1e-4, abs=1e-4)
    confidence = calibration.platt_confidence(max_h_in, slope, offset)
    np.testing.assert_allclose(confidence, 1 / (1 + np.exp(-(slope * max_h_in + offset))),
                               rtol=1e-12)
    # Monotone: the order, so AUROC, is that of max h.
    np.testing.assert_array_equal(np.argsort(confidence, kind="stable"),
                                  np.argsort(max_h_in, kind="stable"))


def test_fit_platt_edges_stay_finite():
    slope, offset = calibration.fit_platt(np.zeros(5), np.zeros(5))  # nothing to tell apart
    assert np.isfinite(slope) and slope > 0 and np.isfinite(offset)
    slope, offset = calibration.fit_platt(np.array([-1e-9]), np.array([-1e6]))  # separable
    assert np.isfinite(slope) and np.isfinite(offset)
    confidence = calibration.platt_confidence(np.array([-1e-9, -1e6, -1e30]), slope, offset)
    assert np.all(np.isfinite(confidence)) and confidence[0] > 0.5 > confidence[1]
    with pytest.raises(ValueError, match="finite"):
        calibration.fit_platt(np.array([np.inf]), np.array([-1.0]))
    with pytest.raises(ValueError, match="> 0"):
        calibration.platt_confidence(np.array([-1.0]), 0.0, 1.0)


def test_the_exported_confidence_uses_the_heads_platt_map(tmp_path):
    import keras
    import tensorflow as tf
    from ice_tf import export, layers, models

    model = models.OODModel(tiny_backbone(), layers.make_head("gaussian", 3))
    model.head.confidence_platt = (0.7, 1.5)
    model.head.confidence_temperature = 4.0  # not used: the Platt map is
    model.save(tmp_path / "m.keras")
    model = keras.models.load_model(tmp_path / "m.keras")
    assert model.head.confidence_platt == (0.7, 1.5)
    images = np.random.default_rng(0).normal(size=(5, 6, 6, 1)).astype("float32")
    served = export.serving_outputs(model, tf.constant(images))
    max_h = np.max(model.predict(images, verbose=0), axis=-1).astype(np.float64)
    np.testing.assert_allclose(served["confidence"].numpy(),
                               calibration.platt_confidence(max_h, 0.7, 1.5), rtol=1e-5)
