"""Fitting a Gaussian head (Eq. 0.11) to a model's features: class means and the
Cholesky factor of their tied covariance (GDA).

  fit_gaussian_head     training-mode features of the mixed batches, a wide ridge: the
                        start of fine-tuning (the fine-tune schedule, `from_classifier`);
  refit_gaussian_head   inference-mode features, the served model's: the head a trained
                        network is served with (runs do it after training, `refit_head`).

Example:
  fit_gaussian_head(model, train_batches, num_batches=50)
  refit_gaussian_head(model, train_images_and_labels)
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import tensorflow as tf

from ice_tf.detectors.base import training_features
from ice_tf.models.checks import unpack_batch


# Covariance ridge of the fine-tune head fit, relative to the mean variance: with 1%
# or 10%, fine-tuning ICE from a barely trained model diverged (docs/design.md).
FINETUNE_RIDGE = 1.0

# Covariance ridge of the serving refit (`refit_gaussian_head`), relative to the mean
# variance: chosen on the embedded benchmark's validation split, 3 seeds, among 1e-6 to
# 0.3 (docs/head_study.md).
REFIT_RIDGE = 0.1


@contextlib.contextmanager
def moving_statistics_kept(model):
    """Within the block, training-mode calls of `model.backbone` leave its non-trainable
    state (BatchNorm's moving averages) as it was: it is put back on exit (eager code).

    Example:
      with moving_statistics_kept(model):
          features = model.features(images, training=True)
    """
    variables = model.backbone.non_trainable_variables
    saved = [variable.numpy() for variable in variables]
    try:
        yield
    finally:
        for variable, value in zip(variables, saved):
            variable.assign(value)


def fit_gaussian_head(model, train_dataset, num_batches=None, ridge=FINETUNE_RIDGE, verbose=1,
                      means_only=False):
    """Fits the Gaussian head (Eq. 0.11) to the features fine-tuning will train on.

    The features are those of the training batches with BatchNorm in training mode, as
    `OODModel.train_step` computes them: under `outlier_batchnorm="joint"` normalised with
    the statistics of in-distribution images *and* outliers together, otherwise with
    those of the in-distribution images alone. A plain model's eval-mode
    features differ from these by several standard deviations once outliers enter
    the batch, and a head fitted to them started fine-tuning at -h_y ~ 4d. The
    BatchNorm moving statistics are restored afterwards. Means and tied covariance
    are the GDA estimate with a `ridge`, and the scale of L is then fitted by
    cross-entropy (`GaussianLayer.initialize_from_features`).

    Args:
      model: an `OODModel` with a Gaussian head.
      train_dataset: batches `((x, y), x_outliers)` or `(x, y)`, as training sees them.
      num_batches: how many batches to use; None: the whole (finite) dataset.
      ridge: added to the covariance, relative to its mean variance (docs/design.md).
      means_only: only the means, to the class means; L is left as it is.

    Example:
      fit_gaussian_head(model, ice_tf.data.with_outliers((x, y), x_out), num_batches=50)
    """
    progbar = keras.utils.Progbar(num_batches, unit_name="batch") if verbose else None
    features, labels = [], []
    with moving_statistics_kept(model):
        for batch in (train_dataset if num_batches is None else train_dataset.take(num_batches)):
            images, batch_labels, outliers = unpack_batch(batch)
            if getattr(model, "outlier_batchnorm", "joint") != "joint":
                outliers = None  # training normalises the in-distribution images on their own
            inputs = images if outliers is None else tf.concat(
                [images, tf.cast(outliers, images.dtype)], 0)
            batch_features = model.features(inputs, training=True)[: tf.shape(images)[0]]
            features.append(np.asarray(batch_features, np.float64))
            labels.append(np.asarray(batch_labels).reshape(-1))
            if progbar is not None:
                progbar.add(1)
    if not features:
        raise ValueError("the dataset for the Gaussian head's fit yielded no batches.")
    model.head.initialize_from_features(
        np.concatenate(features), np.concatenate(labels), ridge=ridge, calibrate_scale=True,
        min_scale=1.0,  # on separable training features CE would make h arbitrarily sharp
        means_only=means_only,
    )
    return model


def refit_gaussian_head(model, dataset, ridge=REFIT_RIDGE, verbose=1):
    """Refits a trained Gaussian head (Eq. 0.11) to the features it is served on.

    m_k becomes the mean of class k's training features and L the Cholesky factor of
    their tied covariance plus `ridge` times the mean variance on the diagonal, both of
    the features in inference mode (BatchNorm's moving averages, as the model serves
    and as the Mahalanobis detector fits); L's scalar scale is then fitted by
    cross-entropy (`GaussianLayer.initialize_from_features`), which changes neither the
    argmax nor the order of max h. Serving stays one forward pass; only the head's
    weights change.

    Why: the head trained by Eqs. (0.12)-(0.14) is a far wider Gaussian than the
    features' own (tr(LLᵀ) about 300 times tr(Σ) on the embedded benchmark), so it gives
    the low-variance directions, where outliers stand out, little weight. On the embedded
    benchmark's validation split (3 seeds) the refit raised max h's mean AUROC from 99.30
    to 99.81 and accuracy from 84.2 to 84.8 (docs/head_study.md).

    Args:
      model: an `OODModel` with a Gaussian head.
      dataset: batches of `(images, labels)`: the training images, unaugmented and
        normalised as the model takes them (`ice_tf.experiment.run_data.statistics_data`).
      ridge: added to the covariance, relative to its mean variance.

    Example:
      refit_gaussian_head(model, ice_tf.data.batched((x_train, y_train), 500))
    """
    if not model.gaussian_head:
        raise ValueError("refit_gaussian_head refits a Gaussian head; this model has a "
                         f"{type(model.head).__name__}.")
    features, labels = training_features(model, dataset, verbose=verbose,
                                         purpose="the Gaussian head's refit")
    model.head.initialize_from_features(features, labels, ridge=ridge, calibrate_scale=True)
    return model
