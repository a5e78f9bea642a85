"""One experiment, end to end: data, model, training, evaluation, export.

`run(config)` writes the run folder `config.output_dir`; `ice_tf.experiment.run_folder` names
its files and says what each holds. Scripts add `flags.txt`, a flag file that re-runs
the experiment.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import keras
import numpy as np

from ice_tf import data, distribute, export, losses, models
from ice_tf import precision as precision_lib
from ice_tf.analysis import probes as probes_lib
from ice_tf.atomic_io import save_model, write_atomic  # noqa: F401  (scripts use write_atomic)
from ice_tf.experiment import analyses as analyses_lib
from ice_tf.experiment import checkpoint as checkpoint_lib
from ice_tf.experiment import config as config_lib
from ice_tf.experiment import evaluation
from ice_tf.experiment import run_folder as folder_lib
from ice_tf.experiment.checkpoint import JsonLinesLogger  # noqa: F401  (its home; kept here for callers)
from ice_tf.experiment.config import ExperimentConfig
from ice_tf.experiment.run_data import (check_sources, image_shape_of, load_images, make_eval_data,
                                        make_train_data, mock_sources, statistics_data)
from ice_tf.models import FINETUNE_RIDGE, fit_gaussian_head  # noqa: F401  (their home: models)

RESULTS_FILE = folder_lib.RESULTS_FILE
# head_init=features: batches whose training-mode features give the class means and the
# tied covariance (20 x 128 images: at d = 128, ten times as many images as dimensions).
HEAD_INIT_BATCHES = 20


# ----------------------------------------------------------------- model
def build_optimizer(config, total_steps):
    """SGD with nesterov momentum and per-step cosine decay to min_learning_rate.

    Example:
      optimizer = build_optimizer(config, total_steps=config.epochs * 101)
    """
    alpha = config.min_learning_rate / config.learning_rate if config.learning_rate else 0.0
    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=max(total_steps, 1), alpha=alpha
    )
    return keras.optimizers.SGD(schedule, momentum=config.momentum, nesterov=config.momentum > 0)


def initialize_from_checkpoint(model, checkpoint_path, train_dataset=None, num_batches=None, verbose=1):
    """Fine-tune start: backbone weights from a trained model; a Gaussian head replacing
    a linear one is fitted to training features (`fit_gaussian_head`).

    `train_dataset` (the fine-tune's own batches, as `make_train_data` returns) and
    `num_batches` are needed only in that case.

    Example:
      initialize_from_checkpoint(model, "runs/ce/model.keras", train_ds, steps_per_epoch)
    """
    if not os.path.isfile(checkpoint_path):
        raise FileNotFoundError(
            f"init_checkpoint {checkpoint_path!r} does not exist; give the model.keras of a "
            "finished run (e.g. runs/demo/ce/seed1/model.keras).")
    pretrained = models.read_model(checkpoint_path, "init_checkpoint")
    if not isinstance(pretrained, models.OODModel):
        raise ValueError(f"{checkpoint_path} is not an ice_tf OODModel; convert a Keras "
                         "classifier with OODModel.from_classifier.")
    try:
        model.backbone.set_weights(pretrained.backbone.get_weights())
    except ValueError as error:
        raise ValueError(
            f"init_checkpoint {checkpoint_path!r} does not fit backbone {model.backbone.name!r} "
            f"({str(error).splitlines()[0]}); fine-tune with the backbone it was trained with."
        ) from None
    if pretrained.gaussian_head == model.gaussian_head:
        model.head.set_weights(pretrained.head.get_weights())
    elif model.gaussian_head:
        if train_dataset is None or not num_batches:
            raise ValueError("fitting a Gaussian head needs the training batches (train_dataset, num_batches).")
        fit_gaussian_head(model, train_dataset, num_batches, verbose=verbose)
    return model


def build_model(config, strategy):
    """The run's `OODModel` (backbone, head by `config.head_kind`), inside `strategy.scope()`.

    A backbone `PATH.keras` is a user's network (`models.build_from_file`): fresh weights
    for the scratch schedule (or a fine-tune from init_checkpoint), its own weights for a
    fine-tune without one.

    Example:
      model = build_model(ExperimentConfig(backbone="small_cnn"), tf.distribute.get_strategy())
    """
    num_classes = data.get_info(config.in_dataset).num_classes
    if models.is_model_file(config.backbone):
        with strategy.scope():
            return models.build_from_file(
                config.backbone, num_classes, config.head_kind,
                fresh_weights=config.schedule == "scratch" or bool(config.init_checkpoint),
                normalization=data.normalization(config.in_dataset))
    return models.build_model(
        config.backbone,
        image_shape_of(config),
        num_classes,
        head=config.head_kind,
        strategy=strategy,
        normalization=data.normalization(config.in_dataset),
        **config.backbone_kwargs(),
    )


build = build_model  # the earlier name


# ------------------------------------------------------------------- run
def dry_run(config):
    """`run` with mock sources and one step, writing nothing; returns the step's logs.

    Example:
      dry_run(ExperimentConfig(backbone="small_cnn"))  # {'loss': ..., 'accuracy': ...}
    """
    return run(config.replace(dry_run=True), verbose=0)


def _train(config, strategy, out, verbose, resume=False, extra_callbacks=()):
    """Everything before evaluation, for a real run and a dry run alike: seed, data,
    model (in `strategy`, made by `run`), fine-tune start or resumed state, compile,
    callbacks and `fit`.

    A dry run (`out` None) takes one step of at most 4 + 8 images, on mock data, and
    writes nothing; it has no checkpoint to start a fine-tune from, so its model keeps
    its initialisation. With `resume`, training continues from the state in
    checkpoints/ (`checkpoint.TrainingCheckpoint`): weights, optimizer (and with it the
    learning-rate schedule), random state and the data stream's position.
    """
    dry = out is None
    keras.utils.set_random_seed(config.seed)
    batch_in, batch_out = (min(config.batch_in, 4), min(config.batch_out, 8)) if dry else (
        config.batch_in, config.batch_out)
    # The stream starts where the interrupted run stopped (its step count in all).
    # Read once: checking a state reads its whole weights file back.
    state = checkpoint_lib.usable_state(out) if resume else None
    start_epoch, start_step, steps_done = checkpoint_lib.training_position(out, state or {})
    multi_worker = distribute.is_multi_worker(strategy)
    if multi_worker:
        distribute.check_batches(strategy, batch_in=batch_in, batch_out=batch_out)

    def train_data(start_step):
        dataset, steps = make_train_data(config, batch_in, batch_out, start_step=start_step)
        return (distribute.distribute_per_worker(strategy, dataset) if multi_worker else dataset,
                steps)

    train_ds, steps_per_epoch = train_data(steps_done)
    epochs, steps_per_epoch = (1, 1) if dry else (config.epochs, steps_per_epoch)
    with strategy.scope():
        model = build_model(config, strategy)
        model.compile(
            build_optimizer(config, epochs * steps_per_epoch),
            loss=losses.get(config.loss, **config.loss_kwargs()),
            weight_decay=config.weight_decay,
            outlier_batchnorm=config.outlier_batchnorm,
            head_learning_rate_scale=config.head_learning_rate_scale,
            head_weight_decay=config.head_weight_decay,
            seed=config.seed,
            run_eagerly=dry,  # one step: tracing would cost more than it saves
        )
        if steps_done:
            checkpoint_lib.restore_training_state(model, out, state)
        elif config.schedule == "finetune" and not dry and config.init_checkpoint:
            initialize_from_checkpoint(
                model, config.init_checkpoint_path, train_ds, steps_per_epoch, verbose=verbose
            )
        elif config.schedule == "finetune" and not dry and model.gaussian_head:
            # A user's classifier (--backbone=PATH.keras): its features, a fitted Gaussian head.
            fit_gaussian_head(model, train_ds, steps_per_epoch, verbose=verbose)
        elif config.head_init != "random" and not dry:
            if multi_worker:
                raise ValueError(f"head_init={config.head_init} is not supported with "
                                 "strategy=multi_worker; set head_init=random.")
            fit_gaussian_head(model, train_ds, HEAD_INIT_BATCHES, verbose=0,
                              means_only=config.head_init == "class_means")
    if steps_done and verbose:
        within = f", step {start_step}" if start_step else ""
        print(f"Resuming {out} after epoch {start_epoch}{within} of {epochs}")
    # Analyses first: they add their scalars to the logs the loggers below write.
    callbacks = analyses_lib.analysis_callbacks(
        config, directory=out, probe_size=8 if dry else None, start_epoch=start_epoch,
        resumed=bool(steps_done))
    if model.gaussian_head:
        callbacks.append(probes_lib.GaussianHeadMonitor())
    logger = None
    if not dry:
        logger = JsonLinesLogger(folder_lib.path(out, folder_lib.METRICS_FILE), start_epoch,
                                 recovered=(state or {}).get("metrics"))
        callbacks += [
            logger,
            keras.callbacks.TensorBoard(folder_lib.path(out, folder_lib.TENSORBOARD_DIR),
                                        update_freq="epoch"),
            checkpoint_lib.TrainingCheckpoint(out, config.checkpoint_steps, start_step,
                                             metrics_logger=logger),
        ]
    callbacks += list(extra_callbacks)
    started = time.time()
    with checkpoint_lib.InterruptGuard() as guard:
        callbacks = [guard, *callbacks]  # first: an interrupted epoch is never checkpointed
        if start_step:
            # First the rest of the epoch the run stopped in, then the epochs after it.
            logger.resumed_at_step = start_step
            model.fit(train_ds, epochs=start_epoch + 1, steps_per_epoch=steps_per_epoch - start_step,
                      initial_epoch=start_epoch, callbacks=callbacks, verbose=verbose and 1)
            guard.check()
            start_epoch += 1
            logger.start_epoch = start_epoch
            train_ds, _ = train_data(start_epoch * steps_per_epoch)
        history = model.fit(train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch,
                            initial_epoch=start_epoch, callbacks=callbacks, verbose=verbose and 1)
        guard.check()
    if not np.all(np.isfinite(history.history.get("loss", []))):
        raise FloatingPointError("training diverged (non-finite loss); no results written.")
    return model, history, time.time() - started


def load_run(run_dir, **overrides):
    """(model, config, model_path) of a finished run folder (model.keras + config.json);
    `overrides` replace config fields (e.g. another protocol or OOD sets).

    Example:
      model, config, model_path = load_run("runs/demo/ice/seed1", protocol="full")
    """
    model_path = folder_lib.path(run_dir, folder_lib.MODEL_FILE)
    stored = folder_lib.read_config(run_dir)
    for name, present in ((folder_lib.CONFIG_FILE, stored is not None),
                          (folder_lib.MODEL_FILE, os.path.exists(model_path))):
        if not present:
            raise FileNotFoundError(
                f"{run_dir} is not a finished run folder (no {name}); "
                "train it with ice-tf train or ice-tf compare."
            )
    config_lib.import_modules(stored.get("imports", ()))
    config = ExperimentConfig.from_dict(stored).replace(**overrides).validate()
    return models.read_model(model_path), config, model_path


def enable_determinism():
    """Op determinism (plus the seeds every run sets): one command, one result, on one
    machine. Process-wide and permanent, as TensorFlow has it.

    Grappler's arithmetic optimisation is turned off too: it regroups sums in an order
    that changes from one trace to the next, which moved the logged loss by one float32
    ulp between identical runs (the weights were already identical).

    Example:
      enable_determinism()  # before building models; run() calls it for config.deterministic
    """
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    tf.config.optimizer.set_experimental_options({"arithmetic_optimization": False})


def run(config: ExperimentConfig, verbose=1, overwrite=False, callbacks=(), files=None):
    """Trains, evaluates and exports one model into `config.output_dir`; returns the
    results dict.

    The run folder's contract (`ice_tf.experiment.run_folder.prepare_for_training`): one process
    at a time (run.lock); a finished folder, or one of another config, is refused
    unless `overwrite`, which removes every earlier output; the same config into an
    unfinished folder resumes from the last finished epoch. Every set the run reads is
    opened and a batch decoded before the first step (`run_data.check_sources`).

    With `config.dry_run` the same path runs on mock data for one step, builds every
    evaluation pipeline, writes nothing and returns the step's logs.

    Args:
      config: the `ExperimentConfig`.
      verbose: 0 silent, 1 progress bars.
      overwrite: replace a finished run or one of another config.
      callbacks: extra Keras callbacks for `fit`.
      files: {name: text} written into the folder with config.json (scripts: flags.txt).

    Example:
      results = run(ExperimentConfig(backbone="small_cnn", epochs=6, output_dir="runs/ice"))
    """
    # Every hyperparameter of the method at its effective value: config.json records them.
    config = config.validate().resolved()
    # First: a multi-worker strategy must exist before TensorFlow runs any op.
    strategy = distribute.get_strategy(config.strategy)
    if config.deterministic:
        enable_determinism()
    with precision_lib.policy(config.precision) as policy:
        if not config.dry_run and not distribute.is_chief(strategy):
            return _train_as_worker(config, strategy, overwrite, callbacks)
        if config.dry_run:
            with mock_sources():
                _, history, _ = _train(config, strategy, None, verbose=0, extra_callbacks=callbacks)
                make_eval_data(config)  # builds every evaluation pipeline
            return {key: float(values[-1]) for key, values in history.history.items()}
        out = config.output_dir
        # Read-only checks first: the lock must not write into a folder that is not ice-tf's.
        check_before_training(config)
        with folder_lib.RunLock(out):
            state = folder_lib.check_folder(out, config.to_dict(), overwrite)  # refusals first
            check_sources(config)
            resume = folder_lib.clear_for_training(out, state, overwrite) == "resume"
            write_atomic(folder_lib.path(out, folder_lib.CONFIG_FILE), config.to_json() + "\n")
            write_atomic(folder_lib.path(out, folder_lib.DATASET_FILE),
                         json.dumps(data.describe(config.in_dataset), indent=2) + "\n")
            write_atomic(folder_lib.path(out, folder_lib.README_FILE), folder_lib.readme_text(config))
            for name, text in (files or {}).items():
                write_atomic(folder_lib.path(out, name), text)
            model, _, train_seconds = _train(config, strategy, out, verbose, resume=resume,
                                             extra_callbacks=callbacks)
            if distribute.is_multi_worker(strategy):
                model = _single_device_copy(model)  # the chief evaluates alone
            results = _evaluate_and_export(config, model, out, verbose)
            results["train_seconds"] = round(_total_train_seconds(out, train_seconds), 1)
            results["precision"] = policy
            title = f"{config.loss} ({config.head_kind} head, {config.backbone}) on {config.in_dataset}"
            write_atomic(folder_lib.path(out, folder_lib.RESULTS_MARKDOWN),
                         evaluation.results_markdown(results, title))
            # Last: its presence is what makes the folder finished.
            write_atomic(folder_lib.path(out, RESULTS_FILE), json.dumps(results, indent=2) + "\n")
    return results


def check_before_training(config):
    """The checks of a run that read nothing but the config and the file system, before
    anything is written: OOD sets to evaluate on, an output folder that is ice-tf's (or
    new), and no input of the run inside it (`ice_tf.experiment.run_folder`).

    Example:
      check_before_training(config)  # RunFolderError for a folder of the user's files
    """
    if not config.ood_datasets:
        raise ValueError("ood_datasets is empty: a run is evaluated on OOD sets, so name at least "
                         "one (e.g. --ood_datasets=embedded_mnist,gaussian).")
    folder_lib.check_owned(config.output_dir)
    folder_lib.check_inputs_outside(config.output_dir, config.input_paths())


def plan_runs(configs, overwrite=False):
    """{key: "reuse" or "train"} for several runs (ice-tf compare), checked before
    anything trains: a finished run of the same config is reused; a folder of another
    config, finished or not, is refused with a `RunFolderError` naming the fields that
    differ, unless `overwrite`.

    Example:
      plan_runs({("ice", 1): config})  # {("ice", 1): "train"}
    """
    plan = {}
    for key, config in configs.items():
        config = config.resolved()
        check_before_training(config)
        if not overwrite and folder_lib.finished_with(config.output_dir, config.to_dict()):
            plan[key] = "reuse"
        else:
            folder_lib.check_folder(config.output_dir, config.to_dict(), overwrite)
            plan[key] = "train"
    return plan


TEMPERATURE_FIT_LIMIT = 2000  # images per side of the temperature fit


def fit_confidence_map(model, config, limit=TEMPERATURE_FIT_LIMIT, kind=None):
    """Fits the map of the Gaussian head's served confidence as P(in-distribution) and sets
    it on the head: `kind` (default `config.confidence_map`) "platt", σ(a · max h + b)
    (`ice_tf.calibration.fit_platt`, `head.confidence_platt`), or "temperature",
    exp(max h / T) (`ice_tf.calibration.fit_temperature`, `head.confidence_temperature`).

    Fitted on the in-distribution validation split and the outlier source's validation
    split, where the sets have them (else a seeded sample of their training split: the
    record says which), at most `limit` images each; never on a test set. Returns a
    record {map, temperature or slope and offset, in, out} for results.json, or None for
    a linear head or a run without outliers.

    Example:
      record = fit_confidence_map(model, config)  # {"map": "platt", "slope": 0.4, ...}
    """
    from ice_tf import calibration, scores

    if not model.gaussian_head or not config.outlier_dataset:
        return None
    kind = kind or config.confidence_map

    def max_h(name, path=None):
        split = "val" if "val" in data.get_info(name).splits else "train"
        images, _ = load_images(config, name, split, limit, path=path)
        outputs = model.predict(images, batch_size=config.eval_batch_size, verbose=0)
        return np.asarray(scores.ice(outputs), np.float64), f"{name}@{split} ({len(images)})"

    max_h_in, described_in = max_h(config.in_dataset)
    max_h_out, described_out = max_h(config.outlier_dataset, config.outlier_path)
    record = {"map": kind}
    if kind == "platt":
        slope, offset = calibration.fit_platt(max_h_in, max_h_out)
        model.head.confidence_platt = (slope, offset)
        record.update(slope=round(slope, 8), offset=round(offset, 8))
    else:
        temperature = calibration.fit_temperature(max_h_in, max_h_out)
        model.head.confidence_temperature = temperature
        model.head.confidence_platt = None
        record["temperature"] = round(temperature, 6)
    record.update({"in": described_in, "out": described_out})
    return record


def fit_confidence_temperature(model, config, limit=TEMPERATURE_FIT_LIMIT):
    """`fit_confidence_map` with the temperature map, exp(max h / T).

    Example:
      record = fit_confidence_temperature(model, config)  # {"temperature": 3.1, ...}
    """
    return fit_confidence_map(model, config, limit, kind="temperature")


def refit_head(model, config, verbose=1):
    """`config.refit_head` for a Gaussian head: its means and L refitted to the training
    images' inference-mode features (`ice_tf.models.refit_gaussian_head`). Returns a record
    for results.json, or None when nothing was refitted.

    Example:
      refit_head(model, config)  # {"ridge": 0.1, "scale": 0.83}
    """
    if not (config.refit_head and model.gaussian_head):
        return None
    from ice_tf.models import REFIT_RIDGE, refit_gaussian_head

    if verbose:
        print("Refitting the Gaussian head to the training features (refit_head)")
    dataset = statistics_data(config)  # as the evaluation's data, unaugmented
    refit_gaussian_head(model, dataset, verbose=verbose)
    return {"ridge": REFIT_RIDGE, "scale": round(float(model.head.scale_factor), 6)}


def _train_as_worker(config, strategy, overwrite, callbacks):
    """A multi-worker run's part on a worker other than the chief: the same training
    steps, its own files in a temporary folder (removed after), starting from the
    chief's checkpoint when the chief resumes. Returns None (the chief has the results).
    """
    out = config.output_dir
    state = folder_lib.check_folder(out, config.to_dict(), overwrite)  # the chief's refusals
    scratch = tempfile.mkdtemp(prefix="ice-tf-worker-")
    try:
        checkpoints = folder_lib.path(out, folder_lib.CHECKPOINTS_DIR)
        resume = state == "unfinished" and not overwrite and os.path.isdir(checkpoints)
        if resume:
            shutil.copytree(checkpoints, folder_lib.path(scratch, folder_lib.CHECKPOINTS_DIR))
        _train(config, strategy, scratch, verbose=0, resume=resume, extra_callbacks=callbacks)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return None


def _single_device_copy(model):
    """The trained model outside the multi-worker strategy (evaluation on the chief
    alone would wait for the other workers), through a temporary .keras file."""
    scratch = tempfile.mkdtemp(prefix="ice-tf-chief-")
    try:
        path = os.path.join(scratch, "model.keras")
        save_model(model, path)
        return keras.models.load_model(path, compile=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _evaluate_and_export(config, model, out, verbose):
    refitted = refit_head(model, config, verbose)
    calibrated = fit_confidence_map(model, config) if config.calibrate_confidence else None
    save_model(model, folder_lib.path(out, folder_lib.MODEL_FILE))
    in_ds, ood_ds = make_eval_data(config)
    if verbose:
        print(f"Evaluating on {config.eval_split} + {len(ood_ds)} OOD sets ({config.protocol} protocol)")
    results, raw_scores = evaluation.evaluate_model(
        model, in_ds, ood_ds, score=config.score_name, protocol=config.protocol,
        num_draws=config.eval_draws, seed=config.seed, verbose=verbose, return_scores=True,
    )
    folder_lib.save_scores(out, raw_scores)
    if config.export:
        # The served score is the one the run was evaluated with.
        export.export_saved_model(
            model, folder_lib.path(out, folder_lib.SAVED_MODEL_DIR), score=config.score_name,
            overwrite=True,
        )
    if refitted:
        results["head_refit"] = refitted
    if calibrated:
        results["confidence_map"] = calibrated
    results["method"] = config.loss
    results["head"] = config.head_kind
    results["epochs"] = config.epochs
    return results


def _total_train_seconds(out, this_process_seconds):
    """Training time over every attempt of a resumed run (metrics.jsonl's clock)."""
    records = folder_lib.read_metrics(out)
    return (records[-1].get("seconds") or this_process_seconds) if records else this_process_seconds


__all__ = [
    "run", "dry_run", "plan_runs", "check_before_training", "enable_determinism", "write_atomic", "JsonLinesLogger", "build_optimizer", "build_model",
    "initialize_from_checkpoint", "fit_gaussian_head", "FINETUNE_RIDGE", "load_run",
    "fit_confidence_temperature", "fit_confidence_map", "refit_head",
]
