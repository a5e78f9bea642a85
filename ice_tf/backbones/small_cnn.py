"""A small convolutional network for tests and demos."""

from __future__ import annotations

from typing import Sequence

import keras

from ice_tf.backbones._common import bn_relu, check_input_shape, conv2d


def small_cnn(input_shape: Sequence[int | None], *, feature_dim: int = 128, width: int = 16,
              sync_batchnorm: bool = False) -> keras.Model:
    """Four Conv3x3-BN-ReLU layers with two max-pools, then GAP and Dense-ReLU.

    Channels are ``width, width, 2 * width, 2 * width`` with a 2x2 max-pool
    after the second and the fourth convolution, so any input of at least 4x4
    works (e.g. 28x28x1 MNIST-like or 32x32x3 CIFAR-like images). The output
    has ``feature_dim`` non-negative features. With the defaults there are
    21,168 trainable parameters on 32x32x3 inputs (22,458 with a 10-class
    linear head); a training step on 128 + 256 images of 28x28x1 takes about
    0.3 s on 2 CPU cores. Not a reference architecture: it only needs to be fast
    on CPU.

    Args:
      input_shape: ``(height, width, channels)`` of the float32 images.
      feature_dim: size of the final Dense-ReLU feature layer.
      width: channels of the first two convolutions.
      sync_batchnorm: use synchronized BatchNormalization (several replicas).

    Example: ``features = small_cnn((28, 28, 1), feature_dim=64)(images)  # (batch, 64)``
    """
    if feature_dim < 1 or width < 1:
        raise ValueError(f"feature_dim and width must be >= 1; got {feature_dim}, {width}")
    inputs = keras.Input(shape=check_input_shape(input_shape), dtype="float32", name="images")
    x = inputs
    for stage, channels in enumerate((width, 2 * width), start=1):
        for layer in (1, 2):
            prefix = f"stage{stage}_conv{layer}"
            x = conv2d(x, channels, 3, 1, name=prefix)
            x = bn_relu(x, prefix, sync_batchnorm)
        x = keras.layers.MaxPooling2D(pool_size=2, name=f"stage{stage}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    features = keras.layers.Dense(
        feature_dim, activation="relu", kernel_initializer="he_normal", name="features"
    )(x)
    return keras.Model(inputs, features, name="small_cnn")
