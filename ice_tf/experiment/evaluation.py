"""OOD evaluation: scores on in-distribution and OOD sets, metrics, Table-style reports.

Protocols (`ice_tf.experiment.config.PROTOCOLS`; docs/design.md):
  "oe"    all in-distribution test images against len(ID test) / 5 OOD images drawn
          at random, 10 draws, mean ± std (Outlier Exposure and Energy; the paper's tables);
  "full"  every image once (OpenOOD).

Results are plain dictionaries (JSON-ready): metric values are fractions in [0, 1]
as `{"mean": m, "std": s}` (std 0 under "full"); reports print percentages.
"""

from __future__ import annotations

import os

import numpy as np
import keras
import tensorflow as tf

from ice_tf import detectors as detectors_lib
from ice_tf import metrics as metrics_lib
from ice_tf.experiment import run_folder
from ice_tf.experiment.config import PROTOCOLS

METRIC_KEYS = metrics_lib.METRIC_KEYS
METRIC_TITLES = {
    "auroc": "AUROC",
    "aupr_in": "AUPR-In",
    "aupr_out": "AUPR-Out",
    "fpr95": "FPR95",
    "fpr95_ood_positive": "FPR95 (OOD+)",
}


def _num_batches(dataset):
    cardinality = int(tf.data.experimental.cardinality(dataset))
    return cardinality if cardinality >= 0 else None


def predict_outputs(model, dataset, progbar=None):
    """Head outputs (N, K) float32 and labels (N,) for a dataset of (images, labels).

    Example:
      outputs, labels = predict_outputs(model, in_ds)
    """
    outputs, labels = [], []
    for images, batch_labels in dataset:
        outputs.append(np.asarray(model.predict_on_batch(images), np.float32))
        labels.append(np.asarray(batch_labels))
        if progbar is not None:
            progbar.add(1)
    if not outputs:
        raise ValueError("the evaluation dataset is empty.")
    return np.concatenate(outputs), np.concatenate(labels)


def detector_scores(detector, model, dataset, progbar=None):
    """Scores (N,), head outputs (N, K) and labels (N,) of a `Detector` over a dataset.

    Example:
      scores, outputs, labels = detector_scores(detectors.get("msp"), model, in_ds)
    """
    scores, outputs, labels = [], [], []
    for images, batch_labels in dataset:
        batch_scores, batch_outputs = detector.score(model, images)
        scores.append(np.asarray(batch_scores))
        outputs.append(np.asarray(batch_outputs, np.float32))
        labels.append(np.asarray(batch_labels))
        if progbar is not None:
            progbar.add(1)
    if not scores:
        raise ValueError("the evaluation dataset is empty.")
    return np.concatenate(scores), np.concatenate(outputs), np.concatenate(labels)


def _as_detector(score):
    """The `Detector` for a Detector, a name (post-hoc ones get their defaults; unknown
    names list all) or a function of the head outputs."""
    if isinstance(score, detectors_lib.Detector):
        return score
    if callable(score):
        return detectors_lib.OutputScore(score)
    return detectors_lib.get(score)


def _as_mean_std(values):
    return {key: {"mean": float(value), "std": 0.0} for key, value in values.items()}


def ood_results(scores_in, scores_out_by_set, protocol="oe", num_draws=10, seed=0):
    """Metrics per OOD set and their mean over sets, from precomputed scores.

    Example:
      results = ood_results(scores_in, {"svhn": scores_svhn}, protocol="full")
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown protocol {protocol!r}; valid protocols: {', '.join(sorted(PROTOCOLS))}.")
    per_set = {}
    for index, (label, scores_out) in enumerate(scores_out_by_set.items()):
        if protocol == "oe":
            result = metrics_lib.subsampled_ood_metrics(
                scores_in, scores_out, num_draws=num_draws, seed=seed + index
            )
        else:
            result = _as_mean_std(metrics_lib.ood_metrics(scores_in, scores_out))
            result["num_ood"] = int(len(scores_out))
        per_set[label] = result
    mean = {
        key: {
            "mean": float(np.mean([r[key]["mean"] for r in per_set.values()])),
            "std": float(np.mean([r[key]["std"] for r in per_set.values()])),
        }
        for key in METRIC_KEYS
    }
    return per_set, mean


def evaluate_model(
    model,
    in_dataset,
    ood_datasets,
    score="msp",
    protocol="oe",
    num_draws=10,
    seed=0,
    verbose=1,
    return_scores=False,
):
    """Evaluates OOD detection and in-distribution accuracy of a trained model.

    Args:
      model: a Keras model returning head outputs (logits or h).
      in_dataset: tf.data of (images, labels), the in-distribution test set.
      ood_datasets: dict label -> tf.data of (images, labels) (labels ignored).
      score: a name from `ice_tf.scores.names()` or a function of the outputs (higher =
        more in-distribution), or an `ice_tf.detectors.Detector` (fitted where it needs
        it); the names `odin` and `mahalanobis` give those detectors with defaults.
      protocol: "oe" or "full".
      num_draws: draws of the "oe" protocol.
      seed: seed of the "oe" protocol's draws.
      verbose: 1 shows a progress bar over all evaluation batches.
      return_scores: also return {"in": scores, label: scores} (for ROC figures).

    Returns:
      dict with `score`, `protocol`, `accuracy`, `num_in`, `sets` (per OOD set) and
      `mean` (over sets); plus the raw scores when `return_scores`.

    Example:
      results = evaluate_model(model, in_ds, {"svhn": svhn_ds}, score="ice")
      results["mean"]["auroc"]
    """
    detector = _as_detector(score)
    if not detector.fitted:
        raise ValueError(
            f"the {detector.name} detector must be fitted first: detector.fit(model, train_dataset)."
        )
    datasets = {"in-distribution": in_dataset, **ood_datasets}
    counts = [_num_batches(ds) for ds in datasets.values()]
    total = None if any(c is None for c in counts) else sum(counts)
    progbar = keras.utils.Progbar(total, unit_name="batch") if verbose else None

    scores_in, outputs_in, labels_in = detector_scores(detector, model, in_dataset, progbar)
    raw_scores = {"in": scores_in}
    for label, dataset in ood_datasets.items():
        raw_scores[label] = detector_scores(detector, model, dataset, progbar)[0]
    per_set, mean = ood_results(
        scores_in,
        {label: raw_scores[label] for label in ood_datasets},
        protocol=protocol,
        num_draws=num_draws,
        seed=seed,
    )
    results = {
        "score": _score_name(score),
        "protocol": protocol,
        "accuracy": metrics_lib.accuracy(labels_in, outputs_in),
        "num_in": int(len(scores_in)),
        "sets": per_set,
        "mean": mean,
    }
    if detector.options:
        results["detector_options"] = detector.options
    if return_scores:
        return results, raw_scores
    return results


def _score_name(score):
    if isinstance(score, str):
        return score
    if isinstance(score, detectors_lib.Detector):
        return score.name
    return getattr(score, "__name__", "custom")


def _cell(value, with_std):
    if with_std and value["std"] > 0:
        return f"{100 * value['mean']:.2f} ± {100 * value['std']:.2f}"
    return f"{100 * value['mean']:.2f}"


def results_markdown(results, title=None):
    """A markdown table: one row per OOD set and the mean; percentages.

    Example:
      print(results_markdown(results, title="ice on cifar10"))
    """
    with_std = results["protocol"] == "oe"
    header = ["OOD set", *(METRIC_TITLES[k] for k in METRIC_KEYS)]
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines += [
        f"Score `{results['score']}`, protocol `{results['protocol']}`; in-distribution accuracy "
        f"{100 * results['accuracy']:.2f}% on {results['num_in']} images. AUPR-In and FPR95 treat "
        "in-distribution as positive (the paper's convention); AUPR-Out and FPR95 (OOD+) treat "
        "OOD as positive (OE/OpenOOD).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * len(header)) + "|",
    ]
    for label, values in results["sets"].items():
        lines.append(
            "| " + " | ".join([label, *(_cell(values[k], with_std) for k in METRIC_KEYS)]) + " |"
        )
    lines.append(
        "| **mean** | "
        + " | ".join(f"**{_cell(results['mean'][k], False)}**" for k in METRIC_KEYS)
        + " |"
    )
    return "\n".join(lines) + "\n"


def aggregate_runs(results_list):
    """Mean ± std over runs (e.g. seeds) of the set-level means and accuracy.

    Returns a results-like dict whose metric values are {"mean", "std"} across runs
    and whose `accuracy_std` is the spread of accuracy.

    Example:
      aggregated = aggregate_runs([results_seed1, results_seed2, results_seed3])
    """
    if not results_list:
        raise ValueError("no results to aggregate.")
    spread = metrics_lib.spread
    labels = list(results_list[0]["sets"])
    accuracy = spread([r["accuracy"] for r in results_list])
    return {
        "score": results_list[0]["score"],
        "protocol": results_list[0]["protocol"],
        "num_runs": len(results_list),
        "accuracy": accuracy["mean"],
        "accuracy_std": accuracy["std"],
        "num_in": results_list[0]["num_in"],
        "sets": {
            label: {k: spread([r["sets"][label][k]["mean"] for r in results_list]) for k in METRIC_KEYS}
            for label in labels
        },
        "mean": {k: spread([r["mean"][k]["mean"] for r in results_list]) for k in METRIC_KEYS},
        # Each run's per-set values, so that a group of sets gets its spread over runs.
        "run_sets": [
            {label: {k: r["sets"][label][k]["mean"] for k in METRIC_KEYS} for label in labels}
            for r in results_list
        ],
    }


def _group_mean(result, labels, key):
    """Mean over the given OOD sets of a metric. Its std: for aggregated runs, the std
    over runs of each run's group mean; for one run, the mean of the sets' stds."""
    if "run_sets" in result:
        return metrics_lib.spread([np.mean([run[label][key] for label in labels])
                                   for run in result["run_sets"]])
    values = [result["sets"][label][key] for label in labels]
    return {"mean": float(np.mean([v["mean"] for v in values])),
            "std": float(np.mean([v["std"] for v in values]))}


def comparison_markdown(results_by_method, groups=None, keys=("auroc", "aupr_in", "fpr95"),
                        show_std=True):
    """Table 1 style comparison of methods.

    First a summary: per group of OOD sets (default: all), the mean AUROC, AUPR-In and
    FPR95 over the group's sets, and in-distribution accuracy; then one block per OOD
    set. With aggregated runs (`aggregate_runs`) cells read mean ± std over runs.

    Example:
      print(comparison_markdown({"oe": aggregate_runs(oe_runs), "ice": aggregate_runs(ice_runs)}))
    """
    methods = list(results_by_method)
    first = results_by_method[methods[0]]
    groups = groups or {"all OOD sets": list(first["sets"])}
    header = ["Method"]
    for group in groups:
        header += [f"{METRIC_TITLES[k]} ({group})" for k in keys]
    header.append("Accuracy")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        result = results_by_method[method]
        cells = [method]
        for labels in groups.values():
            cells += [_cell(_group_mean(result, labels, k), show_std) for k in keys]
        accuracy = f"{100 * result['accuracy']:.2f}"
        if show_std and result.get("accuracy_std"):
            accuracy += f" ± {100 * result['accuracy_std']:.2f}"
        lines.append("| " + " | ".join(cells + [accuracy]) + " |")
    lines += ["", "| OOD set | Method | " + " | ".join(METRIC_TITLES[k] for k in keys) + " |",
              "|---|---|" + "---|" * len(keys)]
    for label in first["sets"]:
        for method in methods:
            values = results_by_method[method]["sets"][label]
            lines.append(f"| {label} | {method} | "
                         + " | ".join(_cell(values[k], show_std) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def default_stats_path(model_path, detector="mahalanobis"):
    """Where a run's fitted `detector` keeps its statistics: `<run>/mahalanobis_stats.npz`
    (`<run>/<detector>_stats.npz`) for a run's model.keras, `<name>_<detector>_stats.npz`
    beside any other .keras file.

    Example:
      default_stats_path("runs/ice/model.keras")  # 'runs/ice/mahalanobis_stats.npz'
      default_stats_path("runs/ice/model.keras", "knn")  # 'runs/ice/knn_stats.npz'
    """
    model_path = os.path.abspath(model_path)
    directory, base = os.path.split(model_path)
    stats_file = run_folder.stats_file(detector)
    if base == run_folder.MODEL_FILE:
        return os.path.join(directory, stats_file)
    return os.path.join(directory, f"{os.path.splitext(base)[0]}_{stats_file}")


def for_run(name, config, model_path, *, odin_temperature=1000.0, odin_epsilon=0.0014,
            mahalanobis_epsilon=0.0, stats_path=None, refit=False):
    """A detector for a trained run: std from the run's in-distribution normalisation, and
    the statistics of a fitted detector (Mahalanobis and the feature detectors) cached
    beside the model file (`default_stats_path`), tied to the model file's hash and to
    the training images used (dataset, limit, seed).

    Example:
      detector = for_run("mahalanobis", config, "runs/ice/model.keras")
    """
    from ice_tf import data  # imported here: data loading is heavy for users of the scores only.

    if name not in detectors_lib.names():
        raise ValueError(f"Unknown detector {name!r}; valid detectors: {', '.join(detectors_lib.names())}.")
    std = data.normalization(config.in_dataset)[1]
    if name == "odin":
        return detectors_lib.ODIN(temperature=odin_temperature, epsilon=odin_epsilon, std=std)
    detector_class = detectors_lib.detector_class(name)
    if detector_class is None:
        return detectors_lib.OutputScore(name)
    if not detector_class.needs_fit:
        return detector_class()
    fingerprint = {
        "model": detectors_lib.model_fingerprint(model_path),
        "train": {"dataset": config.in_dataset, "split": "train", "limit": config.limit_train,
                  "seed": config.seed if config.limit_train else None},
    }
    cached = dict(fingerprint=fingerprint, refit=refit,
                  stats_path=stats_path or default_stats_path(model_path, name))
    if name == "mahalanobis":
        return detector_class(epsilon=mahalanobis_epsilon, std=std, **cached)
    return detector_class(**cached)


def evaluate_with_detector(model, detector, in_dataset, ood_datasets, *, fit_data=None,
                           protocol="oe", num_draws=10, seed=0, verbose=0, return_scores=False):
    """The one way a model is evaluated with a detector (`ice_tf.evaluate`, `ice-tf
    evaluate`, the scripts): a detector that fits statistics (Mahalanobis) fits them on
    `fit_data`, training batches of (images, labels) or a function returning them
    (called only then), and `evaluate_model` scores the sets.

    Example:
      results = evaluate_with_detector(model, detectors.get("mahalanobis"), in_ds, ood_ds,
                                       fit_data=train_batches)
    """
    detector = detectors_lib.get(detector)
    if detector.needs_fit:
        if fit_data is None:
            raise ValueError(f"score {detector.name!r} fits statistics: pass train_data=(x_train, "
                             "y_train).")
        detector.fit(model, fit_data() if callable(fit_data) else fit_data, verbose=verbose)
    return evaluate_model(model, in_dataset, ood_datasets, score=detector, protocol=protocol,
                          num_draws=num_draws, seed=seed, verbose=verbose,
                          return_scores=return_scores)


def evaluate_run_with_detector(name, model, config, model_path, eval_data, adapt=None, verbose=1,
                               **detector_options):
    """(detector, results) of a trained run's model scored by the detector `name`
    (`for_run`: its statistics cached beside the model), fitted on the
    run's training images prepared as the evaluation sets (`adapt`, see
    `ice_tf.experiment.run_data.model_input`), under the run's protocol.

    Example:
      detector, results = evaluate_run_with_detector("mahalanobis", model, config, path,
                                                     make_eval_data(config, adapt), adapt)
    """
    from ice_tf.experiment import run_data

    detector = for_run(name, config, model_path, **detector_options)
    in_ds, ood_ds = eval_data
    results = evaluate_with_detector(
        model, detector, in_ds, ood_ds, fit_data=lambda: run_data.statistics_data(config, adapt),
        protocol=config.protocol, num_draws=config.eval_draws, seed=config.seed, verbose=verbose)
    return detector, results


__all__ = [
    "for_run", "default_stats_path",
    "evaluate_model",
    "evaluate_with_detector",
    "evaluate_run_with_detector",
    "ood_results",
    "predict_outputs",
    "detector_scores",
    "results_markdown",
    "comparison_markdown",
    "aggregate_runs",
]
