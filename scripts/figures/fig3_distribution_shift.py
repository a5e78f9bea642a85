"""Fig. 3 (distribution shift): trainable 2-D features under OE and ICE, SGD snapshots.

  python scripts/figures/fig3_distribution_shift.py
  python scripts/figures/fig3_distribution_shift.py --steps=120 --output=/tmp/fig3.png

In-distribution features of K Gaussian classes and outliers on a ring around them are
themselves the trainable variables (as if a backbone produced them); the head stays at
its initial fit on the in-distribution features: for OE the GDA linear classifier of
Eq. (0.9) (w_i, b_i), for ICE a `GaussianLayer` fitted to the same features. Each SGD
step follows the gradients of the project's own losses, `ice_tf.losses.get("oe")`
(Eq. 0.3) and `get("ice")` (Eq. 0.15), computed with TensorFlow (`ice_tf.figures.toy`).
Top row OE, bottom row ICE, one panel per snapshot. OE drags the outliers to where
all logits are equal (Eq. 0.10), the centre between the classes; ICE leaves far
outliers where they are, pushes near ones away from their nearest class and gathers
each class around its mean (Eq. 0.14). The default λs differ so that both rows change
visibly over the same steps: with λ = 1, ICE's in-distribution term collapses every
class onto its mean within a few steps.

Prints per method the mean distance of the outliers to the nearest class mean (the
mean of that class's current features) at the first and the last snapshot.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from ice_tf.cli import experiment_flags, runner  # noqa: E402
from ice_tf.figures import plotting, toy  # noqa: E402

flags.DEFINE_integer("num_classes", 3, "In-distribution classes K (>= 2).")
flags.DEFINE_integer("num_per_class", 40, "In-distribution features per class.")
flags.DEFINE_integer("num_outliers", 80, "Outlier features.")
flags.DEFINE_integer("steps", 60, "SGD steps.")
flags.DEFINE_integer("snapshots", 4, "Panels per method: step 0 and evenly spaced steps up to --steps.")
flags.DEFINE_float("learning_rate", 0.05, "SGD step size (per-point gradients).")
flags.DEFINE_float("oe_weight", 1.0, "λ of OE (Eq. 0.3).")
flags.DEFINE_float("ice_weight", 0.15, "λ of ICE (Eq. 0.15).")
flags.DEFINE_integer("seed", 0, "Random seed of the toy data.")
flags.DEFINE_string("output", "figures/fig3_distribution_shift.png", "Output PNG.")
FLAGS = flags.FLAGS


def draw(runs, labels, num_classes):
    """One row per method, one panel per snapshot; `runs` maps method -> snapshots."""
    num_cols = max(len(snapshots) for snapshots in runs.values())
    figure, axes = plotting.new_figure(len(runs), num_cols, panel_size=(2.9, 2.9))
    everything = np.concatenate([np.concatenate([s.features, s.outliers])
                                 for snapshots in runs.values() for s in snapshots])
    low, high = everything.min(axis=0) - 0.5, everything.max(axis=0) + 0.5
    colors = plotting.class_colors(num_classes)
    for row, (method, snapshots) in enumerate(runs.items()):
        for col in range(num_cols):
            ax = axes[row, col]
            ax.set_xlim(low[0], high[0])
            ax.set_ylim(low[1], high[1])
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(snapshots):
                ax.axis("off")
                continue
            snapshot = snapshots[col]
            for k, color in enumerate(colors):
                points = snapshot.features[labels == k]
                ax.scatter(points[:, 0], points[:, 1], s=7, color=color, alpha=0.8)
            ax.scatter(snapshot.outliers[:, 0], snapshot.outliers[:, 1], s=12, marker="x",
                       color=plotting.OOD_COLOR, linewidths=0.8)
            distance = toy.outlier_distances([snapshot], labels, num_classes)[0]
            ax.set_title(f"{plotting.method_label(method)}, step {snapshot.step}\n"
                         f"outlier-class distance {distance:.2f}", fontsize=9)
    return figure


def main(argv):
    del argv
    experiment_flags.quiet_tensorflow_logging(FLAGS)
    started = time.time()
    if FLAGS.snapshots < 2:
        raise app.UsageError("--snapshots must be >= 2 (the start and at least one later step).")
    try:
        data = toy.distribution_shift_toy(
            num_classes=FLAGS.num_classes, num_per_class=FLAGS.num_per_class,
            num_outliers=FLAGS.num_outliers, seed=FLAGS.seed,
        )
        steps = np.linspace(0, FLAGS.steps, FLAGS.snapshots).round().astype(int)
        runs = {
            method: toy.simulate_feature_shift(
                method, data.features, data.labels, data.outliers, num_steps=FLAGS.steps,
                learning_rate=FLAGS.learning_rate, weight=weight, snapshot_steps=steps,
            )
            for method, weight in (("oe", FLAGS.oe_weight), ("ice", FLAGS.ice_weight))
        }
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    path = plotting.save_png(draw(runs, data.labels, data.num_classes), FLAGS.output)
    print("Mean distance of the outliers to the nearest class mean:")
    for method, snapshots in runs.items():
        first, last = toy.outlier_distances([snapshots[0], snapshots[-1]], data.labels, data.num_classes)
        print(f"  {method}: {first:.4f} at step {snapshots[0].step} -> {last:.4f} at step "
              f"{snapshots[-1].step}")
    print(f"Written: {path} ({time.time() - started:.1f} s)")


if __name__ == "__main__":
    runner.run(main, __doc__)
