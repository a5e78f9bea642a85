"""Numeric precision of training: the Keras dtype policy, chosen once per run.

`--precision` takes one of `PRECISIONS`:
- `float32`: everything in float32.
- `mixed_bfloat16`: layers compute in bfloat16, variables stay float32. CPUs with
  bfloat16 instructions (AVX512_BF16 or AMX on x86-64, BF16 on Arm) run the
  convolutions faster; bfloat16 has float32's range, so no loss scaling is needed.
- `mixed_float16`: layers compute in float16 (GPUs with tensor cores); Keras scales
  the loss (`OODModel.train_step` calls `optimizer.scale_loss`).
- `auto`: `mixed_float16` on a GPU of compute capability 7.0 or more,
  `mixed_bfloat16` on a CPU with bfloat16 instructions, else `float32`.

Under every policy the heads (Eqs. 0.1, 0.11) and the losses compute in float32:
the layers are built with dtype float32 and cast their input.

Example:
  with precision.policy("auto") as name:   # e.g. "mixed_bfloat16" on a bf16 CPU
      model = build_model(...)
"""

from __future__ import annotations

import contextlib
import platform

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")

# /proc/cpuinfo flags that mean the CPU computes bfloat16 dot products natively.
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_flags(cpuinfo_path="/proc/cpuinfo"):
    """The CPU's feature flags as a set (empty where /proc/cpuinfo is not readable).

    Example:
      "avx512f" in cpu_flags()
    """
    try:
        with open(cpuinfo_path) as stream:
            for line in stream:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features"):  # x86-64, Arm
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_supports_bfloat16(flags=None):
    """Whether the CPU has bfloat16 instructions (so `mixed_bfloat16` is faster there).

    Example:
      cpu_supports_bfloat16({"avx512f", "avx512_bf16"})  # True
    """
    flags = cpu_flags() if flags is None else set(flags)
    return platform.machine().lower() in ("x86_64", "amd64", "aarch64", "arm64") and bool(
        flags & set(BFLOAT16_CPU_FLAGS))


def _gpu_supports_float16():
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability and tuple(capability) >= (7, 0):
            return True
    return False


def resolve(name="auto", gpu_float16=None, cpu_bfloat16=None):
    """The Keras policy name for a `--precision` value; `auto` looks at the machine.

    Args:
      name: one of `PRECISIONS`.
      gpu_float16, cpu_bfloat16: what the machine supports; None = detect.

    Example:
      resolve("auto")          # "mixed_bfloat16" on a CPU with AVX512_BF16
      resolve("float32")       # "float32"
    """
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {name!r}.")
    if name != "auto":
        return name
    if gpu_float16 if gpu_float16 is not None else _gpu_supports_float16():
        return "mixed_float16"
    if cpu_bfloat16 if cpu_bfloat16 is not None else cpu_supports_bfloat16():
        return "mixed_bfloat16"
    return "float32"


@contextlib.contextmanager
def policy(name="auto"):
    """Sets Keras' global dtype policy for the block, then puts the earlier one back;
    yields the resolved policy name.

    Example:
      with policy("mixed_bfloat16"):
          model.fit(...)
    """
    import keras

    resolved = resolve(name)
    earlier = keras.config.dtype_policy()
    keras.config.set_dtype_policy(resolved)
    try:
        yield resolved
    finally:
        keras.config.set_dtype_policy(earlier)


__all__ = ["PRECISIONS", "BFLOAT16_CPU_FLAGS", "cpu_flags", "cpu_supports_bfloat16", "resolve",
           "policy"]
