"""Layer helpers shared by the backbone builders.

The helpers reproduce PyTorch defaults where they differ from Keras, so that
the architectures match their PyTorch reference implementations:

* Conv kernels: normal(0, sqrt(2 / (k * k * out_channels))), i.e. He-normal
  with fan-out and no truncation; no bias (a BatchNormalization follows).
* BatchNormalization: momentum 0.9 and epsilon 1e-5 (PyTorch's momentum 0.1), trained
  with TensorFlow's fused kernel (`ice_tf.layers.FusedBatchNormalization`) unless the
  replicas synchronise their statistics.
* 3x3 convolutions with stride > 1 pad one pixel on every side, as PyTorch's
  ``padding=1``; Keras' ``'same'`` would pad only the bottom/right edge of an
  even-sized input and shift the sampling grid.
"""

from __future__ import annotations

import math
from typing import Sequence

import keras

from ice_tf.layers import FusedBatchNormalization

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def check_input_shape(input_shape: Sequence[int | None]) -> tuple:
    """Returns ``input_shape`` as a ``(height, width, channels)`` tuple."""
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[-1] is None:
        raise ValueError(
            "input_shape must be (height, width, channels) with a known channel "
            f"count; got {input_shape!r}"
        )
    return shape


def conv_initializer(kernel_size: int, filters: int) -> keras.initializers.Initializer:
    """He-normal (fan-out) initializer used by the WRN and DenseNet references."""
    fan_out = kernel_size * kernel_size * filters
    return keras.initializers.RandomNormal(mean=0.0, stddev=math.sqrt(2.0 / fan_out))


def conv2d(x, filters: int, kernel_size: int, stride: int, name: str):
    """Bias-free convolution with PyTorch-style symmetric padding of ``kernel_size // 2``."""
    pad = kernel_size // 2
    if pad and stride > 1:
        x = keras.layers.ZeroPadding2D(padding=pad, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        # Stride 1 with an odd kernel: 'same' pads symmetrically, as PyTorch does.
        padding = "same" if pad else "valid"
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=stride,
        padding=padding,
        use_bias=False,
        kernel_initializer=conv_initializer(kernel_size, filters),
        name=name,
    )(x)


def batch_norm(name: str, sync_batchnorm: bool = False) -> keras.layers.BatchNormalization:
    """BatchNormalization with PyTorch's defaults, fused in training
    (`FusedBatchNormalization`); ``synchronized`` for multi-replica training (Keras' own)."""
    layer = keras.layers.BatchNormalization if sync_batchnorm else FusedBatchNormalization
    return layer(
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        gamma_initializer="ones",
        beta_initializer="zeros",
        synchronized=sync_batchnorm,
        name=name,
    )


def bn_relu(x, name: str, sync_batchnorm: bool = False):
    """BatchNormalization followed by ReLU (layers ``<name>_bn`` and ``<name>_relu``)."""
    x = batch_norm(f"{name}_bn", sync_batchnorm)(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)
