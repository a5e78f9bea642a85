"""Keras callbacks that record the analyses of `ice_tf.analysis` during training.

Each callback measures fixed probe images (outputs with `training=False`) before training
(epoch 0) and after every epoch, appends one JSON line per epoch to its file, keeps the
records in `callback.history`, and adds its scalars to the epoch's Keras logs, so that
they reach `metrics.jsonl`, TensorBoard and `History` (place it before those callbacks).

| callback                     | file (in <run>/analysis/) | logs                                 |
|------------------------------|---------------------------|--------------------------------------|
| `ContradictoryGradientMeter` | gradient_meter.jsonl      | contradictory_{in,out,all}           |
| `DistributionShiftTracker`   | shift.jsonl               | shift_{in_to_centre,out_to_centre,   |
|                              |                           | ratio,overlap,centre_separation}     |
| `ConfidenceHistory` (Fig. 5) | confidence.jsonl          | confidence_{in_mean,ood_mean,auroc}  |

`analysis_callbacks(config, directory)` builds the probe sets a config's `analyses` need
and returns the callbacks; `ice_tf.experiment.run` uses it.

Example:
    meter = ContradictoryGradientMeter(x_probe, y_probe, outlier_probe, "run/gradient_meter.jsonl")
    model.fit(train_ds, epochs=10, callbacks=[meter])
    meter.history[-1]["contradictory_out"]
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings

import keras
import numpy as np

from ice_tf import analysis, atomic_io, metrics, run_data, scores
from ice_tf import run_folder as folder_lib

DEFAULT_PROBE_BATCH = 256
POOLED_OOD = "all"  # key of the pooled OOD sets in ConfidenceHistory records


def probe_outputs(model, images, batch_size=DEFAULT_PROBE_BATCH):
    """(features (N, d), head outputs (N, K)) float64 of `model` on `images`, in inference mode.

    Example:
      outputs = probe_outputs(model, x_probe, batch_size=256)  # numpy (n, K)
    """
    images = np.asarray(images)
    if images.shape[0] == 0:
        raise ValueError("a probe set needs at least one image.")
    features, outputs = [], []
    for start in range(0, images.shape[0], batch_size):
        batch_features = model.features(images[start:start + batch_size], training=False)
        features.append(keras.ops.convert_to_numpy(batch_features).astype(np.float64))
        outputs.append(keras.ops.convert_to_numpy(model.head(batch_features)).astype(np.float64))
    features, outputs = np.concatenate(features), np.concatenate(outputs)
    if not (np.all(np.isfinite(features)) and np.all(np.isfinite(outputs))):
        raise FloatingPointError("the model's features or outputs are not finite (training diverged).")
    return features, outputs


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


read_records = folder_lib.read_jsonl  # the one kill-tolerant JSON-lines reader


def keep_records(path, last_epoch):
    """Rewrites a .jsonl of per-epoch records (an "epoch" key each) to those of epochs up
    to `last_epoch`, atomically, and returns them: a resumed run continues the file
    with exactly one line per epoch. A missing file gives [].

    Example:
      keep_records("runs/ice/metrics.jsonl", last_epoch=2)  # the lines of epochs 1 and 2
    """
    if not os.path.exists(path):
        return []
    records = [record for record in read_records(path) if record.get("epoch", 0) <= last_epoch]
    atomic_io.write_atomic(path, "".join(json.dumps(record) + "\n" for record in records))
    return records


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
        kept = keep_records(self.path, self.start_epoch)
        last_kept = kept[-1].get("epoch", 0) if kept else 0
        if self.recovered and last_kept < self.recovered.get("epoch", 0) <= self.start_epoch:
            # The line of the checkpointed epoch was cut (a power loss): the state kept it.
            kept.append(self.recovered)
            atomic_io.write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
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
        for name in os.listdir(directory):
            if name.endswith(".weights.h5") and name.startswith("epoch-") and name not in keep:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(directory, name))


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


def training_position(folder):
    """(finished epochs, steps into the next epoch, steps in all) of the state
    `TrainingCheckpoint` saved in `folder` (`usable_state`); (0, 0, 0) when there is none.

    Example:
      training_position("runs/a")  # (1, 0, 50): after epoch 1 of 50 steps
    """
    state = usable_state(folder)
    if not state:
        return 0, 0, 0
    return int(state["epoch"]), int(state.get("step", 0)), int(state["iterations"])


def restore_training_state(model, folder):
    """Loads the state `TrainingCheckpoint` saved in `folder` (`usable_state`) into a
    built, compiled model; returns (finished epochs, steps into the next epoch), (0, 0)
    when there is none.

    Raises ValueError when the state does not fit the model (another architecture).

    Example:
      model.compile(optimizer, loss="ice")
      epoch, step = restore_training_state(model, "runs/ice")  # (2, 0): after epoch 2
    """
    state = usable_state(folder, warn=False)
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
    return int(state["epoch"]), int(state.get("step", 0))


def recovered_metrics(folder):
    """The metrics line kept in the usable training state (`TrainingCheckpoint`), or None.

    Example:
      recovered_metrics("runs/a")  # {"epoch": 2, "loss": 0.41, ...}
    """
    state = usable_state(folder, warn=False)
    return (state or {}).get("metrics")


class ProbeCallback(keras.callbacks.Callback):
    """Base class: one measurement of fixed probe images before training and per epoch.

    Subclasses implement `measure()`, returning (record, scalars): the JSON-serialisable
    record written to the file and the float scalars added to the Keras logs.

    Args:
      path: the .jsonl file the records are appended to (created, emptied on the first
        `fit`); None keeps them in `history` only.
      batch_size: probe images per forward pass.
      measure_before_training: also record epoch 0, before the first update.
      start_epoch: a resumed run's first epoch: the file keeps its records up to it (and
        `history` is read back from them); later ones, written before the stop, go.
      resumed: the run resumes (also within its first epoch, where start_epoch is 0).

    Example:
      class MyProbe(ProbeCallback):
          def measure(self):
              return {"mean_weight": float(np.mean(self.model.head.get_weights()[0]))}
    """

    def __init__(self, path=None, batch_size=DEFAULT_PROBE_BATCH, measure_before_training=True,
                 start_epoch=0, resumed=False):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.path = path
        self.batch_size = int(batch_size)
        self.measure_before_training = measure_before_training
        self.start_epoch = int(start_epoch)
        self.resumed = bool(resumed or start_epoch)
        self.history = []
        self._file_started = False

    def measure(self):
        """The record of one measurement (a dict of JSON values); subclasses define it."""
        raise NotImplementedError

    def on_train_begin(self, logs=None):
        if self.path and not self._file_started:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            # A new run's records never follow an old run's; a resumed run keeps its own.
            self.history = keep_records(self.path, self.start_epoch) if self.resumed else []
            if not self.resumed:
                open(self.path, "w").close()
            self._file_started = True
        if self.measure_before_training and not self.history and not self.resumed:
            self._record(0, None)

    def on_epoch_end(self, epoch, logs=None):
        self._record(epoch + 1, logs)

    def _record(self, epoch, logs):
        started = time.time()
        try:
            record, scalars = self.measure()
        except FloatingPointError as error:
            # A diverged model has nothing to measure; TerminateOnNaN and the run report it.
            record, scalars = {"skipped": str(error)}, {}
        line = {"epoch": epoch, **record, "seconds": round(time.time() - started, 3)}
        self.history.append(line)
        if self.path:
            with open(self.path, "a") as stream:
                stream.write(json.dumps(strict_json(line), allow_nan=False) + "\n")
                stream.flush()
        if logs is not None:
            logs.update({key: float(value) for key, value in scalars.items()})


def _check_probe(images, labels=None, what="probe"):
    images = np.asarray(images)
    if images.ndim < 2 or images.shape[0] == 0:
        raise ValueError(
            f"the {what} images must be a non-empty batch (N, ...); got {images.shape}."
        )
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"{images.shape[0]} {what} images but {labels.shape[0]} labels.")
    return images, labels


class ContradictoryGradientMeter(ProbeCallback):
    """Records `analysis.contradictory_fractions` (Eqs. 0.6-0.8) on a fixed probe batch.

    Args:
      probe_in, probe_labels: in-distribution images (N_in, ...) and labels (N_in,).
      probe_out: auxiliary outliers (N_out, ...).
      path: the .jsonl file (see `ProbeCallback`).
      loss: the loss whose auxiliary terms are measured; default: the model's compiled loss.
      tolerance: see `analysis.GRADIENT_TOLERANCE`.

    Example:
      meter = ContradictoryGradientMeter(x_in, y_in, x_out, path="runs/x/analysis/gradient_meter.jsonl")
      model.fit(train, epochs=10, callbacks=[meter])
    """

    def __init__(self, probe_in, probe_labels, probe_out, path=None, loss=None,
                 tolerance=analysis.GRADIENT_TOLERANCE, **kwargs):
        super().__init__(path, **kwargs)
        self.probe_in, self.probe_labels = _check_probe(probe_in, probe_labels, "in-distribution")
        self.probe_out, _ = _check_probe(probe_out, what="outlier")
        self.loss = loss
        self.tolerance = float(tolerance)

    def measure(self):
        """The fractions of contradictory gradient entries on the probe sets (Eqs. 0.6-0.7)."""
        loss = self.loss if self.loss is not None else self.model.ood_loss
        if loss is None:
            raise RuntimeError("compile the model with a loss, or pass loss=, before training.")
        _, outputs_in = probe_outputs(self.model, self.probe_in, self.batch_size)
        _, outputs_out = probe_outputs(self.model, self.probe_out, self.batch_size)
        fractions = analysis.contradictory_fractions(
            loss, self.probe_labels, outputs_in, outputs_out, self.tolerance
        )
        return fractions, fractions


class DistributionShiftTracker(ProbeCallback):
    """Records `analysis.distribution_shift` of the penultimate features (Fig. 3).

    Class centres are recomputed each epoch from the in-distribution probe's features.

    Args:
      probe_in, probe_labels: in-distribution images and labels.
      probe_out: outlier images.
      path: the .jsonl file (see `ProbeCallback`).
      quantile: the in-distribution distance quantile of the overlap statistic.

    Example:
      tracker = DistributionShiftTracker(x_in, y_in, x_out)
      model.fit(train, epochs=10, callbacks=[tracker])
    """

    def __init__(self, probe_in, probe_labels, probe_out, path=None,
                 quantile=analysis.OVERLAP_QUANTILE, **kwargs):
        super().__init__(path, **kwargs)
        self.probe_in, self.probe_labels = _check_probe(probe_in, probe_labels, "in-distribution")
        self.probe_out, _ = _check_probe(probe_out, what="outlier")
        self.quantile = float(quantile)

    def measure(self):
        """The distribution-shift statistics of the probe features (Eq. 0.8)."""
        features_in, _ = probe_outputs(self.model, self.probe_in, self.batch_size)
        features_out, _ = probe_outputs(self.model, self.probe_out, self.batch_size)
        stats = analysis.distribution_shift(
            features_in, self.probe_labels, features_out, self.model.num_classes, self.quantile
        )
        return stats, {f"shift_{key}": value for key, value in stats.items()}


class ConfidenceHistory(ProbeCallback):
    """Records the distribution of the in-distribution confidence per epoch (Fig. 5).

    Confidence is `scores.confidence`: exp(max_i h_i) for a Gaussian head, max softmax for
    a linear one. Each record holds, for the in-distribution probe and for every OOD probe
    set (and their pool, key "all"), a histogram over [0, 1] and the mean and quantiles;
    OOD entries also hold the AUROC against the in-distribution probe (on max h or max
    softmax: exp(max h) can underflow to ties at 0).

    Args:
      probe_in: in-distribution images (e.g. validation images).
      probe_ood: OOD images, or a dict label -> images for several OOD sets.
      path: the .jsonl file (see `ProbeCallback`).
      bins: histogram bins on [0, 1].

    Example:
      history = ConfidenceHistory(x_in, {"svhn": x_svhn})
      model.fit(train, epochs=10, callbacks=[history])
    """

    def __init__(self, probe_in, probe_ood, path=None, bins=analysis.CONFIDENCE_BINS, **kwargs):
        super().__init__(path, **kwargs)
        self.probe_in, _ = _check_probe(probe_in, what="in-distribution")
        if not isinstance(probe_ood, dict):
            probe_ood = {POOLED_OOD: probe_ood}
        elif POOLED_OOD in probe_ood and len(probe_ood) > 1:
            raise ValueError(f"OOD probe label {POOLED_OOD!r} is reserved for the pooled sets.")
        if not probe_ood:
            raise ValueError("probe_ood needs at least one OOD set.")
        self.probe_ood = {label: _check_probe(images, what=f"OOD ({label})")[0]
                          for label, images in probe_ood.items()}
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}.")
        self.bins = int(bins)

    def _entry(self, confidence):
        return {"histogram": analysis.confidence_histogram(confidence, self.bins),
                **analysis.confidence_summary(confidence)}

    def measure(self):
        """Histograms and quantiles of the confidence on each probe set."""
        gaussian = self.model.gaussian_head
        score = scores.get(scores.default_score_name(gaussian))

        def evaluate(images):
            _, outputs = probe_outputs(self.model, images, self.batch_size)
            return (np.asarray(scores.confidence(outputs, gaussian), np.float64),
                    np.asarray(score(outputs), np.float64))

        confidence_in, score_in = evaluate(self.probe_in)
        per_set = {label: evaluate(images) for label, images in self.probe_ood.items()}
        if POOLED_OOD not in per_set:
            per_set[POOLED_OOD] = tuple(np.concatenate(parts) for parts in zip(*per_set.values()))
        ood = {}
        for label, (confidence, score_out) in per_set.items():
            ood[label] = {**self._entry(confidence),
                          "auroc": metrics.ood_metrics(score_in, score_out)["auroc"]}
        record = {"bins": self.bins, "in": self._entry(confidence_in), "ood": ood}
        pooled = ood[POOLED_OOD]
        return record, {"confidence_in_mean": record["in"]["mean"],
                        "confidence_ood_mean": pooled["mean"], "confidence_auroc": pooled["auroc"]}


# ----------------------------------------------------------------- from a config
def build_probes(config, size=None):
    """The probe sets `config.analyses` needs, `size` images each (default
    `config.analysis_probe_size`).

    Returns a dict with, where needed:
      "train": (images, labels) of the in-distribution training split, without
        augmentation (what the gradient meter and shift tracker see);
      "outliers": training outlier images (`config.outlier_dataset`, split train);
      "eval": in-distribution images of `config.eval_split`;
      "ood": {label: images} of every OOD set of `config.ood_datasets`.

    Example:
      probes = build_probes(config, size=256)
    """
    size = int(size or config.analysis_probe_size)
    wanted = set(config.analyses)
    probes = {}
    if wanted & {"gradient_meter", "shift"}:
        probes["train"] = run_data.load_images(config, config.in_dataset, "train", size)
        name, path = run_data.substitute(config, config.outlier_dataset, config.outlier_path)
        substituted = config.dry_run or name != config.outlier_dataset
        exclude = None if substituted else config.outlier_exclude_path
        probes["outliers"] = run_data.load_images(config, name, "train", size, path, exclude)[0]
    if "confidence" in wanted:
        # The evaluation sets themselves, `size` images of each.
        in_dataset, ood_datasets = run_data.make_eval_data(
            config.replace(eval_limit=size, eval_batch_size=size)
        )
        probes["eval"] = _images_of(in_dataset)
        probes["ood"] = {label: _images_of(dataset) for label, dataset in ood_datasets.items()}
    return probes


def _images_of(dataset):
    return np.concatenate([images.numpy() for images, _ in dataset])


def analysis_callbacks(config, directory=None, probe_size=None, start_epoch=0, resumed=False):
    """The callbacks `config.analyses` asks for, on probe sets built once.

    Args:
      config: an `ExperimentConfig`.
      directory: the run folder; records go to <directory>/analysis/<name>.jsonl
        (None: kept in memory only, as in a dry run).
      probe_size: images per probe set; default `config.analysis_probe_size`.
      start_epoch, resumed: the first epoch of a resumed run (see `ProbeCallback`).

    Example:
      callbacks = analysis_callbacks(config.replace(analyses=("shift",)), directory="runs/x")
    """
    if not config.analyses:
        return []
    probes = build_probes(config, probe_size)

    def path(name):
        return analysis.analysis_path(directory, name) if directory else None

    made = []
    for name in config.analyses:
        if name == "gradient_meter":
            made.append(
                ContradictoryGradientMeter(*probes["train"], probes["outliers"], path(name),
                                           start_epoch=start_epoch, resumed=resumed)
            )
        elif name == "shift":
            made.append(DistributionShiftTracker(*probes["train"], probes["outliers"], path(name),
                                                 start_epoch=start_epoch, resumed=resumed))
        elif name == "confidence":
            made.append(ConfidenceHistory(probes["eval"], probes["ood"], path(name),
                                          start_epoch=start_epoch, resumed=resumed))
        else:
            raise ValueError(
                f"Unknown analysis {name!r}; valid analyses: {', '.join(analysis.ANALYSES)}."
            )
    return made


class GaussianHeadMonitor(keras.callbacks.Callback):
    """Adds the Gaussian head's state to each epoch's logs, so metrics.jsonl shows whether
    L's scale runs away: `head_scale_trace` = tr(L Lᵀ) / d (the mean variance of Eq. 0.11's
    covariance), `head_scale_condition` = the condition number of L, and
    `head_mean_norm` = the mean norm of the class means m_i. A linear head logs nothing.

    Example:
      model.fit(train, epochs=6, callbacks=[GaussianHeadMonitor(), JsonLinesLogger(path)])
    """

    def on_epoch_end(self, epoch, logs=None):
        """Adds the three numbers to `logs` (before the loggers that follow it write them)."""
        from ice_tf import layers

        head = getattr(self.model, "head", None)
        if logs is None or not layers.is_gaussian_head(head):
            return
        scale = np.asarray(head.scale_tril, np.float64)
        singular = np.linalg.svd(scale, compute_uv=False)
        logs["head_scale_trace"] = float(np.sum(scale ** 2) / scale.shape[0])
        logs["head_scale_condition"] = float(singular[0] / max(singular[-1], 1e-300))
        logs["head_mean_norm"] = float(np.linalg.norm(np.asarray(head.means), axis=1).mean())


__all__ = [
    "GaussianHeadMonitor",
    "JsonLinesLogger",
    "strict_json",
    "read_records",
    "keep_records",
    "TrainingCheckpoint",
    "training_position",
    "restore_training_state",
    "ProbeCallback",
    "ContradictoryGradientMeter",
    "DistributionShiftTracker",
    "ConfidenceHistory",
    "probe_outputs",
    "build_probes",
    "analysis_callbacks",
]
