"""The dataset registry: names, what each set is, where it comes from, its normalisation.

Flags and configs only pick names; `get_info(name)` describes a set and `names()` lists them.
An unknown name or split is a `ValueError` that lists the valid ones.
"""

from __future__ import annotations

import dataclasses

from ice_tf.data import embedded, files, labelled, synthetic
from ice_tf.data.tfds_sources import TfdsSource

KINDS = ("tfds", "files", "synthetic", "embedded", "user")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a registered dataset is.

    Attributes:
      name: the registry name.
      kind: "tfds", "files", "synthetic", "embedded", or "user" (a labelled set of the
        user's: `register_labelled`, or a spec image_folder:PATH / npz:PATH).
      num_classes: number of classes of the labels it yields; None for sets whose labels are
        all -1 (OOD-only sets).
      image_shape: native (H, W, C), or None where sizes vary or are chosen by the caller.
      splits: the split names `load` accepts.
      description: one paragraph for humans (source, size, caveats).
      flip: whether horizontal flips are a valid augmentation (False for digits).

    Example: `get_info("cifar10").image_shape == (32, 32, 3)`.
    """

    name: str
    kind: str
    num_classes: int | None
    image_shape: tuple[int, int, int] | None
    splits: tuple[str, ...]
    description: str
    flip: bool = True


@dataclasses.dataclass(frozen=True)
class _Entry:
    info: DatasetInfo
    source: object
    uses_path: bool = False
    uses_exclusions: bool = False


_REGISTRY: dict[str, _Entry] = {}


def _register(name, kind, source, *, num_classes, image_shape, splits, description,
              flip=True, uses_path=False, uses_exclusions=False):
    info = DatasetInfo(name, kind, num_classes, image_shape, tuple(splits), description, flip)
    _REGISTRY[name] = _Entry(info, source, uses_path, uses_exclusions)


# ------------------------------------------------------------------------------- TFDS
def _tfds(name, tfds_name, splits, *, channels, image_shape, num_classes, description,
          flip=True, has_labels=True):
    source = TfdsSource(tfds_name, splits, channels=channels, image_shape=image_shape,
                        has_labels=has_labels)
    _register(name, "tfds", source, num_classes=num_classes, image_shape=image_shape,
              splits=tuple(splits), description=description, flip=flip)


_TRAIN_TEST = {"train": "train", "test": "test"}
_tfds("cifar10", "cifar10", _TRAIN_TEST, channels=3, image_shape=(32, 32, 3), num_classes=10,
      description="CIFAR-10 (TFDS cifar10): 50,000 train / 10,000 test, 32x32 RGB.")
_tfds("cifar100", "cifar100", _TRAIN_TEST, channels=3, image_shape=(32, 32, 3),
      num_classes=100,
      description="CIFAR-100 (TFDS cifar100), fine labels: 50,000 train / 10,000 test, 32x32.")
_tfds("svhn", "svhn_cropped", {"train": "train", "test": "test", "extra": "extra"}, channels=3,
      image_shape=(32, 32, 3), num_classes=10,
      description="SVHN cropped digits (TFDS svhn_cropped): train 73,257 / test 26,032 / "
                  "extra 531,131, 32x32. OE and Energy use the test split as an OOD set.")
_tfds("textures", "dtd", {"test": "train+validation+test"}, channels=3, image_shape=None,
      num_classes=47,
      description="Describable Textures (TFDS dtd): all three splits together, the 5,640 "
                  "images OE and Energy use as an OOD set. Variable size.")
_tfds("places365", "places365_small", {"train": "train", "validation": "validation",
                                       "test": "test"},
      channels=3, image_shape=(256, 256, 3), num_classes=365,
      description="Places365 at 256x256 (TFDS places365_small); test labels are -1. OE used "
                  "an unpublished subset: pass limit (e.g. 10,000) for a seeded subsample.")
LSUN_SCENES = ("bedroom", "bridge", "church_outdoor", "classroom", "conference_room",
               "dining_room", "kitchen", "living_room", "restaurant", "tower")
LSUN_DEFAULT_SCENE = "classroom"
for _scene in LSUN_SCENES:
    _tfds(f"lsun/{_scene}", f"lsun/{_scene}", {"train": "train", "test": "validation"},
          channels=3, image_shape=None, num_classes=None, has_labels=False,
          description=f"LSUN scene category {_scene!r} (TFDS lsun/{_scene}); split 'test' "
                      "is the LSUN validation set (300 images), since the LSUN test set OE "
                      "used is not in TFDS. Preparing it needs tensorflow-io. Variable size.")
_tfds("lsun", f"lsun/{LSUN_DEFAULT_SCENE}", {"train": "train", "test": "validation"},
      channels=3, image_shape=None, num_classes=None, has_labels=False,
      description=f"LSUN, category {LSUN_DEFAULT_SCENE!r} (same as "
                  f"'lsun/{LSUN_DEFAULT_SCENE}'; other scenes: 'lsun/<scene>'). The ODIN "
                  "32x32 LSUN-C/LSUN-R sets the paper's tables use are not in TFDS: load "
                  "them with 'image_folder'.")
_tfds("imagenet32", "imagenet_resized/32x32", {"train": "train", "validation": "validation"},
      channels=3, image_shape=(32, 32, 3), num_classes=1000,
      description="Downsampled ImageNet 32x32 (TFDS imagenet_resized/32x32): 1,281,167 "
                  "train / 50,000 validation; an outlier pool in place of 80M Tiny Images. "
                  "Needs the manually downloaded archives to prepare.")
_tfds("mnist", "mnist", _TRAIN_TEST, channels=1, image_shape=(28, 28, 1), num_classes=10,
      flip=False, description="MNIST (TFDS mnist): 60,000 train / 10,000 test, 28x28 gray.")
_tfds("fashion_mnist", "fashion_mnist", _TRAIN_TEST, channels=1, image_shape=(28, 28, 1),
      num_classes=10,
      description="Fashion-MNIST (TFDS fashion_mnist): 60,000 train / 10,000 test, 28x28.")

# ------------------------------------------------------------------------- user files
_FILE_SPLITS = ("train", "test")
_register("image_folder", "files", files.ImageFolderSource(), num_classes=None,
          image_shape=None, splits=_FILE_SPLITS, uses_path=True,
          description="Every image under the folder `path` (recursive; png/jpg/bmp/gif, read "
                      "as RGB), e.g. iSUN, LSUN-C, LSUN-R as distributed with ODIN. Both "
                      "splits read the whole folder.")
_register("npy", "files", files.NpySource(), num_classes=None, image_shape=None,
          splits=_FILE_SPLITS, uses_path=True,
          description="A .npy array of uint8 images (N, H, W, C) or (N, H, W) at `path`, e.g. "
                      "300K Random Images. Both splits read the whole array.")
_register("npz", "files", files.NpzImagesSource(), num_classes=None, image_shape=None,
          splits=_FILE_SPLITS, uses_path=True,
          description="The uint8 images of a .npz at `path` (x_test, test_images, x, images, or "
                      "its only array), label -1; as an in-distribution set, `npz:PATH` "
                      "reads images with labels instead (ice_tf.data.labelled).")
_register("tiny_images", "files", files.TinyImagesSource(), num_classes=None,
          image_shape=files.TINY_IMAGE_SHAPE, splits=_FILE_SPLITS, uses_path=True,
          uses_exclusions=True,
          description="80M Tiny Images in OE's tiny_images.bin format at `path`; "
                      "exclude_index_path: OE's 80mn_cifar_idxs.txt (1-based). Without limit, "
                      "training samples it uniformly with replacement.")

# -------------------------------------------------------------------------- synthetic
for _name, _what in (("gaussian", "Gaussian noise"), ("rademacher", "Rademacher noise"),
                     ("blobs", "Blobs")):
    _register(_name, "synthetic", synthetic.SyntheticSource(_name), num_classes=None,
              image_shape=None, splits=("train", "test"),
              description=f"{_what} as in Outlier Exposure, in [0, 1] pixel space; generated "
                          "at the requested image_shape (default 32x32x3), `limit` images "
                          f"(default {synthetic.DEFAULT_COUNT}), from `seed`.")

# --------------------------------------------------------------------------- embedded
_FASHION_SPLITS = {split: (f"{split}_images", f"{split}_labels")
                   for split in ("train", "val", "test")}
_GRAY28 = (28, 28, 1)
_register("embedded_fashion_mnist", "embedded",
          embedded.EmbeddedSource("fashion_mnist.npz", _FASHION_SPLITS), num_classes=10,
          image_shape=_GRAY28, splits=("train", "val", "test"),
          description="Embedded Fashion-MNIST subset: 13,000 train / 1,000 val / 3,000 test.")
_register("embedded_fashion_mnist_near", "embedded",
          embedded.EmbeddedSource("fashion_mnist.npz", _FASHION_SPLITS,
                                  keep_classes=embedded.NEAR_OOD_IN_CLASSES, relabel=True),
          num_classes=len(embedded.NEAR_OOD_IN_CLASSES), image_shape=_GRAY28,
          splits=("train", "val", "test"),
          description="Near-OOD configuration, in-distribution part: Fashion-MNIST classes "
                      "T-shirt/top, Trouser, Pullover, Dress, Sandal, Bag (0, 1, 2, 3, 5, 8) "
                      "relabelled 0..5.")
_register("embedded_fashion_mnist_heldout", "embedded",
          embedded.EmbeddedSource("fashion_mnist.npz", {"test": ("test_images", "test_labels")},
                                  keep_classes=embedded.NEAR_OOD_HELDOUT_CLASSES),
          num_classes=None, image_shape=_GRAY28, splits=("test",),
          description="Near-OOD test set: the held-out Fashion-MNIST classes Coat, Shirt, "
                      "Sneaker, Ankle boot (4, 6, 7, 9) of the test split, label -1.")
_register("embedded_outliers", "embedded",
          embedded.EmbeddedSource("outliers.npz", {"train": ("train", None),
                                                   "val": ("val", None)}),
          num_classes=None, image_shape=_GRAY28, splits=("train", "val"),
          description="Embedded auxiliary outliers: natural-photo crops (train), and crops of "
                      "other photos as a validation OOD set (val).")
for _name, _what, _flip in (("mnist", "5,000 MNIST digits", False),
                            ("digits", "1,797 scikit-learn 8x8 digits, upscaled", False),
                            ("textures", "2,000 texture crops", True)):
    _register(f"embedded_{_name}", "embedded",
              embedded.EmbeddedSource("ood_test.npz", {"test": (_name, None)}),
              num_classes=None, image_shape=_GRAY28, splits=("test",), flip=_flip,
              description=f"Embedded OOD test set: {_what}, 28x28, label -1.")

# ----------------------------------------------------------------------- normalisation
# Per-channel mean and std in [0, 1] pixel units, for the sets used as in-distribution.
_CIFAR = (tuple(v / 255 for v in (125.3, 123.0, 113.9)), tuple(v / 255 for v in (63.0, 62.1, 66.7)))
# Computed from the embedded train split (13,000 images); tests recompute them.
EMBEDDED_FASHION_MNIST_NORMALIZATION = ((0.286755,), (0.353011,))
_NORMALIZATION = {
    "cifar10": _CIFAR,  # OE's constants, used for CIFAR-100 too
    "cifar100": _CIFAR,
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "embedded_fashion_mnist": EMBEDDED_FASHION_MNIST_NORMALIZATION,
    "embedded_fashion_mnist_near": EMBEDDED_FASHION_MNIST_NORMALIZATION,
}


# ------------------------------------------------------------------------------ lookup
def names():
    """All registered dataset names, sorted.

    Example: `"cifar10" in names()`.
    """
    return sorted(_REGISTRY)


def _entry(name):
    if name not in _REGISTRY and labelled.is_spec(name):
        _add_labelled(name, labelled.read_spec(name), f"The user's labelled set at {name}.")
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown dataset {name!r}; valid datasets: {', '.join(names())}, or a labelled "
            "set of your own: image_folder:PATH (one subfolder per class) or npz:PATH.")
    return _REGISTRY[name]


_USER_ARRAYS: dict[str, labelled.LabelledArrays] = {}


def _add_labelled(name, arrays, description):
    _register(name, "user", labelled.ArraysSource(arrays), num_classes=arrays.num_classes,
              image_shape=arrays.image_shape, splits=labelled.SPLITS, description=description,
              flip=arrays.flip)
    _NORMALIZATION[name] = arrays.normalization
    _USER_ARRAYS[name] = arrays


def register_labelled(name, x_train, y_train, x_test=None, y_test=None, x_val=None, y_val=None,
                      class_names=None, flip=True, description=None):
    """Registers a labelled in-distribution set of the user's arrays under `name`, so that
    configs, `make_train_dataset` and `make_eval_dataset` use it like a built-in set.

    Images: uint8 (N, H, W[, C]) or floats in [0, 1]; labels 0..K-1 or one-hot. A missing
    test or validation split is carved by a fixed seed (`ice_tf.data.labelled`); the
    normalisation is computed from the training split. Registering a name again replaces it.

    Example:
      register_labelled("my_set", x_train, y_train, x_test, y_test, class_names=names)
      config = ExperimentConfig(in_dataset="my_set", backbone="small_cnn")
    """
    if not name or ":" in name:
        raise ValueError(f"dataset name {name!r} must be non-empty and contain no ':'.")
    if name in _REGISTRY and _REGISTRY[name].info.kind != "user":
        raise ValueError(f"{name!r} is a built-in dataset; register yours under another name.")
    splits = {"train": (x_train, y_train)}
    for split, (x, y) in (("val", (x_val, y_val)), ("test", (x_test, y_test))):
        if (x is None) != (y is None):
            raise ValueError(f"give both x_{split} and y_{split}, or neither.")
        if x is not None:
            splits[split] = (x, y)
    arrays = labelled.LabelledArrays.from_arrays(splits, class_names, f"dataset {name!r}", flip)
    _add_labelled(name, arrays, description or f"The user's labelled set {name!r}.")
    return get_info(name)


def describe(name):
    """What a run folder stores of its in-distribution set (dataset.json): name, kind,
    classes, image shape, normalisation, and for a user's set its splits' sizes and origin.

    Example:
      describe("npz:mine.npz")["class_names"]  # ['airplane', ...]
    """
    info = get_info(name)
    if name in _USER_ARRAYS:
        return {"name": name, "kind": info.kind, **_USER_ARRAYS[name].describe()}
    record = {"name": name, "kind": info.kind, "num_classes": info.num_classes,
              "image_shape": list(info.image_shape) if info.image_shape else None}
    if name in _NORMALIZATION:
        mean, std = _NORMALIZATION[name]
        record["normalization"] = {"mean": list(mean), "std": list(std)}
    return record


def get_info(name):
    """The `DatasetInfo` of a registered dataset.

    Example: `get_info("textures").splits == ("test",)`.
    """
    return _entry(name).info


def check_split(name, split):
    """Raises ValueError unless `split` is one of the dataset's splits.

    Example:
      check_split("textures", "train")  # ValueError: ... valid splits: test.
    """
    info = get_info(name)
    if split not in info.splits:
        raise ValueError(
            f"Dataset {name!r} has no split {split!r}; valid splits: {', '.join(info.splits)}."
        )


def normalization(name):
    """(mean, std) per channel in [0, 1] pixel units for an in-distribution set.

    CIFAR-10/100 use Outlier Exposure's constants; MNIST, Fashion-MNIST and SVHN the usual
    published ones; the embedded Fashion-MNIST sets constants computed from its train split.
    OOD-only sets have none: normalise them with the in-distribution set's statistics.

    Example: `mean, std = normalization("cifar10")`.
    """
    _entry(name)
    if name not in _NORMALIZATION:
        raise ValueError(
            f"Dataset {name!r} has no normalisation constants (it is not an in-distribution "
            f"set); sets that have them: {', '.join(sorted(_NORMALIZATION))}."
        )
    return _NORMALIZATION[name]


def source_entry(name):
    """The registry entry (info, source, which arguments it reads). For `load`.

    Example:
      source_entry("cifar10").info.num_classes  # 10
    """
    return _entry(name)
