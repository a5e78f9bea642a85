"""Resume and the metrics log: the training state saved after every epoch (and every N
steps), the fallback to the previous state when the newest is damaged, and the
JSON-lines log of each epoch's metrics (`metrics.jsonl`).

`ice_tf.analysis.probes` re-exports every name here.

Example:
  model.fit(ds, epochs=10, callbacks=[JsonLinesLogger("runs/a/metrics.jsonl"),
                                      TrainingCheckpoint("runs/a")])
  epoch, step = restore_training_state(model, "runs/a")  # after a kill
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import os
import time
import warnings

import keras
import numpy as np

from ice_tf import atomic_io
from ice_tf.json_lines import keep_records, strict_json
from ice_tf.experiment import run_folder as folder_lib


class JsonLinesLogger(keras.callbacks.Callback):
    """Appends each epoch's logs (and the learning rate) as one JSON line, flushed at once.

    Non-finite values are written as null, so that every line is strict JSON. With
    `start_epoch` (a resumed run), the lines of later epochs, written before the run
    stopped, are dropped first and the clock continues from the last kept line.

    Example:
      model.fit(train_ds, epochs=3, callbacks=[JsonLinesLogger("run/metrics.jsonl")])
    """

    def __init__(self, path, start_epoch=0, recovered=None):
        super().__init__()
        self.path = path
        self.start_epoch = int(start_epoch)
        self.recovered = recovered
        self.resumed_at_step = 0  # set for an epoch resumed part-way (its line says so)
        self.last_record = None
        self._start = None

    def on_train_begin(self, logs=None):
        kept = keep_records(self.path, self.start_epoch, self.recovered)
        missing = sorted(set(range(1, self.start_epoch + 1)) - {r.get("epoch") for r in kept})
        if missing:
            warnings.warn(f"{self.path} lacks the lines of epochs {missing} (cut by an "
                          f"interrupted write); training resumes after epoch {self.start_epoch}.",
                          stacklevel=2)
        elapsed = (kept[-1].get("seconds") or 0) if kept else 0
        self._start = time.time() - elapsed

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1, "seconds": round(time.time() - self._start, 2)}
        record.update({key: float(value) for key, value in (logs or {}).items()})
        if self.resumed_at_step:
            # The means cover the steps after the resume only.
            record["resumed_at_step"] = self.resumed_at_step
            self.resumed_at_step = 0
        optimizer = self.model.optimizer
        record["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        record = strict_json(record)
        with open(self.path, "a") as stream:
            stream.write(json.dumps(record, allow_nan=False) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        self.last_record = record


def _random_state_variables(model):
    """The random generators' states (dropout masks): not in `save_weights`, yet part of
    what an uninterrupted run would continue with."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def _method_state_variables(model):
    """The training method's running state (DAL's γ): `OODLoss.state_variables`."""
    loss = getattr(model, "ood_loss", None)
    return loss.state_variables() if loss is not None else []


def _method_state_file(weights_name):
    """epoch-0003.weights.h5 -> epoch-0003.state.npz: the method's state of that checkpoint."""
    return weights_name[: -len(".weights.h5")] + ".state.npz"


def _all_finite(model):
    return all(np.all(np.isfinite(keras.ops.convert_to_numpy(v))) for v in model.weights
               if "float" in str(v.dtype))


class TrainingCheckpoint(keras.callbacks.Callback):
    """Saves the training state after every epoch (and, with `every_steps`, every that
    many steps within one) so that a stopped run resumes.

    Writes checkpoints/epoch-NNNN[-step-NNNNNN].weights.h5 (weights and optimizer state,
    whose iteration count places the learning-rate schedule), then moves last.json to
    previous.json and writes a new last.json naming the new file (finished epochs,
    steps into the next, the random generators' states, the epoch's metrics line),
    each atomically; only then is the weights file before the previous one removed.
    So at every instant last.json or previous.json names a complete state, and a
    damaged newest one falls back to the previous (`usable_state`). Weights that are
    not finite are never saved; a disk without room for the file is refused before
    the write starts. `restore_training_state` loads the state.

    Args:
      folder: the run folder.
      every_steps: also save every this many steps of an epoch (long epochs).
      step_offset: steps of the current epoch done before this `fit` (a resumed epoch).
      metrics_logger: the run's `JsonLinesLogger`; its last line is kept in the state,
        so that a metrics line cut by a power loss is restored on resume.

    Example:
      model.fit(ds, epochs=10, steps_per_epoch=50, callbacks=[TrainingCheckpoint("runs/a")])
      # killed? then, on a freshly built and compiled model:
      epoch, step = restore_training_state(model, "runs/a")  # where to continue
    """

    def __init__(self, folder, every_steps=None, step_offset=0, metrics_logger=None):
        super().__init__()
        self.folder = folder
        self.every_steps = int(every_steps) if every_steps else None
        self.step_offset = int(step_offset)
        self.metrics_logger = metrics_logger
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        step = self.step_offset + batch + 1
        if self.every_steps and step % self.every_steps == 0 and step < self._steps_per_epoch():
            self._save(self._epoch, step)

    def on_epoch_end(self, epoch, logs=None):
        self.step_offset = 0
        self._save(epoch + 1, 0)

    def _steps_per_epoch(self):
        return self.step_offset + (self.params.get("steps") or 0)

    def _save(self, epoch, step):
        if not _all_finite(self.model):
            return
        directory = folder_lib.path(self.folder, folder_lib.CHECKPOINTS_DIR)
        weights_name = f"epoch-{epoch:04d}{f'-step-{step:06d}' if step else ''}.weights.h5"
        atomic_io.save_weights(self.model, os.path.join(directory, weights_name))
        state = {
            "epoch": epoch,
            "step": step,
            "weights": weights_name,
            "iterations": int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)),
            "random_state": [keras.ops.convert_to_numpy(v).tolist()
                             for v in _random_state_variables(self.model)],
        }
        method_state = _method_state_variables(self.model)
        if method_state:  # beside the weights: VOS's queues are too large for the JSON
            state["method_state"] = _method_state_file(weights_name)
            with atomic_io.atomic_path(os.path.join(directory, state["method_state"]),
                                       suffix=".npz") as temporary:
                np.savez(temporary, *[keras.ops.convert_to_numpy(v) for v in method_state])
        record = getattr(self.metrics_logger, "last_record", None)
        if record and record.get("epoch") == epoch:
            state["metrics"] = record
        last = folder_lib.path(self.folder, folder_lib.LAST_STATE)
        previous = folder_lib.path(self.folder, folder_lib.PREVIOUS_STATE)
        if folder_lib.read_checkpoint_state(self.folder, folder_lib.LAST_STATE):
            os.replace(last, previous)
        atomic_io.write_atomic(last, json.dumps(state) + "\n")
        keep = {weights_name, (folder_lib.read_checkpoint_state(
            self.folder, folder_lib.PREVIOUS_STATE) or {}).get("weights")}
        keep |= {_method_state_file(name) for name in keep if name}
        for name in os.listdir(directory):
            if (name.startswith("epoch-") and name not in keep
                    and (name.endswith(".weights.h5") or name.endswith(".state.npz"))):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(directory, name))


class InterruptGuard(keras.callbacks.Callback):
    """Makes Ctrl-C stop training for certain. A KeyboardInterrupt raised while the input
    pipeline runs Python code can be taken by tf.data for the end of the data, and fit would
    then return as if the epochs were done. The guard records the signal, raises at the next
    batch or epoch end (before the checkpoint's `on_epoch_end`: place it first), and
    `check()` raises after fit, so an interrupted run never goes on to look finished.

    Example:
      with InterruptGuard() as guard:
          model.fit(data, epochs=6, callbacks=[guard, TrainingCheckpoint("runs/a")])
          guard.check()
    """

    def __init__(self):
        super().__init__()
        self.interrupted = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        return False

    def _handle(self, signum, frame):
        self.interrupted = True
        raise KeyboardInterrupt

    def check(self):
        """Raises KeyboardInterrupt when Ctrl-C came during training."""
        if self.interrupted:
            raise KeyboardInterrupt

    def on_train_batch_end(self, batch, logs=None):
        """Stops at the batch after the signal."""
        self.check()

    def on_epoch_end(self, epoch, logs=None):
        """Stops before an interrupted epoch is checkpointed as done."""
        self.check()


def _weights_damage(weights_path):
    """Why a weights file cannot be read back (missing, truncated, unreadable), or None."""
    import h5py

    try:
        with h5py.File(weights_path, "r") as archive:
            archive.visititems(lambda name, item: item[()] if isinstance(item, h5py.Dataset) else None)
    except FileNotFoundError:
        return "its weights file is missing"
    except Exception as error:  # noqa: BLE001  (h5py raises OSError, KeyError, RuntimeError)
        return f"its weights file is unreadable ({str(error).splitlines()[0][:80]})"
    return None


def usable_state(folder, warn=True):
    """The newest training state in `folder`'s checkpoints/ that can be read back whole:
    last.json, else previous.json (a damaged newest one falls back, with a warning);
    None when there is no state at all.

    Raises ValueError, naming the damage and `--overwrite`, when states exist but none
    can be read.

    Example:
      usable_state("runs/a")["epoch"]  # 3
    """
    problems = []
    for name in (folder_lib.LAST_STATE, folder_lib.PREVIOUS_STATE):
        state_path = folder_lib.path(folder, name)
        if not os.path.exists(state_path):
            continue
        state = folder_lib.read_checkpoint_state(folder, name)
        damage = "it is not a readable state" if state is None else _weights_damage(
            folder_lib.path(folder, os.path.join(folder_lib.CHECKPOINTS_DIR, state["weights"])))
        if damage is None:
            if problems and warn:
                warnings.warn(f"{'; '.join(problems)}: resuming from {state_path} "
                              f"(epoch {state['epoch']}) instead.", stacklevel=2)
            return state
        problems.append(f"{state_path} is damaged ({damage})")
    directory = folder_lib.path(folder, folder_lib.CHECKPOINTS_DIR)
    leftovers = os.path.isdir(directory) and any(
        name.endswith(".weights.h5") for name in os.listdir(directory))
    if problems or leftovers:
        raise ValueError(
            f"no usable checkpoint in {directory} ({'; '.join(problems) or 'no state file names its weights'}); "
            "pass --overwrite (overwrite=True) to start the run over.")
    return None


def training_position(folder, state=None):
    """(finished epochs, steps into the next epoch, steps in all) of the state
    `TrainingCheckpoint` saved in `folder` (`usable_state`, or `state` when the caller
    read it already); (0, 0, 0) when there is none.

    Example:
      training_position("runs/a")  # (1, 0, 50): after epoch 1 of 50 steps
    """
    state = usable_state(folder) if state is None else state
    if not state:
        return 0, 0, 0
    return int(state["epoch"]), int(state.get("step", 0)), int(state["iterations"])


def restore_training_state(model, folder, state=None):
    """Loads the state `TrainingCheckpoint` saved in `folder` (`usable_state`, or `state`
    when the caller read it already: checking it reads the whole weights file) into a
    built, compiled model; returns (finished epochs, steps into the next epoch), (0, 0)
    when there is none.

    Raises ValueError when the state does not fit the model (another architecture).

    Example:
      model.compile(optimizer, loss="ice")
      epoch, step = restore_training_state(model, "runs/ice")  # (2, 0): after epoch 2
    """
    state = usable_state(folder, warn=False) if state is None else state
    if not state:
        return 0, 0
    weights_path = folder_lib.path(folder, os.path.join(folder_lib.CHECKPOINTS_DIR, state["weights"]))
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    try:
        model.load_weights(weights_path)
    except (ValueError, OSError) as error:
        raise ValueError(
            f"{weights_path} does not fit this model ({str(error).splitlines()[0]}); "
            "train into another output_dir, or pass --overwrite to start over."
        ) from None
    generators = _random_state_variables(model)
    if len(generators) == len(state.get("random_state", [])):
        for variable, value in zip(generators, state["random_state"]):
            variable.assign(np.asarray(value, dtype=variable.dtype))
    method_state = _method_state_variables(model)
    if method_state and state.get("method_state"):
        path = folder_lib.path(folder, os.path.join(folder_lib.CHECKPOINTS_DIR, state["method_state"]))
        with np.load(path) as arrays:
            values = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
        if [v.shape for v in values] != [tuple(v.shape) for v in method_state]:
            raise ValueError(f"{path} does not fit this run's method; train into another "
                             "output_dir, or pass --overwrite to start over.")
        for variable, value in zip(method_state, values):
            variable.assign(value)
    return int(state["epoch"]), int(state.get("step", 0))


__all__ = ["JsonLinesLogger", "TrainingCheckpoint", "InterruptGuard",
           "usable_state", "training_position", "restore_training_state"]
