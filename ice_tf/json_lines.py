"""JSON lines, the format of a run's per-epoch logs (metrics.jsonl, analysis/*.jsonl):
one kill-tolerant reader, strict JSON on write, and the truncation a resumed run needs.

Free of TensorFlow; `ice_tf.experiment.run_folder` reads a run folder's files with it.

Example:
    records = read_jsonl("runs/ice/metrics.jsonl")
    keep_records("runs/ice/metrics.jsonl", last_epoch=2)
"""

from __future__ import annotations

import json
import math
import os

from ice_tf import atomic_io


def read_jsonl(json_lines_path, missing_ok=True, strict=False):
    """The records of a JSON-lines file (metrics.jsonl, the analyses), blank lines
    skipped, up to a line cut by a kill (the records before it; a cut line can only be
    the last one written). A missing file gives [] (FileNotFoundError unless `missing_ok`);
    with `strict` a line that is not JSON is a ValueError (checks that want every line whole).

    Example:
      [record["epoch"] for record in read_jsonl("runs/ice/metrics.jsonl")]  # [1, 2, 3]
    """
    if not os.path.exists(json_lines_path) and missing_ok:
        return []
    records = []
    with open(json_lines_path) as stream:
        for line in stream:
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                if strict:
                    raise ValueError(f"{json_lines_path}: a line is not JSON: {line[:80]!r}") from None
                break  # a line cut by a kill, and nothing valid after it
    return records


def strict_json(value):
    """`value` with every non-finite float (at any depth) replaced by None, so that
    `json.dumps(..., allow_nan=False)` writes strict JSON.

    Example:
      strict_json({"loss": float("nan"), "auroc": [0.9, float("inf")]})  # {"loss": None, ...}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value



def keep_records(path, last_epoch, recovered=None):
    """Rewrites a .jsonl of per-epoch records (an "epoch" key each) to those of epochs up
    to `last_epoch`, atomically, and returns them: a resumed run continues the file
    with exactly one line per epoch. `recovered`, a record the file lost (its line cut by
    a power loss; the checkpoint kept it), is appended when it follows the kept ones. A
    missing file gives [] (or the recovered record alone).

    Example:
      keep_records("runs/ice/metrics.jsonl", last_epoch=2)  # the lines of epochs 1 and 2
    """
    records = [record for record in read_jsonl(path) if record.get("epoch", 0) <= last_epoch]
    last_kept = records[-1].get("epoch", 0) if records else 0
    if recovered and last_kept < recovered.get("epoch", 0) <= last_epoch:
        records.append(recovered)
    if records or os.path.exists(path):
        atomic_io.write_atomic(path, "".join(json.dumps(record) + "\n" for record in records))
    return records


__all__ = ["read_jsonl", "strict_json", "keep_records"]
