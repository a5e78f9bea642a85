"""ice-tf: In-distribution Compatible outlier Exposure (ICE) for TensorFlow/Keras.

Submodules, each layer importing only from those above it:
  maths        layers (GaussianLayer, Eq. 0.11), losses (a registry of methods, each owning its
               hyperparameters), scores, metrics, calibration, gda.
  parts        data, backbones, detectors (post-hoc detectors), models (OODModel: one training
               loop for every method), export (SavedModel), distribute, precision.
  analysis     the training-time analyses (statistics) and their probe callbacks.
  experiment   one run end to end: config, run_folder, run_data, checkpoint, evaluation, runner.
  figures      plotting helpers and the 2-D toy models of Figs. 2-3.
  report       `ice_tf.evaluate(model, (x, y), {name: images})`: any Keras model, one call.
  cli          the `ice-tf` command (train, evaluate, export, compare, demo); `python -m ice_tf`.
  foundation   atomic_io, json_lines, ownership (never a user's file).
Old module paths (ice_tf.config, ice_tf.run_folder, ice_tf.callbacks, ...) still import,
with a DeprecationWarning naming the new one.
"""

__version__ = "0.1.0"

import importlib
import importlib.abc
import importlib.util
import sys

# Modules that work without TensorFlow (numpy, the config, run folders, the command line).
WITHOUT_TENSORFLOW = ("_moved", "analysis", "atomic_io", "calibration", "config", "experiment",
                      "experiment.config", "experiment.run_folder", "experiment.run_lock",
                      "json_lines", "metrics", "ownership", "precision", "run_folder", "run_lock")
TENSORFLOW_MISSING = (
    'ice-tf needs TensorFlow, which is not installed: pip install "ice-tf[cpu]" '
    '(or "ice-tf[gpu]" for NVIDIA GPUs)')


class _TensorFlowMissing(importlib.abc.MetaPathFinder):
    """Without TensorFlow, importing a module that needs it fails at once, in one line that
    names the extra to install, instead of deep inside keras."""

    def find_spec(self, fullname, path=None, target=None):
        parts = fullname.split(".")
        inner = ".".join(parts[1:])
        if (parts[0] == "ice_tf" and len(parts) > 1 and inner not in WITHOUT_TENSORFLOW
                and parts[1] != "cli"):
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
    "analysis", "atomic_io", "backbones", "calibration", "cli", "data", "detectors", "distribute",
    "experiment", "export", "figures", "gda", "json_lines", "layers", "losses", "metrics", "models",
    "ownership", "precision", "report", "scores",
)
# Earlier module paths, still importable (ice_tf/_moved.py warns and hands out the new module).
_OLD_PATHS = ("callbacks", "checkpoint", "config", "evaluation", "plotting", "run_data",
              "run_folder", "run_lock", "toy")


def __getattr__(name):
    # Submodules load on first use, so `ice_tf.metrics` stays free of TensorFlow.
    if name in ("evaluate", "EvaluationReport"):
        return getattr(importlib.import_module("ice_tf.report"), name)
    if name in _SUBMODULES or name in _OLD_PATHS:
        return importlib.import_module(f"ice_tf.{name}")
    raise AttributeError(f"module 'ice_tf' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES) + ["evaluate", "EvaluationReport"])
