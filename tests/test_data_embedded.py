"""The embedded benchmark: file schema, near-OOD configuration, real files when present.

Most tests read small fake files written to tmp_path (ICE_TF_EMBEDDED_DIR points there), so
they do not depend on the shipped data; `test_real_files_load` checks the shipped files.
"""

import numpy as np
import pytest

from helpers import row_index

from ice_tf import data
from ice_tf.data import embedded

NEAR_IN = (0, 1, 2, 3, 5, 8)
HELDOUT = (4, 6, 7, 9)


def as_arrays(dataset):
    images, labels = zip(*[(image.numpy(), label.numpy()) for image, label in dataset])
    return np.stack(images), np.array(labels)


def test_fashion_splits_load_in_file_order(fake_embedded):
    for split in ("train", "val", "test"):
        images, labels = as_arrays(data.load("embedded_fashion_mnist", split))
        assert images.shape == (len(fake_embedded[f"{split}_labels"]), 28, 28, 1)
        assert images.dtype == np.uint8 and labels.dtype == np.int64
        np.testing.assert_array_equal(images[..., 0], fake_embedded[f"{split}_images"])
        np.testing.assert_array_equal(labels, fake_embedded[f"{split}_labels"])


def test_near_ood_configuration_keeps_six_classes_relabelled(fake_embedded):
    for split in ("train", "val", "test"):
        images, labels = as_arrays(data.load("embedded_fashion_mnist_near", split))
        original = images[:, 0, 0, 0] // 10
        assert set(original) == set(NEAR_IN)
        np.testing.assert_array_equal(labels, [NEAR_IN.index(c) for c in original])
        expected = np.isin(fake_embedded[f"{split}_labels"], NEAR_IN).sum()
        assert len(labels) == expected == data.count("embedded_fashion_mnist_near", split)
    assert data.get_info("embedded_fashion_mnist_near").num_classes == 6


def test_heldout_set_is_the_other_four_test_classes(fake_embedded):
    images, labels = as_arrays(data.load("embedded_fashion_mnist_heldout", "test"))
    assert set(images[:, 0, 0, 0] // 10) == set(HELDOUT)
    assert np.all(labels == -1)
    assert len(labels) == np.isin(fake_embedded["test_labels"], HELDOUT).sum()
    assert data.get_info("embedded_fashion_mnist_heldout").splits == ("test",)
    with pytest.raises(ValueError, match="valid splits: test"):
        data.load("embedded_fashion_mnist_heldout", "train")


def test_outlier_and_ood_sets(fake_embedded):
    for name, split, size in (("embedded_outliers", "train", 300), ("embedded_outliers", "val", 50),
                              ("embedded_mnist", "test", 60), ("embedded_digits", "test", 30),
                              ("embedded_textures", "test", 40)):
        images, labels = as_arrays(data.load(name, split))
        assert images.shape == (size, 28, 28, 1)
        np.testing.assert_array_equal(row_index(images), np.arange(size))
        assert np.all(labels == -1)
        assert data.get_info(name).num_classes is None


def test_limit_is_a_seeded_subsample(fake_embedded):
    first = as_arrays(data.load("embedded_outliers", "train", limit=20, seed=1))[0]
    again = as_arrays(data.load("embedded_outliers", "train", limit=20, seed=1))[0]
    other = as_arrays(data.load("embedded_outliers", "train", limit=20, seed=2))[0]
    indices = row_index(first)
    assert len(set(indices)) == 20 and np.all(np.diff(indices) > 0)  # distinct, in file order
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_missing_files_name_the_folder_and_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(embedded.EMBEDDED_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=embedded.EMBEDDED_DIR_ENV):
        data.load("embedded_mnist", "test")


def _real_files_present():
    folder = embedded.Path(embedded.__file__).resolve().parent / "embedded"
    return all((folder / name).is_file()
               for name in ("fashion_mnist.npz", "outliers.npz", "ood_test.npz"))


real_files = pytest.mark.skipif(not _real_files_present(),
                                reason="the shipped embedded files are absent")


@real_files
def test_real_files_load(monkeypatch):
    monkeypatch.delenv(embedded.EMBEDDED_DIR_ENV, raising=False)
    expected = {("embedded_fashion_mnist", "train"): 13000,
                ("embedded_fashion_mnist", "val"): 1000,
                ("embedded_fashion_mnist", "test"): 3000,
                ("embedded_outliers", "val"): 2000,
                ("embedded_mnist", "test"): 5000,
                ("embedded_digits", "test"): 1797,
                ("embedded_textures", "test"): 2000}
    for (name, split), size in expected.items():
        assert data.count(name, split) == size, (name, split)
    assert data.count("embedded_outliers", "train") >= 20000
    images, labels = next(iter(data.load("embedded_fashion_mnist", "train").batch(64)))
    assert images.shape == (64, 28, 28, 1) and images.dtype == np.uint8
    assert set(labels.numpy()) <= set(range(10))
    near = next(iter(data.load("embedded_fashion_mnist_near", "test").batch(500)))[1].numpy()
    assert set(near) == set(range(6))
    assert data.count("embedded_fashion_mnist_heldout", "test") > 0


@real_files
def test_normalization_constants_match_the_real_train_split(monkeypatch):
    monkeypatch.delenv(embedded.EMBEDDED_DIR_ENV, raising=False)
    pixels = embedded.read_arrays("fashion_mnist.npz")["train_images"].astype(np.float64) / 255
    (mean,), (std,) = data.normalization("embedded_fashion_mnist")
    assert mean == pytest.approx(pixels.mean(), abs=1e-5)
    assert std == pytest.approx(pixels.std(), abs=1e-5)
    assert data.normalization("embedded_fashion_mnist_near") == ((mean,), (std,))
