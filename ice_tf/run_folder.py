"""The run folder: its file names, the scores file's keys, and finding runs.

One training run writes one folder (`ice_tf.experiment.run`):

  flags.txt            a flag file that re-runs it (scripts)
  config.json          the frozen config
  metrics.jsonl        one JSON line per epoch
  analysis/            the training-time analyses asked for (ice_tf.callbacks)
  tensorboard/         TensorBoard logs
  checkpoints/         last.keras after every epoch
  model.keras          the trained model
  saved_model/         the serving SavedModel (ice_tf.export)
  scores.npz           raw OOD scores of the evaluation: "in" and one key per OOD set
  mahalanobis_stats.npz  post-hoc Mahalanobis statistics, once fitted (ice_tf.detectors)
  results.json         the metrics, written last: a folder without it is not finished
  results.md           the same as a markdown table

scripts/compare.py puts runs at <runs_dir>/<label>/seed<k> (`method_run`); every
script that reads runs takes them from here, by label and seed or as 'label:folder'
specs (`parse_label_folder`).

Example:
  folder = method_run("runs/demo", "ice", seed=1)       # runs/demo/ice/seed1
  scores = load_scores(folder)                           # {"in": ..., "mnist": ...}
"""

from __future__ import annotations

import json
import os

import numpy as np

FLAGS_FILE = "flags.txt"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
ANALYSIS_DIR = "analysis"  # also ice_tf.analysis.ANALYSIS_DIR
TENSORBOARD_DIR = "tensorboard"
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = os.path.join(CHECKPOINTS_DIR, "last.keras")
MODEL_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
SCORES_FILE = "scores.npz"
STATS_FILE = "mahalanobis_stats.npz"
RESULTS_FILE = "results.json"
RESULTS_MARKDOWN = "results.md"
IN_DISTRIBUTION_KEY = "in"

# What a new run into an existing folder removes first, so that an earlier run's
# outputs never make it look finished or mix with its own.
STALE_FILES = (RESULTS_FILE, RESULTS_MARKDOWN, METRICS_FILE)
STALE_DIRS = (TENSORBOARD_DIR, CHECKPOINTS_DIR, ANALYSIS_DIR)

DEMO_COMMAND = "python scripts/compare.py --flagfile=flags/demo.flags"
"""The command that creates the default run folders (runs/demo/<method>/seed1)."""


def path(folder, name):
    """The path of one of the run folder's files (one of the *_FILE / *_DIR names)."""
    return os.path.join(folder, name)


def is_finished(folder):
    """Whether `folder` holds a finished run (its results.json exists)."""
    return os.path.isfile(path(folder, RESULTS_FILE))


def method_run(runs_dir, label, seed):
    """<runs_dir>/<label>/seed<seed>, where scripts/compare.py puts a run."""
    return os.path.join(runs_dir, label, f"seed{int(seed)}")


def parse_label_folder(spec):
    """'label:folder' -> (label, folder).

    Example:
      parse_label_folder("ice:runs/demo/ice/seed1")  # ('ice', 'runs/demo/ice/seed1')
    """
    label, sep, folder = spec.partition(":")
    if not sep or not label.strip() or not folder.strip():
        raise ValueError(f"run spec {spec!r}: use label:folder, e.g. ice:runs/demo/ice/seed1.")
    return label.strip(), folder.strip()


def run_folders(runs_dir="runs/demo", methods=(), seed=1, run_specs=()):
    """label -> run folder: from 'label:folder' specs if any, else `method_run` of each
    method under `runs_dir`."""
    if run_specs:
        folders = dict(parse_label_folder(spec) for spec in run_specs)
        if len(folders) != len(run_specs):
            raise ValueError(f"run labels must be unique; got {list(run_specs)}.")
        return folders
    if not methods:
        raise ValueError("no runs: give methods (with runs_dir) or label:folder run specs.")
    return {method: method_run(runs_dir, method, seed) for method in methods}


def check_run_folders(folders, required_files, command=DEMO_COMMAND):
    """Raises FileNotFoundError naming every run folder that lacks a required file,
    and the command that creates the runs."""
    missing = [
        path(folder, name)
        for folder in folders.values()
        for name in required_files
        if not os.path.isfile(path(folder, name))
    ]
    if missing:
        raise FileNotFoundError(
            f"missing run files: {', '.join(missing)}. Train the runs first, e.g. with "
            f"`{command}` (writes runs/demo/<method>/seed1), or point --runs_dir/--run at "
            "existing run folders."
        )


def method_of(folder):
    """The `loss` in a run folder's config.json, or None when it has none."""
    config_path = path(folder, CONFIG_FILE)
    if not os.path.exists(config_path):
        return None
    with open(config_path) as stream:
        return json.load(stream).get("loss")


# ------------------------------------------------------------- scores file
def scores_key(label):
    """The .npz key of an OOD set's label: '%' and '/' (which npz keys cannot hold)
    are escaped, so that `label_of_scores_key` gives the label back."""
    return label.replace("%", "%25").replace("/", "%2F")


def label_of_scores_key(key):
    """The OOD set label of a `scores_key`."""
    return key.replace("%2F", "/").replace("%25", "%")


def save_scores(folder, raw_scores):
    """Writes {"in": scores, label: scores, ...} as the run's scores.npz (atomically)."""
    from ice_tf import atomic_io

    with atomic_io.atomic_stream(path(folder, SCORES_FILE), "wb", suffix=".npz") as stream:
        np.savez_compressed(stream, **{scores_key(label): value for label, value in raw_scores.items()})


def load_scores(folder):
    """{"in": scores, label: scores, ...} from a run folder's scores.npz (float64 arrays;
    higher = more in-distribution)."""
    scores_path = path(folder, SCORES_FILE)
    with np.load(scores_path) as archive:
        scores = {label_of_scores_key(key): np.asarray(archive[key], dtype=np.float64)
                  for key in archive.files}
    if IN_DISTRIBUTION_KEY not in scores or len(scores) < 2:
        raise ValueError(
            f"{scores_path} must hold 'in' and at least one OOD set; it has {sorted(scores)}."
        )
    return scores


__all__ = [
    "FLAGS_FILE", "CONFIG_FILE", "METRICS_FILE", "ANALYSIS_DIR", "TENSORBOARD_DIR",
    "CHECKPOINTS_DIR", "LAST_CHECKPOINT", "MODEL_FILE", "SAVED_MODEL_DIR", "SCORES_FILE",
    "STATS_FILE", "RESULTS_FILE", "RESULTS_MARKDOWN", "STALE_FILES", "STALE_DIRS", "DEMO_COMMAND",
    "path", "is_finished", "method_run", "parse_label_folder", "run_folders",
    "check_run_folders", "method_of", "scores_key", "label_of_scores_key", "save_scores",
    "load_scores",
]
