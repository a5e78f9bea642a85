"""Atomic file writes: a reader, or a later run, never sees half a file.

Everything a run or a script writes goes through a temporary file in the target's
folder that replaces the target only once complete and synced to disk, so an
interrupted run (or a power loss) leaves either the old file or the new one, never a
truncated one that looks finished. Model and weight files are refused before they
start when the disk lacks room for them (`check_free_space`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile

import numpy as np

# Room kept free beyond a write's own size (file-system metadata, the file beside it).
FREE_SPACE_MARGIN = 1 << 20


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """Yields a temporary path beside `path` for a writer that takes a file name (Keras
    saving); it replaces `path` on success. Folders are created. On an exception the
    temporary file is removed and `path` is left as it was.

    Args:
      path: the file to write.
      suffix: of the temporary name (some writers look at the extension).

    Example:
      with atomic_path("runs/ice/plot.png", suffix=".png") as temporary:
          figure.savefig(temporary)
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(handle)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes files private (0600)
        _sync(temporary)  # on disk before it replaces the old file: a power loss keeps one of them
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def _sync(path):
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def variables_bytes(variables):
    """The bytes that `variables` take when saved (their values, without file overhead).

    Example:
      variables_bytes(model.weights + model.optimizer.variables)  # e.g. 17_950_000
    """
    return int(sum(np.prod(v.shape, dtype=np.int64) * np.dtype(_numpy_dtype(v)).itemsize
                   for v in variables))


def _numpy_dtype(variable):
    name = str(getattr(variable.dtype, "name", variable.dtype))
    return np.float32 if "bfloat16" in name else name


def check_free_space(path, needed_bytes):
    """Raises OSError(ENOSPC) naming `path` when its file system has less than
    `needed_bytes` (plus `FREE_SPACE_MARGIN`) free: a write that would fail part-way
    (h5py aborts the process on a full disk) is refused before it starts.

    Example:
      check_free_space("runs/ice/model.keras", variables_bytes(model.weights))
    """
    directory = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(directory):
        directory = os.path.dirname(directory)
    free = shutil.disk_usage(directory).free
    if free < needed_bytes + FREE_SPACE_MARGIN:
        raise OSError(errno.ENOSPC, f"No space left on device ({free / 2**20:.1f} MiB free, "
                      f"{(needed_bytes + FREE_SPACE_MARGIN) / 2**20:.1f} MiB needed)", path)


@contextlib.contextmanager
def atomic_stream(path, mode="w", suffix=""):
    """Yields a stream on a temporary file beside `path` that replaces `path` on success
    (see `atomic_path`); `mode` is "w" (text) or "wb" (bytes: PNG, .npz).

    Example:
      with atomic_stream("runs/ice/scores.npz", "wb", suffix=".npz") as stream:
          np.savez(stream, scores=scores)
    """
    with atomic_path(path, suffix) as temporary, open(temporary, mode) as stream:
        yield stream


def write_atomic(path, data):
    """Writes text (str) or bytes to `path` atomically.

    Example:
      write_atomic("runs/ice/results.json", json.dumps(results))
    """
    with atomic_stream(path, "wb" if isinstance(data, (bytes, bytearray)) else "w") as stream:
        stream.write(data)


def save_model(model, path):
    """`model.save(path)` (a .keras file), atomically: a killed save leaves the old file
    or none, never a truncated one.

    Example:
      save_model(model, "runs/ice/model.keras")
    """
    check_free_space(path, variables_bytes(model.weights))
    with atomic_path(path, suffix=".keras") as temporary:
        model.save(temporary)


def save_weights(model, path):
    """`model.save_weights(path)` (a .weights.h5 file: weights and optimizer state),
    atomically.

    Example:
      save_weights(model, "runs/ice/checkpoints/epoch-0003.weights.h5")
    """
    optimizer = getattr(model, "optimizer", None)
    check_free_space(path, variables_bytes(
        list(model.weights) + list(getattr(optimizer, "variables", []) or [])))
    with atomic_path(path, suffix=".weights.h5") as temporary:
        model.save_weights(temporary)


__all__ = ["atomic_stream", "atomic_path", "write_atomic", "save_model", "save_weights",
           "check_free_space", "variables_bytes", "FREE_SPACE_MARGIN"]
