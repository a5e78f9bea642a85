"""One experiment, end to end: data, model, training, evaluation, export.

`run(config)` writes into `config.output_dir`:

  config.json          the frozen config
  metrics.jsonl        one JSON line per epoch (loss terms, accuracy, learning rate)
  analysis/            with `config.analyses`: one .jsonl per analysis (ice_tf.callbacks)
  tensorboard/         TensorBoard logs
  checkpoints/         `last.keras` after every epoch
  model.keras          the trained model
  saved_model/         the serving SavedModel (see `ice_tf.export`)
  scores.npz           raw OOD scores of the evaluation (for ROC figures)
  results.json         metrics (written last: its presence marks a finished run)
  results.md           the same as a markdown table

Scripts add `flags.txt`, a flag file that re-runs the experiment.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from ice_tf import callbacks as callbacks_lib
from ice_tf import data, distribute, evaluation, export, losses, models
from ice_tf.config import ExperimentConfig
from ice_tf.files import write_atomic  # noqa: F401  (scripts use experiment.write_atomic)

RESULTS_FILE = "results.json"


class JsonLinesLogger(keras.callbacks.Callback):
    """Appends each epoch's logs (and the learning rate) as one JSON line."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self._start = None

    def on_train_begin(self, logs=None):
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1, "seconds": round(time.time() - self._start, 2)}
        record.update({key: float(value) for key, value in (logs or {}).items()})
        optimizer = self.model.optimizer
        record["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        with open(self.path, "a") as stream:
            stream.write(json.dumps(record) + "\n")


# ------------------------------------------------------------------ data
@contextlib.contextmanager
def _mock_sources():
    """For dry runs: TFDS returns mock data and file-based sets are not read."""
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=16):
        yield


def _substitute_for_dry_run(config, name, path):
    """File-based sets need user files; a dry run replaces them by Gaussian noise."""
    if config.dry_run and data.get_info(name).kind == "files":
        return "gaussian", None
    return name, path


def image_shape_of(config):
    shape = data.get_info(config.in_dataset).image_shape
    if shape is None:
        raise ValueError(f"{config.in_dataset} has no fixed image size.")
    return tuple(shape)


def make_train_data(config, batch_in, batch_out):
    outlier_name, outlier_path = None, None
    if config.uses_outliers:
        outlier_name, outlier_path = _substitute_for_dry_run(
            config, config.outlier_dataset, config.outlier_path
        )
    return data.make_train_dataset(
        config.in_dataset,
        outlier_name,
        image_shape=image_shape_of(config),
        batch_in=batch_in,
        batch_out=batch_out,
        seed=config.seed,
        augment=config.augment,
        data_dir=config.data_dir,
        outlier_path=outlier_path,
        outlier_exclude_index_path=None if config.dry_run else config.outlier_exclude_path,
        download=config.download,
        limit=config.limit_train,
    )


def make_eval_data(config):
    """The in-distribution evaluation split and a dict label -> OOD dataset."""
    shape = image_shape_of(config)
    normalization = data.normalization(config.in_dataset)
    common = dict(
        image_shape=shape,
        normalization=normalization,
        batch_size=config.eval_batch_size,
        limit=config.eval_limit,
        data_dir=config.data_dir,
        download=config.download,
    )
    in_dataset = data.make_eval_dataset(config.in_dataset, config.eval_split, seed=config.seed, **common)
    ood = {}
    for spec in config.ood_set_specs:
        name, path = _substitute_for_dry_run(config, spec.dataset, spec.path)
        ood[spec.label] = data.make_eval_dataset(
            name, spec.split if name == spec.dataset else "test", path=path, seed=config.seed, **common
        )
    return in_dataset, ood


# ----------------------------------------------------------------- model
def build_optimizer(config, total_steps):
    """SGD with nesterov momentum and per-step cosine decay to min_learning_rate."""
    alpha = config.min_learning_rate / config.learning_rate if config.learning_rate else 0.0
    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=max(total_steps, 1), alpha=alpha
    )
    return keras.optimizers.SGD(schedule, momentum=config.momentum, nesterov=config.momentum > 0)


# Covariance ridge of the fine-tune head fit, relative to the mean variance: with 1%
# or 10%, fine-tuning ICE from a barely trained model diverged (BUILD.md, Decisions).
FINETUNE_RIDGE = 1.0


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


def fit_gaussian_head(model, train_dataset, num_batches, ridge=FINETUNE_RIDGE, verbose=1):
    """Fits the Gaussian head (Eq. 0.11) to the features fine-tuning will train on.

    The features are those of the training batches with BatchNorm in training mode,
    i.e. normalised with the statistics of in-distribution images *and* outliers
    together, as `OODModel.train_step` computes them. A plain model's eval-mode
    features differ from these by several standard deviations once outliers enter
    the batch, and a head fitted to them started fine-tuning at -h_y ~ 4d. The
    BatchNorm moving statistics are restored afterwards. Means and tied covariance
    are the GDA estimate with a `ridge`, and the scale of L is then fitted by
    cross-entropy (`GaussianLayer.initialize_from_features`).
    """
    moving_statistics = [variable.numpy() for variable in model.backbone.non_trainable_variables]
    progbar = keras.utils.Progbar(num_batches, unit_name="batch") if verbose else None
    features, labels = [], []
    for batch in train_dataset.take(num_batches):
        images, batch_labels, outliers = models.unpack_batch(batch)
        inputs = images if outliers is None else tf.concat([images, tf.cast(outliers, images.dtype)], 0)
        batch_features = model.features(inputs, training=True)[: tf.shape(images)[0]]
        features.append(np.asarray(batch_features, np.float64))
        labels.append(np.asarray(batch_labels).reshape(-1))
        if progbar is not None:
            progbar.add(1)
    for variable, value in zip(model.backbone.non_trainable_variables, moving_statistics):
        variable.assign(value)
    model.head.initialize_from_features(
        np.concatenate(features), np.concatenate(labels), ridge=ridge, calibrate_scale=True
    )
    return model


def build(config, strategy):
    num_classes = data.get_info(config.in_dataset).num_classes
    return models.build_model(
        config.backbone,
        image_shape_of(config),
        num_classes,
        head=config.head_kind,
        strategy=strategy,
        **config.backbone_kwargs(),
    )


# ------------------------------------------------------------------- run
def dry_run(config):
    """Builds data and model and runs one training step on mock data; writes nothing.

    Returns a dict with the step's logs.
    """
    config = config.replace(dry_run=True).validate()
    with _mock_sources():
        keras.utils.set_random_seed(config.seed)
        strategy = distribute.get_strategy(config.strategy)
        batch_in, batch_out = min(config.batch_in, 4), min(config.batch_out, 8)
        train_ds, _ = make_train_data(config, batch_in, batch_out)
        with strategy.scope():
            model = build(config, strategy)
            if config.schedule == "finetune" and model.gaussian_head:
                images, labels = next(iter(data.make_eval_dataset(
                    config.in_dataset, "train", image_shape=image_shape_of(config),
                    normalization=data.normalization(config.in_dataset), batch_size=16,
                )))
                features = model.features(images).numpy()
                features = np.concatenate([features] * 2)
                labels = np.concatenate([labels.numpy(), np.arange(16) % model.num_classes])
                model.head.initialize_from_features(
                    features, labels, ridge=FINETUNE_RIDGE, calibrate_scale=True
                )
            model.compile(
                build_optimizer(config, 1),
                loss=losses.get(config.loss, **config.loss_kwargs()),
                weight_decay=config.weight_decay,
                run_eagerly=True,  # one step: tracing would cost more than it saves
            )
        # Analyses on 8-image probes, recorded in memory only.
        analyses = callbacks_lib.analysis_callbacks(config, directory=None, probe_size=8)
        history = model.fit(train_ds, epochs=1, steps_per_epoch=1, verbose=0, callbacks=analyses)
        make_eval_data(config)  # builds every evaluation pipeline
    logs = {key: float(values[-1]) for key, values in history.history.items()}
    if not all(np.isfinite(list(logs.values()))):
        raise FloatingPointError(f"dry run produced non-finite values: {logs}")
    return logs


def load_run(run_dir, **overrides):
    """(model, config, model_path) of a finished run folder (model.keras + config.json);
    `overrides` replace config fields (e.g. another protocol or OOD sets)."""
    config_path = os.path.join(run_dir, "config.json")
    model_path = os.path.join(run_dir, "model.keras")
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
    for stale in (RESULTS_FILE, "results.md", "metrics.jsonl"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(path, stale))
    for stale_dir in ("tensorboard", "checkpoints", "analysis"):
        shutil.rmtree(os.path.join(path, stale_dir), ignore_errors=True)


def run(config: ExperimentConfig, verbose=1):
    """Trains, evaluates and exports one model; returns the results dict."""
    if config.dry_run:
        return dry_run(config)
    config = config.validate()
    out = config.output_dir
    _prepare_output_dir(out)
    write_atomic(os.path.join(out, "config.json"), config.to_json() + "\n")
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        strategy = distribute.get_strategy(config.strategy)
        train_ds, steps_per_epoch = make_train_data(config, config.batch_in, config.batch_out)
        with strategy.scope():
            model = build(config, strategy)
            if config.schedule == "finetune":
                initialize_from_checkpoint(
                    model, config.init_checkpoint, train_ds, steps_per_epoch, verbose=verbose
                )
            model.compile(
                build_optimizer(config, config.epochs * steps_per_epoch),
                loss=losses.get(config.loss, **config.loss_kwargs()),
                weight_decay=config.weight_decay,
            )
        os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
        # Analyses first: they add their scalars to the logs the loggers below write.
        callbacks = callbacks_lib.analysis_callbacks(config, directory=out) + [
            JsonLinesLogger(os.path.join(out, "metrics.jsonl")),
            keras.callbacks.TensorBoard(os.path.join(out, "tensorboard"), update_freq="epoch"),
            keras.callbacks.ModelCheckpoint(os.path.join(out, "checkpoints", "last.keras")),
            keras.callbacks.TerminateOnNaN(),
        ]
        started = time.time()
        history = model.fit(
            train_ds,
            epochs=config.epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            verbose=verbose and 1,
        )
        train_seconds = time.time() - started
        if not np.all(np.isfinite(history.history["loss"])):
            raise FloatingPointError("training diverged (non-finite loss); no results written.")
        model.save(os.path.join(out, "model.keras"))

        in_ds, ood_ds = make_eval_data(config)
        if verbose:
            print(f"Evaluating on {config.eval_split} + {len(ood_ds)} OOD sets ({config.protocol} protocol)")
        results, raw_scores = evaluation.evaluate_model(
            model, in_ds, ood_ds, score=config.score_name, protocol=config.protocol,
            num_draws=config.eval_draws, seed=config.seed, verbose=verbose, return_scores=True,
        )
        np.savez_compressed(os.path.join(out, "scores.npz"), **{
            key.replace("/", "_"): value for key, value in raw_scores.items()
        })
        if config.export:
            # The served score is the one the run was evaluated with.
            export.export_saved_model(
                model, os.path.join(out, "saved_model"), score=config.score_name, overwrite=True
            )
    finally:
        keras.mixed_precision.set_global_policy("float32")
    results["method"] = config.loss
    results["head"] = config.head_kind
    results["epochs"] = config.epochs
    results["train_seconds"] = round(train_seconds, 1)
    title = f"{config.loss} ({config.head_kind} head, {config.backbone}) on {config.in_dataset}"
    write_atomic(os.path.join(out, "results.md"), evaluation.results_markdown(results, title))
    write_atomic(os.path.join(out, RESULTS_FILE), json.dumps(results, indent=2) + "\n")
    return results


__all__ = [
    "run", "dry_run", "write_atomic", "JsonLinesLogger", "build_optimizer",
    "initialize_from_checkpoint", "fit_gaussian_head", "FINETUNE_RIDGE", "load_run",
]
