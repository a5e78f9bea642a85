"""Atomic file writes: a reader, or a later run, never sees half a file.

Everything a run or a script writes goes through a temporary file in the target's
folder that replaces the target only once complete, so an interrupted run leaves
either the old file or none, never a truncated one that looks finished.
"""

from __future__ import annotations

import contextlib
import os
import tempfile


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
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


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
    with atomic_path(path, suffix=".keras") as temporary:
        model.save(temporary)


def save_weights(model, path):
    """`model.save_weights(path)` (a .weights.h5 file: weights and optimizer state),
    atomically.

    Example:
      save_weights(model, "runs/ice/checkpoints/epoch-0003.weights.h5")
    """
    with atomic_path(path, suffix=".weights.h5") as temporary:
        model.save_weights(temporary)


__all__ = ["atomic_stream", "atomic_path", "write_atomic", "save_model", "save_weights"]
