"""Images of any size, dtype and channel count prepared to a model's input (`prepare`).

Its own module so that every data source can use it without importing the pipelines.

Example:
  prepare(tf.zeros((40, 60, 3), tf.uint8), (32, 32, 1)).shape  # (32, 32, 1)
"""

from __future__ import annotations

import tensorflow as tf


def _convert_channels(images, channels):
    have = images.shape[-1]
    if have is None:
        raise ValueError("prepare needs images with a known number of channels.")
    if have == 4:  # RGBA: drop alpha
        images, have = images[..., :3], 3
    elif have == 2:  # gray + alpha
        images, have = images[..., :1], 1
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return tf.image.grayscale_to_rgb(images)
    if have == 3 and channels == 1:
        return tf.image.rgb_to_grayscale(images)
    raise ValueError(f"Cannot convert images with {have} channels to {channels}.")


def _cover_size(height, width, target_height, target_width):
    """Size that covers the target with the aspect ratio kept (torchvision `Resize(int)`)."""
    height, width = tf.cast(height, tf.int64), tf.cast(width, tf.int64)
    target_height = tf.constant(target_height, tf.int64)
    target_width = tf.constant(target_width, tf.int64)
    # Integer arithmetic: the limiting side gets exactly the target, the other is floored.
    height_limits = target_height * width >= target_width * height
    new_height = tf.where(height_limits, target_height,
                          tf.maximum(target_height, height * target_width // width))
    new_width = tf.where(height_limits, tf.maximum(target_width, width * target_height // height),
                         target_width)
    return tf.cast(new_height, tf.int32), tf.cast(new_width, tf.int32)


def _to_unit_float(images):
    if images.dtype.is_floating:
        return tf.cast(images, tf.float32)
    if images.dtype == tf.bool:
        return tf.cast(images, tf.float32)
    scale = 65535.0 if images.dtype == tf.uint16 else 255.0
    return tf.cast(images, tf.float32) / scale


def prepare(images, image_shape):
    """Images of any size, dtype and channel count -> float32 [0, 1] of shape `image_shape`.

    Works on one image (H, W, C) or (H, W), or a batch (B, H, W, C). Float (and bool) images are
    taken to be in [0, 1] already; uint16 ones are divided by 65535, other integers by 255.
    Channels: gray -> RGB repeats the channel, RGB -> gray uses ITU-R 601 luma, alpha is
    dropped. Geometry: resize (bilinear, antialiased) so the image covers the target with its
    aspect ratio kept, i.e. the shorter side matches for a square target, then crop the centre
    (top/left offset floor((size - target) / 2)). An image already at the target size is
    returned unchanged apart from the dtype.

    Example:
      >>> prepare(tf.zeros((40, 60, 3), tf.uint8), (32, 32, 1)).shape
      TensorShape([32, 32, 1])
    """
    target_height, target_width, channels = (int(d) for d in image_shape)
    images = _to_unit_float(tf.convert_to_tensor(images))
    if images.shape.rank == 2:
        images = images[..., tf.newaxis]
    if images.shape.rank not in (3, 4):
        raise ValueError(f"prepare expects (H, W[, C]) or (B, H, W, C), got {images.shape}.")
    images = _convert_channels(images, channels)
    if tuple(images.shape[-3:-1]) == (target_height, target_width):
        return tf.clip_by_value(images, 0.0, 1.0)  # already the target size: no resampling
    shape = tf.shape(images)
    height, width = shape[-3], shape[-2]
    new_height, new_width = _cover_size(height, width, target_height, target_width)
    images = tf.image.resize(images, tf.stack([new_height, new_width]), method="bilinear",
                             antialias=True)
    top = (new_height - target_height) // 2
    left = (new_width - target_width) // 2
    images = images[..., top:top + target_height, left:left + target_width, :]
    images = tf.clip_by_value(images, 0.0, 1.0)
    return tf.ensure_shape(images, (*images.shape[:-3], target_height, target_width, channels))


__all__ = ["prepare"]
