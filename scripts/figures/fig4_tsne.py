"""Fig. 4 (feature distribution): t-SNE of penultimate features, one panel per model.

  python scripts/figures/fig4_tsne.py                       # runs/demo/{ce,oe,energy,ice}/seed1
  python scripts/figures/fig4_tsne.py --placement=knn --ood_set=mnist
  python scripts/figures/fig4_tsne.py --run=ce:runs/a/ce/seed1 --run=ice:runs/a/ice/seed1

For each trained run (a folder with model.keras and config.json, as ice-tf compare
writes them) the penultimate features z = `model.features(x)` of `--num_in`
in-distribution test images and `--num_ood` images of one OOD test set are embedded in
2-D with t-SNE; in-distribution points are coloured by class, OOD points are black.
Every panel shows the same images: the evaluation sets are built from each run's
config (`ice_tf.experiment.run_data.make_eval_data`) with the figure's --seed.

scikit-learn's TSNE cannot transform new points, so `--placement` chooses how OOD
features are placed:
  joint (default): one t-SNE fitted on in-distribution and OOD features together;
  knn: t-SNE fitted on the in-distribution features only, as the paper describes; each
    OOD feature is placed at the distance-weighted mean embedding of its --neighbors
    nearest in-distribution features (in feature space), a standard out-of-sample
    extension. It shows where OOD features fall relative to the classes, but never
    away from all of them.

--ood_set defaults to the run's held-out near-OOD set if it has one (a dataset whose
name ends in "heldout"), else its "textures" set, else its first OOD set.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from ice_tf.cli import experiment_flags, runner  # noqa: E402
from ice_tf.figures import plotting  # noqa: E402

flags.DEFINE_string("runs_dir", "runs/demo", "Folder of a comparison: <runs_dir>/<method>/seed<run_seed>.")
flags.DEFINE_list("methods", list(plotting.DEFAULT_METHODS),
                  "Methods (sub-folders of --runs_dir), one panel each.")
flags.DEFINE_integer("run_seed", 1, "Which seed<k> folder of each method.")
flags.DEFINE_multi_string("run", [], "label:folder of a run (repeatable); replaces --runs_dir/--methods.")
flags.DEFINE_string("ood_set", None, "OOD set label from the runs' config; default: see the docstring.")
flags.DEFINE_integer("num_in", 1000, "In-distribution test images.")
flags.DEFINE_integer("num_ood", 300, "OOD images.")
flags.DEFINE_enum("placement", "joint", list(plotting.PLACEMENTS), "How OOD features are embedded.")
flags.DEFINE_float("perplexity", 30.0, "t-SNE perplexity.")
flags.DEFINE_integer("neighbors", 10, "k of the knn placement.")
flags.DEFINE_integer("seed", 0, "Seed of the image subsample and of t-SNE.")
flags.DEFINE_integer("tsne_threads", 1,
                     "OpenMP threads of t-SNE; 0 = all cores (see ice_tf.figures.plotting.tsne_embedding).")
flags.DEFINE_string("output", "figures/fig4_tsne.png", "Output PNG.")
FLAGS = flags.FLAGS


def default_ood_label(config):
    """The held-out (near-OOD) set, else "textures", else the first OOD set."""
    specs = config.ood_set_specs
    if not specs:
        raise ValueError("the run's config has no OOD test sets (ood_datasets).")
    for spec in specs:
        if spec.dataset.endswith("heldout"):
            return spec.label
    for spec in specs:
        if spec.label == "textures" or "textures" in spec.dataset:
            return spec.label
    return specs[0].label





def features_of(model, config, ood_label, num_in, num_ood, seed):
    """(features_in, labels_in, features_ood) of a seeded subsample of the evaluation sets."""
    from ice_tf.experiment import run_data

    labels = [spec.label for spec in config.ood_set_specs]
    if ood_label not in labels:
        raise ValueError(
            f"OOD set {ood_label!r} is not in the run's config; valid sets: {', '.join(labels)}."
        )
    spec_text = config.ood_datasets[labels.index(ood_label)]
    # eval_limit is a seeded subsample of each set: the same images for every run.
    config = config.replace(seed=seed, eval_limit=num_in, ood_datasets=(spec_text,))
    in_dataset, _ = run_data.make_eval_data(config)
    _, ood_datasets = run_data.make_eval_data(config.replace(eval_limit=num_ood))

    def collect(dataset):
        features, labels = [], []
        for images, batch_labels in dataset:
            features.append(model.features(images, training=False).numpy())
            labels.append(batch_labels.numpy())
        return np.concatenate(features), np.concatenate(labels)

    features_in, labels_in = collect(in_dataset)
    features_ood, _ = collect(ood_datasets[ood_label])
    return features_in, labels_in, features_ood


def draw(panels, num_classes, ood_label, placement):
    """One scatter panel per model; `panels` maps label -> (embedding_in, labels, embedding_ood)."""
    num_cols = min(len(panels), 4)
    num_rows = -(-len(panels) // num_cols)
    figure, axes = plotting.new_figure(num_rows, num_cols, panel_size=(3.3, 3.4))
    colors = plotting.class_colors(num_classes)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (label, (embedding_in, labels_in, embedding_ood)) in zip(axes.flat, panels.items()):
        for k, color in enumerate(colors):
            points = embedding_in[labels_in == k]
            ax.scatter(points[:, 0], points[:, 1], s=3, color=color, alpha=0.7, linewidths=0,
                       label=f"class {k}")
        ax.scatter(embedding_ood[:, 0], embedding_ood[:, 1], s=5, marker="^", color=plotting.OOD_COLOR,
                   linewidths=0, label=f"OOD: {ood_label}")
        ax.set_title(plotting.method_label(label), fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, names = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, names, loc="outside lower center", ncol=min(len(names), 6), fontsize=8,
                  markerscale=3, frameon=False)
    figure.suptitle(f"t-SNE of penultimate features ({placement} placement of OOD features)", fontsize=10)
    return figure


def main(argv):
    del argv
    experiment_flags.quiet_tensorflow_logging(FLAGS)
    started = time.time()
    try:
        folders = plotting.run_folders(FLAGS.runs_dir, FLAGS.methods, FLAGS.run_seed, FLAGS.run)
        plotting.check_run_folders(folders, ("model.keras", "config.json"))
    except (ValueError, FileNotFoundError) as error:
        raise app.UsageError(str(error)) from None
    if FLAGS.num_in < 2 or FLAGS.num_ood < 1:
        raise app.UsageError("--num_in must be >= 2 and --num_ood >= 1.")
    from ice_tf import experiment  # after the argument checks: TensorFlow is slow to start

    panels, num_classes, ood_label = {}, 0, FLAGS.ood_set
    for label, folder in folders.items():
        model_started = time.time()
        model, config, _ = experiment.load_run(folder)
        ood_label = ood_label or default_ood_label(config)
        try:
            features_in, labels_in, features_ood = features_of(
                model, config, ood_label, FLAGS.num_in, FLAGS.num_ood, FLAGS.seed)
            embedding_in, embedding_ood = plotting.tsne_embedding(
                features_in, features_ood, placement=FLAGS.placement, perplexity=FLAGS.perplexity,
                num_neighbors=min(FLAGS.neighbors, len(features_in)), seed=FLAGS.seed,
                num_threads=FLAGS.tsne_threads or None,
            )
        except ValueError as error:
            raise app.UsageError(f"{folder}: {error}") from None
        panels[label] = (embedding_in, labels_in, embedding_ood)
        num_classes = max(num_classes, model.num_classes)
        print(f"{label}: {len(features_in)} in-distribution + {len(features_ood)} {ood_label} "
              f"features of dimension {features_in.shape[1]} embedded in {time.time() - model_started:.1f} s")
    path = plotting.save_png(draw(panels, num_classes, ood_label, FLAGS.placement), FLAGS.output)
    print(f"Written: {path} ({time.time() - started:.1f} s)")


if __name__ == "__main__":
    runner.run(main, __doc__)
