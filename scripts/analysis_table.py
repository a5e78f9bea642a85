"""Tables (and curves) of the training-time analyses of several runs, per method and epoch.

  python scripts/analysis_table.py --runs_dir=runs/demo
  python scripts/analysis_table.py --runs_dir=runs/demo --png=runs/demo/analysis.png
  python scripts/analysis_table.py --runs_dir=runs/finetune3 --seeds=1,2,3   # mean ± std
  python scripts/analysis_table.py --run=oe:runs/demo/oe/seed1 --run=ice:runs/demo/ice/seed1 \\
      --output=analysis.md

Reads <run>/analysis/*.jsonl, written when a run trains with
--analyses=gradient_meter,shift,confidence (see docs/analyses.md). With --runs_dir the
methods are the folders <runs_dir>/<label>/seed<k> (as ice-tf compare writes them) that
hold analyses; with several --seeds every cell is the mean ± std (population) over the
seeds, and the curves are the means. The markdown table (contradictory-gradient fractions, distances of
outlier and in-distribution features to the class centres, their ratio and overlap, and
the probe confidences) is printed and written to --output (default
<runs_dir>/analysis.md); --png also draws the curves over epochs.
"""

import os

from absl import app, flags

from ice_tf import analysis, atomic_io
from ice_tf.experiment import run_folder
from ice_tf.cli import seed_flags

flags.DEFINE_string("runs_dir", None, "A comparison folder holding <label>/seed<k>/ run folders.")
seed_flags.define_seeds_flag("With --runs_dir: the seed folders read for every method; "
                             "several give mean ± std over seeds.")
flags.DEFINE_multi_string("run", [], "label:run_dir (repeatable); added after --runs_dir's runs.")
flags.DEFINE_string("output", None,
                    "Markdown output; default <runs_dir>/analysis.md (none with --run only).")
flags.DEFINE_string("png", None, "Also draw the curves over epochs into this PNG.")
FLAGS = flags.FLAGS

# Methods first in the paper's order, then any other label alphabetically.
_ORDER = ("ce", "oe", "energy", "energy_gaussian", "bce", "ice_minus", "ice")
# (title, summary column) of each panel of the PNG.
_PANELS = (
    ("Contradictory pairs, in-distribution (%)", "Contr. in %"),
    ("Contradictory pairs, outliers (%)", "Contr. out %"),
    ("Outlier / in-distribution distance to centre", "Ratio"),
    ("Outliers inside in-distribution 95% radius (%)", "Overlap %"),
)


def _sort_key(label):
    return (_ORDER.index(label), "") if label in _ORDER else (len(_ORDER), label)


def find_runs(runs_dir, seed):
    """{label: run_dir} for <runs_dir>/<label>/seed<seed> folders that hold analyses."""
    runs = {}
    for label in sorted(os.listdir(runs_dir), key=_sort_key):
        run_dir = run_folder.method_run(runs_dir, label, seed)
        if os.path.isdir(os.path.join(run_dir, run_folder.ANALYSIS_DIR)):
            runs[label] = run_dir
    return runs


def parse_runs(specs):
    try:
        return dict(run_folder.parse_label_folder(spec) for spec in specs)
    except ValueError as error:
        raise app.UsageError(str(error)) from None


def plot_curves(runs, path):
    """One panel per `_PANELS` entry, one line per method, epochs on the x axis."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(1, len(_PANELS), figsize=(4.2 * len(_PANELS), 3.4))
    for ax, (title, column) in zip(axes, _PANELS):
        for label, analyses in runs.items():
            points = [(row["epoch"], row[column]) for row in analysis.method_rows(analyses)
                      if row[column] is not None]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch (0 = before training)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    atomic_io.write_atomic(path, buffer.getvalue())


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    seeds = seed_flags.parsed_seeds()
    run_dirs = {}  # label: [run_dir per seed]
    if FLAGS.runs_dir:
        if not os.path.isdir(FLAGS.runs_dir):
            raise app.UsageError(f"--runs_dir={FLAGS.runs_dir} is not a folder.")
        found = [find_runs(FLAGS.runs_dir, seed) for seed in seeds]
        for label in found[0]:
            lacking = [seed for seed, runs in zip(seeds, found) if label not in runs]
            if lacking:
                raise app.UsageError(
                    f"{label} has no analyses for seed {', '.join(map(str, lacking))} under "
                    f"{FLAGS.runs_dir}; train those seeds with --analyses or drop them from --seeds.")
            run_dirs[label] = [runs[label] for runs in found]
    run_dirs.update({label: [path] for label, path in parse_runs(FLAGS.run).items()})
    if not run_dirs:
        raise app.UsageError(
            "no runs with analyses: give --runs_dir (with <label>/seed<k>/analysis/ folders) "
            "or --run=label:run_dir; train with --analyses=gradient_meter,shift,confidence."
        )
    runs = {label: [run_folder.read_analyses(path) for path in paths]
            for label, paths in run_dirs.items()}
    empty = [path for paths, found in zip(run_dirs.values(), runs.values())
             for path, one in zip(paths, found) if not one]
    if empty:
        raise app.UsageError(f"no analysis files under {', '.join(empty)}.")
    runs = {label: found[0] if len(found) == 1 else found for label, found in runs.items()}
    table = analysis.summary_markdown(runs)
    print(table)
    output = FLAGS.output
    if output is None and FLAGS.runs_dir:
        output = os.path.join(FLAGS.runs_dir, "analysis.md")
    if output:
        header = "Training-time analyses (docs/analyses.md); epoch 0 is before training."
        if len(seeds) > 1:
            header += f" Mean ± std (population) over seeds {', '.join(map(str, seeds))}."
        header += "\n\n"
        atomic_io.write_atomic(output, (header + table).encode())
        print(f"Wrote {output}")
    if FLAGS.png:
        plot_curves(runs, FLAGS.png)
        print(f"Wrote {FLAGS.png}")


if __name__ == "__main__":
    app.run(main)
