"""ICE's terms at initialisation, by feature size d: how large the in-distribution term starts.

  python scripts/initial_terms.py --feature_dims=32,128,512 --seeds=1,2,3

For each feature size d, seed and head initialisation (random: N(0, 0.05²) means and L = I,
the default; features: the class means and tied covariance of 20 other batches' features,
`models.fit_gaussian_head`, as `head_init=features` does),
a freshly initialised small_cnn with a Gaussian head sees one training batch of 128
in-distribution images (training-mode BatchNorm, as the default `separate` pass). Printed, mean ± std over the seeds:
- -h_y, the in-distribution term of Eq. (0.14), and -h_y / d;
- CE on h (Eq. 0.11 as logits);
- λ·(-h_y) / CE, the in-distribution term's share against CE in Eq. (0.15);
- ||∇ λ·(-h_y)|| / ||∇ CE|| over the backbone's weights: which term steers the first steps.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

from ice_tf import backbones, layers, losses, metrics, models  # noqa: E402
from ice_tf.experiment import run_data  # noqa: E402
from ice_tf.cli import runner, seed_flags  # noqa: E402
from ice_tf.experiment.config import ExperimentConfig  # noqa: E402
from ice_tf.experiment import HEAD_INIT_BATCHES  # noqa: E402

FLAGS = flags.FLAGS
HEAD_INITS = ("random", "features")


def define_flags():
    """The script's flags; defined when it runs, so that tests can import it."""
    flags.DEFINE_list("feature_dims", ["16", "32", "64", "128", "256", "512", "1024"],
                      "Feature sizes d of the small_cnn's last layer.")
    seed_flags.define_seeds_flag("Seeds of the initialisation.", default=("1", "2", "3"))
    flags.DEFINE_float("loss_weight", None, "λ; unset = ICE's default.")
    flags.DEFINE_integer("batch", 128, "In-distribution images in the batch.")


def measure(images, labels, feature_dim, seed, head_init, weight, fit_images=None,
            fit_labels=None):
    """The terms of one fresh model on one batch (see the module docstring); a features
    head is fitted to `fit_images` in batches of len(images)."""
    keras.utils.set_random_seed(seed)
    model = models.OODModel(
        backbones.get("small_cnn", images.shape[1:], feature_dim=feature_dim),
        layers.make_head("gaussian", int(labels.max()) + 1))
    if head_init == "features":
        fit_batches = tf.data.Dataset.from_tensor_slices((fit_images, fit_labels)).batch(len(images))
        models.fit_gaussian_head(model, fit_batches, verbose=0)
    variables = model.backbone.trainable_variables
    with tf.GradientTape(persistent=True) as tape, models.moving_statistics_kept(model):
        terms = losses.get("ice").in_distribution_terms(labels, model(images, training=True))
        in_term, ce = terms["in_term"], terms["ce"]
    norm = lambda grads: float(tf.linalg.global_norm(grads))  # noqa: E731
    gradient_ratio = weight * norm(tape.gradient(in_term, variables)) / norm(
        tape.gradient(ce, variables))
    in_term, ce = float(in_term), float(ce)
    return {"in_term": in_term, "in_term_per_d": in_term / feature_dim, "ce": ce,
            "share": weight * in_term / ce, "gradient_ratio": gradient_ratio}


def table(images, labels, fit_images, fit_labels, feature_dims, seeds, weight):
    """[(d, head_init, {key: (mean, std)})] over the seeds."""
    rows = []
    for dim in feature_dims:
        for head_init in HEAD_INITS:
            results = [measure(images, labels, dim, seed, head_init, weight, fit_images,
                               fit_labels) for seed in seeds]
            spreads = {key: metrics.spread([r[key] for r in results]) for key in results[0]}
            rows.append((dim, head_init, {key: (spread["mean"], spread["std"])
                                          for key, spread in spreads.items()}))
    return rows


def main(argv):
    del argv
    config = ExperimentConfig(backbone="small_cnn")
    images, labels = run_data.load_images(config, config.in_dataset, "train",
                                          (1 + HEAD_INIT_BATCHES) * FLAGS.batch)
    images, labels = tf.constant(images), np.asarray(labels)
    weight = FLAGS.loss_weight if FLAGS.loss_weight is not None else losses.spec("ice").hyperparameters["weight"]
    rows = table(images[:FLAGS.batch], labels[:FLAGS.batch], images[FLAGS.batch:],
                 labels[FLAGS.batch:], [int(d) for d in FLAGS.feature_dims],
                 seed_flags.parsed_seeds(), weight)
    keys = ("in_term", "in_term_per_d", "ce", "share", "gradient_ratio")
    print("| d | head init | -h_y | -h_y / d | CE | λ·(-h_y) / CE | gradient ratio |")
    print("|---|---|---|---|---|---|---|")
    for dim, head_init, stats in rows:
        cells = [f"{stats[k][0]:.3g} ± {stats[k][1]:.2g}" for k in keys]
        print(f"| {dim} | {head_init} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    runner.command(define_flags, main, __doc__)()
