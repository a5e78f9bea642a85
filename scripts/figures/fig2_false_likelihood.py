"""Fig. 2 (false likelihood): the logit f_y(z) against the likelihood exp(h_y(z)) in 2-D.

  python scripts/figures/fig2_false_likelihood.py
  python scripts/figures/fig2_false_likelihood.py --outlier_distance=5 --output=/tmp/fig2.png

Two Gaussian classes with a shared covariance; a linear classifier fitted by Gaussian
discriminant analysis, f_i(z) = w_i·z + b_i (Eqs. 0.1, 0.9), and the class-conditional
likelihood exp(h_y(z)), h_y(z) = -(z - m_y)^T Σ^{-1} (z - m_y) (Eq. 0.11, the ICE head),
with the same fitted m_y and Σ. A is the training point of class y nearest its mean,
B an outlier `--outlier_distance` Mahalanobis units out along w_y. Left: f_y(z); right:
exp(h_y(z)); A and B marked. Prints the four values: f_y(B) > f_y(A) while
p(y|B) < p(y|A), where p(y|z) denotes the likelihood exp(h_y(z)) as in the paper's
Fig. 2 (the softmax posterior, like f_y, grows along w_y).
No TensorFlow; takes a few seconds.
"""

import time

import numpy as np
from absl import app, flags

from ice_tf.figures import plotting, toy

flags.DEFINE_integer("num_per_class", 200, "Training points per class.")
flags.DEFINE_float("outlier_distance", 5.0, "Mahalanobis distance of B from the class mean m_y.")
flags.DEFINE_integer("target_class", 1, "The class y (0 or 1).")
flags.DEFINE_integer("seed", 0, "Random seed of the toy data.")
flags.DEFINE_integer("grid", 200, "Heat-map resolution (points per axis).")
flags.DEFINE_string("output", "figures/fig2_false_likelihood.png", "Output PNG.")
FLAGS = flags.FLAGS


def draw(example, grid_size):
    """The two-panel figure of a `toy.FalseLikelihoodExample`."""
    gda, y = example.gda, example.target_class
    corners = np.concatenate([example.z, example.point_b[None]])
    low, high = corners.min(axis=0) - 1.0, corners.max(axis=0) + 1.5
    xs, ys = np.linspace(low[0], high[0], grid_size), np.linspace(low[1], high[1], grid_size)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    logits = toy.linear_logits(grid, gda.weights, gda.biases)
    likelihood = np.exp(toy.gaussian_scores(grid, gda.means, gda.covariance)[:, y])
    boundary = (logits[:, 1] - logits[:, 0]).reshape(grid_size, grid_size)

    figure, axes = plotting.new_figure(1, 2, panel_size=(4.4, 3.8))
    colors = plotting.class_colors(len(gda.means))
    panels = [
        (axes[0, 0], logits[:, y], "viridis", f"(a) logit $f_{y}(z) = w_{y}^\\top z + b_{y}$",
         example.logit_a, example.logit_b, "f"),
        (axes[0, 1], likelihood, "magma", f"(b) likelihood $\\exp(h_{y}(z))$",
         example.likelihood_a, example.likelihood_b, "p"),
    ]
    for ax, values, cmap, title, value_a, value_b, symbol in panels:
        image = ax.imshow(values.reshape(grid_size, grid_size), origin="lower", cmap=cmap,
                          extent=(low[0], high[0], low[1], high[1]), aspect="auto")
        figure.colorbar(image, ax=ax, shrink=0.85)
        ax.contour(xs, ys, boundary, levels=[0.0], colors="white", linestyles="--", linewidths=1)
        for k, color in enumerate(colors):
            points = example.z[example.labels == k]
            ax.scatter(points[:, 0], points[:, 1], s=6, color=color, alpha=0.6, label=f"class {k}")
        for name, point, value in (("A", example.point_a, value_a), ("B", example.point_b, value_b)):
            ax.scatter(*point, s=110, marker="*", color="white", edgecolors="red", zorder=5)
            ax.annotate(f"{name}: {symbol}={value:.3g}", point, xytext=(0, 10), textcoords="offset points",
                        ha="center", color="white", fontsize=9, fontweight="bold",
                        bbox=dict(boxstyle="round,pad=0.2", facecolor="black", alpha=0.5, linewidth=0))
        ax.set_title(title, fontsize=10)
        ax.set_xlim(low[0], high[0])
        ax.set_ylim(low[1], high[1])
    axes[0, 0].legend(loc="lower right", fontsize=8)
    figure.suptitle(
        f"$f_{y}(B) = {example.logit_b:.2f} > f_{y}(A) = {example.logit_a:.2f}$ but "
        f"$p({y}|B) = {example.likelihood_b:.2g} < p({y}|A) = {example.likelihood_a:.2g}$",
        fontsize=10,
    )
    return figure


def main(argv):
    del argv
    started = time.time()
    try:
        example = toy.false_likelihood_example(
            num_per_class=FLAGS.num_per_class, outlier_distance=FLAGS.outlier_distance,
            target_class=FLAGS.target_class, seed=FLAGS.seed,
        )
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    path = plotting.save_png(draw(example, FLAGS.grid), FLAGS.output)
    y = example.target_class
    print(f"f_{y}(A) = {example.logit_a:.6g}  f_{y}(B) = {example.logit_b:.6g}  "
          f"p({y}|A) = {example.likelihood_a:.6g}  p({y}|B) = {example.likelihood_b:.6g}")
    holds = example.logit_b > example.logit_a and example.likelihood_b < example.likelihood_a
    print(f"f_y(B) > f_y(A) while p(y|B) < p(y|A): {holds}")
    print(f"Written: {path} ({time.time() - started:.1f} s)")


if __name__ == "__main__":
    app.run(main)
