"""One experiment, end to end: data, model, training, evaluation, export.

`run(config)` writes the run folder `config.output_dir`; `ice_tf.run_folder` names
its files and says what each holds. Scripts add `flags.txt`, a flag file that re-runs
the experiment.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time

import keras
import numpy as np

from ice_tf import callbacks as callbacks_lib
from ice_tf import data, distribute, evaluation, export, losses, models
from ice_tf import run_folder as folder_lib
from ice_tf.config import ExperimentConfig
from ice_tf.run_data import image_shape_of, make_eval_data, make_train_data, mock_sources
from ice_tf.callbacks import JsonLinesLogger  # noqa: F401  (its home; kept here for callers)
from ice_tf.atomic_io import write_atomic  # noqa: F401  (scripts use experiment.write_atomic)
from ice_tf.models import FINETUNE_RIDGE, fit_gaussian_head  # noqa: F401  (their home: models)

RESULTS_FILE = folder_lib.RESULTS_FILE


# ----------------------------------------------------------------- model
def build_optimizer(config, total_steps):
    """SGD with nesterov momentum and per-step cosine decay to min_learning_rate."""
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
    """
    pretrained = keras.models.load_model(checkpoint_path, compile=False)
    if not isinstance(pretrained, models.OODModel):
        raise ValueError(f"{checkpoint_path} is not an ice_tf OODModel.")
    model.backbone.set_weights(pretrained.backbone.get_weights())
    if pretrained.gaussian_head == model.gaussian_head:
        model.head.set_weights(pretrained.head.get_weights())
    elif model.gaussian_head:
        if train_dataset is None or not num_batches:
            raise ValueError("fitting a Gaussian head needs the training batches (train_dataset, num_batches).")
        fit_gaussian_head(model, train_dataset, num_batches, verbose=verbose)
    return model


def build_model(config, strategy):
    """The run's `OODModel` (backbone, head by `config.head_kind`), inside `strategy.scope()`."""
    num_classes = data.get_info(config.in_dataset).num_classes
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


def _train(config, out, verbose):
    """Everything before evaluation, for a real run and a dry run alike: seed, strategy,
    data, model, fine-tune start, compile, callbacks and `fit`. A dry run (`out` None)
    takes one step of at most 4 + 8 images, on mock data, and writes nothing; it has
    no checkpoint to start a fine-tune from, so its model keeps its initialisation."""
    dry = out is None
    keras.utils.set_random_seed(config.seed)
    strategy = distribute.get_strategy(config.strategy)
    batch_in, batch_out = (min(config.batch_in, 4), min(config.batch_out, 8)) if dry else (
        config.batch_in, config.batch_out)
    train_ds, steps_per_epoch = make_train_data(config, batch_in, batch_out)
    epochs, steps_per_epoch = (1, 1) if dry else (config.epochs, steps_per_epoch)
    with strategy.scope():
        model = build_model(config, strategy)
        if config.schedule == "finetune" and not dry:
            initialize_from_checkpoint(
                model, config.init_checkpoint, train_ds, steps_per_epoch, verbose=verbose
            )
        model.compile(
            build_optimizer(config, epochs * steps_per_epoch),
            loss=losses.get(config.loss, **config.loss_kwargs()),
            weight_decay=config.weight_decay,
            run_eagerly=dry,  # one step: tracing would cost more than it saves
        )
    # Analyses first: they add their scalars to the logs the loggers below write.
    callbacks = callbacks_lib.analysis_callbacks(
        config, directory=out, probe_size=8 if dry else None)
    if not dry:
        os.makedirs(folder_lib.path(out, folder_lib.CHECKPOINTS_DIR), exist_ok=True)
        callbacks += [
            JsonLinesLogger(folder_lib.path(out, folder_lib.METRICS_FILE)),
            keras.callbacks.TensorBoard(folder_lib.path(out, folder_lib.TENSORBOARD_DIR),
                                        update_freq="epoch"),
            keras.callbacks.ModelCheckpoint(folder_lib.path(out, folder_lib.LAST_CHECKPOINT)),
        ]
    callbacks.append(keras.callbacks.TerminateOnNaN())
    started = time.time()
    history = model.fit(train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch,
                        callbacks=callbacks, verbose=verbose and 1)
    if not np.all(np.isfinite(history.history["loss"])):
        raise FloatingPointError("training diverged (non-finite loss); no results written.")
    return model, history, time.time() - started


def load_run(run_dir, **overrides):
    """(model, config, model_path) of a finished run folder (model.keras + config.json);
    `overrides` replace config fields (e.g. another protocol or OOD sets)."""
    config_path = folder_lib.path(run_dir, folder_lib.CONFIG_FILE)
    model_path = folder_lib.path(run_dir, folder_lib.MODEL_FILE)
    for path in (config_path, model_path):
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{run_dir} is not a finished run folder (no {os.path.basename(path)}); "
                "train it with scripts/train.py or scripts/compare.py."
            )
    with open(config_path) as stream:
        config = ExperimentConfig.from_dict(json.load(stream)).replace(**overrides).validate()
    return keras.models.load_model(model_path, compile=False), config, model_path


def _prepare_output_dir(path):
    os.makedirs(path, exist_ok=True)
    # An earlier run's results must not make this one look finished.
    for stale in folder_lib.STALE_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.remove(folder_lib.path(path, stale))
    for stale_dir in folder_lib.STALE_DIRS:
        shutil.rmtree(folder_lib.path(path, stale_dir), ignore_errors=True)


def run(config: ExperimentConfig, verbose=1):
    """Trains, evaluates and exports one model; returns the results dict.

    With `config.dry_run` the same path runs on mock data for one step, builds every
    evaluation pipeline, writes nothing and returns the step's logs.

    Example:
      results = run(ExperimentConfig(backbone="small_cnn", epochs=6, output_dir="runs/ice"))
    """
    config = config.validate()
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        if config.dry_run:
            with mock_sources():
                _, history, _ = _train(config, None, verbose=0)
                make_eval_data(config)  # builds every evaluation pipeline
            return {key: float(values[-1]) for key, values in history.history.items()}
        out = config.output_dir
        _prepare_output_dir(out)
        write_atomic(folder_lib.path(out, folder_lib.CONFIG_FILE), config.to_json() + "\n")
        model, _, train_seconds = _train(config, out, verbose)
        model.save(folder_lib.path(out, folder_lib.MODEL_FILE))

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
    finally:
        keras.mixed_precision.set_global_policy("float32")
    results["method"] = config.loss
    results["head"] = config.head_kind
    results["epochs"] = config.epochs
    results["train_seconds"] = round(train_seconds, 1)
    title = f"{config.loss} ({config.head_kind} head, {config.backbone}) on {config.in_dataset}"
    write_atomic(folder_lib.path(out, folder_lib.RESULTS_MARKDOWN),
                 evaluation.results_markdown(results, title))
    write_atomic(folder_lib.path(out, RESULTS_FILE), json.dumps(results, indent=2) + "\n")
    return results


__all__ = [
    "run", "dry_run", "write_atomic", "JsonLinesLogger", "build_optimizer", "build_model",
    "initialize_from_checkpoint", "fit_gaussian_head", "FINETUNE_RIDGE", "load_run",
]
