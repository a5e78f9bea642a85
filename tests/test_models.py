"""OODModel: the shared training loop, its metrics, weight decay and saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import blob_data, tiny_backbone, zipped_dataset

from ice_tf import layers, losses, models


def _model(head="gaussian", num_classes=3, backbone=None):
    return models.OODModel(backbone or tiny_backbone(), layers.make_head(head, num_classes))


def _sgd(lr=0.05, momentum=0.9):
    return keras.optimizers.SGD(lr, momentum=momentum, nesterov=momentum > 0)


@pytest.mark.parametrize("head", ["linear", "gaussian"])
@pytest.mark.parametrize("name", losses.names())
def test_fit_lowers_the_loss(name, head):
    images, labels, outliers = blob_data()
    dataset = zipped_dataset(images, labels, outliers)
    if losses.spec(name).default_head == "vos":
        head = "vos"  # VOS trains the head that carries its uncertainty weights
    model = _model(head)
    # MixOE's uniform-leaning targets on images close to the in-distribution ones, and DAL's
    # outliers pushed to the worst case in feature space, widen a Gaussian head's scale fast
    # (both are linear-head methods); on this 6x6 toy at 0.05 the divergence guard stops it.
    lr = 0.02 if head == "gaussian" and name in ("mixoe", "dal") else 0.05
    model.compile(_sgd(lr), loss=name, weight_decay=5e-4)
    before = model.evaluate(dataset, verbose=0, return_dict=True)
    # 16 epochs of 6 steps: BatchNorm's moving averages (momentum 0.9) must catch up with
    # the weights before the inference-mode loss can show the gain.
    history = model.fit(dataset, epochs=16, verbose=0)
    after = model.evaluate(dataset, verbose=0, return_dict=True)
    assert set(history.history) == {"loss", "accuracy", *model.ood_loss.term_names}
    assert np.all(np.isfinite(history.history["loss"]))
    method = type(model.ood_loss)
    if (method.transform_batch is not losses.OODLoss.transform_batch
            or method.outlier_outputs is not losses.OODLoss.outlier_outputs):
        # Its training objective sees mixed or perturbed outliers, which evaluation does not.
        assert history.history["loss"][-1] < history.history["loss"][0], history.history
    else:
        assert after["loss"] < before["loss"], (before, after)


@pytest.mark.parametrize("outlier_batchnorm, expected", [
    ("joint", (4 * 1.0 + 8 * 4.0) / 12),  # one pass over the concatenated batch
    ("separate", 1.0),                    # the moving averages see in-distribution images only
    ("frozen", 1.0),
])
def test_batchnorm_statistics_of_each_outlier_batchnorm_mode(outlier_batchnorm, expected):
    inputs = keras.Input((2, 2, 1))
    normalized = keras.layers.BatchNormalization(momentum=0.0, name="bn")(inputs)
    backbone = keras.Model(inputs, keras.layers.Flatten()(normalized))
    model = models.OODModel(backbone, layers.make_head("gaussian", 2))
    model.compile(_sgd(0.0, 0.0), loss="ice", outlier_batchnorm=outlier_batchnorm)
    images = np.full((4, 2, 2, 1), 1.0, np.float32)
    outliers = np.full((8, 2, 2, 1), 4.0, np.float32)
    dataset = tf.data.Dataset.from_tensors(((images, np.array([0, 1, 0, 1])), outliers))
    model.fit(dataset, epochs=1, verbose=0)
    moving_mean = backbone.get_layer("bn").moving_mean.numpy()
    np.testing.assert_allclose(moving_mean, [expected], rtol=1e-6)


def test_losses_without_outliers_ignore_them_and_accept_plain_batches():
    images, labels, outliers = blob_data()
    model = _model("linear")
    model.compile(_sgd(), loss="ce")
    plain = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    history = model.fit(plain, epochs=1, verbose=0)
    assert set(history.history) == {"loss", "ce", "accuracy"}
    model.fit(zipped_dataset(images, labels, outliers), epochs=1, verbose=0)


def test_a_loss_that_needs_outliers_rejects_plain_batches():
    images, labels, _ = blob_data()
    model = _model()
    model.compile(_sgd(), loss="ice")
    with pytest.raises(ValueError, match="outliers"):
        model.fit(tf.data.Dataset.from_tensor_slices((images, labels)).batch(16), verbose=0)


def test_labels_out_of_range_raise_a_value_error_in_fit():
    images, labels, outliers = blob_data()
    model = _model(num_classes=2)  # the data has 3 classes
    model.compile(_sgd(), loss="ice")
    with pytest.raises(ValueError, match="num_classes"):
        model.fit(zipped_dataset(images, labels, outliers), epochs=1, verbose=0)


def test_feature_size_mismatch_raises_a_value_error():
    head = layers.make_head("gaussian", 3)
    head.build((None, 5))
    with pytest.raises(ValueError):
        models.OODModel(tiny_backbone(width=8), head)


def test_bad_compile_arguments():
    model = _model()
    with pytest.raises(ValueError, match="valid losses"):
        model.compile(_sgd(), loss="focal")
    with pytest.raises(ValueError, match="weight_decay"):
        model.compile(_sgd(), loss="ice", weight_decay=-1.0)
    with pytest.raises(RuntimeError, match="compile"):
        _model().train_step(((np.zeros((2, 6, 6, 1), np.float32), np.zeros(2)), None))


def test_weight_decay_is_coupled_l2_on_the_backbone_only():
    """With plain SGD, decay changes each update by -lr * wd * w (PyTorch's convention);
    the Gaussian head's means and scale are not decayed."""
    images, labels, outliers = blob_data(num_in=16, num_out=32)
    dataset = zipped_dataset(images, labels, outliers)
    lr, wd = 0.1, 0.01
    backbone = tiny_backbone()
    reference = _model(backbone=backbone)
    start = [v.numpy() for v in reference.trainable_variables]

    def one_step(weight_decay):
        model = _model(backbone=keras.models.clone_model(backbone))
        for variable, value in zip(model.trainable_variables, start):
            variable.assign(value)
        model.compile(_sgd(lr, 0.0), loss="ice", weight_decay=weight_decay)
        model.fit(dataset, epochs=1, verbose=0)
        return model, [v.numpy() - s for v, s in zip(model.trainable_variables, start)]

    decayed_model, decayed = one_step(wd)
    _, plain = one_step(0.0)
    head_ids = {id(v) for v in decayed_model.head.trainable_variables}
    for variable, value, with_wd, without_wd in zip(
        decayed_model.trainable_variables, start, decayed, plain
    ):
        expected = 0.0 if id(variable) in head_ids else -lr * wd * value
        np.testing.assert_allclose(with_wd - without_wd, expected, atol=1e-6)


@pytest.mark.parametrize("head", ["gaussian", "linear"])
def test_head_learning_rate_scale_and_weight_decay_act_on_the_head_alone(head):
    """Plain SGD: a scale s multiplies the head's update by s and leaves the backbone's;
    head_weight_decay adds -lr * wd * w to the head's update only."""
    images, labels, outliers = blob_data(num_in=16, num_out=32)
    dataset = zipped_dataset(images, labels, outliers)
    lr = 0.1
    backbone = tiny_backbone()
    start = [v.numpy() for v in _model(head, backbone=backbone).trainable_variables]

    def one_step(**compile_kwargs):
        model = _model(head, backbone=keras.models.clone_model(backbone))
        for variable, value in zip(model.trainable_variables, start):
            variable.assign(value)
        model.compile(_sgd(lr, 0.0), loss="ice" if head == "gaussian" else "oe", **compile_kwargs)
        model.fit(dataset, epochs=1, verbose=0)
        head_ids = {id(v) for v in model.head.trainable_variables}
        return [(id(v) in head_ids, v.numpy() - s) for v, s in zip(model.trainable_variables, start)]

    plain = one_step(head_weight_decay=0.0)
    for (in_head, scaled), (_, update) in zip(one_step(head_learning_rate_scale=0.25,
                                                       head_weight_decay=0.0), plain):
        np.testing.assert_allclose(scaled, 0.25 * update if in_head else update, atol=1e-6)
    for (in_head, decayed), (_, update), value in zip(one_step(head_weight_decay=0.01), plain,
                                                      start):
        expected = update - lr * 0.01 * value if in_head else update
        np.testing.assert_allclose(decayed, expected, atol=1e-6)
    assert any(in_head and np.abs(update).max() > 1e-4 for in_head, update in plain)
    with pytest.raises(ValueError, match="head_learning_rate_scale"):
        _model(head).compile(_sgd(), loss="ce", head_learning_rate_scale=-1.0)


def test_keras_file_round_trip_keeps_weights_loss_and_training(tmp_path):
    images, labels, outliers = blob_data()
    dataset = zipped_dataset(images, labels, outliers)
    model = _model()
    model.compile(_sgd(), loss=losses.get("energy", margin_in=-7.0), weight_decay=5e-4)
    model.fit(dataset, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored, models.OODModel) and restored.gaussian_head
    assert restored.ood_loss.get_config() == model.ood_loss.get_config()
    assert restored.weight_decay == 5e-4
    assert int(restored.optimizer.iterations) == int(model.optimizer.iterations)
    np.testing.assert_allclose(
        restored.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-6
    )
    restored.fit(dataset, epochs=1, verbose=0)


def test_mixed_precision_training_keeps_gaussian_outputs_float32():
    keras.mixed_precision.set_global_policy("mixed_float16")
    images, labels, outliers = blob_data()
    model = _model()
    model.compile(_sgd(), loss="ice")
    assert model.backbone.layers[1].compute_dtype == "float16"
    history = model.fit(zipped_dataset(images, labels, outliers), epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert model(images[:4]).dtype == "float32"


def test_build_model_by_names():
    model = models.build_model("small_cnn", (28, 28, 1), 10, head="gaussian")
    assert model.gaussian_head and model.num_classes == 10
    assert model(np.zeros((2, 28, 28, 1), np.float32)).shape == (2, 10)
    with pytest.raises(ValueError, match="wrn40_2"):
        models.build_model("resnet18", (32, 32, 3), 10)


class _SquaredOutlierLoss(losses.OODLoss):
    """A new method as BUILD.md shows it: one class, one register line, a new term name."""

    term_names = ("ce", "squared_out")
    default_weight = 0.5
    display_name = "Squared OE"

    def extra_terms(self, labels, outputs_in, outputs_out):
        return {"squared_out": tf.reduce_mean(tf.square(outputs_out))}


def test_a_registered_method_trains_and_logs_its_own_terms():
    from ice_tf.experiment.config import ExperimentConfig

    losses.register("squared_oe", _SquaredOutlierLoss)
    try:
        config = ExperimentConfig(loss="squared_oe", loss_weight=0.1).validate()
        assert (config.head_kind, config.score_name) == ("linear", "msp")
        assert losses.spec("squared_oe").hyperparameters == {"weight": 0.5}
        images, labels, outliers = blob_data()
        model = models.OODModel(tiny_backbone(), layers.make_head("linear", 3))
        model.compile(_sgd(), loss=losses.get("squared_oe", **config.loss_kwargs()))
        history = model.fit(zipped_dataset(images, labels, outliers), epochs=1, verbose=0)
        assert set(history.history) == {"loss", "ce", "squared_out", "accuracy"}
        assert np.isfinite(history.history["squared_out"][-1])
    finally:
        losses.LOSSES.pop("squared_oe")


# ------------------------------------------------- outliers and BatchNorm (outlier_batchnorm)
def _moving_means_after_one_step(loss, outlier_batchnorm, data):
    keras.utils.set_random_seed(0)
    model = models.OODModel(tiny_backbone(), layers.make_head("gaussian", 3))
    model.compile(keras.optimizers.SGD(0.01), loss=loss, outlier_batchnorm=outlier_batchnorm)
    model.fit(data, epochs=1, steps_per_epoch=1, verbose=0)
    return [v.numpy() for v in model._batchnorm_moving_variables()]


@pytest.mark.parametrize("mode", ["separate", "frozen"])
def test_outliers_leave_the_moving_averages_to_in_distribution_images(mode):
    images, labels, outliers = blob_data()
    data = zipped_dataset(images, labels, outliers)
    plain = _moving_means_after_one_step("ce", "joint", data)  # ce never passes the outliers
    for got, want in zip(_moving_means_after_one_step("ice", mode, data), plain):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    joint = _moving_means_after_one_step("ice", "joint", data)
    assert not np.allclose(joint[0], plain[0], atol=1e-6)  # the reference mixes them in


def test_outlier_batchnorm_is_checked_and_saved(tmp_path):
    model = models.OODModel(tiny_backbone(), layers.make_head("gaussian", 3))
    with pytest.raises(ValueError, match="choose one of joint, separate, frozen"):
        model.compile("sgd", loss="ice", outlier_batchnorm="mixed")
    model.compile("sgd", loss="ice", outlier_batchnorm="separate")
    model.save(tmp_path / "m.keras")
    assert keras.models.load_model(tmp_path / "m.keras").outlier_batchnorm == "separate"


def test_auto_batchnorm_is_separate_for_the_gaussian_head_and_joint_for_the_linear():
    gaussian = models.OODModel(tiny_backbone(), layers.make_head("gaussian", 3))
    linear = models.OODModel(tiny_backbone(), layers.make_head("linear", 3))
    gaussian.compile("sgd", loss="ice")
    linear.compile("sgd", loss="oe")
    assert (gaussian.outlier_batchnorm, linear.outlier_batchnorm) == ("separate", "joint")
    gaussian.compile("sgd", loss="ice", outlier_batchnorm="joint")  # the paper's, by choice
    assert gaussian.outlier_batchnorm == "joint"


def test_mixoe_trains_through_the_batch_hook_with_the_compiled_seed():
    calls = []

    class Spy(losses.MixOELoss):
        def transform_batch(self, images, labels, outliers, seed):
            calls.append(seed)
            return super().transform_batch(images, labels, outliers, seed)

    x, y, x_out = blob_data()
    model = _model(head="linear")
    model.compile(_sgd(), loss=Spy(), seed=4)
    history = model.fit(zipped_dataset(x, y, x_out), epochs=1, verbose=0)
    assert calls, "the training step never called the batch hook"
    assert np.all(np.isfinite(history.history["out_term"]))
    assert model.get_compile_config()["seed"] == 4
    # Evaluation batches are not mixed: their outliers get the uniform target (OE's term).
    logs = model.evaluate(zipped_dataset(x, y, x_out), verbose=0, return_dict=True)
    assert np.isfinite(logs["out_term"])
