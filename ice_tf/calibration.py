"""Calibration of an in-distribution confidence read as P(in-distribution).

ICE's detector exp(max_i h_i(z)) ∈ (0, 1] (Eq. 0.11) is trained as a probability:
Eq. (0.14) is the log loss -log exp(h_y) of an in-distribution sample and Eq. (0.13)
the log loss -log(1 - exp(max h)) of an outlier, so the paper reads it as a
"direct estimation of detection confidence". These functions measure how well a
confidence c ∈ [0, 1] matches the observed in-distribution frequency on a labelled
mixture of in-distribution (is_in = 1) and OOD (is_in = 0) samples.

Binning (Naeini et al. 2015; Guo et al. 2017): `num_bins` equal-width bins on [0, 1]
with edges k / num_bins. Bin k holds edges[k] <= c < edges[k + 1]; the LAST bin is
closed, [edges[-2], 1], so c = 1 falls in it, and c = 0 falls in the first bin.
(Guo et al.'s reference code uses (lo, hi] bins, which drop c = 0 altogether.)

  ECE   = Σ_k (n_k / N) |freq_k - conf_k|    (weighted by bin counts; empty bins add 0)
  MCE   = max over non-empty bins of |freq_k - conf_k|
  Brier = mean_j (c_j - is_in_j)^2

where conf_k is the mean confidence and freq_k the fraction of in-distribution
samples in bin k. Pure numpy, float64.

Example:
  >>> import numpy as np
  >>> c = np.array([0.1, 0.1, 0.9, 0.9]); y = np.array([0, 0, 1, 0])
  >>> round(expected_calibration_error(c, y, num_bins=10), 4)  # (2*0.1 + 2*0.4) / 4
  0.25
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np


class ReliabilityBins(NamedTuple):
    """Per-bin statistics of a reliability diagram (arrays of length num_bins).

    `mean_confidence` and `frequency` are NaN for empty bins.

    Example:
      bins = reliability_bins(confidence, is_in)
      print(bins.frequency[bins.count > 0])
    """

    edges: np.ndarray            # (num_bins + 1,) bin edges, 0 ... 1
    count: np.ndarray            # (num_bins,) samples per bin
    count_in: np.ndarray         # (num_bins,) in-distribution samples per bin
    mean_confidence: np.ndarray  # (num_bins,) mean confidence of the bin
    frequency: np.ndarray        # (num_bins,) observed in-distribution frequency

    def to_dict(self):
        """JSON-ready lists (None for the NaNs of empty bins)."""
        def listed(values):
            return [None if np.isnan(v) else float(v) for v in values]

        return {
            "edges": [float(e) for e in self.edges],
            "count": [int(n) for n in self.count],
            "count_in": [int(n) for n in self.count_in],
            "mean_confidence": listed(self.mean_confidence),
            "frequency": listed(self.frequency),
        }


def _check_num_bins(num_bins):
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}.")
    return int(num_bins)


def validate(confidence, is_in):
    """(confidence, is_in) as float64 arrays of shape (N,), N >= 1, or a ValueError.

    confidence must be finite and in [0, 1]; is_in must hold only 0/1 (or booleans).

    Example:
      confidence, is_in = validate([0.9, 0.2], [True, False])
    """
    confidence = np.asarray(confidence)
    is_in = np.asarray(is_in)
    if confidence.ndim != 1 or is_in.ndim != 1:
        raise ValueError(
            f"confidence and is_in must be 1-D arrays, got shapes {confidence.shape} and {is_in.shape}."
        )
    if confidence.shape != is_in.shape:
        raise ValueError(
            f"confidence and is_in must have the same length, got {len(confidence)} and {len(is_in)}."
        )
    if confidence.size == 0:
        raise ValueError("confidence and is_in are empty; calibration needs at least one sample.")
    if not (np.issubdtype(confidence.dtype, np.number) or confidence.dtype == bool):
        raise ValueError(f"confidence must be numeric, got dtype {confidence.dtype}.")
    if not (np.issubdtype(is_in.dtype, np.number) or is_in.dtype == bool):
        raise ValueError(f"is_in must be numeric or boolean, got dtype {is_in.dtype}.")
    confidence = confidence.astype(np.float64)
    is_in = is_in.astype(np.float64)
    if not np.all(np.isfinite(confidence)):
        raise ValueError("confidence contains NaN or infinite values.")
    if confidence.min() < 0.0 or confidence.max() > 1.0:
        raise ValueError(
            f"confidence must lie in [0, 1], got values in [{confidence.min()}, {confidence.max()}]."
        )
    if not np.all((is_in == 0.0) | (is_in == 1.0)):
        raise ValueError("is_in must hold only 0 (OOD) and 1 (in-distribution).")
    return confidence, is_in


def bin_edges(num_bins=15):
    """Edges k / num_bins, k = 0..num_bins, each the correctly rounded quotient
    (np.linspace's k * (1 / num_bins) misses some of them by an ulp).

    Example:
      bin_edges(4)  # array([0., 0.25, 0.5, 0.75, 1.])
    """
    num_bins = _check_num_bins(num_bins)
    return np.arange(num_bins + 1) / num_bins


def bin_index(confidence, num_bins=15):
    """Bin of each confidence: k with edges[k] <= c < edges[k + 1]; c = 1 goes to the last bin.

    Example:
      bin_index(np.array([0.0, 0.3, 1.0]), num_bins=4)  # array([0, 1, 3])
    """
    num_bins = _check_num_bins(num_bins)
    edges = bin_edges(num_bins)
    # searchsorted against the same edges array as the definition, so a value on an
    # edge lands exactly where `edges[k] <= c` says (no c * num_bins rounding).
    index = np.searchsorted(edges, np.asarray(confidence, np.float64), side="right") - 1
    return np.clip(index, 0, num_bins - 1)


def reliability_bins(confidence, is_in, num_bins=15):
    """Per-bin count, mean confidence and observed in-distribution frequency.

    Example:
      bins = reliability_bins(confidence, is_in, num_bins=15)
    """
    num_bins = _check_num_bins(num_bins)
    confidence, is_in = validate(confidence, is_in)
    index = bin_index(confidence, num_bins)
    count = np.bincount(index, minlength=num_bins)
    sum_confidence = np.bincount(index, weights=confidence, minlength=num_bins)
    count_in = np.bincount(index, weights=is_in, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.where(count > 0, sum_confidence / count, np.nan)
        frequency = np.where(count > 0, count_in / count, np.nan)
    return ReliabilityBins(
        edges=bin_edges(num_bins),
        count=count.astype(np.int64),
        count_in=np.rint(count_in).astype(np.int64),
        mean_confidence=mean_confidence,
        frequency=frequency,
    )


def _gaps(bins):
    filled = bins.count > 0
    return np.abs(bins.frequency[filled] - bins.mean_confidence[filled]), bins.count[filled]


def expected_calibration_error(confidence, is_in, num_bins=15):
    """ECE = Σ_k (n_k / N) |freq_k - conf_k| over equal-width bins (last bin closed).

    Example:
      expected_calibration_error(np.array([0.9, 0.1]), np.array([True, False]))
    """
    gaps, counts = _gaps(reliability_bins(confidence, is_in, num_bins))
    return float(np.sum(counts * gaps) / np.sum(counts))


def maximum_calibration_error(confidence, is_in, num_bins=15):
    """MCE = max over non-empty bins of |freq_k - conf_k|.

    Example:
      maximum_calibration_error(confidence, is_in, num_bins=15)
    """
    gaps, _ = _gaps(reliability_bins(confidence, is_in, num_bins))
    return float(gaps.max())


def brier_score(confidence, is_in):
    """Mean squared error of the confidence as a probability of is_in = 1.

    Example:
      brier_score(np.array([1.0, 0.0]), np.array([True, False]))  # 0.0
    """
    confidence, is_in = validate(confidence, is_in)
    return float(np.mean((confidence - is_in) ** 2))


def calibration_metrics(confidence, is_in, num_bins=15):
    """ECE, MCE, Brier, sample counts, base rate and mean confidences (ID / OOD), as a dict.

    Example:
      calibration_metrics(confidence, is_in)  # {"ece": ..., "mce": ..., "brier": ...}
    """
    confidence, is_in = validate(confidence, is_in)
    bins = reliability_bins(confidence, is_in, num_bins)
    gaps, counts = _gaps(bins)
    inside = is_in == 1.0

    def mean_or_none(values):
        return float(values.mean()) if values.size else None

    return {
        "ece": float(np.sum(counts * gaps) / np.sum(counts)),
        "mce": float(gaps.max()),
        "brier": float(np.mean((confidence - is_in) ** 2)),
        "num_bins": int(len(bins.count)),
        "num_samples": int(len(confidence)),
        "num_in": int(inside.sum()),
        "num_out": int((~inside).sum()),
        "base_rate": float(inside.mean()),
        "mean_confidence_in": mean_or_none(confidence[inside]),
        "mean_confidence_out": mean_or_none(confidence[~inside]),
    }


# ------------------------------------------------------------- test mixtures
def _split_evenly(total, capacities):
    """Integers summing to `total`, as equal as the capacities allow (water-filling).

    Sets with room share the remainder; leftover units go to the earliest sets.
    """
    capacities = np.asarray(capacities, np.int64)
    shares = np.zeros_like(capacities)
    remaining = int(total)
    while remaining > 0:
        open_sets = np.flatnonzero(shares < capacities)
        if open_sets.size == 0:
            raise ValueError(f"cannot place {total} samples in sets of sizes {capacities.tolist()}.")
        room = capacities[open_sets] - shares[open_sets]
        each = remaining // open_sets.size
        if each == 0:  # fewer units than open sets: one each to the first ones
            shares[open_sets[:remaining]] += 1
            break
        add = np.minimum(room, each)
        shares[open_sets] += add
        remaining -= int(add.sum())
    return shares


def mixture_indices(num_in, num_out_by_set, ood_fraction=0.5, seed=0):
    """Which samples form the mixed in/out calibration set.

    The largest mixture whose OOD fraction is `ood_fraction` (to rounding) using
    at most every in-distribution sample and at most each OOD set: by default all
    `num_in` in-distribution samples plus round(num_in · f / (1 - f)) OOD samples
    split as evenly across the OOD sets as their sizes allow; when the OOD sets
    together are too small, in-distribution samples are subsampled instead. Draws
    are without replacement and fixed by `seed`; indices are sorted.

    Args:
      num_in: number of in-distribution samples available.
      num_out_by_set: mapping label -> number of samples in that OOD set.
      ood_fraction: f ∈ (0, 1), the share of OOD samples in the mixture (0.5: base rate 50%).
      seed: seed of the draws.

    Returns:
      (in_indices, {label: out_indices}).

    Example:
      in_index, out_index = mixture_indices(1000, {"svhn": 500, "noise": 500})
    """
    if not isinstance(num_out_by_set, Mapping) or not num_out_by_set:
        raise ValueError("num_out_by_set must be a non-empty mapping label -> set size.")
    if not 0.0 < float(ood_fraction) < 1.0:
        raise ValueError(f"ood_fraction must lie strictly between 0 and 1, got {ood_fraction}.")
    sizes = {label: int(n) for label, n in num_out_by_set.items()}
    if int(num_in) < 1 or min(sizes.values()) < 0 or sum(sizes.values()) < 1:
        raise ValueError(
            f"need at least one in-distribution and one OOD sample, got {num_in} and {sizes}."
        )
    odds = ood_fraction / (1.0 - ood_fraction)
    total_out = sum(sizes.values())
    wanted_out = max(1, int(round(num_in * odds)))
    if wanted_out <= total_out:
        use_in, use_out = int(num_in), wanted_out
    else:
        use_out = total_out
        use_in = min(int(num_in), max(1, int(round(total_out / odds))))
    shares = _split_evenly(use_out, list(sizes.values()))
    rng = np.random.default_rng(seed)

    def draw(available, count):
        if count == available:
            return np.arange(available)
        return np.sort(rng.choice(available, size=count, replace=False))

    in_indices = draw(int(num_in), use_in)
    out_indices = {label: draw(sizes[label], int(share)) for label, share in zip(sizes, shares)}
    return in_indices, out_indices


def mixture(confidence_in, confidence_out_by_set, ood_fraction=0.5, seed=0):
    """(confidence, is_in) of the mixture that `mixture_indices` defines, ID samples first.

    Example:
      confidence, is_in = mixture(conf_in, {"svhn": conf_svhn}, ood_fraction=0.5)
    """
    confidence_in = np.asarray(confidence_in)
    outs = {label: np.asarray(values) for label, values in confidence_out_by_set.items()}
    in_indices, out_indices = mixture_indices(
        len(confidence_in), {label: len(v) for label, v in outs.items()}, ood_fraction, seed
    )
    parts = [confidence_in[in_indices], *(outs[label][out_indices[label]] for label in outs)]
    confidence = np.concatenate(parts).astype(np.float64)
    is_in = np.zeros(len(confidence), np.int64)
    is_in[: len(in_indices)] = 1
    return confidence, is_in


def temperature_confidence(max_h, temperature=1.0):
    """exp(max h / T) ∈ (0, 1]: ICE's confidence (Eq. 0.11) with a temperature T > 0.

    T = 1 is the paper's exp(max h); T > 1 raises every confidence, T < 1 lowers it. The
    order of the inputs, and so AUROC, is the same for every T.

    Example:
      temperature_confidence(np.array([0.0, -1.0]), 2.0)  # [1.0, 0.6065]
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}.")
    return np.exp(np.minimum(np.asarray(max_h, np.float64), 0.0) / float(temperature))


def _balanced_log_loss(max_h_in, max_h_out, temperature):
    log_c_in = np.minimum(max_h_in, 0.0) / temperature
    # log(1 - exp(t)) for t <= 0, finite at t = 0 through the clamp.
    t_out = np.minimum(np.minimum(max_h_out, 0.0) / temperature, -1e-12)
    log_not_out = np.where(t_out > -0.693, np.log(-np.expm1(t_out)), np.log1p(-np.exp(t_out)))
    return -0.5 * (log_c_in.mean() + log_not_out.mean())


def _checked_scores(max_h_in, max_h_out, fitter):
    """max h of the in-distribution and outlier samples as flat float64 arrays, refused
    (naming `fitter`) when either side is empty or not finite."""
    max_h_in = np.asarray(max_h_in, np.float64).reshape(-1)
    max_h_out = np.asarray(max_h_out, np.float64).reshape(-1)
    if not len(max_h_in) or not len(max_h_out):
        raise ValueError(f"{fitter} needs in-distribution and outlier scores.")
    if not (np.all(np.isfinite(max_h_in)) and np.all(np.isfinite(max_h_out))):
        raise ValueError(f"{fitter} needs finite scores max h.")
    return max_h_in, max_h_out


def fit_temperature(max_h_in, max_h_out, bounds=(1e-3, 1e3)):
    """The temperature T that makes exp(max h / T) a calibrated P(in-distribution).

    Minimises the class-balanced log loss -½[mean log c(in) + mean log(1 - c(out))] of
    c = exp(max h / T) over in-distribution and outlier samples (the two halves of
    Eqs. 0.13-0.14, so T = 1 is what training optimises), in float64: a log-spaced grid
    over `bounds`, then golden-section refinement. Fit it on validation images and
    validation outliers, never on the test sets.

    Example:
      T = fit_temperature(max_h_val_in, max_h_val_outliers)
      confidence = temperature_confidence(max_h_test, T)
    """
    max_h_in, max_h_out = _checked_scores(max_h_in, max_h_out, "fit_temperature")
    grid = np.exp(np.linspace(np.log(bounds[0]), np.log(bounds[1]), 121))
    losses = [_balanced_log_loss(max_h_in, max_h_out, t) for t in grid]
    best = int(np.argmin(losses))
    low, high = np.log(grid[max(best - 1, 0)]), np.log(grid[min(best + 1, len(grid) - 1)])
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(60):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if _balanced_log_loss(max_h_in, max_h_out, np.exp(a)) < _balanced_log_loss(
                max_h_in, max_h_out, np.exp(b)):
            high = b
        else:
            low = a
    return float(np.exp((low + high) / 2.0))


def platt_confidence(max_h, slope, offset):
    """σ(a · max h + b) ∈ (0, 1): Platt's map of ICE's score (Eq. 0.11) to a confidence.

    Two parameters where the temperature has one: a (> 0) sets how fast the confidence
    falls with max h and b where it crosses ½, so it can be low on outliers whose max h
    is only moderately below that of in-distribution images. Monotone in max h: AUROC is
    that of max h.

    Example:
      platt_confidence(np.array([0.0, -5.0]), 1.0, 2.0)  # [0.881, 0.0474]
    """
    if not slope > 0:
        raise ValueError(f"slope must be > 0, got {slope!r}.")
    x = float(slope) * np.asarray(max_h, np.float64) + float(offset)
    return np.exp(-np.logaddexp(0.0, -x))


def fit_platt(max_h_in, max_h_out):
    """(a, b) of Platt's map σ(a · max h + b) as a calibrated P(in-distribution).

    Minimises the class-balanced log loss -½[mean log c(in) + mean log(1 - c(out))] (the
    loss `fit_temperature` minimises, Eqs. 0.13-0.14, with two parameters), in float64
    with L-BFGS on (log a, b) from the standardised scores. Fit it on validation images
    and validation outliers, never on the test sets.

    Example:
      a, b = fit_platt(max_h_val_in, max_h_val_outliers)
      confidence = platt_confidence(max_h_test, a, b)
    """
    from scipy import optimize

    max_h_in, max_h_out = _checked_scores(max_h_in, max_h_out, "fit_platt")
    both = np.concatenate([max_h_in, max_h_out])
    centre, spread = both.mean(), max(both.std(), 1e-12)
    u_in, u_out = (max_h_in - centre) / spread, (max_h_out - centre) / spread

    def loss_and_gradient(params):
        log_a, b = params
        a = np.exp(log_a)
        x_in, x_out = a * u_in + b, a * u_out + b
        # -log σ(x) = logaddexp(0, -x); -log(1 - σ(x)) = logaddexp(0, x).
        loss = 0.5 * (np.logaddexp(0.0, -x_in).mean() + np.logaddexp(0.0, x_out).mean())
        g_in = -0.5 * np.exp(-np.logaddexp(0.0, x_in)) / len(u_in)    # d/dx_in = -(1 - σ)/2n
        g_out = 0.5 * np.exp(-np.logaddexp(0.0, -x_out)) / len(u_out)  # d/dx_out = σ/2n
        gradient = np.array([a * (g_in @ u_in + g_out @ u_out), g_in.sum() + g_out.sum()])
        return loss, gradient

    result = optimize.minimize(loss_and_gradient, np.array([0.0, 0.0]), jac=True,
                               method="L-BFGS-B", bounds=[(-20.0, 20.0), (-1e3, 1e3)])
    a = float(np.exp(result.x[0])) / spread
    return a, float(result.x[1] - a * centre)


__all__ = [
    "fit_temperature", "temperature_confidence", "fit_platt", "platt_confidence",
    "ReliabilityBins",
    "validate",
    "bin_edges",
    "bin_index",
    "reliability_bins",
    "expected_calibration_error",
    "maximum_calibration_error",
    "brier_score",
    "calibration_metrics",
    "mixture_indices",
    "mixture",
]
