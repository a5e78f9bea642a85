"""ROC curves: one panel per OOD test set, one curve per method, AUROC in the legend.

  python scripts/figures/roc_curves.py                      # runs/demo/{ce,oe,energy,ice}/seed1
  python scripts/figures/roc_curves.py --sets=mnist,textures
  python scripts/figures/roc_curves.py --run=ce:runs/a/ce/seed1 --run=ice:runs/a/ice/seed1

Reads each run folder's scores.npz (written by training: key "in" for the
in-distribution test scores and one key per OOD set label; higher score = more
in-distribution, each method's own score) and draws the ROC curve with
in-distribution as the positive class (`ice_tf.metrics.roc_curve_points`): true
positive rate = in-distribution images accepted, false positive rate = OOD images
accepted. The curves use every stored score (the "full" protocol), so their AUROC can
differ slightly from the tables' "oe" protocol mean over subsampled draws.
No TensorFlow; takes a few seconds.
"""

import time

from absl import app, flags

from ice_tf.figures import plotting

flags.DEFINE_string("runs_dir", "runs/demo", "Folder of a comparison: <runs_dir>/<method>/seed<run_seed>.")
flags.DEFINE_list("methods", list(plotting.DEFAULT_METHODS),
                  "Methods (sub-folders of --runs_dir), one curve each.")
flags.DEFINE_integer("run_seed", 1, "Which seed<k> folder of each method.")
flags.DEFINE_multi_string("run", [], "label:folder of a run (repeatable); replaces --runs_dir/--methods.")
flags.DEFINE_list("sets", [], "OOD set labels, one panel each; default: every set all runs have.")
flags.DEFINE_string("output", "figures/roc_curves.png", "Output PNG.")
FLAGS = flags.FLAGS


def choose_sets(scores_by_run, requested):
    """The OOD set labels to draw: `requested`, or those every run has (first run's order)."""
    runs = list(scores_by_run)
    common = [key for key in scores_by_run[runs[0]] if key != "in"
              and all(key in scores for scores in scores_by_run.values())]
    if not requested:
        if not common:
            raise ValueError("the runs share no OOD set; pass --run folders evaluated on the same sets.")
        return common
    for label in requested:
        lacking = [run for run, scores in scores_by_run.items() if label not in scores]
        if lacking:
            raise ValueError(f"OOD set {label!r} is missing from the scores of {', '.join(lacking)}; "
                             f"sets all runs have: {', '.join(common) or 'none'}.")
    return list(requested)


def draw(scores_by_run, sets):
    """One ROC panel per set; returns (figure, {set: {run: auroc}}) (`plotting.roc_figure`)."""
    return plotting.roc_figure(scores_by_run, sets)


def main(argv):
    del argv
    started = time.time()
    try:
        folders = plotting.run_folders(FLAGS.runs_dir, FLAGS.methods, FLAGS.run_seed, FLAGS.run)
        plotting.check_run_folders(folders, ("scores.npz",))
        scores_by_run = {run: plotting.load_scores(folder) for run, folder in folders.items()}
        sets = choose_sets(scores_by_run, FLAGS.sets)
    except (ValueError, FileNotFoundError) as error:
        raise app.UsageError(str(error)) from None
    figure, aurocs = draw(scores_by_run, sets)
    path = plotting.save_png(figure, FLAGS.output)
    runs = list(scores_by_run)
    print("AUROC (%), full protocol:")
    print("| OOD set | " + " | ".join(runs) + " |")
    print("|---" * (len(runs) + 1) + "|")
    for label in sets:
        print(f"| {label} | " + " | ".join(f"{100 * aurocs[label][run]:.2f}" for run in runs) + " |")
    print(f"Written: {path} ({time.time() - started:.1f} s)")


if __name__ == "__main__":
    app.run(main)
