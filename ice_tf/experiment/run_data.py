"""The datasets of one run: an `ExperimentConfig` turned into `ice_tf.data` pipelines.

The one place where config fields meet the data registry, used by the experiment,
the analysis callbacks and the post-hoc detectors alike:

  image_shape_of(config)        the in-distribution image shape every set is adapted to
  make_train_data(config, ...)  ((x, y), x_outliers) training batches and steps per epoch
  make_eval_data(config)        the in-distribution evaluation split and {label: OOD set}
  statistics_data(config)       unaugmented training images for fitted statistics
  load_images(config, ...)      a small seeded sample of a set as arrays (probes)
  check_sources(config)         every set opened and a batch decoded, before training
  mock_sources()                TFDS mock data for dry runs; file-based sets become noise

Example:
  config = ExperimentConfig(backbone="small_cnn", epochs=1)
  train_ds, steps = make_train_data(config, config.batch_in, config.batch_out)
  in_ds, ood = make_eval_data(config)
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from ice_tf import data
from ice_tf.data import files, registry


@contextlib.contextmanager
def mock_sources():
    """For dry runs: TFDS returns mock data (file-based sets are replaced by `substitute`).

    Example:
      with mock_sources():
          make_eval_data(config)
    """
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=16):
        yield


def substitute(config, name, path):
    """(name, path) of a set; in a dry run a file-based set, which needs the user's
    files, becomes Gaussian noise.

    Example:
      substitute(config.replace(dry_run=True), "image_folder", "/data/iSUN")  # ("gaussian", None)
    """
    if config.dry_run and data.get_info(name).kind == "files":
        return "gaussian", None
    return name, path


def image_shape_of(config):
    """(H, W, C) every image of the run is prepared to: the input of a user's model file
    (`--backbone=PATH.keras`), else the in-distribution set's own size.

    Example:
      image_shape_of(ExperimentConfig(in_dataset="cifar10"))  # (32, 32, 3)
    """
    from ice_tf import models

    if models.is_model_file(config.backbone):
        return models.model_file_input_shape(config.backbone)
    shape = data.get_info(config.in_dataset).image_shape
    if shape is None:
        raise ValueError(f"{config.in_dataset} has no fixed image size.")
    return tuple(shape)


def make_train_data(config, batch_in, batch_out, start_step=0):
    """(dataset of ((x, y), x_outliers) or (x, y) batches, steps per epoch); `start_step`
    batches of the stream are skipped (a resumed run).

    Example:
      train_ds, steps = make_train_data(config, config.batch_in, config.batch_out)
    """
    outlier_name, outlier_path = None, None
    if config.uses_outliers:
        outlier_name, outlier_path = substitute(config, config.outlier_dataset, config.outlier_path)
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
        start_step=start_step,
    )


class DataCheckError(ValueError):
    """A set a run reads cannot be read; the message names the set, the file and the fix.

    Example:
      try:
          check_sources(config)
      except DataCheckError as error:
          print(error)  # OOD set 'isun' (image_folder at /data/iSUN): ... does not exist.
    """


_TENSORFLOW_NOISE = ("Graph execution error", "Detected at node", "<stack traces", "[[", "\t[[")


def _one_line(error):
    """An error's text on one line: its lines joined, TensorFlow's node traces dropped."""
    text = str(getattr(error, "message", None) or error)
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.strip().startswith(_TENSORFLOW_NOISE)]
    return " ".join(lines) or type(error).__name__


def check_sources(config, batch_size=16, outliers=True):
    """Opens every set a run reads besides its training split (the outlier source, each
    OOD set) and decodes a first batch of each, before any training; a source with a
    `check_files` method (image folders: `data.files.check_image_files`) first checks
    every file for truncation or a wrong type.

    Also checks that a fine-tune's init_checkpoint exists. `outliers=False` skips the
    outlier source (evaluation reads none).

    Raises:
      DataCheckError: one line naming the set, the file where one is at fault, and the cause.

    Example:
      check_sources(ExperimentConfig(ood_datasets=("isun=image_folder:/data/iSUN",)))
    """
    if config.schedule == "finetune" and config.init_checkpoint and not os.path.isfile(
            config.init_checkpoint_path):
        raise DataCheckError(
            f"init_checkpoint {config.init_checkpoint_path!r} does not exist; give the model.keras "
            "of a finished run (e.g. runs/demo/ce/seed1/model.keras).")
    sets = []
    if config.uses_outliers and outliers:
        sets.append(("outlier source", config.outlier_dataset, "train", config.outlier_path,
                     config.outlier_exclude_path))
    sets += [(f"OOD set {spec.label!r}", spec.dataset, spec.split, spec.path, None)
             for spec in config.ood_set_specs]
    for what, name, split, path, exclude in sets:
        where = f"{what} ({name}{' at ' + path if path else ''})"
        try:
            # Sources that can check their files up front (image folders) do so.
            check_files = getattr(registry.source_entry(name).source, "check_files", None)
            if check_files and path:
                problems = check_files(path)
                if problems:
                    raise DataCheckError(f"{where}: {files.problems_message(problems)}")
            dataset = data.make_eval_dataset(
                name, split, path=path, exclude_index_path=exclude,
                **_eval_options(config, batch_size=batch_size, limit=None))
            for _ in dataset.take(1):
                pass
        except DataCheckError:
            raise
        except Exception as error:  # noqa: BLE001  (any reader's failure, in one line)
            raise DataCheckError(f"{where}: {_one_line(error)}") from None


def model_input(model, config):
    """{image_shape, normalization} that a trained model's inputs need, for the `adapt`
    argument of `make_eval_data` and `statistics_data`: the model's own input size and
    channels, and the normalisation it records (else the in-distribution set's).

    Example:
      in_ds, ood = make_eval_data(config, adapt=model_input(model, config))
    """
    shape = getattr(model, "image_shape", None)
    if shape is None or not all(shape or ()):
        shape = tuple(model.input_shape[1:])
    normalization = getattr(model, "normalization", None) or data.normalization(config.in_dataset)
    return {"image_shape": tuple(int(d) for d in shape), "normalization": normalization}


def _eval_options(config, adapt=None, **changes):
    options = dict(
        image_shape=image_shape_of(config),
        normalization=data.normalization(config.in_dataset),
        batch_size=config.eval_batch_size,
        limit=config.eval_limit,
        seed=config.seed,
        data_dir=config.data_dir,
        download=config.download,
    )
    options.update(adapt or {})
    options.update(changes)
    return options


def make_eval_data(config, adapt=None):
    """The in-distribution evaluation split and a dict label -> OOD dataset; with `adapt`
    (`model_input(model, config)`) every set is prepared to that model's input size,
    channels and normalisation.

    Example:
      in_ds, ood = make_eval_data(config)  # ood: {label: dataset}
    """
    in_dataset = data.make_eval_dataset(config.in_dataset, config.eval_split,
                                        **_eval_options(config, adapt))
    ood = {}
    for spec in config.ood_set_specs:
        name, path = substitute(config, spec.dataset, spec.path)
        split = spec.split if name == spec.dataset else "test"
        ood[spec.label] = data.make_eval_dataset(name, split, path=path,
                                                 **_eval_options(config, adapt))
    return in_dataset, ood


def statistics_data(config, adapt=None):
    """The run's training images, normalised and unaugmented, for fitting statistics
    (Mahalanobis): `limit_train` images, seeded as training samples them (`adapt`: see
    `make_eval_data`).

    Example:
      detectors.get("mahalanobis").fit(model, statistics_data(config))
    """
    return data.make_eval_dataset(config.in_dataset, "train", **_eval_options(
        config, adapt, limit=config.limit_train))


def load_images(config, name, split, limit, path=None, exclude_index_path=None):
    """(images, labels) arrays: the first `limit` images (seeded subsample) of a set,
    as the model sees them.

    Example:
      images, labels = load_images(config, "embedded_outliers", "train", limit=256)
    """
    dataset = data.make_eval_dataset(name, split, path=path, exclude_index_path=exclude_index_path,
                                     **_eval_options(config, batch_size=limit, limit=limit))
    images, labels = [], []
    for batch_images, batch_labels in dataset:
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
    if not images:
        raise ValueError(f"the set {name}@{split} is empty.")
    return np.concatenate(images), np.concatenate(labels)


__all__ = [
    "mock_sources", "substitute", "image_shape_of", "make_train_data", "make_eval_data",
    "statistics_data", "model_input", "load_images", "check_sources", "DataCheckError",
]
