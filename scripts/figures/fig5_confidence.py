"""Fig. 5: the distribution of the in-distribution confidence over training epochs.

  python scripts/figures/fig5_confidence.py --run=runs/demo/ice/seed1
  python scripts/figures/fig5_confidence.py --run=oe:runs/demo/oe/seed1 \\
      --run=ice:runs/demo/ice/seed1 --ood=mnist --output=fig5.png

Reads <run>/analysis/confidence.jsonl, written when a run trains with
--analyses=confidence (ice_tf.analysis.probes.ConfidenceHistory): per epoch, histograms of
exp(max h) (Gaussian head) or max softmax (linear head) on fixed in-distribution and OOD
probe images. Each epoch is drawn as a split violin, in-distribution on the left and
OOD on the right, each half scaled to its own largest bin, with the medians joined
across epochs. One panel per --run. Output: --output (default
<first run>/fig5_confidence.png), written atomically.
"""

import io
import os

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402

from ice_tf import atomic_io  # noqa: E402
from ice_tf.experiment import run_folder  # noqa: E402

flags.DEFINE_multi_string("run", None,
                          "A run folder, or label:run_folder (repeatable: one panel each).")
flags.DEFINE_string("ood", "all",
                    "OOD probe set to draw: a label of the run's OOD sets, or all (pooled).")
flags.DEFINE_string("output", None, "PNG path; default <first run>/fig5_confidence.png.")
flags.mark_flag_as_required("run")
FLAGS = flags.FLAGS

IN_COLOR, OOD_COLOR = "#1f77b4", "#d62728"
HALF_WIDTH = 0.42  # of an epoch's slot


def parse_run(spec):
    """'label:dir' or 'dir' -> (label, dir); the label defaults to the method in config.json."""
    label, sep, run_dir = spec.partition(":")
    if not sep or os.sep in label:
        label, run_dir = None, spec
    if label is None:
        label = run_folder.method_of(run_dir) or os.path.basename(os.path.normpath(run_dir))
    return label, run_dir


def _half_violin(ax, x, counts, side, color):
    """Step-shaped half violin of histogram `counts` over [0, 1] at x (side -1 left, +1 right)."""
    counts = np.asarray(counts, np.float64)
    if counts.max() <= 0:
        return
    widths = HALF_WIDTH * counts / counts.max()
    edges = np.linspace(0.0, 1.0, len(counts) + 1)
    widths = np.append(widths, widths[-1])
    ax.fill_betweenx(edges, x, x + side * widths, step="post", color=color, alpha=0.55, lw=0)


def draw_panel(ax, records, ood_label, title):
    epochs, medians_in, medians_ood = [], [], []
    for record in records:
        if ood_label not in record["ood"]:
            raise app.UsageError(
                f"--ood={ood_label}: the run's OOD probe sets are {', '.join(record['ood'])}."
            )
        epoch = record["epoch"]
        _half_violin(ax, epoch, record["in"]["histogram"], -1, IN_COLOR)
        _half_violin(ax, epoch, record["ood"][ood_label]["histogram"], +1, OOD_COLOR)
        epochs.append(epoch)
        medians_in.append(record["in"]["q50"])
        medians_ood.append(record["ood"][ood_label]["q50"])
    ax.plot(epochs, medians_in, color=IN_COLOR, marker="o", ms=3, lw=1,
            label="in-distribution (median)")
    ax.plot(epochs, medians_ood, color=OOD_COLOR, marker="o", ms=3, lw=1,
            label=f"OOD: {ood_label} (median)")
    ax.set_xticks(epochs)
    ax.set_xlim(min(epochs) - 0.6, max(epochs) + 0.6)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("epoch (0 = before training)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    runs = [parse_run(spec) for spec in FLAGS.run]
    panels = []
    for label, run_dir in runs:
        path = run_folder.analysis_path(run_dir, "confidence")
        if not os.path.exists(path):
            raise app.UsageError(
                f"{path} does not exist: train the run with --analyses=confidence."
            )
        records = run_folder.read_jsonl(path)
        if not records:
            raise app.UsageError(f"{path} holds no records.")
        panels.append((label, records))
    panel_width = max(4.5, 0.55 * max(len(records) for _, records in panels) + 2.5)
    figure, axes = plt.subplots(1, len(panels), figsize=(panel_width * len(panels), 3.8),
                                squeeze=False)
    for ax, (label, records) in zip(axes[0], panels):
        draw_panel(ax, records, FLAGS.ood, label)
    axes[0][0].set_ylabel("confidence: exp(max h) or max softmax")
    axes[0][0].legend(fontsize=8, loc="best")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=130)
    plt.close(figure)
    output = FLAGS.output or os.path.join(runs[0][1], "fig5_confidence.png")
    atomic_io.write_atomic(output, buffer.getvalue())
    print(f"Wrote {output}")


if __name__ == "__main__":
    app.run(main)
