"""OOD detection metrics: AUROC, AUPR-In, AUPR-Out and FPR at 95% recall.

Pure numpy; every function is O(n log n) (one sort per array) and vectorised.

Conventions
-----------
Scores follow `ice_tf.scores`: **higher means more in-distribution (ID)**.

The primary convention treats ID samples as the positive class, as in the
paper and in the Energy code, which calls ``get_measures(-in_score,
-out_score)`` on energies (so its positives are the ID samples, scored by
negative energy):

* ``auroc``     area under the ROC curve; ties between an ID and an OOD score
                count one half (identical to ``sklearn.metrics.roc_auc_score``).
                AUROC does not depend on which class is called positive.
* ``aupr_in``   average precision, ID positive, score as is
                (``average_precision_score(is_in, score)``).
* ``aupr_out``  average precision, OOD positive, ``-score``
                (``average_precision_score(is_out, -score)``).
* ``fpr95``     fraction of OOD samples *accepted* (``score >= t``) at the
                threshold ``t`` that accepts 95% of the ID samples.

The Outlier Exposure code and OpenOOD treat OOD as the positive class instead;
their FPR95 is reported as

* ``fpr95_ood_positive``  fraction of ID samples *flagged* (``score <= t``) at
                the threshold ``t`` that flags 95% of the OOD samples.

Thresholds and ties
-------------------
``fpr95`` uses the largest ``t`` such that at least 95% of the ID scores are
``>= t``: lowering the threshold from ``+inf``, it is the first threshold at
which the ID true-positive rate reaches 0.95 (``t`` is always one of the ID
scores, namely the ``ceil(0.95 * n_in)``-th largest). Every OOD score equal to
``t`` counts as accepted, i.e. ties at the threshold count against the
detector. ``fpr95_ood_positive`` is the mirror image: the smallest ``t`` such
that at least 95% of the OOD scores are ``<= t``, and every ID score equal to
``t`` counts as flagged. The Energy/OE reference code instead picks, among
the distinct scores, the threshold whose recall is *closest* to 0.95 (the
lowest such threshold on a tie), which may sit at a recall just below 0.95 or
also count the negatives scoring between the cut and the next positive. The
rule used here never reports a recall below 95%; on realistic test-set sizes
the two typically differ by a few OOD samples.

Example
-------
>>> import numpy as np
>>> from ice_tf.metrics import ood_metrics
>>> m = ood_metrics(np.array([0.9, 0.8, 0.5, 0.2]), np.array([0.7, 0.4, 0.3, 0.1]))
>>> round(m["auroc"], 4), m["fpr95"], m["fpr95_ood_positive"]
(0.75, 0.75, 0.5)
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

__all__ = [
    "METRIC_KEYS",
    "ood_metrics",
    "ood_metrics_at_recall",
    "roc_curve_points",
    "subsampled_ood_metrics",
    "mean_over_sets",
    "accuracy",
]

METRIC_KEYS = ("auroc", "aupr_in", "aupr_out", "fpr95", "fpr95_ood_positive")
"""The keys returned by `ood_metrics`, in order."""

_RECALL = 0.95


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def _as_scores(x, name: str) -> np.ndarray:
    """Returns `x` as a finite, non-empty, 1-D float64 array or raises ValueError."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be numeric scores; could not convert: {e}") from None
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D array of scores, got shape {arr.shape}"
            + (" (use .ravel() or squeeze the extra axis)" if arr.ndim > 1 and arr.size in arr.shape else "")
        )
    if arr.size == 0:
        raise ValueError(f"{name} is empty; at least one score is needed")
    finite = np.isfinite(arr)
    if not finite.all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(arr.size - finite.sum()) - n_nan
        raise ValueError(
            f"{name} contains {arr.size - int(finite.sum())} non-finite value(s) "
            f"({n_nan} NaN, {n_inf} inf) out of {arr.size}"
        )
    return arr


def _check_recall(recall) -> float:
    recall = float(recall)
    if not (0.0 < recall <= 1.0):
        raise ValueError(f"recall must be in (0, 1], got {recall}")
    return recall


def _count_for_recall(recall: float, n: int) -> int:
    """Smallest k with k / n >= recall, robust to float error in recall * n."""
    x = recall * n
    r = round(x)
    if abs(x - r) <= 1e-9 * max(1.0, x):
        k = int(r)
    else:
        k = math.ceil(x)
    return min(max(k, 1), n)


# --------------------------------------------------------------------------
# Core computations on sorted arrays
# --------------------------------------------------------------------------


def _counts(pos_asc: np.ndarray, neg_asc: np.ndarray):
    """Cumulative counts at every distinct threshold, thresholds descending.

    Returns ``(thresholds, tps, fps)`` where ``tps[i] = #{pos >= thresholds[i]}``
    and ``fps[i] = #{neg >= thresholds[i]}`` (int64), matching the points of
    sklearn's ``roc_curve(..., drop_intermediate=False)`` without its leading
    (0, 0) point.
    """
    thresholds = np.unique(np.concatenate([pos_asc, neg_asc]))[::-1]
    tps = pos_asc.size - np.searchsorted(pos_asc, thresholds, side="left")
    fps = neg_asc.size - np.searchsorted(neg_asc, thresholds, side="left")
    return thresholds, tps.astype(np.int64), fps.astype(np.int64)


def _auroc(tps: np.ndarray, fps: np.ndarray, n_pos: int, n_neg: int) -> float:
    # Trapezoidal rule in exact integer arithmetic: each step adds
    # d_fps * (tps_prev + tps) / 2, which counts tied pairs as one half.
    tps0 = np.concatenate([[0], tps])
    fps0 = np.concatenate([[0], fps])
    twice_area = int(np.dot(np.diff(fps0), tps0[1:] + tps0[:-1]))
    return twice_area / (2.0 * n_pos * n_neg)


def _average_precision(tps: np.ndarray, fps: np.ndarray, n_pos: int) -> float:
    # sklearn's step-wise AP: sum_k (R_k - R_{k-1}) * P_k over distinct thresholds.
    d_tp = np.diff(np.concatenate([[0], tps]))
    keep = d_tp > 0
    precision = tps[keep] / (tps[keep] + fps[keep])
    return float(np.dot(d_tp[keep], precision) / n_pos)


def _fpr_at_recall(pos_asc: np.ndarray, neg_asc: np.ndarray, recall: float):
    """(fpr, threshold): fraction of negatives >= t, t the largest with recall(t) >= recall."""
    k = _count_for_recall(recall, pos_asc.size)
    t = pos_asc[pos_asc.size - k]  # k-th largest positive score
    n_fp = neg_asc.size - int(np.searchsorted(neg_asc, t, side="left"))
    return n_fp / neg_asc.size, float(t)


def _metrics_sorted(in_asc: np.ndarray, out_asc: np.ndarray) -> dict:
    n_in, n_out = in_asc.size, out_asc.size
    # OOD-positive view: -score, still sorted ascending.
    neg_out = -out_asc[::-1]
    neg_in = -in_asc[::-1]

    _, tps, fps = _counts(in_asc, out_asc)
    _, tps_o, fps_o = _counts(neg_out, neg_in)
    return {
        "auroc": _auroc(tps, fps, n_in, n_out),
        "aupr_in": _average_precision(tps, fps, n_in),
        "aupr_out": _average_precision(tps_o, fps_o, n_out),
        "fpr95": float(_fpr_at_recall(in_asc, out_asc, _RECALL)[0]),
        "fpr95_ood_positive": float(_fpr_at_recall(neg_out, neg_in, _RECALL)[0]),
    }


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def ood_metrics(scores_in, scores_out) -> dict:
    """AUROC, AUPR-In, AUPR-Out and FPR95 under both conventions.

    Args:
      scores_in: 1-D scores of in-distribution samples (higher = more ID).
      scores_out: 1-D scores of OOD samples, same convention.

    Returns:
      ``{"auroc", "aupr_in", "aupr_out", "fpr95", "fpr95_ood_positive"}`` as
      python floats in [0, 1] (fractions, not percentages). ``fpr95`` is the
      ID-positive convention (paper, Energy code); ``fpr95_ood_positive`` is
      the OE/OpenOOD one. See the module docstring for thresholds and ties.

    Raises:
      ValueError: for empty, non-1-D or non-finite inputs.

    Example:
      >>> m = ood_metrics([3.0, 2.0, 1.0], [0.0, -1.0])
      >>> m["auroc"], m["fpr95"]
      (1.0, 0.0)
    """
    s_in = _as_scores(scores_in, "scores_in")
    s_out = _as_scores(scores_out, "scores_out")
    return _metrics_sorted(np.sort(s_in), np.sort(s_out))


def ood_metrics_at_recall(scores_in, scores_out, recall: float = _RECALL) -> dict:
    """FPR at a given recall under both conventions, with the thresholds used.

    Returns a dict with
      * ``fpr``: fraction of OOD with ``score >= threshold``, where
        ``threshold`` is the largest t with at least ``recall`` of the ID
        scores ``>= t`` (``fpr95`` for ``recall=0.95``);
      * ``threshold``: that t;
      * ``fpr_ood_positive``: fraction of ID with ``score <= threshold_ood_positive``,
        the smallest t with at least ``recall`` of the OOD scores ``<= t``
        (``fpr95_ood_positive`` for ``recall=0.95``);
      * ``threshold_ood_positive``: that t.

    Example:
      ood_metrics_at_recall(scores_in, scores_out)["auroc"]
    """
    recall = _check_recall(recall)
    in_asc = np.sort(_as_scores(scores_in, "scores_in"))
    out_asc = np.sort(_as_scores(scores_out, "scores_out"))
    fpr, t = _fpr_at_recall(in_asc, out_asc, recall)
    fpr_o, t_o = _fpr_at_recall(-out_asc[::-1], -in_asc[::-1], recall)
    return {
        "fpr": float(fpr),
        "threshold": t,
        "fpr_ood_positive": float(fpr_o),
        "threshold_ood_positive": -t_o,
    }


def roc_curve_points(scores_in, scores_out):
    """ROC curve with ID as the positive class.

    Same output as ``sklearn.metrics.roc_curve(is_in, score,
    drop_intermediate=False)``: one point per distinct score, thresholds
    decreasing, preceded by the point (0, 0) at threshold ``+inf``. A sample is
    predicted ID when ``score >= threshold``.

    Returns:
      ``(fpr, tpr, thresholds)``, float64 arrays of equal length.

    Example:
      fpr, tpr = roc_curve_points(scores_in, scores_out)
    """
    in_asc = np.sort(_as_scores(scores_in, "scores_in"))
    out_asc = np.sort(_as_scores(scores_out, "scores_out"))
    thresholds, tps, fps = _counts(in_asc, out_asc)
    fpr = np.concatenate([[0.0], fps / out_asc.size])
    tpr = np.concatenate([[0.0], tps / in_asc.size])
    return fpr, tpr, np.concatenate([[np.inf], thresholds])


def subsampled_ood_metrics(
    scores_in, scores_out, *, num_draws: int = 10, ood_fraction: float = 0.2, seed=0
) -> dict:
    """The Outlier Exposure protocol: all ID scores against random OOD subsets.

    Each of ``num_draws`` draws takes ``n = floor(len(scores_in) * ood_fraction)``
    OOD scores (at least 1, at most ``len(scores_out)``) without replacement,
    ``rng.choice(len(scores_out), size=n, replace=False)`` with
    ``rng = numpy.random.default_rng(seed)``, and computes `ood_metrics`
    against all ID scores.

    Returns:
      ``{key: {"mean": float, "std": float} for key in METRIC_KEYS}`` (population
      std, ddof=0, over the draws) plus ``"num_ood": n``.

    Example:
      subsampled_ood_metrics(scores_in, scores_out, num_draws=10)["auroc"]  # mean and std
    """
    num_draws = int(num_draws)
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}")
    ood_fraction = float(ood_fraction)
    if not (ood_fraction > 0.0 and math.isfinite(ood_fraction)):
        raise ValueError(f"ood_fraction must be a positive number, got {ood_fraction}")
    s_in = _as_scores(scores_in, "scores_in")
    s_out = _as_scores(scores_out, "scores_out")

    n = min(max(int(math.floor(s_in.size * ood_fraction)), 1), s_out.size)
    rng = np.random.default_rng(seed)
    in_asc = np.sort(s_in)
    values = {key: [] for key in METRIC_KEYS}
    for _ in range(num_draws):
        idx = rng.choice(s_out.size, size=n, replace=False)
        m = _metrics_sorted(in_asc, np.sort(s_out[idx]))
        for key in METRIC_KEYS:
            values[key].append(m[key])
    result: dict = {
        key: spread(v) for key, v in values.items()
    }
    result["num_ood"] = n
    return result


def spread(values) -> dict:
    """``{"mean", "std"}`` of `values` as floats, with the population std (numpy's default):
    the one rule for every mean ± std over seeds, runs or subsamples in ice-tf.

    Example:
      spread([0.8, 0.9])  # {"mean": 0.85, "std": 0.05} (to rounding)
    """
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def mean_over_sets(per_set: Mapping[str, Mapping]) -> dict:
    """Averages each metric over OOD sets, e.g. ``{"svhn": {...}, "lsun": {...}}``.

    Works on the output of `ood_metrics` (floats) and of
    `subsampled_ood_metrics` (``{"mean", "std"}`` dicts, whose means are
    averaged). Returns ``{key: float}`` over the metric keys of the first set,
    in its order; ``"num_ood"`` is not a metric and is left out. Every set must
    have the same metric keys.

    Example:
      mean_over_sets({"svhn": svhn_metrics, "lsun": lsun_metrics})["auroc"]
    """
    if not per_set:
        raise ValueError("per_set is empty; need at least one OOD set")
    names = list(per_set)
    keys = [k for k in per_set[names[0]] if k != "num_ood"]
    for name in names[1:]:
        other = [k for k in per_set[name] if k != "num_ood"]
        if set(other) != set(keys):
            raise ValueError(
                f"OOD set {name!r} has metrics {sorted(other)}, but {names[0]!r} has {sorted(keys)}"
            )
    result = {}
    for key in keys:
        vals = []
        for name in names:
            v = per_set[name][key]
            if isinstance(v, Mapping):
                if "mean" not in v:
                    raise ValueError(f"per_set[{name!r}][{key!r}] is a dict without a 'mean' entry")
                v = v["mean"]
            vals.append(float(v))
        result[key] = float(np.mean(vals))
    return result


def accuracy(labels, predictions_or_logits) -> float:
    """Top-1 accuracy in [0, 1].

    Args:
      labels: 1-D integer class labels.
      predictions_or_logits: 1-D integer predicted classes, or 2-D
        ``(n, num_classes)`` logits/probabilities (argmax over the last axis).

    Example:
      accuracy(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]))  # 1.0
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D integer class labels, got shape {y.shape}")
    if y.size == 0:
        raise ValueError("labels is empty")
    p = np.asarray(predictions_or_logits)
    if p.ndim == 2:
        if p.shape[1] == 0:
            raise ValueError("predictions_or_logits has zero classes")
        if not np.isfinite(p).all():
            raise ValueError(
                f"predictions_or_logits contains {int((~np.isfinite(p)).sum())} non-finite value(s)"
            )
        p = np.argmax(p, axis=-1)
    elif p.ndim != 1:
        raise ValueError(
            "predictions_or_logits must be 1-D class predictions or 2-D (n, num_classes) scores, "
            f"got shape {p.shape}"
        )
    if p.shape[0] != y.shape[0]:
        raise ValueError(
            f"labels and predictions_or_logits have different lengths: {y.shape[0]} != {p.shape[0]}"
        )
    for arr, name in ((y, "labels"), (p, "predictions_or_logits")):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)) \
                    or not np.all(arr == np.round(arr)):
                raise ValueError(f"{name} must hold integer class indices")
    return float(np.mean(y.astype(np.int64) == p.astype(np.int64)))
