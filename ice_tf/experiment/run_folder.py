"""The run folder: its file names, the scores file's keys, and finding runs.

One training run writes one folder (`ice_tf.experiment.run`):

  ice-tf-run.json      written first: marks the folder as ice-tf's (`claim`)
  run.lock             while a process writes the folder: its pid, host and start
  flags.txt            a flag file that re-runs it (scripts)
  config.json          the frozen config
  dataset.json         the in-distribution set: classes, image shape, normalisation, splits
  README.md            what each file is, and the commands that re-run, evaluate, export it
  metrics.jsonl        one JSON line per epoch
  analysis/            the training-time analyses asked for (ice_tf.analysis.probes)
  tensorboard/         TensorBoard logs
  checkpoints/         the training state after the last finished epoch (weights,
                       optimizer, random state: epoch-N.weights.h5, last.json) and the
                       one before it (previous.json), to resume
  model.keras          the trained model
  saved_model/         the serving SavedModel (ice_tf.export)
  scores.npz           raw OOD scores of the evaluation: "in" and one key per OOD set
  <detector>_stats.npz  a post-hoc detector's statistics, once fitted (ice_tf.detectors)
  results.json         the metrics, written last: a folder without it is not finished
  results.md           the same as a markdown table

A folder is *running* while run.lock names a live process, *unfinished* without
results.json, *finished* with it. `prepare_for_training` enforces the contract: a
finished folder or another config is refused unless `overwrite`; the same config
into an unfinished folder resumes from checkpoints/ (ice_tf.experiment.run).

Ownership: ice-tf trains only into a new or empty folder, or into a folder it marked
as its own (ice-tf-run.json, written before anything else; a run folder of an earlier
version, config.json and ice-tf's names only, is adopted). A folder holding anything
else is refused, with or without `overwrite`. Removal (`overwrite`, or what a resumed
run drops) takes only the names ice-tf writes (`OWNED_INSIDE` within its folders, an
ice-tf export for saved_model/); any other file is kept, and said so.

ice-tf compare puts runs at <runs_dir>/<label>/seed<k> (`method_run`); every
script that reads runs takes them from here, by label and seed or as 'label:folder'
specs (`parse_label_folder`).

Over 500 lines for a reason: this module is the one owner of the run folder's names,
contract and reads (`read_jsonl`, `read_results`, ...), so that no other module parses
the folder's files.

Example:
  folder = method_run("runs/demo", "ice", seed=1)       # runs/demo/ice/seed1
  scores = load_scores(folder)                           # {"in": ..., "mnist": ...}
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings

import numpy as np

from ice_tf.json_lines import read_jsonl  # the run folder's one JSON-lines reader
from ice_tf.experiment.run_lock import LOCK_FILE, RunFolderError, RunLock  # noqa: F401  (part of the contract)

RUN_MARKER = "ice-tf-run.json"
FLAGS_FILE = "flags.txt"
CONFIG_FILE = "config.json"
DATASET_FILE = "dataset.json"
README_FILE = "README.md"
METRICS_FILE = "metrics.jsonl"
ANALYSIS_DIR = "analysis"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINTS_DIR = "checkpoints"
LAST_STATE = os.path.join(CHECKPOINTS_DIR, "last.json")  # epoch, step, random state
PREVIOUS_STATE = os.path.join(CHECKPOINTS_DIR, "previous.json")  # the state before it, kept
MODEL_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
SCORES_FILE = "scores.npz"
# The post-hoc detectors whose fitted statistics a run folder keeps, <name>_stats.npz
# (`ice_tf.experiment.evaluation.for_run`).
FITTED_DETECTORS = ("mahalanobis", "relative_mahalanobis", "knn", "vim", "react")


def stats_file(detector):
    """The run folder's file of a fitted detector's statistics.

    Example:
      stats_file("knn")  # 'knn_stats.npz'
    """
    return f"{detector}_stats.npz"


STATS_FILE = stats_file("mahalanobis")
RESULTS_FILE = "results.json"
RESULTS_MARKDOWN = "results.md"
IN_DISTRIBUTION_KEY = "in"

# What comes after training: removed before a run resumes, so that nothing of an
# earlier attempt's evaluation stands beside the model this one trains.
PRODUCT_FILES = (MODEL_FILE, SCORES_FILE, *(stats_file(name) for name in FITTED_DETECTORS),
                 RESULTS_FILE, RESULTS_MARKDOWN)
PRODUCT_DIRS = (SAVED_MODEL_DIR,)
# Everything a run writes (--overwrite removes all of it).
OUTPUT_FILES = (FLAGS_FILE, CONFIG_FILE, DATASET_FILE, README_FILE, METRICS_FILE, *PRODUCT_FILES)
OUTPUT_DIRS = (ANALYSIS_DIR, TENSORBOARD_DIR, CHECKPOINTS_DIR, *PRODUCT_DIRS)
# What ice-tf writes inside its folders (fnmatch patterns of the path relative to the
# folder): only these are removed from them; a user's file there is kept.
OWNED_INSIDE = {
    ANALYSIS_DIR: ("*.jsonl", ".tmp-*"),
    TENSORBOARD_DIR: ("events.out.tfevents.*", "*/events.out.tfevents.*"),
    CHECKPOINTS_DIR: ("epoch-*.weights.h5", "epoch-*.state.npz", "last.json", "previous.json",
                      ".tmp-*"),
}
# Prefixes of the staging files and folders of atomic writes (ice_tf.atomic_io,
# ice_tf.export); a killed write leaves one behind, the next run removes it.
STAGING_PREFIXES = (".tmp-", ".export-")
# The fields of metrics.jsonl, results.json and the analysis records that measure time:
# the only ones in which two runs of one command under --deterministic differ.
TIMING_FIELDS = ("seconds", "train_seconds")
# Config fields a resumed run may change: they do not enter training.
RESUMABLE_FIELDS = ("dry_run", "checkpoint_steps")

DEMO_COMMAND = "ice-tf demo"
"""The command that creates the default run folders (runs/demo/<method>/seed1)."""

# What each entry of a run folder is, for the README.md written into it.
FILE_DESCRIPTIONS = {
    FLAGS_FILE: "a flag file that re-runs this run (only the flags of its method)",
    CONFIG_FILE: "the frozen config (`ice_tf.experiment.config.ExperimentConfig`)",
    DATASET_FILE: "the in-distribution set: class names, image shape, the normalisation the "
                  "model expects, split sizes and how each split was made",
    METRICS_FILE: "one JSON line per epoch: losses, accuracy, learning rate, seconds",
    ANALYSIS_DIR + "/": "the training-time analyses asked for (docs/analyses.md)",
    TENSORBOARD_DIR + "/": "TensorBoard logs (`tensorboard --logdir " + TENSORBOARD_DIR + "`)",
    CHECKPOINTS_DIR + "/": "the training state of the last finished epoch (weights, optimizer, "
                           "random state): the same command resumes from it",
    MODEL_FILE: "the trained Keras model (`keras.models.load_model`, after `import ice_tf.models`)",
    SAVED_MODEL_DIR + "/": "the serving SavedModel: probabilities, confidence, score; loads with "
                           "plain `tf.saved_model.load`",
    SCORES_FILE: "the raw OOD scores of the evaluation: 'in' and one array per OOD set",
    "<detector>_stats.npz": "a post-hoc detector's statistics (mahalanobis, knn, vim, react, "
                            "relative_mahalanobis), once `ice-tf evaluate` fitted them",
    RESULTS_FILE: "AUROC, AUPR-In/Out, FPR95 per OOD set and their mean, accuracy; written "
                  "last, so a folder without it is unfinished",
    RESULTS_MARKDOWN: "the same results as a table",
    LOCK_FILE: "present while a process writes the folder (its pid, host, start time)",
    RUN_MARKER: "marks this folder as an ice-tf run folder (written first): --overwrite "
                "removes only what ice-tf wrote here",
}


def readme_text(config):
    """The README.md of a run folder: what the run is, each file, and the commands that
    re-run, resume, evaluate and export it.

    Example:
      write_atomic(path(out, README_FILE), readme_text(config))
    """
    out = config.output_dir
    head = config.head_kind
    lines = [
        f"# Run: {config.loss} ({head} head, {config.backbone}) on {config.in_dataset}",
        "",
        f"{config.epochs} epoch{'s' if config.epochs != 1 else ''}, {config.schedule} schedule, seed {config.seed}; evaluated "
        f"with the `{config.score_name}` score on {len(config.ood_datasets)} OOD sets "
        f"({config.protocol} protocol).",
        "",
        "## Files",
        "",
    ]
    lines += [f"- `{name}`: {what}" for name, what in FILE_DESCRIPTIONS.items()]
    lines += [
        "",
        "## Commands",
        "",
        "```bash",
        f"ice-tf train --flagfile={out}/{FLAGS_FILE}          # re-run; after a kill, resumes",
        f"ice-tf train --flagfile={out}/{FLAGS_FILE} --overwrite   # start again from scratch",
        f"ice-tf evaluate --model={out} --scores={config.score_name},msp,mahalanobis",
        f"ice-tf export --model={out}/{MODEL_FILE} --output=exported",
        "```",
        "",
        "From Python: `model, config, _ = ice_tf.experiment.load_run(\"" + out + "\")`.",
        "",
    ]
    return "\n".join(lines)


def path(folder, name):
    """The path of one of the run folder's files (one of the *_FILE / *_DIR names).

    Example:
      path("runs/x", RESULTS_FILE)  # 'runs/x/results.json'
    """
    return os.path.join(folder, name)


def is_finished(folder):
    """Whether `folder` holds a finished run (its results.json exists).

    Example:
      is_finished("runs/demo/ice/seed1")  # True once results.json exists
    """
    return os.path.isfile(path(folder, RESULTS_FILE))


# ------------------------------------------------------------ run contract
def _remove(folder, files=(), dirs=()):
    """Removes ice-tf's own entries of `folder` among `files` and `dirs` (by name; inside
    a folder only the names of `OWNED_INSIDE`, saved_model/ only as an ice-tf export);
    returns the paths kept because ice-tf did not write them."""
    from ice_tf import ownership

    for name in files:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path(folder, name))
    kept = []
    for name in dirs:
        target = path(folder, name)
        if not os.path.isdir(target):
            continue
        if name in OWNED_INSIDE:
            kept += [f"{name}/{inside}" for inside in ownership.remove_owned(target, OWNED_INSIDE[name])]
        elif ownership.foreign_files_of_export(target) == []:
            shutil.rmtree(target)
        else:
            kept.append(f"{name}/")
    if kept:
        warnings.warn(f"{folder}: kept {len(kept)} entr{'y' if len(kept) == 1 else 'ies'} that "
                      f"ice-tf did not write: {', '.join(kept[:5])}{', ...' if len(kept) > 5 else ''}.",
                      stacklevel=3)
    return kept


# ---------------------------------------------------------------- ownership
# Names a run folder of an earlier version holds (adopted without the marker).
_KNOWN_NAMES = (RUN_MARKER, LOCK_FILE, *OUTPUT_FILES, *OUTPUT_DIRS)


def _entries(folder):
    return sorted(name for name in os.listdir(folder) if not name.startswith(STAGING_PREFIXES))


def ownership(folder):
    """"new" (missing, or empty but for a lock), "own" (marked by ice-tf, or a run folder of
    an earlier version: config.json of a run and ice-tf's names only) or "foreign".

    Raises RunFolderError when `folder` is a file or lies below one.

    Example:
      ownership("runs/demo/ice/seed1")  # "own"
    """
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise RunFolderError(f"output_dir {folder} is a file, not a folder; choose another output_dir.")
    parent = os.path.dirname(os.path.abspath(folder))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise RunFolderError(f"output_dir {folder} lies below {parent}, which is a file; choose "
                             "another output_dir.")
    if not os.path.isdir(folder):
        return "new"
    from ice_tf import ownership as ownership_lib

    if ownership_lib.read_marker(path(folder, RUN_MARKER)) is not None:
        return "own"
    entries = _entries(folder)
    if set(entries) <= {LOCK_FILE}:
        return "new"
    try:
        earlier = read_config(folder)
    except ValueError:
        earlier = None
    if isinstance(earlier, dict) and "loss" in earlier and set(entries) <= set(_KNOWN_NAMES):
        return "own"
    return "foreign"


def check_owned(folder):
    """Raises RunFolderError, naming the folder and the fix, when `folder` holds files
    ice-tf did not write (`ownership` "foreign"): ice-tf trains only into a new or empty
    folder or its own run folder, with or without --overwrite. Returns `ownership`'s answer.

    Example:
      check_owned("runs/new")  # "new"
    """
    answer = ownership(folder)
    if answer == "foreign":
        entries = _entries(folder)
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise RunFolderError(
            f"{folder} is not an ice-tf run folder and is not empty ({shown}); ice-tf writes only "
            "into a new or empty folder or its own run folder, also with --overwrite: choose "
            "another output_dir.")
    return answer


def check_inputs_outside(folder, inputs):
    """Raises RunFolderError when a file or folder the run reads lies inside its output
    folder, where the run would remove or replace it. `inputs`: (setting, path) pairs.

    Example:
      check_inputs_outside("runs/x", [("backbone", "runs/x/model.keras")])  # RunFolderError
    """
    root = os.path.realpath(folder)
    for setting, input_path in inputs:
        if not input_path:
            continue
        real = os.path.realpath(input_path)
        if real == root or real.startswith(root + os.sep):
            raise RunFolderError(
                f"{setting}={input_path} lies inside output_dir {folder}, which the run writes; "
                "copy it elsewhere or choose another output_dir.")


def claim(folder):
    """Marks `folder` as an ice-tf run folder (`RUN_MARKER`), once; hold its `RunLock`.

    Example:
      claim("runs/new")  # writes runs/new/ice-tf-run.json
    """
    from ice_tf import atomic_io, ownership as ownership_lib

    marker = path(folder, RUN_MARKER)
    if ownership_lib.read_marker(marker) is None:
        atomic_io.write_atomic(marker, json.dumps(ownership_lib.marker_record(kind="run")) + "\n")


def remove_staging(folder):
    """Removes what killed atomic writes left in `folder` and its checkpoints/
    (`STAGING_PREFIXES`; hold the folder's `RunLock`).

    Example:
      remove_staging("runs/ice")  # .tmp-*.keras, .export-*/ gone
    """
    for directory in (folder, path(folder, CHECKPOINTS_DIR)):
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            if name.startswith(STAGING_PREFIXES):
                target = os.path.join(directory, name)
                if os.path.isdir(target):
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(target)


def config_differences(earlier, current, ignore=RESUMABLE_FIELDS):
    """'field: X there, Y here' for each config field that differs (dicts of config.json;
    compared as JSON has them, so a tuple equals its list; a field that an older
    config.json lacks counts as its default, or as `config.upgrade_dict` says).

    Example:
      config_differences({"loss": "oe"}, {"loss": "ice"})  # ["loss: 'oe' there, 'ice' here"]
    """
    from ice_tf.experiment.config import ExperimentConfig, upgrade_dict

    defaults = ExperimentConfig().to_dict()

    def effective(values):
        # Method hyperparameters at their effective values: an older folder that left
        # them unset ran with the defaults, which `resolved` fills in.
        values = {**defaults, **values}
        try:
            values = ExperimentConfig.from_dict(values).resolved().to_dict()
        except (ValueError, TypeError, ImportError):
            pass  # a method this process does not know (or no TensorFlow): compared as stored
        return json.loads(json.dumps(values))

    earlier = effective(upgrade_dict(earlier, stored=True))
    current = effective(current)
    if earlier.get("loss") != current.get("loss"):
        ignore = (*ignore, "method_options")  # another method has other hyperparameters anyway
    fields = sorted((set(earlier) | set(current)) - set(ignore))
    return [f"{field}: {earlier.get(field)!r} there, {current.get(field)!r} here"
            for field in fields if earlier.get(field) != current.get(field)]


def read_config(folder):
    """The dict in a folder's config.json, or None when it has none (ValueError when it
    is not JSON).

    Example:
      read_config("runs/demo/ice/seed1")["loss"]  # "ice"
    """
    config_path = path(folder, CONFIG_FILE)
    if not os.path.exists(config_path):
        return None
    with open(config_path) as stream:
        return json.load(stream)


def check_folder(folder, config_dict, overwrite=False):
    """The run-folder contract's refusals, before anything is written (see
    `prepare_for_training`); returns "finished", "unfinished" or "empty".

    A folder that is not ice-tf's (`check_owned`) is refused whatever `overwrite` says.
    Unless `overwrite`, a folder of another config is refused naming the fields that
    differ, and a finished folder of the same config naming `--overwrite`.

    Example:
      check_folder("runs/new", config.to_dict())  # "empty"
    """
    if check_owned(folder) == "new":
        return "empty"
    finished = is_finished(folder)
    try:
        earlier = read_config(folder)
    except ValueError:
        if not overwrite:
            raise RunFolderError(f"{path(folder, CONFIG_FILE)} is not readable JSON; pass "
                                 "--overwrite (overwrite=True) to start the run over.") from None
        earlier = {}
    if not overwrite:
        differences = config_differences(earlier, config_dict) if earlier is not None else []
        if differences:
            raise RunFolderError(
                f"{folder} holds a{' finished' if finished else ''} run of another config "
                f"({'; '.join(differences)}); pass --overwrite (overwrite=True) to replace it, "
                "or choose another output_dir."
            )
        if finished:
            raise RunFolderError(
                f"{folder} holds a finished run (results.json); pass --overwrite "
                "(overwrite=True) to replace it, or choose another output_dir."
            )
    _check_saved_model_replaceable(folder)
    if finished:
        return "finished"
    return "empty" if earlier is None else "unfinished"


def _check_saved_model_replaceable(folder):
    """A run replaces its saved_model/: refused up front when that is not a clean ice-tf export."""
    from ice_tf import ownership as ownership_lib

    target = path(folder, SAVED_MODEL_DIR)
    if os.path.exists(target) and ownership_lib.foreign_files_of_export(target) != []:
        raise RunFolderError(
            f"{target} is not an export ice-tf wrote (or holds other files too), and this run "
            "would replace it; move it out of the run folder, then run the same command again.")


def finished_with(folder, config_dict):
    """Whether `folder` holds a finished run of this config (ice-tf compare reuses it).

    Example:
      finished_with("runs/demo/ice/seed1", config.to_dict())  # True after the demo
    """
    try:
        earlier = read_config(folder)
    except ValueError:
        return False
    return (is_finished(folder) and earlier is not None
            and not config_differences(earlier, config_dict))


def clear_for_training(folder, state, overwrite=False):
    """What `prepare_for_training` removes, for a folder in `state` (`check_folder`'s
    answer); returns "resume" when checkpoints/ holds a state to continue, else "new".

    Example:
      clear_for_training("runs/ice", check_folder("runs/ice", config.to_dict()))
    """
    remove_staging(folder)
    if overwrite or state != "unfinished":
        _remove(folder, OUTPUT_FILES, OUTPUT_DIRS)
        claim(folder)
        return "new"
    _remove(folder, PRODUCT_FILES, PRODUCT_DIRS)
    claim(folder)
    return "resume" if any(os.path.isfile(path(folder, name))
                           for name in (LAST_STATE, PREVIOUS_STATE)) else "new"


def prepare_for_training(folder, config_dict, overwrite=False):
    """Applies the run-folder contract before a run writes `folder` (hold its `RunLock`).

    - not ice-tf's (neither new, empty nor marked by ice-tf): refused, also with
      `overwrite`;
    - finished (results.json) or holding another config: refused with a
      `RunFolderError` naming `--overwrite` (and the differing fields), unless
      `overwrite`, which removes every earlier output ice-tf wrote first (a file
      of the user's in the folder stays);
    - the same config, unfinished: what came after training (model, SavedModel,
      scores, statistics, results) is removed and checkpoints/, metrics and analyses
      are kept for the run to resume from; staging files of killed writes go.

    `check_folder` then `clear_for_training`, which `ice_tf.experiment.run` calls apart
    so as to check the data in between.

    Returns:
      "resume" when checkpoints/ holds a training state to continue, else "new".

    Example:
      with RunLock("runs/ice"):
          state = prepare_for_training("runs/ice", config.to_dict())  # "new" or "resume"
    """
    return clear_for_training(folder, check_folder(folder, config_dict, overwrite), overwrite)


def without_timing(record):
    """A record of a run folder's JSON files without its `TIMING_FIELDS`: what two
    deterministic runs of one command must agree on.

    Example:
      without_timing({"epoch": 1, "seconds": 2.4, "loss": 0.9})  # {"epoch": 1, "loss": 0.9}
    """
    return {key: value for key, value in record.items() if key not in TIMING_FIELDS}


def method_run(runs_dir, label, seed):
    """<runs_dir>/<label>/seed<seed>, where ice-tf compare puts a run.

    Example:
      method_run("runs/demo", "ice", 1)  # 'runs/demo/ice/seed1'
    """
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
    method under `runs_dir`.

    Example:
      run_folders("runs/demo", ["ce", "ice"], 1, ["mine:/tmp/run"])
    """
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
    and the command that creates the runs.

    Example:
      check_run_folders({"ice": "runs/demo/ice/seed1"}, (MODEL_FILE,))
    """
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
    """The `loss` in a run folder's config.json, or None when it has none.

    Example:
      method_of("runs/demo/ice/seed1")  # 'ice' (from config.json)
    """
    config = read_config(folder)
    return None if config is None else config.get("loss")


# ------------------------------------------------------------------ readers
# Every read of a run folder's files goes through these (and `read_config`,
# `load_scores`): one reader per format, one answer to a line cut by a kill.
def read_metrics(folder, strict=False):
    """The per-epoch records of a run's metrics.jsonl ([] before the first epoch);
    `strict`: see `read_jsonl`.

    Example:
      read_metrics("runs/demo/ice/seed1")[-1]["accuracy"]
    """
    return read_jsonl(path(folder, METRICS_FILE), strict=strict)


def read_results(folder):
    """The dict of a finished run's results.json; FileNotFoundError naming the command
    that makes it, ValueError naming a damaged file.

    Example:
      read_results("runs/demo/ice/seed1")["mean"]["auroc"]["mean"]
    """
    if not is_finished(folder):
        raise FileNotFoundError(f"{folder} holds no finished run (no {RESULTS_FILE}); train it "
                                f"first, e.g. with `{DEMO_COMMAND}`.")
    return _read_json(path(folder, RESULTS_FILE))


def read_evaluation(folder, file_name):
    """{score: results} of an `ice-tf evaluate` record in a run folder (e.g.
    evaluation-val.json, as `--output` named it).

    Example:
      read_evaluation("runs/demo/ice/seed1", "evaluation-val.json")["mahalanobis"]["accuracy"]
    """
    return _read_json(path(folder, file_name))


def is_evaluation_record(text):
    """Whether `text` is an `ice-tf evaluate` record ({score: {"score", "sets", ...}}).

    Example:
      is_evaluation_record(open("runs/ice/evaluation-val.json").read())  # True
    """
    try:
        record = json.loads(text)
    except ValueError:
        return False
    return isinstance(record, dict) and all(
        isinstance(value, dict) and {"score", "sets"} <= set(value) for value in record.values())


def _read_json(json_path):
    try:
        with open(json_path) as stream:
            return json.load(stream)
    except ValueError as error:
        raise ValueError(f"{json_path} is not readable JSON ({error}).") from None


def analysis_path(folder, name):
    """<folder>/analysis/<name>.jsonl, the file of the training-time analysis `name`
    (one of `ice_tf.analysis.ANALYSES`).

    Example:
      analysis_path("runs/demo/ice/seed1", "shift")  # '.../analysis/shift.jsonl'
    """
    from ice_tf.analysis import ANALYSES

    if name not in ANALYSES:
        raise ValueError(f"Unknown analysis {name!r}; valid analyses: {', '.join(ANALYSES)}.")
    return os.path.join(folder, ANALYSIS_DIR, f"{name}.jsonl")


def read_analyses(folder):
    """{analysis name: [records by epoch]} for the analysis files a run folder holds.

    Example:
      analyses = read_analyses("runs/demo/ice/seed1")  # {"shift": [...], ...}
    """
    from ice_tf.analysis import ANALYSES

    found = {}
    for name in ANALYSES:
        path = analysis_path(folder, name)
        if os.path.exists(path):
            found[name] = read_jsonl(path)
    return found


def read_checkpoint_state(folder, name=LAST_STATE):
    """The training state a checkpoint file records (`LAST_STATE` or `PREVIOUS_STATE`):
    epoch, step, weights file, iterations, random state, metrics line; None when the
    file is missing, unreadable or lacks those fields.

    Example:
      read_checkpoint_state("runs/ice")["epoch"]  # 3
    """
    try:
        with open(path(folder, name)) as stream:
            state = json.load(stream)
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not {"epoch", "weights", "iterations"} <= set(state):
        return None
    return state


# ------------------------------------------------------------- scores file
def scores_key(label):
    """The .npz key of an OOD set's label: '%' and '/' (which npz keys cannot hold)
    are escaped, so that `label_of_scores_key` gives the label back.

    Example:
      scores_key("svhn")  # the key of that set in scores.npz
    """
    return label.replace("%", "%25").replace("/", "%2F")


def label_of_scores_key(key):
    """The OOD set label of a `scores_key`.

    Example:
      label_of_scores_key(scores_key("svhn"))  # 'svhn'
    """
    return key.replace("%2F", "/").replace("%25", "%")


def save_scores(folder, raw_scores):
    """Writes {"in": scores, label: scores, ...} as the run's scores.npz (atomically).

    Example:
      save_scores("runs/x", {"in": scores_in, "svhn": scores_svhn})
    """
    from ice_tf import atomic_io

    with atomic_io.atomic_stream(path(folder, SCORES_FILE), "wb", suffix=".npz") as stream:
        np.savez_compressed(stream, **{scores_key(label): value for label, value in raw_scores.items()})


def load_scores(folder):
    """{"in": scores, label: scores, ...} from a run folder's scores.npz (float64 arrays;
    higher = more in-distribution).

    Example:
      load_scores("runs/x")["in"].shape
    """
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
    "CHECKPOINTS_DIR", "LAST_STATE", "PREVIOUS_STATE", "LOCK_FILE", "MODEL_FILE",
    "SAVED_MODEL_DIR", "SCORES_FILE", "STATS_FILE", "FITTED_DETECTORS", "stats_file", "RESULTS_FILE", "RESULTS_MARKDOWN",
    "DEMO_COMMAND", "FILE_DESCRIPTIONS", "readme_text", "DATASET_FILE", "README_FILE",
    "PRODUCT_FILES", "PRODUCT_DIRS", "OUTPUT_FILES", "OUTPUT_DIRS", "OWNED_INSIDE", "RUN_MARKER",
    "ownership", "check_owned", "check_inputs_outside", "claim",
    "STAGING_PREFIXES", "TIMING_FIELDS", "RESUMABLE_FIELDS", "RunFolderError", "RunLock", "remove_staging",
    "config_differences", "read_config", "check_folder", "finished_with", "clear_for_training",
    "prepare_for_training", "without_timing", "path", "is_finished",
    "method_run", "parse_label_folder", "run_folders", "check_run_folders", "method_of",
    "scores_key", "label_of_scores_key", "save_scores", "load_scores", "read_jsonl", "read_metrics",
    "read_results", "read_evaluation", "is_evaluation_record", "analysis_path", "read_analyses", "read_checkpoint_state",
]
