"""The frozen configuration of one experiment (training, evaluation, export).

Scripts turn absl flags into an `ExperimentConfig` once; library code only ever
sees the config. `validate()` rejects bad values with messages that name the fix.

OOD test sets are given as specs `[label=]dataset[@split][:path]`: a registered
dataset name (`svhn`), another split (`embedded_outliers@val`), or a set read from
user files (`isun=image_folder:/data/iSUN`). The split defaults to `test`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Optional

from ice_tf.analysis import ANALYSES  # the training-time analyses a run may record

# A method's hyperparameters are not config fields: each loss class declares them
# (`ice_tf.losses.Hyperparameter`), and the config keeps the ones set in `method_options`,
# {flag: value}; `ExperimentConfig(margin_in=-27.0)` and `config.margin_in` read and
# write them by flag name. A value set for a method that has no such hyperparameter is
# refused by `validate`, never ignored.
SCHEDULES = ("scratch", "finetune")
PROTOCOLS = ("oe", "full")
# The served confidence of a Gaussian head (`ice_tf.calibration`): Platt's σ(a max h + b)
# or exp(max h / T); Platt had the lower validation ECE (docs/head_study.md).
CONFIDENCE_MAPS = ("platt", "temperature")
HEAD_CHOICES = ("auto", "linear", "gaussian", "vos")  # ice_tf.layers.HEADS and "auto"
# How a Gaussian head starts a scratch run: "random", N(0, 0.05²) means (Keras' random_normal)
# and L = I; "class_means", the class means of the first batches' features and L = I;
# "features", those means and the Cholesky factor of their tied covariance (GDA).
HEAD_INITS = ("random", "class_means", "features")


@dataclasses.dataclass(frozen=True)
class OODSetSpec:
    """One OOD test set: a label, a registered dataset name, a split and an optional path.

    Example:
      OODSetSpec.parse("isun=image_folder:/data/iSUN")
      # OODSetSpec(label='isun', dataset='image_folder', split='test', path='/data/iSUN')
    """

    label: str
    dataset: str
    split: str = "test"
    path: Optional[str] = None

    @classmethod
    def parse(cls, spec):
        """The spec of a string `[label=]dataset[@split][:path]`."""
        spec = spec.strip()
        label, has_label, rest = spec.partition("=")
        if not has_label:
            label, rest = None, spec
        name_and_split, _, path = rest.partition(":")
        dataset, _, split = name_and_split.partition("@")
        dataset = dataset.strip()
        if not dataset:
            raise ValueError(f"OOD set spec {spec!r} names no dataset; use [label=]dataset[@split][:path].")
        if label is None:
            label = dataset if not split else f"{dataset}@{split}"
        return cls(label.strip(), dataset, split.strip() or "test", path.strip() or None)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything one run needs. Defaults reproduce the reference protocols.

    Example:
      config = ExperimentConfig(loss="ice", backbone="small_cnn", epochs=6).validate()
      config.replace(loss_weight=0.1).to_json()   # a method hyperparameter, by its flag
    """

    # Data.
    in_dataset: str = "embedded_fashion_mnist"
    outlier_dataset: Optional[str] = "embedded_outliers"
    outlier_path: Optional[str] = None
    outlier_exclude_path: Optional[str] = None
    ood_datasets: tuple = ("embedded_mnist", "embedded_digits", "embedded_textures",
                           "gaussian", "rademacher", "blobs")
    data_dir: Optional[str] = None
    download: bool = False
    limit_train: Optional[int] = None
    # Method.
    loss: str = "ice"
    # (flag, value) pairs of the method's hyperparameters that are set, sorted; unset ones
    # take the loss's declared default (`resolved()` fills them in for the run folder).
    method_options: tuple = ()
    # Modules imported before the flags are read (user losses, backbones, datasets).
    imports: tuple = ()
    head: str = "auto"  # auto: the method's default head (losses.spec(loss).default_head)
    head_init: str = "random"  # HEAD_INITS; Gaussian head, scratch schedule
    head_learning_rate_scale: float = 1.0  # the head's SGD learning rate, times the backbone's
    head_weight_decay: Optional[float] = None  # None: weight_decay for a linear head, 0 for a Gaussian
    score: Optional[str] = None  # None: the method's default score
    outlier_batchnorm: str = "auto"  # auto, joint (reference), separate, frozen: OODModel.compile
    # Model.
    backbone: str = "wrn40_2"
    dropout_rate: Optional[float] = None
    # Schedule (SGD nesterov, cosine per step to min_learning_rate).
    schedule: str = "scratch"
    init_checkpoint: Optional[str] = None  # "{seed}" in it is replaced by the run's seed
    epochs: int = 100
    learning_rate: float = 0.1
    min_learning_rate: float = 1e-6
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_in: int = 128
    batch_out: int = 256
    augment: bool = True
    seed: int = 1
    deterministic: bool = False  # op determinism: the same command, the same numbers
    checkpoint_steps: Optional[int] = None  # also save the training state every N steps
    # Hardware.
    strategy: str = "auto"
    precision: str = "auto"  # ice_tf.precision: auto, float32, mixed_bfloat16, mixed_float16
    # Evaluation.
    protocol: str = "oe"
    eval_draws: int = 10
    eval_batch_size: int = 500
    eval_limit: Optional[int] = None
    eval_split: str = "test"  # "val" when choosing hyperparameters
    calibrate_confidence: bool = True  # fit the confidence map on validation data
    confidence_map: str = "platt"  # CONFIDENCE_MAPS: σ(a max h + b), or exp(max h / T)
    refit_head: bool = True  # Gaussian head: refit to the served features after training
    # Training-time analyses (ice_tf.analysis.probes; docs/analyses.md).
    analyses: tuple = ()  # of ANALYSES: gradient_meter, shift, confidence
    analysis_probe_size: int = 256  # images per probe set
    # Output.
    output_dir: str = "runs/default"
    export: bool = True
    dry_run: bool = False

    # ------------------------------------------------------------ derived
    @property
    def method(self):
        """The `ice_tf.losses.MethodSpec` of `loss`."""
        from ice_tf import losses

        return losses.spec(self.loss)

    @property
    def head_kind(self):
        """"linear" or "gaussian": `head`, or the method's default head for "auto"."""
        return self.method.default_head if self.head == "auto" else self.head

    @property
    def score_name(self):
        """`score`, or the score the method is evaluated with in its paper."""
        return self.score or self.method.default_score

    @property
    def ood_set_specs(self):
        return tuple(OODSetSpec.parse(spec) for spec in self.ood_datasets)

    @property
    def init_checkpoint_path(self):
        """`init_checkpoint` with "{seed}" replaced by `seed`, so that each seed of a
        fine-tune starts from the plain model of the same seed.

        Example:
          ExperimentConfig(init_checkpoint="runs/ce/seed{seed}/model.keras", seed=2
                           ).init_checkpoint_path  # 'runs/ce/seed2/model.keras'
        """
        if not self.init_checkpoint:
            return self.init_checkpoint
        return self.init_checkpoint.replace("{seed}", str(self.seed))

    def input_paths(self):
        """(setting, path) of every file or folder of the user's that the run reads: a run
        refuses an output_dir that holds one (`ice_tf.experiment.run_folder.check_inputs_outside`).

        Example:
          ExperimentConfig(outlier_path="/data/300k.npy").input_paths()
          # [('outlier_path', '/data/300k.npy')]
        """
        from ice_tf.data import labelled

        found = [("backbone", self.backbone if self.backbone.endswith(".keras") else None),
                 ("init_checkpoint", self.init_checkpoint_path),
                 ("outlier_path", self.outlier_path),
                 ("outlier_exclude_path", self.outlier_exclude_path),
                 ("data_dir", self.data_dir)]
        if labelled.is_spec(self.in_dataset):
            found.append(("in_dataset", self.in_dataset.partition(":")[2]))
        found += [(f"OOD set {spec.label}", spec.path) for spec in self.ood_set_specs]
        return [(setting, value) for setting, value in found if value]

    # ------------------------------------------------- method hyperparameters
    @property
    def options(self):
        """{flag: value} of the method hyperparameters that are set.

        Example:
          ExperimentConfig(loss="energy", margin_in=-27.0).options  # {'margin_in': -27.0}
        """
        return dict(self.method_options)

    def __getattr__(self, name):
        # config.loss_weight, config.margin_in, ...: a method hyperparameter by flag name.
        if name.startswith("_") or name in ("method_options", "loss"):
            raise AttributeError(name)
        if name in _hyperparameter_flags():
            return dict(self.method_options).get(name)
        raise AttributeError(f"'ExperimentConfig' object has no attribute {name!r}")

    def _specs(self):
        """{flag: Hyperparameter} of `loss`."""
        return {h.flag_name: h for h in self.method.hyperparameter_specs}

    def inapplicable_method_fields(self):
        """The method hyperparameters that are set although `loss` has no such hyperparameter."""
        taken = self._specs()
        return tuple(flag for flag in self.options if flag not in taken)

    def for_loss(self, loss):
        """This config for another method, with the method hyperparameters it does not
        take unset (ice-tf compare shares one set of flags among methods)."""
        config = self.replace(loss=loss)
        return config.replace(**{flag: None for flag in config.inapplicable_method_fields()})

    def loss_kwargs(self):
        """The loss constructor's arguments set by this config.

        Example:
          ExperimentConfig(loss="energy", margin_in=-27.0).loss_kwargs()  # {'margin_in': -27.0}
        """
        taken = self._specs()
        return {taken[flag].argument: value for flag, value in self.options.items() if flag in taken}

    def resolved(self):
        """This config with every hyperparameter of its method set, unset ones to their
        declared defaults: what a run folder records, so that a later change of a default
        does not change what re-running an old folder means.

        Example:
          ExperimentConfig(loss="energy").resolved().options
          # {'loss_weight': 0.1, 'margin_in': -23.0, 'margin_out': -5.0}
        """
        options = {flag: spec.default for flag, spec in self._specs().items()}
        options.update({flag: value for flag, value in self.options.items() if flag in options})
        return self.replace(**{flag: value for flag, value in options.items()})

    def replace(self, **changes):
        """A copy with some fields changed (the config is frozen); method hyperparameters
        by flag name, None unsets one.

        Example:
          config.replace(epochs=3, loss_weight=0.1)
        """
        fields, options = _split_method_options(changes, dict(self.method_options))
        if options is not None:
            fields["method_options"] = options
        return dataclasses.replace(self, **fields)

    @property
    def uses_outliers(self):
        return self.method.uses_outliers

    def backbone_kwargs(self):
        """The backbone constructor options the config sets (dropout_rate)."""
        return {} if self.dropout_rate is None else {"dropout_rate": self.dropout_rate}

    # --------------------------------------------------------- validation
    def validate(self):
        """Raises ValueError naming the bad setting and the valid choices; returns self."""
        from ice_tf import backbones, data, distribute, losses, models, precision, scores

        def choose(field, value, valid):
            if value not in valid:
                raise ValueError(f"{field}={value!r} is not valid; choose one of: {', '.join(valid)}.")

        if self.loss not in losses.names():
            raise ValueError(f"loss={self.loss!r} is not valid; choose one of: "
                             f"{', '.join(losses.names())}, or register your own in a module and "
                             "name it with --import=MODULE.")
        unknown = sorted(set(self.options) - set(_hyperparameter_flags()))
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: no registered method has such a hyperparameter "
                             f"(method hyperparameters: {', '.join(sorted(_hyperparameter_flags()))}).")
        inapplicable = self.inapplicable_method_fields()
        if inapplicable:
            taken = ", ".join(self._specs()) or "none"
            fields = ", ".join(inapplicable)
            verb = "does" if len(inapplicable) == 1 else "do"
            raise ValueError(
                f"{fields} {verb} not apply to loss={self.loss!r} (its hyperparameters: "
                f"{taken}); unset {fields}."
            )
        if models.is_model_file(self.backbone):  # a user's network
            if not os.path.isfile(self.backbone):
                raise ValueError(f"backbone={self.backbone!r} does not exist; give the .keras "
                                 f"file of your model, or one of: {', '.join(backbones.names())}.")
            if self.dropout_rate is not None:
                raise ValueError("dropout_rate applies to the registered backbones only; unset it "
                                 "for a backbone file.")
        else:
            choose("backbone", self.backbone, backbones.names())
        choose("head", self.head, HEAD_CHOICES)
        choose("outlier_batchnorm", self.outlier_batchnorm, ("auto", *models.OUTLIER_BATCHNORM))
        choose("head_init", self.head_init, HEAD_INITS)
        if self.head_init != "random" and self.head_kind != "gaussian":
            raise ValueError(f"head_init={self.head_init!r} initialises a Gaussian head; this run "
                             f"has a {self.head_kind} head: set head=gaussian or head_init=random.")
        if self.head_init != "random" and self.schedule != "scratch":
            raise ValueError("head_init applies to the scratch schedule (finetune fits the head to "
                             "the trained features anyway); unset head_init.")
        if not (math.isfinite(self.head_learning_rate_scale) and self.head_learning_rate_scale >= 0):
            raise ValueError("head_learning_rate_scale must be a finite number >= 0, got "
                             f"{self.head_learning_rate_scale}.")
        if self.head_weight_decay is not None and not (
                math.isfinite(self.head_weight_decay) and self.head_weight_decay >= 0):
            raise ValueError(f"head_weight_decay must be a finite number >= 0 when set, got "
                             f"{self.head_weight_decay}.")
        choose("schedule", self.schedule, SCHEDULES)
        choose("protocol", self.protocol, PROTOCOLS)
        choose("confidence_map", self.confidence_map, CONFIDENCE_MAPS)
        choose("strategy", self.strategy, distribute.STRATEGIES)
        choose("precision", self.precision, precision.PRECISIONS)
        choose("score", self.score_name, scores.names())
        from ice_tf.data import labelled

        if labelled.is_spec(self.in_dataset):
            data.get_info(self.in_dataset)  # reads the user's set: a bad one fails here
        elif self.in_dataset not in data.names():
            labelled_sets = [n for n in data.names() if data.get_info(n).num_classes]
            raise ValueError(
                f"in_dataset={self.in_dataset!r} is not valid; choose one of: "
                f"{', '.join(labelled_sets)}, or your own: image_folder:PATH (one subfolder per "
                "class) or npz:PATH.")
        if data.get_info(self.in_dataset).num_classes is None:
            raise ValueError(f"in_dataset={self.in_dataset!r} has no labels; pick a labelled set.")
        if self.uses_outliers:
            if not self.outlier_dataset:
                raise ValueError(f"loss={self.loss!r} needs outliers: set outlier_dataset.")
            choose("outlier_dataset", self.outlier_dataset, data.names())
            entry = data.registry.source_entry(self.outlier_dataset)
            for field, takes in (("outlier_path", entry.uses_path),
                                 ("outlier_exclude_path", entry.uses_exclusions)):
                if getattr(self, field) and not takes:
                    raise ValueError(
                        f"outlier_dataset={self.outlier_dataset!r} reads no {field}, but "
                        f"{field}={getattr(self, field)!r} is set (a flag file sets it for "
                        f"another outlier set?): unset it with --{field}=.")
        for spec in self.ood_set_specs:
            choose(f"OOD set {spec.label!r}", spec.dataset, data.names())
        if len({spec.label for spec in self.ood_set_specs}) != len(self.ood_set_specs):
            raise ValueError("OOD set labels must be unique.")
        for name in self.analyses:
            choose("analyses", name, ANALYSES)
        if len(set(self.analyses)) != len(self.analyses):
            raise ValueError(f"analyses must not repeat a name; got {', '.join(self.analyses)}.")
        if {"gradient_meter", "shift"} & set(self.analyses) and not self.outlier_dataset:
            raise ValueError("analyses gradient_meter and shift probe outliers: set outlier_dataset.")
        if "confidence" in self.analyses and not self.ood_datasets:
            raise ValueError("analysis confidence probes the OOD sets: set ood_datasets.")
        for field in ("epochs", "batch_in", "batch_out", "eval_draws", "eval_batch_size",
                      "analysis_probe_size"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}.")
        for field in ("limit_train", "eval_limit", "checkpoint_steps"):
            if getattr(self, field) is not None and getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1 when set, got {getattr(self, field)}.")
        for field in ("learning_rate", "min_learning_rate", "momentum", "weight_decay"):
            value = getattr(self, field)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{field} must be a finite number >= 0, got {value}.")
        if self.min_learning_rate > self.learning_rate:
            raise ValueError("min_learning_rate must not exceed learning_rate.")
        specs = self._specs()
        for flag, value in self.options.items():
            specs[flag].check(value)
        if self.dropout_rate is not None and not 0 <= self.dropout_rate < 1:
            raise ValueError(f"dropout_rate must lie in [0, 1), got {self.dropout_rate}.")
        if (self.schedule == "finetune" and not self.init_checkpoint and not self.dry_run
                and not models.is_model_file(self.backbone)):
            raise ValueError("schedule='finetune' needs init_checkpoint (a .keras file of a trained "
                             "model) or backbone=PATH.keras (your trained classifier).")
        losses.get(self.loss, **self.loss_kwargs())  # checks λ and margins
        return self

    # ------------------------------------------------------------ storage
    def to_dict(self):
        """The fields as a dict (what config.json holds); `method_options` as {flag: value}."""
        values = dataclasses.asdict(self)
        values["method_options"] = dict(self.method_options)
        values["imports"] = list(self.imports)
        return values

    def to_json(self):
        """The fields as sorted, indented JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values):
        """The config of a dict of fields (config.json); an unknown field is a ValueError."""
        values = upgrade_dict(values)
        unknown = set(values) - _FIELD_NAMES
        if unknown:  # method hyperparameters by flag name (the registry loads TensorFlow)
            unknown -= set(_hyperparameter_flags())
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}.")
        values = dict(values)
        for field in ("ood_datasets", "analyses", "imports"):
            if field in values:
                values[field] = tuple(values[field])
        if "method_options" in values:
            values["method_options"] = _as_options(values["method_options"])
        return cls(**values)


# The method hyperparameters that were config fields before `method_options`.
_LEGACY_METHOD_FIELDS = ("loss_weight", "margin_in", "margin_out", "in_term_weight", "out_term_weight")


def _hyperparameter_flags():
    from ice_tf import losses

    return losses.hyperparameter_flags()


def _as_options(options):
    """Sorted (flag, value) pairs of a dict or pairs, None values dropped."""
    pairs = options.items() if isinstance(options, dict) else options
    return tuple(sorted((str(flag), value) for flag, value in pairs if value is not None))


def _split_method_options(changes, options):
    """(field changes, method_options or None) of keyword changes that may name method
    hyperparameters by flag."""
    fields = {}
    touched = "method_options" in changes
    if touched:
        options = dict(_as_options(changes["method_options"]))
    flags = _hyperparameter_flags() if set(changes) - _FIELD_NAMES else {}
    for key, value in changes.items():
        if key == "method_options":
            continue
        if key in _FIELD_NAMES:
            fields[key] = value
        elif key in flags:
            touched = True
            if value is None:
                options.pop(key, None)
            else:
                options[key] = value
        else:
            raise TypeError(f"ExperimentConfig has no field or method hyperparameter {key!r}.")
    return fields, (_as_options(options) if touched else None)


_FIELD_NAMES = frozenset(field.name for field in dataclasses.fields(ExperimentConfig))
_dataclass_init = ExperimentConfig.__init__


def _init(self, *args, **kwargs):
    fields, options = _split_method_options(kwargs, {})
    if options is not None:
        fields["method_options"] = options
    _dataclass_init(self, *args, **fields)


_init.__doc__ = ("ExperimentConfig(**fields): the dataclass fields, and method hyperparameters "
                 "by flag name (loss_weight=0.1, margin_in=-27.0).")
ExperimentConfig.__init__ = _init


def import_modules(modules):
    """Imports the modules named by --import (a config's `imports`), so that what they
    register (a loss with its hyperparameters, a backbone, a dataset) is known; a module
    that fails is a ValueError naming it.

    Example:
      import_modules(["my_losses"])  # then loss="squared_oe" validates
    """
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as error:  # noqa: BLE001  (a user's module can raise anything)
            detail = str(error).splitlines()[0] if str(error) else ""
            raise ValueError(f"--import={module}: {type(error).__name__}: {detail} (a module on "
                             "the Python path, e.g. my_losses for ./my_losses.py)") from None


def upgrade_dict(values, stored=False):
    """A config dict of an older version in today's fields: `mixed_precision` (a
    boolean until `precision` replaced it) becomes `precision`, and the method
    hyperparameters that were fields (`loss_weight`, `margin_in`, ...) move into
    `method_options`. With `stored` (a run folder's config.json), a config that
    predates `precision` ran in float32, not in today's default.

    Example:
      upgrade_dict({"mixed_precision": True})  # {"precision": "mixed_float16"}
    """
    values = dict(values)
    legacy_options = {field: values.pop(field) for field in _LEGACY_METHOD_FIELDS if field in values}
    if any(value is not None for value in legacy_options.values()):
        values["method_options"] = {**legacy_options, **dict(values.get("method_options") or {})}
    if stored:  # a run of an older version served its head as trained, with T
        values.setdefault("refit_head", False)
        values.setdefault("confidence_map", "temperature")
    legacy = values.pop("mixed_precision", None)
    if "precision" not in values and (stored or legacy is not None):
        values["precision"] = "mixed_float16" if legacy else "float32"
    return values


__all__ = ["ExperimentConfig", "upgrade_dict", "CONFIDENCE_MAPS", "import_modules", "OODSetSpec", "SCHEDULES", "PROTOCOLS", "ANALYSES"]
