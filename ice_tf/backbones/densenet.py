"""DenseNet for 32x32-scale images (Huang et al., 2017), non-bottleneck variant."""

from __future__ import annotations

from typing import Sequence

import keras

from ice_tf import layers
from ice_tf.backbones._common import bn_relu, check_input_shape, conv2d


def _maybe_dropout(x, dropout_rate: float, name: str):
    if dropout_rate > 0:
        return layers.Dropout(dropout_rate, name=name)(x)
    return x


def densenet(input_shape: Sequence[int | None], depth: int = 40, growth_rate: int = 12, *,
             dropout_rate: float = 0.0, sync_batchnorm: bool = False,
             name: str | None = None) -> keras.Model:
    """Builds a DenseNet (no bottleneck, no compression) as a feature extractor.

    A 3x3 convolution with 16 channels, three dense blocks of ``(depth - 4) / 3``
    BN-ReLU-Conv3x3(``growth_rate``) layers whose outputs are concatenated to
    their inputs, transitions BN-ReLU-Conv1x1(same channels)-AvgPool2 between
    blocks, a final BN-ReLU and global average pooling. The output has
    ``16 + 3 * layers_per_block * growth_rate`` features.

    Args:
      input_shape: ``(height, width, channels)`` of the float32 images.
      depth: total depth; ``depth - 4`` must be divisible by 3.
      growth_rate: channels added by every dense layer.
      dropout_rate: dropout after every convolution inside the blocks and
        transitions, as in the reference (0 disables it).
      sync_batchnorm: use synchronized BatchNormalization (several replicas).
      name: model name; defaults to ``densenet{depth}_{growth_rate}``.

    Example:
      ``model = densenet((32, 32, 3), depth=40, growth_rate=12)``
    """
    if depth < 7 or (depth - 4) % 3 != 0:
        raise ValueError(f"DenseNet depth must be 3n + 4 with n >= 1; got {depth}")
    if growth_rate < 1:
        raise ValueError(f"growth_rate must be >= 1; got {growth_rate}")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1); got {dropout_rate}")
    layers_per_block = (depth - 4) // 3
    num_blocks = 3

    inputs = keras.Input(shape=check_input_shape(input_shape), dtype="float32", name="images")
    x = conv2d(inputs, 16, 3, 1, name="stem_conv")
    channels = 16
    for block in range(1, num_blocks + 1):
        for layer in range(1, layers_per_block + 1):
            prefix = f"block{block}_layer{layer}"
            new_features = bn_relu(x, prefix, sync_batchnorm)
            new_features = conv2d(new_features, growth_rate, 3, 1, name=f"{prefix}_conv")
            new_features = _maybe_dropout(new_features, dropout_rate, f"{prefix}_dropout")
            x = keras.layers.Concatenate(name=f"{prefix}_concat")([x, new_features])
            channels += growth_rate
        if block < num_blocks:
            prefix = f"transition{block}"
            x = bn_relu(x, prefix, sync_batchnorm)
            x = conv2d(x, channels, 1, 1, name=f"{prefix}_conv")
            x = _maybe_dropout(x, dropout_rate, f"{prefix}_dropout")
            x = keras.layers.AveragePooling2D(pool_size=2, name=f"{prefix}_pool")(x)
    x = bn_relu(x, "final", sync_batchnorm)
    features = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    return keras.Model(inputs, features, name=name or f"densenet{depth}_{growth_rate}")


def densenet40_12(input_shape: Sequence[int | None], *, dropout_rate: float = 0.0,
                  sync_batchnorm: bool = False) -> keras.Model:
    """DenseNet-40 with growth rate 12 (Huang et al.'s CIFAR model, 1.0M parameters).

    448 features. Trainable parameters: 1,019,722 with a 10-class linear head
    (1,015,232 for the backbone alone).

    Reference: Huang, Liu, van der Maaten & Weinberger, "Densely Connected
    Convolutional Networks", CVPR 2017.

    Example: ``features = densenet40_12((32, 32, 3))(images)  # (batch, 448)``
    """
    return densenet(input_shape, 40, 12, dropout_rate=dropout_rate,
                    sync_batchnorm=sync_batchnorm, name="densenet40_12")
