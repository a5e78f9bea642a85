"""Datasets read from user files: image folders, .npy arrays, 80M Tiny Images .bin."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from ice_tf import data
from ice_tf.data import files


def as_arrays(dataset):
    pairs = [(image.numpy(), label.numpy()) for image, label in dataset]
    return [image for image, _ in pairs], np.array([label for _, label in pairs])


# ------------------------------------------------------------------------ image folders
def test_image_folder_reads_every_image_recursively(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "b").mkdir()
    written = {}
    for relative, shape in (("a.png", (32, 32, 3)), ("b/c.png", (20, 24, 1)),
                            ("b/d.PNG", (8, 8, 3))):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        tf.io.write_file(str(tmp_path / relative), tf.io.encode_png(image))
        written[relative] = image
    photo = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    tf.io.write_file(str(tmp_path / "e.jpg"), tf.io.encode_jpeg(photo))
    (tmp_path / "notes.txt").write_text("not an image")

    images, labels = as_arrays(data.load("image_folder", "test", path=str(tmp_path)))
    assert len(images) == 4 == data.count("image_folder", "test", path=str(tmp_path))
    assert np.all(labels == -1)
    # Sorted by path: a.png, b/c.png, b/d.PNG, e.jpg; every image as RGB.
    np.testing.assert_array_equal(images[0], written["a.png"])
    np.testing.assert_array_equal(images[1], np.repeat(written["b/c.png"], 3, axis=-1))
    np.testing.assert_array_equal(images[2], written["b/d.PNG"])
    assert images[3].shape == (16, 16, 3)

    ds = data.make_eval_dataset("image_folder", path=str(tmp_path), image_shape=(32, 32, 3),
                                normalization="cifar10", batch_size=4)
    assert next(iter(ds))[0].shape == (4, 32, 32, 3)
    assert len(as_arrays(data.load("image_folder", "test", path=str(tmp_path), limit=2))[0]) == 2


def test_file_sets_say_which_argument_is_missing(tmp_path):
    for name in ("image_folder", "npy", "tiny_images"):
        with pytest.raises(ValueError, match="path=.*outlier_path="):
            data.load(name, "test")
        with pytest.raises(FileNotFoundError, match="does not exist"):
            data.load(name, "test", path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no images"):
        data.load("image_folder", "test", path=str(tmp_path))
    with pytest.raises(ValueError, match="does not read a path"):
        data.load("gaussian", "test", path=str(tmp_path))
    with pytest.raises(ValueError, match="only 'tiny_images'"):
        data.load("npy", "test", path=str(tmp_path), exclude_index_path=str(tmp_path))


# ------------------------------------------------------------------------------ .npy
@pytest.mark.parametrize("shape", [(12, 10, 10), (12, 10, 10, 3)])
def test_npy_arrays(tmp_path, shape):
    array = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / "images.npy"
    np.save(path, array)
    images, labels = as_arrays(data.load("npy", "train", path=str(path)))
    expected = array if array.ndim == 4 else array[..., None]
    np.testing.assert_array_equal(np.stack(images), expected)
    assert np.all(labels == -1)
    with tfds.testing.mock_data(num_examples=4):
        ds, _ = data.make_train_dataset("fashion_mnist", "npy", outlier_path=str(path),
                                        image_shape=(28, 28, 1), batch_in=2, batch_out=5)
        assert next(iter(ds))[1].shape == (5, 28, 28, 1)


def test_npy_rejects_other_dtypes(tmp_path):
    path = tmp_path / "float.npy"
    np.save(path, np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        data.load("npy", "test", path=str(path))


# ------------------------------------------------------------------------- Tiny Images
def write_tiny_images(path, images):
    """Writes records byte by byte: byte[c * 1024 + col * 32 + row] = image[row, col, c]."""
    records = np.zeros((len(images), 3072), np.uint8)
    for n, image in enumerate(images):
        for row in range(32):
            for col in range(32):
                for channel in range(3):
                    records[n, channel * 1024 + col * 32 + row] = image[row, col, channel]
    path.write_bytes(records.tobytes())
    return records


@pytest.fixture
def tiny(tmp_path):
    images = np.random.default_rng(2).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(5)  # identity
    images[0, :, :, :] = 0
    images[0, 3, 7, 1] = 255  # a marker at row 3, column 7, green
    path = tmp_path / "tiny_images.bin"
    records = write_tiny_images(path, images)
    exclusions = tmp_path / "80mn_cifar_idxs.txt"
    exclusions.write_text("2\n4\n")  # 1-based: rows 1 and 3
    return images, records, path, exclusions


def test_tiny_images_orientation_matches_outlier_exposure(tiny):
    images, records, path, _ = tiny
    loaded, labels = as_arrays(data.load("tiny_images", "train", path=str(path)))
    np.testing.assert_array_equal(np.stack(loaded), images)
    assert np.all(labels == -1)
    assert np.argwhere(loaded[0] == 255).tolist() == [[3, 7, 1]]
    # OE's loader: np.fromstring(record).reshape(32, 32, 3, order="F").
    for record, image in zip(records, loaded):
        np.testing.assert_array_equal(record.reshape(32, 32, 3, order="F"), image)


def test_tiny_images_exclusions_are_one_based(tiny):
    images, _, path, exclusions = tiny
    kwargs = dict(path=str(path), exclude_index_path=str(exclusions))
    loaded, _ = as_arrays(data.load("tiny_images", "train", **kwargs))
    np.testing.assert_array_equal(np.stack(loaded), images[[0, 2, 4]])
    assert data.count("tiny_images", "train", **kwargs) == 3
    subsample, _ = as_arrays(data.load("tiny_images", "train", limit=2, seed=1, **kwargs))
    assert len(subsample) == 2 and {int(x[0, 0, 0]) for x in subsample} <= {0, 2, 4}


def test_tiny_images_sampled_stream_skips_exclusions(tiny, monkeypatch):
    images, _, path, exclusions = tiny
    monkeypatch.setattr(files, "PERMUTATION_MAX_ROWS", 2)  # take the 79M-image code path
    kwargs = dict(path=str(path), exclude_index_path=str(exclusions))
    loaded, _ = as_arrays(data.load("tiny_images", "train", **kwargs))
    np.testing.assert_array_equal(np.stack(loaded), images[[0, 2, 4]])
    with tfds.testing.mock_data(num_examples=4):
        ds, _ = data.make_train_dataset(
            "cifar10", "tiny_images", outlier_path=str(path),
            outlier_exclude_index_path=str(exclusions), image_shape=(32, 32, 3), batch_in=2,
            batch_out=30, augment=False)
        x_out = next(iter(ds))[1].numpy()
    mean, std = (np.array(values) for values in data.normalization("cifar10"))
    drawn = np.round((x_out * std + mean) * 255).astype(np.uint8)
    drawn_ids = drawn[:, 0, 0, 0]
    assert set(drawn_ids) <= {0, 2, 4} and len(set(drawn_ids)) > 1  # allowed rows only
    for image in drawn:
        np.testing.assert_array_equal(image, images[image[0, 0, 0]])


def test_tiny_images_rejects_a_truncated_file(tmp_path):
    path = tmp_path / "broken.bin"
    path.write_bytes(b"\0" * 3000)
    with pytest.raises(ValueError, match="3072"):
        data.load("tiny_images", "train", path=str(path))
