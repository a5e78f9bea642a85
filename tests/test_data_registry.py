"""The dataset registry: names, infos, errors, normalisation constants."""

import dataclasses

import pytest

from ice_tf import data

EXPECTED = {
    "cifar10", "cifar100", "svhn", "textures", "places365", "lsun", "imagenet32", "mnist",
    "fashion_mnist", "image_folder", "npy", "tiny_images", "gaussian", "rademacher", "blobs",
    "embedded_fashion_mnist", "embedded_fashion_mnist_near", "embedded_fashion_mnist_heldout",
    "embedded_outliers", "embedded_mnist", "embedded_digits", "embedded_textures",
}


def test_names_are_sorted_and_complete():
    names = data.names()
    assert names == sorted(names)
    assert EXPECTED <= set(names)
    assert "lsun/bedroom" in names


def test_infos_are_frozen_and_consistent():
    for name in data.names():
        info = data.get_info(name)
        assert info.name == name and info.kind in ("tfds", "files", "synthetic", "embedded")
        assert info.splits and info.description
        assert info.image_shape is None or len(info.image_shape) == 3
    info = data.get_info("cifar10")
    assert (info.num_classes, info.image_shape, info.splits) == (10, (32, 32, 3), ("train", "test"))
    assert data.get_info("textures").splits == ("test",)
    assert data.get_info("embedded_outliers").splits == ("train", "val")
    assert data.get_info("embedded_fashion_mnist_near").num_classes == 6
    assert data.get_info("tiny_images").num_classes is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.name = "other"


def test_unknown_names_and_splits_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid datasets: .*cifar10"):
        data.get_info("cifar11")
    with pytest.raises(ValueError, match="valid datasets"):
        data.load("cifar11", "test")
    with pytest.raises(ValueError, match="valid splits: train, test"):
        data.load("cifar10", "validation")


def test_normalization_constants():
    mean, std = data.normalization("cifar10")
    assert mean == pytest.approx((125.3 / 255, 123.0 / 255, 113.9 / 255))
    assert std == pytest.approx((63.0 / 255, 62.1 / 255, 66.7 / 255))
    assert data.normalization("cifar100") == (mean, std)
    assert data.normalization("mnist") == ((0.1307,), (0.3081,))
    in_distribution = ("cifar10", "cifar100", "svhn", "mnist", "fashion_mnist",
                       "embedded_fashion_mnist", "embedded_fashion_mnist_near")
    for name in in_distribution:
        mean, std = data.normalization(name)
        assert len(mean) == len(std) and all(0 < s < 1 for s in std)
    with pytest.raises(ValueError, match="not an in-distribution set"):
        data.normalization("textures")
