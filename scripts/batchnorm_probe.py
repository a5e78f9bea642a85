"""How a trained model's features and accuracy depend on the batch BatchNorm sees.

  python scripts/batchnorm_probe.py --run=ice:runs/study_bn/ice/seed1 --run=ce:runs/study_bn/ce/seed1

For each run (validation data only: the in-distribution val split, the outlier source's
val split), over --batches batches of 128 in-distribution images and 256 outliers:
- accuracy with BatchNorm in inference mode (the moving averages, as evaluation runs);
- accuracy with training-mode BatchNorm over the mixed batch (what a `joint` run's head was
  trained on) and over the in-distribution images alone;
- the jitter of the features: the std over batches of the in-distribution batch's mean
  feature, relative to the mean within-class std of the features, for mixed batches and
  for in-distribution batches alone.
The moving averages are put back after each training-mode pass; the model is not changed.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

from ice_tf import experiment, models  # noqa: E402
from ice_tf.experiment import run_data, run_folder  # noqa: E402
from ice_tf.cli import runner  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """The script's flags; defined when it runs, so that tests can import it."""
    flags.DEFINE_multi_string("run", [], "label:run_folder (repeatable).")
    flags.DEFINE_integer("batches", 7, "Batches of 128 + 256 validation images (at most as "
                         "many as the validation splits hold).")


def _features_and_outputs(model, images, training):
    with models.moving_statistics_kept(model):
        features = model.backbone(images, training=training)
    return np.asarray(features, np.float64), np.asarray(model.head(features))


def probe(model, config, num_batches):
    """The probe's numbers for one trained model (see the module docstring)."""
    x_in, y_in = run_data.load_images(config, config.in_dataset, "val", 128 * num_batches)
    x_out, _ = run_data.load_images(config, config.outlier_dataset, "val", 256 * num_batches)
    result = {}
    num_batches = min(num_batches, len(x_in) // 128, len(x_out) // 256)
    for mode in ("inference", "mixed", "in_only"):
        correct, means, spreads = 0, [], []
        for b in range(num_batches):
            images = x_in[128 * b:128 * (b + 1)]
            labels = y_in[128 * b:128 * (b + 1)]
            if mode == "mixed":
                batch = np.concatenate([images, x_out[256 * b:256 * (b + 1)]])
            else:
                batch = images
            features, outputs = _features_and_outputs(model, tf.constant(batch), mode != "inference")
            features, outputs = features[:len(images)], outputs[:len(images)]
            correct += int(np.sum(outputs.argmax(1) == labels))
            means.append(features.mean(0))
            spreads.append(np.mean([features[labels == k].std(0).mean()
                                    for k in np.unique(labels) if np.sum(labels == k) > 1]))
        result[f"accuracy_{mode}"] = correct / (128 * num_batches)
        result[f"jitter_{mode}"] = float(np.std(np.stack(means), axis=0).mean() / np.mean(spreads))
    return result


def main(argv):
    del argv
    rows = []
    for label, folder in map(run_folder.parse_label_folder, FLAGS.run):
        model, config, _ = experiment.load_run(folder)
        rows.append((label, probe(model, config, FLAGS.batches)))
    keys = ["accuracy_inference", "accuracy_mixed", "accuracy_in_only", "jitter_mixed",
            "jitter_in_only"]
    print("| run | " + " | ".join(keys) + " |")
    print("|" + "---|" * (len(keys) + 1))
    for label, result in rows:
        cells = [f"{100 * result[k]:.2f}" if k.startswith("accuracy") else f"{result[k]:.3f}"
                 for k in keys]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    runner.command(define_flags, main, __doc__)()
