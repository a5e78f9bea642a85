"""Checks the real-image benchmark files shipped in `ice_tf/data/embedded/` against MANIFEST.json.

Only numpy is needed: the files are read directly, not through the package's loader.
"""

import hashlib
import json
import os

import numpy as np
import pytest

EMBEDDED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "ice_tf", "data", "embedded")
FILES = ("fashion_mnist.npz", "outliers.npz", "ood_test.npz")
MAX_TOTAL_BYTES = 25_000_000


def _sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _array_sha256(array):
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256()
    digest.update(f"{array.dtype.str}|{','.join(map(str, array.shape))}|".encode("ascii"))
    digest.update(array.tobytes())
    return digest.hexdigest()


def _row_hashes(images):
    return {hashlib.sha1(image.tobytes()).digest() for image in images}


@pytest.fixture(scope="module")
def manifest():
    with open(os.path.join(EMBEDDED_DIR, "MANIFEST.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def arrays():
    loaded = {}
    for name in FILES:
        with np.load(os.path.join(EMBEDDED_DIR, name), allow_pickle=False) as data:
            loaded[name] = {key: data[key] for key in data.files}
    return loaded


def test_files_exist():
    for name in FILES + ("MANIFEST.json", "README.md"):
        assert os.path.isfile(os.path.join(EMBEDDED_DIR, name)), name


def test_file_checksums_and_sizes_match_manifest(manifest):
    assert set(manifest["files"]) == set(FILES)
    for name, entry in manifest["files"].items():
        path = os.path.join(EMBEDDED_DIR, name)
        assert os.path.getsize(path) == entry["bytes"], name
        assert _sha256_file(path) == entry["sha256"], name


def test_total_size_within_budget(manifest):
    total = sum(os.path.getsize(os.path.join(EMBEDDED_DIR, name)) for name in FILES)
    assert total <= MAX_TOTAL_BYTES
    assert manifest["total_bytes"] == total


def test_arrays_match_manifest(manifest, arrays):
    for name, entry in manifest["files"].items():
        assert set(arrays[name]) == set(entry["arrays"]), name
        for key, described in entry["arrays"].items():
            array = arrays[name][key]
            assert list(array.shape) == described["shape"], (name, key)
            assert array.dtype.name == described["dtype"], (name, key)
            assert _array_sha256(array) == described["sha256"], (name, key)
            assert described["licence"] and described["source"], (name, key)


def test_shapes_and_dtypes(arrays):
    fashion = arrays["fashion_mnist.npz"]
    outliers, ood = arrays["outliers.npz"], arrays["ood_test.npz"]
    for split, count in (("train", 13000), ("val", 1000), ("test", 3000)):
        assert fashion[f"{split}_images"].shape == (count, 28, 28)
        assert fashion[f"{split}_images"].dtype == np.uint8
        assert fashion[f"{split}_labels"].shape == (count,)
        assert fashion[f"{split}_labels"].dtype == np.uint8
        assert fashion[f"{split}_source_index"].shape == (count,)
    assert outliers["train"].shape[0] >= 20000
    assert outliers["train"].shape[1:] == (28, 28)
    assert outliers["val"].shape == (2000, 28, 28)
    assert outliers["train_source"].shape == (len(outliers["train"]),)
    assert outliers["val_source"].shape == (2000,)
    assert ood["mnist"].shape == (5000, 28, 28)
    assert ood["digits"].shape == (1797, 28, 28)
    assert ood["textures"].shape == (2000, 28, 28)
    for group in (outliers, ood):
        for key in ("train", "val", "mnist", "digits", "textures"):
            if key in group:
                assert group[key].dtype == np.uint8, key


def test_fashion_class_balance_and_disjoint_sources(arrays):
    fashion = arrays["fashion_mnist.npz"]
    for split, per_class in (("train", 1300), ("val", 100), ("test", 300)):
        counts = np.bincount(fashion[f"{split}_labels"], minlength=10)
        assert counts.tolist() == [per_class] * 10, split
        index = fashion[f"{split}_source_index"]
        assert len(np.unique(index)) == len(index), split
    assert not np.intersect1d(fashion["train_source_index"], fashion["val_source_index"]).size


def test_images_look_like_the_originals(arrays):
    fashion, ood = arrays["fashion_mnist.npz"], arrays["ood_test.npz"]
    for images in (fashion["test_images"], ood["mnist"], ood["digits"]):
        # White object on a black background: the border is dark, the full range is used.
        border = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]],
                                axis=1)
        assert border.mean() < 40
        assert images.max() == 255
    assert (ood["mnist"] > 128).mean() < 0.3  # sparse ink, not inverted


def test_outlier_source_codes(manifest, arrays):
    outliers = arrays["outliers.npz"]
    train_names = manifest["outlier_sources"]["train"]
    val_names = manifest["outlier_sources"]["val"]
    assert set(np.unique(outliers["train_source"])) == set(range(len(train_names)))
    assert set(np.unique(outliers["val_source"])) == set(range(len(val_names)))
    test_photos = set(manifest["texture_sources"])
    assert not set(train_names) & set(val_names)
    assert not (set(train_names) | set(val_names)) & test_photos


def test_no_image_shared_between_fashion_splits(arrays):
    fashion = arrays["fashion_mnist.npz"]
    train, val, test = (_row_hashes(fashion[f"{split}_images"])
                        for split in ("train", "val", "test"))
    assert not train & val
    assert not train & test
    assert not val & test


def test_no_outlier_image_in_any_test_set(arrays):
    outliers, ood = arrays["outliers.npz"], arrays["ood_test.npz"]
    train, val = _row_hashes(outliers["train"]), _row_hashes(outliers["val"])
    assert not train & val
    for key in ("mnist", "digits", "textures"):
        test = _row_hashes(ood[key])
        assert not train & test, key
        assert not val & test, key
    fashion_test = _row_hashes(arrays["fashion_mnist.npz"]["test_images"])
    assert not (train | val) & fashion_test
