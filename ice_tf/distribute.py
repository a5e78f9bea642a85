"""Distribution strategy selection and the one place where losses meet replicas.

Keras sums gradients over replicas, so a loss that is already a mean over the
per-replica batch must be divided by the number of replicas before its gradient
is taken (`scale_for_replicas`); the logged value stays unscaled.
"""

from __future__ import annotations

import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored")


def get_strategy(name="auto"):
    """Returns a `tf.distribute.Strategy`.

    Args:
      name: "mirrored" (`MirroredStrategy` over all visible GPUs, or over the
        logical CPUs when there is no GPU), "default" (one device) or "auto"
        (mirrored when several GPUs are visible, else default).

    Example:
      strategy = get_strategy("auto")  # MirroredStrategy on several GPUs
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; valid strategies: {', '.join(STRATEGIES)}.")
    if name == "auto":
        name = "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "default"
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def num_replicas():
    """Replicas of the strategy in the current context (1 outside any strategy).

    Example:
      num_replicas()  # 1 outside a MirroredStrategy scope
    """
    return tf.distribute.get_strategy().num_replicas_in_sync


def scale_for_replicas(loss):
    """Divides a per-replica mean loss so that the summed gradients equal the global mean's.

    Example:
      loss = scale_for_replicas(per_replica_mean_loss)
    """
    replicas = num_replicas()
    return loss if replicas == 1 else loss / tf.cast(replicas, loss.dtype)


__all__ = ["STRATEGIES", "get_strategy", "num_replicas", "scale_for_replicas"]
