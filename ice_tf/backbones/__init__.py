"""Image backbones: functional Keras models from images to penultimate features.

Every backbone maps float32 images ``(batch, height, width, channels)`` to
features ``(batch, d)`` (after the final activation and global average
pooling; no classifier), is named after its registry name, and exposes ``d``
as ``model.output_shape[-1]``.

Built-in names: ``densenet40_12``, ``small_cnn``, ``wrn16_2``, ``wrn16_4``, ``wrn34_10``,
``wrn40_2``.

Example::

    from ice_tf import backbones
    model = backbones.get("wrn40_2", (32, 32, 3))
    logits = keras.layers.Dense(10)(model.output)

Custom backbones are added with :func:`register`; a builder takes
``input_shape`` and the keyword ``sync_batchnorm`` plus its own options::

    @backbones.register("my_net")
    def my_net(input_shape, *, sync_batchnorm=False, width=8):
        ...
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras

from ice_tf.backbones.densenet import densenet, densenet40_12
from ice_tf.backbones.small_cnn import small_cnn
from ice_tf.backbones.wrn import wide_resnet, wrn16_2, wrn16_4, wrn34_10, wrn40_2

__all__ = [
    "densenet",
    "densenet40_12",
    "get",
    "names",
    "register",
    "small_cnn",
    "wide_resnet",
    "wrn16_2",
    "wrn16_4",
    "wrn34_10",
    "wrn40_2",
]

BackboneBuilder = Callable[..., keras.Model]

_BUILDERS: dict[str, BackboneBuilder] = {}


def register(name: str, *, overwrite: bool = False) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Decorator adding a backbone builder to the registry under ``name``.

    The builder is called as ``builder(input_shape, sync_batchnorm=..., **kwargs)``
    and must return a Keras model from images to features. Registering an
    existing name raises ``ValueError`` unless ``overwrite=True``.

    Example: ``@register("my_net")`` above ``def my_net(input_shape, *, sync_batchnorm=False): ...``
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"backbone name must be a non-empty string; got {name!r}")

    def decorator(builder: BackboneBuilder) -> BackboneBuilder:
        if not callable(builder):
            raise TypeError(f"backbone builder for {name!r} must be callable; got {builder!r}")
        if name in _BUILDERS and not overwrite:
            raise ValueError(f"backbone {name!r} is already registered; pass overwrite=True to replace it")
        _BUILDERS[name] = builder
        return builder

    return decorator


def names() -> list[str]:
    """Sorted names of all registered backbones.

    Example:
      names()  # ['densenet40_12', 'small_cnn', 'wrn16_2', 'wrn16_4', 'wrn34_10', 'wrn40_2']
    """
    return sorted(_BUILDERS)


def get(name: str, input_shape: Sequence[int | None], *, sync_batchnorm: bool = False,
        **kwargs) -> keras.Model:
    """Builds the backbone registered as ``name``.

    Args:
      name: a registered name (see :func:`names`).
      input_shape: ``(height, width, channels)`` of the images.
      sync_batchnorm: use ``BatchNormalization(synchronized=True)``, needed for
        correct batch statistics under a multi-replica ``MirroredStrategy``.
      **kwargs: architecture options of the builder, e.g. ``dropout_rate`` for
        the WRNs or ``feature_dim`` for ``small_cnn``.

    Raises:
      ValueError: ``name`` is not registered; the message lists valid names.

    Example: ``model = get("small_cnn", (28, 28, 1), feature_dim=64)``
    """
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(names())}")
    return builder(input_shape, sync_batchnorm=sync_batchnorm, **kwargs)


register("wrn40_2")(wrn40_2)
register("wrn16_2")(wrn16_2)
register("wrn16_4")(wrn16_4)
register("wrn34_10")(wrn34_10)
register("densenet40_12")(densenet40_12)
register("small_cnn")(small_cnn)
