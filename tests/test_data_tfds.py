"""TFDS datasets, always under `tfds.testing.mock_data` (no network), and the offline failure."""

import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from ice_tf import data

TFDS_SETS = [name for name in data.names()
             if data.get_info(name).kind == "tfds" and not name.startswith("lsun/")]
TFDS_SETS.append("lsun/bedroom")


@pytest.fixture
def mock_tfds():
    with tfds.testing.mock_data(num_examples=8):
        yield


@pytest.mark.parametrize("name", TFDS_SETS)
def test_every_tfds_set_loads_under_mock(name, mock_tfds):
    info = data.get_info(name)
    split = info.splits[-1]
    examples = list(data.load(name, split))
    assert len(examples) == data.count(name, split) == 8
    for image, label in examples:
        assert image.dtype == tf.uint8 and image.shape.rank == 3
        assert image.shape[-1] == (info.image_shape[-1] if info.image_shape else 3)
        if info.image_shape is not None:
            assert tuple(image.shape) == info.image_shape
        assert label.dtype == tf.int64
        if info.num_classes is None:
            assert label == -1
        else:
            assert -1 <= label < info.num_classes


def test_textures_has_variable_sizes_that_prepare_handles(mock_tfds):
    shapes = {tuple(image.shape) for image, _ in data.load("textures", "test")}
    assert len(shapes) > 1  # mock DTD images have random sizes, like the real ones
    ds = data.make_eval_dataset("textures", image_shape=(32, 32, 3), normalization="cifar10",
                                batch_size=3)
    assert [tuple(x.shape) for x, _ in ds] == [(3, 32, 32, 3)] * 2 + [(2, 32, 32, 3)]


def test_limit_gives_a_seeded_subsample(mock_tfds):
    def labels(seed):
        return [int(label) for _, label in data.load("places365", "train", limit=5, seed=seed)]

    assert labels(0) == labels(0)
    assert len(labels(0)) == 5 == data.count("places365", "train", limit=5)
    assert data.count("places365", "train", limit=50) == 8


def test_train_dataset_from_tfds(mock_tfds):
    ds, steps = data.make_train_dataset("cifar10", "imagenet32", image_shape=(32, 32, 3),
                                        batch_in=4, batch_out=6)
    assert steps == 2
    batches = list(ds.take(7))  # beyond both sets: the streams repeat
    (x, y), x_out = batches[-1]
    assert x.shape == (4, 32, 32, 3) and y.shape == (4,) and x_out.shape == (6, 32, 32, 3)
    gray, gray_steps = data.make_train_dataset("fashion_mnist", "places365", limit=6,
                                               image_shape=(28, 28, 1), batch_in=3, batch_out=2)
    (x, _), x_out = next(iter(gray))
    assert gray_steps == 2 and x.shape == (3, 28, 28, 1) and x_out.shape == (2, 28, 28, 1)


def test_svhn_in_eval_pipeline(mock_tfds):
    x, y = next(iter(data.make_eval_dataset("svhn", image_shape=(32, 32, 3),
                                            normalization="cifar10", batch_size=8)))
    assert x.shape == (8, 32, 32, 3) and np.all((y.numpy() >= 0) & (y.numpy() < 10))


def test_missing_dataset_fails_fast_with_instructions(tmp_path):
    start = time.monotonic()
    for name, tfds_name in (("cifar10", "cifar10"), ("textures", "dtd"),
                            ("lsun", "lsun/classroom")):
        split = data.get_info(name).splits[-1]
        with pytest.raises(FileNotFoundError) as raised:
            data.load(name, split, data_dir=str(tmp_path))
        message = str(raised.value)
        assert name in message and tfds_name in message and str(tmp_path) in message
        assert "download_and_prepare" in message and "--download" in message
    with pytest.raises(FileNotFoundError):
        data.make_train_dataset("cifar10", image_shape=(32, 32, 3), data_dir=str(tmp_path))
    assert time.monotonic() - start < 5
