"""Detectors: ODIN and Mahalanobis against float64 numpy references, the registry and
the saved Mahalanobis statistics."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from ice_tf import detectors, experiment, layers, models, scores
from ice_tf.experiment import evaluation, run_data, run_folder
from ice_tf.experiment.config import ExperimentConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (3, 3, 2)
STD = np.array([0.5, 2.0])  # per channel, unequal so that a missing division shows


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _sign(g):
    return np.where(g >= 0, 1.0, -1.0)


def _linear_model(num_classes=4, seed=0):
    """f(x) = vec(x) W + b, so that the ODIN gradient is analytic."""
    rng = np.random.default_rng(seed)
    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(num_classes)])
    w = rng.normal(0, 1, (np.prod(SHAPE), num_classes))
    b = rng.normal(0, 0.5, num_classes)
    model.layers[-1].set_weights([w.astype("float32"), b.astype("float32")])
    return model, w, b


def _odin_reference(x, w, b, temperature, epsilon, std):
    flat = x.reshape(len(x), -1).astype(np.float64)
    logits = flat @ w + b
    p = _softmax(logits / temperature)
    onehot = np.eye(w.shape[1])[logits.argmax(-1)]
    gradient = (p - onehot) @ w.T / temperature  # ∇_x -log S_ŷ(x; T)
    step = (_sign(gradient).reshape(x.shape) / std).reshape(len(x), -1)
    perturbed = flat - epsilon * step
    return _softmax((perturbed @ w + b) / temperature).max(-1), gradient


@pytest.mark.parametrize("temperature,epsilon", [(1000.0, 0.0014), (10.0, 0.05), (1.0, 0.0)])
def test_odin_matches_numpy_on_a_linear_model(temperature, epsilon):
    model, w, b = _linear_model()
    x = np.random.default_rng(1).normal(0, 1, (40, *SHAPE)).astype("float32")
    expected, gradient = _odin_reference(x, w, b, temperature, epsilon, STD)
    # The reference's signs are trustworthy where the float32 gradient cannot flip.
    assert not epsilon or np.abs(gradient).min() > 1e-5 / temperature
    odin = detectors.get("odin", temperature=temperature, epsilon=epsilon, std=STD)
    score, outputs = odin.score(model, x)
    np.testing.assert_allclose(score.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(outputs.numpy(), x.reshape(40, -1) @ w + b, rtol=1e-4, atol=1e-4)
    if epsilon:
        # The step raises the tempered max softmax of every image.
        clean = _softmax((x.reshape(40, -1) @ w + b) / temperature).max(-1)
        assert np.all(score.numpy() > clean)
        without_std = detectors.ODIN(temperature, epsilon, std=1.0).score(model, x)[0].numpy()
        assert np.abs(without_std - expected).max() > 1e-4 * np.abs(expected - clean).max()


def test_odin_works_on_gaussian_head_outputs():
    backbone = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(5)])
    model = models.OODModel(backbone, layers.make_head("gaussian", 3))
    x = np.random.default_rng(2).normal(0, 1, (8, *SHAPE)).astype("float32")
    score, outputs = detectors.ODIN(temperature=10.0, epsilon=0.01).score(model, x)
    h = model(x).numpy()
    np.testing.assert_allclose(outputs.numpy(), h, rtol=1e-5)
    assert np.all(h <= 0) and np.all(score.numpy() > _softmax(h / 10.0).max(-1))


# ----------------------------------------------------------------- Mahalanobis
def _linear_backbone_model(num_classes=3, feature_dim=5, seed=0, dead_feature=False):
    """z = vec(x) A + c (analytic gradients) and a linear head, in an OODModel."""
    rng = np.random.default_rng(seed)
    backbone = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(feature_dim)])
    a = rng.normal(0, 1, (np.prod(SHAPE), feature_dim))
    c = rng.normal(0, 1, feature_dim)
    if dead_feature:
        a[:, -1], c[-1] = 0.0, 0.0
    backbone.layers[-1].set_weights([a.astype("float32"), c.astype("float32")])
    model = models.OODModel(backbone, keras.layers.Dense(num_classes))
    return model, a.astype("float32").astype(np.float64), c.astype("float32").astype(np.float64)


def _train_data(num=90, num_classes=3, seed=3):
    rng = np.random.default_rng(seed)
    labels = np.arange(num) % num_classes
    x = rng.normal(0, 1, (num, *SHAPE)).astype("float32") + labels[:, None, None, None]
    return x, labels.astype("int64")


def _dataset(x, labels, batch=32):
    return tf.data.Dataset.from_tensor_slices((x, labels)).batch(batch)


def _reference_statistics(x, labels, a, c, num_classes=3):
    z = x.reshape(len(x), -1).astype(np.float64) @ a + c
    means = np.stack([z[labels == k].mean(0) for k in range(num_classes)])
    centred = z - means[labels]
    return means, centred.T @ centred / len(z)


def _reference_mahalanobis(x, a, c, means, precision, epsilon, std):
    def loglik(z):
        diff = z[:, None, :] - means[None]
        return -0.5 * np.einsum("bkd,de,bke->bk", diff, precision, diff)

    flat = x.reshape(len(x), -1).astype(np.float64)
    z = flat @ a + c
    closest = loglik(z).argmax(-1)
    gradient = (z - means[closest]) @ precision @ a.T  # ∇_x ½ d(z, μ_ĉ)
    perturbed = flat - epsilon * (_sign(gradient).reshape(x.shape) / std).reshape(len(x), -1)
    return loglik(perturbed @ a + c).max(-1), gradient


@pytest.mark.parametrize("epsilon", [0.0, 0.02])
def test_mahalanobis_statistics_and_scores_match_numpy(epsilon):
    model, a, c = _linear_backbone_model()
    x_train, y_train = _train_data()
    detector = detectors.get("mahalanobis", epsilon=epsilon, std=STD).fit(
        model, _dataset(x_train, y_train), verbose=0
    )
    means, covariance = _reference_statistics(x_train, y_train, a, c)
    np.testing.assert_allclose(detector.means, means, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(detector.covariance, covariance, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(detector.precision, np.linalg.inv(covariance), rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(detector.counts, [30, 30, 30])

    x = np.random.default_rng(4).normal(0.5, 1.5, (25, *SHAPE)).astype("float32")
    expected, gradient = _reference_mahalanobis(x, a, c, means, np.linalg.inv(covariance), epsilon, STD)
    assert np.abs(gradient).min() > 1e-4
    score, outputs = detector.score(model, x)
    np.testing.assert_allclose(score.numpy(), expected, rtol=1e-3)
    np.testing.assert_allclose(outputs.numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
    if epsilon:
        clean, _ = _reference_mahalanobis(x, a, c, means, np.linalg.inv(covariance), 0.0, STD)
        assert np.all(score.numpy() > clean)  # the step moves towards the closest class


def test_mahalanobis_uses_a_pseudo_inverse_for_a_singular_covariance():
    model, a, c = _linear_backbone_model(dead_feature=True)
    x_train, y_train = _train_data()
    detector = detectors.Mahalanobis().fit(model, _dataset(x_train, y_train), verbose=0)
    means, covariance = _reference_statistics(x_train, y_train, a, c)
    assert np.linalg.matrix_rank(covariance) == 4
    precision = np.linalg.pinv(covariance, hermitian=True)
    np.testing.assert_allclose(detector.precision, precision, rtol=1e-3, atol=1e-4)
    x = np.random.default_rng(5).normal(0, 1, (10, *SHAPE)).astype("float32")
    expected, _ = _reference_mahalanobis(x, a, c, means, precision, 0.0, 1.0)
    np.testing.assert_allclose(detector.score(model, x)[0].numpy(), expected, rtol=1e-3)


def test_tied_precision_drops_tiny_eigenvalues():
    rng = np.random.default_rng(6)
    basis = np.linalg.qr(rng.normal(size=(4, 4)))[0]
    covariance = basis @ np.diag([2.0, 1.0, 0.5, 1e-12]) @ basis.T
    expected = basis[:, :3] @ np.diag([0.5, 1.0, 2.0]) @ basis[:, :3].T
    np.testing.assert_allclose(detectors.tied_precision(covariance), expected, atol=1e-10)


def test_mahalanobis_needs_every_class_and_a_fit():
    model, _, _ = _linear_backbone_model()
    x_train, y_train = _train_data()
    keep = y_train != 2
    with pytest.raises(ValueError, match=r"classes \[2\] have none"):
        detectors.Mahalanobis().fit(model, _dataset(x_train[keep], y_train[keep]), verbose=0)
    with pytest.raises(ValueError, match="fit"):
        detectors.Mahalanobis().score(model, x_train[:2])


# ------------------------------------------------------------ saved statistics
class _Untouchable:
    """A training set that must not be read (the statistics come from the file)."""

    def __iter__(self):
        raise AssertionError("the training set was read although saved statistics matched.")


def test_saved_statistics_are_reused_and_refitted_when_stale(tmp_path):
    model, _, _ = _linear_backbone_model()
    x_train, y_train = _train_data()
    path = str(tmp_path / "stats.npz")
    first = detectors.Mahalanobis(stats_path=path, fingerprint={"model": "a"}).fit(
        model, _dataset(x_train, y_train), verbose=0)
    assert not first.reused and os.path.exists(path)
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []
    stored = np.load(path)
    np.testing.assert_array_equal(stored["means"], first.means)
    np.testing.assert_array_equal(stored["precision"], first.precision)

    again = detectors.Mahalanobis(stats_path=path, fingerprint={"model": "a"}).fit(model, _Untouchable(), verbose=0)
    assert again.reused
    np.testing.assert_array_equal(again.means, first.means)
    np.testing.assert_array_equal(again.score(model, x_train[:5])[0], first.score(model, x_train[:5])[0])

    # Another model file (fingerprint), a refit request or a corrupt file: fitted anew.
    half = _dataset(x_train[:45], y_train[:45])
    stale = detectors.Mahalanobis(stats_path=path, fingerprint={"model": "b"}).fit(model, half, verbose=0)
    assert not stale.reused and not np.allclose(stale.means, first.means)
    assert json.loads(str(np.load(path)["fingerprint"])) == {"model": "b"}
    forced = detectors.Mahalanobis(stats_path=path, fingerprint={"model": "b"}, refit=True)
    assert not forced.fit(model, _dataset(x_train, y_train), verbose=0).reused
    with open(path, "wb") as stream:
        stream.write(b"not an npz")
    assert not detectors.Mahalanobis(stats_path=path, fingerprint={"model": "b"}).fit(
        model, half, verbose=0).reused


def test_for_run_ties_statistics_to_the_model_file(tmp_path):
    import hashlib

    model, _, _ = _linear_backbone_model()
    model_path = str(tmp_path / "model.keras")
    model.save(model_path)
    fingerprint = detectors.model_fingerprint(model_path)
    assert fingerprint["sha256"] == hashlib.sha256(open(model_path, "rb").read()).hexdigest()
    assert fingerprint["bytes"] == os.path.getsize(model_path)
    config = ExperimentConfig(in_dataset="embedded_fashion_mnist")
    detector = evaluation.for_run("mahalanobis", config, model_path, mahalanobis_epsilon=0.001)
    assert detector.stats_path == str(tmp_path / run_folder.STATS_FILE)
    assert detector.epsilon == 0.001 and detector.fingerprint["model"] == fingerprint
    assert evaluation.default_stats_path(str(tmp_path / "best.keras")) == str(
        tmp_path / "best_mahalanobis_stats.npz")
    odin = evaluation.for_run("odin", config, model_path, odin_temperature=100.0)
    assert odin.temperature == 100.0 and odin.epsilon == 0.0014
    np.testing.assert_allclose(odin.std.numpy(), [0.353011])
    assert isinstance(evaluation.for_run("energy", config, model_path), detectors.OutputScore)
    # New weights, a new file hash: the saved statistics no longer match.
    x_train, y_train = _train_data()
    detector.fit(model, _dataset(x_train, y_train), verbose=0)
    model.backbone.layers[-1].set_weights([w * 2 for w in model.backbone.layers[-1].get_weights()])
    model.save(model_path)
    refreshed = evaluation.for_run("mahalanobis", config, model_path)
    assert not refreshed.fit(model, _dataset(x_train, y_train), verbose=0).reused
    np.testing.assert_allclose(refreshed.means, 2 * detector.means, rtol=1e-5, atol=1e-5)
    assert evaluation.for_run("mahalanobis", config, model_path).fit(model, _Untouchable(), verbose=0).reused


def test_train_dataset_for_reads_the_runs_training_images_unaugmented():
    from ice_tf import data

    config = ExperimentConfig(limit_train=50, eval_batch_size=20, seed=3)
    batches = list(run_data.statistics_data(config))
    images = np.concatenate([x.numpy() for x, _ in batches])
    assert [len(x) for x, _ in batches] == [20, 20, 10] and images.shape[1:] == (28, 28, 1)
    mean, std = data.normalization(config.in_dataset)
    raw = np.stack([x.numpy() for x, _ in data.load(config.in_dataset, "train", limit=50, seed=3)])
    np.testing.assert_allclose(images, (raw / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ registry
def test_registry_names_output_scores_and_errors():
    assert detectors.names() == sorted([*scores.names(), "mahalanobis", "odin", "knn", "vim",
                                        "react", "ash", "scale", "relative_mahalanobis"])
    model, w, b = _linear_model()
    x = np.random.default_rng(7).normal(0, 1, (6, *SHAPE)).astype("float32")
    for name in scores.names():
        value, outputs = detectors.get(name).score(model, x)
        np.testing.assert_allclose(value.numpy(), scores.get(name)(model(x)).numpy(), rtol=1e-6)
        assert not detectors.get(name).needs_fit
    assert detectors.get("mahalanobis").needs_fit and detectors.get("odin").temperature == 1000.0
    with pytest.raises(ValueError, match="ash, energy, gen, ice, knn, mahalanobis, max_logit, msp, "
                       "odin, react, relative_mahalanobis, scale, vim"):
        detectors.get("odni")
    with pytest.raises(ValueError, match="takes no options"):
        detectors.get("msp", temperature=2.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        detectors.get("odin", temperature=0.0)
    with pytest.raises(ValueError, match="std must be positive"):
        detectors.ODIN(std=[0.5, 0.0])
    with pytest.raises(ValueError, match="valid detectors"):
        evaluation.for_run("gram", ExperimentConfig(), "model.keras")


# ------------------------------------------------------------ evaluate.py
def _tiny_run_folder(path, loss="ce", **overrides):
    """A run folder as train.py writes it (untrained weights: only the plumbing is tested)."""
    config = ExperimentConfig(
        loss=loss, backbone="small_cnn", limit_train=200, eval_limit=40, eval_batch_size=20,
        eval_draws=2, ood_datasets=("gaussian", "mnist=embedded_mnist"), output_dir=str(path),
        **overrides,
    ).validate()
    os.makedirs(path, exist_ok=True)
    keras.utils.set_random_seed(0)
    experiment.build(config, tf.distribute.get_strategy()).save(os.path.join(path, "model.keras"))
    experiment.write_atomic(os.path.join(path, "config.json"), config.to_json() + "\n")
    return config


def _script(name, *args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    completed = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", name), *args],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )
    return completed


def test_evaluate_script_runs_post_hoc_detectors_and_reuses_statistics(tmp_path):
    run_dir = tmp_path / "run"
    _tiny_run_folder(run_dir)
    args = [f"--model={run_dir}", "--scores=msp,odin,mahalanobis", "--odin_temperature=100",
            "--mahalanobis_epsilon=0.001"]
    first = _script("evaluate.py", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.load(open(run_dir / "evaluation-oe.json"))
    assert list(results) == ["msp", "odin", "mahalanobis"]
    assert results["odin"]["detector_options"]["temperature"] == 100.0
    assert results["mahalanobis"]["detector_options"]["epsilon"] == 0.001
    assert results["odin"]["accuracy"] == results["msp"]["accuracy"] == results["mahalanobis"]["accuracy"]
    assert results["msp"]["num_in"] == 40 and set(results["odin"]["sets"]) == {"gaussian", "mnist"}
    assert (run_dir / run_folder.STATS_FILE).exists()
    assert "Score `mahalanobis`" in first.stdout and "reusing" not in first.stdout
    # A later evaluation of the same run finds the saved statistics and reads no training image.
    config = ExperimentConfig.from_dict(json.load(open(run_dir / "config.json")))
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    reloaded = evaluation.for_run("mahalanobis", config, str(run_dir / "model.keras"))
    assert reloaded.fit(model, _Untouchable(), verbose=0).reused
