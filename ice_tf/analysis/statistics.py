"""Training-time analyses of Sections 3-4 of the paper, as pure functions.

- Contradictory gradient (Eqs. 0.6-0.8): which (sample, class) outputs the auxiliary
  outlier loss raises although cross-entropy's principle says it should not.
- Distribution shift (Fig. 3, Fig. 4): distances of in-distribution and outlier features
  to the class centres, and how much the two overlap.
- Confidence distributions (Fig. 5): histograms and quantiles of exp(max h) (or max
  softmax) on in-distribution and OOD images.

The callbacks of `ice_tf.analysis.probes` call these on fixed probe sets once per epoch and
write `analysis/*.jsonl` in the run folder; `ice_tf.experiment.run_folder.read_analyses`
reads them back. Exact
definitions: docs/analyses.md. Only `auxiliary_gradients` and `contradictory_fractions`
use TensorFlow (imported when called), so the figure scripts stay light.

Example:
    fractions = analysis.contradictory_fractions("oe", labels, logits_in, logits_out)
    fractions["contradictory_out"]   # share of outlier logits OE raises (softmax < 1/K)
"""

from __future__ import annotations

import numpy as np

from ice_tf import gda, metrics

# A per-sample gradient below this magnitude is not counted as raising an output: it
# ignores exact zeros (an inactive relu, a class that is not the max) and pushes far
# below the float32 resolution of an O(1) output.
GRADIENT_TOLERANCE = 1e-8
# Outliers closer to their nearest class centre than this quantile of the in-distribution
# distances (each to its own centre) count as overlapping with the in-distribution features.
OVERLAP_QUANTILE = 0.95
CONFIDENCE_BINS = 20
CONFIDENCE_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)

def auxiliary_gradients(loss, labels, outputs_in, outputs_out):
    """Per-sample gradients of the auxiliary loss on the head outputs.

    The auxiliary loss is the method's objective without its cross-entropy term,
    L_aux = λ · (a · in_term + b · out_term) (Eqs. 0.3, 0.5, 0.15; `OODLoss.auxiliary`, with
    the loss's term weights a, b). Its in-distribution terms
    are means over the N_in samples and its outlier terms means over the N_out
    outliers, so N · ∂L_aux/∂f is each sample's own gradient, λ · ∂ℓ_aux(x)/∂f, free
    of the probe size. E.g. OE (Eq. 0.6): λ · (softmax(f̃) - 1/K) on outliers.

    Args:
      loss: an `ice_tf.losses.OODLoss` (or its name).
      labels: (N_in,) integer labels.
      outputs_in: (N_in, K) head outputs (logits f or Gaussian scores h).
      outputs_out: (N_out, K) head outputs of outliers.

    Returns:
      (grad_in (N_in, K), grad_out (N_out, K)) float64 numpy arrays.

    Example:
      grad_in, grad_out = auxiliary_gradients(loss, labels, outputs_in, outputs_out)
    """
    import tensorflow as tf

    from ice_tf import losses

    loss = losses.get(loss)
    outputs_in = tf.convert_to_tensor(np.asarray(outputs_in, np.float32))
    outputs_out = tf.convert_to_tensor(np.asarray(outputs_out, np.float32))
    if outputs_in.shape.rank != 2 or outputs_out.shape.rank != 2:
        raise ValueError(
            f"outputs must be (batch, classes); got {outputs_in.shape} and {outputs_out.shape}."
        )
    with tf.GradientTape() as tape:
        tape.watch([outputs_in, outputs_out])
        terms = loss.terms(labels, outputs_in, outputs_out if loss.uses_outliers else None)
        auxiliary = loss.auxiliary(terms)  # the loss's own weighting, term weights included
    grad_in, grad_out = tape.gradient(
        auxiliary, [outputs_in, outputs_out], unconnected_gradients=tf.UnconnectedGradients.ZERO
    )
    num_in, num_out = outputs_in.shape[0], outputs_out.shape[0]
    return (grad_in.numpy().astype(np.float64) * num_in,
            grad_out.numpy().astype(np.float64) * num_out)


def _rows_with_labels(values, labels, what):
    """(values as float64 (N, C), labels as int64 (N,)); `what` names the expected shape."""
    values = np.asarray(values, np.float64)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if values.ndim != 2 or labels.shape[0] != values.shape[0]:
        raise ValueError(
            f"{what} with one label per row; got {values.shape} and {labels.shape[0]} labels."
        )
    return values, labels


def contradictory_masks(labels, grad_in, grad_out, tolerance=GRADIENT_TOLERANCE):
    """Which (sample, class) pairs a gradient raises against cross-entropy's principle.

    Gradient descent raises output c when its gradient g_c < 0. Cross-entropy raises only
    the target output of an in-distribution sample (Eq. 0.2 and the gradient after it),
    so a pair is contradictory when g_c < -tolerance and it is
      - (in-distribution sample, non-target class c) (Energy's in-distribution term,
        Eq. 0.8), or
      - (outlier, any class c) (OE, Eq. 0.6, for softmax_c < 1/K).

    Returns:
      (mask_in (N_in, K) bool, False on every target class; mask_out (N_out, K) bool).

    Example:
      masks = contradictory_masks(labels, grad_in, grad_out)  # (n_in, K) booleans
    """
    grad_in, labels = _rows_with_labels(grad_in, labels, "grad_in must be (N_in, K)")
    grad_out = np.asarray(grad_out, np.float64)
    raised_in = grad_in < -tolerance
    raised_in[np.arange(labels.shape[0]), labels] = False  # raising the target is CE's aim
    return raised_in, grad_out < -tolerance


def contradictory_fractions(loss, labels, outputs_in, outputs_out, tolerance=GRADIENT_TOLERANCE):
    """The contradictory-gradient meter: fractions of (sample, class) pairs whose
    auxiliary-loss gradient raises an output against cross-entropy's principle.

    See `auxiliary_gradients` for the gradient and `contradictory_masks` for the rule.

    Returns:
      {"contradictory_in": share of the N_in·(K-1) in-distribution non-target pairs,
       "contradictory_out": share of the N_out·K outlier pairs,
       "contradictory_all": share of all N_in·(K-1) + N_out·K such pairs}.

    Expected (tests check each): `ce`, `bce`, `ice` and `ice_minus` give 0 everywhere; OE
    raises exactly the outlier classes with softmax < 1/K; Energy raises every
    non-target class of an in-distribution sample with E(x) > m_in, and no outlier class.

    Example:
      fractions = contradictory_fractions(losses.get("oe"), labels, logits_in, logits_out)
    """
    grad_in, grad_out = auxiliary_gradients(loss, labels, outputs_in, outputs_out)
    mask_in, mask_out = contradictory_masks(labels, grad_in, grad_out, tolerance)
    num_in, num_classes = mask_in.shape
    pairs_in, pairs_out = num_in * (num_classes - 1), mask_out.size
    count_in, count_out = int(mask_in.sum()), int(mask_out.sum())
    return {
        "contradictory_in": count_in / pairs_in if pairs_in else 0.0,
        "contradictory_out": count_out / pairs_out if pairs_out else 0.0,
        "contradictory_all": (count_in + count_out) / max(pairs_in + pairs_out, 1),
    }


# ---------------------------------------------------------------- distribution shift
def class_centres(features, labels, num_classes):
    """(K, d) float64 per-class means of `features`; NaN rows for absent classes.

    Example:
      centres = class_centres(features, labels, num_classes=10)  # (10, d)
    """
    features, labels = _rows_with_labels(features, labels, "features must be (N, d)")
    return gda.class_means(features, labels, num_classes)


def distribution_shift(features_in, labels, features_out, num_classes,
                       quantile=OVERLAP_QUANTILE):
    """Distances of features to the class centres: the distribution shift of Fig. 3.

    Class centres μ_k are the per-class means of the in-distribution features (classes
    without samples are left out); distances are Euclidean.

    Returns:
      {"in_to_centre": mean_i ||z_i - μ_{y_i}||,
       "out_to_centre": mean_j min_k ||z̃_j - μ_k|| (outlier to its nearest centre),
       "ratio": out_to_centre / in_to_centre (scale-free; > 1: outliers lie farther out),
       "overlap": share of outliers with min_k ||z̃_j - μ_k|| <= the `quantile` of the
                  in-distribution distances ||z_i - μ_{y_i}||,
       "centre_separation": mean ||μ_k - μ_l|| over pairs of classes k < l}.

    Example:
      shift = distribution_shift(features_in, labels, features_out, num_classes=10)
    """
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must lie in (0, 1], got {quantile}.")
    features_in = np.asarray(features_in, np.float64)
    features_out = np.asarray(features_out, np.float64)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if features_out.ndim != 2 or features_out.shape[1] != features_in.shape[-1]:
        raise ValueError(
            f"features_out must be (N_out, {features_in.shape[-1]}); got {features_out.shape}."
        )
    if features_in.shape[0] == 0 or features_out.shape[0] == 0:
        raise ValueError("distribution_shift needs in-distribution features and outliers.")
    centres = class_centres(features_in, labels, num_classes)
    present = ~np.isnan(centres[:, 0])
    in_distances = np.linalg.norm(features_in - centres[labels], axis=1)
    to_centres = np.linalg.norm(features_out[:, None, :] - centres[None, present, :], axis=2)
    out_distances = to_centres.min(axis=1)
    in_mean, out_mean = float(in_distances.mean()), float(out_distances.mean())
    kept = centres[present]
    pairs = np.linalg.norm(kept[:, None, :] - kept[None, :, :], axis=2)
    pairs = pairs[np.triu_indices(len(kept), 1)]
    return {
        "in_to_centre": in_mean,
        "out_to_centre": out_mean,
        "ratio": out_mean / in_mean if in_mean > 0 else float("nan"),
        "overlap": float(np.mean(out_distances <= np.quantile(in_distances, quantile))),
        "centre_separation": float(pairs.mean()) if pairs.size else float("nan"),
    }


# ------------------------------------------------------------------------ confidence
def confidence_histogram(confidence, bins=CONFIDENCE_BINS):
    """Counts of `confidence` in `bins` equal bins of [0, 1] (1.0 in the last bin).

    Example:
      counts = confidence_histogram(np.exp(outputs.max(-1)), bins=20)
    """
    values = np.asarray(confidence, np.float64).reshape(-1)
    if not np.all(np.isfinite(values)):
        raise ValueError("confidence values must be finite.")
    counts, _ = np.histogram(np.clip(values, 0.0, 1.0), bins=int(bins), range=(0.0, 1.0))
    return [int(c) for c in counts]


def confidence_summary(confidence, quantiles=CONFIDENCE_QUANTILES):
    """{"mean", "q05", "q25", "q50", ...}: the mean and quantiles of `confidence`.

    Example:
      confidence_summary(np.array([0.1, 0.5, 0.9]))["median"]  # 0.5
    """
    values = np.asarray(confidence, np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("confidence_summary needs at least one value.")
    summary = {"mean": float(values.mean())}
    for q, value in zip(quantiles, np.quantile(values, quantiles)):
        summary[f"q{round(100 * q):02d}"] = float(value)
    return summary


# (header, analysis, key path in its record, scale, format) of the summary table.
SUMMARY_COLUMNS = (
    ("Contr. in %", "gradient_meter", ("contradictory_in",), 100, "{:.1f}"),
    ("Contr. out %", "gradient_meter", ("contradictory_out",), 100, "{:.1f}"),
    ("Contr. all %", "gradient_meter", ("contradictory_all",), 100, "{:.1f}"),
    ("Out→centre", "shift", ("out_to_centre",), 1, "{:.3g}"),
    ("In→centre", "shift", ("in_to_centre",), 1, "{:.3g}"),
    ("Ratio", "shift", ("ratio",), 1, "{:.2f}"),
    ("Overlap %", "shift", ("overlap",), 100, "{:.1f}"),
    ("Conf. ID", "confidence", ("in", "mean"), 1, "{:.3f}"),
    ("Conf. OOD", "confidence", ("ood", "all", "mean"), 1, "{:.3f}"),
    ("AUROC %", "confidence", ("ood", "all", "auroc"), 100, "{:.1f}"),
)


def _lookup(record, keys):
    for key in keys:
        if not isinstance(record, dict) or key not in record:
            return None
        record = record[key]
    return None if record is None else float(record)


def summary_rows(analyses):
    """One row per epoch, {"epoch": e, header: value or None} for `SUMMARY_COLUMNS`,
    from `read_analyses` output (values scaled, e.g. fractions to percentages).

    Example:
      rows = summary_rows(read_analyses("runs/demo/ice/seed1"))
    """
    by_epoch = {}
    for name, records in analyses.items():
        for record in records:
            by_epoch.setdefault(int(record["epoch"]), {})[name] = record
    rows = []
    for epoch in sorted(by_epoch):
        row = {"epoch": epoch}
        for header, name, keys, scale, _ in SUMMARY_COLUMNS:
            value = _lookup(by_epoch[epoch].get(name), keys)
            row[header] = None if value is None else value * scale
        rows.append(row)
    return rows


def summary_rows_over_seeds(analyses_by_seed):
    """`summary_rows` of several seeds of one method: per epoch every seed recorded, each
    column's mean over seeds and, under "<header> std", its population std (None where a
    seed lacks the value).

    Example:
      rows = summary_rows_over_seeds([read_analyses(f"runs/ft/ice/seed{k}") for k in (1, 2, 3)])
    """
    per_seed = [{row["epoch"]: row for row in summary_rows(analyses)}
                for analyses in analyses_by_seed]
    epochs = sorted(set.intersection(*(set(rows) for rows in per_seed)))
    combined = []
    for epoch in epochs:
        row = {"epoch": epoch}
        for header, *_ in SUMMARY_COLUMNS:
            values = [rows[epoch][header] for rows in per_seed]
            row[header], row[header + " std"] = (
                (None, None) if None in values else metrics.spread(values).values())
        combined.append(row)
    return combined


def method_rows(analyses):
    """`summary_rows` of one run's analyses, or `summary_rows_over_seeds` of a list of them.

    Example:
      rows = method_rows([read_analyses(f"runs/ft/ice/seed{k}") for k in (1, 2, 3)])
    """
    if isinstance(analyses, (list, tuple)):
        return summary_rows_over_seeds(analyses)
    return summary_rows(analyses)


def summary_markdown(runs):
    """A markdown table, one row per (method, epoch), of the analyses of several runs.

    Args:
      runs: {label: `read_analyses(run_dir)`, or a list of them, one per seed, whose cells
        are then mean ± std over seeds}, in the order the rows should follow.
    Columns without any value in any run are left out.

    Example:
      print(summary_markdown({"ice": read_analyses("runs/demo/ice/seed1")}))
    """
    rows = {label: method_rows(analyses) for label, analyses in runs.items()}
    columns = [
        column for column in SUMMARY_COLUMNS
        if any(row[column[0]] is not None for label_rows in rows.values() for row in label_rows)
    ]

    def cell(row, header, fmt):
        if row[header] is None:
            return "–"
        std = row.get(header + " std")
        return fmt.format(row[header]) + ("" if std is None else " ± " + fmt.format(std))

    lines = ["| Method | Epoch | " + " | ".join(c[0] for c in columns) + " |",
             "|---|---:|" + "---:|" * len(columns)]
    for label, label_rows in rows.items():
        for row in label_rows:
            cells = [cell(row, header, fmt) for header, _, _, _, fmt in columns]
            lines.append(f"| {label} | {row['epoch']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


__all__ = [
    "auxiliary_gradients",
    "contradictory_masks",
    "contradictory_fractions",
    "class_centres",
    "distribution_shift",
    "confidence_histogram",
    "confidence_summary",
    "summary_rows",
    "summary_rows_over_seeds",
    "method_rows",
    "summary_markdown",
]
