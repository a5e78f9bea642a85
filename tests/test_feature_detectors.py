"""The post-hoc detectors on features (KNN, ViM, ReAct, ASH-S, SCALE, relative Mahalanobis)
and GEN, each against a float64 numpy reference of its paper's formula, written as
OpenOOD's postprocessors compute it."""

import numpy as np
import pytest
import tensorflow as tf

import ice_tf
from ice_tf import detectors, models, scores
from ice_tf.experiment import evaluation, run_folder


def _logsumexp(values):
    top = values.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(values - top).sum(axis=1, keepdims=True)))[:, 0]


@pytest.fixture(scope="module")
def fitted():
    """A small CNN with a linear head, its training batches, test images, and the
    float64 features and head weights the references use."""
    rng = np.random.default_rng(0)
    model = models.build_model("small_cnn", (28, 28, 1), 10, head="linear")
    x_train = rng.normal(0, 1, (300, 28, 28, 1)).astype("float32")
    y_train = np.arange(300) % 10
    x_test = np.concatenate([rng.normal(0, 1, (20, 28, 28, 1)),
                             rng.normal(2, 3, (20, 28, 28, 1))]).astype("float32")
    train = tf.data.Dataset.from_tensor_slices((x_train, y_train)).batch(64)
    features_of = lambda x: np.asarray(model.features(x, training=False), np.float64)  # noqa: E731
    kernel, bias = (np.asarray(w, np.float64) for w in model.head.get_weights())
    return dict(model=model, train=train, x_test=x_test, y_train=y_train,
                f_train=features_of(x_train), f_test=features_of(x_test), kernel=kernel, bias=bias)


def _scores(detector, fitted):
    detector.fit(fitted["model"], fitted["train"], verbose=0)
    values, outputs = detector.score(fitted["model"], fitted["x_test"])
    return np.asarray(values, np.float64), np.asarray(outputs, np.float64)


def _normalised(values):
    return values / np.linalg.norm(values, axis=1, keepdims=True)


@pytest.mark.parametrize("chunk", [8192, 37])  # one chunk of the bank, and many
def test_knn_is_minus_the_distance_to_the_kth_normalised_training_feature(fitted, chunk, monkeypatch):
    monkeypatch.setattr(detectors.KNN, "BANK_CHUNK", chunk)
    values, _ = _scores(detectors.KNN(k=7), fitted)
    bank, query = _normalised(fitted["f_train"]), _normalised(fitted["f_test"])
    distances = np.linalg.norm(query[:, None, :] - bank[None, :, :], axis=2)
    reference = -np.sort(distances, axis=1)[:, 6]
    np.testing.assert_allclose(values, reference, rtol=1e-3, atol=1e-4)


def _vim_reference(f_train, f_test, logits_train, logits_test, origin, dim):
    centred = f_train - origin
    # OpenOOD takes np.linalg.eig, the same on a covariance without repeated eigenvalues;
    # dead ReLU units repeat the eigenvalue 0, where eig's vectors need not be orthogonal.
    values, vectors = np.linalg.eigh(centred.T @ centred / len(centred))
    residual = np.ascontiguousarray(vectors.T[np.argsort(values * -1)[dim:]].T)
    alpha = logits_train.max(axis=-1).mean() / np.linalg.norm(centred @ residual, axis=-1).mean()
    virtual = np.linalg.norm((f_test - origin) @ residual, axis=-1) * alpha
    return -virtual + _logsumexp(logits_test)


def test_vim_matches_the_virtual_logit_of_the_paper(fitted):
    # D below the rank of the features: an untrained network's dead units make the
    # covariance singular, and a D beyond its rank would pick arbitrary null directions.
    rank = np.linalg.matrix_rank(np.cov(fitted["f_train"].T))
    dim = min(8, rank - 1)
    values, outputs = _scores(detectors.ViM(dim=dim), fitted)
    w, b = fitted["kernel"].T, fitted["bias"]
    origin = -np.matmul(np.linalg.pinv(w), b)
    assert detectors.vim_dimension(128) == 64
    assert detectors.vim_dimension(2048) == 1000 and detectors.vim_dimension(768) == 512
    reference = _vim_reference(fitted["f_train"], fitted["f_test"], fitted["f_train"] @ w.T + b,
                               fitted["f_test"] @ w.T + b, origin, dim)
    np.testing.assert_allclose(values, reference, rtol=1e-3, atol=1e-3)


def test_vim_on_a_gaussian_head_centres_at_the_feature_mean():
    rng = np.random.default_rng(1)
    model = models.build_model("small_cnn", (28, 28, 1), 4, head="gaussian")
    x = rng.normal(0, 1, (120, 28, 28, 1)).astype("float32")
    train = tf.data.Dataset.from_tensor_slices((x, np.arange(120) % 4)).batch(60)
    detector = detectors.ViM(dim=8).fit(model, train, verbose=0)
    features = np.asarray(model.features(x, training=False), np.float64)
    np.testing.assert_allclose(detector.statistics["origin"], features.mean(0), rtol=1e-5, atol=1e-6)
    values, outputs = detector.score(model, x[:10])
    outputs_train = np.asarray(model.head(features.astype("float32")), np.float64)
    reference = _vim_reference(features, features[:10], outputs_train,
                               np.asarray(outputs, np.float64), features.mean(0), 8)
    np.testing.assert_allclose(np.asarray(values), reference, rtol=1e-3, atol=1e-3)


def test_react_clips_at_the_90th_percentile_of_training_activations(fitted):
    values, _ = _scores(detectors.ReAct(), fitted)
    threshold = np.percentile(fitted["f_train"].ravel(), 90)
    logits = np.minimum(fitted["f_test"], threshold) @ fitted["kernel"] + fitted["bias"]
    np.testing.assert_allclose(values, _logsumexp(logits), rtol=1e-4, atol=1e-4)


def _shaped(features, percentile, prune):
    count = features.shape[1] - int(np.round(features.shape[1] * percentile / 100.0))
    shaped = np.zeros_like(features)
    for row, values in enumerate(features):
        top = np.argsort(-values)[:count]
        kept = np.zeros_like(values)
        kept[top] = values[top]
        scale = np.exp(values.sum() / kept.sum())
        shaped[row] = (kept if prune else values) * scale
    return shaped


@pytest.mark.parametrize("detector, prune", [(detectors.ASH, True), (detectors.SCALE, False)])
def test_ash_and_scale_shape_the_activations_as_their_papers(fitted, detector, prune):
    assert not detector.needs_fit
    values, _ = detector(percentile=90).score(fitted["model"], fitted["x_test"])
    logits = _shaped(fitted["f_test"], 90, prune) @ fitted["kernel"] + fitted["bias"]
    np.testing.assert_allclose(np.asarray(values), _logsumexp(logits), rtol=1e-4, atol=1e-3)


def test_relative_mahalanobis_subtracts_the_background_distance(fitted):
    values, _ = _scores(detectors.RelativeMahalanobis(), fitted)
    f_train, f_test, labels = fitted["f_train"], fitted["f_test"], fitted["y_train"]
    means = np.stack([f_train[labels == c].mean(0) for c in range(10)])
    centred = f_train - means[labels]
    # Eigenvalues under d · ε_float32 · λ_max count as zero (dead units), as for Mahalanobis.
    cutoff = f_train.shape[1] * np.finfo(np.float32).eps
    precision = np.linalg.pinv(centred.T @ centred / len(f_train), rcond=cutoff, hermitian=True)
    background_mean = f_train.mean(0)
    background = np.linalg.pinv(np.cov(f_train.T, bias=True), rcond=cutoff, hermitian=True)

    def distance(points, mean, inverse):
        difference = points - mean
        return np.einsum("nd,de,ne->n", difference, inverse, difference)

    class_distances = np.stack([distance(f_test, means[c], precision) for c in range(10)], 1)
    reference = -class_distances.min(1) + distance(f_test, background_mean, background)
    np.testing.assert_allclose(values, reference, rtol=1e-3, atol=1e-4 * np.abs(reference).max())


def test_gen_is_the_generalized_entropy_of_the_largest_probabilities():
    logits = np.random.default_rng(2).normal(0, 3, (6, 12))
    probabilities = np.exp(logits - _logsumexp(logits)[:, None])
    for top in (100, 5):
        largest = -np.sort(-probabilities, axis=1)[:, :min(top, 12)]
        reference = -(largest ** 0.1 * (1 - largest) ** 0.1).sum(1)
        np.testing.assert_allclose(np.asarray(scores.gen(logits, top=top)), reference, rtol=1e-5)
    assert "gen" in detectors.names() and "gen" in scores.names()


def test_fitted_statistics_are_saved_beside_the_model_and_reused(fitted, tmp_path):
    path = tmp_path / run_folder.stats_file("knn")
    first = detectors.KNN(k=3, stats_path=str(path), fingerprint={"model": "a"})
    first.fit(fitted["model"], fitted["train"], verbose=0)
    assert path.exists() and not first.reused
    again = detectors.KNN(k=3, stats_path=str(path), fingerprint={"model": "a"})
    again.fit(fitted["model"], fitted["train"], verbose=0)
    assert again.reused
    np.testing.assert_array_equal(again.statistics["bank"], first.statistics["bank"])
    other = detectors.KNN(k=3, stats_path=str(path), fingerprint={"model": "b"})
    assert not other.fit(fitted["model"], fitted["train"], verbose=0).reused  # stale: refitted
    assert run_folder.stats_file("knn") in run_folder.PRODUCT_FILES
    assert evaluation.default_stats_path("runs/x/model.keras", "vim").endswith("runs/x/vim_stats.npz")


def test_ice_tf_evaluate_takes_every_new_detector_on_a_plain_classifier(fitted):
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (60, 28, 28, 1)).astype("float32")
    y = np.arange(60) % 10
    names = ["knn", "vim", "react", "ash", "scale", "relative_mahalanobis", "gen"]
    report = ice_tf.evaluate(fitted["model"], (x, y), {"noise": rng.normal(3, 3, (30, 28, 28, 1))},
                             scores=names, train_data=(x, y), num_draws=1, verbose=0)
    for name in names:
        assert 0.0 <= report.results[name]["mean"]["auroc"]["mean"] <= 1.0, name
    with pytest.raises(ValueError, match="score 'knn' fits statistics: pass train_data"):
        ice_tf.evaluate(fitted["model"], (x, y), {"noise": x}, scores=["knn"], verbose=0)


def test_the_run_folder_keeps_the_statistics_of_every_fitted_detector():
    assert sorted(run_folder.FITTED_DETECTORS) == detectors.fitted_names()
