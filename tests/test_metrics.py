"""Tests for ice_tf.metrics (pure numpy; scikit-learn is used only as a reference)."""

from __future__ import annotations

import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from ice_tf import metrics
from ice_tf.metrics import (
    METRIC_KEYS,
    accuracy,
    mean_over_sets,
    ood_metrics,
    ood_metrics_at_recall,
    roc_curve_points,
    subsampled_ood_metrics,
)


# --------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------


def sklearn_metrics(s_in, s_out):
    s_in, s_out = np.asarray(s_in, float), np.asarray(s_out, float)
    score = np.concatenate([s_in, s_out])
    is_in = np.r_[np.ones(s_in.size, int), np.zeros(s_out.size, int)]
    return {
        "auroc": roc_auc_score(is_in, score),
        "aupr_in": average_precision_score(is_in, score),
        "aupr_out": average_precision_score(1 - is_in, -score),
    }


def brute_fpr_at_recall(pos, neg, recall=Fraction(95, 100)):
    """Loops over every candidate threshold; exact rational comparison.

    t* = the largest t with #{pos >= t} / n_pos >= recall; returns #{neg >= t*} / n_neg.
    """
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    best = None
    for t in np.unique(np.concatenate([pos, neg])):
        if Fraction(int((pos >= t).sum()), pos.size) >= recall:
            if best is None or t > best:
                best = t
    assert best is not None
    return float((neg >= best).sum() / neg.size)


def brute_both(s_in, s_out):
    s_in, s_out = np.asarray(s_in, float), np.asarray(s_out, float)
    # ID positive on the score; OOD positive on -score (score <= t flagged OOD).
    return brute_fpr_at_recall(s_in, s_out), brute_fpr_at_recall(-s_out, -s_in)


# --------------------------------------------------------------------------
# Hand-worked examples
# --------------------------------------------------------------------------


def test_hand_worked_no_ties():
    s_in = [0.9, 0.8, 0.5, 0.2]
    s_out = [0.7, 0.4, 0.3, 0.1]
    # Descending: 0.9 I, 0.8 I, 0.7 O, 0.5 I, 0.4 O, 0.3 O, 0.2 I, 0.1 O.
    # AUROC: ID 0.9 beats 4 OOD, 0.8 beats 4, 0.5 beats 3, 0.2 beats 1 -> 12/16.
    # AUPR-In: ID hits at ranks 1, 2, 4, 7 -> precisions 1, 1, 3/4, 4/7;
    #   AP = (1 + 1 + 3/4 + 4/7) / 4 = 93/112.
    # AUPR-Out: ascending order (= descending -score): O I O O I O I I;
    #   OOD hits at ranks 1, 3, 4, 6 -> precisions 1, 2/3, 3/4, 4/6;
    #   AP = (1 + 2/3 + 3/4 + 2/3) / 4 = 37/48.
    # FPR95 (ID positive): ceil(0.95 * 4) = 4 ID accepted -> t = 0.2;
    #   OOD >= 0.2: 0.7, 0.4, 0.3 -> 3/4.
    # FPR95 (OOD positive): all 4 OOD flagged -> t = 0.7;
    #   ID <= 0.7: 0.5, 0.2 -> 2/4.
    m = ood_metrics(s_in, s_out)
    assert list(m) == list(METRIC_KEYS)
    assert all(type(v) is float for v in m.values())
    assert m["auroc"] == pytest.approx(12 / 16, abs=1e-15)
    assert m["aupr_in"] == pytest.approx(93 / 112, abs=1e-15)
    assert m["aupr_out"] == pytest.approx(37 / 48, abs=1e-15)
    assert m["fpr95"] == 0.75
    assert m["fpr95_ood_positive"] == 0.5
    ref = sklearn_metrics(s_in, s_out)
    for k, v in ref.items():
        assert m[k] == pytest.approx(v, abs=1e-12)


def test_hand_worked_with_ties():
    s_in = [0.9, 0.5, 0.5, 0.2]
    s_out = [0.5, 0.4, 0.2, 0.1]
    # Groups by score: 0.9 {I}, 0.5 {I, I, O}, 0.4 {O}, 0.2 {I, O}, 0.1 {O}.
    # AUROC: 0.9 -> 4; each ID 0.5 -> 3 wins + 1/2 tie = 3.5; ID 0.2 -> 1 win + 1/2;
    #   (4 + 7 + 1.5) / 16 = 12.5/16.
    # AUPR-In over distinct thresholds (tp, fp): 0.9 (1, 0), 0.5 (3, 1), 0.4 (3, 2),
    #   0.2 (4, 3), 0.1 (4, 4); AP = 1/4 * 1 + 2/4 * 3/4 + 1/4 * 4/7 = 43/56.
    # AUPR-Out, thresholds on -score, i.e. score ascending (tp = OOD, fp = ID):
    #   0.1 (1, 0), 0.2 (2, 1), 0.4 (3, 1), 0.5 (4, 3), 0.9 (4, 4);
    #   AP = 1/4 * (1 + 2/3 + 3/4 + 4/7) = 251/336.
    # FPR95 (ID positive): 4 ID accepted -> t = 0.2; OOD >= 0.2 (the tied 0.2 OOD
    #   counts as accepted): 0.5, 0.4, 0.2 -> 3/4.
    # FPR95 (OOD positive): 4 OOD flagged -> t = 0.5; ID <= 0.5 (both tied 0.5 ID
    #   count as flagged): 0.5, 0.5, 0.2 -> 3/4.
    m = ood_metrics(s_in, s_out)
    assert m["auroc"] == pytest.approx(12.5 / 16, abs=1e-15)
    assert m["aupr_in"] == pytest.approx(43 / 56, abs=1e-15)
    assert m["aupr_out"] == pytest.approx(251 / 336, abs=1e-15)
    assert m["fpr95"] == 0.75
    assert m["fpr95_ood_positive"] == 0.75
    ref = sklearn_metrics(s_in, s_out)
    for k, v in ref.items():
        assert m[k] == pytest.approx(v, abs=1e-12)


def test_fpr95_first_reaches_95_percent():
    # 20 ID scores 1..20: 19 of them (95%) are >= 2, so t = 2 and the ID score 1
    # is rejected. OOD scores >= 2: 2 (tie, accepted) and 2.5 -> 2/5.
    s_in = np.arange(1.0, 21.0)
    s_out = np.array([0.0, 1.5, 2.0, 2.5, 1.0])
    m = ood_metrics(s_in, s_out)
    assert m["fpr95"] == pytest.approx(2 / 5)
    r = ood_metrics_at_recall(s_in, s_out, 0.95)
    assert r["threshold"] == 2.0 and r["fpr"] == m["fpr95"]
    # 21 ID scores 1..21: 0.95 * 21 = 19.95 -> 20 must be accepted, t = 2 again
    # (19 accepted would only be 90.5%).
    m21 = ood_metrics(np.arange(1.0, 22.0), s_out)
    assert m21["fpr95"] == pytest.approx(2 / 5)
    # 21 ID scores 0..20: the 20th largest is 1 -> OOD 1.0, 1.5, 2.0, 2.5 accepted.
    assert ood_metrics(np.arange(0.0, 21.0), s_out)["fpr95"] == pytest.approx(4 / 5)
    # 100 ID scores: exactly 95 accepted (robust to 0.95 * 100 rounding).
    s100 = np.arange(100.0)
    r = ood_metrics_at_recall(s100, [4.5, 5.0, 5.5], 0.95)
    assert r["threshold"] == 5.0 and r["fpr"] == pytest.approx(2 / 3)


def test_both_fpr95_conventions_differ():
    # ID scores are well spread; the OOD scores are concentrated except one
    # outlier with a very high score.
    s_in = np.linspace(0.0, 1.0, 20)  # 0, 1/19, ..., 1
    s_out = np.array([-1.0, -0.9, -0.8, 0.03, 0.9])
    # ID positive: 19 of 20 ID accepted -> t = 1/19 ~ 0.0526; OOD >= t: 0.9 -> 1/5.
    # OOD positive: ceil(0.95 * 5) = 5 -> every OOD flagged, t = 0.9;
    #   ID <= 0.9: 0, 1/19, ..., 17/19 -> 18 of 20.
    m = ood_metrics(s_in, s_out)
    assert m["fpr95"] == pytest.approx(1 / 5)
    assert m["fpr95_ood_positive"] == pytest.approx(18 / 20)
    assert brute_both(s_in, s_out) == pytest.approx((m["fpr95"], m["fpr95_ood_positive"]))
    r = ood_metrics_at_recall(s_in, s_out)
    assert r["threshold_ood_positive"] == 0.9
    assert r["fpr_ood_positive"] == m["fpr95_ood_positive"]


def test_perfect_and_reversed_separation():
    s_in = np.array([5.0, 6.0, 7.0, 8.0])
    s_out = np.array([1.0, 2.0, 3.0])
    m = ood_metrics(s_in, s_out)
    assert m == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0,
                 "fpr95_ood_positive": 0.0}
    r = ood_metrics(s_out, s_in)  # roles swapped: ID scored lower than OOD
    assert r["auroc"] == 0.0
    assert r["fpr95"] == 1.0 and r["fpr95_ood_positive"] == 1.0
    # All scores equal: chance level with every tie counted against the detector.
    t = ood_metrics([1.0, 1.0], [1.0, 1.0, 1.0])
    assert t["auroc"] == 0.5 and t["fpr95"] == 1.0 and t["fpr95_ood_positive"] == 1.0
    assert t["aupr_in"] == pytest.approx(2 / 5) and t["aupr_out"] == pytest.approx(3 / 5)


def test_single_samples():
    assert ood_metrics([1.0], [0.0])["fpr95"] == 0.0
    assert ood_metrics([0.0], [1.0])["auroc"] == 0.0


def test_list_and_float32_inputs():
    rng = np.random.default_rng(3)
    a = rng.normal(size=50).astype(np.float32)
    b = rng.normal(size=40).astype(np.float32)
    assert ood_metrics(a, b) == ood_metrics(a.tolist(), b.astype(np.float64).tolist())


# --------------------------------------------------------------------------
# Against scikit-learn and brute force on random data
# --------------------------------------------------------------------------


@pytest.mark.parametrize("decimals", [None, 1, 0])
@pytest.mark.parametrize("seed", range(8))
def test_random_against_sklearn_and_brute_force(seed, decimals):
    rng = np.random.default_rng(seed)
    n_in, n_out = rng.integers(1, 120, size=2)
    s_in = rng.normal(0.8, 1.0, size=n_in)
    s_out = rng.normal(0.0, 1.2, size=n_out)
    if decimals is not None:  # heavy ties
        s_in, s_out = np.round(s_in, decimals), np.round(s_out, decimals)
    m = ood_metrics(s_in, s_out)
    ref = sklearn_metrics(s_in, s_out)
    for k, v in ref.items():
        assert m[k] == pytest.approx(v, rel=1e-12, abs=1e-12), k
    fpr, fpr_o = brute_both(s_in, s_out)
    assert m["fpr95"] == fpr
    assert m["fpr95_ood_positive"] == fpr_o
    assert all(0.0 <= v <= 1.0 for v in m.values())


@pytest.mark.parametrize("decimals", [None, 1])
def test_roc_curve_points_matches_sklearn(decimals):
    rng = np.random.default_rng(11)
    s_in, s_out = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 200)
    if decimals is not None:
        s_in, s_out = np.round(s_in, decimals), np.round(s_out, decimals)
    fpr, tpr, thr = roc_curve_points(s_in, s_out)
    is_in = np.r_[np.ones(s_in.size), np.zeros(s_out.size)]
    rf, rt, rth = roc_curve(is_in, np.concatenate([s_in, s_out]), drop_intermediate=False)
    np.testing.assert_allclose(fpr, rf, rtol=0, atol=1e-15)
    np.testing.assert_allclose(tpr, rt, rtol=0, atol=1e-15)
    assert thr[0] == np.inf
    np.testing.assert_array_equal(thr[1:], rth[1:])
    # The curve integrates to the AUROC.
    assert np.trapezoid(tpr, fpr) == pytest.approx(ood_metrics(s_in, s_out)["auroc"])


def test_recall_helper_matches_brute_force_at_other_levels():
    rng = np.random.default_rng(5)
    s_in = np.round(rng.normal(1, 1, 73), 1)
    s_out = np.round(rng.normal(0, 1, 41), 1)
    for recall in (0.5, 0.8, 0.9, 0.99, 1.0):
        r = ood_metrics_at_recall(s_in, s_out, recall)
        frac = Fraction(recall).limit_denominator(1000)
        assert r["fpr"] == brute_fpr_at_recall(s_in, s_out, frac)
        assert r["fpr_ood_positive"] == brute_fpr_at_recall(-s_out, -s_in, frac)
        assert np.mean(s_in >= r["threshold"]) >= recall
        assert np.mean(s_out <= r["threshold_ood_positive"]) >= recall
    with pytest.raises(ValueError, match="recall"):
        ood_metrics_at_recall(s_in, s_out, 0.0)
    with pytest.raises(ValueError, match="recall"):
        ood_metrics_at_recall(s_in, s_out, 1.5)


def test_large_input_is_fast():
    rng = np.random.default_rng(0)
    s_in = rng.normal(1, 1, 100_000)
    s_out = np.round(rng.normal(0, 1, 100_000), 2)
    start = time.perf_counter()
    m = ood_metrics(s_in, s_out)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0
    ref = sklearn_metrics(s_in, s_out)
    for k, v in ref.items():
        assert m[k] == pytest.approx(v, rel=1e-9), k


# --------------------------------------------------------------------------
# Subsampling protocol and averaging
# --------------------------------------------------------------------------


def test_subsampled_protocol():
    rng = np.random.default_rng(1)
    s_in = rng.normal(1, 1, 103)
    s_out = rng.normal(0, 1, 500)
    res = subsampled_ood_metrics(s_in, s_out, num_draws=4, ood_fraction=0.2, seed=7)
    assert set(res) == set(METRIC_KEYS) | {"num_ood"}
    assert res["num_ood"] == 20  # floor(103 * 0.2)
    for k in METRIC_KEYS:
        assert set(res[k]) == {"mean", "std"}
        assert type(res[k]["mean"]) is float and type(res[k]["std"]) is float

    # Manual computation with the documented draws.
    g = np.random.default_rng(7)
    per_draw = [ood_metrics(s_in, s_out[g.choice(500, size=20, replace=False)]) for _ in range(4)]
    for k in METRIC_KEYS:
        vals = np.array([d[k] for d in per_draw])
        assert res[k]["mean"] == pytest.approx(vals.mean(), abs=1e-15)
        assert res[k]["std"] == pytest.approx(vals.std(ddof=0), abs=1e-15)
    assert any(res[k]["std"] > 0 for k in METRIC_KEYS)

    # Deterministic for a seed, different for another.
    assert subsampled_ood_metrics(s_in, s_out, num_draws=4, seed=7) == res
    assert subsampled_ood_metrics(s_in, s_out, num_draws=4, seed=8) != res


def test_subsampled_num_ood_limits():
    s_in = np.arange(10.0)
    # At least one OOD sample.
    assert subsampled_ood_metrics(s_in, [0.5, 1.5], ood_fraction=0.01)["num_ood"] == 1
    # At most all of them: a single draw is then the full-set metric, std 0.
    s_out = np.array([-1.0, 3.5, 0.2])
    res = subsampled_ood_metrics(s_in, s_out, num_draws=3, ood_fraction=0.5)
    assert res["num_ood"] == 3
    full = ood_metrics(s_in, s_out)
    for k in METRIC_KEYS:
        assert res[k]["mean"] == pytest.approx(full[k])
        assert res[k]["std"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="num_draws"):
        subsampled_ood_metrics(s_in, s_out, num_draws=0)
    with pytest.raises(ValueError, match="ood_fraction"):
        subsampled_ood_metrics(s_in, s_out, ood_fraction=0.0)


def test_mean_over_sets():
    a = {"auroc": 0.9, "aupr_in": 0.8, "aupr_out": 0.7, "fpr95": 0.2, "fpr95_ood_positive": 0.3}
    b = {"auroc": 0.7, "aupr_in": 0.6, "aupr_out": 0.5, "fpr95": 0.4, "fpr95_ood_positive": 0.5}
    out = mean_over_sets({"svhn": a, "lsun": b})
    assert list(out) == list(METRIC_KEYS)
    expected = {"auroc": 0.8, "aupr_in": 0.7, "aupr_out": 0.6, "fpr95": 0.3, "fpr95_ood_positive": 0.4}
    assert out == pytest.approx(expected)

    wrap = lambda d, n: {**{k: {"mean": v, "std": 0.1} for k, v in d.items()}, "num_ood": n}
    out2 = mean_over_sets({"svhn": wrap(a, 2000), "lsun": wrap(b, 2000)})
    assert out2 == pytest.approx(expected)
    assert "num_ood" not in out2

    with pytest.raises(ValueError, match="empty"):
        mean_over_sets({})
    with pytest.raises(ValueError, match="metrics"):
        mean_over_sets({"svhn": a, "lsun": {"auroc": 0.5}})


# --------------------------------------------------------------------------
# Accuracy
# --------------------------------------------------------------------------


def test_accuracy():
    labels = np.array([0, 1, 2, 1])
    assert accuracy(labels, np.array([0, 1, 1, 1])) == 0.75
    logits = np.array([[2.0, 0.1, 0.0], [0.0, 1.0, 0.5], [0.3, 0.2, 0.1], [0.0, 0.0, 9.0]])
    assert accuracy(labels, logits) == 0.5
    assert type(accuracy(labels, logits)) is float
    assert accuracy([1, 0], [1.0, 0.0]) == 1.0
    with pytest.raises(ValueError, match="lengths"):
        accuracy(labels, [0, 1])
    with pytest.raises(ValueError, match="1-D"):
        accuracy(labels.reshape(2, 2), [0, 1])
    with pytest.raises(ValueError, match="integer"):
        accuracy(labels, [0.5, 1, 2, 1])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])
    with pytest.raises(ValueError, match="non-finite"):
        accuracy([0], [[np.nan, 1.0]])


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [ood_metrics, roc_curve_points, subsampled_ood_metrics,
                                ood_metrics_at_recall])
def test_validation_errors(fn):
    good = np.array([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="scores_in is empty"):
        fn([], good)
    with pytest.raises(ValueError, match="scores_out is empty"):
        fn(good, np.array([]))
    with pytest.raises(ValueError, match=r"scores_in must be a 1-D.*\(3, 1\)"):
        fn(good.reshape(3, 1), good)
    with pytest.raises(ValueError, match="scores_out must be a 1-D"):
        fn(good, 0.5)
    with pytest.raises(ValueError, match=r"scores_out contains 3 non-finite value\(s\) \(2 NaN, 1 inf\)"):
        fn(good, [np.nan, 1.0, np.inf, np.nan])
    with pytest.raises(ValueError, match=r"scores_in contains 1 non-finite.*\(0 NaN, 1 inf\)"):
        fn([-np.inf, 0.0], good)
    with pytest.raises(ValueError, match="scores_in must be numeric"):
        fn(["a", "b"], good)


def test_no_heavy_imports():
    code = (
        "import sys, ice_tf.metrics; "
        "bad = [m for m in ('tensorflow', 'sklearn', 'keras') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_spread_is_the_mean_and_population_std_in_float64():
    values = np.array([0.8125, 0.84, 0.8399], dtype=np.float32)
    result = metrics.spread(values)
    exact = values.astype(np.float64)
    assert result == {"mean": float(exact.mean()), "std": float(np.sqrt(((exact - exact.mean()) ** 2).mean()))}
    assert metrics.spread([0.5]) == {"mean": 0.5, "std": 0.0}
