"""What a deployed model scores: a run's exported SavedModel, loaded without ice-tf's
classes, on the run's own evaluation sets.

  python scripts/saved_model_scores.py --runs_dir=runs/demo3 --method=ice --seeds=1,2,3

For each run folder <runs_dir>/<method>/seed<k>, the SavedModel in saved_model/ is loaded
with `tf.saved_model.load` and its `serve_normalized` signature (else `serving_default`)
scores the run's in-distribution evaluation split and OOD sets, prepared as the run's
evaluation prepares them. Printed per seed and as mean ± population std over seeds: the
mean AUROC and FPR95 over the OOD sets of the exported `score` under the run's protocol,
the largest difference from the run's own recorded mean AUROC (results.json), and the ECE
(%, 15 bins) of the exported `confidence` on the mixture of the test images with all OOD
sets (`ice_tf.calibration.mixture`, half OOD).
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def exported_outputs(serve, dataset):
    """{score, confidence} arrays of the SavedModel over a dataset of (images, labels)."""
    import tensorflow as tf

    scores, confidences = [], []
    for images, _ in dataset:
        outputs = serve(images=tf.cast(images, tf.float32))
        scores.append(outputs["score"].numpy())
        confidences.append(outputs["confidence"].numpy())
    return np.concatenate(scores).astype(np.float64), np.concatenate(confidences).astype(np.float64)


def score_run(run_dir):
    import tensorflow as tf

    from ice_tf import calibration
    from ice_tf.experiment import evaluation, run_data
    from ice_tf.experiment.config import ExperimentConfig

    with open(os.path.join(run_dir, "config.json")) as stream:
        config = ExperimentConfig.from_dict(json.load(stream))
    loaded = tf.saved_model.load(os.path.join(run_dir, "saved_model"))
    signature = "serve_normalized" if "serve_normalized" in loaded.signatures else "serving_default"
    serve = loaded.signatures[signature]
    in_ds, ood = run_data.make_eval_data(config)
    score_in, confidence_in = exported_outputs(serve, in_ds)
    outs = {label: exported_outputs(serve, dataset) for label, dataset in ood.items()}
    _, mean = evaluation.ood_results(score_in, {k: v[0] for k, v in outs.items()},
                                     protocol=config.protocol, num_draws=config.eval_draws,
                                     seed=config.seed)
    with open(os.path.join(run_dir, "results.json")) as stream:
        recorded = json.load(stream)["mean"]["auroc"]["mean"]
    confidence, is_in = calibration.mixture(confidence_in, {k: v[1] for k, v in outs.items()})
    return {"auroc": mean["auroc"]["mean"], "fpr95": mean["fpr95"]["mean"],
            "recorded_auroc": recorded,
            "ece": calibration.expected_calibration_error(confidence, is_in)}


def main(argv=None):
    from ice_tf import metrics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs_dir", required=True)
    parser.add_argument("--method", default="ice")
    parser.add_argument("--seeds", default="1,2,3")
    args = parser.parse_args(argv)
    rows = []
    for seed in args.seeds.split(","):
        run_dir = os.path.join(args.runs_dir, args.method, f"seed{seed}")
        row = score_run(run_dir)
        rows.append(row)
        print(f"{run_dir}: exported score AUROC {100 * row['auroc']:.2f} (recorded "
              f"{100 * row['recorded_auroc']:.2f}), FPR95 {100 * row['fpr95']:.2f}, "
              f"confidence ECE {100 * row['ece']:.2f}")
    print()
    for key in ("auroc", "fpr95", "ece"):
        spread = metrics.spread([100 * row[key] for row in rows])
        print(f"{key}: {spread['mean']:.2f} ± {spread['std']:.2f}")
    gap = max(abs(row["auroc"] - row["recorded_auroc"]) for row in rows)
    print(f"largest |exported - recorded| mean AUROC: {100 * gap:.4f} points")


if __name__ == "__main__":
    main()
