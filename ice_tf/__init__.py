"""ice-tf: In-distribution Compatible outlier Exposure (ICE) for TensorFlow/Keras.

Submodules:
  layers       GaussianLayer (Eq. 0.11) and head factories.
  losses       ce, oe, energy, bce, ice (Eq. 0.15), ice_minus; a name registry.
  scores       msp, max_logit, energy, ice; higher means more in-distribution.
  detectors    the scores plus the post-hoc ODIN and Mahalanobis detectors.
  metrics      AUROC, AUPR-In/Out, FPR95 under both conventions.
  calibration  ECE, MCE, Brier and reliability bins of a confidence as P(in-distribution).
  models       OODModel: one training loop for every method.
  backbones    wrn40_2, wrn34_10, wrn16_4, wrn16_2, densenet40_12, small_cnn.
  export       SavedModel export with probabilities, confidence and score.
  distribute   Strategy selection and replica-aware helpers.
  analysis     contradictory-gradient, distribution-shift and confidence statistics.
  callbacks    Keras callbacks recording those analyses during training.
  checkpoint   resume: the training state per epoch, its fallback; the metrics log.
  gda          class means and tied covariance (Gaussian head fit, Mahalanobis, toys, analyses).
  config       the frozen ExperimentConfig; run_data turns it into datasets.
  experiment   one run end to end; run_folder names the run folder's files and finds runs.
  run_lock     one process per run folder; ownership: what ice-tf wrote (never a user's file).
  data, evaluation, atomic_io, plotting, toy: datasets, OOD evaluation, atomic writes, figures.
  report       `ice_tf.evaluate(model, (x, y), {name: images})`: any Keras model, one call.
  cli          the `ice-tf` command (train, evaluate, export, compare, demo); `python -m ice_tf`.
"""

__version__ = "0.1.0"

import importlib
import importlib.abc
import importlib.util
import sys

# Modules that work without TensorFlow (numpy, the config, run folders, the command line).
WITHOUT_TENSORFLOW = ("atomic_io", "calibration", "cli", "config", "metrics", "ownership", "precision",
                      "run_folder", "run_lock")
TENSORFLOW_MISSING = (
    'ice-tf needs TensorFlow, which is not installed: pip install "ice-tf[cpu]" '
    '(or "ice-tf[gpu]" for NVIDIA GPUs)')


class _TensorFlowMissing(importlib.abc.MetaPathFinder):
    """Without TensorFlow, importing a module that needs it fails at once, in one line that
    names the extra to install, instead of deep inside keras."""

    def find_spec(self, fullname, path=None, target=None):
        parts = fullname.split(".")
        if parts[0] == "ice_tf" and len(parts) > 1 and parts[1] not in WITHOUT_TENSORFLOW:
            raise ModuleNotFoundError(TENSORFLOW_MISSING, name="tensorflow")
        return None


def _tensorflow_installed():
    try:
        return importlib.util.find_spec("tensorflow") is not None  # a lookup, not an import
    except (ImportError, ValueError):
        return False


if not _tensorflow_installed():
    sys.meta_path.insert(0, _TensorFlowMissing())

_SUBMODULES = (
    "analysis", "atomic_io", "backbones", "calibration", "callbacks", "checkpoint", "cli", "config",
    "data",
    "detectors", "distribute", "evaluation", "experiment", "export", "gda", "layers", "losses",
    "metrics", "models", "ownership", "plotting", "report", "run_data", "run_folder", "run_lock", "scores", "toy",
)


def __getattr__(name):
    # Submodules load on first use, so `ice_tf.metrics` stays free of TensorFlow.
    if name in ("evaluate", "EvaluationReport"):
        return getattr(importlib.import_module("ice_tf.report"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"ice_tf.{name}")
    raise AttributeError(f"module 'ice_tf' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES) + ["evaluate", "EvaluationReport"])
