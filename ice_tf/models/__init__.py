"""The training model and what surrounds it: one training loop for every method.

  ood_model.py  `OODModel` (train_step mixing in-distribution and outlier batches),
                `build_model`, `build_from_file`, the BatchNorm policy for outliers
  checks.py     batch, label and normalisation checks; the divergence guard
  head_fit.py   fitting a Gaussian head to features (`fit_gaussian_head`)
  convert.py    a user's classifier as a backbone (`classifier_parts`) and model files

Every name is importable from `ice_tf.models` as before.

Example:
  backbone = ice_tf.backbones.get("small_cnn", (28, 28, 1))
  model = ice_tf.models.OODModel(backbone, ice_tf.layers.GaussianLayer(10))
  model.compile(keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True), loss="ice")
"""

from ice_tf import distribute  # noqa: F401  (models.distribute, as before the split)
from ice_tf.models.checks import DIVERGENCE_REMEDY, NONFINITE_LOG, unpack_batch
from ice_tf.models.convert import (ClassifierFeatures, classifier_parts, is_model_file,
                                   load_model_file, model_file_input_shape, read_model)
from ice_tf.models.head_fit import (FINETUNE_RIDGE, REFIT_RIDGE, fit_gaussian_head,
                                    moving_statistics_kept, refit_gaussian_head)
from ice_tf.models.ood_model import (OUTLIER_BATCHNORM, OODModel, build_from_file, build_model,
                                     default_outlier_batchnorm)

__all__ = ["OODModel", "OUTLIER_BATCHNORM", "default_outlier_batchnorm", "moving_statistics_kept",
           "build_model", "build_from_file", "is_model_file", "load_model_file", "read_model",
           "model_file_input_shape", "classifier_parts", "ClassifierFeatures",
           "fit_gaussian_head", "FINETUNE_RIDGE", "refit_gaussian_head", "REFIT_RIDGE", "unpack_batch", "DIVERGENCE_REMEDY",
           "NONFINITE_LOG"]
