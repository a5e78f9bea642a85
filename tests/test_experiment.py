"""End-to-end runs on the embedded benchmark at a tiny budget."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import tiny_backbone
from ice_tf import experiment, export, layers, losses, models, scores
from ice_tf.experiment.config import ExperimentConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = dict(
    backbone="small_cnn", limit_train=256, batch_in=32, batch_out=64, epochs=1,
    eval_limit=150, eval_draws=2, learning_rate=0.01,
    ood_datasets=("mnist=embedded_mnist", "gaussian"),
)


def test_run_writes_a_complete_run_folder(tmp_path):
    config = ExperimentConfig(loss="ice", output_dir=str(tmp_path / "run"), **TINY)
    results = experiment.run(config, verbose=0)
    files = set(os.listdir(tmp_path / "run"))
    assert {"config.json", "metrics.jsonl", "tensorboard", "checkpoints", "model.keras",
            "saved_model", "scores.npz", "results.json", "results.md"} <= files
    assert json.load(open(tmp_path / "run" / "results.json")) == json.loads(json.dumps(results))
    assert set(results["sets"]) == {"mnist", "gaussian"}
    assert results["num_in"] == 150 and 0 <= results["accuracy"] <= 1
    epochs = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [e["epoch"] for e in epochs] == [1] and "out_term" in epochs[0]
    assert ExperimentConfig.from_dict(json.load(open(tmp_path / "run" / "config.json"))) == config.resolved()
    loaded = tf.saved_model.load(str(tmp_path / "run" / "saved_model"))
    served = loaded.signatures["serving_default"](images=tf.zeros((2, 28, 28, 1)))
    assert np.all((served["confidence"].numpy() > 0) & (served["confidence"].numpy() <= 1))


def test_head_init_starts_the_gaussian_head_at_the_first_batches_features(tmp_path):
    """-h_y starts at about ||z||² for near-zero means (Eq. 0.11 at L = I); at the class
    means of the first batches' features (class_means), or with their covariance too
    (features), the first epoch's in-distribution term is far smaller."""
    config = ExperimentConfig(loss="ice", export=False, calibrate_confidence=False,
                              **{**TINY, "learning_rate": 0.0, "min_learning_rate": 0.0})
    in_terms, traces = {}, {}
    for head_init in ("random", "class_means", "features"):
        out = tmp_path / head_init
        experiment.run(config.replace(head_init=head_init, output_dir=str(out)), verbose=0)
        epoch = json.loads(open(out / "metrics.jsonl").readline())
        in_terms[head_init], traces[head_init] = epoch["in_term"], epoch["head_scale_trace"]
    assert in_terms["features"] < 0.2 * in_terms["random"], in_terms
    assert in_terms["class_means"] < 0.5 * in_terms["random"], in_terms
    # lr 0: class_means leaves L = I, so tr(LLᵀ)/d = 1; the GDA fit does not.
    assert traces["random"] == pytest.approx(1.0) and traces["class_means"] == pytest.approx(1.0)
    assert traces["features"] != pytest.approx(1.0)


def test_a_diverging_run_leaves_no_results(tmp_path):
    config = ExperimentConfig(
        loss="oe", output_dir=str(tmp_path / "run"), **{**TINY, "learning_rate": 1e30}
    )
    with pytest.raises(FloatingPointError):
        experiment.run(config, verbose=0)
    assert not os.path.exists(tmp_path / "run" / "results.json")


def test_finetune_replaces_a_linear_head_by_a_gaussian_one_and_trains(tmp_path):
    base = ExperimentConfig(loss="ce", output_dir=str(tmp_path / "base"), export=False, **TINY)
    experiment.run(base, verbose=0)
    pretrained = keras.models.load_model(tmp_path / "base" / "model.keras")
    tuned = base.replace(
        loss="ice", schedule="finetune", init_checkpoint=str(tmp_path / "base" / "model.keras"),
        output_dir=str(tmp_path / "tuned"),
    )
    train_ds, steps = experiment.make_train_data(tuned, tuned.batch_in, tuned.batch_out)
    model = experiment.build(tuned, tf.distribute.get_strategy())
    experiment.initialize_from_checkpoint(model, tuned.init_checkpoint, train_ds, steps, verbose=0)
    for new, old in zip(model.backbone.weights, pretrained.backbone.weights):
        np.testing.assert_array_equal(new.numpy(), old.numpy())  # BatchNorm statistics restored
    assert model.head.scale_factor != 1.0
    results = experiment.run(tuned, verbose=0)
    losses_per_epoch = [json.loads(line)["loss"] for line in open(tmp_path / "tuned" / "metrics.jsonl")]
    assert np.all(np.isfinite(losses_per_epoch)) and 0 <= results["accuracy"] <= 1


@pytest.mark.parametrize("outlier_batchnorm", ["joint", "separate"])
def test_gaussian_head_is_fitted_to_training_mode_features_as_training_normalises_them(
        outlier_batchnorm):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 16, 6, 6, 1)).astype("float32") + np.arange(4)[:, None, None, None, None]
    labels = np.tile(np.arange(4), 16).reshape(4, 16)
    outliers = rng.normal(3.0, 2.0, size=(4, 8, 6, 6, 1)).astype("float32")
    batches = tf.data.Dataset.from_tensor_slices(((images, labels), outliers))
    model = models.OODModel(tiny_backbone(), layers.make_head("gaussian", 4))
    model.build((None, 6, 6, 1))
    model.compile("sgd", loss="ice", outlier_batchnorm=outlier_batchnorm)
    moving = [v.numpy() for v in model.backbone.non_trainable_variables]
    experiment.fit_gaussian_head(model, batches, 4, ridge=0.1, verbose=0)
    for variable, before in zip(model.backbone.non_trainable_variables, moving):
        np.testing.assert_array_equal(variable.numpy(), before)
    # joint: in-distribution images and outliers share the batch statistics; separate:
    # the in-distribution images are normalised on their own.
    features = np.concatenate([
        model.backbone(np.concatenate([x, o]) if outlier_batchnorm == "joint" else x,
                       training=True).numpy()[:16]
        for x, o in zip(images, outliers)
    ])
    for variable, before in zip(model.backbone.non_trainable_variables, moving):
        variable.assign(before)
    flat_labels = labels.reshape(-1)
    class_means = np.stack([features[flat_labels == k].mean(0) for k in range(4)])
    np.testing.assert_allclose(model.head.means.numpy(), class_means, rtol=1e-4, atol=1e-5)


def _script(name, *args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    completed = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", name), *args],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def test_train_evaluate_export_scripts(tmp_path):
    run_dir = tmp_path / "run"
    tiny_flags = [
        "--flagfile=flags/demo.flags", "--loss=energy", f"--output_dir={run_dir}",
        "--limit_train=128", "--batch_in=32", "--batch_out=64", "--epochs=1", "--eval_limit=100",
        "--eval_draws=2", "--ood_datasets=gaussian,blobs", "--noexport",
    ]
    output = _script("train.py", *tiny_flags)
    assert "| **mean** |" in output
    flags_txt = (run_dir / "flags.txt").read_text()
    assert "--loss=energy" in flags_txt and "--limit_train=128" in flags_txt
    output = _script("evaluate.py", f"--model={run_dir}", "--scores=energy,msp",
                     "--set=protocol=full")
    evaluation = json.load(open(run_dir / "evaluation-full.json"))
    assert set(evaluation) == {"energy", "msp"} and "Score `msp`" in output
    _script("export.py", f"--model={run_dir / 'model.keras'}", f"--output={tmp_path / 'served'}")
    assert (tmp_path / "served" / "saved_model.pb").exists()
    # The same command into the finished folder: refused in one line that names the fix.
    again = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train.py"), *tiny_flags],
                           capture_output=True, text=True, cwd=REPO, timeout=300,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert again.returncode == 1 and "Traceback" not in again.stderr
    errors = [line for line in again.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "finished run (results.json); pass --overwrite" in errors[0]


@pytest.mark.parametrize("loss", ["ce", "oe", "energy", "bce", "ice", "ice_minus"])
def test_every_method_serves_the_score_its_run_is_evaluated_with(loss):
    config = ExperimentConfig(loss=loss, **TINY)
    model = models.OODModel(tiny_backbone((28, 28, 1)), layers.make_head(config.head_kind, 10))
    model.compile("sgd", loss=losses.get(config.loss, **config.loss_kwargs()))
    assert export.default_score(model) == config.score_name == losses.spec(loss).default_score


def test_a_run_exports_the_score_it_was_evaluated_with(tmp_path):
    # Energy scored by max logit instead of its own energy score. Float32, so that the
    # served graph and the eager model agree to 1e-5 (bfloat16 kernels differ by ~1e-3).
    config = ExperimentConfig(loss="energy", score="max_logit", output_dir=str(tmp_path / "run"),
                              precision="float32", **{**TINY, "ood_datasets": ("gaussian",)})
    results = experiment.run(config, verbose=0)
    assert results["score"] == "max_logit"
    model = keras.models.load_model(tmp_path / "run" / "model.keras")
    images = np.random.default_rng(0).normal(size=(4, 28, 28, 1)).astype("float32")
    served = tf.saved_model.load(str(tmp_path / "run" / "saved_model")).signatures[
        "serve_normalized"](images=tf.constant(images))
    np.testing.assert_allclose(served["score"].numpy(), scores.max_logit(model(images)).numpy(),
                               rtol=1e-5, atol=1e-5)
    assert not np.allclose(served["score"].numpy(), scores.energy(model(images)).numpy())
