"""scripts/table2.py on tiny run folders in the compare.py layout."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from ice_tf import experiment
from ice_tf.experiment import evaluation, run_folder
from ice_tf.experiment.config import ExperimentConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_run_folder(path, loss, seed=1):
    """A run folder as compare.py writes it (untrained weights: only the plumbing is tested)."""
    config = ExperimentConfig(
        loss=loss, backbone="small_cnn", limit_train=200, eval_limit=40, eval_batch_size=20,
        eval_draws=2, ood_datasets=("gaussian", "mnist=embedded_mnist"), output_dir=str(path),
    ).validate()
    os.makedirs(path, exist_ok=True)
    keras.utils.set_random_seed(len(loss) + 100 * seed)
    experiment.build(config, tf.distribute.get_strategy()).save(os.path.join(path, "model.keras"))
    experiment.write_atomic(os.path.join(path, "config.json"), config.to_json() + "\n")
    return config


def _ice_evaluation(run):
    """The run's evaluation with the ICE score, done here rather than by the script."""
    config = ExperimentConfig.from_dict(json.load(open(run / "config.json")))
    model = keras.models.load_model(run / "model.keras", compile=False)
    in_ds, ood_ds = experiment.make_eval_data(config)
    expected = evaluation.evaluate_model(model, in_ds, ood_ds, score="ice", protocol=config.protocol,
                                         num_draws=config.eval_draws, seed=config.seed, verbose=0)
    return expected


def _script(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "table2.py"), *args],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )


def test_table2_rows_columns_and_values(tmp_path):
    runs = tmp_path / "demo"
    for loss in ("ce", "oe", "energy", "ice"):
        _tiny_run_folder(runs / loss / "seed1", loss)
    completed = _script(f"--runs_dir={runs}", "--odin_temperature=100")
    assert completed.returncode == 0, completed.stderr[-3000:]
    table = (runs / "table2.md").read_text()
    assert table in completed.stdout and "=== [6/6] ICE" in completed.stdout
    assert "| Method | Model | Score | AUPR-In ↑ | AUROC ↑ | FPR95 ↓ | In-dist. accuracy ↑ |" in table
    lines = [line for line in table.splitlines() if line.startswith("| ") and "Method" not in line]
    assert [line.split(" | ")[0][2:] for line in lines] == ["MSP", "ODIN", "Mahalanobis", "OE", "Energy", "ICE"]
    assert "| odin (T=100, ε=0.0014) |" in lines[1] and "| energy |" in lines[4]
    assert "| ice |" in lines[5] and "Plain (linear head)" in lines[2] and "ICE (gaussian head)" in lines[5]
    saved = json.load(open(runs / "table2.json"))
    rows = saved["rows"]
    assert [r["score"] for r in rows] == ["msp", "odin", "mahalanobis", "msp", "energy", "ice"]
    assert (runs / "ce" / "seed1" / run_folder.STATS_FILE).exists()
    # The plain rows share one model, hence one accuracy.
    assert rows[0]["accuracy"] == rows[1]["accuracy"] == rows[2]["accuracy"]

    # The ICE row against an evaluation done here; the table prints its percentages.
    expected = _ice_evaluation(runs / "ice" / "seed1")
    for key in ("aupr_in", "auroc", "fpr95"):
        assert rows[5][key] == pytest.approx(expected["mean"][key]["mean"], abs=1e-6)
        assert rows[5][key] == pytest.approx(np.mean([s[key]["mean"] for s in expected["sets"].values()]))
    assert rows[5]["accuracy"] == pytest.approx(expected["accuracy"])
    cells = lines[5].strip("| ").split(" | ")
    assert cells[3:] == [f"{100 * rows[5][k]:.2f}" for k in ("aupr_in", "auroc", "fpr95", "accuracy")]


def test_table2_over_seeds_gives_each_detector_its_mean_and_std(tmp_path):
    runs = tmp_path / "demo"
    for seed in (1, 2):
        for loss in ("ce", "oe", "energy", "ice"):
            _tiny_run_folder(runs / loss / f"seed{seed}", loss, seed)
    completed = _script(f"--runs_dir={runs}", "--seeds=1,2", "--odin_temperature=100")
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "=== [12/12] ICE" in completed.stdout
    saved = json.load(open(runs / "table2.json"))
    assert saved["seeds"] == [1, 2] and len(saved["rows"]) == 6
    for row in saved["rows"]:
        assert [r["run"][-5:] for r in row["per_seed"]] == ["seed1", "seed2"]
        for key in ("aupr_in", "auroc", "fpr95", "accuracy"):
            values = [r[key] for r in row["per_seed"]]
            assert row[key] == pytest.approx(np.mean(values))
            assert row[key + "_std"] == pytest.approx(np.std(values))
    # Different weights per seed: the ICE row's seeds differ, and seed 2 is its own evaluation.
    ice = saved["rows"][5]
    assert ice["per_seed"][0]["auroc"] != ice["per_seed"][1]["auroc"]
    expected = _ice_evaluation(runs / "ice" / "seed2")
    assert ice["per_seed"][1]["auroc"] == pytest.approx(expected["mean"]["auroc"]["mean"], abs=1e-6)
    line = [l for l in (runs / "table2.md").read_text().splitlines() if l.startswith("| ICE |")][0]
    assert f"| {100 * ice['auroc']:.2f} ± {100 * ice['auroc_std']:.2f} |" in line
    assert "Mean ± std (population) over seeds 1, 2." in (runs / "table2.md").read_text()


def test_table2_names_missing_runs_and_bad_method_specs(tmp_path):
    missing = _script(f"--runs_dir={tmp_path}")
    assert missing.returncode != 0
    assert f"{tmp_path / 'ce' / 'seed1'} is not a finished run folder (no config.json)" in missing.stderr
    bad_spec = _script(f"--plain={tmp_path}", "--method=oe")
    assert bad_spec.returncode != 0 and "--method='oe': use label:RUN_DIR" in bad_spec.stderr
    nothing = _script()
    assert nothing.returncode != 0 and "give --runs_dir or --plain" in nothing.stderr
    seeds_without_runs_dir = _script(f"--plain={tmp_path}", "--seeds=1,2")
    assert seeds_without_runs_dir.returncode != 0
    assert "several --seeds need --runs_dir" in seeds_without_runs_dir.stderr
