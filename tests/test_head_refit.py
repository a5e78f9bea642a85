"""The serving refit of a trained Gaussian head (`ice_tf.models.refit_gaussian_head`)
against a float64 numpy GDA, and the config fields that turn it and Platt's map on."""

import numpy as np
import pytest
import tensorflow as tf
from helpers import tiny_backbone

from ice_tf import gda, layers, models
from ice_tf.experiment.config import ExperimentConfig, upgrade_dict


def _model_and_data(seed=0, n=120, classes=3):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, 6, 6, 1)).astype("float32")
    labels = np.arange(n) % classes
    images += labels[:, None, None, None].astype("float32")  # classes apart
    model = models.OODModel(tiny_backbone(), layers.make_head("gaussian", classes))
    model(images[:2])
    return model, images, labels


def test_refit_equals_a_float64_gda_of_the_inference_mode_features():
    model, images, labels = _model_and_data()
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(32)
    models.refit_gaussian_head(model, dataset, verbose=0)
    z = np.asarray(model.features(images, training=False), np.float64)
    stats = gda.fit(z, labels, 3)
    d = z.shape[1]
    covariance = stats.covariance + models.REFIT_RIDGE * np.trace(stats.covariance) / d * np.eye(d)
    scale = model.head.scale_factor
    precision = np.linalg.inv(scale ** 2 * covariance)
    offsets = z[:, None, :] - stats.means[None]
    expected = -np.einsum("nkd,de,nke->nk", offsets, precision, offsets)
    h = np.asarray(model(images, training=False), np.float64)
    np.testing.assert_allclose(h, expected, rtol=2e-3, atol=1e-3 * np.abs(expected).max())
    np.testing.assert_allclose(np.asarray(model.head.means), stats.means, rtol=1e-5, atol=1e-5)
    # The scale fitted by cross-entropy changes neither the class nor the order of max h.
    unscaled = expected * scale ** 2
    np.testing.assert_array_equal(h.argmax(1), unscaled.argmax(1))
    assert np.all(np.isfinite(h))


def test_refit_refuses_a_linear_head():
    model = models.OODModel(tiny_backbone(), layers.make_head("linear", 3))
    with pytest.raises(ValueError, match="Gaussian head"):
        models.refit_gaussian_head(model, tf.data.Dataset.from_tensors(
            (np.zeros((2, 6, 6, 1), "float32"), np.zeros(2, "int64"))), verbose=0)


def test_from_classifier_fit_inference_is_the_refit():
    import keras

    model, images, labels = _model_and_data(seed=1)
    classifier = keras.Sequential([keras.Input((6, 6, 1)), tiny_backbone(), keras.layers.Dense(3)])
    converted = models.OODModel.from_classifier(classifier, (images, labels), fit="inference",
                                                verbose=0)
    z = np.asarray(converted.features(images, training=False), np.float64)
    stats = gda.fit(z, labels, 3)
    np.testing.assert_allclose(np.asarray(converted.head.means), stats.means, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="fit='serve'"):
        models.OODModel.from_classifier(classifier, (images, labels), fit="serve", verbose=0)


def test_config_defaults_and_older_run_folders():
    config = ExperimentConfig()
    assert config.refit_head is True and config.confidence_map == "platt"
    # A run folder of an older version served the head as trained, with a temperature.
    upgraded = upgrade_dict({"loss": "ice"}, stored=True)
    assert upgraded["refit_head"] is False and upgraded["confidence_map"] == "temperature"
    with pytest.raises(ValueError, match="confidence_map"):
        ExperimentConfig(confidence_map="isotonic").validate()


def test_the_guides_refit_and_platt_lines_run_on_a_users_arrays():
    """docs/guide.md, "The served head": refit, then Platt's map, then the served confidence."""
    import ice_tf
    from ice_tf import calibration, export

    model, x_train, y_train = _model_and_data(seed=3)
    rng = np.random.default_rng(4)
    x_val = x_train[:30] + rng.normal(0, 0.1, x_train[:30].shape).astype("float32")
    x_val_outliers = rng.normal(5.0, 3.0, (30, 6, 6, 1)).astype("float32")
    ice_tf.models.refit_gaussian_head(model, ice_tf.data.batched((x_train, y_train), 500, shuffle=False))
    h_val = model.predict(x_val, verbose=0)
    h_val_out = model.predict(x_val_outliers, verbose=0)
    model.head.confidence_platt = ice_tf.calibration.fit_platt(h_val.max(1), h_val_out.max(1))
    served = export.serving_outputs(model, tf.constant(x_val))["confidence"].numpy()
    np.testing.assert_allclose(served, calibration.platt_confidence(
        h_val.max(1).astype(np.float64), *model.head.confidence_platt), rtol=1e-5, atol=1e-6)
    assert served.mean() > calibration.platt_confidence(
        h_val_out.max(1).astype(np.float64), *model.head.confidence_platt).mean()
