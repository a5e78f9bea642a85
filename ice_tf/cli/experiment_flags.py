"""absl flags for `ExperimentConfig`, shared by the commands (`ice-tf train`, ...).

One flag per config field (same name), so flag files, `config.json` and the
Python API use the same vocabulary. `config_from_flags` turns parsed flags into
the frozen config once and validates it: a bad value is one `ValueError` that names
the flag (`--loss_weight ...`) and the fix, before any data is read. `GROUPS` sorts
the flags for `--helpshort`.

Example:
  define_flags()                      # at import time of a command
  config = config_from_flags(FLAGS)   # in its main, after parsing
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import re
import logging as std_logging
import os
import sys
import typing

from absl import app, flags, logging

from ice_tf import backbones, losses, ownership
from ice_tf.experiment import run_folder
from ice_tf.experiment.config import ExperimentConfig

_METHODS = ", ".join(losses.names())
HELP = {
    "in_dataset": "In-distribution dataset: a registered name (ice_tf.data.names()), "
                  "image_folder:PATH (one subfolder per class) or npz:PATH (images and labels).",
    "outlier_dataset": "Auxiliary outlier dataset for OE/Energy/ICE (e.g. embedded_outliers, tiny_images, imagenet32).",
    "outlier_path": "File or folder of a file-based outlier dataset (tiny_images .bin, .npy, image folder).",
    "outlier_exclude_path": "Text file of outlier indices to skip (OE's 80mn_cifar_idxs.txt).",
    "ood_datasets": "OOD test sets: [label=]dataset[@split][:path], comma separated.",
    "data_dir": "TFDS data_dir holding prepared datasets.",
    "download": "Let TFDS download missing datasets (needs internet).",
    "limit_train": "Use only this many in-distribution training images (quick runs).",
    "loss": f"Training loss (the method): {_METHODS}; a method registered in an --import "
            "module too.",
    "head_init": "Gaussian head, scratch schedule: random (N(0, 0.05²) means, L = I), "
                 "class_means (the first batches' class means, L = I) or features (those "
                 "means and their tied covariance; diverged at the demo's lr).",
    "head_learning_rate_scale": "The head's learning rate, as a multiple of the backbone's "
                                "(SGD: its gradients are scaled).",
    "head_weight_decay": "L2 weight decay of the head; unset = weight_decay for a linear head, "
                         "none for a Gaussian head (its means and scale).",
    "head": "auto (the method's own: " + ", ".join(
        f"{n} {losses.spec(n).default_head}" for n in losses.names()) + "), linear or gaussian.",
    "score": "OOD score for evaluation; unset = the method's own (" + ", ".join(
        f"{n} {losses.spec(n).default_score}" for n in losses.names()) + ").",
    "outlier_batchnorm": "How outliers meet BatchNorm in training: auto (separate for a "
                         "Gaussian head, joint for a linear one; docs/accuracy_study.md), "
                         "joint (one pass over the mixed batch, as the reference code and the "
                         "paper), separate (their own batch statistics, moving averages from "
                         "in-distribution images only) or frozen (normalised with those moving "
                         "averages).",
    "backbone": f"Backbone: {', '.join(backbones.names())}, or PATH.keras: a Keras classifier "
                "(fine-tuned after conversion with the finetune schedule) or feature extractor "
                "(trained from fresh weights with the scratch schedule).",
    "dropout_rate": "Backbone dropout; unset = the backbone's default.",
    "schedule": "scratch or finetune (from init_checkpoint).",
    "init_checkpoint": ("A .keras model to fine-tune from (finetune schedule); "
                        "{seed} in it is replaced by the run's seed."),
    "epochs": "Training epochs (an epoch = one pass over the in-distribution set).",
    "learning_rate": "Initial learning rate (cosine decay per step).",
    "min_learning_rate": "Final learning rate of the cosine decay.",
    "momentum": "SGD nesterov momentum.",
    "weight_decay": "L2 weight decay (PyTorch convention).",
    "batch_in": "In-distribution batch size.",
    "batch_out": "Outlier batch size.",
    "augment": "Random crop (pad 4) + horizontal flip for in-distribution images and outliers.",
    "seed": "Random seed.",
    "deterministic": "Op determinism: two runs of one command give the same numbers on one "
                     "machine (slower; docs/guide.md gives the cost).",
    "checkpoint_steps": "Also save the training state every this many steps within an epoch "
                        "(long epochs); unset = after every epoch only.",
    "strategy": "auto (mirrored over several GPUs), default, mirrored, or multi_worker "
                "(several machines: TF_CONFIG or a Slurm allocation; docs/guide.md).",
    "precision": "auto (mixed_float16 on a GPU, mixed_bfloat16 on a CPU with bfloat16 "
                 "instructions, else float32), float32, mixed_bfloat16 or mixed_float16; the "
                 "heads and losses stay float32.",
    "protocol": "Evaluation protocol: oe (ID test vs ID/5 OOD, 10 draws) or full.",
    "eval_draws": "Draws of the oe protocol.",
    "eval_batch_size": "Batch size for evaluation.",
    "eval_limit": "Evaluate on at most this many images per set.",
    "eval_split": "In-distribution evaluation split (val when choosing hyperparameters).",
    "calibrate_confidence": "Gaussian head: fit the served confidence's map (--confidence_map) "
                            "on validation images and validation outliers, saved with the "
                            "model (scores and AUROC do not change).",
    "confidence_map": "Gaussian head: the served P(in-distribution), platt (σ(a max h + b)) or "
                      "temperature (exp(max h / T)).",
    "refit_head": "Gaussian head: after training, refit its means and L to the training "
                  "images' features in inference mode (GDA; docs/head_study.md).",
    "analyses": "Training-time analyses recorded each epoch under <output_dir>/analysis/: "
                "gradient_meter, shift, confidence (comma separated; docs/analyses.md).",
    "analysis_probe_size": "Images per probe set of the analyses.",
    "output_dir": "Run folder (created).",
    "export": "Export a SavedModel after training.",
    "dry_run": "Build data (mock) and model, run one step, write nothing.",
}


# --helpshort's sections: every config field in one (tests check that none is missing).
GROUPS = {
    "data": ("in_dataset", "outlier_dataset", "outlier_path", "outlier_exclude_path",
             "ood_datasets", "data_dir", "download", "limit_train"),
    # The method's hyperparameter flags follow "loss" (`group_members`).
    "method": ("import", "loss", "head", "head_init", "head_learning_rate_scale",
               "head_weight_decay", "score", "outlier_batchnorm", "backbone", "dropout_rate"),
    "schedule": ("schedule", "init_checkpoint", "epochs", "learning_rate", "min_learning_rate",
                 "momentum", "weight_decay", "batch_in", "batch_out", "augment", "seed",
                 "deterministic", "checkpoint_steps", "strategy", "precision", "mixed_precision"),
    "evaluation": ("protocol", "eval_draws", "eval_batch_size", "eval_limit", "eval_split",
                   "calibrate_confidence", "confidence_map", "refit_head", "analyses", "analysis_probe_size"),
    "output": ("output_dir", "export", "dry_run", "overwrite"),
}


# Config fields that are no flag of their own: the hyperparameters have one flag each
# (`define_hyperparameter_flags`), the imports one repeatable --import (`runner`).
NOT_FLAGS = ("method_options", "imports")


def group_members(group):
    """The flags of a `GROUPS` section in --helpshort's order; "method" holds every
    registered method's hyperparameter flags after "loss".

    Example:
      group_members("method")[:3]  # ('import', 'loss', 'in_term_weight')
    """
    members = GROUPS[group]
    if group != "method":
        return members
    at = members.index("loss") + 1
    return (*members[:at], *sorted(losses.hyperparameter_flags()), *members[at:])


def group_of(name):
    """The `GROUPS` section of a flag, or None for a command's own flags.

    Example:
      group_of("loss_weight")  # 'method'
    """
    return next((group for group in GROUPS if name in group_members(group)), None)


def _base_type(field_type):
    args = [a for a in typing.get_args(field_type) if a is not type(None)]
    return args[0] if typing.get_origin(field_type) is typing.Union else field_type


def _field_types():
    hints = typing.get_type_hints(ExperimentConfig)
    return {field.name: _base_type(hints[field.name]) for field in dataclasses.fields(ExperimentConfig)}


def define_flags(exclude=(), flag_values=flags.FLAGS):
    """Defines one absl flag per ExperimentConfig field (except `exclude`); values are
    checked by `config_from_flags`, once, after parsing.

    Example:
      define_flags(exclude=("dry_run",))
    """
    types = _field_types()
    for field in dataclasses.fields(ExperimentConfig):
        if field.name in exclude or field.name in NOT_FLAGS:
            continue
        kind, default, help_text = types[field.name], field.default, HELP[field.name]
        if kind is bool:
            flags.DEFINE_bool(field.name, default, help_text, flag_values=flag_values)
        elif kind is int:
            flags.DEFINE_integer(field.name, default, help_text, flag_values=flag_values)
        elif kind is float:
            flags.DEFINE_float(field.name, default, help_text, flag_values=flag_values)
        elif kind is tuple:
            flags.DEFINE_list(field.name, list(default), help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(field.name, default, help_text, flag_values=flag_values)
    if "mixed_precision" not in exclude:  # the boolean that --precision replaced
        flags.DEFINE_bool("mixed_precision", False, "Same as --precision=mixed_float16 (older "
                          "flag files).", flag_values=flag_values)
    define_hyperparameter_flags(flag_values)


def hyperparameter_help(flag):
    """--helpshort's text of a method hyperparameter flag: its help, the methods that
    take it and each one's default.

    Example:
      hyperparameter_help("margin_in")  # 'Energy m_in, ... Methods: energy (-23); unset = ...'
    """
    taken = losses.hyperparameter_flags()[flag]
    text = next((h.help for _, h in taken if h.help), f"{flag} of {taken[0][0]}.")
    methods = ", ".join(f"{method} ({h.default:g})" if h.kind is not str else f"{method} ({h.default})"
                        for method, h in taken)
    return f"{text} Methods (default): {methods}; unset = the method's default."


def define_hyperparameter_flags(flag_values=flags.FLAGS):
    """One flag per method hyperparameter of every registered loss (`ice_tf.losses.Hyperparameter`),
    unset by default (the method's own default applies). A loss registered later (an
    --import module) gets its flags when the command defines its flags after the import.

    Example:
      define_hyperparameter_flags()  # --loss_weight, --margin_in, ..., and a user loss's own
    """
    for flag, taken in sorted(losses.hyperparameter_flags().items()):
        if flag in flag_values:
            continue
        if flag in _field_types():
            raise ValueError(f"loss {taken[0][0]!r}: hyperparameter flag --{flag} is a config "
                             "field already; declare the hyperparameter with another flag= name.")
        declared = taken[0][1]
        if declared.choices:
            flags.DEFINE_enum(flag, None, list(declared.choices), hyperparameter_help(flag),
                              flag_values=flag_values)
            continue
        define = flags.DEFINE_integer if declared.kind is int else flags.DEFINE_float
        define(flag, None, hyperparameter_help(flag), flag_values=flag_values)


def _config_from_values(values):
    names = set(_field_types()) | set(losses.hyperparameter_flags())
    values = {k: v for k, v in values.items() if k in names}
    for key, value in values.items():
        if isinstance(value, list):
            values[key] = tuple(v for v in value if v)
        elif value == "" and key not in ("output_dir",):
            values[key] = None
    return ExperimentConfig.from_dict(values)


def config_from_flags(flag_values=flags.FLAGS, shared_among_methods=False, **overrides):
    """The frozen, validated config from parsed flags.

    With `shared_among_methods` the method fields that `loss` does not take are kept
    (and not checked): `config.for_loss(name)` gives each method its own.

    Example:
      config = config_from_flags(flags.FLAGS, epochs=1)
    """
    names = [*_field_types(), *losses.hyperparameter_flags()]
    values = {name: flag_values[name].value for name in names if name in flag_values}
    if "import" in flag_values:
        values["imports"] = tuple(flag_values["import"].value or ())
    if "mixed_precision" in flag_values and flag_values["mixed_precision"].value:
        if values.get("precision", "auto") not in ("auto", "mixed_float16"):
            raise ValueError(f"--mixed_precision means --precision=mixed_float16, which "
                             f"contradicts --precision={values['precision']}; give only --precision.")
        values["precision"] = "mixed_float16"
    try:
        config = _config_from_values(values).replace(**overrides)
        if shared_among_methods:
            config.for_loss(config.loss).validate()
            return config
        return config.validate()
    except ValueError as error:
        raise ValueError(flag_message(str(error), flag_values)) from None


_LEADING_FIELD = re.compile(r"^([a-z_]+)(?=[= (,]|$)")


def flag_message(message, flag_values=flags.FLAGS):
    """A config error as a command line user reads it: the field it starts with named as
    the flag, and a pointer to --helpshort.

    Example:
      flag_message("epochs must be >= 1, got 0.")
      # '--epochs must be >= 1, got 0. (--helpshort lists the flags)'
    """
    first = message.strip().splitlines()[0] if message.strip() else message
    match = _LEADING_FIELD.match(first)
    if match and match.group(1) in flag_values:
        first = "--" + first
    return f"{first} (--helpshort lists the flags)"


def applicable_fields(config):
    """The config fields and hyperparameter flags that matter to `config`'s method: every
    field but the hyperparameters its loss does not take.

    Example:
      "margin_in" in applicable_fields(ExperimentConfig(loss="ice"))  # False
    """
    taken = [h.flag_name for h in config.method.hyperparameter_specs]
    return [name for name in _field_types() if name not in NOT_FLAGS] + taken


def to_flagfile(config):
    """A flag file that re-runs `config` (absl syntax: no quoting, no trailing comments),
    with only the flags that apply to its method (`applicable_fields`): --import lines
    first, so that a user's method is registered before its flags are read.

    Example:
      open("flags.txt", "w").write(to_flagfile(config.resolved()))
    """
    lines = [f"--import={module}" for module in config.imports]
    applicable = set(applicable_fields(config))
    values = {key: value for key, value in config.to_dict().items() if key not in NOT_FLAGS}
    values.update(config.options)
    for key, value in values.items():
        if value is None or key not in applicable:
            continue
        if isinstance(value, bool):
            lines.append(f"--{key}" if value else f"--no{key}")
        elif isinstance(value, (tuple, list)):
            lines.append(f"--{key}={','.join(value)}")
        else:
            lines.append(f"--{key}={value}")
    return "\n".join(lines) + "\n"


def parse_overrides(text):
    """'key=value,key=value' -> dict of typed config values (for --variant).

    Example:
      parse_overrides("loss=ice,loss_weight=0.1")  # {"loss": "ice", "loss_weight": 0.1}
    """
    types = {name: kind for name, kind in _field_types().items() if name not in NOT_FLAGS}
    types.update({flag: taken[0][1].kind for flag, taken in losses.hyperparameter_flags().items()})
    overrides = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        if not sep or key not in types:
            raise ValueError(
                f"bad override {item!r}: use key=value with key one of {', '.join(sorted(types))}."
            )
        kind = types[key]
        if raw in ("", "none", "None"):
            overrides[key] = None
        elif kind is bool:
            overrides[key] = raw.lower() in ("1", "true", "yes")
        elif kind is tuple:
            overrides[key] = tuple(raw.split("+"))
        else:
            overrides[key] = kind(raw)
    return overrides


def define_run_flags(flag_values=flags.FLAGS):
    """The flags of a training script that are not config fields (--overwrite).

    Example:
      define_run_flags()  # then experiment.run(config, overwrite=FLAGS.overwrite)
    """
    flags.DEFINE_bool(
        "overwrite", False,
        "Replace a finished run, or one of another config, in --output_dir (every earlier "
        "output is removed first). Without it such a folder is refused; an unfinished run "
        "of the same config resumes.", flag_values=flag_values)


# What a user can fix: printed as one line, without a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError, run_folder.RunFolderError,
               app.UsageError, OSError, ownership.NotOwnedError)
RESUME_HINT = "run the same command again to resume"


def _is_out_of_space(error):
    return (getattr(error, "errno", None) == errno.ENOSPC
            or "No space left on device" in str(error))


def error_line(error):
    """The one line a command prints for a user error: the cause and the fix.

    Example:
      error_line(OSError(errno.ENOSPC, "No space left on device", "runs/x/model.keras"))
      # 'no space left on device writing runs/x/model.keras; free some space, then ...'
    """
    if isinstance(error, KeyboardInterrupt):
        return f"interrupted (Ctrl-C); a training run keeps its last checkpoint: {RESUME_HINT}."
    if _is_out_of_space(error):
        where = f" writing {error.filename}" if getattr(error, "filename", None) else ""
        return (f"no space left on device{where}; free some space (or choose another "
                f"output_dir), then {RESUME_HINT}.")
    if type(error).__name__ == "ResourceExhaustedError":
        return ("out of memory: " + (str(error).strip().splitlines() or [""])[0][:200]
                + "; lower --batch_in/--batch_out or --eval_batch_size.")
    if isinstance(error, OSError) and not isinstance(error, FileNotFoundError) and error.strerror:
        where = f" {error.filename}" if error.filename else ""
        fixes = {errno.EROFS: "choose a writable folder", errno.EACCES: "choose a folder you may write",
                 errno.EPERM: "choose a folder you may write",
                 errno.ENOTDIR: "a part of the path is a file: choose another path",
                 errno.EEXIST: "choose another path"}
        fix = fixes.get(error.errno, "check the path")
        return f"{error.strerror.lower()}:{where}; {fix}."
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def one_line_errors(main):
    """Wraps a script's `main`: a user error (`USER_ERRORS`, TensorFlow's out-of-memory
    or out-of-space error, Ctrl-C) prints `error: <message>` on one line (`error_line`)
    and exits with status 1 (130 for Ctrl-C); ICE_TF_TRACEBACK=1 shows the traceback instead.

    Example:
      @one_line_errors
      def main(argv): ...
    """

    @functools.wraps(main)
    def wrapped(argv):
        try:
            return main(argv)
        except (*USER_ERRORS, KeyboardInterrupt, _ResourceExhausted()) as error:
            if os.environ.get("ICE_TF_TRACEBACK"):
                raise
            if sys.stdout.isatty():
                sys.stdout.write("\n")  # end a progress bar's line: the error gets its own
            sys.stdout.flush()
            sys.stderr.write(f"error: {error_line(error)}\n")
            sys.exit(130 if isinstance(error, KeyboardInterrupt) else 1)

    return wrapped


def _ResourceExhausted():
    """TensorFlow's ResourceExhaustedError (an export or a step that ran out of disk or
    memory), or a class nothing raises when TensorFlow is absent."""
    tensorflow = sys.modules.get("tensorflow")
    return tensorflow.errors.ResourceExhaustedError if tensorflow else _Never


class _Never(Exception):
    pass


def quiet_tensorflow_logging(flag_values=flags.FLAGS):
    """Hides TensorFlow's INFO lines (SavedModel writing) unless --verbosity was given.

    Example:
      quiet_tensorflow_logging(flags.FLAGS)  # first thing in a main
    """
    if not flag_values["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
        std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)


def define_detector_flags(flag_values=flags.FLAGS):
    """The post-hoc detector flags shared by evaluate.py and table2.py.

    Example:
      define_detector_flags()  # --odin_temperature, --odin_epsilon, ...
    """
    flags.DEFINE_float("odin_temperature", 1000.0, "ODIN temperature T.", flag_values=flag_values)
    flags.DEFINE_float("odin_epsilon", 0.0014, "ODIN input noise ε, in [0, 1] pixel units.",
                       flag_values=flag_values)
    flags.DEFINE_float("mahalanobis_epsilon", 0.0,
                       "Mahalanobis input noise ε (the Energy code tunes it; e.g. 0.0014).",
                       flag_values=flag_values)
    flags.DEFINE_bool("refit", False,
                      "Refit saved Mahalanobis statistics even when they match the model.",
                      flag_values=flag_values)


def detector_options(flag_values=flags.FLAGS):
    """The detector flags as `ice_tf.experiment.evaluation.for_run` keyword arguments.

    Example:
      evaluation.for_run("odin", config, model_path, **detector_options())
    """
    return dict(odin_temperature=flag_values.odin_temperature, odin_epsilon=flag_values.odin_epsilon,
                mahalanobis_epsilon=flag_values.mahalanobis_epsilon, refit=flag_values.refit)
