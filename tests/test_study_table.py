"""scripts/study_table.py: mean ± std over seeds from run folders."""

import json

import helpers
import numpy as np


def load_script():
    return helpers.load_script("study_table.py")


def write_run(folder, accuracy, auroc, score="ice", trace=None, evaluation=None):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(
        {"accuracy": accuracy, "score": score, "mean": {"auroc": {"mean": auroc}}}))
    record = {"epoch": 6, "accuracy": accuracy - 0.01}
    if trace is not None:
        record.update(head_scale_trace=trace, head_scale_condition=2.0)
    (folder / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    if evaluation:
        (folder / "evaluation-val.json").write_text(json.dumps(evaluation))


def test_mean_and_population_std_over_seeds(tmp_path, capsys):
    study = load_script()
    for seed, (acc, auroc) in enumerate([(0.80, 0.90), (0.82, 0.94), (0.81, 0.92)], 1):
        write_run(tmp_path / "ice" / f"seed{seed}", acc, auroc, trace=0.5 * seed,
                  evaluation={"ice": {"accuracy": acc, "mean": {"auroc": {"mean": auroc - 0.1}}},
                              "odin": {"accuracy": acc, "mean": {"auroc": {"mean": 0.7}}},
                              "mahalanobis": {"accuracy": acc, "mean": {"auroc": {"mean": 0.5}}}})
    write_run(tmp_path / "ce" / "seed1", 0.84, 0.6, score="msp")
    (tmp_path / "ce" / "seed2").mkdir()  # unfinished: no results.json, skipped
    table = study.markdown(study.collect(tmp_path))
    std = 100 * np.std([0.80, 0.82, 0.81])  # the population std, metrics.spread
    assert f"| ice | 3 | 81.00 ± {std:.2f} |" in table
    assert "| ce | 1 | 84.00 ± 0.00 |" in table
    assert "| 1 | 1 |" not in table
    evaluated = study.markdown(study.collect(tmp_path, "evaluation-val.json"))
    assert "AUROC mahalanobis" in evaluated and "50.00 ± 0.00" in evaluated
    assert "| AUROC own score | AUROC odin | AUROC mahalanobis |" in evaluated  # own first
    assert "70.00 ± 0.00" in evaluated
    assert "82.00 ± 1.63" in evaluated  # ice AUROC on the evaluation file: 0.80, 0.84, 0.82
    assert study.main([f"--runs_dir={tmp_path / 'none'}"]) == 1
    assert study.main([f"--runs_dir={tmp_path}"]) == 0
    assert "| variant | n | accuracy |" in capsys.readouterr().out


def test_detector_rows_give_accuracy_auroc_and_fpr95_per_score(tmp_path, capsys):
    study = load_script()
    for seed, auroc in enumerate([0.90, 0.94], 1):
        evaluation = {score: {"accuracy": 0.8, "mean": {"auroc": {"mean": auroc + shift},
                                                        "fpr95": {"mean": 0.2 - shift}}}
                      for score, shift in (("msp", 0.0), ("knn", 0.05))}
        write_run(tmp_path / "ce" / f"seed{seed}", 0.8, auroc, score="msp")
        (tmp_path / "ce" / f"seed{seed}" / "evaluation-post.json").write_text(json.dumps(evaluation))
    rows = study.detector_rows(tmp_path, "evaluation-post.json")
    assert [row[:3] for row in rows] == [("ce", "msp", 2), ("ce", "knn", 2)]
    assert rows[1][4] == "97.00 ± 2.00" and rows[1][5] == "15.00 ± 0.00"
    assert study.main([f"--runs_dir={tmp_path}", "--detectors"]) == 1  # needs --evaluation
    assert study.main([f"--runs_dir={tmp_path}", "--detectors", "--evaluation=evaluation-post.json",
                       "--variants=ce"]) == 0
    assert "| ce | knn | 2 | 80.00 ± 0.00 | 97.00 ± 2.00 | 15.00 ± 0.00 |" in capsys.readouterr().out
