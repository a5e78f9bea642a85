"""Outlier Exposure's synthetic OOD sets: deterministic, in range, at the requested shape."""

import numpy as np
import pytest

from ice_tf import data
from ice_tf.data import synthetic

NAMES = ("gaussian", "rademacher", "blobs")


def images_of(name, **kwargs):
    return np.stack([image.numpy() for image, _ in data.load(name, "test", **kwargs)])


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_from_seed_and_split(name):
    first = images_of(name, limit=20, seed=0)
    np.testing.assert_array_equal(first, images_of(name, limit=20, seed=0))
    assert not np.array_equal(first, images_of(name, limit=20, seed=1))
    train = np.stack([image.numpy() for image, _ in data.load(name, "train", limit=20)])
    assert not np.array_equal(first, train)
    assert first.dtype == np.uint8 and first.shape == (20, 32, 32, 3)


@pytest.mark.parametrize("name", NAMES)
def test_default_count_and_requested_shape(name):
    assert data.count(name, "test") == synthetic.DEFAULT_COUNT == 2000
    ds = data.make_eval_dataset(name, image_shape=(28, 28, 1), normalization="fashion_mnist",
                                limit=10, batch_size=10)
    x, y = next(iter(ds))
    assert x.shape == (10, 28, 28, 1) and np.all(y.numpy() == -1)
    assert images_of(name, limit=3, image_shape=(28, 28, 1)).shape == (3, 28, 28, 1)


def test_pixel_statistics_follow_outlier_exposure():
    gaussian = images_of("gaussian", limit=200) / 255.0
    assert gaussian.mean() == pytest.approx(0.5, abs=0.01)
    assert gaussian.std() == pytest.approx(0.25, abs=0.015)  # sigma 0.5 in [-1, 1] units
    rademacher = images_of("rademacher", limit=200)
    assert set(np.unique(rademacher)) == {0, 255}
    assert (rademacher == 255).mean() == pytest.approx(0.5, abs=0.01)
    blobs = images_of("blobs", limit=200)
    nonzero = blobs[blobs > 0]
    assert nonzero.min() >= round(0.75 * 255) and 0.05 < (blobs > 0).mean() < 0.6


def test_gaussian_filter_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    array = np.random.default_rng(0).random((2, 12, 10, 3))
    sigmas = (0, 1.5, 1.5, 1.5)
    np.testing.assert_allclose(synthetic.gaussian_filter(array, sigmas),
                               ndimage.gaussian_filter(array, sigmas, mode="nearest"), atol=1e-12)
