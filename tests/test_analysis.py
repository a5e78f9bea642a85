"""ice_tf.analysis against float64 numpy references and the paper's gradient claims
(Eqs. 0.6-0.8), plus the analysis_table and fig5 scripts on hand-made records."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ice_tf import analysis, atomic_io, losses
from ice_tf.experiment import run_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------ numpy references
def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _argmax_onehot(x):
    return np.eye(x.shape[1])[x.argmax(1)]


def reference_gradients(name, weight, labels, f_in, f_out, margin_in=-23.0, margin_out=-5.0):
    """Per-sample gradients λ ∂ℓ_aux/∂f of the auxiliary terms, in float64."""
    num_classes = f_in.shape[1]
    onehot = np.eye(num_classes)[labels]
    g_in, g_out = np.zeros_like(f_in), np.zeros_like(f_out)
    if name == "oe":  # Eq. 0.6 without the factor K of the sum
        g_out = _softmax(f_out) - 1.0 / num_classes
    elif name == "energy":  # Eqs. 0.7, 0.8 through the squared hinges
        energy_in = -np.log(np.exp(f_in).sum(1))
        energy_out = -np.log(np.exp(f_out).sum(1))
        g_in = -2 * np.maximum(energy_in - margin_in, 0)[:, None] * _softmax(f_in)
        g_out = 2 * np.maximum(margin_out - energy_out, 0)[:, None] * _softmax(f_out)
    elif name == "bce":
        g_in = -_sigmoid(-f_in) * onehot
        g_out = _sigmoid(f_out.max(1))[:, None] * _argmax_onehot(f_out)
    elif name in ("ice", "ice_minus"):
        if name == "ice":
            g_in = -onehot  # Eq. 0.14
        top = np.exp(f_out.max(1))  # Eq. 0.13: d/dt -log(1 - e^t) = e^t / (1 - e^t)
        g_out = (top / (1 - top))[:, None] * _argmax_onehot(f_out)
    return weight * g_in, weight * g_out


def _outputs(name, seed=0, n_in=12, n_out=10, num_classes=5):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n_in)
    f_in, f_out = rng.normal(0, 2, (n_in, num_classes)), rng.normal(0, 2, (n_out, num_classes))
    if name in ("ice", "ice_minus"):  # Gaussian-head scores h <= 0, max h well below 0
        f_in, f_out = -np.abs(f_in) - 0.1, -np.abs(f_out) - 0.1
    return labels, f_in, f_out


@pytest.mark.parametrize("name", ["ce", "oe", "energy", "bce", "ice", "ice_minus"])
def test_auxiliary_gradients_match_numpy(name):
    labels, f_in, f_out = _outputs(name)
    kwargs = {"margin_in": 1.0, "margin_out": -0.5} if name == "energy" else {}
    loss = losses.get(name, **kwargs)
    grad_in, grad_out = analysis.auxiliary_gradients(loss, labels, f_in, f_out)
    ref_in, ref_out = reference_gradients(name, loss.weight, labels, f_in, f_out, **kwargs)
    np.testing.assert_allclose(grad_in, ref_in, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad_out, ref_out, rtol=1e-4, atol=1e-6)


def test_oe_raises_exactly_the_outlier_classes_below_uniform():
    labels, f_in, f_out = _outputs("oe", seed=1)
    grad_in, grad_out = analysis.auxiliary_gradients("oe", labels, f_in, f_out)
    mask_in, mask_out = analysis.contradictory_masks(labels, grad_in, grad_out)
    below = _softmax(f_out) < 1.0 / f_out.shape[1]
    assert 0 < below.sum() < below.size
    np.testing.assert_array_equal(mask_out, below)
    assert not mask_in.any()
    fractions = analysis.contradictory_fractions("oe", labels, f_in, f_out)
    n_in, k = f_in.shape
    assert fractions["contradictory_in"] == 0.0
    assert fractions["contradictory_out"] == pytest.approx(below.mean())
    pairs = n_in * (k - 1) + below.size
    assert fractions["contradictory_all"] == pytest.approx(below.sum() / pairs)


def test_energy_raises_every_non_target_class_of_samples_above_the_margin():
    labels, f_in, f_out = _outputs("energy", seed=2)
    energy_in = -np.log(np.exp(f_in).sum(1))
    margin_in = float(np.median(energy_in))  # half the samples lie above it
    loss = losses.get("energy", margin_in=margin_in, margin_out=-0.5)
    active = energy_in > margin_in
    assert 0 < active.sum() < active.size
    grad_in, grad_out = analysis.auxiliary_gradients(loss, labels, f_in, f_out)
    mask_in, mask_out = analysis.contradictory_masks(labels, grad_in, grad_out)
    expected = active[:, None] & (np.arange(f_in.shape[1]) != labels[:, None])
    np.testing.assert_array_equal(mask_in, expected)
    assert not mask_out.any() and (grad_out >= 0).all()  # Eq. 0.7 lowers every outlier logit
    fractions = analysis.contradictory_fractions(loss, labels, f_in, f_out)
    assert fractions["contradictory_in"] == pytest.approx(active.mean())
    assert fractions["contradictory_out"] == 0.0


@pytest.mark.parametrize("name", ["ce", "bce", "ice", "ice_minus"])
def test_compatible_losses_raise_nothing_but_the_target(name):
    labels, f_in, f_out = _outputs(name, seed=3)
    fractions = analysis.contradictory_fractions(name, labels, f_in, f_out)
    assert fractions == dict.fromkeys(
        ("contradictory_in", "contradictory_out", "contradictory_all"), 0.0
    )
    grad_in, grad_out = analysis.auxiliary_gradients(name, labels, f_in, f_out)
    non_target = np.arange(f_in.shape[1]) != labels[:, None]
    assert (grad_in[non_target] == 0).all() and (grad_out >= 0).all()
    if name in ("bce", "ice"):  # their in-distribution terms raise the target only
        assert (grad_in[~non_target] < 0).all()


@pytest.mark.parametrize("a, b", [(0.0, 1.0), (0.3, 2.0)])
def test_the_meter_measures_the_terms_that_train_with_their_weights(a, b):
    """--in_term_weight=0: the in-distribution term does not train, and the meter sees no
    in-distribution pull; other weights scale each side's gradient as the loss does."""
    labels, f_in, f_out = _outputs("ice", seed=5)
    loss = losses.get("ice", in_term_weight=a, out_term_weight=b)
    grad_in, grad_out = analysis.auxiliary_gradients(loss, labels, f_in, f_out)
    ref_in, ref_out = reference_gradients("ice", loss.weight, labels, f_in, f_out)
    np.testing.assert_allclose(grad_in, a * ref_in, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad_out, b * ref_out, rtol=1e-4, atol=1e-6)
    if a == 0.0:
        assert not np.any(grad_in)


def test_zero_weight_means_no_auxiliary_pull():
    labels, f_in, f_out = _outputs("oe", seed=4)
    fractions = analysis.contradictory_fractions(losses.get("oe", weight=0.0), labels, f_in, f_out)
    assert fractions["contradictory_all"] == 0.0


def test_masks_skip_targets_and_gradients_within_the_tolerance():
    labels = np.array([0, 2])
    grad_in = np.array([[-1.0, -1e-9, -1e-7], [0.5, -2.0, -3.0]])
    grad_out = np.array([[-1e-9, -1e-7, 0.0]])
    mask_in, mask_out = analysis.contradictory_masks(labels, grad_in, grad_out)
    np.testing.assert_array_equal(mask_in, [[False, False, True], [False, True, False]])
    np.testing.assert_array_equal(mask_out, [[False, True, False]])
    with pytest.raises(ValueError, match="one label per row"):
        analysis.contradictory_masks([0], grad_in, grad_out)


# ------------------------------------------------------------ distribution shift
def test_class_centres_match_a_loop_and_mark_absent_classes():
    rng = np.random.default_rng(5)
    features, labels = rng.normal(size=(30, 4)), rng.integers(0, 3, 30)
    centres = analysis.class_centres(features, labels, num_classes=4)
    for k in range(3):
        np.testing.assert_allclose(centres[k], features[labels == k].mean(0))
    assert np.isnan(centres[3]).all()
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        analysis.class_centres(features, labels + 2, num_classes=4)


def test_distribution_shift_on_a_hand_worked_example():
    # 1-D: class 0 at 0 and 2 (centre 1), class 1 at 10; outliers at 1.5, 5 and 13.
    features_in, labels = np.array([[0.0], [2.0], [10.0]]), np.array([0, 0, 1])
    features_out = np.array([[1.5], [5.0], [13.0]])
    stats = analysis.distribution_shift(features_in, labels, features_out, num_classes=3)
    assert stats["in_to_centre"] == pytest.approx(2 / 3)
    assert stats["out_to_centre"] == pytest.approx((0.5 + 4 + 3) / 3)
    assert stats["ratio"] == pytest.approx(2.5 / (2 / 3))
    assert stats["overlap"] == pytest.approx(1 / 3)  # only 1.5 lies within the 95% radius 1.0
    assert stats["centre_separation"] == pytest.approx(9.0)


def test_distribution_shift_matches_loops():
    rng = np.random.default_rng(6)
    features_in, labels = rng.normal(size=(50, 3)), rng.integers(0, 4, 50)
    features_out = rng.normal(0, 2, size=(40, 3))
    stats = analysis.distribution_shift(features_in, labels, features_out, 4, quantile=0.8)
    centres = [features_in[labels == k].mean(0) for k in range(4)]
    d_in = [np.sqrt(((z - centres[y]) ** 2).sum()) for z, y in zip(features_in, labels)]
    d_out = [min(np.sqrt(((z - c) ** 2).sum()) for c in centres) for z in features_out]
    threshold = np.sort(d_in)[int(np.floor(0.8 * 49))] + (0.8 * 49 % 1) * (
        np.sort(d_in)[int(np.floor(0.8 * 49)) + 1] - np.sort(d_in)[int(np.floor(0.8 * 49))]
    )
    separation = np.mean([np.sqrt(((centres[k] - centres[l]) ** 2).sum())
                          for k in range(4) for l in range(k + 1, 4)])
    assert stats["in_to_centre"] == pytest.approx(np.mean(d_in))
    assert stats["out_to_centre"] == pytest.approx(np.mean(d_out))
    assert stats["ratio"] == pytest.approx(np.mean(d_out) / np.mean(d_in))
    assert stats["overlap"] == pytest.approx(np.mean(np.array(d_out) <= threshold))
    assert stats["centre_separation"] == pytest.approx(separation)
    with pytest.raises(ValueError, match="quantile"):
        analysis.distribution_shift(features_in, labels, features_out, 4, quantile=0.0)
    with pytest.raises(ValueError, match="features_out"):
        analysis.distribution_shift(features_in, labels, features_out[:, :2], 4)


# -------------------------------------------------------------------- confidence
def test_confidence_histogram_and_summary():
    values = np.array([0.0, 0.04, 0.05, 0.51, 0.99, 1.0, 1.0])
    counts = analysis.confidence_histogram(values, bins=20)
    expected = [0] * 20
    for v in values:
        expected[min(int(v * 20), 19)] += 1  # 1.0 falls in the last bin
    assert counts == expected and sum(counts) == len(values)
    summary = analysis.confidence_summary(values, quantiles=(0.5, 0.25))
    ordered = np.sort(values)
    position = 0.25 * (len(values) - 1)  # linear interpolation between order statistics
    low = int(position)
    assert summary == pytest.approx({
        "mean": values.mean(), "q50": ordered[3],
        "q25": ordered[low] + (position - low) * (ordered[low + 1] - ordered[low]),
    })
    with pytest.raises(ValueError, match="finite"):
        analysis.confidence_histogram([np.nan])
    with pytest.raises(ValueError, match="at least one"):
        analysis.confidence_summary([])


# --------------------------------------------------------------------------- I/O
def _records(epochs, scale):
    """Hand-made analysis records of one run, as the callbacks write them."""
    gradient = [{"epoch": e, "contradictory_in": 0.1 * scale, "contradictory_out": 0.2 * e,
                 "contradictory_all": 0.15, "seconds": 0.1} for e in epochs]
    shift = [{"epoch": e, "in_to_centre": 1.0 + e, "out_to_centre": 3.0, "ratio": 3.0 / (1 + e),
              "overlap": 0.05 * e, "centre_separation": 2.0, "seconds": 0.1} for e in epochs]
    confidence = []
    for e in epochs:
        hist_in, hist_ood = [0] * 20, [0] * 20
        hist_in[19 - e], hist_ood[e] = 8, 8
        entry = {"histogram": hist_ood, "mean": 0.05 * (e + 1), "q05": 0.0, "q25": 0.01,
                 "q50": 0.05 * e, "q75": 0.1, "q95": 0.2, "auroc": 0.5 + 0.1 * e}
        confidence.append({"epoch": e, "bins": 20,
                           "in": {"histogram": hist_in, "mean": 0.9, "q05": 0.5, "q25": 0.7,
                                  "q50": 0.95 - 0.01 * e, "q75": 0.97, "q95": 0.99},
                           "ood": {"all": entry, "mnist": entry}, "seconds": 0.1})
    return {"gradient_meter": gradient, "shift": shift, "confidence": confidence}


def _write_run(run_dir, records, names=analysis.ANALYSES):
    for name in names:
        path = run_folder.analysis_path(str(run_dir), name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as stream:
            stream.writelines(json.dumps(r) + "\n" for r in records[name])


def test_read_analyses_and_summary_table(tmp_path):
    records = _records([0, 1, 2], scale=1)
    _write_run(tmp_path / "run", records, names=("gradient_meter", "shift"))
    read = run_folder.read_analyses(str(tmp_path / "run"))
    assert read == {"gradient_meter": records["gradient_meter"], "shift": records["shift"]}
    rows = analysis.summary_rows(read)
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    assert rows[2]["Contr. out %"] == pytest.approx(40.0)
    assert rows[1]["Ratio"] == pytest.approx(1.5) and rows[1]["Conf. ID"] is None
    table = analysis.summary_markdown({"oe": read})
    assert table.splitlines()[0].startswith("| Method | Epoch | Contr. in %")
    assert "Conf. ID" not in table  # no run has confidence records
    assert "| oe | 2 | 10.0 | 40.0 | 15.0 | 3 | 3 | 1.00 | 10.0 |" in table
    with pytest.raises(ValueError, match="valid analyses"):
        run_folder.analysis_path("run", "tsne")


def test_write_atomic_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "x.bin"
    atomic_io.write_atomic(str(path), b"\x89PNG")
    atomic_io.write_atomic(str(path), b"new")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path / "sub") == ["x.bin"]


# ----------------------------------------------------------------------- scripts
def _script(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    completed = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO,
                               env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def _assert_png(path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    with open(path, "rb") as stream:
        assert stream.read(8) == b"\x89PNG\r\n\x1a\n"
    image = plt.imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0  # something was drawn


def test_analysis_table_script_reads_a_comparison_folder(tmp_path):
    _write_run(tmp_path / "ice" / "seed1", _records([0, 1], scale=0))
    _write_run(tmp_path / "oe" / "seed1", _records([0, 1], scale=1))
    (tmp_path / "energy" / "seed1").mkdir(parents=True)  # no analyses: left out
    stdout = _script("scripts/analysis_table.py", f"--runs_dir={tmp_path}",
                     f"--png={tmp_path / 'curves.png'}")
    table = (tmp_path / "analysis.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith(("| oe", "| ice"))]
    assert [row.split("|")[1].strip() for row in rows] == ["oe", "oe", "ice", "ice"]  # paper order
    assert "| oe | 1 | 10.0 | 20.0 | 15.0 | 3 | 2 | 1.50 | 5.0 | 0.900 | 0.100 | 60.0 |" in table
    assert "energy" not in table and "| oe | 1 |" in stdout
    _assert_png(tmp_path / "curves.png")


def test_summary_over_seeds_gives_means_and_population_stds(tmp_path):
    _write_run(tmp_path / "s1", _records([0, 1, 2], scale=1))
    _write_run(tmp_path / "s2", _records([0, 1], scale=2))
    seeds = [run_folder.read_analyses(str(tmp_path / name)) for name in ("s1", "s2")]
    rows = analysis.summary_rows_over_seeds(seeds)
    assert [row["epoch"] for row in rows] == [0, 1]  # seed 2 has no epoch 2
    assert rows[1]["Contr. in %"] == pytest.approx(15.0)  # 10 and 20
    assert rows[1]["Contr. in % std"] == pytest.approx(5.0)
    assert rows[1]["Ratio"] == pytest.approx(1.5) and rows[1]["Ratio std"] == 0
    table = analysis.summary_markdown({"oe": seeds})
    assert "| oe | 1 | 15.0 ± 5.0 | 20.0 ± 0.0 |" in table


def test_analysis_table_script_over_seeds(tmp_path):
    for k in (1, 2):
        _write_run(tmp_path / "ice" / f"seed{k}", _records([0, 1], scale=k))
    _script("scripts/analysis_table.py", f"--runs_dir={tmp_path}", "--seeds=1,2",
            f"--png={tmp_path / 'curves.png'}")
    table = (tmp_path / "analysis.md").read_text()
    assert "Mean ± std (population) over seeds 1, 2." in table
    assert "| ice | 0 | 15.0 ± 5.0 | 0.0 ± 0.0 |" in table
    _assert_png(tmp_path / "curves.png")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    lacking = subprocess.run([sys.executable, "scripts/analysis_table.py", f"--runs_dir={tmp_path}",
                              "--seeds=1,2,3"], capture_output=True, text=True, cwd=REPO, env=env,
                             timeout=300)
    assert lacking.returncode != 0 and "ice has no analyses for seed 3" in lacking.stderr


def test_fig5_script_draws_a_png(tmp_path):
    _write_run(tmp_path / "run", _records([0, 1, 2, 3], scale=1), names=("confidence",))
    output = tmp_path / "fig5.png"
    _script("scripts/figures/fig5_confidence.py", f"--run=ice:{tmp_path / 'run'}",
            f"--run={tmp_path / 'run'}", "--ood=mnist", f"--output={output}")
    _assert_png(output)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    failed = subprocess.run([sys.executable, "scripts/figures/fig5_confidence.py",
                             f"--run={tmp_path / 'run'}", "--ood=svhn"],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert failed.returncode != 0 and "OOD probe sets are all, mnist" in failed.stderr
