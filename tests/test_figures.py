"""Figure helpers (ice_tf.figures.toy, ice_tf.figures.plotting) and the figure scripts on tiny inputs.

The four scripts run as subprocesses, all started together by one fixture (each pays
for its own Python and, for Figs. 3 and 4, TensorFlow start-up); the in-process tests
run while they work, and the script tests at the end of the file collect them.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import image as mpimg
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import roc_auc_score

from helpers import tiny_backbone
from ice_tf import layers, models
from ice_tf.figures import plotting, toy
from ice_tf.experiment.config import ExperimentConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGURES = os.path.join(REPO, "scripts", "figures")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FLOAT = r"([-+0-9.eE]+)"


def assert_png(path, min_height=150, min_width=300):
    with open(path, "rb") as stream:
        assert stream.read(8) == PNG_SIGNATURE
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] >= min_height and pixels.shape[1] >= min_width
    assert pixels[..., :3].std() > 0.02  # not a blank canvas
    assert not [name for name in os.listdir(os.path.dirname(path)) if name.startswith(".tmp-")]


# ------------------------------------------------------------ script runs
def _write_tiny_run(folder, loss, head):
    os.makedirs(folder)
    model = models.OODModel(tiny_backbone((28, 28, 1), name=f"tiny_{loss}"),
                            layers.make_head(head, 10))
    model.save(os.path.join(folder, "model.keras"))
    config = ExperimentConfig(
        loss=loss, backbone="small_cnn", output_dir=folder, eval_batch_size=32,
        ood_datasets=("gaussian", "tex=embedded_textures"),
    )
    with open(os.path.join(folder, "config.json"), "w") as stream:
        stream.write(config.to_json())


def _synthetic_scores(folder, shift, extra_set=False, seed=0):
    rng = np.random.default_rng(seed)
    scores = {"in": rng.normal(shift, 1.0, 60), "near": rng.normal(0.0, 1.0, 40),
              "far": rng.normal(-shift, 1.0, 30)}
    if extra_set:
        scores["only_here"] = rng.normal(0.0, 1.0, 10)
    os.makedirs(folder)
    np.savez_compressed(os.path.join(folder, "scores.npz"), **scores)
    return scores


@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    """Starts every script at once; yields name -> (process, output png, log paths, extras)."""
    root = tmp_path_factory.mktemp("figures")
    runs = root / "runs"
    _write_tiny_run(str(runs / "ce" / "seed1"), "ce", "linear")
    _write_tiny_run(str(runs / "ice" / "seed1"), "ice", "gaussian")
    roc_scores = {
        "a": _synthetic_scores(str(root / "roc" / "a"), 1.0, extra_set=True, seed=1),
        "b": _synthetic_scores(str(root / "roc" / "b"), 2.0, seed=2),
    }
    commands = {
        "fig2": ["fig2_false_likelihood.py"],
        "fig3": ["fig3_distribution_shift.py"],
        "fig4": ["fig4_tsne.py", f"--runs_dir={runs}", "--methods=ce,ice", "--num_in=40",
                 "--num_ood=12", "--placement=knn", "--neighbors=5"],
        "roc": ["roc_curves.py", f"--run=a:{root / 'roc' / 'a'}", f"--run=b:{root / 'roc' / 'b'}"],
        "roc_missing": ["roc_curves.py", f"--runs_dir={root / 'nothing'}"],
    }
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    started = {}
    for name, (script, *args) in commands.items():
        output = root / "out" / name / "figure.png"  # a folder each: no other script's temporary files
        stdout, stderr = root / f"{name}.out", root / f"{name}.err"
        with open(stdout, "w") as out, open(stderr, "w") as err:
            process = subprocess.Popen(
                [sys.executable, os.path.join(FIGURES, script), *args, f"--output={output}"],
                stdout=out, stderr=err, cwd=REPO, env=env,
            )
        started[name] = (process, str(output), stdout, stderr)
    yield {"runs": started, "roc_scores": roc_scores, "runs_dir": runs}
    for process, *_ in started.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def finish(scripts, name, expect_success=True):
    process, output, stdout, stderr = scripts["runs"][name]
    process.wait(timeout=600)
    out, err = stdout.read_text(), stderr.read_text()
    if expect_success:
        assert process.returncode == 0, err[-3000:]
    return out, err, output


def test_tiny_run_folders_look_like_compare_outputs(scripts):
    # Requested first, so that the scripts start before the in-process tests.
    folders = plotting.run_folders(str(scripts["runs_dir"]), ["ce", "ice"], 1)
    plotting.check_run_folders(folders, ("model.keras", "config.json"))
    with open(os.path.join(folders["ice"], "config.json")) as stream:
        config = ExperimentConfig.from_dict(json.load(stream))
    assert [spec.label for spec in config.ood_set_specs] == ["gaussian", "tex"]


# ---------------------------------------------------------------- toy: data
def test_means_on_circle_and_sampling():
    means = toy.means_on_circle(3, 2.0)
    np.testing.assert_allclose(np.linalg.norm(means, axis=1), 2.0)
    np.testing.assert_allclose(means.sum(axis=0), 0.0, atol=1e-12)
    z, labels = toy.sample_gaussian_classes(means, np.eye(2) * 0.01, 50, seed=3)
    assert z.shape == (150, 2) and np.array_equal(np.bincount(labels), [50, 50, 50])
    np.testing.assert_allclose(toy.class_means(z, labels, 3), means, atol=0.05)
    with pytest.raises(ValueError, match="num_classes"):
        toy.means_on_circle(1, 1.0)
    with pytest.raises(ValueError, match="covariance"):
        toy.sample_gaussian_classes(means, np.eye(3), 5)


def test_fit_gda_matches_sklearn_lda():
    z, labels = toy.sample_gaussian_classes(toy.means_on_circle(3, 2.0), [[0.5, 0.2], [0.2, 0.4]], 30, seed=1)
    gda = toy.fit_gda(z, labels, 3)
    lda = LinearDiscriminantAnalysis(solver="lsqr", store_covariance=True).fit(z, labels)
    np.testing.assert_allclose(gda.means, lda.means_, rtol=1e-10)
    np.testing.assert_allclose(gda.covariance, lda.covariance_, rtol=1e-10)
    np.testing.assert_allclose(gda.weights, lda.coef_, rtol=1e-8)
    # sklearn adds log(prior) = log(1/3) to every intercept (equal classes).
    np.testing.assert_allclose(gda.biases + np.log(1 / 3), lda.intercept_, rtol=1e-8)
    np.testing.assert_allclose(toy.linear_logits(z, gda.weights, gda.biases) + np.log(1 / 3),
                               lda.decision_function(z), rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="covering all"):
        toy.fit_gda(z[labels < 2], labels[labels < 2], 3)


def test_gaussian_scores_are_negative_squared_mahalanobis_distances():
    rng = np.random.default_rng(0)
    z, means = rng.normal(size=(7, 2)), rng.normal(size=(3, 2))
    covariance = np.array([[1.0, 0.3], [0.3, 0.5]])
    expected = np.array([[-(x - m) @ np.linalg.solve(covariance, x - m) for m in means] for x in z])
    np.testing.assert_allclose(toy.gaussian_scores(z, means, covariance), expected, rtol=1e-12)


@pytest.mark.parametrize("seed,distance", [(0, 5.0), (1, 3.0), (2, 6.0)])
def test_false_likelihood_example(seed, distance):
    example = toy.false_likelihood_example(num_per_class=100, outlier_distance=distance, seed=seed)
    gda, y = example.gda, example.target_class
    assert any(np.array_equal(example.point_a, p) for p in example.z[example.labels == y])
    offset = example.point_b - gda.means[y]
    # B lies along w_y at the requested Mahalanobis distance.
    np.testing.assert_allclose(offset / np.linalg.norm(offset),
                               gda.weights[y] / np.linalg.norm(gda.weights[y]))
    np.testing.assert_allclose(np.sqrt(offset @ np.linalg.solve(gda.covariance, offset)), distance)
    np.testing.assert_allclose(example.logit_b, gda.weights[y] @ example.point_b + gda.biases[y])
    np.testing.assert_allclose(example.likelihood_b, np.exp(-distance**2), rtol=1e-9)
    assert example.logit_b > example.logit_a and example.likelihood_b < example.likelihood_a
    with pytest.raises(ValueError, match="target_class"):
        toy.false_likelihood_example(target_class=2)


def test_distribution_shift_toy_and_distances():
    data = toy.distribution_shift_toy(num_classes=3, num_per_class=10, num_outliers=20, near_fraction=0.25)
    assert data.features.shape == (30, 2) and data.outliers.shape == (20, 2)
    far = np.linalg.norm(data.outliers[5:], axis=1)
    assert np.all((far >= 4.0) & (far <= 7.5))
    points, means = np.array([[0.0, 0.0], [3.0, 4.0]]), np.array([[0.0, 1.0], [3.0, 0.0]])
    assert toy.nearest_mean_distance(points, means) == pytest.approx((1.0 + 4.0) / 2)
    with pytest.raises(ValueError, match="outlier_radii"):
        toy.distribution_shift_toy(outlier_radii=(5.0, 4.0))


# ------------------------------------------------------ toy: SGD on features
def _numpy_feature_gradients(method, head, z, labels, outliers, weight):
    """Per-point gradients of Eq. (0.3) (linear head) or Eq. (0.15) (Gaussian head), float64."""
    num_classes = head.num_classes if method == "ice" else head.units
    onehot = np.eye(num_classes)[labels]

    def softmax(x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    if method == "oe":
        kernel, bias = (w.astype(np.float64) for w in head.get_weights())
        weights = kernel.T  # rows w_i
        grad_in = (softmax(z @ kernel + bias) - onehot) @ weights
        grad_out = weight * (softmax(outliers @ kernel + bias) - 1.0 / num_classes) @ weights
        return grad_in, grad_out
    means = head.means.numpy().astype(np.float64)
    scale = head.scale_tril.numpy().astype(np.float64)
    precision = np.linalg.inv(scale @ scale.T)

    def scores_and_gradients(x):  # h (n, K) and dh/dx (n, K, d)
        diff = x[:, None, :] - means[None]
        return -np.einsum("nkd,de,nke->nk", diff, precision, diff), -2 * diff @ precision

    h, dh = scores_and_gradients(z)
    grad_in = np.einsum("nk,nkd->nd", softmax(h) - onehot, dh) - weight * dh[np.arange(len(z)), labels]
    h_out, dh_out = scores_and_gradients(outliers)
    best = h_out.argmax(axis=1)
    top = h_out[np.arange(len(outliers)), best]
    grad_out = weight * (np.exp(top) / (1 - np.exp(top)))[:, None] * dh_out[np.arange(len(outliers)), best]
    return grad_in, grad_out


@pytest.mark.parametrize("method", toy.SHIFT_METHODS)
def test_feature_gradients_match_numpy(method):
    data = toy.distribution_shift_toy(num_per_class=8, num_outliers=12, near_fraction=0.5, seed=4)
    head = toy.make_toy_head(method, data.features, data.labels, data.num_classes)
    grad_in, grad_out = toy.feature_gradients(toy.toy_loss(method, 0.7), head, data.features,
                                              data.labels, data.outliers)
    expected_in, expected_out = _numpy_feature_gradients(method, head, data.features, data.labels,
                                                         data.outliers, 0.7)
    np.testing.assert_allclose(grad_in, expected_in, rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(grad_out, expected_out, rtol=2e-3, atol=1e-6)


def test_oe_head_is_the_gda_classifier_and_ice_head_the_fitted_gaussian():
    data = toy.distribution_shift_toy(num_per_class=20, num_outliers=4)
    gda = toy.fit_gda(data.features, data.labels, 3)
    linear = toy.make_toy_head("oe", data.features, data.labels, 3)
    np.testing.assert_allclose(linear(data.features.astype("float32")).numpy(),
                               toy.linear_logits(data.features, gda.weights, gda.biases),
                               rtol=1e-4, atol=1e-4)
    gaussian = toy.make_toy_head("ice", data.features, data.labels, 3)
    np.testing.assert_allclose(gaussian.means.numpy(), gda.means, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="valid methods: oe, ice"):
        toy.make_toy_head("energy", data.features, data.labels, 3)


def test_simulate_feature_shift_takes_sgd_steps_and_snapshots():
    data = toy.distribution_shift_toy(num_per_class=6, num_outliers=6, near_fraction=0.5)
    snapshots = toy.simulate_feature_shift("ice", data.features, data.labels, data.outliers,
                                           num_steps=2, learning_rate=0.05, weight=0.5,
                                           snapshot_steps=[0, 1, 2])
    assert [s.step for s in snapshots] == [0, 1, 2]
    np.testing.assert_array_equal(snapshots[0].features, data.features)
    head = toy.make_toy_head("ice", data.features, data.labels, data.num_classes)
    grad_in, grad_out = _numpy_feature_gradients("ice", head, data.features, data.labels, data.outliers, 0.5)
    np.testing.assert_allclose(snapshots[1].features, data.features - 0.05 * grad_in, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(snapshots[1].outliers, data.outliers - 0.05 * grad_out, rtol=1e-4, atol=1e-5)
    distances = toy.outlier_distances(snapshots, data.labels, data.num_classes)
    assert distances[0] == pytest.approx(toy.nearest_mean_distance(
        data.outliers, toy.class_means(data.features, data.labels, data.num_classes)))
    with pytest.raises(ValueError, match="snapshot_steps"):
        toy.simulate_feature_shift("oe", data.features, data.labels, data.outliers, num_steps=2,
                                   snapshot_steps=[0, 3])


# ----------------------------------------------------------------- plotting
def test_save_png_is_atomic(tmp_path):
    figure, axes = plotting.new_figure(1, 2)
    axes[0, 0].plot([0, 1], [1, 0])
    assert axes.shape == (1, 2)
    path = plotting.save_png(figure, str(tmp_path / "sub" / "plot.png"))
    assert_png(path, min_height=100, min_width=200)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600

    def broken_savefig(stream, **kwargs):
        stream.write(b"half a png")
        raise RuntimeError("disk full")

    figure.savefig = broken_savefig
    with pytest.raises(RuntimeError, match="disk full"):
        plotting.save_png(figure, path)
    assert_png(path, min_height=100, min_width=200)  # the earlier file is intact
    assert sorted(os.listdir(tmp_path / "sub")) == ["plot.png"]


def test_class_colors_and_labels():
    for count in (2, 10, 15, 30):
        colors = plotting.class_colors(count)
        assert len(colors) == count == len(set(colors))
    assert plotting.method_label("ice") == "ICE" and plotting.method_label("custom") == "custom"


def test_run_folders_and_missing_runs(tmp_path):
    assert plotting.run_folders("r", ["ce", "ice"], 2) == {
        "ce": os.path.join("r", "ce", "seed2"), "ice": os.path.join("r", "ice", "seed2")}
    assert plotting.run_folders("r", ["ce"], 1, ["mine:/x/y", "other:z"]) == {"mine": "/x/y", "other": "z"}
    for bad in (["nolabel"], ["a:x", "a:y"]):
        with pytest.raises(ValueError):
            plotting.run_folders(run_specs=bad)
    with pytest.raises(FileNotFoundError) as error:
        plotting.check_run_folders({"ce": str(tmp_path / "ce")}, ("model.keras",))
    assert "ice-tf demo" in str(error.value)
    assert str(tmp_path / "ce" / "model.keras") in str(error.value)


def test_load_scores(tmp_path):
    written = _synthetic_scores(str(tmp_path / "run"), 1.0)
    loaded = plotting.load_scores(str(tmp_path / "run"))
    assert set(loaded) == set(written)
    np.testing.assert_array_equal(loaded["near"], written["near"])
    np.savez(tmp_path / "run" / "scores.npz", far=np.zeros(3))
    with pytest.raises(ValueError, match="'in'"):
        plotting.load_scores(str(tmp_path / "run"))


def test_knn_placement_matches_brute_force():
    rng = np.random.default_rng(0)
    features_in, embedding_in = rng.normal(size=(30, 5)), rng.normal(size=(30, 2))
    features_out = rng.normal(size=(4, 5))
    placed = plotting.knn_placement(features_in, embedding_in, features_out, num_neighbors=3)
    for row, feature in zip(placed, features_out):
        distances = np.linalg.norm(features_in - feature, axis=1)
        nearest = np.argsort(distances)[:3]
        weights = 1 / (distances[nearest] + 1e-12)
        np.testing.assert_allclose(row, weights @ embedding_in[nearest] / weights.sum(), rtol=1e-10)
    # A feature equal to an in-distribution one lands on that point's embedding.
    np.testing.assert_allclose(
        plotting.knn_placement(features_in, embedding_in, features_in[7:8], num_neighbors=5)[0],
        embedding_in[7], atol=1e-8)
    with pytest.raises(ValueError, match="num_neighbors"):
        plotting.knn_placement(features_in, embedding_in, features_out, num_neighbors=31)


@pytest.mark.parametrize("placement", plotting.PLACEMENTS)
def test_tsne_embedding_separates_clusters(placement):
    rng = np.random.default_rng(0)
    features_in = np.concatenate([rng.normal(0, 0.1, (15, 6)), rng.normal(5, 0.1, (15, 6))])
    features_out = rng.normal(-5, 0.1, (6, 6))
    embedding_in, embedding_out = plotting.tsne_embedding(features_in, features_out, placement=placement,
                                                          num_neighbors=3)
    assert embedding_in.shape == (30, 2) and embedding_out.shape == (6, 2)
    assert np.all(np.isfinite(embedding_in)) and np.all(np.isfinite(embedding_out))
    # The two in-distribution clusters stay apart: within-cluster spread < between-cluster gap.
    a, b = embedding_in[:15], embedding_in[15:]
    assert np.linalg.norm(a.mean(0) - b.mean(0)) > 2 * max(a.std(0).max(), b.std(0).max())
    with pytest.raises(ValueError, match="valid placements: joint, knn"):
        plotting.tsne_embedding(features_in, features_out, placement="umap")


# ------------------------------------------------------------ script results
def test_fig2_script_shows_the_false_likelihood(scripts):
    out, _, output = finish(scripts, "fig2")
    match = re.search(
        rf"f_1\(A\) = {FLOAT}\s+f_1\(B\) = {FLOAT}\s+p\(1\|A\) = {FLOAT}\s+p\(1\|B\) = {FLOAT}", out)
    assert match, out
    logit_a, logit_b, likelihood_a, likelihood_b = (float(v) for v in match.groups())
    assert logit_b > logit_a and likelihood_b < likelihood_a
    example = toy.false_likelihood_example()
    assert logit_b == pytest.approx(example.logit_b, rel=1e-5)
    assert "p(y|B) < p(y|A): True" in out
    assert_png(output)


def test_fig3_script_oe_pulls_outliers_in_and_ice_pushes_them_out(scripts):
    out, _, output = finish(scripts, "fig3")
    distances = {method: (float(first), float(last)) for method, first, last in
                 re.findall(rf"(oe|ice): {FLOAT} at step 0 -> {FLOAT} at step 60", out)}
    assert set(distances) == {"oe", "ice"}, out
    assert distances["oe"][1] < distances["oe"][0] - 0.1  # OE drags outliers towards the classes
    assert distances["ice"][1] > distances["ice"][0]  # ICE pushes them away
    assert_png(output, min_height=400, min_width=800)


def test_fig4_script_embeds_features_of_every_run(scripts):
    out, _, output = finish(scripts, "fig4")
    # The default OOD set is the config's textures set, labelled "tex".
    for label in ("ce", "ice"):
        assert re.search(rf"{label}: 40 in-distribution \+ 12 tex features of dimension 8", out), out
    assert_png(output, min_height=200, min_width=400)


def test_roc_script_draws_every_common_set_with_auroc(scripts):
    out, _, output = finish(scripts, "roc")
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert set(rows) == {"OOD set", "near", "far"}  # "only_here" is in one run only
    for label in ("near", "far"):
        values = [float(v) for v in rows[label].split("|")[2:4]]
        for value, run in zip(values, ("a", "b")):
            scores = scripts["roc_scores"][run]
            is_in = np.r_[np.ones(len(scores["in"])), np.zeros(len(scores[label]))]
            expected = roc_auc_score(is_in, np.r_[scores["in"], scores[label]])
            assert value == pytest.approx(100 * expected, abs=0.006)
    assert_png(output, min_height=200, min_width=400)


def test_roc_script_names_the_command_that_creates_missing_runs(scripts):
    process, output, _, _ = scripts["runs"]["roc_missing"]
    _, err, _ = finish(scripts, "roc_missing", expect_success=False)
    assert process.returncode != 0
    assert "ice-tf demo" in err
    assert not os.path.exists(output)
