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

`PROBES` registers each under its name in `ice_tf.analysis.ANALYSES`, with the probe sets
it measures; `ice_tf.experiment.analyses.analysis_callbacks(config, directory)` builds
those sets from a run's data and the callbacks a config asks for.

Example:
    meter = ContradictoryGradientMeter(x_probe, y_probe, outlier_probe, "run/gradient_meter.jsonl")
    model.fit(train_ds, epochs=10, callbacks=[meter])
    meter.history[-1]["contradictory_out"]
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import keras
import numpy as np

from ice_tf import metrics, scores
from ice_tf.analysis import statistics as analysis
from ice_tf.json_lines import keep_records, strict_json

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


# ------------------------------------------------------------------- the registry
@dataclasses.dataclass(frozen=True)
class Probe:
    """A training-time analysis: its callback class and the probe sets it measures.

    `needs` names probe sets: "train" ((images, labels) of the training split),
    "outliers" (training outlier images), "eval" (in-distribution evaluation images) and
    "ood" ({label: images}); the callback is made as `callback(*sets, path, **kwargs)`,
    a (images, labels) pair spread into two arguments.

    Example:
      Probe(DistributionShiftTracker, needs=("train", "outliers"))
    """

    callback: type
    needs: tuple

    def make(self, probe_sets, path=None, **kwargs):
        """The callback on `probe_sets` (a dict with the sets `needs` names)."""
        arguments = []
        for need in self.needs:
            value = probe_sets[need]
            arguments.extend(value if need == "train" else [value])
        return self.callback(*arguments, path, **kwargs)


# One entry per name of `ice_tf.analysis.ANALYSES`, in that order.
PROBES = {
    "gradient_meter": Probe(ContradictoryGradientMeter, needs=("train", "outliers")),
    "shift": Probe(DistributionShiftTracker, needs=("train", "outliers")),
    "confidence": Probe(ConfidenceHistory, needs=("eval", "ood")),
}


def probe(name):
    """The registered `Probe` of analysis `name`; a ValueError naming the choices otherwise.

    Example:
      probe("shift").needs  # ('train', 'outliers')
    """
    if name not in PROBES:
        raise ValueError(f"Unknown analysis {name!r}; valid analyses: {', '.join(PROBES)}.")
    return PROBES[name]


class GaussianHeadMonitor(keras.callbacks.Callback):
    """Adds the Gaussian head's state to each epoch's logs, so metrics.jsonl shows whether
    L's scale runs away: `head_scale_trace` = tr(L Lᵀ) / d (the mean variance of Eq. 0.11's
    covariance), `head_scale_condition` = the condition number of L, and
    `head_mean_norm` = the mean norm of the class means m_i. A linear head logs nothing.

    Example:
      model.fit(train, epochs=6, callbacks=[GaussianHeadMonitor(), checkpoint.JsonLinesLogger(path)])
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
    "ProbeCallback",
    "ContradictoryGradientMeter",
    "DistributionShiftTracker",
    "ConfidenceHistory",
    "probe_outputs",
    "Probe",
    "PROBES",
    "probe",
]
