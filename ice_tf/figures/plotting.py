"""Helpers shared by the figure scripts in scripts/figures/.

* Figures are `matplotlib.figure.Figure` objects on the Agg canvas (no pyplot, no GUI
  backend, no global state): `new_figure`, saved as PNG through a temporary file in
  the same folder and `os.replace`, so a failed run never leaves half a PNG
  (`save_png`).
* Run folders (`<runs_dir>/<method>/seed<k>`, as ice-tf compare writes them):
  `run_folders`, `check_run_folders`, `load_scores` from `ice_tf.experiment.run_folder`.
* t-SNE for Fig. 4 (`tsne_embedding`). scikit-learn's TSNE has no `transform`, so OOD
  features are placed in one of two ways:
    "joint" (default): one t-SNE fitted on in-distribution and OOD features together;
    "knn": t-SNE fitted on in-distribution features only, each OOD feature placed at
      the distance-weighted mean embedding of its k nearest in-distribution
      neighbours in feature space (`knn_placement`), the paper's "mapping learned on
      in-distribution samples, then used to transform outliers".

Example:
  figure, axes = new_figure(1, 2)
  axes[0, 0].plot([0, 1], [0, 1])
  save_png(figure, "figures/example.png")
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ice_tf import atomic_io
from ice_tf.experiment import run_folder

DEMO_COMMAND = run_folder.DEMO_COMMAND

DEFAULT_METHODS = ("ce", "oe", "energy", "ice")
PLACEMENTS = ("joint", "knn")
OOD_COLOR = "0.1"


# ----------------------------------------------------------------- figures
def new_figure(num_rows=1, num_cols=1, panel_size=(3.4, 3.2), **subplots_kwargs):
    """(figure, axes) with axes a (num_rows, num_cols) array, on an Agg canvas.

    Example:
      figure, axes = new_figure(1, 2)
      save_png(figure, "figures/two_panels.png")
    """
    figure = Figure(figsize=(panel_size[0] * num_cols, panel_size[1] * num_rows),
                    layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(num_rows, num_cols, squeeze=False, **subplots_kwargs)
    return figure, axes


def save_png(figure, path, dpi=110):
    """Writes `figure` as a PNG at `path` (folders created) through a temporary file.

    Returns:
      The absolute path written.

    Example:
      save_png(figure, "figures/roc.png", dpi=110)
    """
    path = os.path.abspath(path)
    with atomic_io.atomic_stream(path, "wb", suffix=".png") as stream:
        figure.savefig(stream, format="png", dpi=dpi)
    return path


def class_colors(num_classes):
    """One colour per class: tab10 up to 10 classes, tab20 up to 20, then a hue wheel.

    Example:
      colors = class_colors(10)  # one RGBA row per class
    """
    import matplotlib

    if num_classes <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(num_classes)]
    if num_classes <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(num_classes)]
    return [matplotlib.colormaps["hsv"](i / num_classes) for i in range(num_classes)]


def method_label(name):
    """Display name of a method (`ice_tf.losses.spec(name).display_name`; its own name when
    it is no registered method, e.g. a variant label).

    Example:
      method_label("ice_minus")  # 'ICE⁻'
    """
    from ice_tf import losses

    return losses.display_name(name)


# ------------------------------------------------------------- run folders
# Kept here for the figure scripts; ice_tf.experiment.run_folder owns them.
parse_run_spec = run_folder.parse_label_folder
check_run_folders = run_folder.check_run_folders
load_scores = run_folder.load_scores


def run_folders(runs_dir="runs/demo", methods=DEFAULT_METHODS, run_seed=1, run_specs=()):
    """label -> run folder (`ice_tf.experiment.run_folder.run_folders`, with the demo's methods).

    Example:
      run_folders("runs/demo", ["ce", "ice"], 1)  # {"ce": "runs/demo/ce/seed1", ...}
    """
    return run_folder.run_folders(runs_dir, methods, run_seed, run_specs)


def roc_figure(scores_by_run, sets):
    """One ROC panel per OOD set, one curve per run (or score), AUROC in the legend.

    Args:
      scores_by_run: {run: {"in": scores, set: scores, ...}}, higher = more in-distribution.
      sets: the OOD set labels to draw.

    Returns:
      (figure, {set: {run: auroc}}).

    Example:
      figure, aurocs = roc_figure({"ice": load_scores("runs/demo/ice/seed1")}, ["mnist"])
    """
    from ice_tf import metrics

    num_cols = min(len(sets), 3)
    num_rows = -(-len(sets) // num_cols)
    figure, axes = new_figure(num_rows, num_cols, panel_size=(3.4, 3.3))
    for ax in axes.flat[len(sets):]:
        ax.axis("off")
    aurocs = {}
    for ax, label in zip(axes.flat, sets):
        aurocs[label] = {}
        for run, scores in scores_by_run.items():
            fpr, tpr, _ = metrics.roc_curve_points(scores["in"], scores[label])
            auroc = metrics.ood_metrics(scores["in"], scores[label])["auroc"]
            aurocs[label][run] = auroc
            ax.plot(fpr, tpr, linewidth=1.3, label=f"{method_label(run)} ({100 * auroc:.1f})")
        ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_title(f"OOD: {label}", fontsize=10)
        ax.set_xlabel("FPR (OOD accepted)", fontsize=8)
        ax.set_ylabel("TPR (in-distribution accepted)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(title="AUROC %", title_fontsize=7, fontsize=7, loc="lower right")
    return figure, aurocs


# ------------------------------------------------------------------- t-SNE
def knn_placement(features_in, embedding_in, features_out, num_neighbors=10, epsilon=1e-12):
    """Out-of-sample placement: each row of features_out goes to the mean of the
    embeddings of its k nearest in-distribution features (Euclidean, in feature space),
    weighted by inverse distance 1 / (distance + epsilon).

    Args:
      features_in: (n, d) in-distribution features.
      embedding_in: (n, e) their embedding (e.g. t-SNE, e = 2).
      features_out: (m, d) features to place.
      num_neighbors: k, at most n.

    Returns:
      (m, e) float64 embedding of features_out.

    Example:
      embedding_out = knn_placement(features_in, embedding_in, features_out)
    """
    from sklearn.neighbors import NearestNeighbors

    features_in = np.asarray(features_in, dtype=np.float64)
    embedding_in = np.asarray(embedding_in, dtype=np.float64)
    features_out = np.asarray(features_out, dtype=np.float64)
    if len(features_in) != len(embedding_in):
        raise ValueError(
            f"features_in and embedding_in differ in length: {len(features_in)} vs {len(embedding_in)}."
        )
    num_neighbors = int(num_neighbors)
    if not 1 <= num_neighbors <= len(features_in):
        raise ValueError(f"num_neighbors must lie in [1, {len(features_in)}], got {num_neighbors}.")
    distances, indices = NearestNeighbors(n_neighbors=num_neighbors).fit(features_in).kneighbors(
        features_out
    )
    weights = 1.0 / (distances + epsilon)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("mk,mke->me", weights, embedding_in[indices])


def tsne_embedding(features_in, features_out, placement="joint", perplexity=30.0,
                   num_neighbors=10, seed=0, num_threads=1):
    """2-D t-SNE embedding of in-distribution and OOD features (see the module docstring).

    The perplexity is capped at (number of fitted points - 1) / 3, so that tiny samples work.
    `num_threads` limits the OpenMP threads of the Barnes-Hut gradient (None: all cores).
    One is the default because on a busy machine the threads spin-wait for each other:
    1,300 points took 20 s with 1 thread and 84 s with 2 on a 2-core machine that was
    also training.

    Returns:
      (embedding_in (n, 2), embedding_out (m, 2)), float64.

    Example:
      embedding_in, embedding_out = tsne_embedding(features_in, features_out)
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    if placement not in PLACEMENTS:
        raise ValueError(f"Unknown placement {placement!r}; valid placements: {', '.join(PLACEMENTS)}.")
    features_in = np.asarray(features_in, dtype=np.float64)
    features_out = np.asarray(features_out, dtype=np.float64)
    fitted = np.concatenate([features_in, features_out]) if placement == "joint" else features_in
    if len(fitted) < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {len(fitted)}.")
    tsne = TSNE(
        n_components=2,
        perplexity=min(float(perplexity), (len(fitted) - 1) / 3.0),
        init="pca",
        random_state=seed,
    )
    with threadpool_limits(limits=num_threads, user_api="openmp"):
        embedding = tsne.fit_transform(fitted)
    if placement == "joint":
        return embedding[:len(features_in)], embedding[len(features_in):]
    return embedding, knn_placement(features_in, embedding, features_out, num_neighbors)


__all__ = [
    "DEMO_COMMAND",
    "DEFAULT_METHODS",
    "PLACEMENTS",
    "new_figure",
    "save_png",
    "class_colors",
    "method_label",
    "roc_figure",
    "parse_run_spec",
    "run_folders",
    "check_run_folders",
    "load_scores",
    "knn_placement",
    "tsne_embedding",
]
