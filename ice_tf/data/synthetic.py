"""Outlier Exposure's synthetic OOD sets (Gaussian, Rademacher, Blobs), in pixel space.

Outlier Exposure draws these directly as network inputs in [-1, 1], bypassing normalisation.
Here they are images like any other OOD set: pixel = (x + 1) / 2 in [0, 1], stored as uint8,
then normalised with the in-distribution statistics by the evaluation pipeline. So:

| name         | pixel value (per pixel and channel)                                          |
|--------------|------------------------------------------------------------------------------|
| `gaussian`   | clip(0.5 + 0.25 * N(0, 1), 0, 1)   (OE: clip(N(0, 0.5^2), -1, 1))            |
| `rademacher` | 0 or 1 with probability 1/2          (OE: -1 or 1)                           |
| `blobs`      | Bernoulli(0.7), Gaussian blur (sigma 1.5 px at 32x32), values < 0.75 set to 0 |

Blobs are blurred over rows, columns and channels together (sigma 1.5 on each axis, edge
values repeated, kernel truncated at 4 sigma), as OE's `skimage.filters.gaussian(...,
multichannel=False)` call on an (H, W, 3) array does; the spatial sigma scales with the image
size. These sets have no native size: they are generated at `image_shape` (default 32x32x3),
`limit` images (default 2,000, OE's OOD test size), deterministically from `seed` and the split.

Example: `generate("blobs", count=4, image_shape=(32, 32, 3), seed=0)` -> uint8 (4, 32, 32, 3).
"""

from __future__ import annotations

import functools

import numpy as np

from ice_tf.data.sources import from_arrays

DEFAULT_COUNT = 2000
DEFAULT_IMAGE_SHAPE = (32, 32, 3)
_CHUNK = 256  # images generated at a time, to bound float temporaries


def gaussian_kernel(sigma, truncate=4.0):
    """A normalised 1-D Gaussian kernel of radius int(truncate * sigma + 0.5).

    Example:
      gaussian_kernel(1.0).sum()  # 1.0
    """
    radius = int(truncate * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_filter(array, sigmas):
    """Separable Gaussian blur of `array`, one sigma per axis (0 skips it); edges repeated.

    Matches `scipy.ndimage.gaussian_filter(array, sigmas, mode="nearest")`.

    Example:
      smooth = gaussian_filter(noise, sigmas=(1.0, 1.0, 0.0))
    """
    result = np.asarray(array, dtype=np.float64)
    for axis, sigma in enumerate(sigmas):
        if sigma <= 0:
            continue
        kernel = gaussian_kernel(sigma)
        radius = len(kernel) // 2
        padding = [(0, 0)] * result.ndim
        padding[axis] = (radius, radius)
        padded = np.moveaxis(np.pad(result, padding, mode="edge"), axis, 0)
        length = result.shape[axis]
        blurred = np.zeros_like(padded[:length])
        for offset, weight in enumerate(kernel):
            blurred += weight * padded[offset:offset + length]
        result = np.moveaxis(blurred, 0, axis)
    return result


def _gaussian(rng, shape):
    return np.clip(0.5 + 0.25 * rng.standard_normal(shape), 0.0, 1.0)


def _rademacher(rng, shape):
    return rng.integers(0, 2, size=shape).astype(np.float64)


def _blobs(rng, shape):
    height, width, channels = shape[1:]
    spatial_sigma = 1.5 * min(height, width) / 32
    images = rng.binomial(1, 0.7, size=shape).astype(np.float64)
    images = gaussian_filter(images, (0, spatial_sigma, spatial_sigma,
                                      1.5 if channels > 1 else 0))
    images[images < 0.75] = 0.0
    return images


GENERATORS = {"gaussian": _gaussian, "rademacher": _rademacher, "blobs": _blobs}
# Fixed codes keep every (set, split) stream distinct for the same seed.
_NAME_CODES = {"gaussian": 1, "rademacher": 2, "blobs": 3}
_SPLIT_CODES = {"train": 1, "test": 2}


@functools.lru_cache(maxsize=8)
def generate(name, count, image_shape, seed, split="test"):
    """`count` images of the synthetic set `name`, uint8 (count, H, W, C), deterministic."""
    image_shape = tuple(int(d) for d in image_shape)
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (H, W, C), got {image_shape}.")
    rng = np.random.default_rng([int(seed), _NAME_CODES[name], _SPLIT_CODES[split]])
    images = np.empty((count, *image_shape), dtype=np.uint8)
    for start in range(0, count, _CHUNK):
        size = min(_CHUNK, count - start)
        pixels = GENERATORS[name](rng, (size, *image_shape))
        images[start:start + size] = np.round(pixels * 255.0).astype(np.uint8)
    images.setflags(write=False)  # cached: shared by every caller
    return images


class SyntheticSource:
    """Generated noise images, label -1; `limit` is the number generated (default 2,000).

    Example:
      load("blobs", "test", limit=100, image_shape=(32, 32, 3))
    """

    def __init__(self, name):
        self.name = name

    def open(self, split, options, *, dataset_name):
        """`Examples` of `limit` generated images (the source protocol of `ice_tf.data.load`)."""
        count = DEFAULT_COUNT if options.limit is None else int(options.limit)
        shape = tuple(options.image_shape or DEFAULT_IMAGE_SHAPE)
        images = generate(self.name, count, shape, int(options.seed), split)
        return from_arrays(images, None)
