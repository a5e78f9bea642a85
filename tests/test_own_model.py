"""A user's own Keras classifier and arrays: conversion, fine-tuning, evaluation, errors."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import ice_tf
from helpers import blob_data, load_script
from ice_tf import data, models

# Loaded as every script is in the tests, so that its absl flags (--seeds) do not clash
# with another script's flag of the same name in this process.
own_model_example = load_script("own_model_example.py")


def test_a_trained_classifier_converts_and_fine_tunes_with_ice_on_real_data():
    # scripts/own_model_example.py, one seed: a small CNN trained 3 epochs on half the
    # embedded Fashion-MNIST, converted, 2 ICE epochs at the paper's lr 0.01.
    x_train, y_train = own_model_example.arrays("embedded_fashion_mnist", "train", 6500)
    x_test, y_test = own_model_example.arrays("embedded_fashion_mnist", "test", 1000)
    x_out, _ = own_model_example.arrays("embedded_outliers", "train", 4000)
    ood = {"mnist": own_model_example.arrays("embedded_mnist", "test", 500)[0],
           "textures": own_model_example.arrays("embedded_textures", "test", 500)[0]}
    run = own_model_example.one_seed(0, x_train, y_train, x_test, y_test, x_out, ood,
                                     check_finite=True)
    assert run["ice_accuracy"] >= run["plain_accuracy"] - 0.01, run
    assert run["ice_auroc_ice"] > run["plain_auroc_msp"], run


@keras.saving.register_keras_serializable(package="ice_tf_tests")
class SubclassedClassifier(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(8, 3, padding="same")
        self.norm = keras.layers.BatchNormalization()
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.logits = keras.layers.Dense(3)

    def call(self, x, training=False):
        return self.logits(self.pool(keras.ops.relu(self.norm(self.conv(x), training=training))))


@keras.saving.register_keras_serializable(package="ice_tf_tests")
class SubclassedBackbone(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(8, 3, padding="same")
        self.pool = keras.layers.GlobalAveragePooling2D()

    def call(self, x, training=False):
        return self.pool(self.conv(x))


def _functional_classifier():
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pooled")(x)
    x = keras.layers.Dense(5, activation="relu", name="penultimate")(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


@pytest.mark.parametrize("kind", ["sequential", "functional", "subclassed"])
def test_every_kind_of_classifier_converts_with_its_weights(kind, tmp_path):
    images, labels, outliers = blob_data()
    if kind == "sequential":
        classifier = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(8, 3),
                                       keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    elif kind == "functional":
        classifier = _functional_classifier()
    else:
        classifier = SubclassedClassifier()
        classifier(images[:2])
    reference = classifier(images[:8]).numpy()
    linear = models.OODModel.from_classifier(classifier, head="linear")
    outputs = linear(images[:8]).numpy()
    if kind == "functional":
        outputs = tf.nn.softmax(outputs).numpy()  # the converted head gives the logits
    np.testing.assert_allclose(outputs, reference, rtol=1e-5, atol=1e-6)

    gaussian = models.OODModel.from_classifier(classifier, (images, labels), outliers=outliers,
                                               batch_size=16, verbose=0)
    assert gaussian.gaussian_head and gaussian.num_classes == 3
    # Untrained features of scale 0.02: h reacts to a step like 1/0.02², so a low rate.
    gaussian.compile(keras.optimizers.SGD(0.001), loss="ice")
    history = gaussian.fit(data.with_outliers((images, labels), outliers, batch_size=16),
                           epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    gaussian.save(tmp_path / "model.keras")
    reloaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(reloaded(images[:4]).numpy(), gaussian(images[:4]).numpy(), rtol=1e-5)


def test_feature_layer_and_a_classifier_without_dense_head():
    images, labels, _ = blob_data()
    classifier = _functional_classifier()
    model = models.OODModel.from_classifier(classifier, (images, labels), feature_layer="pooled",
                                            verbose=0)
    assert model.backbone.output.shape[-1] == 8 and model.num_classes == 3
    with pytest.raises(ValueError, match="no Dense layer to split at: pass feature_layer="):
        models.OODModel.from_classifier(keras.Sequential([keras.Input((6, 6, 1)),
                                                          keras.layers.Flatten()]), head="linear")
    with pytest.raises(ValueError, match="is not a layer of"):
        models.OODModel.from_classifier(classifier, (images, labels), feature_layer="nope")
    with pytest.raises(ValueError, match="pass train_data"):
        models.OODModel.from_classifier(classifier)


def test_a_subclassed_backbone_works_with_an_input_shape(tmp_path):
    images, labels, outliers = blob_data()
    model = models.OODModel(SubclassedBackbone(), ice_tf.layers.GaussianLayer(3), input_shape=(6, 6, 1))
    model.compile(keras.optimizers.SGD(0.01), loss="ice")
    model.fit(data.with_outliers((images, labels), outliers, batch_size=16), epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "model.keras")(images[:4]).numpy(),
                               model(images[:4]).numpy(), rtol=1e-5)


def test_with_outliers_pairs_any_ratio_and_never_cuts_an_epoch():
    images, labels, outliers = blob_data(num_in=96, num_out=20)
    batches = list(data.with_outliers((images, labels), outliers, batch_size=16, ratio=3))
    assert len(batches) == 6  # one pass over 96 images, although 20 outliers < 6 * 48
    (x, y), x_out = batches[0]
    assert x.shape == (16, 6, 6, 1) and y.shape == (16,) and x_out.shape == (48, 6, 6, 1)
    seen = np.concatenate([b[0][1].numpy() for b in batches])
    assert sorted(seen.tolist()) == sorted(labels.tolist())
    one_hot = list(data.with_outliers((images, np.eye(3)[labels]), outliers, batch_size=96))
    assert one_hot[0][0][1].dtype == tf.int64 and one_hot[0][0][1].shape == (96,)
    from_datasets = data.with_outliers(
        tf.data.Dataset.from_tensor_slices((images, labels)).batch(10),
        tf.data.Dataset.from_tensor_slices((outliers, np.zeros(20))), batch_size=32)
    assert len(list(from_datasets)) == 3


def test_keras_conventions_and_first_mistakes_get_one_line_errors():
    images, labels, outliers = blob_data()
    model = models.OODModel(SubclassedBackbone(), ice_tf.layers.GaussianLayer(3), input_shape=(6, 6, 1))
    model.compile(keras.optimizers.SGD(0.01), loss="ice")
    train = data.with_outliers((images, labels), outliers, batch_size=16)
    history = model.fit(train, epochs=1, verbose=0, validation_data=(images[:32], labels[:32]))
    assert {"val_loss", "val_ce", "val_in_term", "val_accuracy"} <= set(history.history)
    assert "val_out_term" not in history.history
    for weights in ({"sample_weight": np.ones(96)}, {"class_weight": {0: 1.0, 1: 2.0, 2: 1.0}}):
        with pytest.raises(ValueError, match="does not weight samples"):
            model.fit(train, epochs=1, verbose=0, **weights)
    with pytest.raises(ValueError, match=r"not batches: batch it, e\.g\. dataset\.batch\(128\)"):
        model.fit(tf.data.Dataset.from_tensor_slices((images, labels)), epochs=1, verbose=0)
    reversed_zip = tf.data.Dataset.zip((tf.data.Dataset.from_tensor_slices(outliers).batch(32),
                                        tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)))
    with pytest.raises(ValueError, match="in-distribution first"):
        model.fit(reversed_zip, epochs=1, verbose=0)
    short_outliers = tf.data.Dataset.zip((tf.data.Dataset.from_tensor_slices((images, labels)).batch(16),
                                          tf.data.Dataset.from_tensor_slices(outliers[:64]).batch(32)))
    with pytest.raises(ValueError, match="the outlier stream has 2 batches and the in-distribution "
                                         "stream 6: each epoch would end after 2 steps"):
        model.fit(short_outliers, epochs=1, verbose=0)
    one_hot = tf.data.Dataset.zip((tf.data.Dataset.from_tensor_slices((images, np.eye(3)[labels])).batch(16),
                                   tf.data.Dataset.from_tensor_slices(outliers).batch(32)))
    assert np.isfinite(model.fit(one_hot, epochs=1, verbose=0).history["loss"][-1])


def test_a_diverging_fit_stops_with_an_error_that_names_the_remedy():
    images, labels, outliers = blob_data()
    model = models.OODModel(SubclassedBackbone(), ice_tf.layers.make_head("linear", 3),
                            input_shape=(6, 6, 1))
    model.compile(keras.optimizers.SGD(1e30), loss="oe")
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        model.fit(data.with_outliers((images, labels), outliers, batch_size=16), epochs=3, verbose=0)


def test_evaluate_takes_arrays_and_datasets_and_plain_classifiers(tmp_path):
    images, labels, outliers = blob_data()
    classifier = _functional_classifier()
    ood_sets = {
        "array": outliers[:40],
        "images": tf.data.Dataset.from_tensor_slices(outliers[40:80]).batch(7),
        "labelled": tf.data.Dataset.from_tensor_slices((outliers[80:120], np.zeros(40))),
    }
    report = ice_tf.evaluate(classifier, (images, labels), ood_sets,
                             scores=["msp", "energy", "odin", "mahalanobis"],
                             train_data=(images, labels), verbose=0)
    assert list(report.results) == ["msp", "energy", "odin", "mahalanobis"]
    for result in report.results.values():
        assert set(result["sets"]) == set(ood_sets) and result["num_in"] == 96
        assert {"auroc", "aupr_in", "aupr_out", "fpr95", "fpr95_ood_positive"} <= set(result["mean"])
    assert 0 <= report.accuracy <= 1
    assert json.loads(report.to_json())["msp"]["protocol"] == "full"
    assert "| **mean** |" in report.to_markdown()
    path = report.plot_roc(tmp_path / "roc.png")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    same = ice_tf.evaluate(classifier, tf.data.Dataset.from_tensor_slices((images, labels)).batch(9),
                           {"array": outliers[:40]}, verbose=0)
    assert same.auroc(ood_set="array") == report.auroc("msp", "array")
    with pytest.raises(ValueError, match="pass train_data"):
        ice_tf.evaluate(classifier, (images, labels), {"a": outliers}, scores="mahalanobis", verbose=0)
    with pytest.raises(ValueError, match="unknown scores"):
        ice_tf.evaluate(classifier, (images, labels), {"a": outliers}, scores="nope", verbose=0)


def test_raw_pixels_into_a_normalised_model_warn_once():
    images, labels, outliers = blob_data()
    model = models.OODModel(SubclassedBackbone(), ice_tf.layers.GaussianLayer(3), input_shape=(6, 6, 1),
                            normalization=((0.5,), (0.25,)))
    model.compile(keras.optimizers.SGD(0.0), loss="ice")
    pixels = np.clip(images * 60 + 128, 0, 255)
    with pytest.warns(UserWarning, match=r"raw pixels .* use \(x / 255 - \[0\.5\]\) / \[0\.25\]"):
        model.fit(data.with_outliers((pixels, labels), outliers, batch_size=32), epochs=1, verbose=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.fit(data.with_outliers((pixels, labels), outliers, batch_size=32), epochs=1, verbose=0)
        model.fit(data.with_outliers((images, labels), outliers, batch_size=32), epochs=1, verbose=0)
