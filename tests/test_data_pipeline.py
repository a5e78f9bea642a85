"""prepare (geometry, channels), augment, make_train_dataset and make_eval_dataset."""

import numpy as np
import pytest
import tensorflow as tf

from ice_tf import data
from helpers import row_index

SHAPE = (28, 28, 1)


# ----------------------------------------------------------------------------- prepare
def centroid(image):
    weights = image.sum(axis=-1)
    rows, cols = np.indices(weights.shape)
    return (weights * rows).sum() / weights.sum(), (weights * cols).sum() / weights.sum()


def test_prepare_keeps_an_image_of_the_target_size():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    prepared = data.prepare(image, (32, 32, 3))
    assert prepared.dtype == tf.float32
    np.testing.assert_allclose(prepared.numpy(), image / 255.0, atol=1e-6)


@pytest.mark.parametrize("height, width", [(40, 60), (60, 40)])
def test_prepare_resizes_the_shorter_side_and_crops_the_centre(height, width):
    # A marker at the centre, and stripes along the two ends of the long side, which the
    # centre crop must remove: 40x60 -> 20x30 -> columns 5..25 (rows for a tall image).
    image = np.zeros((height, width, 3), np.uint8)
    image[height // 2 - 2:height // 2 + 2, width // 2 - 2:width // 2 + 2] = 255
    if width > height:
        image[:, :6], image[:, -6:] = 255, 255
    else:
        image[:6, :], image[-6:, :] = 255, 255
    prepared = data.prepare(image, (20, 20, 3)).numpy()
    assert prepared.shape == (20, 20, 3)
    np.testing.assert_allclose(centroid(prepared), (9.5, 9.5), atol=1e-3)
    assert prepared[9:11, 9:11].min() > 0.7  # the marker, halved to 2x2 (antialiased)
    ring = prepared.copy()
    ring[7:13, 7:13] = 0
    assert ring.max() < 1e-6  # nothing of the stripes survives


def test_prepare_non_square_target_and_batches():
    batch = np.full((2, 40, 40, 3), 128, np.uint8)
    prepared = data.prepare(batch, (20, 30, 3))  # covers as 30x30, crops rows 5..25
    assert prepared.shape == (2, 20, 30, 3)
    np.testing.assert_allclose(prepared.numpy(), 128 / 255, atol=1e-6)
    upsampled = data.prepare(np.zeros((8, 8), np.uint8), (28, 28, 1))
    assert upsampled.shape == (28, 28, 1)


def test_prepare_converts_channels():
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    rgb = data.prepare(gray, (16, 16, 3)).numpy()
    np.testing.assert_allclose(rgb, np.repeat(gray[..., None] / 255.0, 3, axis=-1), atol=1e-6)
    color = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    luma = color @ np.array([0.2989, 0.5870, 0.1140]) / 255.0
    np.testing.assert_allclose(data.prepare(color, (16, 16, 1)).numpy()[..., 0], luma, atol=2e-3)
    rgba = np.concatenate([color, np.zeros((16, 16, 1), np.uint8)], axis=-1)
    np.testing.assert_allclose(data.prepare(rgba, (16, 16, 3)).numpy(), color / 255.0, atol=1e-6)
    floats = data.prepare(color / 255.0, (16, 16, 3)).numpy()  # floats are already in [0, 1]
    np.testing.assert_allclose(floats, color / 255.0, atol=1e-6)
    with pytest.raises(ValueError, match="channels"):
        data.prepare(np.zeros((8, 8, 5), np.uint8), (8, 8, 3))


def test_augment_preserves_shape_and_is_seeded():
    image = tf.random.stateless_uniform((28, 28, 1), seed=(0, 1))
    outputs = [data.augment(image, tf.constant([0, i], tf.int64)) for i in range(8)]
    assert all(out.shape == (28, 28, 1) for out in outputs)
    assert any(not np.allclose(out, image) for out in outputs)
    np.testing.assert_array_equal(data.augment(image, tf.constant([0, 3], tf.int64)), outputs[3])
    unchanged = data.augment(image, tf.constant([0, 5], tf.int64), flip=False, padding=0)
    np.testing.assert_array_equal(unchanged, image)


# ---------------------------------------------------------------------- training data
def pixels(normalised, normalization="embedded_fashion_mnist"):
    """Back from normalised inputs to uint8 pixel values."""
    (mean,), (std,) = data.normalization(normalization)
    return np.round((np.asarray(normalised) * std + mean) * 255).astype(int)


def test_train_dataset_structure_and_steps(fake_embedded):
    ds, steps = data.make_train_dataset("embedded_fashion_mnist", "embedded_outliers",
                                        image_shape=SHAPE, batch_in=32, batch_out=64)
    assert steps == 200 // 32
    (x_spec, y_spec), out_spec = ds.element_spec
    assert x_spec.shape == (32, *SHAPE) and x_spec.dtype == tf.float32
    assert y_spec.shape == (32,) and y_spec.dtype == tf.int64
    assert out_spec.shape == (64, *SHAPE) and out_spec.dtype == tf.float32
    plain, plain_steps = data.make_train_dataset("embedded_fashion_mnist", image_shape=SHAPE,
                                                 batch_in=32)
    assert plain_steps == steps
    assert plain.element_spec[0].shape == (32, *SHAPE)


def test_train_streams_are_infinite_and_reshuffled_every_pass(fake_embedded):
    ds, steps = data.make_train_dataset("embedded_fashion_mnist", "embedded_outliers",
                                        image_shape=SHAPE, batch_in=50, batch_out=100,
                                        augment=False)
    # 3 passes over the 300 outliers while the 200 in-distribution images go round 3 times.
    batches = list(ds.take(3 * steps))
    outlier_ids = row_index(pixels(np.concatenate([out for _, out in batches])))
    passes = outlier_ids[:900].reshape(3, 300)
    for one_pass in passes:
        np.testing.assert_array_equal(np.sort(one_pass), np.arange(300))
    assert not np.array_equal(passes[0], passes[1])
    labels = np.concatenate([y for (_, y), _ in batches]).reshape(3, 200)
    for one_pass in labels:
        np.testing.assert_array_equal(np.bincount(one_pass), np.full(10, 20))
    assert not np.array_equal(labels[0], labels[1])
    # Labels stay attached to their images (the fake images hold their class at [0, 0]).
    images = np.concatenate([x for (x, _), _ in batches])
    np.testing.assert_array_equal(pixels(images[:, 0, 0, 0]) // 10, labels.reshape(-1))


def test_train_inputs_are_normalised(fake_embedded):
    ds, _ = data.make_train_dataset("embedded_fashion_mnist", image_shape=SHAPE, batch_in=100,
                                    augment=False)
    images = np.concatenate([x for x, _ in ds.take(4)])
    assert abs(images.mean()) < 0.03
    assert images.std() == pytest.approx(1.0, abs=0.05)


def test_augmentation_changes_images_but_not_shapes(fake_embedded):
    kwargs = dict(image_shape=SHAPE, batch_in=20, batch_out=20, seed=5)
    plain, _ = data.make_train_dataset("embedded_fashion_mnist", "embedded_outliers",
                                       augment=False, **kwargs)
    augmented, _ = data.make_train_dataset("embedded_fashion_mnist", "embedded_outliers",
                                           augment=True, **kwargs)
    (x_plain, y_plain), out_plain = next(iter(plain))
    (x_aug, y_aug), out_aug = next(iter(augmented))
    assert x_aug.shape == x_plain.shape and out_aug.shape == out_plain.shape
    np.testing.assert_array_equal(y_aug, y_plain)  # same seed: same order, other pixels
    assert not np.allclose(x_aug, x_plain) and not np.allclose(out_aug, out_plain)


def test_same_seed_same_batches(fake_embedded):
    def first_batches(seed):
        ds, _ = data.make_train_dataset("embedded_fashion_mnist", "embedded_outliers",
                                        image_shape=SHAPE, batch_in=16, batch_out=32, seed=seed)
        return [np.concatenate([x.numpy().ravel(), out.numpy().ravel()])
                for (x, _), out in ds.take(3)]

    first, again, other = first_batches(3), first_batches(3), first_batches(4)
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(again))
    assert not np.allclose(np.concatenate(first), np.concatenate(other))


def test_train_dataset_limit_and_errors(fake_embedded):
    _, steps = data.make_train_dataset("embedded_fashion_mnist", image_shape=SHAPE, batch_in=10,
                                       limit=55)
    assert steps == 5
    with pytest.raises(ValueError, match="fewer than one batch"):
        data.make_train_dataset("embedded_fashion_mnist", image_shape=SHAPE, batch_in=500)
    with pytest.raises(ValueError, match="no class labels"):
        data.make_train_dataset("embedded_outliers", image_shape=SHAPE)
    with pytest.raises(ValueError, match="Unknown dataset"):
        data.make_train_dataset("embedded_fashion_mnist", "nope", image_shape=SHAPE)


def test_train_dataset_fits_a_keras_model(fake_embedded):
    import keras

    ds, steps = data.make_train_dataset("embedded_fashion_mnist", image_shape=SHAPE,
                                        batch_in=50)
    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(ds, epochs=2, steps_per_epoch=steps, shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 2


# ------------------------------------------------------------------------ evaluation data
def test_eval_dataset_fixed_order_and_normalisation(fake_embedded):
    ds = data.make_eval_dataset("embedded_fashion_mnist", "test", image_shape=SHAPE,
                                normalization="embedded_fashion_mnist", batch_size=32)
    batches = list(ds)
    assert [len(y) for _, y in batches] == [32, 32, 32, 4]
    labels = np.concatenate([y for _, y in batches])
    np.testing.assert_array_equal(labels, fake_embedded["test_labels"])
    images = np.concatenate([x for x, _ in batches])
    np.testing.assert_array_equal(pixels(images[..., 0]), fake_embedded["test_images"])
    again = np.concatenate([x for x, _ in ds])
    np.testing.assert_array_equal(images, again)


def test_eval_dataset_resizes_and_converts_channels(fake_embedded):
    ds = data.make_eval_dataset("embedded_mnist", image_shape=(32, 32, 3),
                                normalization="cifar10", batch_size=25)
    x, y = next(iter(ds))
    assert x.shape == (25, 32, 32, 3) and x.dtype == tf.float32
    assert np.all(y.numpy() == -1)
    explicit = data.make_eval_dataset("embedded_mnist", image_shape=(32, 32, 3),
                                      normalization=data.normalization("cifar10"), batch_size=25)
    np.testing.assert_array_equal(next(iter(explicit))[0], x)
    with pytest.raises(ValueError, match="channels"):
        data.make_eval_dataset("embedded_mnist", image_shape=(28, 28, 1),
                               normalization=((0.5, 0.5, 0.5), (0.2, 0.2, 0.2)))
