"""GaussianLayer (Eq. 0.11) against float64 numpy references."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ice_tf import layers

SIZES = [(10, 128), (10, 640), (100, 128), (100, 640)]


def _random_scale_tril(rng, dim):
    """A well-conditioned lower-triangular L with a positive diagonal."""
    strictly_lower = np.tril(rng.normal(0.0, 0.3 / np.sqrt(dim), (dim, dim)), -1)
    return strictly_lower + np.diag(rng.uniform(0.5, 1.5, dim))


def _layer_with(means, scale):
    num_classes, dim = means.shape
    layer = layers.GaussianLayer(num_classes)
    layer.build((None, dim))
    layer.means.assign(means.astype("float32"))
    layer.scale_raw.assign((np.tril(scale, -1) / np.diag(scale)[None, :]).astype("float32"))
    diagonal = np.diag(scale) - 1e-5
    layer.diag_raw.assign((diagonal + np.log(-np.expm1(-diagonal))).astype("float32"))
    return layer


def reference_h(z, means, scale):
    """h_i(z) = -(z - m_i)^T (L L^T)^{-1} (z - m_i), float64."""
    precision = np.linalg.inv(scale @ scale.T)
    diff = z[:, None, :] - means[None, :, :]
    return -np.einsum("bkd,de,bke->bk", diff, precision, diff)


def reference_h_gradients(z, means, scale, upstream):
    """Gradients of sum(upstream * h) w.r.t. z, means and L (lower part), float64."""
    precision = np.linalg.inv(scale @ scale.T)
    diff = z[:, None, :] - means[None, :, :]  # (B, K, d)
    weighted = np.einsum("bk,bkd->bkd", upstream, diff)
    grad_z = -2.0 * weighted.sum(axis=1) @ precision
    grad_means = 2.0 * weighted.sum(axis=0) @ precision
    # dh/dL = 2 L^{-T} a a^T with a = L^{-1}(z - m).
    whitened = np.linalg.solve(scale, diff.reshape(-1, diff.shape[-1]).T)  # (d, B*K)
    outer = (whitened * upstream.reshape(-1)) @ whitened.T
    grad_scale = np.tril(2.0 * np.linalg.solve(scale.T, outer))
    return grad_z, grad_means, grad_scale


def _relative(actual, expected):
    return np.linalg.norm(actual - expected) / np.linalg.norm(expected)


@pytest.mark.parametrize("num_classes,dim", SIZES)
def test_h_and_gradients_match_float64_reference(num_classes, dim):
    rng = np.random.default_rng(dim + num_classes)
    batch = 16
    means = rng.normal(size=(num_classes, dim))
    scale = _random_scale_tril(rng, dim)
    z = means[rng.integers(0, num_classes, batch)] + rng.normal(0.0, 0.7, (batch, dim))
    upstream = rng.normal(size=(batch, num_classes))
    layer = _layer_with(means, scale)

    z_tensor = tf.constant(z, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(z_tensor)
        h = layer(z_tensor)
        objective = tf.reduce_sum(h * tf.constant(upstream, tf.float32))
    grad_z, grad_means, grad_scale_raw, grad_diag_raw = tape.gradient(
        objective, [z_tensor, layer.means, layer.scale_raw, layer.diag_raw]
    )

    expected = reference_h(z, means, scale)
    assert np.max(np.abs(h.numpy() - expected) / np.abs(expected)) <= 1e-4
    ref_z, ref_means, ref_scale = reference_h_gradients(z, means, scale, upstream)
    assert _relative(grad_z.numpy(), ref_z) <= 1e-4
    assert _relative(grad_means.numpy(), ref_means) <= 1e-4
    # Chain rule through L = (I + N) diag(s), s = softplus(diag_raw) + 1e-5.
    diagonal = np.diag(scale)
    shape = np.tril(scale, -1) / diagonal[None, :]
    assert _relative(grad_scale_raw.numpy(), np.tril(ref_scale, -1) * diagonal[None, :]) <= 1e-4
    grad_diagonal = np.sum(ref_scale * (shape + np.eye(dim)), axis=0)
    diag_raw = layer.diag_raw.numpy().astype(np.float64)
    ref_diag_raw = grad_diagonal / (1.0 + np.exp(-diag_raw))
    assert _relative(grad_diag_raw.numpy(), ref_diag_raw) <= 1e-4
    # Only the strictly-lower part of scale_raw is used.
    assert np.all(np.triu(grad_scale_raw.numpy()) == 0.0)


def test_h_is_never_positive_and_zero_on_a_mean():
    rng = np.random.default_rng(1)
    layer = _layer_with(rng.normal(size=(5, 32)), _random_scale_tril(rng, 32))
    z = np.concatenate([layer.means.numpy(), rng.normal(0, 3, (200, 32)).astype("float32")])
    h = layer(z).numpy()
    assert np.all(h <= 0.0)
    assert np.allclose(np.diag(h[:5]), 0.0, atol=1e-3)


@pytest.mark.parametrize("case", ["on_mean", "huge_positive", "huge_negative", "zeros"])
def test_numeric_edges_give_finite_values_and_gradients(case):
    rng = np.random.default_rng(2)
    layer = _layer_with(rng.normal(size=(10, 64)), _random_scale_tril(rng, 64))
    z = {
        "on_mean": layer.means.numpy()[:4],
        "huge_positive": np.full((4, 64), 1e4, np.float32),
        "huge_negative": np.full((4, 64), -1e4, np.float32),
        "zeros": np.zeros((4, 64), np.float32),
    }[case]
    z = tf.constant(z)
    with tf.GradientTape() as tape:
        tape.watch(z)
        h = layer(z)
        total = tf.reduce_sum(h)
    gradients = tape.gradient(total, [z, *layer.trainable_variables])
    assert np.all(np.isfinite(h.numpy())) and np.all(h.numpy() <= 0)
    for gradient in gradients:
        assert np.all(np.isfinite(tf.convert_to_tensor(gradient).numpy()))


def test_initial_scale_is_identity_and_scale_tril_is_lower_with_positive_diagonal():
    layer = layers.GaussianLayer(3)
    layer.build((None, 6))
    np.testing.assert_allclose(layer.scale_tril.numpy(), np.eye(6), atol=1e-6)
    layer.scale_raw.assign(np.random.default_rng(0).normal(size=(6, 6)).astype("float32"))
    layer.diag_raw.assign(np.full(6, -30.0, np.float32))
    scale = layer.scale_tril.numpy()
    assert np.all(np.triu(scale, 1) == 0) and np.all(np.diag(scale) > 0)


def test_initialize_from_features_is_the_gda_estimate():
    rng = np.random.default_rng(3)
    num_classes, dim, n = 4, 8, 4000
    true_scale = _random_scale_tril(rng, dim)
    labels = np.arange(n) % num_classes
    class_means = rng.normal(0, 3, (num_classes, dim))
    features = class_means[labels] + rng.normal(size=(n, dim)) @ true_scale.T
    layer = layers.GaussianLayer(num_classes).initialize_from_features(features, labels)

    expected_means = np.stack([features[labels == k].mean(0) for k in range(num_classes)])
    centred = features - expected_means[labels]
    expected_cov = centred.T @ centred / n
    expected_cov += 1e-2 * np.trace(expected_cov) / dim * np.eye(dim)  # the default ridge
    np.testing.assert_allclose(layer.means.numpy(), expected_means, rtol=1e-5, atol=1e-5)
    scale = layer.scale_tril.numpy().astype(np.float64)
    np.testing.assert_allclose(scale @ scale.T, expected_cov, rtol=1e-4, atol=1e-4)
    # The GDA fit classifies its own training data well.
    accuracy = np.mean(np.argmax(layer(features.astype("float32")).numpy(), 1) == labels)
    assert accuracy > 0.95


def test_calibrated_scale_minimises_the_cross_entropy_of_h():
    rng = np.random.default_rng(4)
    num_classes, dim, n = 3, 5, 600
    labels = np.arange(n) % num_classes
    features = rng.normal(0, 1.5, (num_classes, dim))[labels] + rng.normal(size=(n, dim))
    plain = layers.GaussianLayer(num_classes).initialize_from_features(features, labels, ridge=0.1)
    calibrated = layers.GaussianLayer(num_classes).initialize_from_features(
        features, labels, ridge=0.1, calibrate_scale=True
    )
    np.testing.assert_allclose(calibrated.means.numpy(), plain.means.numpy())
    np.testing.assert_allclose(
        calibrated.scale_tril.numpy(), calibrated.scale_factor * plain.scale_tril.numpy(), rtol=1e-4
    )

    # Float64 reference: h of the uncalibrated fit, CE of softmax(h / c^2) on a grid of c.
    scale = plain.scale_tril.numpy().astype(np.float64)
    means = plain.means.numpy().astype(np.float64)
    precision = np.linalg.inv(scale @ scale.T)
    diff = features[:, None, :] - means[None]
    h = -np.einsum("nkd,de,nke->nk", diff, precision, diff)

    def cross_entropy(c):
        logits = h / c**2
        logits -= logits.max(1, keepdims=True)
        return np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(n), labels])

    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))
    best = grid[np.argmin([cross_entropy(c) for c in grid])]
    np.testing.assert_allclose(calibrated.scale_factor, best, rtol=2e-3)
    assert cross_entropy(calibrated.scale_factor) <= cross_entropy(1.0)


def test_bad_input_raises_clear_value_errors():
    layer = layers.GaussianLayer(3)
    layer(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="5"):
        layer(np.zeros((2, 7), np.float32))
    features = np.random.default_rng(0).normal(size=(30, 5))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        layer.initialize_from_features(features, np.full(30, 3))
    with pytest.raises(ValueError, match="built for 5"):
        layer.initialize_from_features(np.zeros((30, 4)), np.arange(30) % 3)
    with pytest.raises(ValueError, match="missing classes"):
        layer.initialize_from_features(features, np.zeros(30, int))
    with pytest.raises(ValueError, match="num_classes"):
        layers.GaussianLayer(0)
    with pytest.raises(ValueError, match="linear, gaussian"):
        layers.make_head("cosine", 3)


def test_mixed_precision_policy_keeps_the_head_in_float32():
    keras.mixed_precision.set_global_policy("mixed_float16")
    inputs = keras.Input((12,))
    features = keras.layers.Dense(8)(inputs)
    gaussian = layers.make_head("gaussian", 4)
    linear = layers.make_head("linear", 4)
    assert features.dtype == "float16"
    assert gaussian(features).dtype == "float32"
    assert linear(features).dtype == "float32"
    assert gaussian.means.dtype == "float32"


def test_config_and_keras_file_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    inputs = keras.Input((6,))
    head = _layer_with(rng.normal(size=(3, 6)), _random_scale_tril(rng, 6))
    model = keras.Model(inputs, head(inputs))
    clone = layers.GaussianLayer.from_config(head.get_config())
    assert clone.num_classes == 3 and clone.name == head.name
    path = tmp_path / "head.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    x = rng.normal(size=(5, 6)).astype("float32")
    np.testing.assert_array_equal(restored.predict(x, verbose=0), model.predict(x, verbose=0))
