"""absl flags for `ExperimentConfig`, shared by the scripts.

One flag per config field (same name), so flag files, `config.json` and the
Python API use the same vocabulary. `config_from_flags` turns parsed flags into
the frozen config once; a validator rejects bad values at parse time with the
config's own message.
"""

from __future__ import annotations

import dataclasses
import functools
import logging as std_logging
import os
import sys
import typing

from absl import flags, logging

from ice_tf import backbones, losses, run_folder
from ice_tf.config import ExperimentConfig

_METHODS = ", ".join(losses.names())
HELP = {
    "in_dataset": "In-distribution dataset (see ice_tf.data.names()).",
    "outlier_dataset": "Auxiliary outlier dataset for OE/Energy/ICE (e.g. embedded_outliers, tiny_images, imagenet32).",
    "outlier_path": "File or folder of a file-based outlier dataset (tiny_images .bin, .npy, image folder).",
    "outlier_exclude_path": "Text file of outlier indices to skip (OE's 80mn_cifar_idxs.txt).",
    "ood_datasets": "OOD test sets: [label=]dataset[@split][:path], comma separated.",
    "data_dir": "TFDS data_dir holding prepared datasets.",
    "download": "Let TFDS download missing datasets (needs internet).",
    "limit_train": "Use only this many in-distribution training images (quick runs).",
    "loss": f"Training loss (the method): {_METHODS}.",
    "loss_weight": "λ, the weight of the OOD terms; unset = the loss's default. "
                   "Methods with a λ: " + ", ".join(
                       n for n in losses.names() if "weight" in losses.spec(n).hyperparameters),
    "margin_in": "Energy loss m_in (CIFAR-10 -23, CIFAR-100 -27); unset = default. Energy only.",
    "margin_out": "Energy loss m_out; unset = default (-5). Energy only.",
    "head": "auto (the method's own: " + ", ".join(
        f"{n} {losses.spec(n).default_head}" for n in losses.names()) + "), linear or gaussian.",
    "score": "OOD score for evaluation; unset = the method's own (" + ", ".join(
        f"{n} {losses.spec(n).default_score}" for n in losses.names()) + ").",
    "backbone": f"Backbone: {', '.join(backbones.names())}.",
    "dropout_rate": "Backbone dropout; unset = the backbone's default.",
    "schedule": "scratch or finetune (from init_checkpoint).",
    "init_checkpoint": "A .keras model to fine-tune from (finetune schedule).",
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
                     "machine (slower; BUILD.md gives the cost).",
    "checkpoint_steps": "Also save the training state every this many steps within an epoch "
                        "(long epochs); unset = after every epoch only.",
    "strategy": "auto (mirrored over several GPUs), default or mirrored.",
    "mixed_precision": "mixed_float16 policy (the heads stay float32).",
    "protocol": "Evaluation protocol: oe (ID test vs ID/5 OOD, 10 draws) or full.",
    "eval_draws": "Draws of the oe protocol.",
    "eval_batch_size": "Batch size for evaluation.",
    "eval_limit": "Evaluate on at most this many images per set.",
    "eval_split": "In-distribution evaluation split (val when choosing hyperparameters).",
    "analyses": "Training-time analyses recorded each epoch under <output_dir>/analysis/: "
                "gradient_meter, shift, confidence (comma separated; docs/analyses.md).",
    "analysis_probe_size": "Images per probe set of the analyses.",
    "output_dir": "Run folder (created).",
    "export": "Export a SavedModel after training.",
    "dry_run": "Build data (mock) and model, run one step, write nothing.",
}


def _base_type(field_type):
    args = [a for a in typing.get_args(field_type) if a is not type(None)]
    return args[0] if typing.get_origin(field_type) is typing.Union else field_type


def _field_types():
    hints = typing.get_type_hints(ExperimentConfig)
    return {field.name: _base_type(hints[field.name]) for field in dataclasses.fields(ExperimentConfig)}


def define_flags(exclude=(), flag_values=flags.FLAGS, shared_among_methods=False):
    """Defines one absl flag per ExperimentConfig field (except `exclude`).

    With `shared_among_methods` (scripts/compare.py) the flags are checked without the
    method fields that `--loss` does not take: each compared method takes its own.
    """
    types = _field_types()
    for field in dataclasses.fields(ExperimentConfig):
        if field.name in exclude:
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

    names = [f.name for f in dataclasses.fields(ExperimentConfig) if f.name not in exclude]

    def _valid(values):
        try:
            config = _config_from_values(values)
            if shared_among_methods:
                config = config.for_loss(config.loss)
            config.validate()
        except ValueError as error:
            raise flags.ValidationError(str(error)) from None
        return True

    flags.register_multi_flags_validator(
        names, _valid, message="invalid experiment flags", flag_values=flag_values
    )


def _config_from_values(values):
    values = {k: v for k, v in values.items() if k in _field_types()}
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
    """
    names = _field_types()
    values = {name: flag_values[name].value for name in names if name in flag_values}
    config = _config_from_values(values).replace(**overrides)
    if shared_among_methods:
        config.for_loss(config.loss).validate()
        return config
    return config.validate()


def to_flagfile(config):
    """A flag file that re-runs `config` (absl syntax: no quoting, no trailing comments)."""
    lines = []
    for key, value in config.to_dict().items():
        if value is None:
            continue
        if isinstance(value, bool):
            lines.append(f"--{key}" if value else f"--no{key}")
        elif isinstance(value, (tuple, list)):
            lines.append(f"--{key}={','.join(value)}")
        else:
            lines.append(f"--{key}={value}")
    return "\n".join(lines) + "\n"


def parse_overrides(text):
    """'key=value,key=value' -> dict of typed config values (for --variant)."""
    types = _field_types()
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
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError, run_folder.RunFolderError)


def one_line_errors(main):
    """Wraps a script's `main`: a user error (`USER_ERRORS`) prints `error: <message>` on
    one line and exits with status 1; ICE_TF_TRACEBACK=1 shows the traceback instead.

    Example:
      @one_line_errors
      def main(argv): ...
    """

    @functools.wraps(main)
    def wrapped(argv):
        try:
            return main(argv)
        except USER_ERRORS as error:
            if os.environ.get("ICE_TF_TRACEBACK"):
                raise
            text = str(error).strip() or type(error).__name__
            sys.stderr.write(f"error: {text.splitlines()[0]}\n")
            sys.exit(1)

    return wrapped


def quiet_tensorflow_logging(flag_values=flags.FLAGS):
    """Hides TensorFlow's INFO lines (SavedModel writing) unless --verbosity was given."""
    if not flag_values["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
        std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)


def define_detector_flags(flag_values=flags.FLAGS):
    """The post-hoc detector flags shared by evaluate.py and table2.py."""
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
    """The detector flags as `ice_tf.detectors.for_run` keyword arguments."""
    return dict(odin_temperature=flag_values.odin_temperature, odin_epsilon=flag_values.odin_epsilon,
                mahalanobis_epsilon=flag_values.mahalanobis_epsilon, refit=flag_values.refit)


def fit_if_needed(detector, model, config):
    """Fits (or loads) a post-hoc detector's statistics on the run's training images."""
    from ice_tf import run_data

    if detector.needs_fit:
        detector.fit(model, run_data.statistics_data(config))
    return detector
