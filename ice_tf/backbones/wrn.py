"""Wide Residual Networks (Zagoruyko & Komodakis, 2016) for 32x32-scale images.

Follows ``CIFAR/models/wrn.py`` of hendrycks/outlier-exposure: pre-activation
basic blocks, dropout between the two 3x3 convolutions of each block, and a
bias-free 1x1 convolution shortcut wherever a block changes the channel count.
"""

from __future__ import annotations

from typing import Sequence

import keras

from ice_tf import layers
from ice_tf.backbones._common import bn_relu, check_input_shape, conv2d


def _basic_block(x, in_channels: int, out_channels: int, stride: int,
                 dropout_rate: float, sync_batchnorm: bool, name: str):
    """Pre-activation basic block, as ``BasicBlock`` in the reference.

    When the channel count changes, the reference overwrites ``x`` with
    BN-ReLU(x), so the activated tensor feeds both the 3x3 convolution and the
    1x1 shortcut; otherwise the shortcut is the raw input.
    """
    same_channels = in_channels == out_channels
    if same_channels and stride != 1:
        raise ValueError(
            f"{name}: a stride-{stride} block needs a channel change; the reference "
            "has no shortcut for downsampling at constant width"
        )
    activated = bn_relu(x, f"{name}_preact", sync_batchnorm)
    if same_channels:
        shortcut = x
    else:
        shortcut = conv2d(activated, out_channels, 1, stride, name=f"{name}_shortcut")

    residual = conv2d(activated, out_channels, 3, stride, name=f"{name}_conv1")
    residual = bn_relu(residual, f"{name}_mid", sync_batchnorm)
    if dropout_rate > 0:
        residual = layers.Dropout(dropout_rate, name=f"{name}_dropout")(residual)
    residual = conv2d(residual, out_channels, 3, 1, name=f"{name}_conv2")
    return keras.layers.Add(name=f"{name}_add")([shortcut, residual])


def wide_resnet(input_shape: Sequence[int | None], depth: int, widen_factor: int, *,
                dropout_rate: float = 0.0, sync_batchnorm: bool = False,
                name: str | None = None) -> keras.Model:
    """Builds WRN-``depth``-``widen_factor`` as a feature extractor.

    A 3x3 convolution with 16 channels, then three groups of ``(depth - 4) / 6``
    basic blocks with widths 16k, 32k, 64k and strides 1, 2, 2, a final
    BN-ReLU and global average pooling. The output has ``64 * widen_factor``
    features; there is no classifier layer.

    Args:
      input_shape: ``(height, width, channels)`` of the float32 images.
      depth: total depth; ``depth - 4`` must be divisible by 6.
      widen_factor: channel multiplier ``k``.
      dropout_rate: dropout between the two convolutions of every block.
      sync_batchnorm: use synchronized BatchNormalization (several replicas).
      name: model name; defaults to ``wrn{depth}_{widen_factor}``.

    Example:
      ``model = wide_resnet((32, 32, 3), depth=16, widen_factor=4)``
    """
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(f"WRN depth must be 6n + 4 with n >= 1; got {depth}")
    if widen_factor < 1:
        raise ValueError(f"widen_factor must be >= 1; got {widen_factor}")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1); got {dropout_rate}")
    blocks_per_group = (depth - 4) // 6
    group_widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
    group_strides = (1, 2, 2)

    inputs = keras.Input(shape=check_input_shape(input_shape), dtype="float32", name="images")
    x = conv2d(inputs, 16, 3, 1, name="stem_conv")
    channels = 16
    for group, (width, stride) in enumerate(zip(group_widths, group_strides), start=1):
        for block in range(1, blocks_per_group + 1):
            x = _basic_block(
                x, channels, width, stride if block == 1 else 1,
                dropout_rate, sync_batchnorm, name=f"group{group}_block{block}",
            )
            channels = width
    x = bn_relu(x, "final", sync_batchnorm)
    features = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    return keras.Model(inputs, features, name=name or f"wrn{depth}_{widen_factor}")


def wrn40_2(input_shape: Sequence[int | None], *, dropout_rate: float = 0.3,
            sync_batchnorm: bool = False) -> keras.Model:
    """WRN-40-2 with dropout 0.3, the CIFAR backbone of Outlier Exposure.

    128 features. Trainable parameters: 2,243,546 with a 10-class linear head
    (2,242,256 for the backbone alone).

    Reference: Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016;
    hendrycks/outlier-exposure ``CIFAR/models/wrn.py``.

    Example: ``features = wrn40_2((32, 32, 3))(images)  # (batch, 128)``
    """
    return wide_resnet(input_shape, 40, 2, dropout_rate=dropout_rate,
                       sync_batchnorm=sync_batchnorm, name="wrn40_2")


def wrn16_4(input_shape: Sequence[int | None], *, dropout_rate: float = 0.0,
            sync_batchnorm: bool = False) -> keras.Model:
    """WRN-16-4, a shallower, wider CIFAR network (two blocks per group).

    256 features. Trainable parameters: 2,748,890 with a 10-class linear head
    on 32x32x3 inputs.

    Reference: Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.

    Example: ``features = wrn16_4((32, 32, 3))(images)  # (batch, 256)``
    """
    return wide_resnet(input_shape, 16, 4, dropout_rate=dropout_rate,
                       sync_batchnorm=sync_batchnorm, name="wrn16_4")


def wrn16_2(input_shape: Sequence[int | None], *, dropout_rate: float = 0.0,
            sync_batchnorm: bool = False) -> keras.Model:
    """WRN-16-2: the smallest WRN of the registry, a residual network sized for CPU runs.

    128 features, as small_cnn and WRN-40-2. Trainable parameters: 691,674 with a
    10-class linear head on 32x32x3 inputs (33 times small_cnn's); a training step
    on 128 + 256 images of 28x28x1 takes about 2.5 s on 2 CPU cores, against 7.8 s
    for WRN-16-4.

    Example: ``features = wrn16_2((28, 28, 1))(images)  # (batch, 128)``
    """
    return wide_resnet(input_shape, 16, 2, dropout_rate=dropout_rate,
                       sync_batchnorm=sync_batchnorm, name="wrn16_2")


def wrn34_10(input_shape: Sequence[int | None], *, dropout_rate: float = 0.0,
             sync_batchnorm: bool = False) -> keras.Model:
    """WRN-34-10, no dropout by default (the usual setting for this width).

    640 features. Trainable parameters: 46,160,474 with a 10-class linear head
    (46,154,064 for the backbone alone).

    Reference: Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.

    Example: ``features = wrn34_10((32, 32, 3))(images)  # (batch, 640)``
    """
    return wide_resnet(input_shape, 34, 10, dropout_rate=dropout_rate,
                       sync_batchnorm=sync_batchnorm, name="wrn34_10")
